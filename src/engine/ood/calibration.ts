import * as tf from '@tensorflow/tfjs';
import { argmaxOfRow } from '../model/logits.js';
import { OOD_GATE_TPR, thresholdAtTpr } from './metrics.js';

/**
 * Calibration after Guo et al. (2017) as used by RATIO: expected calibration error over
 * equal-width confidence bins, and a softmax temperature chosen by lowest ECE on a grid.
 * Both run on plain typed arrays (read once from the tensors), so they are exact and leave
 * no tensors behind.
 */

/** A row-major [n, K] matrix: a tensor, or its values with the class count. */
export type Matrix2D = tf.Tensor2D | { values: Float32Array | Float64Array; numClasses: number };

export interface TemperatureFit {
  temperature: number;
  /** log(temperature), a point of the grid. */
  logTemperature: number;
  /** ECE at the chosen temperature. */
  ece: number;
  /** ECE at temperature 1, for the report. */
  eceBefore: number;
}

export const TEMPERATURE_GRID_POINTS = 2000;
export const LOG_TEMPERATURE_MIN = -3;
export const LOG_TEMPERATURE_MAX = 1;

function readMatrix(
  matrix: Matrix2D,
  name: string,
): { values: Float32Array | Float64Array; rows: number; cols: number } {
  if (matrix instanceof tf.Tensor) {
    if (matrix.rank !== 2) throw new Error(`'${name}' must be rank 2, got [${matrix.shape.join(', ')}]`);
    return { values: matrix.dataSync() as Float32Array, rows: matrix.shape[0], cols: matrix.shape[1] };
  }
  const { values, numClasses } = matrix;
  if (!Number.isInteger(numClasses) || numClasses < 1) {
    throw new Error(`'${name}.numClasses' must be a positive integer, got ${numClasses}`);
  }
  if (values.length % numClasses !== 0) {
    throw new Error(`'${name}' has ${values.length} values, not a multiple of numClasses ${numClasses}`);
  }
  return { values, rows: values.length / numClasses, cols: numClasses };
}

function checkLabels(labels: ArrayLike<number>, rows: number, cols: number): void {
  if (labels.length !== rows) {
    throw new Error(`'labels' must have one entry per row (${rows}), got ${labels.length}`);
  }
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i];
    if (!Number.isInteger(label) || label < 0 || label >= cols) {
      throw new Error(`'labels[${i}]' must be a class index in [0, ${cols - 1}], got ${label}`);
    }
  }
}

function checkBins(bins: number): void {
  if (!Number.isInteger(bins) || bins < 1) throw new Error(`'bins' must be a positive integer, got ${bins}`);
}

/**
 * ECE from per-example confidences and correctness: sum over equal-width bins of
 * |accuracy - mean confidence| * (share of examples in the bin). Bin b holds confidences in
 * (b/B, (b+1)/B]; a confidence of exactly 0 falls into the first bin.
 */
export function calibrationErrorFromConfidences(
  confidences: ArrayLike<number>,
  correct: ArrayLike<number | boolean>,
  bins = 20,
): number {
  checkBins(bins);
  if (confidences.length !== correct.length) {
    throw new Error(`'correct' must have ${confidences.length} entries, got ${correct.length}`);
  }
  const n = confidences.length;
  if (n === 0) throw new Error("'confidences' must not be empty");
  const confidenceSum = new Float64Array(bins);
  const correctCount = new Float64Array(bins);
  for (let i = 0; i < n; i++) {
    const confidence = confidences[i];
    if (!(confidence >= 0 && confidence <= 1)) {
      throw new Error(`'confidences[${i}]' must be in [0, 1], got ${confidence}`);
    }
    const bin = Math.min(bins - 1, Math.max(0, Math.ceil(confidence * bins) - 1));
    confidenceSum[bin] += confidence;
    if (correct[i]) correctCount[bin] += 1;
  }
  // sum_b |acc_b - conf_b| * n_b / n  =  sum_b |correct_b - confidenceSum_b| / n
  let ece = 0;
  for (let b = 0; b < bins; b++) ece += Math.abs(correctCount[b] - confidenceSum[b]);
  return ece / n;
}

/**
 * Expected calibration error of class probabilities `probs` [n, K] against `labels`,
 * with confidence = max_k p_k and equal-width bins (default 20).
 *
 * @example expectedCalibrationError(tf.tensor2d([[0.8, 0.2]]), [0]) // 0.2
 */
export function expectedCalibrationError(probs: Matrix2D, labels: ArrayLike<number>, bins = 20): number {
  const { values, rows, cols } = readMatrix(probs, 'probs');
  checkLabels(labels, rows, cols);
  const confidences = new Float64Array(rows);
  const correct = new Uint8Array(rows);
  for (let i = 0; i < rows; i++) {
    const best = argmaxOfRow(values, cols, i);
    confidences[i] = values[i * cols + best];
    correct[i] = best === labels[i] ? 1 : 0;
  }
  return calibrationErrorFromConfidences(confidences, correct, bins);
}

