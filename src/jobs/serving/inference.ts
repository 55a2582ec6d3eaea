import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Classifier } from '../../engine/model/classifier.js';
import { type BatcherOptions, DEFAULT_BATCHER_OPTIONS, DynamicBatcher } from './batcher.js';
import type { ModelCompute } from './compute.js';

/**
 * The inference use case behind `/v1/.../predict` and `/v2/.../infer`: calibrated probabilities of
 * decoded images through one dynamic batcher per model (src/jobs/serving/batcher.ts) on a `ModelCompute`
 * (a worker thread in the server, this thread in tests), with the metrics a gate operator needs.
 *
 * @example
 * const inference = new InferenceService(models, new InProcessCompute(models), { maxBatchImages: 64 });
 * const rows = await inference.probabilities('ratio-cifar10', pixels, 1, { signal }); // 10 values
 */

export interface InferenceMetrics {
  requests: Counter<'model'>;
  images: Counter<'model'>;
  rejected: Counter<'model'>;
  batchImages: Histogram<'model'>;
  queueSeconds: Histogram<'model'>;
  computeSeconds: Histogram<'model'>;
}

/** Registers the batching metrics on `registry` (one set per app, so test apps never collide). */
export function createInferenceMetrics(
  registry: Registry,
  depth: () => Map<string, number>,
): InferenceMetrics {
  const registers = [registry];
  const labelNames = ['model'] as const;
  new Gauge({
    name: 'inference_queue_images',
    help: 'Images waiting in the dynamic batcher, per model',
    labelNames,
    registers,
    collect() {
      for (const [model, images] of depth()) this.set({ model }, images);
    },
  });
  return {
    requests: new Counter({
      name: 'inference_requests_total',
      help: 'Inference requests (predict, infer) admitted to the batcher, per model',
      labelNames,
      registers,
    }),
    images: new Counter({
      name: 'inference_images_total',
      help: 'Images admitted to the batcher, per model',
      labelNames,
      registers,
    }),
    rejected: new Counter({
      name: 'inference_rejected_total',
      help: 'Inference requests refused (429) because the batch queue was full, per model',
      labelNames,
      registers,
    }),
    batchImages: new Histogram({
      name: 'inference_batch_images',
      help: 'Images per forward pass, per model',
      labelNames,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    }),
    queueSeconds: new Histogram({
      name: 'inference_queue_seconds',
      help: 'Time a request waited in the batcher before its forward pass, per model',
      labelNames,
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    }),
    computeSeconds: new Histogram({
      name: 'inference_compute_seconds',
      help: 'Duration of one forward pass (a batch) including the hand-over to the compute thread, per model',
      labelNames,
      buckets: [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    }),
  };
}

export class InferenceService {
  private readonly batchers = new Map<string, DynamicBatcher>();
  readonly options: BatcherOptions;

  constructor(
    private readonly models: ReadonlyMap<string, Classifier>,
    private readonly compute: ModelCompute,
    options: Partial<BatcherOptions> = {},
    private metrics?: InferenceMetrics,
  ) {
    this.options = { ...DEFAULT_BATCHER_OPTIONS, ...options };
  }

  /** Attaches metrics (the app creates them with its registry after the service exists). */
  observe(metrics: InferenceMetrics): void {
    this.metrics = metrics;
  }

  /** Images waiting per model. */
  queuedImages(): Map<string, number> {
    return new Map([...this.batchers].map(([name, batcher]) => [name, batcher.depth.queuedImages]));
  }

  private batcher(name: string, model: Classifier): DynamicBatcher {
    let batcher = this.batchers.get(name);
    if (!batcher) {
      const [h, w, c] = model.card.inputShape;
      const labels = { model: name };
      batcher = new DynamicBatcher(
        (values, count, temperatures) => this.compute.probabilities(name, values, count, temperatures),
        { imageValues: h * w * c, numClasses: model.numClasses },
        this.options,
        {
          batch: (info) => {
            this.metrics?.batchImages.observe(labels, info.images);
            this.metrics?.computeSeconds.observe(labels, info.computeMs / 1000);
          },
          dispatched: (info) => this.metrics?.queueSeconds.observe(labels, info.queueMs / 1000),
          rejected: () => this.metrics?.rejected.inc(labels),
        },
      );
      this.batchers.set(name, batcher);
    }
    return batcher;
  }

  /**
   * Calibrated probabilities of `count` images (NHWC rows in [0,1]) of model `name`: `count x K`
   * values, at the card's temperature unless given. Throws `QueueFullError` when the model's batch
   * queue cannot take the images; `signal` bounds the wait in the queue.
   */
  async probabilities(
    name: string,
    pixels: Float32Array,
    count: number,
    request: { temperature?: number; signal?: AbortSignal } = {},
  ): Promise<Float32Array> {
    const model = this.models.get(name);
    if (!model) throw new RangeError(`no model named '${name}'`);
    const batcher = this.batcher(name, model);
    const answer = batcher.submit(pixels, count, {
      temperature: request.temperature ?? model.card.temperature,
      signal: request.signal,
    });
    this.metrics?.requests.inc({ model: name });
    this.metrics?.images.inc({ model: name }, count);
    return (await answer).rows;
  }

  /**
   * The raw outputs of `count` images of model `name` (pre-softmax, before the temperature):
   * `count x K` values. One forward pass of these images alone, outside the batch queues: only
   * clients that ask for logits pay for it.
   */
  async logits(name: string, pixels: Float32Array, count: number): Promise<Float32Array> {
    if (!this.models.has(name)) throw new RangeError(`no model named '${name}'`);
    return this.compute.logits(name, pixels, count);
  }
}
