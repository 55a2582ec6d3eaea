import { describe, expect, it } from 'vitest';
import { hyperplaneBoxStep } from '../../../src/engine/attacks/fab-projections.js';
import type { Norm } from '../../../src/engine/types.js';
import { Rng } from '../../../src/util/random.js';

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let total = 0;
  for (let i = 0; i < a.length; i++) total += a[i] * b[i];
  return total;
};

/**
 * Independent reference: the KKT step d(lambda) of each norm, with lambda found by plain bisection
 * on the (monotone) gain <w, d(lambda)>, no sorting or breakpoints.
 */
function bisectionStep(norm: Norm, t: number[], w: number[], b: number): number[] {
  // d(mu)_i = clip(mu * w_i (L2) or mu * sign(w_i) (Linf), -t_i, 1 - t_i); <w, d(mu)> rises with mu.
  const stepAt = (mu: number) =>
    t.map((ti, i) => {
      if (Math.abs(w[i]) <= 1e-8) return 0;
      const free = norm === 'L2' ? mu * w[i] : mu * Math.sign(w[i]);
      return Math.min(Math.max(free, -ti), 1 - ti);
    });
  const needed = b - dot(w, t);
  let low = -1e9;
  let high = 1e9;
  for (let i = 0; i < 300; i++) {
    const middle = (low + high) / 2;
    if (dot(w, stepAt(middle)) < needed) low = middle;
    else high = middle;
  }
  return stepAt((low + high) / 2);
}

/**
 * The previous implementation (a full sort of the breakpoints, then the binary search): selection
 * must find the same probes, hence the same lambda, bit for bit.
 */
function sortedSearchStep(
  norm: Norm,
  point: ArrayLike<number>,
  w: ArrayLike<number>,
  b: number,
): Float64Array {
  const size = point.length;
  let gain = b - dot(w, point);
  const flip = gain < 0 ? -1 : 1;
  gain *= flip;
  const step = new Float64Array(size);
  if (!(gain > 0)) return step;
  const direction = new Int8Array(size);
  const breakpoint = new Float64Array(size);
  const weight = new Float64Array(size);
  const cap = new Float64Array(size);
  for (let i = 0; i < size; i++) {
    const wi = flip * w[i];
    const magnitude = Math.abs(wi);
    if (!(magnitude > 1e-8)) {
      breakpoint[i] = Number.POSITIVE_INFINITY;
      continue;
    }
    direction[i] = wi > 0 ? 1 : -1;
    cap[i] = Math.min(Math.max(wi > 0 ? 1 - point[i] : point[i], 0), 1);
    const scale = norm === 'L2' ? magnitude : 1;
    breakpoint[i] = cap[i] / scale;
    weight[i] = magnitude * scale;
  }
  const gainAt = (lambda: number) => {
    let total = 0;
    for (let i = 0; i < size; i++) if (weight[i] > 0) total += weight[i] * Math.min(lambda, breakpoint[i]);
    return total;
  };
  const sorted = breakpoint.slice().sort();
  let finite = size;
  while (finite > 0 && !Number.isFinite(sorted[finite - 1])) finite--;
  let lambda = Number.POSITIVE_INFINITY;
  if (finite > 0 && gainAt(sorted[finite - 1]) > gain) {
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
    step[i] = direction[i] * Math.min(norm === 'L2' ? lambda * Math.abs(w[i]) : lambda, cap[i]);
  }
  return step;
}

