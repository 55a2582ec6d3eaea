import { createRoute, z } from '@hono/zod-openapi';
import {
  checkRequestCost,
  counterfactualsOf,
  DEFAULT_COUNTERFACTUAL_RADII,
  worstCaseOod,
} from '../jobs/serving/index.js';
import { computeWithin, findModel, type ServiceApp, type ServiceContext } from './context.js';
import { base64Bytes, base64Of, unsupportedMediaType } from './images.js';
import { ModelParams } from './models.js';
import { invalidField, OPTIONAL_KEY, problemResponses } from './problem.js';

/** Worst-case OOD confidence and visual counterfactuals: the two RATIO analyses served per request. */

const Base64Image = z.string().min(1).openapi({ example: 'iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...' });

const Iterations = z
  .number()
  .int()
  .min(1)
  .max(10_000)
  .openapi({ description: 'APGD iterations (the service limit may be lower)', example: 100 });

/** Largest L2 radius accepted: a [0,1] image of 32x32x3 spans 55.4, so 100 covers every use. */
export const MAX_L2_RADIUS = 100;
const Seed = z
  .number()
  .int()
  .min(0)
  .max(2 ** 32 - 1);

export const OodRequestSchema = z
  .object({
    images: z.array(Base64Image).min(1),
    eps: z
      .number()
      .min(0)
      .max(MAX_L2_RADIUS)
      .optional()
      .openapi({ description: "L2 radius (default: the card's eps_out, else 1)" }),
    iterations: Iterations.optional(),
    restarts: z.number().int().min(1).max(10).optional(),
    seed: Seed.optional(),
    threshold: z.number().min(0).max(1).optional(),
  })
  .openapi('OodRequest', {
    example: { images: ['iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...'], eps: 1, iterations: 100 },
  });

const Verdict = z.enum(['in_distribution', 'out_of_distribution', 'out_of_distribution_not_robust']).openapi({
  description:
    'in_distribution: clean confidence >= threshold; out_of_distribution: under it even in the worst case; out_of_distribution_not_robust: a perturbation within eps lifts it over the threshold',
});

export const OodResponseSchema = z
  .object({
    model: z.string(),
    eps: z.number(),
    threshold: z.number(),
    results: z.array(
      z.object({
        clean_confidence: z.number(),
        worst_case_confidence: z.number(),
        worst_case_class: z.object({ index: z.number().int(), class: z.string() }),
        worst_case_image: z.string().openapi({ description: 'base64 PNG' }),
        verdict: Verdict,
      }),
    ),
  })
  .openapi('OodResponse', {
    example: {
      model: 'ratio-cifar10',
      eps: 1,
      threshold: 0.5,
      results: [
        {
          clean_confidence: 0.21,
          worst_case_confidence: 0.34,
          worst_case_class: { index: 8, class: 'ship' },
          worst_case_image: 'iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...',
          verdict: 'out_of_distribution',
        },
      ],
    },
  });

export const CounterfactualRequestSchema = z
  .object({
    image: Base64Image,
    targets: z
      .array(z.union([z.string(), z.number().int().min(0)]))
      .min(1)
      .max(10)
      .optional()
      .openapi({ description: 'class names or indices (default: the two most probable classes)' }),
    radii: z
      .array(z.number().gt(0).max(MAX_L2_RADIUS))
      .min(1)
      .max(12)
      .optional()
      .openapi({ example: [0.5, 1, 2] }),
    iterations: Iterations.optional(),
    seed: Seed.optional(),
  })
  .openapi('CounterfactualRequest', {
    example: { image: 'iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...', targets: ['cat', 'dog'], radii: [0.5, 1, 2] },
  });

export const CounterfactualResponseSchema = z
  .object({
    model: z.string(),
    original_class: z.object({ index: z.number().int(), class: z.string() }),
    targets: z.array(
      z.object({
        index: z.number().int(),
        class: z.string(),
        clean: z.object({ p_target: z.number(), p_original: z.number() }),
        radii: z.array(
          z.object({
            eps: z.number(),
            p_target: z.number(),
            p_original: z.number(),
            distance: z.number(),
            image: z.string().openapi({ description: 'base64 PNG' }),
          }),
        ),
      }),
    ),
  })
  .openapi('CounterfactualResponse', {
    example: {
      model: 'ratio-cifar10',
      original_class: { index: 3, class: 'cat' },
      targets: [
        {
          index: 5,
          class: 'dog',
          clean: { p_target: 0.1, p_original: 0.8 },
          radii: [{ eps: 1, p_target: 0.7, p_original: 0.2, distance: 1, image: 'iVBORw0KGgo...' }],
        },
      ],
    },
  });

