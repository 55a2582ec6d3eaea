import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ArrayDataset } from '../../../src/data/dataset.js';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import { classAtRank, logitsOf } from '../../../src/engine/model/logits.js';
import { softmaxRows } from '../../../src/engine/ood/calibration.js';

const classifier = functionClassifier({ inputShape: [2, 2, 1], numClasses: 3 }, (x) =>
  tf.tidy(() => {
    const flat = x.reshape([x.shape[0], 4]);
    return tf.matMul(flat, tf.tensor2d([1, 0, -1, 2, 1, 0, 0, 3, 1, -1, 0, 2], [4, 3])) as tf.Tensor2D;
  }),
);

describe('logitsOf', () => {
  it('gives the same logits for a tensor and host images at every batch size, leaving no tensor', () => {
    const images = Float32Array.from({ length: 7 * 4 }, (_, i) => ((i * 7) % 11) / 10);
    const shape = [7, 2, 2, 1] as const;
    const x = tf.tensor4d(images, [...shape]);
    const expected = tf.tidy(() => classifier.logits(x).dataSync() as Float32Array);
    const before = tf.memory().numTensors;
    for (const batchSize of [1, 3, 7, 100]) {
      expect(logitsOf(classifier, x, batchSize)).toEqual(expected);
      expect(logitsOf(classifier, { images, shape }, batchSize)).toEqual(expected);
    }
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('reads batched images (a data set) in order, disposing every batch', () => {
    const pixels = Uint8Array.from({ length: 5 * 4 }, (_, i) => (i * 53) % 256);
    const dataset = new ArrayDataset({
      images: pixels,
      shape: [2, 2, 1],
      labels: new Int32Array(5).fill(-1),
    });
    const x = tf.tensor4d(
      Float32Array.from(pixels, (v) => v / 255),
      [5, 2, 2, 1],
    );
    const expected = logitsOf(classifier, x, 5);
    x.dispose();
    const before = tf.memory().numTensors;
    for (const batchSize of [1, 2, 5]) {
      const got = logitsOf(classifier, dataset, batchSize);
      for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(expected[i], 5);
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('classAtRank / softmaxRows', () => {
  it('ranks classes with ties to the lower index', () => {
    const logits = Float32Array.from([1, 3, 3, 0, -1, 2, 5, 5, 5]);
    expect(Array.from(classAtRank(logits, 3))).toEqual([1, 2, 0]);
    expect(Array.from(classAtRank(logits, 3, 2))).toEqual([2, 0, 1]);
    expect(Array.from(classAtRank(logits, 3, 9))).toEqual([0, 1, 2]);
  });

  it('matches tf.softmax of logits / T', () => {
    const logits = Float32Array.from([1, 3, 3, 0, -1, 2, 50, 50.5, 49]);
    for (const temperature of [1, 0.5, 2.5]) {
      const expected = tf.tidy(
        () => tf.softmax(tf.div(tf.tensor2d(logits, [3, 3]), temperature)).dataSync() as Float32Array,
      );
      const got = softmaxRows(logits, 3, temperature);
      for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(expected[i], 6);
    }
  });
});
