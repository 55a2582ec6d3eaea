import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ArrayDataset } from '../../../src/data/dataset.js';
import { loadClassifierFromFiles, loadModelFromFiles } from '../../../src/engine/model/files.js';
import { AuditQueue } from '../../../src/jobs/audit/registry.js';
import { AuditStore, type QuarantinedAudit } from '../../../src/jobs/audit/store.js';
import { buildModel, floatTensor } from '../../engine/model/onnx/onnx-builder.js';
import { emptyReport } from '../../helpers/reports.js';
import { tinyCifarModelFiles } from '../../helpers/uploads.js';

/**
 * Issue 26: one corrupt state file (job.json `null` or `{}`, a truncated shard or owner.json) made
 * `ratio serve` exit at start with a TypeError; a truncated job.json made it delete the audit's
 * directory, result included, without a word. Now every such audit is quarantined: listed as failed
 * naming the file, kept on disk untouched, and the other audits are served. ONNX audits are durable
 * too, an audit's owner survives the loss of owner.json, and an audit's inputs go when it ends.
 */

let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-recovery-'));
});
afterEach(async () => {
  // Retries: a test's first queue (left running on purpose, as a process that did not die) may still
  // be writing its final job.json while the directory goes.
  await rm(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
});

const dataset = (fill: number) =>
  new ArrayDataset({
    images: new Uint8Array(2 * 3072).fill(fill),
    shape: [32, 32, 3],
    labels: Int32Array.from([0, 1]),
  });

const parameters = (seed: number) => ({
  model: 'tiny',
  norm: 'L2' as const,
  eps: 0.5,
  version: 'standard' as const,
  n: 2,
  seed,
});

/** A queue whose audits wait until released: they stay 'running' on disk, as at a kill -9. */
function blockedQueue(store: AuditStore) {
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const queue = new AuditQueue({
    store,
    maxRunning: 4,
    run: async (_c, x, _y, o) => {
      if ((o.seed ?? 0) >= 100) await gate;
      return emptyReport(x.shape[0], o.seed ?? 0);
    },
  });
  return { queue, release };
}

/** One finished audit (seed 1) and two unfinished ones (seeds 100, 101), all owned by 'key-a'. */
async function storeWithThreeAudits(): Promise<{ ids: string[]; release: () => void; queue: AuditQueue }> {
  const files = await tinyCifarModelFiles();
  const store = new AuditStore(dir);
  const { queue, release } = blockedQueue(store);
  const ids: string[] = [];
  for (const seed of [1, 100, 101]) {
    const job = queue.submit({
      parameters: parameters(seed),
      classifier: await loadModelFromFiles(files),
      ownsClassifier: true,
      dataset: dataset(seed),
      modelFiles: files,
      owner: 'key-a',
    });
    ids.push(job.id);
  }
  await queue.settled(ids[0]);
  // Let the job.json writes land (the running state of the blocked two, the end of the first).
  await new Promise((resolve) => setTimeout(resolve, 300));
  return { ids, release, queue };
}

async function snapshot(auditDir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const entry of await readdir(auditDir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    out.set(path.relative(auditDir, full), (await readFile(full)).toString('base64'));
  }
  return out;
}

const corruptions: Array<{ name: string; file: string; write: (text: string) => string }> = [
  { name: 'job.json is null', file: 'job.json', write: () => 'null' },
  { name: 'job.json is {}', file: 'job.json', write: () => '{}' },
  { name: 'job.json is truncated', file: 'job.json', write: (text) => text.slice(0, text.length / 2) },
  { name: 'a shard file is truncated', file: 'shards/0.json', write: () => '{"audit": "x", "sha' },
  { name: 'owner.json is truncated', file: 'owner.json', write: (text) => text.slice(0, 5) },
  { name: 'input.json is truncated', file: 'input.json', write: (text) => text.slice(0, 20) },
  { name: 'images.bin is truncated', file: 'images.bin', write: () => 'xx' },
  { name: 'model.json is truncated', file: 'model/model.json', write: (text) => text.slice(0, 30) },
];

describe('durable state that survives any one corrupt file', () => {
  for (const corruption of corruptions) {
    it(`${corruption.name}: that audit is quarantined (failed, file named, kept on disk), the others served`, async () => {
      const { ids, release, queue } = await storeWithThreeAudits();
      const target = ids[1];
      const auditDir = path.join(dir, 'audits', target);
      const file = path.join(auditDir, corruption.file);
      // A shard that finished before the kill (the queue keeps it for the resume).
      if (corruption.file.startsWith('shards/')) await writeFile(file, '{}');
      if (corruption.file === 'owner.json') {
        // An older store kept the owner only in owner.json.
        const job = JSON.parse(await readFile(path.join(auditDir, 'job.json'), 'utf8'));
        delete job.owner;
        await writeFile(path.join(auditDir, 'job.json'), JSON.stringify(job));
      }
      await writeFile(file, corruption.write(await readFile(file, 'utf8')));
      const before = await snapshot(auditDir);

      const quarantined: QuarantinedAudit[] = [];
      const restarted = new AuditQueue({
        store: new AuditStore(dir),
        maxRunning: 4,
        run: async (_c, x, _y, o) => emptyReport(x.shape[0], o.seed ?? 0),
        onQuarantined: (audit) => quarantined.push(audit),
      });
      await expect(restarted.recover()).resolves.toBe(1);
      expect(quarantined.map((q) => [q.job.id, q.file])).toEqual([[target, corruption.file]]);
      const job = restarted.get(target);
      expect(job?.state).toBe('failed');
      expect(job?.error).toContain(corruption.file);
      // Kept as it was: nothing written, nothing removed, also after the others ran.
      expect((await restarted.settled(ids[2]))?.state).toBe('succeeded');
      expect(restarted.get(ids[0], 'key-a')?.result?.seed).toBe(1);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await snapshot(auditDir)).toEqual(before);
      release();
      await Promise.all(ids.map((id) => queue.settled(id)));
    });
  }

  it('an audit whose owner.json is lost stays visible to its key (the owner is in job.json too)', async () => {
    const { ids, release, queue } = await storeWithThreeAudits();
    await rm(path.join(dir, 'audits', ids[0], 'owner.json'));
    const restarted = new AuditQueue({ store: new AuditStore(dir) });
    await restarted.recover();
    expect(restarted.get(ids[0], 'key-a')?.state).toBe('succeeded');
    expect(restarted.get(ids[0], 'key-b')).toBeUndefined();
    await restarted.drain({ abortRunning: true, timeoutMs: 1000 });
    release();
    await Promise.all(ids.map((id) => queue.settled(id)));
  });

  it('an ONNX audit is durable: stored as model.onnx and resumed after a restart', async () => {
    const onnx = buildModel({
      nodes: [
        { op: 'Flatten', inputs: ['x'], outputs: ['flat'] },
        { op: 'Gemm', inputs: ['flat', 'w', 'b'], outputs: ['y'], attributes: { transB: 1 } },
      ],
      inputs: [{ name: 'x', dims: ['n', 3, 32, 32] }],
      initializers: [
        floatTensor('w', [2, 3072], new Float32Array(2 * 3072).fill(0.001)),
        floatTensor('b', [2], [0.5, -0.5]),
      ],
    });
    const files = new Map([['net.onnx', onnx]]);
    const store = new AuditStore(dir);
    const { queue, release } = blockedQueue(store);
    const job = queue.submit({
      parameters: parameters(100),
      classifier: await loadClassifierFromFiles(files),
      ownsClassifier: true,
      dataset: dataset(3),
      modelFiles: files,
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await readdir(path.join(dir, 'audits', job.id, 'model'))).toEqual(['model.onnx']);
    const seen: number[] = [];
    const restarted = new AuditQueue({
      store: new AuditStore(dir),
      run: async (classifier, x, _y, o) => {
        // The resumed audit carries the stored files (a pool runs them); in process it loads them.
        seen.push(
          classifier.numClasses,
          (o as { modelFiles?: Map<string, Uint8Array> }).modelFiles?.size ?? 0,
        );
        return emptyReport(x.shape[0], o.seed ?? 0);
      },
    });
    expect(await restarted.recover()).toBe(1);
    expect((await restarted.settled(job.id))?.state).toBe('succeeded');
    expect(seen).toEqual([2, 1]);
    release();
    await queue.settled(job.id);
  });

  it("an ended audit's model copy, points and shards are removed; its result stays", async () => {
    const files = await tinyCifarModelFiles();
    const store = new AuditStore(dir);
    const queue = new AuditQueue({
      store,
      run: async (_c, x, _y, o) => emptyReport(x.shape[0], o.seed ?? 0),
    });
    const before = tf.memory().numTensors;
    const job = queue.submit({
      parameters: parameters(5),
      classifier: await loadModelFromFiles(files),
      ownsClassifier: true,
      dataset: dataset(5),
      modelFiles: files,
      owner: 'key-a',
    });
    await queue.settled(job.id);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await readdir(path.join(dir, 'audits', job.id))).sort()).toEqual(['job.json', 'owner.json']);
    expect(await store.diskUsage()).toBeLessThan(4096);
    expect(await queue.stateBytes()).toBe(await store.diskUsage());
    expect(tf.memory().numTensors).toBe(before);
  });
});
