import { constant, normalizeAxis, sizeOf, transposeConstant } from './constants.js';
import { OnnxFormatError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import { concatConstants, defineConstant, foldReshape } from './ops-fold.js';
import {
  type Activation,
  Attributes,
  type Constant,
  type Layout,
  type OpSpec,
  type Planner,
  type Value,
} from './plan.js';
import type { ConstTensor, OnnxNode } from './proto.js';

/** Shape ops (Flatten, Reshape, Transpose, Concat), the dense head (Gemm, MatMul), pass-throughs. */

/** An NCHW activation's rows [n, C*H*W] in the order PyTorch flattens them. */
function flatten(planner: Planner, x: Activation, node: OnnxNode, at: OnnxNodeRef): Activation {
  const features = sizeOf(x.shape.slice(1));
  if (x.shape.length === 2 && x.layout.kind !== 'nhwc') return x;
  if (x.shape.length === 4 && x.layout.kind === 'nhwc') {
    const [, c, h, w] = x.shape;
    // With 1x1 maps NHWC and NCHW orders coincide.
    const layout: Layout = h * w === 1 ? { kind: 'plain' } : { kind: 'flat-hwc', c, h, w };
    return planner.emit(
      { op: 'reshape', shape: [-1, features] },
      [x],
      [],
      [-1, features],
      layout,
      node.outputs[0],
      at.node,
    );
  }
  const plain = planner.toLayout(x, 'plain');
  return planner.emit(
    { op: 'reshape', shape: [-1, features] },
    [plain],
    [],
    [-1, features],
    { kind: 'plain' },
    node.outputs[0],
    at.node,
  );
}

const flattenOp: OpSpec = {
  attributes: ['axis'],
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    const axis = normalizeAxis(new Attributes(node, at).int('axis', 1), x.shape.length);
    if (axis !== 1)
      throw new OnnxUnsupportedError(
        `axis ${axis} would merge the batch with other dimensions; only axis 1 is supported`,
        at,
        'axis',
      );
    planner.define(node.outputs[0], flatten(planner, x, node, at));
  },
};

const reshapeOp: OpSpec = {
  attributes: ['allowzero'],
  handler: (planner, node, at) => {
    const data = planner.input(node, 0);
    const targetTensor = planner.constantInput(node, 1, at, 'shape');
    if (!data || !targetTensor) throw new OnnxFormatError(`node '${at.node}' needs data and shape`, at.node);
    const allowZero = new Attributes(node, at).int('allowzero', 0) === 1;
    const target = Array.from(targetTensor.values);
    if (data.kind === 'constant') {
      defineConstant(planner, node, foldReshape(data.tensor, target, allowZero, at));
      return;
    }
    const x = data;
    const first = target[0];
    const perExample = sizeOf(x.shape.slice(1));
    const keepsBatch =
      Number.isNaN(first) ||
      (first === 0 && !allowZero) ||
      (first === -1 && target.slice(1).every((d) => d > 0) && sizeOf(target.slice(1)) === perExample) ||
      (first === 1 && planner.staticBatchOne);
    if (!keepsBatch || target.slice(1).some(Number.isNaN)) {
      throw new OnnxUnsupportedError(
        `a reshape to [${target.map((d) => (Number.isNaN(d) ? 'n' : d))}] does not keep the batch as the first dimension`,
        at,
        'shape',
      );
    }
    let rest: number[];
    try {
      rest = foldReshape(
        constant('float', [1, ...x.shape.slice(1)], []),
        [1, ...target.slice(1)],
        allowZero,
        at,
      ).shape.slice(1);
    } catch (error) {
      throw new OnnxFormatError(`node '${at.node}': ${(error as Error).message}`, at.node);
    }
    if (rest.length === 1 && rest[0] === perExample) {
      planner.define(node.outputs[0], flatten(planner, x, node, at));
      return;
    }
    if (rest.length === x.shape.length - 1 && rest.every((d, i) => d === x.shape[i + 1])) {
      planner.alias(node, x);
      return;
    }
    const plain = planner.toLayout(x, 'plain');
    planner.define(
      node.outputs[0],
      planner.emit(
        { op: 'reshape', shape: [-1, ...rest] },
        [plain],
        [],
        [-1, ...rest],
        { kind: 'plain' },
        node.outputs[0],
        at.node,
      ),
    );
  },
};

const transposeOp: OpSpec = {
  attributes: ['perm'],
  handler: (planner, node, at) => {
    const data = planner.input(node, 0);
    if (!data) throw new OnnxFormatError(`node '${at.node}' has no input`, at.node);
    const rank = data.kind === 'constant' ? data.tensor.shape.length : data.shape.length;
    const perm =
      new Attributes(node, at).ints('perm') ?? Array.from({ length: rank }, (_, i) => rank - 1 - i);
    if (data.kind === 'constant') {
      defineConstant(planner, node, transposeConstant(data.tensor, perm));
      return;
    }
    if (perm[0] !== 0) throw new OnnxUnsupportedError(`perm [${perm}] moves the batch dimension`, at, 'perm');
    if (perm.every((p, i) => p === i)) {
      planner.alias(node, data);
      return;
    }
    const plain = planner.toLayout(data, 'plain');
    const shape = perm.map((p) => data.shape[p]);
    planner.define(
      node.outputs[0],
      planner.emit(
        { op: 'transpose', perm },
        [plain],
        [],
        shape,
        { kind: 'plain' },
        node.outputs[0],
        at.node,
      ),
    );
  },
};

