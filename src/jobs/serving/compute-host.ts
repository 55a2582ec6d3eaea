import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { ModelContractError } from '../../engine/model/classifier.js';
import { workerEntry } from '../../util/worker-entry.js';
import { type ModelCompute, UnknownModelError } from './compute.js';
import type {
  Answer,
  AnswerOf,
  RemoteError,
  UnaddressedRequest,
  WorkerInit,
  WorkerReply,
  WorkerRequest,
} from './compute-protocol.js';

/**
 * `ModelCompute` in a worker thread: the worker (src/jobs/serving/compute-worker.ts) has its own tfjs
 * backend and loads the models from their files, so forward passes and long analyses never block
 * the HTTP event loop. Requests are answered in the order the worker finishes them; an aborted
 * signal rejects at once and asks the worker to stop (the engine checks between iterations).
 *
 * @example
 * const compute = await WorkerCompute.start({ models: [{ name: 'ratio-cifar10', files }] });
 * const probs = await compute.probabilities('ratio-cifar10', pixels, 1, Float32Array.of(1.2));
 * await compute.close();
 */

/** The worker failed or exited, or answered with an error of a type this side does not know. */
export class ComputeWorkerError extends Error {
  override readonly name = 'ComputeWorkerError';
  constructor(
    message: string,
    /** The error's name on the worker side, when it came from there. */
    readonly remoteName?: string,
  ) {
    super(message);
  }
}

/** Rebuilds the worker's error as the typed error it was, so HTTP maps it the same way. */
function reviveError(error: RemoteError): Error {
  switch (error.name) {
    case 'AbortError':
    case 'TimeoutError':
      return new DOMException(error.message, error.name);
    case 'UnknownModelError':
      return new UnknownModelError(error.message);
    case 'ModelContractError':
      return new ModelContractError(
        (error.field ?? 'input') as ConstructorParameters<typeof ModelContractError>[0],
        error.message,
      );
    case 'RangeError':
      return new RangeError(error.message);
    default:
      return new ComputeWorkerError(error.message, error.name);
  }
}

/** The worker thread's entry (compute-worker), compiled or through tsx like this module. */
function bootstrap(): { code: string } {
  const entry = workerEntry(import.meta.url, 'compute-worker');
  if (!existsSync(entry.path))
    throw new ComputeWorkerError(`the compute worker's entry is missing: ${entry.path}`);
  return { code: entry.threadCode };
}

interface Waiting {
  resolve: (reply: WorkerReply & { ok: true }) => void;
  reject: (error: unknown) => void;
}

export interface WorkerComputeOptions extends WorkerInit {
  /** Shown in errors and thread names (e.g. 'inference', 'analysis'). */
  name?: string;
  /** Environment of the worker (default: this process's, e.g. RATIO_BACKEND). */
  env?: NodeJS.ProcessEnv;
}

/** Starts a worker thread and waits until its backend is up and its models are loaded. */
async function spawnWorker(
  options: WorkerComputeOptions,
): Promise<{ worker: Worker; info: { backend: string; models: string[] } }> {
  const label = options.name ?? 'compute';
  const { code } = bootstrap();
  const worker = new Worker(code, {
    eval: true,
    name: `ratio-${label}`,
    workerData: { models: options.models } satisfies WorkerInit,
    env: options.env ?? process.env,
  });
  const info = await new Promise<{ backend: string; models: string[] }>((resolve, reject) => {
    const onMessage = (reply: WorkerReply) => {
      if (reply.id !== 0) return;
      cleanup();
      if (reply.ok && 'ready' in reply) resolve(reply.ready);
      else if (!reply.ok) reject(reviveError(reply.error));
    };
    const onError = (error: Error) => {
      cleanup();
      reject(new ComputeWorkerError(`compute worker '${label}' failed to start: ${error.message}`));
    };
    const onExit = (exitCode: number) => {
      cleanup();
      reject(new ComputeWorkerError(`compute worker '${label}' exited with code ${exitCode} while starting`));
    };
    const cleanup = () => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  }).catch(async (error: unknown) => {
    await worker.terminate();
    throw error;
  });
  return { worker, info };
}

export class WorkerCompute implements ModelCompute {
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();
  private failure: Error | undefined;
  private closed = false;
  private restarting: Promise<void> | undefined;
  /** Times the worker was started again after it failed or exited. */
  restarts = 0;

  private constructor(
    private worker: Worker,
    private readonly options: WorkerComputeOptions,
    /** The backend the worker selected and the models it loaded. */
    readonly info: { backend: string; models: string[] },
  ) {
    this.attach(worker);
  }

  get label(): string {
    return this.options.name ?? 'compute';
  }

  /** Starts the worker and waits until its backend is up and its models are loaded. */
  static async start(options: WorkerComputeOptions): Promise<WorkerCompute> {
    const { worker, info } = await spawnWorker(options);
    return new WorkerCompute(worker, options, info);
  }

