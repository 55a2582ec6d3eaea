import { readFile } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { zipSync } from 'fflate';
import sharp from 'sharp';
import { expect } from 'vitest';
import { createApp } from '../../src/app.js';
import { readModelDir } from '../../src/data/model-dir.js';
import { backendInfo } from '../../src/engine/backend/backend.js';
import { loadModelFromFiles } from '../../src/engine/model/files.js';
import { AuditQueue } from '../../src/jobs/audit/registry.js';
import type { ServiceApp } from '../../src/routes/context.js';
import { CIFAR_TEST_FILE } from '../helpers/data.js';

/**
 * Property-based fuzzing of every route of the in-process app (fast-check): random and mutated
 * bodies, images, model.json files (every numeric attribute of the shipped models' layers and
 * manifests), zip entries and query strings. The property: every answer is a 2xx, or a 4xx
 * problem+json whose `status` is the HTTP status; never a 5xx. Afterwards the process must be
 * healthy, the tensor count back where it was and RSS bounded (checked by the callers).
 */

const RECORD = 3073;
const MODEL = 'ratio-cifar10';

export interface FuzzFixtures {
  modelFiles: Map<string, Map<string, Uint8Array>>;
  png: Uint8Array;
  jpeg: Uint8Array;
  cifar: Uint8Array;
  zipPngs: Uint8Array[];
}

export interface FuzzStats {
  cases: Record<string, number>;
  statuses: Record<string, number>;
  faults: Record<string, number>;
}

export async function loadFuzzFixtures(): Promise<FuzzFixtures> {
  const modelFiles = new Map<string, Map<string, Uint8Array>>();
  for (const name of ['ratio-cifar10', 'plain-cifar10'])
    modelFiles.set(name, await readModelDir(`models/${name}`));
  const cifarAll = new Uint8Array(await readFile(CIFAR_TEST_FILE));
  const cifar = cifarAll.slice(0, 8 * RECORD);
  const pixels = Buffer.alloc(32 * 32 * 3);
  for (let p = 0; p < 1024; p++) for (let c = 0; c < 3; c++) pixels[p * 3 + c] = cifar[1 + c * 1024 + p];
  const raw = { raw: { width: 32, height: 32, channels: 3 as const } };
  const png = new Uint8Array(await sharp(pixels, raw).png().toBuffer());
  const jpeg = new Uint8Array(await sharp(pixels, raw).jpeg().toBuffer());
  const zipPngs: Uint8Array[] = [];
  for (let i = 0; i < 4; i++) {
    const image = Buffer.alloc(32 * 32 * 3);
    for (let p = 0; p < 1024; p++)
      for (let c = 0; c < 3; c++) image[p * 3 + c] = cifar[i * RECORD + 1 + c * 1024 + p];
    zipPngs.push(new Uint8Array(await sharp(image, raw).png().toBuffer()));
  }
  return { modelFiles, png, jpeg, cifar, zipPngs };
}

/** The app under fuzz: the real shipped model, small compute budgets so valid requests stay cheap. */
export async function fuzzApp(
  fixtures: FuzzFixtures,
): Promise<{ app: ServiceApp; audits: AuditQueue; dispose: () => void }> {
  const model = await loadModelFromFiles(fixtures.modelFiles.get(MODEL)!, { card: { name: MODEL } });
  const audits = new AuditQueue({ maxRunning: 1, maxQueued: 2 });
  const app = createApp({
    models: new Map([[MODEL, model]]),
    audits,
    backend: backendInfo,
    limits: { maxIterations: 3, maxRequestFlops: 5e9, maxAuditFlops: 2e10 },
    compute: { maxRunning: 1, maxWaiting: 64 },
  });
  return { app, audits, dispose: () => model.dispose() };
}

// ---------------------------------------------------------------- mutations

const byteFlips = (bytes: Uint8Array) =>
  fc
    .array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 })
    .map((flips) => {
      const out = bytes.slice();
      for (const [at, value] of flips) out[at % out.length] = value;
      return out;
    });

/** A PNG with its IHDR width and height (bytes 16..23) replaced. */
const pngDims = (bytes: Uint8Array) =>
  fc
    .tuple(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }))
    .map(([w, h]) => {
      const out = bytes.slice();
      new DataView(out.buffer).setUint32(16, w);
      new DataView(out.buffer).setUint32(20, h);
      return out;
    });

