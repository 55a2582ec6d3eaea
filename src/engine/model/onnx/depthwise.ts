import * as tf from '@tensorflow/tfjs';
import type { ExplicitPad } from './plan.js';

type Pair = [number, number];

/**
 * Depthwise convolution whose input gradient is itself a depthwise convolution: tfjs-backend-wasm
 * has no DepthwiseConv2dNativeBackpropInput kernel, so attacks through MobileNet-style models would
 * fail there. dL/dx = correlation of the zero-dilated, re-padded dy with the flipped filter, one
 * channel per (input channel, multiplier), summed over the multiplier. The filter is a constant of
 * the imported model, so no filter gradient is needed.
 */
export function depthwiseConv(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  strides: Pair,
  pad: ExplicitPad | 'valid',
  dilations: Pair,
): tf.Tensor4D {
  const forward = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const input = args[0] as tf.Tensor4D;
    const value = tf.depthwiseConv2d(input, filter, strides, pad, 'NHWC', dilations);
    return {
      value,
      gradFunc: (dy: tf.Tensor | tf.Tensor[]) =>
        depthwiseInputGradient(dy as tf.Tensor4D, filter, input.shape as number[], strides, pad, dilations),
    };
  });
  return forward(x) as tf.Tensor4D;
}

function depthwiseInputGradient(
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  xShape: number[],
  strides: Pair,
  pad: ExplicitPad | 'valid',
  dilations: Pair,
): tf.Tensor4D {
  const [n, h, w, channels] = xShape;
  const [kh, kw, , multiplier] = filter.shape;
  const [outH, outW] = [dy.shape[1], dy.shape[2]];
  const [[top], [left]] = pad === 'valid' ? [[0], [0]] : [pad[1], pad[2]];
  const effective = [(kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1];
  // Zero dilation: each dy value lands on (i * strideH, j * strideW).
  let spread: tf.Tensor4D = dy;
  if (strides[0] > 1 || strides[1] > 1) {
    const c = dy.shape[3];
    const padded = tf.pad(tf.reshape(dy, [n, outH, 1, outW, 1, c]), [
      [0, 0],
      [0, 0],
      [0, strides[0] - 1],
      [0, 0],
      [0, strides[1] - 1],
      [0, 0],
    ]);
    spread = tf.slice(
      tf.reshape(padded, [n, outH * strides[0], outW * strides[1], c]) as tf.Tensor4D,
      [0, 0, 0, 0],
      [n, (outH - 1) * strides[0] + 1, (outW - 1) * strides[1] + 1, c],
    );
  }
  const before = [effective[0] - 1 - top, effective[1] - 1 - left];
  const after = [
    h + effective[0] - 1 - before[0] - spread.shape[1],
    w + effective[1] - 1 - before[1] - spread.shape[2],
  ];
  // Negative amounts crop: padding wider than the kernel, or rows the forward pass never read.
  const crop = tf.slice(
    spread,
    [0, Math.max(0, -before[0]), Math.max(0, -before[1]), 0],
    [
      n,
      spread.shape[1] - Math.max(0, -before[0]) - Math.max(0, -after[0]),
      spread.shape[2] - Math.max(0, -before[1]) - Math.max(0, -after[1]),
      spread.shape[3],
    ],
  );
  const padded = tf.pad(crop, [
    [0, 0],
    [Math.max(0, before[0]), Math.max(0, after[0])],
    [Math.max(0, before[1]), Math.max(0, after[1])],
    [0, 0],
  ]);
  const flipped = tf.reshape(tf.reverse(filter, [0, 1]), [kh, kw, channels * multiplier, 1]) as tf.Tensor4D;
  const perOutput = tf.depthwiseConv2d(padded, flipped, 1, 'valid', 'NHWC', dilations);
  if (multiplier === 1) return perOutput;
  return tf.sum(tf.reshape(perOutput, [n, h, w, channels, multiplier]), 4) as tf.Tensor4D;
}
