import * as tf from '@tensorflow/tfjs';
import { convSizes } from '../conv-sizes.js';
import { runKernel } from '../run-kernel.js';
import type { OnednnAddon } from './addon.js';
import {
  allFloat32,
  findWasmKernel,
  heapKernel,
  type KernelArgs,
  registerWasmKernel,
  withOutput,
} from './heap.js';
import { LAYER_KERNEL_NAMES, layerKernels } from './layer-kernels.js';
import {
  NORMALIZATION_GRADIENT_NAMES,
  NORMALIZATION_KERNEL_NAMES,
  normalizationGradients,
  normalizationKernels,
} from './normalization-kernels.js';

/**
 * TF.js kernels on the wasm backend computed by oneDNN (addon/onednn.cc) on the tensors where they lie
 * in tfjs-backend-wasm's heap: Conv2D, FusedConv2D, Conv2DBackpropInput, Conv2DBackpropFilter, the
 * depthwise forms of all four, BatchMatMul and _FusedMatMul. They are ordinary kernels, so the tape
 * records them and tfjs's own gradients (which call the backprop kernels) give second derivatives too.
 *
 * Each kernel hands a case it does not cover (NCHW, PReLU, a bias that is not one value per channel,
 * non-float32 tensors, a batch broadcast oneDNN cannot express, an output size that does not follow from
 * the pads) to the kernel that was registered before it: the project's wasm kernels or tfjs's own.
 * The Conv2D gradient is replaced too, so that a training step runs both backprop kernels here.
 */

type Pad = tf.Conv2DAttrs['pad'];
type Pair = number | [number, number];

/** Activation codes of onednn.cc (enum Activation); PReLU is not among them. */
const ACTIVATION_CODES: Readonly<Record<string, number>> = {
  linear: 0,
  relu: 1,
  relu6: 2,
  leakyrelu: 3,
  elu: 4,
  sigmoid: 5,
};

/** tfjs's default leakyrelu alpha (fused ops). */
const DEFAULT_LEAKY_RELU_ALPHA = 0.2;

export const ONEDNN_KERNEL_NAMES = [
  tf.Conv2D,
  tf.FusedConv2D,
  tf.Conv2DBackpropInput,
  tf.Conv2DBackpropFilter,
  tf.DepthwiseConv2dNative,
  tf.FusedDepthwiseConv2D,
  tf.DepthwiseConv2dNativeBackpropInput,
  tf.DepthwiseConv2dNativeBackpropFilter,
  tf.BatchMatMul,
  tf._FusedMatMul,
  ...NORMALIZATION_KERNEL_NAMES,
  ...LAYER_KERNEL_NAMES,
] as const;

interface Installed {
  addon: OnednnAddon;
  /** The kernels registered before ours (undefined: none), the fallbacks. */
  previous: Map<string, tf.KernelConfig | undefined>;
  previousConv2DGradient: tf.GradConfig;
  /** The gradients of NORMALIZATION_GRADIENT_NAMES before ours. */
  previousGradients: Map<string, tf.GradConfig>;
}

let installed: Installed | null = null;

function isUnit(value: Pair | undefined): boolean {
  if (value === undefined) return true;
  return typeof value === 'number' ? value === 1 : value[0] === 1 && value[1] === 1;
}

/**
 * The geometry array of onednn.cc (ConvGeometry), or null when oneDNN's output-size rule (floor of
 * padded input minus dilated filter over stride, plus one) does not give tfjs's output size (e.g. a
 * numeric pad with dimRoundingMode 'ceil').
 */
function convGeometry(info: tf.backend_util.Conv2DInfo, depthwise: boolean): number[] | null {
  const { top, left, bottom, right } = info.padInfo;
  const sizes = convSizes(info);
  if (sizes.some((size) => size < 1) || [top, left, bottom, right].some((pad) => pad < 0)) return null;
  const spanHeight = (info.filterHeight - 1) * info.dilationHeight + 1;
  const spanWidth = (info.filterWidth - 1) * info.dilationWidth + 1;
  const paddedHeight = info.inHeight + top + bottom;
  const paddedWidth = info.inWidth + left + right;
  if (
    paddedHeight < spanHeight ||
    paddedWidth < spanWidth ||
    Math.floor((paddedHeight - spanHeight) / info.strideHeight) + 1 !== info.outHeight ||
    Math.floor((paddedWidth - spanWidth) / info.strideWidth) + 1 !== info.outWidth
  ) {
    return null;
  }
  return [
    ...sizes,
    info.filterHeight,
    info.filterWidth,
    info.strideHeight,
    info.strideWidth,
    info.dilationHeight,
    info.dilationWidth,
    top,
    left,
    bottom,
    right,
    depthwise ? info.inChannels : 1,
  ];
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((size, i) => size === b[i]);
}

