import { QueueFullError } from '../errors.js';

export interface SemaphoreOptions {
  /** Tasks running at once. */
  maxRunning: number;
  /** Tasks allowed to wait for a slot; one more is refused with `QueueFullError`. */
  maxWaiting: number;
  /** Retry-After suggested when full (seconds, default 1). */
  retryAfterSeconds?: number;
}

/**
 * A counting semaphore with a bounded waiting line, so the service sheds load (429) instead of
 * queueing unbounded work behind a single-threaded tfjs backend.
 *
 * @example
 * const compute = new ComputeSemaphore({ maxRunning: 1, maxWaiting: 8 });
 * const answer = await compute.run(() => predict(x)); // throws QueueFullError when 1 + 8 are busy
 */
export class ComputeSemaphore {
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly options: Required<SemaphoreOptions>;

  constructor(options: SemaphoreOptions) {
    if (!(Number.isInteger(options.maxRunning) && options.maxRunning >= 1)) {
      throw new Error(`'maxRunning' must be an integer >= 1, got ${options.maxRunning}`);
    }
    if (!(Number.isInteger(options.maxWaiting) && options.maxWaiting >= 0)) {
      throw new Error(`'maxWaiting' must be an integer >= 0, got ${options.maxWaiting}`);
    }
    this.options = { retryAfterSeconds: 1, ...options };
  }

  get depth(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.waiting.length };
  }

  /** True when `acquire` would throw `QueueFullError` now. */
  get isFull(): boolean {
    return this.running >= this.options.maxRunning && this.waiting.length >= this.options.maxWaiting;
  }

  /**
   * Takes a slot, waiting if needed; resolves to the release function. When `signal` aborts while
   * waiting (e.g. AbortSignal.timeout for a request), the wait ends with the signal's reason
   * (a TimeoutError/AbortError) and the place in line is given up.
   */
  async acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.running < this.options.maxRunning) {
      this.running += 1;
      return this.releaser();
    }
    if (this.waiting.length >= this.options.maxWaiting) {
      throw new QueueFullError(
        `the compute queue is full (${this.running} running, ${this.waiting.length} waiting)`,
        this.options.retryAfterSeconds,
      );
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const index = this.waiting.indexOf(wake);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(signal?.reason);
      };
      const wake = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.waiting.push(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    return this.releaser();
  }

  /** Runs `task` holding a slot (see `acquire` for `signal`, which bounds only the wait). */
  async run<T>(task: () => Promise<T> | T, signal?: AbortSignal): Promise<T> {
    const release = await this.acquire(signal);
    try {
      return await task();
    } finally {
      release();
    }
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // The slot passes straight to the next waiter, so `running` stays the same.
      if (next) next();
      else this.running -= 1;
    };
  }
}
