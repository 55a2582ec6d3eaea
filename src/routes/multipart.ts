import type { MiddlewareHandler } from 'hono';
import { DEFAULT_MULTIPART_LIMITS, type MultipartLimits } from '../jobs/audit/index.js';
import type { ServiceContext, ServiceEnv } from './context.js';
import { mediaType, unsupportedMediaType } from './images.js';
import { fieldProblem, type ProblemError, problemResponse, toProblemError } from './problem.js';

/**
 * POST /v1/audits bodies: multipart only (any other type is a 415 before a byte is read), parsed by
 * the audit intake as they stream in, with the body, part-count and part-size limits checked while
 * reading (413; a malformed body is a 400). The route's validator then reads the parsed form from
 * Hono's body cache (text fields and stand-in files), and the handler prepares the audit through
 * the same intake session (`c.get('intake')`), which is closed (its memory freed) when the request
 * ends, whatever its answer.
 */
export function multipartIntake(
  context: ServiceContext,
  limits: Partial<MultipartLimits> & Pick<MultipartLimits, 'maxBodyBytes'>,
): MiddlewareHandler<ServiceEnv> {
  const full: MultipartLimits = {
    ...DEFAULT_MULTIPART_LIMITS,
    maxFileBytes: limits.maxBodyBytes,
    ...limits,
  };
  return async (c, next) => {
    if (c.req.method !== 'POST') return next();
    const type = mediaType(c);
    if (type !== 'multipart/form-data') {
      return problemResponse(c, unsupportedMediaType(type, ['multipart/form-data']));
    }
    const length = c.req.header('content-length');
    if (length !== undefined && Number.parseInt(length || '0', 10) > full.maxBodyBytes) {
      return problemResponse(c, tooLarge(`the body exceeds the limit of ${full.maxBodyBytes} bytes`, 'body'));
    }
    const body = c.req.raw.body;
    if (!body) return problemResponse(c, malformed('the multipart body is empty'));
    let session: Awaited<ReturnType<ServiceContext['intake']['receive']>>;
    try {
      session = await context.intake.receive(
        body as unknown as AsyncIterable<Uint8Array>,
        c.req.header('content-type') ?? '',
        full,
        c.req.raw.signal,
      );
    } catch (error) {
      const problem = toProblemError(error);
      // Anything unexpected goes to the app's error handler, which logs it with the request id.
      if (problem.status >= 500) throw error;
      return problemResponse(c, problem);
    }
    try {
      c.req.bodyCache.formData = session.form;
      c.set('intake', session);
      await next();
    } finally {
      session.close();
    }
  };
}

function tooLarge(detail: string, field: string): ProblemError {
  return fieldProblem(413, 'body-too-large', 'Body too large', field, detail);
}

function malformed(detail: string): ProblemError {
  return fieldProblem(400, 'malformed-body', 'Malformed body', 'body', detail);
}
