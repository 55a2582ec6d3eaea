import * as tf from '@tensorflow/tfjs';
import { mixSeed, Rng } from '../../util/random.js';
import type { Classifier } from '../model/classifier.js';
import { assertFinite } from '../model/logits.js';
import { type LongRunOptions, type Norm, throwIfAborted } from '../types.js';
import { DEFAULT_QUERIES } from './defaults.js';
import type { Attack, AttackArgs, AttackOptions, AttackProgress, PerturbResult } from './types.js';
import {
  assertAttackBatch,
  assertPositiveIntegers,
  assertThreatModel,
  sampleSeedsOf,
  yieldToEventLoop,
} from './validate.js';

/**
 * Square attack (Andriushchenko et al., ECCV 2020; reference square.py): a score-based black-box
 * random search on the margin z_y - max_{i != y} z_i. Each query changes the current best point in
 * random square windows whose side shrinks on a schedule, and keeps the change only if the margin
 * drops. Forward passes only, batched over the examples not yet broken; an example stops being
 * queried once its margin is negative. Host-side float arrays hold the images (NHWC), so a window
 * update touches only its own pixels and every random number comes from the example's own seeded
 * `Rng` (window positions are drawn per example, as in the original square-attack code), so an
 * example's run never depends on the other examples of its batch.
 */

export interface SquareOptions extends LongRunOptions<AttackProgress> {
  norm: Norm;
  eps: number;
  /** Queries per example and restart after the initial one (default 5000). */
  queries?: number;
  /** Initial share of the image a window covers (default 0.8). */
  pInit?: number;
  /** Runs from fresh random initialisations, each on the examples not yet broken (default 1). */
  restarts?: number;
  /**
   * Stretch the 10000-query p schedule to `queries` (default true, as docs/algorithms.md says; the
   * reference AutoAttack composition passes `resc_schedule=False`).
   */
  rescaleSchedule?: boolean;
  /** Name reported in progress events (default 'square'). */
  name?: string;
  /** Per example, the seed of its draws (restart r draws from mixSeed(seed_i, r)). */
  sampleSeeds?: Uint32Array;
}

export interface SquareResult {
  /** Per example, the misclassified point found, else the point of lowest margin. */
  adversarial: tf.Tensor4D;
  /** 1 where `adversarial` is misclassified (clean errors included, returned as the clean input). */
  success: Uint8Array;
  /** Model evaluations spent per example (0 for clean errors). */
  queries: Int32Array;
  /** Lowest margin z_y - max_{i != y} z_i reached per example. */
  margins: Float32Array;
}

/** Query counts (of a 10000-query run) after which p halves. */
const HALVING_POINTS = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000];

/**
 * The window-size parameter p at query `iteration` (0-based): p_init halved after each of
 * 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 queries, the points scaled by queries / 10000 when
 * `rescale` is set (as the reference's `p_selection`).
 */
export function squareSchedule(iteration: number, queries: number, pInit: number, rescale = true): number {
  const position = rescale ? Math.floor((iteration / queries) * 10000) : iteration;
  let halvings = 0;
  for (const point of HALVING_POINTS) if (position > point) halvings++;
  return pInit / 2 ** halvings;
}

function validate(classifier: Classifier, x: tf.Tensor4D, y: Int32Array, options: SquareOptions): void {
  assertAttackBatch(classifier, x, y);
  const k = classifier.numClasses;
  if (k < 2) throw new Error(`the Square attack needs a model with at least 2 classes, got ${k}`);
  assertThreatModel(options);
  assertPositiveIntegers([
    ['queries', options.queries],
    ['restarts', options.restarts],
  ]);
  if (options.pInit !== undefined && !(options.pInit > 0 && options.pInit <= 1)) {
    throw new Error(`'pInit' must lie in (0, 1], got ${options.pInit}`);
  }
}

