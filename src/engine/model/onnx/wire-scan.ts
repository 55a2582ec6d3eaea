import protobuf from 'protobufjs/minimal.js';
import { OnnxFormatError, OnnxLimitError } from './errors.js';

/**
 * A pass over the protobuf wire format of an ONNX file before it is decoded: counts nodes (in every
 * graph: the main one, sub-graphs in attributes, functions, training graphs), initializers, decoded
 * values (every field occurrence and every element of a packed varint array, each of which becomes
 * a JavaScript object or array slot in the full decode) and nesting depth, and stops at the first
 * limit crossed. A file of 50 million empty nodes is refused after the first nodes over the limit,
 * in the time it takes to read them, instead of after a decode that takes minutes and gigabytes.
 *
 * It reads only tags, lengths and the varints of packed arrays (protobufjs' Reader), and recurses
 * into the fields that hold messages (the table below, from onnx.proto); bytes, strings and packed
 * floats are skipped by length.
 */

export interface WireLimits {
  maxNodes: number;
  maxInitializers: number;
  /** Field occurrences plus packed varint elements, summed over the whole file. */
  maxElements: number;
  /** Messages nested in messages (graphs in attributes in nodes in graphs, types in types). */
  maxDepth: number;
}

export const DEFAULT_WIRE_LIMITS: Omit<WireLimits, 'maxNodes'> = {
  maxInitializers: 100_000,
  maxElements: 4_000_000,
  maxDepth: 64,
};

type MessageName =
  | 'Model'
  | 'Graph'
  | 'Node'
  | 'Attribute'
  | 'Tensor'
  | 'SparseTensor'
  | 'ValueInfo'
  | 'Type'
  | 'TypeTensor'
  | 'TypeSequence'
  | 'TypeMap'
  | 'TypeOptional'
  | 'TypeSparseTensor'
  | 'TensorShape'
  | 'Function'
  | 'TrainingInfo'
  | 'TensorAnnotation'
  | 'Leaf';

/** Field number -> message type of the fields that hold messages (onnx.proto, IR version 8). */
const MESSAGE_FIELDS: Record<MessageName, Readonly<Record<number, MessageName>>> = {
  Model: { 7: 'Graph', 8: 'Leaf', 14: 'Leaf', 20: 'TrainingInfo', 25: 'Function' },
  Graph: {
    1: 'Node',
    5: 'Tensor',
    11: 'ValueInfo',
    12: 'ValueInfo',
    13: 'ValueInfo',
    14: 'TensorAnnotation',
    15: 'SparseTensor',
  },
  Node: { 5: 'Attribute' },
  Attribute: {
    5: 'Tensor',
    6: 'Graph',
    10: 'Tensor',
    11: 'Graph',
    14: 'Type',
    15: 'Type',
    22: 'SparseTensor',
    23: 'SparseTensor',
  },
  Tensor: { 3: 'Leaf', 13: 'Leaf' },
  SparseTensor: { 1: 'Tensor', 2: 'Tensor' },
  ValueInfo: { 2: 'Type' },
  Type: { 1: 'TypeTensor', 4: 'TypeSequence', 5: 'TypeMap', 8: 'TypeSparseTensor', 9: 'TypeOptional' },
  TypeTensor: { 2: 'TensorShape' },
  TypeSparseTensor: { 2: 'TensorShape' },
  TypeSequence: { 1: 'Type' },
  TypeMap: { 2: 'Type' },
  TypeOptional: { 1: 'Type' },
  TensorShape: { 1: 'Leaf' },
  Function: { 7: 'Node', 9: 'Leaf' },
  TrainingInfo: { 1: 'Graph', 2: 'Graph', 3: 'Leaf', 4: 'Leaf' },
  TensorAnnotation: { 2: 'Leaf' },
  // Small messages of scalars and strings (OperatorSetId, StringStringEntry, Segment, Dimension):
  // their fields are counted, nothing in them nests.
  Leaf: {},
};

/** Repeated varint fields (int64/int32/uint64) that may be packed: one decoded value per varint. */
const PACKED_VARINTS: Partial<Record<MessageName, ReadonlySet<number>>> = {
  Tensor: new Set([1, 5, 7, 11]),
  Attribute: new Set([8]),
};

