import * as tf from '@tensorflow/tfjs';
import { mixSeed, Rng } from '../../util/random.js';
import type { Classifier } from '../model/classifier.js';
import { assertFinite, classAtRank, logitsOf } from '../model/logits.js';
import { type LongRunOptions, type Norm, throwIfAborted } from '../types.js';
import { DEFAULT_ITERATIONS } from './defaults.js';
import { hyperplaneBoxStep } from './fab-projections.js';
import { dualNorm, vectorNorm } from './projections.js';
import type { Attack, AttackArgs, AttackOptions, AttackProgress, PerturbResult } from './types.js';
import {
  assertAttackBatch,
  assertNonNegativeNumbers,
  assertPositiveIntegers,
  assertThreatModel,
  sampleSeedsOf,
  yieldToEventLoop,
} from './validate.js';

/**
 * FAB (Fast Adaptive Boundary; Croce & Hein, ICML 2020), a minimum-norm attack. Each iteration
 * linearises the decision boundary f_t - f_y at the current point, steps minimally onto it both from
 * the current point and from the original one (inside the box), mixes the two with a weight that
 * favours staying near the original, overshoots slightly, and after every success moves back towards
 * the original point, so the iterates slide along the boundary towards the closest adversarial point.
 * FAB-T uses one target class per run (the classes ranked 2nd.. by the clean logits); untargeted FAB
 * picks, at every iteration, the class whose linearised boundary is nearest.
 */

export interface FabOptions extends LongRunOptions<AttackProgress> {
  norm: Norm;
  /** Budget: a point counts as broken when its perturbation norm is <= eps; restarts draw within it. */
  eps: number;
  /** One run per target class ranked 2..(targetClasses+1) (default true), else untargeted FAB. */
  targeted?: boolean;
  /** Target classes for FAB-T (default 9, capped at K - 1). */
  targetClasses?: number;
  /** Iterations per run (default 100). */
  iterations?: number;
  /** Runs per target (default 1); every run after the first starts at a random point. */
  restarts?: number;
  /** Cap on the weight of the step from the original point (default 0.1). */
  alphaMax?: number;
  /** Overshoot of each step (default 1.05). */
  overshoot?: number;
  /** Backward step towards the original point after a success (default 0.9). */
  backward?: number;
  /**
   * Stop attacking an example once an adversarial point of norm <= this is known (default eps).
   * Pass 0 to search every target and restart for the smallest norm.
   */
  stopBelow?: number;
  /** Name reported in progress events (default 'fab-t' or 'fab'). */
  name?: string;
  /** Per example, the seed of its random starts (target rank t, restart r: mixSeed(seed_i, t, r)). */
  sampleSeeds?: Uint32Array;
}

export interface FabResult {
  /** Per example, the smallest-norm misclassified point found; the clean input where none was. */
  adversarial: tf.Tensor4D;
  /** ||adversarial - x|| per example (0 for clean errors), Infinity where nothing was found. */
  norms: Float64Array;
  /** 1 where a misclassified point within eps was found (clean errors included). */
  success: Uint8Array;
}

/** Guards divisions by a gradient norm that may be zero. */
const TINY = 1e-12;
/** Floor on the step lengths entering the mixing weight (reference: 1e-8). */
const MIN_STEP = 1e-8;

function validate(classifier: Classifier, x: tf.Tensor4D, y: Int32Array, options: FabOptions): void {
  assertAttackBatch(classifier, x, y);
  assertThreatModel(options);
  const k = classifier.numClasses;
  if (k < 2) throw new Error(`FAB needs a model with at least 2 classes, got ${k}`);
  assertPositiveIntegers([
    ['iterations', options.iterations],
    ['restarts', options.restarts],
    ['targetClasses', options.targetClasses],
  ]);
  assertNonNegativeNumbers([
    ['alphaMax', options.alphaMax],
    ['overshoot', options.overshoot],
    ['backward', options.backward],
    ['stopBelow', options.stopBelow],
  ]);
}

/** Rows of a flat batch. */
function rowsOf(values: Float32Array, rowSize: number, indices: number[]): Float32Array {
  const out = new Float32Array(indices.length * rowSize);
  indices.forEach((i, j) => {
    out.set(values.subarray(i * rowSize, (i + 1) * rowSize), j * rowSize);
  });
  return out;
}

function predictions(classifier: Classifier, rows: Float32Array, shape: number[]): Int32Array {
  return tf.tidy(() => {
    const logits = classifier.logits(tf.tensor4d(rows, shape as [number, number, number, number]));
    return logits.argMax(1).dataSync() as Int32Array;
  });
}

