import { type ChildProcess, fork } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { availableParallelism } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import type { ModelFiles } from '../../data/model-dir.js';
import {
  type AutoAttackOptions,
  type AutoAttackPart,
  type AutoAttackReport,
  autoAttack,
} from '../../engine/attacks/autoattack.js';
import { DEFAULT_BATCH_SIZE } from '../../engine/attacks/defaults.js';
import type { AttackProgress } from '../../engine/attacks/types.js';
import { type Classifier, TfjsClassifier } from '../../engine/model/classifier.js';
import { saveModelToFiles } from '../../engine/model/files.js';
import { NonFiniteLogitsError } from '../../engine/model/logits.js';
import {
  type WorstCaseOptions,
  type WorstCaseResult,
  worstCaseConfidence,
} from '../../engine/ood/worst-case.js';
import { workerEntry } from '../../util/worker-entry.js';
import { shardSettingsOf } from '../audit/parameters.js';
import type {
  ParentMessage,
  ShardTaskMessage,
  WorkerMessage,
  WorstCasePart,
  WorstCaseTaskMessage,
} from './protocol.js';
import {
  defaultShardCount,
  mergeShardResults,
  planShards,
  type ShardedRunOptions,
  type ShardRange,
  type ShardResult,
  type ShardSettings,
} from './shards.js';

/**
 * The embedded default for audits: a pool of worker processes (one per core unless told), each with
 * its own tfjs backend, running an audit's shards one at a time each. The caller's event loop only
 * moves messages. A worker that dies mid-shard is replaced and the shard runs again (its result
 * replaces, never adds: results are keyed by shard). `pool.autoAttack` has the engine's signature,
 * so it drops into `AuditQueue({ run })` and the CLI alike, and returns the same report.
 */

export interface ShardPoolOptions {
  /** Worker processes (default RATIO_WORKERS, else one per core). */
  workers?: number;
  /** tfjs threads per worker, passed as RATIO_THREADS (default floor(cores / workers), at least 1). */
  threadsPerWorker?: number;
  /** Runs of one shard before the audit fails (default 3: a shard survives two worker deaths). */
  maxAttempts?: number;
  /** Extra environment for the workers. */
  env?: NodeJS.ProcessEnv;
  /**
   * How long a worker may take to stop a cancelled shard before it is killed and replaced
   * (default 1000 ms): the engine checks for a cancel between iterations, a long synchronous step
   * (a model load, one iteration of a large model) cannot be interrupted otherwise.
   */
  cancelGraceMs?: number;
}

export interface PoolAuditOptions extends AutoAttackOptions, ShardedRunOptions {
  /** Shards to split the points into (default about 4 per worker, >= 32 points each). */
  shards?: number;
}

export interface PoolWorstCaseOptions extends WorstCaseOptions {
  /** Parts to split the images into (default about 4 per worker, >= 32 images each). */
  shards?: number;
  /** The model files, when the classifier is not a tfjs model the pool can serialise. */
  modelFiles?: Map<string, Uint8Array>;
}

/**
 * The model as files for shard runners in other processes: the given files, else a tfjs model's
 * own; undefined for a classifier that cannot travel (a function), which then runs in process.
 */
export async function travellingModel(
  classifier: Classifier,
  given: ModelFiles | undefined,
): Promise<ModelFiles | undefined> {
  return given ?? (classifier instanceof TfjsClassifier ? await saveModelToFiles(classifier) : undefined);
}

/** The point count, checked against the labels, and the shard settings of an audit split into shards. */
export function shardedAudit(
  x: tf.Tensor4D,
  y: Int32Array,
  options: PoolAuditOptions,
): { n: number; settings: ShardSettings } {
  const n = x.shape[0];
  if (y.length !== n) throw new RangeError(`'y' must have ${n} labels, got ${y.length}`);
  return { n, settings: shardSettingsOf(options) };
}

/** A shard that could not complete (its worker died too often, or it failed). */
export class ShardFailedError extends Error {
  override readonly name = 'ShardFailedError';
}

/** The pool was closed while work was pending. */
export class PoolClosedError extends Error {
  override readonly name = 'PoolClosedError';
}

