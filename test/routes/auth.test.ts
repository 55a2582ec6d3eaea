import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { type AuditJob, AuditQueue } from '../../src/jobs/audit/registry.js';
import { ApiKeys, AuthConfigError, authConfigFromEnv, sha256Hex } from '../../src/routes/auth.js';
import { startServer } from '../../src/server.js';
import { colourModel } from '../helpers/colour-model.js';
import { auditForm, routeUploads } from '../helpers/uploads.js';

let files: Map<string, Uint8Array>;
let data: Uint8Array;
let png: string;
let dir: string;

beforeAll(async () => {
  ({ files, data, png } = await routeUploads(8));
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-auth-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const QUICK = { norm: 'L2', eps: '0.5', n: '4', iterations: '2', seed: '1' };
const KEYS = { alpha: 'alpha-key-0123456789', beta: 'beta-key-0123456789' };
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const never = () => new Promise<never>(() => {});

function keyedApp(
  options: { auth?: object; audits?: AuditQueue; logger?: pino.Logger; corsOrigins?: string[] } = {},
) {
  const env = { RATIO_API_KEYS: `${KEYS.alpha}, ${KEYS.beta}`, RATIO_RATE_LIMIT_PER_MINUTE: '0' };
  return createApp({
    models: new Map([['colour', colourModel()]]),
    auth: { ...authConfigFromEnv(env), ...options.auth },
    audits: options.audits ?? new AuditQueue({ run: never }),
    logger: options.logger,
    corsOrigins: options.corsOrigins,
  });
}

const submit = (app: ReturnType<typeof createApp>, headers: Record<string, string> = {}) =>
  app.request('/v1/audits', { method: 'POST', body: auditForm(files, data, QUICK), headers });

describe('configuration from the environment', () => {
  it('takes comma-separated keys and a file of sha256 digests; stores only digests', async () => {
    const file = path.join(dir, 'keys.sha256');
    await writeFile(file, `# ci keys\n${sha256Hex('from-file')}\n\n`);
    const config = authConfigFromEnv({
      RATIO_API_KEYS: 'secret-one, secret-two,',
      RATIO_API_KEYS_FILE: file,
    });
    expect(config.devMode).toBe(false);
    expect(config.keyHashes).toEqual([
      sha256Hex('secret-one'),
      sha256Hex('secret-two'),
      sha256Hex('from-file'),
    ]);
    expect(JSON.stringify(config)).not.toMatch(/secret-one|secret-two|from-file/);
    const keys = new ApiKeys(config.keyHashes);
    expect(keys.identify('secret-two')).toBe(sha256Hex('secret-two').slice(0, 16));
    expect(keys.identify('from-file')).toBe(sha256Hex('from-file').slice(0, 16));
    expect(keys.identify('secret-three')).toBeUndefined();
  });

  it('refuses to run without keys unless development mode is explicit; refuses a malformed keys file', async () => {
    expect(() => authConfigFromEnv({})).toThrow(AuthConfigError);
    expect(() => authConfigFromEnv({})).toThrow(/no API keys configured.*RATIO_DEV_MODE=1/);
    expect(authConfigFromEnv({ RATIO_DEV_MODE: '1' }).devMode).toBe(true);
    const bad = path.join(dir, 'bad.sha256');
    await writeFile(bad, 'not-a-digest\n');
    expect(() => authConfigFromEnv({ RATIO_API_KEYS_FILE: bad })).toThrow(
      /line 1 is not a sha256 hex digest/,
    );
    expect(() => authConfigFromEnv({ RATIO_API_KEYS_FILE: path.join(dir, 'missing') })).toThrow(/ENOENT/);
    expect(() => authConfigFromEnv({ RATIO_API_KEYS: 'k', RATIO_RATE_LIMIT_PER_MINUTE: '0x10' })).toThrow(
      /decimal integer/,
    );
  });
});

describe('bearer keys on the routes', () => {
  it('audits need a key (401 + WWW-Authenticate); a wrong key is 401 everywhere; predict is optional', async () => {
    const app = keyedApp();
    const missing = await submit(app);
    expect(missing.status).toBe(401);
    expect(missing.headers.get('www-authenticate')).toBe('Bearer');
    expect(missing.headers.get('content-type')).toBe('application/problem+json');
    const wrong = await submit(app, bearer('nope'));
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/invalid_token/);
    const predict = (headers: Record<string, string>) =>
      app.request('/v1/models/colour/predict', {
        method: 'POST',
        body: JSON.stringify({ images: [png] }),
        headers: { 'content-type': 'application/json', ...headers },
      });
    expect((await predict({})).status).toBe(200);
    expect((await predict(bearer(KEYS.beta))).status).toBe(200);
    expect((await predict(bearer('nope'))).status).toBe(401);
    const strict = keyedApp({ auth: { requireKeyForAnalysis: true } });
    expect(
      (
        await strict.request('/v1/models/colour/predict', {
          method: 'POST',
          body: JSON.stringify({ images: [png] }),
          headers: { 'content-type': 'application/json' },
        })
      ).status,
    ).toBe(401);
  });

  it('a job is visible and cancellable only with the key that submitted it', async () => {
    const queue = new AuditQueue({ run: never });
    const app = keyedApp({ audits: queue });
    const res = await submit(app, bearer(KEYS.alpha));
    expect(res.status).toBe(202);
    const job = (await res.json()) as AuditJob;
    expect((await app.request(`/v1/audits/${job.id}`, { headers: bearer(KEYS.beta) })).status).toBe(404);
    expect((await app.request(`/v1/audits/${job.id}/events`, { headers: bearer(KEYS.beta) })).status).toBe(
      404,
    );
    const foreignCancel = await app.request(`/v1/audits/${job.id}`, {
      method: 'DELETE',
      headers: bearer(KEYS.beta),
    });
    expect(foreignCancel.status).toBe(404);
    expect(queue.get(job.id)?.state).not.toBe('cancelled');
    expect((await app.request(`/v1/audits/${job.id}`, { headers: bearer(KEYS.alpha) })).status).toBe(200);
    const cancelled = await app.request(`/v1/audits/${job.id}`, {
      method: 'DELETE',
      headers: bearer(KEYS.alpha),
    });
    expect(cancelled.status).toBe(200);
  });

  it('rate limits per key with rate-limiter-flexible: the 4th request a minute is 429, another key is not', async () => {
    const app = keyedApp({ auth: { requestsPerMinute: 3 } });
    const statuses = [];
    for (let i = 0; i < 4; i++)
      statuses.push((await app.request('/v1/models', { headers: bearer(KEYS.alpha) })).status);
    expect(statuses).toEqual([200, 200, 200, 429]);
    const limited = await app.request('/v1/models', { headers: bearer(KEYS.alpha) });
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(((await limited.json()) as { title: string }).title).toBe('Rate limit exceeded');
    expect((await app.request('/v1/models', { headers: bearer(KEYS.beta) })).status).toBe(200);
  });

  it('caps running + queued audits per key before reading the body, and gives the slot back when one ends', async () => {
    let finish = () => {};
    const run = () =>
      new Promise<never>((_, reject) => {
        finish = () => reject(new Error('stopped by the test'));
      });
    const queue = new AuditQueue({ run, maxQueued: 8 });
    const app = keyedApp({ audits: queue, auth: { auditsPerKey: 1 } });
    const first = await submit(app, bearer(KEYS.alpha));
    expect(first.status).toBe(202);
    // A body that cannot even be parsed: the quota answers first.
    const second = await app.request('/v1/audits', {
      method: 'POST',
      body: 'not multipart',
      headers: { ...bearer(KEYS.alpha), 'content-type': 'multipart/form-data; boundary=x' },
    });
    expect(second.status).toBe(429);
    expect(((await second.json()) as { title: string }).title).toBe('Audit quota used up');
    expect((await submit(app, bearer(KEYS.beta))).status).toBe(202);
    // A refused submission (400) does not use the quota up.
    const job = (await first.json()) as AuditJob;
    await new Promise((resolve) => setTimeout(resolve, 10));
    finish();
    await queue.settled(job.id);
    await new Promise((resolve) => setTimeout(resolve, 10));
    const malformed = await app.request('/v1/audits', {
      method: 'POST',
      body: 'not multipart',
      headers: { ...bearer(KEYS.alpha), 'content-type': 'multipart/form-data; boundary=x' },
    });
    expect(malformed.status).toBe(400);
    expect((await submit(app, bearer(KEYS.alpha))).status).toBe(202);
  });

  it('a full audit queue is 429 before the body is read', async () => {
    const queue = new AuditQueue({ run: never, maxRunning: 1, maxQueued: 0 });
    const app = keyedApp({ audits: queue });
    expect((await submit(app, bearer(KEYS.alpha))).status).toBe(202);
    await new Promise((resolve) => setTimeout(resolve, 10));
    let pulled = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += 1;
        controller.enqueue(new Uint8Array(1024));
      },
    });
    const res = await app.request('/v1/audits', {
      method: 'POST',
      body,
      headers: { ...bearer(KEYS.beta), 'content-type': 'multipart/form-data; boundary=x' },
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(429);
    expect(((await res.json()) as { title: string }).title).toBe('Audit queue full');
    expect(pulled).toBeLessThanOrEqual(1);
  });

  it('never logs a key', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const app = keyedApp({ logger: pino({ level: 'debug' }, sink) });
    await submit(app, bearer(KEYS.alpha));
    await submit(app, bearer(`${KEYS.beta}x`));
    await app.request('/v1/models', { headers: bearer(KEYS.beta) });
    const log = lines.join('');
    expect(log).toMatch(/"status":401/);
    for (const key of Object.values(KEYS)) expect(log).not.toContain(key);
  });
});

