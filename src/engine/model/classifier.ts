import * as tf from '@tensorflow/tfjs';

/** What travels with a model: `card.json` beside `model.json`. */
export interface ModelCard {
  name: string;
  classNames: string[];
  /** [height, width, channels] of one NHWC input image in [0,1]. */
  inputShape: [number, number, number];
  /**
   * The input layout of the model as its author wrote it: 'NCHW' for imported PyTorch/ONNX models
   * (the classifier still takes NHWC; the import moved the weights), so reports can say so.
   */
  inputLayout?: 'NHWC' | 'NCHW';
  /** Softmax temperature fitted after training (1 = uncalibrated). */
  temperature: number;
  /** Training objective and budgets, when the model came from our pipeline. */
  objective?: string;
  epsIn?: number;
  epsOut?: number;
  /** Max-confidence threshold below which an input is called out-of-distribution. */
  oodThreshold?: number;
  /** Free-form evaluation table and provenance (metrics, data, epochs, backend, git revision). */
  metrics?: Record<string, number | string | null>;
  [extra: string]: unknown;
}

/**
 * The one model abstraction of the engine: NHWC float32 images in [0,1] in, logits out.
 * Normalisation lives inside the model; `logits` must be differentiable (usable inside `tf.grad`)
 * and run the model in inference mode (no dropout, BatchNorm with moving statistics).
 */
export interface Classifier {
  readonly card: ModelCard;
  readonly numClasses: number;
  logits(x: tf.Tensor4D): tf.Tensor2D;
  dispose(): void;
}

/** Softmax of `logits / temperature` (temperature from the card unless given). */
export function probabilities(
  classifier: Classifier,
  x: tf.Tensor4D,
  options: { temperature?: number } = {},
): tf.Tensor2D {
  const temperature = options.temperature ?? classifier.card.temperature;
  return tf.tidy(() => tf.softmax(tf.div(classifier.logits(x), temperature)) as tf.Tensor2D);
}

/** A classifier from a plain function; used for closed-form test models (linear, constant). */
export function functionClassifier(
  card: Partial<ModelCard> & Pick<ModelCard, 'inputShape'> & { numClasses: number },
  logits: (x: tf.Tensor4D) => tf.Tensor2D,
): Classifier {
  const classNames = card.classNames ?? Array.from({ length: card.numClasses }, (_, i) => `class_${i}`);
  const fullCard: ModelCard = { name: 'function', temperature: 1, ...card, classNames };
  return {
    card: fullCard,
    numClasses: card.numClasses,
    logits,
    dispose: () => {},
  };
}

/** A trained tfjs model of either serialisation format. */
export type TfjsModel = tf.LayersModel | tf.GraphModel;

/** Which part of a model or its card broke the classifier contract (for 422-style answers). */
export type ModelContractField =
  | 'input'
  | 'output'
  | 'card.inputShape'
  | 'card.classNames'
  | 'card.temperature';

/** A model that cannot serve as a `Classifier`: wrong input layout, output rank, or card. */
export class ModelContractError extends Error {
  override readonly name = 'ModelContractError';
  constructor(
    readonly field: ModelContractField,
    message: string,
  ) {
    super(message);
  }
}

/** Static input and output shapes of a model; `null` where a dimension is dynamic or unknown. */
export interface ModelSignature {
  input: Array<number | null> | undefined;
  output: Array<number | null> | undefined;
}

function isLayersModel(model: TfjsModel): model is tf.LayersModel {
  return model instanceof tf.LayersModel;
}

/** Graph models mark unknown dimensions with -1; layers models with null. */
function staticShape(shape: ReadonlyArray<number | null> | undefined): Array<number | null> | undefined {
  return shape?.map((d) => (d === null || d < 0 ? null : d));
}

