import { modelBudget } from './budget.js';
import { type Classifier, TfjsClassifier } from './classifier.js';
import { loadedModelBudget } from './files.js';
import { OnnxClassifier } from './onnx/index.js';

/**
 * FLOPs of one forward pass of one image through a classifier, for request cost estimates: the
 * static budget when the model was loaded from files (layers or graph model) or its ONNX plan's count,
 * else one computed from the built layers model;
 * for a graph model or a plain function classifier, twice its parameters (or, without any, twice a
 * linear map from the input to the classes), a lower bound that still scales with the model.
 */

const cache = new WeakMap<Classifier, number>();

const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function computeFlops(classifier: Classifier): number {
  const loaded = loadedModelBudget(classifier);
  if (loaded) return loaded.flopsPerImage;
  if (classifier instanceof OnnxClassifier) return classifier.summary.flopsPerImage;
  const linear = 2 * product(classifier.card.inputShape) * classifier.numClasses;
  if (!(classifier instanceof TfjsClassifier)) return linear;
  const model = classifier.model;
  if ('layers' in model) {
    const weights = new Map(
      model.weights.map((w): [string, number[]] => [w.originalName, w.shape.map((d) => d ?? 0)]),
    );
    try {
      const topology = model.toJSON(null, false) as Record<string, unknown>;
      return modelBudget(topology, weights, {
        maxParameters: Number.POSITIVE_INFINITY,
        maxActivationElements: Number.POSITIVE_INFINITY,
        maxFlopsPerImage: Number.POSITIVE_INFINITY,
      }).flopsPerImage;
    } catch {
      return Math.max(linear, 2 * model.countParams());
    }
  }
  const parameters = Object.values(model.weights)
    .flat()
    .reduce((sum, tensor) => sum + tensor.size, 0);
  return Math.max(linear, 2 * parameters);
}

/**
 * Records the FLOPs of a classifier measured elsewhere (a model checked in another thread, whose
 * stand-in here holds no weights to count).
 */
export function recordForwardFlops(classifier: Classifier, flops: number): void {
  cache.set(classifier, flops);
}

/** FLOPs of one image's forward pass (cached per classifier). */
export function forwardFlops(classifier: Classifier): number {
  let flops = cache.get(classifier);
  if (flops === undefined) {
    flops = computeFlops(classifier);
    cache.set(classifier, flops);
  }
  return flops;
}

/** A gradient step costs about three forward passes (forward, then input and weight-free backward). */
export const GRADIENT_STEP_FORWARDS = 3;
