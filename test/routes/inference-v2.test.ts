import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import {
  base64,
  colourLogits,
  colourModel,
  gatedCompute,
  SHAPE,
  softmax,
  solidPng,
} from '../helpers/colour-model.js';

/** Open Inference Protocol v2 REST, with request bodies exactly as the protocol specifies them. */

type Json = Record<string, unknown>;
interface InferResponse {
  model_name: string;
  id?: string;
  parameters: { temperature: number; threshold: number };
  outputs: Array<{ name: string; shape: number[]; datatype: string; data: Array<number | boolean> }>;
}

const [H, W, C] = SHAPE;

/** A uniform image as FP32 NHWC values in [0,1]. */
function solid(rgb: [number, number, number]): number[] {
  return Array.from({ length: H * W }, () => rgb.map((v) => v / 255)).flat();
}

function inferBody(images: number[][], extra: Json = {}): Json {
  return {
    inputs: [{ name: 'input', shape: [images.length, H, W, C], datatype: 'FP32', data: images.flat() }],
    ...extra,
  };
}

const post = (app: ReturnType<typeof createApp>, body: unknown, model = 'colour') =>
  app.request(`/v2/models/${model}/infer`, {
    method: 'POST',
    body: typeof body === 'string' ? body : JSON.stringify(body),
    headers: { 'content-type': 'application/json' },
  });

async function protocolError(res: Response, status: number): Promise<string> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = (await res.json()) as { error: string };
  expect(Object.keys(body)).toEqual(['error']);
  expect(typeof body.error).toBe('string');
  return body.error;
}

const makeApp = (ready = true) =>
  createApp({ models: new Map([['colour', colourModel({ oodThreshold: 0.6 })]]), ready: () => ready });

describe('Open Inference Protocol v2: health and metadata', () => {
  it('answers server liveness and readiness by status code', async () => {
    const app = makeApp();
    expect((await app.request('/v2/health/live')).status).toBe(200);
    expect(await (await app.request('/v2/health/ready')).json()).toEqual({ ready: true });
    const starting = makeApp(false);
    expect((await starting.request('/v2/health/ready')).status).toBe(400);
    expect((await starting.request('/v2/models/colour/ready')).status).toBe(400);
    expect((await app.request('/v2/models/colour/ready')).status).toBe(200);
    await protocolError(await app.request('/v2/models/nope/ready'), 404);
  });

  it('describes the server and each model: input and outputs with name, datatype and shape', async () => {
    const app = makeApp();
    expect(await (await app.request('/v2')).json()).toEqual({
      name: 'ratio-audit',
      version: '0.1.0',
      extensions: [],
    });
    const res = await app.request('/v2/models/colour');
    expect(res.status).toBe(200);
    const body = (await res.json()) as Json;
    expect(body).toMatchObject({
      name: 'colour',
      versions: ['1'],
      platform: 'tfjs',
      inputs: [{ name: 'input', datatype: 'FP32', shape: [-1, 8, 8, 3] }],
      outputs: [
        { name: 'probabilities', datatype: 'FP32', shape: [-1, 3] },
        { name: 'max_confidence', datatype: 'FP32', shape: [-1] },
        { name: 'predicted_class', datatype: 'INT32', shape: [-1] },
        { name: 'in_distribution', datatype: 'BOOL', shape: [-1] },
        { name: 'logits', datatype: 'FP32', shape: [-1, 3] },
      ],
      parameters: { layout: 'NHWC', range: '[0,1]', ood_threshold: 0.6, class_names: 'red,green,blue' },
    });
    expect(await protocolError(await app.request('/v2/models/nope'), 404)).toContain("'nope'");
  });
});

