import type { Classifier } from '../../engine/model/classifier.js';
import { InProcessCompute, type ModelCompute } from './compute.js';
import { type ImageInput, type ImageLimits, imagesToPixels, pngOfRows } from './images.js';
import { oodThreshold } from './predict.js';

/**
 * The worst-case OOD use case: clean and worst-case max confidence in an L2 ball around each image,
 * the image that reaches it, and the verdict against the OOD threshold.
 */

export type OodVerdict = 'in_distribution' | 'out_of_distribution' | 'out_of_distribution_not_robust';

/**
 * in_distribution: clean confidence >= threshold; out_of_distribution: under it even in the worst
 * case; out_of_distribution_not_robust: a perturbation within eps lifts it over the threshold.
 */
export function oodVerdict(clean: number, worst: number, threshold: number): OodVerdict {
  if (clean >= threshold) return 'in_distribution';
  return worst >= threshold ? 'out_of_distribution_not_robust' : 'out_of_distribution';
}

export interface WorstCaseOptions {
  limits: ImageLimits;
  /** L2 radius (default: the card's eps_out, else 1). */
  eps?: number;
  iterations: number;
  restarts?: number;
  seed?: number;
  /** Max-confidence threshold of the verdict (default: the card's). */
  threshold?: number;
  signal?: AbortSignal;
  /** Where the search runs: the service's analysis worker (by model name); default: this thread. */
  compute?: { compute: ModelCompute; name: string };
}

/** `model` alone on this thread, as a `ModelCompute`. */
export function computeHere(model: Classifier): { compute: ModelCompute; name: string } {
  return { compute: new InProcessCompute(new Map([['model', model]])), name: 'model' };
}

export interface WorstCaseImageResult {
  clean_confidence: number;
  worst_case_confidence: number;
  worst_case_class: { index: number; class: string };
  /** PNG of the worst-case image. */
  worst_case_png: Uint8Array;
  verdict: OodVerdict;
}

export interface WorstCaseResult {
  eps: number;
  threshold: number;
  results: WorstCaseImageResult[];
}

/** Runs the worst-case search on every image (where `options.compute` says); leaves no tensor behind. */
export async function worstCaseOod(
  model: Classifier,
  inputs: ImageInput[],
  options: WorstCaseOptions,
): Promise<WorstCaseResult> {
  const eps = options.eps ?? model.card.epsOut ?? 1;
  const threshold = oodThreshold(model, options.threshold);
  const pixels = await imagesToPixels(inputs, model, options.limits);
  const { compute, name } = options.compute ?? computeHere(model);
  const found = await compute.worstCase(
    name,
    pixels,
    inputs.length,
    { eps, iterations: options.iterations, restarts: options.restarts ?? 1, seed: options.seed ?? 0 },
    options.signal,
  );
  const pngs = await Promise.all(inputs.map((_, i) => pngOfRows(found.images, i, model.card.inputShape)));
  const results = inputs.map((_, i) => {
    const index = found.predicted[i];
    return {
      clean_confidence: found.cleanConfidence[i],
      worst_case_confidence: found.confidence[i],
      worst_case_class: { index, class: model.card.classNames[index] },
      worst_case_png: pngs[i],
      verdict: oodVerdict(found.cleanConfidence[i], found.confidence[i], threshold),
    };
  });
  return { eps, threshold, results };
}
