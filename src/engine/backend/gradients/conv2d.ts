import * as tf from '@tensorflow/tfjs';
import type { ConvPad } from './conv-pad.js';
import { nativeCorrelation } from './native-conv.js';

/**
 * Conv2D gradients expressed as forward convolutions (NHWC), so that every backend runs them on its
 * fastest kernel: on wasm the forward Conv2D is XNNPACK, while the stock Conv2DBackpropInput is a
 * naive loop and Conv2DBackpropFilter does not exist at all.
 */

export type { ConvPad } from './conv-pad.js';

type Pair = [number, number];

function convInfo(
  xShape: readonly number[],
  filterShape: readonly number[],
  strides: number | Pair,
  pad: ConvPad,
  dimRoundingMode?: 'floor' | 'round' | 'ceil',
): tf.backend_util.Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides,
    1,
    pad,
    dimRoundingMode,
  );
}

function checkRank4(name: string, shape: readonly number[]): void {
  if (shape.length !== 4) throw new Error(`'${name}' must be rank 4 (NHWC), got [${shape}]`);
}

/**
 * Inserts (stride - 1) zeros between the rows and the columns of `dy` ("zero dilation"), so that a
 * strided convolution's transpose becomes a stride-1 convolution. Identity for stride 1.
 */
function zeroDilate(dy: tf.Tensor4D, [strideH, strideW]: Pair): tf.Tensor4D {
  if (strideH === 1 && strideW === 1) return dy;
  const [n, h, w, c] = dy.shape;
  // [n, h, 1, w, 1, c] padded with zeros to [n, h, sH, w, sW, c], then folded: every value lands on
  // (i * sH, j * sW) and the trailing zeros past the last row/column are cut.
  const spread = tf.pad(tf.reshape(dy, [n, h, 1, w, 1, c]), [
    [0, 0],
    [0, 0],
    [0, strideH - 1],
    [0, 0],
    [0, strideW - 1],
    [0, 0],
  ]);
  const folded = tf.reshape(spread, [n, h * strideH, w * strideW, c]);
  return tf.slice(folded, [0, 0, 0, 0], [n, (h - 1) * strideH + 1, (w - 1) * strideW + 1, c]) as tf.Tensor4D;
}

/**
 * Pads (positive) or crops (negative) the two spatial axes of an NHWC tensor. Crops happen when the
 * forward convolution never read the last rows/columns (valid padding, stride not dividing the size).
 */
function padOrCrop(x: tf.Tensor4D, [top, bottom]: Pair, [left, right]: Pair): tf.Tensor4D {
  const crop: [number, number, number, number] = [0, Math.max(0, -top), Math.max(0, -left), 0];
  let result = x;
  if (crop[1] > 0 || crop[2] > 0 || bottom < 0 || right < 0) {
    const [n, h, w, c] = x.shape;
    const size: [number, number, number, number] = [
      n,
      h - crop[1] - Math.max(0, -bottom),
      w - crop[2] - Math.max(0, -right),
      c,
    ];
    result = tf.slice(x, crop, size);
  }
  return result;
}

/**
 * dL/dx of `conv2d(x, filter, strides, pad)` given the upstream gradient `dy`:
 * the stride-1 "full" convolution of the zero-dilated upstream gradient with the spatially flipped,
 * in/out-transposed filter.
 */
export function conv2dInputGradient(
  xShape: readonly number[],
  dy: tf.Tensor4D,
  filter: tf.Tensor4D,
  strides: number | Pair,
  pad: ConvPad,
  dimRoundingMode?: 'floor' | 'round' | 'ceil',
): tf.Tensor4D {
  checkRank4('xShape', xShape);
  checkRank4('dy', dy.shape);
  checkRank4('filter', filter.shape);
  return tf.tidy(() => {
    const info = convInfo(xShape, filter.shape, strides, pad, dimRoundingMode);
    const { top, left } = info.padInfo;
    const [kh, kw] = [info.filterHeight, info.filterWidth];
    const dilated = zeroDilate(dy, [info.strideHeight, info.strideWidth]);
    // Rows of dx: dx[p] = sum_a dyDilated[p + top - a] * W[a]; as a correlation with the flipped
    // filter, the dilated gradient needs kh - 1 - top rows before it and enough after it to produce
    // exactly inHeight rows.
    const padTop = kh - 1 - top;
    const padLeft = kw - 1 - left;
    const padBottom = info.inHeight + kh - 1 - padTop - dilated.shape[1];
    const padRight = info.inWidth + kw - 1 - padLeft - dilated.shape[2];
    const flipped = flippedTransposedFilter(filter);
    const source = padOrCrop(dilated, [padTop, padBottom], [padLeft, padRight]);
    const pads: [[number, number], [number, number]] = [
      [Math.max(0, padTop), Math.max(0, padBottom)],
      [Math.max(0, padLeft), Math.max(0, padRight)],
    ];
    // On wasm a direct SIMD loop (native-conv.ts), elsewhere the backend's own convolution.
    return (
      nativeCorrelation(source, flipped, pads) ?? tf.conv2d(source, flipped, 1, [[0, 0], ...pads, [0, 0]])
    );
  });
}

