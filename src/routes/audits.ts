import { createRoute, z } from '@hono/zod-openapi';
import { streamSSE } from 'hono/streaming';
import {
  AUTOATTACK_VERSIONS,
  type AuditModelSource,
  type PreparedAudit,
  prepareAudit,
} from '../jobs/audit.js';
import { type AuditEvent, type AuditJob, isFinal, ShuttingDownError } from '../jobs/audits.js';
import type { ServiceApp, ServiceContext } from './context.js';
import { mediaType, unsupportedMediaType } from './images.js';
import { invalidField, notFound, ProblemError, problemResponses, toProblemError } from './problem.js';

/** Audits: POST /v1/audits (202 + Location), GET, GET events (SSE), DELETE (cancel). */

const AuditParametersSchema = z.object({
  model: z.string(),
  norm: z.enum(['L2', 'Linf']),
  eps: z.number(),
  version: z.enum(AUTOATTACK_VERSIONS),
  n: z.number().int(),
  seed: z.number().int(),
  iterations: z.number().int().optional(),
  restarts: z.number().int().optional(),
});

export const AuditJobSchema = z
  .object({
    id: z.string().openapi({ example: '0b7f0c1e-2f6e-4a3c-9a51-6a2f2d2c0f11' }),
    state: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']),
    parameters: AuditParametersSchema,
    created_at: z.string(),
    started_at: z.string().nullable(),
    finished_at: z.string().nullable(),
    progress: z.object({ attack: z.string(), done: z.number(), total: z.number() }).nullable(),
    result: z.record(z.string(), z.unknown()).nullable().openapi({
      description: 'the AutoAttack report: clean/robust accuracy, per_attack, samples, warnings',
    }),
    error: z.string().nullable(),
  })
  .openapi('AuditJob', {
    example: {
      id: '0b7f0c1e-2f6e-4a3c-9a51-6a2f2d2c0f11',
      state: 'running',
      parameters: { model: 'upload', norm: 'L2', eps: 0.5, version: 'standard', n: 100, seed: 0 },
      created_at: '2026-11-24T17:00:00.000Z',
      started_at: '2026-11-24T17:00:01.000Z',
      finished_at: null,
      progress: { attack: 'apgd-ce', done: 40, total: 100 },
      result: null,
      error: null,
    },
  });

const AuditFormSchema = z
  .object({
    model: z.string().optional().openapi({ description: 'name of a served model (instead of model_files)' }),
    model_files: z
      .unknown()
      .optional()
      .openapi({
        type: 'array',
        items: { type: 'string', format: 'binary' },
        description: 'model.json, its weight shards and optionally card.json; the file name is the key',
      }),
    dataset: z.unknown().openapi({
      type: 'string',
      format: 'binary',
      description: 'labelled test set: CIFAR binary, idx, .npy or a zip of an image folder',
    }),
    labels: z
      .unknown()
      .optional()
      .openapi({ type: 'string', format: 'binary', description: 'labels file for idx/.npy images' }),
    norm: z.enum(['L2', 'Linf']),
    eps: z.string().openapi({ example: '0.5' }),
    version: z.enum(AUTOATTACK_VERSIONS).optional(),
    n: z.string().optional().openapi({ example: '100' }),
    seed: z.string().optional().openapi({ example: '0' }),
    iterations: z.string().optional().openapi({ example: '100' }),
    restarts: z.string().optional().openapi({ example: '1' }),
  })
  .openapi('AuditForm');

const AuditIdParams = z.object({
  id: z
    .string()
    .openapi({ param: { name: 'id', in: 'path' }, example: '0b7f0c1e-2f6e-4a3c-9a51-6a2f2d2c0f11' }),
});

const createAudit = createRoute({
  method: 'post',
  path: '/v1/audits',
  operationId: 'createAudit',
  tags: ['audits'],
  summary: 'Start an AutoAttack robust-accuracy audit of an uploaded or served model',
  request: { body: { content: { 'multipart/form-data': { schema: AuditFormSchema } } } },
  responses: {
    202: {
      description: 'Accepted; follow `Location`',
      headers: z.object({
        Location: z.string().openapi({ example: '/v1/audits/0b7f0c1e-2f6e-4a3c-9a51-6a2f2d2c0f11' }),
      }),
      content: { 'application/json': { schema: AuditJobSchema } },
    },
    ...problemResponses(400, 404, 413, 415, 422, 429, 503),
  },
});

