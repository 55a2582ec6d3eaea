import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  AUTOATTACK_VERSIONS,
  type AuditParameters,
  DEFAULT_AUDIT_POINTS,
  DEFAULT_BATCH_SIZE,
  DEFAULT_ITERATIONS,
  DEFAULT_QUERIES,
  DEFAULT_SEED,
  DEFAULT_VERSION,
  MIN_POINTS_PER_WORKER,
  NORMS,
} from '../jobs/audit/parameters.js';
import type { ModelLimits } from '../jobs/models/index.js';
import { commandOptions, localLimitsOption, readOptions, UsageError } from './args.js';
import { type CommandModule, runCommand } from './command.js';

/**
 * `ratio audit`: AutoAttack robust accuracy of a model directory on a labelled data file, as a CI
 * gate: exit 0 when robust accuracy >= --min-robust-accuracy, 1 under it, 2 on bad input, 3 when
 * the infrastructure failed (a shard worker that keeps dying). The audit runs as shards on a pool of
 * worker processes (one per core by default); `--shard i/N` runs one shard for `ratio audit merge`.
 */

const HELP = `usage: ratio audit --model <dir> --data <path> --norm L2|Linf --eps <number> [options]

  --model <dir|file.onnx>       model directory (model.json + shards, or model.onnx; card.json),
                                or a PyTorch ONNX export
  --data <path>                 labelled images: CIFAR-10/100 binary, idx(.gz), .npy, image folder, zip
  --norm L2|Linf                threat model
  --eps <number>                perturbation budget (> 0)
  --n <int>                     audit the first n points (default ${DEFAULT_AUDIT_POINTS}, or all if fewer);
                                of an image folder or zip given by path: n of one seeded permutation
  --version ${AUTOATTACK_VERSIONS.join('|')}  AutoAttack version (default ${DEFAULT_VERSION})
  --seed <int>                  seed (default ${DEFAULT_SEED}); the same seed on one backend gives the same report
  --batch-size <int>            points per attack call (default ${DEFAULT_BATCH_SIZE})
  --restarts <int>              restarts of the white-box attacks (default 1; plus: 5)
  --report <file>               write the JSON report there
  --min-robust-accuracy <p>     exit 1 when robust accuracy is below p (in [0,1])
  --junit <file>                write a JUnit XML summary (the gate as a test case) there
  --markdown <file>             write a Markdown summary there (e.g. $GITHUB_STEP_SUMMARY)
  --workers <int>               worker processes; 1 = in process (default RATIO_WORKERS, else one process
                                unless each of up to one per core gets ${MIN_POINTS_PER_WORKER}+ points of work)
  --shard <i>/<N>               run only shard i of N and write its rows to --report (merge them with
                                'ratio audit merge'); with --shards <N>, i is JOB_COMPLETION_INDEX (k8s)
  --queue <redis://host:port>   run the shards on 'ratio worker' processes through BullMQ/Redis
                                (default: env RATIO_QUEUE_URL; unset: the local worker pool)
  --store <url>                 where the queue's workers read the model and points: a directory,
                                file:///dir or s3://bucket/prefix (default: env RATIO_STORE_URL,
                                else <state dir>/store, which only reaches workers on this machine)
  --iterations <int>            APGD/FAB iterations per run (default ${DEFAULT_ITERATIONS}; lower only for smoke tests)
  --queries <int>               Square queries per point (default ${DEFAULT_QUERIES}; lower only for smoke tests)
  --server <url>                run the audit on a running 'ratio serve' (upload, follow its progress,
                                same report, gate and exit codes); --workers and --shard do not apply
  --api-key <key>               the service's API key (default RATIO_API_KEY), sent as a bearer token
  --max-model-bytes <n>         largest model read (its weights, or the .onnx with its external data;
                                e.g. 4e9; default RATIO_MAX_MODEL_BYTES, else a third of this machine's memory)

       ratio audit merge <shard.json>... [--report <file>] [--min-robust-accuracy <p>]

Exit codes: 0 pass, 1 under --min-robust-accuracy, 2 bad input, 3 service or infrastructure error.
Every shard layout and worker count gives the same report (timings aside).
`;

/** The command-line option each input of the audit use case comes from. */
const OPTION_OF_FIELD = { model: '--model', dataset: '--data' };

interface AuditArguments {
  model: string;
  data: string;
  /** The audit's parameters but the model's name (the use case takes it from the model). */
  parameters: Omit<AuditParameters, 'model'>;
  report?: string;
  minRobustAccuracy?: number;
  /** Worker processes as given (--workers, RATIO_WORKERS); absent: chosen from the audit's size. */
  workers?: number;
  junit?: string;
  markdown?: string;
  shard?: { shard: number; shards: number };
  server?: string;
  apiKey?: string;
  queue?: string;
  store?: string;
  /** Limits of the local model (--max-model-bytes, RATIO_MAX_MODEL_*, the machine's memory). */
  limits: ModelLimits;
}

