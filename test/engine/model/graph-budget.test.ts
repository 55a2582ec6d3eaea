import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import type { ModelFiles } from '../../../src/data/model-dir.js';
import { forwardFlops } from '../../../src/engine/model/cost.js';
import {
  type LoadModelOptions,
  loadedModelBudget,
  loadModelFromFiles,
  ModelFileError,
} from '../../../src/engine/model/files.js';
import {
  cnn,
  constNode,
  graphFiles,
  insertResize,
  ints,
  type Node,
  str,
} from '../../helpers/graph-models.js';

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
    insertResize(graph, 'ResizeNearestNeighbor', [40_000, 40_000]);
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
