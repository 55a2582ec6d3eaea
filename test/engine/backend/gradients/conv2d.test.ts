import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backendInfo } from '../../../../src/engine/backend/backend.js';
import {
  conv2dFilterGradient,
  conv2dInputGradient,
} from '../../../../src/engine/backend/gradients/conv2d.js';
import {
  useFastConvGradients,
  useStockConvGradients,
} from '../../../../src/engine/backend/gradients/register.js';
import { Rng } from '../../../../src/util/random.js';
import { onCpuWithStockGradients, relativeError } from './cpu-reference.js';

/**
 * Every fast gradient is checked against tfjs's own gradients on the `cpu` backend (the reference
 * implementation), over strides, paddings, kernel sizes, odd/even sizes and batch sizes. The suite
 * runs once per backend (vitest projects), so the fast path is exercised on cpu and on wasm.
 */

type Pad = 'same' | 'valid';
interface Case {
  batch: number;
  height: number;
  width: number;
  inChannels: number;
  outChannels: number;
  kernel: number;
  stride: number;
  pad: Pad;
}

interface Grads {
  dx: Float32Array;
  dFilter: Float32Array;
}

const rng = new Rng(20_200_817);
const testBackend = () => backendInfo().name;

interface Inputs {
  x: Float32Array;
  filter: Float32Array;
  /** Weights of the scalar loss sum(weights * y), so that dy is not all ones. */
  weights: Float32Array;
}

function outSize(size: number, kernel: number, stride: number, pad: Pad): number {
  return pad === 'same' ? Math.ceil(size / stride) : Math.ceil((size - kernel + 1) / stride);
}

function makeInputs(c: Case): Inputs {
  const outH = outSize(c.height, c.kernel, c.stride, c.pad);
  const outW = outSize(c.width, c.kernel, c.stride, c.pad);
  return {
    x: rng.normals(c.batch * c.height * c.width * c.inChannels),
    filter: rng.normals(c.kernel * c.kernel * c.inChannels * c.outChannels),
    weights: rng.normals(c.batch * outH * outW * c.outChannels),
  };
}

/** dL/dx and dL/dW of L = sum(weights * conv(x, W)) through `conv`, on the current backend. */
function gradients(
  c: Case,
  inputs: Inputs,
  conv: (x: tf.Tensor4D, filter: tf.Tensor4D) => tf.Tensor4D,
): Grads {
  return tf.tidy(() => {
    const x = tf.tensor4d(inputs.x, [c.batch, c.height, c.width, c.inChannels]);
    const filter = tf.tensor4d(inputs.filter, [c.kernel, c.kernel, c.inChannels, c.outChannels]);
    const loss = (xs: tf.Tensor4D, ws: tf.Tensor4D) => {
      const y = conv(xs, ws);
      return tf.sum(tf.mul(y, tf.tensor(inputs.weights, y.shape)));
    };
    const [dx, dFilter] = tf.grads(loss as (...args: tf.Tensor[]) => tf.Tensor)([x, filter]);
    return { dx: dx.dataSync() as Float32Array, dFilter: dFilter.dataSync() as Float32Array };
  });
}

/** The same computation with tfjs's stock gradients on the cpu backend. */
async function referenceGradients(
  c: Case,
  inputs: Inputs,
  conv: (x: tf.Tensor4D, filter: tf.Tensor4D) => tf.Tensor4D,
): Promise<Grads> {
  return onCpuWithStockGradients(() => gradients(c, inputs, conv));
}

const plainConv = (c: Case) => (x: tf.Tensor4D, filter: tf.Tensor4D) => tf.conv2d(x, filter, c.stride, c.pad);
// A linear fused convolution differentiates through the Conv2DBackprop* kernels, not the Conv2D
// gradient: the path tf.layers takes for a convolution without activation.
const fusedLinearConv = (c: Case) => (x: tf.Tensor4D, filter: tf.Tensor4D) =>
  tf.fused.conv2d({ x, filter, strides: c.stride, pad: c.pad, activation: 'linear' });

