import { deflateSync } from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { ImageError } from '../../src/data/errors.js';
import { decodeImage, encodePng, readImageHeader, resizeTo } from '../../src/data/image.js';
import { PNG_SIGNATURE, pngChunk } from '../helpers/png.js';

/** A valid-looking PNG header declaring width x height RGB, with a tiny (incomplete) IDAT: a decompression bomb. */
function pngDeclaring(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    PNG_SIGNATURE,
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(Buffer.alloc(4096))),
    pngChunk('IEND', new Uint8Array(0)),
  ]);
}

async function expectImageError(promise: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ImageError);
  expect((error as ImageError).code).toBe(code);
  expect((error as ImageError).message).toMatch(message);
}

const gradient = (h: number, w: number, c: number) =>
  Uint8Array.from({ length: h * w * c }, (_, i) => (i * 37) % 256);

describe('encodePng / decodeImage round trip', () => {
  it('is lossless for RGB raw images', async () => {
    const raw = { data: gradient(5, 7, 3), height: 5, width: 7, channels: 3 };
    const png = await encodePng(raw);
    expect(Array.from(png.subarray(1, 4), (b) => String.fromCharCode(b)).join('')).toBe('PNG');
    const back = await decodeImage(png, { channels: 3 });
    expect([back.height, back.width, back.channels]).toEqual([5, 7, 3]);
    expect(Array.from(back.data)).toEqual(Array.from(raw.data));
  });

  it('encodes [0,1] float tensors (rank 3 and [1,H,W,C]) rounding to uint8, without leaking tensors', async () => {
    const before = tf.memory().numTensors;
    const t = tf.tensor3d([0, 0.5, 1, 0.25], [2, 2, 1]);
    const png = await encodePng(t);
    const t4 = t.expandDims(0) as tf.Tensor4D;
    const png4 = await encodePng(t4);
    t.dispose();
    t4.dispose();
    expect(tf.memory().numTensors).toBe(before);
    const back = await decodeImage(png, { channels: 1 });
    expect(Array.from(back.data)).toEqual([0, 128, 255, 64]);
    expect(Array.from((await decodeImage(png4, { channels: 1 })).data)).toEqual([0, 128, 255, 64]);
    const bad = tf.zeros([2, 2, 2, 3]) as tf.Tensor4D;
    await expectImageError(encodePng(bad), 'bad-argument', /one image/);
    bad.dispose();
  });

  it('converts grayscale to RGB (replicated) and drops alpha', async () => {
    const gray = await sharp(Buffer.from([10, 200, 30, 40]), { raw: { width: 2, height: 2, channels: 1 } })
      .png()
      .toBuffer();
    const rgb = await decodeImage(gray, { channels: 3 });
    expect(Array.from(rgb.data)).toEqual([10, 10, 10, 200, 200, 200, 30, 30, 30, 40, 40, 40]);
    const rgba = await encodePng({
      data: Uint8Array.from([1, 2, 3, 0, 4, 5, 6, 255]),
      height: 1,
      width: 2,
      channels: 4,
    });
    expect(Array.from((await decodeImage(rgba, { channels: 3 })).data)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from((await decodeImage(rgba, { channels: 4 })).data)).toEqual([1, 2, 3, 0, 4, 5, 6, 255]);
    const one = await decodeImage(rgba, { channels: 1 });
    expect(one.channels).toBe(1);
    expect(one.data).toHaveLength(2);
  });
});

describe('resizeTo', () => {
  it("'cover' scales the shorter side then crops the centre; 'fill' stretches", async () => {
    // 4 rows x 8 columns: left half 0, right half 200; the centre 4x4 crop straddles both.
    const data = Uint8Array.from({ length: 32 }, (_, i) => (i % 8 < 4 ? 0 : 200));
    const wide = { data, height: 4, width: 8, channels: 1 };
    const cover = await resizeTo(wide, [2, 2], 'cover');
    expect([cover.height, cover.width]).toEqual([2, 2]);
    expect(cover.data[0]).toBeLessThan(60);
    expect(cover.data[1]).toBeGreaterThan(140);
    const fill = await resizeTo(wide, [4, 2], 'fill');
    expect([fill.height, fill.width]).toEqual([4, 2]);
    const same = await resizeTo(wide, [4, 8]);
    expect(same).toBe(wide);
    await expect(resizeTo(wide, [0, 2])).rejects.toThrow(/'size' must be two positive integers/);
  });
});

describe('decodeImage rejects bad input with a typed ImageError', () => {
  it('a PNG declaring 12000x12000 (decompression bomb), from the header, before decoding', async () => {
    const bomb = pngDeclaring(12000, 12000);
    expect(bomb.length).toBeLessThan(200);
    expect(await readImageHeader(bomb)).toMatchObject({ format: 'png', width: 12000, height: 12000 });
    await expectImageError(
      decodeImage(bomb, { maxPixels: 4096 * 4096 }),
      'too-large',
      /12000x12000 = 144000000 pixels/,
    );
  });

  it('a 1-byte file', async () => {
    await expectImageError(decodeImage(new Uint8Array([0x89])), 'not-an-image', /not an image/);
  });

  it('an empty file', async () => {
    await expectImageError(decodeImage(new Uint8Array(0)), 'empty', /empty/);
  });

  it('non-image bytes (text)', async () => {
    await expectImageError(
      decodeImage(new TextEncoder().encode('hello, this is not a picture')),
      'not-an-image',
      /not an image/,
    );
  });

  it('a truncated PNG', async () => {
    const png = await encodePng({ data: gradient(64, 64, 3), height: 64, width: 64, channels: 3 });
    await expectImageError(
      decodeImage(png.subarray(0, Math.floor(png.length / 2))),
      'truncated',
      /truncated/,
    );
  });

  it('a truncated JPEG', async () => {
    const jpeg = await sharp(Buffer.from(gradient(64, 64, 3)), {
      raw: { width: 64, height: 64, channels: 3 },
    })
      .jpeg()
      .toBuffer();
    await expectImageError(
      decodeImage(jpeg.subarray(0, Math.floor(jpeg.length / 2))),
      'truncated',
      /truncated/,
    );
  });

  it('an unsupported format (SVG, which sharp could render)', async () => {
    const svg = new TextEncoder().encode(
      '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>',
    );
    await expectImageError(decodeImage(svg), 'unsupported-format', /svg/);
  });

  it('bad channel counts and limits name the argument', async () => {
    const png = await encodePng({ data: gradient(2, 2, 3), height: 2, width: 2, channels: 3 });
    await expectImageError(
      decodeImage(png, { channels: 2 as 3 }),
      'bad-channels',
      /'channels' must be 1, 3 or 4/,
    );
    await expectImageError(decodeImage(png, { maxPixels: 0 }), 'bad-argument', /'maxPixels'/);
    await expectImageError(decodeImage(png, { maxPixels: 3 }), 'too-large', /2x2 = 4 pixels/);
  });
});

describe('resizeTo keeps the channel count', () => {
  it('for 1, 3 and 4 channels', async () => {
    for (const channels of [1, 3, 4]) {
      const image = { data: gradient(6, 9, channels), height: 6, width: 9, channels };
      const out = await resizeTo(image, [3, 3]);
      expect([out.height, out.width, out.channels]).toEqual([3, 3, channels]);
      expect(out.data).toHaveLength(9 * channels);
    }
  });
});
