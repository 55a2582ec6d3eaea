import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  loadOnnxClassifier,
  OnnxFormatError,
  OnnxLimitError,
  OnnxTrialError,
  OnnxUnsupportedError,
} from '../../../../src/engine/model/onnx/index.js';
import { concat, repeatedField, varint, withGraphPrefix } from '../../../helpers/protobuf-wire.js';
import { buildModel, floatTensor, type ModelSpec, withHead } from './onnx-builder.js';

/**
 * Issue 26: the node-count limit was checked after protobuf had decoded the whole graph, so 50M
 * empty NodeProto entries (100 MB) blocked the event loop for 99 s and exhausted the heap. The wire
 * scan (wire-scan.ts) counts while it reads and stops at the first limit crossed: nodes in any
 * graph (main, sub-graphs, functions), initializers, decoded values of any field, nesting.
 */

const relu = (extra: Partial<ModelSpec> = {}): ModelSpec => ({
  ...withHead([{ op: 'Relu', inputs: ['x'], outputs: ['r'] }], 'r'),
  ...extra,
});

/** Loads and expects a refusal of `type`, with no tensor left behind. */
function refuse<T extends Error>(bytes: Uint8Array, type: new (...args: never[]) => T): T {
  const before = tf.memory().numTensors;
  let caught: unknown;
  try {
    loadOnnxClassifier(bytes).dispose();
  } catch (error) {
    caught = error;
  }
  expect(tf.memory().numTensors).toBe(before);
  expect(caught).toBeInstanceOf(type);
  return caught as T;
}

const emptyNode: number[] = [];

describe('ONNX limits enforced while reading the wire format', () => {
  it('5M empty NodeProto entries before a valid graph: refused at node 100,001, before any decode', () => {
    const bytes = withGraphPrefix(buildModel(relu()), repeatedField(1, emptyNode, 5_000_000));
    const error = refuse(bytes, OnnxLimitError);
    // Counted while reading: the refusal comes at the first node over the limit, not after all 5M.
    expect([error.limit, error.value, error.maximum]).toEqual(['nodes', 100_001, 100_000]);
  });

  it('nodes in a sub-graph (an If branch attribute) count towards the same limit', () => {
    // NodeProto { attribute: AttributeProto { name: 'then_branch', g: GraphProto { node x 200k } } }
    const subgraph = repeatedField(1, emptyNode, 200_000);
    const attribute = [
      ...[0x0a, 11, ...new TextEncoder().encode('then_branch')],
      ...varint((6 << 3) | 2),
      ...varint(subgraph.length),
    ];
    const attributeBytes = concat(new Uint8Array(attribute), subgraph);
    const node = concat(
      new Uint8Array([...varint((5 << 3) | 2), ...varint(attributeBytes.length)]),
      attributeBytes,
    );
    const prefix = concat(new Uint8Array([...varint((1 << 3) | 2), ...varint(node.length)]), node);
    const error = refuse(withGraphPrefix(buildModel(relu()), prefix), OnnxLimitError);
    expect(error.limit).toBe('nodes');
  });

  it('nodes of a model-local function count too', () => {
    const function_ = repeatedField(7, emptyNode, 150_000);
    const model = concat(
      buildModel(relu()),
      new Uint8Array([...varint((25 << 3) | 2), ...varint(function_.length)]),
      function_,
    );
    expect(refuse(model, OnnxLimitError).limit).toBe('nodes');
  });

  it('2M empty initializers are refused by count', () => {
    const error = refuse(
      withGraphPrefix(buildModel(relu()), repeatedField(5, [], 2_000_000)),
      OnnxLimitError,
    );
    expect(error.limit).toBe('initializers');
  });

  it('other repeated fields (value_info, node inputs, attributes) are refused by decoded values', () => {
    // 5M empty value_info entries.
    expect(
      refuse(withGraphPrefix(buildModel(relu()), repeatedField(13, [], 5_000_000)), OnnxLimitError).limit,
    ).toBe('protoElements');
    // One node with 5M empty input names.
    const inputs = repeatedField(1, [], 5_000_000);
    const node = concat(new Uint8Array([...varint((1 << 3) | 2), ...varint(inputs.length)]), inputs);
    expect(refuse(withGraphPrefix(buildModel(relu()), node), OnnxLimitError).limit).toBe('protoElements');
  });

  it('a packed int64 array of 5M values (tensor dims) is counted per value', () => {
    const dims = new Uint8Array(5_000_000).fill(1);
    const tensor = concat(new Uint8Array([...varint((1 << 3) | 2), ...varint(dims.length)]), dims);
    const initializer = concat(new Uint8Array([...varint((5 << 3) | 2), ...varint(tensor.length)]), tensor);
    expect(refuse(withGraphPrefix(buildModel(relu()), initializer), OnnxLimitError).limit).toBe(
      'protoElements',
    );
  });

  it('types nested 10,000 deep are refused by depth', () => {
    // ValueInfoProto { type: TypeProto { sequence_type: { elem_type: TypeProto { ... } } } }
    let type: Uint8Array = new Uint8Array(0);
    for (let i = 0; i < 10_000; i++) {
      const sequence = concat(new Uint8Array([...varint((1 << 3) | 2), ...varint(type.length)]), type);
      type = concat(new Uint8Array([...varint((4 << 3) | 2), ...varint(sequence.length)]), sequence);
    }
    const valueInfo = concat(new Uint8Array([...varint((2 << 3) | 2), ...varint(type.length)]), type);
    const field = concat(new Uint8Array([...varint((13 << 3) | 2), ...varint(valueInfo.length)]), valueInfo);
    expect(refuse(withGraphPrefix(buildModel(relu()), field), OnnxLimitError).limit).toBe('depth');
  });

  it('a length past the end and a broken wire type are format errors', () => {
    const model = buildModel(relu());
    const truncated = concat(model, new Uint8Array([...varint((7 << 3) | 2), ...varint(1_000_000), 1, 2]));
    expect(refuse(truncated, OnnxFormatError).message).toContain('past the end');
    expect(refuse(concat(model, new Uint8Array([(3 << 3) | 7])), OnnxFormatError).message).toContain(
      'wire type 7',
    );
  });

  it('refuses opsets outside 11-18, naming the opset', () => {
    for (const opset of [9, 10, 19, 25]) {
      const error = refuse(buildModel({ ...relu(), opset }), OnnxUnsupportedError);
      expect(error.message).toContain(`opset ${opset}`);
      expect(error.message).toContain('11-18');
    }
    for (const opset of [11, 18]) loadOnnxClassifier(buildModel({ ...relu(), opset })).dispose();
  });

  it('a model whose logits are not finite (NaN or infinite biases) fails its trial at load', () => {
    for (const bias of [Number.NaN, Number.POSITIVE_INFINITY]) {
      const spec = relu();
      spec.initializers = spec.initializers?.map((t) =>
        t.name === 'head_b' ? floatTensor('head_b', [2], [bias, 0]) : t,
      );
      const error = refuse(buildModel(spec), OnnxTrialError);
      expect(error.message).toContain('non-finite logits');
    }
  });
});
