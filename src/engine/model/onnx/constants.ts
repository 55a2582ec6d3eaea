import { broadcastDims } from './dims.js';
import type { ConstTensor } from './proto.js';

/**
 * Load-time arithmetic on constants (typed arrays, never tensors): the folding of the subgraphs that
 * only compute shapes, pads, masks and indices, and the re-layout of weights. Integer elements may
 * depend on the batch size (`ConstTensor.batch`); the structural ops carry that dependence along, the
 * arithmetic keeps it where the result stays exact for every batch size and throws otherwise. Throws
 * plain `Error`s; the planner turns them into errors that name the node.
 */

export const sizeOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export function stridesOf(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

function allocate(type: ConstTensor['type'], size: number): Float32Array | Float64Array {
  return type === 'float' ? new Float32Array(size) : new Float64Array(size);
}

export function constant(type: ConstTensor['type'], shape: number[], values: ArrayLike<number>): ConstTensor {
  const out = allocate(type, values.length);
  out.set(values);
  return { type, shape, values: out };
}

/** Whether any element depends on the batch size. */
export function dependsOnBatch(t: ConstTensor): boolean {
  return t.batch?.some((b) => b !== 0) === true;
}

/** Throws when `t` depends on the batch size (arithmetic that would not stay exact for every n). */
export function requireStatic(t: ConstTensor, what: string): void {
  if (dependsOnBatch(t))
    throw new Error(`${what} on a value that depends on the batch size is not supported`);
}

/** Index into `shape`-tensor of the element at `coords` of a broadcast result of rank coords.length. */
function broadcastIndex(
  coords: readonly number[],
  shape: readonly number[],
  strides: readonly number[],
): number {
  const offset = coords.length - shape.length;
  let index = 0;
  for (let i = 0; i < shape.length; i++) index += (shape[i] === 1 ? 0 : coords[offset + i]) * strides[i];
  return index;
}

function forEachCoord(shape: readonly number[], visit: (coords: number[], flat: number) => void): void {
  const size = sizeOf(shape);
  const coords = new Array<number>(shape.length).fill(0);
  for (let flat = 0; flat < size; flat++) {
    visit(coords, flat);
    for (let axis = shape.length - 1; axis >= 0; axis--) {
      if (++coords[axis] < shape[axis]) break;
      coords[axis] = 0;
    }
  }
}

/** A tensor of `shape` whose element k is `t`'s element `source[k]` (batch coefficients carried). */
function pick(t: ConstTensor, shape: number[], source: ArrayLike<number>): ConstTensor {
  const values = allocate(t.type, source.length);
  for (let k = 0; k < source.length; k++) values[k] = t.values[source[k]];
  const out: ConstTensor = { type: t.type, shape, values };
  if (dependsOnBatch(t)) {
    const batch = new Float64Array(source.length);
    for (let k = 0; k < source.length; k++) batch[k] = t.batch![source[k]];
    out.batch = batch;
  }
  return out;
}

export type BinaryOp =
  | 'Add'
  | 'Sub'
  | 'Mul'
  | 'Div'
  | 'Pow'
  | 'Mod'
  | 'Max'
  | 'Min'
  | 'Equal'
  | 'Less'
  | 'Greater'
  | 'LessOrEqual'
  | 'GreaterOrEqual'
  | 'And'
  | 'Or'
  | 'Xor';

const COMPARISONS = new Set<BinaryOp>(['Equal', 'Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual']);
const LOGICAL = new Set<BinaryOp>(['And', 'Or', 'Xor']);

function scalarOp(op: BinaryOp, x: number, y: number, integer: boolean, fmod: boolean): number {
  switch (op) {
    case 'Add':
      return x + y;
    case 'Sub':
      return x - y;
    case 'Mul':
      return x * y;
    case 'Div':
      return integer ? Math.trunc(x / y) : x / y;
    case 'Pow':
      return x ** y;
    case 'Mod': {
      if (fmod || !integer) return x % y;
      // Integer Mod takes the divisor's sign (Python's %).
      const r = x % y;
      return r !== 0 && r < 0 !== y < 0 ? r + y : r;
    }
    case 'Max':
      return Math.max(x, y);
    case 'Min':
      return Math.min(x, y);
    case 'Equal':
      return x === y ? 1 : 0;
    case 'Less':
      return x < y ? 1 : 0;
    case 'Greater':
      return x > y ? 1 : 0;
    case 'LessOrEqual':
      return x <= y ? 1 : 0;
    case 'GreaterOrEqual':
      return x >= y ? 1 : 0;
    case 'And':
      return x !== 0 && y !== 0 ? 1 : 0;
    case 'Or':
      return x !== 0 || y !== 0 ? 1 : 0;
    case 'Xor':
      return (x !== 0) !== (y !== 0) ? 1 : 0;
  }
}

/**
 * One element a + b n of a binary op on elements (a1 + b1 n) and (a2 + b2 n), exact for every
 * batch size n >= 1, or an error.
 */
function batchOp(
  op: BinaryOp,
  a1: number,
  b1: number,
  a2: number,
  b2: number,
  integer: boolean,
): [number, number] {
  switch (op) {
    case 'Add':
      return [a1 + a2, b1 + b2];
    case 'Sub':
      return [a1 - a2, b1 - b2];
    case 'Mul':
      if (b1 !== 0 && b2 !== 0) break;
      return [a1 * a2, b1 * a2 + b2 * a1];
    case 'Div':
      if (b2 === 0 && a2 !== 0) {
        if (!integer || (a1 % a2 === 0 && b1 % a2 === 0)) return [a1 / a2, b1 / a2];
      } else if (a1 === 0 && a2 === 0 && b2 !== 0 && (!integer || b1 % b2 === 0)) {
        return [b1 / b2, 0];
      }
      break;
    case 'Equal': {
      if (b1 === b2) return [a1 === a2 ? 1 : 0, 0];
      // a1 + b1 n = a2 + b2 n for n = (a2 - a1) / (b1 - b2): never, unless that is a batch size.
      const n = (a2 - a1) / (b1 - b2);
      if (!(Number.isInteger(n) && n >= 1)) return [0, 0];
      break;
    }
    default:
      break;
  }
  throw new Error(`${op} on a value that depends on the batch size is not supported`);
}

/** Numpy-broadcast arithmetic, comparisons and logic; integer division truncates, as ONNX's does. */
export function binaryConstant(op: BinaryOp, a: ConstTensor, b: ConstTensor, fmod = false): ConstTensor {
  const shape = broadcastDims(a.shape, b.shape);
  const integer = a.type !== 'float' && b.type !== 'float';
  const type: ConstTensor['type'] =
    COMPARISONS.has(op) || LOGICAL.has(op) ? 'bool' : integer ? 'int' : 'float';
  const out = allocate(type, sizeOf(shape));
  const sa = stridesOf(a.shape);
  const sb = stridesOf(b.shape);
  const batched = dependsOnBatch(a) || dependsOnBatch(b);
  const batch = batched ? new Float64Array(out.length) : undefined;
  forEachCoord(shape, (coords, flat) => {
    const ia = broadcastIndex(coords, a.shape, sa);
    const ib = broadcastIndex(coords, b.shape, sb);
    const ba = a.batch?.[ia] ?? 0;
    const bb = b.batch?.[ib] ?? 0;
    if (batch && (ba !== 0 || bb !== 0)) {
      [out[flat], batch[flat]] = batchOp(op, a.values[ia], ba, b.values[ib], bb, integer);
    } else {
      out[flat] = scalarOp(op, a.values[ia], b.values[ib], integer, fmod);
    }
  });
  return batch ? { type, shape, values: out, batch } : { type, shape, values: out };
}

/** An elementwise function of one constant (Not, Neg, Sqrt, Exp, ...); its input must not depend on the batch. */
export function unaryConstant(t: ConstTensor, fn: (x: number) => number, type = t.type): ConstTensor {
  requireStatic(t, 'an elementwise function');
  const out = allocate(type, t.values.length);
  for (let i = 0; i < out.length; i++) out[i] = fn(t.values[i]);
  return { type, shape: [...t.shape], values: out };
}

/** Where(condition, x, y), numpy-broadcast; the condition must not depend on the batch. */
export function whereConstant(condition: ConstTensor, x: ConstTensor, y: ConstTensor): ConstTensor {
  requireStatic(condition, 'Where');
  const shape = broadcastDims(broadcastDims(condition.shape, x.shape), y.shape);
  const type = x.type === 'float' || y.type === 'float' ? 'float' : x.type;
  const out = allocate(type, sizeOf(shape));
  const batched = dependsOnBatch(x) || dependsOnBatch(y);
  const batch = batched ? new Float64Array(out.length) : undefined;
  const [sc, sx, sy] = [stridesOf(condition.shape), stridesOf(x.shape), stridesOf(y.shape)];
  forEachCoord(shape, (coords, flat) => {
    const fromX = condition.values[broadcastIndex(coords, condition.shape, sc)] !== 0;
    const source = fromX ? x : y;
    const index = broadcastIndex(coords, source.shape, fromX ? sx : sy);
    out[flat] = source.values[index];
    if (batch) batch[flat] = source.batch?.[index] ?? 0;
  });
  return batch ? { type, shape, values: out, batch } : { type, shape, values: out };
}

/** `t` repeated along its size-1 axes to `shape` (numpy broadcast_to). */
export function broadcastConstant(t: ConstTensor, shape: number[]): ConstTensor {
  const strides = stridesOf(t.shape);
  const source = new Float64Array(sizeOf(shape));
  forEachCoord(shape, (coords, flat) => {
    source[flat] = broadcastIndex(coords, t.shape, strides);
  });
  return pick(t, shape, source);
}

export function transposeConstant(t: ConstTensor, perm: readonly number[]): ConstTensor {
  const shape = perm.map((p) => t.shape[p]);
  if (perm.every((p, i) => p === i)) return { ...t, shape };
  if (t.shape.length === 2 && !dependsOnBatch(t)) {
    // The weights of dense layers: a blocked 2-D transpose, fast for large matrices.
    const [rows, columns] = t.shape;
    const out = allocate(t.type, t.values.length);
    const block = 64;
    for (let r0 = 0; r0 < rows; r0 += block) {
      for (let c0 = 0; c0 < columns; c0 += block) {
        const r1 = Math.min(rows, r0 + block);
        const c1 = Math.min(columns, c0 + block);
        for (let r = r0; r < r1; r++)
          for (let c = c0; c < c1; c++) out[c * rows + r] = t.values[r * columns + c];
      }
    }
    return { type: t.type, shape, values: out };
  }
  const strides = stridesOf(t.shape);
  const source = new Float64Array(t.values.length);
  forEachCoord(shape, (coords, flat) => {
    let index = 0;
    for (let i = 0; i < perm.length; i++) index += coords[i] * strides[perm[i]];
    source[flat] = index;
  });
  return pick(t, shape, source);
}

export function normalizeAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!(Number.isInteger(a) && a >= 0 && a < Math.max(rank, 1))) {
    throw new Error(`axis ${axis} is out of range for rank ${rank}`);
  }
  return a;
}

