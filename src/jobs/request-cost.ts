import type { Classifier } from '../engine/classifier.js';
import { forwardFlops, GRADIENT_STEP_FORWARDS } from '../engine/model-cost.js';

/**
 * Up-front cost of a request: images x iterations x restarts x (gradient steps of) model FLOPs, so one
 * request cannot hold the compute slot for minutes (64 images x 1000 iterations x 10 restarts did).
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
