import { describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { backendInfo } from '../../src/engine/backend/backend.js';
import { colourModel, solidPng } from '../helpers/colour-model.js';

describe('health, metrics, OpenAPI and docs', () => {
  it('is live always and ready only when the backend is selected and the models loaded', async () => {
    let loaded = false;
    const app = createApp({
      models: new Map([['colour', colourModel()]]),
      backend: backendInfo,
      ready: () => loaded,
    });
    expect(await (await app.request('/health/live')).json()).toEqual({ status: 'ok' });
    const starting = await app.request('/health/ready');
    expect(starting.status).toBe(503);
    expect(((await starting.json()) as { status: string }).status).toBe('starting');
    loaded = true;
    const ready = await app.request('/health/ready');
    expect(ready.status).toBe(200);
    const body = (await ready.json()) as {
      backend: { name: string; kernels: string; threads: number };
      versions: { tfjs: string };
      models: string[];
    };
    expect(body.backend.name).toBe(backendInfo().name);
    // Which kernels run the convolutions (onednn, wasm-native, stock) and on how many threads.
    expect(body.backend).toMatchObject({ kernels: backendInfo().kernels, threads: backendInfo().threads });
    expect(body.versions.tfjs).toMatch(/^4\./);
    expect(body.models).toEqual(['colour']);
  });

  it('counts requests per route template and status, and reports queue depth and tfjs memory', async () => {
    const app = createApp({ models: new Map([['colour', colourModel()]]) });
    const png = await solidPng([0, 255, 0]);
    for (let i = 0; i < 3; i++) {
      await app.request('/v1/models/colour/predict', {
        method: 'POST',
        body: png,
        headers: { 'content-type': 'image/png' },
      });
    }
    await app.request('/v1/models/missing');
    const res = await app.request('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain');
    const text = await res.text();
    expect(text).toContain(
      'http_requests_total{method="POST",route="/v1/models/:model/predict",status="200"} 3',
    );
    expect(text).toContain('http_requests_total{method="GET",route="/v1/models/:model",status="404"} 1');
    expect(text).toMatch(
      /http_request_duration_seconds_count\{method="POST",route="\/v1\/models\/:model\/predict"\} 3/,
    );
    expect(text).toContain('compute_queue_depth{state="waiting"} 0');
    expect(text).toMatch(/tfjs_tensors \d+/);
    expect(text).toContain('audit_jobs{state="running"} 0');
  });

  it('serves the OpenAPI 3.1 document with an operationId on every operation', async () => {
    const res = await createApp({ models: new Map() }).request('/openapi.json');
    const doc = (await res.json()) as {
      openapi: string;
      paths: Record<string, Record<string, { operationId?: string }>>;
    };
    expect(doc.openapi).toBe('3.1.0');
    const ids = Object.values(doc.paths).flatMap((methods) =>
      Object.values(methods).map((op) => op.operationId),
    );
    expect(ids).toHaveLength(19);
    expect(ids.every((id) => typeof id === 'string')).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('serves the docs page with its script from the local swagger-ui-dist package, no CDN', async () => {
    const app = createApp({ models: new Map() });
    const page = await (await app.request('/docs')).text();
    expect(page).not.toMatch(/https?:\/\//);
    const scripts = [...page.matchAll(/src="([^"]+)"/g)].map((m) => m[1]);
    expect(scripts.length).toBeGreaterThan(0);
    for (const src of scripts) {
      const asset = await app.request(src);
      expect(asset.status).toBe(200);
      // The Swagger UI bundles, and the page's start-up script (a file: the CSP allows no inline script).
      const bytes = (await asset.arrayBuffer()).byteLength;
      expect(bytes, src).toBeGreaterThan(src.endsWith('/init.js') ? 50 : 10_000);
    }
    expect((await app.request('/docs/assets/..%2Fpackage.json')).status).toBe(404);
  });

  it('answers unknown routes with a problem document and echoes a request id', async () => {
    const res = await createApp({ models: new Map() }).request('/v0/nothing', {
      headers: { 'x-request-id': 'abc-123' },
    });
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(res.headers.get('x-request-id')).toBe('abc-123');
    expect(((await res.json()) as { request_id: string }).request_id).toBe('abc-123');
  });
});
