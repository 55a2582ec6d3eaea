import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { copyImage, drawAugmentation } from '../../src/data/augment.js';
import { ArrayDataset, type Batch, labelCounts } from '../../src/data/dataset.js';
import { DatasetError } from '../../src/data/errors.js';
import { Rng } from '../../src/util/random.js';

/** n images of 8x8x3 where every byte of image i is (i * 7 + position) % 256, labels i % 3. */
function synthetic(n: number, side = 8, channels = 3): ArrayDataset {
  const size = side * side * channels;
  const images = Uint8Array.from(
    { length: n * size },
    (_, k) => (Math.floor(k / size) * 7 + (k % size)) % 256,
  );
  const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
  return new ArrayDataset({ images, shape: [side, side, channels], labels, classNames: ['a', 'b', 'c'] });
}

function collect(batches: Iterable<Batch>): {
  indices: number[];
  labels: number[];
  sizes: number[];
  ends: number[];
} {
  const out = {
    indices: [] as number[],
    labels: [] as number[],
    sizes: [] as number[],
    ends: [] as number[],
  };
  for (const batch of batches) {
    out.indices.push(...batch.indices);
    out.labels.push(...batch.y);
    out.sizes.push(batch.x.shape[0]);
    out.ends.push(batch.end);
    batch.x.dispose();
  }
  return out;
}

