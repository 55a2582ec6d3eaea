import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { vectorNorm } from '../../../src/engine/attacks/projections.js';
import { square, squareAttack, squareSchedule, squareWindow } from '../../../src/engine/attacks/square.js';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import type { Norm } from '../../../src/engine/types.js';
import { linearProblem } from '../../helpers/linear-problems.js';

function rowNorms(norm: Norm, a: tf.Tensor4D, b: tf.Tensor4D): number[] {
  const av = a.dataSync();
  const bv = b.dataSync();
  const rowSize = a.size / a.shape[0];
  return Array.from({ length: a.shape[0] }, (_, i) =>
    vectorNorm(
      norm,
      Array.from({ length: rowSize }, (_, j) => av[i * rowSize + j] - bv[i * rowSize + j]),
    ),
  );
}

describe('squareSchedule', () => {
  it('halves p after 10, 50, 200, ... 8000 of 10000 queries, stretched to the budget', () => {
    expect(squareSchedule(0, 10000, 0.8)).toBe(0.8);
    expect(squareSchedule(10, 10000, 0.8)).toBe(0.8);
    expect(squareSchedule(11, 10000, 0.8)).toBe(0.4);
    expect(squareSchedule(50, 10000, 0.8)).toBe(0.4);
    expect(squareSchedule(51, 10000, 0.8)).toBe(0.2);
    expect(squareSchedule(4500, 10000, 0.8)).toBeCloseTo(0.8 / 128, 15);
    expect(squareSchedule(9999, 10000, 0.8)).toBeCloseTo(0.8 / 512, 15);
    // 5000 queries: query 6 sits at 12 of 10000, query 5 at 10.
    expect(squareSchedule(5, 5000, 0.8)).toBe(0.8);
    expect(squareSchedule(6, 5000, 0.8)).toBe(0.4);
    expect(squareSchedule(6, 5000, 0.8, false)).toBe(0.8);
  });
});

describe('squareWindow', () => {
  it('is the reference eta: nested rings weighted 1/(ring+1)^2, top half positive, unit norm', () => {
    // s = 3: top rectangle 1x3 = [1/4, 1 + 1/4, 1/4]; bottom 2x3 = [[1/4, 1/4, 1/4], [1/4, 5/4, 1/4]].
    const top = [0.25, 1.25, 0.25];
    const bottom = [0.25, 0.25, 0.25, 0.25, 1.25, 0.25];
    const topNorm = Math.hypot(...top);
    const bottomNorm = Math.hypot(...bottom);
    const raw = [...top.map((v) => v / topNorm), ...bottom.map((v) => -v / bottomNorm)];
    const expected = raw.map((v) => v / Math.hypot(...raw));
    const window = squareWindow(3);
    for (let i = 0; i < 9; i++) expect(window[i]).toBeCloseTo(expected[i], 12);
    const transposed = squareWindow(3, true);
    for (let r = 0; r < 3; r++)
      for (let c = 0; c < 3; c++) expect(transposed[c * 3 + r]).toBe(window[r * 3 + c]);
    for (const s of [1, 4, 5, 9]) {
      const w = squareWindow(s);
      expect(Math.hypot(...w)).toBeCloseTo(1, 12);
      expect(w.every(Number.isFinite)).toBe(true);
    }
  });
});

