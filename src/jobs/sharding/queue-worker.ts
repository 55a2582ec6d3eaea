import { monitorEventLoopDelay } from 'node:perf_hooks';
import * as tf from '@tensorflow/tfjs';
import { type Job, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Classifier } from '../../engine/model/classifier.js';
import { loadClassifierFromFiles } from '../../engine/model/files.js';
import { NonFiniteLogitsError } from '../../engine/model/logits.js';
import { loadOptions, localModelLimits } from '../models/index.js';
import { type BlobStore, openBlobStore } from './blob-store.js';
import {
  AUDIT_QUEUE,
  type AuditJobData,
  bytesToFloats,
  cancelChannel,
  cancelledKey,
  DEFAULT_LOCK_DURATION_MS,
  DEFAULT_MAX_STALLED,
  DEFAULT_QUEUE_PREFIX,
  DEFAULT_STALLED_INTERVAL_MS,
  fetchModel,
  mergeChildrenValues,
  parseQueueUrl,
  probePointsKey,
  SHARD_QUEUE,
  type ShardJobData,
  type ShardProgress,
  shardPointsKey,
} from './queue.js';
import { runShard, type ShardResult } from './shards.js';

/**
 * `ratio worker`: runs audit shards from the BullMQ queue, one at a time (concurrency 1, in this
 * process: no sandboxed processor, the model stays loaded between shards of one model). Any number
 * of workers on any machines that reach Redis and the store. Also merges finished audits (parent
 * jobs), which is light. A cancelled audit's running shard is aborted (cancel channel) and its
 * waiting shards fail at once without computing.
 */

export interface QueueWorkerOptions extends QueueLockSettings {
  /** redis://host:port */
  queue: string;
  /** The store to read models and points from (default: the URL each job names). */
  store?: BlobStore;
  prefix?: string;
  /** Structured log lines (the command prints them as JSON). */
  log?: (message: string, fields: Record<string, unknown>) => void;
}

interface QueueLockSettings {
  lockDurationMs?: number;
  stalledIntervalMs?: number;
  maxStalledCount?: number;
}

export class QueueShardWorker {
  private readonly shardWorker: Worker<ShardJobData, ShardResult>;
  private readonly auditWorker: Worker<AuditJobData>;
  private readonly subscriber: Redis;
  private readonly client: Redis;
  private readonly stores = new Map<string, BlobStore>();
  private model: { key: string; classifier: Promise<Classifier> } | undefined;
  private current: { job: Job<ShardJobData, ShardResult>; audit: string } | undefined;
  private readonly log: NonNullable<QueueWorkerOptions['log']>;
  readonly lockDurationMs: number;
  /** Shards finished by this worker (tests, logs). */
  completed = 0;

  private constructor(private readonly options: QueueWorkerOptions) {
    const url = parseQueueUrl(options.queue);
    const prefix = options.prefix ?? DEFAULT_QUEUE_PREFIX;
    this.log = options.log ?? (() => {});
    this.lockDurationMs = options.lockDurationMs ?? DEFAULT_LOCK_DURATION_MS;
    const connection = { url, maxRetriesPerRequest: null };
    this.shardWorker = new Worker<ShardJobData, ShardResult>(
      SHARD_QUEUE,
      (job, _token, signal) => this.runShardJob(job, signal),
      {
        connection,
        prefix,
        concurrency: 1,
        lockDuration: this.lockDurationMs,
        stalledInterval: options.stalledIntervalMs ?? DEFAULT_STALLED_INTERVAL_MS,
        maxStalledCount: options.maxStalledCount ?? DEFAULT_MAX_STALLED,
        autorun: false,
      },
    );
    this.auditWorker = new Worker<AuditJobData>(
      AUDIT_QUEUE,
      async (job) => mergeChildrenValues(job.data.audit, await job.getChildrenValues<ShardResult>()),
      { connection, prefix, concurrency: 4, autorun: false },
    );
    for (const worker of [this.shardWorker, this.auditWorker]) {
      worker.on('error', (error) => this.log('queue error', { err: error.message }));
    }
    this.shardWorker.on('failed', (job, error) =>
      this.log('shard failed', { job: job?.id, err: error.message }),
    );
    this.client = new Redis(url, { maxRetriesPerRequest: null });
    this.subscriber = new Redis(url, { maxRetriesPerRequest: null });
    // ioredis reconnects by itself; its errors are logged, never thrown at the process.
    for (const connection of [this.client, this.subscriber]) {
      connection.on('error', (error: Error) => this.log('redis error', { err: error.message }));
    }
    this.subscriber.on('message', (_channel: string, audit: string) => {
      if (this.current?.audit === audit && this.current.job.id) {
        this.shardWorker.cancelJob(this.current.job.id, 'the audit was cancelled');
      }
    });
    this.subscriber
      .subscribe(cancelChannel(prefix))
      .catch((error: Error) => this.log('cannot subscribe to cancellations', { err: error.message }));
  }

  static async start(options: QueueWorkerOptions): Promise<QueueShardWorker> {
    const worker = new QueueShardWorker(options);
    await Promise.all([worker.shardWorker.waitUntilReady(), worker.auditWorker.waitUntilReady()]);
    // Their loops end only at close; one that fails is logged, never left to reject unhandled
    // (tfjs-wasm's runtime rethrows unhandled rejections: the process would die).
    for (const [name, loop] of [
      ['shard', worker.shardWorker],
      ['audit', worker.auditWorker],
    ] as const) {
      loop.run().catch((error: Error) => worker.log(`${name} worker loop failed`, { err: error.message }));
    }
    return worker;
  }

