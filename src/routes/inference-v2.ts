import { createRoute, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import type { Classifier } from '../jobs/models/index.js';
import { oodThreshold, verdictOf } from '../jobs/serving/index.js';
import { bodyLimitByLength } from './body-limit.js';
import type { ServiceApp, ServiceContext, ServiceEnv } from './context.js';
import { OPTIONAL_KEY, toProblemError } from './problem.js';

/**
 * Open Inference Protocol v2 (KServe, Triton, Seldon) REST beside /v1: server health and metadata,
 * model metadata and readiness, and `infer` on FP32 NHWC tensors in [0,1] answering calibrated
 * probabilities and the OOD verdict as output tensors, and the raw `logits` when asked for. Errors
 * are `{"error": "..."}` as the protocol specifies (not problem+json); health answers by status code
 * (200 true, 400 false).
 */

export const OIP_INPUT = 'input';
export const OIP_OUTPUTS = ['probabilities', 'max_confidence', 'predicted_class', 'in_distribution'] as const;
/**
 * Outputs answered only when a request lists them: `logits`, the model's raw outputs (pre-softmax,
 * before the temperature), as KServe and Triton clients expect of a classifier.
 */
export const OIP_EXTRA_OUTPUTS = ['logits'] as const;
const OUTPUT_NAMES: readonly string[] = [...OIP_OUTPUTS, ...OIP_EXTRA_OUTPUTS];
type OutputName = (typeof OIP_OUTPUTS)[number] | (typeof OIP_EXTRA_OUTPUTS)[number];

/** Entries of `outputs` a request may list (each name answers once, whatever the count). */
export const MAX_REQUESTED_OUTPUTS = 16;
/** The temperatures a request may set: outside it the softmax under- or overflows in float32. */
export const TEMPERATURE_RANGE = { min: 1e-3, max: 1e3 } as const;

/** A value as an error message shows it: numbers as JavaScript prints them (Infinity, not null). */
const shown = (value: unknown): string => (typeof value === 'number' ? String(value) : JSON.stringify(value));

const ErrorSchema = z
  .object({ error: z.string().openapi({ example: "model 'nope' is not served" }) })
  .openapi('InferenceError');

const errorResponse = (description: string) => ({
  description,
  content: { 'application/json': { schema: ErrorSchema } },
});

const ModelName = z.object({
  model_name: z
    .string()
    .min(1)
    .openapi({ param: { name: 'model_name', in: 'path' }, example: 'ratio-cifar10' }),
});

const MetadataTensor = z
  .object({
    name: z.string(),
    datatype: z.string().openapi({ example: 'FP32' }),
    shape: z.array(z.number().int()).openapi({ example: [-1, 32, 32, 3] }),
  })
  .openapi('MetadataTensor');

const ModelMetadataSchema = z
  .object({
    name: z.string(),
    versions: z.array(z.string()),
    platform: z.string(),
    inputs: z.array(MetadataTensor),
    outputs: z.array(MetadataTensor),
    parameters: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).optional(),
  })
  .openapi('ModelMetadata', {
    example: {
      name: 'ratio-cifar10',
      versions: ['1'],
      platform: 'tfjs',
      inputs: [{ name: 'input', datatype: 'FP32', shape: [-1, 32, 32, 3] }],
      outputs: [
        { name: 'probabilities', datatype: 'FP32', shape: [-1, 10] },
        { name: 'max_confidence', datatype: 'FP32', shape: [-1] },
        { name: 'predicted_class', datatype: 'INT32', shape: [-1] },
        { name: 'in_distribution', datatype: 'BOOL', shape: [-1] },
        { name: 'logits', datatype: 'FP32', shape: [-1, 10] },
      ],
      parameters: { layout: 'NHWC', range: '[0,1]', temperature: 0.43, ood_threshold: 0.21 },
    },
  });

const Parameters = z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).openapi({
  description: 'temperature (in [0.001, 1000]) and threshold (in [0,1]) override the card',
  example: { threshold: 0.5 },
});