for (const norm of ['L2', 'Linf'] as const) {
  describe(`square (${norm}) on a linear model`, () => {
    const problem = linearProblem({
      n: 30,
      shape: [4, 4, 1],
      numClasses: 4,
      norm,
      seed: 21,
      wrongShare: 0.1,
    });
    afterAll(() => problem.dispose());
    const correct = Array.from(problem.distance).filter((_, i) => problem.cleanCorrect[i]);
    const eps = correct.sort((a, b) => a - b)[Math.floor(correct.length / 2)];
    // Square reaches the Linf vertices easily; in L2 its block-shaped steps align slowly with the
    // white-noise weights of this model, so only clearly easy points are required to break.
    const easyShare = norm === 'Linf' ? 0.75 : 0.25;

    it('breaks the points with small margins, never leaves the ball or the box, never lies', async () => {
      const progress: number[] = [];
      const before = tf.memory().numTensors;
      const result = await squareAttack(problem.classifier, problem.x, problem.y, {
        norm,
        eps,
        queries: 300,
        seed: 4,
        onProgress: (p) => progress.push(p.done),
      });
      // Progress only climbs and ends at the full budget even when every point broke early.
      expect(progress.every((done, i) => i === 0 || done > progress[i - 1])).toBe(true);
      expect(progress.at(-1)).toBe(300);
      const measured = rowNorms(norm, result.adversarial, problem.x);
      const predicted = tf.tidy(() => problem.classifier.logits(result.adversarial).argMax(1).dataSync());
      const values = result.adversarial.dataSync();
      result.adversarial.dispose();
      expect(tf.memory().numTensors).toBe(before);
      expect(values.every((v) => v >= 0 && v <= 1)).toBe(true);
      let easy = 0;
      for (let i = 0; i < problem.y.length; i++) {
        expect(measured[i]).toBeLessThanOrEqual(eps * (1 + 1e-5));
        expect(result.success[i]).toBe(predicted[i] !== problem.y[i] ? 1 : 0);
        if (!problem.cleanCorrect[i]) {
          expect(result.success[i]).toBe(1);
          expect(measured[i]).toBe(0);
          expect(result.queries[i]).toBe(0);
        } else if (problem.distance[i] > eps) {
          expect(result.success[i]).toBe(0);
        } else if (problem.distance[i] < easyShare * eps) {
          easy++;
          expect(result.success[i]).toBe(1);
        }
        expect(result.queries[i]).toBeLessThanOrEqual(301);
      }
      expect(easy).toBeGreaterThan(0);
    });

    it('reproduces a run from its seed and differs with another seed', async () => {
      const attack = square({ queries: 40 });
      const options = { norm, eps: eps / 2, seed: 7 };
      const first = await attack.perturb(problem.classifier, problem.x, problem.y, options);
      const second = await attack.perturb(problem.classifier, problem.x, problem.y, options);
      const other = await attack.perturb(problem.classifier, problem.x, problem.y, { ...options, seed: 8 });
      expect(Array.from(second.adversarial.dataSync())).toEqual(Array.from(first.adversarial.dataSync()));
      expect(Array.from(second.success)).toEqual(Array.from(first.success));
      expect(Array.from(other.adversarial.dataSync())).not.toEqual(Array.from(first.adversarial.dataSync()));
      tf.dispose([first.adversarial, second.adversarial, other.adversarial]);
    });
  });
}