function fallback(
  state: Installed,
  kernelName: string,
  args: KernelArgs,
  why: string,
): tf.TensorInfo | tf.TensorInfo[] {
  const previous = state.previous.get(kernelName);
  if (!previous) throw new Error(`${kernelName} on wasm: ${why}, and no other kernel is registered for it`);
  return previous.kernelFunc(args);
}

interface ConvAttrs {
  strides: Pair;
  pad: Pad;
  dataFormat?: 'NHWC' | 'NCHW';
  dilations?: Pair;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
  activation?: string;
  leakyreluAlpha?: number;
}

function forwardConvKernel(state: Installed, kernelName: string, depthwise: boolean): tf.KernelConfig {
  return heapKernel<Record<string, tf.TensorInfo | undefined>, ConvAttrs>(kernelName, (call) => {
    const { inputs, attrs, backend, at, args } = call;
    const { x, filter, bias, preluActivationWeights } = inputs;
    const activation = ACTIVATION_CODES[attrs.activation ?? 'linear'];
    if (attrs.dataFormat === 'NCHW' || activation === undefined || preluActivationWeights) {
      return fallback(state, kernelName, args, 'NCHW or PReLU');
    }
    if (!x || !filter || !allFloat32(x, filter, bias) || x.shape.length !== 4 || filter.shape.length !== 4) {
      return fallback(state, kernelName, args, 'not float32 NHWC');
    }
    const info = tf.backend_util.computeConv2DInfo(
      x.shape as [number, number, number, number],
      filter.shape as [number, number, number, number],
      attrs.strides,
      attrs.dilations ?? 1,
      attrs.pad,
      attrs.dimRoundingMode,
      depthwise,
    );
    const geometry = convGeometry(info, depthwise);
    const biasFits = !bias || tf.util.sizeFromShape(bias.shape) === info.outChannels;
    if (!geometry || !biasFits) return fallback(state, kernelName, args, 'geometry oneDNN does not express');
    const alpha = attrs.leakyreluAlpha ?? DEFAULT_LEAKY_RELU_ALPHA;
    return withOutput(
      backend,
      [info.batchSize, info.outHeight, info.outWidth, info.outChannels],
      (heap, out) =>
        state.addon.convForward(heap, geometry, at(x), at(filter), at(bias), out, activation, alpha),
    );
  });
}

interface BackpropAttrs extends ConvAttrs {
  inputShape?: [number, number, number, number];
  filterShape?: [number, number, number, number];
}

/**
 * The Conv2D info of a backprop kernel, or null (fallback). A dilated case that cannot run here is
 * an error: the kernels before ours know nothing of dilations and would compute an undilated result.
 */
function backpropGeometry(
  kernelName: string,
  attrs: BackpropAttrs,
  xShape: readonly number[],
  filterShape: readonly number[],
  dy: tf.TensorInfo,
  depthwise: boolean,
): { info: tf.backend_util.Conv2DInfo; geometry: number[] } | null {
  const dilated = !isUnit(attrs.dilations);
  const give = (why: string) => {
    if (dilated) throw new Error(`${kernelName} with dilations ${attrs.dilations}: ${why}`);
    return null;
  };
  if (attrs.dataFormat === 'NCHW' || xShape.length !== 4 || filterShape.length !== 4)
    return give('NHWC only');
  const info = tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides,
    attrs.dilations ?? 1,
    attrs.pad,
    attrs.dimRoundingMode,
    depthwise,
  );
  const expected = [info.batchSize, info.outHeight, info.outWidth, info.outChannels];
  if (!sameShape(dy.shape, expected)) {
    throw new Error(
      `${kernelName}: 'dy' must have the convolution's output shape [${expected}], got [${dy.shape}]`,
    );
  }
  const geometry = convGeometry(info, depthwise);
  if (!geometry) return give('geometry oneDNN does not express');
  return { info, geometry };
}

/**
 * A convolution backprop kernel: `compute` gets the offsets of `operands` (in order) and writes a
 * tensor of `attrs[shapeName]`'s shape (the input's or the filter's).
 */
