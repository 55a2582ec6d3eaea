import * as tf from '@tensorflow/tfjs';

/**
 * Conv2D gradients expressed as forward convolutions (NHWC), so that every backend runs them on its
 * fastest kernel: on wasm the forward Conv2D is XNNPACK, while the stock Conv2DBackpropInput is a
 * naive loop and Conv2DBackpropFilter does not exist at all.
 */

export type ConvPad =
  | 'same'
  | 'valid'
  | number
  | [[number, number], [number, number], [number, number], [number, number]];
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
    const flipped = tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]);
    const source = padOrCrop(dilated, [padTop, padBottom], [padLeft, padRight]);
    return tf.conv2d(source, flipped, 1, [
      [0, 0],
      [Math.max(0, padTop), Math.max(0, padBottom)],
      [Math.max(0, padLeft), Math.max(0, padRight)],
      [0, 0],
    ]);
  });
}

/**
 * dL/dfilter of `conv2d(x, filter, strides, pad)` given the upstream gradient `dy`: a forward
 * convolution where the input's batch and channel axes trade places (in-channels become the batch,
 * examples become the channels) and the upstream gradient is the filter, dilated by the stride.
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
    const { top, left } = info.padInfo;
    const [kh, kw] = [info.filterHeight, info.filterWidth];
    const [sh, sw] = [info.strideHeight, info.strideWidth];
    // The padded input must span exactly kh + (outHeight - 1) * sh rows for a kh-row result.
    const padBottom = kh + (info.outHeight - 1) * sh - info.inHeight - top;
    const padRight = kw + (info.outWidth - 1) * sw - info.inWidth - left;
    const source = tf.transpose(padOrCrop(x, [top, padBottom], [left, padRight]), [3, 1, 2, 0]);
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
