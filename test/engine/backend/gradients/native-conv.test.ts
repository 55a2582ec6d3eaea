import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { backendInfo } from '../../../../src/engine/backend/backend.js';
import type { ConvPad } from '../../../../src/engine/backend/gradients/conv2d.js';
import {
  nativeConv2D,
  nativeConvAvailable,
  nativeCorrelation,
  nativeFilterGradient,
} from '../../../../src/engine/backend/gradients/native-conv.js';
import { Rng } from '../../../../src/util/random.js';
import { onCpuWithStockGradients, relativeError } from './cpu-reference.js';

/**
 * The native (WebAssembly SIMD) filter gradient against tfjs's stock Conv2DBackpropFilter kernel on
 * the cpu backend, over the shapes its loops special-case: input-channel blocks of 4 with tails of
 * 1-3, output-channel blocks of 8 and 4 with scalar tails, strides, paddings that cut windows at
 * every border, non-square kernels.
 */

const rng = new Rng(2_026_112_4);
const onWasm = backendInfo().name === 'wasm';

interface Case {
  x: [number, number, number, number];
  filter: [number, number, number, number];
  strides: number | [number, number];
  pad: ConvPad;
}

function outputShape(c: Case): [number, number, number, number] {
  const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad);
  return [info.batchSize, info.outHeight, info.outWidth, info.outChannels];
}

function referenceFilterGradient(c: Case, x: Float32Array, dy: Float32Array): Promise<Float32Array> {
  return onCpuWithStockGradients(() =>
    tf.tidy(() => {
      const attrs = { strides: c.strides, pad: c.pad, dataFormat: 'NHWC', filterShape: c.filter };
      const inputs = { x: tf.tensor4d(x, c.x), dy: tf.tensor4d(dy, outputShape(c)) };
      const result = tf.engine().runKernel(tf.Conv2DBackpropFilter, inputs, attrs) as tf.Tensor;
      return result.dataSync() as Float32Array;
    }),
  );
}

function computeNatively(c: Case, x: Float32Array, dy: Float32Array): Float32Array {
  return tf.tidy(() => {
    const info = nativeFilterGradient(
      tf.tensor4d(x, c.x),
      tf.tensor4d(dy, outputShape(c)),
      c.filter,
      c.strides,
      c.pad,
    );
    if (!info) throw new Error('the native filter gradient did not run');
    return info.dataSync() as Float32Array;
  });
}

const cases: Case[] = [];
// Input channels 1-9 (blocks of 4 and every tail) against output channels that take every path:
// 8-blocks, a 4-block, scalar tails.
for (const inChannels of [1, 2, 3, 4, 5, 7, 9]) {
  for (const outChannels of [1, 3, 4, 8, 13, 20]) {
    cases.push({
      x: [2, 7, 6, inChannels],
      filter: [3, 3, inChannels, outChannels],
      strides: 1,
      pad: 'same',
    });
  }
}
cases.push(
  { x: [3, 9, 9, 8], filter: [3, 3, 8, 16], strides: 2, pad: 'same' },
  { x: [2, 10, 11, 5], filter: [5, 5, 5, 12], strides: 3, pad: 'valid' },
  { x: [2, 11, 9, 4], filter: [2, 4, 4, 8], strides: [1, 2], pad: 'same' },
  { x: [1, 8, 8, 6], filter: [7, 7, 6, 8], strides: 1, pad: 'same' },
  { x: [2, 6, 7, 3], filter: [1, 1, 3, 16], strides: 2, pad: 'valid' },
  { x: [2, 6, 6, 4], filter: [3, 3, 4, 8], strides: 1, pad: 2 },
  {
    x: [2, 8, 7, 4],
    filter: [3, 2, 4, 8],
    strides: 2,
    pad: [
      [0, 0],
      [2, 0],
      [0, 3],
      [0, 0],
    ],
  },
  // A smallCnn-sized layer (batch cut to 4).
  { x: [4, 16, 16, 32], filter: [3, 3, 32, 64], strides: 1, pad: 'same' },
);

const label = (c: Case) =>
  `x [${c.x}], filter [${c.filter}], strides ${c.strides}, pad ${JSON.stringify(c.pad)}`;

describe('native module build', () => {
  it('the committed conv.wasm was built from the committed conv.c (npm run build:native after editing it)', async () => {
    const folder = new URL('../../../../src/engine/backend/gradients/native/', import.meta.url);
    const source = await readFile(new URL('conv.c', folder));
    const recorded = (await readFile(new URL('conv.wasm.source-sha256', folder), 'utf8')).trim();
    expect(createHash('sha256').update(source).digest('hex')).toBe(recorded);
  });
});

