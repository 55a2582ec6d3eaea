import onnxProto from 'onnx-proto';
import { OnnxExternalDataError, OnnxFormatError, OnnxLimitError, OnnxUnsupportedError } from './errors.js';
import { DEFAULT_WIRE_LIMITS, scanOnnxWire, type WireLimits } from './wire-scan.js';

/**
 * Reads an ONNX ModelProto with protobufjs (the `onnx-proto` package ships the compiled schema) into
 * plain structures, and decodes tensor payloads to typed arrays. No tfjs tensor is made here.
 */
const { onnx } = onnxProto;
type TensorProto = onnxProto.onnx.ITensorProto;
type AttributeProto = onnxProto.onnx.IAttributeProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;

/** protobufjs gives int64 fields as numbers or Long objects. */
type LongLike = number | { toNumber(): number };
export const toNumber = (value: LongLike | null | undefined): number =>
  value === null || value === undefined ? 0 : typeof value === 'number' ? value : value.toNumber();

export const DataType = onnx.TensorProto.DataType;

/**
 * A constant, folded at load: floats in a Float32Array; integers and booleans in a Float64Array
 * (exact below 2^53, which covers every shape and index). An integer computed from the shape of an
 * activation may depend on the batch size n, known only at run time: element i is then
 * `values[i] + batch[i] * n` (e.g. the `Shape` of an activation [n, 3, 32, 32] is values [0, 3, 32,
 * 32] with batch [1, 0, 0, 0]).
 */
export interface ConstTensor {
  type: 'float' | 'int' | 'bool';
  shape: number[];
  values: Float32Array | Float64Array;
  /** Coefficients of the batch size, where an element depends on it (absent: none does). */
  batch?: Float64Array;
}

/**
 * The bytes of tensors stored outside the model file (ONNX external data: PyTorch writes the weights
 * of models over 2 GB into files beside model.onnx), by the `location` the model names. Only local
 * files have them: an upload is one file, and a model that names external data without them is refused.
 */
export type ExternalData = ReadonlyMap<string, Uint8Array>;

export interface OnnxNode {
  /** The node's name, or `<opType>#<index>` when the file gives none. */
  name: string;
  opType: string;
  domain: string;
  /** Input names; '' marks an omitted optional input. */
  inputs: string[];
  outputs: string[];
  attributes: Map<string, AttributeProto>;
}

export interface OnnxValueInfo {
  name: string;
  /** TensorProto.DataType of a tensor value (0 when not a tensor). */
  elemType: number;
  /** Static size, symbolic name, or null (unknown); undefined when the rank is unknown. */
  dims: Array<number | string | null> | undefined;
}

export interface OnnxModel {
  /** The files of external data, when the model was read from a local directory. */
  external?: ExternalData;
  irVersion: number;
  /** Version of the default ('' / 'ai.onnx') operator set. */
  opset: number;
  producer: string;
  /** Graph inputs that are not initializers. */
  inputs: OnnxValueInfo[];
  outputs: OnnxValueInfo[];
  initializers: Map<string, TensorProto>;
  nodes: OnnxNode[];
}

function valueInfo(info: ValueInfoProto): OnnxValueInfo {
  const tensorType = info.type?.tensorType;
  const dims = tensorType?.shape?.dim?.map((d) => {
    if (d.dimParam) return d.dimParam;
    if (d.dimValue !== null && d.dimValue !== undefined) return toNumber(d.dimValue);
    return null;
  });
  return {
    name: info.name ?? '',
    elemType: tensorType?.elemType ?? 0,
    dims: tensorType?.shape ? dims : undefined,
  };
}

/**
 * Decodes and sanity-checks a model file. Throws `OnnxFormatError` when the bytes are not an ONNX
 * model, `OnnxLimitError` over `maxBytes` or over a count the wire scan checks before decoding
 * (nodes in all graphs, initializers, decoded values, nesting; wire-scan.ts), `OnnxUnsupportedError`
 * for constructs outside what any classifier needs (functions, sparse initializers, non-default
 * operator domains are checked later).
 */
