import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { backendInfo } from '../../../../src/engine/backend/backend.js';
import {
  useFastConvGradients,
  useStockConvGradients,
} from '../../../../src/engine/backend/gradients/register.js';
import { resnet18, smallCnn } from '../../../../src/training/architectures.js';
import { seededInitialisation } from '../../../../src/training/run.js';
import { Rng } from '../../../../src/util/random.js';
import { relativeError } from './cpu-reference.js';

/**
 * End to end through tf.layers: every trainable weight's gradient of a model-zoo network on the
 * selected backend (the project's gradients) against the cpu backend with tfjs's stock gradients.
 * smallCnn differentiates its ReLU convolutions through the Conv2D gradient and its max-pools through
 * MaxPoolGrad; resnet18's convolutions have no activation (BatchNorm follows), so tf.layers runs them
 * fused and differentiates through the Conv2DBackprop* kernels, strides 1 and 2.
 */

function weightGradients(
  model: tf.LayersModel,
  x: tf.Tensor4D,
  labels: tf.Tensor2D,
): Map<string, Float32Array> {
  const { value, grads } = tf.variableGrads(
    () => tf.losses.softmaxCrossEntropy(labels, model.apply(x, { training: true }) as tf.Tensor) as tf.Scalar,
    model.trainableWeights.map((w) => w.read() as tf.Variable),
  );
  const result = new Map(Object.entries(grads).map(([name, g]) => [name, g.dataSync() as Float32Array]));
  tf.dispose([value, ...Object.values(grads)]);
  return result;
}

async function compareWithCpuReference(model: tf.LayersModel, batch: number): Promise<void> {
  const rng = new Rng(11);
  const [h, w, c] = model.inputs[0].shape.slice(1) as number[];
  const pixels = Float32Array.from({ length: batch * h * w * c }, () => rng.next());
  const classes = Array.from({ length: batch }, () => rng.int(4));
  const x = tf.tensor4d(pixels, [batch, h, w, c]);
  const labels = tf.oneHot(tf.tensor1d(classes, 'int32'), 4) as tf.Tensor2D;
  const actual = weightGradients(model, x, labels);
  const original = tf.getBackend();
  useStockConvGradients();
  await tf.setBackend('cpu');
  let expected: Map<string, Float32Array>;
  try {
    expected = weightGradients(model, x, labels);
  } finally {
    await tf.setBackend(original);
    useFastConvGradients(original);
  }
  expect([...actual.keys()]).toEqual([...expected.keys()]);
  for (const [name, values] of expected) {
    expect(relativeError(actual.get(name)!, values), name).toBeLessThanOrEqual(1e-4);
  }
  tf.dispose([x, labels]);
}

describe('model-zoo weight gradients match the cpu reference', () => {
  it('smallCnn (ReLU convolutions, max-pools)', async () => {
    const model = smallCnn({ numClasses: 4, inputShape: [8, 8, 3], width: 0.25 });
    seededInitialisation(model, 1);
    await compareWithCpuReference(model, 3);
    model.dispose();
  });

  it('resnet18 (linear fused convolutions, strides 1 and 2, BatchNorm)', async () => {
    // 16x16 inputs and batch 4 keep every BatchNorm over >= 16 values: over a handful of values its
    // gradient is ill-conditioned and amplifies float32 rounding differences between any two backends.
    const model = resnet18({ numClasses: 4, inputShape: [16, 16, 3], width: 0.125 });
    // Seeded, so that the comparison is the same every run (tfjs's own initialisers are unseeded).
    seededInitialisation(model, 1);
    await compareWithCpuReference(model, 4);
    model.dispose();
  });

  it('runs on the backend the project selected', () => {
    expect(tf.getBackend()).toBe(backendInfo().name);
  });
});
