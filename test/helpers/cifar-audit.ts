import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { loadDataset } from '../../src/data/load.js';
import { readModelDir } from '../../src/data/model-dir.js';
import type { TfjsClassifier } from '../../src/engine/model/classifier.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import type { ShardSettings } from '../../src/jobs/sharding/shards.js';
import { CIFAR_TEST_FILE } from './data.js';

/** The shipped ratio-cifar10 on the first real CIFAR-10 test points, with a quick attack budget. */
export const MODEL_DIR = path.resolve('models/ratio-cifar10');
export const DATA_FILE = CIFAR_TEST_FILE;

/**
 * One APGD/FAB iteration and 60 Square queries so a test audit of 16 points takes seconds; at eps 1
 * both APGD-CE and APGD-T break points (random starts matter, so exactness is meaningful).
 */
export const QUICK: ShardSettings = {
  norm: 'L2',
  eps: 1,
  version: 'standard',
  seed: 1,
  iterations: 1,
  queries: 60,
  batchSize: 250,
};

export async function auditFixture(n: number): Promise<{
  classifier: TfjsClassifier;
  files: Map<string, Uint8Array>;
  x: tf.Tensor4D;
  y: Int32Array;
}> {
  const files = await readModelDir(MODEL_DIR);
  const classifier = await loadModelFromFiles(files);
  const data = (await loadDataset(DATA_FILE)).take(n);
  return { classifier, files, x: data.tensor(), y: data.labels };
}