export function decodeModel(
  bytes: Uint8Array,
  maxBytes: number,
  maxNodes: number,
  wire: Partial<Omit<WireLimits, 'maxNodes'>> = {},
): OnnxModel {
  if (bytes.byteLength > maxBytes) {
    throw new OnnxLimitError('bytes', bytes.byteLength, maxBytes, 'the ONNX file');
  }
  scanOnnxWire(bytes, { ...DEFAULT_WIRE_LIMITS, ...wire, maxNodes });
  let model: onnxProto.onnx.ModelProto;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (error) {
    throw new OnnxFormatError(
      `the file is not a readable ONNX protobuf (truncated or not ONNX): ${(error as Error).message}`,
    );
  }
  const graph = model.graph as onnxProto.onnx.GraphProto | null;
  if (!graph || toNumber(model.irVersion) < 3 || model.opsetImport.length === 0) {
    throw new OnnxFormatError(
      'the file decodes as protobuf but is not an ONNX model (no graph, IR version or opset import)',
    );
  }
  const defaultOpset = model.opsetImport.find((o) => o.domain === '' || o.domain === 'ai.onnx');
  if (!defaultOpset)
    throw new OnnxFormatError('the model imports no version of the default ONNX operator set');
  if (graph.node.length > maxNodes) {
    throw new OnnxLimitError('nodes', graph.node.length, maxNodes, 'the graph');
  }
  if (model.functions.length > 0) {
    throw new OnnxUnsupportedError('model-local functions are not supported');
  }
  if (graph.sparseInitializer.length > 0) {
    throw new OnnxUnsupportedError('sparse initializers are not supported');
  }
  const initializers = new Map<string, TensorProto>();
  for (const tensor of graph.initializer) initializers.set(tensor.name ?? '', tensor);
  const nodes = graph.node.map(
    (node, index): OnnxNode => ({
      name: node.name || `${node.opType}#${index}`,
      opType: node.opType ?? '',
      domain: node.domain ?? '',
      inputs: node.input ?? [],
      outputs: node.output ?? [],
      attributes: new Map((node.attribute ?? []).map((a) => [a.name ?? '', a])),
    }),
  );
  return {
    irVersion: toNumber(model.irVersion),
    opset: toNumber(defaultOpset.version),
    producer: `${model.producerName ?? ''} ${model.producerVersion ?? ''}`.trim(),
    inputs: graph.input.filter((i) => !initializers.has(i.name ?? '')).map(valueInfo),
    outputs: graph.output.map(valueInfo),
    initializers,
    nodes,
  };
}

/** ONNX element types read as float / integer values (initializers, Cast targets). */
export const FLOAT_TYPES: ReadonlySet<number> = new Set<number>([
  DataType.FLOAT,
  DataType.DOUBLE,
  DataType.FLOAT16,
]);
export const INT_TYPES: ReadonlySet<number> = new Set<number>([
  DataType.INT8,
  DataType.INT16,
  DataType.INT32,
  DataType.INT64,
  DataType.UINT8,
  DataType.UINT16,
  DataType.UINT32,
]);
const BYTES_PER_ELEMENT: Record<number, number> = {
  [DataType.FLOAT]: 4,
  [DataType.DOUBLE]: 8,
  [DataType.FLOAT16]: 2,
  [DataType.INT8]: 1,
  [DataType.INT16]: 2,
  [DataType.INT32]: 4,
  [DataType.INT64]: 8,
  [DataType.UINT8]: 1,
  [DataType.UINT16]: 2,
  [DataType.UINT32]: 4,
  [DataType.BOOL]: 1,
};

/** The tensor's dimensions and element count, checked, without touching its payload. */
export function tensorShape(tensor: TensorProto, where: string): { shape: number[]; size: number } {
  const shape = (tensor.dims ?? []).map(toNumber);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
    throw new OnnxFormatError(`${where}: tensor dims [${shape}] are not non-negative integers`);
  }
  return { shape, size: shape.reduce((a, b) => a * b, 1) };
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