/** Parses a worker count (`--workers`, RATIO_WORKERS): an integer >= 1. */
export function parseWorkerCount(text: string | undefined, fallback = availableParallelism()): number {
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!(Number.isInteger(value) && value >= 1)) {
    throw new RangeError(`the worker count must be an integer >= 1, got '${text}'`);
  }
  return value;
}

interface Task {
  id: number;
  /** The audit (or worst-case search) the task belongs to: cancelled together. */
  audit: string;
  range: ShardRange;
  message: Omit<ShardTaskMessage, 'task' | 'files'> | Omit<WorstCaseTaskMessage, 'task' | 'files'>;
  files: Map<string, Uint8Array>;
  attempts: number;
  onProgress: (progress: AttackProgress) => void;
  /** Takes the task's result: an AutoAttackPart or a WorstCasePart, by the message's type. */
  resolve: (part: never) => void;
  reject: (error: Error) => void;
}

interface Worker {
  child: ChildProcess;
  ready: boolean;
  task: Task | undefined;
  modelKey: string | undefined;
  /** Set when the worker was killed for not stopping a cancelled task in time. */
  killedFor: Task | undefined;
}

export interface WorkerMemory {
  pid: number;
  /** Live tfjs tensors in the worker. */
  tensors: number;
  heapUsed: number;
  rss: number;
}

const WORKER_ENTRY = workerEntry(import.meta.url, 'worker');

export class ShardPool {
  readonly size: number;
  private readonly threads: number;
  private readonly maxAttempts: number;
  private readonly env: NodeJS.ProcessEnv;
  private readonly cancelGraceMs: number;
  private nextMemoryRequest = 1;
  private readonly memoryRequests = new Map<number, (memory: WorkerMemory) => void>();
  private readonly workers = new Set<Worker>();
  private readonly pending: Task[] = [];
  private nextTask = 1;
  private closed = false;
  /** Worker deaths seen (for tests and metrics). */
  restarts = 0;
  /** Workers in a row that died before they were ready (a broken install: stop respawning). */
  private startFailures = 0;

  constructor(options: ShardPoolOptions = {}) {
    this.size = options.workers ?? parseWorkerCount(process.env.RATIO_WORKERS);
    if (!(Number.isInteger(this.size) && this.size >= 1)) {
      throw new RangeError(`'workers' must be an integer >= 1, got ${this.size}`);
    }
    this.threads = options.threadsPerWorker ?? Math.max(1, Math.floor(availableParallelism() / this.size));
    this.maxAttempts = options.maxAttempts ?? 3;
    this.env = options.env ?? {};
    this.cancelGraceMs = options.cancelGraceMs ?? 1000;
    for (let i = 0; i < this.size; i++) this.spawn();
  }

  /** Process ids of the live workers (tests kill one to check recovery). */
  get pids(): number[] {
    return [...this.workers].map((w) => w.child.pid).filter((pid): pid is number => pid !== undefined);
  }

  /** Process ids of the workers busy with a shard now. */
  get busyPids(): number[] {
    return [...this.workers]
      .filter((w) => w.task !== undefined)
      .map((w) => w.child.pid)
      .filter((pid): pid is number => pid !== undefined);
  }

