import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ArrayDataset } from '../../src/data/dataset.js';
import { resolveConfig, type TrainConfig } from '../../src/training/config.js';
import { loadTrainingData } from '../../src/training/data.js';
import { pgdL2BestIterate, uniformCrossEntropyPerExample } from '../../src/training/objectives.js';
import { runTraining } from '../../src/training/run.js';
import { Trainer } from '../../src/training/trainer.js';
import { Rng } from '../../src/util/random.js';
import { linearModel } from '../helpers/training.js';

/** 2-feature points (coordinates in [0,1], stored as bytes) as 1x1x2 images. */
function pointSet(points: Array<[number, number]>, labels?: number[]): ArrayDataset {
  const images = Uint8Array.from(points.flat().map((v) => Math.round(v * 255)));
  return new ArrayDataset({
    images,
    shape: [1, 1, 2],
    labels: labels ? Int32Array.from(labels) : undefined,
    classNames: labels ? Array.from({ length: Math.max(...labels) + 1 }, (_, k) => `c${k}`) : [],
  });
}

/** Full-batch training of a linear model with the trainer's own step (no augmentation, no EMA). */
async function trainLinear(
  model: tf.LayersModel,
  overrides: Partial<TrainConfig>,
  train: ArrayDataset,
  out: ArrayDataset | undefined,
  steps: number,
): Promise<void> {
  const config = resolveConfig({
    outData: 'points',
    batchSize: train.size,
    ema: 0,
    augment: false,
    weightDecay: 0,
    momentum: 0.9,
    ...overrides,
  });
  const trainer = new Trainer(model, config, { train, out });
  const x = train.tensor();
  const xOut = out?.tensor();
  for (let step = 0; step < steps; step++) await trainer.step(x, train.labels, xOut, config.lr);
  tf.dispose([x, xOut as tf.Tensor]);
  trainer.dispose();
}

describe('at on a linearly separable set', () => {
  // Two parallel strips y = x + 0.15 (class 0) and y = x - 0.15 (class 1), offset along the strips.
  // The vertical boundary x = 0.525 separates them with margin 0.075; the direction (1, -1) gives
  // 0.106. Training starts from the vertical boundary with large weights, where CE is already small.
  const rng = new Rng(5);
  const points: Array<[number, number]> = [];
  const labels: number[] = [];
  for (let i = 0; i < 40; i++) {
    const cls = i % 2;
    const t = cls === 0 ? 0.05 + 0.4 * rng.next() : 0.45 + 0.35 * rng.next();
    points.push(cls === 0 ? [t, t + 0.15] : [t + 0.15, t]);
    labels.push(cls);
  }
  const data = pointSet(points, labels);

  /** Smallest signed L2 distance of a point to the decision boundary (negative = misclassified). */
  function minimumMargin(model: tf.LayersModel): number {
    const [kernel, bias] = model.getWeights().map((w) => w.dataSync());
    const w = [kernel[1] - kernel[0], kernel[3] - kernel[2]];
    const b = bias[1] - bias[0];
    const norm = Math.hypot(w[0], w[1]);
    let smallest = Number.POSITIVE_INFINITY;
    for (let i = 0; i < data.size; i++) {
      const x = [data.images[2 * i] / 255, data.images[2 * i + 1] / 255];
      const sign = data.labels[i] === 1 ? 1 : -1;
      smallest = Math.min(smallest, (sign * (w[0] * x[0] + w[1] * x[1] + b)) / norm);
    }
    return smallest;
  }

  it('adversarial training widens the margin; plain training barely moves it', async () => {
    const kernel = [0, 100, 0, 0];
    const bias = [0, -52.5];
    const plain = linearModel(2, 2, kernel, bias);
    const adversarial = linearModel(2, 2, kernel, bias);
    const start = minimumMargin(plain);
    await trainLinear(plain, { objective: 'plain', lr: 0.5 }, data, undefined, 150);
    await trainLinear(
      adversarial,
      { objective: 'at', lr: 0.5, epsIn: 0.1, stepsIn: 5, stepSizeIn: 0.04 },
      data,
      undefined,
      150,
    );
    const plainMargin = minimumMargin(plain);
    const atMargin = minimumMargin(adversarial);
    console.log(`margins: start ${start}, plain ${plainMargin}, at ${atMargin}`);
    expect(start).toBeGreaterThan(0.07);
    expect(atMargin).toBeGreaterThan(plainMargin + 0.01);
    expect(atMargin).toBeGreaterThan(start + 0.01);
    plain.dispose();
    adversarial.dispose();
  });
});

