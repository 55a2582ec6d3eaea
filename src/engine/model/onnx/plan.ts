import { sizeOf } from './constants.js';
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
 * The import plan: the ONNX graph turned into a list of tfjs steps on NHWC activations, with every
 * constant and shape computation folded, every check done and every weight decoded into typed
 * arrays. Building a classifier from a plan (runtime.ts) is then the only place tensors are made.
 *
 * Layout: ONNX activations are NCHW. Here each activation has a logical (ONNX) shape, with -1 for the
 * batch, and a physical layout: rank-4 activations live as NHWC (`nhwc`), a Flatten/view of one
 * as its NHWC-order rows (`flat-hwc`, whose consumer Gemm gets its weight rows permuted at load),
 * anything else as is (`plain`). Transposes are planned only where an op needs the logical order.
 */
export type Layout =
  | { kind: 'plain' }
  | { kind: 'nhwc' }
  | { kind: 'flat-hwc'; c: number; h: number; w: number };

export interface Activation {
  kind: 'activation';
  id: number;
  /** Logical ONNX shape; dimension 0 is the batch, written -1. */
  shape: number[];
  layout: Layout;
  /** The step that computes it (undefined for the graph input). */
  producer?: Step;
  /** The ONNX value name it was defined under (for fusion: how many nodes read it). */
  onnxName: string;
}

export interface Constant {
  kind: 'constant';
  tensor: ConstTensor;
}

export type Value = Activation | Constant;

type Pair = [number, number];
export type ExplicitPad = [Pair, Pair, Pair, Pair];
export type FusedActivation = 'linear' | 'relu';

/** One tfjs operation on physical (NHWC where rank 4) tensors; `weights` become tensors at build. */
export type StepOp =
  | {
      op: 'conv';
      depthwise: boolean;
      strides: Pair;
      pad: ExplicitPad | 'valid';
      dilations: Pair;
      activation: FusedActivation;
    }
  | { op: 'batchNorm'; epsilon: number }
  | { op: 'unary'; fn: 'relu' | 'relu6' | 'sigmoid' | 'tanh' }
  | { op: 'leakyRelu'; alpha: number }
  | { op: 'clip'; min: number; max: number }
  | { op: 'binary'; fn: 'add' | 'sub' | 'mul' | 'div'; constantFirst: boolean }
  | { op: 'pad'; paddings: Pair[]; value: number }
  | { op: 'pool'; kind: 'max' | 'avg'; size: Pair; strides: Pair; pad: ExplicitPad | 'valid' }
  | { op: 'globalAverage' }
  | { op: 'reshape'; shape: number[] }
  | { op: 'transpose'; perm: number[] }
  | { op: 'matMul'; activation: FusedActivation }
  | { op: 'concat'; axis: number; order: Array<{ from: 'input' | 'weight'; index: number }> }
  | { op: 'softmax' };

export type Step = StepOp & {
  inputs: Activation[];
  output: Activation;
  /** Constant operands, in the order the op reads them (conv: filter, bias?; batchNorm: mean, variance, offset, scale). */
  weights: ConstTensor[];
  /** The ONNX node it came from, for error messages and `ops used`. */
  node: string;
};

export interface OnnxLimits {
  /** Largest file accepted, in bytes (default 200 MB, as TF.js uploads). */
  maxBytes: number;
  /** Largest total of constant elements (default 50 M). */
  maxParameters: number;
  /** Largest constant or per-example activation, in elements (default 2^24). */
  maxTensorElements: number;
  /** Largest number of graph nodes (default 100,000). */
  maxNodes: number;
  /** Most FLOPs of one forward pass of one image (default 2e10, as TF.js models). */
  maxFlopsPerImage: number;
}

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
}

/** Attribute readers that name the node when a value has the wrong type. */
export class Attributes {
  constructor(
    private readonly node: OnnxNode,
    private readonly at: OnnxNodeRef,
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
    return decodeTensor(a.t, `node '${this.at.node}' attribute '${name}'`);
  }
}

