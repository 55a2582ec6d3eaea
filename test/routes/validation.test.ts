import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../src/app.js';
import { functionClassifier } from '../../src/engine/model/classifier.js';
import { forwardFlops } from '../../src/engine/model/cost.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { AuditQueue } from '../../src/jobs/audit/registry.js';
import { colourModel } from '../helpers/colour-model.js';
import { cnn, graphFiles, insertResize } from '../helpers/graph-models.js';
import { auditForm, routeUploads } from '../helpers/uploads.js';

let files: Map<string, Uint8Array>;
let data: Uint8Array;
let png: string;

beforeAll(async () => {
  ({ files, data, png } = await routeUploads(8));
});

interface Problem {
  title: string;
  detail: string;
  errors?: Array<{ field: string; message: string }>;
}

async function problem(res: Response, status: number): Promise<Problem> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toBe('application/problem+json');
  return (await res.json()) as Problem;
}

const QUICK = { norm: 'L2', eps: '0.5', n: '4', iterations: '2', seed: '1' };
const app = (options: Parameters<typeof createApp>[0] = { models: new Map([['colour', colourModel()]]) }) =>
  createApp(options);
const postJson = (body: unknown) => ({
  method: 'POST',
  body: JSON.stringify(body),
  headers: { 'content-type': 'application/json' },
});

describe('numbers are decimal only, and empty parameters are errors', () => {
  it('predict query: ?threshold= and ?top_k=0x10 are 422 naming the parameter; 0.25 and 3 pass', async () => {
    const service = app();
    const body = postJson({ images: [png] });
    for (const [query, field] of [
      ['threshold=', 'threshold'],
      ['threshold=%20', 'threshold'],
      ['threshold=1e-1', 'threshold'],
      ['top_k=0x10', 'top_k'],
      ['top_k=2.0', 'top_k'],
      ['threshold=1.5', 'threshold'],
    ]) {
      const p = await problem(await service.request(`/v1/models/colour/predict?${query}`, body), 422);
      expect(p.errors?.[0].field).toBe(field);
    }
    const ok = await service.request('/v1/models/colour/predict?threshold=0.25&top_k=3', body);
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { threshold: number }).threshold).toBe(0.25);
  });

  it('audit form: n=0x10, eps=1e300, eps over 1 for Linf, and an empty seed are 422 naming the field', async () => {
    const service = app({ models: new Map(), audits: new AuditQueue({ maxQueued: 0, maxRunning: 0 + 1 }) });
    for (const [fields, field] of [
      [{ n: '0x10' }, 'n'],
      [{ n: '' }, 'n'],
      [{ seed: ' ' }, 'seed'],
      [{ eps: '1e300' }, 'eps'],
      [{ eps: '0' }, 'eps'],
      [{ norm: 'Linf', eps: '2' }, 'eps'],
      [{ eps: '1000' }, 'eps'],
    ] as const) {
      const res = await service.request('/v1/audits', {
        method: 'POST',
        body: auditForm(files, data, { ...QUICK, ...fields }),
      });
      expect((await problem(res, 422)).errors?.[0].field).toBe(field);
    }
  });

  it('OOD eps and counterfactual radii have upper bounds', async () => {
    const service = app();
    const ood = await problem(
      await service.request('/v1/models/colour/ood', postJson({ images: [png], eps: 1e300 })),
      422,
    );
    expect(ood.errors?.[0].field).toBe('eps');
    const cf = await problem(
      await service.request('/v1/models/colour/counterfactuals', postJson({ image: png, radii: [1e300] })),
      422,
    );
    expect(cf.errors?.[0].field).toBe('radii.0');
  });
});

describe('request cost estimates', () => {
  it('refuses 64 images x 1000 iterations x 10 restarts with 422 saying the limit, before any compute', async () => {
    const service = app({ models: new Map([['colour', colourModel()]]), limits: { maxRequestFlops: 1e6 } });
    const before = tf.memory().numTensors;
    const p = await problem(
      await service.request(
        '/v1/models/colour/ood',
        postJson({ images: Array(64).fill(png), iterations: 1000, restarts: 10 }),
      ),
      422,
    );
    expect(p.title).toBe('Request over the cost limit');
    expect(p.errors?.[0].field).toBe('images');
    // colourModel: 8x8x3 -> 3 classes, 2 x 192 x 3 = 1152 FLOPs a forward pass; x 3 per gradient step.
    expect(p.detail).toMatch(
      /about 2\.21e\+9 FLOPs \(64 images x 1000 iterations x 10 restarts x 1\.15e\+3 FLOPs a forward pass\), over the limit of 1\.00e\+6/,
    );
    expect(tf.memory().numTensors).toBe(before);
    const cheap = await service.request('/v1/models/colour/ood', postJson({ images: [png], iterations: 5 }));
    expect(cheap.status).toBe(200);
  });

  it('refuses an audit whose white-box attacks are over maxAuditFlops, naming n', async () => {
    const service = app({ models: new Map(), limits: { maxAuditFlops: 1e6 } });
    const res = await service.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, data, { ...QUICK, iterations: '100', queries: '10' }),
    });
    const p = await problem(res, 422);
    expect(p.errors?.[0].field).toBe('n');
    expect(p.detail).toMatch(/over the limit of 1\.00e\+6; lower 'n'/);
  });

  it("counts Square's queries: images x (white-box passes + queries) x model FLOPs, refused at submission over the limit", async () => {
    const classifier = await loadModelFromFiles(files);
    const forward = forwardFlops(classifier);
    classifier.dispose();
    // tiny: 10 classes, so standard at 2 iterations = 2 x (1 + 2 x 9) gradient steps x 3 = 114 passes.
    const limit = 4 * (114 + 1000) * forward;
    const never = () => new Promise<never>(() => {});
    const queue = new AuditQueue({ maxRunning: 1, maxQueued: 1, run: never });
    const service = app({ models: new Map(), audits: queue, limits: { maxAuditFlops: limit } });
    const over = await service.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, data, { ...QUICK, queries: '1001' }),
    });
    const p = await problem(over, 422);
    expect(p.title).toBe('Request over the cost limit');
    expect(p.errors?.[0].field).toBe('queries');
    expect(p.detail).toContain(
      `(4 images x (114 forward passes of the white-box attacks at 2 iterations + 1001 Square queries) x ${forward.toExponential(2)} FLOPs a forward pass), over the limit of ${limit.toExponential(2)}; lower 'queries'`,
    );
    const atLimit = await service.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, data, { ...QUICK, queries: '1000' }),
    });
    expect(atLimit.status).toBe(202);
    queue.cancel(((await atLimit.json()) as { id: string }).id);
  });
});

