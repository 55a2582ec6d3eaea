import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import type { ModelFiles } from '../../data/model-dir.js';
import {
  type AutoAttackOptions,
  type AutoAttackPart,
  type AutoAttackReport,
  autoAttackPart,
  mergeAutoAttackParts,
} from '../../engine/attacks/autoattack.js';
import { DEFAULT_BATCH_SIZE } from '../../engine/attacks/defaults.js';
import { sanityWarnings } from '../../engine/attacks/verify.js';
import type { Classifier } from '../../engine/model/classifier.js';
import type { ShardSettings } from '../audit/parameters.js';

/**
 * An audit as shards: contiguous index ranges of the audited points. A shard's result is the
 * engine's per-point rows for its range (clean prediction, broken_by, perturbation norm, seconds);
 * the audit's report is a pure merge of its shards' rows. Since every random draw on a point depends
 * only on (seed, global index, attack, restart), any shard layout gives the report of one run.
 */

// A type only: shard workers load this file, and the record's module loads zod.
export type { ShardSettings };

export interface ShardRange {
  shard: number;
  /** First point (global index), inclusive. */
  start: number;
  /** Last point, exclusive. */
  end: number;
}

/** The result of one shard of one audit; stored and merged keyed by (audit, shard). */
export interface ShardResult {
  /** Identifies the audit (the same for every shard of it). */
  audit: string;
  shard: number;
  shards: number;
  /** Points of the whole audit. */
  n: number;
  start: number;
  end: number;
  part: AutoAttackPart;
}

/** What a sharded runner (the pool) takes beyond the engine's options; plain AutoAttack ignores it. */
export interface ShardedRunOptions {
  /** Audit id written into shard results (default a fresh UUID). */
  audit?: string;
  /** Shard results already known (a resumed audit): those shards do not run again. */
  finished?: readonly ShardResult[];
  /** Called with every shard result as it arrives (e.g. to persist it). */
  onShard?: (result: ShardResult) => void;
  /** The model files, when the classifier cannot be serialised here (an ONNX model). */
  modelFiles?: ModelFiles;
}

/** A shard specification or a set of shard results that cannot make one audit. */
export class ShardError extends Error {
  override readonly name = 'ShardError';
}

/** `count` contiguous ranges covering [0, n), sizes differing by at most one (empty ones dropped). */
export function planShards(n: number, count: number): ShardRange[] {
  if (!(Number.isInteger(n) && n >= 0)) throw new ShardError(`'n' must be an integer >= 0, got ${n}`);
  if (!(Number.isInteger(count) && count >= 1)) {
    throw new ShardError(`the shard count must be an integer >= 1, got ${count}`);
  }
  const ranges: ShardRange[] = [];
  for (let shard = 0; shard < count; shard++) {
    const start = Math.floor((shard * n) / count);
    const end = Math.floor(((shard + 1) * n) / count);
    ranges.push({ shard, start, end });
  }
  return ranges;
}

/**
 * How many shards an audit of n points gets on `workers` processes: about 4 per worker so a slow
 * shard does not hold the others back, but never below `minimumPoints` points per shard (batching);
 * a multiple of the worker count when there are at least as many shards as workers, so that no
 * worker runs one shard more than the others (3 shards on 2 workers take 2 shard-times, 2 take 1).
 */
export function defaultShardCount(n: number, workers: number, minimumPoints = 32): number {
  const count = Math.max(1, Math.min(workers * 4, Math.floor(n / minimumPoints)));
  return count >= workers ? count - (count % workers) : count;
}

/** Parses `i/N` (0 <= i < N), as `--shard` takes it. */
export function parseShardSpec(text: string): { shard: number; shards: number } {
  const match = /^(\d+)\/(\d+)$/.exec(text.trim());
  const shard = match ? Number(match[1]) : Number.NaN;
  const shards = match ? Number(match[2]) : Number.NaN;
  if (!(shards >= 1 && shard >= 0 && shard < shards)) {
    throw new ShardError(`a shard is 'i/N' with 0 <= i < N, got '${text}'`);
  }
  return { shard, shards };
}

