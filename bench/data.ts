/**
 * `npm run bench:data -- --json [--images 2000]`: images/s decoding the CIFAR-10 JPEG train folder at
 * concurrency 1 (baseline) and N, and images/s batching the binary set with and without augmentation.
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { decodeFolderEntries, listImageFolder } from '../src/data/image-folder.js';
import { concatDatasets, loadDataset } from '../src/data/load.js';
import { initBackend } from '../src/engine/backend/backend.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const imagesArg = args.indexOf('--images');
const decodeCount = imagesArg >= 0 ? Number(args[imagesArg + 1]) : 2000;
const dataDir = process.env.RATIO_DATA_DIR ?? path.resolve('../shared/data');

await initBackend();
const listing = await listImageFolder(path.join(dataDir, 'cifar10/train'));
// A spread sample over all classes: every k-th file.
const step = Math.floor(listing.entries.length / decodeCount);
const sample = {
  classNames: listing.classNames,
  entries: listing.entries.filter((_, i) => i % step === 0).slice(0, decodeCount),
};

async function decodeRate(concurrency: number): Promise<number> {
  const start = performance.now();
  await decodeFolderEntries(sample, { concurrency, source: 'cifar10/train sample' });
  return sample.entries.length / ((performance.now() - start) / 1000);
}
const decodeSerial = await decodeRate(1);
const concurrency = 8;
const decodeParallel = await decodeRate(concurrency);

const exact = await loadDataset(path.join(dataDir, 'cifar10/test_batch_first1000.bin'));
const set = concatDatasets(Array.from({ length: 10 }, () => exact)); // 10,000 images
function batchRate(augment: boolean): number {
  const start = performance.now();
  for (const batch of set.batches(128, { shuffle: true, seed: 0, augment })) batch.x.dispose();
  return set.size / ((performance.now() - start) / 1000);
}
batchRate(true); // warm-up
const plain = batchRate(false);
const augmented = batchRate(true);

const result = {
  backend: tf.getBackend(),
  decode: {
    images: sample.entries.length,
    imagesPerSecondConcurrency1: Math.round(decodeSerial),
    [`imagesPerSecondConcurrency${concurrency}`]: Math.round(decodeParallel),
    speedup: Number((decodeParallel / decodeSerial).toFixed(2)),
    extrapolatedSecondsFor50000: Number((50000 / decodeParallel).toFixed(1)),
  },
  batching: {
    images: set.size,
    batchSize: 128,
    imagesPerSecondPlain: Math.round(plain),
    imagesPerSecondAugmented: Math.round(augmented),
    augmentCostRatio: Number((plain / augmented).toFixed(2)),
  },
};
if (json) console.log(JSON.stringify(result));
else console.log(result);
