import { ArrayDataset, type Dataset } from './dataset.js';
import { DatasetError } from './errors.js';

/**
 * NumPy `.npy` files (format versions 1-3): magic `\x93NUMPY`, version, header length (u16 LE in v1,
 * u32 LE in v2/3), then a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (N, H, W, C), }`
 * and the raw array. Python users upload `np.save` output of their test set.
 */

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

export type NpyDtype =
  | 'uint8'
  | 'int8'
  | 'int16'
  | 'int32'
  | 'int64'
  | 'uint16'
  | 'uint32'
  | 'float32'
  | 'float64';

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  /** Values in C (row-major) order, whatever the file's order was. */
  data:
    | Uint8Array
    | Int8Array
    | Int16Array
    | Int32Array
    | Uint16Array
    | Uint32Array
    | Float32Array
    | Float64Array;
}

export function isNpy(bytes: Uint8Array): boolean {
  return bytes.length >= 6 && MAGIC.every((b, i) => bytes[i] === b);
}

type PyValue = string | number | boolean | PyValue[] | { [key: string]: PyValue };

/** A small parser for the Python literals a .npy header uses: dicts, tuples, strings, ints, booleans. */
function parsePythonLiteral(text: string, source: string): PyValue {
  let at = 0;
  const fail = (what: string): never => {
    throw new DatasetError('bad-header', `'${source}': bad .npy header (${what} at ${at}): ${text.trim()}`);
  };
  const skip = () => {
    while (at < text.length && /\s/.test(text[at])) at++;
  };
  const value = (): PyValue => {
    skip();
    const ch = text[at];
    if (ch === '{') {
      at++;
      const dict: { [key: string]: PyValue } = {};
      for (;;) {
        skip();
        if (text[at] === '}') {
          at++;
          return dict;
        }
        const key = value();
        if (typeof key !== 'string') fail('dict key is not a string');
        skip();
        if (text[at] !== ':') fail("expected ':'");
        at++;
        dict[key as string] = value();
        skip();
        if (text[at] === ',') at++;
        else if (text[at] !== '}') fail("expected ',' or '}'");
      }
    }
    if (ch === '(' || ch === '[') {
      const close = ch === '(' ? ')' : ']';
      at++;
      const items: PyValue[] = [];
      for (;;) {
        skip();
        if (text[at] === close) {
          at++;
          return items;
        }
        items.push(value());
        skip();
        if (text[at] === ',') at++;
        else if (text[at] !== close) fail(`expected ',' or '${close}'`);
      }
    }
    if (ch === "'" || ch === '"') {
      const end = text.indexOf(ch, at + 1);
      if (end < 0) fail('unterminated string');
      const str = text.slice(at + 1, end);
      at = end + 1;
      return str;
    }
    const word = /^(True|False|-?\d+)L?/.exec(text.slice(at));
    if (!word) return fail('unexpected token');
    at += word[0].length;
    if (word[1] === 'True') return true;
    if (word[1] === 'False') return false;
    return Number(word[1]);
  };
  const result = value();
  skip();
  if (at !== text.length) fail('trailing characters');
  return result;
}

const DTYPES: Record<string, { dtype: NpyDtype; bytes: number }> = {
  u1: { dtype: 'uint8', bytes: 1 },
  i1: { dtype: 'int8', bytes: 1 },
  i2: { dtype: 'int16', bytes: 2 },
  u2: { dtype: 'uint16', bytes: 2 },
  i4: { dtype: 'int32', bytes: 4 },
  u4: { dtype: 'uint32', bytes: 4 },
  i8: { dtype: 'int64', bytes: 8 },
  f4: { dtype: 'float32', bytes: 4 },
  f8: { dtype: 'float64', bytes: 8 },
};

function readValues(view: DataView, dtype: NpyDtype, count: number, little: boolean): NpyArray['data'] {
  switch (dtype) {
    case 'uint8':
      return new Uint8Array(view.buffer, view.byteOffset, count).slice();
    case 'int8':
      return new Int8Array(view.buffer, view.byteOffset, count).slice();
    case 'int16':
      return Int16Array.from({ length: count }, (_, i) => view.getInt16(2 * i, little));
    case 'uint16':
      return Uint16Array.from({ length: count }, (_, i) => view.getUint16(2 * i, little));
    case 'int32':
      return Int32Array.from({ length: count }, (_, i) => view.getInt32(4 * i, little));
    case 'uint32':
      return Uint32Array.from({ length: count }, (_, i) => view.getUint32(4 * i, little));
    case 'int64':
      // Labels and sizes fit in 53 bits; larger values would be garbage anyway.
      return Float64Array.from({ length: count }, (_, i) => Number(view.getBigInt64(8 * i, little)));
    case 'float32':
      return Float32Array.from({ length: count }, (_, i) => view.getFloat32(4 * i, little));
    case 'float64':
      return Float64Array.from({ length: count }, (_, i) => view.getFloat64(8 * i, little));
  }
}

