/**
 * Audit throughput of `ratio audit`'s runners on the shipped ratio-cifar10 and real CIFAR-10 test
 * points, L2 eps 0.5, standard. Every runner must give the single-process report (timings aside);
 * the bench fails otherwise. Three parts, each optional:
 *
 * - `--sizes 40,100,500`: the compiled CLI (`node bin/ratio.js audit`, what users run: process start,
 *   model load and worker starts included) at each n with its default worker count against
 *   `--workers 1` (one process), one after the other in this run, `--repeats` times in alternating
 *   order (the fastest of each kept).
 * - `--worker-starts 5`: a shard-pool worker's start (fork to ready, wall and CPU milliseconds) from
 *   the compiled dist/ and from the TypeScript sources through tsx, alternating.
 * - `--workers 1,2,4` (`none` to skip): the single process (in this process, the baseline) and the
 *   shard pool with 1, 2 and 4 workers (this bench runs the sources: its pool's workers start through
 *   tsx); where redis-server is installed, `--redis-workers 2` (0 to skip) `ratio worker` processes
 *   on a private redis-server through `QueueAuditRunner` (BullMQ), worker start-up included.
 *
 *   npm run bench:scale -- [--json] [--n 64] [--iterations 100] [--queries 5000] [--workers 1,2,4]
 *                          [--redis-workers 2] [--sizes 40,100,500] [--repeats 1] [--worker-starts 5]
 *
 * The CLI and worker-start parts need dist/ (`npm run build`; `npm ci` builds it).
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { loadDataset } from '../src/data/load.js';
import { readModelDir } from '../src/data/model-dir.js';
import { type AutoAttackReport, autoAttack } from '../src/engine/attacks/autoattack.js';
import { initBackend } from '../src/engine/backend/backend.js';
import { loadModelFromFiles } from '../src/engine/model/files.js';
import { defaultShardCount, FileBlobStore, QueueAuditRunner, ShardPool } from '../src/jobs/sharding/index.js';
import { workerEntry } from '../src/util/worker-entry.js';

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

const list = (text: string) => (text === '' || text === 'none' ? [] : text.split(',').map(Number));

const json = process.argv.includes('--json');
const n = Number(option('n', '64'));
const iterations = Number(option('iterations', '100'));
const queries = Number(option('queries', '5000'));
const workerCounts = list(option('workers', '1,2,4'));
const redisWorkers = Number(option('redis-workers', '2'));
const sizes = list(option('sizes', ''));
const workerStarts = Number(option('worker-starts', '0'));
const repeats = Number(option('repeats', '1'));
const REDIS_SERVER = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => existsSync(p));
const dataFile = `${process.env.RATIO_DATA_DIR ?? '../shared/data'}/cifar10/test_batch_first1000.bin`;
const MODEL = 'models/ratio-cifar10';
const log = (line: string) => {
  if (!json) console.error(line);
};

const backend = await initBackend();
const settings = { norm: 'L2' as const, eps: 0.5, seed: 0, iterations, queries };

const strip = (r: AutoAttackReport) => ({
  ...r,
  seconds: 0,
  per_attack: r.per_attack.map((a) => ({ ...a, seconds: 0 })),
  samples: r.samples.map((s) => ({ ...s, seconds: 0 })),
});

/** The compiled code's entries; the CLI and worker-start parts run them, as users do. */
function needCompiled(): void {
  if (!existsSync('dist/cli.js')) throw new Error('dist/ is not built: npm run build (npm ci builds it)');
}

/** A child's environment: the compiled code, never the sources. */
function compiledEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.RATIO_FROM_SOURCE;
  return env;
}

interface CliRow {
  n: number;
  runner: 'default' | 'one process';
  workers: number;
  seconds: number;
  identical: boolean;
}

