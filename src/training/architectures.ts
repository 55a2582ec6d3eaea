import * as tf from '@tensorflow/tfjs';
import { batchNormalization } from '../engine/model/batch-norm-layer.js';
import { conv2d } from '../engine/model/conv2d-layer.js';
import { CIFAR10_MEAN, CIFAR10_STD, InputNormalization } from '../engine/model/normalization-layer.js';

/**
 * The model zoo: every model is a tf.layers functional LayersModel that takes NHWC images in [0,1]
 * (per-channel normalisation is its first layer) and returns logits [n, numClasses].
 * Layer names are explicit so that checkpoints and saved weights have stable, readable names.
 */
export interface ArchitectureOptions {
  numClasses: number;
  /** [height, width, channels] of one input image. */
  inputShape: [number, number, number];
  /** Channel multiplier (1 = the reference widths); lets training pick a cheaper network. */
  width?: number;
  /** Per-channel statistics; default CIFAR-10's for 3 channels, identity (0, 1) otherwise. */
  normalization?: { mean: number[]; std: number[] };
  /** Model name (default: the architecture's). */
  name?: string;
}

export interface WideResNetOptions extends Omit<ArchitectureOptions, 'width'> {
  /** Total depth, 6n + 4 (e.g. 16, 28, 34, 40). */
  depth: number;
  /** Widening factor k: stage widths 16k, 32k, 64k. */
  widen: number;
}

/** PyTorch's BatchNorm defaults (momentum 0.1, eps 1e-5), as in the reference implementations. */
const BATCH_NORM = { momentum: 0.9, epsilon: 1e-5 } as const;

function checkOptions(options: ArchitectureOptions): void {
  const { numClasses, inputShape, width = 1 } = options;
  if (!Number.isInteger(numClasses) || numClasses < 1) {
    throw new Error(`'numClasses' must be a positive integer, got ${numClasses}`);
  }
  if (
    !Array.isArray(inputShape) ||
    inputShape.length !== 3 ||
    inputShape.some((d) => !Number.isInteger(d) || d < 1)
  ) {
    throw new Error(
      `'inputShape' must be [height, width, channels] of positive integers, got [${inputShape}]`,
    );
  }
  if (!(Number.isFinite(width) && width > 0)) throw new Error(`'width' must be > 0, got ${width}`);
}

/** Channels of a layer at reference width `base` under multiplier `width` (at least 1). */
function scaled(base: number, width: number): number {
  return Math.max(1, Math.round(base * width));
}

/** The input placeholder followed by the in-model normalisation layer. */
function normalizedInput(options: ArchitectureOptions): { input: tf.SymbolicTensor; x: tf.SymbolicTensor } {
  const channels = options.inputShape[2];
  const stats = options.normalization ?? {
    mean: channels === 3 ? [...CIFAR10_MEAN] : new Array<number>(channels).fill(0),
    std: channels === 3 ? [...CIFAR10_STD] : new Array<number>(channels).fill(1),
  };
  const input = tf.input({ shape: options.inputShape, name: 'image' });
  const x = new InputNormalization({ ...stats, name: 'normalize' }).apply(input) as tf.SymbolicTensor;
  return { input, x };
}

function conv(
  x: tf.SymbolicTensor,
  filters: number,
  name: string,
  options: { kernelSize?: number; strides?: number; useBias?: boolean; activation?: 'relu' } = {},
): tf.SymbolicTensor {
  return conv2d({
    filters,
    kernelSize: options.kernelSize ?? 3,
    strides: options.strides ?? 1,
    padding: 'same',
    useBias: options.useBias ?? false,
    activation: options.activation,
    kernelInitializer: 'heNormal',
    name,
  }).apply(x) as tf.SymbolicTensor;
}

function batchNorm(x: tf.SymbolicTensor, name: string): tf.SymbolicTensor {
  return batchNormalization({ ...BATCH_NORM, name }).apply(x) as tf.SymbolicTensor;
}

