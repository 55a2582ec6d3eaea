import * as tf from '@tensorflow/tfjs';

/**
 * MaxPoolGrad for the wasm backend, written in JavaScript over the wasm heap. The native kernel of
 * tfjs-backend-wasm 4.22 both costs as much as a convolution layer and loses gradient in some
 * windows (test/engine/backend/gradients/max-pool.test.ts compares it with the cpu reference).
 * Semantics are the cpu backend's: each window's upstream gradient goes to its first maximum in
 * row-major order, summed where windows overlap.
 */

/** The part of tfjs-backend-wasm's BackendWasm this kernel uses. */
interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

export function maxPoolGradOnHeap(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: unknown;
  attrs?: tf.NamedAttrMap;
}): tf.TensorInfo {
  const backend = args.backend as WasmHeapBackend;
  const { dy, input } = args.inputs as { dy: tf.TensorInfo; input: tf.TensorInfo };
  const { filterSize, strides, pad, dimRoundingMode } = args.attrs as unknown as tf.MaxPoolGradAttrs;
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number],
    filterSize,
    strides,
    1,
    pad,
    dimRoundingMode,
  );
  // Allocate first: growing the wasm memory detaches every heap view taken before.
  const out = backend.makeOutput(input.shape, 'float32');
  const dx = backend.typedArrayFromHeap(out);
  const x = backend.typedArrayFromHeap(input);
  const upstream = backend.typedArrayFromHeap(dy);
  const tiles =
    info.strideHeight === info.filterHeight &&
    info.strideWidth === info.filterWidth &&
    info.dilationHeight === 1 &&
    info.dilationWidth === 1 &&
    info.padInfo.top === 0 &&
    info.padInfo.left === 0 &&
    info.outHeight * info.filterHeight === info.inHeight &&
    info.outWidth * info.filterWidth === info.inWidth;
  if (tiles) {
    // MaxPool is float32-only in tfjs, so the heap views are Float32Arrays.
    const tiled = info.filterHeight === 2 && info.filterWidth === 2 ? tiled2x2MaxPoolGrad : tiledMaxPoolGrad;
    tiled(x as Float32Array, upstream as Float32Array, dx as Float32Array, info);
    return out;
  }
  dx.fill(0);
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth } = info;
  const { strideHeight, strideWidth, effectiveFilterHeight, effectiveFilterWidth } = info;
  const { dilationHeight, dilationWidth } = info;
  const { top, left } = info.padInfo;
  const rowStride = inWidth * inChannels;
  const best = new Float32Array(inChannels);
  const bestIndex = new Int32Array(inChannels);
  for (let b = 0; b < batchSize; b++) {
    const batchOffset = b * inHeight * rowStride;
    for (let yR = 0; yR < outHeight; yR++) {
      const rowStart = yR * strideHeight - top;
      for (let yC = 0; yC < outWidth; yC++) {
        const colStart = yC * strideWidth - left;
        best.fill(Number.NEGATIVE_INFINITY);
        bestIndex.fill(-1);
        // Row-major scan of the window with a strict '>' keeps the first maximum, as the cpu kernel.
        for (let wR = 0; wR < effectiveFilterHeight; wR += dilationHeight) {
          const xR = rowStart + wR;
          if (xR < 0 || xR >= inHeight) continue;
          for (let wC = 0; wC < effectiveFilterWidth; wC += dilationWidth) {
            const xC = colStart + wC;
            if (xC < 0 || xC >= inWidth) continue;
            const pixel = batchOffset + xR * rowStride + xC * inChannels;
            for (let d = 0; d < inChannels; d++) {
              const value = x[pixel + d];
              if (value > best[d] || bestIndex[d] < 0) {
                best[d] = value;
                bestIndex[d] = pixel + d;
              }
            }
          }
        }
        const dyOffset = ((b * outHeight + yR) * outWidth + yC) * inChannels;
        for (let d = 0; d < inChannels; d++) {
          if (bestIndex[d] >= 0) dx[bestIndex[d]] += upstream[dyOffset + d];
        }
      }
    }
  }
  return out;
}

/**
 * The common case (windows tile the input exactly, e.g. 2x2 stride 2): every input element belongs to
 * exactly one window, so dx is written once per element, with no zero-fill and no bounds checks.
 */
function tiledMaxPoolGrad(
  x: Float32Array,
  upstream: Float32Array,
  dx: Float32Array,
  info: tf.backend_util.Conv2DInfo,
): void {
  const { batchSize, inHeight, inWidth, inChannels: channels, outHeight, outWidth } = info;
  const { filterHeight, filterWidth } = info;
  const rowStride = inWidth * channels;
  let dyIndex = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let yR = 0; yR < outHeight; yR++) {
      const windowRow = (b * inHeight + yR * filterHeight) * rowStride;
      for (let yC = 0; yC < outWidth; yC++) {
        const windowStart = windowRow + yC * filterWidth * channels;
        for (let d = 0; d < channels; d++, dyIndex++) {
          const first = windowStart + d;
          let best = first;
          let bestValue = x[first];
          for (let wR = 0; wR < filterHeight; wR++) {
            for (let wC = 0; wC < filterWidth; wC++) {
              const index = first + wR * rowStride + wC * channels;
              // Strict '>' keeps the first maximum in row-major order, as the cpu kernel.
              if (x[index] > bestValue) {
                bestValue = x[index];
                best = index;
              }
              dx[index] = 0;
            }
          }
          dx[best] = upstream[dyIndex];
        }
      }
    }
  }
}

/**
 * 2x2 windows with stride 2 (every pooling layer of smallCnn, VGG-style nets): the window unrolled,
 * which halves the time of the general tiled loop.
 */
function tiled2x2MaxPoolGrad(
  x: Float32Array,
  upstream: Float32Array,
  dx: Float32Array,
  info: tf.backend_util.Conv2DInfo,
): void {
  const { batchSize, inHeight, inWidth, inChannels: channels, outHeight, outWidth } = info;
  const rowStride = inWidth * channels;
  // One native fill, then one write per window (instead of four).
  dx.fill(0);
  let dyIndex = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let yR = 0; yR < outHeight; yR++) {
      const windowRow = (b * inHeight + 2 * yR) * rowStride;
      for (let yC = 0; yC < outWidth; yC++) {
        const topLeft = windowRow + 2 * yC * channels;
        for (let d = 0; d < channels; d++, dyIndex++) {
          const i00 = topLeft + d;
          const i01 = i00 + channels;
          const i10 = i00 + rowStride;
          const i11 = i10 + channels;
          // Strict '>' in row-major order keeps the first maximum, as the cpu kernel.
          let best = i00;
          let bestValue = x[i00];
          if (x[i01] > bestValue) {
            best = i01;
            bestValue = x[i01];
          }
          if (x[i10] > bestValue) {
            best = i10;
            bestValue = x[i10];
          }
          if (x[i11] > bestValue) best = i11;
          dx[best] = upstream[dyIndex];
        }
      }
    }
  }
}

export const wasmMaxPoolGradConfig: tf.KernelConfig = {
  kernelName: tf.MaxPoolGrad,
  backendName: 'wasm',
  kernelFunc: maxPoolGradOnHeap as tf.KernelFunc,
};
