import { constant, requireStatic, sizeOf } from './constants.js';
import { broadcastDims, type Dim, formatShape, isBatchDim } from './dims.js';
import { OnnxFormatError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import {
  type Activation,
  Attributes,
  identityPerm,
  type Layout,
  type OpSpec,
  type Planner,
  permOf,
  samePerm,
} from './plan.js';
import type { ConstTensor, OnnxNode } from './proto.js';

/** Matrix products: Gemm, MatMul (constant weights or two activations, batched), Einsum of that form. */

/** Rows of a [K, M] weight reordered so that NHWC-flattened inputs meet the rows PyTorch's NCHW flatten had. */
function permuteRows(weight: ConstTensor, c: number, h: number, w: number): ConstTensor {
  const columns = weight.shape[1];
  const out = new Float32Array(weight.values.length);
  for (let hh = 0; hh < h; hh++) {
    for (let ww = 0; ww < w; ww++) {
      for (let cc = 0; cc < c; cc++) {
        const physical = (hh * w + ww) * c + cc;
        const logical = cc * h * w + hh * w + ww;
        out.set(weight.values.subarray(logical * columns, (logical + 1) * columns), physical * columns);
      }
    }
  }
  return { type: 'float', shape: weight.shape, values: out };
}

/** Columns of an [M, K] weight (a transposed one) reordered likewise. */
function permuteColumns(weight: ConstTensor, c: number, h: number, w: number): ConstTensor {
  const [rows, columns] = weight.shape;
  const out = new Float32Array(weight.values.length);
  const source = new Int32Array(columns);
  for (let hh = 0; hh < h; hh++)
    for (let ww = 0; ww < w; ww++)
      for (let cc = 0; cc < c; cc++) source[(hh * w + ww) * c + cc] = cc * h * w + hh * w + ww;
  for (let r = 0; r < rows; r++) {
    const base = r * columns;
    for (let k = 0; k < columns; k++) out[base + k] = weight.values[base + source[k]];
  }
  return { type: 'float', shape: weight.shape, values: out };
}

/**
 * x [..., K] times a constant weight: [K, M], or [M, K] with `transposed` (Gemm's transB, kept as
 * it is: the kernel reads it transposed), plus an optional bias [M].
 */
function dense(
  planner: Planner,
  node: OnnxNode,
  at: OnnxNodeRef,
  input: Activation,
  weight: ConstTensor,
  transposed: boolean,
  bias: ConstTensor | undefined,
): void {
  let x = input;
  const k = transposed ? weight.shape[1] : weight.shape[0];
  const m = transposed ? weight.shape[0] : weight.shape[1];
  const rank = x.shape.length;
  if (rank < 1 || x.shape[rank - 1] !== k)
    throw new OnnxFormatError(
      `node '${at.node}': input ${formatShape(x.shape)} has not ${k} features for the weight [${weight.shape}]`,
      at.node,
    );
  let physical = constant('float', weight.shape, weight.values);
  if (x.layout.kind === 'flat-hwc' && rank === 2) {
    const { c, h, w } = x.layout;
    physical = transposed ? permuteColumns(weight, c, h, w) : permuteRows(weight, c, h, w);
  } else {
    // The features physically last; the other axes keep their order.
    x = planner.withAxesLast(x.layout.kind === 'flat-hwc' ? planner.toLayout(x, 'plain') : x, [rank - 1]);
  }
  const weights = [physical, ...(bias ? [constant('float', [m], bias.values)] : [])];
  const shape = [...x.shape.slice(0, -1), m];
  const layout: Layout = x.layout.kind === 'flat-hwc' ? { kind: 'perm', perm: [0, 1] } : x.layout;
  planner.define(
    node.outputs[0],
    planner.emit(
      { op: 'matMul', activation: 'linear', transposeA: false, transposeB: transposed, inner: k },
      [x],
      weights,
      shape,
      layout,
      node.outputs[0],
      at.node,
    ),
  );
}

const gemmOp: OpSpec = {
  attributes: ['alpha', 'beta', 'transA', 'transB'],
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
    if (a.int('transA', 0) !== 0) throw new OnnxUnsupportedError('transA=1 is not supported', at, 'transA');
    const x = planner.activationInput(node, 0, at);
    if (x.shape.length !== 2)
      throw new OnnxFormatError(
        `node '${at.node}': Gemm takes a matrix, got ${formatShape(x.shape)}`,
        at.node,
      );
    const b = planner.constantInput(node, 1, at, 'B');
    if (b?.shape.length !== 2) throw new OnnxUnsupportedError('B must be a constant matrix', at, 'B');
    requireStatic(b, 'Gemm');
    const alpha = a.float('alpha', 1);
    const beta = a.float('beta', 1);
    const transposed = a.int('transB', 0) === 1;
    const weight = alpha !== 1 ? { ...b, values: b.values.map((v) => v * alpha) } : b;
    const m = transposed ? b.shape[0] : b.shape[1];
    const c = planner.constantInput(node, 2, at, 'C');
    let bias: ConstTensor | undefined;
    if (c) {
      const rows = c.shape.length === 2 ? c.shape[0] : 1;
      if (rows !== 1 || (sizeOf(c.shape) !== m && sizeOf(c.shape) !== 1)) {
        throw new OnnxUnsupportedError(`C [${c.shape}] must be a vector of ${m} (or a scalar)`, at, 'C');
      }
      const values =
        sizeOf(c.shape) === 1 ? new Float32Array(m).fill(c.values[0]) : Float32Array.from(c.values);
      bias = constant(
        'float',
        [m],
        values.map((v) => v * beta),
      );
    }
    dense(planner, node, at, x, weight, transposed, bias);
  },
};

