import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { leadingAxesCount } from '../../../../src/engine/backend/gradients/wasm-kernels.js';
import { Rng } from '../../../../src/util/random.js';
import { onCpuWithStockGradients } from './cpu-reference.js';

/**
 * The kernels and gradients that replace tfjs's for speed (wasm: zero-copy Identity/Cast, Sum over
 * leading axes; every backend: the Mean gradient) against the cpu backend with tfjs's own. The suite
 * runs on cpu and on wasm (vitest projects); on wasm it exercises the replacements.
 */

const rng = new Rng(4242);

function maxRelativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / Math.max(Math.abs(expected[i]), 1e-3));
  }
  return worst;
}

describe('leadingAxesCount', () => {
  it('recognises reductions over the first k < rank axes only', () => {
    expect(leadingAxesCount([4, 5, 6, 7], [0, 1, 2])).toBe(3);
    expect(leadingAxesCount([4, 5, 6, 7], [2, 0, 1])).toBe(3);
    expect(leadingAxesCount([4, 5], 0)).toBe(1);
    expect(leadingAxesCount([4, 5, 6], [-3])).toBe(1);
    expect(leadingAxesCount([4, 5, 6, 7], [0, 1, 2, 3])).toBeNull();
    expect(leadingAxesCount([4, 5, 6, 7], [1, 2])).toBeNull();
    expect(leadingAxesCount([4, 5, 6, 7], [0, 2])).toBeNull();
    expect(leadingAxesCount([4, 5, 6, 7], 3)).toBeNull();
  });
});

describe('Sum', () => {
  const cases: Array<{ shape: number[]; axis: number | number[]; keepDims: boolean }> = [
    { shape: [6, 5, 4, 3], axis: [0, 1, 2], keepDims: false },
    { shape: [6, 5, 4, 3], axis: [0, 1, 2], keepDims: true },
    { shape: [7, 9], axis: 0, keepDims: false },
    { shape: [3, 4, 5], axis: [0, 1], keepDims: true },
    { shape: [6, 5, 4, 3], axis: [1, 2], keepDims: false },
    { shape: [6, 5, 4, 3], axis: -1, keepDims: false },
    { shape: [6, 5], axis: [0, 1], keepDims: false },
  ];
  it.each(cases)('matches the cpu reference: $shape over $axis, keepDims $keepDims', async (c) => {
    const size = c.shape.reduce((a, b) => a * b, 1);
    const values = rng.normals(size);
    const run = () =>
      tf.tidy(() => {
        const result = tf.sum(tf.tensor(values, c.shape), c.axis, c.keepDims);
        return { shape: result.shape, values: result.dataSync() as Float32Array };
      });
    const expected = await onCpuWithStockGradients(run);
    const actual = run();
    expect(actual.shape).toEqual(expected.shape);
    expect(maxRelativeError(actual.values, expected.values)).toBeLessThanOrEqual(1e-5);
  });

  it('leaves its input intact and numTensors where it was, call after call', () => {
    const x = tf.tensor4d(rng.normals(4 * 5 * 6 * 3), [4, 5, 6, 3]);
    const before = tf.memory().numTensors;
    const first = Array.from(tf.tidy(() => tf.sum(x, [0, 1, 2]).dataSync()));
    for (let i = 0; i < 3; i++) {
      expect(Array.from(tf.tidy(() => tf.sum(x, [0, 1, 2]).dataSync()))).toEqual(first);
    }
    expect(tf.memory().numTensors).toBe(before);
    expect(x.dataSync().length).toBe(360);
    x.dispose();
  });

  it('keeps int32 sums exact (left to the stock kernel)', () => {
    const total = tf.tidy(() => tf.sum(tf.tensor2d([1, 2, 3, 4], [2, 2], 'int32'), 0).arraySync());
    expect(total).toEqual([4, 6]);
  });
});

describe('Identity and Cast', () => {
  it('a clone outlives its source and a same-dtype cast keeps values; numTensors returns to where it was', () => {
    const before = tf.memory().numTensors;
    const source = tf.tensor1d([1.5, -2, 3]);
    const copy = source.clone();
    const same = tf.cast(source, 'float32');
    source.dispose();
    expect(Array.from(copy.dataSync())).toEqual([1.5, -2, 3]);
    expect(Array.from(same.dataSync())).toEqual([1.5, -2, 3]);
    const asInt = tf.cast(copy, 'int32');
    expect(asInt.dtype).toBe('int32');
    expect(Array.from(asInt.dataSync())).toEqual([1, -2, 3]);
    tf.dispose([copy, same, asInt]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a variable assigned from a clone does not change the clone', () => {
    const v = tf.variable(tf.tensor1d([1, 2]));
    const snapshot = v.clone();
    v.assign(tf.tensor1d([5, 6]));
    expect(Array.from(snapshot.dataSync())).toEqual([1, 2]);
    expect(Array.from(v.dataSync())).toEqual([5, 6]);
    tf.dispose([v, snapshot]);
  });

  it('releases the shared buffer once the last tensor using it is gone', () => {
    const before = tf.memory().numBytes;
    const a = tf.ones([256, 256]);
    const b = a.clone();
    const c = tf.cast(b, 'float32');
    a.dispose();
    b.dispose();
    expect(tf.memory().numBytes).toBeGreaterThan(before);
    c.dispose();
    expect(tf.memory().numBytes).toBe(before);
  });
});

describe('Mean gradient', () => {
  const cases: Array<{ shape: number[]; axis: number | number[] }> = [
    { shape: [4, 3, 3, 5], axis: [1, 2] },
    { shape: [4, 6], axis: 0 },
    { shape: [2, 3, 4], axis: [0, 1, 2] },
  ];
  it.each(cases)('matches the cpu reference: $shape over $axis', async (c) => {
    const size = c.shape.reduce((a, b) => a * b, 1);
    const x = rng.normals(size);
    const run = () =>
      tf.tidy(() => {
        const loss = (input: tf.Tensor) => {
          const m = tf.mean(tf.square(input), c.axis);
          return tf.sum(tf.mul(m, tf.range(1, m.size + 1).reshape(m.shape)));
        };
        return tf.grad(loss)(tf.tensor(x, c.shape)).dataSync() as Float32Array;
      });
    const expected = await onCpuWithStockGradients(run);
    expect(maxRelativeError(run(), expected)).toBeLessThanOrEqual(1e-5);
  });
});
