import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { apgd } from '../../../src/engine/attacks/apgd.js';
import { autoAttack } from '../../../src/engine/attacks/autoattack.js';
import { type Classifier, functionClassifier } from '../../../src/engine/model/classifier.js';
import type { Norm } from '../../../src/engine/types.js';
import { smallCnn } from '../../../src/training/architectures.js';
import { Rng } from '../../../src/util/random.js';
import { epsInGap, linearProblem } from '../../helpers/linear-problems.js';
import { withoutTimings } from '../../helpers/reports.js';

/**
 * The savings of AutoAttack over the reference (a point leaves an attack run at its first success)
 * change no verdict: the report with them equals the report with `fullBudget` (every attack's whole
 * budget on every point it runs on), while the model sees fewer rows.
 */

/** `classifier` counting the rows it evaluates. */
function counting(classifier: Classifier): { classifier: Classifier; rows: () => number } {
  let rows = 0;
  return {
    classifier: functionClassifier({ ...classifier.card, numClasses: classifier.numClasses }, (x) => {
      rows += x.shape[0];
      return classifier.logits(x);
    }),
    rows: () => rows,
  };
}

/** An untrained smallCnn on 8x8x3 images: a convolutional model whose margins differ by point. */
function cnnProblem(n: number, seed: number) {
  const inputShape: [number, number, number] = [8, 8, 3];
  const network = smallCnn({ numClasses: 10, inputShape, width: 0.25 });
  // Seeded He-normal weights, so the test sees the same network on every run.
  tf.tidy(() =>
    network.setWeights(
      network.getWeights().map((w, i) => {
        const fanIn = w.shape.slice(0, -1).reduce((a, b) => a * b, 1);
        const weights = tf.randomNormal(w.shape, 0, Math.sqrt(2 / fanIn), 'float32', seed * 100 + i);
        return w.rank === 1 ? tf.zerosLike(weights) : weights;
      }),
    ),
  );
  const classifier = functionClassifier(
    { inputShape, numClasses: 10 },
    (x) => network.apply(x, { training: false }) as tf.Tensor2D,
  );
  const rng = new Rng(seed);
  const x = tf.tensor4d(
    Float32Array.from({ length: n * 8 * 8 * 3 }, () => rng.next()),
    [n, ...inputShape],
  );
  const predicted = tf.tidy(() => classifier.logits(x).argMax(1).dataSync() as Int32Array);
  // Every fifth label wrong: clean errors stay out of the attacks in both modes.
  const y = Int32Array.from(predicted, (p, i) => (i % 5 === 4 ? (p + 1) % 10 : p));
  return {
    classifier,
    x,
    y,
    dispose: () => {
      x.dispose();
      network.dispose();
    },
  };
}

/**
 * The median over points of the first-order distance to the nearest boundary (margin over the dual
 * norm of its gradient): an eps at which attacks break some points and not others.
 */
function medianLinearDistance(classifier: Classifier, x: tf.Tensor4D, norm: Norm): number {
  const distances = tf.tidy(() => {
    const top = tf.topk(classifier.logits(x), 2).indices;
    const selector = tf
      .oneHot(top.slice([0, 0], [-1, 1]).reshape([-1]), 10)
      .sub(tf.oneHot(top.slice([0, 1], [-1, 1]).reshape([-1]), 10));
    const margin = (p: tf.Tensor) =>
      classifier
        .logits(p as tf.Tensor4D)
        .mul(selector)
        .sum(1);
    const flat = tf
      .grad((p: tf.Tensor) => margin(p).sum())(x)
      .reshape([x.shape[0], -1]);
    const dual = norm === 'L2' ? flat.square().sum(1).sqrt() : flat.abs().sum(1);
    return Array.from(margin(x).div(dual.add(1e-12)).dataSync());
  });
  return distances.sort((a, b) => a - b)[Math.floor(distances.length / 2)];
}

describe('AutoAttack savings', () => {
  it.each(['L2', 'Linf'] as Norm[])(
    'APGD with stopOnSuccess returns the same adversarial points and successes, on fewer rows (%s)',
    async (norm) => {
      const problem = linearProblem({ n: 40, shape: [4, 4, 1], numClasses: 10, norm, seed: 4 });
      const eps = epsInGap(problem) * 1.3;
      const run = async (stopOnSuccess: boolean) => {
        const model = counting(problem.classifier);
        const result = await apgd(model.classifier, problem.x, problem.y, {
          norm,
          eps,
          loss: 'ce',
          iterations: 20,
          restarts: 2,
          seed: 1,
          sampleSeeds: Uint32Array.from({ length: 40 }, (_, i) => 1000 + i),
          stopOnSuccess,
        });
        const out = { adversarial: result.adversarial.arraySync(), success: Array.from(result.success) };
        tf.dispose([result.adversarial, result.best]);
        return { ...out, rows: model.rows() };
      };
      const before = tf.memory().numTensors;
      const full = await run(false);
      const saving = await run(true);
      expect(tf.memory().numTensors).toBe(before);
      const broken = full.success.filter((s) => s === 1).length;
      expect(broken).toBeGreaterThan(5);
      expect(broken).toBeLessThan(40);
      expect(saving.success).toEqual(full.success);
      expect(saving.adversarial).toEqual(full.adversarial);
      expect(saving.rows).toBeLessThan(full.rows);
      problem.dispose();
    },
  );

  it.each([
    ['linear', 'L2'],
    ['linear', 'Linf'],
    ['cnn', 'L2'],
    ['cnn', 'Linf'],
  ] as const)('leave the report of the standard version identical (%s model, %s)', async (kind, norm) => {
    const problem =
      kind === 'linear'
        ? linearProblem({ n: 30, shape: [4, 4, 1], numClasses: 10, norm, seed: 21, wrongShare: 0.1 })
        : cnnProblem(20, 7);
    const eps =
      kind === 'linear'
        ? epsInGap(problem as ReturnType<typeof linearProblem>) * 1.6
        : medianLinearDistance(problem.classifier, problem.x, norm);
    const options = { norm, eps, seed: 3, iterations: 6, queries: 40, batchSize: 7 };
    const run = async (fullBudget: boolean) => {
      const model = counting(problem.classifier);
      const report = await autoAttack(model.classifier, problem.x, problem.y, { ...options, fullBudget });
      return { report: withoutTimings(report), rows: model.rows() };
    };
    const before = tf.memory().numTensors;
    const full = await run(true);
    const saving = await run(false);
    expect(tf.memory().numTensors).toBe(before);
    const verdicts = full.report.samples.map((s) => s.broken_by);
    // A mix of verdicts, or the comparison proves little.
    expect(verdicts.filter((b) => b !== null && b !== 'clean').length).toBeGreaterThan(3);
    expect(verdicts.filter((b) => b === null).length).toBeGreaterThan(0);
    expect(saving.report).toEqual(full.report);
    expect(saving.rows).toBeLessThan(full.rows);
    problem.dispose();
  });
});