describe('POST /v2/models/{model_name}/infer', () => {
  it('answers calibrated probabilities and the OOD verdict as output tensors', async () => {
    const app = makeApp();
    const red: [number, number, number] = [255, 0, 0];
    const grey: [number, number, number] = [128, 128, 128];
    const res = await post(app, inferBody([solid(red), solid(grey)], { id: 'req-7' }));
    expect(res.status).toBe(200);
    const body = (await res.json()) as InferResponse;
    expect(body.model_name).toBe('colour');
    expect(body.id).toBe('req-7');
    expect(body.parameters).toEqual({ temperature: 1, threshold: 0.6 });
    // Logits only when asked for: the default outputs are the four of the protocol's first version.
    expect(body.outputs.map((o) => o.name)).toEqual([
      'probabilities',
      'max_confidence',
      'predicted_class',
      'in_distribution',
    ]);
    const byName = Object.fromEntries(body.outputs.map((o) => [o.name, o]));
    expect(byName.probabilities.shape).toEqual([2, 3]);
    expect(byName.probabilities.datatype).toBe('FP32');
    const expected = [...softmax(colourLogits(red)), ...softmax(colourLogits(grey))];
    for (const [i, p] of (byName.probabilities.data as number[]).entries())
      expect(p).toBeCloseTo(expected[i], 6);
    expect(byName.predicted_class).toEqual({
      name: 'predicted_class',
      shape: [2],
      datatype: 'INT32',
      data: [0, 0],
    });
    // Red: softmax([4,-2,-2]) max 0.995 >= 0.6; grey: uniform 1/3 < 0.6.
    expect(byName.in_distribution.data).toEqual([true, false]);
    expect(byName.max_confidence.data[1]).toBeCloseTo(1 / 3, 6);
  });

  it('gives the same probabilities and verdict as /v1 predict for the same pixels, bit for bit', async () => {
    const app = makeApp();
    // A clear red and a grey whose three classes tie: the verdict takes the first of equals.
    const colours: [number, number, number][] = [
      [200, 40, 10],
      [128, 128, 128],
    ];
    const v1 = (await (
      await app.request('/v1/models/colour/predict', {
        method: 'POST',
        body: JSON.stringify({
          images: await Promise.all(colours.map(async (c) => base64(await solidPng(c)))),
        }),
        headers: { 'content-type': 'application/json' },
      })
    ).json()) as {
      predictions: Array<{
        probabilities: number[];
        predicted: { index: number };
        max_confidence: number;
        in_distribution: boolean;
      }>;
    };
    const v2 = (await (await post(app, inferBody(colours.map(solid)))).json()) as InferResponse;
    const byName = Object.fromEntries(v2.outputs.map((o) => [o.name, o.data]));
    expect(byName.probabilities).toEqual(v1.predictions.flatMap((p) => p.probabilities));
    expect(byName.predicted_class).toEqual(v1.predictions.map((p) => p.predicted.index));
    expect(byName.predicted_class).toEqual([0, 0]);
    expect(byName.max_confidence).toEqual(v1.predictions.map((p) => p.max_confidence));
    expect(byName.in_distribution).toEqual(v1.predictions.map((p) => p.in_distribution));
    expect(byName.in_distribution).toEqual([true, false]);
  });

  it('takes nested data, request parameters and a choice of outputs', async () => {
    const app = makeApp();
    const flat = solid([0, 255, 0]);
    const nested = [
      Array.from({ length: H }, (_, y) =>
        Array.from({ length: W }, (_, x) => flat.slice((y * W + x) * C, (y * W + x + 1) * C)),
      ),
    ];
    const body = {
      inputs: [{ name: 'input', shape: [1, H, W, C], datatype: 'FP32', data: nested }],
      parameters: { temperature: 4, threshold: 0.9 },
      outputs: [{ name: 'in_distribution' }, { name: 'probabilities' }],
    };
    const answer = (await (await post(app, body)).json()) as InferResponse;
    expect(answer.outputs.map((o) => o.name)).toEqual(['in_distribution', 'probabilities']);
    const expected = softmax(colourLogits([0, 255, 0]), 4);
    for (const [i, p] of (answer.outputs[1].data as number[]).entries())
      expect(p).toBeCloseTo(expected[i], 6);
    expect(answer.outputs[0].data).toEqual([Math.max(...expected) >= 0.9]);
    expect(answer.parameters).toEqual({ temperature: 4, threshold: 0.9 });
  });

  it("answers the classifier's own logits, pre-softmax and before the temperature, when asked", async () => {
    const classifier = colourModel({ oodThreshold: 0.6 });
    const app = createApp({ models: new Map([['colour', classifier]]) });
    const images = [solid([200, 40, 10]), solid([10, 30, 250]), solid([128, 128, 128])];
    const expected = tf.tidy(() =>
      Array.from(classifier.logits(tf.tensor4d(images.flat(), [3, H, W, C])).dataSync()),
    );
    const before = tf.memory().numTensors;
    for (const temperature of [1, 4]) {
      const answer = (await (
        await post(
          app,
          inferBody(images, {
            parameters: { temperature },
            outputs: [{ name: 'logits' }, { name: 'probabilities' }, { name: 'logits' }],
          }),
        )
      ).json()) as InferResponse;
      expect(answer.outputs.map((o) => o.name)).toEqual(['logits', 'probabilities']);
      expect(answer.outputs[0]).toEqual({ name: 'logits', shape: [3, 3], datatype: 'FP32', data: expected });
      // The probabilities beside them are the softmax of these logits at the request's temperature.
      const probabilities = answer.outputs[1].data as number[];
      for (let i = 0; i < 3; i++) {
        const row = softmax(expected.slice(i * 3, i * 3 + 3), temperature);
        for (let k = 0; k < 3; k++) expect(probabilities[i * 3 + k]).toBeCloseTo(row[k], 6);
      }
    }
    const alone = (await (
      await post(app, inferBody(images, { outputs: [{ name: 'logits' }] }))
    ).json()) as InferResponse;
    expect(alone.outputs).toEqual([{ name: 'logits', shape: [3, 3], datatype: 'FP32', data: expected }]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('answers a body over the limit with 413 and the protocol error object, by content-length or as it streams', async () => {
    const app = createApp({ models: new Map([['colour', colourModel()]]), limits: { bodyBytes: 1000 } });
    const body = JSON.stringify(inferBody([solid([1, 2, 3])]));
    const declared = await app.request('/v2/models/colour/infer', {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/json', 'content-length': String(body.length) },
    });
    expect(await protocolError(declared, 413)).toMatch(/1000 bytes/);
    expect(await protocolError(await post(app, body), 413)).toMatch(/1000 bytes/);
  });

  it('answers bad requests with 400 and the protocol error object naming what is wrong', async () => {
    const app = makeApp();
    const one = solid([1, 2, 3]);
    const cases: Array<[unknown, RegExp]> = [
      [{ inputs: [{ name: 'input', shape: [1, H, W, C], datatype: 'FP64', data: one }] }, /datatype FP32/],
      [
        { inputs: [{ name: 'input', shape: [1, C, H, W], datatype: 'FP32', data: one }] },
        /shape \[N, 8, 8, 3\] \(NHWC\)/,
      ],
      [
        { inputs: [{ name: 'pixels', shape: [1, H, W, C], datatype: 'FP32', data: one }] },
        /unknown input 'pixels'/,
      ],
      [
        { inputs: [{ name: 'input', shape: [2, H, W, C], datatype: 'FP32', data: one }] },
        /holds 192 elements, the shape needs 384/,
      ],
      [
        { inputs: [{ name: 'input', shape: [1, H, W, C], datatype: 'FP32', data: [...one.slice(1), 1.5] }] },
        /element 191 must be an FP32 number in \[0,1\], got 1.5/,
      ],
      [{ ...inferBody([one]), outputs: [{ name: 'scores' }] }, /unknown output 'scores'/],
      [
        { ...inferBody([one]), parameters: { temperature: 0 } },
        /parameter 'temperature' must be a number in \[0.001, 1000\]/,
      ],
      [{ inputs: [] }, /'inputs'/],
      [{ images: [] }, /'inputs'/],
      ['{"inputs": [', /./],
    ];
    for (const [body, message] of cases) {
      expect(await protocolError(await post(app, body), 400), JSON.stringify(body).slice(0, 80)).toMatch(
        message,
      );
    }
    expect(await protocolError(await post(app, inferBody([one]), 'nope'), 404)).toContain("'nope'");
    expect((await app.request('/v2/nothing-here')).status).toBe(404);
  });

  it('batches concurrent requests with different parameters exactly as one at a time; 429 + Retry-After when the queue is full', async () => {
    const models = new Map([['colour', colourModel({ oodThreshold: 0.6 })]]);
    const gated = gatedCompute(models);
    const app = createApp({
      models,
      inference: { compute: gated.compute, batching: { maxQueuedImages: 6, retryAfterSeconds: 2 } },
    });
    const colours: Array<[number, number, number]> = [
      [255, 0, 0],
      [0, 200, 50],
      [10, 20, 250],
      [90, 90, 90],
    ];
    const bodies = colours.map((rgb, i) =>
      inferBody([solid(rgb), solid([rgb[2], rgb[1], rgb[0]])], {
        parameters: { temperature: 0.5 + i, threshold: 0.2 * i },
      }),
    );
    const first = post(app, bodies[0]);
    while (gated.passes.length === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    const rest = bodies.slice(1).map((body) => post(app, body));
    while (
      (await (await app.request('/metrics')).text()).includes('inference_queue_images{model="colour"} 6') ===
      false
    ) {
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    const refused = await post(app, bodies[0]);
    expect(await protocolError(refused, 429)).toMatch(/queue is full/);
    expect(refused.headers.get('retry-after')).toBe('2');
    gated.open();
    const together = await Promise.all([first, ...rest].map(async (r) => (await r).json()));
    expect(gated.passes).toEqual([2, 6]);
    const alone = createApp({ models });
    for (const [i, body] of bodies.entries()) {
      expect(together[i]).toEqual(await (await post(alone, body)).json());
    }
  });
});
