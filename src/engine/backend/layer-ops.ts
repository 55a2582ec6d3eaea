import * as tf from '@tensorflow/tfjs';
import { runKernel } from './run-kernel.js';

/**
 * The layers of today's classifiers that tfjs has no single op for: grouped convolution (ResNeXt,
 * RegNet), layer normalisation (transformers, ConvNeXt) and the activations GELU, SiLU (swish),
 * hard swish and hard sigmoid. Each is one kernel, with one gradient kernel, where a backend registers
 * them (the oneDNN addon on wasm, onednn/layer-kernels.ts); elsewhere it is composed of tfjs ops,
 * which autodiff differentiates.
 */

/** [x, filter, bias?] -> y; attrs { groups, strides, pad (explicit), dilations }. Filter [kh, kw, I/groups, O]. */
export const GROUPED_CONV = 'RatioGroupedConv2D';
/** [dy, filter] -> dx; attrs as GROUPED_CONV plus inputShape. */
export const GROUPED_CONV_INPUT_GRAD = 'RatioGroupedConv2DBackpropInput';
/** [x, dy] -> dfilter; attrs as GROUPED_CONV plus filterShape. */
export const GROUPED_CONV_FILTER_GRAD = 'RatioGroupedConv2DBackpropFilter';
/** [x] -> y; attrs { fn }. */
export const ACTIVATION = 'RatioActivation';
/** [dy, x] -> dx; attrs { fn }. */
export const ACTIVATION_GRAD = 'RatioActivationGrad';
/** [x [rows, size], scale [size], offset? [size]] -> [y, mean [rows], variance [rows]]; attrs { epsilon }. */
export const LAYER_NORM = 'RatioLayerNorm';
/** [dy, x, scale, mean, variance] -> dx; attrs { epsilon }. */
export const LAYER_NORM_GRAD = 'RatioLayerNormGrad';
/** [x [rows, size]] -> the softmax of each row. */
export const SOFTMAX = 'RatioSoftmax';
/** [dy, y] -> dx, y the softmax. */
export const SOFTMAX_GRAD = 'RatioSoftmaxGrad';

export type ActivationFn = 'gelu' | 'swish' | 'hardswish' | 'hardsigmoid';

type Pair = [number, number];
type ExplicitPad = [Pair, Pair, Pair, Pair] | 'valid';

function hasKernel(kernelName: string): boolean {
  return tf.getKernel(kernelName, tf.getBackend()) !== undefined;
}

/** Whether the layer ops run as single kernels on the current backend. */
export function layerKernelsAvailable(): boolean {
  return [
    GROUPED_CONV,
    GROUPED_CONV_INPUT_GRAD,
    ACTIVATION,
    ACTIVATION_GRAD,
    LAYER_NORM,
    LAYER_NORM_GRAD,
  ].every(hasKernel);
}

function composedActivation(x: tf.Tensor, fn: ActivationFn): tf.Tensor {
  return tf.tidy(() => {
    switch (fn) {
      case 'gelu':
        return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
      case 'swish':
        return tf.mul(x, tf.sigmoid(x));
      case 'hardswish':
        return tf.mul(x, tf.div(tf.relu6(tf.add(x, 3)), 6));
      case 'hardsigmoid':
        return tf.div(tf.relu6(tf.add(x, 3)), 6);
    }
  });
}

/**
 * GELU (exact, with erf), swish (x sigmoid(x), PyTorch's SiLU), hard swish (x relu6(x + 3) / 6) or
 * hard sigmoid (relu6(x + 3) / 6), elementwise.
 */
export function activation(x: tf.Tensor, fn: ActivationFn): tf.Tensor {
  if (x.dtype === 'float32' && hasKernel(ACTIVATION) && hasKernel(ACTIVATION_GRAD)) {
    return runKernel(ACTIVATION, { x }, { fn });
  }
  return composedActivation(x, fn);
}

tf.registerGradient({
  kernelName: ACTIVATION,
  inputsToSave: ['x'],
  gradFunc: (dy, saved, attrs) => {
    const [x] = saved;
    return {
      x: () => runKernel(ACTIVATION_GRAD, { dy: dy as tf.Tensor, x }, attrs),
    };
  },
});

/**
 * Layer normalisation of the rows of `x` [rows, size]: (x - mean) / sqrt(variance + epsilon) * scale +
 * offset, with the biased variance of each row (PyTorch's LayerNorm).
 */
