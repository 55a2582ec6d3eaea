import * as tf from '@tensorflow/tfjs';
import { mixSeed, Rng } from '../../util/random.js';
import type { Classifier } from '../classifier.js';
import { classAtRank, logitsOf } from '../logits.js';
import { type LongRunOptions, type Norm, throwIfAborted } from '../types.js';
import { type ApgdLoss, assertLossDefined, attackLoss } from './losses.js';
import { project, randomStart, steepestDirection } from './projections.js';
import type { Attack, AttackOptions, AttackProgress, PerturbResult } from './types.js';
import {
  assertAttackBatch,
  assertPositiveIntegers,
  assertThreatModel,
  sampleSeedsOf,
  yieldToEventLoop,
} from './validate.js';

/**
 * Auto-PGD (Croce & Hein, ICML 2020): PGD with momentum 0.75 and a step size that starts at 2 eps
 * and is halved per example at checkpoints when progress stalls, restarting from the best point.
 * The gradient is that of the summed per-example loss, so examples never interact.
 */

export interface ApgdOptions extends LongRunOptions<AttackProgress> {
  norm: Norm;
  eps: number;
  /** Iterations per restart (default 100). */
  iterations?: number;
  /** Random restarts (default 1); a restart runs only on examples not yet successful. */
  restarts?: number;
  loss?: ApgdLoss;
  /** Target class per example, for 'dlr-targeted' and 'log-confidence-target'. */
  targets?: Int32Array;
  /** Softmax temperature of the confidence losses (default: the classifier card's). */
  temperature?: number;
  /** Expectation over transformation: gradient averaged over this many passes (randomised models). */
  eotIterations?: number;
  /** Start from a random point on the eps-sphere (default true), else from x itself. */
  randomStart?: boolean;
  /** Name reported in progress events (default `apgd-<loss>`). */
  name?: string;
  /**
   * Per example, the seed of its random starts (restart r draws from mixSeed(seed_i, r)), so an
   * example's run does not depend on its batch. Without it, one generator seeded with `seed` draws
   * the starts of the whole batch (training and the OOD/counterfactual searches use that).
   */
  sampleSeeds?: Uint32Array;
}

export interface ApgdResult {
  /** Per example, the point of highest loss over all iterations and restarts. */
  best: tf.Tensor4D;
  bestLoss: Float32Array;
  /** Per example, the first misclassified point found; where none, the highest-loss point. */
  adversarial: tf.Tensor4D;
  /** 1 where `adversarial` is misclassified (never set for the confidence losses, which have no success). */
  success: Uint8Array;
}

const MOMENTUM = 0.75;
/** Halve the step where the loss rose in at most this share of the steps since the last checkpoint. */
const OSCILLATION_THRESHOLD = 0.75;

/** Whether the loss has a success criterion (misclassification); confidence losses only climb. */
function hasSuccessCriterion(loss: ApgdLoss): boolean {
  return loss === 'ce' || loss === 'dlr' || loss === 'dlr-targeted';
}

/**
 * The iteration counts between checkpoints: max(floor(0.22 n), 1) first, then shrinking by
 * max(floor(0.03 n), 1) down to max(floor(0.06 n), 1). For n = 100: 22, 19, 16, 13, 10, 7, 6, 6, ...
 */
export function apgdCheckpointIntervals(iterations: number): number[] {
  const first = Math.max(Math.floor(0.22 * iterations), 1);
  const decrease = Math.max(Math.floor(0.03 * iterations), 1);
  const minimum = Math.max(Math.floor(0.06 * iterations), 1);
  const intervals: number[] = [];
  let k = first;
  let done = 0;
  while (done + k <= iterations) {
    intervals.push(k);
    done += k;
    k = Math.max(k - decrease, minimum);
  }
  return intervals;
}

/** Lets timers and abort events run between iterations (the loop is otherwise synchronous). */

function swap<T extends tf.Tensor>(old: T, next: T): T {
  if (old !== next) old.dispose();
  return next;
}

