import * as tf from '@tensorflow/tfjs';
import { depthwiseConv } from './depthwise.js';
import type { Step } from './plan.js';

const UNARY = { relu: tf.relu, relu6: tf.relu6, sigmoid: tf.sigmoid, tanh: tf.tanh } as const;
const BINARY = { add: tf.add, sub: tf.sub, mul: tf.mul, div: tf.div } as const;

/**
 * Runs one planned step with tfjs ops (differentiable, so `tf.grad` flows through the whole model;
 * convolutions and matrix products go to the kernels the backend module installed: the native wasm
 * convolution and its gradients on wasm).
 */
export function runStep(step: Step, inputs: tf.Tensor[], weights: tf.Tensor[]): tf.Tensor {
  const [x] = inputs;
  switch (step.op) {
    case 'conv': {
      const [filter, bias] = weights as [tf.Tensor4D, tf.Tensor1D | undefined];
      const x4 = x as tf.Tensor4D;
      if (step.depthwise) {
        // tfjs's fused depthwise convolution takes no explicit padding.
        let y: tf.Tensor = depthwiseConv(x4, filter, step.strides, step.pad, step.dilations);
        if (bias) y = tf.add(y, bias);
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
    case 'reshape':
      return tf.reshape(x, step.shape);
    case 'transpose':
      return tf.transpose(x, step.perm);
    case 'matMul': {
      const [weight, bias] = weights as [tf.Tensor2D, tf.Tensor1D | undefined];
      if (!bias && step.activation === 'linear') return tf.matMul(x as tf.Tensor2D, weight);
      return tf.fused.matMul({ a: x as tf.Tensor2D, b: weight, bias, activation: step.activation });
    }
    case 'concat': {
      const batch = x.shape[0];
      const parts = step.order.map(({ from, index }) =>
        from === 'input'
          ? inputs[index]
          : tf.tile(weights[index], [batch, ...weights[index].shape.slice(1).map(() => 1)]),
      );
      return tf.concat(parts, step.axis);
    }
    case 'softmax':
      return tf.softmax(x);
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

/** The plan's output for `input` (call inside tf.tidy); errors name the ONNX node that failed. */
export function runPlan(
  steps: readonly Step[],
  weights: readonly tf.Tensor[][],
  inputId: number,
  input: tf.Tensor,
  outputId: number,
): tf.Tensor {
  const values = new Map<number, tf.Tensor>([[inputId, input]]);
  steps.forEach((step, i) => {
    const inputs = step.inputs.map((source) => values.get(source.id)!);
    try {
      values.set(step.output.id, runStep(step, inputs, weights[i]));
    } catch (error) {
      throw new Error(`node '${step.node}' (${step.op}): ${(error as Error).message}`);
    }
  });
  return values.get(outputId)!;
}
