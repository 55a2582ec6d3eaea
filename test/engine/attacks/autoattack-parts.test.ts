import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  AutoAttackMergeError,
  type AutoAttackPart,
  autoAttack,
  autoAttackPart,
  mergeAutoAttackParts,
} from '../../../src/engine/attacks/autoattack.js';
import type { Norm } from '../../../src/engine/types.js';
import { Rng } from '../../../src/util/random.js';
import { epsInGap, type LinearProblem, linearProblem } from '../../helpers/linear-problems.js';
import { withoutTimings } from '../../helpers/reports.js';

/**
 * Every random draw on point i depends only on (seed, global index i, attack, restart): the merge of
 * parts of any split, in any batch size, equals one run on all points (timings aside).
 */

const shape: [number, number, number] = [4, 4, 1];

async function partOf(problem: LinearProblem, indices: number[], options: Parameters<typeof autoAttack>[3]) {
  const order = tf.tensor1d(indices, 'int32');
  const x = tf.gather(problem.x, order) as tf.Tensor4D;
  order.dispose();
  try {
    return await autoAttackPart(
      problem.classifier,
      x,
      Int32Array.from(indices, (i) => problem.y[i]),
      {
        ...options,
        indices,
        sanityChecks: indices.includes(0),
      },
    );
  } finally {
    x.dispose();
  }
}

describe.each(['L2', 'Linf'] as Norm[])('AutoAttack parts (%s)', (norm) => {
  it('1 part, 7 contiguous shards and a shuffled split give the same report', async () => {
    const n = 30;
    const problem = linearProblem({ n, shape, numClasses: 10, norm, seed: 21, wrongShare: 0.1 });
    // Beyond the gap and with few iterations, so several attacks of the sequence break points.
    const options = { norm, eps: epsInGap(problem) * 1.6, seed: 3, iterations: 3, queries: 40 };
    const before = tf.memory().numTensors;
    const whole = await autoAttack(problem.classifier, problem.x, problem.y, { ...options, batchSize: 8 });
    expect(whole.per_attack.filter((a) => a.broken > 0).length).toBeGreaterThanOrEqual(2);
    expect(whole.samples.some((s) => s.broken_by === null)).toBe(true);

    const bounds = [0, 4, 9, 13, 18, 22, 27, 30];
    const shards: AutoAttackPart[] = [];
    for (let s = 0; s < 7; s++) {
      const indices = Array.from({ length: bounds[s + 1] - bounds[s] }, (_, j) => bounds[s] + j);
      shards.push(await partOf(problem, indices, { ...options, batchSize: 3 }));
    }
    expect(withoutTimings(mergeAutoAttackParts(shards.reverse()))).toEqual(withoutTimings(whole));

    const permutation = Array.from(new Rng(5).permutation(n));
    const split = [permutation.slice(0, 11), permutation.slice(11)];
    const parts = [await partOf(problem, split[0], options), await partOf(problem, split[1], options)];
    expect(withoutTimings(mergeAutoAttackParts(parts))).toEqual(withoutTimings(whole));
    expect(tf.memory().numTensors).toBe(before);

    // The comparison can fail: another seed moves the attacks' random starts.
    const other = await autoAttack(problem.classifier, problem.x, problem.y, { ...options, seed: 4 });
    expect(other.samples.map((s) => s.perturbation_norm)).not.toEqual(
      whole.samples.map((s) => s.perturbation_norm),
    );
    problem.dispose();
  });
});

describe('mergeAutoAttackParts', () => {
  it('refuses parts that share a point or disagree on the settings', async () => {
    const problem = linearProblem({ n: 6, shape, numClasses: 10, norm: 'L2', seed: 1 });
    const options = { norm: 'L2' as const, eps: 0.05, seed: 0, iterations: 2, queries: 5 };
    const a = await partOf(problem, [0, 1, 2], options);
    const b = await partOf(problem, [2, 3], options);
    const c = await partOf(problem, [4, 5], { ...options, seed: 1 });
    expect(() => mergeAutoAttackParts([a, b])).toThrow(AutoAttackMergeError);
    expect(() => mergeAutoAttackParts([a, b])).toThrow(/point 2 is in more than one part/);
    expect(() => mergeAutoAttackParts([a, c])).toThrow(/disagree on seed/);
    expect(() => mergeAutoAttackParts([])).toThrow(AutoAttackMergeError);
    await expect(partOf(problem, [1, 1], options)).rejects.toThrow(/'indices' must be distinct/);
    problem.dispose();
  });
});
