import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { apgd, apgdAttack, apgdCheckpointIntervals, apgdTargeted } from '../../../src/engine/attacks/apgd.js';
import { perExampleNorm } from '../../../src/engine/attacks/projections.js';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import { classAtRank } from '../../../src/engine/model/logits.js';
import { epsInGap, linearProblem } from '../../helpers/linear-problems.js';

const problem = linearProblem({ n: 60, shape: [4, 4, 1], numClasses: 10, norm: 'L2', seed: 3 });
const eps = epsInGap(problem);
afterAll(() => problem.dispose());

function predictions(x: tf.Tensor4D): Int32Array {
  return tf.tidy(() => problem.classifier.logits(x).argMax(1).dataSync() as Int32Array);
}

describe('apgdCheckpointIntervals', () => {
  it('follows 0.22n, shrinking by 0.03n down to 0.06n', () => {
    expect(apgdCheckpointIntervals(100)).toEqual([22, 19, 16, 13, 10, 7, 6, 6]);
    expect(apgdCheckpointIntervals(10)).toEqual([2, 1, 1, 1, 1, 1, 1, 1, 1]);
  });
});

describe('apgd', () => {
  it('only breaks points closer than eps, stays in the ball and the box, leaves no tensors', async () => {
    expect(eps).toBeGreaterThan(0.02);
    expect(eps).toBeLessThan(0.3);
    const before = tf.memory().numTensors;
    const result = await apgd(problem.classifier, problem.x, problem.y, { norm: 'L2', eps, seed: 1 });
    const predicted = predictions(result.adversarial);
    const norms = tf.tidy(() => perExampleNorm('L2', result.adversarial.sub(problem.x)).dataSync());
    const values = result.adversarial.dataSync();
    let broken = 0;
    for (let i = 0; i < problem.y.length; i++) {
      expect(norms[i]).toBeLessThanOrEqual(eps + 1e-5);
      if (result.success[i]) {
        broken++;
        expect(problem.distance[i]).toBeLessThan(eps);
        expect(predicted[i]).not.toBe(problem.y[i]);
      }
    }
    expect(broken).toBeGreaterThan(0);
    expect(Math.min(...values)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...values)).toBeLessThanOrEqual(1);
    tf.dispose([result.best, result.adversarial]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('APGD-CE then APGD-T break exactly the points within eps of a boundary', async () => {
    const ce = await apgdAttack('ce').perturb(problem.classifier, problem.x, problem.y, {
      norm: 'L2',
      eps,
      seed: 0,
    });
    const targeted = await apgdTargeted({ iterations: 50 }).perturb(
      problem.classifier,
      problem.x,
      problem.y,
      {
        norm: 'L2',
        eps,
        seed: 0,
      },
    );
    for (let i = 0; i < problem.y.length; i++) {
      const broken = ce.success[i] === 1 || targeted.success[i] === 1;
      expect(broken, `point ${i} at distance ${problem.distance[i]}, eps ${eps}`).toBe(
        problem.distance[i] < eps,
      );
    }
    tf.dispose([ce.adversarial, targeted.adversarial]);
  });

  it('reproduces a run from its seed and differs for another seed', async () => {
    const run = (seed: number) =>
      apgd(problem.classifier, problem.x, problem.y, { norm: 'Linf', eps: 0.05, iterations: 10, seed });
    const [a, b, c] = [await run(5), await run(5), await run(6)];
    expect(Array.from(a.best.dataSync())).toEqual(Array.from(b.best.dataSync()));
    expect(Array.from(a.bestLoss)).toEqual(Array.from(b.bestLoss));
    expect(Array.from(a.best.dataSync())).not.toEqual(Array.from(c.best.dataSync()));
    tf.dispose([a.best, a.adversarial, b.best, b.adversarial, c.best, c.adversarial]);
  });

  it('reports the loss at the returned best point and never loses ground to the start', async () => {
    const result = await apgd(problem.classifier, problem.x, problem.y, {
      norm: 'Linf',
      eps: 0.03,
      iterations: 20,
      loss: 'dlr',
      seed: 2,
    });
    const recomputed = tf.tidy(() => {
      const z = problem.classifier.logits(result.best).arraySync();
      return z.map((row, i) => {
        const sorted = [...row].sort((p, q) => q - p);
        const other = Math.max(...row.filter((_, c) => c !== problem.y[i]));
        return -(row[problem.y[i]] - other) / (sorted[0] - sorted[2] + 1e-12);
      });
    });
    recomputed.forEach((value, i) => {
      expect(result.bestLoss[i]).toBeCloseTo(value, 4);
    });
    tf.dispose([result.best, result.adversarial]);
  });

  it('raises the confidence losses (counterfactuals, worst-case OOD) without a success flag', async () => {
    const targets = new Int32Array(problem.y.length).fill(7);
    const logConfidence = (x: tf.Tensor4D, t: number) =>
      tf.tidy(() => tf.logSoftmax(problem.classifier.logits(x)).slice([0, t], [-1, 1]).dataSync());
    const clean = logConfidence(problem.x, 7);
    const result = await apgd(problem.classifier, problem.x, undefined, {
      norm: 'L2',
      eps: 0.5,
      iterations: 30,
      loss: 'log-confidence-target',
      targets,
      seed: 0,
    });
    const after = logConfidence(result.best, 7);
    for (let i = 0; i < clean.length; i++) {
      expect(after[i]).toBeGreaterThan(clean[i]);
      expect(result.bestLoss[i]).toBeCloseTo(after[i], 4);
    }
    expect(result.success.every((s) => s === 0)).toBe(true);
    const worstCase = await apgd(problem.classifier, problem.x, undefined, {
      norm: 'L2',
      eps: 0.5,
      iterations: 30,
      loss: 'max-log-confidence',
      temperature: 2,
      seed: 0,
    });
    const cleanMax = tf.tidy(() =>
      tf.logSoftmax(problem.classifier.logits(problem.x).div(2)).max(1).dataSync(),
    );
    for (let i = 0; i < cleanMax.length; i++) expect(worstCase.bestLoss[i]).toBeGreaterThan(cleanMax[i]);
    tf.dispose([result.best, result.adversarial, worstCase.best, worstCase.adversarial]);
  });

  it('stops at the abort signal between iterations and leaves no tensors', async () => {
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    let seen = 0;
    const run = apgd(problem.classifier, problem.x, problem.y, {
      norm: 'L2',
      eps,
      seed: 0,
      onProgress: (p) => {
        seen = p.done;
        if (p.done === 3) controller.abort();
      },
      signal: controller.signal,
    });
    await expect(run).rejects.toThrow(/abort/i);
    expect(seen).toBe(3);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('rejects losses undefined for the number of classes and malformed input, by name', async () => {
    const binary = functionClassifier({ inputShape: [1, 1, 2], numClasses: 3 }, (x) =>
      tf.tidy(
        () =>
          x.reshape([x.shape[0], 2]).pad([
            [0, 0],
            [0, 1],
          ]) as tf.Tensor2D,
      ),
    );
    const x = tf.zeros([1, 1, 1, 2]) as tf.Tensor4D;
    const y = Int32Array.of(0);
    await expect(
      apgd(binary, x, y, { norm: 'L2', eps: 1, loss: 'dlr-targeted', targets: y }),
    ).rejects.toThrow(/at least 4 classes/);
    await expect(apgdTargeted().perturb(binary, x, y, { norm: 'L2', eps: 1 })).rejects.toThrow(/at least 4/);
    await expect(apgd(binary, x, Int32Array.of(0, 1), { norm: 'L2', eps: 1 })).rejects.toThrow(/'y'/);
    await expect(apgd(binary, x, y, { norm: 'L2', eps: -1 })).rejects.toThrow(/'eps'/);
    x.dispose();
  });

  it('ranks classes by clean logits for the targets', () => {
    const logits = Float32Array.of(0.1, 3, 2, -1, 5, 4, 4.5, 0);
    expect(Array.from(classAtRank(logits, 4, 2))).toEqual([2, 2]);
    expect(Array.from(classAtRank(logits, 4, 4))).toEqual([3, 3]);
  });
});
