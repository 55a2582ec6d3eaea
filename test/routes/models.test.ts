import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { functionClassifier } from '../../src/engine/model/classifier.js';
import {
  base64,
  CLASS_NAMES,
  colourLogits,
  colourModel,
  gatedCompute,
  softmax,
  solidPng,
} from '../helpers/colour-model.js';

type Json = Record<string, unknown>;

function makeApp(options: Parameters<typeof createApp>[0] extends infer D ? Partial<D> : never = {}) {
  return createApp({ models: new Map([['colour', colourModel()]]), ...options });
}

async function problem(res: Response, status: number) {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toBe('application/problem+json');
  const body = (await res.json()) as {
    status: number;
    title: string;
    errors?: Array<{ field: string; message: string }>;
  };
  expect(body.status).toBe(status);
  return body;
}

const postPng = (app: ReturnType<typeof makeApp>, png: Uint8Array<ArrayBuffer>, query = '') =>
  app.request(`/v1/models/colour/predict${query}`, {
    method: 'POST',
    body: png,
    headers: { 'content-type': 'image/png' },
  });

describe('GET /v1/models', () => {
  it('lists the served models with their cards', async () => {
    const res = await makeApp().request('/v1/models');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { models: Json[] };
    expect(body.models).toEqual([
      expect.objectContaining({
        name: 'colour',
        num_classes: 3,
        class_names: CLASS_NAMES,
        input_shape: [8, 8, 3],
        eps_out: 0.5,
        ood_threshold: 0.5,
      }),
    ]);
  });

  it('answers one model and 404 for an unknown one', async () => {
    const app = makeApp();
    expect((await app.request('/v1/models/colour')).status).toBe(200);
    const body = await problem(await app.request('/v1/models/nope'), 404);
    expect(body.errors?.[0].field).toBe('model');
  });

  it("answers the card's architecture, training data and metrics; null where the card has none", async () => {
    const carded = functionClassifier(
      {
        name: 'carded',
        inputShape: [8, 8, 3],
        numClasses: 3,
        architecture: 'small-cnn',
        data: 'cifar10/train',
        metrics: { clean_accuracy: 0.9, robust_accuracy_l2_0_5: 0.6, wc_auc: null },
      },
      () => tf.zeros([1, 3]) as tf.Tensor2D,
    );
    const app = createApp({
      models: new Map([
        ['carded', carded],
        ['colour', colourModel()],
      ]),
    });
    expect(await (await app.request('/v1/models/carded')).json()).toMatchObject({
      architecture: 'small-cnn',
      data: 'cifar10/train',
      metrics: { clean_accuracy: 0.9, robust_accuracy_l2_0_5: 0.6, wc_auc: null },
    });
    expect(await (await app.request('/v1/models/colour')).json()).toMatchObject({
      architecture: null,
      data: null,
      metrics: {},
    });
  });
});

