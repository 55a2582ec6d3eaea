/**
 * `npm run bench:service -- [--json] [--duration 5] [--rounds 2] [--model ratio-cifar10] [--levels 1,8,32,128]`:
 * the OOD gate's throughput against the real server. For each configuration it spawns `ratio serve`
 * (a child process on a random loopback port, the shipped models) and drives POST
 * /v1/models/{model}/predict with a 32x32 PNG at each concurrency with autocannon (in this process, so
 * the client does not share the server's event loop): requests/s, p50/p99 latency, share refused.
 * Configurations, in the same run: `batched` (the defaults: wait up to 2 ms for as many requests as the
 * last pass held), `unbatched` (RATIO_BATCH_MAX_IMAGES=1: one forward pass per request, same worker
 * thread), `batched-wait-0ms` (RATIO_BATCH_MAX_WAIT_MS=0: leave as soon as the worker is free) and
 * `batched-wait-2ms-full` (RATIO_BATCH_WAIT_FOR=full: wait up to 2 ms for a full pass).
 * Afterwards, on the batched server: a counterfactual's latency and the /health/live latency while it runs.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import sharp from 'sharp';

const { values } = parseArgs({
  options: {
    json: { type: 'boolean' },
    duration: { type: 'string' },
    model: { type: 'string' },
    models: { type: 'string' },
    levels: { type: 'string' },
    configs: { type: 'string' },
    rounds: { type: 'string' },
  },
});
const duration = Number(values.duration ?? 5);
const modelName = values.model ?? 'ratio-cifar10';
const modelsDir = path.resolve(values.models ?? process.env.RATIO_MODELS_DIR ?? './models');
const levels = (values.levels ?? '1,8,32,128').split(',').map(Number);
const rounds = Number(values.rounds ?? 2);

const CONFIGS: Record<string, Record<string, string>> = {
  batched: {},
  unbatched: { RATIO_BATCH_MAX_IMAGES: '1' },
  // The defaults' alternatives: no wait (the default before 'last-pass'), and 2 ms for a full pass.
  'batched-wait-0ms': { RATIO_BATCH_MAX_WAIT_MS: '0' },
  'batched-wait-2ms-full': { RATIO_BATCH_WAIT_FOR: 'full' },
};
const chosen = (values.configs ?? Object.keys(CONFIGS).join(',')).split(',');

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

async function startServe(env: Record<string, string>): Promise<{ url: string; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [
      ...(process.env.BENCH_SERVE_NODE_ARGS ?? '').split(' ').filter(Boolean),
      'bin/ratio.js',
      'serve',
      '--dev',
      '--port',
      String(port),
      '--host',
      '127.0.0.1',
      '--models',
      modelsDir,
    ],
    {
      env: { ...process.env, LOG_LEVEL: 'warn', RATIO_RATE_LIMIT_PER_MINUTE: '0', ...env },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  // A bench that dies on an uncaught error skips its finally: never leave a server behind.
  process.once('exit', () => child.kill('SIGKILL'));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 240; i++) {
    if (child.exitCode !== null) throw new Error(`ratio serve exited with ${child.exitCode}`);
    const ready = await fetch(`${url}/health/ready`).then(
      (r) => r.status === 200,
      () => false,
    );
    if (ready) return { url, child };
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  child.kill('SIGKILL');
  throw new Error('ratio serve did not become ready in 60 s');
}

async function stopServe(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

const png = await sharp({
  create: { width: 32, height: 32, channels: 3, background: { r: 120, g: 80, b: 200 } },
})
  .png()
  .toBuffer();

async function level(url: string, connections: number) {
  const result = await autocannon({
    url: `${url}/v1/models/${modelName}/predict`,
    method: 'POST',
    headers: { 'content-type': 'image/png' },
    body: png,
    connections,
    duration,
  });
  const answered = result['2xx'] + result.non2xx;
  return {
    concurrency: connections,
    requests_per_second: Math.round(result['2xx'] / duration),
    latency_p50_ms: result.latency.p50,
    latency_p99_ms: result.latency.p99,
    refused_share: answered > 0 ? Number((result.non2xx / answered).toFixed(4)) : 0,
    non_2xx: result.non2xx,
    errors: result.errors,
  };
}

/** Median counterfactual latency, and the worst /health/live latency sampled every 20 ms meanwhile. */
async function whileCounterfactual(url: string) {
  const counterfactualMs: number[] = [];
  const liveMs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const started = performance.now();
    const pending = fetch(`${url}/v1/models/${modelName}/counterfactuals`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'image/png' },
      body: JSON.stringify({ image: png.toString('base64'), radii: [0.5, 1, 2], iterations: 100 }),
    }).then(async (res) => {
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`counterfactuals answered ${res.status}`);
      return performance.now() - started;
    });
    let done = false;
    void pending.finally(() => {
      done = true;
    });
    while (!done) {
      const t = performance.now();
      await (await fetch(`${url}/health/live`)).arrayBuffer();
      liveMs.push(performance.now() - t);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    counterfactualMs.push(await pending);
  }
  counterfactualMs.sort((a, b) => a - b);
  liveMs.sort((a, b) => a - b);
  return {
    radii: 3,
    targets: 2,
    iterations: 100,
    median_ms: Math.round(counterfactualMs[1]),
    health_live_samples: liveMs.length,
    health_live_max_ms: Number(liveMs[liveMs.length - 1].toFixed(1)),
  };
}

