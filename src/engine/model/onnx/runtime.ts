import * as tf from '@tensorflow/tfjs';
import { activation, groupedConv2d, layerNorm, softmaxRows } from '../../backend/layer-ops.js';
import { depthwiseConv } from './depthwise.js';
import { resolveShape } from './dims.js';
import type { Step, UnaryFn } from './plan.js';

const UNARY: Record<UnaryFn, (x: tf.Tensor) => tf.Tensor> = {
  relu: tf.relu,
  relu6: tf.relu6,
  sigmoid: tf.sigmoid,
  tanh: tf.tanh,
  erf: tf.erf,
  exp: tf.exp,
  log: tf.log,
  sqrt: tf.sqrt,
  neg: tf.neg,
  abs: tf.abs,
  reciprocal: tf.reciprocal,
  softplus: tf.softplus,
  square: tf.square,
  elu: tf.elu,
  sin: tf.sin,
  cos: tf.cos,
  gelu: (x) => activation(x, 'gelu'),
  swish: (x) => activation(x, 'swish'),
  hardswish: (x) => activation(x, 'hardswish'),
  hardsigmoid: (x) => activation(x, 'hardsigmoid'),
};
const BINARY = {
  add: tf.add,
  sub: tf.sub,
  mul: tf.mul,
  div: tf.div,
  pow: tf.pow,
  max: tf.maximum,
  min: tf.minimum,
} as const;

/** tfjs transposes (and reshapes) fastest at the lowest rank: adjacent axes that stay adjacent merge. */
function transpose(x: tf.Tensor, perm: number[]): tf.Tensor {
  const shape = x.shape;
  const groups: number[][] = [];
  for (const axis of perm) {
    const last = groups.at(-1);
    if (last && last.at(-1)! + 1 === axis) last.push(axis);
    else groups.push([axis]);
  }
  if (groups.length === perm.length) return tf.transpose(x, perm);
  const ordered = [...groups].sort((a, b) => a[0] - b[0]);
  const merged = ordered.map((g) => g.reduce((size, axis) => size * shape[axis], 1));
  const mergedPerm = groups.map((g) => ordered.indexOf(g));
  const outShape = perm.map((axis) => shape[axis]);
  return tf.reshape(tf.transpose(tf.reshape(x, merged), mergedPerm), outShape);
}

/**
 * x[start::stride] along `axis` (count elements, stride > 0) as slices and reshapes, whose gradients
 * every backend has (tfjs's gather gradient needs UnsortedSegmentSum, which wasm lacks).
 */
function stridedSlice(x: tf.Tensor, axis: number, start: number, stride: number, count: number): tf.Tensor {
  const shape = x.shape;
  const span = count * stride;
  const available = shape[axis] - start;
  let y = x;
  if (available < span) {
    // The last run is shorter than the stride: pad it (the padding is never picked).
    const paddings = shape.map((_, i): [number, number] => (i === axis ? [0, span - available] : [0, 0]));
    y = tf.pad(y, paddings);
  }
  const begin = shape.map((_, i) => (i === axis ? start : 0));
  const size = y.shape.map((d, i) => (i === axis ? span : d));
  y = tf.slice(y, begin, size);
  const split = [...shape.slice(0, axis), count, stride, ...shape.slice(axis + 1)];
  y = tf.reshape(y, split);
  const first = tf.slice(
    y,
    split.map(() => 0),
    split.map((d, i) => (i === axis + 1 ? 1 : d)),
  );
  return tf.reshape(first, [...shape.slice(0, axis), count, ...shape.slice(axis + 1)]);
}

/**
 * The elements `indices` of `x` along `axis`: reversed or strided runs as slices, anything else as a
 * concatenation of consecutive runs (differentiable on every backend, unlike tf.gather on wasm).
 */
