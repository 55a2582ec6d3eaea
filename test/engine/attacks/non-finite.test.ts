import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { autoAttack } from '../../../src/engine/attacks/autoattack.js';
import { fab } from '../../../src/engine/attacks/fab.js';
import { squareAttack } from '../../../src/engine/attacks/square.js';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import { NonFiniteLogitsError } from '../../../src/engine/model/logits.js';
import { rejectionOf } from '../../helpers/rejection.js';

/**
 * Issue 26: a model that outputs NaN passed an audit ("succeeded", accuracy 0.25, every prediction
 * class 0; `--min-robust-accuracy 0.2` exited 0). An audit that meets a non-finite logit, on a clean
 * point or on one an attack made, now stops with `NonFiniteLogitsError` instead of a verdict.
 */

const SHAPE: [number, number, number] = [2, 2, 1];

/**
 * Two classes: logit 0 is -log(limit - mean(x)), rising to +Inf at the limit and NaN past it; logit
 * 1 is `other`. Class 1 wins while mean(x) < limit - e^-other: an attack on class 1 pushes the mean
 * up, towards the limit (with `other` 5 the decision boundary lies just below it).
 */
function logModel(limit: number, other = 2) {
  return functionClassifier({ inputShape: SHAPE, numClasses: 2 }, (x) =>
    tf.tidy(() => {
      const mean = tf.mean(x, [1, 2, 3]).reshape([-1, 1]);
      return tf.concat([tf.neg(tf.log(tf.sub(limit, mean))), tf.onesLike(mean).mul(other)], 1) as tf.Tensor2D;
    }),
  );
}

const points = (values: number[]) =>
  tf.tensor4d(
    values.flatMap((v) => [v, v, v, v]),
    [values.length, ...SHAPE],
  );

const refusal = (promise: Promise<unknown>) => rejectionOf(promise, NonFiniteLogitsError);

describe('audits that meet non-finite logits', () => {
  it('a NaN logit on a clean point: refused naming the point, no tensor left', async () => {
    const before = tf.memory().numTensors;
    const x = points([0.1, 0.2, 0.9]);
    const error = await refusal(
      autoAttack(logModel(0.5), x, Int32Array.from([0, 0, 0]), {
        norm: 'Linf',
        eps: 0.01,
        iterations: 2,
        queries: 5,
        version: 'standard',
      }),
    );
    x.dispose();
    expect(error.point).toBe(2);
    expect(error.message).toContain('the clean forward pass at point 2');
    expect(tf.memory().numTensors).toBe(before);
  });

  it('finite on the clean points, non-finite where the attack goes: refused, no verdict', async () => {
    const before = tf.memory().numTensors;
    const x = points([0.3, 0.35]);
    // Class 1 on both points (logit 0 is 1.2 and 1.4): the attacks push the mean past 0.6.
    const error = await refusal(
      autoAttack(logModel(0.6), x, Int32Array.from([1, 1]), {
        norm: 'Linf',
        eps: 0.5,
        iterations: 3,
        queries: 20,
        version: 'standard',
      }),
    );
    x.dispose();
    expect(error.message).toContain('non-finite logit');
    expect(tf.memory().numTensors).toBe(before);
  });

  it('FAB and Square meet it too, on their own', async () => {
    const before = tf.memory().numTensors;
    const x = points([0.3, 0.35]);
    const y = Int32Array.from([1, 1]);
    const fabError = await refusal(
      fab(logModel(0.6, 5), x, y, { norm: 'Linf', eps: 0.5, iterations: 5, targeted: false }),
    );
    expect(fabError.message).toContain('FAB');
    const squareError = await refusal(
      squareAttack(logModel(0.6), x, y, { norm: 'Linf', eps: 0.5, queries: 50 }),
    );
    expect(squareError.message).toContain('Square');
    x.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
