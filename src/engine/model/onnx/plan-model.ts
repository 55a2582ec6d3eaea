import { checkFlops } from './cost.js';
import { formatShape } from './dims.js';
import { OnnxFormatError, OnnxLimitError, OnnxUnsupportedError } from './errors.js';
import {
  type Activation,
  nhwc,
  type OnnxLimits,
  type OnnxPlan,
  type OpSpec,
  Planner,
  plain,
  type Step,
  type Value,
} from './plan.js';
import { DataType, decodeTensor, type OnnxModel, tensorShape } from './proto.js';

/**
 * Planning a whole model: the allow-list and limit checks that run before anything is decoded,
 * then every node in order (plan.ts holds the planner and the step types).
 */

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
      planner.define(name, {
        kind: 'constant',
        tensor: decodeTensor(tensor, `initializer '${name}'`, model.external),
      });
  }
  for (const node of model.nodes) {
    const at = { node: node.name, opType: node.opType, opset: model.opset };
    const spec = ops[node.opType];
    const inputs = node.inputs.map((name) => (name ? planner.values.get(name) : undefined));
    const allConstant = inputs.every((value) => value === undefined || value.kind === 'constant');
    if (spec.foldOnly) {
      const computed = inputs.findIndex((value) => value?.kind === 'activation');
      // Shape and Size read only the static shape of an activation: they fold too.
      if (computed >= 0 && node.opType !== 'Shape' && node.opType !== 'Size') {
        throw new OnnxUnsupportedError(
          `${node.opType} is only supported on constants and shapes (folded at load); input ${computed} is computed at run time`,
          at,
        );
      }
    }
    try {
      if (spec.fold && allConstant && inputs.some((value) => value !== undefined)) {
        // Every input known at load: the outputs are constants too.
        for (let i = 0; i < node.inputs.length; i++) planner.input(node, i);
        const results = spec.fold(
          planner,
          node,
          at,
          inputs.map((value) => (value?.kind === 'constant' ? value.tensor : undefined)),
        );
        results.forEach((tensor, i) => {
          if (node.outputs[i]) planner.define(node.outputs[i], { kind: 'constant', tensor });
        });
      } else {
        spec.handler(planner, node, at);
      }
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
  const input = planner.activation([-1, c, h, w], nhwc(), inputName);
  planner.define(inputName, input);
  planNodes(planner, ops);
  const outputName = model.outputs[0].name;
  const result = planner.values.get(outputName);
  if (!result) throw new OnnxFormatError(`the graph output '${outputName}' is never computed`);
  if (
    result.kind !== 'activation' ||
    result.shape.length !== 2 ||
    result.shape[0] !== -1 ||
    result.shape[1] < 1
  ) {
    throw new OnnxUnsupportedError(
      `the output '${outputName}' must be logits [n, numClasses] computed from the input, got ${result.kind === 'activation' ? formatShape(result.shape) : 'a constant'}`,
    );
  }
  const output = planner.toLayout(result, 'plain');
  const steps = liveSteps(planner.steps, output);
  return {
    input,
    output,
    steps,
    inputShape,
    numClasses: output.shape[1],
    inputName,
    outputName,
    opsUsed,
    parameterCount,
    flopsPerImage: checkFlops(steps, limits.maxFlopsPerImage),
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
    input = planner.activation(shape, shape.length === 4 ? nhwc() : plain(shape.length), info.name);
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
