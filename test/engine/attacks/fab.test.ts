import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { fab, fabTargeted, fabUntargeted } from '../../../src/engine/attacks/fab.js';
import { dualNorm, vectorNorm } from '../../../src/engine/attacks/projections.js';
import { type Classifier, functionClassifier } from '../../../src/engine/model/classifier.js';
import type { Norm } from '../../../src/engine/types.js';
import { Rng } from '../../../src/util/random.js';

/**
 * A linear model z = W^T x + b on 4x4x1 images, labels = its predictions. For each point the exact
 * minimal perturbation is known: (z_y - z_k) / ||w_y - w_k||_* for the nearest class k, and we keep
 * only points whose minimiser (ignoring the box) lies inside the box, so it is the true answer.
 */
const shape: [number, number, number] = [4, 4, 1];
const size = 16;
const numClasses = 5;

interface Problem {
  classifier: Classifier;
  x: tf.Tensor4D;
  y: Int32Array;
  distance: Float64Array;
  dispose(): void;
}

function linearProblem(norm: Norm, seed: number, count: number): Problem {
  const rng = new Rng(seed);
  const w = Float64Array.from(rng.normals(size * numClasses));
  const bias = Float64Array.from(rng.normals(numClasses), (v) => 0.2 * v);
  const rows: number[] = [];
  const labels: number[] = [];
  const distances: number[] = [];
  while (labels.length < count) {
    const point = Array.from({ length: size }, () => 0.25 + 0.5 * rng.next());
    const z = Array.from({ length: numClasses }, (_, c) =>
      point.reduce((s, v, j) => s + v * w[j * numClasses + c], bias[c]),
    );
    const y = z.indexOf(Math.max(...z));
    let nearest = { distance: Number.POSITIVE_INFINITY, direction: [] as number[] };
    for (let c = 0; c < numClasses; c++) {
      if (c === y) continue;
      const normal = Array.from({ length: size }, (_, j) => w[j * numClasses + c] - w[j * numClasses + y]);
      const distance = (z[y] - z[c]) / dualNorm(norm, normal);
      if (distance < nearest.distance) {
        const length = dualNorm('L2', normal);
        const direction =
          norm === 'L2'
            ? normal.map((v) => (distance * v) / length)
            : normal.map((v) => distance * Math.sign(v));
        nearest = { distance, direction };
      }
    }
    if (point.some((v, j) => v + nearest.direction[j] < 0.01 || v + nearest.direction[j] > 0.99)) continue;
    rows.push(...point);
    labels.push(y);
    distances.push(nearest.distance);
  }
  const weights = tf.tensor2d(Float32Array.from(w), [size, numClasses]);
  const b = tf.tensor1d(Float32Array.from(bias));
  const classifier = functionClassifier({ inputShape: shape, numClasses }, (x) =>
    tf.tidy(() => x.reshape([x.shape[0], size]).matMul(weights).add(b) as tf.Tensor2D),
  );
  return {
    classifier,
    x: tf.tensor4d(rows, [count, ...shape]),
    y: Int32Array.from(labels),
    distance: Float64Array.from(distances),
    dispose: () => tf.dispose([weights, b]),
  };
}

/**
 * An eps just below a distance that follows a wide relative gap: every point within eps is at least
 * 2.5% inside it (FAB lands within 2% of its distance), every other point lies beyond eps.
 */
function epsInGap(distance: Float64Array): number {
  const sorted = Array.from(distance).sort((a, b) => a - b);
  let best = { ratio: 0, eps: 0 };
  for (let i = Math.floor(sorted.length / 4); i < Math.floor((3 * sorted.length) / 4); i++) {
    const ratio = sorted[i + 1] / sorted[i];
    if (ratio > best.ratio) best = { ratio, eps: sorted[i + 1] / 1.001 };
  }
  return best.eps;
}

function rowNorms(norm: Norm, a: tf.Tensor4D, b: tf.Tensor4D): number[] {
  const av = a.dataSync();
  const bv = b.dataSync();
  return Array.from({ length: a.shape[0] }, (_, i) =>
    vectorNorm(
      norm,
      Array.from({ length: size }, (_, j) => av[i * size + j] - bv[i * size + j]),
    ),
  );
}

