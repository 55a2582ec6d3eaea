import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import type { ModelFiles } from '../../src/data/model-dir.js';
import { forwardFlops } from '../../src/engine/model-cost.js';
import {
  type LoadModelOptions,
  loadedModelBudget,
  loadModelFromFiles,
  ModelFileError,
} from '../../src/engine/model-files.js';

/**
 * A converter-format CNN graph written by hand: x [n, 8, 8, 3] -> Conv2D 3x3x3x4 SAME -> BiasAdd ->
 * Relu -> MaxPool 2x2/2 -> Reshape [-1, 64] (an int32 constant in the shards) -> MatMul 64x3 -> BiasAdd.
 */

type Node = { name: string; op: string; input?: string[]; attr?: Record<string, unknown> };
type Weight = { name: string; shape: number[]; dtype: 'float32' | 'int32'; values: number[] };

const dims = (...sizes: number[]) => ({ dim: sizes.map((size) => ({ size: String(size) })) });
const ints = (...values: number[]) => ({ list: { i: values.map(String) } });
const str = (value: string) => ({ s: btoa(value) });
const constNode = (name: string, dtype: string, shape: number[]): Node => ({
  name,
  op: 'Const',
  attr: { value: { tensor: { dtype, tensorShape: dims(...shape) } }, dtype: { type: dtype } },
});
const float = { T: { type: 'DT_FLOAT' } };

function cnn(): { nodes: Node[]; weights: Weight[] } {
  const ramp = (n: number, scale: number) => Array.from({ length: n }, (_, i) => ((i % 7) - 3) * scale);
  return {
    nodes: [
      {
        name: 'x',
        op: 'Placeholder',
        attr: { dtype: { type: 'DT_FLOAT' }, shape: { shape: dims(-1, 8, 8, 3) } },
      },
      constNode('conv/kernel', 'DT_FLOAT', [3, 3, 3, 4]),
      constNode('conv/bias', 'DT_FLOAT', [4]),
      constNode('flat/shape', 'DT_INT32', [2]),
      constNode('dense/kernel', 'DT_FLOAT', [64, 3]),
      constNode('dense/bias', 'DT_FLOAT', [3]),
      {
        name: 'conv',
        op: 'Conv2D',
        input: ['x', 'conv/kernel'],
        attr: {
          ...float,
          strides: ints(1, 1, 1, 1),
          dilations: ints(1, 1, 1, 1),
          padding: str('SAME'),
          data_format: str('NHWC'),
        },
      },
      { name: 'conv/add', op: 'BiasAdd', input: ['conv', 'conv/bias'], attr: float },
      { name: 'relu', op: 'Relu', input: ['conv/add'], attr: float },
      {
        name: 'pool',
        op: 'MaxPool',
        input: ['relu'],
        attr: { ...float, ksize: ints(1, 2, 2, 1), strides: ints(1, 2, 2, 1), padding: str('VALID') },
      },
      { name: 'flat', op: 'Reshape', input: ['pool', 'flat/shape'], attr: float },
      { name: 'dense', op: 'MatMul', input: ['flat', 'dense/kernel'], attr: float },
      { name: 'logits', op: 'BiasAdd', input: ['dense', 'dense/bias'], attr: float },
    ],
    weights: [
      { name: 'conv/kernel', shape: [3, 3, 3, 4], dtype: 'float32', values: ramp(108, 0.05) },
      { name: 'conv/bias', shape: [4], dtype: 'float32', values: [0.1, 0, -0.1, 0.2] },
      { name: 'flat/shape', shape: [2], dtype: 'int32', values: [-1, 64] },
      { name: 'dense/kernel', shape: [64, 3], dtype: 'float32', values: ramp(192, 0.02) },
      { name: 'dense/bias', shape: [3], dtype: 'float32', values: [0, 0.5, -0.5] },
    ],
  };
}

/** model.json + one shard per weight (so a constant may sit in any shard) + card.json. */
function graphFiles({ nodes, weights }: { nodes: Node[]; weights: Weight[] }): ModelFiles {
  const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
  const files: ModelFiles = new Map();
  const paths: string[] = [];
  weights.forEach((weight, i) => {
    const bytes = new Uint8Array(weight.values.length * 4);
    if (weight.dtype === 'int32') new Int32Array(bytes.buffer).set(weight.values);
    else new Float32Array(bytes.buffer).set(weight.values);
    const name = `group1-shard${i + 1}of${weights.length}.bin`;
    paths.push(name);
    files.set(name, bytes);
  });
  files.set(
    'model.json',
    encode({
      format: 'graph-model',
      modelTopology: { node: nodes, library: {}, versions: { producer: 1 } },
      weightsManifest: [
        { paths, weights: weights.map(({ name, shape, dtype }) => ({ name, shape, dtype })) },
      ],
    }),
  );
  files.set('card.json', encode({ name: 'graph-cnn', classNames: ['a', 'b', 'c'] }));
  return files;
}

async function refusal(files: ModelFiles, options?: LoadModelOptions): Promise<ModelFileError> {
  const error = await loadModelFromFiles(files, options).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(ModelFileError);
  return error as ModelFileError;
}

const index = (nodes: Node[], name: string) => nodes.findIndex((node) => node.name === name);

