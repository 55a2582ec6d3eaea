import * as tf from '@tensorflow/tfjs';
import { apgd } from './attacks/apgd.js';
import { vectorNorm } from './attacks/projections.js';
import { type Classifier, probabilities } from './model/classifier.js';
import { type EngineProgress, type LongRunOptions, type Norm, throwIfAborted } from './types.js';

/**
 * Visual counterfactuals (RATIO paper, Figures 2-4): for image x, target class t and budget eps,
 * maximise p_t(z) over ||z - x||_2 <= eps, z in [0,1], with APGD on log p_t. Each radius keeps the
 * best point found at it or at any smaller radius (a point feasible for a smaller ball is feasible
 * for a larger one), so p_target never decreases with the radius.
 */

export const DEFAULT_COUNTERFACTUAL_RADII: readonly number[] = [0.5, 1, 1.5, 2, 2.5, 3];

export interface CounterfactualOptions extends LongRunOptions<EngineProgress> {
  /** L2 budgets (default 0.5, 1, ..., 3); sorted ascending in the result. */
  radii?: readonly number[];
  /** APGD iterations per radius (default 500). */
  iterations?: number;
  restarts?: number;
  /** The threat model; the paper's counterfactuals are L2. */
  norm?: Norm;
  /** Softmax temperature for the objective and the reported probabilities (default: the card's). */
  temperature?: number;
}

export interface CounterfactualsAtRadius {
  eps: number;
  /** The counterfactual images [n, H, W, C]; the caller disposes them. */
  images: tf.Tensor4D;
  /** p_t at each image. */
  p_target: Float32Array;
  /** p_c at each image, c = the original prediction. */
  p_original: Float32Array;
  /** ||z - x|| of each image (the norm of the threat model), never above eps. */
  distance: Float64Array;
}

export interface CounterfactualResult {
  /** The model's prediction on the clean image (the class c of p_original). */
  originalClass: Int32Array;
  targets: Int32Array;
  /** p_t and p_c on the clean images (radius 0). */
  clean: { p_target: Float32Array; p_original: Float32Array };
  radii: CounterfactualsAtRadius[];
}

/**
 * Pulls every row of `candidate` (float32, NHWC rows of `rowSize`) into the eps-ball around `clean`
 * and into [0,1], so that the norm computed exactly (float64) from the stored float32 values is
 * <= eps: float32 projections on the backend can overshoot eps by a few ulps. Modifies `candidate`
 * and returns the distances.
 */
export function enforceBudget(
  norm: Norm,
  clean: Float32Array,
  candidate: Float32Array,
  rowSize: number,
  eps: number,
): Float64Array {
  const rows = clean.length / rowSize;
  const distances = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const start = r * rowSize;
    for (let j = start; j < start + rowSize; j++) candidate[j] = Math.min(1, Math.max(0, candidate[j]));
    let distance = vectorNorm(norm, candidate, clean, start, rowSize);
    for (let attempt = 0; distance > eps; attempt++) {
      // Shrink towards x a little more each attempt; after ~40 attempts the row is x itself.
      const scale = attempt >= 40 ? 0 : (eps / distance) * (1 - 1e-6 * 2 ** attempt);
      for (let j = start; j < start + rowSize; j++) {
        candidate[j] = Math.fround(clean[j] + (candidate[j] - clean[j]) * Math.max(0, scale));
      }
      distance = vectorNorm(norm, candidate, clean, start, rowSize);
    }
    distances[r] = distance;
  }
  return distances;
}

/** p_t and p_c per example at `x` (temperature applied); no tensors left behind. */
export function classProbabilities(
  classifier: Classifier,
  x: tf.Tensor4D,
  targets: Int32Array,
  original: Int32Array,
  temperature: number,
): { p_target: Float32Array; p_original: Float32Array } {
  const probs = probabilities(classifier, x, { temperature });
  const values = probs.dataSync() as Float32Array;
  probs.dispose();
  const k = classifier.numClasses;
  return {
    p_target: Float32Array.from(targets, (t, i) => values[i * k + t]),
    p_original: Float32Array.from(original, (c, i) => values[i * k + c]),
  };
}

