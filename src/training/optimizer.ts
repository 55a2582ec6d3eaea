import * as tf from '@tensorflow/tfjs';

/**
 * SGD with (Nesterov) momentum and L2 weight decay, PyTorch's update rule (the RATIO reference
 * trains with torch.optim.SGD), written over tf variables because tfjs's MomentumOptimizer has no
 * weight decay and its state is not addressable by name for checkpoints:
 *
 *   g = grad + wd * w;  b = m * b + g;  step = nesterov ? g + m * b : b;  w -= lr * step
 */
export interface SgdSettings {
  momentum: number;
  nesterov: boolean;
  weightDecay: number;
}

export class Sgd {
  /** Momentum buffer per variable name. */
  private readonly buffers = new Map<string, tf.Variable>();

  constructor(
    private readonly variables: readonly tf.LayerVariable[],
    private readonly settings: SgdSettings,
  ) {}

  /** Applies one update with learning rate `lr`; `grads` maps variable names to gradients. */
  step(grads: Record<string, tf.Tensor>, lr: number): void {
    const { momentum, nesterov, weightDecay } = this.settings;
    for (const variable of this.variables) {
      const grad = grads[variable.name];
      if (!grad) continue;
      const weight = variable.read();
      tf.tidy(() => {
        const decayed = weightDecay > 0 ? grad.add(weight.mul(weightDecay)) : grad;
        let update = decayed;
        if (momentum > 0) {
          let buffer = this.buffers.get(variable.name);
          if (!buffer) {
            // PyTorch starts the buffer at the first gradient, not at zero.
            buffer = tf.variable(decayed, false);
            this.buffers.set(variable.name, buffer);
          } else {
            buffer.assign(buffer.mul(momentum).add(decayed));
          }
          update = nesterov ? decayed.add(buffer.mul(momentum)) : buffer;
        }
        variable.write(weight.sub(update.mul(lr)));
      });
    }
  }

  /**
   * Momentum buffers as host arrays, one per variable in the constructor's order (null where no
   * step has run yet); variable names can change between processes, positions cannot.
   */
  state(): Array<Float32Array | null> {
    return this.variables.map((variable) => {
      const buffer = this.buffers.get(variable.name);
      return buffer ? (buffer.dataSync() as Float32Array) : null;
    });
  }

  /** Restores buffers saved by `state()`. */
  setState(saved: ReadonlyArray<Float32Array | null>): void {
    if (saved.length !== this.variables.length) {
      throw new Error(`optimizer state holds ${saved.length} buffers for ${this.variables.length} variables`);
    }
    this.dispose();
    this.variables.forEach((variable, i) => {
      const values = saved[i];
      if (!values) return;
      const shape = variable.shape as number[];
      if (values.length !== tf.util.sizeFromShape(shape)) {
        throw new Error(`optimizer state for '${variable.name}' has ${values.length} values, not [${shape}]`);
      }
      const initial = tf.tensor(values, shape);
      this.buffers.set(variable.name, tf.variable(initial, false));
      initial.dispose();
    });
  }

  dispose(): void {
    for (const buffer of this.buffers.values()) buffer.dispose();
    this.buffers.clear();
  }
}
