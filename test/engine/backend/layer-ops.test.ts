import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { backendInfo } from '../../../src/engine/backend/backend.js';
import {
  type ActivationFn,
  activation,
  groupedConv2d,
  layerKernelsAvailable,
  layerNorm,
  softmaxRows,
} from '../../../src/engine/backend/layer-ops.js';
import { loadAddon } from '../../../src/engine/backend/onednn/addon.js';
import { Rng } from '../../../src/util/random.js';
import { onCpuWithStockGradients, relativeError } from './gradients/cpu-reference.js';

/**
 * The layer ops of imported models (layer-ops.ts): grouped convolution, layer normalisation, the
 * softmax of rows and GELU / swish / hard swish / hard sigmoid, forward and gradients, against the
 * same op composed of tfjs ops on the cpu backend (<= 1e-4 relative). On `default` they run as the
 * oneDNN addon's kernels; on the other projects the op is the composition itself.
 */

const rng = new Rng(2026_12_07_23);
const TOLERANCE = 1e-4;
const onOnednn = backendInfo().kernels === 'onednn';

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * The filter [kh, kw, I, O] of a convolution dilated by `rate`, as the undilated filter with `rate - 1`
 * zeros between taps (tfjs's cpu gradients refuse dilations): differentiable.
 */
function spreadFilter(filter: tf.Tensor4D, rate: number): tf.Tensor4D {
  if (rate === 1) return filter;
  const spreadAxis = (k: tf.Tensor4D, axis: 0 | 1): tf.Tensor4D => {
    const taps = k.shape[axis];
    const withGaps = tf.concat(
      [
        tf.expandDims(k, axis + 1),
        tf.zeros([...k.shape.slice(0, axis + 1), rate - 1, ...k.shape.slice(axis + 1)]),
      ],
      axis + 1,
    );
    const shape = [...k.shape];
    shape[axis] = taps * rate;
    const begin = [0, 0, 0, 0];
    const sliced = [...k.shape];
    sliced[axis] = (taps - 1) * rate + 1;
    return tf.slice(tf.reshape(withGaps, shape), begin, sliced) as tf.Tensor4D;
  };
  return spreadAxis(spreadAxis(filter, 0), 1);
}

/**
 * Values of `run`'s tensors here and on the cpu backend (the composed ops; `reference` true there), as
 * relative errors.
 */
async function errorsAgainstCpu(run: (reference: boolean) => tf.Tensor[]): Promise<number[]> {
  const values = (reference: boolean) =>
    tf.tidy(() => run(reference).map((t) => t.dataSync() as Float32Array));
  const before = tf.memory().numTensors;
  const actual = values(false);
  expect(tf.memory().numTensors).toBe(before);
  const expected = await onCpuWithStockGradients(() => values(true));
  expect(actual.length).toBe(expected.length);
  return actual.map((a, i) => relativeError(a, expected[i]));
}

type GroupedCase = readonly [string, number, number, number, [number, number], [number, number]];
const groupedCases: GroupedCase[] = [
  ['4 groups, stride 2, padded', 4, 8, 12, [2, 2], [1, 1]],
  ['depthwise-like: groups = channels', 6, 6, 6, [1, 1], [1, 1]],
  // The composed op differentiates a dilated convolution only where the backend's conv2d gradient
  // does (tfjs's cpu backend does not): the dilated case checks the oneDNN kernels.
  ...(onOnednn ? [['2 groups, dilated', 2, 6, 4, [1, 1], [2, 2]] as GroupedCase] : []),
];

describe('layer ops', () => {
  it('run as single kernels exactly where the oneDNN kernels are installed', () => {
    expect(layerKernelsAvailable()).toBe(onOnednn);
  });

  it.each(['gelu', 'swish', 'hardswish', 'hardsigmoid'] as ActivationFn[])(
    'activation %s: values and input gradient match the composition',
    async (fn) => {
      const shape = [3, 5, 7];
      // Spread over [-6, 6] so that hard swish's and hard sigmoid's three pieces all occur.
      const x = rng.normals(size(shape)).map((v) => 3 * v);
      const w = rng.normals(size(shape));
      const errors = await errorsAgainstCpu(() => {
        const input = tf.tensor(x, shape);
        const y = activation(input, fn);
        const grad = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(activation(a, fn), tf.tensor(w, shape))))(input);
        return [y, grad];
      });
      for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it.each([
    ['with offset', true],
    ['without offset', false],
  ] as const)(
    'layerNorm %s: values and the gradients of x, scale and offset match',
    async (_, withOffset) => {
      const [rows, width] = [6, 20];
      const x = rng.normals(rows * width).map((v, i) => 2 * v + (i % 3));
      const scale = rng.normals(width);
      const offset = rng.normals(width);
      const w = rng.normals(rows * width);
      const errors = await errorsAgainstCpu(() => {
        const inputs = [tf.tensor2d(x, [rows, width]), tf.tensor1d(scale), tf.tensor1d(offset)];
        const f = (a: tf.Tensor, s: tf.Tensor, o: tf.Tensor) =>
          layerNorm(a as tf.Tensor2D, s as tf.Tensor1D, withOffset ? (o as tf.Tensor1D) : undefined, 1e-5);
        const y = f(inputs[0], inputs[1], inputs[2]);
        const grads = tf.grads((a: tf.Tensor, s: tf.Tensor, o: tf.Tensor) =>
          tf.sum(
            tf.mul(withOffset ? f(a, s, o) : tf.add(f(a, s, o), tf.mul(o, 0)), tf.tensor2d(w, [rows, width])),
          ),
        )(inputs);
        return [y, ...grads];
      });
      for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it('softmaxRows: values and input gradient match tf.softmax', async () => {
    const [rows, width] = [5, 13];
    const x = rng.normals(rows * width).map((v) => 4 * v);
    const w = rng.normals(rows * width);
    const errors = await errorsAgainstCpu(() => {
      const input = tf.tensor2d(x, [rows, width]);
      const y = softmaxRows(input);
      const grad = tf.grad((a: tf.Tensor) =>
        tf.sum(tf.mul(softmaxRows(a as tf.Tensor2D), tf.tensor2d(w, [rows, width]))),
      )(input);
      return [y, grad];
    });
    for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
  });

  it.each(groupedCases)(
    'groupedConv2d %s: values and the gradients of x, filter and bias match',
    async (_, groups, inChannels, outChannels, strides, dilations) => {
      const xShape = [2, 7, 7, inChannels];
      const filterShape = [3, 3, inChannels / groups, outChannels];
      const x = rng.normals(size(xShape));
      const filter = rng.normals(size(filterShape));
      const bias = rng.normals(outChannels);
      const pad: [[number, number], [number, number], [number, number], [number, number]] = [
        [0, 0],
        [1, 2],
        [1, 0],
        [0, 0],
      ];
      const errors = await errorsAgainstCpu((reference) => {
        const inputs = [
          tf.tensor4d(x, xShape as [number, number, number, number]),
          tf.tensor4d(filter, filterShape as [number, number, number, number]),
          tf.tensor1d(bias),
        ];
        // The cpu reference spreads the filter instead of dilating (one rate for both axes here).
        const f = (a: tf.Tensor, k: tf.Tensor, b: tf.Tensor) =>
          reference
            ? groupedConv2d(
                a as tf.Tensor4D,
                spreadFilter(k as tf.Tensor4D, dilations[0]),
                b as tf.Tensor1D,
                groups,
                [...strides],
                pad,
                [1, 1],
              )
            : groupedConv2d(a as tf.Tensor4D, k as tf.Tensor4D, b as tf.Tensor1D, groups, [...strides], pad, [
                ...dilations,
              ]);
        const y = f(inputs[0], inputs[1], inputs[2]);
        const w = tf.randomNormal(y.shape, 0, 1, 'float32', 7);
        const grads = tf.grads((a: tf.Tensor, k: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(a, k, b), w)))(
          inputs,
        );
        return [y, ...grads];
      });
      for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it('groupedConv2d refuses a filter that does not fit the groups', () => {
    const x = tf.zeros([1, 4, 4, 6]) as tf.Tensor4D;
    const filter = tf.zeros([3, 3, 2, 5]) as tf.Tensor4D;
    expect(() => groupedConv2d(x, filter, undefined, 3, [1, 1], 'valid', [1, 1])).toThrow(
      'filter [3,3,2,5] does not fit 3 groups of [1,4,4,6]',
    );
    tf.dispose([x, filter]);
  });
});

describe.runIf(onOnednn)('oneDNN layer kernels', () => {
  it('check every offset and size against the heap: a JavaScript error, never a crash', () => {
    const { addon } = loadAddon();
    if (!addon) throw new Error('the addon must load where its kernels are installed');
    const heap = new ArrayBuffer(4 * 64);
    // [4, 8] rows: 32 values at 0, y at 128 bytes, mean and variance would run past the end.
    expect(() => addon.layerNormForward(heap, [4, 8], 0, -1, -1, 128, 240, 248, 1e-5)).toThrow(RangeError);
    expect(() => addon.layerNormForward(heap, [4, 8], 0, -1, -1, 128, 0, 16, -1)).toThrow(/'epsilon'/);
    expect(() => addon.softmaxForward(heap, [4, 8], 0, 4 * 40)).toThrow(/'dst'/);
    expect(() => addon.softmaxBackward(heap, [0, 8], 0, 0, 0)).toThrow(RangeError);
    expect(() => addon.activationForward(heap, 9, 8, 0, 64)).toThrow(RangeError);
    expect(() => addon.activationBackward(heap, 0, 65, 0, 0, 0)).toThrow(/'diffDst'|'src'|'diffSrc'/);
    // Within the heap, every call runs.
    addon.softmaxForward(heap, [4, 8], 0, 128);
    const y = new Float32Array(heap, 128, 32);
    expect(y[0] * 8).toBeCloseTo(1, 6);
  });
});
