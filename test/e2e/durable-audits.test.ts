import type { ChildProcess } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ArrayDataset } from '../../src/data/dataset.js';
import { loadDataset } from '../../src/data/load.js';
import { readModelDir } from '../../src/data/model-dir.js';
import { autoAttack } from '../../src/engine/attacks/autoattack.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { DATA_FILE, MODEL_DIR } from '../helpers/cifar-audit.js';
import { withoutTimings } from '../helpers/reports.js';
import { type ServiceProcess, startServiceProcess, stopServiceProcess, waitFor } from '../helpers/service.js';
import { auditForm } from '../helpers/uploads.js';

/**
 * kill -9 the real service (`ratio serve`, a child process) mid-audit, start it again on the same
 * state directory: the audit is still listed, resumes from its finished shard and ends with the
 * report of an uninterrupted run.
 */

let workDir = '';
let stateDir = '';
let modelsDir = '';
const children: ChildProcess[] = [];

beforeAll(async () => {
  workDir = await mkdtemp(path.join(tmpdir(), 'ratio-durable-'));
  stateDir = path.join(workDir, 'state');
  modelsDir = path.join(workDir, 'models');
  await cp(MODEL_DIR, path.join(modelsDir, 'ratio-cifar10'), { recursive: true });
});

afterAll(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await rm(workDir, { recursive: true, force: true });
});

/** `ratio serve` on the test's state and models directories, one audit worker process. */
async function startService(): Promise<ServiceProcess> {
  const service = await startServiceProcess({
    args: ['--models', modelsDir, '--workers', '1'],
    env: { RATIO_STATE_DIR: stateDir },
  });
  children.push(service.child);
  return service;
}

const fields = {
  model: 'ratio-cifar10',
  norm: 'L2',
  eps: '1',
  n: '64',
  seed: '1',
  iterations: '1',
  queries: '60',
};

describe('durable audits', { timeout: 400_000 }, () => {
  it('survive kill -9 of the service and end with the uninterrupted report', async () => {
    const data = (await readFile(DATA_FILE)).subarray(0, 64 * 3073);
    const first = await startService();
    const created = await fetch(`${first.url}/v1/audits`, {
      method: 'POST',
      body: auditForm(undefined, data, fields),
    });
    expect(created.status).toBe(202);
    const { id } = (await created.json()) as { id: string };
    const shardsDir = path.join(stateDir, 'audits', id, 'shards');
    // 64 points on 1 worker: 2 shards, one after the other. Kill once the first is on disk.
    const firstShard = await waitFor('the first shard', async () => {
      const files = (await readdir(shardsDir).catch(() => [])).filter((f) => f.endsWith('.json'));
      return files.length >= 1 ? files[0] : undefined;
    });
    const job = (await (await fetch(`${first.url}/v1/audits/${id}`)).json()) as { state: string };
    expect(job.state).toBe('running');
    const shardBytes = await readFile(path.join(shardsDir, firstShard));
    await stopServiceProcess(first, 'SIGKILL');

    const second = await startService();
    const shardObservations: boolean[] = [];
    const listed = await fetch(`${second.url}/v1/audits/${id}`);
    expect(listed.status).toBe(200);
    const done = await waitFor('the resumed audit', async () => {
      const body = (await (await fetch(`${second.url}/v1/audits/${id}`)).json()) as {
        state: string;
        result: Parameters<typeof withoutTimings>[0] | null;
      };
      // The finished shard is not run again: while the resumed audit runs, its file stays as it was
      // before the kill (a rerun replaces it; the store removes it once the audit has ended).
      const seen = await readFile(path.join(shardsDir, firstShard)).catch(() => undefined);
      if (seen) shardObservations.push(Buffer.compare(seen, shardBytes) === 0);
      return body.state === 'running' || body.state === 'queued' ? undefined : body;
    });
    expect(done.state).toBe('succeeded');
    expect(shardObservations.length).toBeGreaterThan(0);
    expect(shardObservations.every(Boolean)).toBe(true);

    const classifier = await loadModelFromFiles(await readModelDir(MODEL_DIR));
    const points = (await loadDataset(DATA_FILE)).take(64) as ArrayDataset;
    const x = points.tensor();
    const uninterrupted = await autoAttack(classifier, x, points.labels, {
      norm: 'L2',
      eps: 1,
      seed: 1,
      iterations: 1,
      queries: 60,
    });
    x.dispose();
    classifier.dispose();
    expect(withoutTimings(done.result!)).toEqual(withoutTimings(uninterrupted));
    await stopServiceProcess(second);
  });
});