/** `ratio audit` (compiled) at n points, default workers or `--workers 1`; wall seconds and its report. */
async function cliAudit(points: number, one: boolean, dir: string) {
  const report = path.join(dir, `report-${points}-${one ? 'one' : 'default'}.json`);
  const args = [
    'bin/ratio.js',
    'audit',
    '--model',
    MODEL,
    '--data',
    dataFile,
    '--norm',
    'L2',
    '--eps',
    '0.5',
  ];
  args.push('--n', String(points), '--iterations', String(iterations), '--queries', String(queries));
  args.push('--report', report, ...(one ? ['--workers', '1'] : []));
  const started = performance.now();
  const child = spawn(process.execPath, args, {
    env: compiledEnv({ RATIO_WORKERS: '' }),
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const seconds = (performance.now() - started) / 1000;
  if (code !== 0) throw new Error(`ratio audit --n ${points} exited with ${code}`);
  const document = JSON.parse(await readFile(report, 'utf8')) as AutoAttackReport & {
    workers: number;
    backend_threads?: number;
  };
  const { workers, backend_threads: _threads, ...result } = document;
  return { seconds, workers, result };
}

const cliRows: CliRow[] = [];
if (sizes.length > 0) {
  needCompiled();
  const dir = await mkdtemp(path.join(tmpdir(), 'ratio-bench-scale-'));
  try {
    for (const points of sizes) {
      for (let repeat = 0; repeat < repeats; repeat++) {
        // Alternating order, so a machine whose load drifts favours neither runner.
        const oneFirst = repeat % 2 === 0;
        const a = await cliAudit(points, oneFirst, dir);
        const b = await cliAudit(points, !oneFirst, dir);
        const [one, chosen] = oneFirst ? [a, b] : [b, a];
        const identical = isDeepStrictEqual(strip(chosen.result), strip(one.result));
        for (const [runner, run] of [
          ['one process', one],
          ['default', chosen],
        ] as const) {
          cliRows.push({ n: points, runner, workers: run.workers, seconds: run.seconds, identical });
        }
        log(
          `n ${points}: one process ${one.seconds.toFixed(1)} s, default (${chosen.workers} workers) ` +
            `${chosen.seconds.toFixed(1)} s, identical ${identical}`,
        );
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** CPU milliseconds a process has used (Linux /proc), or null elsewhere. */
function cpuMilliseconds(pid: number): number | null {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return null;
  }
}

/** Forks a shard-pool worker and waits for its 'ready': wall and CPU milliseconds. */
async function workerStart(entry: ReturnType<typeof workerEntry>) {
  const started = performance.now();
  const child = fork(entry.path, [], {
    execArgv: entry.execArgv,
    serialization: 'advanced',
    env: compiledEnv({ RATIO_THREADS: '1' }),
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await new Promise<void>((resolve, reject) => {
    child.on('message', (message: { type: string }) => {
      if (message.type === 'ready') resolve();
    });
    child.once('exit', (code) => reject(new Error(`the worker exited (${code}) before it was ready`)));
  });
  const wall = performance.now() - started;
  const cpu = cpuMilliseconds(child.pid!);
  child.kill();
  await new Promise((resolve) => child.once('exit', resolve));
  return { wall, cpu };
}

const starts: Record<'compiled' | 'source_tsx', { wall_ms: number[]; cpu_ms: (number | null)[] }> = {
  compiled: { wall_ms: [], cpu_ms: [] },
  source_tsx: { wall_ms: [], cpu_ms: [] },
};
if (workerStarts > 0) {
  needCompiled();
  const entries = {
    compiled: workerEntry(pathToFileURL(path.resolve('dist/jobs/sharding/pool.js')).href, 'worker'),
    source_tsx: workerEntry(pathToFileURL(path.resolve('src/jobs/sharding/pool.ts')).href, 'worker'),
  };
  for (let i = 0; i < workerStarts; i++) {
    for (const kind of ['compiled', 'source_tsx'] as const) {
      const { wall, cpu } = await workerStart(entries[kind]);
      starts[kind].wall_ms.push(Math.round(wall));
      starts[kind].cpu_ms.push(cpu);
    }
  }
  log(`worker start: ${JSON.stringify(starts)}`);
}

const rows: {
  runner: string;
  workers: number;
  seconds: number;
  points_per_second: number;
  identical: boolean;
}[] = [];
let baseline: AutoAttackReport | undefined;
let longestBlockedMs = 0;
if (workerCounts.length > 0 || redisWorkers > 0) {
  const classifier = await loadModelFromFiles(await readModelDir(MODEL));
  const data = (await loadDataset(dataFile)).take(n);
  const x = data.tensor();
  let started = performance.now();
  baseline = await autoAttack(classifier, x, data.labels, settings);
  let seconds = (performance.now() - started) / 1000;
  rows.push({
    runner: 'single process',
    workers: 0,
    seconds,
    points_per_second: n / seconds,
    identical: true,
  });
  log(`single process: ${seconds.toFixed(1)} s`);

  for (const workers of workerCounts) {
    started = performance.now();
    const pool = new ShardPool({ workers });
    const report = await pool.autoAttack(classifier, x, data.labels, settings);
    await pool.close();
    seconds = (performance.now() - started) / 1000;
    const identical = isDeepStrictEqual(strip(report), strip(baseline));
    rows.push({ runner: 'local pool', workers, seconds, points_per_second: n / seconds, identical });
    log(`pool of ${workers}: ${seconds.toFixed(1)} s, identical ${identical}`);
  }

  if (redisWorkers > 0 && REDIS_SERVER) {
    needCompiled();
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    const redis = spawn(
      REDIS_SERVER,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const storeDir = await mkdtemp(path.join(tmpdir(), 'ratio-bench-store-'));
    const workers: ChildProcess[] = [];
    try {
      await lineContaining(redis, 'Ready to accept connections');
      const queue = `redis://127.0.0.1:${port}`;
      started = performance.now();
      const threads = Math.max(1, Math.floor(availableParallelism() / redisWorkers));
      for (let i = 0; i < redisWorkers; i++) {
        const child = spawn(
          process.execPath,
          ['bin/ratio.js', 'worker', '--queue', queue, '--store', storeDir],
          {
            env: compiledEnv({ RATIO_THREADS: String(threads), LOG_LEVEL: 'info' }),
            stdio: ['ignore', 'pipe', 'inherit'],
          },
        );
        workers.push(child);
        // The longest synchronous step each shard saw (what the lock duration must exceed).
        createInterface({ input: child.stdout! }).on('line', (line) => {
          const match = /"longest_blocked_ms":(\d+)/.exec(line);
          if (match) longestBlockedMs = Math.max(longestBlockedMs, Number(match[1]));
        });
      }
      const runner = await QueueAuditRunner.start({ queue, store: new FileBlobStore(storeDir) });
      try {
        await Promise.all(workers.map((w) => lineContaining(w, 'worker ready')));
        const report = await runner.autoAttack(classifier, x, data.labels, {
          ...settings,
          shards: defaultShardCount(n, redisWorkers),
        });
        seconds = (performance.now() - started) / 1000;
        const identical = isDeepStrictEqual(strip(report), strip(baseline));
        rows.push({
          runner: 'Redis workers',
          workers: redisWorkers,
          seconds,
          points_per_second: n / seconds,
          identical,
        });
        log(`${redisWorkers} Redis workers: ${seconds.toFixed(1)} s, identical ${identical}`);
      } finally {
        await runner.close();
      }
    } finally {
      await Promise.all(workers.map(kill));
      await kill(redis);
      await rm(storeDir, { recursive: true, force: true });
    }
  } else if (redisWorkers > 0) {
    console.error('bench:scale: redis-server not installed; no Redis row');
  }
  x.dispose();
  classifier.dispose();
}

/** Resolves once the child prints a line containing `text`. */
function lineContaining(child: ChildProcess, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.includes(text)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`exited (${code}) before printing '${text}'`)));
  });
}

function kill(child: ChildProcess): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? null : sorted[Math.floor(sorted.length / 2)];
};

const result = {
  bench: 'scale',
  model: 'ratio-cifar10',
  threat: 'L2 eps 0.5, standard',
  iterations,
  queries,
  backend: backend.name,
  kernels: backend.kernels,
  cores: availableParallelism(),
  /** The compiled CLI: its default worker count against one process, per n (speedup >= 1: not slower). */
  default_vs_one_process: sizes.map((points) => {
    const seconds = (runner: CliRow['runner']) =>
      cliRows.filter((r) => r.n === points && r.runner === runner).map((r) => r.seconds);
    // The fastest of the repeats: the run the machine's other load took least from.
    const one = Math.min(...seconds('one process'));
    const chosen = Math.min(...seconds('default'));
    return {
      n: points,
      default_workers: cliRows.find((r) => r.n === points && r.runner === 'default')!.workers,
      default_seconds: Number(chosen.toFixed(2)),
      one_process_seconds: Number(one.toFixed(2)),
      speedup: Number((one / chosen).toFixed(3)),
      identical: cliRows.filter((r) => r.n === points).every((r) => r.identical),
      all_seconds: {
        default: seconds('default').map((v) => Number(v.toFixed(2))),
        one_process: seconds('one process').map((v) => Number(v.toFixed(2))),
      },
    };
  }),
  /** A shard-pool worker's start, fork to ready (medians; every start in `all`). */
  worker_start:
    workerStarts > 0
      ? Object.fromEntries(
          Object.entries(starts).map(([kind, s]) => [
            kind,
            {
              wall_ms: median(s.wall_ms),
              cpu_ms: median(s.cpu_ms.filter((v): v is number => v !== null)),
              all: s,
            },
          ]),
        )
      : null,
  n: rows.length > 0 ? n : null,
  robust_accuracy: baseline?.robust_accuracy ?? null,
  /** Longest event-loop block of a Redis worker's shard (one synchronous step); the lock must exceed it. */
  redis_longest_blocked_ms: longestBlockedMs || null,
  rows: rows.map((r) => ({
    ...r,
    seconds: Number(r.seconds.toFixed(2)),
    points_per_second: Number(r.points_per_second.toFixed(3)),
    speedup: Number((rows[0].seconds / r.seconds).toFixed(2)),
  })),
};
if (json) console.log(JSON.stringify(result, null, 2));
else {
  if (result.default_vs_one_process.length > 0) console.table(result.default_vs_one_process);
  if (result.rows.length > 0) console.table(result.rows);
}
process.exitCode = rows.every((r) => r.identical) && cliRows.every((r) => r.identical) ? 0 : 1;
