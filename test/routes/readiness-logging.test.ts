import { Writable } from 'node:stream';
import * as tf from '@tensorflow/tfjs';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createApp } from '../../src/app.js';
import { backendInfo } from '../../src/engine/backend/backend.js';
import { type Classifier, functionClassifier } from '../../src/engine/model/classifier.js';
import { AuditQueue } from '../../src/jobs/audit/registry.js';
import { colourModel, SHAPE } from '../helpers/colour-model.js';
import { auditForm, cifarFileLabelledBy, tinyCifarModelFiles } from '../helpers/uploads.js';

/** A model that works until `broken.now` is set, then throws as a backend out of memory does. */
function breakableModel(broken: { now: boolean }): Classifier {
  return functionClassifier({ name: 'breakable', inputShape: SHAPE, numClasses: 3 }, (x) => {
    if (broken.now) throw new Error('memory access out of bounds');
    return tf.tidy(() => tf.mean(x, [1, 2]) as tf.Tensor2D);
  });
}

function logSink() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, logger: pino({ level: 'info' }, sink) };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('/health/ready runs a trial inference', () => {
  it('turns 503 "failing", naming the model, when inference starts failing; back to 200 when it works', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const broken = { now: false };
    const app = createApp({
      models: new Map([
        ['colour', colourModel()],
        ['breakable', breakableModel(broken)],
      ]),
      backend: backendInfo,
    });
    const before = tf.memory().numTensors;
    expect((await app.request('/health/ready')).status).toBe(200);
    broken.now = true;
    // Cached for 5 s: a probe storm costs nothing.
    expect((await app.request('/health/ready')).status).toBe(200);
    vi.setSystemTime(Date.now() + 6_000);
    const failing = await app.request('/health/ready');
    expect(failing.status).toBe(503);
    const body = (await failing.json()) as {
      status: string;
      failing: Array<{ model: string; error: string }>;
    };
    expect(body.status).toBe('failing');
    expect(body.failing).toEqual([{ model: 'breakable', error: 'memory access out of bounds' }]);
    broken.now = false;
    vi.setSystemTime(Date.now() + 6_000);
    expect((await app.request('/health/ready')).status).toBe(200);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('audit ends are logged with the job id', () => {
  it('failures as warnings with the error, cancellations and shutdown aborts as info with the reason', async () => {
    const files = await tinyCifarModelFiles();
    const data = await cifarFileLabelledBy(files, 4);
    const { lines, logger } = logSink();
    let calls = 0;
    const run = ((_c: unknown, _x: unknown, _y: unknown, options: { signal?: AbortSignal }) => {
      calls += 1;
      if (calls === 1) return Promise.reject(new Error('the attack diverged'));
      return new Promise((_, reject) => {
        options.signal?.addEventListener('abort', () => reject(options.signal?.reason));
      });
    }) as never;
    const app = createApp({ models: new Map(), logger, audits: { run, maxRunning: 1, maxQueued: 4 } });
    const form = () => auditForm(files, data, { norm: 'L2', eps: '0.5', n: '4', iterations: '2' });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await app.request('/v1/audits', { method: 'POST', body: form() });
      expect(res.status).toBe(202);
      ids.push(((await res.json()) as { id: string }).id);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    // ids[0] failed; ids[1] is running, ids[2] queued: cancel the queued one.
    expect((await app.request(`/v1/audits/${ids[2]}`, { method: 'DELETE' })).status).toBe(200);
    const res = await app.request(`/v1/audits/${ids[1]}`);
    expect(((await res.json()) as { state: string }).state).toBe('running');
    const ends = () =>
      lines.filter((l) => typeof l.msg === 'string' && (l.msg as string).startsWith('audit '));
    expect(ends().find((l) => l.job_id === ids[0])).toMatchObject({
      level: 40,
      msg: 'audit failed',
      error: 'the attack diverged',
    });
    expect(ends().find((l) => l.job_id === ids[2])).toMatchObject({
      level: 30,
      msg: 'audit cancelled',
      reason: 'cancelled before it started',
    });
  });

  it('a shutdown abort names the shutdown', async () => {
    const { lines, logger } = logSink();
    const run = ((_c: unknown, _x: unknown, _y: unknown, options: { signal?: AbortSignal }) =>
      new Promise((_, reject) => {
        options.signal?.addEventListener('abort', () => reject(options.signal?.reason));
      })) as never;
    const { logAuditEnd } = await import('../../src/app.js');
    const queue = new AuditQueue({ run, onFinished: logAuditEnd(logger) });
    const files = await tinyCifarModelFiles();
    const data = await cifarFileLabelledBy(files, 4);
    const app = createApp({ models: new Map(), audits: queue });
    const res = await app.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, data, { norm: 'L2', eps: '0.5', n: '4', iterations: '2' }),
    });
    const id = ((await res.json()) as { id: string }).id;
    await new Promise((resolve) => setTimeout(resolve, 20));
    await queue.drain({ abortRunning: true, timeoutMs: 1000 });
    expect(lines.find((l) => l.job_id === id)).toMatchObject({
      msg: 'audit cancelled',
      reason: 'aborted at shutdown while running',
    });
  });
});
