import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import onnxProto from 'onnx-proto';
import { describe, expect, it } from 'vitest';
import {
  inspectOnnx,
  loadOnnxClassifier,
  OnnxFormatError,
  OnnxLimitError,
  OnnxUnsupportedError,
} from '../../../../src/engine/model/onnx/index.js';
import { buildModel, DataType, floatTensor, intTensor, type ModelSpec, withHead } from './onnx-builder.js';

const FIXTURES = path.join(import.meta.dirname, '../../../fixtures/onnx');
const fixture = (name: string) => new Uint8Array(readFileSync(path.join(FIXTURES, name, 'model.onnx')));

/** Loads and expects a refusal of `type`, with no tensor left behind. */
function refuse<T extends Error>(bytes: Uint8Array, type: new (...args: never[]) => T, limits = {}): T {
  const before = tf.memory().numTensors;
  let caught: unknown;
  try {
    loadOnnxClassifier(bytes, { limits }).dispose();
  } catch (error) {
    caught = error;
  }
  expect(tf.memory().numTensors).toBe(before);
  expect(caught).toBeInstanceOf(type);
  return caught as T;
}

const relu = (extra: Partial<ModelSpec> = {}): ModelSpec => ({
  ...withHead([{ op: 'Relu', inputs: ['x'], outputs: ['r'] }], 'r'),
  ...extra,
});

describe('ONNX import refusals', () => {
  it('accepts the minimal model the refusal cases start from', () => {
    const before = tf.memory().numTensors;
    const classifier = loadOnnxClassifier(buildModel(relu()));
    expect(classifier.numClasses).toBe(2);
    expect(classifier.card.inputShape).toEqual([4, 4, 3]);
    classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses an operator outside the allow-list, naming node, op type and opset', () => {
    const spec = relu();
    spec.nodes[0] = { op: 'LSTM', name: 'lstm_node', inputs: ['x'], outputs: ['r'] };
    const error = refuse(buildModel({ ...spec, opset: 13 }), OnnxUnsupportedError);
    expect(error.name).toBe('OnnxUnsupportedError');
    expect([error.node, error.opType, error.opset]).toEqual(['lstm_node', 'LSTM', 13]);
    expect(error.message).toContain("node 'lstm_node' (LSTM, opset 13)");
  });

  it('refuses a node of another operator domain', () => {
    const spec = relu();
    spec.nodes[0] = { ...spec.nodes[0], domain: 'com.microsoft' };
    expect(refuse(buildModel(spec), OnnxUnsupportedError).message).toContain("domain 'com.microsoft'");
  });

  it('refuses initializers with external data', () => {
    const spec = relu();
    spec.initializers![0] = {
      name: 'head_w',
      dims: [2, 3],
      dataType: DataType.FLOAT,
      dataLocation: onnxProto.onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [{ key: 'location', value: '../../etc/passwd' }],
    };
    expect(refuse(buildModel(spec), OnnxUnsupportedError).message).toContain('external file');
  });

  it('refuses two inputs, a non-float input and dynamic dimensions other than the batch', () => {
    const two = relu({
      inputs: [
        { name: 'x', dims: ['n', 3, 4, 4] },
        { name: 'x2', dims: ['n', 3, 4, 4] },
      ],
    });
    expect(refuse(buildModel(two), OnnxUnsupportedError).message).toContain('exactly one input');
    const ints = relu({ inputs: [{ name: 'x', dims: ['n', 3, 4, 4], elemType: DataType.INT64 }] });
    expect(refuse(buildModel(ints), OnnxUnsupportedError).message).toContain('float images');
    const dynamic = relu({ inputs: [{ name: 'x', dims: ['n', 3, 'height', 4] }] });
    expect(refuse(buildModel(dynamic), OnnxUnsupportedError).message).toContain('dimension H is dynamic');
  });

  it('refuses a truncated file and protobuf that is not a model', () => {
    const bytes = fixture('maxpool-view');
    expect(refuse(bytes.slice(0, Math.floor(bytes.length / 2)), OnnxFormatError).name).toBe(
      'OnnxFormatError',
    );
    const tensor = onnxProto.onnx.TensorProto.encode(floatTensor('w', [2], [1, 2])).finish();
    refuse(tensor, OnnxFormatError);
    const noGraph = onnxProto.onnx.ModelProto.encode({ irVersion: 8, producerName: 'x' }).finish();
    expect(refuse(noGraph, OnnxFormatError).message).toContain('not an ONNX model');
    refuse(new TextEncoder().encode('{"format": "layers-model"}'), OnnxFormatError);
    refuse(new Uint8Array(0), OnnxFormatError);
  });

  it('refuses an allow-listed op with an unsupported attribute or value, naming the attribute', () => {
    const reflect = relu();
    reflect.nodes.unshift({
      op: 'Pad',
      name: 'pad',
      inputs: ['x'],
      outputs: ['p'],
      attributes: { mode: 'reflect', pads: [0, 0, 1, 1, 0, 0, 1, 1] },
    });
    reflect.nodes[1].inputs = ['p'];
    const error = refuse(buildModel({ ...reflect, opset: 11 }), OnnxUnsupportedError);
    expect([error.node, error.attribute]).toEqual(['pad', 'mode']);

    const grouped = withHead(
      [
        {
          op: 'Conv',
          name: 'conv',
          inputs: ['x', 'w'],
          outputs: ['c'],
          attributes: { group: 3, kernel_shape: [1, 1] },
        },
      ],
      'c',
      6,
    );
    grouped.initializers.push(floatTensor('w', [6, 1, 1, 1], [1, 2, 3, 4, 5, 6]));
    // group 3 with 6 outputs is depthwise (multiplier 2), group 3 on 6 input channels a grouped
    // convolution: both accepted; a group that does not divide the channels is not.
    loadOnnxClassifier(buildModel(grouped)).dispose();
    const groupedConv = (group: number, weight: onnxProto.onnx.ITensorProto) => {
      const spec = withHead(
        [
          {
            op: 'Conv',
            name: 'conv',
            inputs: ['x', 'w'],
            outputs: ['c'],
            attributes: { group, kernel_shape: [1, 1] },
          },
        ],
        'c',
        weight.dims![0] as number,
      );
      spec.initializers.push(weight);
      return buildModel({ ...spec, inputs: [{ name: 'x', dims: ['n', 6, 4, 4] }] });
    };
    loadOnnxClassifier(groupedConv(3, floatTensor('w', [3, 2, 1, 1], [1, 2, 3, 4, 5, 6]))).dispose();
    const groupError = refuse(
      groupedConv(4, floatTensor('w', [4, 1, 1, 1], [1, 2, 3, 4])),
      OnnxUnsupportedError,
    );
    expect(groupError.attribute).toBe('group');

    const unknownAttribute = relu();
    unknownAttribute.nodes[0] = { ...unknownAttribute.nodes[0], attributes: { made_up: 1 } };
    expect(refuse(buildModel(unknownAttribute), OnnxUnsupportedError).attribute).toBe('made_up');
  });

  it('checks the limits from the file before any tensor', () => {
    const bytes = fixture('maxpool-view');
    expect(refuse(bytes, OnnxLimitError, { maxBytes: 1000 }).limit).toBe('bytes');
    expect(refuse(bytes, OnnxLimitError, { maxParameters: 10_000 }).limit).toBe('parameters');
    expect(refuse(bytes, OnnxLimitError, { maxTensorElements: 1000 }).limit).toBe('tensorElements');
  });

  it('warns when the model ends in Softmax', () => {
    const spec = relu();
    spec.nodes[spec.nodes.length - 1].outputs = ['logits'];
    spec.nodes.push({ op: 'Softmax', inputs: ['logits'], outputs: ['y'], attributes: { axis: 1 } });
    expect(inspectOnnx(buildModel(spec)).warnings.join()).toContain('Softmax');
  });
});

