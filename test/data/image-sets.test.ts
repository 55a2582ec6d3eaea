import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  checkImageShape,
  defaultOodSpecs,
  loadImageSet,
  parseOodSpec,
  uniformNoise,
} from '../../src/data/image-sets.js';
import { Rng } from '../../src/util/random.js';
import { DATA_DIR } from '../helpers/data.js';
import { writeClassFolder } from '../helpers/image-folder.js';

const hasData = existsSync(path.join(DATA_DIR, 'svhn/train_first1000.bin'));

describe('OOD set specs', () => {
  it('resolves built-in names, noise and name=path', () => {
    expect(parseOodSpec('svhn', '/d')).toEqual({
      name: 'svhn',
      kind: 'file',
      path: '/d/svhn/train_first1000.bin',
    });
    expect(parseOodSpec('CIFAR100', '/d')).toEqual({
      name: 'cifar100',
      kind: 'file',
      path: '/d/cifar100/test_first900.bin',
    });
    expect(parseOodSpec('noise')).toEqual({ name: 'uniform noise', kind: 'noise' });
    expect(parseOodSpec('lsun=/x/lsun.bin')).toEqual({ name: 'lsun', kind: 'file', path: '/x/lsun.bin' });
    expect(() => parseOodSpec('tiny')).toThrow("--ood 'tiny' is not a built-in set");
    expect(() => parseOodSpec('=x')).toThrow('--ood must be a name or name=path');
  });

  it('defaults to sets that fit the model input', () => {
    expect(defaultOodSpecs([32, 32, 3], 'cifar10.bin')).toEqual(['svhn', 'cifar100', 'noise']);
    expect(defaultOodSpecs([28, 28, 1], 'mnist/t10k-images-idx3-ubyte.gz')).toEqual([
      'fashion-mnist',
      'noise',
    ]);
    expect(defaultOodSpecs([28, 28, 1], 'fashion-mnist/t10k-images-idx3-ubyte.gz')).toEqual([
      'mnist',
      'noise',
    ]);
    expect(defaultOodSpecs([64, 64, 3], 'x')).toEqual(['noise']);
  });

  it('makes seeded uniform noise in [0,1]', () => {
    const a = uniformNoise(3, [4, 4, 3], 7);
    const b = uniformNoise(3, [4, 4, 3], 7);
    expect(a.shape).toEqual([3, 4, 4, 3]);
    expect(Array.from(a.images)).toEqual(Array.from(b.images));
    expect(Math.min(...a.images)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...a.images)).toBeLessThan(1);
    expect(uniformNoise(3, [4, 4, 3], 8).images[0]).not.toBe(a.images[0]);
  });
});

describe.skipIf(!hasData)('loadImageSet on the shared data', () => {
  it('reads SVHN as unlabelled and CIFAR-10 with labels, first records first', async () => {
    const svhn = await loadImageSet(path.join(DATA_DIR, 'svhn/train_first1000.bin'), 'svhn', 5, [32, 32, 3]);
    expect(svhn.shape).toEqual([5, 32, 32, 3]);
    expect(svhn.labels).toBeUndefined();
    const cifar = await loadImageSet(
      path.join(DATA_DIR, 'cifar10/test_batch_first1000.bin'),
      'c',
      10,
      [32, 32, 3],
    );
    expect(Array.from(cifar.labels!)).toEqual([3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    expect(cifar.classNames?.[3]).toBe('cat');
    expect(Math.max(...cifar.images)).toBeLessThanOrEqual(1);
    checkImageShape(cifar, [32, 32, 3], '--data');
    expect(() => checkImageShape(cifar, [28, 28, 1], '--data')).toThrow(
      "--data 'c' has 32x32x3 images, the model takes 28x28x1",
    );
  });
});

describe('loadImageSet on an image folder', () => {
  it('takes the images in one seeded random order, all of them too, so any prefix mixes the classes', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'ratio-image-set-'));
    try {
      await writeClassFolder(root, { classes: 2, perClass: 3, size: 4, prefix: 'c' });
      const all = await loadImageSet(root, 'f', 100, [4, 4, 3], 5);
      const order = Array.from(new Rng(5).permutation(6));
      expect(all.shape).toEqual([6, 4, 4, 3]);
      expect(Array.from(all.labels!)).toEqual(order.map((j) => Math.floor(j / 3)));
      expect(Array.from({ length: 6 }, (_, i) => Math.round(all.images[i * 48] * 255))).toEqual(
        order.map((j) => 10 * Math.floor(j / 3) + (j % 3)),
      );
      // A smaller limit is a prefix of the same order (the reported points before the held-out ones).
      const some = await loadImageSet(root, 'f', 4, [4, 4, 3], 5);
      expect(Array.from(some.images)).toEqual(Array.from(all.images.subarray(0, 4 * 48)));
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