type ElementReader = (view: DataView, i: number) => number;

/** INT64: exact below 2^53; the int64 extremes used as "to the end" stay huge. */
const readInt64: ElementReader = (view, i) => Number(view.getBigInt64(8 * i, true));

/** Element i of raw little-endian data, by type (FLOAT is copied whole; INT64 is `readInt64`). */
const RAW_READERS = new Map<number, ElementReader>([
  [DataType.DOUBLE, (view, i) => view.getFloat64(8 * i, true)],
  [DataType.FLOAT16, (view, i) => halfToFloat(view.getUint16(2 * i, true))],
  [DataType.INT8, (view, i) => view.getInt8(i)],
  [DataType.UINT8, (view, i) => view.getUint8(i)],
  [DataType.BOOL, (view, i) => view.getUint8(i)],
  [DataType.INT16, (view, i) => view.getInt16(2 * i, true)],
  [DataType.UINT16, (view, i) => view.getUint16(2 * i, true)],
  [DataType.INT32, (view, i) => view.getInt32(4 * i, true)],
  [DataType.UINT32, (view, i) => view.getUint32(4 * i, true)],
]);

function readRaw(raw: Uint8Array, dataType: number, size: number): number[] | Float32Array {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (dataType === DataType.FLOAT) {
    // ONNX stores little-endian, as every platform Node runs on: a byte copy (aligned, fast).
    const out = new Float32Array(size);
    new Uint8Array(out.buffer).set(raw.subarray(0, size * 4));
    return out;
  }
  const read = RAW_READERS.get(dataType) ?? readInt64;
  const out = new Array<number>(size);
  for (let i = 0; i < size; i++) out[i] = read(view, i);
  return out;
}

/** Typed-field payloads (float_data, int32_data, int64_data, double_data). */
function readFields(tensor: TensorProto, dataType: number): Array<number | LongLike> {
  switch (dataType) {
    case DataType.FLOAT:
      return tensor.floatData ?? [];
    case DataType.DOUBLE:
      return tensor.doubleData ?? [];
    case DataType.INT64:
      return tensor.int64Data ?? [];
    case DataType.UINT32:
      return tensor.uint64Data ?? [];
    default:
      // int32_data holds every type of 32 bits or fewer (float16 as its bit pattern).
      return tensor.int32Data ?? [];
  }
}

/** Whether the tensor's payload lies in an external file. */
export function isExternal(tensor: TensorProto): boolean {
  return (
    tensor.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL || (tensor.externalData?.length ?? 0) > 0
  );
}

/** `location`, `offset` and `length` of an external tensor (ONNX's key-value entries). */
function externalEntry(
  tensor: TensorProto,
  where: string,
): { location: string; offset: number; length?: number } {
  const entries = new Map((tensor.externalData ?? []).map((e) => [e.key ?? '', e.value ?? '']));
  const location = entries.get('location');
  if (!location)
    throw new OnnxFormatError(`${where}: tensor '${tensor.name}' is external but names no location`);
  const integer = (key: string) => {
    const raw = entries.get(key);
    if (raw === undefined) return undefined;
    const value = Number(raw);
    if (!(Number.isSafeInteger(value) && value >= 0)) {
      throw new OnnxFormatError(
        `${where}: tensor '${tensor.name}' external ${key} '${raw}' is not a byte count`,
      );
    }
    return value;
  };
  return { location, offset: integer('offset') ?? 0, length: integer('length') };
}

/**
 * The in-directory key of an external data location, or `OnnxExternalDataError` when it could leave
 * the model's directory: absolute, `..`, empty segments, backslashes, NUL, drive letters or URLs.
 */
function externalKey(location: string, where: string): string {
  const parts = location.split('/');
  if (
    location.startsWith('/') ||
    /[\\\0:]/.test(location) ||
    parts.some((part) => part === '..' || part === '')
  ) {
    throw new OnnxExternalDataError(
      `${where}: external data location '${location}' leaves the model's directory`,
      'outside-directory',
      location,
    );
  }
  return parts.filter((part) => part !== '.').join('/');
}

