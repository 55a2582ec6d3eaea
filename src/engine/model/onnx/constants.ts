import type { ConstTensor } from './proto.js';

/**
 * Load-time arithmetic on constants (typed arrays, never tensors): the folding of the subgraphs that
 * only compute shapes and pads, and the re-layout of weights from NCHW to NHWC. Throws plain
 * `Error`s; the planner turns them into errors that name the node.
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

export function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`shapes [${a}] and [${b}] do not broadcast`);
    out.push(da === 1 ? db : da);
  }
  return out;
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

export type BinaryOp = 'Add' | 'Sub' | 'Mul' | 'Div';

/** Numpy-broadcast arithmetic; integer division truncates, as ONNX's does. */
export function binaryConstant(op: BinaryOp, a: ConstTensor, b: ConstTensor): ConstTensor {
  const shape = broadcastShape(a.shape, b.shape);
  const type = a.type === 'float' || b.type === 'float' ? 'float' : 'int';
  const out = allocate(type, sizeOf(shape));
  const sa = stridesOf(a.shape);
  const sb = stridesOf(b.shape);
  forEachCoord(shape, (coords, flat) => {
    const x = a.values[broadcastIndex(coords, a.shape, sa)];
    const y = b.values[broadcastIndex(coords, b.shape, sb)];
    let v: number;
    if (op === 'Add') v = x + y;
    else if (op === 'Sub') v = x - y;
    else if (op === 'Mul') v = x * y;
    else v = type === 'int' ? Math.trunc(x / y) : x / y;
    out[flat] = v;
  });
  return { type, shape, values: out };
}

/** `t` repeated along its size-1 axes to `shape` (numpy broadcast_to). */
export function broadcastConstant(t: ConstTensor, shape: number[]): ConstTensor {
  const out = allocate(t.type, sizeOf(shape));
  const strides = stridesOf(t.shape);
  forEachCoord(shape, (coords, flat) => {
    out[flat] = t.values[broadcastIndex(coords, t.shape, strides)];
  });
  return { type: t.type, shape, values: out };
}

export function transposeConstant(t: ConstTensor, perm: readonly number[]): ConstTensor {
  const shape = perm.map((p) => t.shape[p]);
  const strides = stridesOf(t.shape);
  const out = allocate(t.type, t.values.length);
  forEachCoord(shape, (coords, flat) => {
    let index = 0;
    for (let i = 0; i < perm.length; i++) index += coords[i] * strides[perm[i]];
    out[flat] = t.values[index];
  });
  return { type: t.type, shape, values: out };
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
  const type = parts[0].type;
  const out = allocate(type, sizeOf(shape));
  let offset = 0;
  for (let o = 0; o < outer; o++) {
    for (const part of parts) {
      const chunk = sizeOf(part.shape.slice(a));
      out.set(part.values.subarray(o * chunk, (o + 1) * chunk), offset);
      offset += chunk;
    }
  }
  return { type, shape, values: out };
}

export function gatherConstant(data: ConstTensor, indices: ConstTensor, axis: number): ConstTensor {
  const a = normalizeAxis(axis, data.shape.length);
  const n = data.shape[a];
  const outer = sizeOf(data.shape.slice(0, a));
  const inner = sizeOf(data.shape.slice(a + 1));
  const shape = [...data.shape.slice(0, a), ...indices.shape, ...data.shape.slice(a + 1)];
  const out = allocate(data.type, sizeOf(shape));
  let offset = 0;
  for (let o = 0; o < outer; o++) {
    for (const raw of indices.values) {
      const index = raw < 0 ? raw + n : raw;
      if (!(Number.isInteger(index) && index >= 0 && index < n))
        throw new Error(`index ${raw} is out of range [0, ${n})`);
      out.set(data.values.subarray((o * n + index) * inner, (o * n + index + 1) * inner), offset);
      offset += inner;
    }
  }
  return { type: data.type, shape, values: out };
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
  const begin = new Array<number>(rank).fill(0);
  const step = new Array<number>(rank).fill(1);
  const shape = [...data.shape];
  axes.forEach((rawAxis, i) => {
    const axis = normalizeAxis(rawAxis, rank);
    const dim = data.shape[axis];
    const s = steps[i] ?? 1;
    if (s === 0) throw new Error('Slice step 0');
    const clampIndex = (v: number, low: number, high: number) =>
      Math.min(Math.max(v < 0 ? v + dim : v, low), high);
    const start = s > 0 ? clampIndex(starts[i], 0, dim) : clampIndex(starts[i], 0, dim - 1);
    const end = s > 0 ? clampIndex(ends[i], 0, dim) : clampIndex(ends[i], -1, dim - 1);
    begin[axis] = start;
    step[axis] = s;
    shape[axis] = Math.max(0, Math.ceil((end - start) / s));
  });
  const strides = stridesOf(data.shape);
  const out = allocate(data.type, sizeOf(shape));
  forEachCoord(shape, (coords, flat) => {
    let index = 0;
    for (let i = 0; i < rank; i++) index += (begin[i] + coords[i] * step[i]) * strides[i];
    out[flat] = data.values[index];
  });
  return { type: data.type, shape, values: out };
}

/** The shape of an ONNX Reshape: 0 copies the input's dimension (unless allowzero), -1 is inferred. */
export function reshapeTarget(
  input: readonly number[],
  target: readonly number[],
  allowZero: boolean,
): number[] {
  const out = target.map((d, i) => (d === 0 && !allowZero ? input[i] : d));
  const known = out.filter((d) => d !== -1);
  if (out.length - known.length > 1) throw new Error(`Reshape target [${target}] has more than one -1`);
  const total = sizeOf(input);
  if (known.length < out.length) {
    const rest = sizeOf(known);
    if (rest === 0 || total % rest !== 0) throw new Error(`cannot reshape [${input}] to [${target}]`);
    out[out.indexOf(-1)] = total / rest;
  }
  if (sizeOf(out) !== total || out.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new Error(`cannot reshape [${input}] to [${target}]`);
  }
  return out;
}
