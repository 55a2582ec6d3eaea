import * as tf from '@tensorflow/tfjs';
import type { Classifier } from '../engine/classifier.js';
import type { PixelImage } from './figures.js';

/** Images held in memory for an evaluation, and the small numeric helpers the phases share. */

/** Bad input to an evaluation (unlabelled data, wrong shapes, unreadable files): exit code 2, not a crash. */
export class EvalInputError extends Error {}

/** Images NHWC in [0,1] with optional labels (OOD sets have none). */
export interface ImageSet {
  name: string;
  /** Where it came from (a path, 'uniform noise'), for the report. */
  source: string;
  images: Float32Array;
  shape: [number, number, number, number];
  labels?: Int32Array;
  classNames?: string[];
}

export function rowsOf(set: ImageSet, start: number, end: number): ImageSet {
  const rowSize = set.shape[1] * set.shape[2] * set.shape[3];
  return {
    ...set,
    images: set.images.subarray(start * rowSize, end * rowSize),
    shape: [end - start, set.shape[1], set.shape[2], set.shape[3]],
    labels: set.labels?.subarray(start, end),
  };
}

export function tensorOf(set: ImageSet): tf.Tensor4D {
  return tf.tensor4d(set.images, set.shape);
}

/** Logits of a whole set, batch by batch. */
export function logitsOf(classifier: Classifier, set: ImageSet, batchSize: number): Float32Array {
  const n = set.shape[0];
  const k = classifier.numClasses;
  const out = new Float32Array(n * k);
  for (let start = 0; start < n; start += batchSize) {
    const batch = rowsOf(set, start, Math.min(n, start + batchSize));
    out.set(
      tf.tidy(() => classifier.logits(tensorOf(batch)).dataSync() as Float32Array),
      start * k,
    );
  }
  return out;
}

export function softmaxValues(logits: Float32Array, k: number, temperature: number): Float32Array {
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length / k; i++) {
    const max = Math.max(...logits.subarray(i * k, (i + 1) * k));
    let sum = 0;
    for (let c = 0; c < k; c++) sum += Math.exp((logits[i * k + c] - max) / temperature);
    for (let c = 0; c < k; c++) out[i * k + c] = Math.exp((logits[i * k + c] - max) / temperature) / sum;
  }
  return out;
}

export function argmaxRows(logits: Float32Array, k: number, rank = 1): Int32Array {
  const n = logits.length / k;
  const order = Array.from({ length: k }, (_, c) => c);
  return Int32Array.from({ length: n }, (_, i) => {
    const row = logits.subarray(i * k, (i + 1) * k);
    order.sort((a, b) => row[b] - row[a] || a - b);
    return order[Math.min(rank, k) - 1];
  });
}

export const average = (values: number[]) =>
  values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;

export function pixelImage(set: ImageSet, index: number): PixelImage {
  const [, h, w, c] = set.shape;
  const rowSize = h * w * c;
  if (c !== 1 && c !== 3) throw new Error(`images must have 1 or 3 channels to be drawn, got ${c}`);
  return { data: set.images.slice(index * rowSize, (index + 1) * rowSize), height: h, width: w, channels: c };
}
