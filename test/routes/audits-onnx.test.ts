import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { loadOnnxClassifier } from '../../src/engine/model/onnx/index.js';
import type { AuditJob } from '../../src/jobs/audit/registry.js';
import { AuditQueue } from '../../src/jobs/audit/registry.js';
import { colourModel } from '../helpers/colour-model.js';
import { auditForm, cifarFileLabelledBy, tinyCifarModelFiles } from '../helpers/uploads.js';

/** The audit upload with a PyTorch ONNX export: one .onnx part (any name) and a card.json. */
const onnxBytes = new Uint8Array(readFileSync('test/fixtures/onnx/maxpool-view/model.onnx'));
const QUICK = { norm: 'L2', eps: '0.01', n: '4', iterations: '3', seed: '1' };

function setup() {
  const queue = new AuditQueue();
  return { app: createApp({ models: new Map([['colour', colourModel()]]), audits: queue }), queue };
}

describe('audits of uploaded ONNX models', () => {
  it('runs an audit of a .onnx upload to a result', async () => {
    const { app, queue } = setup();
    // Labels one class past the import's own predictions: every point is a clean error of exactly
    // this model (clean accuracy 0), so the audit is cheap and its numbers are known.
    const data = await cifarFileLabelledBy(await tinyCifarModelFiles(), 4);
    const pixels = new Float32Array(4 * 3072);
    for (let i = 0; i < 4; i++) {
      for (let p = 0; p < 1024; p++) {
        for (let c = 0; c < 3; c++) pixels[i * 3072 + p * 3 + c] = data[i * 3073 + 1 + c * 1024 + p] / 255;
      }
    }
    const imported = loadOnnxClassifier(onnxBytes);
    const predicted = tf.tidy(() =>
      imported
        .logits(tf.tensor4d(pixels, [4, 32, 32, 3]))
        .argMax(1)
        .dataSync(),
    );
    imported.dispose();
    for (let i = 0; i < 4; i++) data[i * 3073] = (predicted[i] + 1) % 10;
    const before = tf.memory().numTensors;
    const classNames = Array.from({ length: 10 }, (_, i) => `c${i}`);
    const files = new Map([
      ['resnet.onnx', onnxBytes],
      ['card.json', new TextEncoder().encode(JSON.stringify({ name: 'torch', classNames }))],
    ]);
    const res = await app.request('/v1/audits', { method: 'POST', body: auditForm(files, data, QUICK) });
    expect(res.status).toBe(202);
    const job = (await res.json()) as AuditJob;
    await queue.settled(job.id);
    const done = (await (await app.request(`/v1/audits/${job.id}`)).json()) as AuditJob;
    expect(done.state).toBe('succeeded');
    expect(done.result).toMatchObject({ n: 4, clean_accuracy: 0, robust_accuracy: 0 });
    expect(tf.memory().numTensors).toBe(before);
  });

  it('answers 422 naming the .onnx file when the importer refuses it', async () => {
    const { app } = setup();
    const data = await cifarFileLabelledBy(await tinyCifarModelFiles(), 4);
    const truncated = onnxBytes.slice(0, 1000);
    const res = await app.request('/v1/audits', {
      method: 'POST',
      body: auditForm(new Map([['net.onnx', truncated]]), data, QUICK),
    });
    expect(res.status).toBe(422);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    const problem = (await res.json()) as {
      detail?: string;
      errors?: Array<{ field: string; message: string }>;
    };
    expect(JSON.stringify(problem)).toContain('net.onnx');
    expect(JSON.stringify(problem)).toContain('OnnxFormatError');
  });
});
