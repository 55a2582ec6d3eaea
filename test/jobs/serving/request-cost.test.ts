import { describe, expect, it } from 'vitest';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import {
  auditForwardPasses,
  checkAuditCost,
  RequestCostError,
} from '../../../src/jobs/serving/request-cost.js';

/** One CIFAR-10 image at AutoAttack's defaults: 100 iterations, the version's restarts, 5000 queries. */
const defaults = { images: 1, numClasses: 10, iterations: 100, restarts: undefined, queries: 5000 };

describe('audit cost', () => {
  it("counts each version's attacks as AutoAttack plans them, Square at one forward pass a query", () => {
    // APGD-CE + 9 targets x (APGD-T + FAB-T), one gradient step (3 passes) per iteration each.
    expect(auditForwardPasses({ ...defaults, version: 'standard' })).toEqual({
      whiteBox: 100 * 19 * 3,
      square: 5000,
    });
    // 5 restarts x (APGD-CE, APGD-DLR, FAB with 10 gradients an iteration) + 9 targets x 2, once each.
    expect(auditForwardPasses({ ...defaults, version: 'plus' })).toEqual({
      whiteBox: 100 * (5 * 12 + 18) * 3,
      square: 5000,
    });
    expect(auditForwardPasses({ ...defaults, version: 'plus', restarts: 2 })).toEqual({
      whiteBox: 100 * (2 * 12 + 2 * 18) * 3,
      square: 5000,
    });
    // EOT: 20 gradients a step for APGD-CE and APGD-DLR; no Square.
    expect(auditForwardPasses({ ...defaults, version: 'rand' })).toEqual({
      whiteBox: 2 * 100 * 20 * 3,
      square: 0,
    });
    // Left out, iterations, restarts and queries are AutoAttack's defaults (100, 1 or 5, 5000).
    expect(auditForwardPasses({ images: 1, numClasses: 10, version: 'plus' })).toEqual(
      auditForwardPasses({ ...defaults, version: 'plus' }),
    );
    // 3 classes: 2 targets.
    expect(
      auditForwardPasses({ ...defaults, numClasses: 3, iterations: 2, queries: 7, version: 'standard' }),
    ).toEqual({ whiteBox: 2 * 5 * 3, square: 7 });
  });

  it("refuses over the limit, naming 'queries' when Square's share is the larger", () => {
    // No weights: the estimate is a linear map, 2 x 4 inputs x 3 classes = 24 FLOPs a forward pass.
    const classifier = functionClassifier({ inputShape: [2, 2, 1], numClasses: 3 }, (x) =>
      x.reshape([-1, 3]),
    );
    const factors = {
      version: 'standard',
      images: 4,
      numClasses: 3,
      iterations: 2,
      restarts: undefined,
      queries: 1000,
    } as const;
    // 4 x (30 + 1000) x 24
    expect(checkAuditCost(classifier, factors, 98_880)).toBe(98_880);
    const error = (() => {
      try {
        checkAuditCost(classifier, { ...factors, queries: 1001 }, 98_880);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(RequestCostError);
    expect(error).toMatchObject({ field: 'queries', flops: 4 * 1031 * 24, limit: 98_880 });
    expect((error as Error).message).toMatch(/over the limit of 9\.89e\+4; lower 'queries'$/);
    const whiteBoxHeavy = { ...factors, iterations: 1000, queries: 10 };
    expect(() => checkAuditCost(classifier, whiteBoxHeavy, 98_880)).toThrow(/lower 'n'$/);
  });
});