/** Reorders Fortran (column-major) values into C order. */
function fortranToC<T extends NpyArray['data']>(values: T, shape: number[]): T {
  const out = values.slice() as T;
  const rank = shape.length;
  const index = new Array<number>(rank).fill(0);
  const fortranStrides = shape.map((_, d) => shape.slice(0, d).reduce((a, b) => a * b, 1));
  for (let c = 0; c < values.length; c++) {
    let f = 0;
    for (let d = 0; d < rank; d++) f += index[d] * fortranStrides[d];
    out[c] = values[f];
    for (let d = rank - 1; d >= 0; d--) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

export function parseNpy(bytes: Uint8Array, source = 'the data'): NpyArray {
  if (!isNpy(bytes)) {
    throw new DatasetError('bad-magic', `'${source}' is not a .npy file: it does not start with \\x93NUMPY`);
  }
  if (bytes.length < 10)
    throw new DatasetError('bad-header', `'${source}': .npy file of ${bytes.length} bytes`);
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (major < 1 || major > 3)
    throw new DatasetError('bad-header', `'${source}': unknown .npy version ${major}`);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const dataStart = headerStart + headerLength;
  if (bytes.length < dataStart) {
    throw new DatasetError(
      'bad-header',
      `'${source}': .npy header of ${headerLength} bytes runs past the file end`,
    );
  }
  const headerText = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(
    bytes.subarray(headerStart, dataStart),
  );
  const header = parsePythonLiteral(headerText, source);
  if (typeof header !== 'object' || Array.isArray(header)) {
    throw new DatasetError('bad-header', `'${source}': .npy header is not a dict`);
  }
  const { descr, fortran_order: fortranOrder, shape } = header;
  if (typeof descr !== 'string' || typeof fortranOrder !== 'boolean' || !Array.isArray(shape)) {
    throw new DatasetError('bad-header', `'${source}': .npy header lacks descr, fortran_order or shape`);
  }
  const match = /^([<>|=]?)([a-z]\d+)$/.exec(descr);
  const type = match ? DTYPES[match[2]] : undefined;
  if (!match || !type) {
    throw new DatasetError(
      'bad-header',
      `'${source}': unsupported .npy dtype '${descr}' (use uint8, float32/64 or an integer type)`,
    );
  }
  if (!shape.every((d) => typeof d === 'number' && Number.isInteger(d) && d >= 0)) {
    throw new DatasetError('bad-header', `'${source}': bad .npy shape (${shape.join(', ')})`);
  }
  const dims = shape as number[];
  const count = dims.reduce((a, b) => a * b, 1);
  const available = bytes.length - dataStart;
  if (available !== count * type.bytes) {
    throw new DatasetError(
      'bad-size',
      `'${source}': .npy shape (${dims.join(', ')}) of ${descr} needs ${count * type.bytes} bytes, the file holds ${available}`,
    );
  }
  const little = match[1] !== '>';
  const body = new DataView(bytes.buffer, bytes.byteOffset + dataStart, available);
  let data = readValues(body, type.dtype, count, little);
  if (fortranOrder && dims.length > 1) data = fortranToC(data, dims);
  return { dtype: type.dtype, shape: dims, data };
}

export type NpyLayout = 'NHWC' | 'NCHW';

/**
 * Images (rank 4 in the stated layout, or rank 3 N x H x W for one channel) and optional labels (rank 1
 * integers, negative = unlabelled) into a data set. uint8 pixels are kept; floats must lie in [0,1] and
 * are rounded to the nearest 1/255 (the data set stores uint8).
 */
export function npyDataset(
  images: NpyArray,
  labels: NpyArray | undefined,
  layout: NpyLayout,
  classNames?: readonly string[],
  source = 'the images',
): Dataset {
  const rank = images.shape.length;
  if (rank !== 3 && rank !== 4) {
    throw new DatasetError(
      'bad-header',
      `'${source}' must be rank 4 (${layout}) or 3 (NHW), got (${images.shape.join(', ')})`,
    );
  }
  const [n, a, b, c = 1] = images.shape;
  const [height, width, channels] = rank === 3 || layout === 'NHWC' ? [a, b, c] : [b, c, a];
  const pixels = new Uint8Array(images.data.length);
  const isFloat = images.dtype === 'float32' || images.dtype === 'float64';
  for (let i = 0; i < images.data.length; i++) {
    const v = images.data[i];
    if (isFloat ? !(v >= 0 && v <= 1) : v < 0 || v > 255) {
      throw new DatasetError(
        'bad-argument',
        `'${source}' value ${v} at flat index ${i} is outside ${isFloat ? '[0, 1] (float pixels)' : '[0, 255]'}`,
      );
    }
  }
  const plane = height * width;
  for (let img = 0; img < n; img++) {
    const base = img * plane * channels;
    for (let p = 0; p < plane; p++) {
      for (let ch = 0; ch < channels; ch++) {
        const from = rank === 4 && layout === 'NCHW' ? base + ch * plane + p : base + p * channels + ch;
        const v = images.data[from];
        pixels[base + p * channels + ch] = isFloat ? Math.round(v * 255) : v;
      }
    }
  }
  let labelArray: Int32Array | undefined;
  if (labels) {
    if (labels.shape.length !== 1 || labels.shape[0] !== n || labels.dtype.startsWith('float')) {
      throw new DatasetError(
        'bad-header',
        `labels of '${source}' must be ${n} integers, got ${labels.dtype} (${labels.shape.join(', ')})`,
      );
    }
    labelArray = Int32Array.from(labels.data, (v) => (v < 0 ? -1 : v));
  }
  return new ArrayDataset({
    images: pixels,
    shape: [height, width, channels],
    labels: labelArray,
    classNames,
  });
}