describe.runIf(onWasm)('native filter gradient on wasm', () => {
  it('is available on the wasm backend', () => {
    expect(nativeConvAvailable()).toBe(true);
  });

  it.each(cases.map((c) => [label(c), c] as const))('matches the cpu reference: %s', async (_, c) => {
    const x = rng.normals(c.x.reduce((a, b) => a * b, 1));
    const dy = rng.normals(outputShape(c).reduce((a, b) => a * b, 1));
    const expected = await referenceFilterGradient(c, x, dy);
    expect(relativeError(computeNatively(c, x, dy), expected)).toBeLessThanOrEqual(1e-5);
  });

  it('matches the cpu reference on 40 random geometries (sizes, kernels, strides, paddings, channels)', async () => {
    const pick = new Rng(77);
    const pads: ConvPad[] = ['same', 'valid', 0, 1, 2];
    let checked = 0;
    while (checked < 40) {
      const kernel: [number, number] = [1 + pick.int(5), 1 + pick.int(5)];
      const c: Case = {
        x: [1 + pick.int(3), 1 + pick.int(12), 1 + pick.int(12), 1 + pick.int(9)],
        filter: [kernel[0], kernel[1], 0, 1 + pick.int(17)],
        strides: [1 + pick.int(3), 1 + pick.int(3)],
        pad: pads[pick.int(pads.length)],
      };
      c.filter[2] = c.x[3];
      const [, outHeight, outWidth] = outputShape(c);
      if (outHeight < 1 || outWidth < 1) continue; // the kernel does not fit this input
      const x = rng.normals(c.x.reduce((a, b) => a * b, 1));
      const dy = rng.normals(outputShape(c).reduce((a, b) => a * b, 1));
      const expected = await referenceFilterGradient(c, x, dy);
      expect(relativeError(computeNatively(c, x, dy), expected), label(c)).toBeLessThanOrEqual(1e-5);
      checked++;
    }
  });

  it('a 1x1 convolution gives dW = x^T dy exactly', () => {
    // Two pixels, channels 2 -> 1: dW[ci] = sum over pixels of x[p, ci] * dy[p].
    const c: Case = { x: [1, 1, 2, 2], filter: [1, 1, 2, 1], strides: 1, pad: 'valid' };
    const dW = computeNatively(c, Float32Array.from([1, 2, 3, 4]), Float32Array.from([10, 100]));
    expect(Array.from(dW)).toEqual([1 * 10 + 3 * 100, 2 * 10 + 4 * 100]);
  });

  it('rejects a dy whose shape is not the convolution output (it would read past the tensor)', () => {
    const x = tf.zeros([2, 8, 8, 3]);
    const dy = tf.zeros([2, 8, 8, 5]);
    expect(() => nativeFilterGradient(x, dy, [3, 3, 3, 4], 1, 'same')).toThrow(
      "'dy' must have the convolution's output shape [2,8,8,4], got [2,8,8,5]",
    );
    expect(() => nativeFilterGradient(x, dy, [3, 3, 2, 5], 1, 'same')).toThrow(
      "'filterShape' [3,3,2,5] must be [kh, kw, 3, outChannels] for x [2,8,8,3]",
    );
    tf.dispose([x, dy]);
  });

  it('leaves tensors, bytes and every other tensor on the heap as they were', () => {
    const bystander = tf.tensor1d(rng.normals(4096));
    const before = Array.from(bystander.dataSync());
    const x = tf.randomNormal([4, 12, 12, 16]);
    const dy = tf.randomNormal([4, 12, 12, 24]);
    nativeFilterGradient(x, dy, [3, 3, 16, 24], 1, 'same')?.dispose();
    const memory = tf.memory();
    for (let i = 0; i < 3; i++) {
      nativeFilterGradient(x, dy, [3, 3, 16, 24], 1, 'same')?.dispose();
    }
    expect(tf.memory().numTensors).toBe(memory.numTensors);
    expect(tf.memory().numBytes).toBe(memory.numBytes);
    expect(Array.from(bystander.dataSync())).toEqual(before);
    tf.dispose([bystander, x, dy]);
  });

  it('an outer tape gets the differentiable formulation: the gradient of a filter-gradient penalty', async () => {
    // d/dx of || dL/dW ||^2: the inner filter gradient runs while the outer tape records, so it must
    // be made of tensor ops (the native result would be a constant and the outer gradient zero).
    const xValues = rng.normals(2 * 5 * 5 * 3);
    const filterValues = rng.normals(3 * 3 * 3 * 4);
    const weights = rng.normals(2 * 5 * 5 * 4);
    const run = () =>
      tf.tidy(() => {
        const filter = tf.tensor4d(filterValues, [3, 3, 3, 4]);
        const penalty = (x: tf.Tensor) => {
          const loss = (w: tf.Tensor) =>
            tf.sum(
              tf.mul(
                tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, 'same'),
                tf.tensor(weights, [2, 5, 5, 4]),
              ),
            );
          return tf.sum(tf.square(tf.grad(loss)(filter)));
        };
        return tf
          .grad(penalty)(tf.tensor4d(xValues, [2, 5, 5, 3]))
          .dataSync() as Float32Array;
      });
    // dW is linear in x, dW = A x, so the gradient of ||dW||^2 is 2 A^T dW, and A^T maps a filter G to
    // the input gradient of conv(x, G) under the same upstream weights: computed with tfjs's stock
    // first-order gradients on cpu (they cannot differentiate a filter gradient themselves).
    const expected = await onCpuWithStockGradients(() =>
      tf.tidy(() => {
        const x = tf.tensor4d(xValues, [2, 5, 5, 3]);
        const upstream = tf.tensor(weights, [2, 5, 5, 4]);
        const loss = (input: tf.Tensor, w: tf.Tensor) =>
          tf.sum(tf.mul(tf.conv2d(input as tf.Tensor4D, w as tf.Tensor4D, 1, 'same'), upstream));
        const dW = tf.grad((w: tf.Tensor) => loss(x, w))(tf.tensor4d(filterValues, [3, 3, 3, 4]));
        const adjoint = tf.grad((input: tf.Tensor) => loss(input, dW))(x);
        return tf.mul(adjoint, 2).dataSync() as Float32Array;
      }),
    );
    const actual = run();
    expect(Math.max(...expected.map(Math.abs))).toBeGreaterThan(0);
    expect(relativeError(actual, expected)).toBeLessThanOrEqual(1e-4);
  });
});

