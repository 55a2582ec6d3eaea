import * as tf from '@tensorflow/tfjs';
import { mixSeed } from '../../util/random.js';
import type { Classifier } from '../model/classifier.js';

/** Lets timers, signals and other requests run between attack iterations (abort is checked after). */
export const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Option checks of every attack and of AutoAttack, in one place: the batch, the threat model,
 * integer and non-negative settings. Each throws an Error naming the option.
 */

/**
 * The checks every attack makes on its batch: NHWC images, one label in [0, K) per image (`y` may
 * be absent for the attacks that need no labels).
 */
export function assertAttackBatch(classifier: Classifier, x: tf.Tensor4D, y: Int32Array | undefined): void {
  if (!(x instanceof tf.Tensor) || x.rank !== 4) {
    throw new Error(`'x' must be rank 4 (NHWC), got [${x instanceof tf.Tensor ? x.shape : typeof x}]`);
  }
  const n = x.shape[0];
  const k = classifier.numClasses;
  if (y === undefined) return;
  if (y.length !== n) throw new Error(`'y' must have ${n} labels, got ${y.length}`);
  if (y.some((label) => !(label >= 0 && label < k))) throw new Error(`'y' labels must lie in [0, ${k})`);
}

/** The threat model: norm L2 or Linf and a finite eps >= 0. */
export function assertThreatModel(options: { norm: string; eps: number }): void {
  if (options.norm !== 'L2' && options.norm !== 'Linf') {
    throw new Error(`'norm' must be 'L2' or 'Linf', got ${String(options.norm)}`);
  }
  if (!(options.eps >= 0 && Number.isFinite(options.eps))) {
    throw new Error(`'eps' must be a finite number >= 0, got ${options.eps}`);
  }
}

/** Optional integer settings (iterations, restarts, queries, ...) that must be >= 1 when given. */
export function assertPositiveIntegers(settings: ReadonlyArray<readonly [string, number | undefined]>): void {
  for (const [name, value] of settings) {
    if (value !== undefined && !(Number.isInteger(value) && value >= 1)) {
      throw new Error(`'${name}' must be an integer >= 1, got ${value}`);
    }
  }
}

/** Optional real settings (step sizes, overshoot, ...) that must be finite and >= 0 when given. */
export function assertNonNegativeNumbers(
  settings: ReadonlyArray<readonly [string, number | undefined]>,
): void {
  for (const [name, value] of settings) {
    if (value !== undefined && !(value >= 0 && Number.isFinite(value))) {
      throw new Error(`'${name}' must be a finite number >= 0, got ${value}`);
    }
  }
}

/**
 * The per-example seeds of a batch of n: the caller's `sampleSeeds` (checked), else mixSeed(seed, i)
 * by position in the batch.
 */
export function sampleSeedsOf(options: { seed?: number; sampleSeeds?: Uint32Array }, n: number): Uint32Array {
  if (options.sampleSeeds !== undefined) {
    if (options.sampleSeeds.length !== n) {
      throw new Error(`'sampleSeeds' must have ${n} entries, got ${options.sampleSeeds.length}`);
    }
    return options.sampleSeeds;
  }
  const seed = options.seed ?? 0;
  return Uint32Array.from({ length: n }, (_, i) => mixSeed(seed, i));
}