function grid(): Case[] {
  const cases: Case[] = [];
  for (const stride of [1, 2]) {
    for (const pad of ['same', 'valid'] as Pad[]) {
      for (const kernel of [1, 3, 5]) {
        for (const [height, width] of [
          [8, 8],
          [9, 7],
        ]) {
          for (const batch of [1, 3]) {
            cases.push({ batch, height, width, inChannels: 3, outChannels: 4, kernel, stride, pad });
          }
        }
      }
    }
  }
  return cases;
}

const name = (c: Case) =>
  `k${c.kernel} s${c.stride} ${c.pad} ${c.height}x${c.width} batch ${c.batch} (${c.inChannels}->${c.outChannels})`;

/** Expects the fast dx and dW of `conv` on case `c` within 1e-4 relative error of the cpu reference. */
async function expectReferenceGradients(
  c: Case,
  conv: (x: tf.Tensor4D, filter: tf.Tensor4D) => tf.Tensor4D,
): Promise<void> {
  const inputs = makeInputs(c);
  const expected = await referenceGradients(c, inputs, conv);
  const actual = gradients(c, inputs, conv);
  expect(relativeError(actual.dx, expected.dx), `dx ${name(c)}`).toBeLessThanOrEqual(1e-4);
  expect(relativeError(actual.dFilter, expected.dFilter), `dW ${name(c)}`).toBeLessThanOrEqual(1e-4);
}

describe('fast Conv2D gradients match tfjs cpu reference', () => {
  beforeAll(() => useFastConvGradients(testBackend()));

  it.each(grid())(
    'Conv2D gradient, $kernel x $kernel, stride $stride, $pad, $height x $width, batch $batch',
    (c) => expectReferenceGradients(c, plainConv(c)),
  );

  const extra: Case[] = [
    // even and large kernels, wider channels, sizes the stride does not divide
    { batch: 2, height: 10, width: 11, inChannels: 5, outChannels: 6, kernel: 2, stride: 2, pad: 'same' },
    { batch: 2, height: 11, width: 10, inChannels: 2, outChannels: 3, kernel: 4, stride: 1, pad: 'same' },
    { batch: 2, height: 12, width: 9, inChannels: 3, outChannels: 2, kernel: 4, stride: 2, pad: 'valid' },
    { batch: 2, height: 13, width: 13, inChannels: 2, outChannels: 4, kernel: 6, stride: 2, pad: 'same' },
    { batch: 1, height: 15, width: 14, inChannels: 3, outChannels: 5, kernel: 7, stride: 2, pad: 'valid' },
    { batch: 2, height: 9, width: 9, inChannels: 4, outChannels: 3, kernel: 7, stride: 1, pad: 'same' },
    { batch: 4, height: 8, width: 8, inChannels: 16, outChannels: 8, kernel: 3, stride: 1, pad: 'same' },
  ];

  it.each(extra)(
    'Conv2D gradient, $kernel x $kernel, stride $stride, $pad, $height x $width, $inChannels->$outChannels',
    (c) => expectReferenceGradients(c, plainConv(c)),
  );

  const fusedCases = grid().filter((c) => c.batch === 3 && c.kernel !== 1);
  it.each(fusedCases)(
    'fused linear conv (backprop kernels), $kernel x $kernel, stride $stride, $pad, $height x $width',
    (c) => expectReferenceGradients(c, fusedLinearConv(c)),
  );

  it('conv2dTranspose (the Conv2DBackpropInput kernel forward) matches the cpu reference', async () => {
    const dy = rng.normals(2 * 5 * 5 * 4);
    const filter = rng.normals(3 * 3 * 6 * 4);
    const run = () =>
      tf.tidy(
        () =>
          tf
            .conv2dTranspose(
              tf.tensor4d(dy, [2, 5, 5, 4]),
              tf.tensor4d(filter, [3, 3, 6, 4]),
              [2, 10, 10, 6],
              2,
              'same',
            )
            .dataSync() as Float32Array,
      );
    const original = tf.getBackend();
    useStockConvGradients();
    await tf.setBackend('cpu');
    const expected = run();
    await tf.setBackend(original);
    useFastConvGradients(original);
    expect(relativeError(run(), expected)).toBeLessThanOrEqual(1e-4);
  });
});

