import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { type ModelFiles, readModelDir } from '../../../src/data/model-dir.js';
import { modelBudget } from '../../../src/engine/model/budget.js';
import { loadedModelBudget, loadModelFromFiles, ModelFileError } from '../../../src/engine/model/files.js';

type Layer = {
  class_name: string;
  name: string;
  config: Record<string, unknown>;
  inbound_nodes: unknown[][][];
};
type ModelJson = {
  modelTopology: { config: { layers: Layer[]; output_layers: unknown[] } };
  weightsManifest: Array<{
    paths: string[];
    weights: Array<{ name: string; shape: number[]; dtype: string }>;
  }>;
};

let shipped: ModelFiles;
const parse = (files: ModelFiles) =>
  JSON.parse(new TextDecoder().decode(files.get('model.json'))) as ModelJson;
const shapes = (modelJson: ModelJson) =>
  new Map(
    modelJson.weightsManifest.flatMap((g) => g.weights.map((w): [string, number[]] => [w.name, w.shape])),
  );

function edited(change: (json: ModelJson) => void): ModelFiles {
  const modelJson = parse(shipped);
  change(modelJson);
  return new Map(shipped).set('model.json', new TextEncoder().encode(JSON.stringify(modelJson)));
}

const layer = (json: ModelJson, name: string) =>
  json.modelTopology.config.layers.find((l) => l.name === name)!;

