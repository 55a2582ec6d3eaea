import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { unzipSync } from 'fflate';
import {
  type Cifar100Labels,
  type CifarVariant,
  detectCifarVariant,
  parseCifar,
  parseClassNames,
} from './cifar.js';
import { ArrayDataset, type Dataset } from './dataset.js';
import { DatasetError } from './errors.js';
import { DecompressionBudget, idxDataset, isGzip, looksLikeIdx, maybeGunzip, parseIdx } from './idx.js';
import {
  decodeFolderEntries,
  type ImageFolderOptions,
  listArchiveEntries,
  loadImageFolder,
} from './image-folder.js';
import { isNpy, type NpyLayout, npyDataset, parseNpy } from './npy.js';

/**
 * One entry point for every data format: `loadDataset(path)` for the CLI, `datasetFromBytes(bytes)` for
 * HTTP uploads. The format comes from `options.format`, else from the path and the bytes themselves.
 */

export type DatasetFormat = 'cifar10' | 'cifar100' | 'idx' | 'npy' | 'folder' | 'zip';

export const DATASET_FORMATS: readonly DatasetFormat[] = [
  'cifar10',
  'cifar100',
  'idx',
  'npy',
  'folder',
  'zip',
];

export interface LoadOptions extends ImageFolderOptions {
  format?: DatasetFormat;
  /** CIFAR-100: fine (100 classes, default) or coarse (20 superclasses) labels. */
  cifar100Labels?: Cifar100Labels;
  /** `.npy` images: axis order of a rank-4 array. Default NHWC. */
  layout?: NpyLayout;
  /** idx / npy: the labels file. Default: the images file name with 'images' replaced by 'labels', if present. */
  labelsPath?: string;
  /** Overrides the class names found beside the file. */
  classNames?: readonly string[];
  /** Largest file (or upload, or unpacked archive) accepted, in bytes. Default 1 GiB. */
  maxBytes?: number;
}

export interface BytesOptions extends Omit<LoadOptions, 'labelsPath'> {
  /** The upload's file name, used to detect the format (`.npy`, `.zip`, `cifar-100`...). */
  filename?: string;
  /** idx / npy uploads: the labels file's bytes. */
  labels?: Uint8Array;
}

const DEFAULT_MAX_BYTES = 1024 ** 3;
const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];

export const FASHION_MNIST_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
];
export const MNIST_CLASSES = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];

function isZip(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && ZIP_MAGIC.every((b, i) => bytes[i] === b);
}

/** The format of a set of bytes, from the explicit option, then magic bytes, then the name and size. */
export function detectFormat(bytes: Uint8Array, filename = '', explicit?: DatasetFormat): DatasetFormat {
  if (explicit) {
    if (!DATASET_FORMATS.includes(explicit)) {
      throw new DatasetError(
        'bad-argument',
        `'format' must be one of ${DATASET_FORMATS.join(', ')}, got '${explicit}'`,
      );
    }
    return explicit;
  }
  if (isNpy(bytes) || /\.npy$/i.test(filename)) return 'npy';
  if (isZip(bytes) || /\.zip$/i.test(filename)) return 'zip';
  if (/idx\d/i.test(filename) || looksLikeIdx(bytes)) return 'idx';
  // A gzip not unwrapped by the caller (a file read whole): IDX, the format usually gzipped.
  if (isGzip(bytes)) return 'idx';
  const cifar = detectCifarVariant(bytes.length, filename);
  if (cifar) return cifar;
  throw new DatasetError(
    'unknown-format',
    `cannot tell the format of '${filename || 'the upload'}' (${bytes.length} bytes): not .npy, zip, IDX, ` +
      `nor CIFAR binary (a multiple of 3073 or 3074 bytes); name it or pass 'format'`,
  );
}

function checkSize(size: number, maxBytes: number, source: string): void {
  if (size > maxBytes) {
    throw new DatasetError('too-large', `'${source}' is ${size} bytes, more than the limit ${maxBytes}`);
  }
}

