import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import pino from 'pino';
import { type AppDependencies, createApp, logAuditEnd } from './app.js';
import {
  type AuditIntake,
  AuditQueue,
  AuditStore,
  InProcessIntake,
  WorkerIntake,
} from './jobs/audit/index.js';
import { type Classifier, loadModelsFolder } from './jobs/models/index.js';
import { backendInfo, initBackend } from './jobs/runtime.js';
import {
  type BatcherOptions,
  InProcessCompute,
  type ModelCompute,
  ModelRouter,
  WorkerCompute,
} from './jobs/serving/index.js';
import { type BlobStore, parseWorkerCount, QueueAuditRunner, ShardPool } from './jobs/sharding/index.js';
import { type AuthConfig, authConfigFromEnv } from './routes/auth.js';
import type { ServiceLimits } from './routes/context.js';

/**
 * Starts the service: selects the backend, loads every model directory under `modelsDir`
 * (`<name>/model.json`, shards, `card.json`), serves the app, and shuts down gracefully.
 */

export interface ServerOptions {
  /** Port to listen on (0 = any free port). Default: env PORT, else 8080. */
  port?: number;
  /**
   * Address to bind. Default: env HOST, else 127.0.0.1 in development mode (no keys) and 0.0.0.0
   * with keys. Containers set HOST=0.0.0.0 (the Dockerfile does).
   */
  host?: string;
  /**
   * API keys and limits. Default: from the environment (RATIO_API_KEYS, RATIO_API_KEYS_FILE,
   * RATIO_DEV_MODE, ...); without keys and without development mode the server refuses to start.
   */
  auth?: Partial<AuthConfig>;
  /** Browser origins allowed (CORS). Default: env RATIO_CORS_ORIGINS (comma-separated), else none. */
  corsOrigins?: string[];
  /** Default: env RATIO_MODELS_DIR, else ./models. */
  modelsDir?: string;
  /** Models to serve in addition to (or instead of) the directory's. */
  models?: Map<string, Classifier>;
  logger?: pino.Logger;
  /** Passed through to `createApp` (limits, compute semaphore, audit queue options). */
  app?: Omit<AppDependencies, 'models' | 'audits' | 'backend' | 'ready' | 'logger'>;
  audits?: ConstructorParameters<typeof AuditQueue>[0];
  /**
   * Audit worker processes (default: env RATIO_WORKERS, else one per core), started at the first
   * audit; 0 runs audits in this process (its event loop then stalls during attack steps).
   */
  workers?: number;
  /**
   * Durable audits: their state lives under this directory and survives restarts (`ratio serve`
   * passes RATIO_STATE_DIR or its default); absent, audits live in memory.
   */
  stateDir?: string;
  /**
   * Runs audits' shards on `ratio worker` processes through BullMQ/Redis instead of the local pool
   * (`ratio serve --queue`): the Redis URL and the store the workers read models and points from.
   */
  queue?: { url: string; store: BlobStore };
  /** Node's own per-request timeout (headers + body), ms. Default 120 s. */
  requestTimeoutMs?: number;
  /**
   * Where forward passes and analyses run: 'worker' (default; env RATIO_COMPUTE): two worker threads,
   * one for batched predictions and one for worst-case OOD and counterfactuals, so the event loop
   * only parses and answers; 'inline': this thread.
   */
  compute?: 'worker' | 'inline';
  /**
   * Where audit uploads are parsed, decoded, loaded and trial-run: 'worker' (default; env
   * RATIO_INTAKE): a worker thread per upload, so the event loop only moves the body's chunks;
   * 'inline': this thread.
   */
  intake?: 'worker' | 'inline';
  /**
   * Dynamic batching; defaults from env RATIO_BATCH_MAX_IMAGES, RATIO_BATCH_MAX_WAIT_MS,
   * RATIO_BATCH_WAIT_FOR, RATIO_BATCH_QUEUE_IMAGES.
   */
  batching?: Partial<BatcherOptions>;
}

/** Batcher settings from the environment (unset or empty variables keep the defaults). */
export function batchingFromEnv(env: NodeJS.ProcessEnv = process.env): Partial<BatcherOptions> {
  const read = (name: string): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    const value = Number(raw);
    if (!Number.isFinite(value)) throw new RangeError(`${name} must be a number, got '${raw}'`);
    return value;
  };
  const options: Partial<BatcherOptions> = {};
  const maxBatchImages = read('RATIO_BATCH_MAX_IMAGES');
  const maxWaitMs = read('RATIO_BATCH_MAX_WAIT_MS');
  const maxQueuedImages = read('RATIO_BATCH_QUEUE_IMAGES');
  if (maxBatchImages !== undefined) options.maxBatchImages = maxBatchImages;
  if (maxWaitMs !== undefined) options.maxWaitMs = maxWaitMs;
  if (maxQueuedImages !== undefined) options.maxQueuedImages = maxQueuedImages;
  const waitFor = env.RATIO_BATCH_WAIT_FOR;
  if (waitFor !== undefined && waitFor !== '') {
    if (waitFor !== 'last-pass' && waitFor !== 'full') {
      throw new RangeError(`RATIO_BATCH_WAIT_FOR must be 'last-pass' or 'full', got '${waitFor}'`);
    }
    options.waitFor = waitFor;
  }
  return options;
}

