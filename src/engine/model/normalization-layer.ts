import * as tf from '@tensorflow/tfjs';

/** CIFAR-10 training-set per-channel mean and standard deviation of pixels in [0,1]. */
export const CIFAR10_MEAN: readonly number[] = [0.4914, 0.4822, 0.4465];
export const CIFAR10_STD: readonly number[] = [0.247, 0.2435, 0.2616];

type LayerArgs = NonNullable<ConstructorParameters<typeof tf.layers.Layer>[0]>;

export interface InputNormalizationArgs extends LayerArgs {
  /** Per-channel mean subtracted from [0,1] pixels; one entry per input channel. */
  mean: number[];
  /** Per-channel standard deviation divided out after the mean; all entries > 0. */
  std: number[];
}

/**
 * `(x - mean) / std` per channel of an NHWC tensor. It lives inside every model so that all our
 * classifiers take [0,1] images (docs/design.md) and an attack's eps is measured in pixel space.
 * The statistics are layer config, not weights: they travel in model.json and cannot be trained.
 * Registered with tfjs serialization under `RatioInputNormalization`, so importing this module is
 * enough for `tf.loadLayersModel` to rebuild a saved model.
 */
export class InputNormalization extends tf.layers.Layer {
  static readonly className = 'RatioInputNormalization';
  readonly mean: number[];
  readonly std: number[];

  constructor(args: InputNormalizationArgs) {
    super(args);
    if (!Array.isArray(args.mean) || !Array.isArray(args.std) || args.mean.length !== args.std.length) {
      throw new Error(
        `'mean' and 'std' must be arrays of one number per channel, got ${args.mean?.length} and ${args.std?.length}`,
      );
    }
    if (args.mean.some((m) => !Number.isFinite(m)))
      throw new Error(`'mean' must be finite, got [${args.mean}]`);
    if (args.std.some((s) => !(Number.isFinite(s) && s > 0))) {
      throw new Error(`'std' must be finite and > 0, got [${args.std}]`);
    }
    this.mean = [...args.mean];
    this.std = [...args.std];
  }

  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const channels = shape[shape.length - 1];
    if (channels !== this.mean.length) {
      throw new Error(
        `'mean' has ${this.mean.length} channels but the input has ${channels} (shape [${shape}])`,
      );
    }
    this.built = true;
  }

  override computeOutputShape(inputShape: tf.Shape | tf.Shape[]): tf.Shape | tf.Shape[] {
    return inputShape;
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      const mean = tf.tensor1d(this.mean);
      const inverseStd = tf.tensor1d(this.std.map((s) => 1 / s));
      return tf.mul(tf.sub(x, mean), inverseStd);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { ...super.getConfig(), mean: [...this.mean], std: [...this.std] };
  }
}

tf.serialization.registerClass(InputNormalization);