export function concatConstants(parts: ConstTensor[], axis: number): ConstTensor {
  const rank = parts[0].shape.length;
  const a = normalizeAxis(axis, rank);
  for (const part of parts) {
    if (part.shape.length !== rank || part.shape.some((d, i) => i !== a && d !== parts[0].shape[i])) {
      throw new Error(`cannot concatenate [${part.shape}] with [${parts[0].shape}] on axis ${axis}`);
    }
  }
  const shape = [...parts[0].shape];
  shape[a] = parts.reduce((sum, p) => sum + p.shape[a], 0);
  const outer = sizeOf(shape.slice(0, a));
  const type = parts.some((p) => p.type === 'float') ? 'float' : parts[0].type;
  const out = allocate(type, sizeOf(shape));
  const batched = parts.some(dependsOnBatch);
  const batch = batched ? new Float64Array(out.length) : undefined;
  let offset = 0;
  for (let o = 0; o < outer; o++) {
    for (const part of parts) {
      const chunk = sizeOf(part.shape.slice(a));
      out.set(part.values.subarray(o * chunk, (o + 1) * chunk), offset);
      if (batch && part.batch) batch.set(part.batch.subarray(o * chunk, (o + 1) * chunk), offset);
      offset += chunk;
    }
  }
  return batch ? { type, shape, values: out, batch } : { type, shape, values: out };
}

