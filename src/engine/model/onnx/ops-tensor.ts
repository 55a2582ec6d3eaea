import {
  type BinaryOp,
  binaryConstant,
  broadcastConstant,
  constant,
  normalizeAxis,
  reduceConstant,
  requireStatic,
  sizeOf,
  transposeConstant,
  unaryConstant,
} from './constants.js';
import { broadcastDims, type Dim, formatShape, isBatchDim } from './dims.js';
import { OnnxFormatError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import { channelVector } from './ops-conv.js';
import { checkFoldedSize } from './ops-fold.js';
import {
  type Activation,
  Attributes,
  type BinaryFn,
  type Constant,
  identityPerm,
  type Layout,
  type OpSpec,
  type Planner,
  permOf,
  physicalAxis,
  type ReduceFn,
  type StepOp,
  type UnaryFn,
} from './plan.js';
import type { ConstTensor, OnnxNode } from './proto.js';

/** Normalisation, activations, arithmetic, reductions and softmax. */

function elementwise(op: StepOp, planner: Planner, node: OnnxNode, at: OnnxNodeRef): Activation {
  return elementwiseOn(op, planner.activationInput(node, 0, at), planner, node, at);
}

/** `op` on `x` (of the same shape and layout) as the node's output. */
function elementwiseOn(
  op: StepOp,
  x: Activation,
  planner: Planner,
  node: OnnxNode,
  at: OnnxNodeRef,
): Activation {
  const out = planner.emit(op, [x], [], x.shape, x.layout, node.outputs[0], at.node);
  planner.define(node.outputs[0], out);
  return out;
}

/** The step that produced `value` when it is an elementwise `fn` read only here. */
function producedBy(planner: Planner, value: Activation, fn: UnaryFn | BinaryFn): StepOp | undefined {
  const step = value.producer;
  if (!step || !planner.soleReader(value)) return undefined;
  if ((step.op === 'unary' || step.op === 'binary') && step.fn === fn) return step;
  return undefined;
}

/** A scalar constant operand of a binary step (its weight), or undefined. */
function scalarWeight(value: Activation, fn: BinaryFn): number | undefined {
  const step = value.producer;
  if (step?.op !== 'binary' || step.fn !== fn || step.weights.length !== 1) return undefined;
  const w = step.weights[0];
  return w.values.length === 1 ? w.values[0] : undefined;
}

const unaryOp = (fn: UnaryFn, fold?: (x: number) => number): OpSpec => ({
  attributes: [],
  handler: (p, n, at) => {
    elementwise({ op: 'unary', fn }, p, n, at);
  },
  ...(fold && { fold: (_p, _n, _at, [x]) => [unaryConstant(x!, fold)] }),
});

const reluOp: OpSpec = {
  attributes: [],
  fold: (_p, _n, _at, [x]) => [unaryConstant(x!, (v) => Math.max(v, 0))],
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
      planner.define(node.outputs[0], { ...x, onnxName: node.outputs[0] });
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
    else if (min === 0 && max === Number.POSITIVE_INFINITY) reluOp.handler(planner, node, at);
    else elementwise({ op: 'clip', min, max }, planner, node, at);
  },
};

const hardSigmoidOp: OpSpec = {
  attributes: ['alpha', 'beta'],
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
    const alpha = a.float('alpha', 0.2);
    const beta = a.float('beta', 0.5);
    // PyTorch's Hardsigmoid (x / 6 + 1 / 2, clipped to [0, 1]) is one kernel; other slopes compose.
    if (Math.abs(alpha - 1 / 6) < 1e-7 && beta === 0.5) {
      elementwise({ op: 'unary', fn: 'hardsigmoid' }, planner, node, at);
      return;
    }
    const x = planner.activationInput(node, 0, at);
    const byScalar = (fn: BinaryFn, input: Activation, value: number, name: string) =>
      planner.emit(
        { op: 'binary', fn, constantFirst: false },
        [input],
        [constant('float', [], [value])],
        x.shape,
        x.layout,
        `${node.outputs[0]}:${name}`,
        at.node,
      );
    const shifted = byScalar('add', byScalar('mul', x, alpha, 'scaled'), beta, 'shifted');
    elementwiseOn({ op: 'clip', min: 0, max: 1 }, shifted, planner, node, at);
  },
};