function gather(x: tf.Tensor, indices: readonly number[], axis: number): tf.Tensor {
  if (indices.length === 0) throw new Error('an empty gather');
  let y = x;
  let picked = [...indices];
  if (picked.length > 1 && picked[1] < picked[0]) {
    // Descending: reverse the axis and count from its end.
    y = tf.reverse(y, axis);
    picked = picked.map((i) => x.shape[axis] - 1 - i);
  }
  const stride = picked.length > 1 ? picked[1] - picked[0] : 1;
  if (stride > 0 && picked.every((v, i) => v === picked[0] + i * stride)) {
    return stridedSlice(y, axis, picked[0], stride, picked.length);
  }
  const runs: Array<[number, number]> = [];
  for (const index of picked) {
    const last = runs.at(-1);
    if (last && last[0] + last[1] === index) last[1]++;
    else runs.push([index, 1]);
  }
  const parts = runs.map(([start, count]) =>
    tf.slice(
      y,
      y.shape.map((_, i) => (i === axis ? start : 0)),
      y.shape.map((d, i) => (i === axis ? count : d)),
    ),
  );
  return parts.length === 1 ? parts[0] : tf.concat(parts, axis);
}

/**
 * Runs one planned step with tfjs ops (differentiable, so `tf.grad` flows through the whole model;
 * convolutions, matrix products and the layer ops go to the kernels the backend module installed:
 * the oneDNN addon on wasm). `n` is the batch size of this call.
 */
export function runStep(step: Step, inputs: tf.Tensor[], weights: tf.Tensor[], n: number): tf.Tensor {
  const [x] = inputs;
  switch (step.op) {
    case 'constant':
      return weights[0];
    case 'conv': {
      const [filter, bias] = weights as [tf.Tensor4D, tf.Tensor1D | undefined];
      const x4 = x as tf.Tensor4D;
      if (step.depthwise) {
        // tfjs's fused depthwise convolution takes no explicit padding.
        let y: tf.Tensor = depthwiseConv(x4, filter, step.strides, step.pad, step.dilations);
        if (bias) y = tf.add(y, bias);
        return step.activation === 'relu' ? tf.relu(y) : y;
      }
      if (step.groups > 1) {
        const y = groupedConv2d(x4, filter, bias, step.groups, step.strides, step.pad, step.dilations);
        return step.activation === 'relu' ? tf.relu(y) : y;
      }
      if (!bias && step.activation === 'linear') {
        return tf.conv2d(x4, filter, step.strides, step.pad, 'NHWC', step.dilations);
      }
      return tf.fused.conv2d({
        x: x4,
        filter,
        strides: step.strides,
        pad: step.pad,
        dataFormat: 'NHWC',
        dilations: step.dilations,
        bias,
        activation: step.activation,
      });
    }
    case 'batchNorm': {
      const [mean, variance, offset, scale] = weights as tf.Tensor1D[];
      return tf.batchNorm(x, mean, variance, offset, scale, step.epsilon);
    }
    case 'layerNorm': {
      const [scale, offset] = weights as [tf.Tensor1D, tf.Tensor1D | undefined];
      const rows = tf.reshape(x, [-1, step.size]) as tf.Tensor2D;
      return tf.reshape(layerNorm(rows, scale, offset, step.epsilon), x.shape);
    }
    case 'unary':
      return UNARY[step.fn](x);
    case 'leakyRelu':
      return tf.leakyRelu(x, step.alpha);
    case 'clip':
      return tf.clipByValue(x, step.min, step.max);
    case 'binary': {
      const other = weights[0] ?? inputs[1];
      const [a, b] = step.constantFirst ? [other, x] : [x, other];
      return BINARY[step.fn](a, b);
    }
    case 'pad':
      return tf.pad(x, step.paddings, step.value);
    case 'pool':
      return step.kind === 'max'
        ? tf.maxPool(x as tf.Tensor4D, step.size, step.strides, step.pad)
        : tf.avgPool(x as tf.Tensor4D, step.size, step.strides, step.pad);
    case 'globalAverage':
      return tf.mean(x, [1, 2], true);
    case 'reduce': {
      const { axes, keepDims } = step;
      switch (step.fn) {
        case 'mean':
          return tf.mean(x, axes, keepDims);
        case 'sum':
          return tf.sum(x, axes, keepDims);
        case 'max':
          return tf.max(x, axes, keepDims);
        case 'min':
          return tf.min(x, axes, keepDims);
        case 'prod':
          return tf.prod(x, axes, keepDims);
        case 'l2':
          return tf.sqrt(tf.sum(tf.square(x), axes, keepDims));
      }
      break;
    }
    case 'reshape':
      return tf.reshape(x, resolveShape(step.shape, n));
    case 'transpose':
      return transpose(x, step.perm);
    case 'matMul': {
      if (inputs.length === 2) return tf.matMul(x, inputs[1], step.transposeA, step.transposeB);
      const [weight, bias] = weights as [tf.Tensor2D, tf.Tensor1D | undefined];
      // Leading axes folded into rows: one matrix product.
      const rows =
        x.rank === 2
          ? (x as tf.Tensor2D)
          : (tf.reshape(x, [-1, x.shape[x.rank - 1] as number]) as tf.Tensor2D);
      const product =
        !bias && step.activation === 'linear'
          ? tf.matMul(rows, weight, false, step.transposeB)
          : tf.fused.matMul({
              a: rows,
              b: weight,
              transposeB: step.transposeB,
              bias,
              activation: step.activation,
            });
      return x.rank === 2
        ? product
        : tf.reshape(product, [...x.shape.slice(0, -1), product.shape[1]] as number[]);
    }
    case 'concat': {
      const parts = step.order.map(({ from, index }) =>
        from === 'input'
          ? inputs[index]
          : tf.broadcastTo(weights[index], resolveShape(step.weightShapes[index], n)),
      );
      return tf.concat(parts, step.axis);
    }
    case 'softmax':
      return tf.reshape(
        softmaxRows(tf.reshape(x, [-1, x.shape[x.rank - 1] as number]) as tf.Tensor2D),
        x.shape,
      );
    case 'slice': {
      let y = tf.slice(x, step.begin, resolveShape(step.size, n));
      for (const { axis, indices } of step.gathers) y = gather(y, indices, axis);
      return y;
    }
    case 'gather':
      return gather(x, step.indices, step.axis);
    case 'broadcast':
      return tf.broadcastTo(x, resolveShape(step.shape, n));
  }
}

