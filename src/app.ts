import { OpenAPIHono } from '@hono/zod-openapi';
import { cors } from 'hono/cors';
import { HTTPException } from 'hono/http-exception';
import { requestId } from 'hono/request-id';
import { secureHeaders } from 'hono/secure-headers';
import type { OpenAPIObject } from 'openapi3-ts/oas31';
import pino from 'pino';
import {
  type AuditIntake,
  type AuditJob,
  AuditQueue,
  type AuditQueueOptions,
  InProcessIntake,
} from './jobs/audit/index.js';
import type { Classifier } from './jobs/models/index.js';
import type { BackendInfo } from './jobs/runtime.js';
import {
  type BatcherOptions,
  ComputeSemaphore,
  createInferenceMetrics,
  InferenceService,
  InProcessCompute,
  type ModelCompute,
} from './jobs/serving/index.js';
import { auditAdmission, computeAdmission, crossOriginWrites } from './routes/admission.js';
import { registerAnalysisRoutes } from './routes/analysis.js';
import { registerAuditReportRoutes } from './routes/audit-reports.js';
import { registerAuditRoutes } from './routes/audits.js';
import { AuditQuota, type AuthConfig, authMiddleware, DEFAULT_AUTH } from './routes/auth.js';
import { bodyLimitByLength } from './routes/body-limit.js';
import type { ServiceApp, ServiceContext, ServiceEnv, ServiceLimits } from './routes/context.js';
import { registerDocsRoutes } from './routes/docs.js';
import { createMetrics, registerHealthRoutes } from './routes/health.js';
import { mediaType, unsupportedMediaType } from './routes/images.js';
import { registerInferenceV2Routes } from './routes/inference-v2.js';
import { methodNotAllowed } from './routes/methods.js';
import { registerModelRoutes } from './routes/models.js';
import { multipartIntake } from './routes/multipart.js';
import { requestOrigin } from './routes/origin.js';
import { ProblemError, problemResponse, toProblemError, validationProblem } from './routes/problem.js';
import { CONTENT_SECURITY_POLICY, registerWebRoutes } from './routes/web.js';

/**
 * The HTTP service as a Hono app, built from its dependencies so tests drive it with `app.request()`
 * and `src/server.ts` serves it.
 *
 * @example
 * const app = createApp({ models: new Map([['tiny', classifier]]) });
 * const res = await app.request('/v1/models/tiny/predict', { method: 'POST', body: png, headers: { 'content-type': 'image/png' } });
 */

export const SERVICE_VERSION = '0.1.0';

export const DEFAULT_LIMITS: ServiceLimits = {
  bodyBytes: 16 * 1024 * 1024,
  auditBodyBytes: 256 * 1024 * 1024,
  maxPixels: 4096 * 4096,
  maxBatch: 64,
  requestTimeoutMs: 60_000,
  maxIterations: 1000,
  // Tens of seconds of a small CPU backend: a bound on one request's compute slot, not a budget to fill.
  maxRequestFlops: 2e11,
  maxAuditFlops: 2e14,
  sseStreamsPerKey: 8,
  sseStreams: 256,
};

export interface AppDependencies {
  /** Served models by name. */
  models: ReadonlyMap<string, Classifier>;
  limits?: Partial<ServiceLimits>;
  /** The compute semaphore of synchronous work to share, or options for one: N running, M waiting (default 1 and 16). */
  compute?: ComputeSemaphore | { maxRunning?: number; maxWaiting?: number; retryAfterSeconds?: number };
  /** An audit queue to share (e.g. with the server's shutdown), or options for a new one. */
  audits?: AuditQueue | AuditQueueOptions;
  /**
   * Where audit uploads are parsed, decoded and checked (default: this thread); the server passes
   * a worker-thread intake (src/jobs/audit/intake-host.ts).
   */
  intake?: AuditIntake;
  /** Files of served models (by name), so their audits travel to workers and the store as files. */
  servedFiles?: ReadonlyMap<string, Map<string, Uint8Array>>;
  /**
   * Where forward passes and analyses run (default: this thread) and how predictions are batched;
   * the server passes worker threads (src/jobs/serving/compute-host.ts).
   */
  inference?: { compute?: ModelCompute; analysis?: ModelCompute; batching?: Partial<BatcherOptions> };
  backend?: () => BackendInfo | undefined;
  ready?: () => boolean;
  logger?: pino.Logger;
  /** API keys, rate limits and audit quotas (default: development mode, no keys, no rate limit). */
  auth?: Partial<AuthConfig>;
  /** Origins allowed to call the API from a browser (CORS); none by default: CORS off. */
  corsOrigins?: readonly string[];
  /** The built web page's folder (default src/web/bundle). */
  webDirectory?: string;
}

