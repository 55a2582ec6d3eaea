import * as tf from '@tensorflow/tfjs';
import { Rng } from '../util/random.js';
import { type AugmentOptions, copyImage, DEFAULT_AUGMENT, drawAugmentation } from './augment.js';
import { DatasetError } from './errors.js';

/** Image height, width, channels. */
export type ImageShape = [number, number, number];

export interface BatchOptions {
  /** Visit the examples in a seeded random order (a pure function of `seed` and `epoch`). */
  shuffle?: boolean;
  /** Seed of the shuffle and the augmentation. Default 0. */
  seed?: number;
  /** Epoch number: each epoch gets its own order and augmentation draws. Default 0. */
  epoch?: number;
  /** `true` for the default training augmentation, or its options. */
  augment?: boolean | AugmentOptions;
  /** Position in the epoch's order to start from (resume after a checkpoint). Default 0. */
  start?: number;
  /** Skip the last, smaller batch. Default false. */
  dropLast?: boolean;
}

export interface Batch {
  /** NHWC float32 in [0,1]; the consumer disposes it. */
  x: tf.Tensor4D;
  /** Labels, -1 for unlabelled examples. */
  y: Int32Array;
  /** Dataset indices of the batch's examples. */
  indices: Uint32Array;
  /** Position in the epoch's order after this batch (checkpoint this to resume). */
  end: number;
}

/**
 * A set of images held as ONE uint8 NHWC buffer (50,000 CIFAR images = 150 MB, not 600 MB of floats);
 * float tensors are made per batch.
 */
export interface Dataset {
  readonly size: number;
  readonly shape: ImageShape;
  /** Class names by label; empty for unlabelled sets. */
  readonly classNames: readonly string[];
  /** Label per example, -1 where unknown. */
  readonly labels: Int32Array;
  /** All pixels, uint8 NHWC, example i at i * H * W * C. */
  readonly images: Uint8Array;
  /** True when no example has a label. */
  readonly unlabelled: boolean;
  batches(batchSize: number, options?: BatchOptions): Generator<Batch>;
  /** The order `batches` visits examples in for these options. */
  order(options?: Pick<BatchOptions, 'shuffle' | 'seed' | 'epoch'>): Uint32Array;
  /** Examples `indices[0], indices[1], ...` as a new data set (pixels copied). */
  subset(indices: ArrayLike<number>): Dataset;
  /** The first `n` examples (or all if fewer). */
  take(n: number): Dataset;
  /** Examples `indices` as one NHWC float32 tensor in [0,1], no augmentation; the caller disposes. */
  tensor(indices?: ArrayLike<number>): tf.Tensor4D;
}

/** Mixes seed, epoch and position into one uint32 so every epoch and batch has independent draws. */
function mixSeed(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const part of parts) {
    h = Math.imul(h ^ (part >>> 0), 0x01000193);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 12;
  }
  return h >>> 0;
}

function resolveAugment(augment: BatchOptions['augment']): Required<AugmentOptions> | undefined {
  if (!augment) return undefined;
  if (augment === true) return DEFAULT_AUGMENT;
  const resolved = { ...DEFAULT_AUGMENT, ...augment };
  for (const key of ['cropPadding', 'cutout'] as const) {
    if (!Number.isInteger(resolved[key]) || resolved[key] < 0) {
      throw new DatasetError(
        'bad-argument',
        `'augment.${key}' must be an integer >= 0, got ${resolved[key]}`,
      );
    }
  }
  return resolved;
}

export interface ArrayDatasetInit {
  images: Uint8Array;
  shape: ImageShape;
  labels?: Int32Array;
  classNames?: readonly string[];
}

/** The one `Dataset` implementation: every loader ends in one of these. */
export class ArrayDataset implements Dataset {
  readonly size: number;
  readonly shape: ImageShape;
  readonly classNames: readonly string[];
  readonly labels: Int32Array;
  readonly images: Uint8Array;
  readonly unlabelled: boolean;

  constructor(init: ArrayDatasetInit) {
    const [height, width, channels] = init.shape;
    for (const [name, value] of [
      ['height', height],
      ['width', width],
      ['channels', channels],
    ] as const) {
      if (!Number.isInteger(value) || value < 1) {
        throw new DatasetError('bad-argument', `'shape' ${name} must be a positive integer, got ${value}`);
      }
    }
    const imageSize = height * width * channels;
    if (init.images.length % imageSize !== 0) {
      throw new DatasetError(
        'bad-argument',
        `'images' holds ${init.images.length} bytes, not a multiple of ${height}x${width}x${channels}`,
      );
    }
    this.size = init.images.length / imageSize;
    this.shape = [height, width, channels];
    this.images = init.images;
    this.labels = init.labels ?? new Int32Array(this.size).fill(-1);
    if (this.labels.length !== this.size) {
      throw new DatasetError(
        'bad-argument',
        `'labels' has ${this.labels.length} entries for ${this.size} images`,
      );
    }
    this.classNames = init.classNames ?? [];
    this.unlabelled = this.labels.every((label) => label < 0);
  }

