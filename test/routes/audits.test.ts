import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import type { AuditJob } from '../../src/jobs/audit/registry.js';
import { AuditQueue } from '../../src/jobs/audit/registry.js';
import { colourModel } from '../helpers/colour-model.js';
import { auditForm, cifarFileLabelledBy, tinyCifarModelFiles } from '../helpers/uploads.js';

let files: Map<string, Uint8Array>;
let data: Uint8Array;

beforeAll(async () => {
  files = await tinyCifarModelFiles();
  data = await cifarFileLabelledBy(files, 64);
});

const QUICK = { norm: 'L2', eps: '0.5', n: '6', iterations: '5', seed: '1' };

/** The app with the colour model served, its queue, and a POST of an audit form to /v1/audits. */
function setup(queue = new AuditQueue()) {
  const app = createApp({ models: new Map([['colour', colourModel()]]), audits: queue });
  const post = (form: FormData) => app.request('/v1/audits', { method: 'POST', body: form });
  return { app, queue, post };
}

async function problemField(res: Response, status: number): Promise<string | undefined> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toBe('application/problem+json');
  return ((await res.json()) as { errors?: Array<{ field: string }> }).errors?.[0]?.field;
}

/** Reads an SSE body to its end, returning the events as [name, parsed data]. */
async function readEvents(res: Response): Promise<Array<[string, AuditJob]>> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((block) => block.includes('data:'))
    .map((block) => {
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = /^data: (.*)$/m.exec(block)?.[1] ?? '{}';
      return [event, JSON.parse(data) as AuditJob];
    });
}

