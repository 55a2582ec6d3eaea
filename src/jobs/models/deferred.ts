import type * as tf from '@tensorflow/tfjs';
import type { ModelFiles } from '../../data/model-dir.js';
import type { Classifier, ModelCard } from '../../engine/model/classifier.js';
import { forwardFlops, recordForwardFlops } from '../../engine/model/cost.js';
import { loadClassifierFromFiles } from '../../engine/model/files.js';
import { CHECKED_MODEL_LIMITS, loadOptions } from './limits.js';

/**
 * A model that was loaded, checked and trial-run elsewhere (a worker thread, or before a restart)
 * and is held here as its files and what the check found: its card, classes and cost. Nothing is
 * loaded on this thread until `load()`; an audit that runs in worker processes never needs to, so
 * a large upload costs the event loop nothing.
 */

/** What loading a model found out, in plain data (it crosses threads and is stored in input.json). */
export interface ModelFacts {
  card: ModelCard;
  numClasses: number;
  /** FLOPs of one image's forward pass (request-cost estimates). */
  flopsPerImage: number;
}

/** The facts of a loaded classifier. */
export function modelFacts(classifier: Classifier): ModelFacts {
  return {
    card: structuredClone(classifier.card),
    numClasses: classifier.numClasses,
    flopsPerImage: forwardFlops(classifier),
  };
}

/** The model was not loaded on this thread (`load()` first). */
export class ModelNotLoadedError extends Error {
  override readonly name = 'ModelNotLoadedError';
}

export class DeferredClassifier implements Classifier {
  readonly card: ModelCard;
  readonly numClasses: number;
  private inner: Classifier | undefined;
  private loading: Promise<Classifier> | undefined;

  constructor(
    readonly files: ModelFiles,
    readonly facts: ModelFacts,
  ) {
    this.card = facts.card;
    this.numClasses = facts.numClasses;
    recordForwardFlops(this, facts.flopsPerImage);
  }

  get loaded(): boolean {
    return this.inner !== undefined;
  }

  /** Loads the model on this thread (once; it was checked and trial-run where the facts came from). */
  async load(): Promise<void> {
    this.loading ??= loadClassifierFromFiles(this.files, {
      ...loadOptions(CHECKED_MODEL_LIMITS, 'local'),
      card: this.card,
      trial: false,
    });
    this.inner = await this.loading;
  }

  logits(x: tf.Tensor4D): tf.Tensor2D {
    if (!this.inner) throw new ModelNotLoadedError(`the model '${this.card.name}' is not loaded here`);
    return this.inner.logits(x);
  }

  dispose(): void {
    const { inner, loading } = this;
    this.inner = undefined;
    this.loading = undefined;
    if (inner) inner.dispose();
    // A load still under way frees its model when it lands.
    else
      void loading?.then(
        (classifier) => classifier.dispose(),
        () => {},
      );
  }
}
