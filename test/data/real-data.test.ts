import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { labelCounts } from '../../src/data/dataset.js';
import { decodeImage } from '../../src/data/image.js';
import { listImageFolder, loadImageFolder } from '../../src/data/image-folder.js';
import { concatDatasets, FASHION_MNIST_CLASSES, loadDataset } from '../../src/data/load.js';
import { DATA_DIR } from '../helpers/data.js';

// The real data sets of shared/data (see its README for every figure checked here).
const file = (relative: string) => path.join(DATA_DIR, relative);

async function sha256(relative: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file(relative)))
    .digest('hex');
}

/** The SHA-256 of the files whose figures these tests check, as the data README gives them. */
const README_SHA256: Record<string, string> = {
  'cifar10/test_batch_first1000.bin': '8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5',
  'cifar100/test_first900.bin': '261cd5f2ca3de2ee04b5431f2b3e38a7a6ebdc84b3a7d7a2b9b232d81e15b8fe',
  'svhn/train_first1000.bin': '54629c2d7419fc6e0f6c95719db56a8d96b74371d7ca7995a647887f464aaba6',
  'mnist/t10k-images-idx3-ubyte.gz': '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
};

/** Loads a data file once its SHA-256 is checked to be the one of the data README. */
async function loadChecked(relative: string): ReturnType<typeof loadDataset> {
  expect(await sha256(relative)).toBe(README_SHA256[relative]);
  return loadDataset(file(relative));
}

const CIFAR10_CLASSES = [
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
];