describe('audits', () => {
  it('runs an uploaded model from 202 + Location to a result on GET and over SSE', async () => {
    const { app, queue, post } = setup();
    const before = tf.memory().numTensors;
    const res = await post(auditForm(files, data, QUICK));
    expect(res.status).toBe(202);
    const job = (await res.json()) as AuditJob;
    expect(res.headers.get('location')).toBe(`/v1/audits/${job.id}`);
    expect(job.parameters).toMatchObject({
      model: 'upload',
      norm: 'L2',
      eps: 0.5,
      n: 6,
      version: 'standard',
      seed: 1,
    });
    const events = await readEvents(await app.request(`/v1/audits/${job.id}/events`));
    const [lastName, last] = events[events.length - 1];
    expect(lastName).toBe('result');
    expect(last.state).toBe('succeeded');
    expect(events.some(([name]) => name === 'progress')).toBe(true);
    const result = last.result as {
      n: number;
      clean_accuracy: number;
      robust_accuracy: number;
      per_attack: unknown[];
    };
    expect(result.n).toBe(6);
    expect(result.clean_accuracy).toBe(1); // labels are the model's own predictions
    expect(result.robust_accuracy).toBeGreaterThanOrEqual(0);
    expect(result.robust_accuracy).toBeLessThanOrEqual(1);
    const fetched = (await (await app.request(`/v1/audits/${job.id}`)).json()) as AuditJob;
    expect(fetched.result).toEqual(last.result);
    // The SSE of a finished audit is its result at once.
    const replay = await readEvents(await app.request(`/v1/audits/${job.id}/events`));
    expect(replay.map(([name]) => name)).toEqual(['result']);
    await queue.settled(job.id);
    expect(tf.memory().numTensors).toBe(before); // the uploaded model was disposed
  });

  it('cancels a running audit with DELETE', async () => {
    const { app, queue, post } = setup();
    const res = await post(auditForm(files, data, { ...QUICK, n: '64', iterations: '5000' }));
    const job = (await res.json()) as AuditJob;
    await new Promise<void>((resolve) => {
      const stop = queue.subscribe(job.id, (event) => {
        if (event.type === 'progress') {
          stop?.();
          resolve();
        }
      });
    });
    const cancelled = await app.request(`/v1/audits/${job.id}`, { method: 'DELETE' });
    expect(cancelled.status).toBe(200);
    const settled = await queue.settled(job.id);
    expect(settled?.state).toBe('cancelled');
    expect(((await (await app.request(`/v1/audits/${job.id}`)).json()) as AuditJob).state).toBe('cancelled');
  });

  it('audits a served model by name', async () => {
    const { queue, post } = setup();
    // The colour model takes 8x8 images: a CIFAR data set does not fit it.
    expect(
      await problemField(await post(auditForm(undefined, data, { ...QUICK, model: 'colour' })), 422),
    ).toBe('dataset');
    expect(await problemField(await post(auditForm(undefined, data, { ...QUICK, model: 'nope' })), 404)).toBe(
      'model',
    );
    expect(queue.depth).toEqual({ running: 0, queued: 0 });
  });

  it('refuses bad parameters and hostile uploads with 4xx naming the field, never crashing', async () => {
    const { app, post } = setup();
    expect(await problemField(await post(auditForm(files, data, { ...QUICK, norm: 'L1' })), 422)).toBe(
      'norm',
    );
    expect(await problemField(await post(auditForm(files, data, { ...QUICK, eps: 'NaN' })), 422)).toBe('eps');
    expect(await problemField(await post(auditForm(files, data, { ...QUICK, n: '2.5' })), 422)).toBe('n');
    expect(await problemField(await post(auditForm(files, undefined, QUICK)), 422)).toBe('dataset');
    expect(await problemField(await post(auditForm(files, data.subarray(0, 1000), QUICK)), 422)).toBe(
      'dataset',
    );
    expect(await problemField(await post(auditForm(undefined, data, QUICK)), 422)).toBe('model_files');

    const modelJson = JSON.parse(new TextDecoder().decode(files.get('model.json'))) as {
      weightsManifest: Array<{ paths: string[]; weights: Array<{ shape: number[] }> }>;
    };
    const leaving = structuredClone(modelJson);
    leaving.weightsManifest[0].paths = ['../../etc/passwd'];
    const hostile = new Map(files).set('model.json', new TextEncoder().encode(JSON.stringify(leaving)));
    expect(await problemField(await post(auditForm(hostile, data, QUICK)), 422)).toMatch(
      /^model\.json:weightsManifest/,
    );
    const giant = structuredClone(modelJson);
    giant.weightsManifest[0].weights[0].shape = [1e6, 1e6];
    const declaresTerabytes = new Map(files).set(
      'model.json',
      new TextEncoder().encode(JSON.stringify(giant)),
    );
    // Over the service's model size limit (RATIO_MAX_MODEL_BYTES): 413, before any byte is allocated.
    expect(await problemField(await post(auditForm(declaresTerabytes, data, QUICK)), 413)).toMatch(
      /^model\.json/,
    );
    const shard = [...files.keys()].find((k) => k.endsWith('.bin'))!;
    const truncated = new Map(files).set(shard, files.get(shard)!.subarray(0, 100));
    expect(await problemField(await post(auditForm(truncated, data, QUICK)), 422)).toContain(shard);
    const notJson = new Map(files).set('model.json', new TextEncoder().encode('{"modelTopology": '));
    expect(await problemField(await post(auditForm(notJson, data, QUICK)), 422)).toBe('model.json');

    const json = await app.request('/v1/audits', {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expect(await problemField(json, 415)).toBe('content-type');
  });

  it('parses the multipart form with its schema: each refusal names its part, nothing is queued', async () => {
    const { queue, post } = setup();
    const fields = async (form: FormData) => {
      const res = await post(form);
      expect(res.status).toBe(422);
      return ((await res.json()) as { errors: Array<{ field: string; message: string }> }).errors[0];
    };
    expect(await fields(auditForm(files, data, { ...QUICK, version: 'fast' }))).toEqual({
      field: 'version',
      message: "'version' must be standard, plus, rand, got 'fast'",
    });
    expect(await fields(auditForm(files, data, { ...QUICK, seed: '-1' }))).toEqual({
      field: 'seed',
      message: "'seed' must be a decimal integer in [0, 4294967295], got '-1'",
    });
    expect((await fields(auditForm(files, data, { ...QUICK, model: 'colour' }))).field).toBe('model');
    const textPart = auditForm(undefined, data, QUICK);
    textPart.append('model_files', 'not a file');
    expect(await fields(textPart)).toEqual({
      field: 'model_files.0',
      message: "'model_files.0' must be a file part",
    });
    const textLabels = auditForm(files, data, QUICK);
    textLabels.append('labels', 'zero');
    expect((await fields(textLabels)).field).toBe('labels');
    expect(queue.depth).toEqual({ running: 0, queued: 0 });
  });

  it('answers 429 with Retry-After when the audit queue is full and 503 while draining', async () => {
    const queue = new AuditQueue({ maxRunning: 1, maxQueued: 0 });
    const { post } = setup(queue);
    const long = await post(auditForm(files, data, { ...QUICK, n: '64', iterations: '5000' }));
    expect(long.status).toBe(202);
    const { id } = (await long.json()) as AuditJob;
    await new Promise((resolve) => setTimeout(resolve, 20)); // let it start
    const refused = await post(auditForm(files, data, QUICK));
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    const draining = queue.drain({ abortRunning: true, timeoutMs: 30_000 });
    const late = await post(auditForm(files, data, QUICK));
    expect(late.status).toBe(503);
    expect(late.headers.get('retry-after')).not.toBeNull();
    await draining;
    expect(queue.get(id)?.state).toBe('cancelled');
  });

  it('answers 404 for unknown audit ids on GET, events and DELETE', async () => {
    const { app } = setup();
    expect(await problemField(await app.request('/v1/audits/nope'), 404)).toBe('id');
    expect(await problemField(await app.request('/v1/audits/nope/events'), 404)).toBe('id');
    expect(await problemField(await app.request('/v1/audits/nope', { method: 'DELETE' }), 404)).toBe('id');
  });
});
