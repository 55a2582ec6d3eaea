import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { nativeConvAvailable } from './gradients/native-conv.js';
import { useFastConvGradients } from './gradients/register.js';
import {
  type KernelsChoice,
  type KernelsName,
  loadAddon,
  parseKernelsChoice,
  parseThreads,
} from './onednn/addon.js';
import { installOnednnKernels } from './onednn/kernels.js';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

export const BACKEND_NAMES: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

export interface BackendInfo {
  name: BackendName;
  /**
   * Threads the heavy kernels compute with: oneDNN's (RATIO_THREADS, default every core) when `kernels`
   * is `onednn`, else the backend's (wasm in Node: 1, see docs/engine.md).
   */
  threads: number;
  /** Whether the backend runs SIMD code (wasm: the SIMD build was loaded). */
  simd: boolean;
  /** tfjs version in use. */
  version: string;
  /** Whether the project's forward-convolution Conv2D gradients are installed. */
  fastGradients: boolean;
  /** Whether the Conv2D gradients run as the native WebAssembly SIMD kernels (wasm only). */
  nativeKernels: boolean;
  /**
   * Which kernels run convolutions and matrix products: `onednn` (the oneDNN addon, docs/engine.md
   * "oneDNN kernels"), `wasm-native` (the WebAssembly SIMD kernels of gradients/native), `stock`
   * (tfjs's own).
   */
  kernels: KernelsName;
}

/**
 * Backends on which the forward-convolution gradients beat tfjs's own (bench/engine.ts): on wasm the
 * stock backprop kernels are a naive loop (input) or missing (filter); on cpu the forward conv
 * shares the backprop kernels' speed, but routing both gradients through it still wins
 * (docs/benchmarks/engine.md).
 */
const FAST_GRADIENT_BACKENDS: ReadonlySet<BackendName> = new Set(['wasm', 'cpu']);

/** Node bindings of libtensorflow, best first; optional dependencies, usually absent. */
const TENSORFLOW_PACKAGES = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const;

let selected: BackendInfo | undefined;
let pending: Promise<BackendInfo> | undefined;

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message.split('\n')[0] : String(error);
}

/** Loads libtensorflow's bindings; they register the `tensorflow` backend on import. */
async function loadTensorflow(): Promise<void> {
  const failures: string[] = [];
  for (const specifier of TENSORFLOW_PACKAGES) {
    try {
      // A variable specifier: the packages are optional and have no type declarations here.
      const packageName: string = specifier;
      await import(packageName);
      return;
    } catch (error) {
      failures.push(`${specifier}: ${errorMessage(error)}`);
    }
  }
  throw new Error(`neither ${TENSORFLOW_PACKAGES.join(' nor ')} can be loaded (${failures.join('; ')})`);
}

async function activate(name: BackendName): Promise<void> {
  if (name === 'tensorflow') await loadTensorflow();
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  let ok: boolean;
  try {
    ok = await tf.setBackend(name);
  } catch (error) {
    throw new Error(`backend '${name}' failed to initialise: ${errorMessage(error)}`);
  }
  if (!ok) throw new Error(`backend '${name}' failed to initialise`);
  await tf.ready();
}

async function describe(
  name: BackendName,
): Promise<Omit<BackendInfo, 'fastGradients' | 'nativeKernels' | 'kernels'>> {
  const version = tf.version.tfjs;
  if (name === 'wasm') {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
    return { name, threads: wasm.getThreadsCount(), simd, version };
  }
  // libtensorflow runs its own thread pools over every core; the cpu backend is plain JavaScript.
  if (name === 'tensorflow') return { name, threads: availableParallelism(), simd: true, version };
  return { name, threads: 1, simd: false, version };
}

function parseForced(preferred: string | undefined): BackendName | undefined {
  const value = preferred?.trim().toLowerCase();
  if (!value) return undefined;
  const match = BACKEND_NAMES.find((name) => name === value);
  if (!match) {
    throw new Error(`'RATIO_BACKEND' must be one of ${BACKEND_NAMES.join(', ')}; got '${preferred}'`);
  }
  return match;
}

