import * as tf from '@tensorflow/tfjs';
import type { Classifier } from './classifier.js';

/**
 * Logits on the host: the one batched forward pass that evaluation, calibration, training and the
 * attacks' bookkeeping share, and the ranking of classes over its values (the host softmax is in
 * calibration.ts).
 */

/** NHWC images held on the host, values in [0,1]. */
export interface HostImages {
  images: Float32Array;
  shape: readonly [number, number, number, number];
}

/**
 * Images that yield their batches in order, each a tensor the consumer disposes (a data set's
 * unshuffled `batches()`), so a large uint8 set never has to exist as floats all at once.
 */
export interface BatchedImages {
  readonly size: number;
  batches(batchSize: number): Iterable<{ x: tf.Tensor4D }>;
}

export type LogitsInput = tf.Tensor4D | HostImages | BatchedImages;

function isBatched(x: LogitsInput): x is BatchedImages {
  return !(x instanceof tf.Tensor) && typeof (x as Partial<BatchedImages>).batches === 'function';
}

function* batchesOf(x: LogitsInput, batchSize: number): Generator<tf.Tensor4D> {
  if (x instanceof tf.Tensor) {
    const n = x.shape[0];
    for (let start = 0; start < n; start += batchSize) {
      yield x.slice([start, 0, 0, 0], [Math.min(batchSize, n - start), -1, -1, -1]);
    }
  } else if (isBatched(x)) {
    for (const batch of x.batches(batchSize)) yield batch.x;
  } else {
    const [n, h, w, c] = x.shape;
    const rowSize = h * w * c;
    for (let start = 0; start < n; start += batchSize) {
      const size = Math.min(batchSize, n - start);
      yield tf.tensor4d(x.images.subarray(start * rowSize, (start + size) * rowSize), [size, h, w, c]);
    }
  }
}

/**
 * A forward pass gave a logit that is NaN or infinite (NaN weights, an overflowing layer, a log of
 * zero): no prediction, loss or margin computed from it means anything, so an audit or evaluation
 * stops with this error instead of giving a verdict.
 */
export class NonFiniteLogitsError extends Error {
  override readonly name = 'NonFiniteLogitsError';
  constructor(
    /** Where it was met, e.g. 'the clean forward pass' or 'APGD-CE'. */
    readonly where: string,
    /** The point's index, when it is known. */
    readonly point?: number,
  ) {
    super(
      `the model returned a non-finite logit (NaN or infinity) in ${where}${point === undefined ? '' : ` at point ${point}`}; the audit has no verdict (check the model's weights and its output layer)`,
    );
  }
}

/** Throws `NonFiniteLogitsError` at the first non-finite value (values computed from logits). */
export function assertFinite(
  values: ArrayLike<number>,
  where: string,
  rowSize = 1,
  firstPoint?: (row: number) => number,
): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      const row = Math.floor(i / rowSize);
      throw new NonFiniteLogitsError(where, firstPoint ? firstPoint(row) : undefined);
    }
  }
}

/**
 * Logits [n, K] (row-major) of `x`, `batchSize` images per forward pass, in order; leaves no tensor
 * behind. `x` is a tensor (sliced batch by batch), host images, or batched images.
 */
export function logitsOf(
  classifier: Pick<Classifier, 'logits' | 'numClasses'>,
  x: LogitsInput,
  batchSize: number,
): Float32Array {
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) {
    throw new Error(`'batchSize' must be an integer >= 1, got ${batchSize}`);
  }
  const n = isBatched(x) ? x.size : x.shape[0];
  const k = classifier.numClasses;
  const out = new Float32Array(n * k);
  let row = 0;
  for (const batch of batchesOf(x, batchSize)) {
    const values = tf.tidy(() => classifier.logits(batch).dataSync() as Float32Array);
    batch.dispose();
    out.set(values, row * k);
    row += values.length / k;
  }
  return out;
}

/** The index of the largest value in row `i` of row-major `values` [n, k]; the first one on ties. */
export function argmaxOfRow(values: ArrayLike<number>, k: number, i: number): number {
  let best = 0;
  for (let c = 1; c < k; c++) if (values[i * k + c] > values[i * k + best]) best = c;
  return best;
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
