/** Audits split into shards: the shard plan and merge, a pool of worker processes, and the BullMQ queue with its blob store. */
export {
  type BlobStore,
  BlobStoreError,
  defaultStoreUrl,
  FileBlobStore,
  openBlobStore,
} from './blob-store.js';
export { PoolClosedError, parseWorkerCount, ShardFailedError, ShardPool } from './pool.js';
export { parseLockDuration, parseQueueUrl, QueueUnavailableError } from './queue.js';
export { QueueAuditRunner } from './queue-runner.js';
export { QueueShardWorker } from './queue-worker.js';
export {
  auditKey,
  defaultShardCount,
  mergeShardResults,
  parseShardSpec,
  planShards,
  runShard,
  ShardError,
  type ShardedRunOptions,
  type ShardResult,
  type ShardSettings,
  sliceRows,
} from './shards.js';
