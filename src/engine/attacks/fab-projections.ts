import type { Norm } from '../types.js';

/**
 * FAB's inner problem (Croce & Hein, ICML 2020; reference fab_projections.py): the smallest step d,
 * in L2 or Linf, that puts the point t onto the hyperplane {z : <w, z> = b} while staying in the
 * box [0,1]:  min ||d||  s.t.  <w, t + d> = b,  0 <= t + d <= 1.
 *
 * Both norms share one structure. After flipping w so that the step must raise <w, .>, the KKT
 * conditions give, for a dual variable lambda >= 0,
 *   L2:   d_i = sign(w_i) * min(lambda |w_i|, cap_i)
 *   Linf: d_i = sign(w_i) * min(lambda, cap_i)
 * where cap_i is the room left in the box in the direction of sign(w_i). The gain
 * <w, d(lambda)> = sum_i weight_i * min(lambda, breakpoint_i) is piecewise linear and nondecreasing,
 * so the exact lambda lies between two sorted breakpoints: a binary search over the sorted
 * breakpoints finds the segment, and one linear equation gives lambda. When the hyperplane misses
 * the box, every coordinate saturates (the box corner nearest the hyperplane), as the reference does.
 * Computation is in float64 on the host: sorts are per example and the rows are small.
 */

/** Coordinates with |w_i| below this cannot move the point towards the hyperplane (reference: 1e-8). */
const NEGLIGIBLE_WEIGHT = 1e-8;

/**
 * The minimal step `d` (same length as `point`) from `point` onto {<w, z> = b} inside [0,1].
 * `point` should lie in the box; coordinates outside it are treated as being on its face.
 *
 * @example
 * // onto x_0 + x_1 = 1 from the origin: d = [0.5, 0.5]
 * hyperplaneBoxStep('L2', [0, 0], [1, 1], 1);
 */
export function hyperplaneBoxStep(
  norm: Norm,
  point: ArrayLike<number>,
  w: ArrayLike<number>,
  b: number,
): Float64Array {
  const size = point.length;
  if (w.length !== size) {
    throw new Error(`'w' must have the length of 'point' (${size}), got ${w.length}`);
  }
  if (norm !== 'L2' && norm !== 'Linf') throw new Error(`'norm' must be 'L2' or 'Linf', got ${String(norm)}`);
  let current = 0;
  for (let i = 0; i < size; i++) current += w[i] * point[i];
  // The gain <w, d> the step must achieve; flipping w makes it nonnegative.
  let gain = b - current;
  const flip = gain < 0 ? -1 : 1;
  gain *= flip;
  const step = new Float64Array(size);
  if (!(gain > 0)) return step;

  // Per coordinate: direction, room in the box, the dual value where it saturates, its weight in the gain.
  const direction = new Int8Array(size);
  const breakpoint = new Float64Array(size);
  const weight = new Float64Array(size);
  const cap = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    const wi = flip * w[i];
    const magnitude = Math.abs(wi);
    if (!(magnitude > NEGLIGIBLE_WEIGHT)) {
      breakpoint[i] = Number.POSITIVE_INFINITY;
      continue;
    }
    direction[i] = wi > 0 ? 1 : -1;
    const room = wi > 0 ? 1 - point[i] : point[i];
    cap[i] = Math.min(Math.max(room, 0), 1);
    const scale = norm === 'L2' ? magnitude : 1;
    breakpoint[i] = cap[i] / scale;
    weight[i] = magnitude * scale;
  }

  const gainAt = (lambda: number): number => {
    let total = 0;
    for (let i = 0; i < size; i++) if (weight[i] > 0) total += weight[i] * Math.min(lambda, breakpoint[i]);
    return total;
  };

  const sorted = breakpoint.slice().sort();
  let finite = size;
  while (finite > 0 && !Number.isFinite(sorted[finite - 1])) finite--;
  let lambda: number;
  if (finite === 0 || gainAt(sorted[finite - 1]) <= gain) {
    // The hyperplane is out of reach (or just reached with everything saturated).
    lambda = Number.POSITIVE_INFINITY;
  } else {
    // Smallest index k with gainAt(sorted[k]) > gain; lambda lies in [sorted[k-1], sorted[k]).
    let low = 0;
    let high = finite - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (gainAt(sorted[middle]) > gain) high = middle;
      else low = middle + 1;
    }
    const below = low > 0 ? sorted[low - 1] : 0;
    let saturatedGain = 0;
    let freeWeight = 0;
    for (let i = 0; i < size; i++) {
      if (weight[i] === 0) continue;
      if (breakpoint[i] <= below) saturatedGain += weight[i] * breakpoint[i];
      else freeWeight += weight[i];
    }
    lambda = Math.max((gain - saturatedGain) / freeWeight, below);
  }
  for (let i = 0; i < size; i++) {
    if (direction[i] === 0) continue;
    const free = norm === 'L2' ? lambda * Math.abs(w[i]) : lambda;
    step[i] = direction[i] * Math.min(free, cap[i]);
  }
  return step;
}
