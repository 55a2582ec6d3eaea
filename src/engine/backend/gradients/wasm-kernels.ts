import * as tf from '@tensorflow/tfjs';

/**
 * Kernels that replace tfjs-backend-wasm 4.22's own where those cost a training step more than their
 * arithmetic (`npm run bench:engine -- --profile` shows where a step's time goes):
 * - Identity and same-dtype Cast copy their input on wasm, and the engine clones every tensor that a
 *   gradient saves for the backward pass through Identity: a memcpy per saved tensor and step. Here
 *   they share the input's buffer (reference-counted), as the cpu backend does.
 * - Sum over leading axes (every bias gradient: [N, H, W, C] summed to [C]) transposes the whole
 *   input so that the reduced axes come last, then reduces. For NHWC over N, H, W, XNNPACK's average
 *   pooling over each image does the bulk without the transpose; other leading-axes sums are one
 *   pass in JavaScript over the wasm heap. Other reductions keep the stock kernel.
 */

/** The part of tfjs-backend-wasm's BackendWasm these kernels use. */
interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  incRef(dataId: tf.DataId): void;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

/** The backend's output sharing `x`'s buffer (immutable, so sharing is safe). */
function shareBuffer(x: tf.TensorInfo, backend: WasmHeapBackend): tf.TensorInfo {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/**
 * A kernel input as a Tensor for tensor ops. Inputs normally are Tensors; a bare TensorInfo gets a
 * tracked Tensor that holds its own reference (disposing it must not free the caller's buffer).
 */
export function asTensor(info: tf.TensorInfo): tf.Tensor {
  if (info instanceof tf.Tensor) return info;
  tf.engine().backend.incRef(info.dataId);
  return tf.engine().makeTensorFromTensorInfo(info);
}

/**
 * The replacement kernels; `stockKernel` finds tfjs-backend-wasm's own by name, for the cases the
 * replacements leave to it. _FusedMatMul is composed of MatMul, Add and the activation: tfjs-backend-wasm
 * 4.22's own returns wrong values with a bias and a transpose or a batch axis
 * (test/engine/backend/gradients/fused-matmul.test.ts).
 */
export function wasmKernelOverrides(
  stockKernel: (kernelName: string) => tf.KernelConfig | undefined,
): tf.KernelConfig[] {
  const stock = (kernelName: string): tf.KernelFunc => {
    const config = stockKernel(kernelName);
    if (!config) throw new Error(`tfjs-backend-wasm has no '${kernelName}' kernel to fall back to`);
    return config.kernelFunc;
  };
  const identity: tf.KernelConfig = {
    kernelName: tf.Identity,
    backendName: 'wasm',
    kernelFunc: (args: KernelArgs) => {
      const x = args.inputs.x as tf.TensorInfo;
      // Strings live outside the wasm heap.
      if (x.dtype === 'string') return stock(tf.Identity)(args);
      return shareBuffer(x, args.backend as WasmHeapBackend);
    },
  };
  const cast: tf.KernelConfig = {
    kernelName: tf.Cast,
    backendName: 'wasm',
    kernelFunc: (args: KernelArgs) => {
      const x = args.inputs.x as tf.TensorInfo;
      const { dtype } = args.attrs as unknown as tf.CastAttrs;
      if (dtype === x.dtype && dtype !== 'string') return shareBuffer(x, args.backend as WasmHeapBackend);
      return stock(tf.Cast)(args);
    },
  };
  const sum: tf.KernelConfig = {
    kernelName: tf.Sum,
    backendName: 'wasm',
    kernelFunc: (args: KernelArgs) => {
      const x = args.inputs.x as tf.TensorInfo;
      const { axis, keepDims } = args.attrs as unknown as tf.SumAttrs;
      const leading = leadingAxesCount(x.shape, axis);
      if (x.dtype !== 'float32' || leading === null) return stock(tf.Sum)(args);
      const [, height, width] = x.shape;
      if (x.shape.length === 4 && leading === 3 && height * width > 1) return sumOverImages(x, keepDims);
      return sumLeadingAxes(x, leading, keepDims, args.backend as WasmHeapBackend);
    },
  };
  const fusedMatMul: tf.KernelConfig = {
    kernelName: tf._FusedMatMul,
    backendName: 'wasm',
    kernelFunc: (args: KernelArgs) => {
      const { a, b, bias, preluActivationWeights } = args.inputs as Record<string, tf.TensorInfo | undefined>;
      if (!a || !b) throw new Error(`${tf._FusedMatMul}: 'a' and 'b' are required`);
      const { transposeA, transposeB, activation, leakyreluAlpha } =
        args.attrs as unknown as tf._FusedMatMulAttrs;
      return tf.tidy(() => {
        const product = tf.matMul(asTensor(a), asTensor(b), transposeA, transposeB);
        const biased = bias ? tf.add(product, asTensor(bias)) : product;
        return applyActivation(biased, activation, preluActivationWeights, leakyreluAlpha);
      });
    },
  };
  return [identity, cast, sum, fusedMatMul];
}

/** The activations tf.fused ops take, as the separate ops they stand for. */
function applyActivation(
  x: tf.Tensor,
  activation: tf.fused.Activation,
  preluWeights: tf.TensorInfo | undefined,
  leakyreluAlpha: number | undefined,
): tf.Tensor {
  switch (activation) {
    case 'linear':
      return x;
    case 'relu':
      return tf.relu(x);
    case 'relu6':
      return tf.relu6(x);
    case 'elu':
      return tf.elu(x);
    case 'sigmoid':
      return tf.sigmoid(x);
    case 'leakyrelu':
      return tf.leakyRelu(x, leakyreluAlpha);
    case 'prelu':
      if (!preluWeights) throw new Error(`${tf._FusedMatMul}: 'prelu' needs its weights`);
      return tf.prelu(x, asTensor(preluWeights));
  }
  throw new Error(`${tf._FusedMatMul}: unknown activation '${activation}'`);
}

/**
 * k when `axis` names exactly the first k axes of a tensor of this shape, with 0 < k < rank (the
 * layout where reducing is a running sum of contiguous rows); null otherwise.
 */
export function leadingAxesCount(shape: readonly number[], axis: number | number[]): number | null {
  const rank = shape.length;
  const axes = tf.util.parseAxisParam(axis, shape as number[]);
  const sorted = [...new Set(axes)].sort((a, b) => a - b);
  if (sorted.length === 0 || sorted.length >= rank) return null;
  return sorted.every((a, i) => a === i) ? sorted.length : null;
}

/** Sum of [N, H, W, C] over N, H and W: per-image averages (XNNPACK pooling), summed, times H * W. */
function sumOverImages(x: tf.TensorInfo, keepDims: boolean): tf.TensorInfo {
  const [n, height, width, channels] = x.shape;
  return tf.tidy(() => {
    const images = asTensor(x) as tf.Tensor4D;
    const means = tf.reshape(tf.avgPool(images, [height, width], [height, width], 'valid'), [n, channels]);
    // A leading-axis sum of n rows: the JavaScript path below, through this same kernel.
    const total = tf.mul(tf.sum(means, 0), height * width);
    return keepDims ? tf.reshape(total, [1, 1, 1, channels]) : total;
  });
}

function sumLeadingAxes(
  x: tf.TensorInfo,
  leading: number,
  keepDims: boolean,
  backend: WasmHeapBackend,
): tf.TensorInfo {
  const kept = x.shape.slice(leading);
  const rows = x.shape.slice(0, leading).reduce((a, b) => a * b, 1);
  const cols = kept.reduce((a, b) => a * b, 1);
  const outShape = keepDims ? [...x.shape.slice(0, leading).map(() => 1), ...kept] : kept;
  // Allocate first: growing the wasm memory detaches every heap view taken before.
  const out = backend.makeOutput(outShape, 'float32');
  const values = backend.typedArrayFromHeap(x) as Float32Array;
  // float64 accumulators: no worse than the stock float32 running sum, and order-independent enough.
  const totals = new Float64Array(cols);
  for (let r = 0, offset = 0; r < rows; r++, offset += cols) {
    for (let c = 0; c < cols; c++) totals[c] += values[offset + c];
  }
  (backend.typedArrayFromHeap(out) as Float32Array).set(totals);
  return out;
}
