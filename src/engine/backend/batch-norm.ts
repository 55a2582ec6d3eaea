import * as tf from '@tensorflow/tfjs';
import { runKernel } from './run-kernel.js';

/**
 * Batch normalisation in training mode as one op: y = gamma (x - mean) / sqrt(variance + epsilon) + beta
 * with the batch's per-channel mean and biased variance, which it returns too (for the running
 * averages). tfjs-layers composes it from moments and batchNorm, whose gradients run as dozens of small
 * ops per layer (Tile, Sub, Mul, Sum); where a backend registers the kernels below (the oneDNN addon on
 * wasm, onednn/normalization-kernels.ts) the forward pass and the gradient are one kernel each.
 * Elsewhere the op is tfjs's own composition, value for value.
 */

/** [x, scale, offset] -> [y, mean, variance]; attrs { varianceEpsilon }. */
export const BATCH_NORM_TRAINING = 'RatioBatchNormTraining';
/** [dy, x, scale, mean, variance] -> [dx, dScale, dOffset]; attrs { varianceEpsilon }. */
export const BATCH_NORM_TRAINING_GRAD = 'RatioBatchNormTrainingGrad';
/** [dy, x, mean, variance, scale?] -> dx with constant statistics; attrs { varianceEpsilon }. */
export const BATCH_NORM_INPUT_GRAD = 'RatioBatchNormInputGrad';
/** [dy, x] -> dy where x > 0, else 0: the Relu gradient as one kernel. */
export const RELU_GRAD = 'RatioReluGrad';

export interface BatchNormStatistics {
  y: tf.Tensor;
  mean: tf.Tensor1D;
  variance: tf.Tensor1D;
}

function hasKernel(kernelName: string): boolean {
  return tf.getKernel(kernelName, tf.getBackend()) !== undefined;
}

/** Whether `batchNormInTraining` runs as one kernel on the current backend. */
export function batchNormTrainingIsNative(): boolean {
  return hasKernel(BATCH_NORM_TRAINING) && hasKernel(BATCH_NORM_TRAINING_GRAD);
}

function checkChannels(name: string, tensor: tf.Tensor, channels: number): void {
  if (tensor.rank !== 1 || tensor.shape[0] !== channels) {
    throw new Error(`'${name}' must have shape [${channels}] (the channels of 'x'), got [${tensor.shape}]`);
  }
}

/**
 * Normalises `x` (channels last, any rank >= 2) with its own batch statistics over every axis but the
 * last. The returned mean and variance are outputs for the running averages, not differentiated
 * through: the gradient of `y` already accounts for them.
 *
 * @example
 * const { y, mean, variance } = batchNormInTraining(x, gamma, beta, 1e-5);
 */
export function batchNormInTraining(
  x: tf.Tensor,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  epsilon: number,
): BatchNormStatistics {
  if (x.rank < 2) throw new Error(`'x' must have rank >= 2, got [${x.shape}]`);
  const channels = x.shape[x.rank - 1];
  checkChannels('gamma', gamma, channels);
  checkChannels('beta', beta, channels);
  if (!(Number.isFinite(epsilon) && epsilon >= 0)) throw new Error(`'epsilon' must be >= 0, got ${epsilon}`);
  if (batchNormTrainingIsNative() && x.dtype === 'float32') {
    const [y, mean, variance] = runKernel<tf.Tensor[]>(
      BATCH_NORM_TRAINING,
      { x, scale: gamma, offset: beta },
      { varianceEpsilon: epsilon },
    );
    return { y, mean: mean as tf.Tensor1D, variance: variance as tf.Tensor1D };
  }
  return tf.tidy(() => {
    const axes = Array.from({ length: x.rank - 1 }, (_, i) => i);
    const { mean, variance } = tf.moments(x, axes);
    const y = tf.batchNorm(x, mean, variance, beta, gamma, epsilon);
    return { y, mean: mean as tf.Tensor1D, variance: variance as tf.Tensor1D };
  });
}

tf.registerGradient({
  kernelName: BATCH_NORM_TRAINING,
  inputsToSave: ['x', 'scale'],
  outputsToSave: [false, true, true],
  gradFunc: (dys, saved, attrs) => {
    const dy = (Array.isArray(dys) ? dys[0] : dys) as tf.Tensor;
    const [x, scale, mean, variance] = saved;
    // One kernel gives all three; each closure runs in its own tidy, so they are computed here, where
    // the backward pass's scope frees whichever is not asked for.
    const [dx, dScale, dOffset] = runKernel<tf.Tensor[]>(
      BATCH_NORM_TRAINING_GRAD,
      { dy, x, scale, mean, variance },
      attrs,
    );
    return { x: () => dx, scale: () => dScale, offset: () => dOffset };
  },
});