function relu(x: tf.SymbolicTensor, name: string): tf.SymbolicTensor {
  return tf.layers.reLU({ name }).apply(x) as tf.SymbolicTensor;
}

function classifierHead(x: tf.SymbolicTensor, numClasses: number): tf.SymbolicTensor {
  const pooled = tf.layers.globalAveragePooling2d({ name: 'pool' }).apply(x) as tf.SymbolicTensor;
  return tf.layers.dense({ units: numClasses, name: 'logits' }).apply(pooled) as tf.SymbolicTensor;
}

/**
 * The reference CNN: conv 32-32, max-pool, conv 64-64, max-pool, conv 128, global average pool,
 * dense; 3x3 kernels with bias and ReLU. 140,714 parameters for CIFAR-10 at width 1.
 */
export function smallCnn(options: ArchitectureOptions): tf.LayersModel {
  checkOptions(options);
  const width = options.width ?? 1;
  const { input, x: normalized } = normalizedInput(options);
  let x = normalized;
  const plan: Array<number | 'pool'> = [32, 32, 'pool', 64, 64, 'pool', 128];
  let convIndex = 0;
  let poolIndex = 0;
  for (const step of plan) {
    if (step === 'pool') {
      poolIndex += 1;
      x = tf.layers
        .maxPooling2d({ poolSize: 2, strides: 2, name: `maxpool${poolIndex}` })
        .apply(x) as tf.SymbolicTensor;
    } else {
      convIndex += 1;
      x = conv(x, scaled(step, width), `conv${convIndex}`, { useBias: true, activation: 'relu' });
    }
  }
  const logits = classifierHead(x, options.numClasses);
  return tf.model({ inputs: input, outputs: logits, name: options.name ?? 'small_cnn' });
}

/** Post-activation basic block (He et al. 2016) with a 1x1 projection when the shape changes. */
function basicBlock(x: tf.SymbolicTensor, filters: number, strides: number, name: string): tf.SymbolicTensor {
  const inChannels = x.shape[x.shape.length - 1];
  let y = conv(x, filters, `${name}_conv1`, { strides });
  y = relu(batchNorm(y, `${name}_bn1`), `${name}_relu1`);
  y = batchNorm(conv(y, filters, `${name}_conv2`), `${name}_bn2`);
  let shortcut = x;
  if (strides !== 1 || inChannels !== filters) {
    shortcut = conv(x, filters, `${name}_shortcut_conv`, { kernelSize: 1, strides });
    shortcut = batchNorm(shortcut, `${name}_shortcut_bn`);
  }
  const sum = tf.layers.add({ name: `${name}_add` }).apply([y, shortcut]) as tf.SymbolicTensor;
  return relu(sum, `${name}_out`);
}

/**
 * ResNet-18, CIFAR variant (3x3 stem, no max-pool): stages 64/128/256/512 of two basic blocks,
 * strides 1/2/2/2, BatchNorm, global average pool, dense. 11,173,962 trainable parameters for
 * CIFAR-10 at width 1, the count of the common PyTorch reference (kuangliu/pytorch-cifar).
 */
export function resnet18(options: ArchitectureOptions): tf.LayersModel {
  checkOptions(options);
  const width = options.width ?? 1;
  const { input, x: normalized } = normalizedInput(options);
  let x = conv(normalized, scaled(64, width), 'stem_conv');
  x = relu(batchNorm(x, 'stem_bn'), 'stem_relu');
  const stages = [64, 128, 256, 512];
  stages.forEach((base, stage) => {
    for (let block = 0; block < 2; block += 1) {
      const strides = stage > 0 && block === 0 ? 2 : 1;
      x = basicBlock(x, scaled(base, width), strides, `stage${stage + 1}_block${block + 1}`);
    }
  });
  const logits = classifierHead(x, options.numClasses);
  return tf.model({ inputs: input, outputs: logits, name: options.name ?? 'resnet18' });
}