/**
 * Values f_c - f_y and gradients of c = `classOf(i)` against the label, for every example, from one
 * backward pass of the summed difference (examples do not interact).
 */
function linearise(
  classifier: Classifier,
  point: tf.Tensor4D,
  labels: tf.Tensor1D,
  classes: tf.Tensor1D,
): { value: Float32Array; grad: Float32Array } {
  const numClasses = classifier.numClasses;
  // (onehot(c) - onehot(y)) picks f_c - f_y per row with ops that all have gradients.
  const selector = tf.tidy(() => tf.oneHot(classes, numClasses).sub(tf.oneHot(labels, numClasses)));
  let difference: tf.Tensor | undefined;
  try {
    const { value, grad } = tf.valueAndGrad((p: tf.Tensor) => {
      const perExample = classifier
        .logits(p as tf.Tensor4D)
        .mul(selector)
        .sum(1);
      difference = tf.keep(perExample);
      // `+ 0 * sum(p)` keeps the tape connected for models constant in their input (zero gradient).
      return perExample.sum().add(p.sum().mul(0));
    })(point);
    value.dispose();
    const values = difference!.dataSync() as Float32Array;
    const grads = grad.dataSync() as Float32Array;
    grad.dispose();
    assertFinite(values, 'FAB');
    return { value: values, grad: grads };
  } finally {
    tf.dispose([selector, difference]);
  }
}

interface RunInput {
  classifier: Classifier;
  norm: Norm;
  /** Clean rows of the examples attacked, [m * rowSize]. */
  clean: Float32Array;
  shape: [number, number, number, number];
  labels: Int32Array;
  /** Target class per example (FAB-T) or undefined (untargeted: nearest boundary each iteration). */
  targets: Int32Array | undefined;
  /** Start rows (the clean ones or a random start). */
  start: Float32Array;
  iterations: number;
  alphaMax: number;
  overshoot: number;
  backward: number;
  signal?: AbortSignal;
  onIteration: () => void;
}

/** The hyperplane {<w, z> = b} of the linearised boundary chosen for each example at `point`. */
function boundaries(input: RunInput, point: Float32Array): { w: Float32Array; b: Float64Array } {
  const { classifier, shape, norm, labels, targets } = input;
  const [m] = shape;
  const rowSize = point.length / m;
  const numClasses = classifier.numClasses;
  const pointTensor = tf.tensor4d(point, shape);
  const labelTensor = tf.tensor1d(labels, 'int32');
  const w = new Float32Array(point.length);
  const value = new Float64Array(m);
  try {
    const candidates = targets
      ? [targets]
      : Array.from({ length: numClasses }, (_, c) => new Int32Array(m).fill(c));
    const nearest = new Float64Array(m).fill(Number.POSITIVE_INFINITY);
    for (const classes of candidates) {
      const classTensor = tf.tensor1d(classes, 'int32');
      let linear: ReturnType<typeof linearise>;
      try {
        linear = linearise(classifier, pointTensor, labelTensor, classTensor);
      } finally {
        classTensor.dispose();
      }
      for (let i = 0; i < m; i++) {
        if (classes[i] === labels[i]) continue;
        const row = linear.grad.subarray(i * rowSize, (i + 1) * rowSize);
        // Distance to the linearised boundary in the threat norm: |f| / ||grad||_dual.
        const distance = Math.abs(linear.value[i]) / (TINY + dualNorm(norm, row));
        if (targets || distance < nearest[i]) {
          nearest[i] = distance;
          value[i] = linear.value[i];
          w.set(row, i * rowSize);
        }
      }
    }
  } finally {
    tf.dispose([pointTensor, labelTensor]);
  }
  // f(z) ~ value + <w, z - point> = 0  <=>  <w, z> = <w, point> - value.
  const b = new Float64Array(m);
  for (let i = 0; i < m; i++) {
    let dot = 0;
    for (let j = i * rowSize; j < (i + 1) * rowSize; j++) dot += w[j] * point[j];
    b[i] = dot - value[i];
  }
  return { w, b };
}

