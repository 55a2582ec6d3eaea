import * as tf from '@tensorflow/tfjs';
import { hashName, mixSeed } from '../../util/random.js';
import { type ApgdOptions, apgd } from '../attacks/apgd.js';
import { DEFAULT_ITERATIONS } from '../attacks/defaults.js';
import { enforceBudget } from '../counterfactuals.js';
import { type Classifier, probabilities } from '../model/classifier.js';
import { argmaxOfRow } from '../model/logits.js';
import { type EngineProgress, type LongRunOptions, type Norm, throwIfAborted } from '../types.js';

/**
 * The worst-case OOD attack: the highest confidence a model reaches in a ball around each
 * (out-of-distribution) image. Metrics over the scores it gives are in metrics.ts.
 */

export interface WorstCaseOptions extends LongRunOptions<EngineProgress> {
  /** Radius of the ball around each image (1.0 for 32x32 data in the paper). */
  eps: number;
  /** APGD iterations per restart (default 100). */
  iterations?: number;
  restarts?: number;
  norm?: Norm;
  /** Softmax temperature (default: the card's), applied in the objective and the reported confidence. */
  temperature?: number;
  /** Images per APGD batch (default 128), to bound memory on large OOD sets. */
  batchSize?: number;
  /**
   * Global index of the first image of `x` in the whole set (default 0). Each image's random start
   * draws from (seed, global index, restart), so any split of a set into parts (a worker pool's
   * shards, batches) gives the same confidences as one call on all of it.
   */
  firstIndex?: number;
}

/** Mixed into every image's seed, so the worst-case search never shares draws with an attack. */
const WORST_CASE_SEED = hashName('worst-case-confidence');

export interface WorstCaseResult {
  /** Per image, the highest max_k p_k found in the ball (never below `cleanConfidence`). */
  confidence: Float32Array;
  /** max_k p_k at the image itself. */
  cleanConfidence: Float32Array;
  /** The class of highest probability at the worst-case point. */
  predicted: Int32Array;
  /** Where the confidence was found [n, H, W, C]; the caller disposes it. */
  images: tf.Tensor4D;
}

/** max_k p_k and its argmax per row of `x`. */
function maxConfidence(classifier: Classifier, x: tf.Tensor4D, temperature: number) {
  const probs = probabilities(classifier, x, { temperature });
  const values = probs.dataSync() as Float32Array;
  probs.dispose();
  const k = classifier.numClasses;
  const n = x.shape[0];
  const confidence = new Float32Array(n);
  const predicted = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const best = argmaxOfRow(values, k, i);
    confidence[i] = values[i * k + best];
    predicted[i] = best;
  }
  return { confidence, predicted };
}

/** One search of `searchBall`: its APGD objective, and what becomes of the points it finds. */
export interface BallSearch {
  /** The progress phase. */
  phase: string;
  /** Labels of all of `x` (each batch gets its rows), for an objective that needs them. */
  labels?: Int32Array;
  /** The objective and seeds for batch `b`, rows `start` to `end` of `x`. */
  objective: (
    b: number,
    start: number,
    end: number,
  ) => Pick<ApgdOptions, 'loss' | 'temperature' | 'seed' | 'sampleSeeds'>;
  /** The points found for rows from `start` on, within the budget: as a tensor (freed after) and as rows. */
  keep: (candidate: tf.Tensor4D, rows: Float32Array, start: number) => void;
}

/**
 * APGD over `x` in batches of `options.batchSize` within the eps-ball and [0,1], each found point
 * held to the budget exactly (enforceBudget against `clean`, the pixels of `x`). The signal is
 * checked before each batch; at eps 0 nothing is searched.
 */
