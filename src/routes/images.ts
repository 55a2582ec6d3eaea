import * as tf from '@tensorflow/tfjs';
import type { Context } from 'hono';
import { ImageError } from '../data/errors.js';
import { decodeImage, encodePng, resizeTo } from '../data/image.js';
import type { Classifier } from '../engine/classifier.js';
import { invalidField, ProblemError } from './problem.js';

/** Image bytes from a request, with the name of the field they came from (for error messages). */
export interface ImageInput {
  field: string;
  bytes: Uint8Array;
}

export interface ImageLimits {
  /** Largest width x height of one uploaded image, checked from its header. */
  maxPixels: number;
  /** Most images in one request. */
  maxBatch: number;
}

const RAW_IMAGE_TYPES = new Set(['image/png', 'image/jpeg']);

/** The media type of a request without parameters, lower-cased ('' when absent). */
export function mediaType(c: Context): string {
  return (c.req.header('content-type') ?? '').split(';')[0].trim().toLowerCase();
}

export function unsupportedMediaType(got: string, accepted: readonly string[]): ProblemError {
  const detail = `content type '${got || '(none)'}' is not accepted here; send one of ${accepted.join(', ')}`;
  return new ProblemError(415, 'unsupported-media-type', 'Unsupported media type', detail, [
    { field: 'content-type', message: detail },
  ]);
}

/** Decodes one base64 string (optionally a data: URL) or names the field at fault. */
export function base64Bytes(text: string, field: string): Uint8Array {
  const payload = text.startsWith('data:') ? text.slice(text.indexOf(',') + 1) : text;
  const compact = payload.replace(/\s+/g, '');
  if (compact.length === 0 || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(compact)) {
    throw invalidField(field, `'${field}' must be base64-encoded image bytes`, 'invalid-image');
  }
  return new Uint8Array(Buffer.from(compact, 'base64'));
}

/**
 * Image bytes of a raw `image/png|jpeg` body or of the `image` parts of a multipart form. JSON bodies
 * are validated by the route schema and converted with `base64Bytes` by the caller.
 */
export async function readBinaryImages(c: Context, limits: ImageLimits): Promise<ImageInput[]> {
  const type = mediaType(c);
  if (RAW_IMAGE_TYPES.has(type)) {
    return [{ field: 'body', bytes: new Uint8Array(await c.req.arrayBuffer()) }];
  }
  if (type === 'multipart/form-data') {
    let form: FormData;
    try {
      form = await c.req.formData();
    } catch {
      throw new ProblemError(400, 'malformed-body', 'Malformed body', 'the multipart body cannot be parsed');
    }
    const parts = form.getAll('image');
    if (parts.length === 0) throw invalidField('image', `the form needs at least one 'image' file part`);
    if (parts.length > limits.maxBatch) {
      throw invalidField('image', `at most ${limits.maxBatch} images per request, got ${parts.length}`);
    }
    const inputs: ImageInput[] = [];
    for (const [i, part] of parts.entries()) {
      const field = parts.length === 1 ? 'image' : `image.${i}`;
      if (typeof part === 'string') throw invalidField(field, `'${field}' must be a file part, not text`);
      inputs.push({ field, bytes: new Uint8Array(await part.arrayBuffer()) });
    }
    return inputs;
  }
  throw unsupportedMediaType(type, ['application/json', 'image/png', 'image/jpeg', 'multipart/form-data']);
}

/**
 * Decodes every input to the model's channels, resizes it to the model's input size (cover-crop)
 * and stacks them as one NHWC float32 tensor in [0,1]; the caller disposes it. Image errors name
 * the field they came from.
 */
export async function imagesToTensor(
  inputs: ImageInput[],
  classifier: Classifier,
  limits: ImageLimits,
): Promise<tf.Tensor4D> {
  if (inputs.length > limits.maxBatch) {
    throw invalidField('images', `at most ${limits.maxBatch} images per request, got ${inputs.length}`);
  }
  const [height, width, channels] = classifier.card.inputShape;
  if (channels !== 1 && channels !== 3 && channels !== 4) {
    throw new ProblemError(500, 'internal', 'Internal error', `the model takes ${channels} channels`);
  }
  const size = height * width * channels;
  const values = new Float32Array(inputs.length * size);
  for (const [i, input] of inputs.entries()) {
    let decoded: Awaited<ReturnType<typeof decodeImage>>;
    try {
      decoded = await decodeImage(input.bytes, {
        channels,
        maxPixels: limits.maxPixels,
        source: input.field,
      });
      decoded = await resizeTo(decoded, [height, width], 'cover');
    } catch (error) {
      if (error instanceof ImageError) {
        const status = error.code === 'too-large' ? 413 : 422;
        throw new ProblemError(
          status,
          status === 413 ? 'image-too-large' : 'invalid-image',
          status === 413 ? 'Image too large' : 'Invalid image',
          error.message,
          [{ field: input.field, message: error.message }],
        );
      }
      throw error;
    }
    const offset = i * size;
    for (let j = 0; j < size; j++) values[offset + j] = decoded.data[j] / 255;
  }
  return tf.tensor4d(values, [inputs.length, height, width, channels]);
}

/** PNG of image `index` of an NHWC batch in [0,1], base64-encoded. */
export async function pngBase64(batch: tf.Tensor4D, index: number): Promise<string> {
  const image = tf.tidy(() => batch.slice([index, 0, 0, 0], [1, -1, -1, -1]).squeeze([0]) as tf.Tensor3D);
  try {
    return Buffer.from(await encodePng(image)).toString('base64');
  } finally {
    image.dispose();
  }
}
