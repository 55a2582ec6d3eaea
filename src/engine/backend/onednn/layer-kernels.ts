import type * as tf from '@tensorflow/tfjs';
import {
  ACTIVATION,
  ACTIVATION_GRAD,
  type ActivationFn,
  GROUPED_CONV,
  GROUPED_CONV_FILTER_GRAD,
  GROUPED_CONV_INPUT_GRAD,
  LAYER_NORM,
  LAYER_NORM_GRAD,
  SOFTMAX,
  SOFTMAX_GRAD,
} from '../layer-ops.js';
import type { OnednnAddon } from './addon.js';
import { heapKernel, requireFloat32, requirePresent, sizeOf, withOutput, withOutputs } from './heap.js';
import { backwardOperands } from './normalization-kernels.js';

/**
 * The layer ops of ../layer-ops.ts on the oneDNN addon (wasm backend): grouped convolution and its two
 * gradients, layer normalisation and its input gradient, the softmax of rows and its gradient, and
 * GELU, swish, hard swish and hard sigmoid with theirs. The ops call these kernels only with shapes
 * they checked; a kernel still refuses anything else with an error (the addon checks every offset
 * and size against the heap besides).
 */

/** Activation codes of onednn.cc (enum LayerActivation). */
const ACTIVATION_CODES: Readonly<Record<ActivationFn, number>> = {
  gelu: 0,
  swish: 1,
  hardswish: 2,
  hardsigmoid: 3,
};

export const LAYER_KERNEL_NAMES = [
  GROUPED_CONV,
  GROUPED_CONV_INPUT_GRAD,
  GROUPED_CONV_FILTER_GRAD,
  ACTIVATION,
  ACTIVATION_GRAD,
  LAYER_NORM,
  LAYER_NORM_GRAD,
  SOFTMAX,
  SOFTMAX_GRAD,
] as const;

type Pair = [number, number];
type ExplicitPad = [Pair, Pair, Pair, Pair] | 'valid';

interface GroupedConvAttrs {
  groups: number;
  strides: Pair;
  pad: ExplicitPad;
  dilations: Pair;
  inputShape?: number[];
  filterShape?: number[];
}

interface EpsilonAttrs {
  epsilon: number;
}

/**
 * onednn.cc's ConvGeometry of a grouped convolution of x [n, h, w, I] with a filter [kh, kw, I/g, O],
 * and the output shape; throws when the shapes do not fit.
 */
function groupedGeometry(
  kernelName: string,
  xShape: readonly number[],
  filterShape: readonly number[],
  attrs: GroupedConvAttrs,
): { geometry: number[]; outShape: number[] } {
  const [n, h, w, inChannels] = xShape;
  const [kh, kw, inPerGroup, outChannels] = filterShape;
  const { groups, strides, dilations, pad } = attrs;
  const [[,], [top, bottom], [left, right]] =
    pad === 'valid'
      ? [
          [0, 0],
          [0, 0],
          [0, 0],
        ]
      : pad;
  if (
    xShape.length !== 4 ||
    filterShape.length !== 4 ||
    !(groups >= 1) ||
    inPerGroup * groups !== inChannels ||
    outChannels % groups !== 0
  ) {
    throw new Error(`${kernelName}: filter [${filterShape}] does not fit ${groups} groups of [${xShape}]`);
  }
  const outH = Math.floor((h + top + bottom - ((kh - 1) * dilations[0] + 1)) / strides[0]) + 1;
  const outW = Math.floor((w + left + right - ((kw - 1) * dilations[1] + 1)) / strides[1]) + 1;
  if (!(outH >= 1 && outW >= 1)) throw new Error(`${kernelName}: the filter does not fit [${xShape}]`);
  return {
    geometry: [
      n,
      h,
      w,
      inChannels,
      outH,
      outW,
      outChannels,
      kh,
      kw,
      strides[0],
      strides[1],
      dilations[0],
      dilations[1],
      top,
      left,
      bottom,
      right,
      groups,
    ],
    outShape: [n, outH, outW, outChannels],
  };
}

type Inputs = Record<string, tf.TensorInfo | undefined>;
type Required = Record<string, tf.TensorInfo>;

function groupedConvKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Inputs, GroupedConvAttrs>(GROUPED_CONV, ({ inputs, attrs, backend, at }) => {
    const { x, filter } = requirePresent(GROUPED_CONV, inputs, ['x', 'filter']);
    const { bias } = inputs;
    requireFloat32(GROUPED_CONV, { x, filter, bias });
    const { geometry, outShape } = groupedGeometry(GROUPED_CONV, x.shape, filter.shape, attrs);
    if (bias && sizeOf(bias) !== outShape[3])
      throw new Error(`${GROUPED_CONV}: 'bias' must hold ${outShape[3]} values`);
    return withOutput(backend, outShape, (heap, out) =>
      addon.convForward(heap, geometry, at(x), at(filter), at(bias), out, 0, 0),
    );
  });
}

/**
 * A gradient of the grouped convolution: `compute` gets the offsets of `operands` (in order) and
 * writes a tensor of `attrs[shapeName]`'s shape (the input's or the filter's); `dy` must have the
 * convolution's output shape.
 */
function groupedConvGradKernel(
  kernelName: string,
  operands: [string, string],
  shapeName: 'inputShape' | 'filterShape',
  compute: (heap: ArrayBuffer, geometry: number[], a: number, b: number, out: number) => void,
): tf.KernelConfig {
  return heapKernel<Required, GroupedConvAttrs>(kernelName, ({ inputs, attrs, backend, at }) => {
    const [a, b] = operands.map((name) => inputs[name]);
    requireFloat32(kernelName, { [operands[0]]: a, [operands[1]]: b });
    const shape = attrs[shapeName];
    if (!shape) throw new Error(`${kernelName}: '${shapeName}' is required`);
    const { geometry, outShape } = groupedGeometry(
      kernelName,
      shapeName === 'inputShape' ? shape : inputs.x.shape,
      shapeName === 'filterShape' ? shape : inputs.filter.shape,
      attrs,
    );
    const { dy } = inputs;
    if (dy.shape.join() !== outShape.join()) {
      throw new Error(`${kernelName}: 'dy' must be [${outShape}], got [${dy.shape}]`);
    }
    return withOutput(backend, [...shape], (heap, out) => compute(heap, geometry, at(a), at(b), out));
  });
}

function activationCode(kernelName: string, fn: unknown): number {
  const code = typeof fn === 'string' ? ACTIVATION_CODES[fn as ActivationFn] : undefined;
  if (code === undefined) throw new Error(`${kernelName}: unknown activation ${JSON.stringify(fn)}`);
  return code;
}

/** An activation (`operands` ['x']) or its gradient (['dy', 'x']), elementwise over `x`. */
function activationKernel(
  kernelName: string,
  operands: ['x'] | ['dy', 'x'],
  compute: (heap: ArrayBuffer, op: number, length: number, offsets: number[], out: number) => void,
): tf.KernelConfig {
  return heapKernel<Required, { fn?: unknown }>(kernelName, ({ inputs, attrs, backend, at }) => {
    const tensors = operands.map((name) => inputs[name]);
    requireFloat32(kernelName, Object.fromEntries(operands.map((name, i) => [name, tensors[i]])));
    const { x } = inputs;
    const dy = operands.length === 2 ? inputs.dy : undefined;
    if (dy && dy.shape.join() !== x.shape.join())
      throw new Error(`${kernelName}: 'dy' and 'x' must have one shape`);
    const op = activationCode(kernelName, attrs.fn);
    if (sizeOf(x) === 0) return backend.makeOutput([...x.shape], 'float32');
    return withOutput(backend, [...x.shape], (heap, out) =>
      compute(heap, op, sizeOf(x), tensors.map(at), out),
    );
  });
}

/** [rows, size] of a rank-2 tensor, checked. */
function rows(kernelName: string, x: tf.TensorInfo): [number, number] {
  if (x.shape.length !== 2 || sizeOf(x) === 0)
    throw new Error(`${kernelName}: 'x' must be non-empty [rows, size], got [${x.shape}]`);
  return [x.shape[0], x.shape[1]];
}

