import { createRoute, z } from '@hono/zod-openapi';
import { type SSEStreamingApi, streamSSE } from 'hono/streaming';
import {
  AUTOATTACK_VERSIONS,
  type AuditEvent,
  type AuditJob,
  AuditParametersSchema,
  DEFAULT_AUDIT_POINTS,
  DEFAULT_SEED,
  DEFAULT_VERSION,
  type IntakeRequest,
  isFinal,
  NORMS,
  type PreparedAudit,
  ShuttingDownError,
} from '../jobs/audit/index.js';
import { checkAuditCost } from '../jobs/serving/index.js';
import { MAX_L2_RADIUS } from './analysis.js';
import type { ServiceApp, ServiceContext } from './context.js';
import { notFound, problemResponses, shuttingDown, toProblemError } from './problem.js';
import { StreamSlots } from './streams.js';

/** Audits: POST /v1/audits (202 + Location), GET, GET events (SSE), DELETE (cancel). */

export const AuditJobSchema = z
  .object({
    id: z.string().openapi({ example: '0b7f0c1e-2f6e-4a3c-9a51-6a2f2d2c0f11' }),
    state: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']),
    // The service runs every audit at the engine's batch size and budget: those two never show.
    parameters: AuditParametersSchema.omit({ batchSize: true, fullBudget: true }),
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

/** A numeric text field of the form, parsed and range-checked (multipart fields are text). */
function formNumber(field: string, options: { integer: boolean; min: number; max: number; example: string }) {
  return z
    .string({ error: `'${field}' must be a text field` })
    .transform((raw, ctx) => {
      // Decimal notation only: '0x10', '1e3' and '' are errors, not 16, 1000 and 0.
      const value = Number(raw);
      const ok =
        (options.integer ? /^-?\d+$/ : /^-?(\d+(\.\d*)?|\.\d+)$/).test(raw) &&
        Number.isFinite(value) &&
        value >= options.min &&
        value <= options.max;
      if (!ok) {
        const kind = options.integer ? 'a decimal integer' : 'a decimal number';
        ctx.addIssue({
          code: 'custom',
          message: `'${field}' must be ${kind} in [${options.min}, ${options.max}], got '${raw}'`,
        });
        return z.NEVER;
      }
      return value;
    })
    .openapi({ type: 'string', example: options.example });
}

const isFile = (value: unknown): value is File => value instanceof File;

/** An optional file part (documented as binary); a text value where a file belongs is refused. */
function filePart(field: string, description: string) {
  return z
    .unknown()
    .superRefine((value, ctx) => {
      if (value !== undefined && !isFile(value)) {
        ctx.addIssue({ code: 'custom', message: `'${field}' must be a file part` });
      }
    })
    .transform((value) => (isFile(value) ? value : undefined))
    .optional()
    .openapi({ type: 'string', format: 'binary', description });
}

/**
 * The multipart audit form: documents the request body and is what the route's validator parses
 * it with (`c.req.valid('form')`; a refusal is a 422 naming the part), so the OpenAPI document and
 * the checks cannot drift apart.
 */
export const AuditFormSchema = z
  .object({
    model: z
      .string({ error: "'model' must be a text field" })
      .optional()
      .openapi({ description: 'name of a served model (instead of model_files)' }),
    model_files: z
      .preprocess(
        (parts) => (parts === undefined ? [] : Array.isArray(parts) ? parts : [parts]),
        z.array(z.unknown()),
      )
      .superRefine((parts, ctx) => {
        const names = new Set<string>();
        for (const [i, part] of parts.entries()) {
          const at = `model_files.${i}`;
          if (!isFile(part)) {
            ctx.addIssue({ code: 'custom', path: [i], message: `'${at}' must be a file part` });
            continue;
          }
          const key = part.name.split(/[\\/]/).pop() ?? '';
          if (!key) ctx.addIssue({ code: 'custom', path: [i], message: `'${at}' needs a file name` });
          else if (names.has(key))
            ctx.addIssue({ code: 'custom', path: [i], message: `the file '${key}' was sent twice` });
          names.add(key);
        }
      })
      .transform((parts) => parts.filter(isFile))
      .openapi({
        type: 'array',
        items: { type: 'string', format: 'binary' },
        description:
          'model.json, its weight shards and optionally card.json, or one .onnx file (a PyTorch export) and optionally card.json; the file name is the key',
      }),
    dataset: filePart('dataset', 'labelled test set: CIFAR binary, idx, .npy or a zip of an image folder'),
    labels: filePart('labels', 'labels file for idx/.npy images'),
    norm: z.enum(NORMS, {
      error: (issue) => `'norm' must be L2 or Linf, got '${String(issue.input ?? '')}'`,
    }),
    eps: formNumber('eps', { integer: false, min: 0, max: MAX_L2_RADIUS, example: '0.5' }).refine(
      (eps) => eps > 0,
      {
        message: `'eps' must be a number > 0`,
      },
    ),
    version: z
      .enum(AUTOATTACK_VERSIONS, {
        error: (issue) => `'version' must be ${AUTOATTACK_VERSIONS.join(', ')}, got '${String(issue.input)}'`,
      })
      .default(DEFAULT_VERSION),
    n: formNumber('n', { integer: true, min: 1, max: 10_000, example: '100' }).optional(),
    seed: formNumber('seed', { integer: true, min: 0, max: 2 ** 32 - 1, example: '0' }).optional(),
    iterations: formNumber('iterations', { integer: true, min: 1, max: 10_000, example: '100' }).optional(),
    restarts: formNumber('restarts', { integer: true, min: 1, max: 20, example: '1' }).optional(),
    queries: formNumber('queries', { integer: true, min: 1, max: 20_000, example: '5000' }).optional(),
  })
  .superRefine((form, ctx) => {
    // Linf budgets are in [0, 1] pixel units (L2 radii up to the analyses' bound, checked above).
    if (form.norm === 'Linf' && form.eps > 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['eps'],
        message: `'eps' must be <= 1 for Linf, got ${form.eps}`,
      });
    }
    if (form.dataset === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['dataset'],
        message: `'dataset' (a labelled test set file) is required`,
      });
    }
    if (form.model !== undefined && form.model_files.length > 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['model'],
        message: `send either 'model' (a served model) or 'model_files', not both`,
      });
    } else if (form.model === undefined && form.model_files.length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['model_files'],
        message: `send 'model_files' (model.json and weight shards, or a .onnx file) or 'model'`,
      });
    }
  })
  .openapi('AuditForm');

