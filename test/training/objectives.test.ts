import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/training/config.js';
import {
  crossEntropyPerExample,
  objectiveLoss,
  pgdL2BestIterate,
  uniformCrossEntropyPerExample,
} from '../../src/training/objectives.js';
import { Trainer } from '../../src/training/trainer.js';
import { Rng } from '../../src/util/random.js';
import { linearModel, tinyDataset } from '../helpers/training.js';

const logSumExp = (row: number[]) => Math.log(row.reduce((s, v) => s + Math.exp(v), 0));
const ce = (row: number[], label: number) => logSumExp(row) - row[label];
const ceUniform = (row: number[]) => logSumExp(row) - row.reduce((s, v) => s + v, 0) / row.length;

describe('objective losses', () => {
  const inRows = [
    [1, 2, 3],
    [0, 0, 0],
  ];
  const outRows = [
    [2, -1, 0.5],
    [0, 4, 0],
  ];
  const labels = [2, 0];

  it('CE and uniform CE per example match the hand computation', () => {
    const logits = tf.tensor2d(inRows);
    const y = tf.tensor1d(labels, 'int32');
    const ceValues = crossEntropyPerExample(logits, y).arraySync();
    const uValues = uniformCrossEntropyPerExample(logits).arraySync();
    expect(ceValues[0]).toBeCloseTo(ce(inRows[0], 2), 5);
    expect(ceValues[1]).toBeCloseTo(Math.log(3), 5);
    expect(uValues[0]).toBeCloseTo(ceUniform(inRows[0]), 5);
    // The uniform CE is minimal, log K, exactly at equal logits.
    expect(uValues[1]).toBeCloseTo(Math.log(3), 5);
    tf.dispose([logits, y]);
  });

  it.each(['plain', 'at'] as const)('%s: CE of the in-distribution rows only', (objective) => {
    const logits = tf.tensor2d(inRows);
    const y = tf.tensor1d(labels, 'int32');
    const terms = objectiveLoss(objective, logits, y, 1);
    expect(terms.total.dataSync()[0]).toBeCloseTo((ce(inRows[0], 2) + ce(inRows[1], 0)) / 2, 5);
    expect(terms.ceOut).toBeUndefined();
    tf.dispose([logits, y, terms.total, terms.ceIn]);
  });

  it.each(['oe', 'acet', 'ratio'] as const)('%s: 0.5 CE_in + 0.5 lambda CE_uniform(out)', (objective) => {
    const before = tf.memory().numTensors;
    const logits = tf.tensor2d([...inRows, ...outRows]);
    const y = tf.tensor1d(labels, 'int32');
    const lambda = 0.7;
    const terms = objectiveLoss(objective, logits, y, lambda);
    const ceIn = (ce(inRows[0], 2) + ce(inRows[1], 0)) / 2;
    const ceOut = (ceUniform(outRows[0]) + ceUniform(outRows[1])) / 2;
    expect(terms.ceIn.dataSync()[0]).toBeCloseTo(ceIn, 5);
    expect(terms.ceOut?.dataSync()[0]).toBeCloseTo(ceOut, 5);
    expect(terms.total.dataSync()[0]).toBeCloseTo(0.5 * ceIn + 0.5 * lambda * ceOut, 5);
    tf.dispose([logits, y, terms.total, terms.ceIn, terms.ceOut as tf.Scalar]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses logits of the wrong row count, naming them', () => {
    const logits = tf.tensor2d(inRows);
    const y = tf.tensor1d(labels, 'int32');
    expect(() => objectiveLoss('ratio', logits, y, 1)).toThrow(/'logits' must have 4 rows/);
    tf.dispose([logits, y]);
  });
});

describe('one training step of every objective on a linear model', () => {
  // Two features, three classes; images 1x1x2 with pixels /255.
  const kernel = [0.5, -1, 2, 1.5, 0.25, -0.5];
  const bias = [0.1, 0, -0.2];
  const inPixels = [255, 0, 51, 204];
  const outPixels = [102, 102, 0, 255];
  const labels = [1, 2];
  const logitsOf = (pixels: number[]) => {
    const rows: number[][] = [];
    for (let i = 0; i < pixels.length / 2; i++) {
      const [a, b] = [pixels[2 * i] / 255, pixels[2 * i + 1] / 255];
      rows.push([0, 1, 2].map((k) => a * kernel[k] + b * kernel[3 + k] + bias[k]));
    }
    return rows;
  };

  it.each(['plain', 'oe', 'at', 'acet', 'ratio'] as const)(
    '%s with eps 0: the step loss equals the hand computation',
    async (objective) => {
      const model = linearModel(2, 3, kernel, bias);
      const config = resolveConfig({
        objective,
        outData: 'x',
        batchSize: 2,
        epsIn: 0,
        epsOut: 0,
        lambda: 2,
        ema: 0,
        augment: false,
      });
      const train = tinyDataset(inPixels, 2, labels);
      const out = tinyDataset(outPixels, 2);
      const trainer = new Trainer(model, config, { train, out });
      const before = tf.memory().numTensors;
      const x = train.tensor();
      const xOut = out.tensor();
      const result = await trainer.step(x, Int32Array.from(labels), xOut, 0.1);
      tf.dispose([x, xOut]);
      // The optimizer allocates its momentum buffers on the first step (one per variable).
      expect(tf.memory().numTensors).toBe(before + 2);
      const inRows = logitsOf(inPixels);
      const ceIn = (ce(inRows[0], 1) + ce(inRows[1], 2)) / 2;
      const outRows = logitsOf(outPixels);
      const ceOut = (ceUniform(outRows[0]) + ceUniform(outRows[1])) / 2;
      const usesOut = objective === 'oe' || objective === 'acet' || objective === 'ratio';
      expect(result.ceIn).toBeCloseTo(ceIn, 5);
      expect(result.loss).toBeCloseTo(usesOut ? 0.5 * ceIn + 0.5 * 2 * ceOut : ceIn, 5);
      if (usesOut) expect(result.ceOut).toBeCloseTo(ceOut, 5);
      else expect(result.ceOut).toBeNull();
      trainer.dispose();
      model.dispose();
    },
  );

  it('ratio with eps > 0: adversarial terms are at least the clean ones', async () => {
    const run = async (eps: number) => {
      const model = linearModel(2, 3, kernel, bias);
      const config = resolveConfig({
        objective: 'ratio',
        outData: 'x',
        batchSize: 2,
        epsIn: eps,
        epsOut: eps,
        stepsIn: 10,
        stepsOut: 10,
        stepSizeIn: eps / 4,
        stepSizeOut: eps / 4,
        ema: 0,
        augment: false,
      });
      const train = tinyDataset(inPixels, 2, labels);
      const out = tinyDataset(outPixels, 2);
      const trainer = new Trainer(model, config, { train, out });
      const x = train.tensor();
      const xOut = out.tensor();
      const result = await trainer.step(x, Int32Array.from(labels), xOut, 0.1);
      tf.dispose([x, xOut]);
      trainer.dispose();
      model.dispose();
      return result;
    };
    const clean = await run(0);
    const adversarial = await run(0.3);
    expect(adversarial.ceIn).toBeGreaterThan(clean.ceIn + 1e-3);
    expect(adversarial.ceOut as number).toBeGreaterThan((clean.ceOut as number) + 1e-3);
  });
});

describe('pgdL2BestIterate', () => {
  it('stays in the eps-ball and the box, reaches the linear optimum, frees its tensors', () => {
    // Loss w.x per example: the maximiser over the L2 ball (inside the box) is x0 + eps w/||w||.
    const w = tf.tensor4d([3, 4], [1, 1, 1, 2]);
    const x0 = tf.tensor4d([0.5, 0.5, 0.4, 0.3], [2, 1, 1, 2]);
    const before = tf.memory().numTensors;
    const best = pgdL2BestIterate((x) => tf.tidy(() => x.mul(w).sum([1, 2, 3]) as tf.Tensor1D), x0, {
      eps: 0.2,
      steps: 30,
      stepSize: 0.05,
      rng: new Rng(1),
    });
    expect(tf.memory().numTensors).toBe(before + 1);
    const values = best.arraySync() as number[][][][];
    const start = x0.arraySync() as number[][][][];
    for (let i = 0; i < 2; i++) {
      const [a, b] = values[i][0][0];
      const [a0, b0] = start[i][0][0];
      expect(Math.hypot(a - a0, b - b0)).toBeLessThanOrEqual(0.2 + 1e-5);
      expect(a).toBeCloseTo(a0 + 0.2 * 0.6, 2);
      expect(b).toBeCloseTo(b0 + 0.2 * 0.8, 2);
    }
    tf.dispose([w, x0, best]);
  });
});

describe('inner attacks', () => {
  it('apgd and pgd both raise the in-distribution CE within the L2 ball and free their tensors', async () => {
    const { attackInDistribution, attackOutDistribution } = await import('../../src/training/objectives.js');
    const model = linearModel(2, 3, [0.5, -1, 2, 1.5, 0.25, -0.5], [0.1, 0, -0.2]);
    const logits = (x: tf.Tensor4D) => model.apply(x, { training: false }) as tf.Tensor2D;
    const x = tf.tensor4d([0.5, 0.5, 0.2, 0.8, 0.7, 0.3], [3, 1, 1, 2]);
    const y = tf.tensor1d([0, 1, 2], 'int32');
    const cleanCe = crossEntropyPerExample(logits(x), y).arraySync();
    const cleanUniform = uniformCrossEntropyPerExample(logits(x)).arraySync();
    for (const attack of ['pgd', 'apgd'] as const) {
      const before = tf.memory().numTensors;
      const settings = { attack, eps: 0.2, steps: 10, stepSize: 0.05, rng: new Rng(2) };
      const adversarial = await attackInDistribution(logits, x, y, 3, settings);
      const confident = await attackOutDistribution(logits, x, 3, settings);
      expect(tf.memory().numTensors).toBe(before + 2);
      const distances = tf.tidy(
        () => adversarial.sub(x).reshape([3, 2]).norm('euclidean', 1).arraySync() as number[],
      );
      for (const d of distances) expect(d).toBeLessThanOrEqual(0.2 + 1e-5);
      const ce = tf.tidy(() => crossEntropyPerExample(logits(adversarial), y).arraySync());
      const uniform = tf.tidy(() => uniformCrossEntropyPerExample(logits(confident)).arraySync());
      for (let i = 0; i < 3; i++) {
        expect(ce[i]).toBeGreaterThan(cleanCe[i]);
        expect(uniform[i]).toBeGreaterThan(cleanUniform[i]);
      }
      tf.dispose([adversarial, confident]);
    }
    tf.dispose([x, y]);
    model.dispose();
  });
});

describe('a step on a BatchNorm network (resnet18, tiny)', () => {
  it('updates the moving statistics from the joint batch and leaks no tensors', async () => {
    const { resnet18 } = await import('../../src/training/architectures.js');
    const model = resnet18({ numClasses: 3, inputShape: [8, 8, 3], width: 1 / 16 });
    const config = resolveConfig({
      objective: 'ratio',
      outData: 'x',
      batchSize: 4,
      stepsIn: 1,
      stepsOut: 1,
      ema: 0.9,
    });
    const rng = new Rng(3);
    const train = new (await import('../../src/data/dataset.js')).ArrayDataset({
      images: Uint8Array.from({ length: 4 * 192 }, () => rng.int(256)),
      shape: [8, 8, 3],
      labels: Int32Array.from([0, 1, 2, 0]),
    });
    const trainer = new Trainer(model, config, { train, out: train });
    const movingMean = () =>
      model.weights
        .find((w) => /moving_mean/.test(w.name))
        ?.read()
        .dataSync()
        .slice() as Float32Array;
    const meanBefore = movingMean();
    const x = train.tensor();
    await trainer.step(x, train.labels, x, 0.01);
    const after1 = tf.memory().numTensors;
    await trainer.step(x, train.labels, x, 0.01);
    expect(tf.memory().numTensors).toBe(after1);
    expect(Array.from(movingMean())).not.toEqual(Array.from(meanBefore));
    x.dispose();
    trainer.dispose();
    model.dispose();
  });
});