describe('graph model uploads sized before allocation', () => {
  it('an upsampling to 40000 x 40000 in an uploaded graph model is 422 naming the node, before tfjs', async () => {
    const graph = cnn();
    // relu -> ResizeBilinear to 40000 x 40000 (6.4e9 elements) -> pool.
    insertResize(graph, 'ResizeBilinear', [40_000, 40_000]);
    const uploaded = graphFiles(graph);
    uploaded.set('card.json', new TextEncoder().encode(JSON.stringify({ classNames: ['a', 'b', 'c'] })));
    const service = app({ models: new Map() });
    const before = tf.memory().numTensors;
    const res = await service.request('/v1/audits', {
      method: 'POST',
      body: auditForm(uploaded, data, QUICK),
    });
    const p = await problem(res, 422);
    expect(p.errors?.[0].field).toBe(`model.json:modelTopology.node[${graph.nodes.length - 1}]`);
    expect(p.detail).toMatch(
      /node 'resize' \(ResizeBilinear\): its output \[1,40000,40000,4\] for one image holds 6400000000 elements/,
    );
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('refused at submission, not later', () => {
  it('labels of -1 and 2^31 (wrapped) are 422 naming the image; a 1-class served model is 422', async () => {
    const service = app({
      models: new Map([
        [
          'one',
          functionClassifier({ inputShape: [32, 32, 3], numClasses: 1 }, (x) =>
            tf.tidy(() => x.reshape([x.shape[0], -1]).mean(1, true) as tf.Tensor2D),
          ),
        ],
      ]),
    });
    for (const label of [255, 200]) {
      const bad = data.slice();
      bad[3073 * 2] = label; // CIFAR label byte: 255 = unlabelled (-1), 200 = out of the 10 classes
      const res = await service.request('/v1/audits', { method: 'POST', body: auditForm(files, bad, QUICK) });
      const p = await problem(res, 422);
      expect(p.errors?.[0].field).toBe('dataset');
      expect(p.detail).toMatch(/image 2 has label (-1|200), outside the model's classes 0..9/);
    }
    const one = await service.request('/v1/audits', {
      method: 'POST',
      body: auditForm(undefined, data, { ...QUICK, model: 'one' }),
    });
    expect((await problem(one, 422)).detail).toMatch(/the model has 1 class; an audit needs at least 2/);
  });

  it("a model.json layer of class '__proto__' or 'constructor' is an unknown class", async () => {
    const service = app({ models: new Map() });
    for (const evil of ['__proto__', 'constructor', 'toString']) {
      const modelJson = JSON.parse(new TextDecoder().decode(files.get('model.json')));
      modelJson.modelTopology.config.layers[0].class_name = evil;
      const edited = new Map(files).set('model.json', new TextEncoder().encode(JSON.stringify(modelJson)));
      const res = await service.request('/v1/audits', {
        method: 'POST',
        body: auditForm(edited, data, QUICK),
      });
      expect((await problem(res, 422)).detail).toMatch(new RegExp(`unknown layer class '${evil}'`));
    }
  });

  it("a full audit queue answers 429 titled 'Audit queue full' with Retry-After", async () => {
    const never = () => new Promise<never>(() => {});
    const queue = new AuditQueue({ maxRunning: 1, maxQueued: 0, run: never });
    const service = app({ models: new Map(), audits: queue });
    const first = await service.request('/v1/audits', {
      method: 'POST',
      body: auditForm(files, data, QUICK),
    });
    expect(first.status).toBe(202);
    await new Promise((resolve) => setTimeout(resolve, 10));
    const res = await service.request('/v1/audits', { method: 'POST', body: auditForm(files, data, QUICK) });
    const p = await problem(res, 429);
    expect(p.title).toBe('Audit queue full');
    expect(res.headers.get('retry-after')).toBe('30');
    const id = ((await first.json()) as { id: string }).id;
    queue.cancel(id);
  });
});
