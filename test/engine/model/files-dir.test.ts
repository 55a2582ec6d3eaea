import { mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  listModelDirs,
  ModelDirError,
  type ModelFiles,
  readModelDir,
  updateModelCard,
  writeModelDir,
} from '../../../src/data/model-dir.js';
import { TfjsClassifier } from '../../../src/engine/model/classifier.js';
import { loadModelFromFiles, ModelFileError, saveModelToFiles } from '../../../src/engine/model/files.js';
import { smallCnn } from '../../../src/training/architectures.js';
import { expectSameLogits } from '../../helpers/outputs.js';

let root: string;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ratio-model-dir-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function savedSmallCnn(): Promise<{ model: tf.LayersModel; files: ModelFiles }> {
  const model = smallCnn({ numClasses: 10, inputShape: [32, 32, 3], width: 0.25 });
  const files = await saveModelToFiles(
    model,
    { name: 'small', temperature: 1.25 },
    { shardBytes: 16 * 1024 },
  );
  return { model, files };
}

const setManifestPath = (files: ModelFiles, index: number, value: string): ModelFiles => {
  const modelJson = JSON.parse(new TextDecoder().decode(files.get('model.json')));
  modelJson.weightsManifest[0].paths[index] = value;
  return new Map(files).set('model.json', new TextEncoder().encode(JSON.stringify(modelJson)));
};

describe('writeModelDir / readModelDir', () => {
  it('round-trips a smallCnn through a directory to identical logits', async () => {
    const before = tf.memory().numTensors;
    const { model, files } = await savedSmallCnn();
    const dir = path.join(root, 'models', 'small');
    await writeModelDir(dir, files);
    expect((await readdir(dir)).sort()).toEqual([...files.keys()].sort());
    expect(await listModelDirs(path.join(root, 'models'))).toEqual(['small']);

    const loaded = await loadModelFromFiles(await readModelDir(dir));
    expect(loaded.card).toMatchObject({ name: 'small', temperature: 1.25, inputShape: [32, 32, 3] });
    const original = new TfjsClassifier(model);
    expectSameLogits(tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 5) as tf.Tensor4D, original, loaded);
    original.dispose();
    loaded.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('does not read a shard path that leaves the directory; the engine names the traversal', async () => {
    const { model, files } = await savedSmallCnn();
    model.dispose();
    const dir = path.join(root, 'traversal');
    await writeFile(path.join(root, 'secret.bin'), 'secret');
    await writeModelDir(dir, setManifestPath(files, 0, '../secret.bin'));
    const read = await readModelDir(dir);
    expect([...read.keys()].some((k) => k.includes('secret'))).toBe(false);
    await expect(loadModelFromFiles(read)).rejects.toThrow(/leaves the model directory/);
  });

  it('does not follow a shard symlink out of the directory', async () => {
    const { model, files } = await savedSmallCnn();
    model.dispose();
    const dir = path.join(root, 'symlinked');
    const shard = JSON.parse(new TextDecoder().decode(files.get('model.json'))).weightsManifest[0].paths[0];
    const outside = path.join(root, 'outside.bin');
    await writeFile(outside, files.get(shard)!);
    const withoutShard = new Map(files);
    withoutShard.delete(shard);
    await writeModelDir(dir, withoutShard);
    await symlink(outside, path.join(dir, shard));
    const read = await readModelDir(dir);
    expect(read.has(shard)).toBe(false);
    const error = await loadModelFromFiles(read).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelFileError);
    expect((error as Error).message).toMatch(/weight shard named in model.json is missing/);
  });

  it('reports a missing directory, a missing model.json and an over-limit directory', async () => {
    await expect(readModelDir(path.join(root, 'nope'))).rejects.toThrow(ModelDirError);
    const empty = path.join(root, 'empty');
    await writeModelDir(path.join(empty, 'x'), new Map([['model.json', new Uint8Array([123, 125])]]));
    await expect(readModelDir(empty)).rejects.toThrow(/model.json: file is missing/);
    await expect(readModelDir(path.join(root, 'models', 'small'), { maxBytes: 1000 })).rejects.toThrow(
      /exceed the limit of 1000 bytes/,
    );
  });

  it('refuses to write file names that leave the directory', async () => {
    const files = new Map([
      ['model.json', new Uint8Array([123, 125])],
      ['../escape.bin', new Uint8Array([1])],
    ]);
    await expect(writeModelDir(path.join(root, 'w'), files)).rejects.toThrow(/plain relative path/);
    expect(await readdir(root)).not.toContain('escape.bin');
  });

  it('updates card fields in place, keeping the others, and refuses a card that is not an object', async () => {
    const dir = path.join(root, 'card');
    await writeModelDir(dir, new Map([['model.json', new Uint8Array([123, 125])]]));
    expect(await updateModelCard(dir, { temperature: 1.5 })).toEqual({ temperature: 1.5 });
    await updateModelCard(dir, { name: 'x', temperature: 2 });
    expect(JSON.parse(await readFile(path.join(dir, 'card.json'), 'utf8'))).toEqual({
      name: 'x',
      temperature: 2,
    });
    expect((await readdir(dir)).filter((f) => f.includes('.tmp-'))).toEqual([]);
    await writeFile(path.join(dir, 'card.json'), '[1]');
    await expect(updateModelCard(dir, { a: 1 })).rejects.toThrow(/card.json: must hold a JSON object/);
  });
});
