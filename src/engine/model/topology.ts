import * as tf from '@tensorflow/tfjs';

/**
 * Structural checks of a Keras/tfjs layers-model topology, run before tfjs deserialises it.
 * tfjs's functional-model builder loops forever on a node whose inbound layer does not exist (or on a
 * cycle), and allocates every weight at build time; an uploaded model.json must not be able to hang
 * or exhaust the process, so dangling references, cycles, unknown classes and absurd sizes are
 * refused here. Throws `TopologyError` with a JSON-ish path to the offending field.
 */
export class TopologyError extends Error {
  override readonly name = 'TopologyError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

type JsonObject = Record<string, unknown>;

const isObject = (value: unknown): value is JsonObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

const CONTAINER_CLASSES = new Set(['Model', 'Functional', 'Sequential']);

/** Largest value accepted in a size-like layer field (units, filters, kernel sizes, input dims). */
const MAX_DIMENSION = 1 << 16;
const SIZE_FIELDS = new Set([
  'units',
  'filters',
  'kernel_size',
  'pool_size',
  'strides',
  'dilation_rate',
  'depth_multiplier',
  'input_dim',
  'output_dim',
  'batch_input_shape',
  'target_shape',
  'size',
]);
const MAX_LAYERS = 10_000;

interface Context {
  depth: number;
  /** Declared weight shapes by name (`layer/kernel`), from the byte-limited manifest. */
  weights: Map<string, number[]>;
}

/** Largest image accepted by an input layer, in elements per example (e.g. 2048 x 2048 x 4). */
const MAX_INPUT_ELEMENTS = 1 << 24;

/**
 * tfjs allocates every weight while building, before it compares them with the manifest; the
 * manifest is byte-limited, so a layer's output width (units, filters) must appear in the shape of
 * its declared kernel, and an input layer must be of sane size. This bounds what building allocates.
 */
function checkAgainstManifest(
  name: string,
  config: unknown,
  field: string,
  weights: Map<string, number[]>,
): void {
  if (!isObject(config)) return;
  const inputShape = config.batch_input_shape;
  if (Array.isArray(inputShape)) {
    const elements = inputShape.slice(1).reduce((a: number, d) => a * (typeof d === 'number' ? d : 1), 1);
    if (elements > MAX_INPUT_ELEMENTS) {
      throw new TopologyError(
        `${field}.batch_input_shape`,
        `an input of ${elements} elements per example is over the limit of ${MAX_INPUT_ELEMENTS}`,
      );
    }
  }
  for (const key of ['units', 'filters'] as const) {
    const width = config[key];
    if (typeof width !== 'number') continue;
    const kernel = weights.get(`${name}/kernel`) ?? weights.get(`${name}/pointwise_kernel`);
    if (!kernel) {
      throw new TopologyError(`${field}.${key}`, `layer '${name}' has no kernel in the weights manifest`);
    }
    // Dense/Conv kernels end in the width; recurrent kernels hold a multiple of it (gates).
    if (!kernel.some((d) => d >= width && d % width === 0)) {
      throw new TopologyError(
        `${field}.${key}`,
        `layer '${name}' has ${key} ${width} but its manifest kernel is [${kernel}]`,
      );
    }
  }
}

function checkSizes(config: unknown, field: string): void {
  if (!isObject(config)) return;
  for (const [key, value] of Object.entries(config)) {
    if (!SIZE_FIELDS.has(key)) continue;
    const values = Array.isArray(value) ? value : [value];
    for (const v of values) {
      if (typeof v === 'number' && !(Number.isFinite(v) && Math.abs(v) <= MAX_DIMENSION)) {
        throw new TopologyError(`${field}.${key}`, `'${key}' holds ${v}, over the limit of ${MAX_DIMENSION}`);
      }
    }
  }
}

function checkLayer(layer: unknown, field: string, context: Context): { name: string; layer: JsonObject } {
  if (!isObject(layer) || typeof layer.class_name !== 'string') {
    throw new TopologyError(field, `each layer needs a string 'class_name'`);
  }
  const className = layer.class_name;
  // Own properties only: `__proto__` or `constructor` are in every object but are no layer class.
  if (!Object.hasOwn(tf.serialization.SerializationMap.getMap().classNameMap, className)) {
    throw new TopologyError(
      `${field}.class_name`,
      `unknown layer class '${className}' (not a tfjs layer, nor one registered by ratio-audit)`,
    );
  }
  const config = layer.config;
  const name = typeof layer.name === 'string' ? layer.name : isObject(config) ? config.name : undefined;
  if (typeof name !== 'string') throw new TopologyError(field, `each layer needs a string 'name'`);
  if (CONTAINER_CLASSES.has(className))
    checkContainer(layer, field, { ...context, depth: context.depth + 1 });
  else {
    checkSizes(config, `${field}.config`);
    checkAgainstManifest(name, config, `${field}.config`, context.weights);
  }
  return { name, layer };
}

/** [layerName, nodeIndex, tensorIndex, kwargs?] references of one call of a layer. */
function inboundReferences(node: unknown, field: string): Array<[string, number]> {
  if (!Array.isArray(node)) throw new TopologyError(field, 'an inbound node must be an array of references');
  return node.map((ref: unknown, i) => {
    if (!Array.isArray(ref) || typeof ref[0] !== 'string' || !Number.isInteger(ref[1]) || ref[1] < 0) {
      throw new TopologyError(`${field}[${i}]`, 'a reference must be [layerName, nodeIndex, tensorIndex]');
    }
    return [ref[0], ref[1]];
  });
}

function checkFunctional(config: JsonObject, field: string, context: Context): void {
  if (!Array.isArray(config.layers)) throw new TopologyError(`${field}.layers`, `'layers' must be an array`);
  if (config.layers.length > MAX_LAYERS) {
    throw new TopologyError(
      `${field}.layers`,
      `${config.layers.length} layers, over the limit of ${MAX_LAYERS}`,
    );
  }
  const layers = config.layers as unknown[];
  const nodeCounts = new Map<string, number>();
  const checked = layers.map((raw, i) => {
    const { name, layer } = checkLayer(raw, `${field}.layers[${i}]`, context);
    if (nodeCounts.has(name))
      throw new TopologyError(`${field}.layers[${i}].name`, `duplicate layer name '${name}'`);
    const nodes = layer.inbound_nodes ?? [];
    if (!Array.isArray(nodes))
      throw new TopologyError(`${field}.layers[${i}].inbound_nodes`, 'must be an array');
    // An InputLayer has no inbound nodes but creates its node 0 on construction.
    nodeCounts.set(name, Math.max(nodes.length, layer.class_name === 'InputLayer' ? 1 : 0));
    return { name, nodes };
  });
  const inbound = new Map<string, string[]>();
  checked.forEach(({ name, nodes }, i) => {
    const nodesField = `${field}.layers[${i}].inbound_nodes`;
    const refs = nodes.flatMap((node: unknown, n) => inboundReferences(node, `${nodesField}[${n}]`));
    inbound.set(
      name,
      refs.map(([source, nodeIndex]) => {
        if (!nodeCounts.has(source)) {
          throw new TopologyError(
            nodesField,
            `layer '${name}' takes input from '${source}', which is not in the model`,
          );
        }
        return `${source}#${nodeIndex}`;
      }),
    );
  });
  // Every reference must name an existing call of its source layer, and the graph must be acyclic.
  for (const [name, refs] of inbound) {
    for (const ref of refs) {
      const [source, index] = ref.split('#');
      if (Number(index) >= (nodeCounts.get(source) ?? 0)) {
        throw new TopologyError(
          `${field}.layers`,
          `layer '${name}' uses call ${index} of '${source}', which has none`,
        );
      }
    }
  }
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string): void => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') {
      throw new TopologyError(`${field}.layers`, `the layer graph has a cycle through '${name}'`);
    }
    state.set(name, 'visiting');
    for (const ref of inbound.get(name) ?? []) visit(ref.split('#')[0]);
    state.set(name, 'done');
  };
  for (const name of inbound.keys()) visit(name);
  for (const key of ['input_layers', 'output_layers']) {
    const ends = config[key];
    if (!Array.isArray(ends) || ends.length === 0)
      throw new TopologyError(`${field}.${key}`, `'${key}' must be a non-empty array`);
    ends.forEach((end: unknown, i) => {
      if (!Array.isArray(end) || typeof end[0] !== 'string' || !nodeCounts.has(end[0])) {
        throw new TopologyError(`${field}.${key}[${i}]`, `'${key}' must name layers of the model`);
      }
    });
  }
}