/** The log-temperature grid: 2000 evenly spaced points from -3 to 1, both ends included. */
export function logTemperatureGrid(points = TEMPERATURE_GRID_POINTS): Float64Array {
  const grid = new Float64Array(points);
  for (let i = 0; i < points; i++) {
    grid[i] = LOG_TEMPERATURE_MIN + ((LOG_TEMPERATURE_MAX - LOG_TEMPERATURE_MIN) * i) / (points - 1);
  }
  return grid;
}

/**
 * Fits a softmax temperature T = exp(s) by ECE: s runs over 2000 points in [-3, 1] and the s of
 * lowest ECE wins (the smallest such s on ties). Call it on a held-out split, never on the split
 * whose ECE is reported. Temperature does not change the argmax, so accuracy is untouched and only
 * the max-probability per example depends on T; that is all this computes.
 */
export function temperatureByEce(
  logits: Matrix2D,
  labels: ArrayLike<number>,
  options: { bins?: number; gridPoints?: number } = {},
): TemperatureFit {
  const bins = options.bins ?? 20;
  checkBins(bins);
  const { values, rows, cols } = readMatrix(logits, 'logits');
  checkLabels(labels, rows, cols);
  if (rows === 0) throw new Error("'logits' must have at least one row");
  // Per example: the logits shifted so the maximum is 0; the max-probability at temperature T is
  // 1 / sum_k exp(shifted_k / T).
  const shifted = new Float64Array(rows * cols);
  const correct = new Uint8Array(rows);
  for (let i = 0; i < rows; i++) {
    const best = argmaxOfRow(values, cols, i);
    const top = values[i * cols + best];
    if (!Number.isFinite(top)) throw new Error(`'logits' row ${i} is not finite`);
    for (let k = 0; k < cols; k++) shifted[i * cols + k] = values[i * cols + k] - top;
    correct[i] = best === labels[i] ? 1 : 0;
  }
  const confidences = new Float64Array(rows);
  const eceAt = (temperature: number): number => {
    const inverse = 1 / temperature;
    for (let i = 0; i < rows; i++) {
      let sum = 0;
      for (let k = 0; k < cols; k++) sum += Math.exp(shifted[i * cols + k] * inverse);
      confidences[i] = 1 / sum;
    }
    return calibrationErrorFromConfidences(confidences, correct, bins);
  };
  const grid = logTemperatureGrid(options.gridPoints ?? TEMPERATURE_GRID_POINTS);
  let bestIndex = 0;
  let bestEce = Number.POSITIVE_INFINITY;
  for (let g = 0; g < grid.length; g++) {
    const ece = eceAt(Math.exp(grid[g]));
    if (ece < bestEce) {
      bestEce = ece;
      bestIndex = g;
    }
  }
  return {
    temperature: Math.exp(grid[bestIndex]),
    logTemperature: grid[bestIndex],
    ece: bestEce,
    eceBefore: eceAt(1),
  };
}

/** max and sum of exp((z - max) / T) of one row of logits: the shared core of the host softmax. */
function rowSoftmaxParts(
  logits: Float32Array,
  offset: number,
  k: number,
  temperature: number,
): { max: number; sum: number } {
  let max = Number.NEGATIVE_INFINITY;
  for (let c = 0; c < k; c++) max = Math.max(max, logits[offset + c]);
  let sum = 0;
  for (let c = 0; c < k; c++) sum += Math.exp((logits[offset + c] - max) / temperature);
  return { max, sum };
}

/** softmax(z / T) of each row of row-major `logits` [n, k], on the host. */
export function softmaxRows(logits: Float32Array, k: number, temperature = 1): Float32Array {
  const out = new Float32Array(logits.length);
  for (let offset = 0; offset < logits.length; offset += k) {
    const { max, sum } = rowSoftmaxParts(logits, offset, k, temperature);
    for (let c = 0; c < k; c++) out[offset + c] = Math.exp((logits[offset + c] - max) / temperature) / sum;
  }
  return out;
}

/**
 * max_k softmax(z / T)_k per row of row-major logits [n, k]: the calibrated confidence that the OOD
 * verdicts compare with a threshold.
 */
export function maxProbabilities(logits: Float32Array, k: number, temperature: number): Float32Array {
  const n = logits.length / k;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = 1 / rowSoftmaxParts(logits, i * k, k, temperature).sum;
  return out;
}

export interface Calibration extends TemperatureFit {
  /**
   * Max-confidence (at `temperature`) that keeps OOD_GATE_TPR (95%) of the calibration images
   * in-distribution: the threshold a served model's OOD verdict uses.
   */
  oodThreshold: number;
}

/**
 * Everything a model card's calibration holds, fitted on held-out labelled logits: the temperature
 * of lowest ECE, and the OOD threshold at that temperature. Training export and `ratio eval` both
 * call this, so a card means the same whichever wrote it.
 */
export function calibrate(logits: Float32Array, labels: ArrayLike<number>, numClasses: number): Calibration {
  const fit = temperatureByEce({ values: logits, numClasses }, labels);
  const oodThreshold = thresholdAtTpr(maxProbabilities(logits, numClasses, fit.temperature), OOD_GATE_TPR);
  return { ...fit, oodThreshold };
}
