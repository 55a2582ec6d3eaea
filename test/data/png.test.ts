import { crc32, deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { encode } from 'fast-png';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { ImageError } from '../../src/data/errors.js';
import { decodeImage, type RawImage, readImageHeader } from '../../src/data/image.js';
import { decodePlainPng, INLINE_PNG_MAX_PIXELS, readPngHeader } from '../../src/data/png.js';
import { pngChunk } from '../helpers/png.js';

/** The small-PNG path (pngjs on this thread) against sharp, which decodes everything else. */

type Channels = 1 | 3 | 4;

const sharpDecode = (bytes: Uint8Array, channels: Channels) =>
  decodeImage(bytes, { channels, inline: false });

/** Before src/data/png.ts: sharp's header read, then sharp's decode. */
async function sharpHeaderThenDecode(bytes: Uint8Array, channels: Channels): Promise<RawImage> {
  await readImageHeader(bytes);
  return sharpDecode(bytes, channels);
}

function inline(bytes: Uint8Array, channels: Channels): RawImage | undefined {
  const header = readPngHeader(bytes);
  return header && decodePlainPng(bytes, header, channels);
}

/** What decodeImage answers: the pixels, or the error's class and code. */
async function outcome(promise: Promise<RawImage>) {
  try {
    const image = await promise;
    return { ...image, data: Buffer.from(image.data).toString('hex') };
  } catch (error) {
    return { error: error instanceof ImageError ? error.code : String(error) };
  }
}

/** The PNG with `extra` inserted right after IHDR (8 signature + 25 IHDR bytes). */
const withChunk = (png: Uint8Array, extra: Buffer) =>
  Buffer.concat([png.subarray(0, 33), extra, png.subarray(33)]);

const u32 = (value: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
};

/** A PNG of every layout fast-png writes: grey, grey+alpha, RGB, RGBA (8 bit), palettes of 1-8 bits. */
const pngArbitrary = fc
  .record({
    width: fc.integer({ min: 1, max: 20 }),
    height: fc.integer({ min: 1, max: 20 }),
    layout: fc.constantFrom('grey', 'grey-alpha', 'rgb', 'rgba', 'palette', 'palette-alpha'),
    paletteDepth: fc.constantFrom(1, 2, 4, 8),
    adam7: fc.boolean(),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  })
  .map(({ width, height, layout, paletteDepth, adam7, seed }) => {
    let state = seed;
    const next = () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state >>> 24;
    };
    if (layout === 'palette' || layout === 'palette-alpha') {
      const colours = 2 ** paletteDepth;
      const palette = Array.from({ length: colours }, () =>
        layout === 'palette' ? [next(), next(), next()] : [next(), next(), next(), next()],
      );
      // Packed rows of indices, every index within the palette.
      const rowBytes = Math.ceil((width * paletteDepth) / 8);
      const data = Uint8Array.from({ length: rowBytes * height }, next);
      const png = encode({ width, height, data, channels: 1, depth: paletteDepth as 1 | 2 | 4 | 8, palette });
      return { png, layout, width, height, adam7: false };
    }
    const channels = { grey: 1, 'grey-alpha': 2, rgb: 3, rgba: 4 }[layout] ?? 3;
    const data = Uint8Array.from({ length: width * height * channels }, next);
    const png = encode({ width, height, data, channels, depth: 8 }, { interlace: adam7 ? 'Adam7' : 'null' });
    return { png, layout, width, height, adam7 };
  });

const channelsArbitrary = fc.constantFrom<Channels>(1, 3, 4);

describe('readPngHeader', () => {
  it('reads width, height, bit depth and colour type from IHDR', async () => {
    const png = await sharp({ create: { width: 7, height: 5, channels: 4, background: '#123456' } })
      .png()
      .toBuffer();
    expect(readPngHeader(png)).toEqual({
      width: 7,
      height: 5,
      bitDepth: 8,
      colourType: 6,
      interlaced: false,
    });
    const adam7 = await sharp(png).png({ progressive: true }).toBuffer();
    expect(readPngHeader(adam7)?.interlaced).toBe(true);
  });

  it('answers undefined for non-PNG bytes, a short header, a zero size, a bad IHDR CRC and a first chunk other than IHDR', async () => {
    const png = encode({ width: 3, height: 2, data: new Uint8Array(18), channels: 3, depth: 8 });
    const jpeg = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#000' } })
      .jpeg()
      .toBuffer();
    expect(readPngHeader(jpeg)).toBeUndefined();
    expect(readPngHeader(png.subarray(0, 32))).toBeUndefined();
    const zeroWidth = Buffer.from(png);
    zeroWidth.writeUInt32BE(0, 16);
    zeroWidth.writeUInt32BE(crc32(zeroWidth.subarray(12, 29)), 29);
    expect(readPngHeader(zeroWidth)).toBeUndefined();
    const badCrc = Buffer.from(png);
    badCrc.writeUInt32BE(9, 16); // width 3 -> 9 without a new CRC
    expect(readPngHeader(badCrc)).toBeUndefined();
    const renamed = Buffer.from(png);
    renamed.write('IHDX', 12, 'latin1');
    expect(readPngHeader(renamed)).toBeUndefined();
  });
});

