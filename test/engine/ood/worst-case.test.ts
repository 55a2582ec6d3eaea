import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { functionClassifier, probabilities } from '../../../src/engine/model/classifier.js';
import { worstCaseConfidence } from '../../../src/engine/ood/worst-case.js';
import { Rng } from '../../../src/util/random.js';

const SHAPE: [number, number, number] = [4, 4, 1];
const DIM = 16;

/** logits = flatten(x) W + b, W [DIM, K] row-major. */
function linearModel(weights: Float32Array, bias: Float32Array, numClasses: number) {
  return functionClassifier({ inputShape: SHAPE, numClasses }, (x) =>
    tf.tidy(() =>
      x
        .reshape([x.shape[0], DIM])
        .matMul(tf.tensor2d(weights, [DIM, numClasses]))
        .add(tf.tensor1d(bias)),
    ),
  );
}

/** Images with every pixel in [0.3, 0.7], so a ball of radius <= 0.3 never meets the box. */
function interiorImages(rng: Rng, n: number): tf.Tensor4D {
  return tf.tensor4d(
    Float32Array.from({ length: n * DIM }, () => 0.3 + 0.4 * rng.next()),
    [n, ...SHAPE],
  );
}

const sigmoid = (t: number) => 1 / (1 + Math.exp(-t));

