import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { backendInfo } from '../../../src/engine/backend/backend.js';
import { batchNormInTraining, batchNormTrainingIsNative } from '../../../src/engine/backend/batch-norm.js';
import { loadAddon } from '../../../src/engine/backend/onednn/addon.js';
import { BatchNormalization, batchNormalization } from '../../../src/engine/model/batch-norm-layer.js';
import { Rng } from '../../../src/util/random.js';
import { onCpuWithStockGradients, relativeError } from './gradients/cpu-reference.js';

/**
 * Batch normalisation in training mode as one op (batch-norm.ts), the BatchNormalization layer built on
 * it, and the native kernels behind it where the oneDNN addon runs (BatchNorm training statistics and
 * gradient, inference BatchNorm and its input gradient, ReLU and its gradient, same-shape Add), each
 * against tfjs's own composition on the cpu backend (<= 1e-4 relative): values, running statistics,
 * and gradients of input, gamma and beta. Every project runs this file: on `default` the kernels are
 * native, on `engine-cpu` and `engine-wasm-native` the op is tfjs's composition.
 */

const rng = new Rng(2026_12_07);
const TOLERANCE = 1e-4;
const onOnednn = backendInfo().kernels === 'onednn';

function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function values(tensors: tf.Tensor[]): Float32Array[] {
  return tensors.map((t) => t.dataSync() as Float32Array);
}

/** The largest relative error of `compute` here against the cpu backend with tfjs's own gradients. */
async function errorsAgainstCpu(data: Float32Array[], run: () => tf.Tensor[]): Promise<number[]> {
  const actual = tf.tidy(() => values(run()));
  const expected = await onCpuWithStockGradients(() => tf.tidy(() => values(run())));
  expect(actual.length).toBe(expected.length);
  expect(data.length).toBeGreaterThan(0);
  return actual.map((a, i) => relativeError(a, expected[i]));
}

const trainingShapes: number[][] = [
  [4, 5, 6, 7],
  [2, 3, 3, 16],
  [64, 10],
  [3, 1, 1, 33],
  [8, 4, 4, 64],
];