/** The document's own fields; the paths and components come from the route schemas. */
export const OPENAPI_CONFIG: Omit<OpenAPIObject, 'paths' | 'components'> = {
  openapi: '3.1.0',
  info: {
    title: 'ratio-audit',
    version: SERVICE_VERSION,
    description:
      'Calibrated predictions, worst-case OOD confidence, visual counterfactuals and AutoAttack robustness audits for image classifiers (after RATIO, Augustin, Meinke, Hein, ECCV 2020). Errors are RFC 9457 application/problem+json.',
    license: { name: 'MIT', identifier: 'MIT' },
  },
  // `ratio serve --dev`'s address; the served /openapi.json names the origin of its own request instead.
  servers: [{ url: 'http://localhost:8080' }],
  // Bearer API keys (RATIO_API_KEYS / RATIO_API_KEYS_FILE); operations that need none say so.
  security: [{ bearerAuth: [] }],
  tags: [
    { name: 'models', description: 'Served models and predictions' },
    { name: 'analysis', description: 'Worst-case OOD confidence and counterfactuals' },
    { name: 'audits', description: 'AutoAttack audits as jobs' },
    { name: 'health', description: 'Liveness, readiness, metrics' },
    { name: 'inference-v2', description: 'Open Inference Protocol v2 (KServe, Triton, Seldon clients)' },
  ],
};

/** Logs every audit's end with its id: failures as warnings, cancellations and shutdown aborts as info. */
export function logAuditEnd(logger: pino.Logger): (job: AuditJob) => void {
  return (job) => {
    const fields = { job_id: job.id, model: job.parameters.model, started_at: job.started_at };
    if (job.state === 'failed') logger.warn({ ...fields, error: job.error }, 'audit failed');
    else if (job.state === 'cancelled') logger.info({ ...fields, reason: job.error }, 'audit cancelled');
    else logger.info(fields, `audit ${job.state}`);
  };
}

