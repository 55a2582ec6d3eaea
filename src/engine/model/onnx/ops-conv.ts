import { constant, sizeOf, transposeConstant } from './constants.js';
import { OnnxFormatError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import {
  type Activation,
  Attributes,
  type ExplicitPad,
  nhwc,
  type OpSpec,
  type Planner,
  permOf,
} from './plan.js';
import type { ConstTensor, OnnxNode } from './proto.js';

/** Convolutions, pooling and padding: the spatial ops, planned on NHWC activations. */

type Pair = [number, number];

interface Window {
  kernel: Pair;
  strides: Pair;
  dilations: Pair;
  /** [top, left, bottom, right], ONNX order [x1_begin, x2_begin, x1_end, x2_end]. */
  pads: [number, number, number, number];
}

function pair(values: number[] | undefined, fallback: number, name: string, at: OnnxNodeRef): Pair {
  const v = values ?? [fallback, fallback];
  if (v.length !== 2 || v.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new OnnxUnsupportedError(`must be two positive integers (2-D only), got [${v}]`, at, name);
  }
  return [v[0], v[1]];
}

/** Kernel, strides, dilations and explicit pads (auto_pad resolved against the static input size). */
function windowOf(node: OnnxNode, at: OnnxNodeRef, input: Activation, kernel: number[]): Window {
  const a = new Attributes(node, at);
  if (kernel.length !== 2)
    throw new OnnxUnsupportedError(`only 2-D windows are supported, got [${kernel}]`, at, 'kernel_shape');
  const k = pair(kernel, 1, 'kernel_shape', at);
  const strides = pair(a.ints('strides'), 1, 'strides', at);
  const dilations = pair(a.ints('dilations'), 1, 'dilations', at);
  const autoPad = a.string('auto_pad', 'NOTSET');
  let pads: [number, number, number, number] = [0, 0, 0, 0];
  if (autoPad === 'NOTSET') {
    const raw = a.ints('pads') ?? [0, 0, 0, 0];
    if (raw.length !== 4 || raw.some((p) => !Number.isInteger(p) || p < 0)) {
      throw new OnnxUnsupportedError(`must be 4 non-negative integers, got [${raw}]`, at, 'pads');
    }
    pads = raw as [number, number, number, number];
  } else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
    const [, , h, w] = input.shape;
    const total = [h, w].map((size, i) => {
      const out = Math.ceil(size / strides[i]);
      return Math.max(0, (out - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - size);
    });
    const begin = total.map((t) => (autoPad === 'SAME_UPPER' ? Math.floor(t / 2) : Math.ceil(t / 2)));
    pads = [begin[0], begin[1], total[0] - begin[0], total[1] - begin[1]];
  } else if (autoPad !== 'VALID') {
    throw new OnnxUnsupportedError(`auto_pad '${autoPad}' is not supported`, at, 'auto_pad');
  }
  if (dilations.some((d) => d > 1) && strides.some((s) => s > 1)) {
    throw new OnnxUnsupportedError(
      'dilations > 1 together with strides > 1 are not supported (tfjs)',
      at,
      'dilations',
    );
  }
  return { kernel: k, strides, dilations, pads };
}

function outputSize(
  size: number,
  begin: number,
  end: number,
  kernel: number,
  stride: number,
  dilation: number,
  at: OnnxNodeRef,
): number {
  const out = Math.floor((size + begin + end - ((kernel - 1) * dilation + 1)) / stride) + 1;
  if (out < 1) throw new OnnxFormatError(`the window does not fit the input of size ${size}`, at.node);
  return out;
}

function explicitPad(pads: readonly number[]): ExplicitPad | 'valid' {
  const [top, left, bottom, right] = pads;
  if (pads.every((p) => p === 0)) return 'valid';
  return [
    [0, 0],
    [top, bottom],
    [left, right],
    [0, 0],
  ];
}

/**
 * A zero Pad of H and W whose only reader is this convolution is merged into the convolution's
 * padding, so that F.pad + Conv runs as one kernel.
 */
function absorbZeroPad(planner: Planner, x: Activation, pads: [number, number, number, number]): Activation {
  const producer = x.producer;
  if (producer?.op !== 'pad' || producer.value !== 0 || !planner.soleReader(x)) return x;
  const [n, h, w, c] = producer.paddings;
  if (n[0] || n[1] || c[0] || c[1]) return x;
  pads[0] += h[0];
  pads[1] += w[0];
  pads[2] += h[1];
  pads[3] += w[1];
  return producer.inputs[0];
}

const convOp: OpSpec = {
  attributes: ['auto_pad', 'dilations', 'group', 'kernel_shape', 'pads', 'strides'],
  handler: (planner, node, at) => {
    let x = planner.activationInput(node, 0, at);
    const weight = planner.constantInput(node, 1, at, 'W');
    if (!weight) throw new OnnxFormatError(`node '${at.node}' has no weight`, at.node);
    const bias = planner.constantInput(node, 2, at, 'B');
    if (weight.shape.length !== 4 || x.shape.length !== 4) {
      throw new OnnxUnsupportedError(
        `only 2-D convolutions (rank-4 weights and inputs) are supported, weight [${weight.shape}]`,
        at,
        'kernel_shape',
      );
    }
    const [outChannels, inPerGroup, kh, kw] = weight.shape;
    const kernel = new Attributes(node, at).ints('kernel_shape') ?? [kh, kw];
    if (kernel[0] !== kh || kernel[1] !== kw) {
      throw new OnnxFormatError(
        `kernel_shape [${kernel}] differs from the weight [${weight.shape}]`,
        at.node,
      );
    }
    const window = windowOf(node, at, x, kernel);
    const groups = new Attributes(node, at).int('group', 1);
    const inChannels = x.shape[1];
    if (
      !(Number.isInteger(groups) && groups >= 1) ||
      inChannels % groups !== 0 ||
      outChannels % groups !== 0
    ) {
      throw new OnnxUnsupportedError(
        `group ${groups} must divide the input channels (${inChannels}) and the output channels (${outChannels})`,
        at,
        'group',
      );
    }
    if (inPerGroup * groups !== inChannels) {
      throw new OnnxFormatError(
        `the weight takes ${inPerGroup} input channels per group, the input has ${inChannels} in ${groups} groups`,
        at.node,
      );
    }
    const depthwise = groups > 1 && groups === inChannels;
    if (bias && bias.values.length !== outChannels) {
      throw new OnnxFormatError(
        `the bias has ${bias.values.length} values for ${outChannels} output channels`,
        at.node,
      );
    }
    x = absorbZeroPad(planner, planner.toLayout(x, 'nhwc'), window.pads);
    const [, , h, w] = x.shape;
    const { strides, dilations, pads } = window;
    const outH = outputSize(h, pads[0], pads[2], kh, strides[0], dilations[0], at);
    const outW = outputSize(w, pads[1], pads[3], kw, strides[1], dilations[1], at);
    // [O, I/g, kh, kw] -> [kh, kw, I/g, O]: tfjs's HWIO for one group; for g groups the output
    // channels run group-major, which oneDNN reads as [kh, kw, I/g, g, O/g]; for depthwise the same
    // bytes are tfjs's [kh, kw, C, multiplier].
    const transposed = transposeConstant(weight, [2, 3, 1, 0]);
    const filter = depthwise
      ? { ...transposed, shape: [kh, kw, inChannels, outChannels / inChannels] }
      : transposed;
    const weights = [filter, ...(bias ? [{ ...bias, shape: [outChannels] }] : [])];
    const out = planner.emit(
      { op: 'conv', groups, depthwise, strides, pad: explicitPad(pads), dilations, activation: 'linear' },
      [x],
      weights,
      [x.shape[0], outChannels, outH, outW],
      nhwc(),
      node.outputs[0],
      at.node,
    );
    planner.define(node.outputs[0], out);
  },
};

function poolOp(kind: 'max' | 'avg'): OpSpec {
  const attributes =
    kind === 'max'
      ? ['auto_pad', 'ceil_mode', 'dilations', 'kernel_shape', 'pads', 'storage_order', 'strides']
      : ['auto_pad', 'ceil_mode', 'count_include_pad', 'kernel_shape', 'pads', 'strides'];
  return {
    attributes,
    handler: (planner, node, at) => {
      let x = planner.activationInput(node, 0, at);
      if (x.shape.length !== 4)
        throw new OnnxUnsupportedError(`only 2-D pooling is supported, input [${x.shape}]`, at);
      const a = new Attributes(node, at);
      const kernel = a.ints('kernel_shape');
      if (!kernel) throw new OnnxFormatError(`node '${at.node}' has no kernel_shape`, at.node);
      const { kernel: k, strides, dilations, pads } = windowOf(node, at, x, kernel);
      if (dilations.some((d) => d !== 1))
        throw new OnnxUnsupportedError('dilated pooling is not supported', at, 'dilations');
      x = planner.toLayout(x, 'nhwc');
      const [, channels, h, w] = x.shape;
      let padded = pads;
      if (kind === 'avg' && a.int('count_include_pad', 0) === 1 && pads.some((p) => p > 0)) {
        // Padding counted in the average: pad with zeros, then pool without padding.
        x = planner.emit(
          {
            op: 'pad',
            paddings: [
              [0, 0],
              [pads[0], pads[2]],
              [pads[1], pads[3]],
              [0, 0],
            ],
            value: 0,
          },
          [x],
          [],
          [x.shape[0], channels, h + pads[0] + pads[2], w + pads[1] + pads[3]],
          nhwc(),
          `${node.outputs[0]}:padded`,
          at.node,
        );
        padded = [0, 0, 0, 0];
      }
      const [ph, pw] = [x.shape[2], x.shape[3]];
      const sizes = [ph, pw].map((size, i) => {
        const floor = outputSize(size, padded[i], padded[i + 2], k[i], strides[i], 1, at);
        if (a.int('ceil_mode', 0) === 0) return floor;
        let ceil = Math.ceil((size + padded[i] + padded[i + 2] - k[i]) / strides[i]) + 1;
        // PyTorch's rule: the last window starts inside the input or its leading padding.
        if ((ceil - 1) * strides[i] >= size + padded[i]) ceil -= 1;
        if (ceil !== floor && kind === 'avg' && a.int('count_include_pad', 0) === 1) {
          throw new OnnxUnsupportedError(
            'ceil_mode with count_include_pad is not supported',
            at,
            'ceil_mode',
          );
        }
        // The extra trailing windows read padding, which pooling here never counts.
        padded[i + 2] += Math.max(0, (ceil - 1) * strides[i] + k[i] - (size + padded[i] + padded[i + 2]));
        return ceil;
      });
      const out = planner.emit(
        { op: 'pool', kind, size: k, strides, pad: explicitPad(padded) },
        [x],
        [],
        [x.shape[0], channels, sizes[0], sizes[1]],
        nhwc(),
        node.outputs[0],
        at.node,
      );
      planner.define(node.outputs[0], out);
    },
  };
}

const globalAveragePoolOp: OpSpec = {
  attributes: [],
  handler: (planner, node, at) => {
    const x = planner.activationInput(node, 0, at);
    if (x.shape.length !== 4)
      throw new OnnxUnsupportedError(`only 2-D pooling is supported, input [${x.shape}]`, at);
    const out = planner.emit(
      { op: 'globalAverage' },
      [planner.toLayout(x, 'nhwc')],
      [],
      [x.shape[0], x.shape[1], 1, 1],
      nhwc(),
      node.outputs[0],
      at.node,
    );
    planner.define(node.outputs[0], out);
  },
};

const padOp: OpSpec = {
  attributes: ['mode', 'pads', 'value'],
  handler: (planner, node, at) => {
    const a = new Attributes(node, at);
    const mode = a.string('mode', 'constant');
    if (mode !== 'constant')
      throw new OnnxUnsupportedError(`mode '${mode}' is not supported (constant only)`, at, 'mode');
    let x = planner.activationInput(node, 0, at);
    const rank = x.shape.length;
    let pads = a.ints('pads');
    let value = a.float('value', 0);
    if (!pads) {
      const padInput = planner.constantInput(node, 1, at, 'pads');
      if (!padInput) throw new OnnxFormatError(`node '${at.node}' has no pads`, at.node);
      pads = Array.from(padInput.values);
      const fill = planner.constantInput(node, 2, at, 'constant_value');
      if (fill) value = fill.values[0] ?? 0;
      const axesInput = planner.constantInput(node, 3, at, 'axes');
      if (axesInput) {
        const axes = Array.from(axesInput.values, (v) => (v < 0 ? v + rank : v));
        const full = new Array<number>(2 * rank).fill(0);
        axes.forEach((axis, i) => {
          full[axis] = pads![i];
          full[axis + rank] = pads![i + axes.length];
        });
        pads = full;
      }
    }
    if (pads.length !== 2 * rank || pads.some((p) => !Number.isInteger(p) || p < 0)) {
      throw new OnnxUnsupportedError(
        `must be ${2 * rank} non-negative integers (no cropping), got [${pads}]`,
        at,
        'pads',
      );
    }
    const logical = x.shape.map((_, i): Pair => [pads![i], pads![i + rank]]);
    if (x.shape.some((d, i) => d < 0 && (logical[i][0] !== 0 || logical[i][1] !== 0))) {
      throw new OnnxUnsupportedError('padding the batch is not supported', at, 'pads');
    }
    const shape = x.shape.map((d, i) => (d < 0 ? d : d + logical[i][0] + logical[i][1]));
    if (logical.every(([a, b]) => a === 0 && b === 0)) {
      planner.alias(node, x);
      return;
    }
    if (x.layout.kind === 'flat-hwc') x = planner.toLayout(x, 'plain');
    const perm = permOf(x)!;
    const out = planner.emit(
      { op: 'pad', paddings: perm.map((axis) => logical[axis]), value },
      [x],
      [],
      shape,
      x.layout,
      node.outputs[0],
      at.node,
    );
    planner.define(node.outputs[0], out);
  },
};

/** A per-channel parameter (BatchNormalization's scale, bias, mean, variance) as a [C] constant. */
export function channelVector(
  tensor: ConstTensor,
  channels: number,
  what: string,
  at: OnnxNodeRef,
): ConstTensor {
  if (sizeOf(tensor.shape) !== channels) {
    throw new OnnxFormatError(`${what} has ${tensor.values.length} values for ${channels} channels`, at.node);
  }
  return constant('float', [channels], tensor.values);
}

export const CONV_OPS: Record<string, OpSpec> = {
  Conv: convOp,
  MaxPool: poolOp('max'),
  AveragePool: poolOp('avg'),
  GlobalAveragePool: globalAveragePoolOp,
  Pad: padOp,
};
