import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import type { ModelFiles } from '../../../src/data/model-dir.js';
import { loadModelFromFiles, ModelFileError, saveModelToFiles } from '../../../src/engine/model/files.js';
import { expectSameLogits } from '../../helpers/outputs.js';

/** logits = reshape(x, [-1, 4]) W + b: a converter-format graph model written by hand. */
const W = [0.5, -1, 0.25, 1, 0, -0.5, -0.75, 2, 1, 0.1, 0.2, 0.3];
const B = [0.1, -0.2, 0.3];

const dims = (...sizes: number[]) => ({ dim: sizes.map((size) => ({ size: String(size) })) });
const constNode = (name: string, dtype: string, shape: number[]) => ({
  name,
  op: 'Const',
  attr: { value: { tensor: { dtype, tensorShape: dims(...shape) } }, dtype: { type: dtype } },
});

function graphModelJson(): Record<string, unknown> & {
  modelTopology: { node: Array<Record<string, unknown>>; [field: string]: unknown };
} {
  return {
    format: 'graph-model',
    generatedBy: 'hand',
    convertedBy: 'ratio-audit test',
    modelTopology: {
      node: [
        {
          name: 'image',
          op: 'Placeholder',
          attr: { dtype: { type: 'DT_FLOAT' }, shape: { shape: dims(-1, 2, 2, 1) } },
        },
        constNode('kernel', 'DT_FLOAT', [4, 3]),
        constNode('bias', 'DT_FLOAT', [3]),
        constNode('flat_shape', 'DT_INT32', [2]),
        {
          name: 'flat',
          op: 'Reshape',
          input: ['image', 'flat_shape'],
          attr: { T: { type: 'DT_FLOAT' }, Tshape: { type: 'DT_INT32' } },
        },
        {
          name: 'matmul',
          op: 'MatMul',
          input: ['flat', 'kernel'],
          attr: { T: { type: 'DT_FLOAT' }, transpose_a: { b: false }, transpose_b: { b: false } },
        },
        { name: 'logits', op: 'BiasAdd', input: ['matmul', 'bias'], attr: { T: { type: 'DT_FLOAT' } } },
      ],
      library: {},
      versions: { producer: 1 },
    },
    weightsManifest: [
      {
        paths: ['group1-shard1of1.bin'],
        weights: [
          { name: 'kernel', shape: [4, 3], dtype: 'float32' },
          { name: 'bias', shape: [3], dtype: 'float32' },
          { name: 'flat_shape', shape: [2], dtype: 'int32' },
        ],
      },
    ],
  };
}

function graphFiles(modelJson: unknown = graphModelJson()): ModelFiles {
  const weights = new Uint8Array(12 * 4 + 3 * 4 + 2 * 4);
  new Float32Array(weights.buffer, 0, 15).set([...W, ...B]);
  new Int32Array(weights.buffer, 60, 2).set([-1, 4]);
  const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
  return new Map([
    ['model.json', encode(modelJson)],
    ['group1-shard1of1.bin', weights],
    ['card.json', encode({ name: 'graph', classNames: ['a', 'b', 'c'], temperature: 2 })],
  ]);
}

function expectedLogits(pixels: number[]): number[] {
  return [0, 1, 2].map((k) => pixels.reduce((sum, v, i) => sum + v * W[i * 3 + k], B[k]));
}

describe('graph models (tfjs converter format)', () => {
  it('loads, probes the output width, computes exact logits and gradients, and frees everything', async () => {
    const before = tf.memory().numTensors;
    const classifier = await loadModelFromFiles(graphFiles());
    expect(classifier.format).toBe('graph-model');
    expect(classifier.numClasses).toBe(3);
    expect(classifier.card).toMatchObject({ name: 'graph', inputShape: [2, 2, 1], temperature: 2 });
    const pixels = [0.1, 0.5, 0.9, 0.3];
    const x = tf.tensor4d(pixels, [1, 2, 2, 1]);
    const logits = classifier.logits(x);
    Array.from(logits.dataSync()).forEach((v, k) => {
      expect(v).toBeCloseTo(expectedLogits(pixels)[k], 5);
    });
    // d(logit_0)/dx = the first kernel column.
    const gradient = tf.grad((input: tf.Tensor) =>
      classifier
        .logits(input as tf.Tensor4D)
        .slice([0, 0], [1, 1])
        .sum(),
    )(x);
    Array.from(gradient.dataSync()).forEach((v, i) => {
      expect(v).toBeCloseTo(W[i * 3], 5);
    });
    tf.dispose([x, logits, gradient]);
    classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('saves back to files that load to the same logits', async () => {
    const classifier = await loadModelFromFiles(graphFiles());
    const files = await saveModelToFiles(classifier);
    const reloaded = await loadModelFromFiles(files);
    expect(reloaded.format).toBe('graph-model');
    expect(reloaded.card.classNames).toEqual(['a', 'b', 'c']);
    expectSameLogits(tf.tensor4d([1, 0, 0, 1], [1, 2, 2, 1]), classifier, reloaded);
    classifier.dispose();
    reloaded.dispose();
  });

  it('rejects dangling inputs, cycles and control-flow libraries before tfjs runs the graph', async () => {
    const dangling = graphModelJson();
    dangling.modelTopology.node[4].input = ['image', 'nowhere'];
    const cyclic = graphModelJson();
    cyclic.modelTopology.node[4].input = ['image', 'logits'];
    const library = graphModelJson();
    library.modelTopology.library = { function: [{ signature: {} }] };
    for (const [modelJson, message] of [
      [dangling, /takes input from 'nowhere'/],
      [cyclic, /cycle/],
      [library, /control flow/],
    ] as const) {
      const error = await loadModelFromFiles(graphFiles(modelJson)).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ModelFileError);
      expect((error as Error).message).toMatch(message);
    }
  });

  it('rejects a graph whose output is not rank 2', async () => {
    const modelJson = graphModelJson();
    // Only the placeholder and an identity of it: the output is the rank-4 image itself.
    modelJson.modelTopology.node.push({
      name: 'raw',
      op: 'Identity',
      input: ['image'],
      attr: { T: { type: 'DT_FLOAT' } },
    });
    modelJson.modelTopology.node.splice(1, 6);
    modelJson.weightsManifest = [{ paths: [], weights: [] }];
    const files = graphFiles(modelJson);
    files.delete('card.json');
    const error = await loadModelFromFiles(files).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelFileError);
    expect((error as Error).message).toMatch(/rank 2 logits \[n, numClasses\], got \[1, 2, 2, 1\]/);
  });
});