/** A constant operand at the activation's rank, in its physical layout (size 1 along the batch). */
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
  requireStatic(c, 'arithmetic');
  const logical = [...new Array<number>(rank - c.shape.length).fill(1), ...c.shape];
  if (logical.some((d, i) => isBatchDim(x.shape[i]) && d !== 1)) {
    throw new OnnxUnsupportedError(`a constant [${c.shape}] that varies along the batch`, at);
  }
  const floats = constant('float', logical, c.values);
  const perm = permOf(x)!;
  return { logical, physical: transposeConstant(floats, perm) };
}

/** `value` at rank `rank` (leading size-1 axes) and in `perm`: moving only size-1 axes is a reshape. */
function alignActivation(
  planner: Planner,
  value: Activation,
  rank: number,
  perm: readonly number[],
): Activation {
  let x = value;
  if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
  if (x.shape.length < rank) {
    const extra = rank - x.shape.length;
    const own = permOf(x)!;
    x = planner.emit(
      { op: 'reshape', shape: [...new Array<number>(extra).fill(1), ...own.map((axis) => x.shape[axis])] },
      [x],
      [],
      [...new Array<number>(extra).fill(1), ...x.shape],
      { kind: 'perm', perm: [...identityPerm(extra), ...own.map((axis) => axis + extra)] },
      `${x.onnxName}:rank${rank}`,
      `${x.onnxName}:rank${rank}`,
    );
  }
  return planner.toPerm(x, perm);
}

const BINARY_ONNX: Record<BinaryFn, BinaryOp> = {
  add: 'Add',
  sub: 'Sub',
  mul: 'Mul',
  div: 'Div',
  pow: 'Pow',
  max: 'Max',
  min: 'Min',
};

function binaryOp(fn: BinaryFn): OpSpec {
  return {
    attributes: [],
    fold: (planner, _node, at, [a, b]) => {
      checkFoldedSize(planner, sizeOf(broadcastDims(a!.shape, b!.shape)), at);
      return [binaryConstant(BINARY_ONNX[fn], a!, b!)];
    },
    handler: (planner, node, at) => {
      const a = planner.input(node, 0);
      const b = planner.input(node, 1);
      if (!a || !b) throw new OnnxFormatError(`node '${at.node}' needs two inputs`, at.node);
      if (a.kind === 'constant' || b.kind === 'constant') {
        let x = (a.kind === 'activation' ? a : b) as Activation;
        const c = ((a.kind === 'constant' ? a : b) as Constant).tensor;
        if (fusePattern(planner, node, at, fn, x, c, a.kind === 'constant')) return;
        if (fn === 'pow' && a.kind === 'activation' && c.values.length === 1) {
          const exponent = c.values[0];
          const unary: UnaryFn | undefined =
            exponent === 2 ? 'square' : exponent === 0.5 ? 'sqrt' : undefined;
          if (unary) {
            elementwise({ op: 'unary', fn: unary }, planner, node, at);
            return;
          }
        }
        if (x.layout.kind === 'flat-hwc' && c.values.length > 1) x = planner.toLayout(x, 'plain');
        if (x.layout.kind === 'flat-hwc') {
          const out = planner.emit(
            { op: 'binary', fn, constantFirst: a.kind === 'constant' },
            [x],
            [constant('float', [], c.values)],
            x.shape,
            x.layout,
            node.outputs[0],
            at.node,
          );
          planner.define(node.outputs[0], out);
          return;
        }
        if (c.shape.length > x.shape.length) {
          throw new OnnxUnsupportedError(
            `a constant of rank ${c.shape.length} broadcast over an activation of rank ${x.shape.length}`,
            at,
          );
        }
        const { logical, physical } = alignConstant(c, x, at);
        const out = planner.emit(
          { op: 'binary', fn, constantFirst: a.kind === 'constant' },
          [x],
          [physical],
          broadcastDims(x.shape, logical),
          x.layout,
          node.outputs[0],
          at.node,
        );
        planner.define(node.outputs[0], out);
        return;
      }
      if (fn === 'mul' && fuseSwish(planner, node, at, a, b)) return;
      let shape: Dim[];
      try {
        shape = broadcastDims(a.shape, b.shape);
      } catch (error) {
        throw new OnnxFormatError(`node '${at.node}': ${(error as Error).message}`, at.node);
      }
      // Both operands in the layout of the larger one (elements per example), the other moved.
      const rank = shape.length;
      const [big, small] = sizeOf(a.shape.map(Math.abs)) >= sizeOf(b.shape.map(Math.abs)) ? [a, b] : [b, a];
      const bigAligned = alignActivation(planner, big, rank, permOf(big) ?? identityPerm(rank));
      const perm = permOf(bigAligned)!;
      const smallAligned = alignActivation(planner, small, rank, perm);
      const [x, y] = big === a ? [bigAligned, smallAligned] : [smallAligned, bigAligned];
      planner.define(
        node.outputs[0],
        planner.emit(
          { op: 'binary', fn, constantFirst: false },
          [x, y],
          [],
          shape,
          { kind: 'perm', perm: [...perm] },
          node.outputs[0],
          at.node,
        ),
      );
    },
  };
}

