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
  return new ProblemError(422, slug, 'Invalid parameter', message, [{ field, message }]);
}

export function notFound(what: string, field: string, detail: string): ProblemError {
  return new ProblemError(404, `unknown-${what}`, `Unknown ${what}`, detail, [{ field, message: detail }]);
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
  if (error instanceof QueueFullError) {
    const title = error.queue === 'audit' ? 'Audit queue full' : 'Compute queue full';
    return new ProblemError(429, 'queue-full', title, error.message, [], error.retryAfter);
  }
  if (error instanceof MultipartError) {
    return error.kind === 'too-large'
      ? new ProblemError(413, 'body-too-large', 'Body too large', error.message, [
          { field: error.field, message: error.message },
        ])
      : new ProblemError(400, 'malformed-body', 'Malformed body', error.message, [
          { field: 'body', message: error.message },
        ]);
  }
  if (error instanceof IntakeLimitError) {
    return error.kind === 'busy'
      ? new ProblemError(429, 'intake-busy', 'Uploads busy', error.message, [], error.retryAfter)
      : new ProblemError(413, 'upload-too-costly', 'Upload too costly to check', error.message, [
          { field: 'body', message: error.message },
        ]);
  }
  if (error instanceof RequestCostError) {
    return new ProblemError(422, 'request-too-costly', 'Request over the cost limit', error.message, [
      { field: error.field, message: error.message },
    ]);
  }
  if (error instanceof ImageError) {
    if (error.code === 'too-large') {
      return new ProblemError(413, 'image-too-large', 'Image too large', error.message, [
        { field, message: error.message },
      ]);
    }
    return new ProblemError(422, 'invalid-image', 'Invalid image', error.message, [
      { field, message: error.message },
    ]);
  }
  if (error instanceof DatasetError) {
    // Still 422 (the upload itself may be small, a bomb); its own type tells a limit from bad bytes.
    if (error.code === 'too-large') {
      return new ProblemError(422, 'dataset-too-large', 'Data set over the size limit', error.message, [
        { field, message: error.message },
      ]);
    }
    return new ProblemError(422, 'invalid-dataset', 'Invalid data set', error.message, [
      { field, message: error.message },
    ]);
  }
  if (error instanceof ModelLimitError) {
    // The service's own limit, which its operator sets: the variable is named so they know which.
    const variable = limitVariable(error.limit);
    const detail = `${error.message} (the service's model limit${variable ? ` ${variable}` : ''})`;
    const at = error.field ? `${error.path}:${error.field}` : error.path;
    return new ProblemError(413, 'model-too-large', 'Model over the size limit', detail, [
      { field: at, message: detail },
    ]);
  }
  if (error instanceof ModelFileError) {
    const at = error.field ? `${error.path}:${error.field}` : error.path;
    if (error.kind === 'over-budget') {
      return new ProblemError(
        422,
        'model-over-budget',
        'Model over the size or compute limit',
        error.message,
        [{ field: at, message: error.message }],
      );
    }
    // An upload is its bytes alone: weights it keeps in files beside the .onnx are not read.
    const external = error.cause instanceof OnnxExternalDataError;
    return new ProblemError(
      422,
      external ? 'onnx-external-data' : 'invalid-model',
      external ? 'ONNX external data not accepted' : 'Invalid model',
      error.message,
      [{ field: at, message: error.message }],
    );
  }
  if (error instanceof ModelContractError) {
    return new ProblemError(422, 'invalid-model', 'Invalid model', error.message, [
      { field: error.field, message: error.message },
    ]);
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