describe('web safety', () => {
  it('405 with Allow for a wrong method on a known path; 404 for an unknown path', async () => {
    const app = keyedApp();
    const del = await app.request('/v1/models', { method: 'DELETE' });
    expect(del.status).toBe(405);
    expect(del.headers.get('allow')).toBe('GET, HEAD');
    const put = await app.request('/v1/audits', { method: 'PUT', headers: bearer(KEYS.alpha) });
    expect(put.status).toBe(405);
    expect(put.headers.get('allow')).toBe('POST');
    const patch = await app.request('/v1/audits/some-id', { method: 'PATCH', headers: bearer(KEYS.alpha) });
    expect(patch.headers.get('allow')).toBe('DELETE, GET, HEAD');
    expect((await app.request('/v1/nothing')).status).toBe(404);
  });

  it('secure headers on every answer; no CORS unless origins are configured; foreign-origin writes 403', async () => {
    const app = keyedApp();
    const res = await app.request('/health/live', { headers: { origin: 'https://evil.example' } });
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('x-frame-options')).toBe('SAMEORIGIN');
    expect(res.headers.get('access-control-allow-origin')).toBeNull();
    const forged = await app.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, data, QUICK),
      headers: { origin: 'https://evil.example' },
    });
    expect(forged.status).toBe(403);
    const allowed = keyedApp({ corsOrigins: ['https://ci.example'] });
    const preflight = await allowed.request('/v1/audits', {
      method: 'OPTIONS',
      headers: {
        origin: 'https://ci.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization',
      },
    });
    expect(preflight.headers.get('access-control-allow-origin')).toBe('https://ci.example');
    const other = await allowed.request('/v1/models', { headers: { origin: 'https://evil.example' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
    const fromAllowed = await submit(allowed, { ...bearer(KEYS.alpha), origin: 'https://ci.example' });
    expect(fromAllowed.status).toBe(202);
  });

  it('binds to loopback in development mode unless told otherwise', async () => {
    const saved = process.env.HOST;
    delete process.env.HOST;
    const server = await startServer({
      port: 0,
      modelsDir: '/nonexistent',
      logger: pino({ level: 'silent' }),
      auth: { devMode: true },
    });
    try {
      expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    } finally {
      await server.close(100);
      if (saved !== undefined) process.env.HOST = saved;
    }
  });
});
