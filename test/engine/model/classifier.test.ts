import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  functionClassifier,
  ModelContractError,
  probabilities,
  TfjsClassifier,
} from '../../../src/engine/model/classifier.js';

describe('probabilities', () => {
  it('applies the temperature before the softmax', () => {
    const model = functionClassifier({ inputShape: [1, 1, 2], numClasses: 2, temperature: 2 }, (x) =>
      x.reshape([x.shape[0], 2]),
    );
    const before = tf.memory().numTensors;
    const x = tf.tensor4d([0, 2], [1, 1, 1, 2]);
    const p = probabilities(model, x);
    const values = p.dataSync();
    // softmax([0, 2] / 2) = softmax([0, 1])
    expect(values[1]).toBeCloseTo(Math.E / (1 + Math.E), 6);
    tf.dispose([x, p]);
    expect(tf.memory().numTensors).toBe(before);
  });
});

/** A dense model on flattened [h, w, c] images with known weights: logits = flatten(x) W + b. */
function linearModel(shape: [number, number, number], classes: number): tf.LayersModel {
  const size = shape[0] * shape[1] * shape[2];
  const model = tf.sequential({
    layers: [
      tf.layers.flatten({ inputShape: shape }),
      tf.layers.dense({ units: classes, kernelInitializer: 'zeros', biasInitializer: 'zeros' }),
    ],
  });
  const kernel = tf.tensor2d(
    Array.from({ length: size * classes }, (_, i) => ((i * 7) % 11) / 10 - 0.5),
    [size, classes],
  );
  const bias = tf.tensor1d(Array.from({ length: classes }, (_, k) => k / 4));
  model.layers[1].setWeights([kernel, bias]);
  tf.dispose([kernel, bias]);
  return model;
}

