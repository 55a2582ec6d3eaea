import type * as tf from '@tensorflow/tfjs';
import { FlowProducer, Job, Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { ModelFiles } from '../../data/model-dir.js';
import { type AutoAttackReport, autoAttack } from '../../engine/attacks/autoattack.js';
import { DEFAULT_BATCH_SIZE } from '../../engine/attacks/defaults.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { NonFiniteLogitsError } from '../../engine/model/logits.js';
import type { BlobStore } from './blob-store.js';
import { type PoolAuditOptions, ShardFailedError, shardedAudit, travellingModel } from './pool.js';
import {
  AUDIT_QUEUE,
  type AuditJobData,
  auditBlobPrefix,
  auditModelDir,
  cancelChannel,
  cancelledKey,
  DEFAULT_QUEUE_PREFIX,
  floatBytes,
  mergeChildrenValues,
  newQueueAuditId,
  parseQueueUrl,
  probePointsKey,
  QueueUnavailableError,
  SHARD_QUEUE,
  type ShardJobData,
  type ShardProgress,
  ShardTally,
  shardJobId,
  shardPointsKey,
  stageModel,
} from './queue.js';
import { defaultShardCount, planShards, type ShardResult, type ShardSettings } from './shards.js';

/**
 * The enqueuing side of audits on BullMQ (`ratio audit --queue`, `ratio serve --queue`): stages the
 * model files and the points in the store, adds the audit as a flow (parent + one child per shard),
 * aggregates shard progress and results from the queue's events as they come, and returns the
 * parent's merged report. `autoAttack` has the engine's signature (as the local `ShardPool`'s), so
 * it drops into the service's `AuditQueue({ run })` and the CLI alike.
 */

export interface QueueRunnerOptions {
  /** redis://host:port */
  queue: string;
  store: BlobStore;
  prefix?: string;
  /** Model files of a classifier that cannot be serialised here (an ONNX model the service loaded). */
  modelFiles?: (classifier: Classifier) => ModelFiles | undefined;
  /** Shards per audit when the caller names none: about this many workers' worth (default 8). */
  workersHint?: number;
  /** Also merge finished audits here (default true: no audit waits for a worker to merge it). */
  mergeAudits?: boolean;
  /** How long to wait for Redis at start (default 5 s). */
  connectTimeoutMs?: number;
}

export type QueueAuditOptions = PoolAuditOptions;

const KEEP_FINISHED = { age: 24 * 3600 };
/** The error name a worker puts first in a shard's failure reason when the model's logits were not finite. */
const NON_FINITE = 'NonFiniteLogitsError';

/** Resolves when Redis answers a PING; rejects with `QueueUnavailableError` otherwise. */
async function checkRedis(url: string, timeoutMs: number): Promise<void> {
  const probe = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  probe.on('error', () => {});
  try {
    await probe.connect();
    await probe.ping();
  } catch (error) {
    throw new QueueUnavailableError(`cannot reach the queue at ${url}: ${(error as Error).message}`);
  } finally {
    probe.disconnect();
  }
}

export class QueueAuditRunner {
  private readonly prefix: string;
  private readonly flow: FlowProducer;
  private readonly shardQueue: Queue<ShardJobData>;
  private readonly auditQueue: Queue<AuditJobData>;
  private readonly shardEvents: QueueEvents;
  private readonly auditEvents: QueueEvents;
  private readonly client: Redis;
  private readonly merger: Worker<AuditJobData> | undefined;
  private readonly listeners = new Map<string, (event: ShardEvent) => void>();

  private constructor(private readonly options: QueueRunnerOptions) {
    const url = parseQueueUrl(options.queue);
    this.prefix = options.prefix ?? DEFAULT_QUEUE_PREFIX;
    const connection = { url, maxRetriesPerRequest: null };
    const prefix = this.prefix;
    this.flow = new FlowProducer({ connection, prefix });
    this.shardQueue = new Queue<ShardJobData>(SHARD_QUEUE, { connection, prefix });
    this.auditQueue = new Queue<AuditJobData>(AUDIT_QUEUE, { connection, prefix });
    this.shardEvents = new QueueEvents(SHARD_QUEUE, { connection, prefix });
    this.auditEvents = new QueueEvents(AUDIT_QUEUE, { connection, prefix });
    this.client = new Redis(url, { maxRetriesPerRequest: null });
    this.merger =
      options.mergeAudits === false
        ? undefined
        : new Worker<AuditJobData>(
            AUDIT_QUEUE,
            async (job) => mergeChildrenValues(job.data.audit, await job.getChildrenValues<ShardResult>()),
            { connection, prefix, concurrency: 4 },
          );
    this.shardEvents.on('progress', ({ jobId, data }) => {
      const audit = jobId.slice(0, jobId.lastIndexOf('.'));
      this.listeners.get(audit)?.({ type: 'progress', progress: data as unknown as ShardProgress });
    });
    this.shardEvents.on('completed', ({ jobId, returnvalue }) => {
      const audit = jobId.slice(0, jobId.lastIndexOf('.'));
      const result = (typeof returnvalue === 'string' ? JSON.parse(returnvalue) : returnvalue) as ShardResult;
      this.listeners.get(audit)?.({ type: 'completed', result });
    });
    // ioredis reconnects; a request that fails meanwhile rejects where it was made.
    const ignore = () => {};
    this.flow.on('error', ignore);
    this.shardQueue.on('error', ignore);
    this.auditQueue.on('error', ignore);
    this.shardEvents.on('error', ignore);
    this.auditEvents.on('error', ignore);
    this.merger?.on('error', ignore);
    this.client.on('error', () => {});
  }

  /** Connects (rejects with `QueueUnavailableError` when Redis cannot be reached). */
  static async start(options: QueueRunnerOptions): Promise<QueueAuditRunner> {
    await checkRedis(parseQueueUrl(options.queue), options.connectTimeoutMs ?? 5000);
    const runner = new QueueAuditRunner(options);
    await Promise.all([
      runner.shardEvents.waitUntilReady(),
      runner.auditEvents.waitUntilReady(),
      runner.shardQueue.waitUntilReady(),
      runner.auditQueue.waitUntilReady(),
    ]);
    return runner;
  }

  /** AutoAttack on the queue's workers: same arguments and report as the engine's `autoAttack`. */
  async autoAttack(
    classifier: Classifier,
    x: tf.Tensor4D,
    y: Int32Array,
    options: QueueAuditOptions,
  ): Promise<AutoAttackReport> {
    if (options.keepAdversarial) throw new RangeError('queue audits do not return adversarial points');
    if (options.attacks) throw new RangeError('queue audits run the versions only (no custom attacks)');
    const started = performance.now();
    const files = await travellingModel(
      classifier,
      options.modelFiles ?? this.options.modelFiles?.(classifier),
    );
    // A classifier that is not a model file (a function) cannot travel: it runs here (same report).
    if (!files) return autoAttack(classifier, x, y, options);
    const { n, settings } = shardedAudit(x, y, options);
    const audit = options.audit ?? newQueueAuditId();
    const shards = options.shards ?? defaultShardCount(n, this.options.workersHint ?? 8);
    const ranges = planShards(n, shards).filter((r) => r.end > r.start);
    const tally = new ShardTally(audit, ranges);
    const report = (attack: string) => options.onProgress?.({ attack, done: tally.done, total: n });
    this.listeners.set(audit, (event) => {
      if (event.type === 'progress') {
        const { shard, attack, done, total } = event.progress;
        tally.progress(shard, total > 0 ? done / total : 0);
        report(attack);
      } else if (event.result.audit === audit) {
        if (tally.finish(event.result)) options.onShard?.(event.result);
        report(event.result.part.attacks.at(-1)?.name ?? 'shard');
      }
    });
    let cancelling: Promise<void> | undefined;
    const abort = () => {
      cancelling ??= this.cancel(audit, shards);
    };
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      options.signal?.throwIfAborted();
      const parent =
        (await Job.fromId<AuditJobData>(this.auditQueue, audit)) ??
        (await this.enqueue(audit, files, x, y, settings, ranges, shards));
      const finished = parent.waitUntilFinished(this.auditEvents) as Promise<AutoAttackReport>;
      const cancelled = new Promise<never>((_, reject) => {
        const fail = () => reject(new DOMException('the audit was cancelled', 'AbortError'));
        if (options.signal?.aborted) fail();
        options.signal?.addEventListener('abort', fail, { once: true });
      });
      let merged: AutoAttackReport;
      try {
        merged = await Promise.race([finished, cancelled]);
      } catch (error) {
        if (options.signal?.aborted) {
          // Every shard stopped (or told to) before the caller hears of the cancellation.
          await cancelling;
          throw options.signal.reason ?? error;
        }
        const reason = await this.failedShardReason(audit, shards);
        if (reason?.startsWith(`${NON_FINITE}: `)) {
          const failure = new NonFiniteLogitsError('a shard on the queue');
          failure.message = reason.slice(NON_FINITE.length + 2);
          throw failure;
        }
        throw new ShardFailedError(
          `audit ${audit} failed on the queue: ${reason ?? (error as Error).message}`,
        );
      }
      return { ...merged, seconds: (performance.now() - started) / 1000 };
    } finally {
      options.signal?.removeEventListener('abort', abort);
      this.listeners.delete(audit);
      // However the audit ended, its staged model and points go (a cancel removed them already).
      if (!cancelling) await this.options.store.removePrefix(auditBlobPrefix(audit)).catch(() => {});
    }
  }

  private async enqueue(
    audit: string,
    files: ModelFiles,
    x: tf.Tensor4D,
    y: Int32Array,
    settings: ShardSettings,
    ranges: ReturnType<typeof planShards>,
    shards: number,
  ): Promise<Job<AuditJobData>> {
    const store = this.options.store;
    const n = x.shape[0];
    const [, h, w, c] = x.shape;
    const rowSize = h * w * c;
    const model = await stageModel(store, files, auditModelDir(audit));
    const rows = x.dataSync() as Float32Array;
    for (const range of ranges) {
      await store.put(
        shardPointsKey(audit, range.shard),
        floatBytes(rows.subarray(range.start * rowSize, range.end * rowSize)),
      );
    }
    const probeSize = Math.min(n, settings.batchSize ?? DEFAULT_BATCH_SIZE);
    await store.put(probePointsKey(audit), floatBytes(rows.subarray(0, probeSize * rowSize)));
    const tree = await this.flow.add({
      name: 'audit',
      queueName: AUDIT_QUEUE,
      data: { audit, shards, n } satisfies AuditJobData,
      opts: { jobId: audit, removeOnComplete: KEEP_FINISHED, removeOnFail: KEEP_FINISHED },
      children: ranges.map((range) => ({
        name: 'shard',
        queueName: SHARD_QUEUE,
        data: {
          audit,
          store: store.url,
          model,
          range,
          shards,
          n,
          shape: [h, w, c],
          y: Array.from(y.subarray(range.start, range.end)),
          probe: range.start === 0 ? { y: Array.from(y.subarray(0, probeSize)) } : undefined,
          settings,
        } satisfies ShardJobData,
        opts: {
          jobId: shardJobId(audit, range.shard),
          failParentOnFailure: true,
          removeOnComplete: KEEP_FINISHED,
          removeOnFail: KEEP_FINISHED,
        },
      })),
    });
    return tree.job as Job<AuditJobData>;
  }

  /** Why the first failed shard of an audit failed, as its worker said (undefined: none failed). */
  private async failedShardReason(audit: string, shards: number): Promise<string | undefined> {
    for (let shard = 0; shard < shards; shard++) {
      const job = await Job.fromId(this.shardQueue, shardJobId(audit, shard)).catch(() => undefined);
      if (job?.failedReason) return job.failedReason;
    }
    return undefined;
  }

  /**
   * Stops every shard of an audit: marks it cancelled (a worker refuses its shards from now on),
   * tells running workers (they abort their shard), and removes the shards still waiting.
   */
  async cancel(audit: string, shards: number): Promise<void> {
    try {
      await this.client.set(cancelledKey(this.prefix, audit), '1', 'EX', 24 * 3600);
      await this.client.publish(cancelChannel(this.prefix), audit);
      for (let shard = 0; shard < shards; shard++) {
        const job = await Job.fromId(this.shardQueue, shardJobId(audit, shard));
        const state = await job?.getState();
        if (state === 'waiting' || state === 'delayed' || state === 'prioritized') {
          await job?.remove().catch(() => {});
        }
      }
      await this.options.store.removePrefix(auditBlobPrefix(audit)).catch(() => {});
    } catch {
      // Redis gone: workers find the audit's blobs or flag missing; nothing more to stop here.
    }
  }

  /** Counts of the shard queue's jobs by state (tests, health). */
  shardCounts(): Promise<Record<string, number>> {
    return this.shardQueue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
  }

  async close(): Promise<void> {
    await Promise.allSettled([
      this.merger?.close(),
      this.shardEvents.close(),
      this.auditEvents.close(),
      this.shardQueue.close(),
      this.auditQueue.close(),
      this.flow.close(),
    ]);
    this.client.disconnect();
  }
}

type ShardEvent = { type: 'progress'; progress: ShardProgress } | { type: 'completed'; result: ShardResult };
