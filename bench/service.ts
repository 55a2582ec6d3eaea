/**
 * `npm run bench:service -- [--json] [--duration 5]`: predict throughput and p50/p99 latency at
 * concurrency 1/8/32 with autocannon against the real server on loopback, a counterfactual's latency,
 * and, as the in-run baseline, the same model's in-process predict rate without HTTP.
 * The model: the first one in RATIO_MODELS_DIR (./models), else a seeded linear CIFAR-10 model.
 * Note: autocannon runs in this process too, so client and server share the event loop and cores.
 */
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import autocannon from 'autocannon';
import pino from 'pino';
import sharp from 'sharp';
import { type Classifier, probabilities } from '../src/engine/classifier.js';
import { startServer } from '../src/server.js';

const { values } = parseArgs({
  options: { json: { type: 'boolean' }, duration: { type: 'string' }, models: { type: 'string' } },
});
const duration = Number(values.duration ?? 5);

function fallbackModel(): Classifier {
  const model = tf.sequential({
    layers: [
      tf.layers.flatten({ inputShape: [32, 32, 3] }),
      tf.layers.dense({ units: 10, kernelInitializer: tf.initializers.glorotUniform({ seed: 7 }) }),
    ],
  });
  const card = {
    name: 'linear-fallback',
    inputShape: [32, 32, 3] as [number, number, number],
    temperature: 1,
  };
  return {
    card: { ...card, classNames: Array.from({ length: 10 }, (_, i) => `class_${i}`) },
    numClasses: 10,
    logits: (x) => model.apply(x, { training: false }) as tf.Tensor2D,
    dispose: () => model.dispose(),
  };
}

const server = await startServer({
  port: 0,
  host: '127.0.0.1',
  modelsDir: values.models ?? process.env.RATIO_MODELS_DIR ?? './models',
  logger: pino({ level: 'silent' }),
  app: { compute: { maxRunning: 1, maxWaiting: 256 } },
});
if (server.models.size === 0)
  (server.models as Map<string, Classifier>).set('linear-fallback', fallbackModel());
const [modelName, model] = [...server.models][0];
const [h, w, c] = model.card.inputShape;
const png = await sharp({
  create: { width: w, height: h, channels: 3, background: { r: 120, g: 80, b: 200 } },
})
  .png()
  .toBuffer();

// Baseline: the engine's own predict rate on one image, no HTTP, no decoding.
const x = tf.randomUniform([1, h, w, c]) as tf.Tensor4D;
const baselineStart = performance.now();
let baselineCalls = 0;
while (performance.now() - baselineStart < 1000) {
  tf.tidy(() => probabilities(model, x).dataSync());
  baselineCalls += 1;
}
x.dispose();
const baselinePerSecond = baselineCalls / ((performance.now() - baselineStart) / 1000);

const predict = [];
for (const connections of [1, 8, 32]) {
  const result = await autocannon({
    url: `${server.url}/v1/models/${modelName}/predict`,
    method: 'POST',
    headers: { 'content-type': 'image/png' },
    body: png,
    connections,
    duration,
  });
  predict.push({
    concurrency: connections,
    requests_per_second: result.requests.average,
    latency_p50_ms: result.latency.p50,
    latency_p99_ms: result.latency.p99,
    non_2xx: result.non2xx,
    errors: result.errors,
  });
}

const counterfactualMs: number[] = [];
for (let i = 0; i < 3; i++) {
  const started = performance.now();
  const res = await fetch(`${server.url}/v1/models/${modelName}/counterfactuals`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'image/png' },
    body: JSON.stringify({ image: png.toString('base64'), radii: [0.5, 1, 2], iterations: 100 }),
  });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`counterfactuals answered ${res.status}`);
  counterfactualMs.push(performance.now() - started);
}
counterfactualMs.sort((a, b) => a - b);

const report = {
  model: modelName,
  backend: (await import('../src/engine/backend.js')).backendInfo().name,
  duration_s_per_level: duration,
  baseline_in_process_predicts_per_second: baselinePerSecond,
  predict,
  counterfactual: { radii: 3, targets: 2, iterations: 100, median_ms: counterfactualMs[1] },
};
await server.close(1000);
if (values.json) console.log(JSON.stringify(report));
else console.log(report);
