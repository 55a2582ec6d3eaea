import { createRoute, z } from '@hono/zod-openapi';
import type { Classifier } from '../jobs/models/index.js';
import { oodThreshold, predictImages } from '../jobs/serving/index.js';
import { findModel, type ServiceApp, type ServiceContext } from './context.js';
import { base64Bytes, type ImageInput, mediaType, readBinaryImages } from './images.js';
import { decimalQuery, parseDecimal } from './params.js';
import { OPTIONAL_KEY, problemResponses } from './problem.js';

/** Model listing and prediction: GET /v1/models, GET /v1/models/{model}, POST .../predict. */

export const ModelParams = z.object({
  model: z
    .string()
    .min(1)
    .openapi({ param: { name: 'model', in: 'path' }, example: 'ratio-cifar10' }),
});

export const ModelSummarySchema = z
  .object({
    name: z.string().openapi({ example: 'ratio-cifar10' }),
    num_classes: z.number().int().openapi({ example: 10 }),
    class_names: z.array(z.string()).openapi({ example: ['airplane', 'automobile', 'bird'] }),
    input_shape: z.array(z.number().int()).openapi({ example: [32, 32, 3] }),
    temperature: z.number().openapi({ example: 1.21 }),
    objective: z.string().nullable().openapi({ example: 'ratio' }),
    eps_in: z.number().nullable().openapi({ example: 0.5 }),
    eps_out: z.number().nullable().openapi({ example: 1 }),
    ood_threshold: z.number().openapi({ example: 0.5 }),
  })
  .openapi('ModelSummary');

export const ModelDetailSchema = ModelSummarySchema.extend({
  architecture: z.string().nullable().openapi({ example: 'small-cnn' }),
  data: z.string().nullable().openapi({ description: 'the training data', example: 'cifar10/train' }),
  metrics: z
    .record(z.string(), z.union([z.number(), z.string(), z.null()]))
    .openapi({ example: { clean_accuracy: 0.91, robust_accuracy_l2_0_5: 0.72 } }),
}).openapi('ModelDetail');

function summary(name: string, model: Classifier) {
  const card = model.card;
  return {
    name,
    num_classes: model.numClasses,
    class_names: [...card.classNames],
    input_shape: [...card.inputShape],
    temperature: card.temperature,
    objective: card.objective ?? null,
    eps_in: card.epsIn ?? null,
    eps_out: card.epsOut ?? null,
    ood_threshold: oodThreshold(model, undefined),
  };
}

const Base64Image = z.string().min(1).openapi({ example: 'iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...' });

export const PredictJsonSchema = z
  .object({ images: z.array(Base64Image).min(1).openapi({ description: 'base64 PNG or JPEG images' }) })
  .openapi('PredictRequest', { example: { images: ['iVBORw0KGgoAAAANSUhEUgAAACAAAAAg...'] } });

const THRESHOLD_RANGE = { integer: false, min: 0, max: 1 };
const TOP_K_RANGE = { integer: true, min: 1, max: 1000 };

const PredictQuery = z.object({
  threshold: decimalQuery(THRESHOLD_RANGE, {
    description: "max-confidence threshold in [0, 1] (default: the card's)",
    example: 0.5,
  }),
  top_k: decimalQuery(TOP_K_RANGE, { description: 'classes listed per image, 1..1000', example: 3 }),
});

const ClassScore = z.object({
  index: z.number().int().openapi({ example: 3 }),
  class: z.string().openapi({ example: 'cat' }),
  probability: z.number().openapi({ example: 0.83 }),
});

export const PredictionSchema = z
  .object({
    predicted: ClassScore,
    probabilities: z.array(z.number()).openapi({ description: 'calibrated, in class order' }),
    top_k: z.array(ClassScore),
    max_confidence: z.number().openapi({ example: 0.83 }),
    in_distribution: z.boolean().openapi({ example: true }),
  })
  .openapi('Prediction');

export const PredictResponseSchema = z
  .object({
    model: z.string(),
    temperature: z.number(),
    threshold: z.number(),
    predictions: z.array(PredictionSchema),
  })
  .openapi('PredictResponse', {
    example: {
      model: 'ratio-cifar10',
      temperature: 1.21,
      threshold: 0.5,
      predictions: [
        {
          predicted: { index: 3, class: 'cat', probability: 0.83 },
          probabilities: [0.01, 0.01, 0.02, 0.83, 0.03, 0.05, 0.02, 0.01, 0.01, 0.01],
          top_k: [{ index: 3, class: 'cat', probability: 0.83 }],
          max_confidence: 0.83,
          in_distribution: true,
        },
      ],
    },
  });

