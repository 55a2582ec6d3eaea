import { type ChildProcess, spawn } from 'node:child_process';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadDataset } from '../../src/data/load.js';
import { readModelDir } from '../../src/data/model-dir.js';
import { type AutoAttackReport, autoAttack } from '../../src/engine/attacks/autoattack.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { DEFAULT_QUEUE_PREFIX, SHARD_QUEUE } from '../../src/jobs/sharding/queue.js';
import { DATA_FILE, MODEL_DIR } from '../helpers/cifar-audit.js';
import {
  type LoggedProcess,
  NO_REDIS_REASON,
  REDIS_SERVER,
  type RedisServer,
  startRedis,
  startWorker,
  stopChild,
} from '../helpers/redis.js';
import { engineReport, withoutTimings } from '../helpers/reports.js';
import { startServiceProcess, waitFor } from '../helpers/service.js';
import { auditForm } from '../helpers/uploads.js';

/**
 * Audits on BullMQ/Redis with real processes: a private redis-server per test, 2-3 `ratio worker`
 * processes, `ratio audit --queue` or `ratio serve --queue`. Every audit must end with exactly the
 * report of an uninterrupted single-process run (rows compared, timings aside), whether a worker is
 * SIGKILLed mid-shard or a stalled shard runs twice. Small audits (96 points, 1 iteration, 60
 * Square queries: 3 shards of 32) so each test takes well under a minute.
 */

if (!REDIS_SERVER) console.warn(`queue tests skipped: ${NO_REDIS_REASON}`);

const N = 96;
const SETTINGS = { norm: 'L2', eps: 1, seed: 1, iterations: 1, queries: 60 } as const;

let workDir = '';
let reference: AutoAttackReport;
let redis: RedisServer | undefined;
const processes: ChildProcess[] = [];

beforeAll(async () => {
  if (!REDIS_SERVER) return;
  workDir = await mkdtemp(path.join(tmpdir(), 'ratio-queue-'));
  const classifier = await loadModelFromFiles(await readModelDir(MODEL_DIR));
  const data = (await loadDataset(DATA_FILE)).take(N);
  const x = data.tensor();
  reference = await autoAttack(classifier, x, data.labels, SETTINGS);
  x.dispose();
  classifier.dispose();
});

afterEach(async () => {
  await Promise.all(processes.splice(0).map((child) => stopChild(child, 'SIGKILL')));
  await redis?.stop();
  redis = undefined;
});

