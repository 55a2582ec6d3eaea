import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { loadClassifierFromFiles, ModelFileError } from '../../../../src/engine/model/files.js';
import { OnnxUnsupportedError } from '../../../../src/engine/model/onnx/index.js';
import { buildModel } from './onnx-builder.js';

const onnxBytes = new Uint8Array(
  readFileSync(path.join(import.meta.dirname, '../../../fixtures/onnx/maxpool-view/model.onnx')),
);
const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
const classNames = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];

describe('loadClassifierFromFiles with an ONNX model', () => {
  it('loads a .onnx part of any name with its card.json, recording the NCHW layout', async () => {
    const before = tf.memory().numTensors;
    const files = new Map([
      ['my-resnet.onnx', onnxBytes],
      ['card.json', json({ name: 'torch-net', classNames, temperature: 1.5 })],
    ]);
    const classifier = await loadClassifierFromFiles(files);
    expect(classifier.format).toBe('onnx');
    expect(classifier.card).toMatchObject({
      name: 'torch-net',
      classNames,
      temperature: 1.5,
      inputShape: [32, 32, 3],
      inputLayout: 'NCHW',
    });
    classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses as ModelFileError naming the file, keeping the ONNX error as cause', async () => {
    const before = tf.memory().numTensors;
    const bad = buildModel({ nodes: [{ op: 'LSTM', name: 'lstm', inputs: ['x'], outputs: ['y'] }] });
    const error = await loadClassifierFromFiles(new Map([['model.onnx', bad]])).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelFileError);
    expect((error as ModelFileError).path).toBe('model.onnx');
    expect((error as ModelFileError).field).toBe('node lstm');
    expect((error as Error).cause).toBeInstanceOf(OnnxUnsupportedError);
    const mixed = await loadClassifierFromFiles(
      new Map([
        ['model.onnx', onnxBytes],
        ['model.json', json({})],
      ]),
    ).catch((e: unknown) => e);
    expect(mixed).toBeInstanceOf(ModelFileError);
    const badCard = await loadClassifierFromFiles(
      new Map([
        ['model.onnx', onnxBytes],
        ['card.json', json({ classNames: 'cat' })],
      ]),
    ).catch((e: unknown) => e);
    expect((badCard as ModelFileError).path).toBe('card.json');
    const wrongCount = await loadClassifierFromFiles(
      new Map([
        ['model.onnx', onnxBytes],
        ['card.json', json({ classNames: ['a', 'b'] })],
      ]),
    ).catch((e: unknown) => e);
    expect((wrongCount as Error).message).toContain('2 class names but the model outputs 10 logits');
    expect(tf.memory().numTensors).toBe(before);
  });
});