/** One FAB run from `start`; returns the smallest-norm misclassified rows and their norms. */
async function singleRun(input: RunInput): Promise<{ rows: Float32Array; norms: Float64Array }> {
  const { classifier, norm, clean, shape, labels, alphaMax, overshoot, backward } = input;
  const [m] = shape;
  const rowSize = clean.length / m;
  const current = input.start.slice();
  const bestRows = clean.slice();
  const bestNorms = new Float64Array(m).fill(Number.POSITIVE_INFINITY);
  const difference = new Float64Array(rowSize);
  const fromHere = new Float64Array(rowSize);
  const fromOrigin = new Float64Array(rowSize);
  for (let iteration = 0; iteration < input.iterations; iteration++) {
    throwIfAborted(input.signal);
    const { w, b } = boundaries(input, current);
    for (let i = 0; i < m; i++) {
      const offset = i * rowSize;
      const wRow = w.subarray(offset, offset + rowSize);
      const here = current.subarray(offset, offset + rowSize);
      const origin = clean.subarray(offset, offset + rowSize);
      hyperplaneBoxStep(norm, here, wRow, b[i], fromHere);
      hyperplaneBoxStep(norm, origin, wRow, b[i], fromOrigin);
      const lengthHere = Math.max(vectorNorm(norm, fromHere), MIN_STEP);
      const lengthOrigin = Math.max(vectorNorm(norm, fromOrigin), MIN_STEP);
      // Lean towards the original point only while the current point is far from the boundary.
      const alpha = Math.min(lengthHere / (lengthHere + lengthOrigin), alphaMax);
      for (let j = 0; j < rowSize; j++) {
        const next =
          (here[j] + overshoot * fromHere[j]) * (1 - alpha) + (origin[j] + overshoot * fromOrigin[j]) * alpha;
        here[j] = Math.min(Math.max(next, 0), 1);
      }
    }
    const predicted = predictions(classifier, current, shape);
    for (let i = 0; i < m; i++) {
      if (predicted[i] === labels[i]) continue;
      const offset = i * rowSize;
      for (let j = 0; j < rowSize; j++) difference[j] = current[offset + j] - clean[offset + j];
      const length = vectorNorm(norm, difference);
      if (length < bestNorms[i]) {
        bestNorms[i] = length;
        bestRows.set(current.subarray(offset, offset + rowSize), offset);
      }
      for (let j = 0; j < rowSize; j++) current[offset + j] = clean[offset + j] + backward * difference[j];
    }
    input.onIteration();
    await yieldToEventLoop();
  }
  return { rows: bestRows, norms: bestNorms };
}

/** A random start around each clean row at radius 0.5 * min(eps, best norm so far) (reference). */
function randomStartRows(norm: Norm, clean: Float32Array, radii: Float64Array, rngs: Rng[]): Float32Array {
  const m = radii.length;
  const rowSize = clean.length / Math.max(m, 1);
  const out = new Float32Array(clean.length);
  const noise = new Float64Array(rowSize);
  for (let i = 0; i < m; i++) {
    const rng = rngs[i];
    for (let j = 0; j < rowSize; j++) noise[j] = norm === 'L2' ? rng.normal() : 2 * rng.next() - 1;
    const scale = radii[i] / (vectorNorm(norm, noise) + TINY);
    for (let j = 0; j < rowSize; j++) {
      const value = clean[i * rowSize + j] + scale * noise[j];
      out[i * rowSize + j] = Math.min(Math.max(value, 0), 1);
    }
  }
  return out;
}

/**
 * FAB on a batch: minimal-norm adversarial points, runs over targets and restarts each only on the
 * examples without an adversarial point of norm <= `stopBelow` yet. Clean errors count as broken at
 * norm 0. The caller disposes `adversarial`. Rejects with an AbortError when `signal` fires.
 *
 * @example
 * const { norms, success } = await fab(model, x, y, { norm: 'L2', eps: 0.5, seed: 0 });
 */
