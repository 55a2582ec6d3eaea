import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { counterfactuals, enforceBudget } from '../../src/engine/counterfactuals.js';
import { functionClassifier } from '../../src/engine/model/classifier.js';
import { Rng } from '../../src/util/random.js';

const SHAPE: [number, number, number] = [4, 4, 3];
const DIM = 48;

function linearModel(weights: Float32Array, numClasses: number, bias = new Float32Array(numClasses)) {
  return functionClassifier({ inputShape: SHAPE, numClasses }, (x) =>
    tf.tidy(() =>
      x
        .reshape([x.shape[0], DIM])
        .matMul(tf.tensor2d(weights, [DIM, numClasses]))
        .add(tf.tensor1d(bias)),
    ),
  );
}

function distances(x: Float32Array, z: Float32Array, n: number): number[] {
  return Array.from({ length: n }, (_, i) => {
    let squared = 0;
    for (let j = i * DIM; j < (i + 1) * DIM; j++) squared += (z[j] - x[j]) ** 2;
    return Math.sqrt(squared);
  });
}

describe('counterfactuals', () => {
  it('respects budget and box, and p_target never decreases with the radius', async () => {
    const rng = new Rng(21);
    const numClasses = 4;
    const model = linearModel(
      Float32Array.from({ length: DIM * numClasses }, () => rng.normal()),
      numClasses,
    );
    const n = 6;
    // Images over the whole [0,1] range, many pixels near the edges: the box binds.
    const x = tf.tensor4d(
      Float32Array.from({ length: n * DIM }, () => (rng.next() < 0.3 ? Math.round(rng.next()) : rng.next())),
      [n, ...SHAPE],
    );
    const xs = x.dataSync() as Float32Array;
    const before = tf.memory().numTensors;
    // Target 0 for every image, so some targets equal the original prediction.
    const targets = Int32Array.from({ length: n }, (_, i) => i % numClasses);
    const result = await counterfactuals(model, x, targets, { iterations: 30, seed: 2 });
    expect(result.radii.map((r) => r.eps)).toEqual([0.5, 1, 1.5, 2, 2.5, 3]);
    let previous = result.clean.p_target;
    for (const radius of result.radii) {
      const zs = radius.images.dataSync() as Float32Array;
      for (const value of zs) {
        expect(value).toBeGreaterThanOrEqual(0);
        expect(value).toBeLessThanOrEqual(1);
      }
      const measured = distances(xs, zs, n);
      for (let i = 0; i < n; i++) {
        expect(measured[i]).toBeLessThanOrEqual(radius.eps);
        expect(radius.distance[i]).toBeCloseTo(measured[i], 12);
        expect(radius.p_target[i]).toBeGreaterThanOrEqual(previous[i]);
      }
      previous = radius.p_target;
    }
    // Pushing towards the target does help a linear model.
    for (let i = 0; i < n; i++) expect(result.radii[5].p_target[i]).toBeGreaterThan(result.clean.p_target[i]);
    tf.dispose(result.radii.map((r) => r.images));
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('reaches the closed-form optimum when the box does not bind, also for t = the original class', async () => {
    // z = [a.x, 0, 0] with a > 0: class 0 is predicted, and max p_0 over the ball is at a.x + eps ||a||.
    const rng = new Rng(8);
    const a = Float32Array.from({ length: DIM }, () => 0.2 + Math.abs(rng.normal()));
    const weights = new Float32Array(DIM * 3);
    for (let j = 0; j < DIM; j++) weights[j * 3] = a[j];
    // Bias so the clean p_0 is moderate rather than saturated.
    const n = 3;
    const xs = Float32Array.from({ length: n * DIM }, () => 0.4 + 0.2 * rng.next());
    const z0Clean = Array.from({ length: n }, (_, i) => a.reduce((s, v, j) => s + v * xs[i * DIM + j], 0));
    const bias = -Math.min(...z0Clean) + 0.1;
    const model = linearModel(weights, 3, Float32Array.from([bias, 0, 0]));
    const x = tf.tensor4d(xs, [n, ...SHAPE]);
    const aNorm = Math.hypot(...a);
    const radii = [0.05, 0.1, 0.2];
    const result = await counterfactuals(model, x, new Int32Array(n), { radii, iterations: 50, seed: 0 });
    const p0 = (z: number) => Math.exp(z) / (Math.exp(z) + 2);
    for (let i = 0; i < n; i++) {
      expect(result.originalClass[i]).toBe(0);
      expect(result.clean.p_target[i]).toBeCloseTo(p0(z0Clean[i] + bias), 5);
      result.radii.forEach((radius, r) => {
        expect(Math.abs(radius.p_target[i] - p0(z0Clean[i] + bias + radii[r] * aNorm))).toBeLessThan(1e-3);
        // t = c: p_original is p_target.
        expect(radius.p_original[i]).toBe(radius.p_target[i]);
      });
    }
    tf.dispose(result.radii.map((r) => r.images));
    x.dispose();
  });

  it('stops with an AbortError between radii and iterations, leaving no tensors', async () => {
    const rng = new Rng(2);
    const model = linearModel(
      Float32Array.from({ length: DIM * 3 }, () => rng.normal()),
      3,
    );
    const x = tf.tensor4d(
      Float32Array.from({ length: 2 * DIM }, () => rng.next()),
      [2, ...SHAPE],
    );
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    const progress: number[] = [];
    const run = counterfactuals(model, x, Int32Array.from([1, 2]), {
      radii: [0.5, 1, 2],
      iterations: 20,
      signal: controller.signal,
      onProgress: (p) => {
        progress.push(p.done);
        expect(p.total).toBe(60);
        if (p.done === 25) controller.abort();
      },
    });
    await expect(run).rejects.toThrow(/abort/i);
    expect(Math.max(...progress)).toBe(25);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('rejects bad targets and radii naming the argument', async () => {
    const model = linearModel(new Float32Array(DIM * 2), 2);
    const x = tf.zeros([2, ...SHAPE]) as tf.Tensor4D;
    await expect(counterfactuals(model, x, Int32Array.from([0]))).rejects.toThrow(
      "'targets' must have one class per image (2), got 1",
    );
    await expect(counterfactuals(model, x, Int32Array.from([0, 2]))).rejects.toThrow(
      "'targets[1]' must be a class in [0, 1], got 2",
    );
    await expect(counterfactuals(model, x, Int32Array.from([0, 1]), { radii: [1, -1] })).rejects.toThrow(
      "'radii[1]' must be a finite number > 0, got -1",
    );
    x.dispose();
  });
});

describe('enforceBudget', () => {
  it('pulls rows that overshoot eps by float error back inside, exactly', () => {
    const rng = new Rng(1);
    const rowSize = 3072;
    const clean = Float32Array.from({ length: 2 * rowSize }, () => 0.25 + 0.5 * rng.next());
    const candidate = clean.slice();
    const eps = 0.5;
    // Row 0: a random direction scaled to eps (1 + 1e-6) in float64, then rounded to float32.
    const direction = Float64Array.from({ length: rowSize }, () => rng.normal());
    const length = Math.hypot(...direction);
    for (let j = 0; j < rowSize; j++)
      candidate[j] = Math.fround(clean[j] + (direction[j] / length) * eps * (1 + 1e-6));
    // Row 1: well inside (0.25 from x), but with a pixel outside the box.
    clean[rowSize + 5] = 0.75;
    candidate[rowSize + 5] = 1.5;
    const norm = (r: number) => {
      let squared = 0;
      for (let j = r * rowSize; j < (r + 1) * rowSize; j++) squared += (candidate[j] - clean[j]) ** 2;
      return Math.sqrt(squared);
    };
    expect(norm(0)).toBeGreaterThan(eps);
    const result = enforceBudget('L2', clean, candidate, rowSize, eps);
    const measured = [norm(0), norm(1)];
    expect(measured[0]).toBeLessThanOrEqual(eps);
    expect(measured[0]).toBeGreaterThan(eps * (1 - 1e-4));
    expect(result[0]).toBe(measured[0]);
    expect(candidate[rowSize + 5]).toBe(1);
    expect(measured[1]).toBeLessThanOrEqual(eps);
  });
});