describe('TfjsClassifier', () => {
  it('computes the logits of a LayersModel and completes the card from the model', () => {
    const model = linearModel([2, 2, 1], 3);
    const classifier = new TfjsClassifier(model, { name: 'linear' });
    expect(classifier.numClasses).toBe(3);
    expect(classifier.format).toBe('layers-model');
    expect(classifier.card).toMatchObject({
      name: 'linear',
      inputShape: [2, 2, 1],
      temperature: 1,
      classNames: ['class_0', 'class_1', 'class_2'],
    });
    const before = tf.memory().numTensors;
    const x = tf.tensor4d([0.1, 0.2, 0.3, 0.4], [1, 2, 2, 1]);
    const logits = classifier.logits(x);
    const [kernel, bias] = model.layers[1].getWeights().map((w) => w.arraySync() as number[] | number[][]);
    const expected = [0, 1, 2].map(
      (k) =>
        [0.1, 0.2, 0.3, 0.4].reduce((sum, v, i) => sum + v * (kernel as number[][])[i][k], 0) +
        (bias as number[])[k],
    );
    Array.from(logits.dataSync()).forEach((v, k) => {
      expect(v).toBeCloseTo(expected[k], 5);
    });
    tf.dispose([x, logits]);
    expect(tf.memory().numTensors).toBe(before);
    classifier.dispose();
  });

  it('is differentiable: the input gradient of a linear model is its kernel row sum', () => {
    const model = linearModel([2, 2, 1], 3);
    const classifier = new TfjsClassifier(model);
    const before = tf.memory().numTensors;
    const x = tf.fill([2, 2, 2, 1], 0.5) as tf.Tensor4D;
    const gradient = tf.grad((input: tf.Tensor) => classifier.logits(input as tf.Tensor4D).sum())(x);
    const kernel = model.layers[1].getWeights()[0].arraySync() as number[][];
    const rowSums = kernel.map((row) => row.reduce((a, b) => a + b, 0));
    const values = Array.from(gradient.dataSync());
    expect(values).toHaveLength(8);
    values.forEach((v, i) => {
      expect(v).toBeCloseTo(rowSums[i % 4], 5);
    });
    tf.dispose([x, gradient]);
    expect(tf.memory().numTensors).toBe(before);
    classifier.dispose();
  });

  it('runs inference mode: BatchNorm uses moving statistics and dropout is off', () => {
    const model = tf.sequential({
      layers: [
        tf.layers.flatten({ inputShape: [1, 1, 2] }),
        tf.layers.batchNormalization({ epsilon: 0 }),
        tf.layers.dropout({ rate: 0.9 }),
      ],
    });
    const bn = model.layers[1];
    bn.setWeights([tf.tensor1d([2, 1]), tf.tensor1d([0, 1]), tf.tensor1d([0.5, 0]), tf.tensor1d([4, 1])]);
    const classifier = new TfjsClassifier(model);
    const x = tf.tensor4d([1.5, 3], [1, 1, 1, 2]);
    const logits = classifier.logits(x);
    // gamma (x - movingMean) / sqrt(movingVar) + beta = [2 * 1 / 2 + 0, 1 * 3 / 1 + 1]
    expect(Array.from(logits.dataSync())).toEqual([1, 4]);
    tf.dispose([x, logits]);
    classifier.dispose();
  });

  it('probs applies the card temperature', () => {
    const classifier = new TfjsClassifier(linearModel([1, 1, 2], 2), { temperature: 2 });
    const x = tf.tensor4d([1, -1], [1, 1, 1, 2]);
    const logits = classifier.logits(x).dataSync();
    const p = classifier.probs(x);
    const expected = 1 / (1 + Math.exp((logits[0] - logits[1]) / 2));
    expect(p.dataSync()[1]).toBeCloseTo(expected, 6);
    const sharp = classifier.probs(x, { temperature: 1 });
    expect(sharp.dataSync()[1]).toBeCloseTo(1 / (1 + Math.exp(logits[0] - logits[1])), 6);
    tf.dispose([x, p, sharp]);
    classifier.dispose();
  });

  it('rejects inputs of the wrong rank, size or dtype, naming x', () => {
    const classifier = new TfjsClassifier(linearModel([2, 2, 1], 3));
    const before = tf.memory().numTensors;
    const rank3 = tf.zeros([2, 2, 1]);
    const wrongSize = tf.zeros([1, 2, 3, 1]);
    const ints = tf.zeros([1, 2, 2, 1], 'int32');
    expect(() => classifier.logits(rank3 as tf.Tensor4D)).toThrow(
      "'x' must be rank 4 NHWC [n, H, W, C] matching the model input [n, 2, 2, 1], got [2,2,1]",
    );
    expect(() => classifier.logits(wrongSize as tf.Tensor4D)).toThrow(/got \[1,2,3,1\]/);
    expect(() => classifier.logits(ints as tf.Tensor4D)).toThrow("'x' must be float32, got int32");
    tf.dispose([rank3, wrongSize, ints]);
    expect(tf.memory().numTensors).toBe(before);
    classifier.dispose();
  });

  it('refuses models that break the classifier contract, naming the field', () => {
    const expectContract = (build: () => unknown, field: string, message: RegExp) => {
      try {
        build();
      } catch (error) {
        expect(error).toBeInstanceOf(ModelContractError);
        expect((error as ModelContractError).field).toBe(field);
        expect((error as Error).message).toMatch(message);
        return;
      }
      throw new Error('no error thrown');
    };
    const models: tf.LayersModel[] = [];
    const keep = (m: tf.LayersModel) => {
      models.push(m);
      return m;
    };
    const rank2Input = keep(tf.sequential({ layers: [tf.layers.dense({ inputShape: [4], units: 2 })] }));
    expectContract(() => new TfjsClassifier(rank2Input), 'input', /rank 4 NHWC.*got rank 2/);
    const convOutput = keep(
      tf.sequential({ layers: [tf.layers.conv2d({ inputShape: [4, 4, 1], filters: 2, kernelSize: 1 })] }),
    );
    expectContract(() => new TfjsClassifier(convOutput), 'output', /rank 2 logits.*got \[\?, 4, 4, 2\]/);
    const channelsFirst = keep(linearModel([3, 8, 8], 2));
    expectContract(() => new TfjsClassifier(channelsFirst), 'input', /channels-first/);
    expectContract(
      () => new TfjsClassifier(channelsFirst, { inputShape: [8, 8, 3] }),
      'input',
      /does not match the card's NHWC inputShape \[8,8,3\].*channels-first/,
    );
    const linear = keep(linearModel([2, 2, 1], 3));
    expectContract(
      () => new TfjsClassifier(linear, { classNames: ['cat', 'dog'] }),
      'card.classNames',
      /2 entries but the model outputs 3/,
    );
    expectContract(() => new TfjsClassifier(linear, { temperature: 0 }), 'card.temperature', /> 0/);
    models.forEach((m) => {
      m.dispose();
    });
  });

  it('leaves the tensor count unchanged over create, logits and dispose', () => {
    const before = tf.memory().numTensors;
    const classifier = new TfjsClassifier(linearModel([2, 2, 1], 3));
    const x = tf.ones([3, 2, 2, 1]) as tf.Tensor4D;
    tf.dispose([classifier.logits(x), classifier.probs(x), x]);
    classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
