import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import type { ModelFiles } from '../../../src/data/model-dir.js';
import { TfjsClassifier } from '../../../src/engine/model/classifier.js';
import {
  loadModelFromFiles,
  ModelFileError,
  saveModelToFiles,
  weightPathKey,
} from '../../../src/engine/model/files.js';
import { InputNormalization } from '../../../src/engine/model/normalization-layer.js';
import { expectSameLogits } from '../../helpers/outputs.js';

const SHAPE: [number, number, number] = [8, 8, 3];

/** A small conv net with our normalisation layer and BatchNorm, seeded so runs are reproducible. */
function tinyCnn(): tf.LayersModel {
  const input = tf.input({ shape: SHAPE });
  let x = new InputNormalization({ mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] }).apply(
    input,
  ) as tf.SymbolicTensor;
  x = tf.layers
    .conv2d({
      filters: 4,
      kernelSize: 3,
      padding: 'same',
      kernelInitializer: tf.initializers.glorotNormal({ seed: 1 }),
    })
    .apply(x) as tf.SymbolicTensor;
  x = tf.layers.batchNormalization().apply(x) as tf.SymbolicTensor;
  x = tf.layers.globalAveragePooling2d({}).apply(x) as tf.SymbolicTensor;
  const logits = tf.layers
    .dense({ units: 3, kernelInitializer: tf.initializers.glorotNormal({ seed: 2 }) })
    .apply(x) as tf.SymbolicTensor;
  return tf.model({ inputs: input, outputs: logits });
}

const CARD = { name: 'tiny', classNames: ['cat', 'dog', 'ship'], temperature: 1.5, epsIn: 0.5 };

async function savedTiny(shardBytes = 256): Promise<ModelFiles> {
  const model = tinyCnn();
  const files = await saveModelToFiles(model, CARD, { shardBytes });
  model.dispose();
  return files;
}

const json = (files: ModelFiles, path = 'model.json') =>
  JSON.parse(new TextDecoder().decode(files.get(path))) as Record<string, unknown> & {
    weightsManifest: Array<{ paths: string[]; weights: Array<{ name: string; shape: number[] }> }>;
  };

const withJson = (files: ModelFiles, value: unknown, path = 'model.json'): ModelFiles =>
  new Map(files).set(
    path,
    new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value)),
  );