export function createApp(deps: AppDependencies): ServiceApp {
  const limits: ServiceLimits = { ...DEFAULT_LIMITS, ...deps.limits };
  const logger = deps.logger ?? pino({ level: 'silent' });
  const context: ServiceContext = {
    models: deps.models,
    limits,
    compute:
      deps.compute instanceof ComputeSemaphore
        ? deps.compute
        : new ComputeSemaphore({ maxRunning: 1, maxWaiting: 16, ...deps.compute }),
    audits:
      deps.audits instanceof AuditQueue
        ? deps.audits
        : new AuditQueue({ onFinished: logAuditEnd(logger), ...deps.audits }),
    inference: new InferenceService(
      deps.models,
      deps.inference?.compute ?? new InProcessCompute(deps.models),
      deps.inference?.batching,
    ),
    analysis: deps.inference?.analysis ?? new InProcessCompute(deps.models),
    intake: deps.intake ?? new InProcessIntake(),
    ...(deps.servedFiles ? { servedFiles: deps.servedFiles } : {}),
  };

  const app: ServiceApp = new OpenAPIHono<ServiceEnv>({
    defaultHook: (result, c) => {
      if (!result.success) return problemResponse(c, validationProblem(result.error.issues, result.target));
    },
  });
  const metrics = createMetrics(context);
  context.inference.observe(createInferenceMetrics(metrics.registry, () => context.inference.queuedImages()));

  app.use('*', requestId());
  app.use('*', async (c, next) => {
    const started = performance.now();
    await next();
    // requestId() set the header before the handler; only a response built without it lacks it.
    // (Setting it again on every response made node-server rebuild the response as a stream.)
    if (!c.res.headers.has('x-request-id')) c.header('x-request-id', c.get('requestId'));
    const line = {
      request_id: c.get('requestId'),
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      ms: Math.round(performance.now() - started),
    };
    // Every 5xx but a shutdown's 503 is an error worth a look, whichever handler answered it.
    if (c.res.status >= 500 && c.res.status !== 503) logger.error(line, 'request failed');
    else logger.info(line, 'request');
  });
  app.use('*', metrics.middleware);
  app.use('*', secureHeaders({ contentSecurityPolicy: CONTENT_SECURITY_POLICY }));
  const origins = [...(deps.corsOrigins ?? [])];
  if (origins.length > 0) {
    app.use(
      '*',
      cors({
        origin: origins,
        allowMethods: ['GET', 'POST', 'DELETE'],
        allowHeaders: ['authorization', 'content-type', 'accept'],
        exposeHeaders: ['location', 'retry-after', 'x-request-id'],
        maxAge: 600,
      }),
    );
  }
  // Form posts need no preflight: refuse unsafe cross-origin ones unless the origin is allowed.
  app.use('*', crossOriginWrites(origins));
  const auth: AuthConfig = { ...DEFAULT_AUTH, ...deps.auth };
  // One policy (keys, one rate limiter) for every route family: /v1, /v2 (registered below) and
  // /metrics; /health stays open for probes.
  const guard = authMiddleware(auth);
  app.use('/v1/*', guard);
  app.use('/metrics', guard);
  app.use('/v1/audits', auditAdmission(context, new AuditQuota(auth.auditsPerKey)));
  app.use('/v1/models/*', computeAdmission(context));
  const tooLarge = (max: number) =>
    bodyLimitByLength(max, (c) =>
      problemResponse(
        c,
        new ProblemError(
          413,
          'body-too-large',
          'Body too large',
          `the body exceeds the limit of ${max} bytes`,
          [{ field: 'body', message: `over ${max} bytes` }],
        ),
      ),
    );
  // Audit uploads: multipart only, read by the intake with the body and part limits as they stream.
  app.use('/v1/audits', multipartIntake(context, { maxBodyBytes: limits.auditBodyBytes }));
  app.use('/v1/models/*', tooLarge(limits.bodyBytes));

  registerModelRoutes(app, context);
  registerAnalysisRoutes(app, context);
  registerAuditRoutes(app, context);
  registerAuditReportRoutes(app, context);
  registerHealthRoutes(
    app,
    context,
    {
      backend: deps.backend ?? (() => undefined),
      ready: deps.ready ?? (() => true),
      serviceVersion: SERVICE_VERSION,
    },
    metrics.registry,
  );
  registerInferenceV2Routes(
    app,
    context,
    { ready: deps.ready ?? (() => true), serviceVersion: SERVICE_VERSION },
    guard,
  );
  registerDocsRoutes(app);
  registerWebRoutes(app, deps.webDirectory);
  // The document names the origin it was fetched from, so /docs's "Try it out" calls this service.
  app.doc31('/openapi.json', (c) => ({ ...OPENAPI_CONFIG, servers: [{ url: requestOrigin(c) }] }));

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    description:
      'An API key from RATIO_API_KEYS / RATIO_API_KEYS_FILE. Needed for audits and /metrics (unless RATIO_METRICS_PUBLIC=1); for predict, OOD, counterfactuals and /v2 infer when RATIO_REQUIRE_KEY_FOR_ANALYSIS=1. One rate limit per key covers /v1, /v2 and /metrics.',
  });
  app.notFound((c) => {
    const allowed = methodNotAllowed(app, c.req.method, c.req.path);
    if (allowed) {
      const res = problemResponse(
        c,
        new ProblemError(
          405,
          'method-not-allowed',
          'Method not allowed',
          `${c.req.method} is not allowed on ${c.req.path}; allowed: ${allowed.join(', ')}`,
        ),
      );
      res.headers.set('allow', allowed.join(', '));
      return res;
    }
    return problemResponse(
      c,
      new ProblemError(404, 'not-found', 'Not found', `no route for ${c.req.method} ${c.req.path}`),
    );
  });
  app.onError((error, c) => {
    let problem: ProblemError;
    if (error instanceof HTTPException && error.status === 415) {
      problem = unsupportedMediaType(mediaType(c), ['the types listed for this operation in /openapi.json']);
    } else if (error instanceof HTTPException) {
      const status = error.status;
      problem = new ProblemError(
        status,
        status === 400 ? 'malformed-body' : 'http-error',
        status === 400 ? 'Malformed body' : 'HTTP error',
        error.message || 'the request cannot be processed',
        status === 400 ? [{ field: 'body', message: error.message }] : [],
      );
    } else {
      problem = toProblemError(error);
    }
    // A 503 while shutting down is expected: info, without a stack.
    if (problem.status === 503)
      logger.info({ request_id: c.get('requestId'), detail: problem.message }, 'unavailable');
    else if (problem.status >= 500)
      logger.error({ err: error, request_id: c.get('requestId') }, 'request failed');
    return problemResponse(c, problem);
  });
  return app;
}

/** The OpenAPI 3.1 document of the service (what `npm run openapi` writes). */
export function openApiDocument(): OpenAPIObject {
  return createApp({ models: new Map() }).getOpenAPI31Document(OPENAPI_CONFIG);
}
