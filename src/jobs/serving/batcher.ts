import { QueueFullError } from '../errors.js';

/**
 * Dynamic batching of forward passes, per model: concurrent requests wait in one queue and leave it
 * together as one forward pass of up to `maxBatchImages` images, each getting its own rows back.
 * A forward pass of 64 images costs a few times one image (bench/service.ts), so under load the
 * service answers many more images per second, while an idle service dispatches at once (with the
 * default `maxWaitMs` 0: no added latency at concurrency 1).
 *
 * Scheduling: at most `maxConcurrentBatches` passes per model run at once; while they run, requests
 * gather. A queue is dispatched when the executor is free and it holds `maxBatchImages`, or its
 * oldest request has waited `maxWaitMs`, or (`waitFor: 'last-pass'`, the default) it holds as many
 * requests as the previous pass did: the clients answered by that pass are back, and more company is
 * not to be expected soon. So a lone client is served at once (its previous pass held one request),
 * eight clients leave together as soon as the eighth is back, and under heavier load a pass waits up
 * to `maxWaitMs` for the stragglers instead of leaving half empty (bench/service.ts measures the
 * three). Requests are never split across passes (one request of more than `maxBatchImages` images
 * goes alone). The queue is bounded in images, not requests:
 * one more image than `maxQueuedImages` waiting is refused with `QueueFullError` (HTTP 429).
 *
 * @example
 * const batcher = new DynamicBatcher((images, count, t) => compute.probabilities('m', images, count, t), { imageValues: 3072, numClasses: 10 });
 * const { rows } = await batcher.submit(pixels, 1, { temperature: 1.2 }); // rows: Float32Array of 10
 */

/** One forward pass: `count` images (NHWC rows), a temperature per row; `count * numClasses` probabilities back. */
export type BatchForward = (
  images: Float32Array,
  count: number,
  temperatures: Float32Array,
) => Promise<Float32Array>;

export interface BatcherOptions {
  /** Most images in one forward pass (default 64). */
  maxBatchImages: number;
  /** Longest a request waits for company when the executor is free, ms (default 2). */
  maxWaitMs: number;
  /**
   * Whom a queue waits for, within `maxWaitMs`: 'last-pass' (default) as many requests as the
   * previous pass held (a lone client waits for no one); 'full' a full pass of `maxBatchImages`.
   */
  waitFor: 'last-pass' | 'full';
  /** Most images waiting (not yet dispatched); beyond it requests are refused (default 1024). */
  maxQueuedImages: number;
  /** Forward passes of one model in flight at once (default 1: the compute thread runs one at a time). */
  maxConcurrentBatches: number;
  /** Retry-After of a refusal, seconds (default 1). */
  retryAfterSeconds: number;
}

export const DEFAULT_BATCHER_OPTIONS: BatcherOptions = {
  maxBatchImages: 64,
  maxWaitMs: 2,
  waitFor: 'last-pass',
  maxQueuedImages: 1024,
  maxConcurrentBatches: 1,
  retryAfterSeconds: 1,
};

/** What happened to a batch and its requests, for metrics. */
export interface BatcherObserver {
  /** A forward pass finished (or failed): its size in images and requests, its compute time. */
  batch?(info: { images: number; requests: number; computeMs: number; failed: boolean }): void;
  /** A request left the queue for a forward pass after `queueMs`. */
  dispatched?(info: { images: number; queueMs: number }): void;
  /** A request was refused because the queue was full. */
  rejected?(info: { images: number }): void;
}

export interface BatchedAnswer {
  /** count x numClasses probabilities, row-major. */
  rows: Float32Array;
  queueMs: number;
  computeMs: number;
  /** Images in the forward pass that answered this request (its own included). */
  batchImages: number;
}

interface Pending {
  images: Float32Array;
  count: number;
  temperature: number;
  enqueuedAt: number;
  resolve: (answer: BatchedAnswer) => void;
  reject: (reason: unknown) => void;
  detach: () => void;
}

function checkOptions(options: BatcherOptions): void {
  const positive = ['maxBatchImages', 'maxQueuedImages', 'maxConcurrentBatches'] as const;
  for (const key of positive) {
    if (!(Number.isInteger(options[key]) && options[key] >= 1)) {
      throw new RangeError(`'${key}' must be an integer >= 1, got ${options[key]}`);
    }
  }
  if (!(Number.isFinite(options.maxWaitMs) && options.maxWaitMs >= 0)) {
    throw new RangeError(`'maxWaitMs' must be a finite number >= 0, got ${options.maxWaitMs}`);
  }
  if (options.waitFor !== 'last-pass' && options.waitFor !== 'full') {
    throw new RangeError(`'waitFor' must be 'last-pass' or 'full', got ${String(options.waitFor)}`);
  }
  if (!(Number.isFinite(options.retryAfterSeconds) && options.retryAfterSeconds >= 0)) {
    throw new RangeError(
      `'retryAfterSeconds' must be a finite number >= 0, got ${options.retryAfterSeconds}`,
    );
  }
}