interface CorrelationCase {
  input: [number, number, number, number];
  filter: [number, number, number, number];
  pads: [[number, number], [number, number]];
}

/** A case whose pads are [top, bottom] rows and [left, right] columns. */
const correlation = (
  input: CorrelationCase['input'],
  filter: CorrelationCase['filter'],
  [top, bottom, left, right]: [number, number, number, number],
): CorrelationCase => ({
  input,
  filter,
  pads: [
    [top, bottom],
    [left, right],
  ],
});

const correlationCases: CorrelationCase[] = [];
// Output channels 1-13 (vector blocks of 8 and 4, partial stores of 1-3 lanes) against input
// channels 1-9; widths 7 and 9 leave pixel tails after the tiles of 4.
for (const inChannels of [1, 3, 4, 9]) {
  for (const outChannels of [1, 2, 3, 4, 5, 8, 13]) {
    const width = inChannels % 2 === 0 ? 7 : 9;
    correlationCases.push(
      correlation([2, 6, width, inChannels], [3, 3, inChannels, outChannels], [1, 1, 1, 1]),
    );
  }
}
correlationCases.push(
  correlation([1, 9, 9, 5], [5, 2, 5, 6], [2, 0, 0, 3]),
  correlation([3, 4, 5, 8], [1, 1, 8, 16], [0, 0, 0, 0]),
  correlation([2, 5, 5, 6], [5, 5, 6, 4], [0, 0, 0, 0]),
  correlation([4, 16, 16, 64], [3, 3, 64, 32], [1, 1, 1, 1]),
);

const correlationLabel = (c: CorrelationCase) =>
  `input [${c.input}], filter [${c.filter}], pads ${JSON.stringify(c.pads)}`;

/** Relative error of the native correlation against the cpu backend's stock conv2d on random values. */
async function correlationError(c: CorrelationCase): Promise<number> {
  const input = rng.normals(c.input.reduce((a, b) => a * b, 1));
  const filter = rng.normals(c.filter.reduce((a, b) => a * b, 1));
  const expected = await onCpuWithStockGradients(() =>
    tf.tidy(
      () =>
        tf
          .conv2d(tf.tensor4d(input, c.input), tf.tensor4d(filter, c.filter), 1, [[0, 0], ...c.pads, [0, 0]])
          .dataSync() as Float32Array,
    ),
  );
  const actual = tf.tidy(() => {
    const result = nativeCorrelation(tf.tensor4d(input, c.input), tf.tensor4d(filter, c.filter), c.pads);
    if (!result) throw new Error('the native correlation did not run');
    return result.dataSync() as Float32Array;
  });
  return relativeError(actual, expected);
}

