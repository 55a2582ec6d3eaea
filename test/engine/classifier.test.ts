import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { functionClassifier, probabilities } from '../../src/engine/classifier.js';

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
