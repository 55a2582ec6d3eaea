import * as tf from '@tensorflow/tfjs';
import { batchNormInTraining } from '../backend/batch-norm.js';

type BatchNormalizationArgs = NonNullable<Parameters<typeof tf.layers.batchNormalization>[0]>;
type CallKwargs = Parameters<tf.layers.Layer['call']>[1];

/**
 * tfjs-layers' BatchNormalization class (not exported by @tensorflow/tfjs; taken from an instance so
 * that it is the very class the loaded package registers).
 */
const LayersBatchNorm = tf.layers.batchNormalization({}).constructor as {
  new (args?: BatchNormalizationArgs): tf.layers.Layer;
  fromConfig: tf.serialization.FromConfigMethod<tf.serialization.Serializable>;
};

/** The part of tfjs-layers' LayerVariable used here. */
interface LayerVariable {
  read(): tf.Tensor;
  write(value: tf.Tensor): void;
}

/** The fields of tfjs-layers' class this one reads (declared private in its typings). */
interface BatchNormFields {
  readonly axis: number;
  readonly momentum: number;
  readonly epsilon: number;
  readonly center: boolean;
  readonly scale: boolean;
  readonly gamma: LayerVariable;
  readonly beta: LayerVariable;
  readonly movingMean: LayerVariable;
  readonly movingVariance: LayerVariable;
}

/**
 * Keras' BatchNormalization with the training-mode step as one op (batch-norm.ts): same config, same
 * weights (gamma, beta, moving_mean, moving_variance), same running-average update, so saved models
 * stay standard Keras layers. Registered under the same class name, so models loaded after this module
 * is imported use it too. Inference mode and other axes than the last are tfjs's own code.
 */
export class BatchNormalization extends LayersBatchNorm {
  static readonly className = 'BatchNormalization';

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: CallKwargs): tf.Tensor | tf.Tensor[] {
    const fields = this as unknown as BatchNormFields;
    const training = kwargs.training === true;
    const x = Array.isArray(inputs) ? inputs[0] : inputs;
    const lastAxis = fields.axis === -1 || fields.axis === x.rank - 1;
    const single = !Array.isArray(inputs) || inputs.length === 1;
    if (!training || !lastAxis || !fields.center || !fields.scale || !single) {
      return super.call(inputs, kwargs);
    }
    return tf.tidy(() => {
      const { y, mean, variance } = batchNormInTraining(
        x,
        fields.gamma.read() as tf.Tensor1D,
        fields.beta.read() as tf.Tensor1D,
        fields.epsilon,
      );
      // tfjs-layers' update, term for term: moving <- moving - (moving - batch) * (1 - momentum).
      const decay = 1 - fields.momentum;
      for (const [moving, batch] of [
        [fields.movingMean, mean],
        [fields.movingVariance, variance],
      ] as const) {
        tf.tidy(() => {
          const current = moving.read();
          moving.write(tf.sub(current, tf.mul(tf.sub(current, batch), decay)));
        });
      }
      return y;
    });
  }
}

tf.serialization.registerClass(BatchNormalization);

/** A BatchNormalization layer (tf.layers.batchNormalization's arguments). */
export function batchNormalization(args: BatchNormalizationArgs = {}): BatchNormalization {
  return new BatchNormalization(args);
}