/** `--shard i/N`, or `--shards N` with the shard index from JOB_COMPLETION_INDEX (k8s Indexed Job). */
async function shardOption(shard: string | undefined, shards: string | undefined) {
  if (shard === undefined && shards === undefined) return undefined;
  if (shard !== undefined && shards !== undefined)
    throw new UsageError('give --shard i/N or --shards N, not both');
  const { parseShardSpec, ShardError } = await import('../jobs/sharding/index.js');
  const index = process.env.JOB_COMPLETION_INDEX;
  if (shard === undefined && index === undefined) {
    throw new UsageError('--shards N takes the shard index from JOB_COMPLETION_INDEX, which is not set');
  }
  try {
    return parseShardSpec(shard ?? `${index}/${shards}`);
  } catch (error) {
    if (error instanceof ShardError) throw new UsageError(`--shard: ${error.message}`);
    throw error;
  }
}

async function parseAuditArguments(argv: string[]): Promise<AuditArguments | 'help'> {
  const options = readOptions(
    argv,
    commandOptions([
      'model',
      'data',
      'norm',
      'eps',
      'n',
      'version',
      'seed',
      'batch-size',
      'restarts',
      'report',
      'min-robust-accuracy',
      'workers',
      'junit',
      'markdown',
      'shard',
      'shards',
      'iterations',
      'queries',
      'server',
      'api-key',
      'queue',
      'store',
      'max-model-bytes',
    ]),
  );
  if (options.values.help) return 'help';
  options.require('model', 'data', 'norm', 'eps');
  const shard = await shardOption(options.text('shard'), options.text('shards'));
  if (shard && options.text('report') === undefined) throw new UsageError('--shard needs --report <file>');
  const server = options.text('server');
  if (server !== undefined) {
    if (shard) throw new UsageError('--shard runs locally; a --server audit is one job on the service');
    if (!/^https?:\/\/[^/]/.test(server))
      throw new UsageError(`--server must be an http(s) URL, got '${server}'`);
  }
  const { parseWorkerCount } = await import('../jobs/sharding/index.js');
  let workers: number | undefined;
  try {
    const given = options.text('workers') ?? (process.env.RATIO_WORKERS || undefined);
    workers = given === undefined ? undefined : parseWorkerCount(given);
  } catch (error) {
    throw new UsageError(`--workers (or RATIO_WORKERS): ${(error as Error).message}`);
  }
  const optionalInteger = (name: string) =>
    options.text(name) === undefined ? undefined : options.integer(name, 1, 1);
  const threshold = options.text('min-robust-accuracy');
  const minRobustAccuracy = threshold === undefined ? undefined : Number(threshold);
  if (minRobustAccuracy !== undefined && !(minRobustAccuracy >= 0 && minRobustAccuracy <= 1)) {
    throw new UsageError(`--min-robust-accuracy must lie in [0, 1], got '${threshold}'`);
  }
  const parameters: AuditArguments['parameters'] = {
    norm: options.choice('norm', NORMS, 'L2'),
    eps: options.positive('eps', 0),
    n: options.integer('n', DEFAULT_AUDIT_POINTS, 1),
    version: options.choice('version', AUTOATTACK_VERSIONS, DEFAULT_VERSION),
    seed: options.integer('seed', DEFAULT_SEED, 0),
  };
  // Only what was given: an absent budget is the engine's default, wherever the audit runs.
  for (const [key, flag] of [
    ['batchSize', 'batch-size'],
    ['restarts', 'restarts'],
    ['iterations', 'iterations'],
    ['queries', 'queries'],
  ] as const) {
    const value = optionalInteger(flag);
    if (value !== undefined) parameters[key] = value;
  }
  return {
    model: options.text('model')!,
    data: options.text('data')!,
    parameters,
    report: options.text('report'),
    minRobustAccuracy,
    workers,
    junit: options.text('junit'),
    markdown: options.text('markdown'),
    shard,
    server,
    apiKey: options.text('api-key') ?? (process.env.RATIO_API_KEY || undefined),
    limits: await localLimitsOption(options.text('max-model-bytes')),
    ...(await queueOptions(options.text('queue'), options.text('store'))),
  };
}

/** `--queue` / RATIO_QUEUE_URL and `--store` / RATIO_STORE_URL, checked (not connected yet). */
async function queueOptions(
  queue = process.env.RATIO_QUEUE_URL || undefined,
  store = process.env.RATIO_STORE_URL || undefined,
): Promise<{ queue?: string; store?: string }> {
  if (queue === undefined) return {};
  const { parseQueueUrl, openBlobStore, defaultStoreUrl } = await import('../jobs/sharding/index.js');
  try {
    parseQueueUrl(queue);
  } catch (error) {
    throw new UsageError(`--queue: ${(error as Error).message}`);
  }
  const storeUrl = store ?? defaultStoreUrl();
  try {
    openBlobStore(storeUrl);
  } catch (error) {
    throw new UsageError(`--store: ${(error as Error).message}`);
  }
  return { queue, store: storeUrl };
}

