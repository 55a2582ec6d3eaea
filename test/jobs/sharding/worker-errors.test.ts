import { type ChildProcess, fork } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import type { WorkerMessage } from '../../../src/jobs/sharding/protocol.js';
import { workerEntry } from '../../../src/util/worker-entry.js';

/**
 * A shard worker runs each task on a voided promise: a task whose very first step throws (here its
 * points do not fill their declared shape) must be answered as an error, not reject unhandled,
 * which tfjs-wasm's runtime rethrows and which would end the worker with the task unanswered.
 */

const entry = workerEntry(new URL('../../../src/jobs/sharding/pool.ts', import.meta.url).href, 'worker');
let child: ChildProcess | undefined;

afterAll(() => {
  child?.kill('SIGKILL');
});

function next(worker: ChildProcess, type: WorkerMessage['type']): Promise<WorkerMessage> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: WorkerMessage) => {
      if (message.type !== type) return;
      worker.off('message', onMessage);
      resolve(message);
    };
    worker.on('message', onMessage);
    worker.once('exit', (code) => reject(new Error(`the worker exited (code ${code}) before '${type}'`)));
  });
}

describe('a shard worker answers a task that fails at once', { timeout: 120_000 }, () => {
  it('with an error for that task, and stays up', async () => {
    child = fork(entry.path, [], {
      execArgv: entry.execArgv,
      serialization: 'advanced',
      env: { ...process.env, RATIO_THREADS: '1' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    await next(child, 'ready');
    const failed = next(child, 'error');
    child.send({
      type: 'shard',
      task: 7,
      modelKey: 'm',
      range: { shard: 0, start: 0, end: 1 },
      settings: {},
      x: new Float32Array(5), // [1, 2, 2, 1] needs 4
      shape: [1, 2, 2, 1],
      y: Int32Array.from([0]),
    });
    expect(await failed).toMatchObject({ type: 'error', task: 7 });
    // Still serving: it answers a memory request, with no tensor left behind.
    const memory = next(child, 'memory');
    child.send({ type: 'memory', request: 1 });
    expect(await memory).toMatchObject({ type: 'memory', request: 1, tensors: 0 });
    expect(child.exitCode).toBeNull();
  });
});