/** Valid, truncated, flipped, re-dimensioned or random image bytes; the label says which fault. */
export function imageBytes(f: FuzzFixtures): fc.Arbitrary<{ fault: string; bytes: Uint8Array }> {
  return fc.oneof(
    { arbitrary: fc.constant({ fault: 'valid-png', bytes: f.png }), weight: 6 },
    { arbitrary: fc.constant({ fault: 'valid-jpeg', bytes: f.jpeg }), weight: 3 },
    fc.nat({ max: f.png.length - 1 }).map((n) => ({ fault: 'truncated-image', bytes: f.png.slice(0, n) })),
    byteFlips(f.png).map((bytes) => ({ fault: 'flipped-image-bytes', bytes })),
    byteFlips(f.jpeg).map((bytes) => ({ fault: 'flipped-image-bytes', bytes })),
    pngDims(f.png).map((bytes) => ({ fault: 'image-header-dims', bytes })),
    fc.uint8Array({ maxLength: 256 }).map((bytes) => ({ fault: 'random-bytes', bytes })),
  );
}

/** Strings a number parser meets in the wild. */
const numberText = fc.oneof(
  fc.constantFrom(
    '',
    ' ',
    '0x10',
    '1e3',
    '1e300',
    '-1',
    'NaN',
    'Infinity',
    '0',
    '1',
    '2.5',
    '007',
    '3 ',
    '.5',
    '-0',
  ),
  fc.integer({ min: -5, max: 20_000 }).map(String),
  fc.double({ noNaN: false }).map(String),
  fc.string({ maxLength: 6 }),
);

/** JSON values of every kind, for fields that expect something else. */
const anyJson = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1e300, -1e300, 2 ** 31, 2 ** 53, 0.5, '', '__proto__', [], {}),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.string({ maxLength: 12 }),
);

const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined, freq: 2 });

/** Mostly a valid value, sometimes a hostile one: faults one or two at a time reach deep code. */
const mostly = <T, U>(valid: fc.Arbitrary<T>, hostile: fc.Arbitrary<U>) =>
  fc.oneof({ arbitrary: valid, weight: 5 }, { arbitrary: hostile, weight: 1 });

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

export interface FuzzCase {
  route: string;
  faults: string[];
  request: () => { path: string; init: RequestInit };
}

function jsonInit(body: unknown, contentType = 'application/json'): RequestInit {
  return {
    method: 'POST',
    body: typeof body === 'string' ? body : JSON.stringify(body),
    headers: { 'content-type': contentType },
  };
}

function predictCase(f: FuzzFixtures): fc.Arbitrary<FuzzCase> {
  const query = fc.record({
    threshold: maybe(mostly(fc.constantFrom('0.5', '0', '1', '0.25'), numberText)),
    top_k: maybe(mostly(fc.constantFrom('1', '3', '10'), numberText)),
  });
  return fc
    .tuple(
      fc.array(imageBytes(f), { minLength: 0, maxLength: 4 }),
      query,
      mostly(fc.constantFrom('json', 'png', 'multipart'), fc.constantFrom('broken-json', 'wrong-type')),
    )
    .map(([images, q, kind]) => ({
      route: 'POST /v1/models/{model}/predict',
      faults: [
        ...images.map((i) => i.fault),
        ...(q.threshold !== undefined || q.top_k !== undefined ? ['query'] : []),
        kind,
      ],
      request: () => {
        const params = new URLSearchParams();
        if (q.threshold !== undefined) params.set('threshold', q.threshold);
        if (q.top_k !== undefined) params.set('top_k', q.top_k);
        const path = `/v1/models/${MODEL}/predict${params.size > 0 ? `?${params}` : ''}`;
        if (kind === 'json') return { path, init: jsonInit({ images: images.map((i) => b64(i.bytes)) }) };
        if (kind === 'png') {
          const body = images[0]?.bytes ?? new Uint8Array(0);
          return {
            path,
            init: { method: 'POST', body: new Uint8Array(body), headers: { 'content-type': 'image/png' } },
          };
        }
        if (kind === 'multipart') {
          const form = new FormData();
          for (const image of images) form.append('image', new Blob([new Uint8Array(image.bytes)]), 'x.png');
          return { path, init: { method: 'POST', body: form } };
        }
        if (kind === 'broken-json') return { path, init: jsonInit('{"images": [') };
        return { path, init: jsonInit('images', 'text/plain') };
      },
    }));
}

