import createClient from 'openapi-fetch';
import sharp from 'sharp';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { paths } from '../../openapi/schema.js';
import { type RunningServer, startServer } from '../../src/server.js';
import { base64, colourModel, solidPng } from '../helpers/colour-model.js';
import { auditForm, cifarFileLabelledBy, tinyCifarModelFiles } from '../helpers/uploads.js';

let server: RunningServer;
let files: Map<string, Uint8Array>;
let data: Uint8Array;

beforeAll(async () => {
  files = await tinyCifarModelFiles();
  data = await cifarFileLabelledBy(files, 64);
  server = await startServer({
    port: 0,
    host: '127.0.0.1',
    auth: { devMode: true },
    modelsDir: '/nonexistent',
    models: new Map([['colour', colourModel()]]),
    logger: (await import('pino')).default({ level: 'silent' }),
  });
});

afterAll(async () => {
  await server?.close(1000);
});

describe('the real server on loopback', () => {
  it('answers predict over undici with a raw PNG, and counterfactuals as a grid PNG', async () => {
    const res = await request(`${server.url}/v1/models/colour/predict`, {
      method: 'POST',
      body: await solidPng([0, 0, 255]),
      headers: { 'content-type': 'image/png' },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-request-id']).toBeTruthy();
    const body = (await res.body.json()) as { predictions: Array<{ predicted: { class: string } }> };
    expect(body.predictions[0].predicted.class).toBe('blue');

    const png = await request(`${server.url}/v1/models/colour/counterfactuals`, {
      method: 'POST',
      body: JSON.stringify({
        image: base64(await solidPng([128, 128, 128])),
        targets: ['red'],
        radii: [0.5],
        iterations: 5,
      }),
      headers: { 'content-type': 'application/json', accept: 'image/png' },
    });
    expect(png.statusCode).toBe(200);
    expect(png.headers['content-type']).toBe('image/png');
    const meta = await sharp(Buffer.from(await png.body.arrayBuffer())).metadata();
    // The labelled grid (test/routes/analysis.test.ts): 128-pixel cells, 6 padding, title row, captions.
    expect([meta.width, meta.height]).toEqual([6 + 2 * (128 + 6), 22 + (128 + 30 + 6) + 6]);
  });

  it('drives predict, ood and the audit lifecycle with the client generated from openapi.json', async () => {
    const client = createClient<paths>({ baseUrl: server.url });
    const predicted = await client.POST('/v1/models/{model}/predict', {
      params: { path: { model: 'colour' }, query: { top_k: 2 } },
      body: { images: [base64(await solidPng([255, 0, 0]))] },
    });
    expect(predicted.response.status).toBe(200);
    expect(predicted.data?.predictions[0].top_k.map((t) => t.class)[0]).toBe('red');

    const missing = await client.GET('/v1/models/{model}', { params: { path: { model: 'nope' } } });
    expect(missing.response.status).toBe(404);
    expect(missing.error?.errors?.[0].field).toBe('model');

    const ood = await client.POST('/v1/models/{model}/ood', {
      params: { path: { model: 'colour' } },
      body: { images: [base64(await solidPng([128, 128, 128]))], iterations: 5, threshold: 0.9 },
    });
    expect(ood.data?.results[0].verdict).toBe('out_of_distribution');

    // Multipart uploads go around the typed body (FormData), through the same client.
    const created = await client.POST('/v1/audits', {
      body: {} as never,
      bodySerializer: () => auditForm(files, data, { norm: 'L2', eps: '0.5', n: '4', iterations: '3' }),
    });
    expect(created.response.status).toBe(202);
    const id = created.data!.id;
    expect(created.response.headers.get('location')).toBe(`/v1/audits/${id}`);
    const events = await request(`${server.url}/v1/audits/${id}/events`);
    expect(events.headers['content-type']).toContain('text/event-stream');
    const stream = await events.body.text();
    expect(stream).toMatch(/event: result\ndata: \{[^\n]*"state":"succeeded"/);
    const final = await client.GET('/v1/audits/{id}', { params: { path: { id } } });
    expect(final.data?.state).toBe('succeeded');
    expect(final.data?.result).toMatchObject({ n: 4, clean_accuracy: 1 });

    const long = await client.POST('/v1/audits', {
      body: {} as never,
      bodySerializer: () => auditForm(files, data, { norm: 'L2', eps: '0.5', n: '64', iterations: '5000' }),
    });
    const longId = long.data!.id;
    await new Promise((resolve) => setTimeout(resolve, 200));
    const cancelled = await client.DELETE('/v1/audits/{id}', { params: { path: { id: longId } } });
    expect(cancelled.response.status).toBe(200);
    expect((await server.audits.settled(longId))?.state).toBe('cancelled');
  });
});