/** Margins z_y - max_{i != y} z_i of a batch of rows (one forward pass). */
function margins(
  classifier: Classifier,
  rows: Float32Array,
  shape: number[],
  labels: Int32Array,
): Float32Array {
  const k = classifier.numClasses;
  const logits = tf.tidy(
    () =>
      classifier
        .logits(tf.tensor4d(rows, shape as [number, number, number, number]))
        .dataSync() as Float32Array,
  );
  assertFinite(logits, 'Square');
  const out = new Float32Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    let other = Number.NEGATIVE_INFINITY;
    for (let c = 0; c < k; c++) if (c !== labels[i]) other = Math.max(other, logits[i * k + c]);
    out[i] = logits[i * k + labels[i]] - other;
  }
  return out;
}

/** One of the reference's "meta-pseudo-gaussian" rectangles: nested boxes weighted 1/(ring+1)^2. */
function etaRectangle(rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  const centre = [Math.floor(rows / 2), Math.floor(cols / 2)];
  const rings = Math.max(Math.floor(rows / 2) + 1, Math.floor(cols / 2) + 1);
  for (let ring = 0; ring < rings; ring++) {
    const top = centre[0] - ring;
    const left = centre[1] - ring;
    for (let r = Math.max(top, 0); r < Math.min(top + 2 * ring + 1, rows); r++) {
      for (let c = Math.max(left, 0); c < Math.min(left + 2 * ring + 1, cols); c++) {
        out[r * cols + c] += 1 / (ring + 1) ** 2;
      }
    }
  }
  return normalised(out);
}

function normalised(values: Float64Array): Float64Array {
  let total = 0;
  for (const v of values) total += v * v;
  const length = Math.sqrt(total);
  if (length > 0) for (let i = 0; i < values.length; i++) values[i] /= length;
  return values;
}

/**
 * The reference's s x s window of unit L2 norm (`eta`): a positive bump on the top half, a negative
 * one on the bottom, so moving it shifts mass of both signs; `transposed` turns it on its side.
 * Exported for tests.
 */
export function squareWindow(s: number, transposed = false): Float64Array {
  const top = etaRectangle(Math.floor(s / 2), s);
  const bottom = etaRectangle(s - Math.floor(s / 2), s);
  const window = new Float64Array(s * s);
  window.set(top);
  for (let i = 0; i < bottom.length; i++) window[top.length + i] = -bottom[i];
  normalised(window);
  if (!transposed) return window;
  const out = new Float64Array(s * s);
  for (let r = 0; r < s; r++) for (let c = 0; c < s; c++) out[c * s + r] = window[r * s + c];
  return out;
}

/** A window transposed with probability 1/2, as the reference draws it. */
const etaWindow = (s: number, rng: Rng): Float64Array => squareWindow(s, rng.next() > 0.5);

const randomSign = (rng: Rng): number => (rng.next() < 0.5 ? -1 : 1);
const clip01 = (v: number): number => Math.min(Math.max(v, 0), 1);

interface Geometry {
  height: number;
  width: number;
  channels: number;
  rowSize: number;
}

/** Linf start: vertical stripes of +-eps, one sign per example, column and channel. */
function initLinf(clean: Float32Array, g: Geometry, eps: number, rngs: Rng[]): Float32Array {
  const m = clean.length / g.rowSize;
  const out = new Float32Array(clean.length);
  for (let i = 0; i < m; i++) {
    const rng = rngs[i];
    const signs = Array.from({ length: g.width * g.channels }, () => randomSign(rng));
    for (let r = 0; r < g.height; r++) {
      for (let c = 0; c < g.width * g.channels; c++) {
        const index = i * g.rowSize + r * g.width * g.channels + c;
        out[index] = clip01(clean[index] + eps * signs[c]);
      }
    }
  }
  return out;
}

/**
 * L2 start: a grid of s x s blocks (s = floor(h/5), at least 1), each an eta window with a random
 * sign per example and channel, the whole perturbation scaled to norm eps.
 */
