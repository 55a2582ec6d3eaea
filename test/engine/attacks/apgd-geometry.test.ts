import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  attackLoss,
  crossEntropyLoss,
  dlrLoss,
  dlrTargetedLoss,
  logConfidenceTargetLoss,
  maxLogConfidenceLoss,
} from '../../../src/engine/attacks/losses.js';
import {
  perExampleNorm,
  projectL2,
  projectLinf,
  randomStart,
  steepestDirection,
  vectorNorm,
} from '../../../src/engine/attacks/projections.js';
import { Rng } from '../../../src/util/random.js';

describe('projections', () => {
  /** The projection of the rows of `u` around those of `x` within `eps`, as numbers; no tensor kept. */
  const projected = (
    projection: (x: tf.Tensor2D, u: tf.Tensor2D, eps: number) => tf.Tensor2D,
    x: number[][],
    u: number[][],
    eps: number,
  ) => tf.tidy(() => Array.from(projection(tf.tensor2d(x), tf.tensor2d(u), eps).dataSync()));

  it('projects radially onto the L2 ball, then clips to the box', () => {
    const before = tf.memory().numTensors;
    // Row 0: d = (0.3, 0.4), ||d|| = 0.5 > eps = 0.25 -> d * 0.5. Row 1: inside, unchanged.
    const values = projected(
      projectL2,
      [
        [0.5, 0.5],
        [0.5, 0.5],
      ],
      [
        [0.8, 0.9],
        [0.6, 0.5],
      ],
      0.25,
    );
    expect(values[0]).toBeCloseTo(0.65, 6);
    expect(values[1]).toBeCloseTo(0.7, 6);
    expect(values[2]).toBeCloseTo(0.6, 6);
    expect(values[3]).toBeCloseTo(0.5, 6);
    // The box is applied after the radial step.
    expect(projected(projectL2, [[0.9, 0.1]], [[1.9, 0.1]], 0.5)).toEqual([1, Math.fround(0.1)]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('projects onto the Linf ball and the box coordinate-wise', () => {
    const values = projected(projectLinf, [[0.5, 0.05, 0.5]], [[0.9, -0.3, 0.45]], 0.1);
    expect(values[0]).toBeCloseTo(0.6, 6);
    expect(values[1]).toBeCloseTo(0, 6);
    expect(values[2]).toBeCloseTo(0.45, 6);
  });

  it('gives unit steps: L2-normalised for L2, sign for Linf', () => {
    const g = tf.tensor2d([
      [3, -4],
      [0, 0],
    ]);
    expect(Array.from(steepestDirection('L2', g).dataSync()).map((v) => Number(v.toFixed(6)))).toEqual([
      0.6, -0.8, 0, 0,
    ]);
    expect(Array.from(steepestDirection('Linf', g).dataSync())).toEqual([1, -1, 0, 0]);
    expect(Array.from(perExampleNorm('Linf', g).dataSync())).toEqual([4, 0]);
    expect(vectorNorm('L2', [3, -4])).toBe(5);
    g.dispose();
  });

  it('starts at radius eps (before clipping) and is reproducible by seed', () => {
    const x = tf.fill([3, 4, 4, 1], 0.5) as tf.Tensor4D;
    const a = randomStart('L2', x, 0.3, new Rng(7));
    const b = randomStart('L2', x, 0.3, new Rng(7));
    const norms = perExampleNorm('L2', a.sub(x)).dataSync();
    for (const n of norms) expect(n).toBeCloseTo(0.3, 5);
    expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
    const c = randomStart('Linf', x, 0.1, new Rng(7));
    for (const n of perExampleNorm('Linf', c.sub(x)).dataSync()) expect(n).toBeCloseTo(0.1, 5);
    tf.dispose([x, a, b, c]);
  });
});

describe('losses', () => {
  const logits = () =>
    tf.tensor2d([
      [4, 1, 2, 0],
      [1, 3, 0.5, 2],
    ]);
  const labels = () => tf.tensor1d([0, 0], 'int32');

  it('computes CE, DLR and targeted DLR exactly', () => {
    const before = tf.memory().numTensors;
    const z = logits();
    const y = labels();
    const read = (f: () => tf.Tensor) => tf.tidy(() => f().dataSync());
    const ce = read(() => crossEntropyLoss(z, y));
    const lse = Math.log(Math.exp(4) + Math.exp(1) + Math.exp(2) + 1);
    expect(ce[0]).toBeCloseTo(lse - 4, 5);
    const dlr = read(() => dlrLoss(z, y));
    // Row 0: -(4 - 2) / (4 - 1); row 1: -(1 - 3) / (3 - 1).
    expect(dlr[0]).toBeCloseTo(-2 / 3, 6);
    expect(dlr[1]).toBeCloseTo(1, 6);
    const t = tf.tensor1d([3, 1], 'int32');
    const dlrT = read(() => dlrTargetedLoss(z, y, t));
    // Row 0: -(4 - 0) / (4 - (1 + 0) / 2); row 1: -(1 - 3) / (3 - (1 + 0.5) / 2).
    expect(dlrT[0]).toBeCloseTo(-4 / 3.5, 6);
    expect(dlrT[1]).toBeCloseTo(2 / 2.25, 6);
    tf.dispose([z, y, t]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('computes log-confidences with a temperature', () => {
    const z = logits();
    const t = tf.tensor1d([1, 3], 'int32');
    const lc = logConfidenceTargetLoss(z, t, 2).dataSync();
    const row0 = [4, 1, 2, 0].map((v) => Math.exp(v / 2));
    expect(lc[0]).toBeCloseTo(Math.log(row0[1] / row0.reduce((a, b) => a + b)), 5);
    const mc = maxLogConfidenceLoss(z, 1).dataSync();
    const row1 = [1, 3, 0.5, 2].map(Math.exp);
    expect(mc[1]).toBeCloseTo(Math.log(row1[1] / row1.reduce((a, b) => a + b)), 5);
    tf.dispose([z, t]);
  });

  it('rejects too few classes and missing inputs with clear errors', () => {
    const z = tf.tensor2d([[1, 2, 3]]);
    const y = tf.tensor1d([0], 'int32');
    expect(() => dlrTargetedLoss(z, y, y)).toThrow(/at least 4 classes/);
    expect(() => attackLoss('log-confidence-target', z, {})).toThrow(/'targets'/);
    expect(() => crossEntropyLoss(tf.tensor1d([1]) as unknown as tf.Tensor2D, y)).toThrow(/rank 2/);
    tf.dispose([z, y]);
  });

  it('has gradients that flow through the sorted logits', () => {
    const z = logits();
    const y = labels();
    const g = tf.grad((v: tf.Tensor) => dlrLoss(v as tf.Tensor2D, y).sum())(z);
    const values = g.dataSync();
    // Row 0: L = -(z0 - z2) / (z0 - z1): dL/dz2 = 1/3, dL/dz3 = 0.
    expect(values[2]).toBeCloseTo(1 / 3, 5);
    expect(values[3]).toBeCloseTo(0, 6);
    tf.dispose([z, y, g]);
  });
});
