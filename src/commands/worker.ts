import { commandOptions, readOptions, UsageError } from './args.js';
import { type CommandModule, runCommand } from './command.js';

/**
 * `ratio worker --queue redis://...`: runs audit shards from the BullMQ queue that `ratio audit
 * --queue` and `ratio serve --queue` fill, one at a time, until SIGTERM / SIGINT (it finishes its
 * shard first; a second signal stops at once, and the shard goes to another worker).
 */

const HELP = `usage: ratio worker --queue <redis://host:port> [options]

  --queue <url>           the Redis of the audit queue (default: env RATIO_QUEUE_URL)
  --store <url>           where model files and points are staged: a directory, file:///dir, or
                          s3://bucket/prefix (default: env RATIO_STORE_URL, else the URL each audit names)
  --lock-duration <ms>    lock of a running shard (default: env RATIO_QUEUE_LOCK_MS, else 300000); must
                          exceed the longest synchronous attack step, or busy shards are retried elsewhere;
                          a killed worker's shard is retried after it (plus --stalled-interval)
  --stalled-interval <ms> how often to look for shards of dead workers (default 30000)
  --max-stalled <n>       lost locks a shard survives before its audit fails (default 2)

environment: RATIO_BACKEND, RATIO_THREADS (tfjs threads; one worker per core: RATIO_THREADS=1).
Logs one JSON line per shard started, finished, cancelled or failed.
`;

interface WorkerArguments {
  queue: string;
  store?: string;
  lockDurationMs: number;
  stalledIntervalMs: number;
  maxStalledCount: number;
}

async function parseWorkerArguments(argv: string[]): Promise<WorkerArguments | 'help'> {
  const options = readOptions(
    argv,
    commandOptions(['queue', 'store', 'lock-duration', 'stalled-interval', 'max-stalled']),
  );
  if (options.values.help) return 'help';
  const { parseLockDuration, parseQueueUrl, QueueUnavailableError } = await import(
    '../jobs/sharding/index.js'
  );
  const queue = options.text('queue') ?? process.env.RATIO_QUEUE_URL;
  if (!queue) throw new UsageError('--queue (or RATIO_QUEUE_URL) is required');
  try {
    parseQueueUrl(queue);
  } catch (error) {
    if (error instanceof QueueUnavailableError) throw new UsageError(`--queue: ${error.message}`);
    throw error;
  }
  const duration = (name: string, parse: () => number) => {
    try {
      return parse();
    } catch (error) {
      throw new UsageError(`--${name}: ${(error as Error).message}`);
    }
  };
  const lockDurationMs = duration('lock-duration (or RATIO_QUEUE_LOCK_MS)', () =>
    parseLockDuration(options.text('lock-duration') ?? process.env.RATIO_QUEUE_LOCK_MS),
  );
  const stalledIntervalMs = duration('stalled-interval', () =>
    parseLockDuration(options.text('stalled-interval'), 30_000, 100),
  );
  return {
    queue,
    store: options.text('store') ?? (process.env.RATIO_STORE_URL || undefined),
    lockDurationMs,
    stalledIntervalMs,
    maxStalledCount: options.integer('max-stalled', 2, 1),
  };
}

async function work(args: WorkerArguments): Promise<number> {
  const { initBackend } = await import('../jobs/runtime.js');
  const { QueueShardWorker, openBlobStore, BlobStoreError } = await import('../jobs/sharding/index.js');
  const pino = (await import('pino')).default;
  const logger = pino({ level: process.env.LOG_LEVEL ?? 'info' });
  let store: ReturnType<typeof openBlobStore> | undefined;
  try {
    store = args.store ? openBlobStore(args.store) : undefined;
  } catch (error) {
    if (error instanceof BlobStoreError) throw new UsageError(`--store: ${error.message}`);
    throw error;
  }
  const backend = await initBackend();
  const worker = await QueueShardWorker.start({
    queue: args.queue,
    store,
    lockDurationMs: args.lockDurationMs,
    stalledIntervalMs: args.stalledIntervalMs,
    maxStalledCount: args.maxStalledCount,
    log: (msg, fields) => logger.info(fields, msg),
  });
  logger.info(
    { queue: args.queue, store: store?.url ?? null, backend: backend.name, pid: process.pid },
    'worker ready',
  );
  const closed = await new Promise<boolean>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) process.exit(130);
      stopping = true;
      logger.info('worker stopping after its shard');
      // Handled: left unhandled, a failed close would be rethrown by tfjs-wasm's runtime.
      worker.close().then(
        () => resolve(true),
        (error: unknown) => {
          logger.error(
            { err: error instanceof Error ? error.message : String(error) },
            'worker close failed',
          );
          resolve(false);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  logger.info({ completed: worker.completed }, 'worker stopped');
  return closed ? 0 : 1;
}

const command: CommandModule = {
  summary: 'run audit shards from a BullMQ/Redis queue (ratio audit|serve --queue)',
  run(argv) {
    return runCommand({
      name: 'worker',
      help: HELP,
      options: {},
      parse: () => parseWorkerArguments(argv),
      execute: work,
    });
  },
};

export default command;
export const { summary, run } = command;
