import {
  broadcastConstant,
  checkedIndices,
  concatConstants,
  constant,
  gatherConstant,
  normalizeAxis,
  requireStatic,
  sizeOf,
  sliceConstant,
  sliceRanges,
  transposeConstant,
} from './constants.js';
import { broadcastDims, type Dim, formatShape, isBatchDim, perExample, reshapeDims } from './dims.js';
import { OnnxFormatError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import { checkFoldedSize, defineConstant } from './ops-fold.js';
import {
  type Activation,
  Attributes,
  type Constant,
  identityPerm,
  invertPerm,
  type Layout,
  type OpSpec,
  type Planner,
  permOf,
  physicalAxis,
  physicalShape,
  type Value,
} from './plan.js';
import type { ConstTensor, OnnxNode } from './proto.js';

/** Shape ops (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Expand) and pass-throughs. */

function foldReshape(data: ConstTensor, target: number[], at: OnnxNodeRef): ConstTensor {
  if (target.some((d) => d < 0 && d !== -1) || target.filter((d) => d === -1).length > 1) {
    throw new OnnxUnsupportedError(`reshaping a constant to [${target}]`, at);
  }
  const total = sizeOf(data.shape);
  const known = sizeOf(target.filter((d) => d !== -1));
  const shape = target.map((d) => (d === -1 ? total / known : d));
  if (sizeOf(shape) !== total || shape.some((d) => !Number.isInteger(d))) {
    throw new OnnxFormatError(`node '${at.node}': cannot reshape [${data.shape}] to [${target}]`, at.node);
  }
  return { ...data, shape };
}

/** Reshape of an activation to a logical target, with the NHWC Flatten kept as rows in NHWC order. */
function reshapeActivation(
  planner: Planner,
  x: Activation,
  target: Dim[],
  node: OnnxNode,
  at: OnnxNodeRef,
): void {
  const [first, ...rest] = x.shape;
  // An NHWC image flattened for a dense layer: its rows stay in NHWC order, the Gemm's weight rows move.
  if (
    x.layout.kind === 'perm' &&
    x.shape.length === 4 &&
    x.layout.perm.join() === '0,2,3,1' &&
    target.length === 2 &&
    target[0] === first &&
    target[1] === perExample(rest) &&
    !rest.some(isBatchDim)
  ) {
    const [, c, h, w] = x.shape;
    // With 1x1 maps NHWC and NCHW orders coincide.
    const layout: Layout = h * w === 1 ? { kind: 'perm', perm: [0, 1] } : { kind: 'flat-hwc', c, h, w };
    planner.define(
      node.outputs[0],
      planner.emit({ op: 'reshape', shape: target }, [x], [], target, layout, node.outputs[0], at.node),
    );
    return;
  }
  if (target.length === x.shape.length && target.every((d, i) => d === x.shape[i])) {
    planner.alias(node, x);
    return;
  }
  planner.define(node.outputs[0], planner.reshape(x, target, node.outputs[0], at.node));
}

/** Flatten's axis: in [-rank, rank], negative counted from the end. */
function flattenAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!(Number.isInteger(a) && a >= 0 && a <= rank))
    throw new Error(`axis ${axis} is out of range for rank ${rank}`);
  return a;
}

const flattenOp: OpSpec = {
  attributes: ['axis'],
  fold: (_p, node, at, [x]) => {
    const axis = flattenAxis(new Attributes(node, at).int('axis', 1), x!.shape.length);
    return [{ ...x!, shape: [sizeOf(x!.shape.slice(0, axis)), sizeOf(x!.shape.slice(axis))] }];
  },
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    const axis = flattenAxis(new Attributes(node, at).int('axis', 1), x.shape.length);
    const merge = (dims: Dim[]): Dim => (dims.some(isBatchDim) ? -perExample(dims) : perExample(dims));
    const target = [merge(x.shape.slice(0, axis)), merge(x.shape.slice(axis))];
    reshapeActivation(planner, x, target, node, at);
  },
};

