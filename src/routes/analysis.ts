import { createRoute, z } from '@hono/zod-openapi';
import * as tf from '@tensorflow/tfjs';
import { encodePng } from '../data/image.js';
import type { Classifier } from '../engine/classifier.js';
import { counterfactuals, DEFAULT_COUNTERFACTUAL_RADII } from '../engine/counterfactuals.js';
import { worstCaseConfidence } from '../engine/ood.js';
import { findModel, type ServiceApp, type ServiceContext } from './context.js';
import { base64Bytes, imagesToTensor, pngBase64, unsupportedMediaType } from './images.js';
import { ModelParams, oodThreshold } from './models.js';
import { invalidField, problemResponses } from './problem.js';

/** Worst-case OOD confidence and visual counterfactuals: the two RATIO analyses served per request. */

const Base64Image = z.string().min(1).openapi({ example: 'iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...' });

const Iterations = z.number().int().min(1).openapi({ description: 'APGD iterations', example: 100 });

export const OodRequestSchema = z
  .object({
    images: z.array(Base64Image).min(1),
    eps: z
      .number()
      .min(0)
      .optional()
      .openapi({ description: "L2 radius (default: the card's eps_out, else 1)" }),
    iterations: Iterations.optional(),
    restarts: z.number().int().min(1).max(10).optional(),
    seed: z.number().int().min(0).optional(),
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
      .array(z.number().gt(0))
      .min(1)
      .max(12)
      .optional()
      .openapi({ example: [0.5, 1, 2] }),
    iterations: Iterations.optional(),
    seed: z.number().int().min(0).optional(),
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
    ...problemResponses(400, 404, 413, 415, 422, 429, 504),
  },
});

const counterfactualRoute = createRoute({
  method: 'post',
  path: '/v1/models/{model}/counterfactuals',
  operationId: 'counterfactuals',
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
    ...problemResponses(400, 404, 413, 415, 422, 429, 504),
  },
});