/** Weight rows reordered so that NHWC-flattened rows meet the rows PyTorch's NCHW flatten had. */
function permuteRows(weight: ConstTensor, layout: Extract<Layout, { kind: 'flat-hwc' }>): ConstTensor {
  const { c, h, w } = layout;
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

function dense(
  planner: Planner,
  node: OnnxNode,
  at: OnnxNodeRef,
  weight: ConstTensor,
  bias: ConstTensor | undefined,
): void {
  const x = planner.activationInput(node, 0, at);
  if (x.shape.length !== 2)
    throw new OnnxUnsupportedError(`only [n, K] inputs are supported, got rank ${x.shape.length}`, at);
  const [k, m] = weight.shape;
  if (x.shape[1] !== k)
    throw new OnnxFormatError(
      `node '${at.node}': input has ${x.shape[1]} features, the weight [${weight.shape}]`,
      at.node,
    );
  const physical =
    x.layout.kind === 'flat-hwc'
      ? permuteRows(weight, x.layout)
      : constant('float', weight.shape, weight.values);
  const weights = [physical, ...(bias ? [constant('float', [m], bias.values)] : [])];
  planner.define(
    node.outputs[0],
    planner.emit(
      { op: 'matMul', activation: 'linear' },
      [x],
      weights,
      [-1, m],
      { kind: 'plain' },
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
    const b = planner.constantInput(node, 1, at, 'B');
    if (b?.shape.length !== 2) throw new OnnxUnsupportedError('B must be a constant matrix', at, 'B');
    const alpha = a.float('alpha', 1);
    const beta = a.float('beta', 1);
    let weight = a.int('transB', 0) === 1 ? transposeConstant(b, [1, 0]) : b;
    if (alpha !== 1) weight = { ...weight, values: weight.values.map((v) => v * alpha) };
    const m = weight.shape[1];
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
    dense(planner, node, at, weight, bias);
  },
};

const matMulOp: OpSpec = {
  attributes: [],
  handler: (planner, node, at) => {
    const b = planner.constantInput(node, 1, at, 'B');
    if (b?.shape.length !== 2) throw new OnnxUnsupportedError('B must be a constant matrix', at, 'B');
    dense(planner, node, at, b, undefined);
  },
};

const concatOp: OpSpec = {
  attributes: ['axis'],
  handler: (planner, node, at) => {
    const values = node.inputs
      .map((_, i) => planner.input(node, i))
      .filter((v): v is Value => v !== undefined);
    const axisAttribute = new Attributes(node, at).int('axis', 0);
    if (values.every((v) => v.kind === 'constant')) {
      defineConstant(
        planner,
        node,
        concatConstants(
          values.map((v) => (v as Constant).tensor),
          axisAttribute,
        ),
      );
      return;
    }
    const activations = values.filter((v): v is Activation => v.kind === 'activation');
    const rank = activations[0].shape.length;
    const axis = normalizeAxis(axisAttribute, rank);
    if (axis === 0)
      throw new OnnxUnsupportedError('concatenating along the batch is not supported', at, 'axis');
    const shapes = values.map((v) => (v.kind === 'activation' ? v.shape : v.tensor.shape));
    if (
      values.some((v) => v.kind === 'constant' && v.tensor.shape[0] !== 1) ||
      shapes.some(
        (shape) => shape.length !== rank || shape.some((d, i) => i > 0 && i !== axis && d !== shapes[0][i]),
      )
    ) {
      throw new OnnxUnsupportedError(
        `inputs ${shapes.map((shape) => `[${shape}]`).join(', ')} do not concatenate on axis ${axis} (constants must have batch 1)`,
        at,
      );
    }
    const layout = rank === 4 ? 'nhwc' : 'plain';
    const inputs: Activation[] = [];
    const weights: ConstTensor[] = [];
    // Constants are repeated over the batch at run time.
    const order = values.map((v) => {
      if (v.kind === 'activation')
        return { from: 'input' as const, index: inputs.push(planner.toLayout(v, layout)) - 1 };
      const floats = constant('float', v.tensor.shape, v.tensor.values);
      return {
        from: 'weight' as const,
        index: weights.push(rank === 4 ? transposeConstant(floats, [0, 2, 3, 1]) : floats) - 1,
      };
    });
    const shape = [...activations[0].shape];
    shape[axis] = shapes.reduce((sum, s) => sum + s[axis], 0);
    const physicalAxis = rank === 4 ? [0, 3, 1, 2][axis] : axis;
    planner.define(
      node.outputs[0],
      planner.emit(
        { op: 'concat', axis: physicalAxis, order },
        inputs,
        weights,
        shape,
        inputs[0].layout,
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
    if (training && training.values[0] !== 0)
      throw new OnnxUnsupportedError('training mode is not supported', at, 'training_mode');
    identityOp.handler(planner, node, at);
  },
};

const softmaxOp: OpSpec = {
  attributes: ['axis'],
  handler: (planner, node, at) => {
    const x = planner.toLayout(planner.activationInput(node, 0, at), 'plain');
    const axis = normalizeAxis(new Attributes(node, at).int('axis', at.opset < 13 ? 1 : -1), x.shape.length);
    if (x.shape.length !== 2 || axis !== 1)
      throw new OnnxUnsupportedError(`only Softmax over the classes of [n, K] is supported`, at, 'axis');
    planner.warnings.push(
      `node '${at.node}' applies Softmax: the model outputs probabilities, not logits; attacks and calibration read them as logits (export the model without its final Softmax)`,
    );
    planner.define(
      node.outputs[0],
      planner.emit({ op: 'softmax' }, [x], [], x.shape, x.layout, node.outputs[0], at.node),
    );
  },
};

export const SHAPE_OPS: Record<string, OpSpec> = {
  Flatten: flattenOp,
  Reshape: reshapeOp,
  Transpose: transposeOp,
  Gemm: gemmOp,
  MatMul: matMulOp,
  Concat: concatOp,
  Identity: identityOp,
  Dropout: dropoutOp,
  Softmax: softmaxOp,
};
