import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { readModelDir } from '../../../src/data/model-dir.js';
import { type Classifier, probabilities } from '../../../src/engine/model/classifier.js';
import { loadModelFromFiles } from '../../../src/engine/model/files.js';
import { QueueFullError } from '../../../src/jobs/errors.js';
import { type BatchForward, DynamicBatcher } from '../../../src/jobs/serving/batcher.js';
import { InProcessCompute } from '../../../src/jobs/serving/compute.js';

const shipped = await loadModelFromFiles(await readModelDir(path.resolve('models/ratio-cifar10')));
const VALUES = 32 * 32 * 3;

/** Deterministic pseudo-random images in [0,1]. */
function images(count: number, seed: number, values = VALUES): Float32Array {
  const out = new Float32Array(count * values);
  let state = seed * 2654435761;
  for (let i = 0; i < out.length; i++) {
    state = (state * 1103515245 + 12345) >>> 0;
    out[i] = (state >>> 8) / 2 ** 24;
  }
  return out;
}

/** The one-request-at-a-time answer: the engine's own probabilities on that request alone. */
function alone(model: Classifier, pixels: Float32Array, count: number, temperature: number): Float32Array {
  const x = tf.tensor4d(pixels, [count, ...model.card.inputShape]);
  const probs = probabilities(model, x, { temperature });
  const values = probs.dataSync() as Float32Array;
  tf.dispose([x, probs]);
  return values;
}

/** A forward pass that waits for the test to release it, recording what it was given. */
function gatedForward(numClasses = 2) {
  const calls: Array<{
    count: number;
    temperatures: number[];
    release: () => void;
    fail: (e: Error) => void;
  }> = [];
  const forward: BatchForward = (values, count, temperatures) =>
    new Promise((resolve, reject) => {
      calls.push({
        count,
        temperatures: [...temperatures],
        // Row i of the answer is [first value of image i, its temperature]: traceable per request.
        release: () => {
          const out = new Float32Array(count * numClasses);
          for (let i = 0; i < count; i++) {
            out[i * numClasses] = values[i * (values.length / count)];
            out[i * numClasses + 1] = temperatures[i];
          }
          resolve(out);
        },
        fail: reject,
      });
    });
  return { calls, forward };
}

/** Images of one value and two classes: with gatedForward, each answer row traces its request. */
const ONE_VALUE = { imageValues: 1, numClasses: 2 };

/** Submits one image of the single value `v` at temperature 1. */
const submitValue = (batcher: DynamicBatcher, v: number) =>
  batcher.submit(Float32Array.of(v), 1, { temperature: 1 });

/**
 * Submits a lone request of value `v` to a batcher whose maxWaitMs is 5, after `passes` passes: it is
 * not dispatched at once, but on its own once the wait runs out (queueMs >= 4).
 */