/** x * sigmoid(x) (PyTorch's SiLU) as one swish step. */
function fuseSwish(planner: Planner, node: OnnxNode, at: OnnxNodeRef, a: Activation, b: Activation): boolean {
  for (const [x, s] of [
    [a, b],
    [b, a],
  ]) {
    const sigmoid = producedBy(planner, s, 'sigmoid');
    if (sigmoid && s.producer!.inputs[0].id === x.id && s.producer!.inputs[0].layout === x.layout) {
      elementwiseOn({ op: 'unary', fn: 'swish' }, x, planner, node, at);
      return true;
    }
  }
  return false;
}

/**
 * PyTorch's exact GELU, exported before opset 20 as x * (erf(x / sqrt 2) + 1) * 0.5, as one gelu
 * step: matched at the final Mul by 0.5.
 */
function fusePattern(
  planner: Planner,
  node: OnnxNode,
  at: OnnxNodeRef,
  fn: BinaryFn,
  x: Activation,
  c: ConstTensor,
  constantFirst: boolean,
): boolean {
  if (fn !== 'mul' || c.values.length !== 1 || c.values[0] !== 0.5 || constantFirst) return false;
  const product = x.producer;
  if (
    product?.op !== 'binary' ||
    product.fn !== 'mul' ||
    product.inputs.length !== 2 ||
    !planner.soleReader(x)
  )
    return false;
  for (const [input, plusOne] of [
    [product.inputs[0], product.inputs[1]],
    [product.inputs[1], product.inputs[0]],
  ]) {
    if (scalarWeight(plusOne, 'add') !== 1 || !planner.soleReader(plusOne)) continue;
    const erf = plusOne.producer!.inputs[0];
    if (!producedBy(planner, erf, 'erf')) continue;
    const scaled = erf.producer!.inputs[0];
    const divisor = scalarWeight(scaled, 'div');
    const scaledStep = scaled.producer;
    if (
      divisor === undefined ||
      Math.abs(divisor - Math.SQRT2) > 1e-6 ||
      scaledStep?.op !== 'binary' ||
      scaledStep.constantFirst ||
      scaledStep.inputs[0].id !== input.id ||
      !planner.soleReader(scaled)
    )
      continue;
    elementwiseOn({ op: 'unary', fn: 'gelu' }, input, planner, node, at);
    return true;
  }
  return false;
}