const l2 = linearProblem('L2', 5, 24);
const linf = linearProblem('Linf', 6, 24);
afterAll(() => {
  for (const p of [l2, linf]) {
    p.x.dispose();
    p.dispose();
  }
});

describe('fab (minimum norm on a linear model)', () => {
  for (const [norm, problem] of [
    ['L2', l2],
    ['Linf', linf],
  ] as const) {
    it(`FAB-T over all targets finds the exact minimal ${norm} distance within 2%`, async () => {
      const before = tf.memory().numTensors;
      const result = await fab(problem.classifier, problem.x, problem.y, {
        norm,
        eps: 1,
        targetClasses: numClasses - 1,
        stopBelow: 0,
        seed: 1,
      });
      const measured = rowNorms(norm, result.adversarial, problem.x);
      const predicted = tf.tidy(() => problem.classifier.logits(result.adversarial).argMax(1).dataSync());
      result.adversarial.dispose();
      expect(tf.memory().numTensors).toBe(before);
      for (let i = 0; i < problem.y.length; i++) {
        expect(predicted[i]).not.toBe(problem.y[i]);
        expect(measured[i]).toBeCloseTo(result.norms[i], 5);
        expect(result.norms[i]).toBeGreaterThanOrEqual(problem.distance[i] * (1 - 1e-4));
        expect(result.norms[i]).toBeLessThanOrEqual(problem.distance[i] * 1.02);
      }
    });

    it(`untargeted FAB also finds the minimal ${norm} distance within 2%`, async () => {
      const result = await fab(problem.classifier, problem.x, problem.y, {
        norm,
        eps: 1,
        targeted: false,
        stopBelow: 0,
        iterations: 50,
      });
      result.adversarial.dispose();
      for (let i = 0; i < problem.y.length; i++) {
        expect(result.norms[i]).toBeGreaterThanOrEqual(problem.distance[i] * (1 - 1e-4));
        expect(result.norms[i]).toBeLessThanOrEqual(problem.distance[i] * 1.02);
      }
    });

    it(`FAB-T perturb breaks exactly the points within eps (${norm})`, async () => {
      const eps = epsInGap(problem.distance);
      const nearEps = Array.from(problem.distance).filter((d) => d > eps / 1.025 && d <= eps);
      expect(nearEps).toEqual([]);
      const before = tf.memory().numTensors;
      const { adversarial, success } = await fabTargeted({ nTargets: numClasses - 1 }).perturb(
        problem.classifier,
        problem.x,
        problem.y,
        { norm, eps, seed: 2 },
      );
      const measured = rowNorms(norm, adversarial, problem.x);
      const predicted = tf.tidy(() => problem.classifier.logits(adversarial).argMax(1).dataSync());
      const values = adversarial.dataSync();
      adversarial.dispose();
      expect(tf.memory().numTensors).toBe(before);
      for (let i = 0; i < problem.y.length; i++) {
        expect(success[i]).toBe(problem.distance[i] <= eps ? 1 : 0);
        if (success[i]) {
          expect(predicted[i]).not.toBe(problem.y[i]);
          expect(measured[i]).toBeLessThanOrEqual(eps + 1e-5);
        } else {
          expect(measured[i]).toBe(0);
        }
      }
      expect(values.every((v) => v >= 0 && v <= 1)).toBe(true);
      expect(success.some((s) => s === 1)).toBe(true);
      expect(success.some((s) => s === 0)).toBe(true);
    });
  }
});

