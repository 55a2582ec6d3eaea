import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import type { ConvPad } from './conv2d.js';

/**
 * The Conv2D filter gradient on the wasm backend, computed by native/filter-gradient.c (WebAssembly
 * SIMD) directly on the tensors in tfjs-backend-wasm's heap. The module imports that backend's
 * memory, so it reads x and dy where they lie and writes dW into an output the backend allocated:
 * no copies, no transposes, no XNNPACK weight packing (why that matters: the .c file's header).
 *
 * smallCnn, batch 64 (scratch measurement, the five layers): 131 ms against 298 ms for the
 * forward-convolution formulation in conv2d.ts, which remains the path on every other backend, under
 * a recording tape (second derivatives need differentiable tensor ops) and wherever this module
 * cannot load.
 */

/** The part of tfjs-backend-wasm's BackendWasm used here. */
interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  /** The Emscripten module; `asm.memory` is the WebAssembly.Memory every tensor lives in. */
  wasm?: { asm?: { memory?: unknown } };
}

type FilterGradientExport = (
  x: number,
  dy: number,
  dw: number,
  batch: number,
  inHeight: number,
  inWidth: number,
  inChannels: number,
  outHeight: number,
  outWidth: number,
  outChannels: number,
  kernelHeight: number,
  kernelWidth: number,
  strideHeight: number,
  strideWidth: number,
  padTop: number,
  padLeft: number,
) => void;

let compiled: WebAssembly.Module | null | undefined;
/** One instance per backend memory (a re-created wasm backend has a new one). */
const instances = new WeakMap<WebAssembly.Memory, FilterGradientExport>();

function compiledModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    const bytes = readFileSync(new URL('./native/filter-gradient.wasm', import.meta.url));
    // Without WebAssembly SIMD the module does not validate; the portable path is used instead.
    compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
  }
  return compiled;
}

function kernelFor(backend: WasmHeapBackend): FilterGradientExport | null {
  const memory = backend.wasm?.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return null;
  let kernel = instances.get(memory);
  if (!kernel) {
    const module = compiledModule();
    if (!module) return null;
    const instance = new WebAssembly.Instance(module, { env: { memory } });
    kernel = instance.exports.filter_gradient as FilterGradientExport;
    instances.set(memory, kernel);
  }
  return kernel;
}

/** Whether the native filter gradient can run on the active backend (wasm, module loads). */
export function nativeFilterGradientAvailable(): boolean {
  return tf.getBackend() === 'wasm' && kernelFor(tf.backend() as unknown as WasmHeapBackend) !== null;
}

/**
 * dL/dfilter of `conv2d(x, filter, strides, pad)` given `dy`, on the wasm heap; null where the
 * native kernel does not apply (another backend, a dtype other than float32, the module missing),
 * so that the caller falls back to the portable formulation.
 */
export function wasmFilterGradient(
  x: tf.TensorInfo,
  dy: tf.TensorInfo,
  filterShape: readonly number[],
  strides: number | [number, number],
  pad: ConvPad,
  dimRoundingMode?: 'floor' | 'round' | 'ceil',
): tf.TensorInfo | null {
  if (tf.getBackend() !== 'wasm' || x.dtype !== 'float32' || dy.dtype !== 'float32') return null;
  const backend = tf.backend() as unknown as WasmHeapBackend;
  const kernel = kernelFor(backend);
  if (!kernel) return null;
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
  // Allocate first: growing the wasm memory moves nothing, but detaches views taken before.
  const out = backend.makeOutput([...filterShape], 'float32');
  const address = (tensor: tf.TensorInfo) => backend.typedArrayFromHeap(tensor).byteOffset;
  kernel(
    address(x),
    address(dy),
    address(out),
    info.batchSize,
    info.inHeight,
    info.inWidth,
    info.inChannels,
    info.outHeight,
    info.outWidth,
    info.outChannels,
    info.filterHeight,
    info.filterWidth,
    info.strideHeight,
    info.strideWidth,
    info.padInfo.top,
    info.padInfo.left,
  );
  return out;
}
