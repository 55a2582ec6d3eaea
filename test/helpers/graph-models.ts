import type { ModelFiles } from '../../src/data/model-dir.js';

/**
 * A converter-format CNN graph written by hand: x [n, 8, 8, 3] -> Conv2D 3x3x3x4 SAME -> BiasAdd ->
 * Relu -> MaxPool 2x2/2 -> Reshape [-1, 64] (an int32 constant in the shards) -> MatMul 64x3 -> BiasAdd.
 */

export type Node = { name: string; op: string; input?: string[]; attr?: Record<string, unknown> };
export type Weight = { name: string; shape: number[]; dtype: 'float32' | 'int32'; values: number[] };

const dims = (...sizes: number[]) => ({ dim: sizes.map((size) => ({ size: String(size) })) });
export const ints = (...values: number[]) => ({ list: { i: values.map(String) } });
export const str = (value: string) => ({ s: btoa(value) });
export const constNode = (name: string, dtype: string, shape: number[]): Node => ({
  name,
  op: 'Const',
  attr: { value: { tensor: { dtype, tensorShape: dims(...shape) } }, dtype: { type: dtype } },
});
export const float = { T: { type: 'DT_FLOAT' } };

export function cnn(): { nodes: Node[]; weights: Weight[] } {
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

/**
 * Puts a resize (`op`) to `size` between the relu and the pool of a `cnn()` graph (relu -> resize ->
 * pool), its size a constant the loader reads from the shards.
 */
export function insertResize(
  graph: { nodes: Node[]; weights: Weight[] },
  op: 'ResizeNearestNeighbor' | 'ResizeBilinear',
  size: [number, number],
): void {
  graph.nodes.push(constNode('resize/size', 'DT_INT32', [2]), {
    name: 'resize',
    op,
    input: ['relu', 'resize/size'],
    attr: float,
  });
  graph.weights.push({ name: 'resize/size', shape: [2], dtype: 'int32', values: size });
  graph.nodes[graph.nodes.findIndex((node) => node.name === 'pool')].input = ['resize'];
}

/** model.json + one shard per weight (so a constant may sit in any shard) + card.json. */
export function graphFiles({ nodes, weights }: { nodes: Node[]; weights: Weight[] }): ModelFiles {
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
