import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Rng } from '../util/random.js';
import { EvalInputError, type ImageSet } from './evaluate.js';

/**
 * Where `ratio eval` gets its images: the in-distribution test file, and the OOD sets by name
 * (svhn, cifar100, noise: the real files in ../shared/data, or uniform noise) or `name=path`.
 */

export function defaultDataDir(): string {
  return process.env.RATIO_DATA_DIR ?? path.resolve('../shared/data');
}

/** Built-in OOD sets: files relative to the data directory (see shared/data/README.md). */
export const BUILTIN_OOD_FILES: Record<string, string> = {
  svhn: 'svhn/train_first1000.bin',
  cifar100: 'cifar100/test_first900.bin',
};

export type OodSpec = { name: string; kind: 'noise' } | { name: string; kind: 'file'; path: string };

/** `svhn`, `cifar100`, `noise` (uniform), or `name=path` for any other image file or folder. */
export function parseOodSpec(spec: string, dataDir = defaultDataDir()): OodSpec {
  const equals = spec.indexOf('=');
  if (equals >= 0) {
    const name = spec.slice(0, equals).trim();
    const file = spec.slice(equals + 1).trim();
    if (!name || !file) throw new EvalInputError(`--ood must be a name or name=path, got '${spec}'`);
    return { name, kind: 'file', path: file };
  }
  const name = spec.trim().toLowerCase();
  if (name === 'noise' || name === 'uniform') return { name: 'uniform noise', kind: 'noise' };
  const builtin = BUILTIN_OOD_FILES[name];
  if (!builtin) {
    throw new EvalInputError(
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

const CIFAR10_RECORD = 1 + 3072;
const CIFAR100_RECORD = 2 + 3072;

async function classNamesBeside(file: string, names: string[]): Promise<string[] | undefined> {
  for (const name of names) {
    const text = await readFile(path.join(path.dirname(file), name), 'utf8').catch(() => undefined);
    if (text)
      return text
        .split('\n')
        .map((line) => line.trim())
        .filter(Boolean);
  }
  return undefined;
}

/**
 * Reads the first `limit` records of a CIFAR-10 (3073-byte records) or CIFAR-100 (3074-byte
 * records, fine labels) binary file into NHWC floats in [0,1]. Label byte 255 = unlabelled.
 * TODO(issue 4): replace with the data layer's `loadDataset` (image folders, idx, npy) once it lands.
 */
export async function loadImageSet(file: string, name: string, limit: number): Promise<ImageSet> {
  const bytes = await readFile(file).catch((error: NodeJS.ErrnoException) => {
    throw new EvalInputError(`cannot read '${file}': ${error.code ?? error.message}`);
  });
  const isCifar100 =
    bytes.length % CIFAR100_RECORD === 0 && (bytes.length % CIFAR10_RECORD !== 0 || /cifar-?100/i.test(file));
  const record = isCifar100 ? CIFAR100_RECORD : CIFAR10_RECORD;
  if (bytes.length === 0 || bytes.length % record !== 0) {
    throw new EvalInputError(
      `'${file}' is not a CIFAR binary file: ${bytes.length} bytes is not a multiple of ${CIFAR10_RECORD} or ${CIFAR100_RECORD}`,
    );
  }
  const n = Math.min(limit, bytes.length / record);
  const labelOffset = isCifar100 ? 1 : 0;
  const images = new Float32Array(n * 3072);
  const labels = new Int32Array(n);
  let unlabelled = 0;
  for (let i = 0; i < n; i++) {
    const start = i * record;
    const label = bytes[start + labelOffset];
    labels[i] = label === 255 ? -1 : label;
    if (label === 255) unlabelled++;
    const pixels = start + record - 3072;
    // Records hold R, G, B planes of 32x32; the engine takes interleaved NHWC.
    for (let p = 0; p < 1024; p++) {
      for (let c = 0; c < 3; c++) images[i * 3072 + p * 3 + c] = bytes[pixels + c * 1024 + p] / 255;
    }
  }
  const classNames = isCifar100
    ? await classNamesBeside(file, ['fine_label_names.txt'])
    : await classNamesBeside(file, ['batches.meta.txt']);
  return {
    name,
    source: file,
    images,
    shape: [n, 32, 32, 3],
    labels: unlabelled === n ? undefined : labels,
    classNames,
  };
}

/** Rejects a set whose images do not have the model's input shape. */
export function checkImageShape(set: ImageSet, inputShape: readonly number[], argument: string): void {
  const [, h, w, c] = set.shape;
  if (h !== inputShape[0] || w !== inputShape[1] || c !== inputShape[2]) {
    throw new EvalInputError(
      `${argument} '${set.name}' has ${h}x${w}x${c} images, the model takes ${inputShape.join('x')}`,
    );
  }
  if (set.shape[0] === 0) throw new EvalInputError(`${argument} '${set.name}' holds no images`);
}