function requireJson(c: { req: { header(name: string): string | undefined } }): void {
  const type = (c.req.header('content-type') ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') throw unsupportedMediaType(type, ['application/json']);
}

function checkIterations(context: ServiceContext, iterations: number | undefined, fallback: number): number {
  const value = iterations ?? Math.min(fallback, context.limits.maxIterations);
  if (value > context.limits.maxIterations) {
    throw invalidField('iterations', `'iterations' must be <= ${context.limits.maxIterations}, got ${value}`);
  }
  return value;
}

function resolveTargets(
  model: Classifier,
  requested: Array<string | number> | undefined,
  x: tf.Tensor4D,
): number[] {
  if (!requested) {
    const top = tf.tidy(() => tf.topk(model.logits(x), Math.min(2, model.numClasses)).indices.dataSync());
    return Array.from(top);
  }
  return requested.map((target, i) => {
    const index = typeof target === 'number' ? target : model.card.classNames.indexOf(target);
    if (index < 0 || index >= model.numClasses) {
      throw invalidField(
        `targets.${i}`,
        `'targets.${i}' must be a class name or an index below ${model.numClasses}, got ${JSON.stringify(target)}`,
      );
    }
    return index;
  });
}

/** Tiles [rows x columns] images of [H, W, C] (uint8 rows) into one PNG, scaled up for viewing. */
async function gridPng(
  tiles: Float32Array[][],
  shape: readonly [number, number, number],
): Promise<Uint8Array> {
  const [h, w, ch] = shape;
  const scale = Math.max(1, Math.floor(128 / Math.max(h, w)));
  const gap = 2;
  const rows = tiles.length;
  const columns = tiles[0]?.length ?? 0;
  const height = rows * (h * scale + gap) + gap;
  const width = columns * (w * scale + gap) + gap;
  const data = new Uint8Array(height * width * ch).fill(255);
  for (const [r, row] of tiles.entries()) {
    for (const [col, tile] of row.entries()) {
      const top = gap + r * (h * scale + gap);
      const left = gap + col * (w * scale + gap);
      for (let y = 0; y < h * scale; y++) {
        for (let x = 0; x < w * scale; x++) {
          const source = (Math.floor(y / scale) * w + Math.floor(x / scale)) * ch;
          const target = ((top + y) * width + left + x) * ch;
          for (let k = 0; k < ch; k++) {
            data[target + k] = Math.round(Math.min(1, Math.max(0, tile[source + k])) * 255);
          }
        }
      }
    }
  }
  return encodePng({ data, height, width, channels: ch });
}

export function registerAnalysisRoutes(app: ServiceApp, context: ServiceContext): void {
  app.openapi(oodRoute, async (c) => {
    requireJson(c);
    const name = c.req.valid('param').model;
    const model = findModel(context, name);
    const body = c.req.valid('json');
    const eps = body.eps ?? model.card.epsOut ?? 1;
    const iterations = checkIterations(context, body.iterations, 100);
    const threshold = oodThreshold(model, body.threshold);
    const inputs = body.images.map((text, i) => ({
      field: `images.${i}`,
      bytes: base64Bytes(text, `images.${i}`),
    }));
    // One deadline from arrival: it bounds the wait for a compute slot and the attack itself.
    const deadline = AbortSignal.timeout(context.limits.requestTimeoutMs);
    const results = await context.compute.run(async () => {
      const x = await imagesToTensor(inputs, model, context.limits);
      try {
        const found = await worstCaseConfidence(model, x, {
          eps,
          iterations,
          restarts: body.restarts ?? 1,
          seed: body.seed ?? 0,
          signal: deadline,
        });
        try {
          const images = await Promise.all(inputs.map((_, i) => pngBase64(found.images, i)));
          return inputs.map((_, i) => {
            const clean = found.cleanConfidence[i];
            const worst = found.confidence[i];
            const verdict =
              clean >= threshold
                ? ('in_distribution' as const)
                : worst >= threshold
                  ? ('out_of_distribution_not_robust' as const)
                  : ('out_of_distribution' as const);
            const index = found.predicted[i];
            return {
              clean_confidence: clean,
              worst_case_confidence: worst,
              worst_case_class: { index, class: model.card.classNames[index] },
              worst_case_image: images[i],
              verdict,
            };
          });
        } finally {
          found.images.dispose();
        }
      } finally {
        x.dispose();
      }
    }, deadline);
    return c.json({ model: name, eps, threshold, results }, 200);
  });

  app.openapi(counterfactualRoute, async (c) => {
    requireJson(c);
    const name = c.req.valid('param').model;
    const model = findModel(context, name);
    const body = c.req.valid('json');
    const iterations = checkIterations(context, body.iterations, 100);
    const radii = [...(body.radii ?? DEFAULT_COUNTERFACTUAL_RADII)].sort((a, b) => a - b);
    const wantsPng = (c.req.header('accept') ?? '').includes('image/png');
    const input = { field: 'image', bytes: base64Bytes(body.image, 'image') };
    const deadline = AbortSignal.timeout(context.limits.requestTimeoutMs);
    return context.compute.run(async () => {
      const x = await imagesToTensor([input], model, context.limits);
      const targets = (() => {
        try {
          return resolveTargets(model, body.targets, x);
        } catch (error) {
          x.dispose();
          throw error;
        }
      })();
      const tiled = tf.tidy(() => tf.tile(x, [targets.length, 1, 1, 1]) as tf.Tensor4D);
      x.dispose();
      try {
        const result = await counterfactuals(model, tiled, Int32Array.from(targets), {
          radii,
          iterations,
          seed: body.seed ?? 0,
          signal: deadline,
        });
        try {
          const original = result.originalClass[0];
          if (wantsPng) {
            const clean = tiled.slice([0, 0, 0, 0], [1, -1, -1, -1]);
            const cleanValues = clean.dataSync() as Float32Array;
            clean.dispose();
            const perRadius = result.radii.map((r) => r.images.dataSync() as Float32Array);
            const size = cleanValues.length;
            const tiles = targets.map((_, t) => [
              cleanValues,
              ...perRadius.map((values) => values.subarray(t * size, (t + 1) * size)),
            ]);
            const png = await gridPng(tiles, model.card.inputShape);
            return c.body(Buffer.from(png), 200, { 'content-type': 'image/png' });
          }
          const images = await Promise.all(
            result.radii.map((r) => Promise.all(targets.map((_, t) => pngBase64(r.images, t)))),
          );
          return c.json(
            {
              model: name,
              original_class: { index: original, class: model.card.classNames[original] },
              targets: targets.map((index, t) => ({
                index,
                class: model.card.classNames[index],
                clean: { p_target: result.clean.p_target[t], p_original: result.clean.p_original[t] },
                radii: result.radii.map((r, k) => ({
                  eps: r.eps,
                  p_target: r.p_target[t],
                  p_original: r.p_original[t],
                  distance: r.distance[t],
                  image: images[k][t],
                })),
              })),
            },
            200,
          );
        } finally {
          for (const r of result.radii) r.images.dispose();
        }
      } finally {
        tiled.dispose();
      }
    }, deadline);
  });
}