/** Service limits an operator may set from the environment, by variable name. */
const LIMIT_VARIABLES = {
  RATIO_MAX_REQUEST_FLOPS: 'maxRequestFlops',
  RATIO_MAX_AUDIT_FLOPS: 'maxAuditFlops',
  RATIO_MAX_ITERATIONS: 'maxIterations',
  RATIO_REQUEST_TIMEOUT_MS: 'requestTimeoutMs',
  RATIO_SSE_STREAMS_PER_KEY: 'sseStreamsPerKey',
  RATIO_SSE_STREAMS: 'sseStreams',
} as const satisfies Record<string, keyof ServiceLimits>;

/**
 * Cost limits from the environment (unset or empty variables keep the defaults of DEFAULT_LIMITS):
 * a larger machine or a GPU affords larger audits than the 2-core default budget allows.
 */
export function limitsFromEnv(env: NodeJS.ProcessEnv = process.env): Partial<ServiceLimits> {
  const limits: Partial<ServiceLimits> = {};
  for (const [name, key] of Object.entries(LIMIT_VARIABLES)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    // Decimal with an optional exponent only (2e14, 500000): no hex, no Infinity, no sign.
    const value = /^\d+(\.\d+)?(e\d+)?$/i.test(raw) ? Number(raw) : Number.NaN;
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(`${name} must be a positive decimal number such as 2e14, got '${raw}'`);
    }
    limits[key] = value;
  }
  return limits;
}

/**
 * Finished audits whose results are kept (RATIO_AUDITS_RETAINED, default the queue's 200, oldest
 * forgotten first); their inputs (model copy, points) are removed as soon as each audit ends.
 */
export function retainedFromEnv(env: NodeJS.ProcessEnv = process.env): { retain?: number } {
  const raw = env.RATIO_AUDITS_RETAINED;
  if (raw === undefined || raw === '') return {};
  if (!/^\d+$/.test(raw) || Number(raw) < 1) {
    throw new RangeError(`RATIO_AUDITS_RETAINED must be an integer >= 1, got '${raw}'`);
  }
  return { retain: Number(raw) };
}

export interface RunningServer {
  url: string;
  port: number;
  models: ReadonlyMap<string, Classifier>;
  audits: AuditQueue;
  /**
   * Refuses new audits, lets running ones finish for up to `graceMs` (then aborts them), closes
   * the listener and frees the models.
   */
  close(graceMs?: number): Promise<void>;
}

/**
 * The compute of the served models: in 'worker' mode the models read from files run in two worker
 * threads (predictions; analyses), models given as objects stay on this thread.
 */
async function startCompute(
  mode: 'worker' | 'inline',
  models: ReadonlyMap<string, Classifier>,
  files: ReadonlyMap<string, Map<string, Uint8Array>>,
): Promise<{ inference: ModelCompute; analysis: ModelCompute }> {
  const local = new InProcessCompute(models);
  if (mode === 'inline' || files.size === 0) return { inference: local, analysis: local };
  const fromFiles = [...files].map(([name, modelFiles]) => ({ name, files: modelFiles }));
  const [inferenceWorker, analysisWorker] = await Promise.all([
    WorkerCompute.start({ name: 'inference', models: fromFiles }),
    WorkerCompute.start({ name: 'analysis', models: fromFiles }),
  ]);
  const route = (worker: WorkerCompute) =>
    new ModelRouter(new Map([...models.keys()].map((name) => [name, files.has(name) ? worker : local])));
  return { inference: route(inferenceWorker), analysis: route(analysisWorker) };
}