async function audit(args: AuditArguments): Promise<number> {
  const { initBackend } = await import('../jobs/runtime.js');
  const { prepareAudit, runAudit } = await import('../jobs/audit/index.js');
  const { PhaseProgress } = await import('./progress.js');
  const backend = await initBackend();

  const prepared = await prepareAudit({
    model: { kind: 'directory', dir: args.model, limits: args.limits },
    data: { kind: 'path', path: args.data },
    parameters: args.parameters,
  });
  const controller = new AbortController();
  const interrupt = () => controller.abort();
  process.once('SIGINT', interrupt);
  const progress = new PhaseProgress(process.stderr);
  let attack = '';
  const onProgress = (p: { attack: string; done: number; total: number }) => {
    if (p.attack !== attack) {
      if (attack) progress.done();
      attack = p.attack;
      progress.start(attack);
    }
    progress.update(p.done, p.total);
  };
  const { printAuditReport, gateExitCode, writeSummaries } = await import('./audit-output.js');
  try {
    if (args.shard) {
      const { runAuditShard, shardDocument } = await import('../jobs/audit/index.js');
      const result = await runAuditShard(prepared, args.shard, {
        signal: controller.signal,
        onProgress,
      });
      if (attack) progress.done();
      const model = { dir: path.resolve(args.model), name: prepared.classifier.card.name };
      const document = shardDocument(result, { model, data: { path: path.resolve(args.data) } });
      await writeFile(args.report!, `${JSON.stringify(document, null, 2)}\n`);
      console.log(
        `shard ${result.shard}/${result.shards}: points [${result.start}, ${result.end}) of ${result.n}, ` +
          `audit ${result.audit}, ${result.part.seconds.toFixed(1)} s; merge with 'ratio audit merge'`,
      );
      return 0;
    }
    const { ShardPool } = await import('../jobs/sharding/index.js');
    const { auditLayout } = await import('../jobs/audit/index.js');
    const layout = auditLayout(
      Math.min(args.parameters.n, prepared.dataset.size),
      args.parameters,
      prepared.classifier.numClasses,
      { workers: args.workers },
    );
    // One shard (a small audit) or one worker: in process, the same report without starting workers.
    const pool =
      !args.queue && layout.workers > 1 && layout.shards > 1
        ? new ShardPool({ workers: layout.workers })
        : undefined;
    const queue = args.queue ? await startQueueRunner(args.queue, args.store!) : undefined;
    let report: Awaited<ReturnType<typeof runAudit>>;
    try {
      report = await runAudit(prepared, {
        signal: controller.signal,
        onProgress,
        run: queue
          ? queue.autoAttack.bind(queue)
          : pool
            ? (classifier, x, y, options) =>
                pool.autoAttack(classifier, x, y, { ...options, shards: layout.shards })
            : undefined,
      });
    } finally {
      await pool?.close();
      await queue?.close();
    }
    if (attack) progress.done();
    const document = {
      model: { dir: path.resolve(args.model), name: prepared.classifier.card.name },
      data: { path: path.resolve(args.data) },
      backend_threads: backend.threads,
      tfjs: backend.version,
      workers: args.queue ? 'queue' : (pool?.size ?? 1),
      min_robust_accuracy: args.minRobustAccuracy ?? null,
      ...report,
    };
    if (args.report) await writeFile(args.report, `${JSON.stringify(document, null, 2)}\n`);
    printAuditReport(report);
    await writeSummaries(report, args, prepared.classifier.card.name);
    return gateExitCode(report, args.minRobustAccuracy);
  } finally {
    process.removeListener('SIGINT', interrupt);
    prepared.classifier.dispose();
  }
}

async function startQueueRunner(queue: string, store: string) {
  const { QueueAuditRunner, openBlobStore } = await import('../jobs/sharding/index.js');
  return QueueAuditRunner.start({ queue, store: openBlobStore(store) });
}

/** Exit 3 when the infrastructure failed (a shard whose worker kept dying, a closed pool, no Redis). */
async function auditOrInfrastructureError(args: AuditArguments): Promise<number> {
  if (args.server !== undefined) {
    const { remoteAudit } = await import('./audit-remote.js');
    return remoteAudit({ ...args, server: args.server });
  }
  try {
    return await audit(args);
  } catch (error) {
    const { ShardFailedError, PoolClosedError, QueueUnavailableError } = await import(
      '../jobs/sharding/index.js'
    );
    if (
      error instanceof ShardFailedError ||
      error instanceof PoolClosedError ||
      error instanceof QueueUnavailableError
    ) {
      console.error(`ratio audit: infrastructure error: ${error.message}`);
      return 3;
    }
    throw error;
  }
}

const command: CommandModule = {
  summary: 'AutoAttack robust accuracy of a model on labelled data; exit 1 under --min-robust-accuracy',
  async run(argv) {
    if (argv[0] === 'merge') return (await import('./audit-merge.js')).run(argv.slice(1));
    return runCommand({
      name: 'audit',
      help: HELP,
      options: OPTION_OF_FIELD,
      parse: () => parseAuditArguments(argv),
      execute: auditOrInfrastructureError,
    });
  },
};

export default command;
export const { summary, run } = command;
