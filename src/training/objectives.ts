import * as tf from '@tensorflow/tfjs';
import { apgd } from '../engine/attacks/apgd.js';
import type { ApgdLoss } from '../engine/attacks/losses.js';
import { normalizePerExample, projectL2, randomStart, selectRows } from '../engine/attacks/projections.js';
import { functionClassifier } from '../engine/model/classifier.js';
import type { Rng } from '../util/random.js';
import type { InnerAttack, Objective } from './config.js';

/**
 * The five training objectives of RATIO from one code path (docs/algorithms.md, "RATIO training"):
 * which half of the batch is attacked, and whether the out-distribution term is present.
 *
 *   plain: CE(clean in)                 at:   CE(adv in)
 *   oe:    0.5 CE(clean in) + 0.5 lambda CE_u(clean out)
 *   acet:  0.5 CE(clean in) + 0.5 lambda CE_u(adv out)
 *   ratio: 0.5 CE(adv in)   + 0.5 lambda CE_u(adv out)
 */
export const OBJECTIVE_PARTS: Record<Objective, { attackIn: boolean; out: boolean; attackOut: boolean }> = {
  plain: { attackIn: false, out: false, attackOut: false },
  at: { attackIn: true, out: false, attackOut: false },
  oe: { attackIn: false, out: true, attackOut: false },
  acet: { attackIn: false, out: true, attackOut: true },
  ratio: { attackIn: true, out: true, attackOut: true },
};

/** Per-example CE(e_y, softmax(logits)): [n]. */
export function crossEntropyPerExample(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Tensor1D {
  return tf.tidy(() => {
    const logProbs = tf.logSoftmax(logits);
    const picked = logProbs.mul(tf.oneHot(labels, logits.shape[1])).sum(1);
    return picked.neg() as tf.Tensor1D;
  });
}

/** Per-example CE(uniform, softmax(logits)) = -(1/K) sum_k log p_k: [n]; minimal (log K) at p = 1/K. */
export function uniformCrossEntropyPerExample(logits: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => tf.logSoftmax(logits).mean(1).neg() as tf.Tensor1D);
}

export interface LossTerms {
  total: tf.Scalar;
  ceIn: tf.Scalar;
  /** Present for oe, acet, ratio. */
  ceOut?: tf.Scalar;
}

/**
 * The loss of one step from the logits of the joint batch [in; out] (in first, `labels.shape[0]`
 * rows). Without an out-distribution term (plain, at) `logits` holds only the in-distribution rows.
 */
export function objectiveLoss(
  objective: Objective,
  logits: tf.Tensor2D,
  labels: tf.Tensor1D,
  lambda: number,
): LossTerms {
  const nIn = labels.shape[0];
  const parts = OBJECTIVE_PARTS[objective];
  if (logits.rank !== 2) throw new Error(`'logits' must be rank 2, got [${logits.shape}]`);
  const expectedRows = parts.out ? 2 * nIn : nIn;
  if (logits.shape[0] !== expectedRows) {
    throw new Error(
      `'logits' must have ${expectedRows} rows for objective '${objective}', got ${logits.shape[0]}`,
    );
  }
  return tf.tidy(() => {
    const ceIn = crossEntropyPerExample(logits.slice([0, 0], [nIn, -1]), labels).mean() as tf.Scalar;
    if (!parts.out) return { total: ceIn.clone(), ceIn };
    const ceOut = uniformCrossEntropyPerExample(logits.slice([nIn, 0], [nIn, -1])).mean() as tf.Scalar;
    const total = ceIn.mul(0.5).add(ceOut.mul(0.5 * lambda)) as tf.Scalar;
    return { total, ceIn, ceOut };
  });
}

export interface InnerAttackSettings {
  attack: InnerAttack;
  eps: number;
  steps: number;
  stepSize: number;
  rng: Rng;
}

const PGD_MOMENTUM = 0.9;

/**
 * L2 PGD with normalised gradients and momentum that returns, per example, the best iterate (the
 * highest loss seen, the start included): the inner maximiser of RATIO training. `lossPerExample`
 * must evaluate the model in inference mode. Starts at a random point on the eps-sphere.
 */