const reshapeOp: OpSpec = {
  attributes: ['allowzero'],
  fold: (_p, node, at, [data, shape]) => {
    requireStatic(shape!, 'a reshape of a constant by the batch size');
    const allowZero = new Attributes(node, at).int('allowzero', 0) === 1;
    const target = Array.from(shape!.values, (d, i) => (d === 0 && !allowZero ? data!.shape[i] : d));
    return [foldReshape(data!, target, at)];
  },
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    const targetTensor = planner.constantInput(node, 1, at, 'shape');
    if (!targetTensor) throw new OnnxFormatError(`node '${at.node}' needs data and shape`, at.node);
    const allowZero = new Attributes(node, at).int('allowzero', 0) === 1;
    let target: Dim[];
    try {
      target = reshapeDims(x.shape, targetTensor, allowZero);
    } catch (error) {
      // A model exported with a fixed batch of 1 writes the batch as a leading 1.
      const values = Array.from(targetTensor.values);
      if (planner.staticBatchOne && values[0] === 1 && x.shape[0] === -1) {
        target = reshapeDims(x.shape, constant('int', [values.length], [-1, ...values.slice(1)]), allowZero);
        if (target[0] !== -1) throw error;
      } else {
        throw new OnnxUnsupportedError(
          `a reshape of ${formatShape(x.shape)} to [${Array.from(targetTensor.values)}] ${(error as Error).message}`,
          at,
          'shape',
        );
      }
    }
    reshapeActivation(planner, x, target, node, at);
  },
};

const transposeOp: OpSpec = {
  attributes: ['perm'],
  fold: (_p, node, at, [x]) => {
    const rank = x!.shape.length;
    const perm = new Attributes(node, at).ints('perm') ?? identityPerm(rank).reverse();
    return [transposeConstant(x!, perm)];
  },
  handler: (planner, node, at) => {
    let x = planner.activationInput(node, 0, at);
    const rank = x.shape.length;
    const perm = new Attributes(node, at).ints('perm') ?? identityPerm(rank).reverse();
    if (perm.length !== rank || [...perm].sort((a, b) => a - b).some((p, i) => p !== i)) {
      throw new OnnxFormatError(
        `node '${at.node}': perm [${perm}] is not a permutation of rank ${rank}`,
        at.node,
      );
    }
    if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
    // Only the layout changes: output logical axis i is input axis perm[i]; physically nothing moves.
    const inverse = invertPerm(perm);
    const layout: Layout = { kind: 'perm', perm: permOf(x)!.map((axis) => inverse[axis]) };
    planner.define(
      node.outputs[0],
      planner.view(
        x,
        perm.map((p) => x.shape[p]),
        layout,
        node.outputs[0],
      ),
    );
  },
};

/** Axes of Squeeze/Unsqueeze: the attribute (older opsets) or input 1 (newer). */
function axesOf(planner: Planner, node: OnnxNode, at: OnnxNodeRef): number[] | undefined {
  const fromAttribute = new Attributes(node, at).ints('axes');
  if (fromAttribute) return fromAttribute;
  const input = planner.constantInput(node, 1, at, 'axes');
  return input ? Array.from(input.values) : undefined;
}

function unsqueezedShape<T extends number>(shape: readonly T[], axes: number[]): number[] {
  const rank = shape.length + axes.length;
  const normalized = axes.map((axis) => normalizeAxis(axis, rank)).sort((x, y) => x - y);
  const out: number[] = [...shape];
  for (const axis of normalized) out.splice(axis, 0, 1);
  return out;
}

function squeezedShape(shape: readonly number[], axes: number[] | undefined, at: OnnxNodeRef): number[] {
  const normalized = axes?.map((axis) => normalizeAxis(axis, shape.length));
  if (normalized?.some((axis) => shape[axis] !== 1)) {
    throw new OnnxUnsupportedError(`squeezing an axis of size other than 1 in [${shape}]`, at, 'axes');
  }
  return shape.filter((d, i) => (normalized ? !normalized.includes(i) : d !== 1));
}

const unsqueezeOp: OpSpec = {
  attributes: ['axes'],
  fold: (planner, node, at, [x]) => [
    { ...x!, shape: unsqueezedShape(x!.shape, axesOf(planner, node, at) ?? []) },
  ],
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    reshapeActivation(planner, x, unsqueezedShape(x.shape, axesOf(planner, node, at) ?? []), node, at);
  },
};

const squeezeOp: OpSpec = {
  attributes: ['axes'],
  fold: (planner, node, at, [x]) => [
    { ...x!, shape: squeezedShape(x!.shape, axesOf(planner, node, at), at) },
  ],
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    reshapeActivation(planner, x, squeezedShape(x.shape, axesOf(planner, node, at), at), node, at);
  },
};

/** The layout most of the activations have (ties: the first), so that at most the others move. */
function commonPerm(values: Activation[]): number[] {
  const counts = new Map<string, { perm: number[]; count: number }>();
  for (const v of values) {
    const perm = permOf(v) ?? identityPerm(v.shape.length);
    const key = perm.join();
    const entry = counts.get(key) ?? { perm, count: 0 };
    entry.count++;
    counts.set(key, entry);
  }
  return [...counts.values()].sort((a, b) => b.count - a.count)[0].perm;
}