/** Multiplies a convolution's filter and bias by per-output-channel factors (a folded BatchNorm). */
function foldIntoConv(
  step: Extract<StepOp, { op: 'conv' }> & { weights: ConstTensor[] },
  scale: Float64Array,
  shift: Float64Array,
): void {
  const [filter, bias] = step.weights;
  const channels = scale.length;
  const values = new Float32Array(filter.values.length);
  // The filter's last axis is the output channel, in every filter layout the planner makes.
  for (let i = 0; i < values.length; i++) values[i] = filter.values[i] * scale[i % channels];
  const newBias = new Float32Array(channels);
  for (let c = 0; c < channels; c++) newBias[c] = (bias ? bias.values[c] : 0) * scale[c] + shift[c];
  step.weights = [
    { type: 'float', shape: filter.shape, values },
    { type: 'float', shape: [channels], values: newBias },
  ];
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
    if (x.shape.length < 2)
      throw new OnnxUnsupportedError(`BatchNormalization of rank ${x.shape.length} is not supported`, at);
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
    const epsilon = a.float('epsilon', 1e-5);
    const producer = x.producer;
    // Inference BatchNorm after a convolution is an affine map per output channel: folded into the
    // convolution's filter and bias (one pass instead of two).
    if (producer?.op === 'conv' && producer.activation === 'linear' && planner.soleReader(x)) {
      const factor = Float64Array.from(scale.values, (s, c) => s / Math.sqrt(variance.values[c] + epsilon));
      const shift = Float64Array.from(factor, (f, c) => offset.values[c] - mean.values[c] * f);
      foldIntoConv(producer, factor, shift);
      planner.define(node.outputs[0], { ...x, onnxName: node.outputs[0] });
      return;
    }
    // The channels (axis 1) physically last, where tfjs's batchNorm broadcasts them.
    if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
    x = planner.withAxesLast(x, [1]);
    const out = planner.emit(
      { op: 'batchNorm', epsilon },
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

/** An affine parameter of LayerNormalization over the normalised shape, flattened. */
function normalizedParameter(t: ConstTensor, shape: number[], what: string, at: OnnxNodeRef): ConstTensor {
  requireStatic(t, what);
  const trimmed = [...t.shape];
  while (trimmed.length > shape.length && trimmed[0] === 1) trimmed.shift();
  try {
    const full = broadcastConstant(constant('float', trimmed, t.values), shape);
    return { type: 'float', shape: [sizeOf(shape)], values: full.values };
  } catch {
    throw new OnnxUnsupportedError(
      `${what} [${t.shape}] does not broadcast to the normalised shape [${shape}]`,
      at,
      what,
    );
  }
}

/** LayerNormalization's optional outputs Mean and InvStdDev (the statistics of each normalised row). */
function layerNormStatistics(
  planner: Planner,
  node: OnnxNode,
  at: OnnxNodeRef,
  x: Activation,
  axes: number[],
  epsilon: number,
): void {
  const shape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const physical = axes.map((axis) => physicalAxis(x, axis));
  const name = (suffix: string) => `${node.outputs[0]}:${suffix}`;
  const step = (op: StepOp, inputs: Activation[], weights: ConstTensor[], out: Dim[], label: string) =>
    planner.emit(op, inputs, weights, out, x.layout, label, at.node);
  const reduce = { op: 'reduce', fn: 'mean', axes: physical, keepDims: true } as const;
  const mean = step(reduce, [x], [], shape, node.outputs[1] || name('mean'));
  const centered = step(
    { op: 'binary', fn: 'sub', constantFirst: false },
    [x, mean],
    [],
    x.shape,
    name('centered'),
  );
  const squared = step({ op: 'unary', fn: 'square' }, [centered], [], x.shape, name('squared'));
  const variance = step(reduce, [squared], [], shape, name('variance'));
  const shifted = step(
    { op: 'binary', fn: 'add', constantFirst: false },
    [variance],
    [constant('float', [], [epsilon])],
    shape,
    name('shifted'),
  );
  const root = step({ op: 'unary', fn: 'sqrt' }, [shifted], [], shape, name('root'));
  const inverse = step(
    { op: 'unary', fn: 'reciprocal' },
    [root],
    [],
    shape,
    node.outputs[2] || name('inverse'),
  );
  if (node.outputs[1]) planner.define(node.outputs[1], mean);
  if (node.outputs[2]) planner.define(node.outputs[2], inverse);
}

const layerNormOp: OpSpec = {
  attributes: ['axis', 'epsilon', 'stash_type'],
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
    let x = planner.activationInput(node, 0, at);
    const rank = x.shape.length;
    const axis = normalizeAxis(a.int('axis', -1), rank);
    const axes = identityPerm(rank).slice(axis);
    const normalized = axes.map((i) => x.shape[i]);
    if (normalized.some(isBatchDim))
      throw new OnnxUnsupportedError(
        `normalising over the batch (axis ${axis} of ${formatShape(x.shape)})`,
        at,
        'axis',
      );
    const scale = planner.constantInput(node, 1, at, 'Scale');
    if (!scale) throw new OnnxFormatError(`node '${at.node}' lacks its Scale`, at.node);
    const bias = planner.constantInput(node, 2, at, 'B');
    const size = sizeOf(normalized);
    const weights = [
      normalizedParameter(scale, normalized, 'Scale', at),
      ...(bias ? [normalizedParameter(bias, normalized, 'B', at)] : []),
    ];
    if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
    x = planner.withAxesLast(x, axes);
    const epsilon = a.float('epsilon', 1e-5);
    if (node.outputs.slice(1).some((name) => name && planner.readersOf(name) > 0)) {
      layerNormStatistics(planner, node, at, x, axes, epsilon);
    }
    const out = planner.emit(
      { op: 'layerNorm', epsilon, size },
      [x],
      weights,
      x.shape,
      x.layout,
      node.outputs[0],
      at.node,
    );
    planner.define(node.outputs[0], out);
  },
};

const softmaxOp: OpSpec = {
  attributes: ['axis'],
  handler: (planner, node, at) => {
    let x = planner.activationInput(node, 0, at);
    if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
    const rank = x.shape.length;
    const axis = normalizeAxis(new Attributes(node, at).int('axis', at.opset < 13 ? 1 : -1), rank);
    // Before opset 13 Softmax normalised over every axis from `axis` on: the same where that is the last.
    if (at.opset < 13 && axis !== rank - 1)
      throw new OnnxUnsupportedError(
        `opset ${at.opset} Softmax over axes ${axis}.. of rank ${rank}`,
        at,
        'axis',
      );
    if (isBatchDim(x.shape[axis]))
      throw new OnnxUnsupportedError(`Softmax over the batch (axis ${axis})`, at, 'axis');
    if (planner.isGraphOutput(node.outputs[0])) {
      planner.warnings.push(
        `node '${at.node}' applies Softmax: the model outputs probabilities, not logits; attacks and calibration read them as logits (export the model without its final Softmax)`,
      );
    }
    x = planner.withAxesLast(x, [axis]);
    planner.define(
      node.outputs[0],
      planner.emit({ op: 'softmax' }, [x], [], x.shape, x.layout, node.outputs[0], at.node),
    );
  },
};

/** Axes of a Reduce node: the attribute (older opsets) or input 1; none means all (unless noop_with_empty_axes). */
function reduceAxes(planner: Planner, node: OnnxNode, at: OnnxNodeRef, rank: number): number[] | undefined {
  const a = new Attributes(node, at);
  const raw =
    a.ints('axes') ?? (node.inputs[1] ? Array.from(planner.constantInput(node, 1, at, 'axes')!.values) : []);
  if (raw.length === 0) return a.int('noop_with_empty_axes', 0) === 1 ? undefined : identityPerm(rank);
  return [...new Set(raw.map((axis) => normalizeAxis(axis, rank)))].sort((x, y) => x - y);
}

function reduceOp(fn: ReduceFn): OpSpec {
  return {
    attributes: ['axes', 'keepdims', 'noop_with_empty_axes'],
    fold: (planner, node, at, [x]) => {
      const axes = reduceAxes(planner, node, at, x!.shape.length);
      if (!axes) return [x!];
      return [reduceConstant(x!, axes, new Attributes(node, at).int('keepdims', 1) === 1, fn)];
    },
    handler: (planner, node, at) => {
      let x = planner.activationInput(node, 0, at);
      const rank = x.shape.length;
      const axes = reduceAxes(planner, node, at, rank);
      if (!axes) {
        planner.alias(node, x);
        return;
      }
      if (axes.some((axis) => isBatchDim(x.shape[axis])))
        throw new OnnxUnsupportedError(
          `reducing over the batch (${formatShape(x.shape)} axes [${axes}])`,
          at,
          'axes',
        );
      const keepDims = new Attributes(node, at).int('keepdims', 1) === 1;
      if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
      const perm = permOf(x)!;
      const shape = keepDims
        ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
        : x.shape.filter((_, i) => !axes.includes(i));
      // Removed axes leave the perm; the kept ones keep their order, renumbered.
      const kept = perm.filter((axis) => !axes.includes(axis));
      const renumber = (axis: number) => axis - axes.filter((r) => r < axis).length;
      const layout: Layout = { kind: 'perm', perm: keepDims ? [...perm] : kept.map(renumber) };
      const physicalAxes = axes.map((axis) => physicalAxis(x, axis)).sort((p, q) => p - q);
      if (
        fn === 'mean' &&
        keepDims &&
        rank === 4 &&
        samePhysical(perm, [0, 2, 3, 1]) &&
        axes.join() === '2,3'
      ) {
        planner.define(
          node.outputs[0],
          planner.emit({ op: 'globalAverage' }, [x], [], shape, layout, node.outputs[0], at.node),
        );
        return;
      }
      planner.define(
        node.outputs[0],
        planner.emit(
          { op: 'reduce', fn, axes: physicalAxes, keepDims },
          [x],
          [],
          shape,
          layout,
          node.outputs[0],
          at.node,
        ),
      );
    },
  };
}

const samePhysical = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((v, i) => v === b[i]);

/**
 * Max and Min take any number of inputs: one is itself, more fold pairwise through intermediate
 * values (each a binary step).
 */
function variadic(pairwise: OpSpec): OpSpec {
  return {
    attributes: [],
    handler: (planner, node, at) => {
      const names = node.inputs.filter((name) => name);
      if (names.length === 0) throw new OnnxFormatError(`node '${at.node}' has no input`, at.node);
      let current = names[0];
      for (let i = 1; i < names.length; i++) {
        const output = i === names.length - 1 ? node.outputs[0] : `${node.outputs[0]}:${i}`;
        const pair: OnnxNode = { ...node, inputs: [current, names[i]], outputs: [output] };
        const inputs = [planner.input(pair, 0), planner.input(pair, 1)];
        if (pairwise.fold && inputs.every((v) => v?.kind === 'constant')) {
          const [folded] = pairwise.fold(
            planner,
            pair,
            at,
            inputs.map((v) => (v as Constant).tensor),
          );
          planner.define(output, { kind: 'constant', tensor: folded });
        } else {
          pairwise.handler(planner, pair, at);
        }
        current = output;
      }
      if (names.length === 1) planner.alias(node, planner.input(node, 0)!);
    },
  };
}

export const TENSOR_OPS: Record<string, OpSpec> = {
  BatchNormalization: batchNormOp,
  LayerNormalization: layerNormOp,
  Relu: reluOp,
  LeakyRelu: {
    attributes: ['alpha'],
    handler: (p, n, at) => {
      elementwise({ op: 'leakyRelu', alpha: new Attributes(n, at).float('alpha', 0.01) }, p, n, at);
    },
  },
  Elu: {
    attributes: ['alpha'],
    handler: (p, n, at) => {
      if (new Attributes(n, at).float('alpha', 1) !== 1)
        throw new OnnxUnsupportedError('alpha other than 1 is not supported', at, 'alpha');
      elementwise({ op: 'unary', fn: 'elu' }, p, n, at);
    },
  },
  Clip: clipOp,
  Sigmoid: unaryOp('sigmoid', (v) => 1 / (1 + Math.exp(-v))),
  Tanh: unaryOp('tanh', Math.tanh),
  Erf: unaryOp('erf'),
  HardSwish: unaryOp('hardswish'),
  HardSigmoid: hardSigmoidOp,
  Exp: unaryOp('exp', Math.exp),
  Log: unaryOp('log', Math.log),
  Sqrt: unaryOp('sqrt', Math.sqrt),
  Neg: unaryOp('neg', (v) => -v),
  Abs: unaryOp('abs', Math.abs),
  Reciprocal: unaryOp('reciprocal', (v) => 1 / v),
  Softplus: unaryOp('softplus', (v) => Math.log1p(Math.exp(v))),
  Sin: unaryOp('sin', Math.sin),
  Cos: unaryOp('cos', Math.cos),
  Add: binaryOp('add'),
  Sub: binaryOp('sub'),
  Mul: binaryOp('mul'),
  Div: binaryOp('div'),
  Pow: binaryOp('pow'),
  Max: variadic(binaryOp('max')),
  Min: variadic(binaryOp('min')),
  Softmax: softmaxOp,
  ReduceMean: reduceOp('mean'),
  ReduceSum: reduceOp('sum'),
  ReduceMax: reduceOp('max'),
  ReduceMin: reduceOp('min'),
  ReduceProd: reduceOp('prod'),
  ReduceL2: reduceOp('l2'),
};
