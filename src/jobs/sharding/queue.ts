import { createHash, randomUUID } from 'node:crypto';
import type { ModelFiles } from '../../data/model-dir.js';
import type { AutoAttackReport } from '../../engine/attacks/autoattack.js';
import type { BlobStore } from './blob-store.js';
import type { ShardRange, ShardResult, ShardSettings } from './shards.js';
import { mergeShardResults, ShardError } from './shards.js';

/**
 * What the BullMQ side of audits agrees on, enqueuer (`QueueAuditRunner`, queue-runner.ts)
 * and workers (`QueueShardWorker`, queue-worker.ts) alike: queue names, job ids, job data,
 * where staged blobs live, the lock settings, and the pure merge a parent job runs.
 *
 * An audit is one flow: a parent job `<audit>` in the `audits` queue with one child `<audit>.<i>`
 * per shard in the `audit-shards` queue. Job ids are the (audit, shard) key: BullMQ stores a child's
 * result in its parent under the child's key, so a stalled shard that runs again replaces its
 * result, never adds one. The parent runs once every child has finished and merges their rows.
 */

export const SHARD_QUEUE = 'audit-shards';
export const AUDIT_QUEUE = 'audits';
/** Redis key prefix of the queues (BullMQ's `prefix`) and of the cancel channel. */
export const DEFAULT_QUEUE_PREFIX = 'ratio';

/**
 * A worker runs a shard on its event loop: BullMQ renews a shard's lock on a timer, which cannot
 * fire during a synchronous engine step (one attack iteration on a batch of up to 250 points). The
 * lock must outlive the longest such step, or a busy worker's shard is taken for stalled and run a
 * second time elsewhere (harmless for the report, wasted work). Workers log each shard's longest
 * step (`longest_blocked_ms`; docs/benchmarks/scale.md has it for ratio-cifar10); 5 minutes leaves a
 * wide margin. A killed worker's shard waits up to this long (plus the stalled interval) before
 * another worker takes it over.
 */
export const DEFAULT_LOCK_DURATION_MS = 300_000;
/** How often workers look for shards whose lock expired (BullMQ's default). */
export const DEFAULT_STALLED_INTERVAL_MS = 30_000;
/** Lost locks a shard survives before the audit fails (a shard survives two worker deaths). */
export const DEFAULT_MAX_STALLED = 2;

/** A queue URL that is not redis(s)://, or a Redis that cannot be reached. */
export class QueueUnavailableError extends Error {
  override readonly name = 'QueueUnavailableError';
}

/** Checks a queue URL: `redis://[user:pass@]host[:port][/db]` or `rediss://` (TLS). */
export function parseQueueUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new QueueUnavailableError(`not a queue URL: '${url}' (redis://host:port)`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new QueueUnavailableError(`the queue URL must be redis:// or rediss://, got '${url}'`);
  }
  return url;
}

/** Lock settings of a worker; from `ratio worker` options or RATIO_QUEUE_LOCK_MS. */
export interface QueueLockOptions {
  lockDurationMs?: number;
  stalledIntervalMs?: number;
  maxStalledCount?: number;
}

/** Parses a duration in ms (an integer >= minimum); `undefined` or '' keeps the default. */
export function parseLockDuration(
  text: string | undefined,
  fallback = DEFAULT_LOCK_DURATION_MS,
  minimum = 1000,
): number {
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!(Number.isInteger(value) && value >= minimum)) {
    throw new RangeError(`a duration in ms must be an integer >= ${minimum}, got '${text}'`);
  }
  return value;
}

/** The data of one shard job: what a worker needs besides the blobs in the store. */
export interface ShardJobData {
  audit: string;
  /** The store the enqueuer staged into (a worker's own `--store` URL wins: other mount points). */
  store: string;
  /**
   * Content address of the model's files (a worker keeps a model loaded by it), their names, and
   * where they are staged: under the audit (`dir`), removed with it; older jobs: `models/<key>`.
   */
  model: { key: string; files: string[]; dir?: string };
  range: ShardRange;
  shards: number;
  /** Points of the whole audit. */
  n: number;
  /** Shape of one point (h, w, c). */
  shape: [number, number, number];
  /** The shard's labels. */
  y: number[];
  /** For the shard holding point 0: labels of the audit's first points (sanity checks). */
  probe?: { y: number[] };
  settings: ShardSettings;
}

export interface AuditJobData {
  audit: string;
  shards: number;
  n: number;
}

/** Progress a worker reports for a shard (BullMQ job progress). */
export interface ShardProgress {
  shard: number;
  attack: string;
  done: number;
  total: number;
}

export const shardJobId = (audit: string, shard: number) => `${audit}.${shard}`;
export const cancelChannel = (prefix: string) => `${prefix}:audit-cancel`;
export const cancelledKey = (prefix: string, audit: string) => `${prefix}:audit-cancelled:${audit}`;

