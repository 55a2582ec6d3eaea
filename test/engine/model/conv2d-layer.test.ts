import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Conv2D, conv2d } from '../../../src/engine/model/conv2d-layer.js';
import { Rng } from '../../../src/util/random.js';

/**
 * The Conv2D layer (engine/model/conv2d-layer.ts): tfjs-layers' values and gradients, saved as Keras'
 * Conv2D, and an input gradient that does not compute the filter gradient (what attacks take).
 */

const rng = new Rng(2026_12_7);

/** Names of the kernels `run` calls on the current backend, in order. */
function kernelsCalledBy(run: () => void): string[] {
  const backend = tf.getBackend();
  const originals = tf.getKernelsForBackend(backend);
  const called: string[] = [];
  for (const config of originals) {
    tf.unregisterKernel(config.kernelName, backend);
    tf.registerKernel({
      ...config,
      kernelFunc: (args) => {
        called.push(config.kernelName);
        return config.kernelFunc(args);
      },
    });
  }
  try {
    run();
  } finally {
    for (const config of originals) {
      tf.unregisterKernel(config.kernelName, backend);
      tf.registerKernel(config);
    }
  }
  return called;
}

function layers(useBias: boolean, activation?: 'relu') {
  const args = { filters: 6, kernelSize: 3, strides: 2, padding: 'same' as const, useBias, activation };
  const ours = conv2d(args);
  const stock = tf.layers.conv2d(args);
  ours.build([2, 9, 9, 4]);
  stock.build([2, 9, 9, 4]);
  const weights = ours.getWeights().map((w) => tf.tensor(rng.normals(w.size), w.shape));
  ours.setWeights(weights);
  stock.setWeights(weights);
  tf.dispose(weights);
  return { ours, stock };
}

describe('Conv2D layer', () => {
  it.each([
    ['no bias, linear', false, undefined],
    ['bias, linear', true, undefined],
    ['bias, relu', true, 'relu'],
  ] as const)('equals tfjs-layers in values, input and weight gradients (%s)', (_, useBias, activation) => {
    const { ours, stock } = layers(useBias, activation);
    const x = tf.tensor(rng.normals(2 * 9 * 9 * 4), [2, 9, 9, 4]);
    const target = tf.tensor(rng.normals(2 * 5 * 5 * 6), [2, 5, 5, 6]);
    const run = (layer: tf.layers.Layer) =>
      tf.tidy(() => {
        const loss = (input: tf.Tensor) =>
          tf.sum(tf.mul(layer.apply(input) as tf.Tensor, target)) as tf.Scalar;
        const { grads } = tf.variableGrads(
          () => loss(x),
          layer.trainableWeights.map((w) => w.read() as tf.Variable),
        );
        return [layer.apply(x) as tf.Tensor, tf.grad(loss)(x), ...Object.values(grads)].map(
          (t) => t.dataSync() as Float32Array,
        );
      });
    const [actual, expected] = [run(ours), run(stock)];
    expect(actual).toHaveLength(useBias ? 4 : 3);
    actual.forEach((values, i) => {
      for (let j = 0; j < values.length; j++) expect(values[j]).toBeCloseTo(expected[i][j], 4);
    });
    tf.dispose([x, target]);
  });

  it('takes an input gradient without the filter gradient, where tfjs-layers computes both', () => {
    const { ours, stock } = layers(false);
    const x = tf.tensor(rng.normals(2 * 9 * 9 * 4), [2, 9, 9, 4]);
    const before = tf.memory().numTensors;
    const inputGradient = (layer: tf.layers.Layer) =>
      kernelsCalledBy(() =>
        tf.dispose(tf.grad((input: tf.Tensor) => tf.sum(layer.apply(input) as tf.Tensor))(x)),
      );
    expect(inputGradient(ours)).not.toContain(tf.Conv2DBackpropFilter);
    expect(inputGradient(stock)).toContain(tf.Conv2DBackpropFilter);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('is saved as Keras Conv2D and loads as this class', async () => {
    const input = tf.input({ shape: [8, 8, 3] });
    const model = tf.model({
      inputs: input,
      outputs: conv2d({ filters: 2, kernelSize: 3, name: 'c' }).apply(input) as tf.SymbolicTensor,
    });
    let artifacts: tf.io.ModelArtifacts | undefined;
    await model.save(
      tf.io.withSaveHandler(async (saved) => {
        artifacts = saved;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }),
    );
    const topology = JSON.stringify(artifacts?.modelTopology);
    expect(topology).toContain('"class_name":"Conv2D"');
    const loaded = await tf.loadLayersModel(tf.io.fromMemory(artifacts as tf.io.ModelArtifacts));
    expect(loaded.getLayer('c')).toBeInstanceOf(Conv2D);
    model.dispose();
    loaded.dispose();
  });
});
