import * as tf from '@tensorflow/tfjs';
import type { Classifier } from '../model/classifier.js';
import type { Norm } from '../types.js';
import { vectorNorm } from './projections.js';

/** Float slack on the budget: projections are exact up to float32 rounding of ||d||. */
export const NORM_SLACK = 1e-5;

export interface VerificationFailure {
  /** Position in the batch. */
  index: number;
  reason: string;
}

export interface Verification {
  /** 1 where the claimed adversarial point passed every check. */
  valid: Uint8Array;
  /** ||adversarial_i - x_i|| in the threat model's norm (computed in float64 on the host). */
  norms: Float64Array;
  failures: VerificationFailure[];
}

/**
 * Re-checks claimed adversarial points independently of the attack that produced them: inside
 * [0,1], within `eps + 1e-5` of the clean point, and misclassified when the model is evaluated again.
 * A robustness number is only as good as this check, so the composition trusts nothing else.
 */
export function verifyAdversarial(
  classifier: Classifier,
  x: tf.Tensor4D,
  adversarial: tf.Tensor4D,
  y: Int32Array,
  claimed: Uint8Array,
  threat: { norm: Norm; eps: number },
): Verification {
  if (x.shape.join() !== adversarial.shape.join()) {
    throw new Error(`'adversarial' must have the shape of 'x' [${x.shape}], got [${adversarial.shape}]`);
  }
  const n = x.shape[0];
  const rowSize = x.size / Math.max(n, 1);
  const clean = x.dataSync();
  const rows = adversarial.dataSync();
  const predicted = tf.tidy(() => classifier.logits(adversarial).argMax(1).dataSync());
  const valid = new Uint8Array(n);
  const norms = new Float64Array(n);
  const failures: VerificationFailure[] = [];
  const difference = new Float64Array(rowSize);
  for (let i = 0; i < n; i++) {
    const offset = i * rowSize;
    let inBox = true;
    for (let j = 0; j < rowSize; j++) {
      const value = rows[offset + j];
      if (!(value >= 0 && value <= 1)) inBox = false;
      difference[j] = value - clean[offset + j];
    }
    norms[i] = vectorNorm(threat.norm, difference);
    if (!claimed[i]) continue;
    if (!inBox) failures.push({ index: i, reason: 'outside the box [0,1]' });
    else if (!(norms[i] <= threat.eps + NORM_SLACK)) {
      failures.push({ index: i, reason: `${threat.norm} norm ${norms[i]} exceeds eps ${threat.eps}` });
    } else if (predicted[i] === y[i])
      failures.push({ index: i, reason: 'correctly classified on re-evaluation' });
    else valid[i] = 1;
  }
  return { valid, norms, failures };
}

/**
 * Checks that make a robustness number suspect, as warnings (after the reference's checks.py):
 * outputs that look like probabilities (softmax inside the model flattens CE gradients), a
 * randomised model (two passes differ: use version 'rand'), and zero input gradients.
 */
export function sanityWarnings(classifier: Classifier, x: tf.Tensor4D, y: Int32Array): string[] {
  const warnings: string[] = [];
  if (x.shape[0] === 0) return warnings;
  const [first, second] = tf.tidy(() => [classifier.logits(x).dataSync(), classifier.logits(x).dataSync()]);
  const k = classifier.numClasses;
  const n = x.shape[0];
  let looksLikeProbabilities = true;
  for (let i = 0; i < n && looksLikeProbabilities; i++) {
    let sum = 0;
    for (let c = 0; c < k; c++) {
      const p = first[i * k + c];
      if (p < 0 || p > 1) looksLikeProbabilities = false;
      sum += p;
    }
    if (Math.abs(sum - 1) > 1e-3) looksLikeProbabilities = false;
  }
  if (looksLikeProbabilities) {
    warnings.push(
      'the model outputs look like probabilities (rows in [0,1] summing to 1); attacks expect logits',
    );
  }
  let largestChange = 0;
  for (let i = 0; i < first.length; i++) {
    largestChange = Math.max(largestChange, Math.abs(first[i] - second[i]) / (1 + Math.abs(first[i])));
  }
  if (largestChange > 1e-5) {
    warnings.push(
      `the model is randomised (two passes on the same input differ by up to ${largestChange.toPrecision(3)}); ` +
        "use version 'rand' (EOT) for a meaningful number",
    );
  }
  const labels = tf.tensor1d(y, 'int32');
  const zeroRows = tf.tidy(() => {
    const grad = tf.grad((input: tf.Tensor) =>
      tf.losses
        .softmaxCrossEntropy(tf.oneHot(labels, k), classifier.logits(input as tf.Tensor4D))
        .add(input.sum().mul(0)),
    )(x);
    return grad.reshape([n, -1]).abs().max(1).equal(0).sum().dataSync()[0];
  });
  labels.dispose();
  if (zeroRows > 0) {
    warnings.push(
      `the cross-entropy gradient is exactly zero for ${zeroRows} of ${n} points checked; ` +
        'gradient-based attacks cannot move them (gradient masking?)',
    );
  }
  return warnings;
}