describe.runIf(onWasm)('native correlation (the convolution of the input gradient) on wasm', () => {
  it.each(correlationCases.map((c) => [correlationLabel(c), c] as const))(
    'matches the cpu reference conv2d: %s',
    async (_, c) => {
      expect(await correlationError(c)).toBeLessThanOrEqual(1e-5);
    },
  );

  it('matches the cpu reference conv2d on 40 random geometries', async () => {
    const pick = new Rng(78);
    for (let i = 0; i < 40; i++) {
      const c: CorrelationCase = {
        input: [1 + pick.int(3), 1 + pick.int(10), 1 + pick.int(10), 1 + pick.int(9)],
        filter: [1 + pick.int(5), 1 + pick.int(5), 0, 1 + pick.int(17)],
        pads: [
          [pick.int(3), pick.int(3)],
          [pick.int(3), pick.int(3)],
        ],
      };
      c.filter[2] = c.input[3];
      // Keep the filter inside the padded input.
      c.filter[0] = Math.min(c.filter[0], c.input[1] + c.pads[0][0] + c.pads[0][1]);
      c.filter[1] = Math.min(c.filter[1], c.input[2] + c.pads[1][0] + c.pads[1][1]);
      expect(await correlationError(c), correlationLabel(c)).toBeLessThanOrEqual(1e-5);
    }
  });

  it('rejects a filter whose input channels do not match, and a filter larger than the padded input', () => {
    const input = tf.zeros([1, 4, 4, 3]) as tf.Tensor4D;
    const wrongChannels = tf.zeros([3, 3, 2, 4]) as tf.Tensor4D;
    const tooLarge = tf.zeros([7, 7, 3, 4]) as tf.Tensor4D;
    const noPads: [[number, number], [number, number]] = [
      [0, 0],
      [0, 0],
    ];
    expect(() => nativeCorrelation(input, wrongChannels, noPads)).toThrow(
      "'filter' must have 3 input channels, got [3,3,2,4]",
    );
    expect(() => nativeCorrelation(input, tooLarge, noPads)).toThrow(
      'the padded input [1,4,4,3] is too small for the filter [7,7,3,4]',
    );
    tf.dispose([input, wrongChannels, tooLarge]);
  });

  it('leaves tf.memory().numTensors and numBytes as they were', () => {
    const input = tf.randomNormal([2, 8, 8, 6]) as tf.Tensor4D;
    const filter = tf.randomNormal([3, 3, 6, 5]) as tf.Tensor4D;
    const pads: [[number, number], [number, number]] = [
      [1, 1],
      [1, 1],
    ];
    nativeCorrelation(input, filter, pads)?.dispose();
    const before = tf.memory();
    for (let i = 0; i < 3; i++) nativeCorrelation(input, filter, pads)?.dispose();
    expect(tf.memory().numTensors).toBe(before.numTensors);
    expect(tf.memory().numBytes).toBe(before.numBytes);
    tf.dispose([input, filter]);
  });
});

