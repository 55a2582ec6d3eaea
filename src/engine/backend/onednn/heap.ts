import * as tf from '@tensorflow/tfjs';

/**
 * What the oneDNN kernels need of tfjs-backend-wasm: its heap, where every tensor lies, and outputs
 * allocated in it. The addon reads and writes tensors where they are (byte offsets into the heap).
 */

/** The part of tfjs-backend-wasm's BackendWasm used here. */
export interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  /** The Emscripten module; `asm.memory` is the WebAssembly.Memory every tensor lives in. */
  wasm?: { asm?: { memory?: unknown } };
}

export type KernelArgs = Parameters<tf.KernelFunc>[0];

export function memoryOf(backend: WasmHeapBackend): WebAssembly.Memory {
  const memory = backend.wasm?.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) throw new Error('the oneDNN kernels need the wasm backend');
  return memory;
}

export function offsetOf(backend: WasmHeapBackend, info: tf.TensorInfo): number {
  return backend.typedArrayFromHeap(info).byteOffset;
}

export function allFloat32(...infos: (tf.TensorInfo | undefined)[]): boolean {
  return infos.every((info) => info === undefined || info.dtype === 'float32');
}

/**
 * Runs `compute` on fresh float32 outputs of `shapes` (their byte offsets, in order); the outputs are
 * released if the addon throws (a wrong offset or size is a RangeError from native code, never a write
 * outside the heap).
 */
export function withOutputs(
  backend: WasmHeapBackend,
  shapes: number[][],
  compute: (heap: ArrayBuffer, outs: number[]) => void,
): tf.TensorInfo[] {
  // Allocate first: growing the wasm memory detaches the ArrayBuffer read before.
  const outs = shapes.map((shape) => backend.makeOutput(shape, 'float32'));
  try {
    compute(
      memoryOf(backend).buffer,
      outs.map((out) => offsetOf(backend, out)),
    );
  } catch (error) {
    for (const out of outs) backend.disposeData(out.dataId, true);
    throw error;
  }
  return outs;
}

/** `withOutputs` for one output. */
export function withOutput(
  backend: WasmHeapBackend,
  shape: number[],
  compute: (heap: ArrayBuffer, out: number) => void,
): tf.TensorInfo {
  return withOutputs(backend, [shape], (heap, [out]) => compute(heap, out))[0];
}

/** The kernel registered on wasm under `kernelName` now, if any. */
export function findWasmKernel(kernelName: string): tf.KernelConfig | undefined {
  return tf.getKernelsForBackend('wasm').find((config) => config.kernelName === kernelName);
}

/** Registers `config`, replacing whatever is registered under its name (quietly). */
export function registerWasmKernel(config: tf.KernelConfig): void {
  // registerKernel warns when it overwrites; unregistering first keeps the log quiet.
  if (findWasmKernel(config.kernelName)) tf.unregisterKernel(config.kernelName, 'wasm');
  tf.registerKernel(config);
}