function validate(
  classifier: Classifier,
  x: tf.Tensor4D,
  targets: Int32Array,
  radii: readonly number[],
): void {
  if (x.rank !== 4) throw new Error(`'x' must be rank 4 (NHWC), got [${x.shape}]`);
  if (targets.length !== x.shape[0]) {
    throw new Error(`'targets' must have one class per image (${x.shape[0]}), got ${targets.length}`);
  }
  targets.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t >= classifier.numClasses) {
      throw new Error(`'targets[${i}]' must be a class in [0, ${classifier.numClasses - 1}], got ${t}`);
    }
  });
  if (radii.length === 0) throw new Error("'radii' must not be empty");
  radii.forEach((eps, i) => {
    if (!(eps > 0 && Number.isFinite(eps)))
      throw new Error(`'radii[${i}]' must be a finite number > 0, got ${eps}`);
  });
}

/**
 * Counterfactuals of `x` towards `targets` for every radius. t may equal the original prediction
 * (then the image is pushed to be more typical of its own class).
 *
 * @example
 * const cf = await counterfactuals(model, x, Int32Array.from([3]), { radii: [0.5, 1], seed: 0 });
 * cf.radii[1].p_target[0] >= cf.radii[0].p_target[0] // true
 */
export async function counterfactuals(
  classifier: Classifier,
  x: tf.Tensor4D,
  targets: Int32Array,
  options: CounterfactualOptions = {},
): Promise<CounterfactualResult> {
  const radii = [...(options.radii ?? DEFAULT_COUNTERFACTUAL_RADII)];
  validate(classifier, x, targets, radii);
  radii.sort((a, b) => a - b);
  const norm = options.norm ?? 'L2';
  const iterations = options.iterations ?? 500;
  const restarts = options.restarts ?? 1;
  const temperature = options.temperature ?? classifier.card.temperature ?? 1;
  const seed = options.seed ?? 0;
  const n = x.shape[0];
  const rowSize = x.size / Math.max(n, 1);

  const clean = x.dataSync() as Float32Array;
  const originalClass = tf.tidy(() => classifier.logits(x).argMax(1).dataSync() as Int32Array);
  const cleanProbabilities = classProbabilities(classifier, x, targets, originalClass, temperature);

  // The best feasible point so far per example, starting from x itself (radius 0).
  const bestRows = clean.slice();
  const bestTarget = cleanProbabilities.p_target.slice();
  const bestOriginal = cleanProbabilities.p_original.slice();
  const bestDistance = new Float64Array(n);
  const results: CounterfactualsAtRadius[] = [];
  const total = radii.length * iterations * restarts;
  try {
    for (let r = 0; r < radii.length; r++) {
      throwIfAborted(options.signal);
      const eps = radii[r];
      const phase = `counterfactuals eps=${eps}`;
      const found = await apgd(classifier, x, undefined, {
        norm,
        eps,
        iterations,
        restarts,
        loss: 'log-confidence-target',
        targets,
        temperature,
        seed: seed + r,
        signal: options.signal,
        onProgress: (p) => options.onProgress?.({ phase, done: r * iterations * restarts + p.done, total }),
      });
      const candidateRows = found.best.dataSync() as Float32Array;
      tf.dispose([found.best, found.adversarial]);
      const distances = enforceBudget(norm, clean, candidateRows, rowSize, eps);
      const candidate = tf.tensor4d(candidateRows, x.shape);
      const scored = classProbabilities(classifier, candidate, targets, originalClass, temperature);
      candidate.dispose();
      for (let i = 0; i < n; i++) {
        if (scored.p_target[i] > bestTarget[i]) {
          bestRows.set(candidateRows.subarray(i * rowSize, (i + 1) * rowSize), i * rowSize);
          bestTarget[i] = scored.p_target[i];
          bestOriginal[i] = scored.p_original[i];
          bestDistance[i] = distances[i];
        }
      }
      results.push({
        eps,
        // A copy: the cpu backend keeps the array it is given, and bestRows changes at larger radii.
        images: tf.tensor4d(bestRows.slice(), x.shape),
        p_target: bestTarget.slice(),
        p_original: bestOriginal.slice(),
        distance: bestDistance.slice(),
      });
    }
  } catch (error) {
    tf.dispose(results.map((result) => result.images));
    throw error;
  }
  return { originalClass, targets: targets.slice(), clean: cleanProbabilities, radii: results };
}
