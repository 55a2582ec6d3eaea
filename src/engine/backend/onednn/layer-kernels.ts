import * as tf from '@tensorflow/tfjs';
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
import { offsetOf, type WasmHeapBackend, withOutput, withOutputs } from './heap.js';

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

const size = (info: tf.TensorInfo) => tf.util.sizeFromShape(info.shape);

function requireFloat32(kernelName: string, inputs: Record<string, tf.TensorInfo | undefined>): void {
  for (const [name, info] of Object.entries(inputs)) {
    if (info && info.dtype !== 'float32')
      throw new Error(`${kernelName}: '${name}' must be float32, got ${info.dtype}`);
  }
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

function groupedConvKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: GROUPED_CONV,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x, filter, bias } = inputs as Record<string, tf.TensorInfo | undefined>;
      if (!x || !filter) throw new Error(`${GROUPED_CONV}: 'x' and 'filter' are required`);
      requireFloat32(GROUPED_CONV, { x, filter, bias });
      const { geometry, outShape } = groupedGeometry(
        GROUPED_CONV,
        x.shape,
        filter.shape,
        attrs as unknown as GroupedConvAttrs,
      );
      if (bias && size(bias) !== outShape[3])
        throw new Error(`${GROUPED_CONV}: 'bias' must hold ${outShape[3]} values`);
      const heapBackend = backend as WasmHeapBackend;
      return withOutput(heapBackend, outShape, (heap, out) =>
        addon.convForward(
          heap,
          geometry,
          offsetOf(heapBackend, x),
          offsetOf(heapBackend, filter),
          bias ? offsetOf(heapBackend, bias) : -1,
          out,
          0,
          0,
        ),
      );
    },
  };
}

function groupedConvInputGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: GROUPED_CONV_INPUT_GRAD,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { dy, filter } = inputs as Record<string, tf.TensorInfo>;
      const convAttrs = attrs as unknown as GroupedConvAttrs;
      requireFloat32(GROUPED_CONV_INPUT_GRAD, { dy, filter });
      if (!convAttrs.inputShape) throw new Error(`${GROUPED_CONV_INPUT_GRAD}: 'inputShape' is required`);
      const { geometry, outShape } = groupedGeometry(
        GROUPED_CONV_INPUT_GRAD,
        convAttrs.inputShape,
        filter.shape,
        convAttrs,
      );
      if (dy.shape.join() !== outShape.join()) {
        throw new Error(`${GROUPED_CONV_INPUT_GRAD}: 'dy' must be [${outShape}], got [${dy.shape}]`);
      }
      const heapBackend = backend as WasmHeapBackend;
      return withOutput(heapBackend, [...convAttrs.inputShape], (heap, out) =>
        addon.convBackwardData(heap, geometry, offsetOf(heapBackend, dy), offsetOf(heapBackend, filter), out),
      );
    },
  };
}

function groupedConvFilterGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: GROUPED_CONV_FILTER_GRAD,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x, dy } = inputs as Record<string, tf.TensorInfo>;
      const convAttrs = attrs as unknown as GroupedConvAttrs;
      requireFloat32(GROUPED_CONV_FILTER_GRAD, { x, dy });
      if (!convAttrs.filterShape) throw new Error(`${GROUPED_CONV_FILTER_GRAD}: 'filterShape' is required`);
      const { geometry, outShape } = groupedGeometry(
        GROUPED_CONV_FILTER_GRAD,
        x.shape,
        convAttrs.filterShape,
        convAttrs,
      );
      if (dy.shape.join() !== outShape.join()) {
        throw new Error(`${GROUPED_CONV_FILTER_GRAD}: 'dy' must be [${outShape}], got [${dy.shape}]`);
      }
      const heapBackend = backend as WasmHeapBackend;
      return withOutput(heapBackend, [...convAttrs.filterShape], (heap, out) =>
        addon.convBackwardWeights(heap, geometry, offsetOf(heapBackend, x), offsetOf(heapBackend, dy), out),
      );
    },
  };
}

function activationCode(kernelName: string, fn: unknown): number {
  const code = typeof fn === 'string' ? ACTIVATION_CODES[fn as ActivationFn] : undefined;
  if (code === undefined) throw new Error(`${kernelName}: unknown activation ${JSON.stringify(fn)}`);
  return code;
}

function activationKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: ACTIVATION,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x } = inputs as Record<string, tf.TensorInfo>;
      requireFloat32(ACTIVATION, { x });
      const op = activationCode(ACTIVATION, (attrs as { fn?: unknown }).fn);
      const heapBackend = backend as WasmHeapBackend;
      if (size(x) === 0) return heapBackend.makeOutput([...x.shape], 'float32');
      return withOutput(heapBackend, [...x.shape], (heap, out) =>
        addon.activationForward(heap, op, size(x), offsetOf(heapBackend, x), out),
      );
    },
  };
}

function activationGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: ACTIVATION_GRAD,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { dy, x } = inputs as Record<string, tf.TensorInfo>;
      requireFloat32(ACTIVATION_GRAD, { dy, x });
      if (dy.shape.join() !== x.shape.join())
        throw new Error(`${ACTIVATION_GRAD}: 'dy' and 'x' must have one shape`);
      const op = activationCode(ACTIVATION_GRAD, (attrs as { fn?: unknown }).fn);
      const heapBackend = backend as WasmHeapBackend;
      if (size(x) === 0) return heapBackend.makeOutput([...x.shape], 'float32');
      return withOutput(heapBackend, [...x.shape], (heap, out) =>
        addon.activationBackward(heap, op, size(x), offsetOf(heapBackend, dy), offsetOf(heapBackend, x), out),
      );
    },
  };
}

/** [rows, size] of a rank-2 tensor, checked. */
function rows(kernelName: string, x: tf.TensorInfo): [number, number] {
  if (x.shape.length !== 2 || size(x) === 0)
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
  return {
    kernelName: LAYER_NORM,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { x, scale, offset } = inputs as Record<string, tf.TensorInfo | undefined>;
      if (!x) throw new Error(`${LAYER_NORM}: 'x' is required`);
      requireFloat32(LAYER_NORM, { x, scale, offset });
      const geometry = rows(LAYER_NORM, x);
      requireVector(LAYER_NORM, 'scale', scale, geometry[1]);
      requireVector(LAYER_NORM, 'offset', offset, geometry[1]);
      const { epsilon } = attrs as unknown as { epsilon: number };
      const heapBackend = backend as WasmHeapBackend;
      const at = (info: tf.TensorInfo | undefined) => (info ? offsetOf(heapBackend, info) : -1);
      return withOutputs(
        heapBackend,
        [[...x.shape], [geometry[0]], [geometry[0]]],
        (heap, [y, mean, variance]) =>
          addon.layerNormForward(heap, geometry, at(x), at(scale), at(offset), y, mean, variance, epsilon),
      );
    },
  };
}

function layerNormGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: LAYER_NORM_GRAD,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const { dy, x, scale, mean, variance } = inputs as Record<string, tf.TensorInfo | undefined>;
      if (!dy || !x || !mean || !variance)
        throw new Error(`${LAYER_NORM_GRAD}: 'dy', 'x', 'mean' and 'variance' are required`);
      requireFloat32(LAYER_NORM_GRAD, { dy, x, scale, mean, variance });
      const geometry = rows(LAYER_NORM_GRAD, x);
      if (dy.shape.join() !== x.shape.join())
        throw new Error(`${LAYER_NORM_GRAD}: 'dy' and 'x' must have one shape`);
      requireVector(LAYER_NORM_GRAD, 'scale', scale, geometry[1]);
      requireVector(LAYER_NORM_GRAD, 'mean', mean, geometry[0]);
      requireVector(LAYER_NORM_GRAD, 'variance', variance, geometry[0]);
      const { epsilon } = attrs as unknown as { epsilon: number };
      const heapBackend = backend as WasmHeapBackend;
      const at = (info: tf.TensorInfo | undefined) => (info ? offsetOf(heapBackend, info) : -1);
      return withOutput(heapBackend, [...x.shape], (heap, dx) =>
        addon.layerNormBackward(
          heap,
          geometry,
          at(x),
          at(dy),
          at(mean),
          at(variance),
          at(scale),
          dx,
          epsilon,
        ),
      );
    },
  };
}

function softmaxKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: SOFTMAX,
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend }) => {
      const { x } = inputs as Record<string, tf.TensorInfo>;
      requireFloat32(SOFTMAX, { x });
      const geometry = rows(SOFTMAX, x);
      const heapBackend = backend as WasmHeapBackend;
      return withOutput(heapBackend, [...x.shape], (heap, y) =>
        addon.softmaxForward(heap, geometry, offsetOf(heapBackend, x), y),
      );
    },
  };
}

function softmaxGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return {
    kernelName: SOFTMAX_GRAD,
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend }) => {
      const { dy, y } = inputs as Record<string, tf.TensorInfo>;
      requireFloat32(SOFTMAX_GRAD, { dy, y });
      const geometry = rows(SOFTMAX_GRAD, y);
      if (dy.shape.join() !== y.shape.join())
        throw new Error(`${SOFTMAX_GRAD}: 'dy' and 'y' must have one shape`);
      const heapBackend = backend as WasmHeapBackend;
      return withOutput(heapBackend, [...y.shape], (heap, dx) =>
        addon.softmaxBackward(heap, geometry, offsetOf(heapBackend, y), offsetOf(heapBackend, dy), dx),
      );
    },
  };
}

/** The kernels of this file. */
export function layerKernels(addon: OnednnAddon): tf.KernelConfig[] {
  return [
    groupedConvKernel(addon),
    groupedConvInputGradKernel(addon),
    groupedConvFilterGradKernel(addon),
    activationKernel(addon),
    activationGradKernel(addon),
    layerNormKernel(addon),
    layerNormGradKernel(addon),
    softmaxKernel(addon),
    softmaxGradKernel(addon),
  ];
}
