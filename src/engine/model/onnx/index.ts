import * as tf from '@tensorflow/tfjs';
import { assertImageBatch, type Classifier, type ModelCard, probabilities } from '../classifier.js';
import { OnnxImportError, OnnxLimitError, OnnxTrialError, OnnxUnsupportedError } from './errors.js';
import { CONV_OPS } from './ops-conv.js';
import { FOLD_OPS } from './ops-fold.js';
import { MATMUL_OPS } from './ops-matmul.js';
import { SHAPE_OPS } from './ops-shape.js';
import { TENSOR_OPS } from './ops-tensor.js';
import { DEFAULT_ONNX_LIMITS, type OnnxLimits, type OnnxPlan, type OpSpec, type Step } from './plan.js';
import { type GraphPlan, planGraph, planModel } from './plan-model.js';
import { decodeModel, type ExternalData, externalLocations } from './proto.js';
import { computeStatic, materializeWeights, runPlan } from './runtime.js';

export {
  OnnxExternalDataError,
  OnnxFormatError,
  OnnxImportError,
  OnnxLimitError,
  OnnxTrialError,
  OnnxUnsupportedError,
} from './errors.js';
export { DEFAULT_ONNX_LIMITS, type OnnxLimits } from './plan.js';
export type { ExternalData } from './proto.js';

/**
 * ONNX import (PyTorch's `torch.onnx.export`, opsets 11-18): an ONNX file becomes a `Classifier`
 * built from tfjs ops, so attacks differentiate through it and the project's kernels run it.
 *
 * @example
 * const classifier = loadOnnxClassifier(await readFile('model.onnx'), { card: { classNames } });
 * const logits = classifier.logits(images); // NHWC [n, 32, 32, 3] in [0, 1]
 */

/** Every op the importer accepts; the fold-only ones are computed at load, never run. */
export const ONNX_OPS: Readonly<Record<string, OpSpec>> = {
  ...CONV_OPS,
  ...TENSOR_OPS,
  ...SHAPE_OPS,
  ...MATMUL_OPS,
  ...FOLD_OPS,
};

/** Op types that may appear in a model (for documentation and `models inspect`). */
export const SUPPORTED_ONNX_OPS: readonly string[] = Object.keys(ONNX_OPS).sort();

/** What `models inspect` shows of an ONNX model; the counts and versions are its plan's. */
export interface OnnxSummary
  extends Pick<
    OnnxPlan,
    'opsUsed' | 'parameterCount' | 'flopsPerImage' | 'opset' | 'irVersion' | 'producer'
  > {
  /** The model's input as ONNX declares it: NCHW, batch written 'n'. */
  input: { name: string; shape: Array<number | 'n'>; layout: 'NCHW' };
  output: { name: string; shape: Array<number | 'n'> };
  /** Planned tfjs operations per call, after folding and fusion. */
  runtimeSteps: number;
  warnings: string[];
}

export interface LoadOnnxOptions {
  /** Card fields (class names, temperature, name...); the input shape comes from the model. */
  card?: Partial<ModelCard>;
  limits?: Partial<OnnxLimits>;
  /**
   * The files of ONNX external data (weights beside model.onnx), by location; only for local model
   * files: without them a model whose weights are external is refused.
   */
  externalData?: ExternalData;
}

/** Opsets of the default domain a classifier may import (the range the op handlers follow). */
export const SUPPORTED_OPSETS = { min: 11, max: 18 } as const;

function plan(bytes: Uint8Array, limits: Partial<OnnxLimits> = {}, external?: ExternalData): OnnxPlan {
  const full = { ...DEFAULT_ONNX_LIMITS, ...limits };
  const externalBytes = [...(external?.values() ?? [])].reduce((sum, file) => sum + file.byteLength, 0);
  const model = decodeModel(bytes, full.maxBytes - externalBytes, full.maxNodes);
  if (model.opset < SUPPORTED_OPSETS.min || model.opset > SUPPORTED_OPSETS.max) {
    throw new OnnxUnsupportedError(
      `the model imports opset ${model.opset} of the default operator set; supported: ${SUPPORTED_OPSETS.min}-${SUPPORTED_OPSETS.max} (re-export with torch.onnx.export(..., opset_version=17))`,
    );
  }
  if (externalBytes > 0 && bytes.byteLength + externalBytes > full.maxBytes) {
    throw new OnnxLimitError(
      'bytes',
      bytes.byteLength + externalBytes,
      full.maxBytes,
      'the ONNX file and its external data',
    );
  }
  return planModel({ ...model, external }, ONNX_OPS, full);
}