function backpropKernel(
  state: Installed,
  kernelName: string,
  depthwise: boolean,
  operands: ['dy', 'filter'] | ['x', 'dy'],
  shapeName: 'inputShape' | 'filterShape',
  compute: (heap: ArrayBuffer, geometry: number[], a: number, b: number, out: number) => void,
): tf.KernelConfig {
  return heapKernel<Record<string, tf.TensorInfo>, BackpropAttrs>(
    kernelName,
    ({ inputs, attrs, backend, at, args }) => {
      const [a, b] = operands.map((name) => inputs[name]);
      const shape = attrs[shapeName];
      if (!allFloat32(a, b) || !shape) return fallback(state, kernelName, args, 'not float32');
      const found = backpropGeometry(
        kernelName,
        attrs,
        shapeName === 'inputShape' ? shape : inputs.x.shape,
        shapeName === 'filterShape' ? shape : inputs.filter.shape,
        inputs.dy,
        depthwise,
      );
      if (!found) return fallback(state, kernelName, args, 'geometry oneDNN does not express');
      return withOutput(backend, [...shape], (heap, out) => compute(heap, found.geometry, at(a), at(b), out));
    },
  );
}

function backpropInputKernel(state: Installed, kernelName: string, depthwise: boolean): tf.KernelConfig {
  return backpropKernel(state, kernelName, depthwise, ['dy', 'filter'], 'inputShape', (...call) =>
    state.addon.convBackwardData(...call),
  );
}

function backpropFilterKernel(state: Installed, kernelName: string, depthwise: boolean): tf.KernelConfig {
  return backpropKernel(state, kernelName, depthwise, ['x', 'dy'], 'filterShape', (...call) =>
    state.addon.convBackwardWeights(...call),
  );
}

interface MatMulAttrs {
  transposeA: boolean;
  transposeB: boolean;
  activation?: string;
  leakyreluAlpha?: number;
}

function matMulKernel(state: Installed, kernelName: string): tf.KernelConfig {
  return heapKernel<Record<string, tf.TensorInfo | undefined>, MatMulAttrs>(kernelName, (call) => {
    const { inputs, attrs, backend, at, args } = call;
    const { a, b, bias, preluActivationWeights } = inputs;
    const activation = ACTIVATION_CODES[attrs.activation ?? 'linear'];
    if (!a || !b || activation === undefined || preluActivationWeights || !allFloat32(a, b, bias)) {
      return fallback(state, kernelName, args, 'PReLU or not float32');
    }
    const rankA = a.shape.length;
    const rankB = b.shape.length;
    if (rankA < 2 || rankB < 2) return fallback(state, kernelName, args, 'rank below 2');
    const [m, k] = attrs.transposeA
      ? [a.shape[rankA - 1], a.shape[rankA - 2]]
      : [a.shape[rankA - 2], a.shape[rankA - 1]];
    const [kB, n] = attrs.transposeB
      ? [b.shape[rankB - 1], b.shape[rankB - 2]]
      : [b.shape[rankB - 2], b.shape[rankB - 1]];
    const outerA = a.shape.slice(0, -2);
    const outerB = b.shape.slice(0, -2);
    const batchA = tf.util.sizeFromShape(outerA);
    const batchB = tf.util.sizeFromShape(outerB);
    // Equal batches, or one operand shared by every matrix of the other: what oneDNN broadcasts.
    const expressible =
      k === kB &&
      m > 0 &&
      n > 0 &&
      k > 0 &&
      batchA > 0 &&
      batchB > 0 &&
      (sameShape(outerA, outerB) || batchA === 1 || batchB === 1);
    const biasFits =
      !bias || (tf.util.sizeFromShape(bias.shape) === n && bias.shape[bias.shape.length - 1] === n);
    if (!expressible || !biasFits) return fallback(state, kernelName, args, 'shapes oneDNN does not express');
    const outer = tf.backend_util.assertAndGetBroadcastShape(outerA, outerB);
    const geometry = [batchA, batchB, m, k, n, attrs.transposeA ? 1 : 0, attrs.transposeB ? 1 : 0];
    const alpha = attrs.leakyreluAlpha ?? DEFAULT_LEAKY_RELU_ALPHA;
    return withOutput(backend, [...outer, m, n], (heap, out) =>
      state.addon.matMul(heap, geometry, at(a), at(b), at(bias), out, activation, alpha),
    );
  });
}

/** Whether a gradient is being computed while an outer tape records (second derivatives). */
function outerTapeRecording(): boolean {
  const { gradientDepth, kernelDepth } = tf.engine().state;
  return gradientDepth > 0 && kernelDepth === 0;
}