describe('decodePlainPng equals sharp', () => {
  it('for every layout and output channel count it decodes (property, 200 PNGs)', async () => {
    await fc.assert(
      fc.asyncProperty(pngArbitrary, channelsArbitrary, async ({ png, layout, adam7 }, channels) => {
        const mine = inline(png, channels);
        const grey = layout === 'grey' || layout === 'grey-alpha';
        // Colour to one channel is sharp's luminance, and Adam7 inflates without a size bound in
        // pngjs: both left to sharp. Everything else is decoded here.
        if ((channels === 1 && !grey) || adam7) {
          expect(mine).toBeUndefined();
          return;
        }
        expect(mine).toBeDefined();
        const theirs = await sharpDecode(png, channels);
        expect({ ...mine, data: Buffer.from(mine?.data ?? []) }).toEqual({
          ...theirs,
          data: Buffer.from(theirs.data),
        });
      }),
      { numRuns: 200, seed: 16 },
    );
  });

  it("for sharp's own PNGs: adaptive filters, palettes of 1 to 8 bits with and without alpha", async () => {
    const raw = Uint8Array.from({ length: 24 * 17 * 4 }, (_, i) => (i * 97 + (i >> 5) * 13) % 256);
    const source = () => sharp(raw, { raw: { width: 24, height: 17, channels: 4 } });
    const pngs = [
      await source().removeAlpha().png().toBuffer(),
      await source().png({ compressionLevel: 0, adaptiveFiltering: true }).toBuffer(),
    ];
    // libvips writes 1, 2, 4 and 8-bit indices for up to 2, 4, 16 and 256 colours.
    for (const colours of [2, 4, 16, 256]) {
      pngs.push(await source().png({ palette: true, colours }).toBuffer());
      pngs.push(await source().removeAlpha().png({ palette: true, colours }).toBuffer());
    }
    expect(pngs.map((png) => readPngHeader(png)?.bitDepth)).toEqual([8, 8, 1, 1, 2, 2, 4, 4, 8, 8]);
    for (const png of pngs) {
      for (const channels of [3, 4] as const) {
        const mine = inline(png, channels);
        expect(mine).toBeDefined();
        expect(Buffer.from(mine?.data ?? [])).toEqual(Buffer.from((await sharpDecode(png, channels)).data));
      }
    }
  });

  it('with gAMA, cHRM, sRGB, sBIT, bKGD, tEXt chunks (sharp ignores them for the pixels)', async () => {
    const data = Uint8Array.from({ length: 6 * 5 * 3 }, (_, i) => (i * 41) % 256);
    const png = encode({ width: 6, height: 5, data, channels: 3, depth: 8 });
    const chromaticities = [31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000].map(u32);
    const extras = [
      pngChunk('gAMA', u32(20000)),
      pngChunk('cHRM', Buffer.concat(chromaticities)),
      pngChunk('sRGB', Buffer.from([0])),
      pngChunk('sBIT', Buffer.from([5, 6, 5])),
      pngChunk('bKGD', Buffer.from([0, 10, 0, 20, 0, 30])),
      pngChunk('tEXt', Buffer.from('Comment\0hello', 'latin1')),
    ];
    for (const extra of extras) {
      const decorated = withChunk(png, extra);
      const mine = inline(decorated, 3);
      expect(mine).toBeDefined();
      expect(Buffer.from(mine?.data ?? [])).toEqual(Buffer.from((await sharpDecode(decorated, 3)).data));
    }
  });
});

