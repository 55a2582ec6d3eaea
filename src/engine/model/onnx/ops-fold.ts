import {
  type BinaryOp,
  binaryConstant,
  broadcastShape,
  concatConstants,
  constant,
  gatherConstant,
  normalizeAxis,
  reshapeTarget,
  sizeOf,
  sliceConstant,
  transposeConstant,
} from './constants.js';
import { OnnxLimitError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import { Attributes, type OpSpec, type Planner } from './plan.js';
import { type ConstTensor, DataType, FLOAT_TYPES, INT_TYPES, type OnnxNode } from './proto.js';

/**
 * The ops that only ever compute shapes, pads and other constants in exported classifiers
 * (`view(x.size(0), -1)` becomes Shape/Gather/Unsqueeze/Concat, `F.pad` a Constant/ConstantOfShape/
 * Concat/Reshape/Slice/Transpose/Cast chain): folded here at load, never run.
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

/** Axes from the attribute (older opsets) or input `index` (newer). */
function axesOf(planner: Planner, node: OnnxNode, at: OnnxNodeRef, index: number): number[] | undefined {
  const fromAttribute = new Attributes(node, at).ints('axes');
  if (fromAttribute) return fromAttribute;
  const input = planner.constantInput(node, index, at, 'axes');
  return input ? ints(input) : undefined;
}

const constantOp: OpSpec = {
  attributes: ['value', 'value_float', 'value_floats', 'value_int', 'value_ints'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
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
    const shape =
      value.kind === 'constant' ? value.tensor.shape : value.shape.map((d) => (d < 0 ? Number.NaN : d));
    const a = new Attributes(node, at);
    const rank = shape.length;
    const clampAxis = (v: number) => Math.min(Math.max(v < 0 ? v + rank : v, 0), rank);
    const part = shape.slice(clampAxis(a.int('start', 0)), clampAxis(a.int('end', rank)));
    defineConstant(planner, node, constant('int', [part.length], part));
  },
};

const gatherOp: OpSpec = {
  attributes: ['axis'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const data = constInput(planner, node, 0, at, 'data');
    const indices = constInput(planner, node, 1, at, 'indices');
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 0), data.shape.length);
    checkFoldedSize(
      planner,
      (sizeOf(data.shape) / Math.max(1, data.shape[axis])) * sizeOf(indices.shape),
      at,
    );
    defineConstant(planner, node, gatherConstant(data, indices, axis));
  },
};

const unsqueezeOp: OpSpec = {
  attributes: ['axes'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const data = constInput(planner, node, 0, at, 'data');
    const axes = axesOf(planner, node, at, 1) ?? [];
    const rank = data.shape.length + axes.length;
    const normalized = axes.map((axis) => normalizeAxis(axis, rank)).sort((x, y) => x - y);
    const shape = [...data.shape];
    for (const axis of normalized) shape.splice(axis, 0, 1);
    defineConstant(planner, node, { ...data, shape });
  },
};

const squeezeOp: OpSpec = {
  attributes: ['axes'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const data = constInput(planner, node, 0, at, 'data');
    const axes = axesOf(planner, node, at, 1)?.map((axis) => normalizeAxis(axis, data.shape.length));
    const shape = data.shape.filter((d, i) => (axes ? !axes.includes(i) : d !== 1));
    defineConstant(planner, node, { ...data, shape });
  },
};

const constantOfShapeOp: OpSpec = {
  attributes: ['value'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const shape = ints(constInput(planner, node, 0, at, 'shape'));
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

const sliceOp: OpSpec = {
  attributes: ['starts', 'ends', 'axes'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const data = constInput(planner, node, 0, at, 'data');
    const a = new Attributes(node, at);
    const starts = a.ints('starts') ?? ints(constInput(planner, node, 1, at, 'starts'));
    const ends = a.ints('ends') ?? ints(constInput(planner, node, 2, at, 'ends'));
    const axes =
      a.ints('axes') ??
      (node.inputs[3] ? ints(constInput(planner, node, 3, at, 'axes')) : starts.map((_, i) => i));
    const steps = node.inputs[4] ? ints(constInput(planner, node, 4, at, 'steps')) : starts.map(() => 1);
    defineConstant(planner, node, sliceConstant(data, starts, ends, axes, steps));
  },
};

const castOp: OpSpec = {
  attributes: ['to'],
  foldOnly: true,
  handler: (planner, node, at) => {
    const data = constInput(planner, node, 0, at, 'input');
    const to = new Attributes(node, at).int('to', 0);
    let out: ConstTensor;
    if (FLOAT_TYPES.has(to)) out = constant('float', data.shape, data.values);
    else if (INT_TYPES.has(to))
      out = constant(
        'int',
        data.shape,
        data.values.map((v) => (Number.isNaN(v) ? v : Math.trunc(v))),
      );
    else if (to === DataType.BOOL)
      out = constant(
        'bool',
        data.shape,
        data.values.map((v) => (v !== 0 ? 1 : 0)),
      );
    else throw new OnnxUnsupportedError(`cast to data type ${DataType[to] ?? to} is not supported`, at, 'to');
    defineConstant(planner, node, out);
  },
};

export const FOLD_OPS: Record<string, OpSpec> = {
  Constant: constantOp,
  Shape: shapeOp,
  Gather: gatherOp,
  Unsqueeze: unsqueezeOp,
  Squeeze: squeezeOp,
  ConstantOfShape: constantOfShapeOp,
  Slice: sliceOp,
  Cast: castOp,
};

/** Folding for the runtime ops whose inputs are all constant. */
export function foldBinary(
  planner: Planner,
  op: BinaryOp,
  a: ConstTensor,
  b: ConstTensor,
  at: OnnxNodeRef,
): ConstTensor {
  if (a.values.some(Number.isNaN) || b.values.some(Number.isNaN)) {
    throw new OnnxUnsupportedError('arithmetic on the batch size is not supported', at);
  }
  checkFoldedSize(planner, sizeOf(broadcastShape(a.shape, b.shape)), at);
  return binaryConstant(op, a, b);
}

/** A folded constant's size, checked before its values are computed. */
function checkFoldedSize(planner: Planner, size: number, at: OnnxNodeRef): void {
  if (size > planner.limits.maxTensorElements) {
    throw new OnnxLimitError(
      'tensorElements',
      size,
      planner.limits.maxTensorElements,
      `node '${at.node}' (folded)`,
    );
  }
}

export function foldReshape(
  data: ConstTensor,
  target: number[],
  allowZero: boolean,
  at: OnnxNodeRef,
): ConstTensor {
  if (target.some(Number.isNaN)) throw new OnnxUnsupportedError('reshaping a constant by the batch size', at);
  return { ...data, shape: reshapeTarget(data.shape, target, allowZero) };
}

export { concatConstants, transposeConstant };