/**
 * The external data files an ONNX model names (relative to its directory), so that a loader of
 * local files can read them; empty when every weight is inside the file. Throws `OnnxFormatError`
 * for an unreadable file, `OnnxUnsupportedError` for a location that leaves the directory.
 */
export function onnxExternalDataFiles(bytes: Uint8Array, limits: Partial<OnnxLimits> = {}): string[] {
  const full = { ...DEFAULT_ONNX_LIMITS, ...limits };
  return externalLocations(decodeModel(bytes, full.maxBytes, full.maxNodes));
}

/** Releases the weight arrays a plan holds once they are tensors (large models: half the memory). */
function releaseWeightArrays(steps: readonly Step[]): void {
  for (const step of steps) {
    step.weights = step.weights.map((w) => ({ ...w, values: new Float32Array(0) }));
  }
}

function summarize(p: OnnxPlan): OnnxSummary {
  const [h, w, c] = p.inputShape;
  return {
    input: { name: p.inputName, shape: ['n', c, h, w], layout: 'NCHW' },
    output: { name: p.outputName, shape: ['n', p.numClasses] },
    opsUsed: p.opsUsed,
    parameterCount: p.parameterCount,
    flopsPerImage: p.flopsPerImage,
    opset: p.opset,
    irVersion: p.irVersion,
    producer: p.producer,
    runtimeSteps: p.steps.length,
    warnings: p.warnings,
  };
}

/** Reads and checks an ONNX file without making any tensor: what `ratio models inspect` prints. */
export function inspectOnnx(
  bytes: Uint8Array,
  limits?: Partial<OnnxLimits>,
  externalData?: ExternalData,
): OnnxSummary {
  return summarize(plan(bytes, limits, externalData));
}

/**
 * A `Classifier` over an imported ONNX model. It takes NHWC images like every classifier (the
 * NCHW -> NHWC change happened to the weights at load); the card records `inputLayout: 'NCHW'`,
 * the layout of the user's model, so reports can speak in the user's terms.
 */
export class OnnxClassifier implements Classifier {
  readonly card: ModelCard;
  readonly numClasses: number;
  readonly format = 'onnx' as const;
  readonly summary: OnnxSummary;
  private readonly plan: OnnxPlan;
  private weights: tf.Tensor[][];
  private statics: Map<number, tf.Tensor>;

  constructor(
    p: OnnxPlan,
    weights: tf.Tensor[][],
    statics: Map<number, tf.Tensor>,
    card: Partial<ModelCard>,
  ) {
    this.plan = p;
    this.weights = weights;
    this.statics = statics;
    this.numClasses = p.numClasses;
    this.summary = summarize(p);
    const classNames = card.classNames ?? Array.from({ length: p.numClasses }, (_, i) => `class_${i}`);
    if (classNames.length !== p.numClasses) {
      throw new OnnxUnsupportedError(
        `the card has ${classNames.length} class names but the model outputs ${p.numClasses} logits`,
      );
    }
    this.card = {
      name: 'onnx_model',
      temperature: 1,
      ...card,
      classNames,
      inputShape: p.inputShape,
      inputLayout: 'NCHW',
      format: 'onnx',
    };
  }

  logits(x: tf.Tensor4D): tf.Tensor2D {
    assertImageBatch(x, this.card.inputShape);
    return tf.tidy(
      () =>
        runPlan(
          this.plan.steps,
          this.weights,
          this.statics,
          this.plan.input.id,
          x,
          this.plan.output.id,
        ) as tf.Tensor2D,
    );
  }

