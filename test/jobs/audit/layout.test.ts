import { describe, expect, it } from 'vitest';
import { auditLayout, auditWorkInPoints } from '../../../src/jobs/audit/layout.js';
import { MIN_POINTS_PER_WORKER } from '../../../src/jobs/audit/parameters.js';

const standard = { version: 'standard' as const };
const twoCores = { cores: 2, threadsPerWorker: 1 };

describe('auditLayout', () => {
  it('runs in one process until every worker gets enough work, then one worker per core', () => {
    expect(MIN_POINTS_PER_WORKER).toBe(64);
    expect(auditLayout(40, standard, 10, twoCores)).toEqual({ workers: 1, shards: 1 });
    expect(auditLayout(100, standard, 10, twoCores)).toEqual({ workers: 1, shards: 1 });
    expect(auditLayout(127, standard, 10, twoCores)).toEqual({ workers: 1, shards: 1 });
    expect(auditLayout(128, standard, 10, twoCores)).toEqual({ workers: 2, shards: 2 });
    // 500 points: two shards of 250, one attack batch each, as the single process batches them.
    expect(auditLayout(500, standard, 10, twoCores)).toEqual({ workers: 2, shards: 2 });
    expect(auditLayout(1000, standard, 10, twoCores)).toEqual({ workers: 2, shards: 4 });
    // 16 cores: 7 workers hold 64+ points each.
    expect(auditLayout(500, standard, 10, { cores: 16, threadsPerWorker: 1 })).toEqual({
      workers: 7,
      shards: 7,
    });
  });

  it('counts cores at the oneDNN threads each worker runs', () => {
    expect(auditLayout(500, standard, 10, { cores: 2, threadsPerWorker: 2 })).toEqual({
      workers: 1,
      shards: 1,
    });
    expect(auditLayout(5000, standard, 10, { cores: 16, threadsPerWorker: 4 })).toEqual({
      workers: 4,
      shards: 20,
    });
  });

  it("measures the audit's size at its budget: a tenth of the iterations and queries, a tenth of the work", () => {
    expect(auditWorkInPoints(500, standard, 10)).toBe(500);
    expect(auditWorkInPoints(500, { ...standard, iterations: 10, queries: 500 }, 10)).toBeCloseTo(50, 10);
    expect(auditLayout(500, { ...standard, iterations: 10, queries: 500 }, 10, twoCores)).toEqual({
      workers: 1,
      shards: 1,
    });
    // Each version against its own defaults; 'plus' given 5 restarts runs its targeted attacks 5 times too.
    expect(auditWorkInPoints(100, { version: 'plus' }, 10)).toBe(100);
    expect(auditWorkInPoints(100, { version: 'plus', restarts: 5 }, 10)).toBeGreaterThan(100);
  });

  it('keeps an explicit worker count, with at least one shard per worker and a multiple of them', () => {
    expect(auditLayout(500, standard, 10, { ...twoCores, workers: 3 })).toEqual({ workers: 3, shards: 3 });
    expect(auditLayout(40, standard, 10, { ...twoCores, workers: 2 })).toEqual({ workers: 2, shards: 2 });
    expect(auditLayout(1000, { ...standard, batchSize: 100 }, 10, { ...twoCores, workers: 4 })).toEqual({
      workers: 4,
      shards: 12,
    });
    expect(auditLayout(3, standard, 10, { ...twoCores, workers: 8 })).toEqual({ workers: 3, shards: 3 });
    expect(auditLayout(500, standard, 10, { ...twoCores, workers: 1 })).toEqual({ workers: 1, shards: 1 });
  });
});
