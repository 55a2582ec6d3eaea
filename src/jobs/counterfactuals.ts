import * as tf from '@tensorflow/tfjs';
import { type GridRow, type PixelImage, renderCounterfactualGrid } from '../data/figures.js';
import type { Classifier } from '../engine/classifier.js';
import { counterfactuals, DEFAULT_COUNTERFACTUAL_RADII } from '../engine/counterfactuals.js';
import { classAtRank, logitsOf } from '../engine/logits.js';
import { InvalidInputError } from './errors.js';
import { type ImageInput, type ImageLimits, imagesToTensor, pngOf } from './images.js';

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
  const x = await imagesToTensor([input], model, options.limits);
  let targets: number[];
  let tiled: tf.Tensor4D;
  try {
    targets = resolveTargets(model, options.targets, x);
    tiled = tf.tidy(() => tf.tile(x, [targets.length, 1, 1, 1]) as tf.Tensor4D);
  } finally {
    x.dispose();
  }
  try {
    const result = await counterfactuals(model, tiled, Int32Array.from(targets), {
      radii,
      iterations: options.iterations,
      seed: options.seed ?? 0,
      signal: options.signal,
    });
    try {
      const names = model.card.classNames;
      const className = (c: number) => names[c] ?? String(c);
      const original = result.originalClass[0];
      if (format === 'grid') {
        const [h, w, c] = model.card.inputShape;
        if (c !== 1 && c !== 3) throw new Error(`a grid needs images with 1 or 3 channels, got ${c}`);
        const size = h * w * c;
        const pixels = (data: Float32Array): PixelImage => ({ data, height: h, width: w, channels: c });
        const clean = (tiled.dataSync() as Float32Array).slice(0, size);
        const perRadius = result.radii.map((r) => r.images.dataSync() as Float32Array);
        const rows: GridRow[] = targets.map((target, t) => ({
          label: [
            `${className(original)} -> ${className(target)}`,
            caption(result.clean.p_target[t], result.clean.p_original[t]).join(' '),
          ],
          original: pixels(clean),
          cells: result.radii.map((r, k) => ({
            image: pixels(perRadius[k].slice(t * size, (t + 1) * size)),
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
        result.radii.map((r) => Promise.all(targets.map((_, t) => pngOf(r.images, t)))),
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
    } finally {
      for (const r of result.radii) r.images.dispose();
    }
  } finally {
    tiled.dispose();
  }
}
