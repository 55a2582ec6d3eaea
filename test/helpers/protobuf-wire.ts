import onnxProto from 'onnx-proto';

/**
 * Raw protobuf bytes for hostile-input tests: fields written by hand, so that a test can build what
 * no encoder would (millions of empty nodes, a length past the end, nesting without end).
 */

const { onnx } = onnxProto;

/** A varint as protobuf writes it. */
export function varint(value: number): number[] {
  const out: number[] = [];
  while (value >= 0x80) {
    out.push((value & 0x7f) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** One length-delimited field `number` holding `payload`. */
export const lengthField = (number: number, payload: Uint8Array): Uint8Array =>
  concat(new Uint8Array([...varint((number << 3) | 2), ...varint(payload.length)]), payload);

/** `count` copies of one length-delimited field `field` holding `payload`. */
export function repeatedField(field: number, payload: number[], count: number): Uint8Array {
  const one = [...varint((field << 3) | 2), ...varint(payload.length), ...payload];
  const out = new Uint8Array(one.length * count);
  for (let i = 0; i < count; i++) out.set(one, i * one.length);
  return out;
}

/** The ONNX model with `prefix` (raw fields of GraphProto) put before its graph's own fields. */
export function withGraphPrefix(model: Uint8Array, prefix: Uint8Array): Uint8Array {
  const decoded = onnx.ModelProto.decode(model);
  const graph = onnx.GraphProto.encode(decoded.graph!).finish();
  decoded.graph = null;
  return concat(onnx.ModelProto.encode(decoded).finish(), lengthField(7, concat(prefix, graph)));
}