// All servers start first and stay up (idle ones cost nothing); the levels then run round-robin over
// the configurations, `rounds` times, so a change of load on the shared machine hits every
// configuration alike. Each figure is the median over the rounds.
const servers = new Map<string, { url: string; child: ChildProcess }>();
try {
  for (const name of chosen) {
    const env = CONFIGS[name];
    if (!env) throw new Error(`unknown configuration '${name}'; known: ${Object.keys(CONFIGS).join(', ')}`);
    const started = await startServe(env);
    servers.set(name, started);
    // Warm-up: the first passes of each batch size compile and allocate.
    await autocannon({
      url: `${started.url}/v1/models/${modelName}/predict`,
      method: 'POST',
      headers: { 'content-type': 'image/png' },
      body: png,
      connections: 32,
      duration: 1,
    });
  }
  const samples = new Map<string, Array<Awaited<ReturnType<typeof level>>>>();
  for (let round = 0; round < rounds; round++) {
    for (const connections of levels) {
      for (const [name, { url }] of servers) {
        const key = `${name}/${connections}`;
        samples.set(key, [...(samples.get(key) ?? []), await level(url, connections)]);
      }
    }
  }
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)];
  const configs: Record<string, unknown> = {};
  for (const [name, { url }] of servers) {
    const predict = levels.map((connections) => {
      const runs = samples.get(`${name}/${connections}`) ?? [];
      return {
        concurrency: connections,
        requests_per_second: median(runs.map((r) => r.requests_per_second)),
        latency_p50_ms: median(runs.map((r) => r.latency_p50_ms)),
        latency_p99_ms: median(runs.map((r) => r.latency_p99_ms)),
        refused_share: median(runs.map((r) => r.refused_share)),
        requests_per_second_range: [
          Math.min(...runs.map((r) => r.requests_per_second)),
          Math.max(...runs.map((r) => r.requests_per_second)),
        ],
        errors: runs.reduce((total, r) => total + r.errors, 0),
      };
    });
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const sum = Number(/inference_batch_images_sum\{[^}]*\} (\S+)/.exec(metrics)?.[1] ?? Number.NaN);
    const count = Number(/inference_batch_images_count\{[^}]*\} (\S+)/.exec(metrics)?.[1] ?? Number.NaN);
    configs[name] = { env: CONFIGS[name], predict, mean_batch_images: Number((sum / count).toFixed(2)) };
  }
  const report: Record<string, unknown> = {
    model: modelName,
    duration_s_per_level: duration,
    rounds,
    configs,
  };
  const batched = servers.get('batched');
  if (batched) report.counterfactual = await whileCounterfactual(batched.url);
  if (values.json) console.log(JSON.stringify(report));
  else console.dir(report, { depth: null });
} finally {
  for (const { child } of servers.values()) await stopServe(child);
}
