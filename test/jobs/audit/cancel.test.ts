import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayDataset } from '../../../src/data/dataset.js';
import type { AutoAttackReport } from '../../../src/engine/attacks/autoattack.js';
import { loadModelFromFiles } from '../../../src/engine/model/files.js';
import { AuditQueue } from '../../../src/jobs/audit/registry.js';
import { AuditStore } from '../../../src/jobs/audit/store.js';
import { emptyReport } from '../../helpers/reports.js';
import { tinyCifarModelFiles } from '../../helpers/uploads.js';

/**
 * Issue 26: a cancel must win in every state of an audit. A DELETE that arrived while the audit
 * was being persisted used to answer "cancelled before it started", after which the audit ran and
 * ended `succeeded`, its quota slot already given back.
 */

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-cancel-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const report = (n: number): AutoAttackReport => emptyReport(n);

/** A store whose writes of new audits wait until `release` is called. */
class SlowStore extends AuditStore {
  private gate: Promise<void>;
  release: () => void = () => {};
  constructor(dir: string) {
    super(dir);
    this.gate = new Promise((resolve) => {
      this.release = resolve;
    });
  }
  override async create(...args: Parameters<AuditStore['create']>): Promise<boolean> {
    await this.gate;
    return super.create(...args);
  }
}

async function submission() {
  const classifier = await loadModelFromFiles(await tinyCifarModelFiles());
  const dataset = new ArrayDataset({
    images: new Uint8Array(2 * 3072).fill(9),
    shape: [32, 32, 3],
    labels: Int32Array.from([0, 1]),
  });
  return {
    parameters: { model: 'tiny', norm: 'L2' as const, eps: 0.5, version: 'standard' as const, n: 2, seed: 0 },
    classifier,
    ownsClassifier: true,
    dataset,
  };
}

describe('cancellation that cannot be lost', () => {
  it('a cancel while the audit is being persisted wins: the run never starts, the job ends cancelled', async () => {
    const store = new SlowStore(dir);
    let runs = 0;
    const queue = new AuditQueue({
      store,
      run: async (_c, x) => {
        runs += 1;
        return report(x.shape[0]);
      },
    });
    const job = queue.submit(await submission());
    // The queue took the job and waits for its persistence: cancel now.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const cancelled = queue.cancel(job.id);
    expect(cancelled?.state).toBe('cancelled');
    store.release();
    const end = await queue.settled(job.id);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(runs).toBe(0);
    expect(end?.state).toBe('cancelled');
    expect(queue.get(job.id)?.state).toBe('cancelled');
  });

  it('a run that returns a report after the cancel ends cancelled, and settles only when the run stops', async () => {
    let finishRun: () => void = () => {};
    const runStopped = new Promise<void>((resolve) => {
      finishRun = resolve;
    });
    let started: () => void = () => {};
    const runStarted = new Promise<void>((resolve) => {
      started = resolve;
    });
    const queue = new AuditQueue({
      // Ignores the signal, as a long synchronous step does, then returns its report.
      run: async (_c, x) => {
        started();
        await runStopped;
        return report(x.shape[0]);
      },
    });
    const before = tf.memory().numTensors;
    const job = queue.submit(await submission());
    await runStarted;
    expect(queue.cancel(job.id)?.state).toBe('running');
    let settled = false;
    const end = queue.settled(job.id).then((j) => {
      settled = true;
      return j;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    // The quota slot (given back on `settled`) stays taken while the run still works.
    expect(settled).toBe(false);
    finishRun();
    expect((await end)?.state).toBe('cancelled');
    expect(tf.memory().numTensors).toBe(before);
  });
});