describe('inspectOnnx', () => {
  it('reports inputs, outputs, ops used and the parameter count without making tensors', () => {
    const before = tf.memory().numTensors;
    const summary = inspectOnnx(fixture('maxpool-view'));
    expect(tf.memory().numTensors).toBe(before);
    expect(summary.input).toEqual({ name: 'input', shape: ['n', 3, 32, 32], layout: 'NCHW' });
    expect(summary.output).toEqual({ name: 'logits', shape: ['n', 10] });
    // conv1 16*3*5*5+16, conv2 32*16*3*3+32, fc1 512*32+32, fc2 32*10+10
    expect(summary.parameterCount).toBe(1216 + 4640 + 16416 + 330);
    expect(summary.opsUsed).toMatchObject({ Conv: 2, MaxPool: 3, Gemm: 2, Relu: 3, Shape: 1, Gather: 1 });
    expect(summary.opset).toBe(17);
    expect(summary.warnings).toEqual([]);
  });
});

describe('ONNX folding limits', () => {
  it('refuses a folded constant over the element limit before computing it', () => {
    const spec = withHead([{ op: 'Relu', inputs: ['x'], outputs: ['r'] }], 'r');
    spec.nodes.unshift(
      {
        op: 'ConstantOfShape',
        inputs: ['rows'],
        outputs: ['a'],
        attributes: { value: { tensor: floatTensor('v', [1], [1]) } },
      },
      {
        op: 'ConstantOfShape',
        inputs: ['cols'],
        outputs: ['b'],
        attributes: { value: { tensor: floatTensor('v', [1], [2]) } },
      },
      { op: 'Mul', name: 'outer', inputs: ['a', 'b'], outputs: ['big'] },
    );
    spec.initializers.push(intTensor('rows', [2], [5000, 1]), intTensor('cols', [2], [1, 5000]));
    const error = refuse(buildModel(spec), OnnxLimitError, { maxTensorElements: 1_000_000 });
    expect(error.message).toContain("node 'outer'");
  });
});