/**
 * dL/dfilter of `conv2d(x, filter, strides, pad)` given the upstream gradient `dy`, as one forward
 * convolution whose reduction runs over the examples and the output positions.
 *
 * The other arrangement (dy as the input, x as the filter: a smaller filter for XNNPACK to repack
 * where in-channels < out-channels) is slower on every smallCnn layer (bench:engine), so it is not
 * offered.
 */
export function conv2dFilterGradient(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  filterShape: readonly number[],
  strides: number | Pair,
  pad: ConvPad,
  dimRoundingMode?: 'floor' | 'round' | 'ceil',
): tf.Tensor4D {
  checkRank4('x', x.shape);
  checkRank4('dy', dy.shape);
  checkRank4('filterShape', filterShape);
  return tf.tidy(() => {
    const info = convInfo(x.shape, filterShape, strides, pad, dimRoundingMode);
    // dW[a, b, ci, co] = sum over n, p, q of xPadded[n, p*s + a, q*s + b, ci] * dy[n, p, q, co]: x with
    // in-channels as the batch and examples as the channels, convolved by dy as the filter (examples as
    // its in-channels), dilated by the stride.
    const { top, left } = info.padInfo;
    const [kh, kw] = [info.filterHeight, info.filterWidth];
    const [sh, sw] = [info.strideHeight, info.strideWidth];
    // The padded input must span exactly kh + (outHeight - 1) * sh rows for a kh-row result.
    const padBottom = kh + (info.outHeight - 1) * sh - info.inHeight - top;
    const padRight = kw + (info.outWidth - 1) * sw - info.inWidth - left;
    const source = swapBatchAndChannels(padOrCrop(x, [top, padBottom], [left, padRight]));
    const gradientAsFilter = tf.transpose(dy, [1, 2, 0, 3]);
    const grad = tf.conv2d(
      source,
      gradientAsFilter,
      1,
      [
        [0, 0],
        [Math.max(0, top), Math.max(0, padBottom)],
        [Math.max(0, left), Math.max(0, padRight)],
        [0, 0],
      ],
      'NHWC',
      [sh, sw],
    );
    // [inChannels, kh, kw, outChannels] -> [kh, kw, inChannels, outChannels]
    return tf.transpose(grad, [1, 2, 0, 3]);
  });
}

/**
 * [N, H, W, C] -> [C, H, W, N] as a 2-D transpose ([N, HWC] -> [HWC, N]) then a swap of whole rows
 * ([HW, C, N] -> [C, HW, N]): the same result as tf.transpose(x, [3, 1, 2, 0]), faster on wasm,
 * whose general 4-D transpose is slow.
 */
function swapBatchAndChannels(x: tf.Tensor4D): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const pixelsLast = tf.transpose(tf.reshape(x, [n, h * w * c]));
  const channelsFirst = tf.transpose(tf.reshape(pixelsLast, [h * w, c, n]), [1, 0, 2]);
  return tf.reshape(channelsFirst, [c, h, w, n]);
}

/** Backends whose tensors can be read synchronously without a device transfer. */
const HOST_MEMORY_BACKENDS = new Set(['wasm', 'cpu']);

/**
 * [kh, kw, ci, co] -> spatially flipped [kh, kw, co, ci], the input gradient's filter. In JavaScript
 * where tensors live in CPU memory: tfjs's Reverse and Transpose kernels on wasm cost milliseconds
 * even for 70k values (a few percent of a smallCnn step). Tensor ops are kept where data lives on a
 * device, and while a tape records (second derivatives), as values computed in JavaScript are not
 * differentiable.
 */
function flippedTransposedFilter(filter: tf.Tensor4D): tf.Tensor4D {
  if (!HOST_MEMORY_BACKENDS.has(tf.getBackend()) || tf.engine().state.gradientDepth > 0) {
    return tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]);
  }
  const [kh, kw, ci, co] = filter.shape;
  const source = filter.dataSync() as Float32Array;
  const out = new Float32Array(source.length);
  for (let a = 0; a < kh; a++) {
    for (let b = 0; b < kw; b++) {
      const from = (a * kw + b) * ci * co;
      const to = ((kh - 1 - a) * kw + (kw - 1 - b)) * co * ci;
      for (let i = 0; i < ci; i++) {
        for (let o = 0; o < co; o++) out[to + o * ci + i] = source[from + i * co + o];
      }
    }
  }
  return tf.tensor4d(out, [kh, kw, co, ci]);
}
