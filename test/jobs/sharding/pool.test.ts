import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AutoAttackReport, autoAttack } from '../../../src/engine/attacks/autoattack.js';
import { parseWorkerCount, ShardPool } from '../../../src/jobs/sharding/pool.js';
import type { ShardResult } from '../../../src/jobs/sharding/shards.js';
import { auditFixture, QUICK } from '../../helpers/cifar-audit.js';
import { withoutTimings } from '../../helpers/reports.js';

/** The pool of worker processes gives exactly the single-process report, also when a worker dies. */

describe('ShardPool', { timeout: 180_000 }, () => {
  let fixture: Awaited<ReturnType<typeof auditFixture>>;
  let single: AutoAttackReport;
  let pool: ShardPool;

  beforeAll(async () => {
    fixture = await auditFixture(16);
    single = await autoAttack(fixture.classifier, fixture.x, fixture.y, QUICK);
    pool = new ShardPool({ workers: 3 });
  });

  afterAll(async () => {
    await pool?.close();
    fixture?.x.dispose();
    fixture?.classifier.dispose();
  });

  it('3 workers, 5 shards: the same report as one process; progress reaches every point', async () => {
    expect(single.per_attack.filter((a) => a.broken > 0).length).toBeGreaterThanOrEqual(2);
    const before = tf.memory().numTensors;
    const seen: ShardResult[] = [];
    let lastDone = 0;
    const report = await pool.autoAttack(fixture.classifier, fixture.x, fixture.y, {
      ...QUICK,
      shards: 5,
      onShard: (result) => seen.push(result),
      onProgress: (p) => {
        expect(p.done).toBeGreaterThanOrEqual(lastDone);
        expect(p.total).toBe(16);
        lastDone = p.done;
      },
    });
    expect(withoutTimings(report)).toEqual(withoutTimings(single));
    expect(seen.map((r) => r.shard).sort()).toEqual([0, 1, 2, 3, 4]);
    expect(lastDone).toBe(16);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a worker killed mid-shard is replaced and the shard reruns: still the same report', async () => {
    const restartsBefore = pool.restarts;
    let killed = false;
    const report = await pool.autoAttack(fixture.classifier, fixture.x, fixture.y, {
      ...QUICK,
      shards: 4,
      onProgress: () => {
        const [busy] = pool.busyPids;
        if (!killed && busy !== undefined) {
          killed = true;
          process.kill(busy, 'SIGKILL');
        }
      },
    });
    expect(killed).toBe(true);
    expect(pool.restarts).toBe(restartsBefore + 1);
    expect(withoutTimings(report)).toEqual(withoutTimings(single));
  });

  it('resumes from finished shards and cancels every shard on abort', async () => {
    const finished: ShardResult[] = [];
    const first = await pool.autoAttack(fixture.classifier, fixture.x, fixture.y, {
      ...QUICK,
      shards: 4,
      onShard: (r) => finished.push(r),
    });
    // Resumed with 3 of 4 shards known: only one runs, the report is the same.
    let ran = 0;
    const resumed = await pool.autoAttack(fixture.classifier, fixture.x, fixture.y, {
      ...QUICK,
      shards: 4,
      finished: finished.slice(0, 3),
      onShard: () => ran++,
    });
    expect(ran).toBe(1);
    expect(withoutTimings(resumed)).toEqual(withoutTimings(first));

    const controller = new AbortController();
    const cancelled = pool.autoAttack(fixture.classifier, fixture.x, fixture.y, {
      ...QUICK,
      shards: 6,
      signal: controller.signal,
      onProgress: () => controller.abort(),
    });
    await expect(cancelled).rejects.toMatchObject({ name: 'AbortError' });
    // The workers survive a cancel and take the next audit.
    const after = await pool.autoAttack(fixture.classifier, fixture.x, fixture.y, { ...QUICK, shards: 2 });
    expect(withoutTimings(after)).toEqual(withoutTimings(single));
  });

  it('reads worker counts strictly', () => {
    expect(parseWorkerCount('3')).toBe(3);
    expect(parseWorkerCount(undefined, 5)).toBe(5);
    expect(() => parseWorkerCount('0')).toThrow(/integer >= 1/);
    expect(() => parseWorkerCount('two')).toThrow(/integer >= 1/);
  });
});