const WIRE_VARINT = 0;
const WIRE_LENGTH = 2;

export interface WireCounts {
  nodes: number;
  initializers: number;
  elements: number;
}

/**
 * Scans `bytes` as an ONNX ModelProto and returns what it holds; throws `OnnxLimitError` at the first
 * limit crossed and `OnnxFormatError` when the wire format is broken (a length past the end, a bad
 * wire type).
 */
export function scanOnnxWire(bytes: Uint8Array, limits: WireLimits): WireCounts {
  const counts: WireCounts = { nodes: 0, initializers: 0, elements: 0 };
  const reader = protobuf.Reader.create(bytes);
  try {
    scanMessage(reader, bytes.length, 'Model', 0, counts, limits);
  } catch (error) {
    if (error instanceof OnnxLimitError || error instanceof OnnxFormatError) throw error;
    throw new OnnxFormatError(
      `the file is not a readable ONNX protobuf (truncated or not ONNX): ${(error as Error).message}`,
    );
  }
  return counts;
}

/** Which limit each count answers to, and how an error names it. */
const COUNTED: Readonly<
  Record<keyof WireCounts, { limit: keyof WireLimits; name: OnnxLimitError['limit']; what: string }>
> = {
  nodes: { limit: 'maxNodes', name: 'nodes', what: 'the ONNX file (nodes in all its graphs)' },
  initializers: {
    limit: 'maxInitializers',
    name: 'initializers',
    what: 'the ONNX file (initializers in all its graphs)',
  },
  elements: {
    limit: 'maxElements',
    name: 'protoElements',
    what: 'the ONNX file (fields and packed values to decode)',
  },
};

/** Adds `n` to one count; throws `OnnxLimitError` once it crosses its limit. */
function count(counts: WireCounts, key: keyof WireCounts, n: number, limits: WireLimits): void {
  counts[key] += n;
  const { limit, name, what } = COUNTED[key];
  if (counts[key] > limits[limit]) throw new OnnxLimitError(name, counts[key], limits[limit], what);
}

function scanMessage(
  reader: protobuf.Reader,
  end: number,
  type: MessageName,
  depth: number,
  counts: WireCounts,
  limits: WireLimits,
): void {
  if (depth > limits.maxDepth) {
    throw new OnnxLimitError('depth', depth, limits.maxDepth, 'the ONNX file (messages nested in messages)');
  }
  const fields = MESSAGE_FIELDS[type];
  const packed = PACKED_VARINTS[type];
  while (reader.pos < end) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 0) throw new OnnxFormatError('the file is not a readable ONNX protobuf: field number 0');
    count(counts, 'elements', 1, limits);
    const nested = fields[field];
    if (wire === WIRE_LENGTH) {
      const length = reader.uint32();
      const start = reader.pos;
      if (length > end - start) {
        throw new OnnxFormatError(
          `the file is not a readable ONNX protobuf: a field of ${length} bytes runs past the end of its message`,
        );
      }
      if (nested !== undefined) {
        if ((type === 'Graph' && field === 1) || (type === 'Function' && field === 7)) {
          count(counts, 'nodes', 1, limits);
        }
        if (type === 'Graph' && (field === 5 || field === 15)) count(counts, 'initializers', 1, limits);
        scanMessage(reader, start + length, nested, depth + 1, counts, limits);
        if (reader.pos !== start + length) {
          throw new OnnxFormatError(
            'the file is not a readable ONNX protobuf: a message overruns its length',
          );
        }
      } else if (packed?.has(field)) {
        // One decoded value per varint: count the bytes that end one (high bit clear).
        let values = 0;
        for (let at = start; at < start + length; at++) if (reader.buf[at] < 0x80) values += 1;
        count(counts, 'elements', values, limits);
        reader.skip(length);
      } else {
        reader.skip(length);
      }
    } else if (wire === WIRE_VARINT || wire === 1 || wire === 5) {
      reader.skipType(wire);
    } else {
      throw new OnnxFormatError(
        `the file is not a readable ONNX protobuf: wire type ${wire} in field ${field}`,
      );
    }
    if (reader.pos > end) {
      throw new OnnxFormatError('the file is not a readable ONNX protobuf: a field runs past its message');
    }
  }
}