/** The name of the labels file paired with an images file (`t10k-images-idx3-ubyte.gz` -> `t10k-labels-idx1-ubyte.gz`). */
export function pairedLabelsName(imagesName: string): string | undefined {
  if (!/images/i.test(imagesName)) return undefined;
  return imagesName
    .replace(/images/i, (m) => (m === 'IMAGES' ? 'LABELS' : 'labels'))
    .replace(/idx3/i, 'idx1');
}

function idxClassNames(source: string, explicit?: readonly string[]): readonly string[] {
  if (explicit) return explicit;
  if (/fashion/i.test(source)) return FASHION_MNIST_CLASSES;
  if (/mnist/i.test(source)) return MNIST_CLASSES;
  return [];
}

function fromZip(
  bytes: Uint8Array,
  options: BytesOptions,
  source: string,
  budget: DecompressionBudget,
): Promise<Dataset> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(bytes, {
      // Sizes from the central directory are charged before anything is inflated (zip bombs);
      // fflate inflates no entry past its declared size.
      filter: (file) => {
        budget.charge(file.originalSize, source);
        return !file.name.endsWith('/');
      },
    });
  } catch (error) {
    if (error instanceof DatasetError) throw error;
    const reason = error instanceof Error ? error.message : String(error);
    throw new DatasetError('bad-magic', `'${source}' is not a valid zip archive: ${reason}`);
  }
  // What the archive holds decoded is bounded like what it holds packed, unless asked otherwise.
  return decodeFolderEntries(listArchiveEntries(new Map(Object.entries(files))), {
    maxDecodedBytes: maxBytes,
    ...options,
    source,
  });
}

/**
 * A data set from in-memory bytes (an HTTP upload): CIFAR binary, IDX(.gz), .npy, or a zip of an image
 * folder.
 *
 * @example
 * const set = await datasetFromBytes(body, { filename: 'test.npy', layout: 'NCHW', labels: labelBytes });
 */
export async function datasetFromBytes(bytes: Uint8Array, options: BytesOptions = {}): Promise<Dataset> {
  const source = options.filename ?? 'the upload';
  checkSize(bytes.length, options.maxBytes ?? DEFAULT_MAX_BYTES, source);
  // Every decompression of this input and its labels, at any depth, draws on one budget.
  const budget = new DecompressionBudget(options.maxBytes ?? DEFAULT_MAX_BYTES);
  if (bytes.length === 0) throw new DatasetError('empty', `'${source}' is empty (0 bytes)`);
  // Gzip wraps any format: its layers are peeled first, on the shared budget, and the format is told
  // from what they wrap (a zip inside a gzip then meets the zip's own checks on the same budget).
  const unwrapped = maybeGunzip(bytes, source, budget);
  const innerName = unwrapped === bytes ? options.filename : options.filename?.replace(/\.gz$/i, '');
  const format = detectFormat(unwrapped, innerName, options.format);
  let dataset: Dataset;
  switch (format) {
    case 'cifar10':
    case 'cifar100':
      dataset = parseCifar(unwrapped, {
        variant: format as CifarVariant,
        labels: options.cifar100Labels,
        classNames: options.classNames,
        limit: options.limit,
        source,
      });
      break;
    case 'idx': {
      const images = parseIdx(unwrapped, source, budget);
      const labelsSource = `labels of ${source}`;
      const labels = options.labels ? parseIdx(options.labels, labelsSource, budget) : undefined;
      dataset = idxDataset(images, labels, idxClassNames(source, options.classNames), source);
      break;
    }
    case 'npy': {
      const labels = options.labels ? parseNpy(options.labels, `labels of ${source}`) : undefined;
      dataset = npyDataset(
        parseNpy(unwrapped, source),
        labels,
        options.layout ?? 'NHWC',
        options.classNames,
        source,
      );
      break;
    }
    case 'zip':
      dataset = await fromZip(unwrapped, options, source, budget);
      break;
    case 'folder':
      throw new DatasetError(
        'bad-argument',
        `'format' folder needs a path; upload a zip of the folder instead`,
      );
  }
  return options.limit !== undefined && format !== 'zip' ? dataset.take(options.limit) : dataset;
}

