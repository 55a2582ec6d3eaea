import * as tf from '@tensorflow/tfjs';
import { ArrayDataset } from '../../src/data/dataset.js';

/**
 * A linear classifier on [1, 1, features] images: logits = x W + b, as a LayersModel so the trainer
 * can use it. Weights given row-major [features, classes].
 */
export function linearModel(
  features: number,
  classes: number,
  kernel?: number[],
  bias?: number[],
): tf.LayersModel {
  const input = tf.input({ shape: [1, 1, features] });
  const flat = tf.layers.flatten().apply(input) as tf.SymbolicTensor;
  const dense = tf.layers.dense({ units: classes, name: 'logits' });
  const output = dense.apply(flat) as tf.SymbolicTensor;
  const model = tf.model({ inputs: input, outputs: output });
  if (kernel && bias) {
    const k = tf.tensor2d(kernel, [features, classes]);
    const b = tf.tensor1d(bias);
    dense.setWeights([k, b]);
    tf.dispose([k, b]);
  }
  return model;
}

/** A data set of [1, 1, features] images from pixel values in [0, 255]. */
export function tinyDataset(pixels: number[], features: number, labels?: number[]): ArrayDataset {
  return new ArrayDataset({
    images: Uint8Array.from(pixels),
    shape: [1, 1, features],
    labels: labels ? Int32Array.from(labels) : undefined,
    classNames: labels ? ['a', 'b', 'c'].slice(0, Math.max(...labels) + 1) : undefined,
  });
}
