import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';

/** The offsets a normalisation's backward pass reads, in the addon's order (scale -1: none). */
export type NormalizationBackwardOperands = [
  src: number,
  diffDst: number,
  mean: number,
  variance: number,
  scale: number,
];

/**
 * The oneDNN Node-API addon (addon/onednn.cc), built by `npm ci` where a C++ compiler and
 * libdnnl-dev are present (addon/build.mjs). Every function takes tfjs-backend-wasm's heap and byte
 * offsets into it, checks each tensor against the heap and throws a RangeError otherwise.
 */
export interface OnednnAddon {
  /** Conv2D, depthwise or grouped (geometry's groups) forward, with an optional bias and activation. */
  convForward(
    heap: ArrayBuffer,
    geometry: number[],
    src: number,
    weights: number,
    bias: number,
    dst: number,
    activation: number,
    alpha: number,
  ): void;
  convBackwardData(
    heap: ArrayBuffer,
    geometry: number[],
    diffDst: number,
    weights: number,
    diffSrc: number,
  ): void;
  convBackwardWeights(
    heap: ArrayBuffer,
    geometry: number[],
    src: number,
    diffDst: number,
    diffWeights: number,
  ): void;
  matMul(
    heap: ArrayBuffer,
    geometry: number[],
    a: number,
    b: number,
    bias: number,
    c: number,
    activation: number,
    alpha: number,
  ): void;
  /**
   * Batch normalisation of an NHWC tensor per channel (geometry [batch, height, width, channels]):
   * training 1 writes the batch mean and biased variance into `mean`/`variance`, 0 reads them.
   * `scale`/`shift` -1: none.
   */
  batchNormForward(
    heap: ArrayBuffer,
    geometry: number[],
    src: number,
    mean: number,
    variance: number,
    scale: number,
    shift: number,
    dst: number,
    epsilon: number,
    training: 0 | 1,
  ): void;
  /**
   * Its gradient: training 1 through the batch statistics (with `diffScale`/`diffShift`, or -1 for
   * both), 0 with the statistics as constants (input gradient only).
   */
  batchNormBackward(
    heap: ArrayBuffer,
    geometry: number[],
    ...operands: [
      ...NormalizationBackwardOperands,
      diffSrc: number,
      diffScale: number,
      diffShift: number,
      epsilon: number,
      training: 0 | 1,
    ]
  ): void;
  /** An elementwise op over `count` float32 values (ELEMENTWISE_CODES); `b` -1 for unary ops. */
  elementwise(heap: ArrayBuffer, op: number, count: number, a: number, b: number, dst: number): void;
  /**
   * Layer normalisation of `geometry` [rows, size] rows: writes y and each row's mean and biased
   * variance ([rows], for the gradient). `scale`/`shift` [size], -1: none.
   */
  layerNormForward(
    heap: ArrayBuffer,
    geometry: number[],
    src: number,
    scale: number,
    shift: number,
    dst: number,
    mean: number,
    variance: number,
    epsilon: number,
  ): void;
  /** Its input gradient, through the row statistics (scale -1: none). */
  layerNormBackward(
    heap: ArrayBuffer,
    geometry: number[],
    ...operands: [...NormalizationBackwardOperands, diffSrc: number, epsilon: number]
  ): void;
  /** The softmax of each of the [rows, size] rows. */
  softmaxForward(heap: ArrayBuffer, geometry: number[], src: number, dst: number): void;
  /** Its gradient from the softmax `dst` and the upstream gradient. */
  softmaxBackward(heap: ArrayBuffer, geometry: number[], dst: number, diffDst: number, diffSrc: number): void;
  /** GELU (0), swish (1), hard swish (2) or hard sigmoid (3) of `count` float32 values. */
  activationForward(heap: ArrayBuffer, op: number, count: number, src: number, dst: number): void;
  /** Its gradient: diffSrc = diffDst * f'(src). */
  activationBackward(
    heap: ArrayBuffer,
    op: number,
    count: number,
    diffDst: number,
    src: number,
    diffSrc: number,
  ): void;
  setThreads(threads: number): void;
  threads(): number;
  version(): string;
  /** The oneDNN implementation chosen for every cached primitive (e.g. 'brgconv:avx512_core'). */
  implementations(): Record<string, string>;
}

/** Which kernels run the heavy ops: `onednn` (this addon), `wasm-native` (conv.wasm), `stock` (tfjs). */
export type KernelsName = 'onednn' | 'wasm-native' | 'stock';

/** Values of RATIO_KERNELS: force the addon (an error where it cannot load) or keep it off. */
export const KERNEL_CHOICES = ['onednn', 'wasm-native'] as const;
export type KernelsChoice = (typeof KERNEL_CHOICES)[number];

export const ADDON_PATH = new URL('./addon/build/Release/ratio_onednn.node', import.meta.url);

export function parseKernelsChoice(value: string | undefined): KernelsChoice | undefined {
  const trimmed = value?.trim().toLowerCase();
  if (!trimmed) return undefined;
  const match = KERNEL_CHOICES.find((choice) => choice === trimmed);
  if (!match) throw new Error(`'RATIO_KERNELS' must be one of ${KERNEL_CHOICES.join(', ')}; got '${value}'`);
  return match;
}

/**
 * Threads for oneDNN: RATIO_THREADS when set (a worker pool running N processes sets cores / N),
 * else every core.
 */
export function parseThreads(value: string | undefined = process.env.RATIO_THREADS): number {
  const trimmed = value?.trim();
  if (!trimmed) return availableParallelism();
  const threads = Number(trimmed);
  if (!Number.isInteger(threads) || threads < 1 || threads > 4096) {
    throw new Error(`'RATIO_THREADS' must be an integer from 1 to 4096; got '${value}'`);
  }
  return threads;
}

export type AddonLoad = { addon: OnednnAddon } | { addon: null; reason: string };

/** Loads the addon (not built, or libdnnl missing at run time: `addon` is null and `reason` says why). */
export function loadAddon(path: URL = ADDON_PATH): AddonLoad {
  if (!existsSync(path)) {
    return {
      addon: null,
      reason: `${path.pathname} is not built (npm ci builds it when libdnnl-dev is installed)`,
    };
  }
  // OpenMP threads that spin between primitives take the core from the JavaScript/wasm work between
  // them, and on a busy machine from everyone; PASSIVE waiting gives it back. libgomp reads this once,
  // when the addon loads it; it is removed again so that child processes see the environment as it was.
  const waitPolicyUnset = process.env.OMP_WAIT_POLICY === undefined;
  if (waitPolicyUnset) process.env.OMP_WAIT_POLICY = 'PASSIVE';
  try {
    const addon = createRequire(import.meta.url)(path.pathname) as OnednnAddon;
    return { addon };
  } catch (error) {
    return { addon: null, reason: error instanceof Error ? error.message.split('\n')[0] : String(error) };
  } finally {
    if (waitPolicyUnset) delete process.env.OMP_WAIT_POLICY;
  }
}