describe('the RATIO out-distribution term', () => {
  // Three classes at the corners of a triangle; the out-distribution sits at their circumcentre.
  const rng = new Rng(9);
  const corners: Array<[number, number]> = [
    [0.1, 0.1],
    [0.9, 0.1],
    [0.5, 0.9],
  ];
  const jitter = (c: [number, number]): [number, number] => [
    c[0] + 0.05 * rng.next(),
    c[1] + 0.05 * rng.next(),
  ];
  const inPoints = Array.from({ length: 30 }, (_, i) => jitter(corners[i % 3]));
  const inData = pointSet(
    inPoints,
    inPoints.map((_, i) => i % 3),
  );
  const outData = pointSet(Array.from({ length: 30 }, () => jitter([0.48, 0.62])));

  async function worstCaseOutConfidence(model: tf.LayersModel, eps: number): Promise<number> {
    const x = outData.tensor();
    const logits = (z: tf.Tensor4D) => model.apply(z, { training: false }) as tf.Tensor2D;
    const adversarial = pgdL2BestIterate((z) => tf.tidy(() => uniformCrossEntropyPerExample(logits(z))), x, {
      eps,
      steps: 20,
      stepSize: eps / 4,
      rng: new Rng(1),
    });
    const confidence = tf.tidy(() => tf.softmax(logits(adversarial)).max(1).mean().dataSync()[0]);
    tf.dispose([x, adversarial]);
    return confidence;
  }

  it('drives the worst-case max-confidence on the out batch towards 1/K; plain does not', async () => {
    const kernel = [-4, 4, 0, -4, -4, 8];
    const bias = [0, 0, -1];
    const plain = linearModel(2, 3, kernel, bias);
    const ratio = linearModel(2, 3, kernel, bias);
    const eps = 0.05;
    const before = await worstCaseOutConfidence(ratio, eps);
    await trainLinear(plain, { objective: 'plain', lr: 0.5 }, inData, outData, 150);
    await trainLinear(
      ratio,
      {
        objective: 'ratio',
        lr: 0.5,
        // A heavy out-distribution weight isolates the term under test.
        lambda: 4,
        epsIn: 0.02,
        epsOut: eps,
        stepsIn: 3,
        stepsOut: 5,
        stepSizeIn: 0.01,
        stepSizeOut: 0.02,
      },
      inData,
      outData,
      300,
    );
    const afterPlain = await worstCaseOutConfidence(plain, eps);
    const afterRatio = await worstCaseOutConfidence(ratio, eps);
    console.log(`worst-case out confidence: start ${before}, plain ${afterPlain}, ratio ${afterRatio}`);
    // At least 4/5 of the way from the start to the uniform confidence 1/K.
    expect(afterRatio - 1 / 3).toBeLessThan(0.2 * (before - 1 / 3));
    expect(afterPlain).toBeGreaterThan(afterRatio + 0.2);
    // In-distribution points stay correctly classified.
    const x = inData.tensor();
    const predicted = tf.tidy(() =>
      (ratio.apply(x, { training: false }) as tf.Tensor2D).argMax(1).dataSync(),
    );
    x.dispose();
    expect(Array.from(predicted)).toEqual(Array.from(inData.labels));
    plain.dispose();
    ratio.dispose();
  });
});

describe('plain training on real data', () => {
  it('a few hundred steps on 1,500 MNIST digits reach clearly better than chance', async () => {
    const folder = await mkdtemp(path.join(tmpdir(), 'ratio-learn-'));
    const dataset = await loadTrainingData('mnist/t10k-images-idx3-ubyte.gz', { limit: 1700, seed: 3 });
    const config = resolveConfig({
      name: 'mnist-plain',
      objective: 'plain',
      width: 0.5,
      validationSize: 200,
      epochs: 3,
      batchSize: 16,
      lr: 0.1,
      warmupEpochs: 0,
      weightDecay: 0,
      ema: 0,
      augment: false,
      seed: 1,
      runDir: path.join(folder, 'runs'),
      outDir: path.join(folder, 'models'),
    });
    const before = tf.memory().numTensors;
    const result = await runTraining(config, { data: { train: dataset } });
    const accuracy = result.card?.metrics?.validationAccuracy as number;
    console.log(`mnist plain: ${result.step} steps, validation accuracy ${accuracy}`);
    expect(result.step).toBe(3 * Math.floor(1500 / 16));
    // Chance is 0.1; 200 validation digits put its 99.9% quantile near 0.17.
    expect(accuracy).toBeGreaterThan(0.35);
    result.model.dispose();
    expect(tf.memory().numTensors).toBe(before);
    await rm(folder, { recursive: true, force: true });
  });
});
