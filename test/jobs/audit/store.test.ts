import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultStateDir } from '../../../src/data/data-root.js';
import { ArrayDataset } from '../../../src/data/dataset.js';
import { loadModelFromFiles } from '../../../src/engine/model/files.js';
import { AuditQueue } from '../../../src/jobs/audit/registry.js';
import { AuditStore } from '../../../src/jobs/audit/store.js';
import { emptyReport } from '../../helpers/reports.js';
import { tinyCifarModelFiles } from '../../helpers/uploads.js';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-store-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('AuditStore', () => {
  it('keeps finished audits across a restart up to the retention limit, oldest forgotten first', async () => {
    const files = await tinyCifarModelFiles();
    const store = new AuditStore(dir);
    const queue = new AuditQueue({
      store,
      retain: 2,
      run: async (_c, x, _y, o) => emptyReport(x.shape[0], o.seed ?? 0),
    });
    const ids: string[] = [];
    for (const seed of [1, 2, 3]) {
      const classifier = await loadModelFromFiles(files);
      const dataset = new ArrayDataset({
        images: new Uint8Array(4 * 3072).fill(seed),
        shape: [32, 32, 3],
        labels: Int32Array.from([0, 1, 2, 3]),
      });
      const job = queue.submit({
        parameters: { model: 'tiny', norm: 'L2', eps: 0.5, version: 'standard', n: 4, seed },
        classifier,
        ownsClassifier: true,
        dataset,
      });
      ids.push(job.id);
      expect((await queue.settled(job.id))?.state).toBe('succeeded');
    }
    // Let the last job.json write land, then start a "new process" on the same directory.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const stored = (await readdir(store.dir)).sort();
    expect(stored).toEqual([ids[1], ids[2]].sort());
    const restarted = new AuditQueue({ store: new AuditStore(dir), retain: 2 });
    expect(await restarted.recover()).toBe(0);
    expect(restarted.get(ids[0])).toBeUndefined();
    const job = restarted.get(ids[2]);
    expect(job?.state).toBe('succeeded');
    expect(job?.result?.seed).toBe(3);
    expect((await restarted.settled(ids[1]))?.result?.seed).toBe(2);
  });

  it('a job write into a removed audit directory rejects to its caller only, never unhandled', async () => {
    // tfjs-wasm makes any unhandled rejection a process exit: this killed a test worker, and would
    // kill `ratio serve` when an audit's directory goes while its job.json is being written.
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const store = new AuditStore(path.join(dir, 'gone'));
      const job = {
        id: '00000000-0000-4000-8000-000000000000',
        state: 'running' as const,
        parameters: {
          model: 'tiny',
          norm: 'L2' as const,
          eps: 0.5,
          version: 'standard' as const,
          n: 1,
          seed: 0,
        },
        created_at: new Date(0).toISOString(),
        started_at: null,
        finished_at: null,
        progress: null,
        result: null,
        error: null,
      };
      const first = store.saveJob(job);
      const second = store.saveJob({ ...job, state: 'succeeded' });
      await expect(first).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(second).rejects.toMatchObject({ code: 'ENOENT' });
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('defaults to RATIO_STATE_DIR, else the XDG state directory', () => {
    expect(defaultStateDir({ RATIO_STATE_DIR: '/srv/ratio' })).toBe('/srv/ratio');
    expect(defaultStateDir({ XDG_STATE_HOME: '/x' })).toBe('/x/ratio-audit');
  });
});
