import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { zipSync } from 'fflate';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { ArrayDataset } from '../../src/data/dataset.js';
import { functionClassifier } from '../../src/engine/model/classifier.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { InProcessIntake } from '../../src/jobs/audit/intake.js';
import { WorkerIntake } from '../../src/jobs/audit/intake-host.js';
import { AuditQueue } from '../../src/jobs/audit/registry.js';
import { AuditStore } from '../../src/jobs/audit/store.js';
import { sha256Hex } from '../../src/routes/auth.js';
import { colourModel, SHAPE } from '../helpers/colour-model.js';
import { CIFAR_TEST_FILE } from '../helpers/data.js';
import { emptyReport } from '../helpers/reports.js';
import { auditForm, convModelFiles, overflowingModelFiles, tinyCifarModelFiles } from '../helpers/uploads.js';

/**
 * Issue 26, what a hostile client still broke at the HTTP layer: /v2 without keys or rate limit,
 * /v2 answers amplified by a repeated `outputs` (and its 500 never logged), temperature 1e-300
 * answered with null probabilities, 1e309 reported as "got null", /metrics open to anyone, and no
 * cap on open event streams.
 */

const KEY_A = 'key-a-secret';
const KEY_B = 'key-b-secret';
const [H, W, C] = SHAPE;
const pixels = (n: number) => Array.from({ length: n * H * W * C }, () => 0.5);

function inferBody(extra: Record<string, unknown> = {}, n = 1) {
  return JSON.stringify({
    inputs: [{ name: 'input', shape: [n, H, W, C], datatype: 'FP32', data: pixels(n) }],
    ...extra,
  });
}

const infer = (app: ReturnType<typeof createApp>, body: string, headers: Record<string, string> = {}) =>
  app.request('/v2/models/colour/infer', {
    method: 'POST',
    body,
    headers: { 'content-type': 'application/json', ...headers },
  });

function keyedApp(
  auth: Record<string, unknown> = {},
  extra: Parameters<typeof createApp>[0] extends infer T ? Partial<T> : never = {},
) {
  return createApp({
    models: new Map([['colour', colourModel()]]),
    auth: {
      keyHashes: [sha256Hex(KEY_A), sha256Hex(KEY_B)],
      devMode: false,
      requireKeyForAnalysis: true,
      requestsPerMinute: 0,
      ...auth,
    },
    ...extra,
  });
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

describe('/v2 under the same key and rate-limit policy as /v1', () => {
  it('infer needs a key where analyses need one; invalid keys are refused; health stays open', async () => {
    const app = keyedApp();
    const none = await infer(app, inferBody());
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer');
    expect(Object.keys((await none.json()) as object)).toEqual(['error']);
    expect((await infer(app, inferBody(), bearer('wrong'))).status).toBe(401);
    expect((await infer(app, inferBody(), bearer(KEY_A))).status).toBe(200);
    expect((await app.request('/v2/health/live')).status).toBe(200);
    expect((await app.request('/v2/health/ready')).status).toBe(200);
    // Metadata needs no key (as GET /v1/models), but a wrong one is still refused.
    expect((await app.request('/v2/models/colour')).status).toBe(200);
    expect((await app.request('/v2/models/colour', { headers: bearer('wrong') })).status).toBe(401);
  });

  it('one rate limit per key counts /v1 and /v2 requests together', async () => {
    const app = keyedApp({ requestsPerMinute: 3 });
    expect((await app.request('/v1/models', { headers: bearer(KEY_A) })).status).toBe(200);
    expect((await infer(app, inferBody(), bearer(KEY_A))).status).toBe(200);
    expect((await app.request('/v2/models/colour', { headers: bearer(KEY_A) })).status).toBe(200);
    const limited = await infer(app, inferBody(), bearer(KEY_A));
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Object.keys((await limited.json()) as object)).toEqual(['error']);
    // Another key has its own budget.
    expect((await infer(app, inferBody(), bearer(KEY_B))).status).toBe(200);
  });

  it('/metrics needs a key unless made public', async () => {
    const closed = keyedApp();
    expect((await closed.request('/metrics')).status).toBe(401);
    expect((await closed.request('/metrics', { headers: bearer(KEY_A) })).status).toBe(200);
    const open = keyedApp({ metricsPublic: true });
    expect((await open.request('/metrics')).status).toBe(200);
  });
});