async function refusal(files: ModelFiles): Promise<ModelFileError> {
  const before = tf.memory();
  const error = await loadModelFromFiles(files).then(
    (model) => {
      model.dispose();
      throw new Error('the model loaded');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ModelFileError);
  expect(tf.memory().numTensors).toBe(before.numTensors);
  expect(tf.memory().numBytes).toBe(before.numBytes);
  return error as ModelFileError;
}

beforeAll(async () => {
  // The 4-epoch small-cnn x0.5 that shipped as ratio-cifar10 before the resnet18 generation.
  shipped = await readModelDir('test/fixtures/small-cnn');
});

describe('modelBudget of a trained small-cnn model.json', () => {
  it('gives every layer its output shape, and the exact parameters and FLOPs of smallCnn', () => {
    const modelJson = parse(shipped);
    const budget = modelBudget(modelJson.modelTopology, shapes(modelJson));
    expect(budget.inputShape).toEqual([32, 32, 3]);
    expect(budget.outputShape).toEqual([10]);
    expect(Object.fromEntries(budget.layers.map((l) => [l.name, l.outputShape]))).toEqual({
      image: [32, 32, 3],
      normalize: [32, 32, 3],
      conv1: [32, 32, 16],
      conv2: [32, 32, 16],
      maxpool1: [16, 16, 16],
      conv3: [16, 16, 32],
      conv4: [16, 16, 32],
      maxpool2: [8, 8, 32],
      conv5: [8, 8, 64],
      pool: [64],
      logits: [10],
    });
    // Every manifest element is a parameter: 448 + 2320 + 4640 + 9248 + 18496 + 650.
    const declared = modelJson.weightsManifest[0].weights.reduce(
      (s, w) => s + w.shape.reduce((a, b) => a * b, 1),
      0,
    );
    expect(budget.parameters).toBe(declared);
    expect(budget.parameters).toBe(35_802);
    // conv1: 2 x 3x3 taps x 3 in x 16 out x 32x32 positions.
    expect(budget.layers.find((l) => l.name === 'conv1')?.flops).toBe(2 * 9 * 3 * 16 * 1024);
    expect(budget.flopsPerImage).toBe(15_082_752);
    expect(budget.maxActivationElements).toBe(32 * 32 * 16);
  });

  it('is what the loader records for the classifier it returns', async () => {
    const classifier = await loadModelFromFiles(shipped);
    try {
      expect(loadedModelBudget(classifier)?.flopsPerImage).toBe(15_082_752);
    } finally {
      classifier.dispose();
    }
  });
});

describe('loadModelFromFiles refuses over-budget models before tfjs allocates', () => {
  it("the issue's example: one conv's kernel_size [3000, 3000] with a zeros initializer", async () => {
    const error = await refusal(
      edited((json) => {
        const conv = layer(json, 'conv2');
        conv.config.kernel_size = [3000, 3000];
        conv.config.kernel_initializer = { class_name: 'Zeros', config: {} };
      }),
    );
    expect(error.field).toBe('modelTopology.config.layers[3].config.kernel_size');
    expect(error.message).toMatch(
      /layer 'conv2' \(Conv2D\) kernel_size: implies 'conv2\/kernel' of shape \[3000,3000,16,16\], the weights manifest declares \[3,3,16,16\]/,
    );
  });

  it('an UpSampling2D of [400, 400]: its output is over the activation limit', async () => {
    const error = await refusal(
      edited((json) => {
        const layers = json.modelTopology.config.layers;
        const conv3 = layers.findIndex((l) => l.name === 'conv3');
        layers.splice(conv3, 0, {
          class_name: 'UpSampling2D',
          name: 'up',
          config: { name: 'up', size: [400, 400], data_format: 'channels_last' },
          inbound_nodes: [[['maxpool1', 0, 0, {}]]],
        });
        layers[conv3 + 1].inbound_nodes = [[['up', 0, 0, {}]]];
      }),
    );
    expect(error.field).toBe('modelTopology.config.layers[5].config.size');
    expect(error.message).toMatch(
      /layer 'up' \(UpSampling2D\) size: its output \[6400,6400,16\] holds 655360000 elements/,
    );
  });

  it('filters, units, dilations, strides and pool sizes that disagree with the manifest or the input', async () => {
    const filters = await refusal(edited((json) => (layer(json, 'conv5').config.filters = 65)));
    expect(filters.field).toBe('modelTopology.config.layers[8].config.filters');
    expect(filters.message).toMatch(/layer 'conv5' has filters 65 but its manifest kernel is \[3,3,32,64\]/);
    const units = await refusal(edited((json) => (layer(json, 'logits').config.units = 11)));
    expect(units.field).toBe('modelTopology.config.layers[10].config.units');
    const kernel = await refusal(edited((json) => (layer(json, 'conv3').config.kernel_size = [5, 5])));
    expect(kernel.message).toMatch(
      /'conv3\/kernel' of shape \[5,5,16,32\], the weights manifest declares \[3,3,16,32\]/,
    );
    const dilation = await refusal(
      edited((json) => {
        Object.assign(layer(json, 'conv5').config, { padding: 'valid', dilation_rate: [5, 5] });
      }),
    );
    expect(dilation.field).toBe('modelTopology.config.layers[8].config.kernel_size');
    expect(dilation.message).toMatch(/does not fit an input of \[8,8\]/);
    const stride = await refusal(edited((json) => (layer(json, 'conv1').config.strides = [0, 1])));
    expect(stride.field).toBe('modelTopology.config.layers[2].config.strides');
    const pool = await refusal(edited((json) => (layer(json, 'maxpool2').config.pool_size = [100, 100])));
    expect(pool.message).toMatch(/layer 'maxpool2' \(MaxPooling2D\) pool_size: \[100,100\] does not fit/);
    const input = await refusal(
      edited((json) => (layer(json, 'image').config.batch_input_shape = [null, 2048, 2048, 3])),
    );
    expect(input.message).toMatch(/over the limit/);
  });

  it('FLOPs and parameter limits name the layer where the total crosses them', async () => {
    const flops = await loadModelFromFiles(shipped, { budget: { maxFlopsPerImage: 10e6 } }).catch(
      (e: unknown) => e,
    );
    expect((flops as Error).message).toMatch(
      /layer 'conv4' \(Conv2D\): one image costs 1\.271e\+7 FLOPs up to here, over the limit of 1\.000e\+7/,
    );
    const parameters = await loadModelFromFiles(shipped, { budget: { maxParameters: 10_000 } }).catch(
      (e: unknown) => e,
    );
    expect((parameters as Error).message).toMatch(
      /layer 'conv4' \(Conv2D\): the model reaches 16656 parameters here/,
    );
  });

  it('a layer class without a sizing rule is refused, naming the supported ones', async () => {
    const error = await refusal(
      edited((json) => (layer(json, 'pool').class_name = 'GlobalAveragePooling1D')),
    );
    expect(error.message).toMatch(
      /layer 'pool' \(GlobalAveragePooling1D\): has no memory budget rule \(supported: .*Conv2D/,
    );
  });
});

describe('failed loads free what they made', () => {
  it('100 invalid models that fail inside tfjs or the contract leave tensors, bytes and RSS where they were', async () => {
    const invalid: ModelFiles[] = [
      // tfjs builds conv1..conv4 (and their weights) before it meets the unknown activation.
      edited((json) => (layer(json, 'conv5').config.activation = 'evil')),
      // Every variable built, then weights assigned by name: this one names no variable of the model.
      edited((json) => {
        const weights = json.weightsManifest[0].weights;
        weights[weights.length - 1].name = 'outer/logits/bias';
      }),
      // A card that disagrees with the model's 10 outputs.
      new Map(shipped).set('card.json', new TextEncoder().encode(JSON.stringify({ classNames: ['a', 'b'] }))),
      // The normalisation layer refuses a negative std after the input layer is built.
      edited((json) => (layer(json, 'normalize').config.std = [-1, 1, 1])),
    ];
    const gc = (globalThis as { gc?: () => void }).gc;
    // One round first, so lazily created kernels and caches are not counted as leaks.
    for (const files of invalid) await loadModelFromFiles(files).catch(() => undefined);
    gc?.();
    const variables = () => Object.keys(tf.engine().state.registeredVariables).length;
    const before = { memory: tf.memory(), rss: process.memoryUsage().rss, variables: variables() };
    let refused = 0;
    for (let i = 0; i < 100; i++) {
      const error = await loadModelFromFiles(invalid[i % invalid.length]).catch((e: unknown) => e);
      if (error instanceof ModelFileError) refused += 1;
    }
    gc?.();
    expect(refused).toBe(100);
    expect(tf.memory().numTensors).toBe(before.memory.numTensors);
    expect(tf.memory().numBytes).toBe(before.memory.numBytes);
    expect(variables()).toBe(before.variables);
    // Generous: 100 loads of a 140 KB model; a leak of the old kind kept 24 tensors per load.
    expect(process.memoryUsage().rss - before.rss).toBeLessThan(150 * 1024 * 1024);
  });
});