/** Indices along an axis of size `n`, negative ones counted from the end, checked. */
export function checkedIndices(indices: ConstTensor, n: number): number[] {
  requireStatic(indices, 'indexing');
  return Array.from(indices.values, (raw) => {
    const index = raw < 0 ? raw + n : raw;
    if (!(Number.isInteger(index) && index >= 0 && index < n))
      throw new Error(`index ${raw} is out of range [0, ${n})`);
    return index;
  });
}

export function gatherConstant(data: ConstTensor, indices: ConstTensor, axis: number): ConstTensor {
  const a = normalizeAxis(axis, data.shape.length);
  const n = data.shape[a];
  const outer = sizeOf(data.shape.slice(0, a));
  const inner = sizeOf(data.shape.slice(a + 1));
  const shape = [...data.shape.slice(0, a), ...indices.shape, ...data.shape.slice(a + 1)];
  const picked = checkedIndices(indices, n);
  const source = new Float64Array(sizeOf(shape));
  let offset = 0;
  for (let o = 0; o < outer; o++) {
    for (const index of picked) {
      for (let i = 0; i < inner; i++) source[offset++] = (o * n + index) * inner + i;
    }
  }
  return pick(data, shape, source);
}

/** Start, size and step along each axis of an ONNX Slice, clamped as ONNX clamps them. */
export function sliceRanges(
  shape: readonly number[],
  starts: readonly number[],
  ends: readonly number[],
  axes: readonly number[],
  steps: readonly number[],
): { begin: number[]; size: number[]; step: number[] } {
  const rank = shape.length;
  const begin = new Array<number>(rank).fill(0);
  const step = new Array<number>(rank).fill(1);
  const size = [...shape];
  axes.forEach((rawAxis, i) => {
    const axis = normalizeAxis(rawAxis, rank);
    const dim = shape[axis];
    const s = steps[i] ?? 1;
    if (s === 0) throw new Error('Slice step 0');
    const clampIndex = (v: number, low: number, high: number) =>
      Math.min(Math.max(v < 0 ? v + dim : v, low), high);
    const start = s > 0 ? clampIndex(starts[i], 0, dim) : clampIndex(starts[i], 0, dim - 1);
    const end = s > 0 ? clampIndex(ends[i], 0, dim) : clampIndex(ends[i], -1, dim - 1);
    begin[axis] = start;
    step[axis] = s;
    size[axis] = Math.max(0, Math.ceil((end - start) / s));
  });
  return { begin, size, step };
}

