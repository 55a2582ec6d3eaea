import { DEFAULT_ITERATIONS, DEFAULT_QUERIES, defaultRestarts } from '../../engine/attacks/defaults.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { forwardFlops, GRADIENT_STEP_FORWARDS } from '../../engine/model/cost.js';
import type { AutoAttackVersion } from '../../engine/types.js';

/**
 * Up-front cost of a request: images x iterations x restarts x (gradient steps of) model FLOPs, so one
 * request cannot hold the compute slot for minutes (a full batch at a thousand iterations and ten restarts would).
 */

/** A request whose estimated cost is over the configured budget; HTTP answers 422 with the limit. */
export class RequestCostError extends Error {
  override readonly name = 'RequestCostError';
  constructor(
    /** The parameter to lower (the largest factor the caller chose). */
    readonly field: string,
    readonly flops: number,
    readonly limit: number,
    message: string,
  ) {
    super(message);
  }
}

export interface CostFactors {
  images: number;
  /** Gradient steps per image and restart (attack iterations); 0 for a forward pass only. */
  iterations: number;
  restarts: number;
  /** Extra multiplier, e.g. targets x radii for counterfactuals, attacks for an audit. */
  runs?: number;
}

/** Estimated FLOPs of a request. */
export function requestFlops(classifier: Classifier, factors: CostFactors): number {
  const passes = factors.iterations > 0 ? factors.iterations * GRADIENT_STEP_FORWARDS : 1;
  return factors.images * passes * factors.restarts * (factors.runs ?? 1) * forwardFlops(classifier);
}

/** Throws `RequestCostError` naming `field` when the estimate is over `limit` FLOPs. */
export function checkRequestCost(
  classifier: Classifier,
  factors: CostFactors,
  limit: number,
  field: string,
): number {
  const flops = requestFlops(classifier, factors);
  if (flops > limit) {
    const runs = factors.runs && factors.runs !== 1 ? ` x ${factors.runs} runs` : '';
    throw new RequestCostError(
      field,
      flops,
      limit,
      `the request would cost about ${flops.toExponential(2)} FLOPs (${factors.images} images x ${factors.iterations} iterations x ${factors.restarts} restarts${runs} x ${forwardFlops(classifier).toExponential(2)} FLOPs a forward pass), over the limit of ${limit.toExponential(2)}; lower '${field}'`,
    );
  }
  return flops;
}

export interface AuditCostFactors {
  version: AutoAttackVersion;
  images: number;
  numClasses: number;
  /** APGD and FAB iterations per run; undefined is AutoAttack's default. */
  iterations?: number;
  /** Restarts as the caller gave them; undefined is AutoAttack's default for the version. */
  restarts?: number;
  /** Square's queries per image (undefined: AutoAttack's default); Square runs in 'standard' and 'plus'. */
  queries?: number;
}

/** Forward passes one image costs in an audit: the white-box attacks' gradient steps and Square's queries. */
export interface AuditForwardPasses {
  whiteBox: number;
  square: number;
}

/** Target classes of APGD-T and FAB-T, as the reference: 9, capped at K - 1. */
const auditTargets = (numClasses: number) => Math.min(9, numClasses - 1);

/**
 * Forward passes per image of AutoAttack's attack sequence (see engine/attacks/autoattack.ts plannedAttacks):
 * APGD runs `iterations` gradient steps per restart (per target for APGD-T); FAB-T one gradient step
 * per iteration and target, untargeted FAB the whole Jacobian (K gradients) per iteration; 'rand'
 * averages 20 gradients per step (EOT); Square costs one forward pass per query.
 */
export function auditForwardPasses(factors: AuditCostFactors): AuditForwardPasses {
  const { version, numClasses } = factors;
  const iterations = factors.iterations ?? DEFAULT_ITERATIONS;
  const queries = factors.queries ?? DEFAULT_QUERIES;
  const restarts = factors.restarts ?? defaultRestarts(version);
  const targets = auditTargets(numClasses);
  let steps: number;
  if (version === 'standard') steps = iterations * restarts * (1 + 2 * targets);
  else if (version === 'plus') {
    // The default 5 restarts go to the untargeted attacks; the targeted ones keep one per target.
    steps = iterations * (restarts * (2 + numClasses) + (factors.restarts ?? 1) * 2 * targets);
  } else steps = 2 * iterations * restarts * 20;
  return {
    whiteBox: steps * GRADIENT_STEP_FORWARDS,
    square: version === 'rand' ? 0 : queries,
  };
}

/**
 * Throws `RequestCostError` when an audit's estimate (images x (white-box forward passes + Square's
 * queries) x model FLOPs) is over `limit`, naming 'queries' when Square's share is the larger one and
 * 'n' otherwise. Returns the estimate.
 */
export function checkAuditCost(classifier: Classifier, factors: AuditCostFactors, limit: number): number {
  const passes = auditForwardPasses(factors);
  const forward = forwardFlops(classifier);
  const flops = factors.images * (passes.whiteBox + passes.square) * forward;
  if (flops > limit) {
    const field = passes.square > passes.whiteBox ? 'queries' : 'n';
    throw new RequestCostError(
      field,
      flops,
      limit,
      `the audit would cost about ${flops.toExponential(2)} FLOPs (${factors.images} images x (${passes.whiteBox} forward passes of the white-box attacks at ${factors.iterations ?? DEFAULT_ITERATIONS} iterations + ${passes.square} Square queries) x ${forward.toExponential(2)} FLOPs a forward pass), over the limit of ${limit.toExponential(2)}; lower '${field}'`,
    );
  }
  return flops;
}
