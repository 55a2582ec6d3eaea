import { availableParallelism } from 'node:os';
import { DEFAULT_BATCH_SIZE } from '../../engine/attacks/defaults.js';
import { auditForwardPasses } from '../serving/index.js';
import { type AuditParameters, MIN_POINTS_PER_WORKER } from './parameters.js';

/**
 * How a local audit spreads over worker processes. A worker pays for itself only with enough work:
 * it starts, loads the model, and leaves the cores to the other workers (one process alone computes
 * oneDNN's convolutions on every core), so the default is one process unless every worker gets at
 * least MIN_POINTS_PER_WORKER points' worth of attacks, and never more workers than the cores hold
 * at the oneDNN threads each one runs.
 */

export interface AuditLayout {
  /** Processes: 1 runs the audit in this process. */
  workers: number;
  /** Shards: at least one per worker, none larger than an attack call needs. */
  shards: number;
}

export interface LayoutOptions {
  /** Worker processes as the caller asked (`--workers`, RATIO_WORKERS); absent: the default rule. */
  workers?: number;
  /** Default: availableParallelism(). */
  cores?: number;
  /** oneDNN threads each worker computes with (default RATIO_THREADS where set, else 1). */
  threadsPerWorker?: number;
}

type Budget = Pick<AuditParameters, 'version' | 'iterations' | 'restarts' | 'queries' | 'batchSize'>;

/**
 * The audit's work in points at the default budget: n points at its own budget cost what this many
 * cost at AutoAttack's defaults (forward passes, as the service's cost limit counts them).
 */
export function auditWorkInPoints(n: number, budget: Budget, numClasses: number): number {
  const passes = (factors: Budget) => {
    const { whiteBox, square } = auditForwardPasses({ ...factors, images: 1, numClasses });
    return whiteBox + square;
  };
  return (n * passes(budget)) / passes({ version: budget.version });
}

function threadsFromEnvironment(): number {
  const threads = Number(process.env.RATIO_THREADS);
  return Number.isInteger(threads) && threads >= 1 ? threads : 1;
}

/**
 * Workers and shards for an audit of n points: the caller's worker count, or the default rule above;
 * shards of one attack batch each (the single process's batching, so no attack runs on fewer points
 * at a time than it would there), at least one per worker and a multiple of the worker count (no
 * worker runs one shard more than the others).
 */
export function auditLayout(
  n: number,
  budget: Budget,
  numClasses: number,
  options: LayoutOptions = {},
): AuditLayout {
  const cores = options.cores ?? availableParallelism();
  const threads = options.threadsPerWorker ?? threadsFromEnvironment();
  const workers =
    options.workers ??
    Math.max(
      1,
      Math.min(
        Math.floor(cores / threads),
        Math.floor(auditWorkInPoints(n, budget, numClasses) / MIN_POINTS_PER_WORKER),
      ),
    );
  if (workers === 1 || n <= 1) return { workers: 1, shards: 1 };
  const batches = Math.ceil(n / (budget.batchSize ?? DEFAULT_BATCH_SIZE));
  const shards = Math.min(n, Math.ceil(Math.max(workers, batches) / workers) * workers);
  return { workers: Math.min(workers, shards), shards };
}