describe('CIFAR-10 binary (test_batch_first1000.bin)', () => {
  it('has the checksum of the data README', async () => {
    expect(await sha256('cifar10/test_batch_first1000.bin')).toBe(
      README_SHA256['cifar10/test_batch_first1000.bin'],
    );
  });

  it('gives 1000 labelled 32x32x3 images, the known label order, class names and counts', async () => {
    const set = await loadDataset(file('cifar10/test_batch_first1000.bin'));
    expect(set.size).toBe(1000);
    expect(set.shape).toEqual([32, 32, 3]);
    expect(set.classNames).toEqual(CIFAR10_CLASSES);
    expect(Array.from(set.labels.subarray(0, 10))).toEqual([3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    expect(labelCounts(set)).toEqual([103, 89, 100, 103, 90, 86, 112, 102, 106, 109]);
    expect(set.unlabelled).toBe(false);
  });

  it('interleaves the R, G, B planes into NHWC pixels exactly', async () => {
    const raw = await readFile(file('cifar10/test_batch_first1000.bin'));
    const set = await loadDataset(file('cifar10/test_batch_first1000.bin'));
    // Image 0 (the cat), top-left pixel, and image 3 at row 17, column 5.
    expect(Array.from(set.images.subarray(0, 3))).toEqual([158, 112, 49]);
    const record = 3 * 3073;
    const p = 17 * 32 + 5;
    const expected = [raw[record + 1 + p], raw[record + 1 + 1024 + p], raw[record + 1 + 2048 + p]];
    const at = 3 * 3072 + p * 3;
    expect(Array.from(set.images.subarray(at, at + 3))).toEqual(expected);
    const x = set.tensor([0]);
    const first = Array.from((await x.data()).subarray(0, 3));
    x.dispose();
    expect(first.map((v) => Math.round(v * 255))).toEqual([158, 112, 49]);
  });
});

describe('CIFAR-100 binary (test_first900.bin)', () => {
  it('gives 900 records with fine labels by default and coarse labels on request', async () => {
    const fine = await loadChecked('cifar100/test_first900.bin');
    expect(fine.size).toBe(900);
    expect(fine.classNames).toHaveLength(100);
    expect(Array.from(fine.labels.subarray(0, 5))).toEqual([49, 33, 72, 51, 71]);
    expect(Array.from(fine.labels.subarray(0, 5), (l) => fine.classNames[l])).toEqual([
      'mountain',
      'forest',
      'seal',
      'mushroom',
      'sea',
    ]);
    const counts = labelCounts(fine);
    expect(Math.min(...counts)).toBe(3);
    expect(Math.max(...counts)).toBe(15);
    const coarse = await loadDataset(file('cifar100/test_first900.bin'), { cifar100Labels: 'coarse' });
    expect(coarse.classNames).toHaveLength(20);
    expect(coarse.classNames[0]).toBe('aquatic_mammals');
    // Every fine class maps to exactly one coarse class.
    const coarseOf = new Map<number, number>();
    for (let i = 0; i < 900; i++) {
      const seen = coarseOf.get(fine.labels[i]);
      if (seen !== undefined) expect(coarse.labels[i]).toBe(seen);
      coarseOf.set(fine.labels[i], coarse.labels[i]);
    }
    expect(Array.from(coarse.images.subarray(0, 3072))).toEqual(Array.from(fine.images.subarray(0, 3072)));
  });
});

describe('unlabelled CIFAR-format sets', () => {
  it('reads SVHN (label byte 255) as unlabelled, with no class names', async () => {
    const set = await loadChecked('svhn/train_first1000.bin');
    expect(set.size).toBe(1000);
    expect(set.unlabelled).toBe(true);
    expect(set.classNames).toEqual([]);
    expect(set.labels.every((l) => l === -1)).toBe(true);
  });

  it('concatenates OOD parts (first 100 records of two parts)', async () => {
    const a = await loadDataset(file('ood-train/natural32_part0.bin'), { limit: 100 });
    const b = await loadDataset(file('ood-train/natural32_part1.bin'), { limit: 100 });
    const both = concatDatasets([a, b]);
    expect(both.size).toBe(200);
    expect(both.unlabelled).toBe(true);
    expect(Array.from(both.images.subarray(100 * 3072, 100 * 3072 + 16))).toEqual(
      Array.from(b.images.subarray(0, 16)),
    );
  });
});

describe('IDX files', () => {
  it('gives the 10,000 MNIST test digits with labels (gzip detected by magic bytes)', async () => {
    const set = await loadChecked('mnist/t10k-images-idx3-ubyte.gz');
    expect(set.size).toBe(10_000);
    expect(set.shape).toEqual([28, 28, 1]);
    // The well-known first test labels: 7 2 1 0 4 1 4 9 5 9.
    expect(Array.from(set.labels.subarray(0, 10))).toEqual([7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    expect(labelCounts(set)).toEqual([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    // Pixel 0 = background; a 7 has ink in its upper half.
    expect(set.images[0]).toBe(0);
    expect(Math.max(...set.images.subarray(7 * 28, 14 * 28))).toBe(255);
  });

  it('gives Fashion-MNIST test with its class names, 1000 per class', async () => {
    const set = await loadDataset(file('fashion-mnist/t10k-images-idx3-ubyte.gz'));
    expect(set.size).toBe(10_000);
    expect(set.classNames).toEqual(FASHION_MNIST_CLASSES);
    expect(labelCounts(set)).toEqual(new Array(10).fill(1000));
  });
});

describe('CIFAR-10 JPEG folders', () => {
  it('lists 50,000 train and 10,000 test files in the 10 classes, without decoding', async () => {
    const train = await listImageFolder(file('cifar10/train'));
    const test = await listImageFolder(file('cifar10/test'));
    expect(train.classNames).toEqual(CIFAR10_CLASSES);
    expect(test.classNames).toEqual(CIFAR10_CLASSES);
    expect(train.entries).toHaveLength(50_000);
    expect(test.entries).toHaveLength(10_000);
    const perClass = new Array(10).fill(0);
    for (const entry of test.entries) perClass[entry.label]++;
    expect(perClass).toEqual(new Array(10).fill(1000));
    expect(path.basename(test.entries[0].name)).toBe('0000.jpg');
  });

  it('decodes a sample close to the exact pixels of the binary test set (JPEG q=75)', async () => {
    const exact = await loadDataset(file('cifar10/test_batch_first1000.bin'));
    // test/cat/0000.jpg is test image 0 (the first cat in test order); airplane/0000.jpg is image 3.
    for (const [name, index] of [
      ['cat/0000.jpg', 0],
      ['airplane/0000.jpg', 3],
      ['ship/0000.jpg', 1],
    ] as const) {
      const image = await decodeImage(await readFile(file(`cifar10/test/${name}`)), { channels: 3 });
      expect([image.height, image.width, image.channels]).toEqual([32, 32, 3]);
      let total = 0;
      for (let i = 0; i < 3072; i++) total += Math.abs(image.data[i] - exact.images[index * 3072 + i]);
      expect(total / 3072).toBeLessThan(12);
    }
  });

  it('loads the first 200 test images per the folder order with labels', async () => {
    const set = await loadImageFolder(file('cifar10/test'), { limit: 200 });
    expect(set.size).toBe(200);
    expect(set.shape).toEqual([32, 32, 3]);
    expect(set.classNames).toEqual(CIFAR10_CLASSES);
    expect(set.labels.every((l) => l === 0)).toBe(true);
    const before = tf.memory().numTensors;
    for (const batch of set.batches(64, { shuffle: true, seed: 1, augment: true })) batch.x.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
