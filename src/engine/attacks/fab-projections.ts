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
 * The minimal step `d` (same length as `point`) from `point` onto {<w, z> = b} inside [0,1],
 * written into `out` when given (else a new array). `point` should lie in the box; coordinates
 * outside it are treated as being on its face.
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
  out?: Float64Array,
): Float64Array {
  const size = point.length;
  if (w.length !== size) {
    throw new Error(`'w' must have the length of 'point' (${size}), got ${w.length}`);
  }
  if (out !== undefined && out.length !== size) {
    throw new Error(`'out' must have the length of 'point' (${size}), got ${out.length}`);
  }
  if (norm !== 'L2' && norm !== 'Linf') throw new Error(`'norm' must be 'L2' or 'Linf', got ${String(norm)}`);
  let current = 0;
  for (let i = 0; i < size; i++) current += w[i] * point[i];
  // The gain <w, d> the step must achieve; flipping w makes it nonnegative.
  let gain = b - current;
  const flip = gain < 0 ? -1 : 1;
  gain *= flip;
  // Typed-array allocation costs more than the rest of a call here: FAB passes its own `out`.
  const step = out ?? new Float64Array(size);
  if (!(gain > 0)) return step.fill(0);

  // Per coordinate: direction, room in the box, the dual value where it saturates, its weight in the
  // gain; and, in index order, the breakpoints and weights of the coordinates that can move.
  const { direction, breakpoint, weight, cap, movingBreakpoint, movingWeight, ranked, rankedWeight } =
    scratchFor(size);
  let moving = 0;
  for (let i = 0; i < size; i++) {
    const wi = flip * w[i];
    const magnitude = Math.abs(wi);
    direction[i] = 0;
    if (!(magnitude > NEGLIGIBLE_WEIGHT)) {
      breakpoint[i] = Number.POSITIVE_INFINITY;
      weight[i] = 0;
      continue;
    }
    direction[i] = wi > 0 ? 1 : -1;
    const room = wi > 0 ? 1 - point[i] : point[i];
    cap[i] = Math.min(Math.max(room, 0), 1);
    const scale = norm === 'L2' ? magnitude : 1;
    breakpoint[i] = cap[i] / scale;
    weight[i] = magnitude * scale;
    movingBreakpoint[moving] = breakpoint[i];
    movingWeight[moving] = weight[i];
    ranked[moving] = breakpoint[i];
    rankedWeight[moving] = weight[i];
    moving++;
  }

  // The smallest rank k with gainAt(k-th smallest breakpoint) > gain, as a binary search over the
  // sorted breakpoints finds it, without a full sort (O(d log d) per point and restart):
  // a weighted selection guesses k in linear time from partial sums (summed in another order, so it
  // may be off where gains tie), two exact evaluations confirm it, and a binary search whose probes
  // are order statistics found by selection takes over when they do not. Same lambda, bit for bit.
  let largest = Number.NEGATIVE_INFINITY;
  for (let j = 0; j < moving; j++) if (ranked[j] > largest) largest = ranked[j];
  let lambda: number;
  if (moving === 0 || gainAtDual(largest, movingWeight, movingBreakpoint, moving) <= gain) {
    // The hyperplane is out of reach (or just reached with everything saturated).
    lambda = Number.POSITIVE_INFINITY;
  } else {
    const guess = guessFirstRank(ranked, rankedWeight, moving, gain);
    // `ranked` holds the `guess` smallest breakpoints below index `guess`.
    let atGuess = Number.POSITIVE_INFINITY;
    for (let j = guess; j < moving; j++) if (ranked[j] < atGuess) atGuess = ranked[j];
    let beforeGuess = Number.NEGATIVE_INFINITY;
    for (let j = 0; j < guess; j++) if (ranked[j] > beforeGuess) beforeGuess = ranked[j];
    let low = guess;
    const confirmed =
      guess < moving &&
      gainAtDual(atGuess, movingWeight, movingBreakpoint, moving) > gain &&
      (guess === 0 || gainAtDual(beforeGuess, movingWeight, movingBreakpoint, moving) <= gain);
    if (!confirmed) {
      low = 0;
      let high = moving - 1;
      while (low < high) {
        const middle = (low + high) >> 1;
        selectRank(ranked, low, high, middle);
        if (gainAtDual(ranked[middle], movingWeight, movingBreakpoint, moving) > gain) high = middle;
        else low = middle + 1;
      }
    }
    // Ranks below `low` sit at indices below it: the (low-1)-th breakpoint is their largest.
    let below = 0;
    if (low > 0) {
      below = Number.NEGATIVE_INFINITY;
      for (let j = 0; j < low; j++) if (ranked[j] > below) below = ranked[j];
    }
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
    if (direction[i] === 0) {
      step[i] = 0;
      continue;
    }
    const free = norm === 'L2' ? lambda * Math.abs(w[i]) : lambda;
    step[i] = direction[i] * Math.min(free, cap[i]);
  }
  return step;
}

