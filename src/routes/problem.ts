import { z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import {
  DatasetError,
  ImageError,
  InputFieldError,
  IntakeLimitError,
  InvalidInputError,
  ModelLoadError,
  MultipartError,
  QueueFullError,
} from '../jobs/errors.js';
import {
  limitVariable,
  ModelContractError,
  ModelFileError,
  ModelLimitError,
  OnnxExternalDataError,
} from '../jobs/models/index.js';
import { RequestCostError } from '../jobs/serving/index.js';

/**
 * RFC 9457 problem details. Every error answer of the service is one of these, with the field at
 * fault in `errors[].field` (a JSON pointer-ish dotted path, a query parameter or a multipart part).
 */

export const FieldErrorSchema = z.object({
  field: z.string().openapi({ example: 'images.0' }),
  message: z.string().openapi({ example: "'images.0' is not an image (no known image header)" }),
});

export const ProblemSchema = z
  .object({
    type: z.string().openapi({ example: 'https://ratio-audit.dev/problems/invalid-image' }),
    title: z.string().openapi({ example: 'Invalid image' }),
    status: z.number().int().openapi({ example: 422 }),
    detail: z.string().openapi({ example: "'images.0' is not an image (no known image header)" }),
    instance: z.string().optional().openapi({ example: '/v1/models/ratio-cifar10/predict' }),
    request_id: z.string().optional().openapi({ example: '5f0c6b1e-6a51-4b8e-9d3c-2b9f0f1a7c42' }),
    errors: z.array(FieldErrorSchema).optional(),
  })
  .openapi('Problem');

export type Problem = z.infer<typeof ProblemSchema>;
export type FieldError = z.infer<typeof FieldErrorSchema>;

const TYPE_BASE = 'https://ratio-audit.dev/problems/';

/** An error the HTTP layer answers as a problem document with `status`. */
export class ProblemError extends Error {
  override readonly name = 'ProblemError';
  constructor(
    readonly status: number,
    readonly slug: string,
    readonly title: string,
    detail: string,
    readonly errors: FieldError[] = [],
    /** Seconds for a Retry-After header (429/503). */
    readonly retryAfter?: number,
  ) {
    super(detail);
  }
}

/** A problem with one field at fault, whose message is the detail. */
export function fieldProblem(
  status: number,
  slug: string,
  title: string,
  field: string,
  message: string,
): ProblemError {
  return new ProblemError(status, slug, title, message, [{ field, message }]);
}

/** A refusal for the service's state or capacity (nothing in the request at fault): retry later. */
export function refusal(
  status: 429 | 503,
  slug: string,
  title: string,
  detail: string,
  retryAfterSeconds?: number,
): ProblemError {
  return new ProblemError(status, slug, title, detail, [], retryAfterSeconds);
}

/** The 429 of a full queue: synchronous compute (predict, OOD, counterfactuals) or audits. */
export function queueFull(
  queue: 'compute' | 'audit',
  detail: string,
  retryAfterSeconds: number,
): ProblemError {
  const title = queue === 'audit' ? 'Audit queue full' : 'Compute queue full';
  return refusal(429, 'queue-full', title, detail, retryAfterSeconds);
}

/** The 503 of a draining service, which takes no new audits. */
export function shuttingDown(detail = 'the service accepts no new audits'): ProblemError {
  return refusal(503, 'shutting-down', 'Shutting down', detail, 30);
}

/** A 422 for failed schema validation, one entry per issue, the field as its dotted path. */
export function validationProblem(
  issues: ReadonlyArray<{ path: PropertyKey[]; message: string }>,
  target: string,
) {
  const errors = issues.map((issue) => {
    const path = issue.path.map(String).join('.');
    const field = target === 'json' || target === 'form' ? path || 'body' : path || target;
    return { field, message: issue.message };
  });
  const detail = errors.map((e) => `'${e.field}': ${e.message}`).join('; ');
  return new ProblemError(422, 'invalid-parameter', 'Invalid parameter', detail, errors);
}

/** A 422 naming one field. */
export function invalidField(field: string, message: string, slug = 'invalid-parameter'): ProblemError {
  return fieldProblem(422, slug, 'Invalid parameter', field, message);
}

export function notFound(what: string, field: string, detail: string): ProblemError {
  return fieldProblem(404, `unknown-${what}`, `Unknown ${what}`, field, detail);
}

/**
 * Maps any thrown value to a problem: typed errors of the data and engine layers become 4xx with the
 * field at fault; anything else is a 500 whose detail does not leak internals.
 */
export function toProblemError(error: unknown, field = 'body'): ProblemError {
  if (error instanceof ProblemError) return error;
  if (error instanceof InputFieldError) return toProblemError(error.cause, error.field);
  if (error instanceof InvalidInputError) return invalidField(error.field, error.message);
  if (error instanceof ModelLoadError) return invalidField(error.field, error.message, 'invalid-model');
  if (error instanceof QueueFullError) return queueFull(error.queue, error.message, error.retryAfter);
  if (error instanceof MultipartError) {
    return error.kind === 'too-large'
      ? fieldProblem(413, 'body-too-large', 'Body too large', error.field, error.message)
      : fieldProblem(400, 'malformed-body', 'Malformed body', 'body', error.message);
  }
  if (error instanceof IntakeLimitError) {
    return error.kind === 'busy'
      ? refusal(429, 'intake-busy', 'Uploads busy', error.message, error.retryAfter)
      : fieldProblem(413, 'upload-too-costly', 'Upload too costly to check', 'body', error.message);
  }
  if (error instanceof RequestCostError) {
    return fieldProblem(422, 'request-too-costly', 'Request over the cost limit', error.field, error.message);
  }
  if (error instanceof ImageError) {
    if (error.code === 'too-large') {
      return fieldProblem(413, 'image-too-large', 'Image too large', field, error.message);
    }
    return fieldProblem(422, 'invalid-image', 'Invalid image', field, error.message);
  }
  if (error instanceof DatasetError) {
    // Still 422 (the upload itself may be small, a bomb); its own type tells a limit from bad bytes.
    if (error.code === 'too-large') {
      return fieldProblem(422, 'dataset-too-large', 'Data set over the size limit', field, error.message);
    }
    return fieldProblem(422, 'invalid-dataset', 'Invalid data set', field, error.message);
  }
  if (error instanceof ModelLimitError) {
    // The service's own limit, which its operator sets: the variable is named so they know which.
    const variable = limitVariable(error.limit);
    const detail = `${error.message} (the service's model limit${variable ? ` ${variable}` : ''})`;
    const at = error.field ? `${error.path}:${error.field}` : error.path;
    return fieldProblem(413, 'model-too-large', 'Model over the size limit', at, detail);
  }
  if (error instanceof ModelFileError) {
    const at = error.field ? `${error.path}:${error.field}` : error.path;
    if (error.kind === 'over-budget') {
      return fieldProblem(
        422,
        'model-over-budget',
        'Model over the size or compute limit',
        at,
        error.message,
      );
    }
    // An upload is its bytes alone: weights it keeps in files beside the .onnx are not read.
    const external = error.cause instanceof OnnxExternalDataError;
    return fieldProblem(
      422,
      external ? 'onnx-external-data' : 'invalid-model',
      external ? 'ONNX external data not accepted' : 'Invalid model',
      at,
      error.message,
    );
  }
  if (error instanceof ModelContractError) {
    return fieldProblem(422, 'invalid-model', 'Invalid model', error.field, error.message);
  }
  if (error instanceof Error && (error.name === 'AbortError' || error.name === 'TimeoutError')) {
    return new ProblemError(
      504,
      'timeout',
      'Request timed out',
      'the computation exceeded the request timeout',
    );
  }
  return new ProblemError(
    500,
    'internal',
    'Internal error',
    'an unexpected error occurred; see the server log',
  );
}

/** The problem+json response for `error`. */
export function problemResponse(c: Context, error: ProblemError): Response {
  const body: Problem = {
    type: `${TYPE_BASE}${error.slug}`,
    title: error.title,
    status: error.status,
    detail: error.message,
    instance: c.req.path,
    ...(c.get('requestId') ? { request_id: c.get('requestId') as string } : {}),
    ...(error.errors.length > 0 ? { errors: error.errors } : {}),
  };
  const headers: Record<string, string> = { 'content-type': 'application/problem+json' };
  if (error.retryAfter !== undefined)
    headers['retry-after'] = String(Math.max(1, Math.ceil(error.retryAfter)));
  return new Response(JSON.stringify(body), { status: error.status, headers });
}

/** Standard OpenAPI response entries for problems. */
export function problemResponses(...statuses: number[]) {
  const descriptions: Record<number, string> = {
    400: 'Malformed request (e.g. unparseable JSON)',
    401: 'Missing or invalid API key (`Authorization: Bearer <key>`)',
    404: 'Unknown model or audit',
    409: 'The audit has no report yet (queued, running, failed or cancelled)',
    413: 'Body or image over the size limit',
    415: 'Unsupported content type',
    422: 'Invalid image, model, data set or parameter; `errors` names the field',
    429: 'Queue full, rate limit or audit quota reached; retry after `Retry-After` seconds',
    503: 'Not ready or shutting down; retry after `Retry-After` seconds',
    504: 'Computation exceeded the request timeout',
  };
  return Object.fromEntries(
    statuses.map((status) => [
      status,
      {
        description: descriptions[status] ?? 'Error',
        content: { 'application/problem+json': { schema: ProblemSchema } },
      },
    ]),
  );
}

/** OpenAPI security of operations where an API key is optional (unless configured otherwise). */
export const OPTIONAL_KEY: Array<Record<string, string[]>> = [{ bearerAuth: [] }, {}];
