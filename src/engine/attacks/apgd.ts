import * as tf from '@tensorflow/tfjs';
import { mixSeed, Rng } from '../../util/random.js';
import type { Classifier } from '../model/classifier.js';
import { assertFinite, classAtRank, logitsOf } from '../model/logits.js';
import { type LongRunOptions, type Norm, throwIfAborted } from '../types.js';
import { DEFAULT_ITERATIONS } from './defaults.js';
import { type ApgdLoss, assertLossDefined, attackLoss } from './losses.js';
import { project, randomStart, selectRows, steepestDirection } from './projections.js';
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
  /**
   * Drop an example from the batch at its first success (default false). Its `adversarial` point
   * and `success` are what a full run returns (examples never interact); its `best` and `bestLoss`
   * are then those found up to its success. AutoAttack sets it: its verdict reads only `adversarial`.
   */
  stopOnSuccess?: boolean;
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
  try {
    // Losses of finite logits are finite (CE, DLR and their targeted forms alike).
    assertFinite(lossValues, 'APGD');
  } catch (error) {
    grad.dispose();
    throw error;
  }
  return { loss: lossValues, predicted, grad: grad as tf.Tensor4D };
}

interface RunResult {
  /** Per example, the point of highest loss (flat rows). */
  best: Float32Array;
  bestLoss: Float32Array;
  /** Per example, the first misclassified point (flat rows; meaningful where `success`). */
  firstSuccess: Float32Array;
  success: Uint8Array;
}

/** The batch tensors of a run that follow its examples (row j of each is example `rows[j]`). */
interface RunTensors {
  x: tf.Tensor4D;
  xAdv: tf.Tensor4D;
  xPrevious: tf.Tensor4D;
  grad: tf.Tensor4D;
  xBest: tf.Tensor4D;
  gradBest: tf.Tensor4D;
  firstSuccess: tf.Tensor4D;
  labels: tf.Tensor1D | undefined;
  targets: tf.Tensor1D | undefined;
}

/** Copies rows `from` (batch rows) of `tensor` into `out` at the examples `to`. */
function copyRows(
  tensor: tf.Tensor,
  from: readonly number[],
  to: readonly number[],
  out: Float32Array,
): void {
  const values = tensor.dataSync() as Float32Array;
  const rowSize = values.length / Math.max(tensor.shape[0] ?? 1, 1);
  from.forEach((j, k) => {
    out.set(values.subarray(j * rowSize, (j + 1) * rowSize), to[k] * rowSize);
  });
}

/** Keeps the batch rows `keep` of every tensor (disposing the old ones). */
function keepRows(t: RunTensors, keep: readonly number[]): RunTensors {
  const indices = tf.tensor1d(keep as number[], 'int32');
  try {
    const gathered = <T extends tf.Tensor | undefined>(tensor: T): T => {
      if (tensor === undefined) return tensor;
      const out = tf.gather(tensor, indices) as T;
      tensor.dispose();
      return out;
    };
    return {
      x: gathered(t.x),
      xAdv: gathered(t.xAdv),
      xPrevious: gathered(t.xPrevious),
      grad: gathered(t.grad),
      xBest: gathered(t.xBest),
      gradBest: gathered(t.gradBest),
      firstSuccess: gathered(t.firstSuccess),
      labels: gathered(t.labels),
      targets: gathered(t.targets),
    };
  } finally {
    indices.dispose();
  }
}

/**
 * One APGD run from one (random) start on the batch `ctx.x`. With `stopOnSuccess`, an example leaves
 * the batch at its first success: its first misclassified point is final then, and every other
 * example's run is unchanged (examples never interact), so only its highest-loss point differs.
 */
