import * as tf from '@tensorflow/tfjs';
import type { PixelImage } from './figures.js';

/**
 * Images held in memory as NHWC floats in [0,1]: what an evaluation reads its in-distribution,
 * calibration and OOD sets into (see image-sets.ts for loading them).
 */

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

/** Rows [start, end) of a set, sharing its memory. */
export function rowsOf(set: ImageSet, start: number, end: number): ImageSet {
  const rowSize = set.shape[1] * set.shape[2] * set.shape[3];
  return {
    ...set,
    images: set.images.subarray(start * rowSize, end * rowSize),
    shape: [end - start, set.shape[1], set.shape[2], set.shape[3]],
    labels: set.labels?.subarray(start, end),
  };
}

/** The set as one tensor; the caller disposes it. */
export function tensorOf(set: ImageSet): tf.Tensor4D {
  return tf.tensor4d(set.images, set.shape);
}

/** Image `index` of the set as pixels for a figure. */
export function pixelImage(set: ImageSet, index: number): PixelImage {
  const [, h, w, c] = set.shape;
  const rowSize = h * w * c;
  if (c !== 1 && c !== 3) throw new Error(`images must have 1 or 3 channels to be drawn, got ${c}`);
  return { data: set.images.slice(index * rowSize, (index + 1) * rowSize), height: h, width: w, channels: c };
}