interface Evaluation {
  loss: Float32Array;
  predicted: Int32Array;
  grad: tf.Tensor4D;
}

interface RunContext {
  classifier: Classifier;
  x: tf.Tensor4D;
  labels: tf.Tensor1D | undefined;
  labelValues: Int32Array | undefined;
  targets: tf.Tensor1D | undefined;
  loss: ApgdLoss;
  norm: Norm;
  eps: number;
  iterations: number;
  temperature: number;
  eotIterations: number;
  randomStart: boolean;
  /** One generator per example of `x`, or one for the whole batch. */
  rngs: Rng | Rng[];
  signal?: AbortSignal;
  onIteration: () => void;
}

/** Per-example loss, prediction and gradient of the summed loss at `point` (EOT-averaged). */
function evaluate(ctx: RunContext, point: tf.Tensor4D): Evaluation {
  let logits: tf.Tensor2D | undefined;
  let loss: tf.Tensor1D | undefined;
  let gradSum: tf.Tensor4D | undefined;
  for (let draw = 0; draw < ctx.eotIterations; draw++) {
    tf.dispose([logits, loss]);
    const { value, grad } = tf.valueAndGrad((p: tf.Tensor) => {
      const z = ctx.classifier.logits(p as tf.Tensor4D);
      const perExample = attackLoss(ctx.loss, z, {
        labels: ctx.labels,
        targets: ctx.targets,
        temperature: ctx.temperature,
      });
      logits = tf.keep(z);
      loss = tf.keep(perExample);
      // `+ 0 * sum(p)` keeps the tape connected for models constant in their input (zero gradient).
      return perExample.sum().add(p.sum().mul(0));
    })(point);
    value.dispose();
    gradSum = gradSum ? swap(gradSum, gradSum.add(grad)) : (grad as tf.Tensor4D);
    if (gradSum !== grad) grad.dispose();
  }
  const grad = ctx.eotIterations > 1 ? swap(gradSum!, gradSum!.div(ctx.eotIterations)) : gradSum!;
  const predicted = tf.tidy(() => logits!.argMax(1).dataSync() as Int32Array);
  const lossValues = loss!.dataSync() as Float32Array;
  tf.dispose([logits, loss]);
  return { loss: lossValues, predicted, grad: grad as tf.Tensor4D };
}

/** Per-example choice: rows of `a` where `chosen[i]`, else rows of `b` (a full-shape mask, since
 * rank-1 conditions are not broadcast by every backend). */
function selectRows<T extends tf.Tensor>(chosen: Uint8Array, a: T, b: T): T {
  return tf.tidy(() => {
    const condition = tf.tensor(chosen, [chosen.length, ...Array<number>(a.rank - 1).fill(1)], 'bool');
    return tf.where(tf.broadcastTo(condition, a.shape), a, b) as T;
  });
}

interface RunResult {
  best: tf.Tensor4D;
  bestLoss: Float32Array;
  firstSuccess: tf.Tensor4D;
  success: Uint8Array;
}

