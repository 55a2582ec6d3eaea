import type * as tf from '@tensorflow/tfjs';
import sharp, { type Metadata } from 'sharp';
import { ImageError } from './errors.js';
import { decodePlainPng, type RawImage, readPngHeader } from './png.js';

/**
 * Image bytes in and out with sharp (libvips). Decoding checks the header first: the pixel count a
 * file declares is compared with `maxPixels` before any pixel is decoded, so a 1 kB PNG claiming
 * 12000x12000 costs nothing. Every failure is an `ImageError` with a `code` the HTTP layer maps to 422/413.
 * Small plain PNGs are decoded on this thread with pngjs (src/data/png.ts), to the same pixels.
 */

export type { RawImage };

export interface DecodeOptions {
  /** Largest width x height accepted, checked from the header before decoding. Default 4096 x 4096. */
  maxPixels?: number;
  /** Output channels: 1 (luminance), 3 (RGB; alpha dropped, grey replicated) or 4 (RGBA). Default 3. */
  channels?: 1 | 3 | 4;
  /** Names the input in error messages. */
  source?: string;
  /**
   * Decode small plain PNGs on this thread with pngjs (default true; src/data/png.ts): the same
   * pixels as sharp, without sharp's per-call cost. false: always sharp.
   */
  inline?: boolean;
}

export const DEFAULT_MAX_PIXELS = 4096 * 4096;

/** Formats accepted; sharp could render SVG or PDF too, which an upload endpoint must not do. */
export const DECODABLE_FORMATS: ReadonlySet<string> = new Set(['png', 'jpeg', 'webp', 'gif', 'tiff']);

function classifySharpError(error: unknown, source: string): ImageError {
  const message = error instanceof Error ? error.message : String(error);
  if (/unsupported image format/i.test(message)) {
    return new ImageError('not-an-image', `'${source}' is not an image (no known image header)`);
  }
  if (/pixel limit/i.test(message)) return new ImageError('too-large', `'${source}': ${message}`);
  if (
    /premature end|truncated|unexpected end|read error|not enough|end of (file|stream)|corrupt|invalid/i.test(
      message,
    )
  ) {
    return new ImageError('truncated', `'${source}' is truncated or corrupt: ${message.split('\n')[0]}`);
  }
  return new ImageError('not-an-image', `'${source}' cannot be decoded: ${message.split('\n')[0]}`);
}

export interface ImageHeader {
  format: string;
  width: number;
  height: number;
  channels: number;
}

/** Reads format and size from the header only; throws `ImageError` for non-images and unsupported formats. */
export async function readImageHeader(bytes: Uint8Array, source = 'the image'): Promise<ImageHeader> {
  if (bytes.length === 0) throw new ImageError('empty', `'${source}' is empty (0 bytes)`);
  let metadata: Metadata;
  try {
    // limitInputPixels: false here because we only read the header and want to report the size ourselves.
    metadata = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (error) {
    throw classifySharpError(error, source);
  }
  const format = metadata.format ?? 'unknown';
  if (!DECODABLE_FORMATS.has(format)) {
    throw new ImageError(
      'unsupported-format',
      `'${source}' is ${format}, not one of ${[...DECODABLE_FORMATS].join(', ')}`,
    );
  }
  if (!metadata.width || !metadata.height) {
    throw new ImageError('truncated', `'${source}': the ${format} header gives no size`);
  }
  return { format, width: metadata.width, height: metadata.height, channels: metadata.channels ?? 3 };
}

function checkChannels(channels: number, argument: string): void {
  if (channels !== 1 && channels !== 3 && channels !== 4) {
    throw new ImageError('bad-channels', `'${argument}' must be 1, 3 or 4, got ${channels}`);
  }
}

/**
 * Decodes PNG/JPEG/WebP/GIF (first frame)/TIFF into uint8 HWC with the requested channels.
 *
 * @example
 * const { data, height, width } = await decodeImage(bytes, { channels: 3, maxPixels: 1024 * 1024 });
 */
export async function decodeImage(bytes: Uint8Array, options: DecodeOptions = {}): Promise<RawImage> {
  const source = options.source ?? 'the image';
  const channels = options.channels ?? 3;
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  checkChannels(channels, 'channels');
  if (!Number.isInteger(maxPixels) || maxPixels < 1) {
    throw new ImageError('bad-argument', `'maxPixels' must be a positive integer, got ${maxPixels}`);
  }
  // A PNG's size is in its first 33 bytes: read there, no native call. Other formats: sharp's header.
  const png = readPngHeader(bytes);
  const header = png ?? (await readImageHeader(bytes, source));
  if (header.width * header.height > maxPixels) {
    throw new ImageError(
      'too-large',
      `'${source}' declares ${header.width}x${header.height} = ${header.width * header.height} pixels, more than the limit ${maxPixels}`,
    );
  }
  const inline = png && options.inline !== false ? decodePlainPng(bytes, png, channels) : undefined;
  if (inline) return inline;
  let pipeline = sharp(bytes, { limitInputPixels: maxPixels, failOn: 'truncated' });
  if (channels === 1) pipeline = pipeline.grayscale().removeAlpha();
  else if (channels === 3) pipeline = pipeline.removeAlpha().toColourspace('srgb');
  else pipeline = pipeline.ensureAlpha().toColourspace('srgb');
  try {
    const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== channels) {
      throw new ImageError(
        'bad-channels',
        `'${source}' decoded to ${info.channels} channels, not ${channels}`,
      );
    }
    return {
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
      height: info.height,
      width: info.width,
      channels,
    };
  } catch (error) {
    if (error instanceof ImageError) throw error;
    throw classifySharpError(error, source);
  }
}