const getAudit = createRoute({
  method: 'get',
  path: '/v1/audits/{id}',
  operationId: 'getAudit',
  tags: ['audits'],
  summary: 'State, progress and result of an audit',
  request: { params: AuditIdParams },
  responses: {
    200: { description: 'The audit', content: { 'application/json': { schema: AuditJobSchema } } },
    ...problemResponses(404),
  },
});

const auditEvents = createRoute({
  method: 'get',
  path: '/v1/audits/{id}/events',
  operationId: 'auditEvents',
  tags: ['audits'],
  summary: 'Server-Sent Events: `state` and `progress` events, then one `result` event',
  request: { params: AuditIdParams },
  responses: {
    200: {
      description: 'An event stream; every event carries the AuditJob as JSON',
      content: {
        'text/event-stream': {
          schema: z
            .string()
            .openapi({ example: 'event: progress\ndata: {"id":"...","state":"running"}\n\n' }),
        },
      },
    },
    ...problemResponses(404),
  },
});

const cancelAudit = createRoute({
  method: 'delete',
  path: '/v1/audits/{id}',
  operationId: 'cancelAudit',
  tags: ['audits'],
  summary: 'Cancel a queued or running audit',
  request: { params: AuditIdParams },
  responses: {
    200: {
      description: 'The audit after cancellation',
      content: { 'application/json': { schema: AuditJobSchema } },
    },
    ...problemResponses(404),
  },
});

function text(form: FormData, field: string): string | undefined {
  const value = form.get(field);
  if (value === null) return undefined;
  if (typeof value !== 'string') throw invalidField(field, `'${field}' must be a text field`);
  return value;
}

function numberField(
  form: FormData,
  field: string,
  options: { integer: boolean; min: number; max?: number },
) {
  const raw = text(form, field);
  if (raw === undefined) return undefined;
  const value = Number(raw);
  const ok =
    raw.trim() !== '' &&
    Number.isFinite(value) &&
    (!options.integer || Number.isInteger(value)) &&
    value >= options.min &&
    (options.max === undefined || value <= options.max);
  if (!ok) {
    const kind = options.integer ? 'an integer' : 'a number';
    const range = options.max === undefined ? `>= ${options.min}` : `in [${options.min}, ${options.max}]`;
    throw invalidField(field, `'${field}' must be ${kind} ${range}, got '${raw}'`);
  }
  return value;
}

async function fileBytes(
  form: FormData,
  field: string,
): Promise<{ bytes: Uint8Array; name: string } | undefined> {
  const value = form.get(field);
  if (value === null) return undefined;
  if (typeof value === 'string') throw invalidField(field, `'${field}' must be a file part`);
  return { bytes: new Uint8Array(await value.arrayBuffer()), name: value.name };
}

/** The audit's model as the form names it: a served model, or uploaded files. */
async function auditModel(form: FormData, context: ServiceContext): Promise<AuditModelSource> {
  const served = text(form, 'model');
  const uploads = form.getAll('model_files');
  if (served !== undefined && uploads.length > 0) {
    throw invalidField('model', `send either 'model' (a served model) or 'model_files', not both`);
  }
  if (served !== undefined) {
    const classifier = context.models.get(served);
    if (!classifier) throw notFound('model', 'model', `no model named '${served}'`);
    return { kind: 'served', name: served, classifier };
  }
  if (uploads.length === 0)
    throw invalidField('model_files', `send 'model_files' (model.json and weight shards) or 'model'`);
  const files = new Map<string, Uint8Array>();
  for (const [i, part] of uploads.entries()) {
    if (typeof part === 'string')
      throw invalidField(`model_files.${i}`, `'model_files.${i}' must be a file part`);
    const key = part.name.split(/[\\/]/).pop() ?? '';
    if (!key) throw invalidField(`model_files.${i}`, `'model_files.${i}' needs a file name`);
    if (files.has(key)) throw invalidField(`model_files.${i}`, `the file '${key}' was sent twice`);
    files.set(key, new Uint8Array(await part.arrayBuffer()));
  }
  return { kind: 'upload', files, field: 'model_files', maxBytes: context.limits.auditBodyBytes };
}

function sseEventName(event: AuditEvent): string {
  if (event.type === 'done') return 'result';
  return event.type;
}