async function rejection(files: ModelFiles, options = {}): Promise<ModelFileError> {
  const before = tf.memory().numTensors;
  const error = await loadModelFromFiles(files, options).then(
    (c) => {
      c.dispose();
      throw new Error('loaded a hostile model');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ModelFileError);
  expect(tf.memory().numTensors).toBe(before);
  return error as ModelFileError;
}

describe('saveModelToFiles / loadModelFromFiles', () => {
  it('round-trips to identical logits and card, over several shards, leaving memory unchanged', async () => {
    const before = tf.memory().numTensors;
    const model = tinyCnn();
    const files = await saveModelToFiles(model, CARD, { shardBytes: 256 });
    const manifest = json(files).weightsManifest;
    expect(manifest[0].paths.length).toBeGreaterThan(1);
    expect([...files.keys()].sort()).toEqual([...manifest[0].paths, 'card.json', 'model.json'].sort());

    const loaded = await loadModelFromFiles(files);
    expect(loaded.card).toMatchObject({ ...CARD, inputShape: SHAPE });
    expect(loaded.numClasses).toBe(3);
    const original = new TfjsClassifier(model, CARD);
    expectSameLogits(tf.randomUniform([4, ...SHAPE], 0, 1, 'float32', 11) as tf.Tensor4D, original, loaded);
    original.dispose();
    loaded.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('lets load options override card fields', async () => {
    const loaded = await loadModelFromFiles(await savedTiny(), { card: { name: 'renamed' } });
    expect(loaded.card.name).toBe('renamed');
    expect(loaded.card.classNames).toEqual(CARD.classNames);
    loaded.dispose();
  });

  it('loads a model without card.json, taking the input shape from the model', async () => {
    const files = await savedTiny();
    files.delete('card.json');
    const loaded = await loadModelFromFiles(files);
    expect(loaded.card.inputShape).toEqual(SHAPE);
    expect(loaded.card.classNames).toEqual(['class_0', 'class_1', 'class_2']);
    loaded.dispose();
  });
});

describe('loadModelFromFiles rejects hostile or broken files', () => {
  it.each([
    ['../x.bin', /leaves the model directory/],
    ['shards/../../x.bin', /leaves the model directory/],
    ['%2e%2e/x.bin', /leaves the model directory/],
    ['/etc/passwd', /is absolute/],
    ['https://evil.example/x.bin', /is a URL/],
    ['file:///etc/passwd', /is a URL/],
    ['C:/Windows/x.bin', /is a URL or drive path/],
    ['//evil/x.bin', /is a URL/],
    ['sub\\..\\x.bin', /backslash/],
  ])('weight path %s', async (path, message) => {
    const files = await savedTiny();
    const modelJson = json(files);
    modelJson.weightsManifest[0].paths[0] = path;
    const error = await rejection(withJson(files, modelJson));
    expect(error.path).toBe('model.json');
    expect(error.field).toBe('weightsManifest[0].paths[0]');
    expect(error.message).toMatch(message);
  });

  it('accepts ./ prefixes and sub-directories that stay inside', () => {
    expect(weightPathKey('./group1-shard1of1.bin', 'p')).toBe('group1-shard1of1.bin');
    expect(weightPathKey('weights/a.bin', 'p')).toBe('weights/a.bin');
    expect(() => weightPathKey('', 'p')).toThrow(ModelFileError);
  });

  it('a model.json that is not JSON, not an object, or lacks topology or manifest', async () => {
    const files = await savedTiny();
    expect((await rejection(withJson(files, '{"modelTopology": '))).message).toMatch(/not valid JSON/);
    expect((await rejection(withJson(files, [1, 2]))).message).toMatch(/must be a JSON object/);
    const { modelTopology: _t, ...noTopology } = json(files);
    expect((await rejection(withJson(files, noTopology))).field).toBe('modelTopology');
    const { weightsManifest: _w, ...noManifest } = json(files);
    expect((await rejection(withJson(files, noManifest))).field).toBe('weightsManifest');
    const noModel = new Map(files);
    noModel.delete('model.json');
    expect((await rejection(noModel)).message).toMatch(/model.json: file is missing/);
    const binary = new Map(files).set('model.json', new Uint8Array([0xff, 0xfe, 0x00]));
    expect((await rejection(binary)).message).toMatch(/not UTF-8/);
  });

  it('declared weight bytes that do not match the shards', async () => {
    const files = await savedTiny();
    const modelJson = json(files);
    const dense = modelJson.weightsManifest[0].weights.find((w) => w.shape.length === 2)!;
    dense.shape = [dense.shape[0], dense.shape[1] + 1];
    const error = await rejection(withJson(files, modelJson));
    expect(error.field).toBe('weightsManifest[0]');
    expect(error.message).toMatch(/declares \d+ weight bytes but the shards hold \d+/);
  });

  it('a truncated shard and a missing shard', async () => {
    const files = await savedTiny();
    const paths = json(files).weightsManifest[0].paths;
    const last = paths[paths.length - 1];
    const truncated = new Map(files).set(last, files.get(last)!.subarray(0, files.get(last)!.byteLength - 4));
    expect((await rejection(truncated)).message).toMatch(/truncated or mismatched shard/);
    const missing = new Map(files);
    missing.delete(paths[1]);
    const error = await rejection(missing);
    expect(error.path).toBe(paths[1]);
    expect(error.message).toMatch(/weight shard named in model.json is missing/);
  });

  it('absurd declared sizes, before reading any shard', async () => {
    const files = await savedTiny();
    const modelJson = json(files);
    modelJson.weightsManifest[0].weights[0].shape = [1_000_000, 1_000];
    const onlyJson = withJson(new Map([['model.json', new Uint8Array()]]), modelJson);
    expect((await rejection(onlyJson)).message).toMatch(
      /declares 4000\d+ weight bytes, over the limit of 200000000/,
    );
    // And a configurable limit below a real model's size.
    expect((await rejection(files, { maxWeightBytes: 100 })).message).toMatch(/over the limit of 100/);
  });

  it('an input that is not rank-4 NHWC, or an output that is not rank 2', async () => {
    const dense = tf.sequential({ layers: [tf.layers.dense({ inputShape: [12], units: 3 })] });
    const denseFiles = await dense.save(
      tf.io.withSaveHandler(async (a) => {
        captured = a;
        return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(a) };
      }),
    );
    expect(denseFiles).toBeDefined();
    const rank2 = await rejection(filesFromArtifacts(captured!));
    expect(rank2.field).toBe('modelTopology (input)');
    expect(rank2.message).toMatch(/rank 4 NHWC.*got rank 2/);

    const conv = tf.sequential({
      layers: [tf.layers.conv2d({ inputShape: SHAPE, filters: 2, kernelSize: 1 })],
    });
    await conv.save(
      tf.io.withSaveHandler(async (a) => {
        captured = a;
        return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(a) };
      }),
    );
    const rank4Out = await rejection(filesFromArtifacts(captured!));
    expect(rank4Out.field).toBe('modelTopology (output)');

    const nchw = tf.sequential({
      layers: [tf.layers.flatten({ inputShape: [3, 16, 16] }), tf.layers.dense({ units: 3 })],
    });
    const nchwFiles = await saveModelToFiles(nchw, { inputShape: [3, 16, 16] });
    nchwFiles.set('card.json', new TextEncoder().encode(JSON.stringify({ inputShape: [16, 16, 3] })));
    expect((await rejection(nchwFiles)).message).toMatch(/channels-first/);
    tf.dispose([dense, conv, nchw].flatMap((m) => m.weights.map((w) => w.read())));
  });

  it('a card.json that is broken or disagrees with the model', async () => {
    const files = await savedTiny();
    const wrongCount = await rejection(withJson(files, { ...CARD, classNames: ['a', 'b'] }, 'card.json'));
    expect(wrongCount.path).toBe('card.json');
    expect(wrongCount.field).toBe('classNames');
    expect(wrongCount.message).toMatch(/2 entries but the model outputs 3/);
    expect((await rejection(withJson(files, { temperature: -1 }, 'card.json'))).field).toBe('temperature');
    expect((await rejection(withJson(files, { inputShape: [8, 8] }, 'card.json'))).field).toBe('inputShape');
    expect((await rejection(withJson(files, 'not json', 'card.json'))).message).toMatch(
      /card.json: file is not valid JSON/,
    );
    const otherShape = await rejection(withJson(files, { inputShape: [16, 16, 3] }, 'card.json'));
    expect(otherShape.message).toMatch(/does not match the card's NHWC inputShape/);
  });

  it('topologies that would hang or exhaust tfjs: dangling inputs, cycles, unknown classes, absurd sizes', async () => {
    const files = await savedTiny();
    type Layer = {
      class_name: string;
      name: string;
      config: Record<string, unknown>;
      inbound_nodes: unknown[][][];
    };
    const edit = (change: (layers: Layer[]) => void) => {
      const modelJson = json(files) as unknown as { modelTopology: { config: { layers: Layer[] } } };
      change(modelJson.modelTopology.config.layers);
      return withJson(files, modelJson);
    };
    // tfjs itself loops forever on this one.
    const dangling = await rejection(edit((layers) => (layers[1].name = 'renamed')));
    expect(dangling.message).toMatch(/takes input from '.*', which is not in the model/);
    const cycle = await rejection(
      edit((layers) => (layers[1].inbound_nodes = [[[layers[3].name, 0, 0, {}]]])),
    );
    expect(cycle.message).toMatch(/cycle/);
    const unknown = await rejection(edit((layers) => (layers[1].class_name = 'EvilLayer')));
    expect(unknown.field).toBe('modelTopology.config.layers[1].class_name');
    expect(unknown.message).toMatch(/unknown layer class 'EvilLayer'/);
    const huge = await rejection(edit((layers) => (layers[layers.length - 1].config.units = 1e9)));
    expect(huge.message).toMatch(/'units' holds 1000000000, over the limit/);
    // Under the per-field limit but not what the manifest declares: tfjs would allocate it first.
    const wide = await rejection(edit((layers) => (layers[layers.length - 1].config.units = 60_000)));
    expect(wide.message).toMatch(/has units 60000 but its manifest kernel is \[4,3\]/);
    const bigImage = await rejection(
      edit((layers) => (layers[0].config.batch_input_shape = [null, 8192, 8192, 3])),
    );
    expect(bigImage.message).toMatch(/input of 201326592 elements per example is over the limit/);
    const badActivation = await rejection(edit((layers) => (layers[2].config.activation = 'evil')));
    expect(badActivation.message).toMatch(/tfjs cannot build the model/);
  });
});

let captured: tf.io.ModelArtifacts | undefined;

/** model.json + one shard from raw artifacts, bypassing saveModelToFiles' own contract check. */
function filesFromArtifacts(artifacts: tf.io.ModelArtifacts): ModelFiles {
  const weights = new Uint8Array(tf.io.CompositeArrayBuffer.join(artifacts.weightData!));
  const modelJson = {
    format: 'layers-model',
    modelTopology: artifacts.modelTopology,
    weightsManifest: [{ paths: ['w.bin'], weights: artifacts.weightSpecs }],
  };
  return new Map([
    ['model.json', new TextEncoder().encode(JSON.stringify(modelJson))],
    ['w.bin', weights],
  ]);
}
