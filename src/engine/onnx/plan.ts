import { sizeOf } from './constants.js';
import { OnnxFormatError, OnnxLimitError, type OnnxNodeRef, OnnxUnsupportedError } from './errors.js';
import {
  type AttributeProto,
  type ConstTensor,
  DataType,
  decodeTensor,
  type OnnxModel,
  type OnnxNode,
  tensorShape,
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
}

export const DEFAULT_ONNX_LIMITS: OnnxLimits = {
  maxBytes: 200_000_000,
  maxParameters: 50_000_000,
  maxTensorElements: 1 << 24,
  maxNodes: 100_000,
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

const FLOAT_DATA_TYPES = new Set<number>([DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16]);

/**
 * Checks every constant's size from its dims (before any payload is decoded) against the limits;
 * returns the parameter count: the elements of the float constants (weights, BatchNorm statistics).
 */
function checkParameters(model: OnnxModel, limits: OnnxLimits): number {
  let total = 0;
  let floats = 0;
  const tensors = [
    ...[...model.initializers].map(([name, tensor]) => ({ tensor, where: `initializer '${name}'` })),
    ...model.nodes.flatMap((node) =>
      [...node.attributes.values()].flatMap((a) =>
        a.t ? [{ tensor: a.t, where: `node '${node.name}'` }] : [],
      ),
    ),
  ];
  for (const { tensor, where } of tensors) {
    const { size } = tensorShape(tensor, where);
    if (size > limits.maxTensorElements) {
      throw new OnnxLimitError('tensorElements', size, limits.maxTensorElements, where);
    }
    total += size;
    if (FLOAT_DATA_TYPES.has(tensor.dataType ?? 0)) floats += size;
  }
  if (total > limits.maxParameters) {
    throw new OnnxLimitError('parameters', total, limits.maxParameters, 'the model');
  }
  return floats;
}

/** [H, W, C] from the single float NCHW input [batch, C, H, W]; refuses anything else. */
function checkInput(model: OnnxModel): [number, number, number] {
  if (model.inputs.length !== 1) {
    throw new OnnxUnsupportedError(
      `a classifier has exactly one input; the model has ${model.inputs.length} (${model.inputs.map((i) => `'${i.name}'`).join(', ')})`,
    );
  }
  const [input] = model.inputs;
  if (input.elemType !== DataType.FLOAT) {
    throw new OnnxUnsupportedError(
      `input '${input.name}' has element type ${DataType[input.elemType] ?? input.elemType}; a classifier takes float images`,
    );
  }
  const dims = input.dims;
  if (dims?.length !== 4) {
    throw new OnnxUnsupportedError(
      `input '${input.name}' must be rank 4 NCHW [n, C, H, W], got ${dims ? `rank ${dims.length}` : 'an unknown rank'}`,
    );
  }
  const [, c, h, w] = dims;
  for (const [axis, d] of [
    ['C', c],
    ['H', h],
    ['W', w],
  ] as const) {
    if (typeof d !== 'number' || d < 1) {
      throw new OnnxUnsupportedError(
        `input '${input.name}' dimension ${axis} is dynamic (${JSON.stringify(d)}); only the batch may be dynamic (export with dynamic_axes={'${input.name}': {0: 'batch'}})`,
      );
    }
  }
  if (model.outputs.length !== 1) {
    throw new OnnxUnsupportedError(
      `a classifier has exactly one output; the model has ${model.outputs.length}`,
    );
  }
  return [h as number, w as number, c as number];
}

function checkAllowList(model: OnnxModel, ops: Record<string, OpSpec>): Record<string, number> {
  const opsUsed: Record<string, number> = {};
  for (const node of model.nodes) {
    const at = { node: node.name, opType: node.opType, opset: model.opset };
    if (node.domain !== '' && node.domain !== 'ai.onnx') {
      throw new OnnxUnsupportedError(`operator domain '${node.domain}' is not supported`, at);
    }
    const spec = Object.hasOwn(ops, node.opType) ? ops[node.opType] : undefined;
    if (!spec)
      throw new OnnxUnsupportedError(`operator '${node.opType}' is not on the importer's allow-list`, at);
    for (const attribute of node.attributes.keys()) {
      if (!spec.attributes.includes(attribute)) {
        throw new OnnxUnsupportedError(`is not supported by the importer's ${node.opType}`, at, attribute);
      }
    }
    opsUsed[node.opType] = (opsUsed[node.opType] ?? 0) + 1;
  }
  return opsUsed;
}

/** Translates every node in order; the input (if any) is defined by the caller. */
function planNodes(planner: Planner, ops: Record<string, OpSpec>): void {
  const { model } = planner;
  for (const [name, tensor] of model.initializers) {
    if (!planner.values.has(name))
      planner.define(name, { kind: 'constant', tensor: decodeTensor(tensor, `initializer '${name}'`) });
  }
  for (const node of model.nodes) {
    const at = { node: node.name, opType: node.opType, opset: model.opset };
    const spec = ops[node.opType];
    if (spec.foldOnly) {
      const computed = node.inputs.findIndex(
        (name) => name && planner.values.get(name)?.kind === 'activation',
      );
      // Shape reads only the static shape of an activation: it folds too.
      if (computed >= 0 && node.opType !== 'Shape') {
        throw new OnnxUnsupportedError(
          `${node.opType} is only supported on constants and shapes (folded at load); input ${computed} is computed at run time`,
          at,
        );
      }
    }
    try {
      spec.handler(planner, node, at);
    } catch (error) {
      if (
        error instanceof OnnxFormatError ||
        error instanceof OnnxUnsupportedError ||
        error instanceof OnnxLimitError
      )
        throw error;
      throw new OnnxUnsupportedError((error as Error).message, at);
    }
    for (const output of node.outputs) {
      if (output && !planner.values.has(output) && planner.readersOf(output) > 0) {
        throw new OnnxUnsupportedError(
          `output '${output}' is read by the graph but not supported by the importer`,
          at,
        );
      }
    }
  }
}

/** The steps `output` depends on, in order (layout conversions and fused-away producers drop out). */
function liveSteps(steps: readonly Step[], output: Activation): Step[] {
  const live = new Set<number>([output.id]);
  for (let i = steps.length - 1; i >= 0; i--) {
    const step = steps[i];
    if (live.has(step.output.id)) for (const source of step.inputs) live.add(source.id);
  }
  return steps.filter((step) => live.has(step.output.id));
}

/**
 * Plans `model` as a classifier with the given op table. Throws `OnnxUnsupportedError` at the first
 * node outside the allow-list (before decoding any weight), then whatever planning each node finds.
 */
export function planModel(model: OnnxModel, ops: Record<string, OpSpec>, limits: OnnxLimits): OnnxPlan {
  const opsUsed = checkAllowList(model, ops);
  const inputShape = checkInput(model);
  const parameterCount = checkParameters(model, limits);
  const planner = new Planner(model, limits);
  const [h, w, c] = inputShape;
  const inputName = model.inputs[0].name;
  const input = planner.activation([-1, c, h, w], { kind: 'nhwc' }, inputName);
  planner.define(inputName, input);
  planNodes(planner, ops);
  const outputName = model.outputs[0].name;
  const result = planner.values.get(outputName);
  if (!result) throw new OnnxFormatError(`the graph output '${outputName}' is never computed`);
  if (result.kind !== 'activation' || result.shape.length !== 2) {
    throw new OnnxUnsupportedError(
      `the output '${outputName}' must be logits [n, numClasses] computed from the input, got ${result.kind === 'activation' ? `[${result.shape.map((d) => (d < 0 ? 'n' : d))}]` : 'a constant'}`,
    );
  }
  const output = planner.toLayout(result, 'plain');
  return {
    input,
    output,
    steps: liveSteps(planner.steps, output),
    inputShape,
    numClasses: output.shape[1],
    inputName,
    outputName,
    opsUsed,
    parameterCount,
    opset: model.opset,
    irVersion: model.irVersion,
    producer: model.producer,
    warnings: planner.warnings,
  };
}

export interface GraphPlan {
  /** The single float input (dimension 0 is the batch; rank 4 is NCHW, held as NHWC); none when every value is constant. */
  input: Activation | undefined;
  /** The first graph output: an activation in logical (ONNX) layout, or a constant folded at load. */
  output: Value;
  steps: Step[];
}

/**
 * Plans any single-input graph of allow-listed ops (no classifier contract on shapes): what the
 * ONNX backend node tests run. Rank-4 inputs are NCHW as in a classifier, held as NHWC.
 */
export function planGraph(model: OnnxModel, ops: Record<string, OpSpec>, limits: OnnxLimits): GraphPlan {
  checkAllowList(model, ops);
  if (model.inputs.length > 1)
    throw new OnnxUnsupportedError(`the graph has ${model.inputs.length} inputs; one is supported`);
  checkParameters(model, limits);
  const planner = new Planner(model, limits);
  let input: Activation | undefined;
  if (model.inputs.length === 1) {
    const [info] = model.inputs;
    if (info.elemType !== DataType.FLOAT) throw new OnnxUnsupportedError(`input '${info.name}' is not float`);
    const dims = info.dims ?? [];
    if (dims.length === 0 || dims.slice(1).some((d) => typeof d !== 'number')) {
      throw new OnnxUnsupportedError(`input '${info.name}' needs a static shape but for the batch`);
    }
    const shape = [-1, ...(dims.slice(1) as number[])];
    input = planner.activation(shape, shape.length === 4 ? { kind: 'nhwc' } : { kind: 'plain' }, info.name);
    planner.define(info.name, input);
  }
  planNodes(planner, ops);
  const outputName = model.outputs[0]?.name;
  const result = planner.values.get(outputName);
  if (!result) throw new OnnxFormatError(`the graph output '${outputName}' is never computed`);
  if (result.kind === 'constant') return { input, output: result, steps: [] };
  const output = planner.toLayout(result, 'plain');
  return { input, output, steps: liveSteps(planner.steps, output) };
}
