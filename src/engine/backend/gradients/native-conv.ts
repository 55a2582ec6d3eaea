import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { type ConvSizes, convSizes } from '../conv-sizes.js';
import type { ConvPad } from './conv-pad.js';

/**
 * Convolutions on the wasm backend computed by native/conv.c (WebAssembly SIMD) directly on the
 * tensors in tfjs-backend-wasm's heap: the Conv2D filter gradient, the input gradient's correlation and
 * the forward Conv2D/FusedConv2D (bias and ReLU in the kernel). The module imports that backend's
 * memory, so it reads its inputs where they lie and writes into outputs the backend allocated: no
 * copies, no transposes, no XNNPACK weight packing (why that matters: the .c file's header).
 *
 * They beat the forward-convolution formulation of conv2d.ts and XNNPACK's forward pass on smallCnn's
 * layers (bench:engine compares them). conv2d.ts and tfjs's kernels remain the path on every other
 * backend, while a tape records (native results are not differentiable: second derivatives need
 * tensor ops) and wherever this module cannot load; every function here returns null then.
 */
/** The part of tfjs-backend-wasm's BackendWasm used here. */
interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  /** The Emscripten module; `asm.memory` is the WebAssembly.Memory every tensor lives in. */
  wasm?: { asm?: { memory?: unknown } };
}

type FilterGradientExport = (
  ...args: [
    x: number,
    dy: number,
    dw: number,
    ...ConvSizes,
    kernelHeight: number,
    kernelWidth: number,
    strideHeight: number,
    strideWidth: number,
    padTop: number,
    padLeft: number,
  ]
) => void;

type CorrelateExport = (
  ...args: [
    input: number,
    filter: number,
    bias: number,
    out: number,
    ...ConvSizes,
    filterChannels: number,
    kernelHeight: number,
    kernelWidth: number,
    strideHeight: number,
    strideWidth: number,
    relu: number,
  ]
) => void;

interface NativeKernels {
  filterGradient: FilterGradientExport;
  correlate: CorrelateExport;
}

let compiled: WebAssembly.Module | null | undefined;
/** One instance per backend memory (a re-created wasm backend has a new one). */
const instances = new WeakMap<WebAssembly.Memory, NativeKernels>();

function compiledModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    const bytes = readFileSync(new URL('./native/conv.wasm', import.meta.url));
    // Without WebAssembly SIMD the module does not validate; the portable path is used instead.
    compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
  }
  return compiled;
}

function kernelsFor(backend: WasmHeapBackend): NativeKernels | null {
  const memory = backend.wasm?.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return null;
  let kernels = instances.get(memory);
  if (!kernels) {
    const module = compiledModule();
    if (!module) return null;
    const { exports } = new WebAssembly.Instance(module, { env: { memory } });
    kernels = {
      filterGradient: exports.filter_gradient as FilterGradientExport,
      correlate: exports.correlate as CorrelateExport,
    };
    instances.set(memory, kernels);
  }
  return kernels;
}

/** Whether the native kernels can run on the active backend (wasm, the module loads). */
export function nativeConvAvailable(): boolean {
  return tf.getBackend() === 'wasm' && kernelsFor(tf.backend() as unknown as WasmHeapBackend) !== null;
}

/**
 * Kernel names under which the native code runs, registered on the wasm backend when first used:
 * going through tf.engine().runKernel keeps the outputs tracked like any op's and makes the time
 * visible to tf.profile (bench:engine --profile).
 */
export const NATIVE_FILTER_GRADIENT = 'RatioNativeConv2DFilterGradient';
export const NATIVE_CORRELATION = 'RatioNativeCorrelation';

interface FilterGradientAttrs {
  info: tf.backend_util.Conv2DInfo;
}

interface CorrelationAttrs {
  outHeight: number;
  outWidth: number;
  outChannels: number;
  strideHeight: number;
  strideWidth: number;
  relu: boolean;
}