  probs(x: tf.Tensor4D, options: { temperature?: number } = {}): tf.Tensor2D {
    return probabilities(this, x, options);
  }

  dispose(): void {
    tf.dispose([...this.weights.flat(), ...this.statics.values()]);
    this.weights = [];
    this.statics = new Map();
  }
}

/**
 * Loads an ONNX model as a classifier. Every check (format, allow-list, attributes, limits, shapes)
 * runs before the first tensor is made; then the weights become tensors and one image is run
 * through the model, and a failure there frees them again. Throws the `OnnxImportError` kinds.
 */
export function loadOnnxClassifier(bytes: Uint8Array, options: LoadOnnxOptions = {}): OnnxClassifier {
  const p = plan(bytes, options.limits, options.externalData);
  const weights = materializeWeights(p.steps);
  let statics = new Map<number, tf.Tensor>();
  try {
    statics = computeStatic(p.steps, weights);
    releaseWeightArrays(p.steps);
    const classifier = new OnnxClassifier(p, weights, statics, options.card ?? {});
    const finite = tf.tidy(
      () =>
        classifier
          .logits(tf.zeros([1, ...p.inputShape]) as tf.Tensor4D)
          .isFinite()
          .all()
          .dataSync()[0] === 1,
    );
    if (!finite) {
      throw new OnnxTrialError(
        'a trial forward pass of one zero image returns non-finite logits (NaN or infinity): check the weights',
      );
    }
    return classifier;
  } catch (error) {
    tf.dispose([...weights.flat(), ...statics.values()]);
    if (error instanceof OnnxImportError) throw error;
    throw new OnnxUnsupportedError(`the planned model does not run: ${(error as Error).message}`);
  }
}

/**
 * Any single-input graph of allow-listed ops, run in ONNX's own layout (NCHW in, logical shapes
 * out): the general form behind the classifier, used by the ONNX backend node tests. Dimension 0
 * of the input is the batch.
 */
export class OnnxGraph {
  private weights: tf.Tensor[][];
  private statics: Map<number, tf.Tensor>;
  private constructor(
    private readonly plan: GraphPlan,
    weights: tf.Tensor[][],
  ) {
    this.weights = weights;
    try {
      this.statics = computeStatic(plan.steps, weights);
    } catch (error) {
      tf.dispose(weights.flat());
      throw error;
    }
  }

  static load(bytes: Uint8Array, limits: Partial<OnnxLimits> = {}): OnnxGraph {
    const full = { ...DEFAULT_ONNX_LIMITS, ...limits };
    const p = planGraph(decodeModel(bytes, full.maxBytes, full.maxNodes), ONNX_OPS, full);
    return new OnnxGraph(p, materializeWeights(p.steps));
  }

  /** The output for `x` (omitted when the graph has no input: every value was folded at load). */
  run(x?: tf.Tensor): tf.Tensor {
    const { input, output, steps } = this.plan;
    if (output.kind === 'constant') {
      // A folded shape may hold the batch size, known now.
      const t = output.tensor;
      const n = x?.shape[0] ?? 0;
      const values = Float32Array.from(t.values, (v, i) => v + (t.batch?.[i] ?? 0) * n);
      return tf.tensor(values, t.shape, 'float32');
    }
    if (output.isStatic) {
      return tf.tidy(() => runPlan(steps, this.weights, this.statics, -1, tf.zeros([1]), output.id).clone());
    }
    if (!input || !x) throw new Error("'x' is required: the graph has an input");
    if (x.rank !== input.shape.length || x.shape.slice(1).some((d, i) => d !== input.shape[i + 1])) {
      throw new Error(`'x' must be [n, ${input.shape.slice(1)}], got [${x.shape}]`);
    }
    return tf.tidy(() => {
      const physical = input.shape.length === 4 ? tf.transpose(x, [0, 2, 3, 1]) : x;
      return runPlan(steps, this.weights, this.statics, input.id, physical, output.id);
    });
  }

  dispose(): void {
    tf.dispose([...this.weights.flat(), ...this.statics.values()]);
    this.weights = [];
    this.statics = new Map();
  }
}
