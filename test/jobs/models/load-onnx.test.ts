import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelFileError, saveModelToFiles } from '../../../src/engine/model/files.js';
import { inspectModel, loadModelDir, loadModelsFolder } from '../../../src/jobs/models/load.js';
import { expectSameLogits } from '../../helpers/outputs.js';

/** ONNX models through the model use cases: a .onnx path, a model directory, a models folder. */
const FIXTURE = path.resolve('test/fixtures/onnx/maxpool-view/model.onnx');
let root = '';

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ratio-onnx-'));
  await mkdir(path.join(root, 'torchnet'));
  await copyFile(FIXTURE, path.join(root, 'torchnet', 'model.onnx'));
  const classNames = Array.from({ length: 10 }, (_, i) => `c${i}`);
  await writeFile(path.join(root, 'torchnet', 'card.json'), JSON.stringify({ classNames, temperature: 2 }));
  // A TF.js model beside it, and a folder that is no model.
  const model = tf.sequential({
    layers: [tf.layers.flatten({ inputShape: [4, 4, 1] }), tf.layers.dense({ units: 2 })],
  });
  const files = await saveModelToFiles(model, { name: 'tfjs' });
  model.dispose();
  await mkdir(path.join(root, 'tfjsnet'));
  for (const [name, bytes] of files) await writeFile(path.join(root, 'tfjsnet', name), bytes);
  await mkdir(path.join(root, 'empty'));
  await writeFile(path.join(root, 'broken.onnx'), new Uint8Array([1, 2, 3]));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('ONNX models in the model use cases', () => {
  it('loads a .onnx file (named after it) and a directory with model.onnx + card.json', async () => {
    const before = tf.memory().numTensors;
    const fromFile = await loadModelDir(FIXTURE);
    expect(fromFile.card).toMatchObject({ name: 'model', inputShape: [32, 32, 3], inputLayout: 'NCHW' });
    const fromDir = await loadModelDir(path.join(root, 'torchnet'));
    expect(fromDir.card).toMatchObject({ temperature: 2, inputLayout: 'NCHW' });
    expect(fromDir.card.classNames[9]).toBe('c9');
    expectSameLogits(tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 4) as tf.Tensor4D, fromFile, fromDir);
    fromFile.dispose();
    fromDir.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('serves ONNX model directories beside TF.js ones', async () => {
    const skipped: string[] = [];
    const models = await loadModelsFolder(
      root,
      () => {},
      (name) => skipped.push(name),
    );
    expect([...models.keys()]).toEqual(['tfjsnet', 'torchnet']);
    expect(models.get('torchnet')?.card.name).toBe('torchnet');
    expect(skipped).toEqual([]);
    for (const model of models.values()) model.dispose();
  });

  it('inspects without loading, and names the file the importer refuses', async () => {
    const summary = await inspectModel(path.join(root, 'torchnet'));
    expect(summary.input.shape).toEqual(['n', 3, 32, 32]);
    expect(summary.opsUsed.Conv).toBe(2);
    const error = await inspectModel(path.join(root, 'broken.onnx')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelFileError);
    expect((error as ModelFileError).path).toBe(path.join(root, 'broken.onnx'));
  });
});