describe('POST /v1/models/{model}/predict', () => {
  it('returns calibrated probabilities equal to softmax(logits / T) for a raw PNG', async () => {
    const app = createApp({ models: new Map([['colour', colourModel({ temperature: 2 })]]) });
    const res = await postPng(app, await solidPng([200, 40, 10]));
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      temperature: number;
      predictions: Array<{ probabilities: number[]; predicted: Json; max_confidence: number }>;
    };
    const expected = softmax(colourLogits([200, 40, 10]), 2);
    expect(body.temperature).toBe(2);
    for (const [i, p] of body.predictions[0].probabilities.entries()) expect(p).toBeCloseTo(expected[i], 5);
    expect(body.predictions[0].predicted).toEqual({
      index: 0,
      class: 'red',
      probability: body.predictions[0].max_confidence,
    });
  });

  it('accepts a JSON batch of base64 images and a multipart form alike', async () => {
    const app = makeApp();
    const [red, blue] = [await solidPng([255, 0, 0]), await solidPng([0, 0, 255], 20, 12)];
    const json = await app.request('/v1/models/colour/predict?top_k=2', {
      method: 'POST',
      body: JSON.stringify({ images: [base64(red), `data:image/png;base64,${base64(blue)}`] }),
      headers: { 'content-type': 'application/json' },
    });
    expect(json.status).toBe(200);
    const jsonBody = (await json.json()) as {
      predictions: Array<{ predicted: { class: string }; top_k: unknown[] }>;
    };
    expect(jsonBody.predictions.map((p) => p.predicted.class)).toEqual(['red', 'blue']);
    expect(jsonBody.predictions[0].top_k).toHaveLength(2);

    const form = new FormData();
    form.append('image', new Blob([blue], { type: 'image/png' }), 'blue.png');
    const multipart = await app.request('/v1/models/colour/predict', { method: 'POST', body: form });
    expect(multipart.status).toBe(200);
    const formBody = (await multipart.json()) as { predictions: Array<{ predicted: { class: string } }> };
    expect(formBody.predictions[0].predicted.class).toBe('blue');
  });

  it('calls an input in-distribution against the threshold of the query, else the card', async () => {
    const grey = await solidPng([128, 128, 128]); // all logits equal: max confidence 1/3
    const app = createApp({ models: new Map([['colour', colourModel({ oodThreshold: 0.3 })]]) });
    const byCard = (await (await postPng(app, grey)).json()) as {
      threshold: number;
      predictions: Array<{ in_distribution: boolean; max_confidence: number }>;
    };
    expect(byCard.threshold).toBe(0.3);
    expect(byCard.predictions[0].max_confidence).toBeCloseTo(1 / 3, 5);
    expect(byCard.predictions[0].in_distribution).toBe(true);
    const byQuery = (await (await postPng(app, grey, '?threshold=0.9')).json()) as {
      predictions: Array<{ in_distribution: boolean }>;
    };
    expect(byQuery.predictions[0].in_distribution).toBe(false);
  });

  it('answers 415 for an unknown content type and 422 for bytes that are not an image', async () => {
    const app = makeApp();
    const text = await app.request('/v1/models/colour/predict', {
      method: 'POST',
      body: 'hello',
      headers: { 'content-type': 'text/plain' },
    });
    expect((await problem(text, 415)).errors?.[0].field).toBe('content-type');
    const none = await app.request('/v1/models/colour/predict', {
      method: 'POST',
      body: new Uint8Array([1, 2, 3]),
    });
    await problem(none, 415);
    const garbage = await postPng(app, new Uint8Array(200).fill(7));
    expect((await problem(garbage, 422)).errors?.[0].field).toBe('body');
    const png = await solidPng([255, 0, 0]);
    const truncated = await postPng(app, png.subarray(0, png.length / 2));
    await problem(truncated, 422);
  });

  it('names the field at fault in JSON bodies: empty batch, bad base64, a non-image, wrong types', async () => {
    const app = makeApp();
    const send = (body: string) =>
      app.request('/v1/models/colour/predict', {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json' },
      });
    expect((await problem(await send('{"images":[]}'), 422)).errors?.[0].field).toBe('images');
    expect((await problem(await send('{"images":["***"]}'), 422)).errors?.[0].field).toBe('images.0');
    const notImage = base64(new TextEncoder().encode('not an image at all'));
    expect(
      (
        await problem(
          await send(JSON.stringify({ images: [base64(await solidPng([1, 2, 3])), notImage] })),
          422,
        )
      ).errors?.[0].field,
    ).toBe('images.1');
    expect((await problem(await send('{"images":[1]}'), 422)).errors?.[0].field).toBe('images.0');
    await problem(await send('{"images":'), 400);
    expect(
      (await problem(await postPng(app, await solidPng([1, 2, 3]), '?threshold=NaN'), 422)).errors?.[0].field,
    ).toBe('threshold');
    expect(
      (await problem(await postPng(app, await solidPng([1, 2, 3]), '?top_k=0'), 422)).errors?.[0].field,
    ).toBe('top_k');
  });

  it('answers 413 for a body over the limit and for an image declaring too many pixels', async () => {
    const app = makeApp({ limits: { bodyBytes: 2000, maxPixels: 64 * 64 } });
    const big = new Uint8Array(5000);
    await problem(await postPng(app, big), 413);
    // A small file whose header claims 100 x 100 pixels: refused before decoding.
    const huge = await solidPng([0, 0, 0], 100, 100);
    expect(huge.length).toBeLessThan(2000);
    const body = await problem(await postPng(app, huge), 413);
    expect(body.errors?.[0].field).toBe('body');
  });

  it('answers 429 with Retry-After only when the batch queue is full, counted in images', async () => {
    const models = new Map([['colour', colourModel()]]);
    const gated = gatedCompute(models);
    const app = createApp({
      models,
      inference: { compute: gated.compute, batching: { maxQueuedImages: 2, retryAfterSeconds: 3 } },
    });
    const png = await solidPng([255, 0, 0]);
    const two = JSON.stringify({ images: [base64(png), base64(png)] });
    const postJson = (body: string) =>
      app.request('/v1/models/colour/predict', {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json' },
      });
    const running = postPng(app, png); // dispatched at once; its pass waits at the gate
    while (gated.passes.length === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    const queued = postJson(two); // 2 images waiting: the queue is full
    await new Promise((resolve) => setTimeout(resolve, 20));
    const refused = await problem(await postPng(app, png), 429);
    expect(refused.title).toBe('Compute queue full');
    const again = await postPng(app, png);
    expect(again.headers.get('retry-after')).toBe('3');
    const metrics = await (await app.request('/metrics')).text();
    expect(metrics).toContain('inference_rejected_total{model="colour"} 2');
    expect(metrics).toContain('inference_queue_images{model="colour"} 2');
    gated.open();
    expect((await running).status).toBe(200);
    expect((await queued).status).toBe(200);
    expect(gated.passes).toEqual([1, 2]);
  });

  it('answers 504 problem+json when the wait in the batch queue outlasts the request timeout', async () => {
    const models = new Map([['colour', colourModel()]]);
    const gated = gatedCompute(models);
    const app = createApp({
      models,
      inference: { compute: gated.compute },
      limits: { requestTimeoutMs: 150 },
    });
    const png = await solidPng([255, 0, 0]);
    const first = postPng(app, png); // holds the only forward pass
    while (gated.passes.length === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    const started = performance.now();
    const body = await problem(await postPng(app, png), 504);
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
    expect(body.status).toBe(504);
    const metrics = await (await app.request('/metrics')).text();
    expect(metrics).toContain('inference_queue_images{model="colour"} 0'); // the timed-out request left
    gated.open();
    expect((await first).status).toBe(200);
    expect((await postPng(app, png)).status).toBe(200);
  });

  it('leaves tf.memory().numTensors unchanged over 200 predict requests', async () => {
    const app = makeApp();
    const body = JSON.stringify({ images: [base64(await solidPng([10, 200, 30]))] });
    const warm = await app.request('/v1/models/colour/predict', {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/json' },
    });
    expect(warm.status).toBe(200);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 200; i++) {
      const res = await app.request('/v1/models/colour/predict', {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json' },
      });
      expect(res.status).toBe(200);
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});
