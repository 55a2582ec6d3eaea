import * as tf from '@tensorflow/tfjs';
import type { Classifier } from './classifier.js';

/**
 * Logits on the host: the one batched forward pass that evaluation, calibration and the attacks'
 * bookkeeping share, and the row-wise softmax / ranking over its values.
 */

/** NHWC images held on the host, values in [0,1]. */
export interface HostImages {
  images: Float32Array;
  shape: readonly [number, number, number, number];
}

/**
 * Logits [n, K] (row-major) of `x`, `batchSize` images per forward pass; leaves no tensor behind.
 * `x` is a tensor (sliced batch by batch) or host images (one tensor per batch).
 */
export function logitsOf(
  classifier: Pick<Classifier, 'logits' | 'numClasses'>,
  x: tf.Tensor4D | HostImages,
  batchSize: number,
): Float32Array {
  const n = x.shape[0];
  const k = classifier.numClasses;
  const out = new Float32Array(n * k);
  const [, h, w, c] = x.shape;
  const rowSize = h * w * c;
  for (let start = 0; start < n; start += batchSize) {
    const size = Math.min(batchSize, n - start);
    const values = tf.tidy(() => {
      const batch =
        x instanceof tf.Tensor
          ? x.slice([start, 0, 0, 0], [size, -1, -1, -1])
          : tf.tensor4d(x.images.subarray(start * rowSize, (start + size) * rowSize), [size, h, w, c]);
      return classifier.logits(batch).dataSync() as Float32Array;
    });
    out.set(values, start * k);
  }
  return out;
}

/**
 * The class ranked `rank` (1 = top) in each row of row-major `logits` [n, k], ties broken by the
 * lower index.
 */
export function classAtRank(logits: Float32Array, k: number, rank = 1): Int32Array {
  const n = logits.length / k;
  const out = new Int32Array(n);
  const order = Array.from({ length: k }, (_, c) => c);
  const at = Math.min(rank, k) - 1;
  for (let i = 0; i < n; i++) {
    const row = logits.subarray(i * k, (i + 1) * k);
    order.sort((a, b) => row[b] - row[a] || a - b);
    out[i] = order[at];
  }
  return out;
}

/** softmax(z / temperature) of each row of row-major `logits` [n, k], on the host. */
export function softmaxRows(logits: Float32Array, k: number, temperature = 1): Float32Array {
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length / k; i++) {
    let max = Number.NEGATIVE_INFINITY;
    for (let c = 0; c < k; c++) max = Math.max(max, logits[i * k + c]);
    let sum = 0;
    for (let c = 0; c < k; c++) sum += Math.exp((logits[i * k + c] - max) / temperature);
    for (let c = 0; c < k; c++) out[i * k + c] = Math.exp((logits[i * k + c] - max) / temperature) / sum;
  }
  return out;
}
