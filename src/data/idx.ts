import { gunzipSync } from 'node:zlib';
import { ArrayDataset, type Dataset } from './dataset.js';
import { DatasetError } from './errors.js';

/**
 * IDX files (MNIST, Fashion-MNIST): magic 0x0000 TT DD (TT = element type, 0x08 = uint8; DD = number of
 * dimensions), then one big-endian uint32 per dimension, then the data row-major. Often gzipped.
 */

const GZIP_MAGIC = [0x1f, 0x8b];
const UBYTE = 0x08;

export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === GZIP_MAGIC[0] && bytes[1] === GZIP_MAGIC[1];
}

/**
 * One budget of unpacked bytes for everything inflated from one input, over all its layers (a
 * gzip inside a gzip, the entries of a zip): each layer charges what it produced, and a layer that
 * would go past the budget stops there. Without it each layer had its own limit, and a 3 kB
 * double-gzipped upload inflated to 1.88 GB.
 */
export class DecompressionBudget {
  private used = 0;
  constructor(readonly maxBytes: number) {}

  get remaining(): number {
    return Math.max(0, this.maxBytes - this.used);
  }

  /** Takes `bytes` from the budget; throws `DatasetError('too-large')` naming `source` past it. */
  charge(bytes: number, source: string): void {
    this.used += bytes;
    if (this.used > this.maxBytes) throw this.exceeded(source);
  }

  exceeded(source: string): DatasetError {
    return new DatasetError(
      'too-large',
      `'${source}' unpacks to more than the limit of ${this.maxBytes} bytes (all its compressed layers together)`,
    );
  }
}

/** Gzip layers peeled from one input at most; a gzip that inflates to itself would never end. */
export const MAX_GZIP_LAYERS = 16;

/**
 * Gunzips when the bytes start with the gzip magic (whatever the file name says), every layer of a
 * gzip inside a gzip, each layer's output charged to `budget` (a shared budget, or a limit of this
 * input alone): the budget, not the number of layers, bounds what is inflated.
 */
export function maybeGunzip(
  bytes: Uint8Array,
  source = 'the data',
  budget: DecompressionBudget | number = 2 ** 31 - 1,
): Uint8Array {
  const shared = typeof budget === 'number' ? new DecompressionBudget(budget) : budget;
  let out = bytes;
  for (let layer = 0; isGzip(out); layer++) {
    if (layer === MAX_GZIP_LAYERS) {
      throw new DatasetError('too-large', `'${source}' nests more than ${MAX_GZIP_LAYERS} gzip layers`);
    }
    out = gunzipLayer(out, source, shared);
  }
  return out;
}

function gunzipLayer(bytes: Uint8Array, source: string, budget: DecompressionBudget): Uint8Array {
  let out: Uint8Array;
  try {
    // zlib stops at maxOutputLength: a bomb never inflates past the budget.
    out = gunzipSync(bytes, { maxOutputLength: Math.max(1, budget.remaining) });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw budget.exceeded(source);
    const reason = error instanceof Error ? error.message : String(error);
    throw new DatasetError('bad-size', `'${source}' is not a valid gzip stream: ${reason}`);
  }
  budget.charge(out.length, source);
  return out;
}

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

/** True when the bytes look like an (uncompressed) uint8 IDX file. */
export function looksLikeIdx(bytes: Uint8Array): boolean {
  return (
    bytes.length >= 4 &&
    bytes[0] === 0 &&
    bytes[1] === 0 &&
    bytes[2] === UBYTE &&
    bytes[3] >= 1 &&
    bytes[3] <= 4
  );
}

/** Parses a uint8 IDX file, gunzipping it first when it is gzipped (charged to `budget`). */
export function parseIdx(
  raw: Uint8Array,
  source = 'the data',
  budget: DecompressionBudget | number = 2 ** 31 - 1,
): IdxArray {
  const bytes = maybeGunzip(raw, source, budget);
  if (bytes.length < 4) {
    throw new DatasetError('bad-magic', `'${source}' is not an IDX file: only ${bytes.length} bytes`);
  }
  const magic = ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0;
  if (bytes[0] !== 0 || bytes[1] !== 0 || bytes[2] !== UBYTE || bytes[3] < 1 || bytes[3] > 4) {
    throw new DatasetError(
      'bad-magic',
      `'${source}' is not a uint8 IDX file: magic 0x${magic.toString(16).padStart(8, '0')}, expected 0x00000801..0x00000804`,
    );
  }
  const rank = bytes[3];
  const headerSize = 4 + 4 * rank;
  if (bytes.length < headerSize) {
    throw new DatasetError(
      'bad-header',
      `'${source}': IDX header needs ${headerSize} bytes, the file has ${bytes.length}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i, false));
  const expected = dims.reduce((a, b) => a * b, 1);
  if (bytes.length - headerSize !== expected) {
    throw new DatasetError(
      'bad-size',
      `'${source}': IDX header declares ${dims.join('x')} = ${expected} bytes of data, the file holds ${bytes.length - headerSize}`,
    );
  }
  return { dims, data: bytes.subarray(headerSize) };
}

/** Images (N x H x W, or N x H x W x C) plus optional labels (N) into a data set. */
export function idxDataset(
  images: IdxArray,
  labels: IdxArray | undefined,
  classNames?: readonly string[],
  source = 'the images',
): Dataset {
  if (images.dims.length !== 3 && images.dims.length !== 4) {
    throw new DatasetError(
      'bad-header',
      `'${source}' must hold rank 3 or 4 images, got [${images.dims.join(', ')}]`,
    );
  }
  const [count, height, width, channels = 1] = images.dims;
  let labelArray: Int32Array | undefined;
  if (labels) {
    if (labels.dims.length !== 1 || labels.dims[0] !== count) {
      throw new DatasetError(
        'bad-header',
        `labels of '${source}' must be [${count}], got [${labels.dims.join(', ')}]`,
      );
    }
    labelArray = Int32Array.from(labels.data, (label) => (label === 255 ? -1 : label));
  }
  return new ArrayDataset({
    images: images.data,
    shape: [height, width, channels],
    labels: labelArray,
    classNames: labelArray ? classNames : [],
  });
}
