import * as tf from '@tensorflow/tfjs';
import { ImageError } from '../../data/errors.js';
import { decodeImage, encodePng, resizeTo } from '../../data/image.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { InputFieldError, InvalidInputError } from '../errors.js';

/**
 * Uploaded images as model input, and model images back as PNG: what predict, worst-case OOD and
 * counterfactuals share.
 */

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

/** byte / 255 as float32, looked up: the same values as dividing, without a division per value on the event loop. */
const UNIT_OF_BYTE = Float32Array.from({ length: 256 }, (_, byte) => byte / 255);

/**
 * Decodes every input to the model's channels, resizes it to the model's input size (cover-crop)
 * and stacks them as NHWC float32 rows in [0,1]. An image that cannot be read is a
 * `InputFieldError` naming its field (its cause an `ImageError`).
 */
export async function imagesToPixels(
  inputs: ImageInput[],
  classifier: Classifier,
  limits: ImageLimits,
): Promise<Float32Array> {
  if (inputs.length > limits.maxBatch) {
    throw new InvalidInputError(
      'images',
      `at most ${limits.maxBatch} images per request, got ${inputs.length}`,
    );
  }
  const [height, width, channels] = classifier.card.inputShape;
  if (channels !== 1 && channels !== 3 && channels !== 4) {
    throw new Error(`the model takes ${channels} channels`);
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
      if (error instanceof ImageError) throw new InputFieldError(input.field, error);
      throw error;
    }
    const offset = i * size;
    const data = decoded.data;
    for (let j = 0; j < size; j++) values[offset + j] = UNIT_OF_BYTE[data[j]];
  }
  return values;
}

/** `imagesToPixels` as one NHWC tensor; the caller disposes it. */
export async function imagesToTensor(
  inputs: ImageInput[],
  classifier: Classifier,
  limits: ImageLimits,
): Promise<tf.Tensor4D> {
  const values = await imagesToPixels(inputs, classifier, limits);
  return tf.tensor4d(values, [inputs.length, ...classifier.card.inputShape]);
}

/** PNG of image `index` of an NHWC batch in [0,1]. */
export async function pngOf(batch: tf.Tensor4D, index: number): Promise<Uint8Array> {
  const image = tf.tidy(() => batch.slice([index, 0, 0, 0], [1, -1, -1, -1]).squeeze([0]) as tf.Tensor3D);
  try {
    return await encodePng(image);
  } finally {
    image.dispose();
  }
}

/** PNG of image `index` of NHWC rows in [0,1] of `shape` [H, W, C] (the same bytes as `pngOf`). */
export async function pngOfRows(
  rows: Float32Array,
  index: number,
  shape: readonly [number, number, number],
): Promise<Uint8Array> {
  const [height, width, channels] = shape;
  const size = height * width * channels;
  if (!(Number.isInteger(index) && index >= 0 && (index + 1) * size <= rows.length)) {
    throw new RangeError(
      `image ${index} is not within ${rows.length / size} images of ${height}x${width}x${channels}`,
    );
  }
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++)
    data[i] = Math.max(0, Math.min(255, Math.round(rows[index * size + i] * 255)));
  return encodePng({ data, height, width, channels });
}