function requireVector(
  kernelName: string,
  name: string,
  info: tf.TensorInfo | undefined,
  length: number,
): void {
  if (info && (info.shape.length !== 1 || info.shape[0] !== length)) {
    throw new Error(`${kernelName}: '${name}' must be [${length}], got [${info.shape}]`);
  }
}

function layerNormKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Inputs, EpsilonAttrs>(LAYER_NORM, ({ inputs, attrs, backend, at }) => {
    const { x } = requirePresent(LAYER_NORM, inputs, ['x']);
    const { scale, offset } = inputs;
    requireFloat32(LAYER_NORM, { x, scale, offset });
    const geometry = rows(LAYER_NORM, x);
    requireVector(LAYER_NORM, 'scale', scale, geometry[1]);
    requireVector(LAYER_NORM, 'offset', offset, geometry[1]);
    const { epsilon } = attrs;
    return withOutputs(backend, [[...x.shape], [geometry[0]], [geometry[0]]], (heap, outs) => {
      const [y, mean, variance] = outs;
      addon.layerNormForward(heap, geometry, at(x), at(scale), at(offset), y, mean, variance, epsilon);
    });
  });
}

function layerNormGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Inputs, EpsilonAttrs>(LAYER_NORM_GRAD, ({ inputs, attrs, backend, at }) => {
    const { dy, x, mean, variance } = requirePresent(LAYER_NORM_GRAD, inputs, [
      'dy',
      'x',
      'mean',
      'variance',
    ]);
    const { scale } = inputs;
    requireFloat32(LAYER_NORM_GRAD, { dy, x, scale, mean, variance });
    const geometry = rows(LAYER_NORM_GRAD, x);
    if (dy.shape.join() !== x.shape.join())
      throw new Error(`${LAYER_NORM_GRAD}: 'dy' and 'x' must have one shape`);
    requireVector(LAYER_NORM_GRAD, 'scale', scale, geometry[1]);
    requireVector(LAYER_NORM_GRAD, 'mean', mean, geometry[0]);
    requireVector(LAYER_NORM_GRAD, 'variance', variance, geometry[0]);
    const { epsilon } = attrs;
    return withOutput(backend, [...x.shape], (heap, dx) =>
      addon.layerNormBackward(heap, geometry, ...backwardOperands(at, inputs), dx, epsilon),
    );
  });
}

function softmaxKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Required>(SOFTMAX, ({ inputs: { x }, backend, at }) => {
    requireFloat32(SOFTMAX, { x });
    const geometry = rows(SOFTMAX, x);
    return withOutput(backend, [...x.shape], (heap, y) => addon.softmaxForward(heap, geometry, at(x), y));
  });
}

function softmaxGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Required>(SOFTMAX_GRAD, ({ inputs: { dy, y }, backend, at }) => {
    requireFloat32(SOFTMAX_GRAD, { dy, y });
    const geometry = rows(SOFTMAX_GRAD, y);
    if (dy.shape.join() !== y.shape.join())
      throw new Error(`${SOFTMAX_GRAD}: 'dy' and 'y' must have one shape`);
    return withOutput(backend, [...y.shape], (heap, dx) =>
      addon.softmaxBackward(heap, geometry, at(y), at(dy), dx),
    );
  });
}

/** The kernels of this file. */
export function layerKernels(addon: OnednnAddon): tf.KernelConfig[] {
  return [
    groupedConvKernel(addon),
    groupedConvGradKernel(GROUPED_CONV_INPUT_GRAD, ['dy', 'filter'], 'inputShape', (...call) =>
      addon.convBackwardData(...call),
    ),
    groupedConvGradKernel(GROUPED_CONV_FILTER_GRAD, ['x', 'dy'], 'filterShape', (...call) =>
      addon.convBackwardWeights(...call),
    ),
    activationKernel(ACTIVATION, ['x'], (heap, op, length, [x], out) =>
      addon.activationForward(heap, op, length, x, out),
    ),
    activationKernel(ACTIVATION_GRAD, ['dy', 'x'], (heap, op, length, [dy, x], out) =>
      addon.activationBackward(heap, op, length, dy, x, out),
    ),
    layerNormKernel(addon),
    layerNormGradKernel(addon),
    softmaxKernel(addon),
    softmaxGradKernel(addon),
  ];
}