  /** AutoAttack on the pool: same arguments and report as the engine's `autoAttack`. */
  async autoAttack(
    classifier: Classifier,
    x: tf.Tensor4D,
    y: Int32Array,
    options: PoolAuditOptions,
  ): Promise<AutoAttackReport> {
    if (options.keepAdversarial) throw new RangeError('the shard pool does not return adversarial points');
    if (options.attacks) throw new RangeError('the shard pool runs the versions only (no custom attacks)');
    const started = performance.now();
    const files = await travellingModel(classifier, options.modelFiles);
    // A classifier that is not a tfjs model (a function) cannot travel: it runs here (same report).
    if (!files) return autoAttack(classifier, x, y, options);
    const { n, settings } = shardedAudit(x, y, options);
    const shards = options.shards ?? defaultShardCount(n, this.size);
    const ranges = planShards(n, shards).filter((r) => r.end > r.start || n === 0);
    const audit = options.audit ?? options.finished?.[0]?.audit ?? randomUUID();
    const rows = x.dataSync() as Float32Array;
    const rowSize = n > 0 ? rows.length / n : 0;
    const [, h, w, c] = x.shape;
    const probeSize = Math.min(n, settings.batchSize ?? DEFAULT_BATCH_SIZE);

    const results = new Map<number, ShardResult>();
    for (const known of options.finished ?? []) {
      if (known.audit === audit && known.shards === shards && known.n === n) results.set(known.shard, known);
    }
    const doneByShard = new Map<number, number>();
    let finishedPoints = [...results.values()].reduce((sum, r) => sum + (r.end - r.start), 0);
    const report = (attack: string) => {
      let partial = 0;
      for (const value of doneByShard.values()) partial += value;
      options.onProgress?.({ attack, done: Math.min(n, finishedPoints + Math.floor(partial)), total: n });
    };
    const modelKey = randomUUID();
    const tasks = ranges
      .filter((range) => !results.has(range.shard))
      .map((range) =>
        this.enqueue({
          audit,
          range,
          files,
          message: {
            type: 'shard',
            modelKey,
            range,
            settings,
            x: rows.slice(range.start * rowSize, range.end * rowSize),
            shape: [range.end - range.start, h, w, c],
            y: y.slice(range.start, range.end),
            probe:
              range.start === 0
                ? {
                    x: rows.slice(0, probeSize * rowSize),
                    shape: [probeSize, h, w, c],
                    y: y.slice(0, probeSize),
                  }
                : undefined,
          },
          onProgress: (progress) => {
            // A shard's share of its current attack, in points (coarse across attacks, monotone per shard).
            const size = range.end - range.start;
            const share = progress.total > 0 ? progress.done / progress.total : 0;
            doneByShard.set(range.shard, Math.max(doneByShard.get(range.shard) ?? 0, 0.5 * share * size));
            report(progress.attack);
          },
        }).then((part) => {
          const result: ShardResult = {
            audit,
            shard: range.shard,
            shards,
            n,
            start: range.start,
            end: range.end,
            part,
          };
          results.set(range.shard, result);
          doneByShard.delete(range.shard);
          finishedPoints += range.end - range.start;
          options.onShard?.(result);
          report(part.attacks.at(-1)?.name ?? 'shard');
          return result;
        }),
      );

    const abort = () => this.cancelAudit(audit, options.signal?.reason);
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      if (options.signal?.aborted) abort();
      await Promise.all(tasks);
    } catch (error) {
      this.cancelAudit(audit, error);
      await Promise.allSettled(tasks);
      throw error;
    } finally {
      options.signal?.removeEventListener('abort', abort);
      this.releaseModel(modelKey);
    }
    return mergeShardResults([...results.values()], { seconds: (performance.now() - started) / 1000 });
  }

  /**
   * The worst-case OOD confidence search on the pool: same arguments and result as the engine's
   * `worstCaseConfidence`. The images are split into contiguous parts; each image's random start
   * depends only on (seed, global index, restart), so the result equals one in-process call.
   */
  async worstCaseConfidence(
    classifier: Classifier,
    x: tf.Tensor4D,
    options: PoolWorstCaseOptions,
  ): Promise<WorstCaseResult> {
    const { shards: requested, modelFiles, signal, onProgress, ...engineOptions } = options;
    const n = x.shape[0];
    const files = await travellingModel(classifier, modelFiles);
    const ranges = planShards(n, requested ?? defaultShardCount(n, this.size)).filter((r) => r.end > r.start);
    // Nothing to spread (a function model cannot travel, one part, eps 0): in process, same result.
    if (!files || ranges.length <= 1 || !(options.eps > 0))
      return worstCaseConfidence(classifier, x, options);
    const firstIndex = options.firstIndex ?? 0;
    const settings = {
      ...engineOptions,
      // The parent's temperature, whatever card the worker's copy of the model carries.
      temperature: options.temperature ?? classifier.card.temperature ?? 1,
    };
    const search = randomUUID();
    const modelKey = randomUUID();
    const rows = x.dataSync() as Float32Array;
    const rowSize = n > 0 ? rows.length / n : 0;
    const [, h, w, c] = x.shape;
    const doneByPart = new Map<number, number>();
    const tasks = ranges.map((range) =>
      this.enqueue<WorstCasePart>({
        audit: search,
        range,
        files,
        message: {
          type: 'worst-case',
          modelKey,
          options: { ...settings, firstIndex: firstIndex + range.start },
          x: rows.slice(range.start * rowSize, range.end * rowSize),
          shape: [range.end - range.start, h, w, c],
        },
        onProgress: (progress) => {
          const share = progress.total > 0 ? progress.done / progress.total : 0;
          doneByPart.set(range.shard, share * (range.end - range.start));
          let done = 0;
          for (const value of doneByPart.values()) done += value;
          onProgress?.({ phase: 'worst-case confidence', done: Math.floor(done), total: n });
        },
      }),
    );
    const abort = () => this.cancelAudit(search, signal?.reason);
    signal?.addEventListener('abort', abort, { once: true });
    let parts: WorstCasePart[];
    try {
      if (signal?.aborted) abort();
      parts = await Promise.all(tasks);
    } catch (error) {
      this.cancelAudit(search, error);
      await Promise.allSettled(tasks);
      throw error;
    } finally {
      signal?.removeEventListener('abort', abort);
      this.releaseModel(modelKey);
    }
    const confidence = new Float32Array(n);
    const cleanConfidence = new Float32Array(n);
    const predicted = new Int32Array(n);
    const images = new Float32Array(rows.length);
    for (const [i, range] of ranges.entries()) {
      confidence.set(parts[i].confidence, range.start);
      cleanConfidence.set(parts[i].cleanConfidence, range.start);
      predicted.set(parts[i].predicted, range.start);
      images.set(parts[i].images, range.start * rowSize);
    }
    return { confidence, cleanConfidence, predicted, images: tf.tensor4d(images, x.shape) };
  }

  /** Live tensors, heap and RSS of every ready worker (a busy worker answers after its step). */
  async memory(timeoutMs = 10_000): Promise<WorkerMemory[]> {
    const ready = [...this.workers].filter((w) => w.ready && w.child.connected);
    const answers = ready.map(
      (worker) =>
        new Promise<WorkerMemory | undefined>((resolve) => {
          const request = this.nextMemoryRequest++;
          const timer = setTimeout(() => {
            this.memoryRequests.delete(request);
            resolve(undefined);
          }, timeoutMs);
          this.memoryRequests.set(request, (memory) => {
            clearTimeout(timer);
            this.memoryRequests.delete(request);
            resolve(memory);
          });
          this.post(worker, { type: 'memory', request });
        }),
    );
    return (await Promise.all(answers)).filter((m): m is WorkerMemory => m !== undefined);
  }

  /** Workers holding a model now (an audit's model is freed when the audit ends). */
  get modelsHeld(): number {
    return [...this.workers].filter((w) => w.modelKey !== undefined).length;
  }

  private releaseModel(modelKey: string): void {
    for (const worker of this.workers) {
      if (worker.modelKey !== modelKey) continue;
      worker.modelKey = undefined;
      this.post(worker, { type: 'release', modelKey });
    }
  }

  /** Stops the workers; pending shards reject with `PoolClosedError`. */
  async close(): Promise<void> {
    this.closed = true;
    for (const task of this.pending.splice(0)) task.reject(new PoolClosedError('the shard pool was closed'));
    const exits = [...this.workers].map(
      (worker) =>
        new Promise<void>((resolve) => {
          if (worker.child.exitCode !== null || worker.child.signalCode !== null) resolve();
          else {
            worker.child.once('exit', () => resolve());
            worker.child.kill('SIGTERM');
          }
        }),
    );
    await Promise.all(exits);
  }

  private enqueue<R = AutoAttackPart>(
    spec: Omit<Task, 'id' | 'attempts' | 'resolve' | 'reject'>,
  ): Promise<R> {
    if (this.closed) return Promise.reject(new PoolClosedError('the shard pool is closed'));
    return new Promise<R>((resolve, reject) => {
      this.pending.push({ ...spec, id: this.nextTask++, attempts: 0, resolve, reject });
      this.dispatch();
    });
  }

  private cancelAudit(audit: string, reason: unknown): void {
    const error =
      reason instanceof Error && reason.name === 'AbortError'
        ? reason
        : new DOMException('the audit was cancelled', 'AbortError');
    for (let i = this.pending.length - 1; i >= 0; i--) {
      if (this.pending[i].audit === audit) this.pending.splice(i, 1)[0].reject(error);
    }
    for (const worker of this.workers) {
      const task = worker.task;
      if (task?.audit !== audit) continue;
      this.post(worker, { type: 'cancel', task: task.id });
      // A worker deep in a synchronous step does not read the cancel: past the grace it is killed
      // (its memory goes with it) and replaced, and the task ends as cancelled.
      setTimeout(() => {
        if (worker.task !== task || worker.killedFor) return;
        worker.killedFor = task;
        worker.child.kill('SIGKILL');
      }, this.cancelGraceMs).unref();
    }
  }

  private post(worker: Worker, message: ParentMessage): void {
    if (worker.child.connected) worker.child.send(message);
  }

  private dispatch(): void {
    for (const worker of this.workers) {
      if (this.pending.length === 0) return;
      if (!worker.ready || worker.task || worker.killedFor) continue;
      const task = this.pending.shift()!;
      task.attempts += 1;
      worker.task = task;
      const needsFiles = worker.modelKey !== task.message.modelKey;
      worker.modelKey = task.message.modelKey;
      this.post(worker, { ...task.message, task: task.id, ...(needsFiles ? { files: task.files } : {}) });
    }
  }

  private spawn(): void {
    const child = fork(WORKER_ENTRY.path, [], {
      execArgv: WORKER_ENTRY.execArgv,
      serialization: 'advanced',
      env: { ...process.env, ...this.env, RATIO_THREADS: String(this.threads) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const worker: Worker = {
      child,
      ready: false,
      task: undefined,
      modelKey: undefined,
      killedFor: undefined,
    };
    this.workers.add(worker);
    child.on('message', (message: WorkerMessage) => this.onMessage(worker, message));
    child.on('exit', () => this.onExit(worker));
    child.on('error', () => {
      // 'exit' follows (or the spawn failed and the worker never becomes ready); handled there.
    });
  }

  private onMessage(worker: Worker, message: WorkerMessage): void {
    if (message.type === 'ready') {
      worker.ready = true;
      this.startFailures = 0;
      this.dispatch();
      return;
    }
    if (message.type === 'memory') {
      const { tensors, heapUsed, rss } = message;
      this.memoryRequests.get(message.request)?.({ pid: worker.child.pid ?? 0, tensors, heapUsed, rss });
      return;
    }
    const task = worker.task;
    if (!task || task.id !== message.task) return;
    if (message.type === 'progress') {
      task.onProgress(message.progress);
      return;
    }
    if (message.type === 'worst-case-progress') {
      task.onProgress({ attack: 'worst-case confidence', done: message.done, total: message.total });
      return;
    }
    worker.task = undefined;
    if (message.type === 'result' || message.type === 'worst-case-result') {
      (task.resolve as (part: AutoAttackPart | WorstCasePart) => void)(message.part);
    } else if (message.name === 'AbortError') task.reject(new DOMException(message.message, 'AbortError'));
    else if (message.name === 'NonFiniteLogitsError') {
      // The model's fault, not the pool's: the audit fails with the engine's own error.
      const error = new NonFiniteLogitsError(`shard ${task.range.shard}`);
      error.message = message.message;
      task.reject(error);
    } else
      task.reject(new ShardFailedError(`shard ${task.range.shard}: ${message.name}: ${message.message}`));
    this.dispatch();
  }

  private onExit(worker: Worker): void {
    this.workers.delete(worker);
    const task = worker.task;
    worker.task = undefined;
    if (this.closed) {
      task?.reject(new PoolClosedError('the shard pool was closed'));
      return;
    }
    this.restarts += 1;
    if (task && worker.killedFor === task) {
      task.reject(new DOMException('the audit was cancelled', 'AbortError'));
      this.spawn();
      return;
    }
    if (!worker.ready) this.startFailures += 1;
    if (this.startFailures >= 3) {
      const error = new ShardFailedError('shard workers exit before they are ready (see their stderr)');
      task?.reject(error);
      for (const pending of this.pending.splice(0)) pending.reject(error);
      if (this.workers.size === 0) this.closed = true;
      return;
    }
    if (task) {
      if (task.attempts < this.maxAttempts) this.pending.unshift(task);
      else {
        task.reject(
          new ShardFailedError(`shard ${task.range.shard} lost its worker ${task.attempts} times; giving up`),
        );
      }
    }
    this.spawn();
  }
}