const InferRequestSchema = z
  .object({
    id: z.string().optional(),
    parameters: Parameters.optional(),
    inputs: z
      .array(
        z.object({
          name: z.string(),
          shape: z.array(z.number().int()),
          datatype: z.string(),
          parameters: Parameters.optional(),
          // Checked by the handler: a schema walk over 200k numbers costs more than the check itself.
          data: z.array(z.unknown()).openapi({
            type: 'array',
            items: {},
            description: 'row-major values, flat or nested by shape',
          }),
        }),
      )
      .min(1),
    outputs: z
      .array(z.object({ name: z.string(), parameters: Parameters.optional() }))
      .max(MAX_REQUESTED_OUTPUTS)
      .optional()
      .openapi({ description: `at most ${MAX_REQUESTED_OUTPUTS} entries; a name listed twice answers once` }),
  })
  .openapi('InferenceRequest', {
    example: {
      id: '42',
      inputs: [{ name: 'input', shape: [1, 32, 32, 3], datatype: 'FP32', data: [0.5, 0.25, 0.75] }],
      outputs: [{ name: 'probabilities' }, { name: 'in_distribution' }],
    },
  });

const InferResponseSchema = z
  .object({
    model_name: z.string(),
    model_version: z.string().optional(),
    id: z.string().optional(),
    parameters: Parameters.optional(),
    outputs: z.array(
      z.object({
        name: z.string(),
        shape: z.array(z.number().int()),
        datatype: z.string(),
        data: z.array(z.union([z.number(), z.boolean()])),
      }),
    ),
  })
  .openapi('InferenceResponse', {
    example: {
      model_name: 'ratio-cifar10',
      id: '42',
      parameters: { temperature: 0.43, threshold: 0.21 },
      outputs: [
        { name: 'probabilities', shape: [1, 3], datatype: 'FP32', data: [0.8, 0.15, 0.05] },
        { name: 'in_distribution', shape: [1], datatype: 'BOOL', data: [true] },
      ],
    },
  });

const Flag = (name: string) => z.object({ [name]: z.boolean() }).openapi({ example: { [name]: true } });

const serverLive = createRoute({
  method: 'get',
  path: '/v2/health/live',
  operationId: 'oipServerLive',
  security: [],
  tags: ['inference-v2'],
  summary: 'Open Inference Protocol: the server is live',
  responses: { 200: { description: 'Live', content: { 'application/json': { schema: Flag('live') } } } },
});

const serverReady = createRoute({
  method: 'get',
  path: '/v2/health/ready',
  operationId: 'oipServerReady',
  security: [],
  tags: ['inference-v2'],
  summary: 'Open Inference Protocol: every served model is ready',
  responses: {
    200: { description: 'Ready', content: { 'application/json': { schema: Flag('ready') } } },
    400: { description: 'Not ready', content: { 'application/json': { schema: Flag('ready') } } },
  },
});

const serverMetadata = createRoute({
  method: 'get',
  path: '/v2',
  operationId: 'oipServerMetadata',
  security: OPTIONAL_KEY,
  tags: ['inference-v2'],
  summary: 'Open Inference Protocol: server name, version and extensions',
  responses: {
    200: {
      description: 'Server metadata',
      content: {
        'application/json': {
          schema: z
            .object({ name: z.string(), version: z.string(), extensions: z.array(z.string()) })
            .openapi({ example: { name: 'ratio-audit', version: '0.1.0', extensions: [] } }),
        },
      },
    },
  },
});

const modelMetadata = createRoute({
  method: 'get',
  path: '/v2/models/{model_name}',
  operationId: 'oipModelMetadata',
  security: OPTIONAL_KEY,
  tags: ['inference-v2'],
  summary: 'Open Inference Protocol: input and output tensors of a model',
  request: { params: ModelName },
  responses: {
    200: { description: 'Model metadata', content: { 'application/json': { schema: ModelMetadataSchema } } },
    404: errorResponse('Unknown model'),
  },
});

const modelReady = createRoute({
  method: 'get',
  path: '/v2/models/{model_name}/ready',
  operationId: 'oipModelReady',
  security: OPTIONAL_KEY,
  tags: ['inference-v2'],
  summary: 'Open Inference Protocol: the model is ready for inference',
  request: { params: ModelName },
  responses: {
    200: { description: 'Ready', content: { 'application/json': { schema: Flag('ready') } } },
    400: { description: 'Not ready', content: { 'application/json': { schema: Flag('ready') } } },
    404: errorResponse('Unknown model'),
  },
});