/** One APGD run from one (random) start on the batch `ctx.x`. */
async function singleRun(ctx: RunContext): Promise<RunResult> {
  const { x, norm, eps, iterations } = ctx;
  const n = x.shape[0];
  const judged = hasSuccessCriterion(ctx.loss) && ctx.labelValues !== undefined;
  const isWrong = (predicted: Int32Array, i: number) => judged && predicted[i] !== ctx.labelValues![i];

  let xAdv: tf.Tensor4D = ctx.randomStart ? randomStart(norm, x, eps, ctx.rngs) : x.clone();
  let current = evaluate(ctx, xAdv);
  let grad = current.grad;
  let xBest = xAdv.clone();
  let gradBest = grad.clone();
  const bestLoss = current.loss.slice();
  const success = new Uint8Array(n);
  for (let i = 0; i < n; i++) success[i] = isWrong(current.predicted, i) ? 1 : 0;
  let firstSuccess = xAdv.clone();

  const stepSize = new Float32Array(n).fill(2 * eps);
  let xPrevious = xAdv.clone();
  let previousLoss = current.loss;
  const increases = new Uint16Array(n);
  let bestLossAtCheck = bestLoss.slice();
  let halvedAtCheck = new Uint8Array(n).fill(1);
  const intervals = apgdCheckpointIntervals(iterations);
  let checkpoint = 0;
  let sinceCheck = 0;

  try {
    for (let iteration = 0; iteration < iterations; iteration++) {
      throwIfAborted(ctx.signal);
      const a = iteration > 0 ? MOMENTUM : 1;
      const next = tf.tidy(() => {
        const step = tf.tensor(stepSize, [n, 1, 1, 1]);
        const z = project(norm, x, xAdv.add(steepestDirection(norm, grad).mul(step)), eps);
        const momentum = xAdv.sub(xPrevious).mul(1 - a);
        return project(norm, x, xAdv.add(z.sub(xAdv).mul(a)).add(momentum), eps) as tf.Tensor4D;
      });
      xPrevious = swap(xPrevious, xAdv);
      xAdv = next;
      current = evaluate(ctx, xAdv);
      grad.dispose();
      grad = current.grad;

      const newlyBroken = new Uint8Array(n);
      const improved = new Uint8Array(n);
      let anyBroken = false;
      let anyImproved = false;
      for (let i = 0; i < n; i++) {
        if (!success[i] && isWrong(current.predicted, i)) {
          success[i] = newlyBroken[i] = 1;
          anyBroken = true;
        }
        if (current.loss[i] > previousLoss[i]) increases[i]++;
        if (current.loss[i] > bestLoss[i]) {
          bestLoss[i] = current.loss[i];
          improved[i] = 1;
          anyImproved = true;
        }
      }
      previousLoss = current.loss;
      if (anyBroken) firstSuccess = swap(firstSuccess, selectRows(newlyBroken, xAdv, firstSuccess));
      if (anyImproved) {
        xBest = swap(xBest, selectRows(improved, xAdv, xBest));
        gradBest = swap(gradBest, selectRows(improved, grad, gradBest));
      }

      sinceCheck++;
      const interval = intervals[Math.min(checkpoint, intervals.length - 1)];
      if (sinceCheck === interval) {
        const halve = new Uint8Array(n);
        let anyHalved = false;
        for (let i = 0; i < n; i++) {
          const oscillating = increases[i] <= interval * OSCILLATION_THRESHOLD;
          const stalled = !halvedAtCheck[i] && bestLossAtCheck[i] >= bestLoss[i];
          if (oscillating || stalled) {
            halve[i] = 1;
            stepSize[i] /= 2;
            anyHalved = true;
          }
        }
        if (anyHalved) {
          xAdv = swap(xAdv, selectRows(halve, xBest, xAdv));
          grad = swap(grad, selectRows(halve, gradBest, grad));
        }
        halvedAtCheck = halve;
        bestLossAtCheck = bestLoss.slice();
        increases.fill(0);
        sinceCheck = 0;
        checkpoint++;
      }
      ctx.onIteration();
      await yieldToEventLoop();
    }
  } catch (error) {
    tf.dispose([xBest, firstSuccess]);
    throw error;
  } finally {
    tf.dispose([xAdv, xPrevious, grad, gradBest]);
  }
  return { best: xBest, bestLoss, firstSuccess, success };
}