/** Reads the single input and output shape of a model, rejecting multi-input/multi-output models. */
export function modelSignature(model: TfjsModel): ModelSignature {
  const inputs = model.inputs;
  const outputs = model.outputs;
  if (inputs.length !== 1) {
    throw new ModelContractError(
      'input',
      `a classifier has exactly one input, the model has ${inputs.length}`,
    );
  }
  if (outputs.length !== 1) {
    throw new ModelContractError(
      'output',
      `a classifier has exactly one output, the model has ${outputs.length}`,
    );
  }
  return { input: staticShape(inputs[0].shape), output: staticShape(outputs[0].shape) };
}

const showShape = (shape: ReadonlyArray<number | null>) => `[${shape.map((d) => d ?? '?').join(', ')}]`;

/**
 * The [H, W, C] a model takes, from its static input shape and the card's claim, which must agree.
 * NHWC only: a channels-first input ([n, 3, 32, 32]) is refused, since our attacks and images are NHWC.
 */
function resolveInputShape(
  input: Array<number | null> | undefined,
  claimed: [number, number, number] | undefined,
): [number, number, number] {
  if (input !== undefined && input.length !== 4) {
    throw new ModelContractError(
      'input',
      `the model input must be rank 4 NHWC [n, H, W, C], got rank ${input.length} ${showShape(input)}`,
    );
  }
  const hwc = input?.slice(1);
  if (claimed) {
    if (hwc?.some((d, i) => d !== null && d !== claimed[i])) {
      const channelsFirst = hwc[0] === claimed[2] && hwc[2] !== claimed[2];
      throw new ModelContractError(
        'input',
        `the model input ${showShape(input ?? [])} does not match the card's NHWC inputShape [${claimed}]` +
          (channelsFirst ? ' (it looks channels-first, NCHW; export the model as NHWC)' : ''),
      );
    }
    return claimed;
  }
  if (!hwc || hwc.some((d) => d === null)) {
    throw new ModelContractError(
      'card.inputShape',
      `the model input ${showShape(input ?? [])} has dynamic dimensions; the card must give inputShape [H, W, C]`,
    );
  }
  const [h, w, c] = hwc as [number, number, number];
  // [n, 3, 32, 32] read as NHWC would be 3 rows of 32-channel pixels: almost surely NCHW.
  if ((h === 1 || h === 3) && c > 4 && w === c) {
    throw new ModelContractError(
      'input',
      `the model input ${showShape(input ?? [])} looks channels-first (NCHW); a classifier takes NHWC [n, H, W, C]`,
    );
  }
  return [h, w, c];
}

function checkCard(card: ModelCard, numClasses: number): void {
  const { classNames, temperature, inputShape } = card;
  if (!Array.isArray(classNames) || classNames.some((c) => typeof c !== 'string')) {
    throw new ModelContractError('card.classNames', `'classNames' must be an array of strings`);
  }
  if (classNames.length !== numClasses) {
    throw new ModelContractError(
      'card.classNames',
      `'classNames' has ${classNames.length} entries but the model outputs ${numClasses} logits`,
    );
  }
  if (typeof temperature !== 'number' || !(Number.isFinite(temperature) && temperature > 0)) {
    throw new ModelContractError(
      'card.temperature',
      `'temperature' must be a finite number > 0, got ${temperature}`,
    );
  }
  if (
    !Array.isArray(inputShape) ||
    inputShape.length !== 3 ||
    inputShape.some((d) => !Number.isInteger(d) || d < 1)
  ) {
    throw new ModelContractError(
      'card.inputShape',
      `'inputShape' must be [H, W, C] of positive integers, got ${JSON.stringify(inputShape)}`,
    );
  }
}

/**
 * Throws unless `x` is a float32 NHWC batch of `inputShape` images; the message names the argument,
 * e.g. `'x' must be rank 4 NHWC [n, H, W, C] matching the model input [n, 32, 32, 3], got [32, 32, 3]`.
 */
