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

describe('hyperplaneBoxStep', () => {
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
