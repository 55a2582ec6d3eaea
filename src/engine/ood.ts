import * as tf from '@tensorflow/tfjs';
import { apgd } from './attacks/apgd.js';
import { type Classifier, probabilities } from './classifier.js';
import { enforceBudget } from './counterfactuals.js';
import { type EngineProgress, type LongRunOptions, type Norm, throwIfAborted } from './types.js';

/**
 * Out-of-distribution detection: metrics on plain score arrays (score = max_k p_k). In-distribution
 * scores are the positives: a detector is good when they are higher than the OOD scores.
 */

export interface OodMetrics {
  /** P(in > out) + 0.5 P(in = out) over all (in, out) pairs: area under the ROC curve. */
  auc: number;
  /** Share of OOD scores at or above the threshold that keeps 95% of the in-distribution scores. */
  fpr_at_95_tpr: number;
  /** Mean maximum confidence on the OOD set. */
  mmc: number;
}

function checkScores(scores: ArrayLike<number>, name: string): void {
  if (scores.length === 0) throw new Error(`'${name}' must not be empty`);
  for (let i = 0; i < scores.length; i++) {
    if (Number.isNaN(scores[i])) throw new Error(`'${name}[${i}]' is NaN`);
  }
}

function sortedCopy(scores: ArrayLike<number>): Float64Array {
  return Float64Array.from(scores).sort();
}

/**
 * AUC with ties counted half, by one merge of the two sorted arrays (O((n + m) log(n + m))):
 * for each distinct value v, the in-scores equal to v beat every smaller out-score and tie with
 * the out-scores equal to v.
 */
export function rocAuc(inScores: ArrayLike<number>, outScores: ArrayLike<number>): number {
  checkScores(inScores, 'inScores');
  checkScores(outScores, 'outScores');
  const positives = sortedCopy(inScores);
  const negatives = sortedCopy(outScores);
  let wins = 0;
  let ties = 0;
  let below = 0; // out-scores strictly below the current value
  let i = 0;
  while (i < positives.length) {
    const value = positives[i];
    let sameIn = 0;
    while (i < positives.length && positives[i] === value) {
      sameIn++;
      i++;
    }
    while (below < negatives.length && negatives[below] < value) below++;
    let equal = 0;
    while (below + equal < negatives.length && negatives[below + equal] === value) equal++;
    wins += sameIn * below;
    ties += sameIn * equal;
  }
  return (wins + 0.5 * ties) / (positives.length * negatives.length);
}

/**
 * Share of held-out in-distribution inputs a fitted OOD threshold lets through (the served gate's
 * true-positive rate: training export and `ratio eval --write-calibration` fit thresholds with it).
 */
export const OOD_GATE_TPR = 0.95;

/**
 * The OOD threshold that keeps `tpr` of the in-distribution inputs: the largest t with at least
 * tpr * n of `inScores` >= t (the first ROC point reaching that TPR, as sklearn's roc_curve gives it).
 * An input whose score is below t is called out-of-distribution.
 *
 * @example thresholdAtTpr([0.9, 0.8, 0.7, 0.6], 0.75) // 0.7: three of the four scores are >= 0.7
 */
export function thresholdAtTpr(inScores: ArrayLike<number>, tpr = 0.95): number {
  checkScores(inScores, 'inScores');
  if (!(tpr > 0 && tpr <= 1)) throw new Error(`'tpr' must be in (0, 1], got ${tpr}`);
  const descending = sortedCopy(inScores).reverse();
  // Tolerate float error in tpr * n (0.95 * 20 = 19.000000000000004).
  const needed = Math.max(1, Math.ceil(tpr * descending.length - 1e-9));
  return descending[needed - 1];
}

/**
 * False-positive rate at 95% true-positive rate: the share of OOD scores at or above
 * thresholdAtTpr(inScores, tpr).
 */
export function fprAtTpr(inScores: ArrayLike<number>, outScores: ArrayLike<number>, tpr = 0.95): number {
  checkScores(outScores, 'outScores');
  const threshold = thresholdAtTpr(inScores, tpr);
  let falsePositives = 0;
  for (let j = 0; j < outScores.length; j++) if (outScores[j] >= threshold) falsePositives++;
  return falsePositives / outScores.length;
}

/**
 * AUC, FPR at 95% TPR and mean max-confidence of OOD scores against in-distribution scores.
 *
 * @example oodMetrics([0.9, 0.8], [0.3, 0.8]) // { auc: 0.875, fpr_at_95_tpr: 0.5, mmc: 0.55 }
 */
export function oodMetrics(inScores: ArrayLike<number>, outScores: ArrayLike<number>): OodMetrics {
  let sum = 0;
  for (let j = 0; j < outScores.length; j++) sum += outScores[j];
  return {
    auc: rocAuc(inScores, outScores),
    fpr_at_95_tpr: fprAtTpr(inScores, outScores),
    mmc: sum / outScores.length,
  };
}

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
}

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
    let best = 0;
    for (let c = 1; c < k; c++) if (values[i * k + c] > values[i * k + best]) best = c;
    confidence[i] = values[i * k + best];
    predicted[i] = best;
  }
  return { confidence, predicted };
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
  const norm = options.norm ?? 'L2';
  const iterations = options.iterations ?? 100;
  const restarts = options.restarts ?? 1;
  const temperature = options.temperature ?? classifier.card.temperature ?? 1;
  const n = x.shape[0];
  const rowSize = x.size / Math.max(n, 1);
  const clean = x.dataSync() as Float32Array;
  const { confidence: cleanConfidence, predicted: cleanPredicted } = maxConfidence(
    classifier,
    x,
    temperature,
  );
  const confidence = cleanConfidence.slice();
  const predicted = cleanPredicted.slice();
  const rows = clean.slice();
  const batches = Math.ceil(n / batchSize);
  const total = batches * iterations * restarts;

  for (let b = 0; b < batches && options.eps > 0; b++) {
    throwIfAborted(options.signal);
    const start = b * batchSize;
    const end = Math.min(n, start + batchSize);
    const batch = x.slice([start, 0, 0, 0], [end - start, -1, -1, -1]);
    try {
      const found = await apgd(classifier, batch, undefined, {
        norm,
        eps: options.eps,
        iterations,
        restarts,
        loss: 'max-log-confidence',
        temperature,
        seed: (options.seed ?? 0) + b,
        signal: options.signal,
        onProgress: (p) =>
          options.onProgress?.({
            phase: 'worst-case confidence',
            done: b * iterations * restarts + p.done,
            total,
          }),
      });
      const candidateRows = found.best.dataSync() as Float32Array;
      tf.dispose([found.best, found.adversarial]);
      enforceBudget(
        norm,
        clean.subarray(start * rowSize, end * rowSize),
        candidateRows,
        rowSize,
        options.eps,
      );
      const candidate = tf.tensor4d(candidateRows, batch.shape);
      const scored = maxConfidence(classifier, candidate, temperature);
      candidate.dispose();
      for (let i = 0; i < end - start; i++) {
        if (scored.confidence[i] > confidence[start + i]) {
          confidence[start + i] = scored.confidence[i];
          predicted[start + i] = scored.predicted[i];
          rows.set(candidateRows.subarray(i * rowSize, (i + 1) * rowSize), (start + i) * rowSize);
        }
      }
    } finally {
      batch.dispose();
    }
  }
  return { confidence, cleanConfidence, predicted, images: tf.tensor4d(rows, x.shape) };
}
