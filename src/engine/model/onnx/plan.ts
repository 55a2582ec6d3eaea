import { constant } from './constants.js';
import { type Dim, formatShape, perExample, reshapeGroups } from './dims.js';
import { OnnxFormatError, OnnxLimitError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import {
  type AttributeProto,
  type ConstTensor,
  decodeTensor,
  type OnnxModel,
  type OnnxNode,
  toNumber,
} from './proto.js';

/**
 * The import plan: the ONNX graph turned into a list of tfjs steps, with every shape computation
 * folded, every check done and every weight decoded into typed arrays. Building a classifier from a
 * plan (runtime.ts) is then the only place tensors are made.
 *
 * Shapes: each activation has a logical (ONNX) shape whose dimensions may hold the batch size n
 * (dims.ts). Layout: the tensor that holds an activation (physical) is its logical tensor transposed
 * by `perm`: rank-4 images from convolutions live as NHWC (perm [0, 2, 3, 1]), everything else as
 * its producer left it. An ONNX Transpose therefore only changes the perm (no data moves), and data
 * moves only where an op needs particular axes last (a matrix product, a normalisation, a
 * convolution's channels). A Flatten of an NHWC image keeps its NHWC-order rows (`flat-hwc`), whose
 * consumer Gemm gets its weight rows permuted at load.
 */
export type Layout = { kind: 'perm'; perm: number[] } | { kind: 'flat-hwc'; c: number; h: number; w: number };

export const identityPerm = (rank: number): number[] => Array.from({ length: rank }, (_, i) => i);
export const NHWC_PERM: readonly number[] = [0, 2, 3, 1];

export const plain = (rank: number): Layout => ({ kind: 'perm', perm: identityPerm(rank) });
export const nhwc = (): Layout => ({ kind: 'perm', perm: [...NHWC_PERM] });

export const samePerm = (a: readonly number[], b: readonly number[]): boolean =>
  a.length === b.length && a.every((v, i) => v === b[i]);

export const invertPerm = (perm: readonly number[]): number[] => {
  const inverse = new Array<number>(perm.length);
  perm.forEach((p, i) => {
    inverse[p] = i;
  });
  return inverse;
};

export interface Activation {
  kind: 'activation';
  /** The tensor holding it at run time (views share their source's). */
  id: number;
  /** Logical ONNX shape (dims.ts: negative dimensions hold the batch). */
  shape: Dim[];
  layout: Layout;
  /** The step that computes its tensor (undefined for the graph input). */
  producer?: Step;
  /** The ONNX value name it was defined under (for fusion: how many nodes read it). */
  onnxName: string;
  /** Computed from constants only: evaluated once when the model is built, never per call. */
  isStatic: boolean;
  /** For a view (a Transpose, which moves no data): the activation whose tensor it shares. */
  source?: Activation;
}

export interface Constant {
  kind: 'constant';
  tensor: ConstTensor;
}

export type Value = Activation | Constant;

type Pair = [number, number];
export type ExplicitPad = [Pair, Pair, Pair, Pair];
export type FusedActivation = 'linear' | 'relu';

export type UnaryFn =
  | 'relu'
  | 'relu6'
  | 'sigmoid'
  | 'tanh'
  | 'erf'
  | 'gelu'
  | 'swish'
  | 'hardswish'
  | 'hardsigmoid'
  | 'exp'
  | 'log'
  | 'sqrt'
  | 'neg'
  | 'abs'
  | 'reciprocal'
  | 'softplus'
  | 'square'
  | 'elu'
  | 'sin'
  | 'cos';

export type BinaryFn = 'add' | 'sub' | 'mul' | 'div' | 'pow' | 'max' | 'min';
export type ReduceFn = 'mean' | 'sum' | 'max' | 'min' | 'prod' | 'l2';

/**
 * One tfjs operation on physical tensors; `weights` become tensors at build. Shapes and axes are
 * physical; shapes may hold the batch (resolved with n at run time).
 */
export type StepOp =
  | { op: 'constant' }
  | {
      op: 'conv';
      /** 1, the input channels with one input channel per group (depthwise), or any other divisor. */
      groups: number;
      depthwise: boolean;
      strides: Pair;
      pad: ExplicitPad | 'valid';
      dilations: Pair;
      activation: FusedActivation;
    }
  | { op: 'batchNorm'; epsilon: number }
  | { op: 'layerNorm'; epsilon: number; size: number }
  | { op: 'unary'; fn: UnaryFn }
  | { op: 'leakyRelu'; alpha: number }
  | { op: 'clip'; min: number; max: number }
  | { op: 'binary'; fn: BinaryFn; constantFirst: boolean }
  | { op: 'pad'; paddings: Pair[]; value: number }
  | { op: 'pool'; kind: 'max' | 'avg'; size: Pair; strides: Pair; pad: ExplicitPad | 'valid' }
  | { op: 'globalAverage' }
  | { op: 'reduce'; fn: ReduceFn; axes: number[]; keepDims: boolean }
  | { op: 'reshape'; shape: Dim[] }
  | { op: 'transpose'; perm: number[] }
  | {
      op: 'matMul';
      activation: FusedActivation;
      transposeA: boolean;
      transposeB: boolean;
      /** The contracted dimension (for FLOPs). */
      inner: number;
    }
  | {
      op: 'concat';
      axis: number;
      order: Array<{ from: 'input' | 'weight'; index: number }>;
      /** Physical shape each constant part is broadcast to (it repeats along the batch). */
      weightShapes: Dim[][];
    }
  | { op: 'softmax' }
  | { op: 'slice'; begin: number[]; size: Dim[]; gathers: Array<{ axis: number; indices: number[] }> }
  | { op: 'gather'; axis: number; indices: number[] }
  | { op: 'broadcast'; shape: Dim[] };

export type Step = StepOp & {
  inputs: Activation[];
  output: Activation;
  /** Constant operands, in the order the op reads them (conv: filter, bias?; batchNorm: mean, variance, offset, scale). */
  weights: ConstTensor[];
  /** The ONNX node it came from, for error messages and `ops used`. */
  node: string;
};

export interface OnnxLimits {
  /** Largest model in bytes, the file and its external data together. */
  maxBytes: number;
  /** Largest total of constant elements. */
  maxParameters: number;
  /** Largest constant or per-example activation, in elements. */
  maxTensorElements: number;
  /** Largest number of graph nodes. */
  maxNodes: number;
  /** Most FLOPs of one forward pass of one image. */
  maxFlopsPerImage: number;
}

/** The limits of an uploaded model (the service's defaults, src/jobs/models/limits.ts sets others). */
export const DEFAULT_ONNX_LIMITS: OnnxLimits = {
  maxBytes: 200_000_000,
  maxParameters: 50_000_000,
  maxTensorElements: 1 << 24,
  maxNodes: 100_000,
  maxFlopsPerImage: 20e9,
};

export interface OnnxPlan {
  input: Activation;
  output: Activation;
  steps: Step[];
  /** [H, W, C] of one NHWC image, from the model's NCHW input [n, C, H, W]. */
  inputShape: [number, number, number];
  numClasses: number;
  inputName: string;
  outputName: string;
  /** ONNX op type -> number of nodes, for `models inspect`. */
  opsUsed: Record<string, number>;
  parameterCount: number;
  /** FLOPs of one image's forward pass (see cost.ts). */
  flopsPerImage: number;
  opset: number;
  irVersion: number;
  producer: string;
  /** Things the user should know (e.g. the model ends in Softmax). */
  warnings: string[];
}

/** One ONNX node's translation: reads its inputs from the planner and defines its outputs. */
export type OpHandler = (planner: Planner, node: OnnxNode, at: OnnxNodeRef) => void;

export interface OpSpec {
  handler: OpHandler;
  /** Attributes the handler understands; any other attribute on the node is refused. */
  attributes: readonly string[];
  /** Only folded when every input is constant (shape and pad subgraphs), never run. */
  foldOnly?: boolean;
  /**
   * Computes the outputs at load when every input is constant (the others then run on the constants
   * as activations computed once, when the model is built).
   */
  fold?: (
    planner: Planner,
    node: OnnxNode,
    at: OnnxNodeRef,
    inputs: Array<ConstTensor | undefined>,
  ) => ConstTensor[];
}

/** Attribute readers that name the node when a value has the wrong type. */
export class Attributes {
  constructor(
    private readonly node: OnnxNode,
    private readonly at: OnnxNodeRef,
    private readonly model?: OnnxModel,
  ) {}

  has(name: string): boolean {
    return this.node.attributes.has(name);
  }

  private get(name: string): AttributeProto | undefined {
    return this.node.attributes.get(name);
  }

  int(name: string, fallback: number): number {
    const a = this.get(name);
    return a ? toNumber(a.i) : fallback;
  }

  float(name: string, fallback: number): number {
    const a = this.get(name);
    return a ? (a.f ?? 0) : fallback;
  }

  ints(name: string): number[] | undefined {
    const a = this.get(name);
    return a ? (a.ints ?? []).map(toNumber) : undefined;
  }

  string(name: string, fallback: string): string {
    const a = this.get(name);
    return a?.s ? new TextDecoder().decode(a.s) : fallback;
  }

  tensor(name: string): ConstTensor | undefined {
    const a = this.get(name);
    if (!a) return undefined;
    if (!a.t) throw new OnnxUnsupportedError(`is not a tensor`, this.at, name);
    return decodeTensor(a.t, `node '${this.at.node}' attribute '${name}'`, this.model?.external);
  }
}

/** The physical shape of an activation (its logical shape in its layout's order). */
export function physicalShape(value: Activation): Dim[] {
  const { layout, shape } = value;
  if (layout.kind === 'flat-hwc') return [shape[0], layout.h * layout.w * layout.c];
  return layout.perm.map((axis) => shape[axis]);
}

/** The perm of an activation held in a perm layout (flat-hwc: undefined). */
export function permOf(value: Activation): number[] | undefined {
  return value.layout.kind === 'perm' ? value.layout.perm : undefined;
}

/** The physical position of logical `axis`. */
export function physicalAxis(value: Activation, axis: number): number {
  const perm = permOf(value);
  if (!perm) throw new Error(`a flat-hwc activation has no physical axis ${axis}`);
  return perm.indexOf(axis);
}

/** Whether two perms order the axes of size > 1 alike (then one tensor is the other reshaped). */
function sameOrderOfSizes(shape: readonly Dim[], a: readonly number[], b: readonly number[]): boolean {
  const big = (perm: readonly number[]) => perm.filter((axis) => shape[axis] !== 1);
  return samePerm(big(a), big(b));
}

export class Planner {
  readonly values = new Map<string, Value>();
  readonly steps: Step[] = [];
  readonly warnings: string[] = [];
  private nextId = 0;
  /** How many nodes (and graph outputs) read each value. */
  private readonly readers = new Map<string, number>();
  /** Memoised layout conversions: activation id + shape -> target perm key -> converted activation. */
  private readonly conversions = new Map<string, Map<string, Activation>>();
  /** The model was exported with a fixed batch of 1: a leading 1 in a reshape means the batch. */
  readonly staticBatchOne: boolean;
  private readonly outputNames: Set<string>;

  constructor(
    readonly model: OnnxModel,
    readonly limits: OnnxLimits,
  ) {
    for (const node of model.nodes) {
      for (const name of node.inputs) if (name) this.readers.set(name, (this.readers.get(name) ?? 0) + 1);
    }
    for (const output of model.outputs)
      this.readers.set(output.name, (this.readers.get(output.name) ?? 0) + 1);
    this.staticBatchOne = model.inputs[0]?.dims?.[0] === 1;
    this.outputNames = new Set(model.outputs.map((o) => o.name));
  }

  readersOf(name: string): number {
    return this.readers.get(name) ?? 0;
  }

  isGraphOutput(name: string): boolean {
    return this.outputNames.has(name);
  }

  /** A fresh activation (not yet produced by a step). */
  activation(shape: Dim[], layout: Layout, onnxName: string, isStatic = false): Activation {
    const elements = perExample(shape);
    if (shape.some((d) => !Number.isInteger(d)) || elements > this.limits.maxTensorElements) {
      throw new OnnxLimitError(
        'tensorElements',
        elements,
        this.limits.maxTensorElements,
        `value '${onnxName}' ${formatShape(shape)} per example`,
      );
    }
    return { kind: 'activation', id: this.nextId++, shape, layout, onnxName, isStatic };
  }

  /** Appends a step computing a new activation and returns it. */
  emit(
    op: StepOp,
    inputs: Activation[],
    weights: ConstTensor[],
    shape: Dim[],
    layout: Layout,
    onnxName: string,
    node: string,
  ): Activation {
    const isStatic = inputs.every((input) => input.isStatic);
    const output = this.activation(shape, layout, onnxName, isStatic);
    const step = { ...op, inputs, output, weights, node } as Step;
    output.producer = step;
    this.steps.push(step);
    return output;
  }

  /** The same tensor under another logical shape and perm (a Transpose): no step, no data moved. */
  view(value: Activation, shape: Dim[], layout: Layout, onnxName: string): Activation {
    return { ...value, shape, layout, onnxName, source: value };
  }

  define(name: string, value: Value): void {
    if (this.values.has(name)) throw new OnnxFormatError(`value '${name}' is defined twice`);
    if (value.kind === 'constant' && value.tensor.values.length > this.limits.maxTensorElements) {
      throw new OnnxLimitError(
        'tensorElements',
        value.tensor.values.length,
        this.limits.maxTensorElements,
        `constant '${name}'`,
      );
    }
    this.values.set(name, value);
  }

  /** Makes `node`'s first output the same value as `value` (pass-throughs: Identity, Dropout, ...). */
  alias(node: OnnxNode, value: Value): void {
    this.define(node.outputs[0], value);
  }

  /** Input `index` of `node`, or undefined when omitted ('' or past the end). */
  input(node: OnnxNode, index: number): Value | undefined {
    const name = node.inputs[index];
    if (!name) return undefined;
    const value = this.values.get(name);
    if (!value) {
      throw new OnnxFormatError(
        `node '${node.name}' reads '${name}', which no earlier node, initializer or input defines (the graph must be topologically sorted)`,
        node.name,
      );
    }
    return value;
  }

  constantInput(node: OnnxNode, index: number, at: OnnxNodeRef, what: string): ConstTensor | undefined {
    const value = this.input(node, index);
    if (value === undefined) return undefined;
    if (value.kind !== 'constant') {
      throw new OnnxUnsupportedError(
        `input ${index} (${what}) must be a constant (an initializer or folded), it is computed at run time`,
        at,
        what,
      );
    }
    return value.tensor;
  }

  /**
   * Input `index` as an activation; a constant becomes an activation computed once, when the model
   * is built (e.g. a Gemm on a constant table).
   */
  activationInput(node: OnnxNode, index: number, at: OnnxNodeRef): Activation {
    const value = this.input(node, index);
    if (value === undefined)
      throw new OnnxFormatError(`node '${node.name}' lacks its input ${index}`, node.name);
    if (value.kind === 'activation') return value;
    return this.lift(value.tensor, `${node.inputs[index]}:constant`, at.node);
  }

  /** A constant as an activation computed once at build. */
  lift(tensor: ConstTensor, onnxName: string, node: string): Activation {
    if (tensor.batch?.some((b) => b !== 0)) {
      throw new OnnxUnsupportedError(`a value computed from the batch size is used as data`);
    }
    return this.emit(
      { op: 'constant' },
      [],
      [constant('float', tensor.shape, tensor.values)],
      [...tensor.shape],
      plain(tensor.shape.length),
      onnxName,
      node,
    );
  }

  /** The activation held in `perm` (physical = logical transposed by perm), converting if needed. */
  toPerm(value: Activation, perm: readonly number[]): Activation {
    if (value.layout.kind === 'perm' && samePerm(value.layout.perm, perm)) return value;
    const key = `${value.id}:${value.shape}:${JSON.stringify(value.layout)}`;
    const target = perm.join(',');
    const cached = this.conversions.get(key)?.get(target);
    if (cached) return cached;
    if (perm.length !== value.shape.length) {
      throw new Error(`perm [${perm}] does not fit ${formatShape(value.shape)}`);
    }
    const name = `${value.onnxName}:${target}`;
    let converted: Activation;
    if (value.layout.kind === 'flat-hwc') {
      const { c, h, w } = value.layout;
      const image = this.emit(
        { op: 'reshape', shape: [value.shape[0], h, w, c] },
        [value],
        [],
        [value.shape[0], c, h, w],
        nhwc(),
        name,
        name,
      );
      const nchw = this.toPerm(image, identityPerm(4));
      const flat = this.emit(
        { op: 'reshape', shape: [value.shape[0], c * h * w] },
        [nchw],
        [],
        value.shape,
        plain(2),
        name,
        name,
      );
      converted = this.toPerm(flat, perm);
    } else {
      const from = value.layout.perm;
      const layout: Layout = { kind: 'perm', perm: [...perm] };
      const shape = perm.map((axis) => value.shape[axis]);
      if (sameOrderOfSizes(value.shape, from, perm)) {
        // Only size-1 axes move: a reshape.
        converted = this.emit({ op: 'reshape', shape }, [value], [], value.shape, layout, name, name);
      } else {
        // physical_new[i] = logical[perm[i]] = physical_old[from^-1[perm[i]]].
        const inverse = invertPerm(from);
        converted = this.emit(
          { op: 'transpose', perm: perm.map((axis) => inverse[axis]) },
          [value],
          [],
          value.shape,
          layout,
          name,
          name,
        );
      }
    }
    const byTarget = this.conversions.get(key) ?? new Map<string, Activation>();
    byTarget.set(target, converted);
    this.conversions.set(key, byTarget);
    return converted;
  }

  /** The activation as plain (logical order) or NHWC (rank 4). */
  toLayout(value: Activation, layout: 'plain' | 'nhwc'): Activation {
    return this.toPerm(value, layout === 'nhwc' ? NHWC_PERM : identityPerm(value.shape.length));
  }

  /**
   * `value` with the logical axes `last` (in this order) physically last and the other axes in their
   * present physical order: what normalisations, softmax and matrix products need.
   */
  withAxesLast(value: Activation, last: readonly number[]): Activation {
    const perm = permOf(value) ?? identityPerm(value.shape.length);
    const rest = perm.filter((axis) => !last.includes(axis));
    return this.toPerm(value, [...rest, ...last]);
  }

  /**
   * Reshapes `value` to the logical shape `target`. No data moves when every group of merged or
   * split axes lies physically together and in order; otherwise one transpose puts them so, keeping
   * the groups in their physical order (a channel shuffle on NHWC is one transpose).
   */
  reshape(value: Activation, target: Dim[], onnxName: string, node: string): Activation {
    let groups: Array<{ from: number[]; to: number[] }>;
    try {
      groups = reshapeGroups(value.shape, target);
    } catch (error) {
      throw new OnnxFormatError(`node '${node}': ${(error as Error).message}`, node);
    }
    let x = value.layout.kind === 'flat-hwc' ? this.toPerm(value, identityPerm(value.shape.length)) : value;
    const perm = permOf(x)!;
    const position = (axis: number) => perm.indexOf(axis);
    const ordered = [...groups].sort((g, h) => position(g.from[0]) - position(h.from[0]));
    const wanted = [...ordered.flatMap((g) => g.from), ...perm.filter((axis) => x.shape[axis] === 1)];
    if (!sameOrderOfSizes(x.shape, perm, wanted)) x = this.toPerm(x, wanted);
    // Output physical order: the groups as they lie, each in logical order; each size-1 axis right
    // after its logical predecessor (so a plain reshape stays plain).
    const big = ordered.flatMap((g) => g.to);
    const outPerm: number[] = [];
    const ones = target.map((_, i) => i).filter((i) => target[i] === 1);
    for (const axis of big) outPerm.push(axis);
    for (const axis of ones) {
      const after = outPerm.indexOf(axis - 1);
      outPerm.splice(after + 1, 0, axis);
    }
    const layout: Layout = { kind: 'perm', perm: outPerm };
    const physical = outPerm.map((axis) => target[axis]);
    if (samePerm(physicalShape(x), physical)) {
      return this.view(x, target, layout, onnxName);
    }
    return this.emit({ op: 'reshape', shape: physical }, [x], [], target, layout, onnxName, node);
  }

  /**
   * Whether a step's output may be changed in place (a fused activation, a folded BatchNorm) by the
   * one node that reads it: read once, not a graph output, and the same for the value it views.
   */
  soleReader(value: Activation): boolean {
    if (value.producer === undefined || value.producer.output.id !== value.id) return false;
    if (this.readersOf(value.onnxName) !== 1 || this.isGraphOutput(value.onnxName)) return false;
    return value.source === undefined || this.soleReader(value.source);
  }
}