  /** Events of a worker that has since been replaced are ignored. */
  private attach(worker: Worker): void {
    worker.on('message', (reply: WorkerReply) => {
      if (worker === this.worker) this.settle(reply);
    });
    worker.on('error', (error) => {
      if (worker === this.worker) {
        this.fail(new ComputeWorkerError(`compute worker '${this.label}' failed: ${error.message}`));
      }
    });
    worker.on('exit', (code) => {
      if (worker === this.worker && !this.closed) {
        this.fail(new ComputeWorkerError(`compute worker '${this.label}' exited with code ${code}`));
      }
    });
  }

  /**
   * After a failure the requests in flight were rejected; the next request starts a fresh worker
   * (one start at a time), so one crash costs the requests it held, not the service.
   */
  private async revive(): Promise<void> {
    if (!this.failure || this.closed) return;
    this.restarting ??= (async () => {
      try {
        const { worker } = await spawnWorker(this.options);
        if (this.closed) {
          await worker.terminate();
          return;
        }
        this.worker = worker;
        this.attach(worker);
        this.failure = undefined;
        this.restarts += 1;
      } finally {
        this.restarting = undefined;
      }
    })();
    await this.restarting;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.waiting.size;
  }

  private settle(reply: WorkerReply): void {
    const waiting = this.waiting.get(reply.id);
    if (!waiting) return; // answered already (aborted) or the start-up message
    this.waiting.delete(reply.id);
    if (reply.ok) waiting.resolve(reply);
    else waiting.reject(reviveError(reply.error));
  }

  private fail(error: Error): void {
    this.failure = error;
    for (const waiting of this.waiting.values()) waiting.reject(error);
    this.waiting.clear();
  }

  private async call(
    request: WorkerRequest,
    transfer: ArrayBuffer[],
    signal: AbortSignal | undefined,
  ): Promise<WorkerReply & { ok: true }> {
    if (this.closed) throw new ComputeWorkerError(`compute worker '${this.label}' is closed`);
    await this.revive();
    if (this.failure) throw this.failure;
    if (signal?.aborted) throw signal.reason;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        if (!this.waiting.delete(request.id)) return;
        this.worker.postMessage({ op: 'cancel', id: request.id });
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = () => signal?.removeEventListener('abort', onAbort);
      this.waiting.set(request.id, {
        resolve: (reply) => {
          done();
          resolve(reply);
        },
        reject: (error) => {
          done();
          reject(error);
        },
      });
      this.worker.postMessage(request, transfer);
    });
  }

  /** Sends one request under a fresh id and returns the part of the reply that answers it. */
  private async ask<K extends Answer>(
    request: UnaddressedRequest,
    answer: K,
    transfer: ArrayBuffer[],
    signal: AbortSignal | undefined,
  ): Promise<AnswerOf<K>> {
    const reply = await this.call({ ...request, id: this.nextId++ }, transfer, signal);
    if (!(answer in reply)) throw new ComputeWorkerError('the worker answered a different request');
    return (reply as Extract<WorkerReply, Record<K, unknown>>)[answer];
  }

  /** The images are transferred to the worker: `images` is unusable afterwards. */
  probabilities: ModelCompute['probabilities'] = (model, images, count, temperatures) =>
    this.ask(
      { op: 'probabilities', model, images, count, temperatures },
      'probabilities',
      transferable(images),
      undefined,
    );

  /** The images are transferred to the worker: `images` is unusable afterwards. */
  logits: ModelCompute['logits'] = (model, images, count) =>
    this.ask({ op: 'logits', model, images, count }, 'logits', transferable(images), undefined);

  worstCase: ModelCompute['worstCase'] = (model, images, count, request, signal) =>
    this.ask({ op: 'worstCase', model, images, count, request }, 'worstCase', [], signal);

  counterfactuals: ModelCompute['counterfactuals'] = (model, images, count, request, signal) =>
    this.ask({ op: 'counterfactuals', model, images, count, request }, 'counterfactuals', [], signal);

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fail(new ComputeWorkerError(`compute worker '${this.label}' is closed`));
    await this.worker.terminate();
  }
}

/** A buffer may be transferred only when the array spans all of it (else copy). */
function transferable(array: Float32Array): ArrayBuffer[] {
  const buffer = array.buffer;
  return buffer instanceof ArrayBuffer && array.byteOffset === 0 && array.byteLength === buffer.byteLength
    ? [buffer]
    : [];
}

/** Routes each model to the compute that holds it (worker-loaded files vs in-process classifiers). */
export class ModelRouter implements ModelCompute {
  constructor(private readonly routes: ReadonlyMap<string, ModelCompute>) {}

  private route(model: string): ModelCompute {
    const compute = this.routes.get(model);
    if (!compute) throw new UnknownModelError(`no compute holds a model named '${model}'`);
    return compute;
  }

  probabilities: ModelCompute['probabilities'] = (model, ...rest) =>
    this.route(model).probabilities(model, ...rest);
  logits: ModelCompute['logits'] = (model, ...rest) => this.route(model).logits(model, ...rest);
  worstCase: ModelCompute['worstCase'] = (model, ...rest) => this.route(model).worstCase(model, ...rest);
  counterfactuals: ModelCompute['counterfactuals'] = (model, ...rest) =>
    this.route(model).counterfactuals(model, ...rest);

  async close(): Promise<void> {
    await Promise.all([...new Set(this.routes.values())].map((compute) => compute.close()));
  }
}