describe('fast Conv2D gradient functions', () => {
  beforeAll(() => useFastConvGradients(testBackend()));

  it('a 1x1 stride-1 convolution has the closed-form gradients dx = dy W^T and dW = x^T dy', () => {
    // x: one example, 1x2 pixels, 2 channels; W maps 2 -> 1 channel.
    const x = tf.tensor4d([1, 2, 3, 4], [1, 1, 2, 2]);
    const dy = tf.tensor4d([10, 100], [1, 1, 2, 1]);
    const filter = tf.tensor4d([0.5, -1], [1, 1, 2, 1]);
    const dx = conv2dInputGradient(x.shape, dy, filter, 1, 'valid');
    const dW = conv2dFilterGradient(x, dy, filter.shape, 1, 'valid');
    expect(Array.from(dx.dataSync())).toEqual([5, -10, 50, -100]);
    expect(Array.from(dW.dataSync())).toEqual([1 * 10 + 3 * 100, 2 * 10 + 4 * 100]);
    tf.dispose([x, dy, filter, dx, dW]);
  });

  it('names the argument at fault', () => {
    const x = tf.zeros([2, 3]);
    const filter = tf.zeros([1, 1, 3, 1]) as tf.Tensor4D;
    expect(() => conv2dFilterGradient(x as unknown as tf.Tensor4D, filter, [1, 1, 3, 1], 1, 'same')).toThrow(
      "'x' must be rank 4 (NHWC), got [2,3]",
    );
    expect(() => conv2dInputGradient([2, 3], filter, filter, 1, 'same')).toThrow("'xShape' must be rank 4");
    tf.dispose([x, filter]);
  });

  it('leaves tf.memory().numTensors unchanged after gradient computations', () => {
    const c: Case = {
      batch: 2,
      height: 9,
      width: 8,
      inChannels: 3,
      outChannels: 4,
      kernel: 3,
      stride: 2,
      pad: 'same',
    };
    const inputs = makeInputs(c);
    gradients(c, inputs, plainConv(c)); // warm-up: first calls may allocate backend caches
    const before = tf.memory().numTensors;
    gradients(c, inputs, plainConv(c));
    gradients(c, inputs, fusedLinearConv(c));
    const x = tf.tensor4d(inputs.x, [2, 9, 8, 3]);
    const filter = tf.tensor4d(inputs.filter, [3, 3, 3, 4]);
    const dy = tf.ones([2, 5, 4, 4]) as tf.Tensor4D;
    const dx = conv2dInputGradient(x.shape, dy, filter, 2, 'same');
    const dW = conv2dFilterGradient(x, dy, filter.shape, 2, 'same');
    tf.dispose([x, filter, dy, dx, dW]);
    expect(tf.memory().numTensors).toBe(before);
  });

  afterAll(() => useFastConvGradients(testBackend()));
});

describe('higher-order gradients', () => {
  beforeAll(() => useFastConvGradients(testBackend()));

  it('second derivatives through the Conv2D gradient match the reference (taped, so tensor ops are used)', async () => {
    const c: Case = {
      batch: 2,
      height: 6,
      width: 5,
      inChannels: 3,
      outChannels: 4,
      kernel: 3,
      stride: 1,
      pad: 'same',
    };
    const inputs = makeInputs(c);
    // d/dW of || dL/dx ||^2 (an input-gradient penalty) needs the gradient of the input gradient.
    const run = () =>
      tf.tidy(() => {
        const x = tf.tensor4d(inputs.x, [c.batch, c.height, c.width, c.inChannels]);
        const penalty = (filter: tf.Tensor) => {
          const loss = (xs: tf.Tensor) => {
            const y = tf.conv2d(xs as tf.Tensor4D, filter as tf.Tensor4D, c.stride, c.pad);
            return tf.sum(tf.mul(y, tf.tensor(inputs.weights, y.shape)));
          };
          return tf.sum(tf.square(tf.grad(loss)(x)));
        };
        const filter = tf.tensor4d(inputs.filter, [c.kernel, c.kernel, c.inChannels, c.outChannels]);
        return tf.grad(penalty)(filter).dataSync() as Float32Array;
      });
    const expected = await onCpuWithStockGradients(run);
    expect(relativeError(run(), expected)).toBeLessThanOrEqual(1e-4);
  });
});
