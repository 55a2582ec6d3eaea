import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { autoAttack } from '../../../src/engine/attacks/autoattack.js';
import { vectorNorm } from '../../../src/engine/attacks/projections.js';
import type { Attack } from '../../../src/engine/attacks/types.js';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import type { Norm } from '../../../src/engine/types.js';
import { epsInGap, exactRobustAccuracy, linearProblem } from '../../helpers/linear-problems.js';
import { withoutTimings } from '../../helpers/reports.js';

/** The image shape of every test model here: 16 inputs keep the attacks fast. */
const shape: [number, number, number] = [4, 4, 1];

describe.each(['L2', 'Linf'] as Norm[])('autoAttack on a linear model (%s)', (norm) => {
  it('returns exactly the closed-form robust accuracy, with verified points and flat memory', async () => {
    const problem = linearProblem({ n: 200, shape, numClasses: 10, norm, seed: 11, wrongShare: 0.1 });
    const eps = epsInGap(problem);
    expect(eps).toBeLessThan(0.3);
    const exact = exactRobustAccuracy(problem, eps);
    expect(exact).toBeGreaterThan(0.2);
    expect(exact).toBeLessThan(0.8);
    const before = tf.memory().numTensors;
    const report = await autoAttack(problem.classifier, problem.x, problem.y, {
      norm,
      eps,
      seed: 0,
      batchSize: 128,
      keepAdversarial: true,
    });
    expect(report.robust_accuracy).toBe(exact);
    expect(report.clean_accuracy).toBe(problem.cleanCorrect.reduce((a, b) => a + b, 0) / 200);
    expect(report.per_attack.map((a) => a.name)).toEqual(['apgd-ce', 'apgd-t', 'fab-t', 'square']);
    const after = report.per_attack.map((a) => a.robust_accuracy_after);
    for (let i = 1; i < after.length; i++) expect(after[i]).toBeLessThanOrEqual(after[i - 1]);
    expect(after.at(-1)).toBe(report.robust_accuracy);

    // Re-check every returned point independently of the engine's verifier.
    const adversarial = report.adversarial!;
    const rows = adversarial.dataSync();
    const clean = problem.x.dataSync();
    const predicted = tf.tidy(() => problem.classifier.logits(adversarial).argMax(1).dataSync());
    for (const sample of report.samples) {
      const i = sample.index;
      const row = rows.subarray(i * 16, (i + 1) * 16);
      const delta = Array.from(row, (v, j) => v - clean[i * 16 + j]);
      if (sample.broken_by === null || sample.broken_by === 'clean') {
        expect(delta.every((v) => v === 0)).toBe(true);
        expect(sample.broken_by === 'clean').toBe(!problem.cleanCorrect[i]);
        continue;
      }
      expect(problem.distance[i]).toBeLessThan(eps);
      expect(predicted[i]).not.toBe(problem.y[i]);
      expect(vectorNorm(norm, delta)).toBeLessThanOrEqual(eps + 1e-5);
      expect(sample.perturbation_norm).toBeCloseTo(vectorNorm(norm, delta), 6);
      expect(row.every((v) => v >= 0 && v <= 1)).toBe(true);
    }
    adversarial.dispose();
    expect(tf.memory().numTensors).toBe(before);
    problem.dispose();
  });
});

/** An attack that records which points it was asked to attack and claims success where told. */
function recordingAttack(name: string, claim: (x: tf.Tensor4D) => tf.Tensor4D, claimAll = true) {
  const seen: number[] = [];
  const attack: Attack = {
    name,
    async perturb(_classifier, x) {
      seen.push(x.shape[0]);
      return { adversarial: claim(x), success: new Uint8Array(x.shape[0]).fill(claimAll ? 1 : 0) };
    },
  };
  return { attack, seen };
}

