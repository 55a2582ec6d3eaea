import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { zipSync } from 'fflate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCifar } from '../../src/data/cifar.js';
import { DatasetError, ImageError } from '../../src/data/errors.js';
import { parseIdx } from '../../src/data/idx.js';
import { encodePng } from '../../src/data/image.js';
import { loadImageFolder } from '../../src/data/image-folder.js';
import { datasetFromBytes, detectFormat, loadDataset, pairedLabelsName } from '../../src/data/load.js';
import { parseNpy } from '../../src/data/npy.js';
import { rejectionOf } from '../helpers/rejection.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-data-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rejection = (promise: Promise<unknown>) => rejectionOf(promise, Error);

/** CIFAR-10 records: label i % 10 (or 255), pixel bytes R plane = i, G = 100 + i, B = 200. */
function cifarRecords(n: number, label?: number): Uint8Array {
  const bytes = new Uint8Array(n * 3073);
  for (let i = 0; i < n; i++) {
    bytes[i * 3073] = label ?? i % 10;
    bytes.fill(i, i * 3073 + 1, i * 3073 + 1025);
    bytes.fill(100 + i, i * 3073 + 1025, i * 3073 + 2049);
    bytes.fill(200, i * 3073 + 2049, (i + 1) * 3073);
  }
  return bytes;
}

/** A uint8 IDX file: magic 0x000008<rank>, big-endian dims, data. */
function idx(dims: number[], data: Uint8Array): Uint8Array {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header.writeUInt32BE((0x08 << 8) | dims.length, 0);
  for (const [i, d] of dims.entries()) header.writeUInt32BE(d, 4 + 4 * i);
  return Buffer.concat([header, data]);
}

