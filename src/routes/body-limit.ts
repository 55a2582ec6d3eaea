import type { Context, MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';

/**
 * Hono's `bodyLimit` with its content-length check done first, from the header alone.
 *
 * Why: Hono's middleware starts with `c.req.raw.body`, which makes @hono/node-server build a full
 * web `Request` with a stream over the socket for every POST; the handler then reads the body
 * through that stream instead of node-server's direct read. On the OOD gate's predict path that
 * was a tenth of the event loop (bench/service.ts). The decision is the same as Hono's: a declared
 * length without transfer-encoding is compared with `maxSize` (over: `onError`); a body without
 * one is counted as it streams, by Hono's own middleware.
 *
 * @example
 * app.use('/v1/models/*', bodyLimitByLength(16 * 1024 * 1024, (c) => c.json({ error: 'too large' }, 413)));
 */
export function bodyLimitByLength(
  maxSize: number,
  onError: (c: Context) => Response | Promise<Response>,
): MiddlewareHandler {
  const streamed = bodyLimit({ maxSize, onError });
  return async (c, next) => {
    const method = c.req.method;
    // node-server gives GET and HEAD no body; Hono's middleware passes them on for that reason.
    if (method === 'GET' || method === 'HEAD') return next();
    const length = c.req.header('content-length');
    if (length !== undefined && c.req.header('transfer-encoding') === undefined) {
      return Number.parseInt(length || '0', 10) > maxSize ? onError(c) : next();
    }
    return streamed(c, next);
  };
}