export function registerAuditRoutes(app: ServiceApp, context: ServiceContext): void {
  app.openapi(createAudit, async (c) => {
    const type = mediaType(c);
    if (type !== 'multipart/form-data') throw unsupportedMediaType(type, ['multipart/form-data']);
    if (context.audits.isDraining) {
      throw new ProblemError(
        503,
        'shutting-down',
        'Shutting down',
        'the service accepts no new audits',
        [],
        30,
      );
    }
    let form: FormData;
    try {
      form = await c.req.formData();
    } catch {
      throw new ProblemError(400, 'malformed-body', 'Malformed body', 'the multipart body cannot be parsed');
    }
    const norm = text(form, 'norm');
    if (norm !== 'L2' && norm !== 'Linf')
      throw invalidField('norm', `'norm' must be L2 or Linf, got '${norm ?? ''}'`);
    const eps = numberField(form, 'eps', { integer: false, min: 0 });
    if (eps === undefined || !(eps > 0)) throw invalidField('eps', `'eps' must be a number > 0`);
    const version = text(form, 'version') ?? 'standard';
    if (version !== 'standard' && version !== 'plus' && version !== 'rand') {
      throw invalidField('version', `'version' must be standard, plus or rand, got '${version}'`);
    }
    const n = numberField(form, 'n', { integer: true, min: 1, max: 10_000 }) ?? 1000;
    const seed = numberField(form, 'seed', { integer: true, min: 0, max: 2 ** 32 - 1 }) ?? 0;
    const iterations = numberField(form, 'iterations', { integer: true, min: 1, max: 10_000 });
    const restarts = numberField(form, 'restarts', { integer: true, min: 1, max: 20 });
    const data = await fileBytes(form, 'dataset');
    if (!data) throw invalidField('dataset', `'dataset' (a labelled test set file) is required`);
    const labels = await fileBytes(form, 'labels');
    const model = await auditModel(form, context);
    let prepared: PreparedAudit;
    try {
      prepared = await prepareAudit({
        model,
        data: {
          kind: 'bytes',
          bytes: data.bytes,
          filename: data.name,
          labels: labels?.bytes,
          maxBytes: context.limits.auditBodyBytes,
        },
        parameters: { norm, eps, version, n, seed, iterations, restarts },
      });
    } catch (error) {
      // Data set errors name the 'dataset' part; model errors name the file at fault themselves.
      throw toProblemError(error, 'dataset');
    }
    let job: AuditJob;
    try {
      job = context.audits.submit(prepared);
    } catch (error) {
      if (prepared.ownsClassifier) prepared.classifier.dispose();
      if (error instanceof ShuttingDownError) {
        throw new ProblemError(503, 'shutting-down', 'Shutting down', error.message, [], 30);
      }
      throw error;
    }
    return c.json(job, 202, { Location: `/v1/audits/${job.id}` });
  });

  app.openapi(getAudit, (c) => {
    const { id } = c.req.valid('param');
    const job = context.audits.get(id);
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    return c.json(job, 200);
  });

  app.openapi(cancelAudit, (c) => {
    const { id } = c.req.valid('param');
    const job = context.audits.cancel(id);
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    return c.json(job, 200);
  });

  app.openapi(auditEvents, (c) => {
    const { id } = c.req.valid('param');
    const job = context.audits.get(id);
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    return streamSSE(c, async (stream) => {
      const pending: AuditEvent[] = [];
      let wake: (() => void) | undefined;
      const unsubscribe = context.audits.subscribe(id, (event) => {
        pending.push(event);
        wake?.();
      });
      stream.onAbort(() => {
        unsubscribe?.();
        wake?.();
      });
      const current = context.audits.get(id)!;
      if (isFinal(current.state)) {
        unsubscribe?.();
        await stream.writeSSE({ event: 'result', data: JSON.stringify(current), id: '0' });
        return;
      }
      await stream.writeSSE({ event: 'state', data: JSON.stringify(current), id: '0' });
      let sequence = 1;
      while (!stream.aborted) {
        if (pending.length === 0) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
          continue;
        }
        const event = pending.shift()!;
        await stream.writeSSE({
          event: sseEventName(event),
          data: JSON.stringify(event.job),
          id: String(sequence++),
        });
        if (event.type === 'done') break;
      }
      unsubscribe?.();
    });
  });
}
