import { describe, expect, it } from 'vitest';
import { Rng } from '../../src/util/random.js';

describe('Rng', () => {
  it('reproduces a sequence from the same seed and from a saved state', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const first = [a.next(), a.normal(), a.int(10)];
    expect([b.next(), b.normal(), b.int(10)]).toEqual(first);
    const saved = a.getState();
    const continued = [a.next(), a.normal(), a.normal()];
    const c = new Rng(7);
    c.setState(saved);
    expect([c.next(), c.normal(), c.normal()]).toEqual(continued);
  });

  it('draws normals with mean ~0 and variance ~1, and permutations of every index', () => {
    const rng = new Rng(1);
    const xs = rng.normals(20000);
    const mean = xs.reduce((s, v) => s + v, 0) / xs.length;
    const variance = xs.reduce((s, v) => s + (v - mean) ** 2, 0) / xs.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(variance - 1)).toBeLessThan(0.05);
    const perm = Array.from(rng.permutation(100)).sort((p, q) => p - q);
    expect(perm).toEqual(Array.from({ length: 100 }, (_, i) => i));
  });
});
