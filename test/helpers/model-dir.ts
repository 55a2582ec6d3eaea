import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { writeModelDir } from '../../src/data/model-dir.js';
import { saveModelToFiles } from '../../src/engine/model/files.js';
import { smallCnn } from '../../src/training/architectures.js';

export interface TinyModelWorkDir {
  /** The temporary folder, for a test's outputs. */
  readonly root: string;
  /** The model directory inside it. */
  readonly model: string;
}

/**
 * A temporary folder for the tests of the calling file, made before they run and removed after,
 * whose `model` directory holds a tiny untrained CIFAR-10 CNN (smallCnn at width 0.125): for commands
 * whose plumbing end to end, not the numbers, is the point. Its paths are set once the tests run.
 */
export function tinyModelWorkDir(prefix: string): TinyModelWorkDir {
  const dirs = { root: '', model: '' };
  beforeAll(async () => {
    dirs.root = await mkdtemp(path.join(os.tmpdir(), prefix));
    dirs.model = path.join(dirs.root, 'model');
    const model = smallCnn({ numClasses: 10, inputShape: [32, 32, 3], width: 0.125 });
    const files = await saveModelToFiles(model, { name: 'tiny-untrained', temperature: 1 });
    model.dispose();
    await writeModelDir(dirs.model, files);
  });
  afterAll(async () => {
    await rm(dirs.root, { recursive: true, force: true });
  });
  return dirs;
}
