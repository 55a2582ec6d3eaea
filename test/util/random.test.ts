import { describe, expect, it } from 'vitest';
import { hashName, mixSeed, Rng } from '../../src/util/random.js';

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

describe('mixSeed', () => {
  it('depends on every part and on their order, and is a uint32', () => {
    const seeds = new Set<number>();
    for (let a = 0; a < 20; a++) for (let b = 0; b < 20; b++) seeds.add(mixSeed(7, a, b));
    expect(seeds.size).toBe(400);
    expect(mixSeed(1, 2)).not.toBe(mixSeed(2, 1));
    expect(mixSeed(1, 2)).toBe(mixSeed(1, 2));
    expect(mixSeed(0)).not.toBe(mixSeed(0, 0));
    for (const seed of seeds) expect(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32).toBe(true);
    expect(hashName('apgd-ce')).not.toBe(hashName('apgd-t'));
  });
});
