import { readFile } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs';
import type { TfjsClassifier } from '../../src/engine/model/classifier.js';
import { saveModelToFiles } from '../../src/engine/model/files.js';
import { base64, solidPng } from './colour-model.js';
import { CIFAR_TEST_FILE } from './data.js';

const RECORD = 3073;

/** A seeded linear CIFAR-10 classifier (flatten + dense) as uploadable model files. */
export async function tinyCifarModelFiles(): Promise<Map<string, Uint8Array>> {
  const model = tf.sequential({
    layers: [
      tf.layers.flatten({ inputShape: [32, 32, 3] }),
      tf.layers.dense({ units: 10, kernelInitializer: tf.initializers.glorotUniform({ seed: 7 }) }),
    ],
  });
  try {
    return await saveModelToFiles(model, { name: 'tiny' });
  } finally {
    model.dispose();
  }
}

/**
 * The first `n` real CIFAR-10 test images as a CIFAR-10 binary file, relabelled with the model's
 * own predictions so every point is clean-correct and every attack runs on all of them.
 */
export async function cifarFileLabelledBy(files: Map<string, Uint8Array>, n: number): Promise<Uint8Array> {
  const bytes = new Uint8Array(await readFile(CIFAR_TEST_FILE)).slice(0, n * RECORD);
  const pixels = new Float32Array(n * 3072);
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < 1024; p++) {
      for (let c = 0; c < 3; c++) pixels[i * 3072 + p * 3 + c] = bytes[i * RECORD + 1 + c * 1024 + p] / 255;
    }
  }
  const { loadModelFromFiles } = await import('../../src/engine/model/files.js');
  const classifier: TfjsClassifier = await loadModelFromFiles(files);
  try {
    const predicted = tf.tidy(() =>
      classifier
        .logits(tf.tensor4d(pixels, [n, 32, 32, 3]))
        .argMax(1)
        .dataSync(),
    );
    for (let i = 0; i < n; i++) bytes[i * RECORD] = predicted[i];
  } finally {
    classifier.dispose();
  }
  return bytes;
}

/**
 * Files of a flatten + dense model on 32x32x3 images (`classes` outputs) whose every weight is 1e38:
 * its logits are finite on the loader's zero probe image (bias only), infinite on any real image.
 */
export async function overflowingModelFiles(classes: number): Promise<Map<string, Uint8Array>> {
  const model = tf.sequential({
    layers: [
      tf.layers.flatten({ inputShape: [32, 32, 3] }),
      tf.layers.dense({ units: classes, kernelInitializer: tf.initializers.constant({ value: 1e38 }) }),
    ],
  });
  try {
    return await saveModelToFiles(model);
  } finally {
    model.dispose();
  }
}

/** What the route tests send: the tiny model's files, `n` CIFAR-10 images labelled by it, a red PNG (base64). */
export async function routeUploads(
  n: number,
): Promise<{ files: Map<string, Uint8Array>; data: Uint8Array; png: string }> {
  const files = await tinyCifarModelFiles();
  return { files, data: await cifarFileLabelledBy(files, n), png: base64(await solidPng([255, 0, 0])) };
}

/** A multipart audit form: model files, data set and parameters. */
export function auditForm(
  files: Map<string, Uint8Array> | undefined,
  dataset: Uint8Array | undefined,
  fields: Record<string, string>,
): FormData {
  const form = new FormData();
  for (const [name, bytes] of files ?? [])
    form.append('model_files', new Blob([new Uint8Array(bytes)]), name);
  if (dataset) form.append('dataset', new Blob([new Uint8Array(dataset)]), 'test_batch.bin');
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  return form;
}

/**
 * model.json and one zero shard of a sequential CNN, written by hand (no weight is allocated): Conv2D
 * layers ('same' padding, ReLU) on an input of `inputShape`, global average pooling, Dense(10), every
 * weight declared as tfjs names it. For models whose size or cost is the point of a test.
 */
export function convModelFiles(
  inputShape: [number, number, number],
  convs: ReadonlyArray<{ kernel: number; filters: number }>,
): Map<string, Uint8Array> {
  const weights: Array<{ name: string; shape: number[]; dtype: 'float32' }> = [];
  let channels = inputShape[2];
  const layers: unknown[] = convs.map(({ kernel, filters }, i) => {
    weights.push(
      { name: `conv${i}/kernel`, shape: [kernel, kernel, channels, filters], dtype: 'float32' },
      { name: `conv${i}/bias`, shape: [filters], dtype: 'float32' },
    );
    channels = filters;
    return {
      class_name: 'Conv2D',
      config: {
        name: `conv${i}`,
        filters,
        kernel_size: [kernel, kernel],
        strides: [1, 1],
        padding: 'same',
        activation: 'relu',
        use_bias: true,
        ...(i === 0 ? { batch_input_shape: [null, ...inputShape] } : {}),
      },
    };
  });
  weights.push(
    { name: 'out/kernel', shape: [channels, 10], dtype: 'float32' },
    { name: 'out/bias', shape: [10], dtype: 'float32' },
  );
  layers.push(
    { class_name: 'GlobalAveragePooling2D', config: { name: 'pool' } },
    { class_name: 'Dense', config: { name: 'out', units: 10, use_bias: true } },
  );
  const elements = weights.reduce((sum, w) => sum + w.shape.reduce((a, b) => a * b, 1), 0);
  const modelJson = {
    format: 'layers-model',
    modelTopology: { class_name: 'Sequential', config: { name: 'convs', layers } },
    weightsManifest: [{ paths: ['weights.bin'], weights }],
  };
  return new Map([
    ['model.json', new TextEncoder().encode(JSON.stringify(modelJson))],
    ['weights.bin', new Uint8Array(elements * 4)],
  ]);
}
