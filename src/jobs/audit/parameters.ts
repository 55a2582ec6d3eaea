import { z } from 'zod';
import {
  DEFAULT_BATCH_SIZE,
  DEFAULT_ITERATIONS,
  DEFAULT_QUERIES,
  DEFAULT_VERSION,
  defaultRestarts,
} from '../../engine/attacks/defaults.js';
import { AUTOATTACK_VERSIONS, type AutoAttackVersion } from '../../engine/types.js';

/**
 * The audit's parameters, declared once: the schema below is the record the CLI, the service (its
 * job JSON and OpenAPI document), the store, the shard pool and the queue all carry; each derives its
 * view from it (`ShardSettings`: what every shard must agree on). No tfjs: a command's help text and
 * flag parsing import this, not the face (index.ts), which loads the engine.
 */

export {
  AUTOATTACK_VERSIONS,
  type AutoAttackVersion,
  DEFAULT_BATCH_SIZE,
  DEFAULT_ITERATIONS,
  DEFAULT_QUERIES,
  DEFAULT_VERSION,
  defaultRestarts,
};

/** Points audited when the caller names no n (the first ones of the data set). */
export const DEFAULT_AUDIT_POINTS = 1000;

/** The seed when none is given: the same seed on one backend gives the same report. */
export const DEFAULT_SEED = 0;

/**
 * Points at AutoAttack's default budget that a worker process must get to beat one process (its
 * start, its model load, the cores it leaves to the others); see layout.ts.
 */
export const MIN_POINTS_PER_WORKER = 64;

export const NORMS = ['L2', 'Linf'] as const;

export const AuditParametersSchema = z.object({
  /** The model's name: a served model's, the card's, or 'upload'. */
  model: z.string(),
  norm: z.enum(NORMS),
  eps: z.number(),
  version: z.enum(AUTOATTACK_VERSIONS),
  /** Points audited: the first n of the data set. */
  n: z.number().int(),
  seed: z.number().int(),
  /** APGD and FAB iterations per run (default DEFAULT_ITERATIONS). */
  iterations: z.number().int().optional(),
  /** Restarts of the white-box attacks (default `defaultRestarts(version)`). */
  restarts: z.number().int().optional(),
  /** Square's queries per point (default DEFAULT_QUERIES). */
  queries: z.number().int().optional(),
  /** Points per attack call (default DEFAULT_BATCH_SIZE); also the size of the sanity probe. */
  batchSize: z.number().int().optional(),
  /** Attacks spend their whole budget on every point, as the reference (AutoAttackOptions.fullBudget). */
  fullBudget: z.boolean().optional(),
});

export type AuditParameters = z.infer<typeof AuditParametersSchema>;

/** The parameters that define an audit's numbers: every shard of one audit runs with the same. */
export const SHARD_SETTING_KEYS = [
  'norm',
  'eps',
  'version',
  'seed',
  'batchSize',
  'restarts',
  'iterations',
  'queries',
  'fullBudget',
] as const satisfies readonly (keyof AuditParameters)[];

export type ShardSettings = Pick<AuditParameters, (typeof SHARD_SETTING_KEYS)[number]>;

/**
 * The shard settings out of any record that holds them (the audit's parameters, the engine's
 * options): only those keys, and only the ones that are set, so that a settings object compares and
 * serialises the same however it was made.
 */
export function shardSettingsOf(
  from: Pick<ShardSettings, 'norm' | 'eps'> & Partial<ShardSettings>,
): ShardSettings {
  const settings: Partial<Record<(typeof SHARD_SETTING_KEYS)[number], unknown>> = {};
  for (const key of SHARD_SETTING_KEYS) {
    if (from[key] !== undefined) settings[key] = from[key];
  }
  return {
    ...(settings as ShardSettings),
    version: from.version ?? DEFAULT_VERSION,
    seed: from.seed ?? DEFAULT_SEED,
  };
}
