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

export function sizeOf(info: tf.TensorInfo): number {
  return tf.util.sizeFromShape(info.shape);
}

export function allFloat32(...infos: (tf.TensorInfo | undefined)[]): boolean {
  return infos.every((info) => info === undefined || info.dtype === 'float32');
}

/** Throws, naming the kernel and the input, where a given input is not float32. */
export function requireFloat32(kernelName: string, inputs: Record<string, tf.TensorInfo | undefined>): void {
  for (const [name, info] of Object.entries(inputs)) {
    if (info && info.dtype !== 'float32') {
      throw new Error(`${kernelName}: '${name}' must be float32, got ${info.dtype}`);
    }
  }
}

/** `inputs`, where each of `names` is given; throws naming the missing ones' list otherwise. */
export function requirePresent<Name extends string>(
  kernelName: string,
  inputs: Record<string, tf.TensorInfo | undefined>,
  names: readonly Name[],
): Record<Name, tf.TensorInfo> {
  if (names.some((name) => !inputs[name])) {
    const quoted = names.map((name) => `'${name}'`);
    const list = quoted.length === 1 ? quoted[0] : `${quoted.slice(0, -1).join(', ')} and ${quoted.at(-1)}`;
    throw new Error(`${kernelName}: ${list} ${quoted.length === 1 ? 'is' : 'are'} required`);
  }
  return inputs as Record<Name, tf.TensorInfo>;
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

/** What a heap kernel's body is handed: the kernel's arguments, typed as it reads them. */
export interface HeapKernelCall<Inputs, Attrs> {
  inputs: Inputs;
  attrs: Attrs;
  backend: WasmHeapBackend;
  /** A tensor's byte offset in the heap; -1 for an absent (optional) input, as the addon expects. */
  at: (info: tf.TensorInfo | undefined) => number;
  /** The arguments as tfjs passed them (for a fallback kernel). */
  args: KernelArgs;
}

/** A wasm kernel whose body reads and writes tensors where they lie in the heap. */
export function heapKernel<
  Inputs = Record<string, tf.TensorInfo | undefined>,
  Attrs = Record<string, unknown>,
>(
  kernelName: string,
  body: (call: HeapKernelCall<Inputs, Attrs>) => tf.TensorInfo | tf.TensorInfo[],
): tf.KernelConfig {
  return {
    kernelName,
    backendName: 'wasm',
    kernelFunc: (args) => {
      const backend = args.backend as WasmHeapBackend;
      return body({
        inputs: args.inputs as unknown as Inputs,
        attrs: args.attrs as unknown as Attrs,
        backend,
        at: (info) => (info ? offsetOf(backend, info) : -1),
        args,
      });
    },
  };
}