async function expectHeldForMaxWait(
  batcher: DynamicBatcher,
  calls: ReturnType<typeof gatedForward>['calls'],
  passes: number,
  v: number,
): Promise<void> {
  const lone = submitValue(batcher, v);
  expect(calls.length).toBe(passes);
  while (calls.length === passes) await new Promise((resolve) => setTimeout(resolve, 1));
  calls[passes].release();
  expect((await lone).queueMs).toBeGreaterThanOrEqual(4);
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

describe('DynamicBatcher', () => {
  it('answers concurrent requests with mixed sizes and temperatures exactly as one at a time (shipped ratio-cifar10)', async () => {
    const compute = new InProcessCompute(new Map([['ratio', shipped]]));
    const batches: number[] = [];
    const batcher = new DynamicBatcher(
      (values, count, temperatures) => compute.probabilities('ratio', values, count, temperatures),
      { imageValues: VALUES, numClasses: 10 },
      { maxBatchImages: 16 },
      { batch: (info) => batches.push(info.images) },
    );
    const requests = [1, 3, 1, 2, 5, 1, 4, 1, 1, 6, 2, 1].map((count, i) => ({
      count,
      pixels: images(count, i + 1),
      temperature: [1, 0.5, shipped.card.temperature, 2.5][i % 4],
    }));
    const before = tf.memory().numTensors;
    const answers = await Promise.all(
      requests.map((r) => batcher.submit(r.pixels, r.count, { temperature: r.temperature })),
    );
    expect(tf.memory().numTensors).toBe(before);
    // The first request went alone (the executor was free), the rest shared passes of <= 16 images.
    expect(batches[0]).toBe(1);
    expect(batches.length).toBeLessThan(requests.length);
    expect(Math.max(...batches)).toBeLessThanOrEqual(16);
    expect(batches.reduce((a, b) => a + b, 0)).toBe(28);
    for (const [i, r] of requests.entries()) {
      expect(answers[i].rows).toEqual(alone(shipped, r.pixels, r.count, r.temperature));
    }
  });

  it('keeps the tensor count flat over many batches, including a failing one', async () => {
    const compute = new InProcessCompute(new Map([['ratio', shipped]]));
    const batcher = new DynamicBatcher(
      (values, count, temperatures) => compute.probabilities('ratio', values, count, temperatures),
      { imageValues: VALUES, numClasses: 10 },
    );
    await batcher.submit(images(1, 9), 1, { temperature: 1 });
    const before = tf.memory().numTensors;
    for (let round = 0; round < 3; round++) {
      await Promise.all(
        Array.from({ length: 10 }, (_, i) => batcher.submit(images(2, i), 2, { temperature: 1 + i / 10 })),
      );
    }
    const wrongModel = new DynamicBatcher((v, n, t) => compute.probabilities('nope', v, n, t), {
      imageValues: VALUES,
      numClasses: 10,
    });
    await expect(wrongModel.submit(images(1, 1), 1, { temperature: 1 })).rejects.toThrow(
      /no model named 'nope'/,
    );
    expect(tf.memory().numTensors).toBe(before);
  });

  it('gathers requests while a pass runs, never splits a request, and hands each its own rows', async () => {
    const { calls, forward } = gatedForward();
    const batcher = new DynamicBatcher(forward, ONE_VALUE, { maxBatchImages: 4 });
    const submit = (first: number, count: number, temperature: number) =>
      batcher.submit(
        Float32Array.from({ length: count }, (_, i) => first + i),
        count,
        { temperature },
      );
    const a = submit(10, 1, 1);
    const b = submit(20, 2, 2);
    const c = submit(30, 1, 3);
    const d = submit(40, 2, 4); // does not fit beside b and c (2 + 1 + 2 > 4)
    const e = submit(50, 6, 5); // larger than a pass: alone
    expect(calls.map((call) => call.count)).toEqual([1]);
    expect(batcher.depth).toEqual({ queuedImages: 11, queuedRequests: 4, runningBatches: 1 });
    calls[0].release();
    expect((await a).rows).toEqual(Float32Array.from([10, 1]));
    await tick();
    expect(calls.map((call) => call.temperatures)).toEqual([[1], [2, 2, 3]]);
    calls[1].release();
    expect((await b).rows).toEqual(Float32Array.from([20, 2, 21, 2]));
    expect((await c).rows).toEqual(Float32Array.from([30, 3]));
    expect((await c).batchImages).toBe(3);
    await tick();
    calls[2].release();
    expect((await d).rows).toEqual(Float32Array.from([40, 4, 41, 4]));
    await tick();
    expect(calls[3].count).toBe(6);
    calls[3].release();
    expect((await e).rows).toEqual(Float32Array.from([50, 5, 51, 5, 52, 5, 53, 5, 54, 5, 55, 5]));
    expect(batcher.depth).toEqual({ queuedImages: 0, queuedRequests: 0, runningBatches: 0 });
  });

  it("waitFor 'full': waits up to maxWaitMs for company when idle, and leaves at once when a pass is full", async () => {
    const { calls, forward } = gatedForward();
    const batcher = new DynamicBatcher(forward, ONE_VALUE, {
      maxBatchImages: 3,
      maxWaitMs: 60_000,
      waitFor: 'full',
    });
    const answers = [1, 2, 3].map((v) => submitValue(batcher, v));
    expect(calls.map((call) => call.count)).toEqual([3]);
    calls[0].release();
    await Promise.all(answers);
    const quick = new DynamicBatcher(forward, ONE_VALUE, {
      maxBatchImages: 3,
      maxWaitMs: 5,
      waitFor: 'full',
    });
    await expectHeldForMaxWait(quick, calls, 1, 7);
  });

  it("waitFor 'last-pass' (default): a lone client leaves at once; after a pass of n requests the queue waits for n", async () => {
    const { calls, forward } = gatedForward();
    const batcher = new DynamicBatcher(forward, ONE_VALUE, { maxBatchImages: 8, maxWaitMs: 60_000 });
    expect(batcher.settings.waitFor).toBe('last-pass');
    const submit = (v: number) => submitValue(batcher, v);
    // Nothing before it: no company to expect, dispatched without waiting.
    const first = submit(1);
    expect(calls.map((call) => call.count)).toEqual([1]);
    const gathered = [submit(2), submit(3), submit(4)];
    calls[0].release();
    await first;
    // The previous pass held one request and three wait: they leave together at once.
    expect(calls.map((call) => call.count)).toEqual([1, 3]);
    calls[1].release();
    await Promise.all(gathered);
    // The last pass held three: two back is not yet the company, the third completes it.
    const next = [submit(5), submit(6)];
    expect(calls.length).toBe(2);
    next.push(submit(7));
    expect(calls.map((call) => call.count)).toEqual([1, 3, 3]);
    calls[2].release();
    expect((await Promise.all(next)).map((answer) => answer.rows[0])).toEqual([5, 6, 7]);
    // Fewer come back than last time: the queue leaves after maxWaitMs, not never.
    const hurried = new DynamicBatcher(forward, ONE_VALUE, { maxBatchImages: 8, maxWaitMs: 5 });
    const hurry = (v: number) => submitValue(hurried, v);
    const alone = hurry(1);
    const three = [hurry(2), hurry(3), hurry(4)];
    calls[3].release();
    await alone;
    calls[4].release();
    await Promise.all(three);
    expect([calls[3].count, calls[4].count]).toEqual([1, 3]);
    await expectHeldForMaxWait(hurried, calls, 5, 5);
  });

  it('refuses by images, not requests, when the queue is full, and counts the refusals', async () => {
    const { calls, forward } = gatedForward();
    const rejected: number[] = [];
    const batcher = new DynamicBatcher(
      forward,
      ONE_VALUE,
      { maxBatchImages: 8, maxQueuedImages: 4, retryAfterSeconds: 3 },
      { rejected: (info) => rejected.push(info.images) },
    );
    const running = submitValue(batcher, 1);
    const queued = batcher.submit(new Float32Array(2), 2, { temperature: 1 });
    let refusal: unknown;
    try {
      batcher.submit(new Float32Array(3), 3, { temperature: 1 });
    } catch (error) {
      refusal = error;
    }
    expect(refusal).toBeInstanceOf(QueueFullError);
    expect((refusal as QueueFullError).retryAfter).toBe(3);
    expect(rejected).toEqual([3]);
    const fits = batcher.submit(new Float32Array(2), 2, { temperature: 1 });
    expect(batcher.depth.queuedImages).toBe(4);
    calls[0].release();
    await running;
    await tick();
    calls[1].release();
    await Promise.all([queued, fits]);
  });

  it('drops a request whose signal aborts while queued, and fails only the requests of a failed pass', async () => {
    const { calls, forward } = gatedForward();
    const batcher = new DynamicBatcher(forward, ONE_VALUE);
    const first = submitValue(batcher, 1);
    const controller = new AbortController();
    const cancelled = batcher.submit(Float32Array.of(2), 1, { temperature: 1, signal: controller.signal });
    const kept = submitValue(batcher, 3);
    controller.abort(new DOMException('gone', 'TimeoutError'));
    await expect(cancelled).rejects.toThrow('gone');
    expect(batcher.depth.queuedImages).toBe(1);
    calls[0].fail(new Error('backend lost'));
    await expect(first).rejects.toThrow('backend lost');
    await tick();
    expect(calls[1].count).toBe(1);
    calls[1].release();
    expect((await kept).rows).toEqual(Float32Array.from([3, 1]));
  });

  it('rejects bad arguments and options by name', () => {
    const { forward } = gatedForward();
    expect(() => new DynamicBatcher(forward, ONE_VALUE, { maxBatchImages: 0 })).toThrow(
      /'maxBatchImages' must be an integer >= 1/,
    );
    expect(() => new DynamicBatcher(forward, ONE_VALUE, { waitFor: 'never' as 'full' })).toThrow(/'waitFor'/);
    expect(() => new DynamicBatcher(forward, ONE_VALUE, { maxWaitMs: -1 })).toThrow(/'maxWaitMs'/);
    const batcher = new DynamicBatcher(forward, { imageValues: 2, numClasses: 2 });
    expect(() => batcher.submit(new Float32Array(3), 1, { temperature: 1 })).toThrow(/expected 2 values/);
    expect(() => batcher.submit(new Float32Array(2), 1, { temperature: 0 })).toThrow(/'temperature'/);
  });
});