/**
 * The Conv2D gradient as the two backprop kernels (which run here), dilations included: tfjs's own
 * gradient rejects dilations. While an outer tape records, the previous gradient runs: tfjs has no
 * gradient of Conv2DBackpropFilter, so second derivatives need the project's tensor-op formulation.
 */
function conv2DGradient(state: Installed): tf.GradConfig {
  return {
    kernelName: tf.Conv2D,
    inputsToSave: ['x', 'filter'],
    gradFunc: (dy, saved, attrs) => {
      const [x, filter] = saved as [tf.Tensor4D, tf.Tensor4D];
      const { strides, pad, dataFormat, dimRoundingMode, dilations } = attrs as unknown as tf.Conv2DAttrs;
      if (
        installed !== state ||
        tf.getBackend() !== 'wasm' ||
        dataFormat === 'NCHW' ||
        outerTapeRecording()
      ) {
        return state.previousConv2DGradient.gradFunc(dy, saved, attrs);
      }
      const common = { strides, pad, dataFormat: 'NHWC', dimRoundingMode, dilations };
      const backprop =
        (kernelName: string, inputs: tf.NamedTensorMap, shape: Record<string, number[]>) => () =>
          runKernel(kernelName, inputs, { ...common, ...shape });
      return {
        x: backprop(tf.Conv2DBackpropInput, { dy: dy as tf.Tensor, filter }, { inputShape: x.shape }),
        filter: backprop(tf.Conv2DBackpropFilter, { x, dy: dy as tf.Tensor }, { filterShape: filter.shape }),
      };
    },
  };
}

/**
 * Registers the oneDNN kernels on the wasm backend over whatever is registered now (install the
 * project's wasm kernels first: they become the fallbacks) and the Conv2D gradient over the current
 * one. Idempotent; `uninstallOnednnKernels` restores both.
 */
export function installOnednnKernels(addon: OnednnAddon): void {
  if (installed) return;
  const state: Installed = {
    addon,
    previous: new Map(ONEDNN_KERNEL_NAMES.map((name) => [name, findWasmKernel(name)])),
    previousConv2DGradient: tf.getGradient(tf.Conv2D),
    previousGradients: new Map(NORMALIZATION_GRADIENT_NAMES.map((name) => [name, tf.getGradient(name)])),
  };
  const configs = [
    forwardConvKernel(state, tf.Conv2D, false),
    forwardConvKernel(state, tf.FusedConv2D, false),
    forwardConvKernel(state, tf.DepthwiseConv2dNative, true),
    forwardConvKernel(state, tf.FusedDepthwiseConv2D, true),
    backpropInputKernel(state, tf.Conv2DBackpropInput, false),
    backpropInputKernel(state, tf.DepthwiseConv2dNativeBackpropInput, true),
    backpropFilterKernel(state, tf.Conv2DBackpropFilter, false),
    backpropFilterKernel(state, tf.DepthwiseConv2dNativeBackpropFilter, true),
    matMulKernel(state, tf.BatchMatMul),
    matMulKernel(state, tf._FusedMatMul),
    ...normalizationKernels(addon, (kernelName, args, why) => fallback(state, kernelName, args, why)),
    ...layerKernels(addon),
  ];
  for (const config of configs) registerWasmKernel(config);
  tf.registerGradient(conv2DGradient(state));
  const active = () => installed === state && tf.getBackend() === 'wasm' && !outerTapeRecording();
  const previousGradient = (kernelName: string) => {
    const gradient = state.previousGradients.get(kernelName);
    if (!gradient) throw new Error(`no previous gradient of ${kernelName}`);
    return gradient;
  };
  for (const gradient of normalizationGradients(active, previousGradient)) tf.registerGradient(gradient);
  installed = state;
}

/**
 * Puts back the kernels and the Conv2D gradient that `installOnednnKernels` replaced; returns the addon
 * that was installed (to install it again later), or null.
 */
export function uninstallOnednnKernels(): OnednnAddon | null {
  const state = installed;
  if (!state) return null;
  installed = null;
  for (const [kernelName, previous] of state.previous) {
    tf.unregisterKernel(kernelName, 'wasm');
    if (previous) tf.registerKernel(previous);
  }
  tf.registerGradient(state.previousConv2DGradient);
  for (const gradient of state.previousGradients.values()) tf.registerGradient(gradient);
  return state.addon;
}

/** Whether the oneDNN kernels are registered now. */
export function onednnKernelsInstalled(): boolean {
  return installed !== null;
}