function checkContainer(topology: JsonObject, field: string, context: Context): void {
  if (context.depth > 8) throw new TopologyError(field, 'models nested more than 8 deep');
  const config = topology.config;
  if (topology.class_name === 'Sequential') {
    // Old files store a Sequential's layers as its whole config.
    const layers = Array.isArray(config) ? config : isObject(config) ? config.layers : undefined;
    if (!Array.isArray(layers))
      throw new TopologyError(`${field}.config.layers`, `'layers' must be an array`);
    if (layers.length > MAX_LAYERS) throw new TopologyError(`${field}.config.layers`, 'too many layers');
    layers.forEach((layer: unknown, i) => {
      checkLayer(layer, `${field}.config.layers[${i}]`, context);
    });
    return;
  }
  if (!isObject(config)) throw new TopologyError(`${field}.config`, `'config' must be an object`);
  checkFunctional(config, `${field}.config`, context);
}

/**
 * Validates a layers-model `modelTopology` (as saved by tfjs or converted from Keras) against itself
 * and against the weight shapes its manifest declares (name -> shape).
 */
export function checkLayersTopology(modelTopology: JsonObject, weightShapes: Map<string, number[]>): void {
  // Keras HDF5 conversions wrap the model as {model_config, training_config}.
  const topology = isObject(modelTopology.model_config) ? modelTopology.model_config : modelTopology;
  const className = topology.class_name;
  if (typeof className !== 'string' || !CONTAINER_CLASSES.has(className)) {
    throw new TopologyError(
      'modelTopology.class_name',
      `a layers model must be a Model, Functional or Sequential, got ${JSON.stringify(className)}`,
    );
  }
  checkContainer(topology, 'modelTopology', { depth: 0, weights: weightShapes });
}