function oodCase(f: FuzzFixtures): fc.Arbitrary<FuzzCase> {
  return fc
    .tuple(
      fc.array(imageBytes(f), { minLength: 0, maxLength: 3 }),
      fc.record(
        {
          eps: mostly(fc.double({ min: 0, max: 200, noNaN: true }), anyJson),
          iterations: mostly(fc.integer({ min: 0, max: 5 }), anyJson),
          restarts: mostly(fc.integer({ min: 0, max: 12 }), anyJson),
          seed: mostly(fc.integer({ min: 0, max: 2 ** 32 }), anyJson),
          threshold: mostly(fc.double({ min: 0, max: 1, noNaN: true }), anyJson),
          extra: anyJson,
        },
        { requiredKeys: [] },
      ),
    )
    .map(([images, fields]) => ({
      route: 'POST /v1/models/{model}/ood',
      faults: [...images.map((i) => i.fault), ...Object.keys(fields).map((k) => `ood-${k}`)],
      request: () => ({
        path: `/v1/models/${MODEL}/ood`,
        init: jsonInit({ images: images.map((i) => b64(i.bytes)), ...fields }),
      }),
    }));
}

function counterfactualCase(f: FuzzFixtures): fc.Arbitrary<FuzzCase> {
  return fc
    .tuple(
      imageBytes(f),
      fc.record(
        {
          targets: mostly(
            fc.array(
              fc.oneof(
                fc.constantFrom('cat', 'dog', '__proto__', 'constructor', 'toString', -1, 10, 2 ** 31),
                fc.integer({ min: 0, max: 9 }),
              ),
              {
                maxLength: 3,
              },
            ),
            anyJson,
          ),
          radii: fc.oneof(
            fc.array(fc.oneof(anyJson, fc.double({ min: 0.01, max: 3, noNaN: true })), { maxLength: 3 }),
            anyJson,
          ),
          iterations: fc.oneof(anyJson, fc.integer({ min: 0, max: 4 })),
          seed: anyJson,
        },
        { requiredKeys: [] },
      ),
      fc.boolean(),
    )
    .map(([image, fields, png]) => ({
      route: 'POST /v1/models/{model}/counterfactuals',
      faults: [image.fault, ...Object.keys(fields).map((k) => `cf-${k}`)],
      request: () => {
        const init = jsonInit({ image: b64(image.bytes), ...fields });
        if (png) (init.headers as Record<string, string>).accept = 'image/png';
        return { path: `/v1/models/${MODEL}/counterfactuals`, init };
      },
    }));
}

type Json = Record<string, unknown>;

/** Paths to every number (or array of numbers) inside the layer configs and the manifest shapes. */
function numericPaths(modelJson: Json): Array<Array<string | number>> {
  const paths: Array<Array<string | number>> = [];
  const walk = (value: unknown, at: Array<string | number>) => {
    if (typeof value === 'number') paths.push(at);
    else if (Array.isArray(value)) {
      for (const [i, v] of value.entries()) walk(v, [...at, i]);
    } else if (value && typeof value === 'object')
      for (const [k, v] of Object.entries(value)) walk(v, [...at, k]);
  };
  walk((modelJson.modelTopology as Json).config, ['modelTopology', 'config']);
  walk(modelJson.weightsManifest, ['weightsManifest']);
  return paths;
}

function setAt(root: Json, at: Array<string | number>, value: unknown): void {
  let node = root as Record<string | number, unknown>;
  for (const key of at.slice(0, -1)) node = node[key] as Record<string | number, unknown>;
  node[at[at.length - 1]] = value;
}