/** Pre-activation wide block (Zagoruyko & Komodakis 2016), as in RobustBench's WideResNet. */
function wideBlock(x: tf.SymbolicTensor, filters: number, strides: number, name: string): tf.SymbolicTensor {
  const inChannels = x.shape[x.shape.length - 1];
  const equalInOut = inChannels === filters;
  const activated = relu(batchNorm(x, `${name}_bn1`), `${name}_relu1`);
  let y = conv(activated, filters, `${name}_conv1`, { strides });
  y = relu(batchNorm(y, `${name}_bn2`), `${name}_relu2`);
  y = conv(y, filters, `${name}_conv2`);
  // With equal widths the identity skips the pre-activation; otherwise the projection uses it.
  const shortcut = equalInOut
    ? x
    : conv(activated, filters, `${name}_shortcut_conv`, { kernelSize: 1, strides });
  return tf.layers.add({ name: `${name}_add` }).apply([y, shortcut]) as tf.SymbolicTensor;
}

/**
 * WideResNet-depth-widen for CIFAR: 3x3 stem of 16, three groups of (depth - 4) / 6 pre-activation
 * blocks at 16k/32k/64k channels (strides 1/2/2), final BN-ReLU, global average pool, dense.
 * WRN-28-10 for CIFAR-10 has 36,479,194 trainable parameters, as in RobustBench.
 */
export function wideResNet(options: WideResNetOptions): tf.LayersModel {
  const { depth, widen } = options;
  checkOptions(options);
  if (!Number.isInteger(depth) || depth < 10 || (depth - 4) % 6 !== 0) {
    throw new Error(`'depth' must be 6n + 4 with n >= 1 (10, 16, 28, 34, ...), got ${depth}`);
  }
  if (!Number.isInteger(widen) || widen < 1)
    throw new Error(`'widen' must be a positive integer, got ${widen}`);
  const blocksPerGroup = (depth - 4) / 6;
  const { input, x: normalized } = normalizedInput(options);
  let x = conv(normalized, 16, 'stem_conv');
  [16 * widen, 32 * widen, 64 * widen].forEach((filters, group) => {
    for (let block = 0; block < blocksPerGroup; block += 1) {
      const strides = group > 0 && block === 0 ? 2 : 1;
      x = wideBlock(x, filters, strides, `group${group + 1}_block${block + 1}`);
    }
  });
  x = relu(batchNorm(x, 'final_bn'), 'final_relu');
  const logits = classifierHead(x, options.numClasses);
  return tf.model({ inputs: input, outputs: logits, name: options.name ?? `wrn_${depth}_${widen}` });
}

/** Architecture names accepted by `buildArchitecture`: `small-cnn`, `resnet18`, `wrn-<depth>-<widen>`. */
export const ARCHITECTURE_NAMES = ['small-cnn', 'resnet18', 'wrn-<depth>-<widen>'] as const;

/**
 * Builds a model by name (for CLIs and configs), e.g. `buildArchitecture('wrn-28-10', {...})`.
 * `width` applies to `small-cnn` and `resnet18`; a WideResNet's width is in its name.
 */
export function buildArchitecture(name: string, options: ArchitectureOptions): tf.LayersModel {
  if (name === 'small-cnn') return smallCnn(options);
  if (name === 'resnet18') return resnet18(options);
  const wrn = /^wrn-(\d+)-(\d+)$/.exec(name);
  if (wrn) {
    const { width: _unused, ...rest } = options;
    return wideResNet({ ...rest, depth: Number(wrn[1]), widen: Number(wrn[2]) });
  }
  throw new Error(`'architecture' must be one of ${ARCHITECTURE_NAMES.join(', ')}, got '${name}'`);
}

/** Number of trainable scalars (BatchNorm moving statistics excluded, as PyTorch counts). */
export function trainableParameterCount(model: tf.LayersModel): number {
  return model.trainableWeights.reduce((sum, w) => sum + tf.util.sizeFromShape(w.shape as number[]), 0);
}