function initL2(clean: Float32Array, g: Geometry, eps: number, rngs: Rng[]): Float32Array {
  const m = clean.length / g.rowSize;
  const s = Math.max(Math.floor(g.height / 5), 1);
  const startRow = Math.max(Math.floor((g.height - 5 * s) / 2), 0);
  const startCol = Math.max(Math.floor((g.width - 5 * s) / 2), 0);
  const delta = new Float64Array(clean.length);
  for (let i = 0; i < m; i++) {
    const rng = rngs[i];
    for (let top = startRow; top + s <= g.height; top += s) {
      for (let left = startCol; left + s <= g.width; left += s) {
        const window = etaWindow(s, rng);
        for (let ch = 0; ch < g.channels; ch++) {
          const sign = randomSign(rng);
          for (let r = 0; r < s; r++) {
            for (let c = 0; c < s; c++) {
              const index = i * g.rowSize + ((top + r) * g.width + left + c) * g.channels + ch;
              delta[index] += sign * window[r * s + c];
            }
          }
        }
      }
    }
  }
  const out = new Float32Array(clean.length);
  for (let i = 0; i < m; i++) applyL2(clean, delta, out, i, g.rowSize, eps);
  return out;
}

/** out_i = clip(x_i + eps * delta_i / ||delta_i||_2, 0, 1). */
function applyL2(
  clean: Float32Array,
  delta: Float64Array,
  out: Float32Array,
  i: number,
  rowSize: number,
  eps: number,
): void {
  const offset = i * rowSize;
  let total = 0;
  for (let j = offset; j < offset + rowSize; j++) total += delta[j] * delta[j];
  const scale = eps / (Math.sqrt(total) + 1e-12);
  for (let j = offset; j < offset + rowSize; j++) out[j] = clip01(clean[j] + scale * delta[j]);
}

/** Side of the window at p: round(sqrt(p h w)), at least `minimum`, odd for L2, inside the image. */
function windowSide(p: number, g: Geometry, norm: Norm): number {
  let s = Math.round(Math.sqrt(p * g.height * g.width));
  if (norm === 'Linf') s = Math.max(s, 1);
  else {
    s = Math.max(s, 3);
    if (s % 2 === 0) s++;
  }
  return Math.min(s, g.height, g.width);
}

/**
 * A query's arguments: the clean inputs, the best points so far, the geometry, the window size,
 * the budget, one generator per example and the buffers the proposal is written into.
 */
type ProposalArgs = [
  clean: Float32Array,
  best: Float32Array,
  g: Geometry,
  s: number,
  eps: number,
  rngs: Rng[],
  buffers: ProposalBuffers,
];

/** Linf query: one window of the best point set to x +- eps (sign per example and channel). */
function proposeLinf(...[clean, best, g, s, eps, rngs, buffers]: ProposalArgs): Float32Array {
  const m = best.length / g.rowSize;
  const out = buffers.out.subarray(0, best.length);
  out.set(best);
  for (let i = 0; i < m; i++) {
    const rng = rngs[i];
    const top = rng.int(g.height - s + 1);
    const left = rng.int(g.width - s + 1);
    for (let ch = 0; ch < g.channels; ch++) {
      const step = 2 * eps * randomSign(rng);
      for (let r = top; r < top + s; r++) {
        for (let c = left; c < left + s; c++) {
          const index = i * g.rowSize + (r * g.width + c) * g.channels + ch;
          const value = Math.min(Math.max(best[index] + step, clean[index] - eps), clean[index] + eps);
          out[index] = clip01(value);
        }
      }
    }
  }
  return out;
}

/**
 * L2 query (reference `attack_single_run`, L2 branch): the perturbation mass of window 2 and the
 * budget left unused are moved into window 1 as a fresh eta window plus the old content of window 1,
 * per channel; the whole perturbation is then rescaled to norm eps.
 */
