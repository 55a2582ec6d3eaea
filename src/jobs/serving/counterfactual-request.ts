import type * as tf from '@tensorflow/tfjs';
import { type GridRow, type PixelImage, renderCounterfactualGrid } from '../../data/figures.js';
import { DEFAULT_COUNTERFACTUAL_RADII } from '../../engine/counterfactuals.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { classAtRank, logitsOf } from '../../engine/model/logits.js';
import { InvalidInputError } from '../errors.js';
import type { ModelCompute } from './compute.js';
import { type ImageInput, type ImageLimits, imagesToPixels, pngOfRows } from './images.js';
import { computeHere } from './ood-request.js';

/**
 * The visual-counterfactual use case for one image: resolve the target classes (named, indexed, or
 * the two most probable), run the counterfactual search towards each for every radius, and answer
 * per-image PNGs or one labelled grid drawn by the figure renderer `ratio eval` uses too.
 */

export { DEFAULT_COUNTERFACTUAL_RADII };

/** Target classes by name or index; the two most probable classes of `x` when none are requested. */
export function resolveTargets(
  model: Classifier,
  requested: ReadonlyArray<string | number> | undefined,
  x: tf.Tensor4D,
): number[] {
  if (!requested) {
    const logits = logitsOf(model, x, x.shape[0]);
    const k = model.numClasses;
    return Array.from({ length: Math.min(2, k) }, (_, r) => classAtRank(logits.subarray(0, k), k, r + 1)[0]);
  }
  return resolveTargetIndices(model, requested);
}

/** Requested target classes (names or indices) as indices; throws naming the bad one. */
function resolveTargetIndices(model: Classifier, requested: ReadonlyArray<string | number>): number[] {
  return requested.map((target, i) => {
    const index = typeof target === 'number' ? target : model.card.classNames.indexOf(target);
    if (index < 0 || index >= model.numClasses) {
      throw new InvalidInputError(
        `targets.${i}`,
        `'targets.${i}' must be a class name or an index below ${model.numClasses}, got ${JSON.stringify(target)}`,
      );
    }
    return index;
  });
}

export interface CounterfactualRequestOptions {
  limits: ImageLimits;
  /** Class names or indices (default: the two most probable classes). */
  targets?: ReadonlyArray<string | number>;
  /** L2 radii (default DEFAULT_COUNTERFACTUAL_RADII), answered in increasing order. */
  radii?: readonly number[];
  iterations: number;
  seed?: number;
  signal?: AbortSignal;
  /** Where the search runs: the service's analysis worker (by model name); default: this thread. */
  compute?: { compute: ModelCompute; name: string };
}

/**
 * `resolveTargets` without a tensor on this thread: requested targets are checked as there; the
 * default (the two most probable classes) ranks the calibrated probabilities from `compute`, the
 * order of the logits (softmax is monotone; ties by the lower index).
 */
async function targetsOf(
  model: Classifier,
  requested: ReadonlyArray<string | number> | undefined,
  pixels: Float32Array,
  compute: { compute: ModelCompute; name: string },
): Promise<number[]> {
  if (requested) return resolveTargetIndices(model, requested);
  const k = model.numClasses;
  const probs = await compute.compute.probabilities(compute.name, pixels.slice(), 1, Float32Array.of(1));
  return Array.from({ length: Math.min(2, k) }, (_, r) => classAtRank(probs, k, r + 1)[0]);
}

export interface CounterfactualAnswer {
  original_class: { index: number; class: string };
  targets: Array<{
    index: number;
    class: string;
    clean: { p_target: number; p_original: number };
    radii: Array<{ eps: number; p_target: number; p_original: number; distance: number; png: Uint8Array }>;
  }>;
}

export type CounterfactualFormat = 'json' | 'grid';

const caption = (pTarget: number, pOriginal: number) => [
  `p_t ${pTarget.toFixed(2)}`,
  `p_o ${pOriginal.toFixed(2)}`,
];

/**
 * Counterfactuals of one image towards each target for every radius: the answer with a PNG per
 * image (`json`), or one grid PNG (`grid`): a row per target labelled with the original and the
 * target class, a column per radius, p_target and p_original under each image. Leaves no tensor behind.
 */
export async function counterfactualsOf(
  model: Classifier,
  input: ImageInput,
  format: CounterfactualFormat,
  options: CounterfactualRequestOptions,
): Promise<CounterfactualAnswer | Uint8Array> {
  const radii = [...(options.radii ?? DEFAULT_COUNTERFACTUAL_RADII)].sort((a, b) => a - b);
  const pixels = await imagesToPixels([input], model, options.limits);
  const compute = options.compute ?? computeHere(model);
  const targets = await targetsOf(model, options.targets, pixels, compute);
  const tiled = new Float32Array(pixels.length * targets.length);
  for (let t = 0; t < targets.length; t++) tiled.set(pixels, t * pixels.length);
  const result = await compute.compute.counterfactuals(
    compute.name,
    tiled,
    targets.length,
    { targets: Int32Array.from(targets), radii, iterations: options.iterations, seed: options.seed ?? 0 },
    options.signal,
  );
  const names = model.card.classNames;
  const className = (c: number) => names[c] ?? String(c);
  const original = result.originalClass[0];
  if (format === 'grid') {
    const [h, w, c] = model.card.inputShape;
    if (c !== 1 && c !== 3) throw new Error(`a grid needs images with 1 or 3 channels, got ${c}`);
    const size = h * w * c;
    const image = (data: Float32Array): PixelImage => ({ data, height: h, width: w, channels: c });
    const rows: GridRow[] = targets.map((target, t) => ({
      label: [
        `${className(original)} -> ${className(target)}`,
        caption(result.clean.p_target[t], result.clean.p_original[t]).join(' '),
      ],
      original: image(pixels.slice(0, size)),
      cells: result.radii.map((r) => ({
        image: image(r.images.slice(t * size, (t + 1) * size)),
        caption: caption(r.p_target[t], r.p_original[t]),
      })),
    }));
    const png = await renderCounterfactualGrid(rows, {
      columnTitles: result.radii.map((r) => `eps ${r.eps}`),
      scale: Math.max(1, Math.floor(128 / Math.max(h, w))),
    });
    return new Uint8Array(png);
  }
  const pngs = await Promise.all(
    result.radii.map((r) =>
      Promise.all(targets.map((_, t) => pngOfRows(r.images, t, model.card.inputShape))),
    ),
  );
  return {
    original_class: { index: original, class: names[original] },
    targets: targets.map((index, t) => ({
      index,
      class: names[index],
      clean: { p_target: result.clean.p_target[t], p_original: result.clean.p_original[t] },
      radii: result.radii.map((r, k) => ({
        eps: r.eps,
        p_target: r.p_target[t],
        p_original: r.p_original[t],
        distance: r.distance[t],
        png: pngs[k][t],
      })),
    })),
  };
}