/**
 * The files a model's external tensors live in (relative paths as the model names them), checked to
 * stay inside the model's directory; empty when every weight is inside the model file.
 */
export function externalLocations(model: OnnxModel): string[] {
  const locations = new Set<string>();
  for (const [name, tensor] of model.initializers) {
    if (!isExternal(tensor)) continue;
    const where = `initializer '${name}'`;
    locations.add(externalKey(externalEntry(tensor, where).location, where));
  }
  return [...locations].sort();
}

/** The payload of an external tensor, from the files the loader read. */
function externalBytes(tensor: TensorProto, where: string, external: ExternalData | undefined): Uint8Array {
  const { location, offset, length } = externalEntry(tensor, where);
  if (!external) {
    throw new OnnxExternalDataError(
      `${where}: tensor '${tensor.name}' stores its data in an external file ('${location}'); external data is read for local model files only: re-export with the weights inside model.onnx to upload it`,
      'not-local',
      location,
    );
  }
  const file = external.get(externalKey(location, where));
  if (!file) {
    throw new OnnxExternalDataError(
      `${where}: tensor '${tensor.name}' stores its data in '${location}', which is not beside the model`,
      'missing',
      location,
    );
  }
  const end = length === undefined ? file.byteLength : offset + length;
  if (offset > file.byteLength || end > file.byteLength) {
    throw new OnnxExternalDataError(
      `${where}: tensor '${tensor.name}' reads bytes ${offset}..${end} of '${location}', which has ${file.byteLength}`,
      'out-of-range',
      location,
    );
  }
  return file.subarray(offset, end);
}

/**
 * Decodes a TensorProto into a `ConstTensor`. External data is read from `external` (the files
 * beside a local model); without them it is refused (an uploaded model is one file, never a path to
 * read). Payloads whose length does not match the dims are refused.
 */
export function decodeTensor(tensor: TensorProto, where: string, external?: ExternalData): ConstTensor {
  const dataType = tensor.dataType ?? 0;
  const bytesPer = BYTES_PER_ELEMENT[dataType];
  if (bytesPer === undefined) {
    throw new OnnxUnsupportedError(
      `${where}: tensor '${tensor.name}' has data type ${onnx.TensorProto.DataType[dataType] ?? dataType}, which is not supported`,
    );
  }
  const { shape, size } = tensorShape(tensor, where);
  let values: number[] | Float32Array | Array<number | LongLike>;
  const raw = isExternal(tensor) ? externalBytes(tensor, where, external) : tensor.rawData;
  if (raw && raw.byteLength > 0) {
    if (raw.byteLength !== size * bytesPer) {
      throw new OnnxFormatError(
        `${where}: tensor '${tensor.name}' [${shape}] needs ${size * bytesPer} bytes of raw data, has ${raw.byteLength}`,
      );
    }
    values = readRaw(raw, dataType, size);
  } else {
    values = readFields(tensor, dataType);
    if (values.length !== size) {
      throw new OnnxFormatError(
        `${where}: tensor '${tensor.name}' [${shape}] needs ${size} values, has ${values.length}`,
      );
    }
    if (dataType === DataType.FLOAT16) values = values.map((v) => halfToFloat(toNumber(v)));
  }
  if (FLOAT_TYPES.has(dataType)) {
    return {
      type: 'float',
      shape,
      values: values instanceof Float32Array ? values : Float32Array.from(values, toNumber),
    };
  }
  return {
    type: INT_TYPES.has(dataType) ? 'int' : 'bool',
    shape,
    values: Float64Array.from(values as Array<number | LongLike>, (v) => {
      const n = toNumber(v);
      return dataType === DataType.BOOL ? (n !== 0 ? 1 : 0) : n;
    }),
  };
}

export type { AttributeProto, TensorProto };