function validate(classifier: Classifier, x: tf.Tensor4D, y: Int32Array | undefined, options: ApgdOptions) {
  assertAttackBatch(classifier, x, y);
  assertThreatModel(options);
  assertPositiveIntegers([
    ['iterations', options.iterations],
    ['restarts', options.restarts],
    ['eotIterations', options.eotIterations],
  ]);
  const n = x.shape[0];
  const k = classifier.numClasses;
  const loss = options.loss ?? 'ce';
  assertLossDefined(loss, k);
  const needsTargets = loss === 'dlr-targeted' || loss === 'log-confidence-target';
  if (needsTargets && options.targets === undefined) throw new Error(`loss '${loss}' needs 'targets'`);
  if (options.targets !== undefined) {
    if (options.targets.length !== n) {
      throw new Error(`'targets' must have ${n} entries, got ${options.targets.length}`);
    }
    if (options.targets.some((t) => t < 0 || t >= k)) throw new Error(`'targets' must lie in [0, ${k})`);
  }
  if ((loss === 'ce' || loss === 'dlr' || loss === 'dlr-targeted') && y === undefined) {
    throw new Error(`loss '${loss}' needs 'y' (true labels)`);
  }
}

/**
 * APGD on a batch. `y` may be omitted for the confidence losses. Restarts run on the examples not yet
 * successful; the highest-loss point is kept across restarts. The caller disposes `best` and
 * `adversarial`. Rejects with an AbortError when `signal` fires (checked between iterations).
 *
 * @example
 * const { adversarial, success } = await apgd(model, x, y, { norm: 'L2', eps: 0.5, loss: 'ce', seed: 0 });
 */
export async function apgd(
  classifier: Classifier,
  x: tf.Tensor4D,
  y: Int32Array | undefined,
  options: ApgdOptions,
): Promise<ApgdResult> {
  validate(classifier, x, y, options);
  const loss = options.loss ?? 'ce';
  const iterations = options.iterations ?? 100;
  const restarts = options.restarts ?? 1;
  const name = options.name ?? `apgd-${loss}`;
  const n = x.shape[0];
  const rowSize = x.size / Math.max(n, 1);
  const seeds = options.sampleSeeds === undefined ? undefined : sampleSeedsOf(options, n);
  const batchRng = new Rng(options.seed ?? 0);

  const cleanRows = x.dataSync() as Float32Array;
  const bestRows = cleanRows.slice();
  const adversarialRows = new Float32Array(cleanRows.length);
  const bestLoss = new Float32Array(n).fill(Number.NEGATIVE_INFINITY);
  const success = new Uint8Array(n);
  let done = 0;
  const total = restarts * iterations;

  for (let restart = 0; restart < restarts; restart++) {
    const active: number[] = [];
    for (let i = 0; i < n; i++) if (!success[i]) active.push(i);
    if (active.length === 0) break;
    const indices = tf.tensor1d(active, 'int32');
    const xActive = tf.gather(x, indices) as tf.Tensor4D;
    const labelValues = y ? Int32Array.from(active, (i) => y[i]) : undefined;
    const labels = labelValues ? tf.tensor1d(labelValues, 'int32') : undefined;
    const targets = options.targets
      ? tf.tensor1d(
          Int32Array.from(active, (i) => options.targets![i]),
          'int32',
        )
      : undefined;
    try {
      const run = await singleRun({
        classifier,
        x: xActive,
        labels,
        labelValues,
        targets,
        loss,
        norm: options.norm,
        eps: options.eps,
        iterations,
        temperature: options.temperature ?? classifier.card.temperature ?? 1,
        eotIterations: options.eotIterations ?? 1,
        randomStart: options.randomStart ?? true,
        rngs: seeds ? active.map((i) => new Rng(mixSeed(seeds[i], restart))) : batchRng,
        signal: options.signal,
        onIteration: () => options.onProgress?.({ attack: name, done: ++done, total }),
      });
      const runBest = run.best.dataSync();
      const runSuccess = run.firstSuccess.dataSync();
      tf.dispose([run.best, run.firstSuccess]);
      active.forEach((i, j) => {
        const rows = [j * rowSize, (j + 1) * rowSize] as const;
        if (run.bestLoss[j] > bestLoss[i]) {
          bestLoss[i] = run.bestLoss[j];
          bestRows.set(runBest.subarray(...rows), i * rowSize);
        }
        if (run.success[j]) {
          success[i] = 1;
          adversarialRows.set(runSuccess.subarray(...rows), i * rowSize);
        }
      });
    } finally {
      tf.dispose([indices, xActive, labels, targets]);
    }
    done = (restart + 1) * iterations;
  }
  for (let i = 0; i < n; i++) {
    if (!success[i]) adversarialRows.set(bestRows.subarray(i * rowSize, (i + 1) * rowSize), i * rowSize);
  }
  return {
    best: tf.tensor4d(bestRows, x.shape),
    bestLoss,
    adversarial: tf.tensor4d(adversarialRows, x.shape),
    success,
  };
}

