import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AutoAttackReport, autoAttack } from '../../../src/engine/attacks/autoattack.js';
import {
  auditKey,
  defaultShardCount,
  mergeShardResults,
  parseShardSpec,
  planShards,
  runShard,
  ShardError,
  type ShardResult,
  sliceRows,
} from '../../../src/jobs/sharding/shards.js';
import { auditFixture, QUICK } from '../../helpers/cifar-audit.js';
import { withoutTimings } from '../../helpers/reports.js';

describe('shard plans', () => {
  it('covers [0, n) with contiguous ranges differing by at most one point', () => {
    expect(planShards(10, 3)).toEqual([
      { shard: 0, start: 0, end: 3 },
      { shard: 1, start: 3, end: 6 },
      { shard: 2, start: 6, end: 10 },
    ]);
    for (const [n, count] of [
      [16, 7],
      [1000, 8],
      [3, 5],
    ]) {
      const plan = planShards(n, count);
      expect(plan.length).toBe(count);
      expect(plan[0].start).toBe(0);
      expect(plan.at(-1)!.end).toBe(n);
      for (let i = 1; i < plan.length; i++) expect(plan[i].start).toBe(plan[i - 1].end);
      const sizes = plan.map((r) => r.end - r.start);
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
    }
    expect(() => planShards(10, 0)).toThrow(ShardError);
  });

  it('parses i/N and refuses anything else', () => {
    expect(parseShardSpec('2/7')).toEqual({ shard: 2, shards: 7 });
    for (const bad of ['7/7', '-1/3', '1', 'a/b', '1/0'])
      expect(() => parseShardSpec(bad)).toThrow(ShardError);
  });

  it('keys an audit by everything that defines its numbers', () => {
    const base = { model: 'm', data: 'd', n: 10, settings: QUICK };
    expect(auditKey(base)).toBe(auditKey({ ...base }));
    expect(auditKey(base)).not.toBe(auditKey({ ...base, settings: { ...QUICK, seed: 2 } }));
    expect(auditKey(base)).not.toBe(auditKey({ ...base, n: 11 }));
    expect(auditKey(base)).not.toBe(auditKey({ ...base, settings: { ...QUICK, fullBudget: true } }));
    expect(auditKey(base)).toBe(auditKey({ ...base, settings: { ...QUICK, fullBudget: false } }));
  });

  it('gives every worker the same number of shards once there are as many as workers', () => {
    // [n, workers, shards]
    for (const [n, workers, shards] of [
      [100, 2, 2], // not 3: the third shard would run alone after the first two
      [20, 2, 1], // fewer than 32 points a shard: one, in process
      [1000, 2, 8],
      [1000, 4, 16],
      [100, 3, 3],
      [200, 4, 4],
      [64, 1, 2],
      [96, 8, 3], // fewer shards than workers (the queue's hint): unchanged
      [0, 2, 1],
    ])
      expect([n, workers, defaultShardCount(n, workers)]).toEqual([n, workers, shards]);
  });
});

describe('shards of a real audit (ratio-cifar10, 16 CIFAR-10 test points)', { timeout: 120_000 }, () => {
  let fixture: Awaited<ReturnType<typeof auditFixture>>;
  let single: AutoAttackReport;
  let results: ShardResult[];

  beforeAll(async () => {
    fixture = await auditFixture(16);
    single = await autoAttack(fixture.classifier, fixture.x, fixture.y, QUICK);
    const probe = { x: sliceRows(fixture.x, 0, 16), y: fixture.y };
    results = [];
    for (const range of planShards(16, 7)) {
      const before = tf.memory().numTensors;
      const x = sliceRows(fixture.x, range.start, range.end);
      const part = await runShard(
        fixture.classifier,
        { x, y: fixture.y.slice(range.start, range.end), probe },
        range,
        QUICK,
      );
      x.dispose();
      expect(tf.memory().numTensors).toBe(before);
      results.push({
        audit: 'a',
        shard: range.shard,
        shards: 7,
        n: 16,
        start: range.start,
        end: range.end,
        part,
      });
    }
    probe.x.dispose();
  });

  afterAll(() => {
    fixture?.x.dispose();
    fixture?.classifier.dispose();
  });

  it('7 shards merge to the report of 1 run (rows, per attack, warnings)', () => {
    expect(single.per_attack.filter((a) => a.broken > 0).length).toBeGreaterThanOrEqual(2);
    expect(withoutTimings(mergeShardResults([...results].reverse()))).toEqual(withoutTimings(single));
  });

  it('refuses duplicates, gaps and foreign shards; a replaced shard counts once', () => {
    expect(() => mergeShardResults([...results, results[2]])).toThrow(/shard 2\/7 appears twice/);
    expect(() => mergeShardResults(results.slice(1))).toThrow(/missing shard results: 0\/7/);
    expect(() => mergeShardResults([...results.slice(1), { ...results[0], audit: 'b' }])).toThrow(
      /different audits/,
    );
    expect(() => mergeShardResults([{ ...results[0], end: 3 }, ...results.slice(1)])).toThrow(
      /must hold points/,
    );
    // A retried shard's result replaces the first one in a store keyed by shard: still exact.
    const store = new Map(results.map((r) => [r.shard, r]));
    store.set(3, { ...results[3] });
    expect(withoutTimings(mergeShardResults([...store.values()]))).toEqual(withoutTimings(single));
  });
});
