import * as tf from '@tensorflow/tfjs';
import { type Classifier, probabilities } from '../../engine/model/classifier.js';
import { argmaxOfRow } from '../../engine/model/logits.js';
import { InvalidInputError } from '../errors.js';
import { type ImageInput, type ImageLimits, imagesToPixels } from './images.js';

/** The predict use case: calibrated probabilities, top-k and the in-distribution verdict per image. */

/** Default max-confidence threshold when the card gives none. */
export const DEFAULT_OOD_THRESHOLD = 0.5;

/** The OOD threshold a request uses: its own, else the card's, else the default. */
export function oodThreshold(model: Classifier, requested: number | undefined): number {
  return requested ?? model.card.oodThreshold ?? DEFAULT_OOD_THRESHOLD;
}

export interface ClassScore {
  index: number;
  class: string;
  probability: number;
}

export interface Prediction {
  predicted: ClassScore;
  probabilities: number[];
  top_k: ClassScore[];
  max_confidence: number;
  in_distribution: boolean;
}

/** What /v1 predict and /v2 infer say of one image. */
export interface Verdict {
  /** The most probable class (the lowest index among equals). */
  predicted: number;
  max_confidence: number;
  /** max_confidence >= the threshold. */
  in_distribution: boolean;
}

/** The verdict on one image's calibrated probabilities (in class order). */
export function verdictOf(probabilities: ArrayLike<number>, threshold: number): Verdict {
  const best = argmaxOfRow(probabilities, probabilities.length, 0);
  const confidence = probabilities[best];
  return { predicted: best, max_confidence: confidence, in_distribution: confidence >= threshold };
}

/** One image's probabilities (calibrated, in class order) as a prediction with its verdict. */
export function describePrediction(
  model: Classifier,
  row: number[],
  topK: number,
  threshold: number,
): Prediction {
  const names = model.card.classNames;
  const order = row.map((_, i) => i).sort((a, b) => row[b] - row[a] || a - b);
  const score = (index: number) => ({ index, class: names[index], probability: row[index] });
  const { predicted, ...verdict } = verdictOf(row, threshold);
  return {
    predicted: score(predicted),
    probabilities: row,
    top_k: order.slice(0, topK).map(score),
    ...verdict,
  };
}

export interface PredictOptions {
  limits: ImageLimits;
  /** Max-confidence threshold of the verdict (default: the card's). */
  threshold?: number;
  /** Classes listed per image (default 5, at most the class count). */
  topK?: number;
  /**
   * Calibrated probabilities of `count` NHWC rows (`count x K` values): the dynamic batcher in the
   * service (InferenceService.probabilities); default: one forward pass on this thread.
   */
  forward?: (pixels: Float32Array, count: number) => Promise<Float32Array>;
}

/** One forward pass on this thread at the card's temperature; leaves no tensor behind. */
function forwardHere(model: Classifier, pixels: Float32Array, count: number): Float32Array {
  const x = tf.tensor4d(pixels, [count, ...model.card.inputShape]);
  try {
    const probs = probabilities(model, x);
    const values = probs.dataSync() as Float32Array;
    probs.dispose();
    return values;
  } finally {
    x.dispose();
  }
}

export interface PredictResult {
  temperature: number;
  threshold: number;
  predictions: Prediction[];
}

/** Predicts every image in one batch; leaves no tensor behind. */
export async function predictImages(
  model: Classifier,
  inputs: ImageInput[],
  options: PredictOptions,
): Promise<PredictResult> {
  const threshold = oodThreshold(model, options.threshold);
  const topK = Math.min(options.topK ?? 5, model.numClasses);
  if (!(topK >= 1)) throw new InvalidInputError('top_k', `'top_k' must be >= 1`);
  const pixels = await imagesToPixels(inputs, model, options.limits);
  const values = options.forward
    ? await options.forward(pixels, inputs.length)
    : forwardHere(model, pixels, inputs.length);
  const k = model.numClasses;
  const predictions = inputs.map((_, i) =>
    describePrediction(model, Array.from(values.subarray(i * k, (i + 1) * k)), topK, threshold),
  );
  return { temperature: model.card.temperature, threshold, predictions };
}
