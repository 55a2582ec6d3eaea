import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  calibrate,
  calibrationErrorFromConfidences,
  expectedCalibrationError,
  logTemperatureGrid,
  maxProbabilities,
  temperatureByEce,
} from '../../../src/engine/ood/calibration.js';
import { OOD_GATE_TPR, thresholdAtTpr } from '../../../src/engine/ood/metrics.js';
import { Rng } from '../../../src/util/random.js';

/**
 * A perfectly calibrated two-class predictor, built exactly rather than sampled: for each
 * confidence c = m/10 there are 10 examples whose logits give max-probability c, and exactly m
 * of them are labelled with the predicted class. Returns logits [n, 2] and labels.
 */
function calibratedTwoClassSet(): { logits: Float64Array; labels: Int32Array } {
  const correctPerGroup = [6, 7, 8, 9];
  const logits: number[] = [];
  const labels: number[] = [];
  for (const correct of correctPerGroup) {
    const confidence = correct / 10;
    const margin = Math.log(confidence / (1 - confidence)); // softmax([margin, 0])[0] = confidence
    for (let j = 0; j < 10; j++) {
      logits.push(margin, 0);
      labels.push(j < correct ? 0 : 1);
    }
  }
  return { logits: Float64Array.from(logits), labels: Int32Array.from(labels) };
}

function softmaxRows(logits: Float64Array, numClasses: number, temperature = 1): Float64Array {
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length / numClasses; i++) {
    let max = Number.NEGATIVE_INFINITY;
    for (let k = 0; k < numClasses; k++) max = Math.max(max, logits[i * numClasses + k]);
    let sum = 0;
    for (let k = 0; k < numClasses; k++) sum += Math.exp((logits[i * numClasses + k] - max) / temperature);
    for (let k = 0; k < numClasses; k++) {
      out[i * numClasses + k] = Math.exp((logits[i * numClasses + k] - max) / temperature) / sum;
    }
  }
  return out;
}

describe('expectedCalibrationError', () => {
  it('is 0 for a perfectly calibrated predictor', () => {
    const { logits, labels } = calibratedTwoClassSet();
    const probs = softmaxRows(logits, 2);
    expect(expectedCalibrationError({ values: probs, numClasses: 2 }, labels)).toBeLessThan(1e-12);
  });

  it('is close to 0 for a large sampled calibrated predictor and large for an overconfident one', () => {
    const rng = new Rng(7);
    const n = 20000;
    const numClasses = 5;
    const logits = new Float64Array(n * numClasses);
    const labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < numClasses; k++) logits[i * numClasses + k] = 2 * rng.normal();
      const probs = softmaxRows(logits.subarray(i * numClasses, (i + 1) * numClasses), numClasses);
      // Labels drawn from the predicted distribution: calibrated by construction.
      let u = rng.next();
      let label = numClasses - 1;
      for (let k = 0; k < numClasses; k++) {
        u -= probs[k];
        if (u < 0) {
          label = k;
          break;
        }
      }
      labels[i] = label;
    }
    const calibrated = expectedCalibrationError(
      { values: softmaxRows(logits, numClasses), numClasses },
      labels,
    );
    expect(calibrated).toBeLessThan(0.02);
    const overconfident = expectedCalibrationError(
      { values: softmaxRows(logits, numClasses, 0.3), numClasses },
      labels,
    );
    expect(overconfident).toBeGreaterThan(0.1);
  });

  it('matches hand-computed values', () => {
    // One example, confidence 0.8, correct: |1 - 0.8| = 0.2.
    const probs = tf.tensor2d([[0.8, 0.2]]);
    expect(expectedCalibrationError(probs, [0])).toBeCloseTo(0.2, 6);
    probs.dispose();
    // Two bins of 5 bins: (0.9 conf, correct) and (0.3 conf, wrong) -> (0.1 + 0.3) / 2.
    expect(calibrationErrorFromConfidences([0.9, 0.3], [1, 0], 5)).toBeCloseTo(0.2, 12);
    // Same bin: |1 - (0.9 + 0.95)| / 2.
    expect(calibrationErrorFromConfidences([0.9, 0.95], [1, 0], 5)).toBeCloseTo(0.425, 12);
    // Bin edges: 0.2 belongs to (0, 0.2], 0.2000001 to (0.2, 0.4].
    expect(calibrationErrorFromConfidences([0.2, 0.2000001], [0, 1], 5)).toBeCloseTo(
      (0.2 + (1 - 0.2000001)) / 2,
      12,
    );
  });

  it('rejects bad input with the argument named', () => {
    const probs = tf.tensor1d([0.5, 0.5]);
    expect(() => expectedCalibrationError(probs as unknown as tf.Tensor2D, [0])).toThrow(
      "'probs' must be rank 2, got [2]",
    );
    probs.dispose();
    expect(() =>
      expectedCalibrationError({ values: new Float32Array([0.5, 0.5]), numClasses: 2 }, [2]),
    ).toThrow("'labels[0]'");
    expect(() =>
      expectedCalibrationError({ values: new Float32Array([0.5, 0.5]), numClasses: 2 }, [0, 1]),
    ).toThrow("'labels' must have one entry per row (1), got 2");
    expect(() => calibrationErrorFromConfidences([0.5], [1], 0)).toThrow("'bins'");
  });

  it('leaves no tensors behind', () => {
    const probs = tf.tensor2d([
      [0.7, 0.3],
      [0.4, 0.6],
    ]);
    const before = tf.memory().numTensors;
    expectedCalibrationError(probs, [0, 0]);
    temperatureByEce(probs, [0, 0]);
    expect(tf.memory().numTensors).toBe(before);
    probs.dispose();
  });
});

