import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { parseNpy } from '../../../../src/data/npy.js';
import { loadOnnxClassifier } from '../../../../src/engine/model/onnx/index.js';

/**
 * PyTorch-exported fixtures (scripts/onnx-fixtures.py): the import must reproduce PyTorch's logits
 * within 1e-4 and the input gradient of the summed cross-entropy within 1e-3 relative, on every
 * backend this suite runs on (default and cpu).
 */
const FIXTURES = path.join(import.meta.dirname, '../../../fixtures/onnx');
const NAMES = ['preact-resnet', 'wide-resnet', 'depthwise', 'maxpool-view', 'small-cnn', 'ties'];

function npy(name: string, file: string) {
  return parseNpy(new Uint8Array(readFileSync(path.join(FIXTURES, name, file))), file);
}

/** NCHW [n, c, h, w] values -> an NHWC tensor. */
function nhwc(name: string, file: string): tf.Tensor4D {
  const { data, shape } = npy(name, file);
  return tf.tidy(() =>
    tf.transpose(tf.tensor4d(data as Float32Array, shape as [number, number, number, number]), [0, 2, 3, 1]),
  );
}

describe.each(NAMES)('ONNX fixture %s', (name) => {
  it('matches PyTorch logits (1e-4) and cross-entropy input gradients (1e-3 rel)', () => {
    const before = tf.memory().numTensors;
    const classifier = loadOnnxClassifier(
      new Uint8Array(readFileSync(path.join(FIXTURES, name, 'model.onnx'))),
    );
    expect(classifier.card.inputShape).toEqual([32, 32, 3]);
    expect(classifier.card.inputLayout).toBe('NCHW');
    const x = nhwc(name, 'input.npy');
    const labels = Array.from(npy(name, 'labels.npy').data, Number);
    const expectedLogits = npy(name, 'logits.npy').data as Float32Array;
    const afterLoad = tf.memory().numTensors;

    const logits = classifier.logits(x);
    expect(tf.memory().numTensors).toBe(afterLoad + 1);
    const actualLogits = logits.dataSync();
    logits.dispose();
    expect(actualLogits.length).toBe(expectedLogits.length);
    const logitError = Math.max(...Array.from(actualLogits, (v, i) => Math.abs(v - expectedLogits[i])));
    expect(logitError).toBeLessThan(1e-4);

    const oneHot = tf.tidy(() => tf.oneHot(tf.tensor1d(labels, 'int32'), classifier.numClasses));
    const grad = tf.grad((input: tf.Tensor) =>
      tf.mul(
        tf.losses.softmaxCrossEntropy(
          oneHot,
          classifier.logits(input as tf.Tensor4D),
          undefined,
          undefined,
          tf.Reduction.SUM,
        ),
        1,
      ),
    )(x);
    const gradNchw = tf.transpose(grad, [0, 3, 1, 2]);
    const actualGrad = gradNchw.dataSync();
    tf.dispose([grad, gradNchw, oneHot]);
    const expectedGrad = npy(name, 'input_grad.npy').data as Float32Array;
    const scale = Math.max(...Array.from(expectedGrad, Math.abs));
    const gradError = Math.max(...Array.from(actualGrad, (v, i) => Math.abs(v - expectedGrad[i])));
    expect(scale).toBeGreaterThan(0);
    expect(gradError / scale).toBeLessThan(1e-3);

    x.dispose();
    expect(tf.memory().numTensors).toBe(afterLoad - 1);
    classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
