import type * as tf from '@tensorflow/tfjs';
import { type Classifier, probabilities } from '../model/classifier.js';
import type { EngineProgress, LongRunOptions, Norm } from '../types.js';
import { searchBall, type WorstCaseOptions, worstCaseConfidence } from './worst-case.js';

/**
 * Confidence-versus-radius curves (RATIO paper, Figure 5): how fast the true-class confidence on
 * in-distribution points can be driven down, and the max-confidence on out-distribution points
 * driven up, as the L2 ball grows. A robust, well-behaved model keeps the first high and the
 * second low over a wide range of radii.
 *
 * Both are attack results: the in-distribution curve is the mean over points of the lowest
 * p_y APGD-CE finds in the ball (an upper bound on the true minimum), the out-distribution curve
 * the mean of the highest max_k p_k APGD finds (a lower bound on the true maximum). Points found
 * for a smaller radius are feasible for a larger one, so per point the curves are monotone.
 */

export const DEFAULT_CURVE_RADII: readonly number[] = [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3];

export interface CurveOptions extends LongRunOptions<EngineProgress> {
  /** Radii, 0 (the clean points) included or not; sorted ascending (default 0, 0.25, ..., 3). */
  radii?: readonly number[];
  /** APGD iterations per radius (default 100). */
  iterations?: number;
  restarts?: number;
  norm?: Norm;
  temperature?: number;
  /** Images per APGD batch (default 128). */
  batchSize?: number;
}

export interface ConfidenceCurves {
  radii: number[];
  /** Mean over in-distribution points of the lowest true-class probability found within each radius. */
  inTrueClassConfidence: number[];
  /** Mean over out-distribution points of the highest max-probability found within each radius. */
  outMaxConfidence: number[];
}

/** The same ball, attack budget and batching as the worst-case OOD confidence. */
export type WorstTrueClassOptions = WorstCaseOptions;

function trueClassProbability(classifier: Classifier, x: tf.Tensor4D, y: Int32Array, temperature: number) {
  const probs = probabilities(classifier, x, { temperature });
  const values = probs.dataSync() as Float32Array;
  probs.dispose();
  const k = classifier.numClasses;
  return Float32Array.from(y, (label, i) => values[i * k + label]);
}

/**
 * Per point, the lowest p_y (temperature applied) found by APGD-CE within the eps-ball and [0,1];
 * never above the clean p_y. Returns probabilities only (no images).
 */
export async function worstCaseTrueClassConfidence(
  classifier: Classifier,
  x: tf.Tensor4D,
  y: Int32Array,
  options: WorstTrueClassOptions,
): Promise<Float32Array> {
  if (x.rank !== 4) throw new Error(`'x' must be rank 4 (NHWC), got [${x.shape}]`);
  if (y.length !== x.shape[0]) throw new Error(`'y' must have ${x.shape[0]} labels, got ${y.length}`);
  const temperature = options.temperature ?? classifier.card.temperature ?? 1;
  const clean = x.dataSync() as Float32Array;
  const lowest = trueClassProbability(classifier, x, y, temperature);
  await searchBall(classifier, x, clean, options, {
    phase: 'worst-case true-class confidence',
    labels: y,
    objective: (b) => ({ loss: 'ce', seed: (options.seed ?? 0) + b }),
    keep: (candidate, _, start) => {
      const labels = y.subarray(start, start + candidate.shape[0]);
      const scored = trueClassProbability(classifier, candidate, labels, temperature);
      for (let i = 0; i < scored.length; i++) lowest[start + i] = Math.min(lowest[start + i], scored[i]);
    },
  });
  return lowest;
}

const mean = (values: Float32Array) => values.reduce((a, b) => a + b, 0) / values.length;

/**
 * Figure 5's two curves for the given in-distribution points (with labels) and OOD points.
 *
 * @example
 * const curves = await confidenceCurves(model, { x: xIn, y: yIn }, xOut, { iterations: 50 });
 * renderCurveChartSvg({ x: curves.radii, series: [...] })
 */
export async function confidenceCurves(
  classifier: Classifier,
  inDistribution: { x: tf.Tensor4D; y: Int32Array },
  outDistribution: tf.Tensor4D,
  options: CurveOptions = {},
): Promise<ConfidenceCurves> {
  const radii = [...(options.radii ?? DEFAULT_CURVE_RADII)].sort((a, b) => a - b);
  radii.forEach((eps, i) => {
    if (!(eps >= 0 && Number.isFinite(eps)))
      throw new Error(`'radii[${i}]' must be a finite number >= 0, got ${eps}`);
  });
  if (radii.length === 0) throw new Error("'radii' must not be empty");
  if (inDistribution.x.shape[0] === 0 || outDistribution.shape[0] === 0) {
    throw new Error("'inDistribution.x' and 'outDistribution' must hold at least one image each");
  }
  const stages = radii.length * 2;
  let stage = 0;
  const report = (p: EngineProgress) =>
    options.onProgress?.({
      phase: 'confidence curves',
      // In stages (one per radius and set), fractional within a stage.
      done: Math.round((stage + p.done / Math.max(p.total, 1)) * 100) / 100,
      total: stages,
    });
  const common = {
    iterations: options.iterations,
    restarts: options.restarts,
    norm: options.norm,
    temperature: options.temperature ?? classifier.card.temperature ?? 1,
    batchSize: options.batchSize,
    signal: options.signal,
    onProgress: report,
  };
  let lowestIn: Float32Array | undefined;
  let highestOut: Float32Array | undefined;
  const inCurve: number[] = [];
  const outCurve: number[] = [];
  for (let r = 0; r < radii.length; r++) {
    const eps = radii[r];
    const seed = (options.seed ?? 0) + 1000 * r;
    const lowest = await worstCaseTrueClassConfidence(classifier, inDistribution.x, inDistribution.y, {
      ...common,
      eps,
      seed,
    });
    stage++;
    const worst = await worstCaseConfidence(classifier, outDistribution, { ...common, eps, seed });
    worst.images.dispose();
    stage++;
    lowestIn = lowestIn ? lowest.map((v, i) => Math.min(v, lowestIn![i])) : lowest;
    highestOut = highestOut ? worst.confidence.map((v, i) => Math.max(v, highestOut![i])) : worst.confidence;
    inCurve.push(mean(lowestIn));
    outCurve.push(mean(highestOut));
    report({ phase: 'confidence curves', done: 0, total: 1 });
  }
  return { radii, inTrueClassConfidence: inCurve, outMaxConfidence: outCurve };
}