export async function startServer(options: ServerOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? pino({ level: process.env.LOG_LEVEL ?? 'info' });
  const port = options.port ?? Number(process.env.PORT ?? 8080);
  const auth = options.auth ?? authConfigFromEnv();
  const devMode = auth.devMode ?? true;
  const host = options.host ?? process.env.HOST ?? (devMode ? '127.0.0.1' : '0.0.0.0');
  const corsOrigins =
    options.corsOrigins ??
    (process.env.RATIO_CORS_ORIGINS ?? '')
      .split(',')
      .map((origin) => origin.trim())
      .filter((origin) => origin.length > 0);
  if (devMode) {
    logger.warn(
      { host },
      'DEVELOPMENT MODE: no API keys. Anyone who reaches this address can upload models, run and cancel audits. Set RATIO_API_KEYS or RATIO_API_KEYS_FILE for any shared deployment.',
    );
  } else {
    logger.info({ keys: auth.keyHashes?.length ?? 0 }, 'API keys loaded');
  }
  const modelsDir = options.modelsDir ?? process.env.RATIO_MODELS_DIR ?? './models';
  let ready = false;
  const backend = await initBackend();
  logger.info({ backend }, 'backend selected');
  const models = new Map(options.models ?? []);
  const files = new Map<string, Map<string, Uint8Array>>();
  const loaded = await loadModelsFolder(
    modelsDir,
    (name) => logger.info({ model: name }, 'model loaded'),
    (name, error) => logger.error({ model: name, err: error }, 'model skipped: it cannot be loaded'),
    files,
  );
  for (const [name, model] of loaded) {
    if (!models.has(name)) models.set(name, model);
    else files.delete(name);
  }
  const workers = options.workers ?? parseWorkerCount(process.env.RATIO_WORKERS);
  // Started at the first audit, so a service that never audits never forks workers.
  let pool: ShardPool | undefined;
  const poolRun = (...args: Parameters<ShardPool['autoAttack']>) => {
    pool ??= new ShardPool({ workers });
    return pool.autoAttack(...args);
  };
  // With a queue, shards run on 'ratio worker' processes; served ONNX models travel as their files.
  const filesOf = new Map<Classifier, Map<string, Uint8Array>>();
  for (const [name, modelFiles] of files) {
    const model = models.get(name);
    if (model) filesOf.set(model, modelFiles);
  }
  const queue = options.queue
    ? await QueueAuditRunner.start({
        queue: options.queue.url,
        store: options.queue.store,
        modelFiles: (classifier) => filesOf.get(classifier),
      })
    : undefined;
  if (queue)
    logger.info({ queue: options.queue?.url, store: options.queue?.store.url }, 'audits on the queue');
  const audits = new AuditQueue({
    onFinished: logAuditEnd(logger),
    onQuarantined: (audit) =>
      logger.warn(
        { job_id: audit.job.id, file: audit.file, reason: audit.reason },
        'audit quarantined: a state file cannot be read; its files are kept, the audit is listed as failed',
      ),
    ...retainedFromEnv(),
    ...(queue ? { run: queue.autoAttack.bind(queue), maxRunning: 4 } : workers > 0 ? { run: poolRun } : {}),
    ...(options.stateDir ? { store: new AuditStore(options.stateDir) } : {}),
    ...options.audits,
  });
  const resumed = await audits.recover();
  if (options.stateDir) logger.info({ stateDir: options.stateDir, resumed }, 'audit state recovered');
  const batching = { ...batchingFromEnv(), ...options.batching };
  const { inference, analysis } = await startCompute(
    options.compute ?? (process.env.RATIO_COMPUTE === 'inline' ? 'inline' : 'worker'),
    models,
    files,
  );
  logger.info(
    { batching, compute: options.compute ?? process.env.RATIO_COMPUTE ?? 'worker' },
    'compute started',
  );
  const intake: AuditIntake =
    (options.intake ?? (process.env.RATIO_INTAKE === 'inline' ? 'inline' : 'worker')) === 'worker'
      ? new WorkerIntake()
      : new InProcessIntake();
  const app = createApp({
    ...options.app,
    intake,
    servedFiles: files,
    limits: { ...limitsFromEnv(), ...options.app?.limits },
    inference: { compute: inference, analysis, batching },
    models,
    audits,
    logger,
    auth,
    corsOrigins,
    backend: () => backendInfo(),
    ready: () => ready,
  });
  const server = createAdaptorServer({ fetch: app.fetch }) as Server;
  server.requestTimeout = options.requestTimeoutMs ?? 120_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${shownHost}:${address.port}`;
  ready = true;
  logger.info({ url, models: [...models.keys()] }, 'listening');

  let closing: Promise<void> | undefined;
  const close = (graceMs = 25_000) => {
    closing ??= (async () => {
      ready = false;
      await audits.drain({ abortRunning: false, timeoutMs: graceMs });
      await audits.drain({ abortRunning: true, timeoutMs: 5_000 });
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        // Open SSE streams would hold the server forever.
        setTimeout(() => server.closeAllConnections(), 1_000).unref();
      });
      await Promise.all([pool?.close(), queue?.close(), inference.close(), analysis.close(), intake.close()]);
      for (const model of models.values()) model.dispose();
      logger.info('server closed');
    })();
    return closing;
  };
  return { url, port: address.port, models, audits, close };
}