export class Planner {
  readonly values = new Map<string, Value>();
  readonly steps: Step[] = [];
  readonly warnings: string[] = [];
  private nextId = 0;
  /** How many nodes (and graph outputs) read each value. */
  private readonly readers = new Map<string, number>();
  /** Memoised layout conversions: activation id -> target layout key -> converted activation. */
  private readonly conversions = new Map<number, Map<string, Activation>>();
  /** The model was exported with a fixed batch of 1: a leading 1 in a reshape means the batch. */
  readonly staticBatchOne: boolean;

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
  }

  readersOf(name: string): number {
    return this.readers.get(name) ?? 0;
  }

  /** A fresh activation (not yet produced by a step). */
  activation(shape: number[], layout: Layout, onnxName: string): Activation {
    const perExample = sizeOf(shape.slice(1));
    if (
      shape.slice(1).some((d) => !Number.isInteger(d) || d < 0) ||
      perExample > this.limits.maxTensorElements
    ) {
      throw new OnnxLimitError(
        'tensorElements',
        perExample,
        this.limits.maxTensorElements,
        `value '${onnxName}' [${shape.map((d) => (d < 0 ? 'n' : d))}] per example`,
      );
    }
    return { kind: 'activation', id: this.nextId++, shape, layout, onnxName };
  }

  /** Appends a step computing a new activation and returns it. */
  emit(
    op: StepOp,
    inputs: Activation[],
    weights: ConstTensor[],
    shape: number[],
    layout: Layout,
    onnxName: string,
    node: string,
  ): Activation {
    const output = this.activation(shape, layout, onnxName);
    const step = { ...op, inputs, output, weights, node } as Step;
    output.producer = step;
    this.steps.push(step);
    return output;
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

  activationInput(node: OnnxNode, index: number, at: OnnxNodeRef): Activation {
    const value = this.input(node, index);
    if (value === undefined)
      throw new OnnxFormatError(`node '${node.name}' lacks its input ${index}`, node.name);
    if (value.kind !== 'activation') {
      throw new OnnxUnsupportedError(
        `input ${index} is a constant where the importer expects the activation`,
        at,
        'input',
      );
    }
    return value;
  }

  /** The activation in `layout`, planning a transpose/reshape when it is held otherwise. */
  toLayout(value: Activation, layout: 'plain' | 'nhwc'): Activation {
    if (value.layout.kind === layout) return value;
    const cached = this.conversions.get(value.id)?.get(layout);
    if (cached) return cached;
    let converted: Activation;
    const name = `${value.onnxName}:${layout}`;
    if (layout === 'nhwc') {
      if (value.shape.length !== 4)
        throw new Error(`only rank-4 activations can be NHWC, got [${value.shape}]`);
      converted = this.emit(
        { op: 'transpose', perm: [0, 2, 3, 1] },
        [this.toLayout(value, 'plain')],
        [],
        value.shape,
        { kind: 'nhwc' },
        name,
        name,
      );
    } else if (value.layout.kind === 'nhwc') {
      converted = this.emit(
        { op: 'transpose', perm: [0, 3, 1, 2] },
        [value],
        [],
        value.shape,
        { kind: 'plain' },
        name,
        name,
      );
    } else {
      const { c, h, w } = value.layout as Extract<Layout, { kind: 'flat-hwc' }>;
      const image = this.emit(
        { op: 'reshape', shape: [-1, h, w, c] },
        [value],
        [],
        [-1, c, h, w],
        { kind: 'nhwc' },
        name,
        name,
      );
      const nchw = this.toLayout(image, 'plain');
      converted = this.emit(
        { op: 'reshape', shape: [-1, c * h * w] },
        [nchw],
        [],
        value.shape,
        { kind: 'plain' },
        name,
        name,
      );
    }
    const byLayout = this.conversions.get(value.id) ?? new Map<string, Activation>();
    byLayout.set(layout, converted);
    this.conversions.set(value.id, byLayout);
    return converted;
  }

  /** Whether a step's output may be changed in place by the one node that reads it. */
  soleReader(value: Activation): boolean {
    return (
      value.producer !== undefined &&
      this.readersOf(value.onnxName) === 1 &&
      !this.model.outputs.some((o) => o.name === value.onnxName)
    );
  }
}
