import type { AutoAttackReport } from '../../src/engine/attacks/autoattack.js';

/** Audit reports as tests compare them: without what differs from run to run. */

/** A report with every timing removed (what must be identical across runs and shard layouts). */
export function withoutTimings<
  T extends { seconds: number; per_attack: { seconds: number }[]; samples: { seconds: number }[] },
>(report: T): Omit<T, 'seconds'> {
  const { seconds: _seconds, ...rest } = report;
  return {
    ...rest,
    per_attack: report.per_attack.map(({ seconds: _s, ...attack }) => attack),
    samples: report.samples.map(({ seconds: _s, ...sample }) => sample),
  } as Omit<T, 'seconds'>;
}

/** Any JSON document without its wall-clock fields (timings, seconds, dates, threads, workers), at any depth. */
export function withoutWallClock(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutWallClock);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([key]) => !/^(timings|seconds|generated_at|backend_threads|workers)$/.test(key))
        .map(([key, inner]) => [key, withoutWallClock(inner)]),
    );
  }
  return value;
}

/**
 * The engine's report inside a `ratio audit --report` or `ratio audit merge` document: what only the
 * CLI adds (model, data, threads, workers, gate; a merge's audit id and shard count) dropped.
 */
export function engineReport(document: Record<string, unknown>): AutoAttackReport {
  const {
    model: _model,
    data: _data,
    backend_threads: _threads,
    tfjs: _tfjs,
    workers: _workers,
    min_robust_accuracy: _gate,
    audit: _audit,
    shards: _shards,
    ...report
  } = document;
  return report as unknown as AutoAttackReport;
}

/** A report of n points with no attack and no sample: what a fake runner returns. */
export function emptyReport(n: number, seed = 0): AutoAttackReport {
  return {
    n,
    norm: 'L2',
    eps: 0.5,
    version: 'standard',
    seed,
    backend: 'test',
    seconds: 0,
    clean_accuracy: 1,
    robust_accuracy: 0.5,
    per_attack: [],
    samples: [],
    warnings: [],
  };
}