export class DynamicBatcher {
  private readonly queue: Pending[] = [];
  private queuedImages = 0;
  private running = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Requests in the last pass dispatched: the company a queue waits for under 'last-pass'. */
  private lastPassRequests = 1;
  private readonly options: BatcherOptions;

  constructor(
    private readonly forward: BatchForward,
    private readonly shape: { imageValues: number; numClasses: number },
    options: Partial<BatcherOptions> = {},
    private readonly observer: BatcherObserver = {},
  ) {
    this.options = { ...DEFAULT_BATCHER_OPTIONS, ...options };
    checkOptions(this.options);
  }

  /** Images waiting and forward passes running now. */
  get depth(): { queuedImages: number; queuedRequests: number; runningBatches: number } {
    return {
      queuedImages: this.queuedImages,
      queuedRequests: this.queue.length,
      runningBatches: this.running,
    };
  }

  get settings(): Readonly<BatcherOptions> {
    return this.options;
  }

  /**
   * Queues `count` images (NHWC rows) for the next forward pass; resolves to their probabilities at
   * `temperature`. Throws `QueueFullError` at once when the queue cannot take `count` more images.
   * An abort of `signal` while still queued rejects with its reason and frees the place; once its
   * forward pass has started, the request finishes with it.
   */
  submit(
    images: Float32Array,
    count: number,
    request: { temperature: number; signal?: AbortSignal },
  ): Promise<BatchedAnswer> {
    if (!(Number.isInteger(count) && count >= 1))
      throw new RangeError(`'count' must be an integer >= 1, got ${count}`);
    if (images.length !== count * this.shape.imageValues) {
      throw new RangeError(
        `expected ${count * this.shape.imageValues} values for ${count} images, got ${images.length}`,
      );
    }
    if (!(Number.isFinite(request.temperature) && request.temperature > 0)) {
      throw new RangeError(`'temperature' must be a finite number > 0, got ${request.temperature}`);
    }
    const { signal } = request;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.queuedImages + count > this.options.maxQueuedImages) {
      this.observer.rejected?.({ images: count });
      throw new QueueFullError(
        `the batch queue is full (${this.queuedImages} images waiting, at most ${this.options.maxQueuedImages}; ${count} more asked)`,
        this.options.retryAfterSeconds,
      );
    }
    return new Promise<BatchedAnswer>((resolve, reject) => {
      const entry: Pending = {
        images,
        count,
        temperature: request.temperature,
        enqueuedAt: performance.now(),
        resolve,
        reject,
        detach: () => {},
      };
      if (signal) {
        const onAbort = () => {
          const index = this.queue.indexOf(entry);
          if (index >= 0) {
            this.queue.splice(index, 1);
            this.queuedImages -= entry.count;
          }
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        entry.detach = () => signal.removeEventListener('abort', onAbort);
      }
      this.queue.push(entry);
      this.queuedImages += count;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.queue.length === 0 || this.running >= this.options.maxConcurrentBatches) return;
    const waited = performance.now() - this.queue[0].enqueuedAt;
    const companyBack = this.options.waitFor === 'last-pass' && this.queue.length >= this.lastPassRequests;
    if (this.queuedImages >= this.options.maxBatchImages || companyBack || waited >= this.options.maxWaitMs) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.dispatch();
      return;
    }
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.schedule();
    }, this.options.maxWaitMs - waited);
  }

  private dispatch(): void {
    const taken: Pending[] = [];
    let images = 0;
    while (this.queue.length > 0) {
      const next = this.queue[0];
      if (taken.length > 0 && images + next.count > this.options.maxBatchImages) break;
      this.queue.shift();
      next.detach();
      taken.push(next);
      images += next.count;
    }
    this.queuedImages -= images;
    this.lastPassRequests = taken.length;
    const values = new Float32Array(images * this.shape.imageValues);
    const temperatures = new Float32Array(images);
    const started = performance.now();
    let row = 0;
    for (const entry of taken) {
      values.set(entry.images, row * this.shape.imageValues);
      temperatures.fill(entry.temperature, row, row + entry.count);
      row += entry.count;
      this.observer.dispatched?.({ images: entry.count, queueMs: started - entry.enqueuedAt });
    }
    this.running += 1;
    const finish = (failed: boolean) => {
      this.running -= 1;
      this.observer.batch?.({
        images,
        requests: taken.length,
        computeMs: performance.now() - started,
        failed,
      });
      this.schedule();
    };
    this.forward(values, images, temperatures).then(
      (probabilities) => {
        const computeMs = performance.now() - started;
        finish(false);
        const k = this.shape.numClasses;
        if (probabilities.length !== images * k) {
          const error = new RangeError(
            `the forward pass returned ${probabilities.length} values, expected ${images * k}`,
          );
          for (const entry of taken) entry.reject(error);
          return;
        }
        let offset = 0;
        for (const entry of taken) {
          entry.resolve({
            rows: probabilities.slice(offset * k, (offset + entry.count) * k),
            queueMs: started - entry.enqueuedAt,
            computeMs,
            batchImages: images,
          });
          offset += entry.count;
        }
      },
      (error: unknown) => {
        finish(true);
        for (const entry of taken) entry.reject(error);
      },
    );
  }
}
