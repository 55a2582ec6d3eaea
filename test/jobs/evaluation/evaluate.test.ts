import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import {
  DEFAULT_EVAL_SETTINGS,
  type EvalSettings,
  evaluateModel,
  type ImageSet,
} from '../../../src/jobs/evaluation/evaluate.js';
import { Rng } from '../../../src/util/random.js';

const H = 6;
const W = 6;
const C = 3;
const DIM = H * W * C;
const K = 4;

function linearModel(rng: Rng) {
  const weights = Float32Array.from({ length: DIM * K }, () => rng.normal() * 0.5);
  return functionClassifier({ inputShape: [H, W, C], numClasses: K }, (x) =>
    tf.tidy(() => x.reshape([x.shape[0], DIM]).matMul(tf.tensor2d(weights, [DIM, K])) as tf.Tensor2D),
  );
}

function randomSet(rng: Rng, name: string, n: number, labels?: (i: number) => number): ImageSet {
  return {
    name,
    source: `memory:${name}`,
    images: Float32Array.from({ length: n * DIM }, () => rng.next()),
    shape: [n, H, W, C],
    labels: labels ? Int32Array.from({ length: n }, (_, i) => labels(i)) : undefined,
  };
}

const quickSettings: EvalSettings = {
  ...DEFAULT_EVAL_SETTINGS,
  n: 30,
  calibrationN: 20,
  oodN: 12,
  robustN: 30,
  batchSize: 16,
  quick: true,
  iterations: { autoAttack: 5, worstCase: 5, counterfactuals: 5, curves: 3 },
  counterfactualRows: 3,
  counterfactualRadii: [0.5, 1, 2],
  curveN: 6,
  curveRadii: [0, 0.5, 1],
};

const silent = { start: () => {}, update: () => {}, done: () => 0 };

describe('evaluateModel', () => {
  it('produces the table, per-OOD rows, grid and curves consistent with the definitions', async () => {
    const rng = new Rng(17);
    const model = linearModel(rng);
    const inSet = randomSet(rng, 'in', 40);
    // Labels: the model's prediction for 2 of 3 points, so accuracy is about 2/3 and known exactly.
    const predictions = tf.tidy(() =>
      model.logits(tf.tensor4d(inSet.images, inSet.shape)).argMax(1).dataSync(),
    ) as Int32Array;
    inSet.labels = Int32Array.from(predictions, (p, i) => (i % 3 === 2 ? (p + 1) % K : p));
    const ood = [randomSet(rng, 'noise-a', 20), randomSet(rng, 'noise-b', 12)];
    const before = tf.memory().numTensors;
    const phases: string[] = [];
    const { report, markdown, counterfactualsPng, curvesSvg } = await evaluateModel(
      model,
      { model: { name: 'linear', source: 'memory' }, inDistribution: inSet, ood },
      quickSettings,
      { ...silent, start: (phase) => phases.push(phase) },
    );
    expect(tf.memory().numTensors).toBe(before);

    // 40 points: the last 20 hold out the temperature, so only 20 of the 30 requested are reported.
    expect(report.data.reported_n).toBe(20);
    expect(report.data.calibration_n).toBe(20);
    expect(report.warnings.some((w) => w.includes('only 20 of the requested 30'))).toBe(true);
    const expectedAccuracy =
      Array.from({ length: 20 }, (_, i): number => (i % 3 === 2 ? 0 : 1)).reduce((a, b) => a + b) / 20;
    expect(report.summary.acc).toBeCloseTo(expectedAccuracy, 12);
    expect(report.robustness.clean_accuracy).toBeCloseTo(expectedAccuracy, 12);
    expect(report.summary.robust_acc).toBeLessThanOrEqual(report.summary.acc);
    expect(report.summary.temperature).toBeGreaterThanOrEqual(Math.exp(-3) - 1e-9);
    expect(report.summary.temperature).toBeLessThanOrEqual(Math.exp(1) + 1e-9);

    expect(report.ood.sets.map((s) => [s.name, s.n])).toEqual([
      ['noise-a', 12],
      ['noise-b', 12],
    ]);
    for (const row of report.ood.sets) {
      // Worst-case confidences are pointwise >= clean ones: AUC can only drop, MMC only rise.
      expect(row.wc_auc).toBeLessThanOrEqual(row.auc);
      expect(row.wc_mmc).toBeGreaterThanOrEqual(row.mmc);
    }
    expect(report.summary.auc).toBeCloseTo((report.ood.sets[0].auc + report.ood.sets[1].auc) / 2, 12);
    expect(report.summary.mmc).toBeCloseTo((report.ood.sets[0].mmc + report.ood.sets[1].mmc) / 2, 12);

    expect(report.counterfactuals.rows).toHaveLength(3);
    for (const row of report.counterfactuals.rows) {
      expect(row.p_target).toHaveLength(4);
      for (let r = 1; r < 4; r++) expect(row.p_target[r]).toBeGreaterThanOrEqual(row.p_target[r - 1]);
      expect(row.target).not.toBe(row.original_class);
    }
    const meta = await sharp(counterfactualsPng).metadata();
    expect(meta.format).toBe('png');
    expect(meta.width).toBe(6 + 4 * 90);

    expect(report.curves?.radii).toEqual([0, 0.5, 1]);
    expect(report.curves?.ood_set).toBe('noise-a');
    expect(curvesSvg.match(/<polyline class="series"/g)).toHaveLength(2);
    expect(markdown).toContain('| Acc | R.Acc (L2 0.5) | ECE | AUC | WC AUC (L2 1) | MMC |');
    expect(markdown).toContain(`| ${(100 * expectedAccuracy).toFixed(1)} |`);
    expect(phases[0]).toBe('clean predictions');
    expect(phases).toContain('worst-case OOD noise-b eps=1');
    expect(JSON.parse(JSON.stringify(report)).summary.acc).toBe(report.summary.acc);
  });

  it('fits the temperature on the separate calibration set when one is given', async () => {
    const rng = new Rng(3);
    const model = linearModel(rng);
    const inSet = randomSet(rng, 'in', 10, (i) => i % K);
    const calibration = randomSet(rng, 'cal', 10, (i) => (i + 1) % K);
    const { report } = await evaluateModel(
      model,
      { model: { name: 'm', source: 'memory' }, inDistribution: inSet, calibration, ood: [] },
      { ...quickSettings, counterfactualRows: 1 },
      silent,
    );
    expect(report.data.reported_n).toBe(10);
    expect(report.data.calibration_source).toBe('memory:cal');
    expect(report.summary.auc).toBeNull();
    expect(report.curves).toBeNull();
  });

  it('rejects an unlabelled in-distribution set', async () => {
    const rng = new Rng(1);
    await expect(
      evaluateModel(
        linearModel(rng),
        { model: { name: 'm', source: 'x' }, inDistribution: randomSet(rng, 'svhn', 4), ood: [] },
        quickSettings,
        silent,
      ),
    ).rejects.toThrow("'--data' set 'svhn' has no labels");
  });
});