/**
 * `cover`: scale so the SHORTER side matches, then crop the centre (keeps the aspect ratio; the usual
 * eval transform and the one used for image folders). `fill`: stretch to exactly H x W (distorts).
 * Both resample with sharp's Lanczos-3 (area-like when shrinking).
 */
export type ResizeMethod = 'cover' | 'fill';

export async function resizeTo(
  image: RawImage,
  size: readonly [number, number],
  method: ResizeMethod = 'cover',
): Promise<RawImage> {
  const [height, width] = size;
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new ImageError('bad-argument', `'size' must be two positive integers, got [${size.join(', ')}]`);
  }
  if (image.height === height && image.width === width) return image;
  const { data, info } = await sharp(image.data, {
    raw: { width: image.width, height: image.height, channels: image.channels as 1 | 3 | 4 },
  })
    .resize(width, height, { fit: method, position: 'centre' })
    // sharp would otherwise hand one-channel input back as sRGB.
    .toColourspace(image.channels === 1 ? 'b-w' : 'srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    height: info.height,
    width: info.width,
    channels: info.channels,
  };
}

/** A raw image, or a [H, W, C] / [1, H, W, C] tensor in [0,1] (float) with C in 1, 3, 4. */
export type EncodableImage = RawImage | tf.Tensor3D | tf.Tensor4D;

function isRawImage(image: EncodableImage): image is RawImage {
  return 'data' in image && (image as RawImage).data instanceof Uint8Array;
}

async function toRaw(image: EncodableImage): Promise<RawImage> {
  if (isRawImage(image)) return image;
  const tensor = image;
  let shape = tensor.shape as number[];
  if (shape.length === 4) {
    if (shape[0] !== 1)
      throw new ImageError('bad-argument', `'image' must be one image, got shape [${shape.join(', ')}]`);
    shape = shape.slice(1);
  }
  if (shape.length !== 3)
    throw new ImageError('bad-argument', `'image' must be rank 3 [H, W, C], got [${shape.join(', ')}]`);
  const [height, width, channels] = shape;
  checkChannels(channels, 'image channels');
  const values = await tensor.data();
  const data = new Uint8Array(values.length);
  const isFloat = tensor.dtype === 'float32';
  for (let i = 0; i < values.length; i++) {
    const v = isFloat ? values[i] * 255 : values[i];
    data[i] = Math.max(0, Math.min(255, Math.round(v)));
  }
  return { data, height, width, channels };
}

/** Encodes an image as PNG (float tensors are taken as [0,1] and rounded to uint8). Does not dispose. */
export async function encodePng(image: EncodableImage): Promise<Uint8Array> {
  const raw = await toRaw(image);
  checkChannels(raw.channels, 'image channels');
  if (raw.data.length !== raw.height * raw.width * raw.channels) {
    throw new ImageError(
      'bad-argument',
      `'image.data' holds ${raw.data.length} bytes, not ${raw.height}x${raw.width}x${raw.channels}`,
    );
  }
  const png = await sharp(raw.data, {
    raw: { width: raw.width, height: raw.height, channels: raw.channels as 1 | 3 | 4 },
  })
    .png()
    .toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}