const infer = createRoute({
  method: 'post',
  path: '/v2/models/{model_name}/infer',
  operationId: 'oipInfer',
  security: OPTIONAL_KEY,
  tags: ['inference-v2'],
  summary: 'Open Inference Protocol: calibrated probabilities and the OOD verdict of FP32 images',
  description:
    'One input `input`, FP32, shape [N, H, W, C] (NHWC, as the metadata says), values in [0,1], flat or nested row-major. Outputs: `probabilities` [N, K] (softmax of logits / temperature), `max_confidence` [N], `predicted_class` [N] and `in_distribution` [N] (max_confidence >= threshold); `outputs` selects some, and may ask for `logits` [N, K] too (raw model outputs, pre-softmax, before the temperature; not among the defaults). Request parameters `temperature` and `threshold` override the card. Requests of all clients share forward passes (dynamic batching).',
  request: {
    params: ModelName,
    body: { content: { 'application/json': { schema: InferRequestSchema } }, required: true },
  },
  responses: {
    200: {
      description: 'Inference response',
      content: { 'application/json': { schema: InferResponseSchema } },
    },
    400: errorResponse('Invalid request (shape, datatype, values, parameters, outputs)'),
    401: errorResponse('Missing or invalid API key (when the service requires one for analyses)'),
    404: errorResponse('Unknown model'),
    413: errorResponse('Body over the size limit'),
    429: errorResponse('Batch queue full or rate limit reached; retry after `Retry-After` seconds'),
    500: errorResponse('Internal error (see the server log)'),
    503: errorResponse('Shutting down'),
    504: errorResponse('The wait for a forward pass exceeded the request timeout'),
  },
});

/** A protocol error: `{"error": message}` with `status` (400 unless said otherwise). */
class InferenceRequestError extends Error {
  override readonly name = 'InferenceRequestError';
  constructor(
    message: string,
    readonly status: 400 | 404 | 413 = 400,
  ) {
    super(message);
  }
}

function errorJson(status: number, message: string): Response {
  return new Response(JSON.stringify({ error: message }), {
    status,
    headers: { 'content-type': 'application/json' },
  });
}

type ErrorStatus = 400 | 404 | 413 | 429 | 500 | 503 | 504;

/** Any thrown error as the protocol's error object, with the status the service gives it. */
function protocolError(error: unknown): { status: ErrorStatus; message: string; retryAfter?: number } {
  if (error instanceof InferenceRequestError) return { status: error.status, message: error.message };
  const problem = toProblemError(error);
  // The protocol answers bad requests with 400; our problem layer tells 422 (and 415) apart.
  const known: readonly number[] = [400, 404, 413, 429, 500, 503, 504];
  const status = (
    known.includes(problem.status) ? problem.status : problem.status < 500 ? 400 : 500
  ) as ErrorStatus;
  return { status, message: problem.message, retryAfter: problem.retryAfter };
}

function findServed(context: ServiceContext, name: string): Classifier {
  const model = context.models.get(name);
  if (!model) throw new InferenceRequestError(`model '${name}' is not served`, 404);
  return model;
}

function metadata(name: string, model: Classifier) {
  const [h, w, c] = model.card.inputShape;
  return {
    name,
    versions: ['1'],
    platform: 'tfjs',
    inputs: [{ name: OIP_INPUT, datatype: 'FP32', shape: [-1, h, w, c] }],
    outputs: [
      { name: 'probabilities', datatype: 'FP32', shape: [-1, model.numClasses] },
      { name: 'max_confidence', datatype: 'FP32', shape: [-1] },
      { name: 'predicted_class', datatype: 'INT32', shape: [-1] },
      { name: 'in_distribution', datatype: 'BOOL', shape: [-1] },
      { name: 'logits', datatype: 'FP32', shape: [-1, model.numClasses] },
    ],
    parameters: {
      layout: 'NHWC',
      range: '[0,1]',
      temperature: model.card.temperature,
      ood_threshold: oodThreshold(model, undefined),
      class_names: model.card.classNames.join(','),
    },
  };
}

/** Copies flat or shape-nested numbers into `out`; throws naming the first bad element. */
function flattenInto(data: unknown[], out: Float32Array): void {
  let n = 0;
  const visit = (values: unknown[], depth: number): void => {
    if (depth > 4)
      throw new InferenceRequestError(`'inputs.0.data' is nested deeper than the shape's 4 dimensions`);
    for (const value of values) {
      if (Array.isArray(value)) {
        visit(value, depth + 1);
        continue;
      }
      if (typeof value !== 'number' || !(value >= 0 && value <= 1)) {
        throw new InferenceRequestError(
          `'inputs.0.data' element ${n} must be an FP32 number in [0,1], got ${shown(value)}`,
        );
      }
      if (n >= out.length)
        throw new InferenceRequestError(`'inputs.0.data' holds more than the shape's ${out.length} elements`);
      out[n++] = value;
    }
  };
  visit(data, 0);
  if (n !== out.length) {
    throw new InferenceRequestError(`'inputs.0.data' holds ${n} elements, the shape needs ${out.length}`);
  }
}

