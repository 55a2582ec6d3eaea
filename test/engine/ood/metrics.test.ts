import { describe, expect, it } from 'vitest';
import { fprAtTpr, oodMetrics, rocAuc, thresholdAtTpr } from '../../../src/engine/ood/metrics.js';
import { Rng } from '../../../src/util/random.js';

function bruteForceAuc(inScores: ArrayLike<number>, outScores: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < inScores.length; i++) {
    for (let j = 0; j < outScores.length; j++) {
      if (inScores[i] > outScores[j]) total += 1;
      else if (inScores[i] === outScores[j]) total += 0.5;
    }
  }
  return total / (inScores.length * outScores.length);
}

describe('oodMetrics', () => {
  it('gives AUC 0.5 for identical score sets and 1 / 0 for separated ones', () => {
    const scores = [0.1, 0.5, 0.5, 0.9, 0.3];
    expect(rocAuc(scores, scores)).toBe(0.5);
    expect(rocAuc([0.8, 0.9, 0.95], [0.1, 0.2, 0.7])).toBe(1);
    expect(rocAuc([0.1, 0.2], [0.8, 0.9])).toBe(0);
    expect(rocAuc([0.4, 0.4], [0.4])).toBe(0.5);
  });

  it('matches small cases computed by hand', () => {
    // pairs: (0.9,0.3) win, (0.9,0.8) win, (0.8,0.3) win, (0.8,0.8) tie -> 3.5 / 4
    const metrics = oodMetrics([0.9, 0.8], [0.3, 0.8]);
    expect(metrics.auc).toBe(0.875);
    expect(metrics.fpr_at_95_tpr).toBe(0.5);
    expect(metrics.mmc).toBeCloseTo(0.55, 12);
    // in [0.6, 0.4, 0.2], out [0.5, 0.1]: wins 0.6>0.5, 0.6>0.1, 0.4>0.1, 0.2>0.1 -> 4 / 6
    expect(rocAuc([0.6, 0.4, 0.2], [0.5, 0.1])).toBeCloseTo(4 / 6, 12);
  });

  it('agrees with brute-force pairwise counting on random data with many ties', () => {
    const rng = new Rng(11);
    for (let trial = 0; trial < 20; trial++) {
      const n = 1 + rng.int(60);
      const m = 1 + rng.int(60);
      // Scores on a coarse grid so ties are common, the out set shifted down a little.
      const inScores = Float32Array.from({ length: n }, () => Math.round(rng.next() * 8) / 8);
      const outScores = Float32Array.from({ length: m }, () => Math.round(rng.next() * 6) / 8);
      expect(rocAuc(inScores, outScores)).toBeCloseTo(bruteForceAuc(inScores, outScores), 12);
    }
  });

  it('computes FPR at 95% TPR from the threshold that keeps 95% of the in-scores', () => {
    // 20 in-scores 0.05..1.0: 95% = 19 of them are >= 0.1, so the threshold is 0.1.
    const inScores = Array.from({ length: 20 }, (_, i) => (i + 1) / 20);
    expect(fprAtTpr(inScores, [0.05, 0.09, 0.1, 0.5])).toBe(0.5);
    expect(fprAtTpr(inScores, [0.0, 0.01])).toBe(0);
    expect(fprAtTpr(inScores, [0.99, 1.0])).toBe(1);
    // Brute force: the FPR reported is the one at the lowest threshold reaching TPR >= 0.95.
    const rng = new Rng(3);
    const inRandom = Array.from({ length: 37 }, () => Math.round(rng.next() * 20) / 20);
    const outRandom = Array.from({ length: 23 }, () => Math.round(rng.next() * 20) / 20);
    let expected = 1;
    for (const threshold of [...new Set(inRandom)].sort((a, b) => b - a)) {
      const tpr = inRandom.filter((s) => s >= threshold).length / inRandom.length;
      if (tpr >= 0.95) {
        expected = outRandom.filter((s) => s >= threshold).length / outRandom.length;
        break;
      }
    }
    expect(fprAtTpr(inRandom, outRandom)).toBe(expected);
  });

  it('picks the OOD threshold that keeps the requested share of in-distribution scores', () => {
    const inScores = Array.from({ length: 20 }, (_, i) => (i + 1) / 20);
    expect(thresholdAtTpr(inScores)).toBe(0.1); // 19 of 20 are >= 0.1
    expect(thresholdAtTpr(inScores, 0.5)).toBe(0.55); // 10 of 20 are >= 0.55
    expect(thresholdAtTpr(inScores, 1)).toBe(0.05);
    expect(thresholdAtTpr([0.9, 0.8, 0.7, 0.6], 0.75)).toBe(0.7);
    // Ties: every score equal keeps all of them whatever the rate.
    expect(thresholdAtTpr([0.3, 0.3, 0.3], 0.5)).toBe(0.3);
    // Property: at least tpr of the scores pass, and any higher threshold among them passes fewer.
    const rng = new Rng(5);
    const scores = Array.from({ length: 101 }, () => Math.round(rng.next() * 30) / 30);
    for (const tpr of [0.5, 0.9, 0.95, 0.99]) {
      const t = thresholdAtTpr(scores, tpr);
      expect(scores.filter((s) => s >= t).length / scores.length).toBeGreaterThanOrEqual(tpr);
      const higher = scores.filter((s) => s > t);
      if (higher.length > 0) {
        const next = Math.min(...higher);
        expect(scores.filter((s) => s >= next).length / scores.length).toBeLessThan(tpr);
      }
    }
    expect(() => thresholdAtTpr([0.5], 0)).toThrow("'tpr' must be in (0, 1], got 0");
    expect(() => thresholdAtTpr([])).toThrow("'inScores' must not be empty");
  });

  it('rejects empty and NaN scores with the argument named', () => {
    expect(() => oodMetrics([], [0.5])).toThrow("'inScores' must not be empty");
    expect(() => oodMetrics([0.5], [Number.NaN])).toThrow("'outScores[0]' is NaN");
  });
});