export function layerNorm(
  x: tf.Tensor2D,
  scale: tf.Tensor1D,
  offset: tf.Tensor1D | undefined,
  epsilon: number,
): tf.Tensor2D {
  if (x.dtype === 'float32' && hasKernel(LAYER_NORM) && hasKernel(LAYER_NORM_GRAD)) {
    const inputs: tf.NamedTensorMap = { x, scale };
    if (offset) inputs.offset = offset;
    const [y] = runKernel<tf.Tensor[]>(LAYER_NORM, inputs, { epsilon });
    return y as tf.Tensor2D;
  }
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, [1], true);
    const normalized = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, epsilon)));
    const scaled = tf.mul(normalized, scale);
    return (offset ? tf.add(scaled, offset) : scaled) as tf.Tensor2D;
  });
}

tf.registerGradient({
  kernelName: LAYER_NORM,
  inputsToSave: ['x', 'scale'],
  outputsToSave: [false, true, true],
  gradFunc: (dys, saved, attrs) => {
    const dy = (Array.isArray(dys) ? dys[0] : dys) as tf.Tensor;
    const [x, scale, mean, variance] = saved;
    const { epsilon } = attrs as unknown as { epsilon: number };
    return {
      x: () => runKernel(LAYER_NORM_GRAD, { dy, x, scale, mean, variance }, attrs),
      // The scale and offset of an imported model are constants: their gradients are composed.
      scale: () => {
        const column = (t: tf.Tensor) => tf.reshape(t, [-1, 1]);
        const normalized = tf.mul(tf.sub(x, column(mean)), tf.rsqrt(tf.add(column(variance), epsilon)));
        return tf.sum(tf.mul(dy, normalized), 0);
      },
      offset: () => tf.sum(dy, 0),
    };
  },
});

/** The softmax of each row of `x` [rows, size]. */
export function softmaxRows(x: tf.Tensor2D): tf.Tensor2D {
  if (x.dtype === 'float32' && x.size > 0 && hasKernel(SOFTMAX) && hasKernel(SOFTMAX_GRAD)) {
    return runKernel<tf.Tensor2D>(SOFTMAX, { x });
  }
  return tf.softmax(x);
}

tf.registerGradient({
  kernelName: SOFTMAX,
  outputsToSave: [true],
  gradFunc: (dy, saved) => {
    const [y] = saved;
    return {
      x: () => runKernel(SOFTMAX_GRAD, { dy: dy as tf.Tensor, y }),
    };
  },
});

/**
 * Convolution whose channels fall into `groups` independent groups (NHWC; filter [kh, kw, I/groups, O],
 * output channels group-major): ResNeXt's and RegNet's 3x3 convolutions.
 */
export function groupedConv2d(
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  bias: tf.Tensor1D | undefined,
  groups: number,
  strides: Pair,
  pad: ExplicitPad,
  dilations: Pair,
): tf.Tensor4D {
  const inChannels = x.shape[3];
  const [, , inPerGroup, outChannels] = filter.shape;
  if (inPerGroup * groups !== inChannels || outChannels % groups !== 0) {
    throw new Error(`filter [${filter.shape}] does not fit ${groups} groups of [${x.shape}]`);
  }
  if (x.dtype === 'float32' && hasKernel(GROUPED_CONV) && hasKernel(GROUPED_CONV_INPUT_GRAD)) {
    const inputs: tf.NamedTensorMap = { x, filter };
    if (bias) inputs.bias = bias;
    return runKernel<tf.Tensor4D>(GROUPED_CONV, inputs, { groups, strides, pad, dilations });
  }
  return tf.tidy(() => {
    const xs = tf.split(x, groups, 3);
    const filters = tf.split(filter, groups, 3);
    const ys = xs.map((xg, g) =>
      tf.conv2d(xg as tf.Tensor4D, filters[g] as tf.Tensor4D, strides, pad, 'NHWC', dilations),
    );
    const y = tf.concat(ys, 3) as tf.Tensor4D;
    return bias ? tf.add(y, bias) : y;
  });
}

tf.registerGradient({
  kernelName: GROUPED_CONV,
  inputsToSave: ['x', 'filter'],
  gradFunc: (dy, saved, attrs) => {
    const [x, filter] = saved;
    const upstream = dy as tf.Tensor4D;
    return {
      x: () =>
        runKernel(
          GROUPED_CONV_INPUT_GRAD,
          { dy: upstream, filter },
          { ...(attrs as object), inputShape: x.shape },
        ),
      filter: () =>
        runKernel(
          GROUPED_CONV_FILTER_GRAD,
          { x, dy: upstream },
          { ...(attrs as object), filterShape: filter.shape },
        ),
      bias: () => tf.sum(upstream, [0, 1, 2]),
    };
  },
});
