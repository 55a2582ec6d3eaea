import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Rng } from '../util/random.js';
import { dataRoot } from './data-root.js';
import type { Dataset } from './dataset.js';
import { DatasetError } from './errors.js';
import type { ImageSet } from './image-set.js';
import { loadDataset } from './load.js';

/**
 * Image sets by name or path: where `ratio eval` gets its images: the in-distribution test file, and the OOD sets by name
 * (svhn, cifar100, noise: the real files in ../shared/data, or uniform noise) or `name=path`.
 */

/** Built-in OOD sets: files relative to the data directory (see shared/data/README.md). */
export const BUILTIN_OOD_FILES: Record<string, string> = {
  svhn: 'svhn/train_first1000.bin',
  cifar100: 'cifar100/test_first900.bin',
  mnist: 'mnist/t10k-images-idx3-ubyte.gz',
  'fashion-mnist': 'fashion-mnist/t10k-images-idx3-ubyte.gz',
};

/**
 * The OOD sets used when none are named: for 32x32 RGB models SVHN, CIFAR-100 and noise; for 28x28
 * grayscale models the other of MNIST / Fashion-MNIST, and noise; otherwise noise alone.
 */
export function defaultOodSpecs(inputShape: readonly number[], dataPath: string): string[] {
  const [h, w, c] = inputShape;
  if (h === 32 && w === 32 && c === 3) return ['svhn', 'cifar100', 'noise'];
  if (h === 28 && w === 28 && c === 1)
    return [/fashion/i.test(dataPath) ? 'mnist' : 'fashion-mnist', 'noise'];
  return ['noise'];
}

export type OodSpec = { name: string; kind: 'noise' } | { name: string; kind: 'file'; path: string };

/** `svhn`, `cifar100`, `noise` (uniform), or `name=path` for any other image file or folder. */
export function parseOodSpec(spec: string, dataDir = dataRoot()): OodSpec {
  const equals = spec.indexOf('=');
  if (equals >= 0) {
    const name = spec.slice(0, equals).trim();
    const file = spec.slice(equals + 1).trim();
    if (!name || !file)
      throw new DatasetError('bad-argument', `--ood must be a name or name=path, got '${spec}'`);
    return { name, kind: 'file', path: file };
  }
  const name = spec.trim().toLowerCase();
  if (name === 'noise' || name === 'uniform') return { name: 'uniform noise', kind: 'noise' };
  const builtin = BUILTIN_OOD_FILES[name];
  if (!builtin) {
    throw new DatasetError(
      'bad-argument',
      `--ood '${spec}' is not a built-in set (${[...Object.keys(BUILTIN_OOD_FILES), 'noise'].join(', ')}); use name=path`,
    );
  }
  return { name, kind: 'file', path: path.join(dataDir, builtin) };
}

/** Uniform noise in [0,1]^(H x W x C), seeded. */
export function uniformNoise(n: number, shape: [number, number, number], seed: number): ImageSet {
  const rng = new Rng(seed);
  const size = n * shape[0] * shape[1] * shape[2];
  return {
    name: 'uniform noise',
    source: `uniform noise, seed ${seed}`,
    images: Float32Array.from({ length: size }, () => rng.next()),
    shape: [n, ...shape],
  };
}

/**
 * The first `limit` images of one seeded permutation of `dataset`: how a class-by-class listing (an
 * image folder) is sampled, so that every prefix mixes the classes. The same seed gives the same order.
 */
export function inSeededOrder(dataset: Dataset, seed: number, limit = dataset.size): Dataset {
  return dataset.subset(new Rng(seed).permutation(dataset.size).subarray(0, Math.min(limit, dataset.size)));
}

/**
 * Loads up to `limit` images of any format the data layer reads (CIFAR-10/100 binary, IDX(.gz), .npy,
 * image folders, zip) as NHWC floats in [0,1]. Files keep their order (the first `limit` records, as
 * published); an image folder is listed class by class, so there its images come in a seeded random
 * order (the first `limit` of one permutation), and they are resized to the model's input (shorter side, then centre crop).
 * Unknown labels (-1, label byte 255) make an unlabelled set.
 */
export async function loadImageSet(
  target: string,
  name: string,
  limit: number,
  inputShape: readonly [number, number, number],
  seed = 0,
): Promise<ImageSet> {
  const isFolder = (await stat(target).catch(() => undefined))?.isDirectory() ?? false;
  let dataset: Dataset = isFolder
    ? await loadDataset(target, {
        resize: [inputShape[0], inputShape[1]],
        channels: inputShape[2] === 1 ? 1 : 3,
      })
    : await loadDataset(target, { limit });
  // A folder is listed class by class: its images are always taken in a seeded random order, also when
  // all of them are, so that any prefix (the reported points, the attacked ones) mixes the classes and a
  // held-out tail is not the last classes alone.
  if (isFolder) {
    dataset = inSeededOrder(dataset, seed, limit);
  } else if (dataset.size > limit) {
    dataset = dataset.take(limit);
  }
  const images = new Float32Array(dataset.images.length);
  for (let j = 0; j < images.length; j++) images[j] = dataset.images[j] / 255;
  return {
    name,
    source: target,
    images,
    shape: [dataset.size, ...dataset.shape],
    labels: dataset.unlabelled ? undefined : dataset.labels.slice(),
    classNames: dataset.classNames.length > 0 ? [...dataset.classNames] : undefined,
  };
}

/** Rejects a set whose images do not have the model's input shape. */
export function checkImageShape(set: ImageSet, inputShape: readonly number[], argument: string): void {
  const [, h, w, c] = set.shape;
  if (h !== inputShape[0] || w !== inputShape[1] || c !== inputShape[2]) {
    throw new DatasetError(
      'bad-argument',
      `${argument} '${set.name}' has ${h}x${w}x${c} images, the model takes ${inputShape.join('x')}`,
    );
  }
  if (set.shape[0] === 0) throw new DatasetError('bad-argument', `${argument} '${set.name}' holds no images`);
}