function heapAddress(backend: WasmHeapBackend, tensor: tf.TensorInfo): number {
  return backend.typedArrayFromHeap(tensor).byteOffset;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

/** The backend a registered kernel runs on and the module instance on its memory. */
function nativeContext(
  args: KernelArgs,
  kernelName: string,
): { backend: WasmHeapBackend; kernels: NativeKernels } {
  const backend = args.backend as WasmHeapBackend;
  const kernels = kernelsFor(backend);
  if (!kernels) throw new Error(`${kernelName} needs the wasm backend's memory`);
  return { backend, kernels };
}

function filterGradientKernel(args: KernelArgs): tf.TensorInfo {
  const { backend, kernels } = nativeContext(args, NATIVE_FILTER_GRADIENT);
  const { x, dy } = args.inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
  const { info } = args.attrs as unknown as FilterGradientAttrs;
  // Allocate first: growing the wasm memory moves nothing, but detaches views taken before.
  const out = backend.makeOutput(
    [info.filterHeight, info.filterWidth, info.inChannels, info.outChannels],
    'float32',
  );
  kernels.filterGradient(
    heapAddress(backend, x),
    heapAddress(backend, dy),
    heapAddress(backend, out),
    ...convSizes(info),
    info.filterHeight,
    info.filterWidth,
    info.strideHeight,
    info.strideWidth,
    info.padInfo.top,
    info.padInfo.left,
  );
  return out;
}

function correlationKernel(args: KernelArgs): tf.TensorInfo {
  const { backend, kernels } = nativeContext(args, NATIVE_CORRELATION);
  const { input, filter, bias } = args.inputs as {
    input: tf.TensorInfo;
    filter: tf.TensorInfo;
    bias?: tf.TensorInfo;
  };
  const attrs = args.attrs as unknown as CorrelationAttrs;
  const [batch, height, width, inChannels] = input.shape;
  const [kh, kw, , filterChannels] = filter.shape;
  const sizes: ConvSizes = [
    batch,
    height,
    width,
    inChannels,
    attrs.outHeight,
    attrs.outWidth,
    attrs.outChannels,
  ];
  const out = backend.makeOutput([batch, attrs.outHeight, attrs.outWidth, attrs.outChannels], 'float32');
  kernels.correlate(
    heapAddress(backend, input),
    heapAddress(backend, filter),
    // The Emscripten heap never places a tensor at address 0: 0 means no bias.
    bias ? heapAddress(backend, bias) : 0,
    heapAddress(backend, out),
    ...sizes,
    filterChannels,
    kh,
    kw,
    attrs.strideHeight,
    attrs.strideWidth,
    attrs.relu ? 1 : 0,
  );
  return out;
}

let kernelsRegistered = false;

/**
 * Whether native code may run now: wasm, the module loads, float32 inputs, and no tape records the
 * ops called here (tfjs's own rule: a gradient is being taped and we are not inside a kernel, whose
 * inner ops are never recorded). Native results are constants to a tape: second derivatives through
 * them would be silently wrong, so a recording tape gets the portable tensor-op formulation.
 */
function usable(...tensors: tf.TensorInfo[]): boolean {
  if (tf.getBackend() !== 'wasm') return false;
  const { gradientDepth, kernelDepth } = tf.engine().state;
  if (gradientDepth > 0 && kernelDepth === 0) return false;
  if (tensors.some((tensor) => tensor.dtype !== 'float32')) return false;
  if (!kernelsFor(tf.backend() as unknown as WasmHeapBackend)) return false;
  if (!kernelsRegistered) {
    tf.registerKernel({
      kernelName: NATIVE_FILTER_GRADIENT,
      backendName: 'wasm',
      kernelFunc: filterGradientKernel,
    });
    tf.registerKernel({ kernelName: NATIVE_CORRELATION, backendName: 'wasm', kernelFunc: correlationKernel });
    kernelsRegistered = true;
  }
  return true;
}

/**
 * dL/dfilter of `conv2d(x, filter, strides, pad)` given `dy`, on the wasm heap; null where native
 * code does not apply (see above), so that the caller falls back to the portable formulation.
 */
export function nativeFilterGradient(
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
  filterShape: readonly number[],
  strides: number | [number, number],
  pad: ConvPad,
  dimRoundingMode?: 'floor' | 'round' | 'ceil',
): tf.Tensor4D | null {
  if (!usable(x, dy)) return null;
  if (filterShape.length !== 4 || x.shape.length !== 4 || filterShape[2] !== x.shape[3]) {
    throw new Error(
      `'filterShape' [${filterShape}] must be [kh, kw, ${x.shape[3]}, outChannels] for x [${x.shape}]`,
    );
  }
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides,
    1,
    pad,
    dimRoundingMode,
  );
  // The kernel trusts its sizes and reads the heap with them: dy must be exactly the forward
  // convolution's output, or it would read past the tensor.
  const expected = [info.batchSize, info.outHeight, info.outWidth, info.outChannels];
  if (dy.shape.length !== 4 || expected.some((size, i) => dy.shape[i] !== size)) {
    throw new Error(`'dy' must have the convolution's output shape [${expected}], got [${dy.shape}]`);
  }
  const attrs: FilterGradientAttrs = { info };
  // Kernel inputs may be bare TensorInfos (inside another kernel); runKernel reads only their ids.
  const inputs = { x, dy } as unknown as tf.NamedTensorMap;
  return tf
    .engine()
    .runKernel(NATIVE_FILTER_GRADIENT, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor4D;
}

type Pads = [[number, number], [number, number]];

/**
 * `input` zero-padded by `pads`, correlated with `filter` at `strides` into an [outHeight, outWidth]
 * output, plus `bias`, clamped at 0 when `relu`, on the native kernel (the caller checked usable()).
 */
function correlateNatively(
  input: tf.Tensor4D,
  filter: tf.Tensor4D,
  [[top, bottom], [left, right]]: Pads,
  [strideHeight, strideWidth]: [number, number],
  outSize: [number, number] | null,
  bias: tf.Tensor | null,
  relu: boolean,
): tf.Tensor4D {
  const [kh, kw, inChannels, outChannels] = filter.shape;
  if (input.shape[3] !== inChannels) {
    throw new Error(`'filter' must have ${input.shape[3]} input channels, got [${filter.shape}]`);
  }
  return tf.tidy(() => {
    const padded =
      top + bottom + left + right > 0
        ? tf.pad(input, [
            [0, 0],
            [top, bottom],
            [left, right],
            [0, 0],
          ])
        : input;
    const [, height, width] = padded.shape;
    const outHeight = outSize?.[0] ?? Math.floor((height - kh) / strideHeight) + 1;
    const outWidth = outSize?.[1] ?? Math.floor((width - kw) / strideWidth) + 1;
    // The kernel reads rows up to (outHeight - 1) * stride + kh - 1: they must exist.
    if (
      height < kh ||
      width < kw ||
      (outHeight - 1) * strideHeight + kh > height ||
      (outWidth - 1) * strideWidth + kw > width
    ) {
      throw new Error(`the padded input [${padded.shape}] is too small for the filter [${filter.shape}]`);
    }
    // Output channels padded to a multiple of 4 with zeros, so that the kernel's vector loads of a
    // filter row (and of the bias) stay inside them (a few hundred values at most: copied in JavaScript).
    const filterChannels = Math.ceil(outChannels / 4) * 4;
    const inputs: Record<string, tf.Tensor> = { input: padded, filter: padLastAxis(filter, filterChannels) };
    if (bias)
      inputs.bias = padLastAxis(tf.reshape(bias, [1, 1, 1, outChannels]) as tf.Tensor4D, filterChannels);
    const attrs: CorrelationAttrs = { outHeight, outWidth, outChannels, strideHeight, strideWidth, relu };
    return tf
      .engine()
      .runKernel(NATIVE_CORRELATION, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor4D;
  });
}

/**
 * The valid stride-1 correlation of `input` [n, h, w, ci] with `filter` [kh, kw, ci, co] after
 * zero-padding the input by `pads` ([top, bottom], [left, right]): conv2dInputGradient's last step,
 * whose filter is already flipped and transposed. Null where native code does not apply.
 */
export function nativeCorrelation(input: tf.Tensor4D, filter: tf.Tensor4D, pads: Pads): tf.Tensor4D | null {
  if (!usable(input, filter)) return null;
  return correlateNatively(input, filter, pads, [1, 1], null, null, false);
}

export interface NativeConv2DOptions {
  strides: number | [number, number];
  pad: ConvPad;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
  /** Added per output channel: [outChannels] values (any shape of that size). */
  bias?: tf.Tensor;
  /** 'linear' (none) or 'relu'; other activations are not native. */
  activation?: 'linear' | 'relu';
}

/**
 * conv2d(x, filter) (NHWC, dilation 1) with an optional per-channel bias and ReLU, as tfjs's Conv2D
 * and FusedConv2D compute it; null where native code does not apply (the caller keeps XNNPACK).
 */
export function nativeConv2D(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  options: NativeConv2DOptions,
): tf.Tensor4D | null {
  const { bias, activation = 'linear' } = options;
  if (!usable(x, filter, ...(bias ? [bias] : []))) return null;
  if (bias && bias.size !== filter.shape[3]) return null;
  // A numeric pad keeps tfjs's own kernel: tfjs 4.22 sizes such outputs with the kernel height and
  // stride height on both axes, a geometry we would only reproduce, not fix (layers use same/valid).
  if (typeof options.pad === 'number') return null;
  const info = tf.backend_util.computeConv2DInfo(
    x.shape,
    filter.shape,
    options.strides,
    1,
    options.pad,
    options.dimRoundingMode,
  );
  const { top, bottom, left, right } = info.padInfo;
  return correlateNatively(
    x,
    filter,
    [
      [top, bottom],
      [left, right],
    ],
    [info.strideHeight, info.strideWidth],
    [info.outHeight, info.outWidth],
    bias ?? null,
    activation === 'relu',
  );
}

function padLastAxis(filter: tf.Tensor4D, channels: number): tf.Tensor4D {
  const [kh, kw, ci, co] = filter.shape;
  if (channels === co) return filter;
  const values = filter.dataSync() as Float32Array;
  const padded = new Float32Array(kh * kw * ci * channels);
  for (let row = 0; row < kh * kw * ci; row++) {
    padded.set(values.subarray(row * co, (row + 1) * co), row * channels);
  }
  return tf.tensor4d(padded, [kh, kw, ci, channels]);
}