export async function searchBall(
  classifier: Classifier,
  x: tf.Tensor4D,
  clean: Float32Array,
  options: Omit<WorstCaseOptions, 'firstIndex'>,
  search: BallSearch,
): Promise<void> {
  const batchSize = options.batchSize ?? 128;
  const norm = options.norm ?? 'L2';
  const iterations = options.iterations ?? DEFAULT_ITERATIONS;
  const restarts = options.restarts ?? 1;
  const n = x.shape[0];
  const rowSize = x.size / Math.max(n, 1);
  const batches = Math.ceil(n / batchSize);
  for (let b = 0; b < batches && options.eps > 0; b++) {
    throwIfAborted(options.signal);
    const start = b * batchSize;
    const end = Math.min(n, start + batchSize);
    const batch = x.slice([start, 0, 0, 0], [end - start, -1, -1, -1]);
    try {
      const found = await apgd(classifier, batch, search.labels?.subarray(start, end), {
        norm,
        eps: options.eps,
        iterations,
        restarts,
        ...search.objective(b, start, end),
        signal: options.signal,
        onProgress: (p) =>
          options.onProgress?.({
            phase: search.phase,
            done: b * iterations * restarts + p.done,
            total: batches * iterations * restarts,
          }),
      });
      const rows = found.best.dataSync() as Float32Array;
      tf.dispose([found.best, found.adversarial]);
      enforceBudget(norm, clean.subarray(start * rowSize, end * rowSize), rows, rowSize, options.eps);
      const candidate = tf.tensor4d(rows, batch.shape);
      try {
        search.keep(candidate, rows, start);
      } finally {
        candidate.dispose();
      }
    } finally {
      batch.dispose();
    }
  }
}

/**
 * Worst-case confidence around (out-of-distribution) images: APGD maximising max_k log p_k over
 * the eps-ball intersected with [0,1]. The value is a lower bound on the true maximum, so a
 * worst-case AUC computed from it is an upper bound. The clean image is a candidate too, so the
 * result is never below the clean confidence.
 *
 * @example
 * const wc = await worstCaseConfidence(model, ood, { eps: 1, seed: 0 });
 * oodMetrics(inScores, wc.confidence).auc // worst-case AUC
 * wc.images.dispose();
 */
export async function worstCaseConfidence(
  classifier: Classifier,
  x: tf.Tensor4D,
  options: WorstCaseOptions,
): Promise<WorstCaseResult> {
  if (x.rank !== 4) throw new Error(`'x' must be rank 4 (NHWC), got [${x.shape}]`);
  if (!(options.eps >= 0 && Number.isFinite(options.eps))) {
    throw new Error(`'eps' must be a finite number >= 0, got ${options.eps}`);
  }
  const batchSize = options.batchSize ?? 128;
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) {
    throw new Error(`'batchSize' must be an integer >= 1, got ${batchSize}`);
  }
  const temperature = options.temperature ?? classifier.card.temperature ?? 1;
  const rowSize = x.size / Math.max(x.shape[0], 1);
  const clean = x.dataSync() as Float32Array;
  const { confidence: cleanConfidence, predicted: cleanPredicted } = maxConfidence(
    classifier,
    x,
    temperature,
  );
  const confidence = cleanConfidence.slice();
  const predicted = cleanPredicted.slice();
  const rows = clean.slice();
  const seed = options.seed ?? 0;
  const firstIndex = options.firstIndex ?? 0;
  if (!(Number.isInteger(firstIndex) && firstIndex >= 0)) {
    throw new Error(`'firstIndex' must be an integer >= 0, got ${firstIndex}`);
  }

  await searchBall(classifier, x, clean, options, {
    phase: 'worst-case confidence',
    objective: (_, start, end) => ({
      loss: 'max-log-confidence',
      temperature,
      seed,
      sampleSeeds: Uint32Array.from({ length: end - start }, (_, i) =>
        mixSeed(seed, WORST_CASE_SEED, firstIndex + start + i),
      ),
    }),
    keep: (candidate, candidateRows, start) => {
      const scored = maxConfidence(classifier, candidate, temperature);
      for (let i = 0; i < candidate.shape[0]; i++) {
        if (scored.confidence[i] > confidence[start + i]) {
          confidence[start + i] = scored.confidence[i];
          predicted[start + i] = scored.predicted[i];
          rows.set(candidateRows.subarray(i * rowSize, (i + 1) * rowSize), (start + i) * rowSize);
        }
      }
    },
  });
  return { confidence, cleanConfidence, predicted, images: tf.tensor4d(rows, x.shape) };
}
