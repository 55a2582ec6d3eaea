import * as tf from '@tensorflow/tfjs';

/**
 * Per-example attack losses on logits [n, K]; each returns a vector [n] that the attack maximises
 * and is differentiable in the logits (usable inside `tf.grad`).
 */

export type ApgdLoss = 'ce' | 'dlr' | 'dlr-targeted' | 'log-confidence-target' | 'max-log-confidence';

export const APGD_LOSSES: readonly ApgdLoss[] = [
  'ce',
  'dlr',
  'dlr-targeted',
  'log-confidence-target',
  'max-log-confidence',
];

/** Fewest classes each loss is defined for (DLR divides by z_pi1 - z_pi3, targeted DLR uses z_pi4). */
export function minimumClasses(loss: ApgdLoss): number {
  if (loss === 'dlr') return 3;
  if (loss === 'dlr-targeted') return 4;
  return 2;
}

/** Throws a clear error when `loss` is undefined for a model with `numClasses` classes. */
export function assertLossDefined(loss: ApgdLoss, numClasses: number): void {
  const needed = minimumClasses(loss);
  if (numClasses < needed) {
    throw new Error(`loss '${loss}' needs at least ${needed} classes, the model has ${numClasses}`);
  }
}

function assertLogits(logits: tf.Tensor2D): void {
  if (logits.rank !== 2) throw new Error(`'logits' must be rank 2, got [${logits.shape}]`);
}

/** sum_k z_k * onehot(index)_k: z at one index per row, differentiable in z. */
function pick(logits: tf.Tensor2D, index: tf.Tensor1D): tf.Tensor1D {
  return logits.mul(tf.oneHot(index, logits.shape[1])).sum(1) as tf.Tensor1D;
}

/**
 * The `count` largest logits per row, descending, as columns [n]. Built from argMax + one-hot masks
 * (both have registered zero gradients) rather than `tf.topk`, which has none in tfjs.
 */
function sortedColumns(logits: tf.Tensor2D, count: number): tf.Tensor1D[] {
  const columns: tf.Tensor1D[] = [];
  let remaining: tf.Tensor2D = logits;
  for (let k = 0; k < count; k++) {
    const index = remaining.argMax(1) as tf.Tensor1D;
    columns.push(pick(logits, index));
    remaining = remaining.sub(tf.oneHot(index, logits.shape[1]).mul(1e9)) as tf.Tensor2D;
  }
  return columns;
}

/** Cross-entropy CE(z, y) = logsumexp(z) - z_y. */
export function crossEntropyLoss(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Tensor1D {
  assertLogits(logits);
  return tf.tidy(() => pick(tf.logSoftmax(logits), labels).neg() as tf.Tensor1D);
}

/** max_{i != y} z_i, differentiable (the true class is pushed far below every other logit). */
function bestOtherLogit(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Tensor1D {
  const mask = tf.oneHot(labels, logits.shape[1]);
  return logits.sub(mask.mul(1e9)).max(1) as tf.Tensor1D;
}

/** DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12); scale-invariant in the logits. */
export function dlrLoss(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Tensor1D {
  assertLogits(logits);
  assertLossDefined('dlr', logits.shape[1]);
  return tf.tidy(() => {
    const [first, , third] = sortedColumns(logits, 3);
    const margin = pick(logits, labels).sub(bestOtherLogit(logits, labels));
    return margin.neg().div(first.sub(third).add(1e-12)) as tf.Tensor1D;
  });
}

/** Targeted DLR = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12). */
export function dlrTargetedLoss(logits: tf.Tensor2D, labels: tf.Tensor1D, targets: tf.Tensor1D): tf.Tensor1D {
  assertLogits(logits);
  assertLossDefined('dlr-targeted', logits.shape[1]);
  return tf.tidy(() => {
    const [first, , third, fourth] = sortedColumns(logits, 4);
    const margin = pick(logits, labels).sub(pick(logits, targets));
    const scale = first.sub(third.add(fourth).mul(0.5)).add(1e-12);
    return margin.neg().div(scale) as tf.Tensor1D;
  });
}

/** log p_t with p = softmax(z / T): the counterfactual objective (raise the target's confidence). */
export function logConfidenceTargetLoss(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  temperature = 1,
): tf.Tensor1D {
  assertLogits(logits);
  return tf.tidy(() => pick(tf.logSoftmax(logits.div(temperature)) as tf.Tensor2D, targets));
}

/** max_k log p_k with p = softmax(z / T): worst-case confidence of an out-distribution input. */
export function maxLogConfidenceLoss(logits: tf.Tensor2D, temperature = 1): tf.Tensor1D {
  assertLogits(logits);
  return tf.tidy(() => tf.logSoftmax(logits.div(temperature)).max(1) as tf.Tensor1D);
}

export interface LossInputs {
  labels?: tf.Tensor1D;
  targets?: tf.Tensor1D;
  temperature?: number;
}

/** Dispatches on the loss name; names the missing input when a loss needs labels or targets. */
export function attackLoss(loss: ApgdLoss, logits: tf.Tensor2D, inputs: LossInputs): tf.Tensor1D {
  const needLabels = (): tf.Tensor1D => {
    if (!inputs.labels) throw new Error(`loss '${loss}' needs 'y' (true labels)`);
    return inputs.labels;
  };
  const needTargets = (): tf.Tensor1D => {
    if (!inputs.targets) throw new Error(`loss '${loss}' needs 'targets'`);
    return inputs.targets;
  };
  switch (loss) {
    case 'ce':
      return crossEntropyLoss(logits, needLabels());
    case 'dlr':
      return dlrLoss(logits, needLabels());
    case 'dlr-targeted':
      return dlrTargetedLoss(logits, needLabels(), needTargets());
    case 'log-confidence-target':
      return logConfidenceTargetLoss(logits, needTargets(), inputs.temperature);
    case 'max-log-confidence':
      return maxLogConfidenceLoss(logits, inputs.temperature);
  }
}