describe('/v2 bounded work and honest errors', () => {
  const app = createApp({ models: new Map([['colour', colourModel()]]) });

  it('answers each requested output once, and refuses more than 16 entries', async () => {
    const twice = await infer(
      app,
      inferBody(
        { outputs: [{ name: 'probabilities' }, { name: 'predicted_class' }, { name: 'probabilities' }] },
        2,
      ),
    );
    expect(twice.status).toBe(200);
    const body = (await twice.json()) as { outputs: Array<{ name: string }> };
    expect(body.outputs.map((o) => o.name)).toEqual(['probabilities', 'predicted_class']);
    const many = await infer(
      app,
      inferBody({ outputs: Array.from({ length: 100_000 }, () => ({ name: 'probabilities' })) }, 64),
    );
    expect(many.status).toBe(400);
    expect(((await many.json()) as { error: string }).error).toContain('outputs');
  });

  it('refuses temperatures outside [0.001, 1000] instead of answering null probabilities', async () => {
    for (const temperature of [1e-300, 1e-4, 1e6]) {
      const res = await infer(app, inferBody({ parameters: { temperature } }));
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toContain('[0.001, 1000]');
    }
    const res = await infer(app, inferBody({ parameters: { temperature: 0.001 } }));
    const body = (await res.json()) as { outputs: Array<{ name: string; data: unknown[] }> };
    expect(body.outputs[0].data.every((v) => typeof v === 'number' && Number.isFinite(v))).toBe(true);
  });

  it('reports 1e309 as Infinity, not null', async () => {
    const body = `{"inputs":[{"name":"input","shape":[1,${H},${W},${C}],"datatype":"FP32","data":[1e309]}]}`;
    const res = await infer(app, body);
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as { error: string };
    expect(error).toContain('got Infinity');
    expect(error).not.toContain('null');
  });

  it('logs every 500 with its request id, and answers it in the protocol shape', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
    const broken = functionClassifier({ name: 'broken', inputShape: SHAPE, numClasses: 3 }, () => {
      throw new Error('the kernel exploded');
    });
    const failing = createApp({ models: new Map([['colour', broken]]), logger });
    const res = await infer(failing, inferBody());
    expect(res.status).toBe(500);
    expect(Object.keys((await res.json()) as object)).toEqual(['error']);
    const id = res.headers.get('x-request-id');
    expect(id).toBeTruthy();
    const errors = lines.filter((l) => l.level === 50 && l.request_id === id);
    expect(errors.map((l) => l.msg)).toContain('request failed');
    expect(errors.some((l) => JSON.stringify(l.err ?? {}).includes('the kernel exploded'))).toBe(true);
  });
});

describe('audit uploads: media type and multipart limits checked while reading', () => {
  const app = createApp({ models: new Map([['colour', colourModel()]]) });

  it('answers an urlencoded POST with 415, not 422', async () => {
    const res = await app.request('/v1/audits', {
      method: 'POST',
      body: new URLSearchParams({ model: 'colour', norm: 'L2', eps: '1' }),
    });
    expect(res.status).toBe(415);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
  });

  it('refuses more than 256 parts and an oversized text field with 413 naming them', async () => {
    const many = new FormData();
    for (let i = 0; i < 1000; i++) many.append('norm', 'L2');
    const parts = await app.request('/v1/audits', { method: 'POST', body: many });
    expect(parts.status).toBe(413);
    expect(((await parts.json()) as { detail: string }).detail).toContain('more than 256 parts');
    const long = new FormData();
    long.append('model', 'x'.repeat(10_000));
    const field = await app.request('/v1/audits', { method: 'POST', body: long });
    expect(field.status).toBe(413);
    expect(((await field.json()) as { errors: Array<{ field: string }> }).errors[0].field).toBe('model');
  });
});

describe('upload refusals name the limit they met, in the intake thread as in process', () => {
  const MB = 1024 * 1024;
  const workerIntake = new WorkerIntake({ maxConcurrent: 1, heapMb: 512 });
  afterAll(() => workerIntake.close());
  type Problem = { type: string; status: number; errors: Array<{ field: string }> };
  const post = async (intake: InProcessIntake | WorkerIntake, form: FormData): Promise<Problem> => {
    const app = createApp({ models: new Map(), intake, limits: { auditBodyBytes: 4 * MB } });
    const res = await app.request('/v1/audits', { method: 'POST', body: form });
    return (await res.json()) as Problem;
  };
  const fields = { norm: 'L2', eps: '0.5', n: '2', iterations: '1', queries: '10' };

  for (const [where, intake] of [
    ['in process', () => new InProcessIntake()],
    ['intake thread', () => workerIntake],
  ] as const) {
    it(`a model over its activation budget is model-over-budget naming the layer (${where})`, async () => {
      const cifar = new Uint8Array(await readFile(CIFAR_TEST_FILE)).slice(0, 2 * 3073);
      // 20,000 filters on 32x32: 20.5M elements out of one layer, over the 2^24 limit.
      const wide = convModelFiles([32, 32, 3], [{ kernel: 1, filters: 20_000 }]);
      const over = await post(intake(), auditForm(wide, cifar, fields));
      expect(over.status).toBe(422);
      expect(over.type).toBe('https://ratio-audit.dev/problems/model-over-budget');
      expect(over.errors[0].field).toBe('model.json:modelTopology.config.layers[0].config.filters');
      // The same model without its weights is refused as invalid, before any budget.
      wide.delete('weights.bin');
      const missing = await post(intake(), auditForm(wide, cifar, fields));
      expect(missing.type).toBe('https://ratio-audit.dev/problems/invalid-model');
    });

    it(`nested gzip and a zip inside a gzip are dataset-too-large (${where})`, async () => {
      const model = await tinyCifarModelFiles();
      const images = new Uint8Array(16 + 20_000 * 784); // 15.7 MB inflated, over the 4 MB budget
      new DataView(images.buffer).setUint32(0, 0x00000803);
      new DataView(images.buffer).setUint32(4, 20_000);
      new DataView(images.buffer).setUint32(8, 28);
      new DataView(images.buffer).setUint32(12, 28);
      const gz = (bytes: Uint8Array) => new Uint8Array(gzipSync(bytes));
      const zipInGzip = gz(zipSync({ 'set/a/0.png': new Uint8Array(8 * MB) }, { level: 9 }));
      for (const bomb of [gz(gz(gz(images))), zipInGzip]) {
        const form = auditForm(model, undefined, fields);
        form.append('dataset', new Blob([new Uint8Array(bomb)]), 'set.gz');
        const refused = await post(intake(), form);
        expect(refused.status).toBe(422);
        expect(refused.type).toBe('https://ratio-audit.dev/problems/dataset-too-large');
        expect(refused.errors[0].field).toBe('dataset');
      }
    });
  }
});