describe('autoAttack composition', () => {
  const x = () => tf.randomUniform([20, 4, 4, 1], 0.2, 0.8, 'float32', 1) as tf.Tensor4D;

  it('never breaks a constant model and warns about its zero gradients', async () => {
    const constant = functionClassifier({ inputShape: shape, numClasses: 10 }, (input) =>
      tf.tidy(
        () => tf.tile(tf.tensor2d([[0, 1, 3, 0, 0, 0, 0, 0, 0, 2]]), [input.shape[0], 1]) as tf.Tensor2D,
      ),
    );
    const inputs = x();
    const report = await autoAttack(constant, inputs, new Int32Array(20).fill(2), {
      norm: 'L2',
      eps: 2,
      iterations: 10,
      queries: 300,
      seed: 0,
    });
    expect(report.clean_accuracy).toBe(1);
    expect(report.robust_accuracy).toBe(1);
    expect(report.per_attack.every((a) => a.robust_accuracy_after === 1)).toBe(true);
    expect(report.warnings.some((w) => /gradient is exactly zero/.test(w))).toBe(true);
    inputs.dispose();
  });

  it('scores a model wrong on every point 0 without attacking it', async () => {
    const problem = linearProblem({ n: 20, shape, numClasses: 10, norm: 'L2', seed: 5, wrongShare: 1 });
    const spy = recordingAttack('spy', (input) => input.clone());
    const report = await autoAttack(problem.classifier, problem.x, problem.y, {
      norm: 'L2',
      eps: 0.5,
      attacks: [spy.attack],
    });
    expect(report.clean_accuracy).toBe(0);
    expect(report.robust_accuracy).toBe(0);
    expect(spy.seen).toEqual([]);
    expect(report.samples.every((s) => s.broken_by === 'clean')).toBe(true);
    problem.dispose();
  });

  it('counts only verified points and attacks each point only while it is robust', async () => {
    const problem = linearProblem({ n: 30, shape, numClasses: 10, norm: 'L2', seed: 8 });
    // Claims success without moving (fails re-evaluation), then moves too far (fails the budget).
    const liar = recordingAttack('liar', (input) => input.clone());
    const farAway = recordingAttack('far', (input) =>
      tf.tidy(() => input.add(0.5).clipByValue(0, 1) as tf.Tensor4D),
    );
    const honest = recordingAttack('honest', (input) => input.clone(), false);
    const report = await autoAttack(problem.classifier, problem.x, problem.y, {
      norm: 'L2',
      eps: 0.1,
      batchSize: 16,
      attacks: [liar.attack, farAway.attack, honest.attack],
    });
    expect(report.robust_accuracy).toBe(1);
    expect(liar.seen).toEqual([16, 14]);
    expect(report.warnings.some((w) => /liar: 30 claimed .* re-evaluation/.test(w))).toBe(true);
    expect(report.warnings.some((w) => /far: \d+ claimed .* exceeds eps/.test(w))).toBe(true);
    problem.dispose();
  });

  it('reproduces a report from its seed and honours the abort signal without leaking', async () => {
    const problem = linearProblem({ n: 40, shape, numClasses: 10, norm: 'Linf', seed: 2 });
    const eps = epsInGap(problem);
    const run = () =>
      autoAttack(problem.classifier, problem.x, problem.y, {
        norm: 'Linf',
        eps,
        seed: 4,
        iterations: 20,
        queries: 300,
      });
    const [a, b] = [await run(), await run()];
    expect(withoutTimings(a)).toEqual(withoutTimings(b));

    const before = tf.memory().numTensors;
    const controller = new AbortController();
    const progress: string[] = [];
    const aborted = autoAttack(problem.classifier, problem.x, problem.y, {
      norm: 'Linf',
      eps,
      iterations: 20,
      queries: 300,
      signal: controller.signal,
      onProgress: (p) => {
        progress.push(p.attack);
        if (progress.length === 5) controller.abort();
      },
    });
    await expect(aborted).rejects.toThrow(/abort/i);
    expect(progress[0]).toBe('apgd-ce');
    expect(tf.memory().numTensors).toBe(before);
    problem.dispose();
  });

  it("runs the 'rand' version (EOT) on a randomised model and still only counts verified points", async () => {
    const problem = linearProblem({ n: 12, shape, numClasses: 10, norm: 'L2', seed: 4 });
    let draw = 0;
    // Tiny input noise: predictions are stable, but two passes differ, as for a randomised defence.
    const noisy = functionClassifier({ inputShape: shape, numClasses: 10 }, (input) =>
      tf.tidy(() =>
        problem.classifier.logits(input.add(tf.randomNormal(input.shape, 0, 1e-4, 'float32', ++draw))),
      ),
    );
    const eps = epsInGap(problem);
    const report = await autoAttack(noisy, problem.x, problem.y, {
      norm: 'L2',
      eps,
      version: 'rand',
      iterations: 5,
    });
    expect(report.per_attack.map((a) => a.name)).toEqual(['apgd-ce', 'apgd-dlr']);
    expect(report.warnings.some((w) => /randomised/.test(w))).toBe(true);
    for (const sample of report.samples) {
      if (sample.broken_by === 'apgd-ce' || sample.broken_by === 'apgd-dlr') {
        expect(problem.distance[sample.index]).toBeLessThan(eps + 1e-3);
      }
    }
    problem.dispose();
  });

  it('skips DLR attacks for too few classes with a warning', async () => {
    const problem = linearProblem({ n: 10, shape, numClasses: 2, norm: 'L2', seed: 1 });
    const report = await autoAttack(problem.classifier, problem.x, problem.y, {
      norm: 'L2',
      eps: 0.05,
      version: 'plus',
      restarts: 1,
      iterations: 5,
      queries: 100,
    });
    expect(report.warnings.filter((w) => /skipped: it needs at least/.test(w)).length).toBe(2);
    expect(report.per_attack.map((a) => a.name)).toEqual([
      'apgd-ce',
      'apgd-dlr',
      'fab',
      'square',
      'apgd-t',
      'fab-t',
    ]);
    problem.dispose();
  });

  it('warns about probability outputs and randomised models; rejects bad input by name', async () => {
    const inputs = x();
    let calls = 0;
    const softmaxModel = functionClassifier({ inputShape: shape, numClasses: 3 }, (input) =>
      tf.tidy(
        () =>
          tf.softmax(input.reshape([input.shape[0], 16]).slice([0, 0], [-1, 3]).mul(++calls)) as tf.Tensor2D,
      ),
    );
    const report = await autoAttack(softmaxModel, inputs, new Int32Array(20), {
      norm: 'L2',
      eps: 0.01,
      attacks: [],
    });
    expect(report.warnings.some((w) => /probabilities/.test(w))).toBe(true);
    expect(report.warnings.some((w) => /randomised/.test(w))).toBe(true);
    await expect(autoAttack(softmaxModel, inputs, new Int32Array(3), { norm: 'L2', eps: 1 })).rejects.toThrow(
      /'y' must have 20 labels/,
    );
    await expect(
      autoAttack(softmaxModel, inputs, new Int32Array(20), { norm: 'L3' as Norm, eps: 1 }),
    ).rejects.toThrow(/'norm'/);
    inputs.dispose();
  });
});
