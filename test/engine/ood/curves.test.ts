import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import { confidenceCurves } from '../../../src/engine/ood/curves.js';
import { Rng } from '../../../src/util/random.js';

const SHAPE: [number, number, number] = [4, 4, 1];
const DIM = 16;
const sigmoid = (t: number) => 1 / (1 + Math.exp(-t));

/** Two classes, logits [0, v.x + bias] with v = +-0.5 per pixel (||v||_2 = 2). */
function twoClassLinear(rng: Rng) {
  const v = Float32Array.from({ length: DIM }, () => (rng.next() < 0.5 ? -0.5 : 0.5));
  const bias = -0.5 * v.reduce((a, b) => a + b);
  const model = functionClassifier({ inputShape: SHAPE, numClasses: 2 }, (x) =>
    tf.tidy(() => {
      const margin = x
        .reshape([x.shape[0], DIM])
        .matMul(tf.tensor2d(v, [DIM, 1]))
        .add(bias);
      return tf.concat([tf.zerosLike(margin), margin], 1) as tf.Tensor2D;
    }),
  );
  const margin = (xs: Float32Array, i: number) => v.reduce((s, vj, j) => s + vj * xs[i * DIM + j], bias);
  /** Images 0.5 + t v/2 + noise: margins near 2t, pixels inside [0.37, 0.63]. */
  const images = (n: number) => {
    const xs = new Float32Array(n * DIM);
    for (let i = 0; i < n; i++) {
      const t = (i % 2 === 0 ? 1 : -1) * (0.3 + 0.3 * rng.next());
      for (let j = 0; j < DIM; j++) xs[i * DIM + j] = 0.5 + (t * v[j]) / 2 + 0.05 * (2 * rng.next() - 1);
    }
    return xs;
  };
  return { model, margin, images };
}

describe('confidenceCurves', () => {
  it('matches the closed form of a linear model at every radius where the box does not bind', async () => {
    const rng = new Rng(13);
    const { model, margin, images } = twoClassLinear(rng);
    const inXs = images(6);
    const outXs = images(6);
    // Labels: the predicted class for the first 4 points, the other class for the last 2.
    const y = Int32Array.from({ length: 6 }, (_, i) => (margin(inXs, i) > 0 ? 1 : 0) ^ (i >= 4 ? 1 : 0));
    const xIn = tf.tensor4d(inXs, [6, ...SHAPE]);
    const xOut = tf.tensor4d(outXs, [6, ...SHAPE]);
    const before = tf.memory().numTensors;
    const radii = [0, 0.05, 0.1, 0.2];
    const curves = await confidenceCurves(model, { x: xIn, y }, xOut, { radii, iterations: 40, seed: 1 });
    expect(tf.memory().numTensors).toBe(before);
    expect(curves.radii).toEqual(radii);
    radii.forEach((eps, r) => {
      // p_y = sigmoid(s m), s = +1 for y = 1; its minimum over the ball is at s m - eps ||v||.
      const inExpected =
        Array.from(y, (label, i) => sigmoid((label === 1 ? 1 : -1) * margin(inXs, i) - 2 * eps)).reduce(
          (a, b) => a + b,
        ) / 6;
      const outExpected =
        Array.from({ length: 6 }, (_, i) => sigmoid(Math.abs(margin(outXs, i)) + 2 * eps)).reduce(
          (a, b) => a + b,
        ) / 6;
      expect(Math.abs(curves.inTrueClassConfidence[r] - inExpected)).toBeLessThan(1e-3);
      expect(Math.abs(curves.outMaxConfidence[r] - outExpected)).toBeLessThan(1e-3);
    });
    tf.dispose([xIn, xOut]);
  });

  it('is monotone in the radius, and flat for a constant model', async () => {
    const rng = new Rng(4);
    const { model, images } = twoClassLinear(rng);
    const xIn = tf.tensor4d(images(4), [4, ...SHAPE]);
    const xOut = tf.tensor4d(
      Float32Array.from({ length: 4 * DIM }, () => rng.next()),
      [4, ...SHAPE],
    );
    const y = Int32Array.from([0, 1, 1, 0]);
    const curves = await confidenceCurves(model, { x: xIn, y }, xOut, {
      radii: [2, 0, 1, 3],
      iterations: 15,
      seed: 0,
    });
    expect(curves.radii).toEqual([0, 1, 2, 3]);
    for (let r = 1; r < 4; r++) {
      expect(curves.inTrueClassConfidence[r]).toBeLessThanOrEqual(curves.inTrueClassConfidence[r - 1]);
      expect(curves.outMaxConfidence[r]).toBeGreaterThanOrEqual(curves.outMaxConfidence[r - 1]);
    }
    const constant = functionClassifier({ inputShape: SHAPE, numClasses: 2 }, (x) =>
      tf.tidy(() =>
        x
          .reshape([x.shape[0], DIM])
          .sum(1, true)
          .mul(0)
          .add(tf.tensor2d([[0, 1]])),
      ),
    );
    const flat = await confidenceCurves(constant, { x: xIn, y }, xOut, { radii: [0, 1], iterations: 5 });
    const p1 = sigmoid(1);
    expect(flat.outMaxConfidence[0]).toBeCloseTo(p1, 6);
    expect(flat.outMaxConfidence[1]).toBe(flat.outMaxConfidence[0]);
    // Labels 0, 1, 1, 0: true-class probabilities 1 - p1, p1, p1, 1 - p1.
    expect(flat.inTrueClassConfidence[0]).toBeCloseTo(0.5, 6);
    expect(flat.inTrueClassConfidence[1]).toBe(flat.inTrueClassConfidence[0]);
    tf.dispose([xIn, xOut]);
  });

  it('rejects negative radii and empty sets', async () => {
    const { model } = twoClassLinear(new Rng(1));
    const x = tf.zeros([1, ...SHAPE]) as tf.Tensor4D;
    const empty = tf.zeros([0, ...SHAPE]) as tf.Tensor4D;
    await expect(confidenceCurves(model, { x, y: Int32Array.from([0]) }, x, { radii: [-1] })).rejects.toThrow(
      "'radii[0]' must be a finite number >= 0, got -1",
    );
    await expect(confidenceCurves(model, { x, y: Int32Array.from([0]) }, empty)).rejects.toThrow(
      'must hold at least one image each',
    );
    tf.dispose([x, empty]);
  });
});
