import * as tf from '@tensorflow/tfjs';

type Conv2DArgs = Parameters<typeof tf.layers.conv2d>[0];
type CallKwargs = Parameters<tf.layers.Layer['call']>[1];

/**
 * tfjs-layers' Conv2D class (not exported by @tensorflow/tfjs; taken from an instance so that it is the
 * very class the loaded package registers).
 */
const LayersConv2D = tf.layers.conv2d({ filters: 1, kernelSize: 1 }).constructor as {
  new (args: Conv2DArgs): tf.layers.Layer;
  fromConfig: tf.serialization.FromConfigMethod<tf.serialization.Serializable>;
};

/** The part of tfjs-layers' LayerVariable used here. */
interface LayerVariable {
  read(): tf.Tensor;
}

/** The fields of tfjs-layers' class this one reads (declared protected in its typings). */
interface Conv2DFields {
  readonly rank: number;
  readonly strides: number[];
  readonly padding: 'valid' | 'same' | 'causal';
  readonly dataFormat: 'channelsFirst' | 'channelsLast';
  readonly dilationRate: number[];
  readonly activation: { getClassName(): string };
  readonly kernel: LayerVariable;
  readonly bias: LayerVariable | null | undefined;
}

/**
 * Keras' Conv2D whose input gradient leaves the filter gradient out when nothing asks for it. tfjs-layers
 * runs a convolution without activation (the one before a BatchNorm) as tf.fused.conv2d, whose custom
 * gradient computes the input and the filter gradient together: an attack, which wants the input
 * gradient only, paid a third more per step. While a tape records, such a layer runs as tf.conv2d (plus
 * its bias), whose gradient computes each part only when asked; otherwise, and for every other case, it
 * is tfjs-layers' own code. Same config and weights; registered under the same class name.
 */
export class Conv2D extends LayersConv2D {
  static readonly className = 'Conv2D';

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: CallKwargs): tf.Tensor | tf.Tensor[] {
    const fields = this as unknown as Conv2DFields;
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    const taping = tf.engine().state.gradientDepth > 0;
    const separable =
      taping &&
      x.rank === 4 &&
      fields.rank === 2 &&
      fields.dataFormat === 'channelsLast' &&
      fields.padding !== 'causal' &&
      fields.activation.getClassName() === 'linear' &&
      (!Array.isArray(inputs) || inputs.length === 1);
    if (!separable) return super.call(inputs, kwargs);
    return tf.tidy(() => {
      const y = tf.conv2d(
        x as tf.Tensor4D,
        fields.kernel.read() as tf.Tensor4D,
        fields.strides as [number, number],
        fields.padding as 'valid' | 'same',
        'NHWC',
        fields.dilationRate as [number, number],
      );
      return fields.bias ? tf.add(y, fields.bias.read()) : y;
    });
  }
}

tf.serialization.registerClass(Conv2D);

/** A Conv2D layer (tf.layers.conv2d's arguments). */
export function conv2d(args: Conv2DArgs): Conv2D {
  return new Conv2D(args);
}
