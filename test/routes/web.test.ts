import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { colourModel } from '../helpers/colour-model.js';

/**
 * The page at `/` and its assets, the Content-Security-Policy on every answer, /docs without an
 * inline script, and /openapi.json naming the origin it was fetched from.
 */

const app = createApp({ models: new Map([['colour', colourModel()]]) });

const POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; " +
  "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/** Every <script> and <style> of a page, and whether any element carries inline style or handlers. */
function inlineParts(html: string) {
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
  return {
    scripts: scripts.length,
    inlineScripts: scripts.filter(([, attrs, body]) => !/\bsrc=/.test(attrs) || body.trim() !== '').length,
    styleElements: (html.match(/<style\b/gi) ?? []).length,
    styleAttributes: (html.match(/\sstyle=/gi) ?? []).length,
    handlers: (html.match(/\son[a-z]+=/gi) ?? []).length,
  };
}

describe('the web page', () => {
  it('serves / as the built page, with a strict CSP and no inline script or style', async () => {
    const res = await app.request('/');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('content-security-policy')).toBe(POLICY);
    const html = await res.text();
    expect(html).toBe(await readFile('src/web/bundle/index.html', 'utf8'));
    expect(inlineParts(html)).toEqual({
      scripts: 1,
      inlineScripts: 0,
      styleElements: 0,
      styleAttributes: 0,
      handlers: 0,
    });
    // Everything it loads comes from this origin.
    for (const [, url] of html.matchAll(/(?:src|href)="([^"]+)"/g)) expect(url).toMatch(/^\/(web|docs)\b/);
  });

  it('puts the same policy on API answers and problems', async () => {
    for (const target of ['/v1/models', '/no-such-path', '/web/app.js']) {
      const res = await app.request(target);
      expect(res.headers.get('content-security-policy'), target).toBe(POLICY);
    }
  });

  it('serves the built assets with their types and revalidates by ETag', async () => {
    const expected: Record<string, string> = {
      'app.js': 'text/javascript; charset=utf-8',
      'app.css': 'text/css; charset=utf-8',
      'icon.svg': 'image/svg+xml',
      'samples/samples.json': 'application/json',
    };
    for (const [file, type] of Object.entries(expected)) {
      const res = await app.request(`/web/${file}`);
      expect(res.status, file).toBe(200);
      expect(res.headers.get('content-type'), file).toBe(type);
      expect(new Uint8Array(await res.arrayBuffer())).toEqual(
        new Uint8Array(await readFile(path.join('src/web/bundle', file))),
      );
      const etag = res.headers.get('etag')!;
      expect(etag).toMatch(/^"[0-9a-f]{20}"$/);
      const again = await app.request(`/web/${file}`, { headers: { 'if-none-match': etag } });
      expect(again.status, file).toBe(304);
      expect(await again.text()).toBe('');
    }
    const samples = JSON.parse(await (await app.request('/web/samples/samples.json')).text()) as Array<{
      file: string;
    }>;
    expect(samples.length).toBeGreaterThan(0);
    for (const sample of samples) {
      const res = await app.request(`/web/samples/${sample.file}`);
      expect(res.headers.get('content-type')).toBe('image/png');
    }
  });

  it('answers 404 problems for unknown assets and never reads outside the built folder', async () => {
    for (const target of ['/web/nope.js', '/web/%2e%2e/package.json', '/web/..%2fpackage.json', '/web/']) {
      const res = await app.request(target);
      expect(res.status, target).toBe(404);
      expect(res.headers.get('content-type'), target).toBe('application/problem+json');
    }
  });

  it('says how to build the page when the folder is empty', async () => {
    const empty = await mkdtemp(path.join(tmpdir(), 'ratio-web-'));
    try {
      const bare = createApp({ models: new Map(), webDirectory: empty });
      const res = await bare.request('/');
      expect(res.status).toBe(404);
      expect(((await res.json()) as { detail: string }).detail).toContain('npm run build:web');
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});

describe('/docs and /openapi.json', () => {
  it('serves the reference page without an inline script; its start-up script is a file', async () => {
    const html = await (await app.request('/docs')).text();
    expect(inlineParts(html)).toMatchObject({ scripts: 3, inlineScripts: 0, styleElements: 0 });
    const init = await app.request('/docs/assets/init.js');
    expect(init.status).toBe(200);
    expect(init.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(await init.text()).toContain("url: '/openapi.json'");
  });

  it("names the request's origin as the server, so Try it out calls whatever host serves it", async () => {
    const committed = JSON.parse(await readFile('openapi/openapi.json', 'utf8')) as Record<string, unknown>;
    const cases: Array<[string, Record<string, string>, string]> = [
      ['http://example.test:9000/openapi.json', {}, 'http://example.test:9000'],
      ['http://[::1]:8181/openapi.json', {}, 'http://[::1]:8181'],
      ['http://ratio.example/openapi.json', { 'x-forwarded-proto': 'https' }, 'https://ratio.example'],
      ['http://ratio.example/openapi.json', { 'x-forwarded-proto': 'gopher' }, 'http://ratio.example'],
    ];
    for (const [url, headers, origin] of cases) {
      const served = (await (await app.request(url, { headers })).json()) as Record<string, unknown>;
      expect(served.servers, url).toEqual([{ url: origin }]);
      // Apart from `servers`, the served document is the committed one (test/routes/openapi.test.ts
      // keeps that equal to the code).
      expect({ ...served, servers: committed.servers }).toEqual(committed);
    }
  });

  it('accepts a write from its own page behind a TLS-terminating proxy, still refuses other origins', async () => {
    const headers = { origin: 'https://ratio.example', 'x-forwarded-proto': 'https' };
    const own = await app.request('http://ratio.example/v1/audits/x', { method: 'DELETE', headers });
    expect(own.status).toBe(404);
    const foreign = await app.request('http://ratio.example/v1/audits/x', {
      method: 'DELETE',
      headers: { ...headers, origin: 'https://elsewhere.example' },
    });
    expect(foreign.status).toBe(403);
  });
});