afterAll(async () => {
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

function workers(count: number, store: string, options?: { lockMs?: number; stalledMs?: number }) {
  const started: LoggedProcess[] = [];
  for (let i = 0; i < count; i++) {
    const worker = startWorker(redis!.url, store, options);
    processes.push(worker.child);
    started.push(worker);
  }
  return started;
}

/**
 * `ratio audit --queue` on the first N CIFAR-10 test points: `done` resolves with its exit code,
 * `report()` reads the engine's report from the file it wrote.
 */
function queueAudit(
  model: string,
  store: string,
  report: string,
  n = N,
): { done: Promise<number>; report: () => Promise<AutoAttackReport> } {
  const child = spawn(
    process.execPath,
    [
      'bin/ratio.js',
      'audit',
      '--model',
      model,
      '--data',
      DATA_FILE,
      '--norm',
      SETTINGS.norm,
      '--eps',
      String(SETTINGS.eps),
      '--seed',
      String(SETTINGS.seed),
      '--iterations',
      String(SETTINGS.iterations),
      '--queries',
      String(SETTINGS.queries),
      '--n',
      String(n),
      '--queue',
      redis!.url,
      '--store',
      store,
      '--report',
      report,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  processes.push(child);
  return {
    done: new Promise((resolve) => child.once('exit', (code) => resolve(code ?? -1))),
    report: async () => engineReport(JSON.parse(await readFile(report, 'utf8'))),
  };
}

const startedLine = (line: { msg?: string }) => line.msg === 'shard started';
const finishedLines = (worker: LoggedProcess, job: string) =>
  worker.lines.filter((line) => line.msg === 'shard finished' && line.job === job);

/**
 * Redis, three workers on the store `store-<name>` (ready), and `ratio audit --queue` writing
 * `<name>.json`; resolves 300 ms after the first worker started a shard, with that worker, the
 * shard's job id and the other workers.
 */
async function auditUntilFirstShard(name: string, options?: { stalledMs?: number }) {
  redis = await startRedis();
  const store = path.join(workDir, `store-${name}`);
  const pool = workers(3, store, options);
  await Promise.all(pool.map((w) => w.line((line) => line.msg === 'worker ready')));
  const audit = queueAudit(MODEL_DIR, store, path.join(workDir, `${name}.json`));
  const worker = await Promise.race(pool.map((w) => w.line(startedLine).then(() => w)));
  const shard = (await worker.line(startedLine)).job!;
  await new Promise((resolve) => setTimeout(resolve, 300));
  return { audit, worker, shard, others: pool.filter((w) => w !== worker) };
}

async function shardCounts(): Promise<Record<string, number>> {
  const queue = new Queue(SHARD_QUEUE, {
    connection: { url: redis!.url, maxRetriesPerRequest: null },
    prefix: DEFAULT_QUEUE_PREFIX,
  });
  try {
    return await queue.getJobCounts('waiting', 'active', 'prioritized', 'delayed', 'completed', 'failed');
  } finally {
    await queue.close();
  }
}

describe.skipIf(!REDIS_SERVER)('audits on BullMQ/Redis workers', { timeout: 120_000 }, () => {
  it('a worker SIGKILLed mid-shard: the audit ends with the single-process report', async () => {
    const { audit, worker: victim, shard: killed, others: survivors } = await auditUntilFirstShard('kill');
    // The shard is active and locked (its model loads, then it computes): kill the worker now.
    expect(finishedLines(victim, killed)).toHaveLength(0);
    await stopChild(victim.child, 'SIGKILL');

    expect(await audit.done).toBe(0);
    expect(withoutTimings(await audit.report())).toEqual(withoutTimings(reference));
    // Another worker ran the killed shard again, to its end.
    expect(survivors.flatMap((w) => finishedLines(w, killed))).toHaveLength(1);
  });

  it('a stalled shard that runs twice (worker paused past its lock) is counted once', async () => {
    const {
      audit,
      worker: paused,
      shard: stalled,
      others,
    } = await auditUntilFirstShard('stall', { stalledMs: 500 });
    paused.child.kill('SIGSTOP');
    // Its lock expires; another worker takes the shard over. Then the paused one wakes up and
    // finishes the same shard too: two completions of one (audit, shard).
    await Promise.race(others.map((w) => w.line((line) => startedLine(line) && line.job === stalled)));
    paused.child.kill('SIGCONT');

    expect(await audit.done).toBe(0);
    const report = await audit.report();
    expect(report.samples).toHaveLength(N);
    expect(withoutTimings(report)).toEqual(withoutTimings(reference));
    // The paused worker did finish the shard as well (its completion is refused: lock lost) ...
    await paused.line((line) => line.msg === 'shard finished' && line.job === stalled);
    const twice = [paused, ...others].flatMap((w) => finishedLines(w, stalled));
    expect(twice).toHaveLength(2);
    // ... and the queue holds one completion per shard.
    const counts = await shardCounts();
    expect(counts.completed).toBe(3);
    expect(counts.failed).toBe(0);
  });

  it('ratio serve --queue: the same report as the embedded run, progress over SSE', async () => {
    redis = await startRedis();
    const store = path.join(workDir, 'store-serve');
    const modelsDir = path.join(workDir, 'models');
    await cp(MODEL_DIR, path.join(modelsDir, 'ratio-cifar10'), { recursive: true });
    workers(2, store);
    const service = await startService(modelsDir, store);
    const data = (await readFile(DATA_FILE)).subarray(0, N * 3073);
    const created = await fetch(`${service}/v1/audits`, {
      method: 'POST',
      body: auditForm(undefined, data, auditFields()),
    });
    expect(created.status).toBe(202);
    const { id } = (await created.json()) as { id: string };
    const events = await readEvents(`${service}/v1/audits/${id}/events`);
    const done = events.at(-1)!;
    expect(done.event).toBe('result');
    const job = done.data as { state: string; result: AutoAttackReport };
    expect(job.state).toBe('succeeded');
    expect(withoutTimings(job.result)).toEqual(withoutTimings(reference));
    // Progress aggregates the shards as they finish: monotone, within [0, N], and reaches N.
    const progress = events
      .filter((e) => e.event === 'progress')
      .map((e) => (e.data as { progress: { done: number; total: number } }).progress);
    expect(progress.length).toBeGreaterThan(0);
    for (let i = 1; i < progress.length; i++)
      expect(progress[i].done).toBeGreaterThanOrEqual(progress[i - 1].done);
    expect(progress.every((p) => p.total === N && p.done <= N)).toBe(true);
    expect(progress.at(-1)!.done).toBe(N);
  });

  it('cancel stops every shard: waiting ones removed, running ones aborted', async () => {
    redis = await startRedis();
    const store = path.join(workDir, 'store-cancel');
    const modelsDir = path.join(workDir, 'models-cancel');
    await cp(MODEL_DIR, path.join(modelsDir, 'ratio-cifar10'), { recursive: true });
    const pool = workers(2, store);
    const service = await startService(modelsDir, store);
    const data = (await readFile(DATA_FILE)).subarray(0, N * 3073);
    // A long audit: 3 shards, 2 workers, full Square budget.
    const created = await fetch(`${service}/v1/audits`, {
      method: 'POST',
      body: auditForm(undefined, data, { ...auditFields(), iterations: '20', queries: '5000' }),
    });
    const { id } = (await created.json()) as { id: string };
    await Promise.all(pool.map((w) => w.line(startedLine)));
    const cancelled = await fetch(`${service}/v1/audits/${id}`, { method: 'DELETE' });
    expect(cancelled.status).toBeLessThan(300);
    const final = await waitFor(
      'the cancelled audit',
      async () => {
        const body = (await (await fetch(`${service}/v1/audits/${id}`)).json()) as { state: string };
        return body.state === 'running' || body.state === 'queued' ? undefined : body;
      },
      60_000,
    );
    expect(final.state).toBe('cancelled');
    // Both running shards were aborted, the waiting one never ran, and the queue holds nothing.
    await Promise.all(pool.map((w) => w.line((line) => line.msg === 'shard cancelled', 30_000)));
    const counts = await waitFor(
      'an empty shard queue',
      async () => {
        const now = await shardCounts();
        return now.waiting + now.active + now.prioritized + now.delayed === 0 ? now : undefined;
      },
      60_000,
    );
    expect(counts.completed).toBe(0);
    expect(pool.flatMap((w) => w.lines.filter(startedLine))).toHaveLength(2);
  });

  it('an ONNX model reaches the workers through the store', async () => {
    redis = await startRedis();
    const store = path.join(workDir, 'store-onnx');
    workers(2, store);
    const onnx = path.resolve('test/fixtures/onnx/small-cnn/model.onnx');
    const reportFile = path.join(workDir, 'onnx.json');
    const audit = queueAudit(onnx, store, reportFile, 64);
    expect(await audit.done).toBe(0);
    const document = JSON.parse(await readFile(reportFile, 'utf8')) as { workers: string };
    expect(document.workers).toBe('queue');
    const { loadModelDir } = await import('../../src/jobs/models/load.js');
    const classifier = await loadModelDir(onnx);
    const data = (await loadDataset(DATA_FILE)).take(64);
    const x = data.tensor();
    const single = await autoAttack(classifier, x, data.labels, SETTINGS);
    x.dispose();
    classifier.dispose();
    expect(withoutTimings(await audit.report())).toEqual(withoutTimings(single));
  });
});

function auditFields(): Record<string, string> {
  return {
    model: 'ratio-cifar10',
    norm: SETTINGS.norm,
    eps: String(SETTINGS.eps),
    n: String(N),
    seed: String(SETTINGS.seed),
    iterations: String(SETTINGS.iterations),
    queries: String(SETTINGS.queries),
  };
}

/** `ratio serve --queue` on a free loopback port; resolves with its URL. */
async function startService(modelsDir: string, store: string): Promise<string> {
  const service = await startServiceProcess({
    args: [
      ...['--models', modelsDir, '--queue', redis!.url, '--store', store],
      ...['--state-dir', path.join(workDir, `state-${path.basename(store)}`)],
    ],
    env: { RATIO_COMPUTE: 'inline' },
    startTimeoutMs: 60_000,
  });
  processes.push(service.child);
  return service.url;
}

/** Reads a Server-Sent Events stream to its `done` event. */
async function readEvents(url: string): Promise<{ event: string; data: unknown }[]> {
  const response = await fetch(url);
  const text = await response.text();
  return text
    .split('\n\n')
    .filter((block) => block.trim().length > 0)
    .map((block) => {
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = block
        .split('\n')
        .filter((line) => line.startsWith('data: '))
        .map((line) => line.slice(6))
        .join('\n');
      return { event, data: JSON.parse(data) as unknown };
    });
}