function npy(descr: string, shape: number[], data: Uint8Array, fortran = false): Uint8Array {
  let header = `{'descr': '${descr}', 'fortran_order': ${fortran ? 'True' : 'False'}, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  while ((10 + header.length + 1) % 64 !== 0) header += ' ';
  header += '\n';
  const head = Buffer.alloc(10);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]).copy(head);
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), data]);
}

describe('CIFAR binary', () => {
  it('reads any number of records, planes to NHWC', () => {
    const set = parseCifar(cifarRecords(3), { variant: 'cifar10' });
    expect(set.size).toBe(3);
    expect(Array.from(set.labels)).toEqual([0, 1, 2]);
    expect(Array.from(set.images.subarray(3072 * 2, 3072 * 2 + 3))).toEqual([2, 102, 200]);
  });

  it('a truncated record: names the file and the byte count', async () => {
    const file = path.join(dir, 'truncated.bin');
    await writeFile(file, cifarRecords(2).subarray(0, 3073 * 2 - 100));
    await writeFile(path.join(dir, 'truncated-cifar10.bin'), cifarRecords(2).subarray(0, 3073 * 2 - 100));
    const error = await rejection(
      loadDataset(path.join(dir, 'truncated-cifar10.bin'), { format: 'cifar10' }),
    );
    expect(error).toBeInstanceOf(DatasetError);
    expect(error.message).toMatch(
      /truncated-cifar10\.bin.*6046 bytes is not a positive multiple of the 3073-byte record/,
    );
    const detected = await rejection(loadDataset(file));
    expect(detected.message).toMatch(/cannot tell the format of .*6046 bytes/);
  });

  it('a 1-byte file', async () => {
    const file = path.join(dir, 'one-byte.bin');
    await writeFile(file, new Uint8Array([3]));
    expect((await rejection(loadDataset(file))).message).toMatch(/one-byte\.bin.*1 bytes/);
    expect((await rejection(loadDataset(file, { format: 'cifar10' }))).message).toMatch(
      /1 bytes is not a positive multiple/,
    );
  });

  it('label byte 255 gives an unlabelled set; class names beside the file are read', async () => {
    const sub = path.join(dir, 'cifar');
    await mkdir(sub);
    await writeFile(path.join(sub, 'batches.meta.txt'), 'a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n');
    await writeFile(path.join(sub, 'labelled.bin'), cifarRecords(4));
    await writeFile(path.join(sub, 'ood.bin'), cifarRecords(4, 255));
    const labelled = await loadDataset(path.join(sub, 'labelled.bin'));
    expect(labelled.classNames).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']);
    const ood = await loadDataset(path.join(sub, 'ood.bin'));
    expect(ood.unlabelled).toBe(true);
    expect(ood.classNames).toEqual([]);
  });
});

describe('IDX', () => {
  const pixels = Uint8Array.from({ length: 2 * 3 * 3 }, (_, i) => i);
  it('reads plain and gzipped files alike (gzip by magic bytes, not by name)', () => {
    const plain = parseIdx(idx([2, 3, 3], pixels));
    const zipped = parseIdx(gzipSync(idx([2, 3, 3], pixels)));
    expect(plain.dims).toEqual([2, 3, 3]);
    expect(Array.from(zipped.data)).toEqual(Array.from(pixels));
  });

  it('wrong magic: clear error with the magic found', () => {
    const bytes = idx([2, 3, 3], pixels);
    bytes[2] = 0x0d; // float type
    expect(() => parseIdx(bytes, 'x.idx')).toThrow(/'x.idx' is not a uint8 IDX file: magic 0x00000d03/);
    expect(() => parseIdx(new Uint8Array([1, 2, 3]), 'y')).toThrow(/only 3 bytes/);
  });

  it('a data size that disagrees with the header', () => {
    expect(() => parseIdx(idx([3, 3, 3], pixels), 'short')).toThrow(
      /declares 3x3x3 = 27 bytes of data, the file holds 18/,
    );
  });

  it('pairs labels with images by name and loads them', async () => {
    expect(pairedLabelsName('t10k-images-idx3-ubyte.gz')).toBe('t10k-labels-idx1-ubyte.gz');
    await writeFile(path.join(dir, 'tiny-images-idx3-ubyte.gz'), gzipSync(idx([2, 3, 3], pixels)));
    await writeFile(path.join(dir, 'tiny-labels-idx1-ubyte'), idx([2], new Uint8Array([4, 9])));
    const set = await loadDataset(path.join(dir, 'tiny-images-idx3-ubyte.gz'), {
      labelsPath: path.join(dir, 'tiny-labels-idx1-ubyte'),
    });
    expect(set.shape).toEqual([3, 3, 1]);
    expect(Array.from(set.labels)).toEqual([4, 9]);
    const wrongCount = await rejection(
      datasetFromBytes(idx([2, 3, 3], pixels), { format: 'idx', labels: idx([3], new Uint8Array(3)) }),
    );
    expect(wrongCount.message).toMatch(/must be \[2\], got \[3\]/);
  });
});

describe('.npy', () => {
  it('parses the header (dtype, fortran_order, shape) and reads uint8 NHWC', async () => {
    const data = Uint8Array.from({ length: 2 * 2 * 2 * 3 }, (_, i) => i);
    const set = await datasetFromBytes(npy('|u1', [2, 2, 2, 3], data), {
      labels: npy('<i8', [2], new Uint8Array(new BigInt64Array([1n, 0n]).buffer)),
    });
    expect(set.shape).toEqual([2, 2, 3]);
    expect(Array.from(set.labels)).toEqual([1, 0]);
    expect(Array.from(set.images)).toEqual(Array.from(data));
  });

  it('reads float32 NCHW in [0,1], transposed to NHWC and quantised to uint8', async () => {
    // One image, 3 channels of 1x2: channel c, pixel p = (c * 2 + p) / 10.
    const values = new Float32Array([0, 0.1, 0.2, 0.3, 0.4, 0.5]);
    const set = await datasetFromBytes(npy('<f4', [1, 3, 1, 2], new Uint8Array(values.buffer)), {
      filename: 'x.npy',
      layout: 'NCHW',
    });
    expect(set.shape).toEqual([1, 2, 3]);
    expect(Array.from(set.images)).toEqual([0, 51, 102, 26, 77, 128]);
  });

  it('honours fortran_order', () => {
    // Fortran order of a 2x3 array [[0,1,2],[3,4,5]] is 0,3,1,4,2,5.
    const array = parseNpy(npy('|u1', [2, 3], new Uint8Array([0, 3, 1, 4, 2, 5]), true));
    expect(Array.from(array.data)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('rejects bad headers, dtypes, sizes and float values outside [0,1]', async () => {
    expect(() => parseNpy(new Uint8Array([0x93, 0x4e, 0x55]), 'a.npy')).toThrow(/'a.npy' is not a .npy file/);
    expect(() => parseNpy(npy('<c8', [1], new Uint8Array(8)), 'c')).toThrow(/unsupported .npy dtype '<c8'/);
    expect(() => parseNpy(npy('|u1', [2, 2], new Uint8Array(3)), 's')).toThrow(
      /needs 4 bytes, the file holds 3/,
    );
    const broken = Buffer.from(npy('|u1', [1], new Uint8Array(1)));
    broken.write("{'descr' '|u1'", 10, 'latin1');
    expect(() => parseNpy(broken, 'b')).toThrow(/bad .npy header/);
    const outside = new Float32Array([0.5, 2]);
    const error = await rejection(datasetFromBytes(npy('<f4', [1, 1, 2, 1], new Uint8Array(outside.buffer))));
    expect(error.message).toMatch(/value 2 at flat index 1 is outside \[0, 1\]/);
  });
});

describe('image folders', () => {
  const png = (value: number, width = 4, height = 4) =>
    encodePng({ data: new Uint8Array(width * height * 3).fill(value), height, width, channels: 3 });

  it('labels by sorted class folder, files sorted; flat folders are unlabelled', async () => {
    const root = path.join(dir, 'folder');
    for (const [cls, file, value] of [
      ['zebra', 'b.png', 30],
      ['zebra', 'a.png', 20],
      ['ant', 'x.png', 10],
    ] as const) {
      await mkdir(path.join(root, cls), { recursive: true });
      await writeFile(path.join(root, cls, file), await png(value));
    }
    await writeFile(path.join(root, 'zebra', 'notes.txt'), 'not an image, ignored');
    const set = await loadDataset(root, { concurrency: 2 });
    expect(set.classNames).toEqual(['ant', 'zebra']);
    expect(Array.from(set.labels)).toEqual([0, 1, 1]);
    expect([set.images[0], set.images[48], set.images[96]]).toEqual([10, 20, 30]);
    const flat = await loadImageFolder(path.join(root, 'zebra'));
    expect(flat.unlabelled).toBe(true);
    expect(flat.size).toBe(2);
  });

  it('an empty folder', async () => {
    await mkdir(path.join(dir, 'empty'));
    const error = await rejection(loadDataset(path.join(dir, 'empty')));
    expect(error).toBeInstanceOf(DatasetError);
    expect(error.message).toMatch(/empty' holds no images/);
  });

  it('mixed image sizes: an error naming both files, unless a resize is asked', async () => {
    const root = path.join(dir, 'mixed');
    await mkdir(path.join(root, 'c'), { recursive: true });
    await writeFile(path.join(root, 'c', '1.png'), await png(50, 4, 4));
    await writeFile(path.join(root, 'c', '2.png'), await png(60, 6, 3));
    const error = await rejection(loadDataset(root, { concurrency: 1 }));
    expect((error as DatasetError).code).toBe('mixed-sizes');
    expect(error.message).toMatch(/1\.png' is 4x4, '.*2\.png' is 6x3/);
    const resized = await loadDataset(root, { resize: [2, 2] });
    expect(resized.shape).toEqual([2, 2, 3]);
    expect(resized.size).toBe(2);
  });

  it('a non-image file with an image extension: ImageError naming the file', async () => {
    const root = path.join(dir, 'liar');
    await mkdir(path.join(root, 'c'), { recursive: true });
    await writeFile(path.join(root, 'c', 'fake.jpg'), 'plain text');
    const error = await rejection(loadDataset(root));
    expect(error).toBeInstanceOf(ImageError);
    expect(error.message).toMatch(/fake\.jpg' is not an image/);
  });
});

describe('datasetFromBytes (uploads)', () => {
  it('detects CIFAR-10 by size, and unknown bytes with a clear error', async () => {
    expect(detectFormat(cifarRecords(2))).toBe('cifar10');
    const set = await datasetFromBytes(cifarRecords(5), { limit: 2 });
    expect(set.size).toBe(2);
    const error = await rejection(datasetFromBytes(new Uint8Array(10)));
    expect((error as DatasetError).code).toBe('unknown-format');
    expect((await rejection(datasetFromBytes(new Uint8Array(0)))).message).toMatch(/empty/);
    expect((await rejection(datasetFromBytes(cifarRecords(2), { maxBytes: 100 }))).message).toMatch(
      /6146 bytes, more than the limit 100/,
    );
  });

  it('reads a zip of an image folder (with a top folder) and enforces the unpacked size limit', async () => {
    const file = async (v: number) =>
      new Uint8Array(await encodePng({ data: new Uint8Array(12).fill(v), height: 2, width: 2, channels: 3 }));
    const archive = zipSync({
      'set/cat/1.png': await file(1),
      'set/dog/1.png': await file(2),
      'set/dog/2.png': await file(3),
      '__MACOSX/set/dog/._2.png': new Uint8Array(5),
    });
    const set = await datasetFromBytes(archive, { filename: 'set.zip' });
    expect(set.classNames).toEqual(['cat', 'dog']);
    expect(Array.from(set.labels)).toEqual([0, 1, 1]);
    expect([set.images[0], set.images[12], set.images[24]]).toEqual([1, 2, 3]);
    // A zip bomb in miniature: 4 MB of zeros packs into a few kB.
    const bomb = zipSync({ 'c/big.png': new Uint8Array(4_000_000) });
    expect(bomb.length).toBeLessThan(100_000);
    const tooBig = await rejection(datasetFromBytes(bomb, { maxBytes: 100_000 }));
    expect(tooBig.message).toMatch(/unpacks to more than the limit/);
    const corrupt = archive.slice(0, 40);
    expect((await rejection(datasetFromBytes(corrupt))).message).toMatch(/not a valid zip|holds no images/);
  });
});

describe('zipped image folders are sized from their headers before any image is decoded', () => {
  it('40 PNGs of 4096x4096 in a small zip: refused for their decoded size, RSS barely moves', async () => {
    const big = new Uint8Array(
      await encodePng({ data: new Uint8Array(4096 * 4096 * 3), height: 4096, width: 4096, channels: 3 }),
    );
    const archive = zipSync(
      Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`set/c${i % 2}/${i}.png`, big])),
      { level: 9 },
    );
    expect(archive.length).toBeLessThan(4_000_000);
    const rss = process.memoryUsage().rss;
    const error = await rejection(
      datasetFromBytes(archive, { filename: 'big.zip', maxBytes: 256 * 1024 ** 2 }),
    );
    expect(error).toBeInstanceOf(DatasetError);
    expect((error as DatasetError).code).toBe('too-large');
    expect(error.message).toBe(
      `'big.zip' would decode to 2013265920 bytes (40 images of 4096x4096x3), over the limit of 268435456`,
    );
    // One decoded image is 48 MB and four decode at once: the old path grew RSS by gigabytes.
    expect(process.memoryUsage().rss - rss).toBeLessThan(150 * 1024 ** 2);
  });

  it('a size over the pixel limit, or mixed sizes, are refused from the headers too', async () => {
    const png = async (side: number) =>
      new Uint8Array(
        await encodePng({ data: new Uint8Array(side * side * 3), height: side, width: side, channels: 3 }),
      );
    const small = await png(2);
    const overLimit = zipSync({ 'a/1.png': small, 'a/2.png': await png(64) });
    const tooLarge = await rejection(datasetFromBytes(overLimit, { maxPixels: 1000 }));
    expect(tooLarge).toBeInstanceOf(ImageError);
    expect(tooLarge.message).toMatch(/'a\/2.png' is 64x64 \(width x height\), over the limit of 1000 pixels/);
    const mixed = await rejection(datasetFromBytes(overLimit));
    expect(mixed.message).toMatch(/mixes image sizes: 'a\/1.png' is 2x2, 'a\/2.png' is 64x64/);
    // With a resize both sizes load: the budget counts the resized images.
    const resized = await datasetFromBytes(overLimit, { resize: [4, 4] });
    expect(resized.shape).toEqual([4, 4, 3]);
  });
});
