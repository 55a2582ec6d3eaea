import {
  attributeError,
  DEFAULT_BUDGET_LIMITS,
  type LayerBudget,
  type ModelBudget,
  ModelBudgetError,
  type ModelBudgetLimits,
} from './budget.js';

/**
 * Memory and compute budget of a tfjs graph model (a converter GraphDef in model.json), from the
 * graph alone, before tfjs builds anything: every node's output shape for one image follows from
 * its inputs, its attributes (strides, kernel sizes, paddings, dilations, data formats, keep_dims)
 * and the small integer constants that shape it (reshape targets, resize sizes, paddings, axes,
 * tile multiples, read from the weights); each constant's shape is compared with the manifest's;
 * parameters, the largest activation and the FLOPs are held to the same limits as a layers model.
 * An op without a sizing rule here is refused, as a layer class is: its memory could not be bounded
 * before running it. Throws `ModelBudgetError` naming the node and attribute at fault.
 */

type JsonObject = Record<string, unknown>;
type Shape = number[];

const isObject = (value: unknown): value is JsonObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Integer constants at most this long are read (shape vectors, paddings, axes). */
const MAX_SHAPING_CONSTANT = 64;

/** What a node yields: its shape for one image and, for small integer tensors, their values. */
interface Value {
  shape: Shape;
  ints?: number[];
}

interface GraphNode {
  name: string;
  op: string;
  inputs: string[];
  attr: JsonObject;
  /** Path of the node in model.json, e.g. `modelTopology.node[4]`. */
  field: string;
}

export interface GraphBudgetSources {
  /** Weight name -> declared shape (the byte-checked manifest). */
  weightShapes: ReadonlyMap<string, number[]>;
  /** Values of a small int32 weight, read from the shards; undefined when not available. */
  intWeight?: (name: string) => number[] | undefined;
  /** [H, W, C] from card.json, for a placeholder with dynamic image dimensions. */
  inputShape?: readonly number[];
}

const UNARY = new Set([
  'Identity',
  'StopGradient',
  'PreventGradient',
  'Snapshot',
  'Cast',
  'Relu',
  'Relu6',
  'Elu',
  'Selu',
  'LeakyRelu',
  'Sigmoid',
  'Tanh',
  'Softmax',
  'LogSoftmax',
  'Softplus',
  'Softsign',
  'Neg',
  'Abs',
  'Sqrt',
  'Rsqrt',
  'Square',
  'Exp',
  'Log',
  'Log1p',
  'Expm1',
  'Erf',
  'Floor',
  'Ceil',
  'Round',
  'Sign',
  'Reciprocal',
  'Sin',
  'Cos',
]);

const BROADCAST = new Set([
  'Add',
  'AddV2',
  'AddN',
  'BiasAdd',
  'Sub',
  'Mul',
  'RealDiv',
  'Div',
  'DivNoNan',
  'FloorDiv',
  'FloorMod',
  'Maximum',
  'Minimum',
  'Pow',
  'SquaredDifference',
  'Prelu',
  'ClipByValue',
]);

const REDUCE = new Set(['Mean', 'Sum', 'Max', 'Min', 'Prod']);

/** Elementwise operations counted per output element (as the layers budget does). */
const ELEMENTWISE_FLOPS = 4;

class NodeSizer {
  constructor(
    readonly node: GraphNode,
    readonly values: readonly Value[],
  ) {}

  fail(attribute: string | undefined, message: string): ModelBudgetError {
    const { name, op, field } = this.node;
    return attributeError(field, `node '${name}' (${op})`, attribute, message);
  }

  input(index: number, rank?: number): Shape {
    const value = this.values[index];
    if (!value) throw this.fail('input', `needs an input #${index}`);
    if (rank !== undefined && value.shape.length !== rank) {
      throw this.fail('input', `input #${index} must be rank ${rank}, got [${value.shape}]`);
    }
    return value.shape;
  }