  private get imageSize(): number {
    return this.shape[0] * this.shape[1] * this.shape[2];
  }

  order(options: Pick<BatchOptions, 'shuffle' | 'seed' | 'epoch'> = {}): Uint32Array {
    if (!options.shuffle) return Uint32Array.from({ length: this.size }, (_, i) => i);
    return new Rng(mixSeed(options.seed ?? 0, options.epoch ?? 0)).permutation(this.size);
  }

  *batches(batchSize: number, options: BatchOptions = {}): Generator<Batch> {
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new DatasetError('bad-argument', `'batchSize' must be a positive integer, got ${batchSize}`);
    }
    const start = options.start ?? 0;
    if (!Number.isInteger(start) || start < 0 || start > this.size) {
      throw new DatasetError('bad-argument', `'start' must be an integer in [0, ${this.size}], got ${start}`);
    }
    const augment = resolveAugment(options.augment);
    const order = this.order(options);
    const seed = options.seed ?? 0;
    const epoch = options.epoch ?? 0;
    for (let position = start; position < this.size; position += batchSize) {
      const end = Math.min(position + batchSize, this.size);
      if (options.dropLast && end - position < batchSize) return;
      const indices = order.slice(position, end);
      // Draws depend on (seed, epoch, position) only, so a resumed run augments exactly as the original.
      const rng = augment ? new Rng(mixSeed(seed, epoch, position, 0x0a06)) : undefined;
      yield { ...this.gather(indices, augment, rng), indices, end };
    }
  }

  private gather(
    indices: Uint32Array,
    augment: Required<AugmentOptions> | undefined,
    rng: Rng | undefined,
  ): { x: tf.Tensor4D; y: Int32Array } {
    const [height, width] = this.shape;
    const imageSize = this.imageSize;
    const pixels = new Float32Array(indices.length * imageSize);
    const y = new Int32Array(indices.length);
    for (let i = 0; i < indices.length; i++) {
      const index = indices[i];
      const draw = augment && rng ? drawAugmentation(rng, height, width, augment) : undefined;
      copyImage(
        this.images,
        index * imageSize,
        pixels,
        i * imageSize,
        this.shape,
        draw,
        augment?.cutout ?? 0,
      );
      y[i] = this.labels[index];
    }
    return { x: tf.tensor4d(pixels, [indices.length, ...this.shape]), y };
  }

  private checkIndices(indices: ArrayLike<number>, argument: string): void {
    for (let i = 0; i < indices.length; i++) {
      const index = indices[i];
      if (!Number.isInteger(index) || index < 0 || index >= this.size) {
        throw new DatasetError(
          'bad-argument',
          `'${argument}[${i}]' must be an integer in [0, ${this.size}), got ${index}`,
        );
      }
    }
  }

  tensor(indices?: ArrayLike<number>): tf.Tensor4D {
    const chosen = indices ?? Uint32Array.from({ length: this.size }, (_, i) => i);
    this.checkIndices(chosen, 'indices');
    return this.gather(Uint32Array.from(chosen), undefined, undefined).x;
  }

  subset(indices: ArrayLike<number>): Dataset {
    this.checkIndices(indices, 'indices');
    const imageSize = this.imageSize;
    const images = new Uint8Array(indices.length * imageSize);
    const labels = new Int32Array(indices.length);
    for (let i = 0; i < indices.length; i++) {
      const from = indices[i] * imageSize;
      images.set(this.images.subarray(from, from + imageSize), i * imageSize);
      labels[i] = this.labels[indices[i]];
    }
    return new ArrayDataset({ images, shape: this.shape, labels, classNames: this.classNames });
  }

  take(n: number): Dataset {
    if (!Number.isInteger(n) || n < 0) {
      throw new DatasetError('bad-argument', `'n' must be a non-negative integer, got ${n}`);
    }
    const count = Math.min(n, this.size);
    // A view, not a copy: take() is how callers cap a big set cheaply.
    return new ArrayDataset({
      images: this.images.subarray(0, count * this.imageSize),
      shape: this.shape,
      labels: this.labels.subarray(0, count),
      classNames: this.classNames,
    });
  }
}

/** Examples per label (index = label), unlabelled examples not counted. */
export function labelCounts(dataset: Dataset): number[] {
  const counts: number[] = new Array(Math.max(dataset.classNames.length, 0)).fill(0);
  for (const label of dataset.labels) {
    if (label < 0) continue;
    while (counts.length <= label) counts.push(0);
    counts[label]++;
  }
  return counts;
}
