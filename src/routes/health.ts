import { createRoute, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { type BackendInfo, tensorMemory, tfjsVersion } from '../jobs/runtime.js';
import { InferenceProbe } from '../jobs/serving/index.js';
import type { ServiceApp, ServiceContext, ServiceEnv } from './context.js';
import { problemResponses } from './problem.js';

/** Liveness, readiness (backend + versions + models) and Prometheus metrics. */

export interface HealthSources {
  /** The selected backend, or undefined while it is not initialised. */
  backend: () => BackendInfo | undefined;
  /** True once the models are loaded and the backend warm. */
  ready: () => boolean;
  serviceVersion: string;
}

const ReadySchema = z
  .object({
    status: z.enum(['ready', 'starting', 'draining', 'failing']),
    backend: z
      .object({
        name: z.string(),
        threads: z.number(),
        simd: z.boolean(),
        version: z.string(),
        fastGradients: z.boolean(),
        nativeKernels: z.boolean(),
        kernels: z.enum(['onednn', 'wasm-native', 'stock']),
      })
      .nullable(),
    versions: z.object({ service: z.string(), node: z.string(), tfjs: z.string() }),
    models: z.array(z.string()),
    failing: z
      .array(z.object({ model: z.string(), error: z.string() }))
      .optional()
      .openapi({ description: 'models whose trial inference of one zero image fails (status failing)' }),
  })
  .openapi('Readiness', {
    example: {
      status: 'ready',
      backend: {
        name: 'wasm',
        threads: 2,
        simd: true,
        version: '4.22.0',
        fastGradients: true,
        nativeKernels: true,
        kernels: 'onednn',
      },
      versions: { service: '0.1.0', node: 'v20.19.0', tfjs: '4.22.0' },
      models: ['ratio-cifar10'],
    },
  });

const live = createRoute({
  method: 'get',
  path: '/health/live',
  operationId: 'live',
  security: [],
  tags: ['health'],
  summary: 'The process is up',
  responses: {
    200: {
      description: 'Alive',
      content: {
        'application/json': {
          schema: z.object({ status: z.literal('ok') }).openapi({ example: { status: 'ok' } }),
        },
      },
    },
  },
});

const ready = createRoute({
  method: 'get',
  path: '/health/ready',
  operationId: 'ready',
  security: [],
  tags: ['health'],
  summary: 'Ready to serve: backend selected, models loaded, and a trial inference of each succeeds',
  responses: {
    200: { description: 'Ready', content: { 'application/json': { schema: ReadySchema } } },
    503: {
      description: 'Not ready (starting, draining, or a trial inference failing)',
      content: { 'application/json': { schema: ReadySchema } },
    },
  },
});

const metricsRoute = createRoute({
  method: 'get',
  path: '/metrics',
  operationId: 'metrics',
  // A key unless RATIO_METRICS_PUBLIC=1 (the service's one key policy; see auth.ts).
  tags: ['health'],
  summary: 'Prometheus metrics',
  responses: {
    200: {
      description: 'Prometheus text exposition',
      content: {
        'text/plain': {
          schema: z
            .string()
            .openapi({ example: 'http_requests_total{method="GET",route="/v1/models",status="200"} 3' }),
        },
      },
    },
    ...problemResponses(401, 429),
  },
});

/** One registry per app, so several apps (tests) never collide on metric names. */
export function createMetrics(context: ServiceContext) {
  const registry = new Registry();
  const requests = new Counter({
    name: 'http_requests_total',
    help: 'HTTP requests by method, route template and status',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP request latency by route template',
    labelNames: ['method', 'route'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  new Gauge({
    name: 'compute_queue_depth',
    help: 'Synchronous computations running and waiting for the compute semaphore',
    labelNames: ['state'] as const,
    registers: [registry],
    collect() {
      const { running, waiting } = context.compute.depth;
      this.set({ state: 'running' }, running);
      this.set({ state: 'waiting' }, waiting);
    },
  });
  new Gauge({
    name: 'audit_jobs',
    help: 'Audit jobs held in memory by state',
    labelNames: ['state'] as const,
    registers: [registry],
    collect() {
      for (const [state, count] of Object.entries(context.audits.countByState())) this.set({ state }, count);
    },
  });
  new Gauge({
    name: 'audit_state_bytes',
    help: 'Bytes the durable audit state takes on disk (results, and inputs of unfinished audits)',
    registers: [registry],
    async collect() {
      const bytes = await context.audits.stateBytes().catch(() => undefined);
      if (bytes !== undefined) this.set(bytes);
    },
  });
  new Gauge({
    name: 'tfjs_tensors',
    help: 'Live tfjs tensors',
    registers: [registry],
    collect() {
      this.set(tensorMemory().numTensors);
    },
  });
  new Gauge({
    name: 'tfjs_bytes',
    help: 'Bytes held by live tfjs tensors',
    registers: [registry],
    collect() {
      this.set(tensorMemory().numBytes);
    },
  });

  const middleware: MiddlewareHandler<ServiceEnv> = async (c, next) => {
    const started = performance.now();
    await next();
    // The route template, not the path, so ids do not explode the label set.
    const route = c.req.routePath || 'unmatched';
    requests.inc({ method: c.req.method, route, status: String(c.res.status) });
    latency.observe({ method: c.req.method, route }, (performance.now() - started) / 1000);
  };
  return { registry, middleware };
}

export function registerHealthRoutes(
  app: ServiceApp,
  context: ServiceContext,
  sources: HealthSources,
  registry: Registry,
): void {
  app.openapi(live, (c) => c.json({ status: 'ok' as const }, 200));

  const probe = new InferenceProbe(context.models);
  app.openapi(ready, (c) => {
    const backend = sources.backend() ?? null;
    let status: 'ready' | 'starting' | 'draining' | 'failing' = context.audits.isDraining
      ? 'draining'
      : backend && sources.ready()
        ? 'ready'
        : 'starting';
    const trial = status === 'ready' ? probe.check() : undefined;
    if (trial && !trial.ok) status = 'failing';
    const body = {
      status,
      backend,
      versions: { service: sources.serviceVersion, node: process.version, tfjs: tfjsVersion() },
      models: [...context.models.keys()],
      ...(trial && !trial.ok ? { failing: trial.failing } : {}),
    };
    return status === 'ready' ? c.json(body, 200) : c.json(body, 503);
  });

  app.openapi(metricsRoute, async (c) =>
    c.text(await registry.metrics(), 200, { 'content-type': registry.contentType }),
  );
}
