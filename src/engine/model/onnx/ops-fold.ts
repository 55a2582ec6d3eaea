import {
  type BinaryOp,
  binaryConstant,
  constant,
  requireStatic,
  scatterNdConstant,
  sizeOf,
  unaryConstant,
  whereConstant,
} from './constants.js';
import { broadcastDims } from './dims.js';
import { OnnxLimitError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import { Attributes, type OpSpec, type Planner } from './plan.js';
import { type ConstTensor, DataType, FLOAT_TYPES, INT_TYPES, type OnnxNode } from './proto.js';

/**
 * The ops that only ever compute shapes, pads, masks and indices in exported classifiers
 * (`view(x.size(0), -1)` becomes Shape/Gather/Unsqueeze/Concat, `F.pad` a Constant/ConstantOfShape/
 * Concat/Reshape/Slice/Transpose/Cast chain, Swin's attention mask ConstantOfShape/ScatterND/Equal/
 * Where): folded here at load, never run.
 */

export function defineConstant(planner: Planner, node: OnnxNode, tensor: ConstTensor, output = 0): void {
  planner.define(node.outputs[output], { kind: 'constant', tensor });
}

function constInput(
  planner: Planner,
  node: OnnxNode,
  index: number,
  at: OnnxNodeRef,
  what: string,
): ConstTensor {
  const tensor = planner.constantInput(node, index, at, what);
  if (!tensor) throw new OnnxUnsupportedError(`input ${index} (${what}) is missing`, at, what);
  return tensor;
}

function ints(tensor: ConstTensor): number[] {
  return Array.from(tensor.values);
}

/** A folded constant's size, checked before its values are computed. */
export function checkFoldedSize(planner: Planner, size: number, at: OnnxNodeRef): void {
  if (size > planner.limits.maxTensorElements) {
    throw new OnnxLimitError(
      'tensorElements',
      size,
      planner.limits.maxTensorElements,
      `node '${at.node}' (folded)`,
    );
  }
}

const constantOp: OpSpec = {
  attributes: ['value', 'value_float', 'value_floats', 'value_int', 'value_ints'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const a = new Attributes(node, at, planner.model);
    let tensor = a.tensor('value');
    if (!tensor && a.has('value_float')) tensor = constant('float', [], [a.float('value_float', 0)]);
    if (!tensor && a.has('value_int')) tensor = constant('int', [], [a.int('value_int', 0)]);
    const floats = node.attributes.get('value_floats')?.floats;
    if (!tensor && floats) tensor = constant('float', [floats.length], floats);
    const intList = a.ints('value_ints');
    if (!tensor && intList) tensor = constant('int', [intList.length], intList);
    if (!tensor) throw new OnnxUnsupportedError('a Constant needs a value', at, 'value');
    defineConstant(planner, node, tensor);
  },
};

const shapeOp: OpSpec = {
  attributes: ['start', 'end'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const value = planner.input(node, 0);
    if (!value) throw new OnnxUnsupportedError('Shape needs an input', at);
    const dims = value.kind === 'constant' ? value.tensor.shape : value.shape;
    const a = new Attributes(node, at);
    const rank = dims.length;
    const clampAxis = (v: number) => Math.min(Math.max(v < 0 ? v + rank : v, 0), rank);
    const part = dims.slice(clampAxis(a.int('start', 0)), clampAxis(a.int('end', rank)));
    // A dimension holding the batch (-k) is the element k n.
    const tensor = constant(
      'int',
      [part.length],
      part.map((d) => Math.max(d, 0)),
    );
    if (part.some((d) => d < 0)) tensor.batch = Float64Array.from(part, (d) => (d < 0 ? -d : 0));
    defineConstant(planner, node, tensor);
  },
};

const sizeOp: OpSpec = {
  attributes: [],
  foldOnly: true,
  handler: (planner, node, at) => {
    const value = planner.input(node, 0);
    if (!value) throw new OnnxUnsupportedError('Size needs an input', at);
    const dims = value.kind === 'constant' ? value.tensor.shape : value.shape;
    const elements = dims.reduce((a, d) => a * Math.abs(d), 1);
    const tensor = constant('int', [], [dims.some((d) => d < 0) ? 0 : elements]);
    if (dims.some((d) => d < 0)) tensor.batch = Float64Array.of(elements);
    defineConstant(planner, node, tensor);
  },
};

const constantOfShapeOp: OpSpec = {
  attributes: ['value'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const shapeTensor = constInput(planner, node, 0, at, 'shape');
    requireStatic(shapeTensor, 'ConstantOfShape');
    const shape = ints(shapeTensor);
    if (shape.some((d) => !Number.isInteger(d) || d < 0)) {
      throw new OnnxUnsupportedError(`shape [${shape}] is not static`, at, 'input');
    }
    const size = sizeOf(shape);
    if (size > planner.limits.maxTensorElements) {
      throw new OnnxLimitError(
        'tensorElements',
        size,
        planner.limits.maxTensorElements,
        `node '${at.node}' ConstantOfShape`,
      );
    }
    const fill = new Attributes(node, at).tensor('value') ?? constant('float', [1], [0]);
    const out = constant(fill.type, shape, []);
    out.values =
      fill.type === 'float'
        ? new Float32Array(size).fill(fill.values[0])
        : new Float64Array(size).fill(fill.values[0]);
    defineConstant(planner, node, out);
  },
};

const rangeOp: OpSpec = {
  attributes: [],
  foldOnly: true,
  handler: (planner, node, at) => {
    const [start, limit, delta] = [0, 1, 2].map((i) => {
      const t = constInput(planner, node, i, at, ['start', 'limit', 'delta'][i]);
      requireStatic(t, 'Range');
      return t;
    });
    const [s, l, d] = [start.values[0], limit.values[0], delta.values[0]];
    if (d === 0) throw new OnnxUnsupportedError('Range with delta 0', at);
    const count = Math.max(Math.ceil((l - s) / d), 0);
    checkFoldedSize(planner, count, at);
    defineConstant(
      planner,
      node,
      constant(
        start.type,
        [count],
        Array.from({ length: count }, (_, i) => s + i * d),
      ),
    );
  },
};

const castOp: OpSpec = {
  attributes: ['to', 'saturate'],
  fold: (_planner, node, at, [data]) => {
    const to = new Attributes(node, at).int('to', 0);
    const x = data!;
    if (FLOAT_TYPES.has(to))
      return [{ ...constant('float', x.shape, x.values), ...(x.batch && { batch: x.batch }) }];
    if (INT_TYPES.has(to)) {
      const out = constant(
        'int',
        x.shape,
        x.values.map((v) => Math.trunc(v)),
      );
      if (x.batch) out.batch = x.batch;
      return [out];
    }
    if (to === DataType.BOOL) return [unaryConstant(x, (v) => (v !== 0 ? 1 : 0), 'bool')];
    throw new OnnxUnsupportedError(`cast to data type ${DataType[to] ?? to} is not supported`, at, 'to');
  },
  handler: (planner, node, at) => {
    // A cast of float activations to a float type changes nothing here (every tensor is float32).
    const x = planner.activationInput(node, 0, at);
    const to = new Attributes(node, at).int('to', 0);
    if (!FLOAT_TYPES.has(to)) {
      throw new OnnxUnsupportedError(
        `cast of an activation to ${DataType[to] ?? to} is not supported (float only)`,
        at,
        'to',
      );
    }
    planner.alias(node, x);
  },
};

function foldBinaryOnly(op: BinaryOp, attributes: string[] = []): OpSpec {
  return {
    attributes,
    foldOnly: true,
    handler: (planner, node, at) => {
      const a = constInput(planner, node, 0, at, 'A');
      const b = constInput(planner, node, 1, at, 'B');
      checkFoldedSize(planner, sizeOf(broadcastDims(a.shape, b.shape)), at);
      defineConstant(planner, node, binaryConstant(op, a, b, new Attributes(node, at).int('fmod', 0) === 1));
    },
  };
}

const notOp: OpSpec = {
  attributes: [],
  foldOnly: true,
  handler: (planner, node, at) => {
    defineConstant(
      planner,
      node,
      unaryConstant(constInput(planner, node, 0, at, 'X'), (v) => (v === 0 ? 1 : 0), 'bool'),
    );
  },
};

const whereOp: OpSpec = {
  attributes: [],
  foldOnly: true,
  handler: (planner, node, at) => {
    const [condition, x, y] = [0, 1, 2].map((i) =>
      constInput(planner, node, i, at, ['condition', 'X', 'Y'][i]),
    );
    checkFoldedSize(planner, sizeOf(broadcastDims(broadcastDims(condition.shape, x.shape), y.shape)), at);
    defineConstant(planner, node, whereConstant(condition, x, y));
  },
};

const scatterNdOp: OpSpec = {
  attributes: ['reduction'],
  foldOnly: true,
  handler: (planner, node, at) => {
    if (new Attributes(node, at).string('reduction', 'none') !== 'none')
      throw new OnnxUnsupportedError('only reduction none is supported', at, 'reduction');
    const [data, indices, updates] = [0, 1, 2].map((i) =>
      constInput(planner, node, i, at, ['data', 'indices', 'updates'][i]),
    );
    defineConstant(planner, node, scatterNdConstant(data, indices, updates));
  },
};

export const FOLD_OPS: Record<string, OpSpec> = {
  Constant: constantOp,
  Shape: shapeOp,
  Size: sizeOp,
  ConstantOfShape: constantOfShapeOp,
  Range: rangeOp,
  Cast: castOp,
  Equal: foldBinaryOnly('Equal'),
  Less: foldBinaryOnly('Less'),
  Greater: foldBinaryOnly('Greater'),
  LessOrEqual: foldBinaryOnly('LessOrEqual'),
  GreaterOrEqual: foldBinaryOnly('GreaterOrEqual'),
  And: foldBinaryOnly('And'),
  Or: foldBinaryOnly('Or'),
  Xor: foldBinaryOnly('Xor'),
  Mod: foldBinaryOnly('Mod', ['fmod']),
  Not: notOp,
  Where: whereOp,
  ScatterND: scatterNdOp,
};
