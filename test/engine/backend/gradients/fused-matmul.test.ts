import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Rng } from '../../../../src/util/random.js';
import { onCpuWithStockGradients, relativeError } from './cpu-reference.js';

/**
 * `tf.fused.matMul` (the _FusedMatMul kernel: every Linear layer with a bias or a ReLU, e.g. an
 * imported ONNX Gemm with transB=1) against the cpu backend's stock kernel, for every transpose
 * combination. tfjs-backend-wasm 4.22's own kernel ignores transposeA/transposeB; the suite runs on
 * the selected kernels, cpu and wasm-native (vitest projects).
 */

const rng = new Rng(2323);

interface Case {
  rows: number;
  inner: number;
  cols: number;
  transposeA: boolean;
  transposeB: boolean;
  activation: 'linear' | 'relu';
  bias: boolean;
  batch?: number;
}

function values(n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal());
}

function run(c: Case, a: Float32Array, b: Float32Array, bias: Float32Array, dy: Float32Array) {
  return tf.tidy(() => {
    const lead = c.batch === undefined ? [] : [c.batch];
    const aShape = [...lead, ...(c.transposeA ? [c.inner, c.rows] : [c.rows, c.inner])];
    const bShape = [...lead, ...(c.transposeB ? [c.cols, c.inner] : [c.inner, c.cols])];
    const at = tf.tensor(a, aShape);
    const bt = tf.tensor(b, bShape);
    const biasTensor = c.bias ? tf.tensor1d(bias) : undefined;
    const f = (x: tf.Tensor, w: tf.Tensor) =>
      tf.fused.matMul({
        a: x,
        b: w,
        transposeA: c.transposeA,
        transposeB: c.transposeB,
        bias: biasTensor,
        activation: c.activation,
      });
    const y = f(at, bt);
    const [da, db] = tf.grads((x: tf.Tensor, w: tf.Tensor) =>
      tf.sum(tf.mul(f(x, w), tf.tensor(dy, y.shape))),
    )([at, bt]);
    return {
      y: y.dataSync() as Float32Array,
      da: da.dataSync() as Float32Array,
      db: db.dataSync() as Float32Array,
    };
  });
}

const CASES: Case[] = [];
for (const transposeA of [false, true]) {
  for (const transposeB of [false, true]) {
    CASES.push({ rows: 2, inner: 64, cols: 10, transposeA, transposeB, activation: 'linear', bias: true });
    CASES.push({ rows: 5, inner: 7, cols: 3, transposeA, transposeB, activation: 'relu', bias: false });
    CASES.push({
      rows: 3,
      inner: 8,
      cols: 6,
      transposeA,
      transposeB,
      activation: 'relu',
      bias: true,
      batch: 2,
    });
  }
}

describe('fused matMul on the selected kernels', () => {
  it.each(CASES)('matches the cpu reference: %o', async (c) => {
    const lead = c.batch ?? 1;
    const a = values(lead * c.rows * c.inner);
    const b = values(lead * c.inner * c.cols);
    const bias = values(c.cols);
    const dy = values(lead * c.rows * c.cols);
    const before = tf.memory().numTensors;
    const actual = run(c, a, b, bias, dy);
    expect(tf.memory().numTensors).toBe(before);
    const expected = await onCpuWithStockGradients(() => run(c, a, b, bias, dy));
    expect(relativeError(actual.y, expected.y)).toBeLessThan(1e-5);
    expect(relativeError(actual.da, expected.da)).toBeLessThan(1e-5);
    expect(relativeError(actual.db, expected.db)).toBeLessThan(1e-5);
  });
});
