import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import { bodyLimitByLength } from '../../src/routes/body-limit.js';

/** A request whose body stream must not be touched (the content-length decision reads headers only). */
class UntouchableBody extends Request {
  override get body(): never {
    throw new Error('the body stream was opened');
  }
}

function app(maxSize: number) {
  const hono = new Hono();
  hono.use(
    '*',
    bodyLimitByLength(maxSize, (c) => c.text('too large', 413)),
  );
  hono.post('/echo', async (c) => c.text(String((await c.req.arrayBuffer()).byteLength)));
  hono.post('/untouched', (c) => c.text('handled'));
  hono.get('/untouched', (c) => c.text('handled'));
  return hono;
}

describe('bodyLimitByLength', () => {
  it('decides from content-length alone: over the limit 413, at the limit passed on', async () => {
    const limited = app(10);
    const post = (bytes: number) =>
      limited.request(
        new UntouchableBody('http://x/untouched', {
          method: 'POST',
          body: new Uint8Array(bytes),
          headers: { 'content-length': String(bytes) },
        }),
      );
    expect((await post(11)).status).toBe(413);
    const atLimit = await post(10);
    expect([atLimit.status, await atLimit.text()]).toEqual([200, 'handled']);
    const get = await limited.request(new UntouchableBody('http://x/untouched'));
    expect(get.status).toBe(200);
  });

  it('counts a body without content-length as it streams (Hono’s bodyLimit)', async () => {
    const limited = app(10);
    const stream = (bytes: number) =>
      new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new Uint8Array(bytes));
          controller.close();
        },
      });
    const post = (bytes: number, headers: Record<string, string> = {}) =>
      limited.request('/echo', {
        method: 'POST',
        body: stream(bytes),
        headers,
        duplex: 'half',
      } as RequestInit);
    expect((await post(11)).status).toBe(413);
    const small = await post(7);
    expect([small.status, await small.text()]).toEqual([200, '7']);
    // A content-length beside transfer-encoding is not trusted: the stream is counted.
    const lying = await post(11, { 'content-length': '3', 'transfer-encoding': 'chunked' });
    expect(lying.status).toBe(413);
  });
});
