import * as tf from '@tensorflow/tfjs';
import { counterfactuals } from '../../engine/counterfactuals.js';
import { type Classifier, probabilities } from '../../engine/model/classifier.js';
import { worstCaseConfidence } from '../../engine/ood/worst-case.js';

/**
 * The served models' compute as plain arrays in and out, so that it can run in this thread
 * (`InProcessCompute`) or in a worker thread (`WorkerCompute`, src/jobs/serving/compute-host.ts) behind the
 * same interface. Images are NHWC float32 rows in [0,1] of the model's input shape.
 */

/** A request names a model the compute side does not hold. */
export class UnknownModelError extends Error {
  override readonly name = 'UnknownModelError';
}

export interface WorstCaseRequest {
  eps: number;
  iterations: number;
  restarts: number;
  seed: number;
}

export interface WorstCaseRows {
  cleanConfidence: Float32Array;
  confidence: Float32Array;
  predicted: Int32Array;
  /** The worst-case images, NHWC rows. */
  images: Float32Array;
}

export interface CounterfactualRequest {
  /** One target class per row of the images. */
  targets: Int32Array;
  radii: number[];
  iterations: number;
  seed: number;
}

export interface CounterfactualRows {
  originalClass: Int32Array;
  clean: { p_target: Float32Array; p_original: Float32Array };
  radii: Array<{
    eps: number;
    p_target: Float32Array;
    p_original: Float32Array;
    distance: Float64Array;
    /** NHWC rows, one per target. */
    images: Float32Array;
  }>;
}

export interface ModelCompute {
  /**
   * Softmax of logits / temperature per row, one forward pass for all `count` images; row i uses
   * `temperatures[i]`. Returns `count * numClasses` values.
   */
  probabilities(
    model: string,
    images: Float32Array,
    count: number,
    temperatures: Float32Array,
  ): Promise<Float32Array>;
  /** The model's raw outputs (pre-softmax, before any temperature): `count * numClasses` values. */
  logits(model: string, images: Float32Array, count: number): Promise<Float32Array>;
  worstCase(
    model: string,
    images: Float32Array,
    count: number,
    request: WorstCaseRequest,
    signal?: AbortSignal,
  ): Promise<WorstCaseRows>;
  counterfactuals(
    model: string,
    images: Float32Array,
    count: number,
    request: CounterfactualRequest,
    signal?: AbortSignal,
  ): Promise<CounterfactualRows>;
  close(): Promise<void>;
}

/**
 * Probabilities with a temperature per row: softmax(logits / t_i). Dividing by a broadcast column
 * gives the same float32 quotients as dividing by a scalar, so each row equals
 * `probabilities(classifier, x_i, {temperature: t_i})` bit for bit (test/jobs/serving/batcher.test.ts).
 */
export function rowProbabilities(
  classifier: Classifier,
  x: tf.Tensor4D,
  temperatures: Float32Array,
): Float32Array {
  return tf.tidy(() => {
    const column = tf.tensor2d(temperatures, [temperatures.length, 1]);
    return tf.softmax(tf.div(classifier.logits(x), column)).dataSync() as Float32Array;
  });
}

/** The compute on this thread's tfjs backend (tests, and the body of the worker thread). */
export class InProcessCompute implements ModelCompute {
  constructor(private readonly models: ReadonlyMap<string, Classifier>) {}

  private model(name: string): Classifier {
    const model = this.models.get(name);
    if (!model) throw new UnknownModelError(`no model named '${name}' in the compute thread`);
    return model;
  }

  private tensor(model: Classifier, images: Float32Array, count: number): tf.Tensor4D {
    const [h, w, c] = model.card.inputShape;
    if (images.length !== count * h * w * c) {
      throw new RangeError(`expected ${count} images of ${h}x${w}x${c} values, got ${images.length} values`);
    }
    return tf.tensor4d(images, [count, h, w, c]);
  }

  async probabilities(
    name: string,
    images: Float32Array,
    count: number,
    temperatures: Float32Array,
  ): Promise<Float32Array> {
    const model = this.model(name);
    if (temperatures.length !== count) {
      throw new RangeError(`expected ${count} temperatures, got ${temperatures.length}`);
    }
    const x = this.tensor(model, images, count);
    try {
      if (temperatures.every((t) => t === temperatures[0])) {
        const probs = probabilities(model, x, { temperature: temperatures[0] });
        const values = probs.dataSync() as Float32Array;
        probs.dispose();
        return values;
      }
      return rowProbabilities(model, x, temperatures);
    } finally {
      x.dispose();
    }
  }

  async logits(name: string, images: Float32Array, count: number): Promise<Float32Array> {
    const model = this.model(name);
    const x = this.tensor(model, images, count);
    try {
      const logits = model.logits(x);
      const values = logits.dataSync() as Float32Array;
      logits.dispose();
      return values;
    } finally {
      x.dispose();
    }
  }

  async worstCase(
    name: string,
    images: Float32Array,
    count: number,
    request: WorstCaseRequest,
    signal?: AbortSignal,
  ): Promise<WorstCaseRows> {
    const model = this.model(name);
    const x = this.tensor(model, images, count);
    try {
      const found = await worstCaseConfidence(model, x, { ...request, signal });
      const worst = found.images.dataSync() as Float32Array;
      found.images.dispose();
      return {
        cleanConfidence: found.cleanConfidence,
        confidence: found.confidence,
        predicted: found.predicted,
        images: worst,
      };
    } finally {
      x.dispose();
    }
  }

  async counterfactuals(
    name: string,
    images: Float32Array,
    count: number,
    request: CounterfactualRequest,
    signal?: AbortSignal,
  ): Promise<CounterfactualRows> {
    const model = this.model(name);
    const x = this.tensor(model, images, count);
    try {
      const result = await counterfactuals(model, x, request.targets, {
        radii: request.radii,
        iterations: request.iterations,
        seed: request.seed,
        signal,
      });
      return {
        originalClass: result.originalClass,
        clean: result.clean,
        radii: result.radii.map((r) => {
          const rows = r.images.dataSync() as Float32Array;
          r.images.dispose();
          return {
            eps: r.eps,
            p_target: r.p_target,
            p_original: r.p_original,
            distance: r.distance,
            images: rows,
          };
        }),
      };
    } finally {
      x.dispose();
    }
  }

  async close(): Promise<void> {}
}