export interface ApgdAttackConfig {
  iterations?: number;
  eotIterations?: number;
}

/** APGD-CE or APGD-DLR behind the shared `Attack` contract (as in AutoAttack). */
export function apgdAttack(loss: 'ce' | 'dlr', config: ApgdAttackConfig = {}): Attack {
  const name = `apgd-${loss}`;
  return {
    name,
    async perturb(classifier, x, y, options: AttackOptions): Promise<PerturbResult> {
      const result = await apgd(classifier, x, y, { ...config, ...options, loss, name });
      result.best.dispose();
      return { adversarial: result.adversarial, success: result.success };
    },
  };
}

export interface ApgdTargetedConfig extends ApgdAttackConfig {
  /** Number of target classes (default 9, capped at K - 1). */
  targetClasses?: number;
}

/**
 * APGD-T: targeted DLR against the classes ranked 2nd..(n+1)th by the clean logits, one run per
 * target, each only on the points not yet broken. Unbroken points come back as the clean input.
 * Needs K >= 4 (throws otherwise).
 */
export function apgdTargeted(config: ApgdTargetedConfig = {}): Attack {
  return {
    name: 'apgd-t',
    async perturb(classifier, x, y, options: AttackOptions): Promise<PerturbResult> {
      const k = classifier.numClasses;
      assertLossDefined('dlr-targeted', k);
      validate(classifier, x, y, { ...options, loss: 'ce' });
      const n = x.shape[0];
      const rowSize = x.size / Math.max(n, 1);
      const targetCount = Math.min(config.targetClasses ?? 9, k - 1);
      const cleanLogits = logitsOf(classifier, x, Math.max(n, 1));
      const adversarialRows = (x.dataSync() as Float32Array).slice();
      const success = new Uint8Array(n);
      const seeds = sampleSeedsOf(options, n);
      const total = targetCount * (options.restarts ?? 1) * (config.iterations ?? 100);
      for (let rank = 2; rank <= targetCount + 1; rank++) {
        const active: number[] = [];
        for (let i = 0; i < n; i++) if (!success[i]) active.push(i);
        if (active.length === 0) break;
        const allTargets = classAtRank(cleanLogits, k, rank);
        const indices = tf.tensor1d(active, 'int32');
        const xActive = tf.gather(x, indices) as tf.Tensor4D;
        indices.dispose();
        const offset = (rank - 2) * (total / targetCount);
        try {
          const result = await apgd(
            classifier,
            xActive,
            Int32Array.from(active, (i) => y[i]),
            {
              ...config,
              ...options,
              sampleSeeds: Uint32Array.from(active, (i) => mixSeed(seeds[i], rank)),
              loss: 'dlr-targeted',
              targets: Int32Array.from(active, (i) => allTargets[i]),
              name: 'apgd-t',
              onProgress: (p) => options.onProgress?.({ attack: 'apgd-t', done: offset + p.done, total }),
            },
          );
          const rows = result.adversarial.dataSync();
          tf.dispose([result.best, result.adversarial]);
          active.forEach((i, j) => {
            if (!result.success[j]) return;
            success[i] = 1;
            adversarialRows.set(rows.subarray(j * rowSize, (j + 1) * rowSize), i * rowSize);
          });
        } finally {
          xActive.dispose();
        }
      }
      return { adversarial: tf.tensor4d(adversarialRows, x.shape), success };
    },
  };
}