  /** An input's integer values (a constant or a shape), which size this node's output. */
  ints(index: number, what: string): number[] {
    this.input(index);
    const ints = this.values[index].ints;
    if (!ints) {
      throw this.fail(
        'input',
        `its ${what} (input #${index}) must be a small int32 constant so its size is known before running`,
      );
    }
    return ints;
  }

  attrValue(key: string): JsonObject | undefined {
    const value = this.node.attr[key];
    return isObject(value) ? value : undefined;
  }

  attrString(key: string, fallback: string): string {
    const s = this.attrValue(key)?.s;
    if (s === undefined) return fallback;
    if (typeof s !== 'string') throw this.fail(`attr.${key}`, 'must be a string');
    try {
      return atob(s);
    } catch {
      throw this.fail(`attr.${key}`, 'must be base64');
    }
  }

  attrBool(key: string): boolean {
    return this.attrValue(key)?.b === true;
  }

  /** A list of ints (`list.i`, int64 written as strings by the converter). */
  attrInts(key: string, length: number, fallback?: number[]): number[] {
    const list = this.attrValue(key)?.list;
    const raw = isObject(list) ? list.i : undefined;
    if (raw === undefined && fallback) return fallback;
    const ints = Array.isArray(raw) ? raw.map(Number) : [];
    if (ints.length !== length || ints.some((v) => !Number.isSafeInteger(v))) {
      throw this.fail(`attr.${key}`, `must be a list of ${length} integers, got ${JSON.stringify(raw)}`);
    }
    return ints;
  }

  positive(key: string, values: number[], limit = 1 << 16): number[] {
    if (values.some((v) => v < 1 || v > limit)) {
      throw this.fail(`attr.${key}`, `must hold integers in [1, ${limit}], got [${values}]`);
    }
    return values;
  }

  nhwc(): void {
    const format = this.attrString('data_format', 'NHWC');
    if (format !== 'NHWC') throw this.fail('attr.data_format', `only NHWC is supported, got '${format}'`);
  }

  /** Output sizes of a sliding window over [h, w] (Conv2D, pools). */
  window(input: Shape, kernel: [number, number], strides: number[], dilations: number[]): [number, number] {
    const padding = this.attrString('padding', 'VALID');
    const explicit = padding === 'EXPLICIT' ? this.attrInts('explicit_paddings', 8) : undefined;
    if (explicit?.some((p) => p < 0 || p > 1 << 16)) {
      throw this.fail('attr.explicit_paddings', `must hold integers in [0, 65536], got [${explicit}]`);
    }
    if (!['SAME', 'VALID', 'EXPLICIT'].includes(padding)) {
      throw this.fail('attr.padding', `must be SAME, VALID or EXPLICIT, got '${padding}'`);
    }
    return [0, 1].map((axis) => {
      const stride = strides[axis + 1];
      const span = (kernel[axis] - 1) * dilations[axis + 1] + 1;
      const size = input[axis + 1] + (explicit ? explicit[2 + 2 * axis] + explicit[3 + 2 * axis] : 0);
      const out = padding === 'SAME' ? Math.ceil(size / stride) : Math.floor((size - span) / stride) + 1;
      if (out < 1) {
        throw this.fail(
          'attr.ksize',
          `a window of ${span} does not fit the input's ${['height', 'width'][axis]} of ${input[axis + 1]}`,
        );
      }
      return out;
    }) as [number, number];
  }
}

function broadcast(sizer: NodeSizer, shapes: Shape[]): Shape {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: Shape = [];
  for (let i = 0; i < rank; i++) {
    const dims = shapes.map((s) => s[s.length - rank + i] ?? 1);
    const size = Math.max(...dims);
    if (dims.some((d) => d !== 1 && d !== size)) {
      throw sizer.fail('input', `input shapes ${shapes.map((s) => `[${s}]`).join(', ')} do not broadcast`);
    }
    out.push(size);
  }
  return out;
}