/**
 * An activation operand of a batched product, with its last two logical axes physically last (in
 * either order: the kernel's transpose flag) and the leading axes in logical order.
 */
function matrixOperand(planner: Planner, value: Activation): { x: Activation; transposed: boolean } {
  let x = value.layout.kind === 'flat-hwc' ? planner.toLayout(value, 'plain') : value;
  const rank = x.shape.length;
  const perm = permOf(x)!;
  const leading = identityPerm(rank - 2);
  const straight = [...leading, rank - 2, rank - 1];
  const swapped = [...leading, rank - 1, rank - 2];
  if (samePerm(perm, swapped)) return { x, transposed: true };
  x = planner.toPerm(x, straight);
  return { x, transposed: false };
}

/** A · B for two activations of rank >= 2 with broadcast leading axes. */
function batchedProduct(
  planner: Planner,
  a: Activation,
  b: Activation,
  name: string,
  at: OnnxNodeRef,
): Activation {
  if (a.shape.length < 2 || b.shape.length < 2) {
    throw new OnnxUnsupportedError(
      `MatMul of ${formatShape(a.shape)} and ${formatShape(b.shape)} (vectors)`,
      at,
    );
  }
  const [m, k] = a.shape.slice(-2);
  const [kb, n] = b.shape.slice(-2);
  if (k !== kb || isBatchDim(k)) {
    throw new OnnxFormatError(
      `node '${at.node}': MatMul of ${formatShape(a.shape)} and ${formatShape(b.shape)}`,
      at.node,
    );
  }
  let outer: Dim[];
  try {
    outer = broadcastDims(a.shape.slice(0, -2), b.shape.slice(0, -2));
  } catch (error) {
    throw new OnnxFormatError(`node '${at.node}': ${(error as Error).message}`, at.node);
  }
  const rank = outer.length + 2;
  // Both operands at the output's rank (leading size-1 axes), so the kernel sees equal ranks.
  const atRank = (v: Activation) =>
    v.shape.length === rank
      ? v
      : planner.reshape(
          v,
          [...new Array<number>(rank - v.shape.length).fill(1), ...v.shape],
          `${v.onnxName}:rank${rank}`,
          at.node,
        );
  const left = matrixOperand(planner, atRank(a));
  const right = matrixOperand(planner, atRank(b));
  return planner.emit(
    {
      op: 'matMul',
      activation: 'linear',
      transposeA: left.transposed,
      transposeB: right.transposed,
      inner: k,
    },
    [left.x, right.x],
    [],
    [...outer, m, n],
    { kind: 'perm', perm: identityPerm(rank) },
    name,
    at.node,
  );
}