describe('graph model budgets before allocation', () => {
  it('sizes every node of a converter CNN: exact shapes, parameters and FLOPs, used for request costs', async () => {
    const classifier = await loadModelFromFiles(graphFiles(cnn()));
    const budget = loadedModelBudget(classifier)!;
    expect(budget.inputShape).toEqual([8, 8, 3]);
    expect(budget.outputShape).toEqual([3]);
    expect(budget.layers.map((l) => [l.name, l.className, l.outputShape, l.flops])).toEqual([
      // 8 x 8 outputs x 3 x 3 x 3 x 4 multiply-adds, 2 FLOPs each.
      ['conv', 'Conv2D', [8, 8, 4], 2 * 8 * 8 * 3 * 3 * 3 * 4],
      ['conv/add', 'BiasAdd', [8, 8, 4], 4 * 256],
      ['relu', 'Relu', [8, 8, 4], 4 * 256],
      ['pool', 'MaxPool', [4, 4, 4], 64 * 4],
      ['flat', 'Reshape', [64], 0],
      ['dense', 'MatMul', [3], 2 * 64 * 3],
      ['logits', 'BiasAdd', [3], 4 * 3],
    ]);
    expect(budget.parameters).toBe(108 + 4 + 2 + 192 + 3);
    expect(budget.maxActivationElements).toBe(256);
    expect(budget.flopsPerImage).toBe(13_824 + 1024 + 1024 + 256 + 384 + 12);
    expect(forwardFlops(classifier)).toBe(budget.flopsPerImage);
    const logits = classifier.logits(tf.ones([2, 8, 8, 3]));
    expect(logits.shape).toEqual([2, 3]);
    logits.dispose();
    classifier.dispose();
  });

  it('refuses, naming the node and attribute, before tfjs allocates anything', async () => {
    const before = tf.memory().numTensors;
    const cases: Array<[string, (graph: ReturnType<typeof cnn>) => void, RegExp]> = [
      [
        'modelTopology.node[6].attr.strides',
        ({ nodes }) => {
          nodes[index(nodes, 'conv')].attr!.strides = ints(1, 0, 0, 1);
        },
        /node 'conv' \(Conv2D\) attr\.strides: must hold integers in \[1, 65536\], got \[1,0,0,1\]/,
      ],
      [
        'modelTopology.node[6].attr.data_format',
        ({ nodes }) => {
          nodes[index(nodes, 'conv')].attr!.data_format = str('NCHW');
        },
        /only NHWC is supported, got 'NCHW'/,
      ],
      [
        'modelTopology.node[9].attr.ksize',
        ({ nodes }) => {
          nodes[index(nodes, 'pool')].attr!.ksize = ints(1, 3000, 3000, 1);
        },
        /node 'pool' \(MaxPool\) attr\.ksize: a window of 3000 does not fit the input's height of 8/,
      ],
      [
        'modelTopology.node[1].attr.value',
        ({ nodes }) => {
          nodes[1] = constNode('conv/kernel', 'DT_FLOAT', [3000, 3000, 3, 4]);
        },
        /shape \[3000,3000,3,4\] differs from the weights manifest's \[3,3,3,4\]/,
      ],
      [
        'modelTopology.node[10].input',
        ({ weights }) => {
          weights[2].values = [-1, 65];
        },
        /cannot reshape \[1,4,4,4\] \(64 elements for one image\) to \[-1,65\]/,
      ],
      [
        'modelTopology.node[6].op',
        ({ nodes }) => {
          nodes[index(nodes, 'conv')].op = 'Fill';
        },
        /node 'conv' \(Fill\) op: op 'Fill' has no sizing rule/,
      ],
    ];
    for (const [field, edit, message] of cases) {
      const graph = cnn();
      edit(graph);
      const error = await refusal(graphFiles(graph));
      expect(error.field).toBe(field);
      expect(error.message).toMatch(message);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses an upsampling whose size constant (read from the shards) would make a huge activation', async () => {
    const graph = cnn();
    // relu -> ResizeNearestNeighbor to 40000 x 40000 (6.4e9 elements) -> pool.
    graph.nodes.push(constNode('resize/size', 'DT_INT32', [2]), {
      name: 'resize',
      op: 'ResizeNearestNeighbor',
      input: ['relu', 'resize/size'],
      attr: float,
    });
    graph.weights.push({ name: 'resize/size', shape: [2], dtype: 'int32', values: [40_000, 40_000] });
    graph.nodes[index(graph.nodes, 'pool')].input = ['resize'];
    const before = tf.memory().numTensors;
    const error = await refusal(graphFiles(graph));
    expect(error.field).toBe(`modelTopology.node[${index(graph.nodes, 'resize')}]`);
    expect(error.message).toMatch(
      /node 'resize' \(ResizeNearestNeighbor\): its output \[1,40000,40000,4\] for one image holds 6400000000 elements, over the limit of 16777216/,
    );
    expect(tf.memory().numTensors).toBe(before);
  });

  it('holds parameters and FLOPs to the configured limits, naming the node where the total crosses them', async () => {
    const flops = await refusal(graphFiles(cnn()), { budget: { maxFlopsPerImage: 15_000 } });
    // conv 13,824 + conv/add 1,024 = 14,848; relu's 1,024 crosses 15,000.
    expect(flops.field).toBe('modelTopology.node[8]');
    expect(flops.message).toMatch(/node 'relu' \(Relu\): one image costs 1\.587e\+4 FLOPs up to here/);
    const parameters = await refusal(graphFiles(cnn()), { budget: { maxParameters: 200 } });
    expect(parameters.field).toBe('modelTopology.node[4].attr.value');
    expect(parameters.message).toMatch(/306 parameters up to here, over the limit of 200/);
  });
});
