import * as tf from '@tensorflow/tfjs';
import { dualNorm } from '../../src/engine/attacks/projections.js';
import { type Classifier, functionClassifier } from '../../src/engine/model/classifier.js';
import type { Norm } from '../../src/engine/types.js';
import { Rng } from '../../src/util/random.js';

/**
 * Closed-form test models for the attacks. For a linear model z = W^T x + b the minimal
 * perturbation (ignoring the box) that makes class k beat the label y has norm
 * (z_y - z_k) / ||w_y - w_k||_* (dual norm), so the exact robust accuracy at eps is known.
 */
export interface LinearProblem {
  classifier: Classifier;
  x: tf.Tensor4D;
  y: Int32Array;
  /** Exact distance to the decision boundary per point (0 for clean errors). */
  distance: Float64Array;
  cleanCorrect: Uint8Array;
  dispose(): void;
}

export function linearProblem(options: {
  n: number;
  shape: [number, number, number];
  numClasses: number;
  norm: Norm;
  seed: number;
  /** Share of labels replaced by a wrong class (clean errors). */
  wrongShare?: number;
}): LinearProblem {
  const { n, shape, numClasses: k, norm } = options;
  const d = shape[0] * shape[1] * shape[2];
  const rng = new Rng(options.seed);
  const w = Float32Array.from(rng.normals(d * k), (v) => v * 0.5);
  const b = Float32Array.from(rng.normals(k), (v) => v * 0.1);
  // Inside [0.3, 0.7]: every minimal perturbation used below (coordinates <= 0.3) stays in the box.
  const xValues = Float32Array.from({ length: n * d }, () => 0.3 + 0.4 * rng.next());
  const weights = tf.tensor2d(w, [d, k]);
  const bias = tf.tensor1d(b);
  const classifier = functionClassifier({ inputShape: shape, numClasses: k }, (x) =>
    tf.tidy(() => x.reshape([x.shape[0], d]).matMul(weights).add(bias) as tf.Tensor2D),
  );
  const logits = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < k; c++) {
      let z = b[c];
      for (let j = 0; j < d; j++) z += xValues[i * d + j] * w[j * k + c];
      logits[i * k + c] = z;
    }
  }
  const y = new Int32Array(n);
  const distance = new Float64Array(n);
  const cleanCorrect = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let top = 0;
    for (let c = 1; c < k; c++) if (logits[i * k + c] > logits[i * k + top]) top = c;
    const wrong = rng.next() < (options.wrongShare ?? 0);
    y[i] = wrong ? (top + 1 + rng.int(k - 1)) % k : top;
    cleanCorrect[i] = wrong ? 0 : 1;
    if (wrong) continue;
    let nearest = Number.POSITIVE_INFINITY;
    for (let c = 0; c < k; c++) {
      if (c === top) continue;
      const difference = Array.from({ length: d }, (_, j) => w[j * k + top] - w[j * k + c]);
      nearest = Math.min(nearest, (logits[i * k + top] - logits[i * k + c]) / dualNorm(norm, difference));
    }
    distance[i] = nearest;
  }
  const x = tf.tensor4d(xValues, [n, ...shape]);
  return {
    classifier,
    x,
    y,
    distance,
    cleanCorrect,
    dispose: () => tf.dispose([weights, bias, x]),
  };
}

/**
 * An eps in the widest gap between the boundary distances of correct points, between the
 * 30% and 70% quantiles, so no point sits within float error of the threshold.
 */
export function epsInGap(problem: LinearProblem): number {
  const sorted = Array.from(problem.distance.filter((_, i) => problem.cleanCorrect[i])).sort((a, b) => a - b);
  let best = { gap: -1, eps: 0 };
  for (let i = Math.floor(0.3 * sorted.length); i < Math.floor(0.7 * sorted.length); i++) {
    const gap = sorted[i + 1] - sorted[i];
    if (gap > best.gap) best = { gap, eps: (sorted[i] + sorted[i + 1]) / 2 };
  }
  return best.eps;
}

/** The exact robust accuracy at eps: correct points farther than eps from every boundary. */
export function exactRobustAccuracy(problem: LinearProblem, eps: number): number {
  let robust = 0;
  for (let i = 0; i < problem.y.length; i++)
    if (problem.cleanCorrect[i] && problem.distance[i] > eps) robust++;
  return robust / problem.y.length;
}
