import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { base64, colourModel, solidPng } from '../helpers/colour-model.js';

const app = createApp({ models: new Map([['colour', colourModel()]]), limits: { maxIterations: 200 } });

function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  return app.request(path, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json', ...headers },
  });
}

interface OodBody {
  eps: number;
  threshold: number;
  results: Array<{
    clean_confidence: number;
    worst_case_confidence: number;
    worst_case_class: { class: string };
    worst_case_image: string;
    verdict: string;
  }>;
}

interface CounterfactualBody {
  original_class: { index: number };
  targets: Array<{
    class: string;
    clean: { p_target: number };
    radii: Array<{ eps: number; p_target: number; distance: number; image: string }>;
  }>;
}

describe('POST /v1/models/{model}/ood', () => {
  it('finds a worst case above the clean confidence within eps, and gives the verdict', async () => {
    const grey = base64(await solidPng([128, 128, 128]));
    const red = base64(await solidPng([255, 0, 0]));
    const before = tf.memory().numTensors;
    const res = await post('/v1/models/colour/ood', { images: [grey, red], iterations: 20, threshold: 0.38 });
    expect(res.status).toBe(200);
    const body = (await res.json()) as OodBody;
    expect(tf.memory().numTensors).toBe(before);
    expect(body.eps).toBe(0.5); // the card's eps_out
    const [onGrey, onRed] = body.results;
    expect(onGrey.clean_confidence).toBeCloseTo(1 / 3, 5);
    // Shifting the red channel by 1/16 everywhere (L2 norm 0.5) already reaches p = e^0.375 / (e^0.375 + 2) = 0.421.
    expect(onGrey.worst_case_confidence).toBeGreaterThan(0.42);
    expect(onGrey.verdict).toBe('out_of_distribution_not_robust');
    expect(onRed.verdict).toBe('in_distribution');
    expect(onRed.worst_case_confidence).toBeGreaterThanOrEqual(onRed.clean_confidence);
    // The worst-case image is a PNG of the model's input size, within eps of the grey image.
    const image = await sharp(Buffer.from(onGrey.worst_case_image, 'base64'))
      .raw()
      .toBuffer({ resolveWithObject: true });
    expect([image.info.width, image.info.height]).toEqual([8, 8]);
    let squared = 0;
    for (const v of image.data) squared += ((v - 128) / 255) ** 2;
    expect(Math.sqrt(squared)).toBeLessThanOrEqual(0.5 + 0.05); // + PNG rounding
  });

  it('with eps 0 the worst case is the clean confidence, and a strict threshold calls it OOD', async () => {
    const grey = base64(await solidPng([128, 128, 128]));
    const body = (await (
      await post('/v1/models/colour/ood', { images: [grey], eps: 0, threshold: 0.9 })
    ).json()) as OodBody;
    expect(body.results[0].worst_case_confidence).toBeCloseTo(body.results[0].clean_confidence, 6);
    expect(body.results[0].verdict).toBe('out_of_distribution');
  });

  it('rejects bad parameters with the field, unknown models, and non-JSON bodies', async () => {
    const grey = base64(await solidPng([128, 128, 128]));
    const eps = (await (await post('/v1/models/colour/ood', { images: [grey], eps: -1 })).json()) as {
      errors: Array<{ field: string }>;
    };
    expect(eps.errors[0].field).toBe('eps');
    const iterations = await post('/v1/models/colour/ood', { images: [grey], iterations: 5000 });
    expect(iterations.status).toBe(422);
    expect(((await iterations.json()) as { errors: Array<{ field: string }> }).errors[0].field).toBe(
      'iterations',
    );
    expect((await post('/v1/models/nope/ood', { images: [grey] })).status).toBe(404);
    const png = await app.request('/v1/models/colour/ood', {
      method: 'POST',
      body: 'x',
      headers: { 'content-type': 'image/png' },
    });
    expect(png.status).toBe(415);
  });
});

describe('POST /v1/models/{model}/counterfactuals', () => {
  it('raises p_target monotonically with the radius and keeps every image within its budget', async () => {
    const grey = base64(await solidPng([128, 128, 128]));
    const before = tf.memory().numTensors;
    const res = await post('/v1/models/colour/counterfactuals', {
      image: grey,
      targets: ['green', 2],
      radii: [0.5, 0.25],
      iterations: 20,
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as CounterfactualBody;
    expect(tf.memory().numTensors).toBe(before);
    expect(body.targets.map((t) => t.class)).toEqual(['green', 'blue']);
    for (const target of body.targets) {
      expect(target.radii.map((r) => r.eps)).toEqual([0.25, 0.5]);
      expect(target.radii[0].p_target).toBeGreaterThan(target.clean.p_target);
      expect(target.radii[1].p_target).toBeGreaterThanOrEqual(target.radii[0].p_target);
      for (const r of target.radii) {
        expect(r.distance).toBeLessThanOrEqual(r.eps + 1e-9);
        expect(Buffer.from(r.image, 'base64').subarray(1, 4).toString()).toBe('PNG');
      }
    }
  });

  it('answers one grid PNG with Accept: image/png (a row per target; original, then each radius)', async () => {
    const red = base64(await solidPng([255, 0, 0]));
    const res = await post(
      '/v1/models/colour/counterfactuals',
      { image: red, radii: [0.5, 1], iterations: 5 },
      { accept: 'image/png' },
    );
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
    // Default targets: the top two classes; the figure renderer's grid (the one `ratio eval` draws):
    // 8x8 images scaled 16x in 128-pixel cells with 6-pixel padding, a 22-pixel title row, and
    // 30 pixels of captions (target class, p_target, p_original) under each row.
    expect([meta.width, meta.height]).toEqual([6 + 3 * (128 + 6), 22 + 2 * (128 + 30 + 6) + 6]);
  });

  it('names a bad target, a bad radius and a non-image', async () => {
    const grey = base64(await solidPng([128, 128, 128]));
    const field = async (body: unknown) =>
      (
        (await (await post('/v1/models/colour/counterfactuals', body)).json()) as {
          errors: Array<{ field: string }>;
        }
      ).errors[0].field;
    expect(await field({ image: grey, targets: ['purple'] })).toBe('targets.0');
    expect(await field({ image: grey, targets: [7] })).toBe('targets.0');
    expect(await field({ image: grey, radii: [-1] })).toBe('radii.0');
    expect(await field({ image: base64(new Uint8Array(64)) })).toBe('image');
  });
});