const oodRoute = createRoute({
  method: 'post',
  path: '/v1/models/{model}/ood',
  operationId: 'worstCaseOod',
  // A key is optional here unless RATIO_REQUIRE_KEY_FOR_ANALYSIS=1; an invalid one is 401.
  security: OPTIONAL_KEY,
  tags: ['analysis'],
  summary: 'Clean and worst-case max confidence in an L2 ball, with an OOD verdict',
  request: {
    params: ModelParams,
    body: { content: { 'application/json': { schema: OodRequestSchema } } },
  },
  responses: {
    200: {
      description: 'Worst-case confidences',
      content: { 'application/json': { schema: OodResponseSchema } },
    },
    ...problemResponses(400, 401, 404, 413, 415, 422, 429, 504),
  },
});

const counterfactualRoute = createRoute({
  method: 'post',
  path: '/v1/models/{model}/counterfactuals',
  operationId: 'counterfactuals',
  // A key is optional here unless RATIO_REQUIRE_KEY_FOR_ANALYSIS=1; an invalid one is 401.
  security: OPTIONAL_KEY,
  tags: ['analysis'],
  summary: 'Visual counterfactuals towards target classes for a range of L2 budgets',
  description:
    'With `Accept: image/png` the answer is one grid PNG: a row per target, columns original then radii.',
  request: {
    params: ModelParams,
    body: { content: { 'application/json': { schema: CounterfactualRequestSchema } } },
  },
  responses: {
    200: {
      description: 'Counterfactuals (JSON with base64 PNGs, or a grid PNG)',
      content: {
        'application/json': { schema: CounterfactualResponseSchema },
        'image/png': { schema: z.string().openapi({ format: 'binary' }) },
      },
    },
    ...problemResponses(400, 401, 404, 413, 415, 422, 429, 504),
  },
});

/** The served model and APGD iterations of an analysis request, which must be JSON. */
function analysisTarget(
  context: ServiceContext,
  contentType: string | undefined,
  name: string,
  body: { iterations?: number },
) {
  const type = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') throw unsupportedMediaType(type, ['application/json']);
  const model = findModel(context, name);
  const iterations = body.iterations ?? Math.min(100, context.limits.maxIterations);
  if (iterations > context.limits.maxIterations) {
    throw invalidField(
      'iterations',
      `'iterations' must be <= ${context.limits.maxIterations}, got ${iterations}`,
    );
  }
  return { model, iterations };
}

export function registerAnalysisRoutes(app: ServiceApp, context: ServiceContext): void {
  app.openapi(oodRoute, async (c) => {
    const name = c.req.valid('param').model;
    const body = c.req.valid('json');
    const { model, iterations } = analysisTarget(context, c.req.header('content-type'), name, body);
    const restarts = body.restarts ?? 1;
    if (body.images.length > context.limits.maxBatch) {
      throw invalidField(
        'images',
        `at most ${context.limits.maxBatch} images per request, got ${body.images.length}`,
      );
    }
    // Refused before any image is decoded: images x iterations x restarts x the model's FLOPs.
    checkRequestCost(
      model,
      { images: body.images.length, iterations, restarts },
      context.limits.maxRequestFlops,
      body.images.length > 1 ? 'images' : restarts > 1 ? 'restarts' : 'iterations',
    );
    const inputs = body.images.map((text, i) => ({
      field: `images.${i}`,
      bytes: base64Bytes(text, `images.${i}`),
    }));
    const found = await computeWithin(context, (signal) =>
      worstCaseOod(model, inputs, {
        limits: context.limits,
        eps: body.eps,
        iterations,
        restarts: body.restarts,
        seed: body.seed,
        threshold: body.threshold,
        signal,
        compute: { compute: context.analysis, name },
      }),
    );
    const results = found.results.map(({ worst_case_png, verdict, ...result }) => ({
      ...result,
      worst_case_image: base64Of(worst_case_png),
      verdict,
    }));
    return c.json({ model: name, eps: found.eps, threshold: found.threshold, results }, 200);
  });

  app.openapi(counterfactualRoute, async (c) => {
    const name = c.req.valid('param').model;
    const body = c.req.valid('json');
    const { model, iterations } = analysisTarget(context, c.req.header('content-type'), name, body);
    checkRequestCost(
      model,
      {
        images: body.targets?.length ?? 2,
        iterations,
        restarts: 1,
        runs: (body.radii ?? DEFAULT_COUNTERFACTUAL_RADII).length,
      },
      context.limits.maxRequestFlops,
      'iterations',
    );
    const wantsPng = (c.req.header('accept') ?? '').includes('image/png');
    const input = { field: 'image', bytes: base64Bytes(body.image, 'image') };
    const answer = await computeWithin(context, (signal) =>
      counterfactualsOf(model, input, wantsPng ? 'grid' : 'json', {
        limits: context.limits,
        targets: body.targets,
        radii: body.radii,
        iterations,
        seed: body.seed,
        signal,
        compute: { compute: context.analysis, name },
      }),
    );
    if (answer instanceof Uint8Array) {
      return c.body(Buffer.from(answer), 200, { 'content-type': 'image/png' });
    }
    return c.json(
      {
        model: name,
        original_class: answer.original_class,
        targets: answer.targets.map((target) => ({
          ...target,
          radii: target.radii.map(({ png, ...radius }) => ({ ...radius, image: base64Of(png) })),
        })),
      },
      200,
    );
  });
}
