import { crc32 } from 'node:zlib';
import { PNG } from 'pngjs';

/**
 * Small plain PNGs decoded on this thread with pngjs, and the PNG header read from its bytes.
 *
 * Why: an OOD gate receives thousands of small (e.g. 32x32) PNGs a second. Through sharp each one
 * costs two native calls (header, then decode) whose option marshalling and thread-pool hops weigh
 * on the HTTP event loop (profile in docs/benchmarks/service.md); pngjs (zlib inflate, JS
 * unfiltering) decodes a small PNG for a fraction of that. Only PNGs whose pixels sharp would hand
 * back unchanged go this way (8-bit grey/RGB/alpha or a palette, not interlaced; no ICC profile, no
 * animation, no unknown chunk; every CRC checked). Anything else, and any failure,
 * returns `undefined`: the caller decodes with sharp, which then also reports the error.
 * test/data/png.test.ts checks the pixels equal sharp's, byte for byte, over generated and
 * corrupted PNGs.
 *
 * @example
 * const header = readPngHeader(bytes); // { width: 32, height: 32, bitDepth: 8, colourType: 2, interlaced: false }
 * const image = header && decodePlainPng(bytes, header, 3); // RawImage, or undefined: decode with sharp
 */

/** Decoded pixels: uint8 HWC, row-major (what sharp hands back too; image.ts passes it on). */
export interface RawImage {
  data: Uint8Array;
  height: number;
  width: number;
  channels: number;
}

/** Largest width x height decoded here; beyond it sharp decodes on its own threads (no event-loop stall). */
export const INLINE_PNG_MAX_PIXELS = 128 * 128;

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** The IHDR fields (PNG spec 11.2.2). */
export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  /** 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA. */
  colourType: number;
  /** Adam7. */
  interlaced: boolean;
}

function uint32(bytes: Uint8Array, offset: number): number {
  return (
    ((bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3]) >>> 0
  );
}

function chunkType(bytes: Uint8Array, offset: number): string {
  return String.fromCharCode(bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]);
}

/**
 * Signature and IHDR (the first chunk, 13 bytes of data) read from the bytes: width, height, bit
 * depth, colour type. `undefined` when the bytes do not start with a well-formed PNG header
 * (including a bad IHDR CRC and a zero or over-2^31 size, which the spec forbids).
 */
export function readPngHeader(bytes: Uint8Array): PngHeader | undefined {
  // 8 signature + 4 length + 4 type + 13 data + 4 CRC.
  if (bytes.length < 33) return undefined;
  for (let i = 0; i < SIGNATURE.length; i++) if (bytes[i] !== SIGNATURE[i]) return undefined;
  if (uint32(bytes, 8) !== 13 || chunkType(bytes, 12) !== 'IHDR') return undefined;
  // A corrupt IHDR is sharp's to report (as before: truncated or corrupt), not a size to trust.
  if (crc32(bytes.subarray(12, 29)) !== uint32(bytes, 29)) return undefined;
  const width = uint32(bytes, 16);
  const height = uint32(bytes, 20);
  const limit = 2 ** 31 - 1;
  if (width < 1 || height < 1 || width > limit || height > limit) return undefined;
  return { width, height, bitDepth: bytes[24], colourType: bytes[25], interlaced: bytes[28] === 1 };
}

/**
 * Chunks whose presence leaves sharp's pixels as the IDAT data says (checked in
 * test/data/png.test.ts for gAMA, cHRM, sRGB, sBIT, bKGD). Not here, so decoded by sharp: iCCP (sharp
 * converts to sRGB through the profile), eXIf, APNG's acTL/fcTL/fdAT, and every unknown chunk.
 */
const PLAIN_CHUNKS: ReadonlySet<string> = new Set([
  'IHDR',
  'PLTE',
  'IDAT',
  'IEND',
  'tRNS',
  'gAMA',
  'cHRM',
  'sRGB',
  'sBIT',
  'bKGD',
  'pHYs',
  'tIME',
  'tEXt',
  'zTXt',
  'iTXt',
]);

/**
 * Every chunk lies within the bytes, is one of PLAIN_CHUNKS, and the last one is IEND; tRNS only
 * beside a palette (on grey or RGB it is a colour key, which sharp turns into an alpha channel).
 */
function plainChunks(bytes: Uint8Array, palette: boolean): boolean {
  let offset = 8;
  while (offset + 12 <= bytes.length) {
    const length = uint32(bytes, offset);
    const type = chunkType(bytes, offset + 4);
    if (!PLAIN_CHUNKS.has(type) || (type === 'tRNS' && !palette)) return false;
    // Length, type, data, CRC.
    const end = offset + 12 + length;
    if (end > bytes.length) return false;
    if (type === 'IEND') return end === bytes.length;
    offset = end;
  }
  return false;
}

/** RGBA samples as `channels`: RGB drops alpha, one channel keeps R (callers pass grey sources only). */
function fromRgba(rgba: Uint8Array, pixels: number, channels: 1 | 3 | 4): Uint8Array {
  if (channels === 4) return rgba;
  const out = new Uint8Array(pixels * channels);
  for (let p = 0, from = 0, to = 0; p < pixels; p++, from += 4, to += channels) {
    out[to] = rgba[from];
    if (channels === 3) {
      out[to + 1] = rgba[from + 1];
      out[to + 2] = rgba[from + 2];
    }
  }
  return out;
}

/**
 * The pixels of a small plain PNG as `channels` (1 grey, 3 RGB, 4 RGBA) 8-bit samples, exactly as
 * sharp's `decodeImage` would give them; `undefined` when the PNG is not one decoded here (larger than
 * INLINE_PNG_MAX_PIXELS, interlaced, 16-bit or sub-byte grey, colour to one channel, a tRNS colour
 * key, an ICC profile, other chunks) or fails to decode here (bad CRC, truncated or corrupt data):
 * the caller then decodes with sharp.
 */
export function decodePlainPng(
  bytes: Uint8Array,
  header: PngHeader,
  channels: 1 | 3 | 4,
): RawImage | undefined {
  const { width, height, bitDepth, colourType, interlaced } = header;
  const pixels = width * height;
  if (pixels > INLINE_PNG_MAX_PIXELS || interlaced) return undefined;
  const palette = colourType === 3;
  const grey = colourType === 0 || colourType === 4;
  if (!(grey || palette || colourType === 2 || colourType === 6)) return undefined;
  // sharp's grey of a colour image is a luminance; pngjs scales sub-byte grey its own way.
  if (channels === 1 && !grey) return undefined;
  if (!(bitDepth === 8 || (palette && (bitDepth === 1 || bitDepth === 2 || bitDepth === 4)))) {
    return undefined;
  }
  if (!plainChunks(bytes, palette)) return undefined;
  try {
    // pngjs checks every CRC and inflates at most the image's size; it hands back RGBA.
    const png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    if (png.width !== width || png.height !== height || png.data.length !== pixels * 4) return undefined;
    const rgba = new Uint8Array(png.data.buffer, png.data.byteOffset, png.data.byteLength);
    return { data: fromRgba(rgba, pixels, channels), height, width, channels };
  } catch {
    return undefined;
  }
}
