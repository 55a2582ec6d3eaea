import type { Rng } from '../util/random.js';

/**
 * Training augmentation of RATIO (docs/algorithms.md: random crop with padding 4, horizontal flip, Cutout 16),
 * applied while copying uint8 NHWC pixels into the float batch, so it costs one pass over the batch and
 * no extra tensors.
 */
export interface AugmentOptions {
  /** Zero padding of the random crop (0 = no crop). Default 4. */
  cropPadding?: number;
  /** Mirror left-right with probability 1/2. Default true. */
  flip?: boolean;
  /** Side of the zeroed Cutout square, centre uniform over the image, clipped at the border (0 = off). Default 16. */
  cutout?: number;
}

export const DEFAULT_AUGMENT: Required<AugmentOptions> = { cropPadding: 4, flip: true, cutout: 16 };

/** The random draws for one image: shift, flip, Cutout centre. Drawn in a fixed order so runs reproduce. */
export interface AugmentDraw {
  dy: number;
  dx: number;
  flip: boolean;
  cutoutY: number;
  cutoutX: number;
}

export function drawAugmentation(
  rng: Rng,
  height: number,
  width: number,
  options: Required<AugmentOptions>,
): AugmentDraw {
  const pad = options.cropPadding;
  const dy = pad > 0 ? rng.int(2 * pad + 1) - pad : 0;
  const dx = pad > 0 ? rng.int(2 * pad + 1) - pad : 0;
  const flip = options.flip ? rng.next() < 0.5 : false;
  const cutoutY = options.cutout > 0 ? rng.int(height) : -1;
  const cutoutX = options.cutout > 0 ? rng.int(width) : -1;
  return { dy, dx, flip, cutoutY, cutoutX };
}

/**
 * Writes image `source` (uint8 HWC at `sourceOffset`) into `target` (float32 HWC in [0,1] at
 * `targetOffset`), optionally augmented. Output pixel (y, x) reads input (y + dy, x' + dx) where
 * x' = W-1-x when flipped; pixels falling in the padding, or inside the Cutout square, are 0.
 */
export function copyImage(
  source: Uint8Array,
  sourceOffset: number,
  target: Float32Array,
  targetOffset: number,
  shape: readonly [number, number, number],
  draw: AugmentDraw | undefined,
  cutout: number,
): void {
  const [height, width, channels] = shape;
  const scale = 1 / 255;
  if (!draw) {
    const length = height * width * channels;
    for (let i = 0; i < length; i++) target[targetOffset + i] = source[sourceOffset + i] * scale;
    return;
  }
  const half = Math.floor(cutout / 2);
  const cutTop = draw.cutoutY - half;
  const cutLeft = draw.cutoutX - half;
  for (let y = 0; y < height; y++) {
    const sy = y + draw.dy;
    const rowInside = sy >= 0 && sy < height;
    const rowInCutout = cutout > 0 && y >= cutTop && y < cutTop + cutout;
    for (let x = 0; x < width; x++) {
      const out = targetOffset + (y * width + x) * channels;
      const mirrored = draw.flip ? width - 1 - x : x;
      const sx = mirrored + draw.dx;
      const blank =
        !rowInside || sx < 0 || sx >= width || (rowInCutout && x >= cutLeft && x < cutLeft + cutout);
      if (blank) {
        for (let c = 0; c < channels; c++) target[out + c] = 0;
      } else {
        const input = sourceOffset + (sy * width + sx) * channels;
        for (let c = 0; c < channels; c++) target[out + c] = source[input + c] * scale;
      }
    }
  }
}