function proposeL2(...[clean, best, g, s, eps, rngs, buffers]: ProposalArgs): Float32Array {
  const m = best.length / g.rowSize;
  const { width, channels, rowSize } = g;
  const inWindow = (r: number, c: number, top: number, left: number) =>
    r >= top && r < top + s && c >= left && c < left + s;
  // Every element of both is written below before it is read: no clearing between queries.
  const delta = buffers.delta.subarray(0, best.length);
  const out = buffers.out.subarray(0, best.length);
  const block = new Float64Array(s * s);
  for (let i = 0; i < m; i++) {
    const rng = rngs[i];
    const top1 = rng.int(g.height - s + 1);
    const left1 = rng.int(width - s + 1);
    const top2 = rng.int(g.height - s + 1);
    const left2 = rng.int(width - s + 1);
    const window = etaWindow(s, rng);
    const offset = i * rowSize;
    let imageSquared = 0;
    let windowsSquared = 0;
    for (let r = 0; r < g.height; r++) {
      for (let c = 0; c < width; c++) {
        const covered = inWindow(r, c, top1, left1) || inWindow(r, c, top2, left2);
        for (let ch = 0; ch < channels; ch++) {
          const index = offset + (r * width + c) * channels + ch;
          const value = best[index] - clean[index];
          delta[index] = value;
          imageSquared += value * value;
          if (covered) windowsSquared += value * value;
        }
      }
    }
    // What window 1 of each channel receives: its share of the unused budget plus both windows' mass.
    const target = Math.sqrt(Math.max(eps * eps - imageSquared, 0) / channels + windowsSquared);
    for (let ch = 0; ch < channels; ch++) {
      let oldSquared = 0;
      for (let r = 0; r < s; r++) {
        for (let c = 0; c < s; c++) {
          const value = delta[offset + ((top1 + r) * width + left1 + c) * channels + ch];
          oldSquared += value * value;
        }
      }
      const oldNorm = Math.sqrt(oldSquared) + 1e-12;
      const sign = randomSign(rng);
      let blockSquared = 0;
      for (let r = 0; r < s; r++) {
        for (let c = 0; c < s; c++) {
          const old = delta[offset + ((top1 + r) * width + left1 + c) * channels + ch];
          const value = sign * window[r * s + c] + old / oldNorm;
          block[r * s + c] = value;
          blockSquared += value * value;
        }
      }
      const scale = target / (Math.sqrt(blockSquared) + 1e-12);
      for (let r = 0; r < s; r++) {
        for (let c = 0; c < s; c++) delta[offset + ((top2 + r) * width + left2 + c) * channels + ch] = 0;
      }
      for (let r = 0; r < s; r++) {
        for (let c = 0; c < s; c++) {
          delta[offset + ((top1 + r) * width + left1 + c) * channels + ch] = scale * block[r * s + c];
        }
      }
    }
    applyL2(clean, delta, out, i, rowSize, eps);
  }
  return out;
}

/**
 * Work arrays of one run's proposals, reused query after query: allocating typed arrays of a batch
 * of images per query cost more than filling them (and fed the garbage collector).
 */
interface ProposalBuffers {
  delta: Float64Array;
  out: Float32Array;
}

function rowsOf(values: Float32Array, rowSize: number, indices: ArrayLike<number>): Float32Array {
  const out = new Float32Array(indices.length * rowSize);
  for (let j = 0; j < indices.length; j++) {
    out.set(values.subarray(indices[j] * rowSize, (indices[j] + 1) * rowSize), j * rowSize);
  }
  return out;
}

/**
 * The Square attack on a batch. Clean errors count as broken and come back unchanged. The caller
 * disposes `adversarial`. Rejects with an AbortError when `signal` fires (checked between queries).
 *
 * @example
 * const { adversarial, success } = await squareAttack(model, x, y, { norm: 'L2', eps: 0.5, queries: 1000, seed: 0 });
 */