  private storeFor(url: string): BlobStore {
    if (this.options.store) return this.options.store;
    let store = this.stores.get(url);
    if (!store) {
      store = openBlobStore(url);
      this.stores.set(url, store);
    }
    return store;
  }

  private async classifierFor(store: BlobStore, data: ShardJobData): Promise<Classifier> {
    if (this.model?.key !== data.model.key) {
      const previous = this.model?.classifier;
      void previous?.then(
        (c) => c.dispose(),
        () => {},
      );
      // The submitter checked the model under its place's limits; this machine holds it under its own.
      const loading = fetchModel(store, data.model).then((files) =>
        loadClassifierFromFiles(files, loadOptions(localModelLimits(), 'local')),
      );
      this.model = { key: data.model.key, classifier: loading };
      loading.catch(() => {
        if (this.model?.classifier === loading) this.model = undefined;
      });
    }
    return this.model.classifier;
  }

  private async runShardJob(job: Job<ShardJobData, ShardResult>, signal?: AbortSignal): Promise<ShardResult> {
    const data = job.data;
    const prefix = this.options.prefix ?? DEFAULT_QUEUE_PREFIX;
    if (await this.client.exists(cancelledKey(prefix, data.audit))) {
      throw new UnrecoverableError('the audit was cancelled');
    }
    this.current = { job, audit: data.audit };
    const { range } = data;
    this.log('shard started', {
      audit: data.audit,
      shard: range.shard,
      job: job.id,
      attempt: job.attemptsStarted,
      pid: process.pid,
    });
    const blocked = monitorEventLoopDelay({ resolution: 10 });
    blocked.enable();
    const store = this.storeFor(data.store);
    const size = range.end - range.start;
    const [h, w, c] = data.shape;
    const tensors: tf.Tensor[] = [];
    let lastProgress = 0;
    try {
      const classifier = await this.classifierFor(store, data);
      const rowsKey = shardPointsKey(data.audit, range.shard);
      const rows = bytesToFloats(await store.get(rowsKey), size * h * w * c, rowsKey);
      const x = tf.tensor4d(rows, [size, h, w, c]);
      tensors.push(x);
      let probe: { x: tf.Tensor4D; y: Int32Array } | undefined;
      if (data.probe) {
        const probeSize = data.probe.y.length;
        const key = probePointsKey(data.audit);
        const probeX = tf.tensor4d(bytesToFloats(await store.get(key), probeSize * h * w * c, key), [
          probeSize,
          h,
          w,
          c,
        ]);
        tensors.push(probeX);
        probe = { x: probeX, y: Int32Array.from(data.probe.y) };
      }
      const part = await runShard(
        classifier,
        { x, y: Int32Array.from(data.y), probe },
        range,
        data.settings,
        {
          signal,
          onProgress: (progress) => {
            // Throttled: every update is a Redis write and an event for the enqueuer.
            const now = Date.now();
            if (now - lastProgress < 250 && progress.done < progress.total) return;
            lastProgress = now;
            const update: ShardProgress = { shard: range.shard, ...progress };
            void job.updateProgress({ ...update }).catch(() => {});
          },
        },
      );
      this.completed += 1;
      this.log('shard finished', {
        audit: data.audit,
        shard: range.shard,
        job: job.id,
        seconds: Number(part.seconds.toFixed(2)),
        // The longest the event loop was blocked (one synchronous step): must stay under the lock.
        longest_blocked_ms: Math.round(blocked.max / 1e6),
        lock_duration_ms: this.lockDurationMs,
        pid: process.pid,
      });
      return {
        audit: data.audit,
        shard: range.shard,
        shards: data.shards,
        n: data.n,
        start: range.start,
        end: range.end,
        part,
      };
    } catch (error) {
      const aborted = signal?.aborted || (error instanceof Error && error.name === 'AbortError');
      // A cancel also removes the audit's blobs: a shard still loading them fails for that reason.
      if (aborted || (await this.client.exists(cancelledKey(prefix, data.audit)).catch(() => 0))) {
        this.log('shard cancelled', { audit: data.audit, shard: range.shard, job: job.id, pid: process.pid });
        // A cancelled shard must not be retried.
        throw new UnrecoverableError('the audit was cancelled');
      }
      // The model's fault: running the shard again would meet it again. The name leads the reason,
      // so the enqueuer can give the audit the engine's own error.
      if (error instanceof NonFiniteLogitsError)
        throw new UnrecoverableError(`${error.name}: ${error.message}`);
      throw error;
    } finally {
      blocked.disable();
      this.current = undefined;
      tf.dispose(tensors);
    }
  }

  /** Stops taking shards; waits for the running one unless `force`. */
  async close(force = false): Promise<void> {
    await Promise.all([this.shardWorker.close(force), this.auditWorker.close(force)]);
    this.subscriber.disconnect();
    this.client.disconnect();
    const model = this.model?.classifier;
    this.model = undefined;
    await model?.then(
      (c) => c.dispose(),
      () => {},
    );
  }
}