/** A plan's weights as tensors, in step order; all or none (a failure disposes what was made). */
export function materializeWeights(steps: readonly Step[]): tf.Tensor[][] {
  const made: tf.Tensor[][] = [];
  try {
    for (const step of steps) {
      made.push(
        step.weights.map((w) =>
          tf.tensor(w.type === 'float' ? w.values : Float32Array.from(w.values), w.shape, 'float32'),
        ),
      );
    }
  } catch (error) {
    tf.dispose(made.flat());
    throw error;
  }
  return made;
}

/**
 * The values of the steps that depend on constants only (a position-bias table, a mask), computed
 * once: they are kept beside the weights and never recomputed per call. Disposed by the caller.
 */
export function computeStatic(
  steps: readonly Step[],
  weights: readonly tf.Tensor[][],
): Map<number, tf.Tensor> {
  const values = new Map<number, tf.Tensor>();
  tf.tidy(() => {
    steps.forEach((step, i) => {
      if (!step.output.isStatic) return;
      const inputs = step.inputs.map((source) => values.get(source.id)!);
      const value = runStep(step, inputs, weights[i], 1);
      values.set(step.output.id, value === weights[i][0] ? tf.clone(value) : value);
    });
    for (const value of values.values()) tf.keep(value);
  });
  // Only what a per-call step reads is kept.
  const read = new Set(steps.filter((s) => !s.output.isStatic).flatMap((s) => s.inputs.map((a) => a.id)));
  for (const [id, value] of values) {
    if (!read.has(id)) {
      value.dispose();
      values.delete(id);
    }
  }
  return values;
}

/** The plan's output for `input` (call inside tf.tidy); errors name the ONNX node that failed. */
export function runPlan(
  steps: readonly Step[],
  weights: readonly tf.Tensor[][],
  statics: ReadonlyMap<number, tf.Tensor>,
  inputId: number,
  input: tf.Tensor,
  outputId: number,
): tf.Tensor {
  const n = input.shape[0];
  const values = new Map<number, tf.Tensor>(statics);
  values.set(inputId, input);
  steps.forEach((step, i) => {
    if (step.output.isStatic) return;
    const inputs = step.inputs.map((source) => values.get(source.id)!);
    try {
      values.set(step.output.id, runStep(step, inputs, weights[i], n));
    } catch (error) {
      throw new Error(`node '${step.node}' (${step.op}): ${(error as Error).message}`);
    }
  });
  return values.get(outputId)!;
}