async function readOptional(file: string): Promise<Uint8Array | undefined> {
  return readFile(file).catch(() => undefined);
}

async function cifarClassNames(file: string, variant: CifarVariant, labels: Cifar100Labels | undefined) {
  const candidates =
    variant === 'cifar10'
      ? ['batches.meta.txt']
      : labels === 'coarse'
        ? ['coarse_label_names.txt']
        : ['fine_label_names.txt'];
  for (const name of candidates) {
    const text = await readFile(path.join(path.dirname(file), name), 'utf8').catch(() => undefined);
    if (text) return parseClassNames(text);
  }
  return undefined;
}

/**
 * Loads a data set from a file or folder, detecting the format (see `detectFormat`; a folder is an image
 * folder). Class names come from `batches.meta.txt` / `*_label_names.txt` beside CIFAR files, folder
 * names for image folders, and the known names for (Fashion-)MNIST.
 *
 * @example
 * const test = await loadDataset('../shared/data/cifar10/test_batch_first1000.bin');
 * for (const { x, y } of test.batches(100)) { ...; x.dispose(); }
 */
export async function loadDataset(target: string, options: LoadOptions = {}): Promise<Dataset> {
  const info = await stat(target).catch((error: NodeJS.ErrnoException) => {
    throw new DatasetError('not-found', `cannot read '${target}': ${error.code ?? error.message}`);
  });
  if (info.isDirectory() || options.format === 'folder') {
    if (!info.isDirectory()) throw new DatasetError('bad-argument', `'${target}' is not a folder`);
    return loadImageFolder(target, options);
  }
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  checkSize(info.size, maxBytes, target);
  const bytes = new Uint8Array(await readFile(target));
  const format = detectFormat(bytes, path.basename(target), options.format);
  let labels: Uint8Array | undefined;
  let classNames = options.classNames;
  if (format === 'idx' || format === 'npy') {
    const pairedName = pairedLabelsName(path.basename(target));
    const labelsPath =
      options.labelsPath ?? (pairedName ? path.join(path.dirname(target), pairedName) : undefined);
    labels = labelsPath ? await readOptional(labelsPath) : undefined;
    if (options.labelsPath && !labels) {
      throw new DatasetError('not-found', `cannot read labels file '${options.labelsPath}'`);
    }
  }
  if (format === 'cifar10' || format === 'cifar100') {
    classNames ??= await cifarClassNames(target, format, options.cifar100Labels);
  }
  return datasetFromBytes(bytes, { ...options, format, filename: target, labels, classNames });
}

/** Concatenates data sets of one image shape (e.g. CIFAR-10's data_batch_1..5). Class names from the first. */
export function concatDatasets(sets: readonly Dataset[]): Dataset {
  if (sets.length === 0) throw new DatasetError('empty', `'sets' is empty`);
  // One set needs no copy (a 45,000-image training set is 138 MB).
  if (sets.length === 1) return sets[0];
  const shape = sets[0].shape;
  sets.forEach((set, i) => {
    if (set.shape.some((d, k) => d !== shape[k])) {
      throw new DatasetError(
        'mixed-sizes',
        `'sets[${i}]' has shape ${set.shape.join('x')}, sets[0] ${shape.join('x')}`,
      );
    }
  });
  const images = new Uint8Array(sets.reduce((sum, set) => sum + set.images.length, 0));
  const labels = new Int32Array(sets.reduce((sum, set) => sum + set.size, 0));
  let at = 0;
  let n = 0;
  for (const set of sets) {
    images.set(set.images, at);
    labels.set(set.labels, n);
    at += set.images.length;
    n += set.size;
  }
  return new ArrayDataset({ images, shape, labels, classNames: sets[0].classNames });
}