describe('worstCaseConfidence', () => {
  it('finds the closed-form optimum of a two-class linear model when the box does not bind', async () => {
    const rng = new Rng(5);
    // Class 1 minus class 0 weights v = +-0.5 per pixel, ||v||_2 = 2; margin m(x) = v.x + b1 - b0.
    const v = Float32Array.from({ length: DIM }, () => (rng.next() < 0.5 ? -0.5 : 0.5));
    const weights = new Float32Array(DIM * 2);
    for (let j = 0; j < DIM; j++) weights[j * 2 + 1] = v[j];
    const bias = -0.5 * v.reduce((a, b) => a + b);
    const model = linearModel(weights, Float32Array.from([0, bias]), 2);
    // x = 0.5 + t u + small noise (u = v / 2): margins near 2t with |t| in [0.3, 0.6], pixels in [0.37, 0.63].
    const n = 12;
    const xs = new Float32Array(n * DIM);
    for (let i = 0; i < n; i++) {
      const t = (i % 2 === 0 ? 1 : -1) * (0.3 + 0.3 * rng.next());
      for (let j = 0; j < DIM; j++) xs[i * DIM + j] = 0.5 + (t * v[j]) / 2 + 0.05 * (2 * rng.next() - 1);
    }
    const x = tf.tensor4d(xs, [n, ...SHAPE]);
    const margins = Array.from({ length: n }, (_, i) =>
      v.reduce((s, vj, j) => s + vj * xs[i * DIM + j], bias),
    );
    const eps = 0.2;
    const before = tf.memory().numTensors;
    const result = await worstCaseConfidence(model, x, { eps, seed: 1 });
    for (let i = 0; i < n; i++) {
      const margin = margins[i];
      expect(Math.abs(margin)).toBeGreaterThan(0.3);
      // max over ||d|| <= eps of log sigmoid(|m(x + d)|) = log sigmoid(|m(x)| + eps ||v||)
      const optimum = sigmoid(Math.abs(margin) + eps * 2);
      expect(result.confidence[i]).toBeGreaterThanOrEqual(result.cleanConfidence[i]);
      expect(result.cleanConfidence[i]).toBeCloseTo(sigmoid(Math.abs(margin)), 5);
      expect(Math.abs(result.confidence[i] - optimum)).toBeLessThan(1e-3);
      expect(result.confidence[i]).toBeLessThanOrEqual(optimum + 1e-5);
    }
    // The returned images are where the confidence was found, inside the ball and the box.
    const found = result.images.dataSync();
    const atImages = probabilities(model, result.images);
    const atImagesValues = atImages.dataSync();
    for (let i = 0; i < n; i++) {
      let squared = 0;
      for (let j = 0; j < DIM; j++) {
        const value = found[i * DIM + j];
        expect(value).toBeGreaterThanOrEqual(0);
        expect(value).toBeLessThanOrEqual(1);
        squared += (value - xs[i * DIM + j]) ** 2;
      }
      expect(Math.sqrt(squared)).toBeLessThanOrEqual(eps);
      expect(Math.max(atImagesValues[2 * i], atImagesValues[2 * i + 1])).toBeCloseTo(result.confidence[i], 5);
    }
    tf.dispose([atImages, result.images]);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('matches the closed form with three classes, temperature, batching and Linf', async () => {
    // Only class 0 depends on x: z = [a.x, 0, 0]; p_0 is monotone in a.x, so the optimum moves along a.
    const rng = new Rng(9);
    // Positive weights: a.x > 0 on [0,1] images, so class 0 is the most likely everywhere in the ball.
    const a = Float32Array.from({ length: DIM }, () => Math.abs(rng.normal()));
    const weights = new Float32Array(DIM * 3);
    for (let j = 0; j < DIM; j++) weights[j * 3] = a[j];
    const model = linearModel(weights, new Float32Array(3), 3);
    const n = 5;
    const x = interiorImages(rng, n);
    const xs = x.dataSync();
    const temperature = 2;
    const p0 = (z0: number) => Math.exp(z0 / temperature) / (Math.exp(z0 / temperature) + 2);
    const aL2 = Math.hypot(...a);
    const aL1 = a.reduce((s, v) => s + Math.abs(v), 0);
    for (const [norm, eps, dual] of [
      ['L2', 0.25, aL2],
      ['Linf', 0.05, aL1],
    ] as const) {
      const result = await worstCaseConfidence(model, x, { eps, norm, temperature, batchSize: 2, seed: 3 });
      for (let i = 0; i < n; i++) {
        const z0 = a.reduce((s, v, j) => s + v * xs[i * DIM + j], 0);
        expect(z0).toBeGreaterThan(0);
        expect(Math.abs(result.confidence[i] - p0(z0 + eps * dual))).toBeLessThan(1e-3);
        expect(result.confidence[i]).toBeGreaterThanOrEqual(result.cleanConfidence[i]);
      }
      result.images.dispose();
    }
    x.dispose();
  });

  it('leaves the confidence of a constant model unchanged', async () => {
    const model = functionClassifier({ inputShape: SHAPE, numClasses: 3 }, (x) =>
      tf.tidy(() =>
        x
          .reshape([x.shape[0], DIM])
          .sum(1, true)
          .mul(0)
          .add(tf.tensor2d([[1, 2, 0.5]])),
      ),
    );
    const x = interiorImages(new Rng(2), 4);
    const result = await worstCaseConfidence(model, x, { eps: 1, iterations: 20, seed: 0 });
    const expected = Math.exp(2) / (Math.exp(1) + Math.exp(2) + Math.exp(0.5));
    for (let i = 0; i < 4; i++) {
      expect(result.confidence[i]).toBe(result.cleanConfidence[i]);
      expect(result.confidence[i]).toBeCloseTo(expected, 6);
      expect(result.predicted[i]).toBe(1);
    }
    result.images.dispose();
    x.dispose();
  });

  it('gives every image the same result in any split (seeds by global index, not batch)', async () => {
    // A random 3-class model with a small non-linearity and images near the box: the search's
    // outcome depends on each image's random start, so equal results mean equal draws.
    const rng = new Rng(11);
    const weights = Float32Array.from(rng.normals(DIM * 3), (v) => v * 2);
    const model = functionClassifier({ inputShape: SHAPE, numClasses: 3 }, (x) =>
      tf.tidy(() =>
        x
          .reshape([x.shape[0], DIM])
          .matMul(tf.tensor2d(weights, [DIM, 3]))
          .tanh()
          .mul(3),
      ),
    );
    const n = 10;
    const x = tf.tensor4d(
      Float32Array.from({ length: n * DIM }, () => rng.next()),
      [n, ...SHAPE],
    );
    const before = tf.memory().numTensors;
    const options = { eps: 0.7, iterations: 6, restarts: 2, seed: 4 };
    const whole = await worstCaseConfidence(model, x, { ...options, batchSize: 128 });
    const batched = await worstCaseConfidence(model, x, { ...options, batchSize: 3 });
    // Parts [0, 4) and [4, 10) as a worker pool runs them, each told its first global index.
    const head = x.slice([0, 0, 0, 0], [4, -1, -1, -1]);
    const tail = x.slice([4, 0, 0, 0], [6, -1, -1, -1]);
    const first = await worstCaseConfidence(model, head, { ...options, batchSize: 2 });
    const second = await worstCaseConfidence(model, tail, { ...options, firstIndex: 4 });
    // Without firstIndex the tail would draw the head's starts: a different result.
    const misplaced = await worstCaseConfidence(model, tail, options);
    const parts = {
      confidence: Float32Array.from([...first.confidence, ...second.confidence]),
      predicted: Int32Array.from([...first.predicted, ...second.predicted]),
      images: Float32Array.from([...first.images.dataSync(), ...second.images.dataSync()]),
    };
    expect(Array.from(whole.confidence).some((c, i) => c > whole.cleanConfidence[i])).toBe(true);
    for (const other of [batched, parts]) {
      expect(other.confidence).toEqual(whole.confidence);
      expect(other.predicted).toEqual(whole.predicted);
      expect(
        Float32Array.from(other.images instanceof Float32Array ? other.images : other.images.dataSync()),
      ).toEqual(whole.images.dataSync());
    }
    expect(Array.from(misplaced.images.dataSync())).not.toEqual(Array.from(second.images.dataSync()));
    tf.dispose([whole.images, batched.images, first.images, second.images, misplaced.images, head, tail]);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it('rejects bad input naming the argument', async () => {
    const model = linearModel(new Float32Array(DIM * 2), new Float32Array(2), 2);
    const x = tf.zeros([2, DIM]) as unknown as tf.Tensor4D;
    await expect(worstCaseConfidence(model, x, { eps: 1 })).rejects.toThrow(
      "'x' must be rank 4 (NHWC), got [2,16]",
    );
    const images = interiorImages(new Rng(1), 1);
    await expect(worstCaseConfidence(model, images, { eps: -1 })).rejects.toThrow(
      "'eps' must be a finite number",
    );
    await expect(worstCaseConfidence(model, images, { eps: 1, batchSize: 0 })).rejects.toThrow("'batchSize'");
    await expect(worstCaseConfidence(model, images, { eps: 1, firstIndex: -1 })).rejects.toThrow(
      "'firstIndex' must be an integer >= 0",
    );
    tf.dispose([x, images]);
  });

  it('stops with an AbortError when the signal fires', async () => {
    const model = linearModel(
      Float32Array.from({ length: DIM * 2 }, (_, j) => (j % 3) - 1),
      new Float32Array(2),
      2,
    );
    const x = interiorImages(new Rng(4), 2);
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    const run = worstCaseConfidence(model, x, {
      eps: 0.5,
      iterations: 100,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.done === 5) controller.abort();
      },
    });
    await expect(run).rejects.toThrow(/abort/i);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });
});