const concatOp: OpSpec = {
  attributes: ['axis'],
  fold: (_p, node, at, inputs) => [
    concatConstants(
      inputs.filter((t): t is ConstTensor => t !== undefined),
      new Attributes(node, at).int('axis', 0),
    ),
  ],
  handler: (planner, node, at) => {
    const values = node.inputs
      .map((_, i) => planner.input(node, i))
      .filter((v): v is Value => v !== undefined);
    const activations = values.filter((v): v is Activation => v.kind === 'activation');
    const rank = activations[0].shape.length;
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 0), rank);
    const shapes = values.map((v) => (v.kind === 'activation' ? v.shape : v.tensor.shape));
    if (isBatchDim(activations[0].shape[axis]))
      throw new OnnxUnsupportedError('concatenating along the batch is not supported', at, 'axis');
    const reference = activations[0].shape;
    if (
      shapes.some(
        (shape) =>
          shape.length !== rank ||
          shape.some((d, i) => i !== axis && d !== reference[i] && !(d === 1 && isBatchDim(reference[i]))),
      )
    ) {
      throw new OnnxUnsupportedError(
        `inputs ${shapes.map((shape) => formatShape(shape)).join(', ')} do not concatenate on axis ${axis} (constants must have size 1 along the batch)`,
        at,
      );
    }
    const perm = commonPerm(activations);
    const inputs: Activation[] = [];
    const weights: ConstTensor[] = [];
    const weightShapes: Dim[][] = [];
    const physicalConcatAxis = perm.indexOf(axis);
    // Constants are repeated along the batch at run time.
    const order = values.map((v) => {
      if (v.kind === 'activation') {
        const x = v.layout.kind === 'flat-hwc' ? planner.toLayout(v, 'plain') : v;
        return { from: 'input' as const, index: inputs.push(planner.toPerm(x, perm)) - 1 };
      }
      requireStatic(v.tensor, 'Concat');
      const floats = constant('float', v.tensor.shape, v.tensor.values);
      const physicalShapeOfPart = perm.map((i) => (i === axis ? v.tensor.shape[i] : reference[i]));
      weightShapes.push(physicalShapeOfPart);
      return { from: 'weight' as const, index: weights.push(transposeConstant(floats, perm)) - 1 };
    });
    const shape = [...reference];
    shape[axis] = shapes.reduce((sum, s) => sum + s[axis], 0);
    planner.define(
      node.outputs[0],
      planner.emit(
        { op: 'concat', axis: physicalConcatAxis, order, weightShapes },
        inputs,
        weights,
        shape,
        { kind: 'perm', perm: [...perm] },
        node.outputs[0],
        at.node,
      ),
    );
  },
};

/** A slice of an activation along logical axes, as one slice step (steps other than 1: a gather after it). */
function sliceActivation(
  planner: Planner,
  value: Activation,
  ranges: Array<{ axis: number; start: number; size: number; step: number }>,
  onnxName: string,
  at: OnnxNodeRef,
): Activation {
  let x = value.layout.kind === 'flat-hwc' ? planner.toLayout(value, 'plain') : value;
  if (ranges.every((r) => r.start === 0 && r.step === 1 && r.size === x.shape[r.axis])) return x;
  for (const r of ranges) {
    if (isBatchDim(x.shape[r.axis]))
      throw new OnnxUnsupportedError(`slicing the batch ${formatShape(x.shape)}`, at);
  }
  const physical = physicalShape(x);
  const begin = physical.map(() => 0);
  const size: Dim[] = [...physical];
  const gathers: Array<{ axis: number; indices: number[] }> = [];
  const shape = [...x.shape];
  for (const r of ranges) {
    const p = physicalAxis(x, r.axis);
    shape[r.axis] = r.size;
    if (r.step === 1) {
      begin[p] = r.start;
      size[p] = r.size;
    } else {
      gathers.push({ axis: p, indices: Array.from({ length: r.size }, (_, i) => r.start + i * r.step) });
    }
  }
  x = planner.emit({ op: 'slice', begin, size, gathers }, [x], [], shape, x.layout, onnxName, at.node);
  return x;
}