describe.runIf(onWasm)('native forward convolution (Conv2D and FusedConv2D on wasm)', () => {
  type Activation = 'linear' | 'relu' | 'elu';
  interface ForwardCase {
    x: [number, number, number, number];
    filter: [number, number, number, number];
    strides: [number, number];
    pad: ConvPad;
    bias: boolean;
    activation: Activation;
  }

  function randomCase(pick: Rng): ForwardCase {
    const pads: ConvPad[] = ['same', 'valid', 0, 1, 2];
    const activations: Activation[] = ['linear', 'relu', 'elu'];
    const inChannels = 1 + pick.int(9);
    const kernel = [1 + pick.int(5), 1 + pick.int(5)];
    const pad = pads[pick.int(pads.length)];
    const activation = activations[pick.int(activations.length)];
    const strides: [number, number] = [1 + pick.int(3), 1 + pick.int(3)];
    // A numeric pad stays on tfjs's own kernel, whose output size for it is only right with a square
    // kernel and equal strides (tfjs 4.22 uses the height's for both axes; otherwise its wasm kernel
    // writes past the output): only such geometries are compared for it.
    if (typeof pad === 'number') {
      kernel[1] = kernel[0];
      strides[1] = strides[0];
    }
    return {
      x: [1 + pick.int(3), 1 + pick.int(12), 1 + pick.int(12), inChannels],
      filter: [kernel[0], kernel[1], inChannels, 1 + pick.int(17)],
      strides,
      pad,
      bias: pick.int(2) === 1,
      activation,
    };
  }

  /** tf.fused.conv2d as a model layer calls it: through the FusedConv2D kernel (Conv2D without extras). */
  function fusedConv(
    c: ForwardCase,
    x: Float32Array,
    filter: Float32Array,
    bias: Float32Array,
  ): Float32Array {
    return tf.tidy(
      () =>
        tf.fused
          .conv2d({
            x: tf.tensor4d(x, c.x),
            filter: tf.tensor4d(filter, c.filter),
            strides: c.strides,
            pad: c.pad as 'same' | 'valid' | number,
            bias: c.bias ? tf.tensor1d(bias) : undefined,
            activation: c.activation,
          })
          .dataSync() as Float32Array,
    );
  }

  it('matches the cpu reference on 60 random geometries, with and without bias, linear / ReLU / ELU', async () => {
    const pick = new Rng(79);
    let checked = 0;
    while (checked < 60) {
      const c = randomCase(pick);
      const info = tf.backend_util.computeConv2DInfo(c.x, c.filter, c.strides, 1, c.pad);
      if (info.outHeight < 1 || info.outWidth < 1) continue;
      const x = rng.normals(c.x.reduce((a, b) => a * b, 1));
      const filter = rng.normals(c.filter.reduce((a, b) => a * b, 1));
      const bias = rng.normals(c.filter[3]);
      const expected = await onCpuWithStockGradients(() => fusedConv(c, x, filter, bias));
      expect(relativeError(fusedConv(c, x, filter, bias), expected), JSON.stringify(c)).toBeLessThanOrEqual(
        1e-5,
      );
      checked++;
    }
  });

  it('adds the bias per output channel and clamps at 0 exactly (1x1 kernel)', () => {
    // Two pixels, channels 2 -> 2: y = x W + b, then ReLU.
    const y = tf.tidy(() => {
      const result = nativeConv2D(
        tf.tensor4d([1, 2, 3, 4], [1, 1, 2, 2]),
        tf.tensor4d([1, 0, 0, -1], [1, 1, 2, 2]),
        {
          strides: 1,
          pad: 'valid',
          bias: tf.tensor1d([0.5, 1]),
          activation: 'relu',
        },
      );
      if (!result) throw new Error('the native convolution did not run');
      return Array.from(result.dataSync());
    });
    // pixel 1: [1 + 0.5, -2 + 1] -> [1.5, 0]; pixel 2: [3 + 0.5, -4 + 1] -> [3.5, 0]
    expect(y).toEqual([1.5, 0, 3.5, 0]);
  });

  it('leaves tf.memory().numTensors as it was through a model forward pass', () => {
    const x = tf.randomUniform([2, 8, 8, 3]) as tf.Tensor4D;
    const filter = tf.randomNormal([3, 3, 3, 8]) as tf.Tensor4D;
    const bias = tf.randomNormal([8]);
    const run = () =>
      tf.tidy(() => {
        tf.fused.conv2d({ x, filter, bias, activation: 'relu', pad: 'same', strides: 1 }).dataSync();
      });
    run();
    const before = tf.memory().numTensors;
    run();
    run();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, filter, bias]);
  });
});

describe.runIf(onWasm)('native kernels off wasm', () => {
  it('are not used on another backend: the portable formulation is', async () => {
    const check = () => {
      expect(nativeConvAvailable()).toBe(false);
      const x = tf.zeros([1, 4, 4, 2]) as tf.Tensor4D;
      const dy = tf.zeros([1, 4, 4, 3]) as tf.Tensor4D;
      const filter = tf.zeros([3, 3, 2, 3]) as tf.Tensor4D;
      expect(nativeFilterGradient(x, dy, [3, 3, 2, 3], 1, 'same')).toBeNull();
      expect(
        nativeCorrelation(x, filter, [
          [1, 1],
          [1, 1],
        ]),
      ).toBeNull();
      tf.dispose([x, dy, filter]);
    };
    await onCpuWithStockGradients(check);
    expect(nativeConvAvailable()).toBe(true);
  });
});