function numberParameter(
  parameters: Record<string, unknown> | undefined,
  key: string,
  valid: (v: number) => boolean,
  rule: string,
): number | undefined {
  const value = parameters?.[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !valid(value)) {
    throw new InferenceRequestError(`parameter '${key}' must be ${rule}, got ${shown(value)}`);
  }
  return value;
}

type InferBody = z.infer<typeof InferRequestSchema>;

/** The request's images as NHWC rows, after checking name, datatype and shape against the metadata. */
function readInput(
  body: InferBody,
  model: Classifier,
  maxBatch: number,
): { pixels: Float32Array; count: number } {
  if (body.inputs.length !== 1) {
    throw new InferenceRequestError(`the model takes one input '${OIP_INPUT}', got ${body.inputs.length}`);
  }
  const input = body.inputs[0];
  if (input.name !== OIP_INPUT) {
    throw new InferenceRequestError(`unknown input '${input.name}'; the model's input is '${OIP_INPUT}'`);
  }
  if (input.datatype !== 'FP32') {
    throw new InferenceRequestError(`input '${OIP_INPUT}' has datatype FP32, got '${input.datatype}'`);
  }
  const [h, w, c] = model.card.inputShape;
  const shape = input.shape;
  const count = shape[0];
  if (shape.length !== 4 || shape[1] !== h || shape[2] !== w || shape[3] !== c || !(count >= 1)) {
    throw new InferenceRequestError(
      `input '${OIP_INPUT}' has shape [N, ${h}, ${w}, ${c}] (NHWC) with N >= 1, got [${shape.join(', ')}]`,
    );
  }
  if (count > maxBatch) {
    throw new InferenceRequestError(`at most ${maxBatch} images per request, got ${count}`);
  }
  const pixels = new Float32Array(count * h * w * c);
  flattenInto(input.data, pixels);
  return { pixels, count };
}

/** The outputs to answer, each once, in the order first asked for (repeats cost nothing). */
function requestedOutputs(body: InferBody): OutputName[] {
  if (!body.outputs) return [...OIP_OUTPUTS];
  const names = new Set<OutputName>();
  for (const { name } of body.outputs) {
    if (!OUTPUT_NAMES.includes(name)) {
      throw new InferenceRequestError(
        `unknown output '${name}'; the model's outputs are ${OUTPUT_NAMES.join(', ')}`,
      );
    }
    names.add(name as OutputName);
  }
  return [...names];
}