/**
 * Installs the oneDNN kernels on wasm unless RATIO_KERNELS=wasm-native; returns their thread count, or
 * null where the addon is absent (an error when RATIO_KERNELS=onednn asked for it).
 */
function useOnednn(choice: KernelsChoice | undefined, threads: number): number | null {
  if (choice === 'wasm-native') return null;
  const loaded = loadAddon();
  if (!loaded.addon) {
    if (choice === 'onednn') throw new Error(`RATIO_KERNELS=onednn is not available: ${loaded.reason}`);
    return null;
  }
  loaded.addon.setThreads(threads);
  installOnednnKernels(loaded.addon);
  return loaded.addon.threads();
}

async function select(preferred: string | undefined): Promise<BackendInfo> {
  const forced = parseForced(preferred);
  // Checked before any backend starts, so that a typo is reported as such.
  const kernelsChoice = parseKernelsChoice(process.env.RATIO_KERNELS);
  const threads = parseThreads();
  const candidates = forced ? [forced] : BACKEND_NAMES;
  const failures: string[] = [];
  for (const name of candidates) {
    try {
      await activate(name);
    } catch (error) {
      failures.push(`${name}: ${errorMessage(error)}`);
      continue;
    }
    const fastGradients = FAST_GRADIENT_BACKENDS.has(name);
    if (fastGradients) useFastConvGradients(name);
    const nativeKernels = name === 'wasm' && nativeConvAvailable();
    const described = await describe(name);
    if (kernelsChoice === 'onednn' && name !== 'wasm') {
      throw new Error(`RATIO_KERNELS=onednn runs on the wasm backend, not on '${name}'`);
    }
    const onednnThreads = name === 'wasm' ? useOnednn(kernelsChoice, threads) : null;
    if (onednnThreads !== null) {
      return { ...described, threads: onednnThreads, fastGradients, nativeKernels, kernels: 'onednn' };
    }
    return { ...described, fastGradients, nativeKernels, kernels: nativeKernels ? 'wasm-native' : 'stock' };
  }
  if (forced) {
    throw new Error(`RATIO_BACKEND=${forced} is not available: ${failures.join('; ')}`);
  }
  throw new Error(`no tfjs backend could be initialised: ${failures.join('; ')}`);
}

/**
 * Selects the compute backend once per process: `tensorflow` (tfjs-node-gpu, then tfjs-node, when
 * importable) > `wasm` > `cpu`, or the one forced by `RATIO_BACKEND` (an error if it is unavailable),
 * and installs the fast convolution gradients where they are faster. Later calls return the first
 * choice, whatever they ask for.
 *
 * @example
 * const { name, threads } = await initBackend(); // e.g. { name: 'wasm', threads: 1, simd: true, ... }
 */
export async function initBackend(
  preferred: string | undefined = process.env.RATIO_BACKEND,
): Promise<BackendInfo> {
  if (selected) return selected;
  // Production mode only silences tfjs's console nags (e.g. the cpu backend's "install tfjs-node"
  // banner, which would land in every log and CI run); numerics and checks are unchanged.
  tf.enableProdMode();
  pending ??= select(preferred).then(
    (info) => {
      selected = info;
      return info;
    },
    (error: unknown) => {
      // A failed selection may be retried (e.g. with another RATIO_BACKEND).
      pending = undefined;
      throw error;
    },
  );
  return pending;
}

/** The backend chosen by `initBackend`; throws if it has not run. */
export function backendInfo(): BackendInfo {
  if (!selected) throw new Error('initBackend() has not been called');
  return selected;
}

/** Live tensors and their bytes, for the service's metrics. */
export function tensorMemory(): { numTensors: number; numBytes: number } {
  const { numTensors, numBytes } = tf.memory();
  return { numTensors, numBytes };
}

/** The tfjs version in use. */
export function tfjsVersion(): string {
  return tf.version.tfjs;
}
