import { parseArgs } from 'node:util';
import type { BlobStore } from '../jobs/sharding/index.js';
import { commandOptions } from './args.js';

/** `ratio serve`: the HTTP service on PORT (default 8080) with the models in RATIO_MODELS_DIR. */

const HELP = `usage: ratio serve [--port <n>] [--host <addr>] [--models <dir>] [--dev]

  --port <n>        port (default: env PORT, else 8080; 0 = any free port)
  --host <addr>     address to bind (default: env HOST, else 127.0.0.1 in development mode, 0.0.0.0 with keys)
  --models <dir>    model directories <dir>/<name>/{model.json,card.json,...} (default: env RATIO_MODELS_DIR, else ./models)
  --workers <n>     audit worker processes (default: env RATIO_WORKERS, else one per core; 0 = in process)
  --state-dir <dir> durable audit state, resumed after a restart (default: env RATIO_STATE_DIR, else
                    $XDG_STATE_HOME/ratio-audit or ~/.local/state/ratio-audit)
  --queue <url>     run audit shards on 'ratio worker' processes through BullMQ/Redis (redis://host:port;
                    default: env RATIO_QUEUE_URL; unset: the local worker pool)
  --store <url>     where queue workers read models and points: a directory, file:///dir or s3://bucket/prefix
                    (default: env RATIO_STORE_URL, else <state dir>/store)
  --dev             development mode without API keys (same as RATIO_DEV_MODE=1; logged as a warning)

environment: LOG_LEVEL (pino level, default info), RATIO_BACKEND (tensorflow | wasm | cpu),
  RATIO_API_KEYS (comma-separated keys), RATIO_API_KEYS_FILE (sha256 hex of each key, one a line),
  RATIO_DEV_MODE=1, RATIO_REQUIRE_KEY_FOR_ANALYSIS=1, RATIO_RATE_LIMIT_PER_MINUTE (per key, default 120000,
  0 = off), RATIO_AUDITS_PER_KEY (running + queued, default 4), RATIO_CORS_ORIGINS (comma-separated)
Without keys and without --dev / RATIO_DEV_MODE=1 the server refuses to start.
SIGTERM / SIGINT: refuse new audits, let running ones finish for up to 25 s, then stop.
`;

export const summary = 'serve the HTTP API (predict, counterfactuals, OOD, audits)';

function parseServeArguments(argv: string[]) {
  return parseArgs({
    args: argv,
    strict: true,
    options: commandOptions(['port', 'host', 'models', 'workers', 'state-dir', 'queue', 'store'], ['dev']),
  });
}

export async function run(argv: string[]): Promise<number> {
  let values: ReturnType<typeof parseServeArguments>['values'];
  try {
    ({ values } = parseServeArguments(argv));
  } catch (error) {
    console.error(`ratio serve: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const port = values.port === undefined ? undefined : Number(values.port);
  if (port !== undefined && !(Number.isInteger(port) && port >= 0 && port < 65536)) {
    console.error(`ratio serve: --port must be an integer in [0, 65535], got '${values.port}'`);
    return 2;
  }
  const workers = values.workers === undefined ? undefined : Number(values.workers);
  if (workers !== undefined && !(Number.isInteger(workers) && workers >= 0)) {
    console.error(`ratio serve: --workers must be an integer >= 0, got '${values.workers}'`);
    return 2;
  }
  const { startServer } = await import('../server.js');
  const { AuthConfigError, authConfigFromEnv } = await import('../routes/auth.js');
  let auth: ReturnType<typeof authConfigFromEnv>;
  try {
    auth = authConfigFromEnv(values.dev ? { ...process.env, RATIO_DEV_MODE: '1' } : process.env);
  } catch (error) {
    if (!(error instanceof AuthConfigError)) throw error;
    console.error(`ratio serve: ${error.message}`);
    return 2;
  }
  const { defaultStateDir } = await import('../jobs/audit/index.js');
  const stateDir = values['state-dir'] ?? defaultStateDir();
  const queueUrl = values.queue ?? (process.env.RATIO_QUEUE_URL || undefined);
  let queue: { url: string; store: BlobStore } | undefined;
  if (queueUrl !== undefined) {
    const { parseQueueUrl, openBlobStore, defaultStoreUrl } = await import('../jobs/sharding/index.js');
    try {
      parseQueueUrl(queueUrl);
      const storeUrl = values.store ?? defaultStoreUrl({ ...process.env, RATIO_STATE_DIR: stateDir });
      queue = { url: queueUrl, store: openBlobStore(storeUrl) };
    } catch (error) {
      console.error(`ratio serve: --queue / --store: ${(error as Error).message}`);
      return 2;
    }
  }
  const { QueueUnavailableError } = await import('../jobs/sharding/index.js');
  const server = await startServer({
    port,
    host: values.host,
    modelsDir: values.models,
    workers,
    stateDir,
    auth,
    queue,
  }).catch((error: unknown) => {
    if (!(error instanceof QueueUnavailableError)) throw error;
    console.error(`ratio serve: ${error.message}`);
    return undefined;
  });
  if (!server) return 3;
  return new Promise<number>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      // A shutdown step that fails (a queue's Redis gone, a model that cannot be freed) is reported
      // and ends with a non-zero status; left unhandled, tfjs-wasm's runtime would rethrow it.
      server.close().then(
        () => resolve(0),
        (error: unknown) => {
          console.error(
            `ratio serve: shutdown failed: ${error instanceof Error ? error.message : String(error)}`,
          );
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}
