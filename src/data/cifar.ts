import { ArrayDataset, type Dataset } from './dataset.js';
import { DatasetError } from './errors.js';

/**
 * CIFAR binary files (shared/data/README.md): a plain concatenation of records, no header.
 * CIFAR-10: 1 label byte + 3,072 pixel bytes (1,024 R, 1,024 G, 1,024 B; 32 rows of 32, row-major).
 * CIFAR-100: 1 coarse + 1 fine label byte + the same 3,072 pixel bytes. Label byte 255 = unlabelled.
 */

export const CIFAR_PIXELS = 3072;
export const CIFAR10_RECORD = 1 + CIFAR_PIXELS;
export const CIFAR100_RECORD = 2 + CIFAR_PIXELS;

export type CifarVariant = 'cifar10' | 'cifar100';
export type Cifar100Labels = 'fine' | 'coarse';

export interface CifarOptions {
  variant: CifarVariant;
  /** CIFAR-100 only: which label byte to use. Default 'fine'. */
  labels?: Cifar100Labels;
  classNames?: readonly string[];
  /** Read at most this many records. */
  limit?: number;
  /** Names the source in error messages. */
  source?: string;
}

export function cifarRecordSize(variant: CifarVariant): number {
  return variant === 'cifar10' ? CIFAR10_RECORD : CIFAR100_RECORD;
}

/** Parses CIFAR binary records into an NHWC data set (planes interleaved once, here). */
export function parseCifar(bytes: Uint8Array, options: CifarOptions): Dataset {
  const record = cifarRecordSize(options.variant);
  const source = options.source ?? 'the data';
  if (bytes.length === 0 || bytes.length % record !== 0) {
    throw new DatasetError(
      'bad-size',
      `'${source}' is not a ${options.variant === 'cifar10' ? 'CIFAR-10' : 'CIFAR-100'} binary file: ` +
        `${bytes.length} bytes is not a positive multiple of the ${record}-byte record` +
        (bytes.length > record
          ? ` (${Math.floor(bytes.length / record)} records and ${bytes.length % record} bytes left over; truncated?)`
          : ''),
    );
  }
  const count = Math.min(bytes.length / record, options.limit ?? Number.POSITIVE_INFINITY);
  const labelOffset = options.variant === 'cifar100' && options.labels !== 'coarse' ? 1 : 0;
  const images = new Uint8Array(count * CIFAR_PIXELS);
  const labels = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    const start = i * record;
    const label = bytes[start + labelOffset];
    labels[i] = label === 255 ? -1 : label;
    const pixels = start + record - CIFAR_PIXELS;
    const out = i * CIFAR_PIXELS;
    for (let p = 0; p < 1024; p++) {
      images[out + p * 3] = bytes[pixels + p];
      images[out + p * 3 + 1] = bytes[pixels + 1024 + p];
      images[out + p * 3 + 2] = bytes[pixels + 2048 + p];
    }
  }
  const unlabelled = labels.every((label) => label < 0);
  return new ArrayDataset({
    images,
    shape: [32, 32, 3],
    labels,
    classNames: unlabelled ? [] : options.classNames,
  });
}

/** Which CIFAR variant a byte count (and file name) fits; undefined when neither. */
export function detectCifarVariant(byteLength: number, filename = ''): CifarVariant | undefined {
  const fits10 = byteLength > 0 && byteLength % CIFAR10_RECORD === 0;
  const fits100 = byteLength > 0 && byteLength % CIFAR100_RECORD === 0;
  if (fits10 && fits100) return /cifar-?100/i.test(filename) ? 'cifar100' : 'cifar10';
  if (fits100) return 'cifar100';
  if (fits10) return 'cifar10';
  return undefined;
}

/** Class names from a text file: one per line, blank lines dropped. */
export function parseClassNames(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter(Boolean);
}