describe('temperatureByEce', () => {
  it('uses 2000 log-temperatures from -3 to 1', () => {
    const grid = logTemperatureGrid();
    expect(grid.length).toBe(2000);
    expect(grid[0]).toBe(-3);
    expect(grid[1999]).toBe(1);
  });

  it('recovers a known temperature from logits that were scaled by it', () => {
    const { logits, labels } = calibratedTwoClassSet();
    const grid = logTemperatureGrid();
    for (const gridIndex of [1200, 1650, 300]) {
      const trueTemperature = Math.exp(grid[gridIndex]);
      const scaled = logits.map((v) => v * trueTemperature);
      const fit = temperatureByEce({ values: scaled, numClasses: 2 }, labels);
      const step = grid[1] - grid[0];
      expect(Math.abs(fit.logTemperature - Math.log(trueTemperature))).toBeLessThanOrEqual(step + 1e-12);
      expect(fit.ece).toBeLessThan(1e-3);
      expect(fit.eceBefore).toBeGreaterThan(fit.ece);
    }
  });

  it('accepts a logits tensor and keeps the argmax, hence accuracy', () => {
    const logits = tf.tensor2d([
      [3, 0, 0],
      [0, 2, 1],
      [1, 0, 4],
      [2, 2.5, 0],
    ]);
    const fit = temperatureByEce(logits, [0, 1, 0, 0]);
    expect(fit.temperature).toBeGreaterThanOrEqual(Math.exp(-3) - 1e-12);
    expect(fit.temperature).toBeLessThanOrEqual(Math.exp(1) + 1e-12);
    const scaled = tf.tidy(() => tf.softmax(tf.div(logits, fit.temperature)).argMax(1).dataSync());
    expect(Array.from(scaled)).toEqual([0, 1, 2, 1]);
    logits.dispose();
  });
});

describe('calibrate', () => {
  it('gives the ECE temperature and, at it, the threshold that keeps 95% in-distribution', () => {
    const rng = new Rng(11);
    const n = 200;
    const k = 4;
    const labels = Int32Array.from({ length: n }, () => Math.floor(rng.next() * k));
    const logits = Float32Array.from(
      { length: n * k },
      (_, j) => (j % k === labels[Math.floor(j / k)] ? 3 : 0) + 4 * (rng.next() - 0.5),
    );
    const result = calibrate(logits, labels, k);
    const fit = temperatureByEce({ values: logits, numClasses: k }, labels);
    expect(result).toEqual({
      ...fit,
      oodThreshold: thresholdAtTpr(maxProbabilities(logits, k, fit.temperature), OOD_GATE_TPR),
    });
    const passing = maxProbabilities(logits, k, result.temperature).filter((s) => s >= result.oodThreshold);
    expect(passing.length / n).toBeGreaterThanOrEqual(0.95);
  });
});