const sliceOp: OpSpec = {
  attributes: ['starts', 'ends', 'axes'],
  fold: (planner, node, at, [data]) => {
    const { starts, ends, axes, steps } = sliceParameters(planner, node, at, data!.shape.length);
    return [sliceConstant(data!, starts, ends, axes, steps)];
  },
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    const rank = x.shape.length;
    const { starts, ends, axes, steps } = sliceParameters(planner, node, at, rank);
    // Batch dimensions are sliced only whole; sizes elsewhere are static.
    const staticShape = x.shape.map((d) => (isBatchDim(d) ? Number.MAX_SAFE_INTEGER : d));
    const { begin, size, step } = sliceRanges(staticShape, starts, ends, axes, steps);
    const ranges = axes.map((raw) => {
      const axis = normalizeAxis(raw, rank);
      if (isBatchDim(x.shape[axis])) {
        if (begin[axis] !== 0 || step[axis] !== 1 || size[axis] < Number.MAX_SAFE_INTEGER / 2) {
          throw new OnnxUnsupportedError(`slicing the batch ${formatShape(x.shape)}`, at);
        }
        return { axis, start: 0, size: x.shape[axis], step: 1 };
      }
      return { axis, start: begin[axis], size: size[axis], step: step[axis] };
    });
    planner.define(node.outputs[0], sliceActivation(planner, x, ranges, node.outputs[0], at));
  },
};

function sliceParameters(planner: Planner, node: OnnxNode, at: OnnxNodeRef, rank: number) {
  const a = new Attributes(node, at);
  const read = (index: number, what: string) => {
    const t = planner.constantInput(node, index, at, what);
    if (!t) throw new OnnxUnsupportedError(`input ${index} (${what}) is missing`, at, what);
    requireStatic(t, 'Slice');
    return Array.from(t.values);
  };
  const starts = a.ints('starts') ?? read(1, 'starts');
  const ends = a.ints('ends') ?? read(2, 'ends');
  const axes = a.ints('axes') ?? (node.inputs[3] ? read(3, 'axes') : starts.map((_, i) => i));
  const steps = node.inputs[4] ? read(4, 'steps') : starts.map(() => 1);
  if (axes.some((axis) => axis < -rank || axis >= rank))
    throw new OnnxFormatError(`node '${at.node}': axes [${axes}] out of range`, at.node);
  return { starts, ends, axes, steps };
}

const splitOp: OpSpec = {
  attributes: ['axis', 'split', 'num_outputs'],
  fold: (planner, node, at, [x]) => {
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 0), x!.shape.length);
    return splitSizes(planner, node, at, x!.shape[axis]).map((size, i, all) => {
      const start = all.slice(0, i).reduce((s, v) => s + v, 0);
      return sliceConstant(x!, [start], [start + size], [axis], [1]);
    });
  },
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 0), x.shape.length);
    if (isBatchDim(x.shape[axis])) throw new OnnxUnsupportedError('splitting the batch', at, 'axis');
    let start = 0;
    splitSizes(planner, node, at, x.shape[axis]).forEach((size, i) => {
      const name = node.outputs[i];
      if (name && planner.readersOf(name) > 0) {
        planner.define(name, sliceActivation(planner, x, [{ axis, start, size, step: 1 }], name, at));
      }
      start += size;
    });
  },
};

function splitSizes(planner: Planner, node: OnnxNode, at: OnnxNodeRef, dim: number): number[] {
  const a = new Attributes(node, at);
  const explicit =
    a.ints('split') ??
    (node.inputs[1] ? Array.from(planner.constantInput(node, 1, at, 'split')!.values) : undefined);
  const count = node.outputs.length;
  const sizes =
    explicit ??
    Array.from({ length: count }, (_, i) =>
      Math.min(Math.ceil(dim / count), Math.max(0, dim - i * Math.ceil(dim / count))),
    );
  if (sizes.length !== count || sizes.reduce((s, v) => s + v, 0) !== dim) {
    throw new OnnxFormatError(
      `node '${at.node}': split [${sizes}] does not divide ${dim} into ${count}`,
      at.node,
    );
  }
  return sizes;
}

