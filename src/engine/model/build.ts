import * as tf from '@tensorflow/tfjs';
import type { Classifier } from './classifier.js';

/**
 * Builds tfjs models from checked artifacts so that a failure frees whatever was made. tfjs's own
 * loaders allocate every weight and then may throw (a shape or name mismatch, a bad config deep in
 * the graph), and nothing disposes what they made: each failed upload leaked its weights for good.
 */

type JsonObject = Record<string, unknown>;

const isObject = (value: unknown): value is JsonObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * The topology with every `*_initializer` replaced by zeros: the values are overwritten by the
 * manifest's weights right after, so running glorot or orthogonal initializers would be wasted work.
 */
function withZeroInitializers(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withZeroInitializers);
  if (!isObject(value)) return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, inner]) => [
      key,
      key.endsWith('_initializer') && isObject(inner)
        ? { class_name: 'Zeros', config: {} }
        : withZeroInitializers(inner),
    ]),
  );
}

/** Layers-model builds run one at a time, so the variables one build registers are told apart. */
let buildChain: Promise<void> = Promise.resolve();

async function oneAtATime<T>(task: () => Promise<T>): Promise<T> {
  const previous = buildChain;
  let release = () => {};
  buildChain = new Promise<void>((resolve) => {
    release = resolve;
  });
  await previous;
  try {
    return await task();
  } finally {
    release();
  }
}

function registeredVariableNames(): Set<string> {
  return new Set(Object.keys(tf.engine().state.registeredVariables));
}

/** Disposes every variable registered since `before` (what a failed build made). */
function disposeVariablesSince(before: ReadonlySet<string>): void {
  for (const [name, variable] of Object.entries(tf.engine().state.registeredVariables)) {
    if (!before.has(name) && !variable.isDisposed) variable.dispose();
  }
}

export interface CheckedArtifacts {
  modelTopology: JsonObject;
  weightSpecs: tf.io.WeightsManifestEntry[];
  weightData: ArrayBuffer;
}

/**
 * A LayersModel from a topology and its weights. The topology is built with zero initializers, then
 * the decoded weights are assigned inside `tf.tidy` (the decoded copies are freed either way); on any
 * throw the half-built model's variables are disposed before the error propagates.
 */
export async function buildLayersModel(artifacts: CheckedArtifacts): Promise<tf.LayersModel> {
  return oneAtATime(async () => {
    const before = registeredVariableNames();
    let model: tf.LayersModel | undefined;
    try {
      model = await tf.loadLayersModel(
        tf.io.fromMemory({
          modelTopology: withZeroInitializers(artifacts.modelTopology) as JsonObject,
          format: 'layers-model',
        }),
      );
      const built = model;
      tf.tidy(() => {
        built.loadWeights(tf.io.decodeWeights(artifacts.weightData, artifacts.weightSpecs), true);
      });
      return model;
    } catch (error) {
      try {
        model?.dispose();
      } catch {
        // A half-built model may fail to dispose; its variables are freed below either way.
      }
      disposeVariablesSince(before);
      throw error;
    }
  });
}

/**
 * A GraphModel from its artifacts. Decoding and graph compilation are synchronous, so they run in one
 * `tf.tidy` that keeps only the weights of a model that compiled: a throw frees every decoded weight.
 */
export function buildGraphModel(artifacts: tf.io.ModelArtifacts): tf.GraphModel {
  const model = new tf.GraphModel(tf.io.fromMemory(artifacts));
  tf.tidy(() => {
    model.loadSync(artifacts);
    return Object.values(model.weights).flat();
  });
  return model;
}

export interface TrialLimits {
  /** Longest forward pass of one image, ms. */
  timeMs: number;
  /** Most bytes the forward pass of one image may hold at its peak. */
  peakBytes: number;
}

export const DEFAULT_TRIAL_LIMITS: TrialLimits = { timeMs: 10_000, peakBytes: 1024 ** 3 };

/** A trial forward pass that failed or broke its budget; `reason` says which. */
export class TrialForwardError extends Error {
  override readonly name = 'TrialForwardError';
}

export interface TrialResult {
  ms: number;
  peakBytes: number;
}

/**
 * Runs one zero image through `classifier` under a time and memory budget and checks the logits are
 * finite. The static budget (budget.ts) already bounds the cost; this catches what it cannot
 * see (a backend that fails, custom kernels). Leaves the tensor count where it found it.
 */
export async function trialForward(
  classifier: Classifier,
  limits: TrialLimits = DEFAULT_TRIAL_LIMITS,
): Promise<TrialResult> {
  const startBytes = tf.memory().numBytes;
  const started = performance.now();
  let finite = true;
  let info: Awaited<ReturnType<typeof tf.profile>>;
  try {
    info = await tf.profile(() => {
      tf.tidy(() => {
        const logits = classifier.logits(tf.zeros([1, ...classifier.card.inputShape]) as tf.Tensor4D);
        finite = logits.isFinite().all().dataSync()[0] === 1;
      });
    });
  } catch (error) {
    throw new TrialForwardError(`a trial forward pass of one image fails: ${(error as Error).message}`);
  }
  const ms = performance.now() - started;
  if (!finite)
    throw new TrialForwardError('a trial forward pass of one zero image returns non-finite logits');
  if (ms > limits.timeMs) {
    throw new TrialForwardError(
      `a trial forward pass of one image took ${Math.round(ms)} ms, over the limit of ${limits.timeMs} ms`,
    );
  }
  // tfjs reports the peak of all live tensor bytes; what the pass itself added is over the start.
  const peakBytes = Math.max(0, info.peakBytes - startBytes);
  if (peakBytes > limits.peakBytes) {
    throw new TrialForwardError(
      `a trial forward pass of one image peaks at ${peakBytes} bytes, over the limit of ${limits.peakBytes}`,
    );
  }
  return { ms, peakBytes };
}