/**
 * <w, d(lambda)>, summed in index order over the moving coordinates (each has weight > 0). A module
 * function, not a closure per call: a fresh closure makes V8 deoptimise the caller on every call.
 */
function gainAtDual(lambda: number, weights: Float64Array, breakpoints: Float64Array, count: number): number {
  let total = 0;
  for (let j = 0; j < count; j++) total += weights[j] * Math.min(lambda, breakpoints[j]);
  return total;
}

interface Scratch {
  direction: Int8Array;
  breakpoint: Float64Array;
  weight: Float64Array;
  cap: Float64Array;
  movingBreakpoint: Float64Array;
  movingWeight: Float64Array;
  ranked: Float64Array;
  /** The weight of each entry of `ranked` (permuted with it by `guessFirstRank`). */
  rankedWeight: Float64Array;
}

/** Work arrays reused across calls (FAB calls this twice per example and iteration; sizes repeat). */
let scratch: Scratch | undefined;

function scratchFor(size: number): Scratch {
  if (scratch === undefined || scratch.direction.length < size) {
    scratch = {
      direction: new Int8Array(size),
      breakpoint: new Float64Array(size),
      weight: new Float64Array(size),
      cap: new Float64Array(size),
      movingBreakpoint: new Float64Array(size),
      movingWeight: new Float64Array(size),
      ranked: new Float64Array(size),
      rankedWeight: new Float64Array(size),
    };
  }
  return scratch;
}

/**
 * The median of the first, middle and last of values[lo..hi], the quickselect pivot: sorted or
 * constant runs do not degrade to quadratic time.
 */
function medianOfThree(values: Float64Array, lo: number, hi: number): number {
  const a = values[lo];
  const b = values[(lo + hi) >> 1];
  const c = values[hi];
  return Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
}

/**
 * Puts the k-th smallest of values[left..right] at index k, with nothing larger before it and nothing
 * smaller after it inside [left, right] (Hoare's FIND). The indices [left, right] must hold exactly
 * the ranks left..right of the whole array; [left, k] and [k, right] then do too.
 */
function selectRank(values: Float64Array, left: number, right: number, k: number): void {
  let l = left;
  let r = right;
  while (l < r) {
    const pivot = medianOfThree(values, l, r);
    let i = l;
    let j = r;
    while (i <= j) {
      while (values[i] < pivot) i++;
      while (values[j] > pivot) j--;
      if (i <= j) {
        const swap = values[i];
        values[i] = values[j];
        values[j] = swap;
        i++;
        j--;
      }
    }
    if (k <= j) r = j;
    else if (k >= i) l = i;
    else return;
  }
}

/**
 * The smallest rank k at which the gain sum_j weight_j * min(v, value_j), evaluated at the k-th
 * smallest value, exceeds `gain`; `count` when none does. Quickselect with three-way partitions,
 * carrying the gain of the values left of the window and the weight of those right of it, so each
 * probe costs the window, not the array. Leaves `values` (and `weights` with them) permuted so that
 * the returned rank's smaller values sit below it. Sums run in partition order: a guess to confirm.
 */
function guessFirstRank(values: Float64Array, weights: Float64Array, count: number, gain: number): number {
  let lo = 0;
  let hi = count - 1;
  let gainBelow = 0;
  let weightAbove = 0;
  while (lo <= hi) {
    const pivot = medianOfThree(values, lo, hi);
    // [lo, lt) < pivot, [lt, i) == pivot, (gt, hi] > pivot.
    let lt = lo;
    let i = lo;
    let gt = hi;
    let lessGain = 0;
    let equalWeight = 0;
    let greaterWeight = 0;
    while (i <= gt) {
      const value = values[i];
      const weight = weights[i];
      if (value < pivot) {
        lessGain += weight * value;
        values[i] = values[lt];
        weights[i] = weights[lt];
        values[lt] = value;
        weights[lt] = weight;
        lt++;
        i++;
      } else if (value > pivot) {
        greaterWeight += weight;
        values[i] = values[gt];
        weights[i] = weights[gt];
        values[gt] = value;
        weights[gt] = weight;
        gt--;
      } else {
        equalWeight += weight;
        i++;
      }
    }
    if (gainBelow + lessGain + pivot * (equalWeight + greaterWeight + weightAbove) > gain) {
      // The first rank past `gain` is at most lt (every rank of the pivot's value passes).
      hi = lt - 1;
      weightAbove += equalWeight + greaterWeight;
      if (lo > hi) return lt;
    } else {
      // No rank up to gt passes.
      lo = gt + 1;
      gainBelow += lessGain + pivot * equalWeight;
      if (lo > hi) return gt + 1;
    }
  }
  return lo;
}