export function pgdL2BestIterate(
  lossPerExample: (x: tf.Tensor4D) => tf.Tensor1D,
  x0: tf.Tensor4D,
  settings: Omit<InnerAttackSettings, 'attack'>,
): tf.Tensor4D {
  const { eps, steps, stepSize, rng } = settings;
  if (eps <= 0 || steps <= 0) return x0.clone();
  // The per-example loss of the gradient's own forward pass is kept, so each step costs one
  // forward and one backward pass (tf.keep survives the tidy scope of the gradient computation).
  let lastLoss: tf.Tensor1D | undefined;
  const gradient = tf.grad((x: tf.Tensor) => {
    const perExampleLoss = lossPerExample(x as tf.Tensor4D);
    lastLoss = tf.keep(perExampleLoss.clone());
    return perExampleLoss.sum() as tf.Scalar;
  });
  let x = randomStart('L2', x0, eps, rng);
  let best = x.clone();
  let bestLoss = tf.fill([x0.shape[0]], Number.NEGATIVE_INFINITY) as tf.Tensor1D;
  let velocity = tf.zerosLike(x0);
  for (let step = 0; step <= steps; step++) {
    // The last iterate is only scored: no gradient is needed for it.
    const grad = step < steps ? gradient(x) : undefined;
    const loss = grad ? (lastLoss as tf.Tensor1D) : tf.tidy(() => lossPerExample(x));
    // Keep the best iterate per example; the final iterate is scored too, without a further step.
    const greater = loss.greater(bestLoss);
    const improved = greater.dataSync() as Uint8Array;
    greater.dispose();
    const nextBest = selectRows(improved, x, best);
    const nextBestLoss = tf.tidy(() => tf.maximum(loss, bestLoss) as tf.Tensor1D);
    tf.dispose([best, bestLoss, loss]);
    best = nextBest;
    bestLoss = nextBestLoss;
    if (!grad) break;
    const nextVelocity = tf.tidy(
      () => velocity.mul(PGD_MOMENTUM).add(normalizePerExample('L2', grad)) as tf.Tensor4D,
    );
    const nextX = tf.tidy(() =>
      projectL2(x0, x.add(normalizePerExample('L2', nextVelocity).mul(stepSize)) as tf.Tensor4D, eps),
    );
    tf.dispose([grad, velocity, x]);
    velocity = nextVelocity;
    x = nextX;
  }
  tf.dispose([x, velocity, bestLoss]);
  return best;
}

/**
 * Adversarial in-distribution points (maximise CE(e_y, p(z))) within the L2 ball of radius eps.
 * `logits` is the model in inference mode.
 */
export async function attackInDistribution(
  logits: (x: tf.Tensor4D) => tf.Tensor2D,
  x: tf.Tensor4D,
  labels: tf.Tensor1D,
  numClasses: number,
  settings: InnerAttackSettings,
): Promise<tf.Tensor4D> {
  if (settings.attack === 'apgd') {
    const labelArray = Int32Array.from(labels.dataSync() as Int32Array);
    return apgdBestPoints(logits, x, numClasses, labelArray, 'ce', settings);
  }
  return pgdL2BestIterate((z) => tf.tidy(() => crossEntropyPerExample(logits(z), labels)), x, settings);
}

/** Adversarial out-distribution points: maximise CE(1/K, p(z)), i.e. make the model confident. */
export async function attackOutDistribution(
  logits: (x: tf.Tensor4D) => tf.Tensor2D,
  x: tf.Tensor4D,
  numClasses: number,
  settings: InnerAttackSettings,
): Promise<tf.Tensor4D> {
  if (settings.attack === 'apgd') {
    // APGD's confidence loss (max log-probability) pushes towards the same confident points.
    return apgdBestPoints(logits, x, numClasses, undefined, 'max-log-confidence', settings);
  }
  return pgdL2BestIterate((z) => tf.tidy(() => uniformCrossEntropyPerExample(logits(z))), x, settings);
}

/** The highest-loss points APGD finds in the L2 ball of radius `settings.eps`. */
async function apgdBestPoints(
  logits: (x: tf.Tensor4D) => tf.Tensor2D,
  x: tf.Tensor4D,
  numClasses: number,
  labels: Int32Array | undefined,
  loss: ApgdLoss,
  settings: InnerAttackSettings,
): Promise<tf.Tensor4D> {
  const result = await apgd(classifierFor(logits, x, numClasses), x, labels, {
    norm: 'L2',
    eps: settings.eps,
    iterations: settings.steps,
    loss,
    seed: settings.rng.seed(),
  });
  result.adversarial.dispose();
  return result.best;
}

function classifierFor(logits: (x: tf.Tensor4D) => tf.Tensor2D, x: tf.Tensor4D, numClasses: number) {
  const [, h, w, c] = x.shape;
  return functionClassifier({ inputShape: [h, w, c], numClasses }, logits);
}