/** Node name of a GraphDef input: `^ctrl` (control edge), `name:1` (second output) -> `name`. */
function graphInputNode(input: string): string {
  const name = input.startsWith('^') ? input.slice(1) : input;
  const colon = name.lastIndexOf(':');
  return colon > 0 && /^\d+$/.test(name.slice(colon + 1)) ? name.slice(0, colon) : name;
}

/**
 * Validates a graph-model `modelTopology` (a GraphDef as JSON): every node named once, every input
 * naming a node of the graph, no cycles (our classifiers run graphs synchronously, so loops and
 * other control flow are out). Function libraries are refused for the same reason.
 */
export function checkGraphTopology(modelTopology: JsonObject): void {
  const nodes = modelTopology.node;
  if (!Array.isArray(nodes) || nodes.length === 0) {
    throw new TopologyError('modelTopology.node', `a graph model needs a non-empty 'node' array`);
  }
  if (nodes.length > 10 * MAX_LAYERS) throw new TopologyError('modelTopology.node', 'too many nodes');
  const library = modelTopology.library;
  if (isObject(library) && Array.isArray(library.function) && library.function.length > 0) {
    throw new TopologyError('modelTopology.library', 'graph functions (control flow) are not supported');
  }
  const inputs = new Map<string, string[]>();
  nodes.forEach((node: unknown, i) => {
    if (!isObject(node) || typeof node.name !== 'string' || typeof node.op !== 'string') {
      throw new TopologyError(`modelTopology.node[${i}]`, `each node needs a string 'name' and 'op'`);
    }
    if (inputs.has(node.name))
      throw new TopologyError(`modelTopology.node[${i}].name`, `duplicate node '${node.name}'`);
    const raw = node.input ?? [];
    if (!Array.isArray(raw) || raw.some((input) => typeof input !== 'string')) {
      throw new TopologyError(`modelTopology.node[${i}].input`, `'input' must be an array of node names`);
    }
    inputs.set(node.name, (raw as string[]).map(graphInputNode));
  });
  for (const [name, sources] of inputs) {
    for (const source of sources) {
      if (!inputs.has(source)) {
        throw new TopologyError(
          'modelTopology.node',
          `node '${name}' takes input from '${source}', which is not in the graph`,
        );
      }
    }
  }
  const state = new Map<string, 'visiting' | 'done'>();
  // Iterative depth-first search: a hostile graph may be deep enough to overflow the call stack.
  for (const root of inputs.keys()) {
    if (state.has(root)) continue;
    const stack: Array<{ name: string; next: number }> = [{ name: root, next: 0 }];
    state.set(root, 'visiting');
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const sources = inputs.get(top.name) ?? [];
      if (top.next >= sources.length) {
        state.set(top.name, 'done');
        stack.pop();
        continue;
      }
      const source = sources[top.next++];
      const seen = state.get(source);
      if (seen === 'visiting') {
        throw new TopologyError(
          'modelTopology.node',
          `the graph has a cycle through '${source}' (control flow is not supported)`,
        );
      }
      if (seen === undefined) {
        state.set(source, 'visiting');
        stack.push({ name: source, next: 0 });
      }
    }
  }
}
