import * as tf from '@tensorflow/tfjs';

/** What travels with a model: `card.json` beside `model.json`. */
export interface ModelCard {
  name: string;
  classNames: string[];
  /** [height, width, channels] of one NHWC input image in [0,1]. */
  inputShape: [number, number, number];
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