/** A stable audit id from what defines it (model and data fingerprints, settings, n). */
export function auditKey(parts: { model: string; data: string; n: number; settings: ShardSettings }): string {
  const { settings } = parts;
  const canonical = JSON.stringify([
    parts.model,
    parts.data,
    parts.n,
    settings.norm,
    settings.eps,
    settings.version,
    settings.seed,
    settings.batchSize ?? DEFAULT_BATCH_SIZE,
    settings.restarts ?? null,
    settings.iterations ?? null,
    settings.queries ?? null,
    // Absent unless set, so the keys of audits stored before the option existed stay the same.
    ...(settings.fullBudget ? ['full-budget'] : []),
  ]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

export interface ShardInput {
  /** The shard's points, rows start..end-1 of the audit; the caller keeps ownership. */
  x: tf.Tensor4D;
  y: Int32Array;
  /** For the shard holding point 0: the audit's first min(n, batchSize) points (sanity checks). */
  probe?: { x: tf.Tensor4D; y: Int32Array };
}

/** Runs one shard: AutoAttack on its points with global indices; the first shard adds the sanity checks. */
export async function runShard(
  classifier: Classifier,
  input: ShardInput,
  range: ShardRange,
  settings: ShardSettings,
  options: Pick<AutoAttackOptions, 'signal' | 'onProgress'> = {},
): Promise<AutoAttackPart> {
  const size = range.end - range.start;
  if (input.x.shape[0] !== size || input.y.length !== size) {
    throw new ShardError(`shard ${range.shard} holds ${size} points, got ${input.x.shape[0]} images`);
  }
  const part = await autoAttackPart(classifier, input.x, input.y, {
    ...settings,
    ...options,
    indices: Array.from({ length: size }, (_, i) => range.start + i),
    sanityChecks: false,
  });
  if (range.start === 0 && input.probe) {
    part.sanity_warnings = sanityWarnings(classifier, input.probe.x, input.probe.y);
  }
  return part;
}

/** Rows start..end-1 of x as a new tensor (the caller disposes it). */
export function sliceRows(x: tf.Tensor4D, start: number, end: number): tf.Tensor4D {
  return tf.slice(x, [start, 0, 0, 0], [end - start, -1, -1, -1]);
}

/**
 * The report of an audit from its shard results: every shard 0..N-1 of one audit exactly once
 * (a retried shard's result replaces the earlier one before this is called; duplicates here are an
 * error, as are gaps).
 */
export function mergeShardResults(
  results: readonly ShardResult[],
  options: { seconds?: number } = {},
): AutoAttackReport {
  if (results.length === 0) throw new ShardError('no shard results to merge');
  const [first] = results;
  const byShard = new Map<number, ShardResult>();
  for (const result of results) {
    if (result.audit !== first.audit) {
      throw new ShardError(`shard results of different audits: ${first.audit} and ${result.audit}`);
    }
    if (result.shards !== first.shards || result.n !== first.n) {
      throw new ShardError(
        `shard ${result.shard} was planned as one of ${result.shards} over ${result.n} points, ` +
          `shard ${first.shard} as one of ${first.shards} over ${first.n}`,
      );
    }
    if (byShard.has(result.shard))
      throw new ShardError(`shard ${result.shard}/${result.shards} appears twice`);
    byShard.set(result.shard, result);
  }
  const missing = planShards(first.n, first.shards).filter((range) => !byShard.has(range.shard));
  if (missing.length > 0) {
    throw new ShardError(
      `missing shard results: ${missing.map((r) => `${r.shard}/${first.shards}`).join(', ')}`,
    );
  }
  for (const range of planShards(first.n, first.shards)) {
    const result = byShard.get(range.shard)!;
    if (
      result.start !== range.start ||
      result.end !== range.end ||
      result.part.samples.length !== range.end - range.start
    ) {
      throw new ShardError(
        `shard ${range.shard}/${first.shards} must hold points [${range.start}, ${range.end}), ` +
          `got [${result.start}, ${result.end}) with ${result.part.samples.length} rows`,
      );
    }
  }
  return mergeAutoAttackParts(
    [...byShard.values()].map((result) => result.part),
    options,
  );
}