/** ONNX Slice on a constant: per-axis start/end/step with clamping and negative steps. */
export function sliceConstant(
  data: ConstTensor,
  starts: readonly number[],
  ends: readonly number[],
  axes: readonly number[],
  steps: readonly number[],
): ConstTensor {
  const rank = data.shape.length;
  const { begin, size: shape, step } = sliceRanges(data.shape, starts, ends, axes, steps);
  const strides = stridesOf(data.shape);
  const source = new Float64Array(sizeOf(shape));
  forEachCoord(shape, (coords, flat) => {
    let index = 0;
    for (let i = 0; i < rank; i++) index += (begin[i] + coords[i] * step[i]) * strides[i];
    source[flat] = index;
  });
  return pick(data, shape, source);
}

/**
 * ONNX ScatterND on constants (the in-place slice assignments of a traced mask): a copy of `data`
 * with the slices `indices` address replaced by `updates`.
 */
export function scatterNdConstant(
  data: ConstTensor,
  indices: ConstTensor,
  updates: ConstTensor,
): ConstTensor {
  requireStatic(indices, 'ScatterND');
  requireStatic(updates, 'ScatterND');
  requireStatic(data, 'ScatterND');
  const q = indices.shape.length;
  const k = indices.shape[q - 1];
  if (!(k >= 1 && k <= data.shape.length))
    throw new Error(`ScatterND indices [${indices.shape}] do not fit [${data.shape}]`);
  const slice = sizeOf(data.shape.slice(k));
  const count = sizeOf(indices.shape.slice(0, -1));
  if (updates.values.length !== count * slice)
    throw new Error(`ScatterND updates [${updates.shape}] do not fit`);
  const strides = stridesOf(data.shape);
  const out = constant(
    data.type === 'float' || updates.type === 'float' ? 'float' : data.type,
    [...data.shape],
    data.values,
  );
  for (let u = 0; u < count; u++) {
    let offset = 0;
    for (let j = 0; j < k; j++) {
      const raw = indices.values[u * k + j];
      const index = raw < 0 ? raw + data.shape[j] : raw;
      if (!(Number.isInteger(index) && index >= 0 && index < data.shape[j]))
        throw new Error(`ScatterND index ${raw} is out of range [0, ${data.shape[j]})`);
      offset += index * strides[j];
    }
    out.values.set(updates.values.subarray(u * slice, (u + 1) * slice), offset);
  }
  return out;
}

/** A reduction of a constant over `axes` (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL2). */
export function reduceConstant(
  t: ConstTensor,
  axes: readonly number[],
  keepDims: boolean,
  fn: 'sum' | 'mean' | 'max' | 'min' | 'prod' | 'l2',
): ConstTensor {
  requireStatic(t, 'a reduction');
  const reduced = new Set(axes.map((a) => normalizeAxis(a, t.shape.length)));
  const kept = t.shape.map((d, i) => (reduced.has(i) ? 1 : d));
  const size = sizeOf(kept);
  const initial = fn === 'max' ? -Infinity : fn === 'min' ? Infinity : fn === 'prod' ? 1 : 0;
  const acc = new Float64Array(size).fill(initial);
  const keptStrides = stridesOf(kept);
  forEachCoord(t.shape, (coords, flat) => {
    let index = 0;
    for (let i = 0; i < coords.length; i++) if (!reduced.has(i)) index += coords[i] * keptStrides[i];
    const v = t.values[flat];
    if (fn === 'max') acc[index] = Math.max(acc[index], v);
    else if (fn === 'min') acc[index] = Math.min(acc[index], v);
    else if (fn === 'prod') acc[index] *= v;
    else if (fn === 'l2') acc[index] += v * v;
    else acc[index] += v;
  });
  const count = sizeOf(t.shape) / Math.max(1, size);
  const values = Array.from(acc, (v) => (fn === 'mean' ? v / count : fn === 'l2' ? Math.sqrt(v) : v));
  const shape = keepDims ? kept : t.shape.filter((_, i) => !reduced.has(i));
  return constant(t.type, shape, values);
}