describe('an audit whose model meets a non-finite logit', () => {
  it('fails with a clear error instead of a verdict', async () => {
    const files = await overflowingModelFiles(10);
    const cifar = new Uint8Array(await readFile(CIFAR_TEST_FILE)).slice(0, 4 * 3073);
    const audits = new AuditQueue();
    const app = createApp({ models: new Map(), audits });
    const res = await app.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, cifar, { norm: 'L2', eps: '0.5', n: '4', iterations: '1', queries: '10' }),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const job = await audits.settled(id);
    expect(job?.state).toBe('failed');
    expect(job?.result).toBeNull();
    expect(job?.error).toContain('non-finite logit');
  });
});

describe('audit event streams are capped per key and in total', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'ratio-streams-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a third stream of one key is refused with 429; other keys and closed streams free slots', async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const audits = new AuditQueue({
      run: async (_c, x) => {
        await gate;
        return emptyReport(x.shape[0]);
      },
    });
    const app = keyedApp({}, { audits, limits: { sseStreamsPerKey: 2, sseStreams: 3 } });
    const model = colourModel();
    const dataset = new ArrayDataset({
      images: new Uint8Array(H * W * C),
      shape: SHAPE,
      labels: Int32Array.from([0]),
    });
    const parameters = {
      model: 'colour',
      norm: 'L2' as const,
      eps: 1,
      version: 'standard' as const,
      n: 1,
      seed: 0,
    };
    const submitAs = (key: string) =>
      audits.submit({
        parameters,
        classifier: model,
        ownsClassifier: false,
        dataset,
        owner: sha256Hex(key).slice(0, 16),
      });
    const jobA = submitAs(KEY_A);
    const jobB = submitAs(KEY_B);
    const open = (id: string, key: string) =>
      app.request(`/v1/audits/${id}/events`, { headers: bearer(key) });
    const first = await open(jobA.id, KEY_A);
    const second = await open(jobA.id, KEY_A);
    expect([first.status, second.status]).toEqual([200, 200]);
    const third = await open(jobA.id, KEY_A);
    expect(third.status).toBe(429);
    expect(((await third.json()) as { type: string }).type).toContain('too-many-streams');
    // Key B has its own slots, up to the total of 3.
    const otherKey = await open(jobB.id, KEY_B);
    expect(otherKey.status).toBe(200);
    expect((await open(jobB.id, KEY_B)).status).toBe(429);
    // A stream that ends gives its slot back.
    await first.body?.cancel();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const again = await open(jobB.id, KEY_B);
    expect(again.status).toBe(200);
    release();
    await Promise.all([audits.settled(jobA.id), audits.settled(jobB.id)]);
    for (const res of [second, otherKey, again]) await res.text();
  });

  it('/metrics reports the bytes of the durable state', async () => {
    const store = new AuditStore(dir);
    const audits = new AuditQueue({
      store,
      run: async (_c, x) => emptyReport(x.shape[0]),
    });
    const files = await tinyCifarModelFiles();
    const job = audits.submit({
      parameters: { model: 'tiny', norm: 'L2', eps: 1, version: 'standard', n: 1, seed: 0 },
      classifier: await loadModelFromFiles(files),
      ownsClassifier: true,
      dataset: new ArrayDataset({
        images: new Uint8Array(3072),
        shape: [32, 32, 3],
        labels: Int32Array.from([0]),
      }),
      modelFiles: files,
    });
    await audits.settled(job.id);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const app = createApp({ models: new Map(), audits });
    const text = await (await app.request('/metrics')).text();
    const bytes = Number(/^audit_state_bytes (\d+)$/m.exec(text)?.[1]);
    expect(bytes).toBe(await store.diskUsage());
    expect(bytes).toBeGreaterThan(0);
  });
});
