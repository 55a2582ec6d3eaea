/**
 * Memory and compute budget of a layers model, computed from `model.json` alone, before tfjs builds
 * anything. tfjs allocates every weight while it builds a model and every activation while it runs
 * one; an uploaded topology must therefore be sized first: every layer's output shape, parameter
 * count and multiply-adds follow from its config (kernel sizes, filters, units, strides, dilations,
 * pool and upsampling sizes, paddings, target shapes), each weight shape is compared with the one the
 * byte-checked manifest declares, and the totals with the configured limits. A layer class without a
 * sizing rule here is refused: its cost could not be bounded.
 * Throws `ModelBudgetError` naming the layer and the attribute at fault.
 */

export class ModelBudgetError extends Error {
  override readonly name = 'ModelBudgetError';
  constructor(
    /** JSON path of the attribute at fault, e.g. `modelTopology.config.layers[3].config.kernel_size`. */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The error for `attribute` (or the whole element when undefined) of the layer or node at `field`,
 * which `subject` names in the message.
 */
export function attributeError(
  field: string,
  subject: string,
  attribute: string | undefined,
  message: string,
): ModelBudgetError {
  return new ModelBudgetError(
    attribute ? `${field}.${attribute}` : field,
    `${subject}${attribute ? ` ${attribute}` : ''}: ${message}`,
  );
}

export interface ModelBudgetLimits {
  /** Most parameters (weight elements) in the model. */
  maxParameters: number;
  /** Most elements of one layer's output for one image. */
  maxActivationElements: number;
  /** Most floating-point operations of one forward pass of one image (a multiply-add counts 2). */
  maxFlopsPerImage: number;
}

export const DEFAULT_BUDGET_LIMITS: ModelBudgetLimits = {
  maxParameters: 50_000_000,
  maxActivationElements: 1 << 24,
  maxFlopsPerImage: 20e9,
};

export interface LayerBudget {
  name: string;
  className: string;
  /** Output shape of one example (no batch axis), of the layer's last call. */
  outputShape: number[];
  parameters: number;
  flops: number;
}

export interface ModelBudget {
  layers: LayerBudget[];
  /** Input shape of one example, e.g. [32, 32, 3]. */
  inputShape: number[];
  outputShape: number[];
  parameters: number;
  /** Largest layer output of one image, elements. */
  maxActivationElements: number;
  /** Sum of every layer output of one image, elements (what a backward pass keeps alive). */
  totalActivationElements: number;
  flopsPerImage: number;
}

type JsonObject = Record<string, unknown>;
type Shape = number[];

const isObject = (value: unknown): value is JsonObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Layers whose output has the shape of their input and that hold no weights. */
const SHAPE_PRESERVING = new Set([
  'Activation',
  'ReLU',
  'LeakyReLU',
  'ELU',
  'Softmax',
  'ThresholdedReLU',
  'Dropout',
  'SpatialDropout1D',
  'SpatialDropout2D',
  'GaussianNoise',
  'GaussianDropout',
  'AlphaDropout',
  'Masking',
  'RatioInputNormalization',
]);

const MERGE_ELEMENTWISE = new Set(['Add', 'Subtract', 'Multiply', 'Average', 'Maximum', 'Minimum']);

/** Elementwise operations counted per output element (activation, normalisation...). */
const ELEMENTWISE_FLOPS = 4;

interface LayerSite {
  name: string;
  className: string;
  config: JsonObject;
  /** Path of the layer's `config`. */
  field: string;
  weights: ReadonlyMap<string, number[]>;
}

class Sizer {
  constructor(readonly site: LayerSite) {}

  fail(attribute: string | undefined, message: string): ModelBudgetError {
    const { name, className, field } = this.site;
    return attributeError(field, `layer '${name}' (${className})`, attribute, message);
  }

  /** A positive integer attribute (or its default). */
  integer(key: string, fallback?: number): number {
    const value = this.site.config[key] ?? fallback;
    if (!(Number.isInteger(value) && (value as number) >= 1)) {
      throw this.fail(key, `must be a positive integer, got ${JSON.stringify(value)}`);
    }
    return value as number;
  }

  /** An int or a list of `rank` positive ints (kernel_size, strides, pool_size, dilation_rate, size). */
  tuple(key: string, rank: number, fallback?: number[]): number[] {
    const raw = this.site.config[key] ?? fallback;
    const values = typeof raw === 'number' ? Array<number>(rank).fill(raw) : raw;
    if (
      !Array.isArray(values) ||
      values.length !== rank ||
      values.some((v) => !(Number.isInteger(v) && v >= 1))
    ) {
      throw this.fail(key, `must be a positive integer or ${rank} of them, got ${JSON.stringify(raw)}`);
    }
    return values as number[];
  }

  channelsLast(): boolean {
    const format = this.site.config.data_format ?? 'channels_last';
    if (format !== 'channels_last' && format !== 'channels_first') {
      throw this.fail(
        'data_format',
        `must be channels_last or channels_first, got ${JSON.stringify(format)}`,
      );
    }
    return format === 'channels_last';
  }

  padding(): 'same' | 'valid' {
    const padding = this.site.config.padding ?? 'valid';
    if (padding !== 'same' && padding !== 'valid') {
      throw this.fail('padding', `must be 'same' or 'valid', got ${JSON.stringify(padding)}`);
    }
    return padding;
  }

  /** Compares a weight's declared manifest shape with the one this layer's config implies. */
  weight(suffix: string, expected: number[], attribute: string): number {
    const { name, weights } = this.site;
    const declared = weights.get(`${name}/${suffix}`) ?? findBySuffix(weights, `/${name}/${suffix}`);
    if (!declared) throw this.fail(attribute, `'${name}/${suffix}' is missing from the weights manifest`);
    if (declared.length !== expected.length || declared.some((d, i) => d !== expected[i])) {
      throw this.fail(
        attribute,
        `implies '${name}/${suffix}' of shape [${expected}], the weights manifest declares [${declared}]`,
      );
    }
    return product(expected);
  }

  usesBias(): boolean {
    return this.site.config.use_bias !== false;
  }
}

function findBySuffix(weights: ReadonlyMap<string, number[]>, suffix: string): number[] | undefined {
  for (const [key, shape] of weights) if (key.endsWith(suffix)) return shape;
  return undefined;
}

/** Spatial output size of a window of `k` dilated by `d`, stride `s`, on `n` positions. */
function windowOutput(n: number, k: number, s: number, d: number, padding: 'same' | 'valid'): number {
  if (padding === 'same') return Math.ceil(n / s);
  return Math.ceil((n - (k - 1) * d) / s);
}

interface Sized {
  output: Shape;
  parameters: number;
  flops: number;
}

/** Splits an image shape into [spatial dims, channels] honouring data_format. */
function imageAxes(s: Sizer, input: Shape, spatialRank: number): { spatial: number[]; channels: number } {
  if (input.length !== spatialRank + 1) {
    throw s.fail(undefined, `takes a rank-${spatialRank + 1} input per example, got [${input}]`);
  }
  return s.channelsLast()
    ? { spatial: input.slice(0, spatialRank), channels: input[spatialRank] }
    : { spatial: input.slice(1), channels: input[0] };
}

function imageShape(s: Sizer, spatial: number[], channels: number): Shape {
  return s.channelsLast() ? [...spatial, channels] : [channels, ...spatial];
}

function convolution(s: Sizer, input: Shape, kind: 'conv' | 'depthwise' | 'separable' | 'transpose'): Sized {
  const { spatial, channels } = imageAxes(s, input, 2);
  const kernel = s.tuple('kernel_size', 2);
  const strides = s.tuple('strides', 2, [1, 1]);
  const dilation = s.tuple('dilation_rate', 2, [1, 1]);
  const padding = s.padding();
  const outSpatial = spatial.map((n, i) => {
    const out =
      kind === 'transpose'
        ? padding === 'same'
          ? n * strides[i]
          : n * strides[i] + Math.max(kernel[i] - strides[i], 0)
        : windowOutput(n, kernel[i], strides[i], dilation[i], padding);
    if (!(out >= 1)) {
      throw s.fail(
        'kernel_size',
        `[${kernel}] (dilation [${dilation}]) does not fit an input of [${spatial}]`,
      );
    }
    return out;
  });
  const taps = kernel[0] * kernel[1];
  const positions = product(outSpatial);
  let parameters: number;
  let flops: number;
  let outChannels: number;
  if (kind === 'depthwise' || kind === 'separable') {
    const multiplier = s.integer('depth_multiplier', 1);
    parameters = s.weight('depthwise_kernel', [...kernel, channels, multiplier], 'kernel_size');
    flops = 2 * taps * channels * multiplier * positions;
    outChannels = channels * multiplier;
    if (kind === 'separable') {
      const filters = s.integer('filters');
      parameters += s.weight('pointwise_kernel', [1, 1, channels * multiplier, filters], 'filters');
      flops += 2 * channels * multiplier * filters * positions;
      outChannels = filters;
    }
  } else {
    outChannels = s.integer('filters');
    const shape =
      kind === 'transpose' ? [...kernel, outChannels, channels] : [...kernel, channels, outChannels];
    parameters = s.weight('kernel', shape, 'kernel_size');
    flops = 2 * taps * channels * outChannels * (kind === 'transpose' ? product(spatial) : positions);
  }
  if (s.usesBias()) parameters += s.weight('bias', [outChannels], 'filters');
  return { output: imageShape(s, outSpatial, outChannels), parameters, flops };
}

function pooling(s: Sizer, input: Shape): Sized {
  const { spatial, channels } = imageAxes(s, input, 2);
  const pool = s.tuple('pool_size', 2, [2, 2]);
  const strides = s.site.config.strides === null ? pool : s.tuple('strides', 2, pool);
  const padding = s.padding();
  const out = spatial.map((n, i) => {
    const size = windowOutput(n, pool[i], strides[i], 1, padding);
    if (!(size >= 1)) throw s.fail('pool_size', `[${pool}] does not fit an input of [${spatial}]`);
    return size;
  });
  return {
    output: imageShape(s, out, channels),
    parameters: 0,
    flops: product(pool) * product(out) * channels,
  };
}

/** [[top, bottom], [left, right]] from an int, [a, b] or [[t, b], [l, r]]. */
function pairs(s: Sizer, key: string): [[number, number], [number, number]] {
  const raw = s.site.config[key] ?? 1;
  const ok = (v: unknown) => Number.isInteger(v) && (v as number) >= 0;
  if (ok(raw))
    return [
      [raw as number, raw as number],
      [raw as number, raw as number],
    ];
  if (Array.isArray(raw) && raw.length === 2) {
    if (raw.every(ok))
      return [
        [raw[0], raw[0]],
        [raw[1], raw[1]],
      ];
    if (raw.every((p) => Array.isArray(p) && p.length === 2 && p.every(ok))) {
      return raw as [[number, number], [number, number]];
    }
  }
  throw s.fail(key, `must be a non-negative integer, 2 of them or 2 pairs, got ${JSON.stringify(raw)}`);
}

function sizeLayer(s: Sizer, inputs: Shape[]): Sized {
  const className = s.site.className;
  const input = inputs[0];
  const single = () => {
    if (inputs.length !== 1) throw s.fail(undefined, `takes one input, got ${inputs.length}`);
  };
  if (!MERGE_ELEMENTWISE.has(className) && className !== 'Concatenate') single();
  if (SHAPE_PRESERVING.has(className)) {
    if (className === 'RatioInputNormalization') {
      const mean = s.site.config.mean;
      if (!Array.isArray(mean) || mean.length !== input[input.length - 1]) {
        throw s.fail('mean', `needs one entry per input channel (${input[input.length - 1]})`);
      }
    }
    return { output: input, parameters: 0, flops: ELEMENTWISE_FLOPS * product(input) };
  }
  switch (className) {
    case 'Conv2D':
      return convolution(s, input, 'conv');
    case 'DepthwiseConv2D':
      return convolution(s, input, 'depthwise');
    case 'SeparableConv2D':
      return convolution(s, input, 'separable');
    case 'Conv2DTranspose':
      return convolution(s, input, 'transpose');
    case 'MaxPooling2D':
    case 'AveragePooling2D':
      return pooling(s, input);
    case 'GlobalAveragePooling2D':
    case 'GlobalMaxPooling2D': {
      const { channels } = imageAxes(s, input, 2);
      return { output: [channels], parameters: 0, flops: product(input) };
    }
    case 'Flatten':
      return { output: [product(input)], parameters: 0, flops: 0 };
    case 'Dense': {
      const units = s.integer('units');
      const width = input[input.length - 1];
      let parameters = s.weight('kernel', [width, units], 'units');
      if (s.usesBias()) parameters += s.weight('bias', [units], 'units');
      const rows = product(input.slice(0, -1));
      return { output: [...input.slice(0, -1), units], parameters, flops: 2 * rows * width * units };
    }
    case 'BatchNormalization':
    case 'LayerNormalization': {
      const rawAxis = s.site.config.axis ?? -1;
      const axes = Array.isArray(rawAxis) ? rawAxis : [rawAxis];
      if (axes.length !== 1 || !Number.isInteger(axes[0])) {
        throw s.fail('axis', `must be one integer axis, got ${JSON.stringify(rawAxis)}`);
      }
      // Axes count the batch axis; -1 is the last.
      const axis = (axes[0] as number) < 0 ? input.length + (axes[0] as number) : (axes[0] as number) - 1;
      if (!(axis >= 0 && axis < input.length))
        throw s.fail('axis', `${axes[0]} is not an axis of [${input}]`);
      const width = input[axis];
      let parameters = 0;
      const names =
        className === 'BatchNormalization'
          ? ['moving_mean', 'moving_variance', ...(s.site.config.scale === false ? [] : ['gamma'])]
          : s.site.config.scale === false
            ? []
            : ['gamma'];
      if (s.site.config.center !== false) names.push('beta');
      for (const weight of names) parameters += s.weight(weight, [width], 'axis');
      return { output: input, parameters, flops: ELEMENTWISE_FLOPS * product(input) };
    }
    case 'PReLU': {
      const parameters = s.weight('alpha', sharedAxesShape(s, input), 'shared_axes');
      return { output: input, parameters, flops: ELEMENTWISE_FLOPS * product(input) };
    }
    case 'Reshape': {
      const target = s.site.config.target_shape;
      if (!Array.isArray(target) || target.some((d) => !(Number.isInteger(d) && (d >= 1 || d === -1)))) {
        throw s.fail('target_shape', `must be a list of positive integers (one may be -1)`);
      }
      const known = product((target as number[]).filter((d) => d !== -1));
      const unknown = (target as number[]).filter((d) => d === -1).length;
      const total = product(input);
      if (unknown > 1 || (unknown === 0 && known !== total) || (unknown === 1 && total % known !== 0)) {
        throw s.fail('target_shape', `[${target}] cannot hold an input of [${input}] (${total} elements)`);
      }
      return {
        output: (target as number[]).map((d) => (d === -1 ? total / known : d)),
        parameters: 0,
        flops: 0,
      };
    }
    case 'UpSampling2D': {
      const { spatial, channels } = imageAxes(s, input, 2);
      const size = s.tuple('size', 2, [2, 2]);
      const out = imageShape(
        s,
        spatial.map((n, i) => n * size[i]),
        channels,
      );
      return { output: out, parameters: 0, flops: product(out) };
    }
    case 'ZeroPadding2D':
    case 'Cropping2D': {
      const { spatial, channels } = imageAxes(s, input, 2);
      const key = className === 'ZeroPadding2D' ? 'padding' : 'cropping';
      const [[top, bottom], [left, right]] = pairs(s, key);
      const sign = className === 'ZeroPadding2D' ? 1 : -1;
      const out = [spatial[0] + sign * (top + bottom), spatial[1] + sign * (left + right)];
      if (out.some((n) => n < 1)) throw s.fail(key, `leaves nothing of an input of [${spatial}]`);
      return { output: imageShape(s, out, channels), parameters: 0, flops: product(out) * channels };
    }
    case 'Concatenate': {
      if (inputs.length < 2) throw s.fail(undefined, `takes 2 or more inputs, got ${inputs.length}`);
      const rawAxis = s.site.config.axis ?? -1;
      if (!Number.isInteger(rawAxis))
        throw s.fail('axis', `must be an integer, got ${JSON.stringify(rawAxis)}`);
      const axis = (rawAxis as number) < 0 ? input.length + (rawAxis as number) : (rawAxis as number) - 1;
      if (!(axis >= 0 && axis < input.length))
        throw s.fail('axis', `${rawAxis} is not an axis of [${input}]`);
      const output = [...input];
      output[axis] = 0;
      for (const shape of inputs) {
        if (shape.length !== input.length || shape.some((d, i) => i !== axis && d !== input[i])) {
          throw s.fail('axis', `inputs [${input}] and [${shape}] differ off axis ${rawAxis}`);
        }
        output[axis] += shape[axis];
      }
      return { output, parameters: 0, flops: product(output) };
    }
    default:
      if (MERGE_ELEMENTWISE.has(className)) {
        if (inputs.length < 2) throw s.fail(undefined, `takes 2 or more inputs, got ${inputs.length}`);
        for (const shape of inputs) {
          if (shape.length !== input.length || shape.some((d, i) => d !== input[i])) {
            throw s.fail(undefined, `inputs of shapes [${input}] and [${shape}] cannot be merged`);
          }
        }
        return { output: input, parameters: 0, flops: inputs.length * product(input) };
      }
      throw s.fail(
        undefined,
        `has no memory budget rule (supported: ${[...SUPPORTED_CLASSES].sort().join(', ')}), so it is not loaded`,
      );
  }
}

function sharedAxesShape(s: Sizer, input: Shape): Shape {
  const raw = s.site.config.shared_axes;
  const shared = raw == null ? [] : Array.isArray(raw) ? raw : [raw];
  if (shared.some((a) => !(Number.isInteger(a) && a >= 1 && a <= input.length))) {
    throw s.fail('shared_axes', `must be axes 1..${input.length}, got ${JSON.stringify(raw)}`);
  }
  return input.map((d, i) => (shared.includes(i + 1) ? 1 : d));
}

const SUPPORTED_CLASSES = new Set([
  ...SHAPE_PRESERVING,
  ...MERGE_ELEMENTWISE,
  'InputLayer',
  'Conv2D',
  'DepthwiseConv2D',
  'SeparableConv2D',
  'Conv2DTranspose',
  'MaxPooling2D',
  'AveragePooling2D',
  'GlobalAveragePooling2D',
  'GlobalMaxPooling2D',
  'Flatten',
  'Dense',
  'BatchNormalization',
  'LayerNormalization',
  'PReLU',
  'Reshape',
  'UpSampling2D',
  'ZeroPadding2D',
  'Cropping2D',
  'Concatenate',
]);

function inputShapeOf(config: JsonObject, field: string): Shape {
  const batchShape = config.batch_input_shape ?? config.batchInputShape;
  const raw = Array.isArray(batchShape) ? batchShape.slice(1) : (config.input_shape ?? config.inputShape);
  if (!Array.isArray(raw) || raw.length === 0) {
    throw new ModelBudgetError(`${field}.batch_input_shape`, `the input layer needs 'batch_input_shape'`);
  }
  if (raw.some((d) => !(Number.isInteger(d) && d >= 1))) {
    throw new ModelBudgetError(
      `${field}.batch_input_shape`,
      `the input shape [${raw.map(String)}] must be fixed positive sizes (an unknown size cannot be budgeted)`,
    );
  }
  return raw as Shape;
}

class BudgetBuilder {
  readonly layers: LayerBudget[] = [];
  parameters = 0;
  maxActivation = 0;
  totalActivation = 0;
  flops = 0;

  constructor(
    readonly limits: ModelBudgetLimits,
    readonly weights: ReadonlyMap<string, number[]>,
  ) {}

  add(site: LayerSite, sized: Sized): void {
    const elements = product(sized.output);
    const where = `layer '${site.name}' (${site.className})`;
    const attribute = attributeSizing(site.className);
    const field = attribute ? `${site.field}.${attribute}` : site.field;
    if (elements > this.limits.maxActivationElements) {
      throw new ModelBudgetError(
        field,
        `${where}${attribute ? ` ${attribute}` : ''}: its output [${sized.output}] holds ${elements} elements per image, over the limit of ${this.limits.maxActivationElements}`,
      );
    }
    this.parameters += sized.parameters;
    if (this.parameters > this.limits.maxParameters) {
      throw new ModelBudgetError(
        field,
        `${where}: the model reaches ${this.parameters} parameters here, over the limit of ${this.limits.maxParameters}`,
      );
    }
    this.flops += sized.flops;
    if (this.flops > this.limits.maxFlopsPerImage) {
      throw new ModelBudgetError(
        field,
        `${where}: one image costs ${this.flops.toExponential(3)} FLOPs up to here, over the limit of ${this.limits.maxFlopsPerImage.toExponential(3)}`,
      );
    }
    this.maxActivation = Math.max(this.maxActivation, elements);
    this.totalActivation += elements;
    const previous = this.layers.find((layer) => layer.name === site.name);
    if (previous) {
      previous.outputShape = sized.output;
      previous.flops += sized.flops;
    } else {
      this.layers.push({
        name: site.name,
        className: site.className,
        outputShape: sized.output,
        parameters: sized.parameters,
        flops: sized.flops,
      });
    }
  }
}

/** The attribute that sizes a layer's output, to name in an activation/FLOPs refusal. */
function attributeSizing(className: string): string | undefined {
  if (/Conv/.test(className)) return 'filters';
  if (className === 'Dense') return 'units';
  if (className === 'UpSampling2D') return 'size';
  if (className === 'ZeroPadding2D') return 'padding';
  if (className === 'Reshape') return 'target_shape';
  if (className === 'InputLayer') return 'batch_input_shape';
  return undefined;
}

function layerSite(raw: unknown, field: string, weights: ReadonlyMap<string, number[]>): LayerSite {
  if (!isObject(raw) || typeof raw.class_name !== 'string' || !isObject(raw.config)) {
    throw new ModelBudgetError(field, `each layer needs a string 'class_name' and a 'config' object`);
  }
  const name = typeof raw.name === 'string' ? raw.name : raw.config.name;
  if (typeof name !== 'string') throw new ModelBudgetError(field, `each layer needs a string 'name'`);
  if (raw.class_name === 'Model' || raw.class_name === 'Functional' || raw.class_name === 'Sequential') {
    throw new ModelBudgetError(`${field}.class_name`, `nested models are not supported; flatten '${name}'`);
  }
  return { name, className: raw.class_name, config: raw.config, field: `${field}.config`, weights };
}

function budgetSequential(
  layers: unknown[],
  field: string,
  builder: BudgetBuilder,
): { input: Shape; output: Shape } {
  let shape: Shape | undefined;
  let input: Shape | undefined;
  layers.forEach((raw, i) => {
    const site = layerSite(raw, `${field}[${i}]`, builder.weights);
    if (site.className === 'InputLayer' || shape === undefined) {
      if (shape !== undefined) throw new ModelBudgetError(site.field, 'an InputLayer after the first layer');
      shape = inputShapeOf(site.config, site.field);
      input = shape;
      builder.add({ ...site, className: 'InputLayer' }, { output: shape, parameters: 0, flops: 0 });
      if (site.className === 'InputLayer') return;
    }
    const sized = sizeLayer(new Sizer(site), [shape]);
    builder.add(site, sized);
    shape = sized.output;
  });
  if (!input || !shape) throw new ModelBudgetError(field, 'the model has no layers');
  return { input, output: shape };
}

function budgetFunctional(
  config: JsonObject,
  field: string,
  builder: BudgetBuilder,
): { input: Shape; output: Shape } {
  const layers = config.layers as unknown[];
  const sites = layers.map((raw, i) => layerSite(raw, `${field}.layers[${i}]`, builder.weights));
  const raws = layers as JsonObject[];
  // Output shape of each call `${layer}#${node}`; layers are resolved in dependency order.
  const outputs = new Map<string, Shape>();
  let inputShape: Shape | undefined;
  const pending = sites.map((site, i) => ({ site, nodes: (raws[i].inbound_nodes ?? []) as unknown[][] }));
  for (const { site } of pending) {
    if (site.className !== 'InputLayer') continue;
    const shape = inputShapeOf(site.config, site.field);
    inputShape ??= shape;
    outputs.set(`${site.name}#0`, shape);
    builder.add(site, { output: shape, parameters: 0, flops: 0 });
  }
  let remaining = pending.filter(({ site }) => site.className !== 'InputLayer');
  const nodeDone = new Set<string>();
  while (remaining.length > 0) {
    const before = remaining.length;
    remaining = remaining.filter(({ site, nodes }) => {
      nodes.forEach((node, n) => {
        const key = `${site.name}#${n}`;
        if (nodeDone.has(key)) return;
        const refs = (node as unknown[]).map((ref) => {
          const [source, index] = ref as [string, number];
          return outputs.get(`${source}#${index}`);
        });
        if (refs.some((shape) => shape === undefined)) return;
        const sized = sizeLayer(new Sizer(site), refs as Shape[]);
        builder.add(site, sized);
        outputs.set(key, sized.output);
        nodeDone.add(key);
      });
      return nodes.some((_, n) => !nodeDone.has(`${site.name}#${n}`));
    });
    if (remaining.length === before) {
      throw new ModelBudgetError(
        `${field}.layers`,
        `layer '${remaining[0].site.name}' cannot be sized: its inputs are never computed`,
      );
    }
  }
  const ends = config.output_layers as Array<[string, number]>;
  if (!Array.isArray(ends) || ends.length !== 1) {
    throw new ModelBudgetError(`${field}.output_layers`, 'a classifier has exactly one output layer');
  }
  const output = outputs.get(`${ends[0][0]}#${ends[0][1] ?? 0}`);
  if (!inputShape || !output)
    throw new ModelBudgetError(`${field}.output_layers`, 'the output is never computed');
  return { input: inputShape, output };
}

/**
 * Sizes a layers-model topology (as in model.json, already checked structurally by
 * `checkLayersTopology`) against the manifest's weight shapes (name -> shape) and `limits`.
 *
 * @example
 * const budget = modelBudget(modelJson.modelTopology, new Map([['conv1/kernel', [3, 3, 3, 16]], ...]));
 * budget.flopsPerImage; // 2 x multiply-adds of one forward pass
 */
export function modelBudget(
  modelTopology: JsonObject,
  weightShapes: ReadonlyMap<string, number[]>,
  limits: Partial<ModelBudgetLimits> = {},
): ModelBudget {
  const builder = new BudgetBuilder({ ...DEFAULT_BUDGET_LIMITS, ...limits }, weightShapes);
  const topology = isObject(modelTopology.model_config) ? modelTopology.model_config : modelTopology;
  const config = topology.config;
  let ends: { input: Shape; output: Shape };
  if (topology.class_name === 'Sequential') {
    const layers = Array.isArray(config) ? config : isObject(config) ? config.layers : undefined;
    if (!Array.isArray(layers))
      throw new ModelBudgetError('modelTopology.config.layers', `'layers' must be an array`);
    ends = budgetSequential(layers, 'modelTopology.config.layers', builder);
  } else {
    if (!isObject(config) || !Array.isArray(config.layers)) {
      throw new ModelBudgetError('modelTopology.config', `'config.layers' must be an array`);
    }
    ends = budgetFunctional(config, 'modelTopology.config', builder);
  }
  return {
    layers: builder.layers,
    inputShape: ends.input,
    outputShape: ends.output,
    parameters: builder.parameters,
    maxActivationElements: builder.maxActivation,
    totalActivationElements: builder.totalActivation,
    flopsPerImage: builder.flops,
  };
}
