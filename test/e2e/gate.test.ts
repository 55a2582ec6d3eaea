import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readModelDir } from '../../src/data/model-dir.js';
import { probabilities } from '../../src/engine/model/classifier.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { batchingFromEnv, limitsFromEnv, type RunningServer, startServer } from '../../src/server.js';

/**
 * The OOD gate as served: `ratio serve`'s server with the shipped ratio-cifar10 in its compute worker
 * threads (the default), on loopback.
 */

let server: RunningServer;
let folder: string;

beforeAll(async () => {
  folder = await mkdtemp(path.join(tmpdir(), 'ratio-gate-'));
  await cp(path.resolve('models/ratio-cifar10'), path.join(folder, 'ratio-cifar10'), { recursive: true });
  server = await startServer({
    auth: { devMode: true },
    // The long counterfactual below is over the default request budget on purpose.
    app: { limits: { maxRequestFlops: 1e13 } },
    port: 0,
    host: '127.0.0.1',
    modelsDir: folder,
    compute: 'worker',
    logger: (await import('pino')).default({ level: 'silent' }),
  });
});

afterAll(async () => {
  await server?.close(1000);
  if (folder) await rm(folder, { recursive: true, force: true });
});

const png = async (rgb: [number, number, number]) =>
  new Uint8Array(
    await sharp({
      create: { width: 32, height: 32, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } },
    })
      .png()
      .toBuffer(),
  );

async function timed(url: string, init?: RequestInit): Promise<{ ms: number; status: number; text: string }> {
  const started = performance.now();
  const res = await fetch(url, init);
  const text = await res.text();
  return { ms: performance.now() - started, status: res.status, text };
}

describe('the gate served from worker threads', () => {
  it('answers concurrent predicts from shared forward passes exactly as the model does one image at a time', async () => {
    const colours: Array<[number, number, number]> = Array.from({ length: 24 }, (_, i) => [
      (i * 37) % 256,
      (i * 91) % 256,
      (i * 53) % 256,
    ]);
    const images = await Promise.all(colours.map(png));
    const answers = await Promise.all(
      images.map(async (body) => {
        const res = await fetch(`${server.url}/v1/models/ratio-cifar10/predict`, {
          method: 'POST',
          body,
          headers: { 'content-type': 'image/png' },
        });
        expect(res.status).toBe(200);
        return ((await res.json()) as { predictions: Array<{ probabilities: number[] }> }).predictions[0];
      }),
    );
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const passes = Number(/inference_batch_images_count\{model="ratio-cifar10"\} (\d+)/.exec(metrics)?.[1]);
    expect(passes).toBeLessThan(24); // some requests shared a forward pass
    const model = await loadModelFromFiles(await readModelDir(path.join(folder, 'ratio-cifar10')));
    for (const [i, colour] of colours.entries()) {
      const pixel = colour.map((v) => v / 255);
      const values = Float32Array.from({ length: 32 * 32 * 3 }, (_, j) => pixel[j % 3]);
      const { tensor4d } = await import('@tensorflow/tfjs');
      const x = tensor4d(values, [1, 32, 32, 3]);
      const probs = probabilities(model, x);
      expect(answers[i].probabilities).toEqual(Array.from(probs.dataSync()));
      x.dispose();
      probs.dispose();
    }
    model.dispose();
  });

  it('keeps /health/live, /metrics and predict answering while a long counterfactual runs', async () => {
    const image = Buffer.from(await png([120, 80, 200])).toString('base64');
    const client = new AbortController();
    const long = timed(`${server.url}/v1/models/ratio-cifar10/counterfactuals`, {
      signal: client.signal,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ image, radii: [0.5, 1, 2, 3], iterations: 1000 }),
    });
    let finished = false;
    const settled = long.then(
      () => {
        finished = true;
      },
      () => {
        finished = true;
      },
    );
    // Wait until the analysis worker has the counterfactual.
    for (;;) {
      if (finished) throw new Error(`the counterfactual ended early: ${JSON.stringify(await long)}`);
      const metrics = (await timed(`${server.url}/metrics`)).text;
      if (metrics.includes('compute_queue_depth{state="running"} 1')) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const live: number[] = [];
    const metricsMs: number[] = [];
    for (let i = 0; i < 20; i++) {
      const a = await timed(`${server.url}/health/live`);
      const m = await timed(`${server.url}/metrics`);
      expect([a.status, m.status]).toEqual([200, 200]);
      live.push(a.ms);
      metricsMs.push(m.ms);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    const predict = await timed(`${server.url}/v1/models/ratio-cifar10/predict`, {
      method: 'POST',
      body: await png([10, 200, 30]),
      headers: { 'content-type': 'image/png' },
    });
    expect(predict.status).toBe(200);
    expect(finished).toBe(false); // all of the above happened while the counterfactual ran
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
    // Generous bounds on a shared machine: the event loop only parses and answers.
    expect(median(live)).toBeLessThan(50);
    expect(median(metricsMs)).toBeLessThan(50);
    expect(Math.max(...live)).toBeLessThan(250);
    client.abort();
    await settled;
  });
});

describe('batchingFromEnv', () => {
  it('reads the batcher settings, keeps the defaults for unset or empty variables, and names a bad one', () => {
    expect(
      batchingFromEnv({
        RATIO_BATCH_MAX_IMAGES: '32',
        RATIO_BATCH_MAX_WAIT_MS: '0.5',
        RATIO_BATCH_WAIT_FOR: 'full',
        RATIO_BATCH_QUEUE_IMAGES: '',
      }),
    ).toEqual({ maxBatchImages: 32, maxWaitMs: 0.5, waitFor: 'full' });
    expect(batchingFromEnv({})).toEqual({});
    expect(() => batchingFromEnv({ RATIO_BATCH_WAIT_FOR: 'always' })).toThrow(/RATIO_BATCH_WAIT_FOR/);
    expect(() => batchingFromEnv({ RATIO_BATCH_MAX_WAIT_MS: 'soon' })).toThrow(/RATIO_BATCH_MAX_WAIT_MS/);
  });
});

describe('limitsFromEnv', () => {
  it('reads the cost limits as decimals, keeps the defaults for unset or empty variables, and names a bad one', () => {
    expect(
      limitsFromEnv({
        RATIO_MAX_AUDIT_FLOPS: '5e14',
        RATIO_MAX_REQUEST_FLOPS: '',
        RATIO_MAX_ITERATIONS: '2000',
      }),
    ).toEqual({ maxAuditFlops: 5e14, maxIterations: 2000 });
    expect(limitsFromEnv({})).toEqual({});
    for (const bad of ['0x10', '-1', '0', 'Infinity', 'lots']) {
      expect(() => limitsFromEnv({ RATIO_MAX_AUDIT_FLOPS: bad })).toThrow(/RATIO_MAX_AUDIT_FLOPS/);
    }
  });
});