export function registerInferenceV2Routes(
  app: ServiceApp,
  context: ServiceContext,
  health: { ready: () => boolean; serviceVersion: string },
  /** The service's API-key and rate-limit policy (the one of /v1); /v2/health stays open. */
  guard?: MiddlewareHandler<ServiceEnv>,
): void {
  app.use(
    '/v2/models/*',
    bodyLimitByLength(context.limits.bodyBytes, () =>
      errorJson(413, `the body exceeds the limit of ${context.limits.bodyBytes} bytes`),
    ),
  );
  // Whatever else answers under /v2 with problem+json (malformed JSON, 404 routes, onError) is
  // rewritten to the protocol's error object, status kept (422 -> 400).
  app.use('/v2/*', async (c, next) => {
    await next();
    if (!c.res.headers.get('content-type')?.startsWith('application/problem+json')) return;
    const problem = (await c.res.clone().json()) as { status: number; detail: string };
    const retryAfter = c.res.headers.get('retry-after');
    const requestId = c.res.headers.get('x-request-id');
    const authenticate = c.res.headers.get('www-authenticate');
    c.res = undefined;
    c.res = new Response(JSON.stringify({ error: problem.detail }), {
      status: problem.status === 422 || problem.status === 415 ? 400 : problem.status,
      headers: {
        'content-type': 'application/json',
        ...(retryAfter ? { 'retry-after': retryAfter } : {}),
        ...(requestId ? { 'x-request-id': requestId } : {}),
        ...(authenticate ? { 'www-authenticate': authenticate } : {}),
      },
    });
  });
  if (guard) {
    // Keys and rate limits as on /v1 (answers rewritten to the protocol's shape above); health
    // probes stay open, as /health does.
    app.use('/v2/*', (c, next) => (c.req.path.startsWith('/v2/health/') ? next() : guard(c, next)));
  }

  app.openapi(serverLive, (c) => c.json({ live: true }, 200));
  app.openapi(serverReady, (c) => {
    const ready = health.ready() && !context.audits.isDraining;
    return ready ? c.json({ ready }, 200) : c.json({ ready }, 400);
  });
  app.openapi(serverMetadata, (c) =>
    c.json({ name: 'ratio-audit', version: health.serviceVersion, extensions: [] as string[] }, 200),
  );

  app.openapi(modelMetadata, (c) => {
    const name = c.req.valid('param').model_name;
    const model = context.models.get(name);
    if (!model) return c.json({ error: `model '${name}' is not served` }, 404);
    return c.json(metadata(name, model), 200);
  });

  app.openapi(modelReady, (c) => {
    const name = c.req.valid('param').model_name;
    if (!context.models.has(name)) return c.json({ error: `model '${name}' is not served` }, 404);
    const ready = health.ready();
    return ready ? c.json({ ready }, 200) : c.json({ ready }, 400);
  });

  app.openapi(
    infer,
    async (c) => {
      const name = c.req.valid('param').model_name;
      try {
        const model = findServed(context, name);
        const body = c.req.valid('json');
        const temperature = numberParameter(
          body.parameters,
          'temperature',
          (v) => v >= TEMPERATURE_RANGE.min && v <= TEMPERATURE_RANGE.max,
          `a number in [${TEMPERATURE_RANGE.min}, ${TEMPERATURE_RANGE.max}]`,
        );
        const threshold =
          numberParameter(body.parameters, 'threshold', (v) => v >= 0 && v <= 1, 'a number in [0,1]') ??
          oodThreshold(model, undefined);
        const outputs = requestedOutputs(body);
        const { pixels, count } = readInput(body, model, context.limits.maxBatch);
        const k = model.numClasses;
        type Tensor = { shape: number[]; datatype: string; data: Array<number | boolean> };
        const tensors: Partial<Record<OutputName, Tensor>> = {};
        // Logits first: the compute may take the pixels' buffer, so the probabilities get a copy.
        if (outputs.includes('logits')) {
          const needsPixels = outputs.some((output) => output !== 'logits');
          const logits = await context.inference.logits(name, needsPixels ? pixels.slice() : pixels, count);
          tensors.logits = { shape: [count, k], datatype: 'FP32', data: Array.from(logits) };
        }
        if (outputs.some((output) => output !== 'logits')) {
          const values = await context.inference.probabilities(name, pixels, count, {
            temperature,
            signal: AbortSignal.timeout(context.limits.requestTimeoutMs),
          });
          const verdicts = Array.from({ length: count }, (_, i) =>
            verdictOf(values.subarray(i * k, (i + 1) * k), threshold),
          );
          Object.assign(tensors, {
            probabilities: { shape: [count, k], datatype: 'FP32', data: Array.from(values) },
            max_confidence: { shape: [count], datatype: 'FP32', data: verdicts.map((v) => v.max_confidence) },
            predicted_class: { shape: [count], datatype: 'INT32', data: verdicts.map((v) => v.predicted) },
            in_distribution: {
              shape: [count],
              datatype: 'BOOL',
              data: verdicts.map((v) => v.in_distribution),
            },
          } satisfies Record<(typeof OIP_OUTPUTS)[number], Tensor>);
        }
        return c.json(
          {
            model_name: name,
            model_version: '1',
            ...(body.id !== undefined ? { id: body.id } : {}),
            parameters: { temperature: temperature ?? model.card.temperature, threshold },
            outputs: outputs.map((output) => ({ name: output, ...tensors[output]! })),
          },
          200,
        );
      } catch (error) {
        const answer = protocolError(error);
        // An unexpected failure goes to the app's error handler: logged with the request id,
        // then answered in the protocol's shape by the rewrite above.
        if (answer.status === 500) throw error;
        if (answer.retryAfter !== undefined) {
          c.header('retry-after', String(Math.max(1, Math.ceil(answer.retryAfter))));
        }
        return c.json({ error: answer.message }, answer.status);
      }
    },
    // Schema failures answer in the protocol's shape too.
    (result, c) => {
      if (result.success) return;
      const issue = result.error.issues[0];
      const field = issue?.path.map(String).join('.') || 'body';
      return c.json({ error: `'${field}': ${issue?.message ?? 'invalid'}` }, 400);
    },
  );
}