describe('batchNormInTraining', () => {
  it('runs natively exactly where the oneDNN kernels are installed', () => {
    expect(batchNormTrainingIsNative()).toBe(onOnednn);
  });

  it.each(trainingShapes.map((shape) => [shape.join('x'), shape] as const))(
    'values, batch statistics and the gradients of x, gamma and beta match tfjs (%s)',
    async (_, shape) => {
      const channels = shape[shape.length - 1];
      // An offset and a scale per channel, so that the statistics are not those of N(0, 1).
      const x = rng.normals(size(shape)).map((v, i) => 3 * v + (i % channels) - 2);
      const gamma = rng.normals(channels);
      const beta = rng.normals(channels);
      const weights = rng.normals(size(shape));
      const run = () => {
        const inputs = [tf.tensor(x, shape), tf.tensor1d(gamma), tf.tensor1d(beta)];
        const { y, mean, variance } = batchNormInTraining(
          inputs[0],
          inputs[1] as tf.Tensor1D,
          inputs[2] as tf.Tensor1D,
          1e-5,
        );
        const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
          tf.sum(
            tf.mul(
              batchNormInTraining(a, g as tf.Tensor1D, b as tf.Tensor1D, 1e-5).y,
              tf.tensor(weights, shape),
            ),
          ),
        )(inputs);
        return [y, mean, variance, ...grads];
      };
      const errors = await errorsAgainstCpu([x], run);
      expect(errors).toHaveLength(6);
      const names = ['y', 'mean', 'variance', 'dx', 'dgamma', 'dbeta'];
      for (const [i, error] of errors.entries()) expect(error, names[i]).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it('leaves numTensors as it found it, gradients included', () => {
    const before = tf.memory().numTensors;
    const x = tf.randomNormal([4, 3, 3, 8]);
    const gamma = tf.ones([8]) as tf.Tensor1D;
    const beta = tf.zeros([8]) as tf.Tensor1D;
    const { y, mean, variance } = batchNormInTraining(x, gamma, beta, 1e-3);
    const grads = tf.grads((a: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.square(batchNormInTraining(a, g as tf.Tensor1D, b as tf.Tensor1D, 1e-3).y)),
    )([x, gamma, beta]);
    tf.dispose([x, gamma, beta, y, mean, variance, ...grads]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names the argument when shapes do not fit', () => {
    const x = tf.zeros([2, 2, 2, 3]);
    expect(() =>
      batchNormInTraining(x, tf.ones([4]) as tf.Tensor1D, tf.zeros([3]) as tf.Tensor1D, 1e-3),
    ).toThrow("'gamma' must have shape [3] (the channels of 'x'), got [4]");
    expect(() =>
      batchNormInTraining(x, tf.ones([3]) as tf.Tensor1D, tf.zeros([3]) as tf.Tensor1D, -1),
    ).toThrow("'epsilon' must be >= 0, got -1");
    expect(() =>
      batchNormInTraining(tf.zeros([3]), tf.ones([3]) as tf.Tensor1D, tf.zeros([3]) as tf.Tensor1D, 1e-3),
    ).toThrow("'x' must have rank >= 2, got [3]");
  });
});

describe('BatchNormalization layer', () => {
  it('is registered as Keras BatchNormalization, so saved models stay standard and load as this class', async () => {
    const input = tf.input({ shape: [4, 4, 3] });
    const output = batchNormalization({ momentum: 0.9, epsilon: 1e-5, name: 'bn' }).apply(
      input,
    ) as tf.SymbolicTensor;
    const model = tf.model({ inputs: input, outputs: output });
    const json = model.toJSON(undefined, false) as { config: { layers: { class_name: string }[] } };
    expect(json.config.layers.map((layer) => layer.class_name)).toEqual(['InputLayer', 'BatchNormalization']);
    const saved: { artifacts?: tf.io.ModelArtifacts } = {};
    await model.save(
      tf.io.withSaveHandler(async (artifacts) => {
        saved.artifacts = artifacts;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }),
    );
    const loaded = await tf.loadLayersModel(tf.io.fromMemory(saved.artifacts as tf.io.ModelArtifacts));
    expect(loaded.getLayer('bn')).toBeInstanceOf(BatchNormalization);
    expect(
      loaded
        .getLayer('bn')
        .getWeights()
        .map((w) => w.shape),
    ).toEqual([[3], [3], [3], [3]]);
    model.dispose();
    loaded.dispose();
  });

  it('trains as tfjs-layers does: output, running mean and variance, and every weight gradient', async () => {
    const shape = [6, 5, 5, 12];
    const x = rng.normals(size(shape)).map((v) => 2 * v + 0.5);
    const weights = rng.normals(size(shape));
    const initial = [
      rng.normals(12),
      rng.normals(12),
      rng.normals(12),
      rng.normals(12).map((v) => 1 + v * v),
    ];
    const run = () => {
      // tf.layers' own class on the reference backend, ours under test.
      const layer =
        tf.getBackend() === 'cpu'
          ? tf.layers.batchNormalization({ momentum: 0.9, epsilon: 1e-5 })
          : batchNormalization({ momentum: 0.9, epsilon: 1e-5 });
      const input = tf.tensor(x, shape);
      layer.build(shape);
      layer.setWeights(initial.map((w) => tf.tensor1d(w)));
      const target = tf.tensor(weights, shape);
      const { grads } = tf.variableGrads(
        () => tf.sum(tf.mul(layer.apply(input, { training: true }) as tf.Tensor, target)) as tf.Scalar,
        layer.trainableWeights.map((w) => w.read() as tf.Variable),
      );
      const output = layer.apply(input, { training: true }) as tf.Tensor;
      const result = [output, ...layer.getWeights().map((w) => w.clone()), ...Object.values(grads)];
      for (const weight of layer.weights) weight.dispose();
      return result;
    };
    const errors = await errorsAgainstCpu([x], run);
    expect(errors).toHaveLength(7);
    for (const [i, error] of errors.entries()) expect(error, `output ${i}`).toBeLessThanOrEqual(TOLERANCE);
  });

  it('in inference mode uses the running statistics, as tfjs-layers does', async () => {
    const shape = [3, 4, 4, 5];
    const x = rng.normals(size(shape));
    const initial = [rng.normals(5), rng.normals(5), rng.normals(5), rng.normals(5).map((v) => 0.5 + v * v)];
    const errors = await errorsAgainstCpu([x], () => {
      const layer = batchNormalization({ epsilon: 1e-3 });
      layer.build(shape);
      layer.setWeights(initial.map((w) => tf.tensor1d(w)));
      const input = tf.tensor(x, shape);
      const output = layer.apply(input, { training: false }) as tf.Tensor;
      const dx = tf.grad((a: tf.Tensor) => tf.sum(tf.square(layer.apply(a) as tf.Tensor)))(input);
      for (const weight of layer.weights) weight.dispose();
      return [output, dx];
    });
    for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
  });
});

describe('inference BatchNorm, ReLU and Add kernels', () => {
  it.each([
    ['per-channel [C] parameters', [2, 5, 5, 9], [9], true],
    ['[1,1,1,C] parameters', [3, 4, 4, 6], [1, 1, 1, 6], true],
    ['no scale or offset', [2, 3, 3, 17], [17], false],
    ['rank 2', [20, 33], [33], true],
  ] as const)(
    'FusedBatchNorm and its input gradient match tfjs (%s)',
    async (_, xShape, parameterShape, affine) => {
      const channels = xShape[xShape.length - 1];
      const data = [
        rng.normals(size([...xShape])),
        rng.normals(channels),
        rng.normals(channels).map((v) => 0.1 + v * v),
      ];
      const scale = rng.normals(channels);
      const offset = rng.normals(channels);
      const errors = await errorsAgainstCpu(data, () => {
        const x = tf.tensor(data[0], [...xShape]);
        const parameter = (v: Float32Array) => tf.tensor(v, [...parameterShape]);
        const normalise = (a: tf.Tensor) =>
          tf.batchNorm(
            a,
            parameter(data[1]),
            parameter(data[2]),
            affine ? parameter(offset) : undefined,
            affine ? parameter(scale) : undefined,
            1e-3,
          );
        // tfjs saves `scale` for the gradient and fails without one: the forward pass only, then.
        if (!affine) return [normalise(x)];
        return [normalise(x), tf.grad((a: tf.Tensor) => tf.sum(tf.mul(normalise(a), a)))(x)];
      });
      for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
    },
  );

  it('ReLU, its gradient and Add (same shape and broadcast) match tfjs, int32 included', async () => {
    const shape = [4, 7, 7, 13];
    const data = [rng.normals(size(shape)), rng.normals(size(shape)), rng.normals(13)];
    const errors = await errorsAgainstCpu(data, () => {
      const [a, b, c] = [tf.tensor(data[0], shape), tf.tensor(data[1], shape), tf.tensor1d(data[2])];
      const residual = (p: tf.Tensor, q: tf.Tensor) => tf.relu(tf.add(p, q));
      const [da, db] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.mul(residual(p, q), p)))([a, b]);
      const ints = tf.relu(tf.add(tf.tensor([-3, 2, 5], [3], 'int32'), tf.tensor([1, 1, -9], [3], 'int32')));
      return [residual(a, b), da, db, tf.add(a, c), ints.cast('float32')];
    });
    expect(errors).toHaveLength(5);
    for (const error of errors) expect(error).toBeLessThanOrEqual(TOLERANCE);
  });
});