export type AuditForm = z.output<typeof AuditFormSchema>;

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
    ...problemResponses(400, 401, 404, 413, 415, 422, 429, 503),
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
    ...problemResponses(401, 404),
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
    ...problemResponses(401, 404, 429),
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
    ...problemResponses(401, 404),
  },
});

/** The audit's model as the form names it: a served model (with its files), or uploaded parts. */
function auditModel(form: AuditForm, context: ServiceContext): IntakeRequest['model'] {
  if (form.model !== undefined) {
    const classifier = context.models.get(form.model);
    if (!classifier) throw notFound('model', 'model', `no model named '${form.model}'`);
    const files = context.servedFiles?.get(form.model);
    return { kind: 'served', name: form.model, classifier, ...(files ? { files } : {}) };
  }
  return {
    kind: 'upload',
    parts: form.model_files,
    field: 'model_files',
    maxBytes: context.limits.auditBodyBytes,
  };
}

function sseEventName(event: AuditEvent): string {
  if (event.type === 'done') return 'result';
  return event.type;
}

export function registerAuditRoutes(app: ServiceApp, context: ServiceContext): void {
  const streams = new StreamSlots(context.limits.sseStreamsPerKey, context.limits.sseStreams);
  app.openapi(createAudit, async (c) => {
    if (context.audits.isDraining) {
      throw shuttingDown();
    }
    // Parsed by the intake (multipart.ts) and checked by AuditFormSchema before this handler runs;
    // the intake decodes and checks the uploads where it keeps them (a worker thread in the server).
    const values = c.req.valid('form');
    const { model: _model, model_files: _modelFiles, dataset: _dataset, labels: _labels, ...given } = values;
    const model = auditModel(values, context);
    let prepared: PreparedAudit;
    try {
      prepared = await c.get('intake').prepare({
        model,
        data: { part: values.dataset!, labels: values.labels, maxBytes: context.limits.auditBodyBytes },
        parameters: { ...given, n: given.n ?? DEFAULT_AUDIT_POINTS, seed: given.seed ?? DEFAULT_SEED },
      });
    } catch (error) {
      // Data set errors name the 'dataset' part; model errors name the file at fault themselves.
      throw toProblemError(error, 'dataset');
    }
    try {
      const { parameters } = prepared;
      checkAuditCost(
        prepared.classifier,
        {
          ...parameters,
          images: Math.min(parameters.n, prepared.dataset.size),
          numClasses: prepared.classifier.numClasses,
        },
        context.limits.maxAuditFlops,
      );
    } catch (error) {
      if (prepared.ownsClassifier) prepared.classifier.dispose();
      throw error;
    }
    let job: AuditJob;
    try {
      job = context.audits.submit({ ...prepared, owner: c.get('principal') });
    } catch (error) {
      if (prepared.ownsClassifier) prepared.classifier.dispose();
      if (error instanceof ShuttingDownError) {
        throw shuttingDown(error.message);
      }
      throw error;
    }
    c.set('auditId', job.id);
    return c.json(job, 202, { Location: `/v1/audits/${job.id}` });
  });

  app.openapi(getAudit, (c) => {
    const { id } = c.req.valid('param');
    // Another key's audit is answered exactly like one that does not exist.
    const job = context.audits.get(id, c.get('principal'));
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    return c.json(job, 200);
  });

  app.openapi(cancelAudit, (c) => {
    const { id } = c.req.valid('param');
    const job = context.audits.cancel(id, c.get('principal'));
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    return c.json(job, 200);
  });

  app.openapi(auditEvents, (c) => {
    const { id } = c.req.valid('param');
    const job = context.audits.get(id, c.get('principal'));
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    const release = streams.take(c.get('principal'));
    return streamSSE(c, async (stream) => {
      stream.onAbort(release);
      try {
        await relayEvents(stream, id);
      } finally {
        release();
      }
    });
  });

  /** Writes the audit's events to the stream until its result (or until the client goes). */
  async function relayEvents(stream: SSEStreamingApi, id: string): Promise<void> {
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
  }
}