const matMulOp: OpSpec = {
  attributes: [],
  handler: (planner, node, at) => {
    const a = planner.activationInput(node, 0, at);
    const b = planner.input(node, 1);
    if (!b) throw new OnnxFormatError(`node '${at.node}' lacks B`, at.node);
    if (b.kind === 'constant' && b.tensor.shape.length === 2 && !a.isStatic) {
      requireStatic(b.tensor, 'MatMul');
      dense(planner, node, at, a, b.tensor, false, undefined);
      return;
    }
    const right = b.kind === 'constant' ? planner.lift(b.tensor, `${node.inputs[1]}:constant`, at.node) : b;
    planner.define(node.outputs[0], batchedProduct(planner, a, right, node.outputs[0], at));
  },
};

/**
 * Einsum of two operands that is a batched matrix product (MaxViT's attention: 'bhij,bhjd->bhid'
 * and 'bhid,bhjd->bhij'): batch letters in both inputs and the output, one letter group
 * contracted, one free in each input. The operands are permuted (views) into [batch, free, summed]
 * and [batch, summed, free]; the product's axes are put in the output's order.
 */
const einsumOp: OpSpec = {
  attributes: ['equation'],
  handler: (planner, node, at) => {
    const equation = new Attributes(node, at).string('equation', '').replace(/\s+/g, '');
    const match = /^([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]*)$/.exec(equation);
    if (!match || node.inputs.length !== 2) {
      throw new OnnxUnsupportedError(
        `equation '${equation}' is not a product of two operands`,
        at,
        'equation',
      );
    }
    const [, left, right, output] = match;
    const letters = (s: string) => [...s];
    const has = (s: string, c: string) => s.includes(c);
    const batch = letters(output).filter((c) => has(left, c) && has(right, c));
    const summed = letters(left).filter((c) => has(right, c) && !has(output, c));
    const freeLeft = letters(left).filter((c) => !has(right, c));
    const freeRight = letters(right).filter((c) => !has(left, c));
    const unique = (s: string) => new Set(s).size === s.length;
    if (
      ![left, right, output].every(unique) ||
      freeLeft.some((c) => !has(output, c)) ||
      freeRight.some((c) => !has(output, c)) ||
      freeLeft.length !== 1 ||
      freeRight.length !== 1 ||
      summed.length !== 1
    ) {
      throw new OnnxUnsupportedError(
        `equation '${equation}' is not a batched matrix product`,
        at,
        'equation',
      );
    }
    const a = planner.activationInput(node, 0, at);
    const b = planner.activationInput(node, 1, at);
    const transposeTo = (x: Activation, spec: string, order: string[], name: string) => {
      const perm = order.map((c) => spec.indexOf(c));
      const inverse = new Array<number>(perm.length);
      perm.forEach((p, i) => {
        inverse[p] = i;
      });
      const base = x.layout.kind === 'flat-hwc' ? planner.toLayout(x, 'plain') : x;
      return planner.view(
        base,
        perm.map((p) => base.shape[p]),
        { kind: 'perm', perm: permOf(base)!.map((axis) => inverse[axis]) },
        name,
      );
    };
    const x = transposeTo(a, left, [...batch, ...freeLeft, ...summed], `${node.outputs[0]}:a`);
    const y = transposeTo(b, right, [...batch, ...summed, ...freeRight], `${node.outputs[0]}:b`);
    const product = batchedProduct(planner, x, y, `${node.outputs[0]}:product`, at);
    const produced = [...batch, ...freeLeft, ...freeRight].join('');
    planner.define(node.outputs[0], transposeTo(product, produced, letters(output), node.outputs[0]));
  },
};

export const MATMUL_OPS: Record<string, OpSpec> = {
  Gemm: gemmOp,
  MatMul: matMulOp,
  Einsum: einsumOp,
};
