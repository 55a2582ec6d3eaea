import { broadcastShape, constant, transposeConstant } from './constants.js';
import { OnnxFormatError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import { channelVector } from './ops-conv.js';
import { defineConstant, foldBinary } from './ops-fold.js';
import {
  type Activation,
  Attributes,
  type Constant,
  type OpSpec,
  type Planner,
  type StepOp,
} from './plan.js';
import type { ConstTensor, OnnxNode } from './proto.js';

/** Normalisation, activations and arithmetic (the dense head and shape ops: ops-shape.ts). */

function elementwise(op: StepOp, planner: Planner, node: OnnxNode, at: OnnxNodeRef): void {
  const x = planner.activationInput(node, 0, at);
  const layout = x.layout;
  planner.define(node.outputs[0], planner.emit(op, [x], [], x.shape, layout, node.outputs[0], at.node));
}

const reluOp: OpSpec = {
  attributes: [],
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    const producer = x.producer;
    // Conv/Gemm + Relu run as one fused kernel when the Relu is the only reader.
    if (
      (producer?.op === 'conv' || producer?.op === 'matMul') &&
      producer.activation === 'linear' &&
      planner.soleReader(x)
    ) {
      producer.activation = 'relu';
      x.onnxName = node.outputs[0];
      planner.alias(node, x);
      return;
    }
    elementwise({ op: 'unary', fn: 'relu' }, planner, node, at);
  },
};

const clipOp: OpSpec = {
  attributes: ['min', 'max'],
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
    const min =
      planner.constantInput(node, 1, at, 'min')?.values[0] ?? a.float('min', Number.NEGATIVE_INFINITY);
    const max =
      planner.constantInput(node, 2, at, 'max')?.values[0] ?? a.float('max', Number.POSITIVE_INFINITY);
    if (min === 0 && max === 6) elementwise({ op: 'unary', fn: 'relu6' }, planner, node, at);
    else elementwise({ op: 'clip', min, max }, planner, node, at);
  },
};

/** A constant operand at the activation's rank (logical) and in its physical layout. */
function alignConstant(
  c: ConstTensor,
  x: Activation,
  at: OnnxNodeRef,
): { logical: number[]; physical: ConstTensor } {
  const rank = x.shape.length;
  if (c.shape.length > rank) {
    throw new OnnxUnsupportedError(
      `a constant of rank ${c.shape.length} broadcast over an activation of rank ${rank}`,
      at,
    );
  }
  const logical = [...new Array<number>(rank - c.shape.length).fill(1), ...c.shape];
  if (logical[0] !== 1)
    throw new OnnxUnsupportedError(`a constant [${c.shape}] that varies along the batch`, at);
  const floats = constant('float', logical, c.values);
  return { logical, physical: x.layout.kind === 'nhwc' ? transposeConstant(floats, [0, 2, 3, 1]) : floats };
}

function binaryOp(fn: 'add' | 'sub' | 'mul' | 'div'): OpSpec {
  const onnxName = ({ add: 'Add', sub: 'Sub', mul: 'Mul', div: 'Div' } as const)[fn];
  return {
    attributes: [],
    handler: (planner, node, at) => {
      const a = planner.input(node, 0);
      const b = planner.input(node, 1);
      if (!a || !b) throw new OnnxFormatError(`node '${at.node}' needs two inputs`, at.node);
      if (a.kind === 'constant' && b.kind === 'constant') {
        defineConstant(planner, node, foldBinary(planner, onnxName, a.tensor, b.tensor, at));
        return;
      }
      if (a.kind === 'constant' || b.kind === 'constant') {
        let x = (a.kind === 'activation' ? a : b) as Activation;
        const c = (a.kind === 'constant' ? a : b) as Constant;
        if (x.layout.kind === 'flat-hwc' && c.tensor.values.length > 1) x = planner.toLayout(x, 'plain');
        const { logical, physical } = alignConstant(c.tensor, x, at);
        const out = planner.emit(
          { op: 'binary', fn, constantFirst: a.kind === 'constant' },
          [x],
          [physical],
          broadcastShape(x.shape, logical),
          x.layout,
          node.outputs[0],
          at.node,
        );
        planner.define(node.outputs[0], out);
        return;
      }
      let [x, y] = [a, b];
      if (JSON.stringify(x.layout) !== JSON.stringify(y.layout) || x.shape.length !== y.shape.length) {
        const target = x.shape.length === 4 && y.shape.length === 4 ? 'nhwc' : 'plain';
        x = planner.toLayout(x, target);
        y = planner.toLayout(y, target);
      }
      let shape: number[];
      try {
        shape = broadcastShape(x.shape, y.shape);
      } catch (error) {
        throw new OnnxFormatError(`node '${at.node}': ${(error as Error).message}`, at.node);
      }
      planner.define(
        node.outputs[0],
        planner.emit(
          { op: 'binary', fn, constantFirst: false },
          [x, y],
          [],
          shape,
          x.layout,
          node.outputs[0],
          at.node,
        ),
      );
    },
  };
}

const batchNormOp: OpSpec = {
  attributes: ['epsilon', 'momentum', 'training_mode', 'spatial'],
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
    if (a.int('training_mode', 0) !== 0)
      throw new OnnxUnsupportedError(
        'training mode is not supported (export with model.eval())',
        at,
        'training_mode',
      );
    if (a.int('spatial', 1) !== 1)
      throw new OnnxUnsupportedError('spatial=0 is not supported', at, 'spatial');
    let x = planner.activationInput(node, 0, at);
    const channels = x.shape[1];
    const param = (index: number, what: string) => {
      const t = planner.constantInput(node, index, at, what);
      if (!t) throw new OnnxFormatError(`node '${at.node}' lacks its ${what}`, at.node);
      return channelVector(t, channels, what, at);
    };
    const [scale, offset, mean, variance] = [
      param(1, 'scale'),
      param(2, 'B'),
      param(3, 'mean'),
      param(4, 'var'),
    ];
    if (x.shape.length === 4) x = planner.toLayout(x, 'nhwc');
    else if (x.shape.length === 2) x = planner.toLayout(x, 'plain');
    else throw new OnnxUnsupportedError(`BatchNormalization of rank ${x.shape.length} is not supported`, at);
    const out = planner.emit(
      { op: 'batchNorm', epsilon: a.float('epsilon', 1e-5) },
      [x],
      [mean, variance, offset, scale],
      x.shape,
      x.layout,
      node.outputs[0],
      at.node,
    );
    planner.define(node.outputs[0], out);
  },
};

export const TENSOR_OPS: Record<string, OpSpec> = {
  BatchNormalization: batchNormOp,
  Relu: reluOp,
  LeakyRelu: {
    attributes: ['alpha'],
    handler: (p, n, at) =>
      elementwise({ op: 'leakyRelu', alpha: new Attributes(n, at).float('alpha', 0.01) }, p, n, at),
  },
  Clip: clipOp,
  Sigmoid: { attributes: [], handler: (p, n, at) => elementwise({ op: 'unary', fn: 'sigmoid' }, p, n, at) },
  Tanh: { attributes: [], handler: (p, n, at) => elementwise({ op: 'unary', fn: 'tanh' }, p, n, at) },
  Add: binaryOp('add'),
  Sub: binaryOp('sub'),
  Mul: binaryOp('mul'),
  Div: binaryOp('div'),
};
