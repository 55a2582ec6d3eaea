import type { Context } from 'hono';
import type { ImageInput, ImageLimits } from '../jobs/serving/index.js';
import { invalidField, ProblemError } from './problem.js';

export type { ImageInput, ImageLimits };

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

/** Bytes as base64 (PNG answers in JSON). */
export function base64Of(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}
