import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { CIFAR10_MEAN, CIFAR10_STD, InputNormalization } from '../../src/engine/model/normalization-layer.js';
import {
  buildArchitecture,
  resnet18,
  smallCnn,
  trainableParameterCount,
  wideResNet,
} from '../../src/training/architectures.js';
import { expectSamePredictions } from '../helpers/outputs.js';

const cifar = { numClasses: 10, inputShape: [32, 32, 3] as [number, number, number] };

/** Parameters of a 3x3 convolution with bias. */
const conv3 = (inC: number, outC: number) => 9 * inC * outC + outC;

async function roundTrip(model: tf.LayersModel): Promise<tf.LayersModel> {
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      saved = artifacts;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  if (!saved) throw new Error('nothing saved');
  // Through JSON text, as a model.json on disk would be.
  const topology = JSON.parse(JSON.stringify(saved.modelTopology));
  return tf.loadLayersModel(tf.io.fromMemory({ ...saved, modelTopology: topology }));
}

describe('smallCnn', () => {
  it('maps [n,32,32,3] to [n,10] logits with the reference parameter count', () => {
    const model = smallCnn(cifar);
    expect(trainableParameterCount(model)).toBe(
      conv3(3, 32) + conv3(32, 32) + conv3(32, 64) + conv3(64, 64) + conv3(64, 128) + 128 * 10 + 10,
    );
    expect(model.countParams()).toBe(140_714);
    const before = tf.memory().numTensors;
    const logits = tf.tidy(() => model.apply(tf.zeros([3, 32, 32, 3]), { training: false }) as tf.Tensor);
    expect(logits.shape).toEqual([3, 10]);
    logits.dispose();
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('scales channels with the width multiplier and supports grayscale inputs', () => {
    const model = smallCnn({ numClasses: 10, inputShape: [28, 28, 1], width: 0.5 });
    expect(model.countParams()).toBe(
      conv3(1, 16) + conv3(16, 16) + conv3(16, 32) + conv3(32, 32) + conv3(32, 64) + 64 * 10 + 10,
    );
    expect(model.outputs[0].shape).toEqual([null, 10]);
    model.dispose();
  });

  it('rejects bad options naming the argument', () => {
    expect(() => smallCnn({ numClasses: 0, inputShape: [32, 32, 3] })).toThrow(/'numClasses'/);
    expect(() => smallCnn({ numClasses: 10, inputShape: [32, 32] as never })).toThrow(/'inputShape'/);
    expect(() => smallCnn({ ...cifar, width: -1 })).toThrow(/'width'/);
    expect(() => smallCnn({ ...cifar, normalization: { mean: [0], std: [1] } })).toThrow(
      /'mean'.*1 channels/,
    );
  });
});

describe('resnet18', () => {
  it('has the 11,173,962 trainable parameters of the CIFAR reference and keeps the spatial stages', () => {
    const model = resnet18(cifar);
    expect(trainableParameterCount(model)).toBe(11_173_962);
    // BatchNorm moving mean and variance: 2 x (64 + 4 x 64 + 5 x 128 + 5 x 256 + 5 x 512) non-trainable.
    expect(model.countParams() - trainableParameterCount(model)).toBe(2 * 4800);
    expect(model.getLayer('stage4_block2_out').outputShape).toEqual([null, 4, 4, 512]);
    expect(model.outputs[0].shape).toEqual([null, 10]);
    model.dispose();
  });

  it('width 0.125 runs a forward pass in inference mode', () => {
    const model = resnet18({ ...cifar, width: 0.125 });
    const logits = tf.tidy(() => model.apply(tf.ones([2, 32, 32, 3]), { training: false }) as tf.Tensor);
    expect(logits.shape).toEqual([2, 10]);
    expect(Array.from(logits.dataSync()).every(Number.isFinite)).toBe(true);
    logits.dispose();
    model.dispose();
  });
});

describe('wideResNet', () => {
  it('has the published parameter counts of WRN-16-4 and WRN-28-10', () => {
    const small = wideResNet({ ...cifar, depth: 16, widen: 4 });
    expect(trainableParameterCount(small)).toBe(2_748_890);
    small.dispose();
    const large = buildArchitecture('wrn-28-10', cifar);
    expect(trainableParameterCount(large)).toBe(36_479_194);
    expect(large.outputs[0].shape).toEqual([null, 10]);
    large.dispose();
  });

  it('rejects a depth that is not 6n + 4', () => {
    expect(() => wideResNet({ ...cifar, depth: 20, widen: 2 })).toThrow(/'depth' must be 6n \+ 4/);
    expect(() => buildArchitecture('vgg16', cifar)).toThrow(/'architecture'/);
  });
});

describe('InputNormalization', () => {
  it('computes (x - mean) / std per channel with CIFAR-10 statistics by default', () => {
    const model = smallCnn(cifar);
    const layer = model.getLayer('normalize') as InputNormalization;
    expect(layer).toBeInstanceOf(InputNormalization);
    const probe = tf.model({ inputs: model.inputs, outputs: layer.output as tf.SymbolicTensor });
    const x = tf.fill([1, 32, 32, 3], 0.5);
    const y = probe.predict(x) as tf.Tensor;
    const first = Array.from(y.dataSync().slice(0, 3));
    first.forEach((v, c) => {
      expect(v).toBeCloseTo((0.5 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], 5);
    });
    tf.dispose([x, y]);
    model.dispose();
  });

  it('round-trips through save and load: same config, same logits', async () => {
    const model = smallCnn({
      ...cifar,
      width: 0.25,
      normalization: { mean: [0.1, 0.2, 0.3], std: [0.5, 0.25, 2] },
    });
    const loaded = await roundTrip(model);
    const layer = loaded.getLayer('normalize') as InputNormalization;
    expect(layer).toBeInstanceOf(InputNormalization);
    expect(layer.mean).toEqual([0.1, 0.2, 0.3]);
    expect(layer.std).toEqual([0.5, 0.25, 2]);
    expectSamePredictions(tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 7), model, loaded);
    model.dispose();
    loaded.dispose();
  });

  it('round-trips BatchNorm moving statistics of resnet18', async () => {
    const model = resnet18({ ...cifar, width: 0.125 });
    const bn = model.getLayer('stem_bn');
    // Non-default moving statistics, so that a load that dropped them would change the logits.
    const [gamma, beta, mean, variance] = bn.getWeights();
    bn.setWeights([gamma, beta, tf.fill(mean.shape, 0.3), tf.fill(variance.shape, 2)]);
    const loaded = await roundTrip(model);
    expectSamePredictions(tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 3), model, loaded);
    model.dispose();
    loaded.dispose();
  });
});