describe.runIf(onOnednn)('native normalisation kernels', () => {
  const { addon } = loadAddon();

  it('check every offset and size against the heap: a JavaScript error, never a crash', () => {
    if (!addon) throw new Error('the addon is not loaded');
    const heap = new ArrayBuffer(4 * (24 + 24 + 3 + 3));
    const geometry = [2, 2, 2, 3];
    const [x, y, mean, variance] = [0, 96, 192, 204];
    addon.batchNormForward(heap, geometry, x, mean, variance, -1, -1, y, 1e-3, 1);
    expect(() => addon.batchNormForward(heap, geometry, x, mean, variance, -1, -1, y + 100, 1e-3, 1)).toThrow(
      /'dst' \(24 float32 at byte 196\) does not lie inside the wasm heap \(216 bytes\)/,
    );
    expect(() =>
      addon.batchNormForward(heap, geometry, x, mean, heap.byteLength, -1, -1, y, 1e-3, 1),
    ).toThrow(/'variance'/);
    expect(() => addon.batchNormForward(heap, geometry, x, mean, variance, 2, -1, y, 1e-3, 1)).toThrow(
      "offset of 'scale' must be a non-negative multiple of 4",
    );
    expect(() => addon.batchNormForward(heap, [2, 2, 2], x, mean, variance, -1, -1, y, 1e-3, 1)).toThrow(
      "'geometry' must have 4 entries",
    );
    expect(() => addon.batchNormForward(heap, geometry, x, mean, variance, -1, -1, y, Number.NaN, 1)).toThrow(
      "'epsilon' must be finite",
    );
    expect(() =>
      addon.batchNormBackward(heap, geometry, x, y, mean, variance, -1, y, -1, -1, 1e-3, 1),
    ).toThrow("training 1 needs 'scale', 'diffScale' and 'diffShift'");
    expect(() =>
      addon.batchNormBackward(heap, geometry, x, y, mean, variance, -1, 1e9, -1, -1, 1e-3, 0),
    ).toThrow(RangeError);
    expect(() => addon.elementwise(heap, 0, 24, x, 96, y)).toThrow("'b' must be -1 for a unary op");
    expect(() => addon.elementwise(heap, 2, 24, x, -1, y)).toThrow("'b' is required");
    expect(() => addon.elementwise(heap, 2, 1000, x, x, y)).toThrow(/'a' \(1000 float32 at byte 0\)/);
    expect(() => addon.elementwise(heap, 7, 24, x, x, y)).toThrow(RangeError);
  });

  it('are the kernels a residual network step calls', () => {
    const registered = new Set(tf.getKernelsForBackend('wasm').map((config) => config.kernelName));
    for (const name of [
      'RatioBatchNormTraining',
      'RatioBatchNormTrainingGrad',
      'RatioBatchNormInputGrad',
      'RatioReluGrad',
    ]) {
      expect(registered.has(name), name).toBe(true);
    }
  });
});
