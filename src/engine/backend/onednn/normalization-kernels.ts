import * as tf from '@tensorflow/tfjs';
import {
  BATCH_NORM_INPUT_GRAD,
  BATCH_NORM_TRAINING,
  BATCH_NORM_TRAINING_GRAD,
  RELU_GRAD,
} from '../batch-norm.js';
import { runKernel } from '../run-kernel.js';
import type { NormalizationBackwardOperands, OnednnAddon } from './addon.js';
import {
  allFloat32,
  heapKernel,
  type KernelArgs,
  requireFloat32,
  requirePresent,
  sizeOf,
  withOutput,
  withOutputs,
} from './heap.js';

/**
 * The memory-bound ops of a residual network's step on the oneDNN addon, each one multi-threaded pass:
 * batch normalisation (training statistics and its gradient, inference with running statistics and its
 * input gradient), ReLU and its gradient, and same-shape Add (residual connections). On wasm these are
 * single-threaded kernels, and tfjs composes BatchNorm's training step and gradients from dozens of them.
 */

/** Op codes of onednn.cc's elementwise(). */
const ELEMENTWISE_CODES = { reluForward: 0, reluBackward: 1, add: 2 } as const;

export const NORMALIZATION_KERNEL_NAMES = [
  BATCH_NORM_TRAINING,
  BATCH_NORM_TRAINING_GRAD,
  BATCH_NORM_INPUT_GRAD,
  RELU_GRAD,
  tf.FusedBatchNorm,
  tf.Relu,
  tf.Add,
] as const;

/** Kernels whose gradient is replaced too (the previous one serves every case this one does not). */
export const NORMALIZATION_GRADIENT_NAMES = [tf.FusedBatchNorm, tf.Relu] as const;

type Fallback = (kernelName: string, args: KernelArgs, why: string) => tf.TensorInfo | tf.TensorInfo[];

interface EpsilonAttrs {
  varianceEpsilon: number;
}

type Inputs = Record<string, tf.TensorInfo | undefined>;
type Required = Record<string, tf.TensorInfo>;

/** Channels of a channels-last tensor, or 0 where it has no elements. */
function channelsOf(x: tf.TensorInfo): number {
  return x.shape.length === 0 ? 1 : x.shape[x.shape.length - 1];
}

/** Whether `info` holds one value per channel: shape [C], or 1 on every axis but the last. */
function perChannel(info: tf.TensorInfo | undefined, channels: number): boolean {
  if (info === undefined) return true;
  const shape = info.shape;
  return (
    shape.length >= 1 && shape[shape.length - 1] === channels && shape.slice(0, -1).every((dim) => dim === 1)
  );
}

/** The addon's geometry: every axis but the channels' folded into rows. */
function normGeometry(x: tf.TensorInfo): number[] {
  const channels = channelsOf(x);
  return [sizeOf(x) / channels, 1, 1, channels];
}

function requireChannels(
  kernelName: string,
  channels: number,
  inputs: Record<string, tf.TensorInfo | undefined>,
): void {
  for (const [name, info] of Object.entries(inputs)) {
    if (info && !perChannel(info, channels)) {
      throw new Error(
        `${kernelName}: '${name}' must hold ${channels} values (one per channel), got [${info.shape}]`,
      );
    }
  }
}

function requireSameShape(
  kernelName: string,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  names: [string, string],
): void {
  if (a.shape.length !== b.shape.length || a.shape.some((dim, i) => dim !== b.shape[i])) {
    throw new Error(
      `${kernelName}: '${names[0]}' [${a.shape}] and '${names[1]}' [${b.shape}] must have one shape`,
    );
  }
}

/** The offsets of `x`, `dy` and the statistics, in the order the addon's backward passes take them. */
export function backwardOperands(
  at: (info: tf.TensorInfo | undefined) => number,
  { x, dy, mean, variance, scale }: Inputs,
): NormalizationBackwardOperands {
  return [at(x), at(dy), at(mean), at(variance), at(scale)];
}

function batchNormTrainingKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Required, EpsilonAttrs>(BATCH_NORM_TRAINING, ({ inputs, attrs, backend, at }) => {
    const { x, scale, offset } = inputs;
    requireFloat32(BATCH_NORM_TRAINING, { x, scale, offset });
    const channels = channelsOf(x);
    requireChannels(BATCH_NORM_TRAINING, channels, { scale, offset });
    const epsilon = attrs.varianceEpsilon;
    return withOutputs(backend, [[...x.shape], [channels], [channels]], (heap, [y, mean, variance]) =>
      addon.batchNormForward(
        heap,
        normGeometry(x),
        at(x),
        mean,
        variance,
        at(scale),
        at(offset),
        y,
        epsilon,
        1,
      ),
    );
  });
}

function batchNormTrainingGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Required, EpsilonAttrs>(BATCH_NORM_TRAINING_GRAD, ({ inputs, attrs, backend, at }) => {
    const { dy, x, scale, mean, variance } = inputs;
    requireFloat32(BATCH_NORM_TRAINING_GRAD, { dy, x, scale, mean, variance });
    requireSameShape(BATCH_NORM_TRAINING_GRAD, dy, x, ['dy', 'x']);
    const channels = channelsOf(x);
    requireChannels(BATCH_NORM_TRAINING_GRAD, channels, { scale, mean, variance });
    const epsilon = attrs.varianceEpsilon;
    return withOutputs(backend, [[...x.shape], [channels], [channels]], (heap, [dx, dScale, dOffset]) => {
      const operands = backwardOperands(at, inputs);
      addon.batchNormBackward(heap, normGeometry(x), ...operands, dx, dScale, dOffset, epsilon, 1);
    });
  });
}

function batchNormInputGradKernel(addon: OnednnAddon): tf.KernelConfig {
  return heapKernel<Inputs, EpsilonAttrs>(BATCH_NORM_INPUT_GRAD, ({ inputs, attrs, backend, at }) => {
    const required = ['dy', 'x', 'mean', 'variance'] as const;
    const { dy, x, mean, variance } = requirePresent(BATCH_NORM_INPUT_GRAD, inputs, required);
    const { scale } = inputs;
    requireFloat32(BATCH_NORM_INPUT_GRAD, { dy, x, mean, variance, scale });
    requireSameShape(BATCH_NORM_INPUT_GRAD, dy, x, ['dy', 'x']);
    requireChannels(BATCH_NORM_INPUT_GRAD, channelsOf(x), { mean, variance, scale });
    const epsilon = attrs.varianceEpsilon;
    // No scale and offset gradients (-1): inference statistics are constants.
    return withOutput(backend, [...x.shape], (heap, dx) => {
      addon.batchNormBackward(heap, normGeometry(x), ...backwardOperands(at, inputs), dx, -1, -1, epsilon, 0);
    });
  });
}

/** Inference batch normalisation (running statistics) where every parameter is one value per channel. */
function fusedBatchNormKernel(addon: OnednnAddon, fallback: Fallback): tf.KernelConfig {
  return heapKernel<Inputs, EpsilonAttrs>(tf.FusedBatchNorm, ({ inputs, attrs, backend, at, args }) => {
    const { x, mean, variance, offset, scale } = inputs;
    const epsilon = attrs.varianceEpsilon;
    if (!x || !mean || !variance || x.shape.length < 1 || sizeOf(x) === 0) {
      return fallback(tf.FusedBatchNorm, args, 'no input');
    }
    const channels = channelsOf(x);
    const fits =
      allFloat32(x, mean, variance, offset, scale) &&
      [mean, variance, offset, scale].every((info) => perChannel(info, channels));
    if (!fits || !(epsilon >= 0)) return fallback(tf.FusedBatchNorm, args, 'not per-channel float32');
    return withOutput(backend, [...x.shape], (heap, y) => {
      const statistics = [at(mean), at(variance), at(scale), at(offset)] as const;
      addon.batchNormForward(heap, normGeometry(x), at(x), ...statistics, y, epsilon, 0);
    });
  });
}

