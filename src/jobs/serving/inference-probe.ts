import * as tf from '@tensorflow/tfjs';
import type { Classifier } from '../../engine/model/classifier.js';

/**
 * Readiness by trial inference: one zero image through every served model. A process whose backend
 * has run out of memory answers every predict with 500 while its port is open; readiness must say so,
 * so the platform stops routing to it and restarts it. Results are cached for `intervalMs`, so a
 * readiness probe costs one tiny forward pass per model at most that often.
 */

export interface ProbeResult {
  ok: boolean;
  /** Models whose trial inference threw or returned non-finite logits, with why. */
  failing: Array<{ model: string; error: string }>;
  checkedAt: number;
}

export class InferenceProbe {
  private last: ProbeResult | undefined;

  constructor(
    private readonly models: ReadonlyMap<string, Classifier>,
    private readonly intervalMs = 5_000,
  ) {}

  /** The cached result when fresh, else a new trial of every model. Never throws. */
  check(now = Date.now()): ProbeResult {
    if (this.last && now - this.last.checkedAt < this.intervalMs) return this.last;
    const failing: ProbeResult['failing'] = [];
    for (const [name, model] of this.models) {
      try {
        const finite = tf.tidy(() => {
          const logits = model.logits(tf.zeros([1, ...model.card.inputShape]) as tf.Tensor4D);
          return logits.isFinite().all().dataSync()[0] === 1;
        });
        if (!finite) failing.push({ model: name, error: 'non-finite logits for a zero image' });
      } catch (error) {
        failing.push({ model: name, error: error instanceof Error ? error.message : String(error) });
      }
    }
    this.last = { ok: failing.length === 0, failing, checkedAt: now };
    return this.last;
  }
}
