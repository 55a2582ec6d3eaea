import * as tf from '@tensorflow/tfjs';
import type { Rng } from '../../util/random.js';
import type { Norm } from '../types.js';

/**
 * Threat-model geometry shared by the attacks: per-example norms, projection onto the eps-ball
 * intersected with the box [0,1], normalised (steepest-ascent) steps and random starts.
 * Every function takes and returns batches (first axis = example) and is `tf.tidy`-clean.
 */

/** Guards divisions by a norm that may be zero (a zero gradient or a zero perturbation). */
const TINY = 1e-12;

function flatten(t: tf.Tensor): tf.Tensor2D {
  return t.reshape([t.shape[0], -1]) as tf.Tensor2D;
}

/** Reshapes a per-example vector [n] so it broadcasts against a batch of rank `rank`. */
export function perExample(values: tf.Tensor1D, rank: number): tf.Tensor {
  return values.reshape([values.shape[0], ...Array<number>(rank - 1).fill(1)]);
}

/** ||d_i||_2 or ||d_i||_inf for every example i of the batch; shape [n]. */
export function perExampleNorm(norm: Norm, d: tf.Tensor): tf.Tensor1D {
  return tf.tidy(() => {
    const flat = flatten(d);
    return (norm === 'L2' ? flat.square().sum(1).sqrt() : flat.abs().max(1)) as tf.Tensor1D;
  });
}

/** The dual norm: ||w||_1 for Linf, ||w||_2 for L2 (the margin of a linear model divides by it). */
export function dualNorm(norm: Norm, w: ArrayLike<number>): number {
  let total = 0;
  if (norm === 'L2') {
    for (let i = 0; i < w.length; i++) total += w[i] * w[i];
    return Math.sqrt(total);
  }
  for (let i = 0; i < w.length; i++) total += Math.abs(w[i]);
  return total;
}

/**
 * Plain-array version of `perExampleNorm` for a flat row, in float64 (verification and budget
 * checks run on host memory): ||d|| over d[start, start + size), or ||d - origin|| there when
 * `origin` is given.
 */
export function vectorNorm(
  norm: Norm,
  d: ArrayLike<number>,
  origin?: ArrayLike<number>,
  start = 0,
  size = d.length - start,
): number {
  let total = 0;
  for (let i = start; i < start + size; i++) {
    const a = Math.abs(origin ? d[i] - origin[i] : d[i]);
    total = norm === 'L2' ? total + a * a : Math.max(total, a);
  }
  return norm === 'L2' ? Math.sqrt(total) : total;
}

/** Scales every example to unit norm (L2: g / (||g||_2 + 1e-12); Linf: g / (||g||_inf + 1e-12)). */
export function normalizePerExample(norm: Norm, g: tf.Tensor): tf.Tensor {
  return tf.tidy(() => g.div(perExample(perExampleNorm(norm, g).add(TINY) as tf.Tensor1D, g.rank)));
}

/**
 * The steepest-ascent direction of unit norm: g/||g||_2 for L2, sign(g) for Linf
 * (the maximiser of <g, d> over the unit ball of each norm).
 */
export function steepestDirection(norm: Norm, g: tf.Tensor): tf.Tensor {
  return norm === 'L2' ? normalizePerExample('L2', g) : tf.sign(g);
}

/** Projects `u` onto {||u - x||_2 <= eps} (radially), then onto the box [0,1]. */
export function projectL2<T extends tf.Tensor>(x: T, u: T, eps: number): T {
  return tf.tidy(() => {
    const d = u.sub(x);
    const length = perExampleNorm('L2', d);
    const scale = tf.minimum(length, eps).div(length.add(TINY)) as tf.Tensor1D;
    return x.add(d.mul(perExample(scale, d.rank))).clipByValue(0, 1) as T;
  });
}

/** Projects `u` onto {||u - x||_inf <= eps} intersected with [0,1] (exact: both are boxes). */
export function projectLinf<T extends tf.Tensor>(x: T, u: T, eps: number): T {
  return tf.tidy(() => tf.minimum(tf.maximum(u, x.sub(eps)), x.add(eps)).clipByValue(0, 1) as T);
}

export function project<T extends tf.Tensor>(norm: Norm, x: T, u: T, eps: number): T {
  return norm === 'L2' ? projectL2(x, u, eps) : projectLinf(x, u, eps);
}

/**
 * A random start on the sphere of radius eps, clipped to the box, drawn from the caller's seeded
 * PRNG (host-side, so it is identical on every backend): L2 uses a Gaussian direction, Linf a
 * uniform vector in [-1,1] rescaled to Linf norm eps (as the reference APGD). With one `Rng` per
 * row, row i's noise comes from `rng[i]` alone (its start then does not depend on its batch).
 */
export function randomStart<T extends tf.Tensor>(
  norm: Norm,
  x: T,
  eps: number,
  rng: Rng | readonly Rng[],
): T {
  const size = x.size;
  const rows = x.shape[0] ?? 1;
  const rowSize = size / Math.max(rows, 1);
  const noise = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const source = Array.isArray(rng) ? (rng as readonly Rng[])[Math.floor(i / rowSize)] : (rng as Rng);
    noise[i] = norm === 'L2' ? source.normal() : 2 * source.next() - 1;
  }
  return tf.tidy(() => {
    const direction = normalizePerExample(norm, tf.tensor(noise, x.shape));
    return x.add(direction.mul(eps)).clipByValue(0, 1) as T;
  });
}

/**
 * Per-example choice: rows of `a` where `chosen[i]`, else rows of `b`. The full-shape mask is built
 * on the host (rank-1 conditions are not broadcast by every backend, and broadcastTo of a bool tensor
 * runs wasm's slow Tile, which costs many times the Select itself).
 */
export function selectRows<T extends tf.Tensor>(chosen: Uint8Array, a: T, b: T): T {
  const rowSize = a.size / Math.max(chosen.length, 1);
  const mask = new Uint8Array(a.size);
  for (let i = 0; i < chosen.length; i++) if (chosen[i]) mask.fill(1, i * rowSize, (i + 1) * rowSize);
  return tf.tidy(() => tf.where(tf.tensor(mask, a.shape, 'bool'), a, b) as T);
}