describe('fab (the box is part of the problem)', () => {
  // z_1 - z_0 = x_0 + x_1 - 1.75 on a 1x2 image, from (0.95, 0.5): the free minimiser (0.15, 0.15)
  // would leave the box, the box-constrained one is (0.05, 0.25).
  const classifier = functionClassifier({ inputShape: [1, 2, 1], numClasses: 2 }, (x) =>
    tf.tidy(() => {
      const z = x.reshape([x.shape[0], 2]).sum(1, true).sub(1.75);
      return tf.concat([tf.zerosLike(z), z], 1) as tf.Tensor2D;
    }),
  );
  for (const [norm, exact] of [
    ['L2', Math.hypot(0.05, 0.25)],
    ['Linf', 0.25],
  ] as const) {
    it(`finds the box-constrained minimum in ${norm}, not the free one`, async () => {
      const x = tf.tensor4d([0.95, 0.5], [1, 1, 2, 1]);
      const result = await fab(classifier, x, Int32Array.from([0]), { norm, eps: 1, stopBelow: 0 });
      const values = result.adversarial.dataSync();
      tf.dispose([x, result.adversarial]);
      expect(result.norms[0]).toBeGreaterThanOrEqual(exact * (1 - 1e-5));
      expect(result.norms[0]).toBeLessThanOrEqual(exact * 1.02);
      expect(values[0]).toBeLessThanOrEqual(1);
      expect(values[0]).toBeGreaterThan(0.99);
    });
  }
});

describe('fab attacks', () => {
  it('never breaks a model that ignores its input, and counts clean errors as broken at norm 0', async () => {
    const constant = functionClassifier({ inputShape: shape, numClasses: 3 }, (x) =>
      tf.tidy(() => tf.tile(tf.tensor2d([[2, 1, 0]]), [x.shape[0], 1]).add(x.sum().mul(0)) as tf.Tensor2D),
    );
    const x = tf.fill([3, ...shape], 0.5) as tf.Tensor4D;
    const y = Int32Array.from([0, 0, 1]);
    const before = tf.memory().numTensors;
    const result = await fab(constant, x, y, { norm: 'L2', eps: 10, iterations: 5, restarts: 2 });
    expect(Array.from(result.success)).toEqual([0, 0, 1]);
    expect(Array.from(result.norms)).toEqual([Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY, 0]);
    result.adversarial.dispose();
    for (const attack of [fabTargeted({ iterations: 5 }), fabUntargeted({ iterations: 5 })]) {
      const out = await attack.perturb(constant, x, y, { norm: 'Linf', eps: 1, restarts: 2 });
      expect(Array.from(out.success)).toEqual([0, 0, 1]);
      expect(Array.from(out.adversarial.dataSync()).every((v) => v === 0.5)).toBe(true);
      out.adversarial.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('reproduces a run bit for bit from its seed (random restarts included)', async () => {
    const options = { norm: 'L2' as const, eps: 0.05, restarts: 3, iterations: 10, seed: 9 };
    const first = await fabUntargeted().perturb(l2.classifier, l2.x, l2.y, options);
    const second = await fabUntargeted().perturb(l2.classifier, l2.x, l2.y, options);
    expect(Array.from(second.adversarial.dataSync())).toEqual(Array.from(first.adversarial.dataSync()));
    expect(Array.from(second.success)).toEqual(Array.from(first.success));
    tf.dispose([first.adversarial, second.adversarial]);
  });

  it('reports progress and stops with an AbortError when the signal fires, leaving no tensors', async () => {
    const controller = new AbortController();
    const events: number[] = [];
    const before = tf.memory().numTensors;
    const run = fab(l2.classifier, l2.x, l2.y, {
      norm: 'L2',
      eps: 1,
      stopBelow: 0,
      signal: controller.signal,
      onProgress: (p) => {
        events.push(p.done);
        expect(p.attack).toBe('fab-t');
        expect(p.total).toBe(4 * 100);
        if (p.done === 3) controller.abort();
      },
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    expect(events).toEqual([1, 2, 3]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('rejects bad arguments by name', async () => {
    const opts = { norm: 'L2' as const, eps: 0.5 };
    await expect(fab(l2.classifier, l2.x, l2.y.slice(1), opts)).rejects.toThrow(
      `'y' must have 24 labels, got 23`,
    );
    await expect(fab(l2.classifier, l2.x, l2.y, { ...opts, norm: 'L1' as Norm })).rejects.toThrow(`'norm'`);
    await expect(fab(l2.classifier, l2.x, l2.y, { ...opts, eps: -1 })).rejects.toThrow(`'eps' must be`);
    await expect(fab(l2.classifier, l2.x, l2.y, { ...opts, iterations: 0 })).rejects.toThrow(`'iterations'`);
  });
});