/**
 * Store keys: models by content (what jobs staged before models moved under their audit), a model
 * staged with its audit, points per audit and shard. Everything under `audits/<id>` goes when the
 * audit ends.
 */
export const modelBlobKey = (model: string, file: string) => `models/${model}/${file}`;
export const auditModelDir = (audit: string) => `audits/${audit}/model`;
export const auditBlobPrefix = (audit: string) => `audits/${audit}`;
export const shardPointsKey = (audit: string, shard: number) => `audits/${audit}/points-${shard}.f32`;
export const probePointsKey = (audit: string) => `audits/${audit}/probe.f32`;

/** Content address of model files (names and bytes). */
export function modelKey(files: ModelFiles): string {
  const hash = createHash('sha256');
  for (const name of [...files.keys()].sort()) hash.update(name).update('\0').update(files.get(name)!);
  return hash.digest('hex').slice(0, 32);
}

/**
 * Writes the model files for one audit under `dir` (its own copy, removed with the audit's blobs;
 * rewriting is idempotent), keyed by their content address.
 */
export async function stageModel(
  store: BlobStore,
  files: ModelFiles,
  dir: string,
): Promise<{ key: string; files: string[]; dir: string }> {
  const key = modelKey(files);
  const names = [...files.keys()].sort();
  for (const name of names) {
    if (name.includes('/')) throw new ShardError(`model file '${name}' lies in a folder; not supported`);
    await store.put(`${dir}/${name}`, files.get(name)!);
  }
  return { key, files: names, dir };
}

export async function fetchModel(
  store: BlobStore,
  model: { key: string; files: string[]; dir?: string },
): Promise<ModelFiles> {
  const files: ModelFiles = new Map();
  for (const name of model.files) {
    files.set(name, await store.get(model.dir ? `${model.dir}/${name}` : modelBlobKey(model.key, name)));
  }
  if (modelKey(files) !== model.key) {
    throw new ShardError(`the store's model ${model.key} does not match its content address`);
  }
  return files;
}

/** Float32 rows as bytes (a copy, little-endian as every supported platform). */
export function floatBytes(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
}

export function bytesToFloats(bytes: Uint8Array, expected: number, key: string): Float32Array {
  if (bytes.byteLength !== expected * 4) {
    throw new ShardError(`'${key}' holds ${bytes.byteLength} bytes, expected ${expected * 4}`);
  }
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/**
 * The results of an audit's shards, at most one per shard: a shard reported again (a stalled shard
 * that ran twice, a repeated completion event) replaces its earlier result and counts once.
 */
export class ShardTally {
  private readonly results = new Map<number, ShardResult>();
  /** Points done in unfinished shards, by shard (a share of their current attack, monotone). */
  private readonly partial = new Map<number, number>();

  constructor(
    readonly audit: string,
    private readonly ranges: readonly ShardRange[],
  ) {}

  /** Records a shard's result; false when that shard was already counted. */
  finish(result: ShardResult): boolean {
    if (result.audit !== this.audit)
      throw new ShardError(`a result of audit ${result.audit}, not ${this.audit}`);
    const first = !this.results.has(result.shard);
    this.results.set(result.shard, result);
    this.partial.delete(result.shard);
    return first;
  }

  /** A running shard's progress through its current attack (coarse across attacks, as the pool's). */
  progress(shard: number, share: number): void {
    const range = this.ranges.find((r) => r.shard === shard);
    if (!range || this.results.has(shard)) return;
    const points = 0.5 * Math.min(1, Math.max(0, share)) * (range.end - range.start);
    this.partial.set(shard, Math.max(this.partial.get(shard) ?? 0, points));
  }

  get finishedShards(): number {
    return this.results.size;
  }

  /** Points finished (whole shards) plus the running shards' share, never above the total. */
  get done(): number {
    let points = 0;
    for (const result of this.results.values()) points += result.end - result.start;
    for (const value of this.partial.values()) points += value;
    const total = this.ranges.reduce((sum, r) => sum + (r.end - r.start), 0);
    return Math.min(total, Math.floor(points));
  }

  get all(): ShardResult[] {
    return [...this.results.values()];
  }
}

/**
 * The parent job's work: the report of an audit from its children's results (BullMQ's children
 * values, keyed by child job). Each shard must appear exactly once; the report is the pure merge.
 */
export function mergeChildrenValues(
  audit: string,
  values: Record<string, ShardResult>,
): Omit<AutoAttackReport, 'adversarial'> {
  const tally = new ShardTally(audit, []);
  for (const result of Object.values(values)) tally.finish(result);
  const results = tally.all;
  const seconds = results.reduce((longest, r) => Math.max(longest, r.part.seconds), 0);
  const { adversarial: _none, ...report } = mergeShardResults(results, { seconds });
  return report;
}

/** A fresh audit id for the queue (BullMQ job ids must not look like integers or hold ':'). */
export function newQueueAuditId(): string {
  return randomUUID();
}
