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

/** A long analysis of `count` images with one model; `signal` stops it between iterations. */
export type Analysis<Request, Rows> = (
  model: string,
  images: Float32Array,
  count: number,
  request: Request,
  signal?: AbortSignal,
) => Promise<Rows>;

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
  worstCase: Analysis<WorstCaseRequest, WorstCaseRows>;
  counterfactuals: Analysis<CounterfactualRequest, CounterfactualRows>;
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

/** A tensor's values as a float32 array; the tensor is freed. */
function values(tensor: tf.Tensor): Float32Array {
  const data = tensor.dataSync() as Float32Array;
  tensor.dispose();
  return data;
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

  /** Runs `compute` on the named model with the images as a tensor, which it frees afterwards. */
  private async withImages<T>(
    name: string,
    images: Float32Array,
    count: number,
    compute: (model: Classifier, x: tf.Tensor4D) => T | Promise<T>,
  ): Promise<T> {
    const model = this.model(name);
    const x = this.tensor(model, images, count);
    try {
      return await compute(model, x);
    } finally {
      x.dispose();
    }
  }

  probabilities(name: string, images: Float32Array, count: number, temperatures: Float32Array) {
    return this.withImages(name, images, count, (model, x) => {
      if (temperatures.length !== count) {
        throw new RangeError(`expected ${count} temperatures, got ${temperatures.length}`);
      }
      return temperatures.every((t) => t === temperatures[0])
        ? values(probabilities(model, x, { temperature: temperatures[0] }))
        : rowProbabilities(model, x, temperatures);
    });
  }

  logits(name: string, images: Float32Array, count: number) {
    return this.withImages(name, images, count, (model, x) => values(model.logits(x)));
  }

  worstCase(
    name: string,
    images: Float32Array,
    count: number,
    request: WorstCaseRequest,
    signal?: AbortSignal,
  ) {
    return this.withImages(name, images, count, async (model, x): Promise<WorstCaseRows> => {
      const found = await worstCaseConfidence(model, x, { ...request, signal });
      return {
        cleanConfidence: found.cleanConfidence,
        confidence: found.confidence,
        predicted: found.predicted,
        images: values(found.images),
      };
    });
  }

  counterfactuals(
    name: string,
    images: Float32Array,
    count: number,
    request: CounterfactualRequest,
    signal?: AbortSignal,
  ) {
    return this.withImages(name, images, count, async (model, x): Promise<CounterfactualRows> => {
      const result = await counterfactuals(model, x, request.targets, {
        radii: request.radii,
        iterations: request.iterations,
        seed: request.seed,
        signal,
      });
      return {
        originalClass: result.originalClass,
        clean: result.clean,
        radii: result.radii.map((r) => ({
          eps: r.eps,
          p_target: r.p_target,
          p_original: r.p_original,
          distance: r.distance,
          images: values(r.images),
        })),
      };
    });
  }

  async close(): Promise<void> {}
}