async function singleRun(ctx: RunContext, stopOnSuccess: boolean): Promise<RunResult> {
  const { norm, eps, iterations } = ctx;
  const n = ctx.x.shape[0];
  const rowSize = ctx.x.size / Math.max(n, 1);
  const judged = hasSuccessCriterion(ctx.loss) && ctx.labelValues !== undefined;
  /** Original example of each batch row. */
  let rows = Array.from({ length: n }, (_, i) => i);
  const labelValues = ctx.labelValues;
  const isWrong = (predicted: Int32Array, j: number) => judged && predicted[j] !== labelValues![rows[j]];
  const bestOut = new Float32Array(n * rowSize);
  const firstSuccessOut = new Float32Array(n * rowSize);

  const start: tf.Tensor4D = ctx.randomStart ? randomStart(norm, ctx.x, eps, ctx.rngs) : ctx.x.clone();
  let current: ReturnType<typeof evaluate>;
  try {
    current = evaluate(ctx, start);
  } catch (error) {
    // A model failing its first step (non-finite logits) leaves nothing behind.
    start.dispose();
    throw error;
  }
  let t: RunTensors = {
    x: ctx.x.clone(),
    xAdv: start,
    xPrevious: start.clone(),
    grad: current.grad,
    xBest: start.clone(),
    gradBest: current.grad.clone(),
    firstSuccess: start.clone(),
    labels: ctx.labels?.clone(),
    targets: ctx.targets?.clone(),
  };
  const bestLoss = current.loss.slice();
  const success = new Uint8Array(n);
  for (let j = 0; j < n; j++) success[j] = isWrong(current.predicted, j) ? 1 : 0;

  const stepSize = new Float32Array(n).fill(2 * eps);
  const previousLoss = current.loss.slice();
  const increases = new Uint16Array(n);
  let bestLossAtCheck = bestLoss.slice();
  let halvedAtCheck = new Uint8Array(n).fill(1);
  const intervals = apgdCheckpointIntervals(iterations);
  let checkpoint = 0;
  let sinceCheck = 0;

  /** Writes the results of the batch rows `finished` out and drops them from the batch. */
  const retire = (finished: number[]) => {
    const examples = finished.map((j) => rows[j]);
    copyRows(t.xBest, finished, examples, bestOut);
    copyRows(t.firstSuccess, finished, examples, firstSuccessOut);
    const gone = new Set(finished);
    const keep = rows.map((_, j) => j).filter((j) => !gone.has(j));
    t = keepRows(t, keep);
    rows = keep.map((j) => rows[j]);
  };

  try {
    const startBroken = rows.map((_, j) => j).filter((j) => success[rows[j]]);
    if (stopOnSuccess && startBroken.length > 0) retire(startBroken);
    for (let iteration = 0; iteration < iterations && rows.length > 0; iteration++) {
      throwIfAborted(ctx.signal);
      const m = rows.length;
      const a = iteration > 0 ? MOMENTUM : 1;
      const next = tf.tidy(() => {
        const step = tf.tensor(
          Float32Array.from(rows, (i) => stepSize[i]),
          [m, 1, 1, 1],
        );
        const { x, xAdv, xPrevious, grad } = t;
        const z = project(norm, x, xAdv.add(steepestDirection(norm, grad).mul(step)), eps);
        const momentum = xAdv.sub(xPrevious).mul(1 - a);
        return project(norm, x, xAdv.add(z.sub(xAdv).mul(a)).add(momentum), eps) as tf.Tensor4D;
      });
      t.xPrevious = swap(t.xPrevious, t.xAdv);
      t.xAdv = next;
      current = evaluate({ ...ctx, labels: t.labels, targets: t.targets }, t.xAdv);
      t.grad.dispose();
      t.grad = current.grad;

      const newlyBroken = new Uint8Array(m);
      const improved = new Uint8Array(m);
      const broken: number[] = [];
      let anyImproved = false;
      for (let j = 0; j < m; j++) {
        const i = rows[j];
        if (!success[i] && isWrong(current.predicted, j)) {
          success[i] = newlyBroken[j] = 1;
          broken.push(j);
        }
        if (current.loss[j] > previousLoss[i]) increases[i]++;
        previousLoss[i] = current.loss[j];
        if (current.loss[j] > bestLoss[i]) {
          bestLoss[i] = current.loss[j];
          improved[j] = 1;
          anyImproved = true;
        }
      }
      if (broken.length > 0)
        t.firstSuccess = swap(t.firstSuccess, selectRows(newlyBroken, t.xAdv, t.firstSuccess));
      if (anyImproved) {
        t.xBest = swap(t.xBest, selectRows(improved, t.xAdv, t.xBest));
        t.gradBest = swap(t.gradBest, selectRows(improved, t.grad, t.gradBest));
      }

      sinceCheck++;
      const interval = intervals[Math.min(checkpoint, intervals.length - 1)];
      if (sinceCheck === interval) {
        const halve = new Uint8Array(m);
        const halvedNow = new Uint8Array(n);
        let anyHalved = false;
        for (let j = 0; j < m; j++) {
          const i = rows[j];
          const oscillating = increases[i] <= interval * OSCILLATION_THRESHOLD;
          const stalled = !halvedAtCheck[i] && bestLossAtCheck[i] >= bestLoss[i];
          if (oscillating || stalled) {
            halve[j] = halvedNow[i] = 1;
            stepSize[i] /= 2;
            anyHalved = true;
          }
        }
        if (anyHalved) {
          t.xAdv = swap(t.xAdv, selectRows(halve, t.xBest, t.xAdv));
          t.grad = swap(t.grad, selectRows(halve, t.gradBest, t.grad));
        }
        halvedAtCheck = halvedNow;
        bestLossAtCheck = bestLoss.slice();
        increases.fill(0);
        sinceCheck = 0;
        checkpoint++;
      }
      if (stopOnSuccess && broken.length > 0) retire(broken);
      ctx.onIteration();
      await yieldToEventLoop();
    }
    if (rows.length > 0) retire(rows.map((_, j) => j));
  } finally {
    tf.dispose([t.x, t.xAdv, t.xPrevious, t.grad, t.xBest, t.gradBest, t.firstSuccess, t.labels, t.targets]);
  }
  return { best: bestOut, bestLoss, firstSuccess: firstSuccessOut, success };
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
  const iterations = options.iterations ?? DEFAULT_ITERATIONS;
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
      const run = await singleRun(
        {
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
        },
        options.stopOnSuccess ?? false,
      );
      const runBest = run.best;
      const runSuccess = run.firstSuccess;
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
      const result = await apgd(classifier, x, y, {
        ...config,
        ...options,
        loss,
        name,
        stopOnSuccess: !options.fullBudget,
      });
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
      const total = targetCount * (options.restarts ?? 1) * (config.iterations ?? DEFAULT_ITERATIONS);
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
              stopOnSuccess: !options.fullBudget,
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