/** model.json of a shipped model with 1-3 numeric attributes replaced by hostile values. */
function mutatedModel(f: FuzzFixtures): fc.Arbitrary<{ fault: string; files: Map<string, Uint8Array> }> {
  const names = [...f.modelFiles.keys()];
  const parsed = new Map(
    names.map((n) => [
      n,
      JSON.parse(new TextDecoder().decode(f.modelFiles.get(n)!.get('model.json'))) as Json,
    ]),
  );
  const hostile = fc.oneof(
    fc.constantFrom(
      0,
      -1,
      1,
      2,
      3,
      7,
      64,
      400,
      3000,
      65_536,
      2 ** 31,
      1e9,
      1.5,
      null,
      'same',
      [3000, 3000],
      [400, 400],
      [0, 0],
    ),
    fc.integer({ min: -10, max: 5000 }),
  );
  return fc
    .tuple(
      fc.constantFrom(...names),
      fc.array(fc.tuple(fc.nat(), hostile), { minLength: 1, maxLength: 3 }),
      fc.boolean(),
    )
    .map(([name, edits, dropCard]) => {
      const modelJson = structuredClone(parsed.get(name)!);
      const paths = numericPaths(modelJson);
      const edited: string[] = [];
      for (const [index, value] of edits) {
        const at = paths[index % paths.length];
        setAt(modelJson, at, value);
        edited.push(String(at[at.length - 1]));
      }
      const files = new Map(f.modelFiles.get(name)!);
      files.set('model.json', new TextEncoder().encode(JSON.stringify(modelJson)));
      if (dropCard) files.delete('card.json');
      return { fault: `model.json:${edited.join('+')}`, files };
    });
}

/** A data set: the CIFAR bytes (maybe flipped or truncated) or a zip of PNGs (maybe mutated entries). */
function dataset(f: FuzzFixtures): fc.Arbitrary<{ fault: string; bytes: Uint8Array; name: string }> {
  return fc.oneof(
    { arbitrary: fc.constant({ fault: 'valid-cifar', bytes: f.cifar, name: 'test_batch.bin' }), weight: 6 },
    byteFlips(f.cifar).map((bytes) => ({ fault: 'cifar-labels-or-pixels', bytes, name: 'test_batch.bin' })),
    fc
      .nat({ max: f.cifar.length })
      .map((n) => ({ fault: 'cifar-truncated', bytes: f.cifar.slice(0, n), name: 'test_batch.bin' })),
    fc
      .array(fc.tuple(fc.constantFrom('a', 'b', '..', '__MACOSX', 'a/b'), imageBytes(f)), {
        minLength: 0,
        maxLength: 4,
      })
      .map((entries) => ({
        fault: `zip:${entries.map(([, e]) => e.fault).join('+') || 'empty'}`,
        bytes: zipSync(Object.fromEntries(entries.map(([dir, e], i) => [`set/${dir}/${i}.png`, e.bytes]))),
        name: 'set.zip',
      })),
    fc.constant({
      fault: 'zip-valid',
      bytes: zipSync(Object.fromEntries(f.zipPngs.map((b, i) => [`set/c${i % 2}/${i}.png`, b]))),
      name: 'set.zip',
    }),
    fc
      .uint8Array({ maxLength: 512 })
      .map((bytes) => ({ fault: 'dataset-random-bytes', bytes, name: 'data.bin' })),
  );
}

function auditCase(f: FuzzFixtures): fc.Arbitrary<FuzzCase> {
  return fc
    .tuple(
      fc.oneof(
        { arbitrary: mutatedModel(f), weight: 3 },
        {
          arbitrary: fc.constant({
            fault: 'served-model',
            files: undefined as Map<string, Uint8Array> | undefined,
          }),
          weight: 1,
        },
        {
          arbitrary: fc
            .constantFrom(...f.modelFiles.values())
            .map((files) => ({ fault: 'valid-model-upload', files })),
          weight: 1,
        },
      ),
      dataset(f),
      fc.record(
        {
          norm: mostly(fc.constantFrom('L2', 'Linf'), fc.string({ maxLength: 4 })),
          eps: mostly(fc.constantFrom('0.5', '0.03', '1'), numberText),
          n: mostly(fc.constantFrom('1', '2', '4'), numberText),
          seed: mostly(fc.constantFrom('0', '7'), numberText),
          iterations: mostly(fc.constantFrom('1', '2'), numberText),
          restarts: mostly(fc.constantFrom('1'), numberText),
          // Square's queries count in the audit cost: few, so valid audits fit the fuzz app's budget.
          queries: mostly(fc.constantFrom('10', '50'), numberText),
          version: mostly(fc.constantFrom('standard'), fc.string({ maxLength: 5 })),
        },
        { requiredKeys: ['norm', 'eps', 'n', 'iterations'] },
      ),
    )
    .map(([model, data, fields]) => ({
      route: 'POST /v1/audits',
      faults: [model.fault, data.fault, ...Object.keys(fields).map((k) => `audit-${k}`)],
      request: () => {
        const form = new FormData();
        if (model.files)
          for (const [name, bytes] of model.files)
            form.append('model_files', new Blob([new Uint8Array(bytes)]), name);
        else form.append('model', MODEL);
        form.append('dataset', new Blob([new Uint8Array(data.bytes)]), data.name);
        for (const [key, value] of Object.entries(fields)) if (value !== undefined) form.append(key, value);
        return { path: '/v1/audits', init: { method: 'POST', body: form } };
      },
    }));
}