const gatherOp: OpSpec = {
  attributes: ['axis'],
  fold: (planner, node, at, [data, indices]) => {
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 0), data!.shape.length);
    checkFoldedSize(
      planner,
      (sizeOf(data!.shape) / Math.max(1, data!.shape[axis])) * sizeOf(indices!.shape),
      at,
    );
    return [gatherConstant(data!, indices!, axis)];
  },
  handler: (planner, node, at) => {
    const data = planner.activationInput(node, 0, at);
    const indicesTensor = planner.constantInput(node, 1, at, 'indices');
    if (!indicesTensor) throw new OnnxFormatError(`node '${at.node}' lacks its indices`, at.node);
    const rank = data.shape.length;
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 0), rank);
    if (isBatchDim(data.shape[axis])) throw new OnnxUnsupportedError('gathering along the batch', at, 'axis');
    let indices: number[];
    try {
      indices = checkedIndices(indicesTensor, data.shape[axis]);
    } catch (error) {
      throw new OnnxFormatError(`node '${at.node}': ${(error as Error).message}`, at.node);
    }
    const out = node.outputs[0];
    // A scalar index is a slice without its axis; a run of consecutive ones a slice.
    const consecutive = indices.every((v, i) => v === indices[0] + i);
    let x: Activation;
    if (consecutive && indices.length > 0) {
      x = sliceActivation(
        planner,
        data,
        [{ axis, start: indices[0], size: indices.length, step: 1 }],
        `${out}:slice`,
        at,
      );
    } else {
      const source = data.layout.kind === 'flat-hwc' ? planner.toLayout(data, 'plain') : data;
      const shape = [...source.shape];
      shape[axis] = indices.length;
      x = planner.emit(
        { op: 'gather', axis: physicalAxis(source, axis), indices },
        [source],
        [],
        shape,
        source.layout,
        `${out}:gather`,
        at.node,
      );
    }
    const target = [...data.shape.slice(0, axis), ...indicesTensor.shape, ...data.shape.slice(axis + 1)];
    reshapeActivation(planner, x, target, node, at);
  },
};

const expandOp: OpSpec = {
  attributes: [],
  handler: (planner, node, at) => {
    const value = planner.input(node, 0);
    const shapeTensor = planner.constantInput(node, 1, at, 'shape');
    if (!value || !shapeTensor) throw new OnnxFormatError(`node '${at.node}' needs input and shape`, at.node);
    const target = Array.from(shapeTensor.values, (v, i) => {
      const b = shapeTensor.batch?.[i] ?? 0;
      if (b === 0) return v;
      if (v !== 0 || !(Number.isInteger(b) && b > 0))
        throw new OnnxUnsupportedError(`expand to a shape entry ${v} + ${b} n`, at);
      return -b;
    });
    if (value.kind === 'constant') {
      // Repeating a constant along the batch (ViT's class token): it stays a constant of size 1
      // there, which every consumer broadcasts.
      const shape = broadcastDims(value.tensor.shape, target).map((d) => (isBatchDim(d) ? 1 : d));
      checkFoldedSize(planner, sizeOf(shape), at);
      defineConstant(planner, node, broadcastConstant(value.tensor, shape));
      return;
    }
    let x = value.layout.kind === 'flat-hwc' ? planner.toLayout(value, 'plain') : value;
    const shape = broadcastDims(x.shape, target);
    if (shape.length === x.shape.length && shape.every((d, i) => d === x.shape[i])) {
      planner.alias(node, x);
      return;
    }
    if (shape.length > x.shape.length) {
      x = planner.reshape(
        x,
        [...new Array<number>(shape.length - x.shape.length).fill(1), ...x.shape],
        `${node.outputs[0]}:rank`,
        at.node,
      );
    }
    const perm = permOf(x)!;
    planner.define(
      node.outputs[0],
      planner.emit(
        { op: 'broadcast', shape: perm.map((i) => shape[i]) },
        [x],
        [],
        shape,
        x.layout,
        node.outputs[0],
        at.node,
      ),
    );
  },
};

const identityOp: OpSpec = {
  attributes: [],
  handler: (planner, node, at) => {
    const value = planner.input(node, 0);
    if (!value) throw new OnnxFormatError(`node '${at.node}' has no input`, at.node);
    planner.define(node.outputs[0], value);
  },
};

const dropoutOp: OpSpec = {
  attributes: ['ratio', 'seed', 'is_test'],
  handler: (planner, node, at) => {
    const training = planner.constantInput(node, 2, at, 'training_mode');
    const ratio =
      planner.constantInput(node, 1, at, 'ratio')?.values[0] ?? new Attributes(node, at).float('ratio', 0.5);
    // F.dropout(x, p=0.0) in a forward pass exports training mode; with ratio 0 it is the identity.
    if (training && training.values[0] !== 0 && ratio !== 0)
      throw new OnnxUnsupportedError('training mode is not supported', at, 'training_mode');
    identityOp.handler(planner, node, at);
  },
};

export const SHAPE_OPS: Record<string, OpSpec> = {
  Flatten: flattenOp,
  Reshape: reshapeOp,
  Transpose: transposeOp,
  Squeeze: squeezeOp,
  Unsqueeze: unsqueezeOp,
  Concat: concatOp,
  Split: splitOp,
  Slice: sliceOp,
  Gather: gatherOp,
  Expand: expandOp,
  Identity: identityOp,
  Dropout: dropoutOp,
};

export type { Constant };