describe('decodePlainPng leaves to sharp', () => {
  const rgb = encode({ width: 4, height: 4, data: new Uint8Array(48).fill(90), channels: 3, depth: 8 });

  it('an embedded ICC profile (sharp converts through it)', async () => {
    const png = await sharp(Buffer.alloc(48, 90), { raw: { width: 4, height: 4, channels: 3 } })
      .withIccProfile('p3')
      .png()
      .toBuffer();
    expect(readPngHeader(png)).toBeDefined();
    expect(inline(png, 3)).toBeUndefined();
  });

  it('16-bit samples, sub-byte grey, a tRNS colour key, unknown and animation chunks', () => {
    const deep = encode({
      width: 2,
      height: 2,
      data: new Uint16Array(12).fill(4000),
      channels: 3,
      depth: 16,
    });
    const greyBits = encode({ width: 8, height: 1, data: Uint8Array.of(0b10100101), channels: 1, depth: 1 });
    expect(inline(deep, 3)).toBeUndefined();
    expect(inline(greyBits, 3)).toBeUndefined();
    expect(inline(withChunk(rgb, pngChunk('tRNS', Buffer.from([0, 90, 0, 90, 0, 90]))), 3)).toBeUndefined();
    expect(inline(withChunk(rgb, pngChunk('abCD', Buffer.from([1, 2, 3]))), 3)).toBeUndefined();
    expect(inline(withChunk(rgb, pngChunk('acTL', Buffer.concat([u32(1), u32(0)]))), 3)).toBeUndefined();
    expect(inline(rgb, 3)).toBeDefined();
  });

  it(`images over ${INLINE_PNG_MAX_PIXELS} pixels (sharp decodes those off the event loop)`, () => {
    const side = Math.sqrt(INLINE_PNG_MAX_PIXELS);
    const atLimit = encode({
      width: side,
      height: side,
      data: new Uint8Array(side * side),
      channels: 1,
      depth: 8,
    });
    const over = encode({
      width: side + 1,
      height: side,
      data: new Uint8Array((side + 1) * side),
      channels: 1,
      depth: 8,
    });
    expect(inline(atLimit, 1)).toBeDefined();
    expect(inline(over, 1)).toBeUndefined();
  });

  it('an IDAT inflating far past the image (pngjs stops at the image size)', () => {
    const bomb = Buffer.concat([
      rgb.subarray(0, 33),
      pngChunk('IDAT', deflateSync(Buffer.alloc(8 * 1024 * 1024))),
      pngChunk('IEND', new Uint8Array(0)),
    ]);
    expect(bomb.length).toBeLessThan(16 * 1024);
    expect(inline(bomb, 3)).toBeUndefined();
  });

  it('a bad CRC, trailing bytes after IEND, a truncated file', () => {
    const badCrc = Buffer.from(rgb);
    badCrc[29] ^= 0xff; // IHDR's CRC
    expect(inline(badCrc, 3)).toBeUndefined();
    expect(inline(Buffer.concat([rgb, Buffer.from([0])]), 3)).toBeUndefined();
    expect(inline(rgb.subarray(0, rgb.length - 1), 3)).toBeUndefined();
  });
});

describe('decodeImage answers as sharp alone did', () => {
  it('for corrupted PNGs: truncated, one byte changed, bytes appended (property, 400 cases)', async () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
      fc.record({
        kind: fc.constant('flip' as const),
        at: fc.nat(),
        value: fc.integer({ min: 1, max: 255 }),
      }),
      fc.record({
        kind: fc.constant('append' as const),
        bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
      }),
    );
    await fc.assert(
      fc.asyncProperty(pngArbitrary, channelsArbitrary, mutation, async ({ png }, channels, change) => {
        let bytes: Uint8Array;
        if (change.kind === 'truncate') bytes = png.subarray(0, change.at % png.length);
        else if (change.kind === 'flip') {
          bytes = Uint8Array.from(png);
          bytes[change.at % bytes.length] ^= change.value;
        } else bytes = Buffer.concat([png, change.bytes]);
        // One after the other: libvips reports concurrent failures racily ('Unknown error').
        const mine = await outcome(decodeImage(bytes, { channels }));
        expect(mine).toEqual(await outcome(sharpHeaderThenDecode(bytes, channels)));
      }),
      { numRuns: 400, seed: 1616 },
    );
  });

  it('checks the declared size before decoding: a 1 kB PNG declaring 20000 x 20000 is too-large', async () => {
    const png = Buffer.from(encode({ width: 2, height: 2, data: new Uint8Array(12), channels: 3, depth: 8 }));
    png.writeUInt32BE(20000, 16);
    png.writeUInt32BE(20000, 20);
    png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
    const error = await decodeImage(png, { channels: 3, maxPixels: 4096 * 4096 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ImageError);
    expect((error as ImageError).code).toBe('too-large');
    expect((error as ImageError).message).toContain('20000x20000');
  });
});
