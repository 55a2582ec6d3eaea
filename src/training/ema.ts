import * as tf from '@tensorflow/tfjs';

/**
 * Exponential moving average of all model weights (BatchNorm statistics included, so the averaged
 * network is self-consistent): shadow = decay * shadow + (1 - decay) * weight after every step.
 * Evaluation and export swap the shadow weights in with `swapInto`.
 */
export class WeightEma {
  private shadows: tf.Tensor[];

  constructor(
    private readonly model: tf.LayersModel,
    readonly decay: number,
  ) {
    this.shadows = model.weights.map((w) => w.read().clone());
  }

  /**
   * Folds the current weights into the average. With `step` (0-based count of updates so far) the decay
   * is min(decay, (1 + step) / (10 + step)), as TensorFlow's ExponentialMovingAverage with num_updates:
   * short runs would otherwise export mostly the random initialisation (0.999^2750 = 6%).
   */
  update(step?: number): void {
    const decay = step === undefined ? this.decay : Math.min(this.decay, (1 + step) / (10 + step));
    const weights = this.model.weights;
    const next = tf.tidy(() =>
      this.shadows.map((shadow, i) => shadow.mul(decay).add(weights[i].read().mul(1 - decay))),
    );
    tf.dispose(this.shadows);
    this.shadows = next;
  }

  /** Exchanges the model's weights and the averages (call twice to restore). */
  swapInto(): void {
    const weights = this.model.weights;
    const current = weights.map((w) => w.read().clone());
    weights.forEach((w, i) => {
      w.write(this.shadows[i]);
    });
    tf.dispose(this.shadows);
    this.shadows = current;
  }

  state(): Float32Array[] {
    return this.shadows.map((shadow) => shadow.dataSync() as Float32Array);
  }

  setState(saved: readonly Float32Array[]): void {
    if (saved.length !== this.shadows.length) {
      throw new Error(`EMA state holds ${saved.length} tensors for ${this.shadows.length} weights`);
    }
    const next = saved.map((values, i) => {
      const shape = this.shadows[i].shape;
      if (values.length !== tf.util.sizeFromShape(shape)) {
        throw new Error(`EMA state for weight ${i} has ${values.length} values, not [${shape}]`);
      }
      return tf.tensor(values, shape);
    });
    tf.dispose(this.shadows);
    this.shadows = next;
  }

  dispose(): void {
    tf.dispose(this.shadows);
    this.shadows = [];
  }
}
