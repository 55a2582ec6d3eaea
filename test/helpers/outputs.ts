import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import type { Classifier } from '../../src/engine/model/classifier.js';

/**
 * Expects `candidate` to give exactly the values of `reference` on `x` (a saved and loaded model
 * against the original, say); disposes `x` and both outputs, not the models.
 */
export function expectSameOutputs(
  x: tf.Tensor,
  reference: (x: tf.Tensor) => tf.Tensor,
  candidate: (x: tf.Tensor) => tf.Tensor,
): void {
  const expected = reference(x);
  const actual = candidate(x);
  try {
    expect(Array.from(actual.dataSync())).toEqual(Array.from(expected.dataSync()));
  } finally {
    tf.dispose([x, expected, actual]);
  }
}

/** The same for two Layers models' predictions on `x`. */
export function expectSamePredictions(
  x: tf.Tensor,
  reference: tf.LayersModel,
  candidate: tf.LayersModel,
): void {
  expectSameOutputs(
    x,
    () => reference.predict(x) as tf.Tensor,
    () => candidate.predict(x) as tf.Tensor,
  );
}

/** The same for two classifiers' logits on the images `x`. */
export function expectSameLogits(x: tf.Tensor4D, reference: Classifier, candidate: Classifier): void {
  expectSameOutputs(
    x,
    () => reference.logits(x),
    () => candidate.logits(x),
  );
}
