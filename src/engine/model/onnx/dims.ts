import type { ConstTensor } from './proto.js';

/**
 * Dimensions with the batch size in them. An ONNX classifier is exported with a dynamic batch n, and
 * transformers move it about: ViT's attention runs on [S, n, D] and [n * heads, S, hd], Swin's on
 * [n * windows, 49, C]. A dimension is a size (>= 0) or -k for k n (k >= 1); every shape the importer
 * plans has the batch in at most one dimension, and a tensor's elements per example are its sizes with
 * n = 1. At run time n is the input's first dimension.
 */
export type Dim = number;

export const isBatchDim = (d: Dim): boolean => d < 0;

export const resolveDim = (d: Dim, n: number): number => (d < 0 ? -d * n : d);

export const resolveShape = (shape: readonly Dim[], n: number): number[] =>
  shape.map((d) => resolveDim(d, n));

/** Elements per example (n = 1). */
export const perExample = (shape: readonly Dim[]): number => shape.reduce((a, d) => a * Math.abs(d), 1);

/** How many dimensions hold the batch (0 for a tensor that does not depend on the input). */
export const batchPower = (shape: readonly Dim[]): number => shape.filter(isBatchDim).length;

export const formatDim = (d: Dim): string => (d === -1 ? 'n' : d < 0 ? `${-d}n` : String(d));

export const formatShape = (shape: readonly Dim[]): string => `[${shape.map(formatDim).join(', ')}]`;

/** Numpy broadcasting of two shapes whose dimensions may hold the batch. */
export function broadcastDims(a: readonly Dim[], b: readonly Dim[]): Dim[] {
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`shapes ${formatShape(a)} and ${formatShape(b)} do not broadcast`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** A symbolic size: static product and power of n. */
interface Size {
  factor: number;
  power: number;
}

const sizeOfDims = (dims: readonly Dim[]): Size => ({ factor: perExample(dims), power: batchPower(dims) });

/**
 * The output shape of an ONNX Reshape of `input` to `target` (a folded constant whose elements may
 * depend on n): entries are sizes, k n, -1 (inferred) or 0 (the input's dimension, unless allowzero).
 * Throws when the result would hold the batch in more than one dimension, or in a fraction of one.
 */
export function reshapeDims(input: readonly Dim[], target: ConstTensor, allowZero: boolean): Dim[] {
  let infer = -1;
  const out = Array.from(target.values, (v, i): Dim => {
    const b = target.batch?.[i] ?? 0;
    if (b !== 0) {
      if (v !== 0 || !(Number.isInteger(b) && b > 0)) {
        throw new Error(`shape entry ${v} + ${b} n is not a multiple of the batch size n`);
      }
      return -b;
    }
    if (v === -1) {
      if (infer >= 0) throw new Error(`the target has more than one -1`);
      infer = i;
      return 1;
    }
    if (v === 0 && !allowZero) {
      if (i >= input.length) throw new Error(`entry ${i} copies a dimension the input does not have`);
      return input[i];
    }
    if (!(Number.isInteger(v) && v >= 0)) throw new Error(`shape entry ${v} is not a size`);
    return v;
  });
  const total = sizeOfDims(input);
  const known = sizeOfDims(out);
  if (infer >= 0) {
    const factor = total.factor / known.factor;
    const power = total.power - known.power;
    if (!Number.isInteger(factor) || power < 0 || power > 1) {
      throw new Error(`cannot reshape ${formatShape(input)} to [${Array.from(target.values)}]`);
    }
    out[infer] = power === 1 ? -factor : factor;
  } else if (known.factor !== total.factor || known.power !== total.power) {
    throw new Error(`cannot reshape ${formatShape(input)} to ${formatShape(out)}`);
  }
  if (batchPower(out) > 1) throw new Error(`the reshape to ${formatShape(out)} holds the batch twice`);
  return out;
}

/** -1 when a < b, 0 when equal, 1 when a > b, counting n as larger than any static factor. */
function compareSizes(a: Size, b: Size): number {
  if (a.power !== b.power) return a.power < b.power ? -1 : 1;
  return a.factor === b.factor ? 0 : a.factor < b.factor ? -1 : 1;
}

/**
 * The groups of a reshape: runs of input axes and output axes (size-1 axes left out) whose products
 * are equal. A reshape only reinterprets memory within each group.
 */
export function reshapeGroups(
  from: readonly Dim[],
  to: readonly Dim[],
): Array<{ from: number[]; to: number[] }> {
  const a = from.map((_, i) => i).filter((i) => from[i] !== 1);
  const b = to.map((_, i) => i).filter((i) => to[i] !== 1);
  const groups: Array<{ from: number[]; to: number[] }> = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const group = { from: [] as number[], to: [] as number[] };
    let left: Size = { factor: 1, power: 0 };
    let right: Size = { factor: 1, power: 0 };
    do {
      const order = compareSizes(left, right);
      if ((order <= 0 && i < a.length) || j >= b.length) {
        group.from.push(a[i]);
        left = sizeOfDims(group.from.map((k) => from[k]));
        i++;
      } else {
        group.to.push(b[j]);
        right = sizeOfDims(group.to.map((k) => to[k]));
        j++;
      }
    } while (compareSizes(left, right) !== 0 && (i < a.length || j < b.length));
    if (compareSizes(left, right) !== 0)
      throw new Error(`cannot reshape ${formatShape(from)} to ${formatShape(to)}`);
    groups.push(group);
  }
  return groups;
}