describe('square on colour images and odd models', () => {
  it('spends the whole L2 budget on 8x8x3 images (each query rescales to norm eps)', async () => {
    // Margins far above what eps can change: nothing breaks, every kept point has norm 0 or eps.
    const weights = tf.randomNormal([192, 3], 0, 0.1, 'float32', 3);
    const classifier = functionClassifier({ inputShape: [8, 8, 3], numClasses: 3 }, (x) =>
      tf.tidy(
        () =>
          x
            .reshape([x.shape[0], 192])
            .matMul(weights)
            .add(tf.tensor1d([100, 0, 0])) as tf.Tensor2D,
      ),
    );
    const x = tf.randomUniform([4, 8, 8, 3], 0.3, 0.7, 'float32', 5) as tf.Tensor4D;
    const y = new Int32Array(4);
    const before = tf.memory().numTensors;
    const result = await squareAttack(classifier, x, y, {
      norm: 'L2',
      eps: 0.5,
      queries: 30,
      restarts: 2,
      seed: 1,
    });
    const measured = rowNorms('L2', result.adversarial, x);
    result.adversarial.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(Array.from(result.success)).toEqual([0, 0, 0, 0]);
    expect(Array.from(result.queries)).toEqual([62, 62, 62, 62]);
    expect(measured.some((v) => v > 0)).toBe(true);
    for (const v of measured) expect(v === 0 || Math.abs(v - 0.5) < 1e-4).toBe(true);
    tf.dispose([weights, x]);
  });

  it('stops querying once every point is broken and still reports the full budget', async () => {
    const problem = linearProblem({ n: 8, shape: [4, 4, 1], numClasses: 4, norm: 'Linf', seed: 2 });
    const progress: number[] = [];
    const eps = 2 * Math.max(...problem.distance);
    const result = await squareAttack(problem.classifier, problem.x, problem.y, {
      norm: 'Linf',
      eps,
      queries: 500,
      onProgress: (p) => progress.push(p.done),
    });
    expect(Array.from(result.success)).toEqual(new Array(8).fill(1));
    expect(Math.max(...result.queries)).toBeLessThan(500);
    expect(progress.at(-1)).toBe(500);
    expect(progress.length).toBeLessThan(500);
    result.adversarial.dispose();
    problem.dispose();
  });

  it('never breaks a model that ignores its input', async () => {
    const constant = functionClassifier({ inputShape: [4, 4, 1], numClasses: 3 }, (x) =>
      tf.tidy(() => tf.tile(tf.tensor2d([[0, 1, 0.5]]), [x.shape[0], 1]) as tf.Tensor2D),
    );
    const x = tf.fill([2, 4, 4, 1], 0.5) as tf.Tensor4D;
    for (const norm of ['L2', 'Linf'] as const) {
      const { adversarial, success } = await square({ queries: 50 }).perturb(
        constant,
        x,
        Int32Array.from([1, 1]),
        {
          norm,
          eps: 1,
        },
      );
      expect(Array.from(success)).toEqual([0, 0]);
      adversarial.dispose();
    }
    x.dispose();
  });

  it('reports progress and stops with an AbortError when the signal fires, leaving no tensors', async () => {
    const problem = linearProblem({ n: 6, shape: [4, 4, 1], numClasses: 4, norm: 'L2', seed: 2 });
    const controller = new AbortController();
    const seen: number[] = [];
    const before = tf.memory().numTensors;
    const run = squareAttack(problem.classifier, problem.x, problem.y, {
      norm: 'L2',
      eps: 1e-4,
      queries: 1000,
      signal: controller.signal,
      onProgress: (p) => {
        seen.push(p.done);
        expect(p).toMatchObject({ attack: 'square', total: 1000 });
        if (p.done === 5) controller.abort();
      },
    });
    await expect(run).rejects.toMatchObject({ name: 'AbortError' });
    expect(seen).toEqual([1, 2, 3, 4, 5]);
    expect(tf.memory().numTensors).toBe(before);
    problem.dispose();
  });

  it('rejects bad arguments by name', async () => {
    const problem = linearProblem({ n: 2, shape: [4, 4, 1], numClasses: 4, norm: 'L2', seed: 2 });
    const opts = { norm: 'L2' as const, eps: 0.5 };
    await expect(squareAttack(problem.classifier, problem.x, Int32Array.from([0]), opts)).rejects.toThrow(
      `'y' must have 2 labels, got 1`,
    );
    await expect(
      squareAttack(problem.classifier, problem.x, problem.y, { ...opts, queries: 0 }),
    ).rejects.toThrow(`'queries' must be an integer >= 1, got 0`);
    await expect(
      squareAttack(problem.classifier, problem.x, problem.y, { ...opts, pInit: 2 }),
    ).rejects.toThrow(`'pInit' must lie in (0, 1], got 2`);
    await expect(
      squareAttack(problem.classifier, problem.x, problem.y, { ...opts, eps: Number.NaN }),
    ).rejects.toThrow(`'eps' must be a finite number >= 0`);
    problem.dispose();
  });
});
