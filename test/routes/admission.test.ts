import { Hono } from 'hono';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { auditAdmission } from '../../src/routes/admission.js';
import { AuditQuota } from '../../src/routes/auth.js';
import type { ServiceContext, ServiceEnv } from '../../src/routes/context.js';

/**
 * The audit quota's slot is given back when the audit ends, on a chain nobody awaits. tfjs-wasm's
 * runtime rethrows any unhandled rejection, so a rejection there would end `ratio serve`: the wait
 * may fail, and the slot must come back all the same.
 */

let rejections: unknown[] = [];
const onRejection = (reason: unknown) => rejections.push(reason);
beforeEach(() => {
  rejections = [];
  process.on('unhandledRejection', onRejection);
});
afterEach(() => {
  process.off('unhandledRejection', onRejection);
});

function appWith(settled: (id: string) => Promise<unknown>, quota: AuditQuota) {
  const context = {
    audits: { isDraining: false, isFull: false, depth: { running: 0, queued: 0 }, settled },
  } as unknown as ServiceContext;
  const app = new Hono<ServiceEnv>();
  app.use('*', async (c, next) => {
    c.set('principal', 'key-a');
    await next();
  });
  app.use('/v1/audits', auditAdmission(context, quota));
  let next = 0;
  app.post('/v1/audits', (c) => {
    c.set('auditId', `audit-${next++}`);
    return c.json({}, 202);
  });
  return app;
}

describe('audit admission gives a slot back however the audit ends', () => {
  it('a failed wait for the end neither rejects unhandled nor keeps the slot', async () => {
    let fail: (error: Error) => void = () => {};
    const ended = new Promise((_, reject) => {
      fail = reject;
    });
    const app = appWith(() => ended, new AuditQuota(1));
    expect((await app.request('/v1/audits', { method: 'POST' })).status).toBe(202);
    // The one slot is held while the audit runs.
    expect((await app.request('/v1/audits', { method: 'POST' })).status).toBe(429);
    fail(new Error('the store went away'));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(rejections).toEqual([]);
    expect((await app.request('/v1/audits', { method: 'POST' })).status).toBe(202);
  });
});