const axisOf = (sizer: NodeSizer, axis: number, rank: number) => {
  const resolved = axis < 0 ? axis + rank : axis;
  if (!(resolved >= 0 && resolved < rank)) throw sizer.fail('input', `axis ${axis} is outside rank ${rank}`);
  return resolved;
};

/** Output of one node for one image, and its FLOPs. */
function sizeNode(sizer: NodeSizer): { value: Value; flops: number } {
  const { op } = sizer.node;
  const elementwise = (shape: Shape) => ({ value: { shape }, flops: ELEMENTWISE_FLOPS * product(shape) });
  if (UNARY.has(op)) return elementwise(sizer.input(0));
  if (BROADCAST.has(op)) {
    const count = op === 'AddN' ? sizer.values.length : op === 'ClipByValue' ? 3 : 2;
    return elementwise(
      broadcast(
        sizer,
        Array.from({ length: count }, (_, i) => sizer.input(i)),
      ),
    );
  }
  if (REDUCE.has(op)) {
    const input = sizer.input(0);
    const axes = sizer.ints(1, 'axes').map((a) => axisOf(sizer, a, input.length));
    const keep = sizer.attrBool('keep_dims');
    const shape = input.flatMap((d, i) => (axes.includes(i) ? (keep ? [1] : []) : [d]));
    return { value: { shape }, flops: product(input) };
  }
  switch (op) {
    case 'FusedBatchNorm':
    case 'FusedBatchNormV2':
    case 'FusedBatchNormV3':
      sizer.nhwc();
      return elementwise(sizer.input(0, 4));
    case 'Conv2D':
    case '_FusedConv2D':
    case 'DepthwiseConv2dNative':
    case 'FusedDepthwiseConv2dNative': {
      sizer.nhwc();
      const input = sizer.input(0, 4);
      const [kh, kw, inChannels, multiplier] = sizer.input(1, 4);
      const depthwise = op.includes('Depthwise');
      const strides = sizer.positive('strides', sizer.attrInts('strides', 4));
      const dilations = sizer.positive('dilations', sizer.attrInts('dilations', 4, [1, 1, 1, 1]));
      const channels = input[3];
      if (depthwise ? inChannels !== channels : inChannels < 1 || channels % inChannels !== 0) {
        throw sizer.fail(
          'input',
          `a filter of [${kh}, ${kw}, ${inChannels}, ${multiplier}] does not fit ${channels} input channels`,
        );
      }
      const [h, w] = sizer.window(input, [kh, kw], strides, dilations);
      const outChannels = depthwise ? channels * multiplier : multiplier;
      const shape = [input[0], h, w, outChannels];
      const macs = h * w * kh * kw * (depthwise ? channels * multiplier : inChannels * outChannels);
      // A fused op adds its bias and activation.
      return {
        value: { shape },
        flops:
          2 * macs + (op.startsWith('Fused') || op.startsWith('_') ? ELEMENTWISE_FLOPS * product(shape) : 0),
      };
    }
    case 'MaxPool':
    case 'AvgPool': {
      sizer.nhwc();
      const input = sizer.input(0, 4);
      const ksize = sizer.positive('ksize', sizer.attrInts('ksize', 4));
      const strides = sizer.positive('strides', sizer.attrInts('strides', 4));
      if (ksize[0] !== 1 || ksize[3] !== 1)
        throw sizer.fail('attr.ksize', 'pools over height and width only');
      const [h, w] = sizer.window(input, [ksize[1], ksize[2]], strides, [1, 1, 1, 1]);
      const shape = [input[0], h, w, input[3]];
      return { value: { shape }, flops: product(shape) * ksize[1] * ksize[2] };
    }
    case 'MatMul':
    case '_FusedMatMul': {
      const a = sizer.input(0, 2);
      const b = sizer.input(1, 2);
      const [m, k] = sizer.attrBool('transpose_a') ? [a[1], a[0]] : a;
      const [k2, n] = sizer.attrBool('transpose_b') ? [b[1], b[0]] : b;
      if (k !== k2) throw sizer.fail('input', `[${a}] x [${b}]: inner sizes ${k} and ${k2} differ`);
      const shape = [m, n];
      return {
        value: { shape },
        flops: 2 * m * k * n + (op === '_FusedMatMul' ? ELEMENTWISE_FLOPS * m * n : 0),
      };
    }
    case 'Reshape': {
      const input = sizer.input(0);
      const target = sizer.ints(1, 'target shape');
      const known = target.filter((d) => d !== -1);
      const free = target.length - known.length;
      if (free > 1 || known.some((d) => d < 0))
        throw sizer.fail('input', `target shape [${target}] is not a shape`);
      const size = product(input);
      const rest = product(known);
      const shape = target.map((d) => (d === -1 ? size / rest : d));
      if (product(shape) !== size || shape.some((d) => !Number.isInteger(d))) {
        throw sizer.fail(
          'input',
          `cannot reshape [${input}] (${size} elements for one image) to [${target}]`,
        );
      }
      return { value: { shape, ints: sizer.values[0].ints }, flops: 0 };
    }
    case 'Squeeze': {
      const input = sizer.input(0);
      const list = sizer.attrValue('squeeze_dims')?.list;
      const raw = isObject(list) && Array.isArray(list.i) ? list.i.map(Number) : [];
      const axes = raw.map((a) => axisOf(sizer, a, input.length));
      // Squeezing every size-1 axis would drop the batch of one image too; keep axis 0.
      const drop = axes.length > 0 ? axes : input.flatMap((d, i) => (d === 1 && i > 0 ? [i] : []));
      if (drop.some((a) => input[a] !== 1))
        throw sizer.fail('attr.squeeze_dims', `squeezes an axis of size > 1 in [${input}]`);
      return { value: { shape: input.filter((_, i) => !drop.includes(i)) }, flops: 0 };
    }
    case 'ExpandDims': {
      const input = sizer.input(0);
      const [axis] = sizer.ints(1, 'axis');
      const at = axisOf(sizer, axis, input.length + 1);
      return { value: { shape: [...input.slice(0, at), 1, ...input.slice(at)] }, flops: 0 };
    }
    case 'Pad':
    case 'PadV2':
    case 'MirrorPad': {
      const input = sizer.input(0);
      const pads = sizer.ints(1, 'paddings');
      if (pads.length !== 2 * input.length || pads.some((p) => p < 0)) {
        throw sizer.fail('input', `paddings [${pads}] must be ${input.length} pairs of integers >= 0`);
      }
      const shape = input.map((d, i) => d + pads[2 * i] + pads[2 * i + 1]);
      return { value: { shape }, flops: product(shape) };
    }
    case 'ConcatV2': {
      const count = sizer.values.length - 1;
      if (count < 1) throw sizer.fail('input', 'needs inputs and an axis');
      const [axisValue] = sizer.ints(count, 'axis');
      const shapes = Array.from({ length: count }, (_, i) => sizer.input(i));
      const axis = axisOf(sizer, axisValue, shapes[0].length);
      const shape = [...shapes[0]];
      for (const other of shapes.slice(1)) {
        if (other.length !== shape.length || other.some((d, i) => i !== axis && d !== shape[i])) {
          throw sizer.fail(
            'input',
            `[${other}] does not concatenate with [${shapes[0]}] on axis ${axisValue}`,
          );
        }
        shape[axis] += other[axis];
      }
      return { value: { shape }, flops: product(shape) };
    }
    case 'ResizeBilinear':
    case 'ResizeNearestNeighbor': {
      const input = sizer.input(0, 4);
      const size = sizer.ints(1, 'size');
      if (size.length !== 2 || size.some((d) => d < 1))
        throw sizer.fail('input', `size [${size}] must be [height, width] >= 1`);
      const shape = [input[0], size[0], size[1], input[3]];
      return { value: { shape }, flops: ELEMENTWISE_FLOPS * product(shape) };
    }
    case 'Transpose': {
      const input = sizer.input(0);
      const perm = sizer.ints(1, 'permutation');
      if (perm.length !== input.length || [...perm].sort().some((p, i) => p !== i)) {
        throw sizer.fail('input', `[${perm}] is not a permutation of rank ${input.length}`);
      }
      return { value: { shape: perm.map((p) => input[p]) }, flops: product(input) };
    }
    case 'Tile': {
      const input = sizer.input(0);
      const multiples = sizer.ints(1, 'multiples');
      if (multiples.length !== input.length || multiples.some((m) => m < 1)) {
        throw sizer.fail('input', `multiples [${multiples}] must be ${input.length} integers >= 1`);
      }
      const shape = input.map((d, i) => d * multiples[i]);
      return { value: { shape }, flops: product(shape) };
    }
    case 'Shape': {
      const input = sizer.input(0);
      return { value: { shape: [input.length], ints: input }, flops: 0 };
    }
    default:
      throw sizer.fail(
        'op',
        `op '${op}' has no sizing rule, so its memory cannot be bounded before running it`,
      );
  }
}

