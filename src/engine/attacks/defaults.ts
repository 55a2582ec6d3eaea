import type { AutoAttackVersion } from '../types.js';

/**
 * AutoAttack's budget defaults, as the reference implementation (fra31/auto-attack) sets them: the
 * attacks, the audit use case, the CLI's help and the service's cost check all read them from here.
 * No tfjs: callers that only parse flags or forms import this without loading the engine.
 */

/** The AutoAttack version an audit runs when none is named. */
export const DEFAULT_VERSION: AutoAttackVersion = 'standard';

/** APGD and FAB iterations per run. */
export const DEFAULT_ITERATIONS = 100;

/** Square's queries per point. */
export const DEFAULT_QUERIES = 5000;

/** Points per attack call; also the size of the sanity probe on an audit's first points. */
export const DEFAULT_BATCH_SIZE = 250;

/** Restarts of the white-box attacks: 5 for 'plus' (its untargeted attacks), else 1. */
export function defaultRestarts(version: AutoAttackVersion): number {
  return version === 'plus' ? 5 : 1;
}
