import { describe, expect, it } from 'vitest';
import { resolveDataPath } from '../../src/data/data-root.js';
import { ArrayDataset } from '../../src/data/dataset.js';
import { concatDatasets } from '../../src/data/load.js';
import { loadTrainingData, splitValidation } from '../../src/training/data.js';

describe('training data', () => {
  it('loads a folder of CIFAR binaries (the OOD training set) as one unlabelled set, with a seeded limit', async () => {
    const out = await loadTrainingData('ood-train', { limit: 500, seed: 1 });
    expect(out.size).toBe(500);
    expect(out.shape).toEqual([32, 32, 3]);
    expect(out.unlabelled).toBe(true);
    const again = await loadTrainingData('ood-train', { limit: 500, seed: 1 });
    expect(Buffer.from(again.images).equals(Buffer.from(out.images))).toBe(true);
  });

  it('reads CIFAR-10 binaries with the class names beside them', async () => {
    const test = await loadTrainingData('cifar10/test_batch_first1000.bin');
    expect(test.size).toBe(1000);
    expect(test.classNames[0]).toBe('airplane');
    expect(Array.from(test.labels.subarray(0, 4))).toEqual([3, 8, 8, 0]);
  });

  it('names a missing data path', () => {
    expect(() => resolveDataPath('no/such/set.bin')).toThrow(/data 'no\/such\/set.bin' not found/);
  });

  it('splits a disjoint, seeded validation set and joins sets in order', () => {
    const a = new ArrayDataset({
      images: Uint8Array.from([0, 1, 2]),
      shape: [1, 1, 1],
      labels: Int32Array.from([0, 1, 0]),
    });
    const b = new ArrayDataset({
      images: Uint8Array.from([3, 4]),
      shape: [1, 1, 1],
      labels: Int32Array.from([1, 1]),
    });
    const joined = concatDatasets([a, b]);
    expect(Array.from(joined.images)).toEqual([0, 1, 2, 3, 4]);
    expect(Array.from(joined.labels)).toEqual([0, 1, 0, 1, 1]);
    const { train, validation } = splitValidation(joined, 2, 4);
    expect(validation?.size).toBe(2);
    expect(train.size).toBe(3);
    const seen = [...train.images, ...(validation?.images ?? [])].sort();
    expect(seen).toEqual([0, 1, 2, 3, 4]);
    expect(Array.from(splitValidation(joined, 2, 4).validation?.images ?? [])).toEqual(
      Array.from(validation?.images ?? []),
    );
    expect(() => splitValidation(joined, 5, 0)).toThrow(/'validationSize' \(5\) must be below/);
  });
});