describe('ArrayDataset batches', () => {
  it('visits every example once in order, scaling pixels to [0,1], last batch smaller', async () => {
    const set = synthetic(10);
    const seen = collect(set.batches(4));
    expect(seen.indices).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(seen.sizes).toEqual([4, 4, 2]);
    expect(seen.ends).toEqual([4, 8, 10]);
    expect(seen.labels).toEqual([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
    const [first] = set.batches(2, { start: 4 });
    expect(Array.from(first.indices)).toEqual([4, 5]);
    const values = await first.x.data();
    first.x.dispose();
    expect(values[0]).toBeCloseTo((4 * 7) / 255, 6);
    expect(values[192 + 5]).toBeCloseTo((5 * 7 + 5) / 255, 6);
    expect(collect(set.batches(4, { dropLast: true })).sizes).toEqual([4, 4]);
  });

  it('shuffles as a pure function of (seed, epoch): same order again, other order per epoch', () => {
    const set = synthetic(50);
    const a = set.order({ shuffle: true, seed: 3, epoch: 0 });
    expect(Array.from(set.order({ shuffle: true, seed: 3, epoch: 0 }))).toEqual(Array.from(a));
    expect(Array.from(set.order({ shuffle: true, seed: 3, epoch: 1 }))).not.toEqual(Array.from(a));
    expect(Array.from(set.order({ shuffle: true, seed: 4, epoch: 0 }))).not.toEqual(Array.from(a));
    expect([...a].sort((x, y) => x - y)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(collect(set.batches(7, { shuffle: true, seed: 3 })).indices).toEqual(Array.from(a));
  });

  it('resumes mid-epoch with exactly the batches (and augmentation) of an uninterrupted run', async () => {
    const set = synthetic(20);
    const options = { shuffle: true, seed: 11, epoch: 2, augment: true } as const;
    const full: Float32Array[] = [];
    const fullIndices: number[][] = [];
    for (const batch of set.batches(6, options)) {
      full.push((await batch.x.data()) as Float32Array);
      fullIndices.push(Array.from(batch.indices));
      batch.x.dispose();
    }
    let k = 2;
    for (const batch of set.batches(6, { ...options, start: 12 })) {
      expect(Array.from(batch.indices)).toEqual(fullIndices[k]);
      expect(Array.from(await batch.x.data())).toEqual(Array.from(full[k]));
      batch.x.dispose();
      k++;
    }
    expect(k).toBe(4);
  });

  it('leaves tf.memory().numTensors where it found it once the consumer disposes x', () => {
    const set = synthetic(30);
    const before = tf.memory().numTensors;
    for (const batch of set.batches(8, { shuffle: true, augment: true })) batch.x.dispose();
    set.tensor([1, 2]).dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('rejects bad arguments by name', () => {
    const set = synthetic(5);
    expect(() => set.batches(0).next()).toThrow(/'batchSize' must be a positive integer, got 0/);
    expect(() => set.batches(2, { start: 6 }).next()).toThrow(/'start' must be an integer in \[0, 5\]/);
    expect(() => set.subset([0, 5])).toThrow(/'indices\[1\]' must be an integer in \[0, 5\)/);
    expect(() => set.batches(2, { augment: { cutout: -1 } }).next()).toThrow(/'augment.cutout'/);
    expect(() => new ArrayDataset({ images: new Uint8Array(10), shape: [2, 2, 3] })).toThrow(DatasetError);
  });
});

describe('subset and take', () => {
  it('subset copies the chosen examples in the given order; take is a prefix view', () => {
    const set = synthetic(6);
    const sub = set.subset([4, 1]);
    expect(sub.size).toBe(2);
    expect(Array.from(sub.labels)).toEqual([1, 1]);
    expect(Array.from(sub.images.subarray(0, 192))).toEqual(
      Array.from(set.images.subarray(4 * 192, 5 * 192)),
    );
    expect(sub.classNames).toEqual(['a', 'b', 'c']);
    const head = set.take(4);
    expect(head.size).toBe(4);
    expect(head.images.buffer).toBe(set.images.buffer);
    expect(set.take(100).size).toBe(6);
    expect(labelCounts(head)).toEqual([2, 1, 1]);
  });

  it('treats a set without labels as unlabelled', () => {
    const set = new ArrayDataset({ images: new Uint8Array(2 * 12), shape: [2, 2, 3] });
    expect(set.unlabelled).toBe(true);
    expect(Array.from(set.labels)).toEqual([-1, -1]);
    expect(labelCounts(set)).toEqual([]);
  });
});

describe('augmentation (crop with padding, flip, Cutout)', () => {
  const shape = [4, 4, 1] as const;
  const source = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
  const run = (draw: Parameters<typeof copyImage>[5], cutout: number) => {
    const out = new Float32Array(16);
    copyImage(source, 0, out, 0, shape, draw, cutout);
    return Array.from(out, (v) => Math.round(v * 255));
  };

  it('shifts by (dy, dx) with zero padding', () => {
    expect(run({ dy: 1, dx: -1, flip: false, cutoutY: -1, cutoutX: -1 }, 0)).toEqual([
      0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 0, 0, 0,
    ]);
  });

  it('mirrors left-right', () => {
    expect(run({ dy: 0, dx: 0, flip: true, cutoutY: -1, cutoutX: -1 }, 0)).toEqual([
      4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13,
    ]);
  });

  it('zeroes a Cutout square centred on (y, x), clipped at the border', () => {
    // side 2 centred at (0, 3): rows -1..0, columns 2..3.
    expect(run({ dy: 0, dx: 0, flip: false, cutoutY: 0, cutoutX: 3 }, 2)).toEqual([
      1, 2, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    ]);
  });

  it('draws shifts in [-pad, pad], flips about half the time, keeps pixel values from the image', () => {
    const rng = new Rng(5);
    const options = { cropPadding: 4, flip: true, cutout: 16 };
    let flips = 0;
    const shifts = new Set<number>();
    for (let i = 0; i < 2000; i++) {
      const draw = drawAugmentation(rng, 32, 32, options);
      shifts.add(draw.dy);
      shifts.add(draw.dx);
      if (draw.flip) flips++;
      expect(draw.cutoutY).toBeGreaterThanOrEqual(0);
      expect(draw.cutoutY).toBeLessThan(32);
    }
    expect([...shifts].sort((a, b) => a - b)).toEqual([-4, -3, -2, -1, 0, 1, 2, 3, 4]);
    expect(flips / 2000).toBeGreaterThan(0.45);
    expect(flips / 2000).toBeLessThan(0.55);
  });

  it('augmented batches differ from plain ones but only by zeros and moved pixels', async () => {
    const set = synthetic(16, 32, 3);
    const [plain] = set.batches(16);
    const [augmented] = set.batches(16, { augment: true, seed: 9 });
    const a = await plain.x.data();
    const b = await augmented.x.data();
    plain.x.dispose();
    augmented.x.dispose();
    expect(Array.from(b)).not.toEqual(Array.from(a));
    const imageValues = new Set(Array.from(a, (v) => Math.round(v * 255)));
    imageValues.add(0);
    expect(Array.from(b).every((v) => imageValues.has(Math.round(v * 255)))).toBe(true);
    // Cutout 16 on 32x32 zeroes at least 8x8 = 64 pixels per image.
    for (let i = 0; i < 16; i++) {
      let zeros = 0;
      for (let p = 0; p < 1024; p++) if (b[i * 3072 + p * 3] === 0 && b[i * 3072 + p * 3 + 1] === 0) zeros++;
      expect(zeros).toBeGreaterThanOrEqual(64);
    }
  });
});