function elementwiseKernel(
  addon: OnednnAddon,
  fallback: Fallback,
  kernelName: string,
  op: number,
  operands: [string] | [string, string],
): tf.KernelConfig {
  return heapKernel<Inputs>(kernelName, ({ inputs, backend, at, args }) => {
    const [a, b] = operands.map((name) => inputs[name]);
    const sameShape =
      b === undefined ||
      (a !== undefined && a.shape.length === b.shape.length && a.shape.every((dim, i) => dim === b.shape[i]));
    if (!a || (operands.length === 2 && !b) || !sameShape || !allFloat32(a, b) || sizeOf(a) === 0) {
      return fallback(kernelName, args, 'not same-shape float32');
    }
    return withOutput(backend, [...a.shape], (heap, out) =>
      addon.elementwise(heap, op, sizeOf(a), at(a), at(b), out),
    );
  });
}

/** The kernels of this file; `fallback` runs the kernel registered before for cases they do not cover. */
export function normalizationKernels(addon: OnednnAddon, fallback: Fallback): tf.KernelConfig[] {
  const noFallback: Fallback = (kernelName, _args, why) => {
    throw new Error(`${kernelName}: ${why}`);
  };
  return [
    batchNormTrainingKernel(addon),
    batchNormTrainingGradKernel(addon),
    batchNormInputGradKernel(addon),
    fusedBatchNormKernel(addon, fallback),
    elementwiseKernel(addon, fallback, tf.Relu, ELEMENTWISE_CODES.reluForward, ['x']),
    elementwiseKernel(addon, noFallback, RELU_GRAD, ELEMENTWISE_CODES.reluBackward, ['dy', 'x']),
    elementwiseKernel(addon, fallback, tf.Add, ELEMENTWISE_CODES.add, ['a', 'b']),
  ];
}

/**
 * The FusedBatchNorm and Relu gradients on these kernels while `active()` (the addon installed, wasm
 * selected, no outer tape recording: second derivatives need tfjs's differentiable formulation), the
 * previous gradient otherwise. FusedBatchNorm's input gradient is the one attacks take through a
 * network in inference mode; tfjs's computes it with Tile and a handful of broadcasts.
 */
export function normalizationGradients(
  active: () => boolean,
  previous: (kernelName: string) => tf.GradConfig,
): tf.GradConfig[] {
  const fusedBatchNorm: tf.GradConfig = {
    kernelName: tf.FusedBatchNorm,
    inputsToSave: ['x', 'mean', 'variance', 'scale'],
    gradFunc: (dy, saved, attrs) => {
      const stock = previous(tf.FusedBatchNorm);
      const [x, mean, variance, scale] = saved;
      const upstream = dy as tf.Tensor;
      const channels = x.shape[x.rank - 1];
      const fits =
        active() &&
        x.dtype === 'float32' &&
        upstream.dtype === 'float32' &&
        [mean, variance, scale].every((info) => perChannel(info, channels));
      if (!fits) return stock.gradFunc(dy, saved, attrs);
      // The stock gradient computes shared terms eagerly; each closure runs in its own tidy, so the
      // other inputs (rarely needed: running statistics are constants) each call it afresh.
      const other = (name: string) => () => stock.gradFunc(dy, saved, attrs)[name]();
      const inputs: tf.NamedTensorMap = { dy: upstream, x, mean, variance };
      if (scale) inputs.scale = scale;
      return {
        x: () => runKernel(BATCH_NORM_INPUT_GRAD, inputs, attrs),
        mean: other('mean'),
        variance: other('variance'),
        scale: other('scale'),
        offset: other('offset'),
      };
    },
  };
  const relu: tf.GradConfig = {
    kernelName: tf.Relu,
    inputsToSave: ['x'],
    gradFunc: (dy, saved, attrs) => {
      const [x] = saved;
      const upstream = dy as tf.Tensor;
      if (!active() || x.dtype !== 'float32' || upstream.dtype !== 'float32') {
        return previous(tf.Relu).gradFunc(dy, saved, attrs);
      }
      return {
        x: () => runKernel(RELU_GRAD, { dy: upstream, x }),
      };
    },
  };
  return [fusedBatchNorm, relu];
}