const dims = (shape: unknown): number[] | undefined => {
  if (!isObject(shape)) return undefined;
  if (shape.unknownRank === true) return undefined;
  const list = Array.isArray(shape.dim) ? shape.dim : [];
  return list.map((d) => Number(isObject(d) ? (d.size ?? 0) : Number.NaN));
};

/** Node name of a GraphDef input: `^ctrl` (control edge) -> undefined, `name:1` -> `name`. */
function dataInput(input: string): string | undefined {
  if (input.startsWith('^')) return undefined;
  const colon = input.lastIndexOf(':');
  return colon > 0 && /^\d+$/.test(input.slice(colon + 1)) ? input.slice(0, colon) : input;
}

/**
 * Sizes a graph-model topology (already checked structurally by `checkGraphTopology`: names,
 * references, no cycles) against the manifest and `limits`. The output is the node no other node reads.
 */
export function graphModelBudget(
  modelTopology: JsonObject,
  sources: GraphBudgetSources,
  limits: Partial<ModelBudgetLimits> = {},
): ModelBudget {
  const full = { ...DEFAULT_BUDGET_LIMITS, ...limits };
  const rawNodes = Array.isArray(modelTopology.node) ? modelTopology.node : [];
  const nodes: GraphNode[] = rawNodes.map((raw, i) => {
    const node = isObject(raw) ? raw : {};
    return {
      name: String(node.name),
      op: String(node.op),
      inputs: (Array.isArray(node.input) ? node.input : []).map(String),
      attr: isObject(node.attr) ? node.attr : {},
      field: `modelTopology.node[${i}]`,
    };
  });
  const byName = new Map(nodes.map((node) => [node.name, node]));
  const values = new Map<string, Value>();
  const layers: LayerBudget[] = [];
  const consumed = new Set<string>();
  let parameters = 0;
  let flops = 0;
  let maxActivation = 0;
  let totalActivation = 0;
  let inputShape: Shape | undefined;

  const size = (node: GraphNode): Value => {
    const fail = (attribute: string, message: string) =>
      new ModelBudgetError(
        `${node.field}.${attribute}`,
        `node '${node.name}' (${node.op}) ${attribute}: ${message}`,
      );
    if (node.op === 'Const') {
      const tensor = node.attr.value;
      const inline = isObject(tensor) && isObject(tensor.tensor) ? tensor.tensor : undefined;
      const declared = sources.weightShapes.get(node.name);
      const attrShape = inline ? dims(inline.tensorShape) : undefined;
      if (declared && attrShape && attrShape.join() !== declared.join()) {
        throw fail('attr.value', `shape [${attrShape}] differs from the weights manifest's [${declared}]`);
      }
      const shape = declared ?? attrShape ?? [];
      if (shape.some((d) => !Number.isSafeInteger(d) || d < 0))
        throw fail('attr.value', `shape [${shape}] is not static`);
      const elements = product(shape);
      parameters += elements;
      if (parameters > full.maxParameters) {
        throw fail(
          'attr.value',
          `${parameters} parameters up to here, over the limit of ${full.maxParameters}`,
        );
      }
      let ints: number[] | undefined;
      if (elements <= MAX_SHAPING_CONSTANT) {
        const intVal = inline?.intVal ?? inline?.int64Val;
        ints = declared
          ? sources.intWeight?.(node.name)
          : Array.isArray(intVal) && intVal.length === elements
            ? intVal.map(Number)
            : undefined;
      }
      return { shape, ints };
    }
    if (node.op === 'Placeholder') {
      const declared = dims(isObject(node.attr.shape) ? node.attr.shape.shape : undefined);
      const card = sources.inputShape;
      if (inputShape) throw fail('op', 'a classifier has one input placeholder');
      if (declared?.length !== 4) {
        if (card?.length === 3) {
          inputShape = [...card];
          return { shape: [1, ...card] };
        }
        throw fail(
          'attr.shape',
          'the input must be a rank-4 NHWC image batch (or card.json must give inputShape)',
        );
      }
      const shape = declared.map((d, i) => (i === 0 ? 1 : d >= 1 ? d : (card?.[i - 1] ?? d)));
      if (shape.some((d) => !Number.isSafeInteger(d) || d < 1)) {
        throw fail(
          'attr.shape',
          `[${declared}] has dynamic image dimensions; card.json must give inputShape [H, W, C]`,
        );
      }
      inputShape = shape.slice(1);
      return { shape };
    }
    const inputs = node.inputs.flatMap((input) => {
      const source = dataInput(input);
      return source === undefined ? [] : [source];
    });
    for (const source of inputs) consumed.add(source);
    const sized = sizeNode(
      new NodeSizer(
        node,
        inputs.map((source) => values.get(source)!),
      ),
    );
    const elements = product(sized.value.shape);
    if (!Number.isSafeInteger(elements) || elements > full.maxActivationElements) {
      throw new ModelBudgetError(
        node.field,
        `node '${node.name}' (${node.op}): its output [${sized.value.shape}] for one image holds ${elements} elements, over the limit of ${full.maxActivationElements}`,
      );
    }
    flops += sized.flops;
    if (flops > full.maxFlopsPerImage) {
      throw new ModelBudgetError(
        node.field,
        `node '${node.name}' (${node.op}): one image costs ${flops.toExponential(3)} FLOPs up to here, over the limit of ${full.maxFlopsPerImage.toExponential(3)}`,
      );
    }
    maxActivation = Math.max(maxActivation, elements);
    totalActivation += elements;
    layers.push({
      name: node.name,
      className: node.op,
      outputShape: sized.value.shape.slice(1),
      parameters: 0,
      flops: sized.flops,
    });
    return sized.value;
  };

  // Iterative post-order: a hostile graph may be deep enough to overflow the call stack.
  for (const root of nodes) {
    const stack: Array<{ node: GraphNode; expanded: boolean }> = [{ node: root, expanded: false }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      if (values.has(top.node.name)) {
        stack.pop();
        continue;
      }
      if (!top.expanded) {
        top.expanded = true;
        for (const input of top.node.inputs) {
          const source = dataInput(input);
          const node = source === undefined ? undefined : byName.get(source);
          if (node && !values.has(node.name)) stack.push({ node, expanded: false });
        }
        continue;
      }
      stack.pop();
      values.set(top.node.name, size(top.node));
    }
  }
  if (!inputShape) throw new ModelBudgetError('modelTopology.node', 'the graph has no Placeholder input');
  const outputs = nodes.filter(
    (node) => !consumed.has(node.name) && node.op !== 'Const' && node.op !== 'Placeholder',
  );
  const output = outputs.length === 1 ? values.get(outputs[0].name)!.shape.slice(1) : [];
  return {
    layers,
    inputShape,
    outputShape: output,
    parameters,
    maxActivationElements: maxActivation,
    totalActivationElements: totalActivation,
    flopsPerImage: flops,
  };
}
