import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import { WorkerIntake } from '../../src/jobs/audit/intake-host.js';
import { ShardPool } from '../../src/jobs/sharding/pool.js';

/**
 * Issue 26: the threads and processes that check uploads (intake threads) and run attacks (shard
 * pool workers) lower their own priority by 5 nice steps, so the event loop answering requests
 * gets the CPU first when both want it. Read from outside, as the kernel sees them: the nice value
 * of each thread of this process (/proc/self/task/N/stat), and of each worker process.
 */

const LINUX = process.platform === 'linux' && existsSync('/proc/self/task');
const BASE = getPriority(); // this thread's nice; threads and processes it starts inherit it
const LOWERED = Math.min(19, BASE + 5);

/** Nice value of every thread of this process (field 19 of /proc/self/task/N/stat). */
function threadNices(): number[] {
  return readdirSync('/proc/self/task').flatMap((tid) => {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces): the state is field 3, nice field 19.
    const nice = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16];
    return nice === undefined ? [] : [Number(nice)];
  });
}

/** Whether a thread may lower its own priority here (some sandboxes refuse setpriority). */
function mayLowerPriority(): Promise<boolean> {
  const probe = new Worker(
    `const os = require('node:os');
     let ok = false;
     try { os.setPriority(Math.min(19, os.getPriority() + 5)); ok = true; } catch {}
     require('node:worker_threads').parentPort.postMessage(ok);`,
    { eval: true },
  );
  // Resolved once the probe thread is gone: its lowered priority must not count as another's.
  return new Promise((resolve) => {
    let ok = false;
    probe.once('message', (answer: boolean) => {
      ok = answer;
      void probe.terminate();
    });
    probe.once('exit', () => resolve(ok));
  });
}

async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return condition();
}

const skipReason = !LINUX
  ? 'thread priorities are read from /proc (Linux only)'
  : BASE >= 19
    ? 'this process already runs at the lowest priority (nice 19): nothing to lower'
    : undefined;

describe.skipIf(skipReason !== undefined)(
  `worker priority (${skipReason ?? 'Linux'})`,
  { timeout: 120_000 },
  () => {
    let intake: WorkerIntake | undefined;
    let pool: ShardPool | undefined;
    afterAll(async () => {
      await intake?.close();
      await pool?.close();
    });

    it('the intake thread runs 5 nice steps below the thread that started it, and only it', async (context) => {
      if (!(await mayLowerPriority()))
        context.skip('setpriority is refused here: the thread keeps its priority');
      const before = threadNices().filter((nice) => nice === LOWERED).length;
      // A WorkerIntake starts one thread at once, ahead of the first upload.
      intake = new WorkerIntake({ maxConcurrent: 1, heapMb: 256 });
      expect(
        await until(() => threadNices().filter((nice) => nice === LOWERED).length > before, 60_000),
      ).toBe(true);
      expect(threadNices().filter((nice) => nice === LOWERED)).toHaveLength(before + 1);
      // This thread, the one answering requests in the service, keeps its priority.
      expect(getPriority()).toBe(BASE);
      await intake.close();
      intake = undefined;
      expect(
        await until(() => threadNices().filter((nice) => nice === LOWERED).length === before, 30_000),
      ).toBe(true);
    });

    it('a shard worker process runs 5 nice steps below the service', async (context) => {
      if (!(await mayLowerPriority()))
        context.skip('setpriority is refused here: the worker keeps its priority');
      pool = new ShardPool({ workers: 1 });
      // Ready: it answers a memory request (it lowered its priority before starting its backend).
      expect(await until(async () => (await pool!.memory(5_000)).length === 1, 90_000)).toBe(true);
      const [pid] = pool.pids;
      expect(getPriority(pid)).toBe(LOWERED);
      expect(getPriority()).toBe(BASE);
    });
  },
);
