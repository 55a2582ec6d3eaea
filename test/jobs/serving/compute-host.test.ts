import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readModelDir } from '../../../src/data/model-dir.js';
import { loadModelFromFiles } from '../../../src/engine/model/files.js';
import { InProcessCompute, UnknownModelError } from '../../../src/jobs/serving/compute.js';
import { ComputeWorkerError, WorkerCompute } from '../../../src/jobs/serving/compute-host.js';

const files = await readModelDir(path.resolve('models/ratio-cifar10'));
const local = new InProcessCompute(
  new Map([['ratio', await loadModelFromFiles(files, { card: { name: 'ratio' } })]]),
);
const VALUES = 32 * 32 * 3;

function images(count: number, seed: number): Float32Array {
  const out = new Float32Array(count * VALUES);
  let state = seed;
  for (let i = 0; i < out.length; i++) {
    state = (state * 1103515245 + 12345) >>> 0;
    out[i] = (state >>> 8) / 2 ** 24;
  }
  return out;
}

let worker: WorkerCompute;
beforeAll(async () => {
  worker = await WorkerCompute.start({ name: 'test', models: [{ name: 'ratio', files }] });
});
afterAll(async () => {
  await worker.close();
});

describe('WorkerCompute (a worker thread with its own backend)', () => {
  it('loads the models and answers probabilities bit for bit as this thread does', async () => {
    expect(worker.info.models).toEqual(['ratio']);
    const temperatures = Float32Array.of(1, 0.7, 2, 1.3);
    const expected = await local.probabilities('ratio', images(4, 1), 4, temperatures);
    const got = await worker.probabilities('ratio', images(4, 1), 4, temperatures);
    expect(got).toEqual(expected);
  });

  it('answers the raw logits bit for bit as this thread does', async () => {
    const expected = await local.logits('ratio', images(3, 5), 3);
    expect(expected).toHaveLength(30);
    expect(await worker.logits('ratio', images(3, 5), 3)).toEqual(expected);
  });

  it('runs worst-case OOD and counterfactuals with the same seeded results as this thread', async () => {
    const request = { eps: 0.5, iterations: 3, restarts: 1, seed: 4 };
    const expected = await local.worstCase('ratio', images(2, 2), 2, request);
    expect(await worker.worstCase('ratio', images(2, 2), 2, request)).toEqual(expected);
    const cf = { targets: Int32Array.of(1, 5), radii: [0.5, 1], iterations: 2, seed: 1 };
    const pair = images(1, 3);
    const tiled = new Float32Array(2 * VALUES);
    tiled.set(pair, 0);
    tiled.set(pair, VALUES);
    const expectedCf = await local.counterfactuals('ratio', tiled.slice(), 2, cf);
    expect(await worker.counterfactuals('ratio', tiled, 2, cf)).toEqual(expectedCf);
  });

  it('keeps this event loop free during a long counterfactual, and stops it on abort', async () => {
    const delay = monitorEventLoopDelay({ resolution: 5 });
    delay.enable();
    const controller = new AbortController();
    const long = worker.counterfactuals(
      'ratio',
      images(2, 4),
      2,
      { targets: Int32Array.of(2, 3), radii: [0.5, 1, 2], iterations: 1000, seed: 0 },
      controller.signal,
    );
    // While it runs, the worker still answers (after it) and this thread stays responsive.
    await new Promise((resolve) => setTimeout(resolve, 400));
    controller.abort(new DOMException('deadline', 'TimeoutError'));
    await expect(long).rejects.toMatchObject({ name: 'TimeoutError' });
    delay.disable();
    // A generous bound: the main thread only posted messages.
    expect(delay.percentile(90) / 1e6).toBeLessThan(50);
    // The worker stopped the attack (checked between iterations) and is free again.
    const started = performance.now();
    await worker.probabilities('ratio', images(1, 5), 1, Float32Array.of(1));
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('turns worker-side errors back into typed errors', async () => {
    await expect(worker.probabilities('nope', images(1, 1), 1, Float32Array.of(1))).rejects.toBeInstanceOf(
      UnknownModelError,
    );
    await expect(
      worker.probabilities('ratio', new Float32Array(5), 1, Float32Array.of(1)),
    ).rejects.toBeInstanceOf(RangeError);
  });

  it('starts a fresh worker on the next request after the thread died; the requests it held fail typed', async () => {
    const held = worker.worstCase('ratio', images(1, 6), 1, {
      eps: 0.5,
      iterations: 1000,
      restarts: 1,
      seed: 0,
    });
    await (worker as unknown as { worker: Worker }).worker.terminate();
    await expect(held).rejects.toBeInstanceOf(ComputeWorkerError);
    const expected = await local.probabilities('ratio', images(2, 7), 2, Float32Array.of(1, 1));
    expect(await worker.probabilities('ratio', images(2, 7), 2, Float32Array.of(1, 1))).toEqual(expected);
    expect(worker.restarts).toBe(1);
  });

  it('refuses to start on a broken model, and refuses calls after close', async () => {
    const broken = new Map(files);
    broken.set('model.json', new TextEncoder().encode('{'));
    await expect(WorkerCompute.start({ models: [{ name: 'broken', files: broken }] })).rejects.toMatchObject({
      name: 'ComputeWorkerError',
      remoteName: 'ModelFileError',
    });
    const short = await WorkerCompute.start({ models: [] });
    await short.close();
    await expect(short.probabilities('ratio', images(1, 1), 1, Float32Array.of(1))).rejects.toBeInstanceOf(
      ComputeWorkerError,
    );
  });
});
