import { createRoute, z } from '@hono/zod-openapi';
import { junitReport, markdownReport } from '../jobs/audit/index.js';
import type { ServiceApp, ServiceContext } from './context.js';
import { decimalQuery, parseDecimal } from './params.js';
import { notFound, ProblemError, problemResponses } from './problem.js';

/**
 * GET /v1/audits/{id}/report: a finished audit's report as the files `ratio audit` writes: the JSON
 * report (--report), JUnit XML (--junit) or Markdown (--markdown), with an optional gate threshold.
 */

export const REPORT_FORMATS = ['json', 'junit', 'markdown'] as const;
export type ReportFormat = (typeof REPORT_FORMATS)[number];

/** The JSON report (what `ratio audit --report` writes; an AuditJob's `result`). */
export const AuditReportSchema = z
  .object({
    n: z.number().int(),
    norm: z.enum(['L2', 'Linf']),
    eps: z.number(),
    version: z.string(),
    seed: z.number().int(),
    backend: z.string(),
    seconds: z.number(),
    clean_accuracy: z.number(),
    robust_accuracy: z.number(),
    per_attack: z.array(
      z.object({
        name: z.string(),
        robust_accuracy_after: z.number().openapi({ description: 'after this attack and all before it' }),
        broken: z.number().int(),
        seconds: z.number(),
      }),
    ),
    samples: z.array(
      z.object({
        index: z.number().int(),
        clean_correct: z.boolean(),
        predicted: z.number().int(),
        broken_by: z
          .string()
          .nullable()
          .openapi({ description: "'clean' for a clean error, the attack's name, or null: robust" }),
        perturbation_norm: z.number().nullable(),
        seconds: z.number(),
      }),
    ),
    warnings: z.array(z.string()),
  })
  .openapi('AuditReport', {
    example: {
      n: 2,
      norm: 'L2',
      eps: 0.5,
      version: 'standard',
      seed: 0,
      backend: 'wasm',
      seconds: 4.2,
      clean_accuracy: 1,
      robust_accuracy: 0.5,
      per_attack: [{ name: 'apgd-ce', robust_accuracy_after: 0.5, broken: 1, seconds: 2.1 }],
      samples: [
        {
          index: 0,
          clean_correct: true,
          predicted: 3,
          broken_by: 'apgd-ce',
          perturbation_norm: 0.41,
          seconds: 1.2,
        },
        { index: 1, clean_correct: true, predicted: 8, broken_by: null, perturbation_norm: null, seconds: 3 },
      ],
      warnings: [],
    },
  });

const MIN_ROBUST_ACCURACY = { integer: false, min: 0, max: 1 };

const FILE_OF: Record<ReportFormat, { type: string; extension: string }> = {
  json: { type: 'application/json', extension: 'json' },
  junit: { type: 'application/xml; charset=utf-8', extension: 'xml' },
  markdown: { type: 'text/markdown; charset=utf-8', extension: 'md' },
};

const auditReport = createRoute({
  method: 'get',
  path: '/v1/audits/{id}/report',
  operationId: 'auditReport',
  tags: ['audits'],
  summary: "A finished audit's report: JSON, JUnit XML or Markdown (what ratio audit writes)",
  request: {
    params: z.object({
      id: z
        .string()
        .openapi({ param: { name: 'id', in: 'path' }, example: '0b7f0c1e-2f6e-4a3c-9a51-6a2f2d2c0f11' }),
    }),
    query: z.object({
      format: z
        .enum(REPORT_FORMATS, {
          error: (issue) => `'format' must be ${REPORT_FORMATS.join(', ')}, got '${String(issue.input)}'`,
        })
        .default('json')
        .openapi({ example: 'junit' }),
      min_robust_accuracy: decimalQuery(MIN_ROBUST_ACCURACY, {
        description: 'the gate: JUnit and Markdown mark the audit failed under this robust accuracy',
        example: 0.4,
      }),
    }),
  },
  responses: {
    200: {
      description: 'The report, as an attachment',
      content: {
        'application/json': { schema: AuditReportSchema },
        'application/xml': { schema: z.string().openapi({ example: '<?xml version="1.0"?><testsuites/>' }) },
        'text/markdown': { schema: z.string().openapi({ example: '### Robustness audit: ratio-cifar10' }) },
      },
    },
    ...problemResponses(401, 404, 409, 422),
  },
});

export function registerAuditReportRoutes(app: ServiceApp, context: ServiceContext): void {
  app.openapi(auditReport, (c) => {
    const { id } = c.req.valid('param');
    const query = c.req.valid('query');
    // Another key's audit is answered exactly like one that does not exist.
    const job = context.audits.get(id, c.get('principal'));
    if (!job) throw notFound('audit', 'id', `no audit with id '${id}'`);
    const minRobustAccuracy =
      query.min_robust_accuracy === undefined
        ? undefined
        : parseDecimal(query.min_robust_accuracy, 'min_robust_accuracy', MIN_ROBUST_ACCURACY);
    if (job.state !== 'succeeded' || !job.result) {
      throw new ProblemError(
        409,
        'audit-not-finished',
        'Audit has no report',
        `the audit is ${job.state}; a report exists once it succeeded`,
      );
    }
    const format = query.format;
    const name = job.parameters.model;
    const body =
      format === 'json'
        ? `${JSON.stringify(job.result, null, 2)}\n`
        : format === 'junit'
          ? junitReport(job.result, minRobustAccuracy, name)
          : markdownReport(job.result, minRobustAccuracy, name);
    const file = FILE_OF[format];
    return c.body(body, 200, {
      'content-type': file.type,
      'content-disposition': `attachment; filename="audit-${id}.${file.extension}"`,
    });
  });
}