export function assertImageBatch(x: tf.Tensor, inputShape: readonly number[], argument = 'x'): void {
  const expected = `[n, ${inputShape.join(', ')}]`;
  if (!(x instanceof tf.Tensor)) throw new TypeError(`'${argument}' must be a tf.Tensor`);
  if (x.rank !== 4 || x.shape.slice(1).some((d, i) => d !== inputShape[i])) {
    throw new Error(
      `'${argument}' must be rank 4 NHWC [n, H, W, C] matching the model input ${expected}, got [${x.shape}]`,
    );
  }
  if (x.dtype !== 'float32') throw new Error(`'${argument}' must be float32, got ${x.dtype}`);
}

/**
 * A `Classifier` over a tfjs LayersModel or GraphModel. `logits` runs inference mode (BatchNorm
 * moving statistics, no dropout) through `apply`/`execute`, not `predict`, so it is differentiable
 * and can sit inside `tf.grad`. The classifier owns the model: `dispose()` frees its weights.
 */
export class TfjsClassifier implements Classifier {
  readonly card: ModelCard;
  readonly numClasses: number;
  readonly format: 'layers-model' | 'graph-model';
  readonly model: TfjsModel;

  /**
   * Checks the model against the classifier contract (one NHWC input, rank-2 output) and completes
   * the card: input shape from the model when the card has none, class names `class_i`, temperature 1.
   * Throws `ModelContractError` naming the field at fault.
   */
  constructor(model: TfjsModel, card: Partial<ModelCard> = {}) {
    this.model = model;
    this.format = isLayersModel(model) ? 'layers-model' : 'graph-model';
    const signature = modelSignature(model);
    const inputShape = resolveInputShape(signature.input, card.inputShape);
    const numClasses = this.outputSize(signature.output, inputShape);
    this.numClasses = numClasses;
    const classNames = card.classNames ?? Array.from({ length: numClasses }, (_, i) => `class_${i}`);
    const name = card.name ?? (isLayersModel(model) ? model.name : 'graph_model');
    this.card = { ...card, name, classNames, inputShape, temperature: card.temperature ?? 1 };
    checkCard(this.card, numClasses);
  }

  /** Output width K of a [n, K] output; probes one zero image when the static shape is unknown. */
  private outputSize(output: Array<number | null> | undefined, inputShape: [number, number, number]): number {
    let shape: ReadonlyArray<number | null> | undefined = output;
    if (!shape || shape.slice(1).some((d) => d === null)) {
      shape = tf.tidy(() => this.run(tf.zeros([1, ...inputShape])).shape);
    }
    if (shape.length !== 2 || shape[1] === null || shape[1] < 1) {
      throw new ModelContractError(
        'output',
        `the model output must be rank 2 logits [n, numClasses], got ${showShape(shape)}`,
      );
    }
    return shape[1];
  }

  private run(x: tf.Tensor4D): tf.Tensor {
    const out = isLayersModel(this.model) ? this.model.apply(x, { training: false }) : this.model.execute(x);
    if (Array.isArray(out)) {
      throw new ModelContractError(
        'output',
        `a classifier has exactly one output, the model returned ${out.length}`,
      );
    }
    return out as tf.Tensor;
  }

  logits(x: tf.Tensor4D): tf.Tensor2D {
    assertImageBatch(x, this.card.inputShape);
    return tf.tidy(() => {
      const out = this.run(x);
      if (out.rank !== 2 || out.shape[1] !== this.numClasses) {
        throw new ModelContractError(
          'output',
          `the model returned ${showShape(out.shape)}, expected logits [${x.shape[0]}, ${this.numClasses}]`,
        );
      }
      return tf.cast(out, 'float32') as tf.Tensor2D;
    });
  }

  /** Softmax of logits / temperature (the card's unless given). */
  probs(x: tf.Tensor4D, options: { temperature?: number } = {}): tf.Tensor2D {
    return probabilities(this, x, options);
  }

  dispose(): void {
    this.model.dispose();
  }
}