const listModels = createRoute({
  method: 'get',
  path: '/v1/models',
  operationId: 'listModels',
  // A key is optional here unless RATIO_REQUIRE_KEY_FOR_ANALYSIS=1; an invalid one is 401.
  security: OPTIONAL_KEY,
  tags: ['models'],
  summary: 'Served models',
  responses: {
    200: {
      description: 'The served models',
      content: { 'application/json': { schema: z.object({ models: z.array(ModelSummarySchema) }) } },
    },
  },
});

const getModel = createRoute({
  method: 'get',
  path: '/v1/models/{model}',
  operationId: 'getModel',
  // A key is optional here unless RATIO_REQUIRE_KEY_FOR_ANALYSIS=1; an invalid one is 401.
  security: OPTIONAL_KEY,
  tags: ['models'],
  summary: 'One model with its card and evaluation table',
  request: { params: ModelParams },
  responses: {
    200: { description: 'The model', content: { 'application/json': { schema: ModelDetailSchema } } },
    ...problemResponses(401, 404),
  },
});

const predict = createRoute({
  method: 'post',
  path: '/v1/models/{model}/predict',
  operationId: 'predict',
  // A key is optional here unless RATIO_REQUIRE_KEY_FOR_ANALYSIS=1; an invalid one is 401.
  security: OPTIONAL_KEY,
  tags: ['models'],
  summary: 'Calibrated probabilities, top-k and an in-distribution verdict',
  description:
    'Send one raw `image/png` or `image/jpeg` body, a multipart form with `image` file parts, or JSON with base64 `images`. Images are resized (centre crop) to the model input.',
  request: {
    params: ModelParams,
    query: PredictQuery,
    body: {
      content: {
        'application/json': { schema: PredictJsonSchema },
        'image/png': { schema: z.string().openapi({ format: 'binary' }) },
        'image/jpeg': { schema: z.string().openapi({ format: 'binary' }) },
        'multipart/form-data': {
          // Files are checked by the handler; the schema documents the part (a binary string).
          schema: z.object({ image: z.unknown().openapi({ type: 'string', format: 'binary' }) }),
        },
      },
    },
  },
  responses: {
    200: { description: 'Predictions', content: { 'application/json': { schema: PredictResponseSchema } } },
    ...problemResponses(400, 401, 404, 413, 415, 422, 429, 504),
  },
});

/** The request's images as bytes, whatever its content type (JSON is schema-validated first). */
export async function requestImages(
  c: Parameters<Parameters<ServiceApp['openapi']>[1]>[0],
  context: ServiceContext,
  json: { images: string[] } | undefined,
): Promise<ImageInput[]> {
  if (json)
    return json.images.map((text, i) => ({ field: `images.${i}`, bytes: base64Bytes(text, `images.${i}`) }));
  return readBinaryImages(c, context.limits);
}

export function registerModelRoutes(app: ServiceApp, context: ServiceContext): void {
  app.openapi(listModels, (c) =>
    c.json({ models: [...context.models].map(([name, model]) => summary(name, model)) }, 200),
  );

  app.openapi(getModel, (c) => {
    const name = c.req.valid('param').model;
    const model = findModel(context, name);
    const text = (value: unknown) => (typeof value === 'string' ? value : null);
    return c.json(
      {
        ...summary(name, model),
        architecture: text(model.card.architecture),
        data: text(model.card.data),
        metrics: { ...(model.card.metrics ?? {}) },
      },
      200,
    );
  });

  app.openapi(predict, async (c) => {
    const model = findModel(context, c.req.valid('param').model);
    const query = c.req.valid('query');
    const json =
      mediaType(c) === 'application/json' ? (c.req.valid('json') as { images: string[] }) : undefined;
    const inputs = await requestImages(c, context, json);
    const name = c.req.valid('param').model;
    // Decimal notation only ('0x10', '1e-1' and '' are errors); ranges checked here.
    const threshold =
      query.threshold === undefined ? undefined : parseDecimal(query.threshold, 'threshold', THRESHOLD_RANGE);
    const topK = query.top_k === undefined ? undefined : parseDecimal(query.top_k, 'top_k', TOP_K_RANGE);
    // The request timeout bounds the wait in the batch queue: 504. A full queue answers 429.
    const signal = AbortSignal.timeout(context.limits.requestTimeoutMs);
    const result = await predictImages(model, inputs, {
      limits: context.limits,
      threshold,
      topK,
      forward: (pixels, count) => context.inference.probabilities(name, pixels, count, { signal }),
    });
    return c.json({ model: c.req.valid('param').model, ...result }, 200);
  });
}
