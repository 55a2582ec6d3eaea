import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { backendInfo } from '../../../../src/engine/backend/backend.js';
import { Rng } from '../../../../src/util/random.js';
import { onCpuWithStockGradients } from './cpu-reference.js';

/**
 * Max-pool gradients on the selected backend (on wasm: the project's MaxPoolGrad kernel) against the
 * cpu backend's stock kernel, including overlapping windows, padding, odd sizes and ties after ReLU.
 */

interface PoolCase {
  shape: [number, number, number, number];
  filter: number;
  stride: number;
  pad: 'same' | 'valid';
  /** Apply ReLU first, so that many windows tie at zero. */
  relu: boolean;
}

const rng = new Rng(7);

function poolGradient(c: PoolCase, x: Float32Array, weights: Float32Array): Float32Array {
  return tf.tidy(() => {
    const loss = (input: tf.Tensor) => {
      const source = (c.relu ? tf.relu(input) : input) as tf.Tensor4D;
      const y = tf.maxPool(source, c.filter, c.stride, c.pad);
      return tf.sum(tf.mul(y, tf.tensor(weights.subarray(0, y.size), y.shape)));
    };
    return tf.grad(loss)(tf.tensor4d(x, c.shape)).dataSync() as Float32Array;
  });
}

const cases: PoolCase[] = [
  { shape: [3, 8, 8, 4], filter: 2, stride: 2, pad: 'valid', relu: false },
  { shape: [3, 8, 8, 4], filter: 2, stride: 2, pad: 'valid', relu: true },
  { shape: [2, 9, 7, 3], filter: 2, stride: 2, pad: 'same', relu: true },
  { shape: [2, 9, 7, 3], filter: 2, stride: 2, pad: 'valid', relu: false },
  { shape: [2, 9, 9, 5], filter: 3, stride: 2, pad: 'same', relu: true },
  { shape: [1, 10, 11, 2], filter: 3, stride: 1, pad: 'same', relu: false },
  { shape: [2, 12, 12, 16], filter: 2, stride: 2, pad: 'valid', relu: true },
];

describe('max-pool gradient', () => {
  it.each(cases)(
    'matches the cpu reference: $shape, $filter x $filter / $stride, $pad, relu $relu',
    async (c) => {
      const size = c.shape.reduce((a, b) => a * b, 1);
      const x = rng.normals(size);
      const weights = rng.normals(size);
      const expected = await onCpuWithStockGradients(() => poolGradient(c, x, weights));
      const actual = poolGradient(c, x, weights);
      // Exact where windows do not overlap; overlapping windows may sum in another order.
      expect(actual.length).toBe(expected.length);
      for (let i = 0; i < expected.length; i++) {
        if (Math.abs(actual[i] - expected[i]) > 1e-5 * Math.max(1, Math.abs(expected[i]))) {
          expect.fail(`dx[${i}] = ${actual[i]}, expected ${expected[i]}`);
        }
      }
    },
  );

  it('leaves tf.memory().numTensors unchanged', () => {
    const c = cases[2];
    const size = c.shape.reduce((a, b) => a * b, 1);
    const x = rng.normals(size);
    const weights = rng.normals(size);
    poolGradient(c, x, weights);
    const before = tf.memory().numTensors;
    poolGradient(c, x, weights);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('runs on the project kernel on wasm', () => {
    if (backendInfo().name !== 'wasm') return;
    const kernel = tf.getKernelsForBackend('wasm').find((k) => k.kernelName === tf.MaxPoolGrad);
    expect(kernel?.kernelFunc.name).toBe('maxPoolGradOnHeap');
  });
});