export async function fab(...[classifier, x, y, options]: AttackArgs<FabOptions>): Promise<FabResult> {
  validate(classifier, x, y, options);
  const { norm, eps } = options;
  const targeted = options.targeted ?? true;
  const k = classifier.numClasses;
  const targetCount = targeted ? Math.min(options.targetClasses ?? 9, k - 1) : 1;
  const iterations = options.iterations ?? DEFAULT_ITERATIONS;
  const restarts = options.restarts ?? 1;
  const stopBelow = options.stopBelow ?? eps;
  const name = options.name ?? (targeted ? 'fab-t' : 'fab');
  const n = x.shape[0];
  const seeds = sampleSeedsOf(options, n);
  const rowSize = x.size / Math.max(n, 1);
  const imageShape = x.shape.slice(1) as [number, number, number];

  const clean = x.dataSync() as Float32Array;
  const cleanLogits = logitsOf(classifier, x, Math.max(n, 1));
  const predicted = classAtRank(cleanLogits, k, 1);
  const bestRows = clean.slice();
  const norms = new Float64Array(n).fill(Number.POSITIVE_INFINITY);
  for (let i = 0; i < n; i++) if (predicted[i] !== y[i]) norms[i] = 0;

  const total = targetCount * restarts * iterations;
  let done = 0;
  for (let rank = 2; rank <= targetCount + 1; rank++) {
    const targetsAll = targeted ? classAtRank(cleanLogits, k, rank) : undefined;
    for (let restart = 0; restart < restarts; restart++) {
      const active: number[] = [];
      for (let i = 0; i < n; i++) if (!(norms[i] <= stopBelow)) active.push(i);
      if (active.length === 0) {
        done += iterations;
        options.onProgress?.({ attack: name, done, total });
        continue;
      }
      const activeClean = rowsOf(clean, rowSize, active);
      const start =
        restart === 0
          ? activeClean
          : randomStartRows(
              norm,
              activeClean,
              Float64Array.from(active, (i) => 0.5 * Math.min(eps, norms[i])),
              active.map((i) => new Rng(mixSeed(seeds[i], rank, restart))),
            );
      const run = await singleRun({
        classifier,
        norm,
        clean: activeClean,
        shape: [active.length, ...imageShape],
        labels: Int32Array.from(active, (i) => y[i]),
        targets: targetsAll ? Int32Array.from(active, (i) => targetsAll[i]) : undefined,
        start,
        iterations,
        alphaMax: options.alphaMax ?? 0.1,
        overshoot: options.overshoot ?? 1.05,
        backward: options.backward ?? 0.9,
        signal: options.signal,
        onIteration: () => options.onProgress?.({ attack: name, done: ++done, total }),
      });
      active.forEach((i, j) => {
        if (run.norms[j] < norms[i]) {
          norms[i] = run.norms[j];
          bestRows.set(run.rows.subarray(j * rowSize, (j + 1) * rowSize), i * rowSize);
        }
      });
    }
  }
  // Re-judge the points on one batch: a point just past the boundary in one batch layout must stay
  // misclassified in another (the composition re-verifies on its own batches).
  const judged = predictions(classifier, bestRows, x.shape);
  for (let i = 0; i < n; i++) {
    if (norms[i] === 0 || !Number.isFinite(norms[i]) || judged[i] !== y[i]) continue;
    norms[i] = Number.POSITIVE_INFINITY;
    bestRows.set(clean.subarray(i * rowSize, (i + 1) * rowSize), i * rowSize);
  }
  const success = Uint8Array.from(norms, (value) => (value <= eps ? 1 : 0));
  return { adversarial: tf.tensor4d(bestRows, x.shape), norms, success };
}

export interface FabAttackConfig {
  /** Iterations per run (default 100). */
  iterations?: number;
  alphaMax?: number;
  overshoot?: number;
  backward?: number;
}

/** FAB behind the `Attack` contract: points not broken within eps come back as the clean input. */
function fabAttack(
  name: string,
  config: FabAttackConfig & { targeted: boolean; targetClasses?: number },
): Attack {
  return {
    name,
    async perturb(classifier, x, y, options: AttackOptions): Promise<PerturbResult> {
      const result = await fab(classifier, x, y, { ...config, ...options, name });
      if (result.success.every((broken) => broken === 1)) return result;
      const adversarial = tf.tidy(() => {
        const keep = tf.tensor(result.success, [result.success.length, 1, 1, 1], 'bool');
        return tf.where(tf.broadcastTo(keep, x.shape), result.adversarial, x) as tf.Tensor4D;
      });
      result.adversarial.dispose();
      return { adversarial, success: result.success };
    },
  };
}

/**
 * FAB-T as in AutoAttack 'standard': one run per target class ranked 2..(nTargets+1) by the clean
 * logits (capped at K - 1), each only on the points not yet broken.
 */
export function fabTargeted(config: FabAttackConfig & { nTargets?: number } = {}): Attack {
  const { nTargets = 9, ...rest } = config;
  return fabAttack('fab-t', { ...rest, targeted: true, targetClasses: nTargets });
}

/** Untargeted FAB (AutoAttack 'plus', with 5 restarts): the nearest linearised boundary each step. */
export function fabUntargeted(config: FabAttackConfig = {}): Attack {
  return fabAttack('fab', { ...config, targeted: false });
}
