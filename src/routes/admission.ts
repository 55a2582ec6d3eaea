import type { MiddlewareHandler } from 'hono';
import type { AuditQuota } from './auth.js';
import type { ServiceContext, ServiceEnv } from './context.js';
import { requestOrigin } from './origin.js';
import { ProblemError, problemResponse, queueFull, refusal, shuttingDown } from './problem.js';

/**
 * Admission before parsing: a request that will be refused for capacity is refused before its body
 * is read (an audit upload may be 256 MiB: parsing it first would cost seconds and its size in memory).
 * These answers cost a header read, so they stay cheap under load.
 */

/** POST /v1/audits: draining -> 503, queue full -> 429, the key's audit quota used -> 429. */
export function auditAdmission(context: ServiceContext, quota: AuditQuota): MiddlewareHandler<ServiceEnv> {
  return async (c, next) => {
    if (c.req.method !== 'POST') return next();
    if (context.audits.isDraining) {
      return problemResponse(c, shuttingDown());
    }
    if (context.audits.isFull) {
      const { running, queued } = context.audits.depth;
      return problemResponse(
        c,
        queueFull('audit', `the audit queue is full (${running} running, ${queued} queued)`, 30),
      );
    }
    const principal = c.get('principal');
    if (!(await quota.take(principal))) {
      return problemResponse(
        c,
        refusal(
          429,
          'audit-quota',
          'Audit quota used up',
          `this key already has ${quota.perPrincipal} audits running or queued; wait for one to finish`,
          30,
        ),
      );
    }
    let accepted: string | undefined;
    try {
      await next();
      accepted = c.res.status === 202 ? c.get('auditId') : undefined;
    } finally {
      // The slot is held until the audit ends; a refused submission gives it back at once.
      // The slot comes back however the wait ends, and nothing here rejects unhandled: that would end
      // the service (tfjs-wasm's runtime rethrows unhandled rejections).
      if (accepted)
        context.audits
          .settled(accepted)
          .catch(() => undefined)
          .then(() => quota.give(principal))
          .catch(() => {});
      else await quota.give(principal);
    }
  };
}

/** Synchronous computations: a full compute queue answers 429 before the images are read. */
export function computeAdmission(context: ServiceContext): MiddlewareHandler<ServiceEnv> {
  return async (c, next) => {
    if (
      c.req.method === 'POST' &&
      // Predictions wait in the batcher's own queue (429 when it is full in images), not here.
      /\/(ood|counterfactuals)$/.test(c.req.path) &&
      context.compute.isFull
    ) {
      const { running, waiting } = context.compute.depth;
      return problemResponse(
        c,
        queueFull('compute', `the compute queue is full (${running} running, ${waiting} waiting)`, 1),
      );
    }
    return next();
  };
}

/**
 * Browsers send a multipart or form POST from any page without a CORS preflight, so CORS alone does
 * not stop a page from starting audits. A write (POST, PUT, PATCH, DELETE) that carries an `Origin`
 * other than the service's own or an allowed one is refused 403; clients that send no Origin (CLI,
 * CI, servers) are unaffected.
 */
export function crossOriginWrites(allowed: readonly string[]): MiddlewareHandler<ServiceEnv> {
  const origins = new Set(allowed);
  return async (c, next) => {
    const origin = c.req.header('origin');
    if (
      origin === undefined ||
      c.req.method === 'GET' ||
      c.req.method === 'HEAD' ||
      c.req.method === 'OPTIONS'
    ) {
      return next();
    }
    // The service's own page behind a TLS-terminating proxy posts with an https Origin to a plain-HTTP URL.
    if (origins.has(origin) || origin === requestOrigin(c)) return next();
    return problemResponse(
      c,
      new ProblemError(
        403,
        'cross-origin',
        'Cross-origin request refused',
        `requests from the origin '${origin}' are not allowed (configure RATIO_CORS_ORIGINS to allow one)`,
      ),
    );
  };
}