export async function squareAttack(
  ...[classifier, x, y, options]: AttackArgs<SquareOptions>
): Promise<SquareResult> {
  validate(classifier, x, y, options);
  const { norm, eps } = options;
  const queries = options.queries ?? DEFAULT_QUERIES;
  const pInit = options.pInit ?? 0.8;
  const restarts = options.restarts ?? 1;
  const rescale = options.rescaleSchedule ?? true;
  const name = options.name ?? 'square';
  const [n, height, width, channels] = x.shape;
  const seeds = sampleSeedsOf(options, n);
  const g: Geometry = { height, width, channels, rowSize: height * width * channels };
  const clean = x.dataSync() as Float32Array;
  const bestRows = clean.slice();
  const bestMargins = margins(classifier, clean, x.shape, y);
  const spent = new Int32Array(n);
  const total = restarts * queries;

  for (let restart = 0; restart < restarts; restart++) {
    const active: number[] = [];
    for (let i = 0; i < n; i++) if (!(bestMargins[i] < 0)) active.push(i);
    if (active.length === 0) {
      options.onProgress?.({ attack: name, done: total, total });
      break;
    }
    const runClean = rowsOf(clean, g.rowSize, active);
    const runLabels = Int32Array.from(active, (i) => y[i]);
    const init = norm === 'L2' ? initL2 : initLinf;
    const runRngs = active.map((i) => new Rng(mixSeed(seeds[i], restart)));
    const runBest = init(runClean, g, eps, runRngs);
    const runMargins = margins(classifier, runBest, [active.length, height, width, channels], runLabels);
    for (const i of active) spent[i]++;

    const buffers: ProposalBuffers = {
      delta: new Float64Array(norm === 'L2' ? runClean.length : 0),
      out: new Float32Array(runClean.length),
    };
    let iteration = 0;
    for (; iteration < queries; iteration++) {
      throwIfAborted(options.signal);
      const open: number[] = [];
      for (let j = 0; j < active.length; j++) if (!(runMargins[j] < 0)) open.push(j);
      if (open.length === 0) break;
      const s = windowSide(squareSchedule(iteration, queries, pInit, rescale), g, norm);
      // While no example of the run has broken (the usual case), its rows are the run's own arrays.
      const everyOne = open.length === active.length;
      const openClean = everyOne ? runClean : rowsOf(runClean, g.rowSize, open);
      const openBest = everyOne ? runBest : rowsOf(runBest, g.rowSize, open);
      const propose = norm === 'L2' ? proposeL2 : proposeLinf;
      const candidate = propose(
        openClean,
        openBest,
        g,
        s,
        eps,
        open.map((j) => runRngs[j]),
        buffers,
      );
      const candidateMargins = margins(
        classifier,
        candidate,
        [open.length, height, width, channels],
        Int32Array.from(open, (j) => runLabels[j]),
      );
      open.forEach((j, k) => {
        spent[active[j]]++;
        if (!(candidateMargins[k] < runMargins[j])) return;
        runMargins[j] = candidateMargins[k];
        runBest.set(candidate.subarray(k * g.rowSize, (k + 1) * g.rowSize), j * g.rowSize);
      });
      options.onProgress?.({ attack: name, done: restart * queries + iteration + 1, total });
      await yieldToEventLoop();
    }
    // Every example broke before the budget ran out: the rest of this restart counts as done.
    if (iteration < queries) options.onProgress?.({ attack: name, done: (restart + 1) * queries, total });
    active.forEach((i, j) => {
      // Keep the run's point only where it beat what we had (the clean point or an earlier restart).
      if (!(runMargins[j] < bestMargins[i])) return;
      bestMargins[i] = runMargins[j];
      bestRows.set(runBest.subarray(j * g.rowSize, (j + 1) * g.rowSize), i * g.rowSize);
    });
  }

  // Re-judge on one batch: a margin just below 0 in one batch layout must stay wrong in another.
  const finalMargins = margins(classifier, bestRows, x.shape, y);
  const success = Uint8Array.from(finalMargins, (margin) => (margin < 0 ? 1 : 0));
  return { adversarial: tf.tensor4d(bestRows, x.shape), success, queries: spent, margins: bestMargins };
}

export interface SquareConfig {
  /** Queries per example (default 5000). */
  queries?: number;
  pInit?: number;
  rescaleSchedule?: boolean;
}

/** The Square attack behind the `Attack` contract (AutoAttack's black-box member). */
export function square(config: SquareConfig = {}): Attack {
  return {
    name: 'square',
    async perturb(classifier, x, y, options: AttackOptions): Promise<PerturbResult> {
      const result = await squareAttack(classifier, x, y, { ...config, ...options, name: 'square' });
      return { adversarial: result.adversarial, success: result.success };
    },
  };
}
