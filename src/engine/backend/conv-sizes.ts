import type * as tf from '@tensorflow/tfjs';

/** The sizes a native convolution takes first, in this order (native/conv.c and onednn.cc alike). */
export type ConvSizes = [
  batch: number,
  inHeight: number,
  inWidth: number,
  inChannels: number,
  outHeight: number,
  outWidth: number,
  outChannels: number,
];

export function convSizes(info: tf.backend_util.Conv2DInfo): ConvSizes {
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, outChannels } = info;
  return [batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, outChannels];
}