function otherCase(): fc.Arbitrary<FuzzCase> {
  const id = fc.oneof(
    fc.uuid(),
    fc.string({ maxLength: 40 }).map(encodeURIComponent),
    fc.constant('__proto__'),
  );
  return fc
    .tuple(
      fc.constantFrom('GET', 'DELETE', 'PUT', 'PATCH', 'POST', 'HEAD', 'OPTIONS'),
      fc.oneof(
        id.map((i) => `/v1/audits/${i}`),
        id.map((i) => `/v1/audits/${i}/events`),
        id.map((i) => `/v1/audits/${i}/report`),
        id.map((i) => `/web/${i}`),
        id.map((i) => `/v1/models/${i}`),
        fc.constantFrom(
          '/v1/models',
          '/health/live',
          '/health/ready',
          '/metrics',
          '/openapi.json',
          '/v1',
          '/',
          '/web/app.js',
          '/docs/assets/init.js',
        ),
        fc.webPath(),
      ),
    )
    .map(([method, path]) => ({
      route: `${method} other`,
      faults: ['method-or-path'],
      request: () => ({ path, init: { method } }),
    }));
}

export function fuzzCase(
  f: FuzzFixtures,
  weights = { predict: 3, ood: 2, counterfactuals: 2, audits: 2, other: 1 },
) {
  return fc.oneof(
    { arbitrary: predictCase(f), weight: weights.predict },
    { arbitrary: oodCase(f), weight: weights.ood },
    { arbitrary: counterfactualCase(f), weight: weights.counterfactuals },
    { arbitrary: auditCase(f), weight: weights.audits },
    { arbitrary: otherCase(), weight: weights.other },
  );
}

/** Sends one case and checks the property; returns the status. */
export async function runCase(app: ServiceApp, fuzz: FuzzCase, stats: FuzzStats): Promise<number> {
  const { path, init } = fuzz.request();
  const res = await app.request(path, init);
  const body = init.method === 'HEAD' ? '' : await res.text();
  stats.cases[fuzz.route] = (stats.cases[fuzz.route] ?? 0) + 1;
  stats.statuses[String(res.status)] = (stats.statuses[String(res.status)] ?? 0) + 1;
  for (const fault of fuzz.faults) {
    const kind = fault.split(':')[0];
    stats.faults[kind] = (stats.faults[kind] ?? 0) + 1;
  }
  if (res.status >= 500) {
    throw new Error(
      `${init.method} ${path} answered ${res.status}: ${body.slice(0, 400)} (faults ${fuzz.faults.join(', ')})`,
    );
  }
  if (res.status >= 400 && init.method !== 'HEAD') {
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect((JSON.parse(body) as { status: number }).status).toBe(res.status);
  }
  return res.status;
}

export function emptyStats(): FuzzStats {
  return { cases: {}, statuses: {}, faults: {} };
}

/** Runs `numRuns` seeded cases; every audit the fuzz started is cancelled and awaited afterwards. */
export async function fuzzAllRoutes(
  app: ServiceApp,
  audits: AuditQueue,
  fixtures: FuzzFixtures,
  options: { numRuns: number; seed: number },
): Promise<FuzzStats> {
  const stats = emptyStats();
  await fc.assert(
    fc.asyncProperty(fuzzCase(fixtures), async (fuzz) => {
      await runCase(app, fuzz, stats);
    }),
    { numRuns: options.numRuns, seed: options.seed, endOnFailure: true },
  );
  // Accepted audits (tiny: the fuzz app's audit budget is 2e10 FLOPs) run to their end.
  await Promise.all(audits.ids().map((id) => audits.settled(id)));
  return stats;
}

export function memorySnapshot() {
  (globalThis as { gc?: () => void }).gc?.();
  return { tensors: tf.memory().numTensors, bytes: tf.memory().numBytes, rss: process.memoryUsage().rss };
}