describe('hyperplaneBoxStep', () => {
  it.each(['L2', 'Linf'] as Norm[])(
    'equals the full-sort search bit for bit on image-sized rows, into `out` or not (%s)',
    (norm) => {
      const rng = new Rng(17);
      const size = 3072;
      const out = new Float64Array(size).fill(Number.NaN);
      for (let trial = 0; trial < 60; trial++) {
        // Pixels on the box faces (equal breakpoints), zero weights, quantised weights (ties).
        const point = Float32Array.from({ length: size }, () =>
          rng.next() < 0.2 ? (rng.next() < 0.5 ? 0 : 1) : rng.next(),
        );
        const w = Float32Array.from({ length: size }, () => {
          const u = rng.next();
          if (u < 0.05) return 0;
          return u < 0.3 ? Math.round(rng.normal() * 4) / 400 : rng.normal() * 0.01;
        });
        const b = dot(w, point) + (rng.next() - 0.5) * (trial % 3 === 0 ? 10 : 0.1);
        const expected = sortedSearchStep(norm, point, w, b);
        expect(hyperplaneBoxStep(norm, point, w, b)).toEqual(expected);
        expect(hyperplaneBoxStep(norm, point, w, b, out)).toBe(out);
        expect(out).toEqual(expected);
      }
      // The hyperplane exactly at the gain of a breakpoint (from the origin, where gain = b): partial
      // sums in another order disagree in the last bit, the linear-time guess is refuted and the
      // binary search decides; the step must not change.
      const origin = new Float32Array(size);
      for (let trial = 0; trial < 30; trial++) {
        const w = Float32Array.from({ length: size }, () => 0.05 + rng.next());
        const scale = (i: number) => (norm === 'L2' ? w[i] : 1);
        const breakpointOf = (i: number) => 1 / scale(i);
        const at = breakpointOf(rng.int(size));
        let b = 0;
        for (let i = 0; i < size; i++) b += w[i] * scale(i) * Math.min(at, breakpointOf(i));
        expect(hyperplaneBoxStep(norm, origin, w, b, out)).toEqual(sortedSearchStep(norm, origin, w, b));
      }
      expect(() => hyperplaneBoxStep(norm, [0, 0], [1, 1], 1, new Float64Array(3))).toThrow(
        `'out' must have the length of 'point' (2), got 3`,
      );
    },
  );

  it('gives the known L2 answers, with and without the box', () => {
    expect(Array.from(hyperplaneBoxStep('L2', [0, 0], [1, 1], 1))).toEqual([0.5, 0.5]);
    // Unconstrained [0.3, 0.3] would leave the box; coordinate 0 saturates, coordinate 1 takes the rest.
    const step = hyperplaneBoxStep('L2', [0.9, 0.1], [1, 1], 1.6);
    expect(step[0]).toBeCloseTo(0.1, 12);
    expect(step[1]).toBeCloseTo(0.5, 12);
    // Downwards (gain < 0) with an unequal weight: d = -c w / ||w||^2.
    const down = hyperplaneBoxStep('L2', [0.5, 0.5], [2, 1], 1.0);
    expect(down[0]).toBeCloseTo(-0.2, 12);
    expect(down[1]).toBeCloseTo(-0.1, 12);
  });

  it('gives the known Linf answers, with and without the box', () => {
    const free = hyperplaneBoxStep('Linf', [0.5, 0.5, 0.5], [1, 2, -1], 1 + 0.5 * 2);
    expect(Array.from(free).map((v) => Number(v.toFixed(12)))).toEqual([0.25, 0.25, -0.25]);
    const boxed = hyperplaneBoxStep('Linf', [0.9, 0.5, 0.5], [1, 1, 1], 1.9 + 0.6);
    expect(boxed[0]).toBeCloseTo(0.1, 12);
    expect(boxed[1]).toBeCloseTo(0.25, 12);
    expect(boxed[2]).toBeCloseTo(0.25, 12);
  });

  it('moves to the nearest box corner when the hyperplane misses the box, and not at all when on it', () => {
    expect(Array.from(hyperplaneBoxStep('L2', [0.5, 0.25], [1, 1], 3))).toEqual([0.5, 0.75]);
    expect(Array.from(hyperplaneBoxStep('Linf', [0.5, 0.25], [1, -1], -3))).toEqual([-0.5, 0.75]);
    expect(Array.from(hyperplaneBoxStep('L2', [0.5, 0.25], [1, 1], 0.75))).toEqual([0, 0]);
    // A zero normal cannot move the point.
    expect(Array.from(hyperplaneBoxStep('Linf', [0.5, 0.25], [0, 0], 1))).toEqual([0, 0]);
  });

  for (const norm of ['L2', 'Linf'] as const) {
    it(`matches bisection on the dual variable on random ${norm} problems`, () => {
      const rng = new Rng(11);
      for (let trial = 0; trial < 200; trial++) {
        const size = 1 + rng.int(12);
        const t = Array.from({ length: size }, () => rng.next());
        const w = Array.from({ length: size }, () => (rng.next() < 0.15 ? 0 : rng.normal()));
        // A target point inside the box, so the hyperplane meets it; sometimes one just outside.
        const inside = Array.from({ length: size }, () => (rng.next() < 0.1 ? 1.2 * rng.next() : rng.next()));
        const b = dot(w, inside);
        const step = hyperplaneBoxStep(norm, t, w, b);
        const reference = bisectionStep(norm, t, w, b);
        for (let i = 0; i < size; i++) {
          expect(step[i]).toBeCloseTo(reference[i], 7);
          expect(t[i] + step[i]).toBeGreaterThanOrEqual(-1e-12);
          expect(t[i] + step[i]).toBeLessThanOrEqual(1 + 1e-12);
        }
        const reachable = w.reduce((sum, wi, i) => sum + Math.max(wi * (1 - t[i]), -wi * t[i]), dot(w, t));
        const lowest = w.reduce((sum, wi, i) => sum + Math.min(wi * (1 - t[i]), -wi * t[i]), dot(w, t));
        if (b <= reachable && b >= lowest) {
          expect(dot(w, t) + dot(w, Array.from(step))).toBeCloseTo(b, 9);
        }
      }
    });
  }

  it('names the argument at fault', () => {
    expect(() => hyperplaneBoxStep('L2', [0, 0], [1], 1)).toThrow(
      `'w' must have the length of 'point' (2), got 1`,
    );
    expect(() => hyperplaneBoxStep('L1' as Norm, [0], [1], 1)).toThrow(`'norm' must be 'L2' or 'Linf'`);
  });
});
