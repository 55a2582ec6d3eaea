/**
 * Audit throughput (points/s) of `ratio audit`'s runners on the shipped ratio-cifar10 and real
 * CIFAR-10 test points: the single process (the baseline, measured in the same run), then the
 * shard pool with 1, 2 and 4 worker processes. Every runner must return the single-process report
 * (timings aside); the bench fails otherwise. Worker start-up is included (a fresh pool per run).
 * Where redis-server is installed, also "2 Redis workers": a private redis-server on a random
 * loopback port, two `ratio worker` processes and `QueueAuditRunner` (BullMQ), start-up of the
 * workers included, the store a temporary directory.
 *
 *   npm run bench:scale -- [--json] [--n 64] [--iterations 100] [--queries 5000] [--workers 1,2,4]
 *                          [--redis-workers 2 | 0 to skip]
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { isDeepStrictEqual } from 'node:util';
import { loadDataset } from '../src/data/load.js';
import { readModelDir } from '../src/data/model-dir.js';
import { type AutoAttackReport, autoAttack } from '../src/engine/attacks/autoattack.js';
import { initBackend } from '../src/engine/backend/backend.js';
import { loadModelFromFiles } from '../src/engine/model/files.js';
import { defaultShardCount, FileBlobStore, QueueAuditRunner, ShardPool } from '../src/jobs/sharding/index.js';

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

const json = process.argv.includes('--json');
const n = Number(option('n', '64'));
const iterations = Number(option('iterations', '100'));
const queries = Number(option('queries', '5000'));
const workerCounts = option('workers', '1,2,4').split(',').map(Number);
const redisWorkers = Number(option('redis-workers', '2'));
const REDIS_SERVER = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => existsSync(p));
const dataFile = `${process.env.RATIO_DATA_DIR ?? '../shared/data'}/cifar10/test_batch_first1000.bin`;

const backend = await initBackend();
const classifier = await loadModelFromFiles(await readModelDir('models/ratio-cifar10'));
const data = (await loadDataset(dataFile)).take(n);
const x = data.tensor();
const settings = { norm: 'L2' as const, eps: 0.5, seed: 0, iterations, queries };

const strip = (r: AutoAttackReport) => ({
  ...r,
  seconds: 0,
  per_attack: r.per_attack.map((a) => ({ ...a, seconds: 0 })),
  samples: r.samples.map((s) => ({ ...s, seconds: 0 })),
});

const rows: {
  runner: string;
  workers: number;
  seconds: number;
  points_per_second: number;
  identical: boolean;
}[] = [];
let started = performance.now();
const baseline = await autoAttack(classifier, x, data.labels, settings);
let seconds = (performance.now() - started) / 1000;
rows.push({ runner: 'single process', workers: 0, seconds, points_per_second: n / seconds, identical: true });
if (!json) console.error(`single process: ${seconds.toFixed(1)} s`);

for (const workers of workerCounts) {
  started = performance.now();
  const pool = new ShardPool({ workers });
  const report = await pool.autoAttack(classifier, x, data.labels, settings);
  await pool.close();
  seconds = (performance.now() - started) / 1000;
  const identical = isDeepStrictEqual(strip(report), strip(baseline));
  rows.push({ runner: 'local pool', workers, seconds, points_per_second: n / seconds, identical });
  if (!json) console.error(`pool of ${workers}: ${seconds.toFixed(1)} s, identical ${identical}`);
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

const kill = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });

let longestBlockedMs = 0;
if (redisWorkers > 0 && REDIS_SERVER) {
  const port = 20_000 + Math.floor(Math.random() * 40_000);
  const redis = spawn(
    REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const storeDir = await mkdtemp(path.join(tmpdir(), 'ratio-bench-store-'));
  const workers: ChildProcess[] = [];
  try {
    await lineContaining(redis, 'Ready to accept connections');
    const queue = `redis://127.0.0.1:${port}`;
    started = performance.now();
    const threads = Math.max(1, Math.floor((await import('node:os')).availableParallelism() / redisWorkers));
    for (let i = 0; i < redisWorkers; i++) {
      const child = spawn(
        process.execPath,
        ['bin/ratio.js', 'worker', '--queue', queue, '--store', storeDir],
        {
          env: { ...process.env, RATIO_THREADS: String(threads), LOG_LEVEL: 'info' },
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
      if (!json)
        console.error(`${redisWorkers} Redis workers: ${seconds.toFixed(1)} s, identical ${identical}`);
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

const result = {
  bench: 'scale',
  model: 'ratio-cifar10',
  n,
  threat: 'L2 eps 0.5, standard',
  iterations,
  queries,
  backend: backend.name,
  cores: (await import('node:os')).availableParallelism(),
  robust_accuracy: baseline.robust_accuracy,
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
else console.table(result.rows);
process.exitCode = rows.every((r) => r.identical) ? 0 : 1;
