import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type onnxProto from 'onnx-proto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createApp } from '../../../src/app.js';
import { run as models } from '../../../src/commands/models.js';
import { ModelDirError } from '../../../src/data/model-dir.js';
import { ModelFileError, ModelLimitError } from '../../../src/engine/model/files.js';
import { OnnxExternalDataError } from '../../../src/engine/model/onnx/index.js';
import { reviveError, serializeError } from '../../../src/jobs/audit/intake.js';
import { AuditQueue } from '../../../src/jobs/audit/registry.js';
import {
  limitVariable,
  localModelLimits,
  SERVICE_MODEL_LIMITS,
  serviceModelLimits,
} from '../../../src/jobs/models/limits.js';
import {
  inspectModel,
  loadModelDir,
  loadModelsFolder,
  loadUploadedModel,
  readLocalModel,
} from '../../../src/jobs/models/load.js';
import {
  buildModel,
  DataType,
  floatTensor,
  type ModelSpec,
  withHead,
} from '../../engine/model/onnx/onnx-builder.js';
import { auditForm, cifarFileLabelledBy, tinyCifarModelFiles } from '../../helpers/uploads.js';

/**
 * Model limits by place (the service's fixed and set by RATIO_MAX_MODEL_*, the CLI's from the
 * machine's memory or --max-model-bytes) and ONNX external data (read for local files, confined to
 * the model's directory, refused for uploads).
 */

const FIXTURE = path.resolve('test/fixtures/onnx/maxpool-view/model.onnx');
const fixtureBytes = new Uint8Array(readFileSync(FIXTURE));

/** x [n,3,4,4] -> Conv 3x3 (4 filters, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(2). */
function convSpec(): ModelSpec {
  const values = (n: number, scale: number) =>
    Array.from({ length: n }, (_, i) => Math.round(Math.sin(i * 1.7 + scale) * 1000) / 1000);
  const head = withHead(
    [
      {
        op: 'Conv',
        inputs: ['x', 'conv_w', 'conv_b'],
        outputs: ['c'],
        attributes: { kernel_shape: [3, 3], pads: [1, 1, 1, 1] },
      },
      { op: 'Relu', inputs: ['c'], outputs: ['r'] },
    ],
    'r',
    4,
  );
  return {
    nodes: head.nodes,
    initializers: [
      floatTensor('conv_w', [4, 3, 3, 3], values(108, 0.3)),
      floatTensor('conv_b', [4], values(4, 2)),
      ...head.initializers,
    ],
  };
}

/**
 * The spec with every float initializer moved to `weights.bin` (one after another, offsets and
 * lengths given), as PyTorch writes a model over 2 GB; returns the spec and the file's bytes.
 */
function externalSpec(
  spec: ModelSpec,
  entries: (name: string, offset: number, length: number) => Array<{ key: string; value: string }> = (
    _,
    offset,
    length,
  ) => [
    { key: 'location', value: 'weights.bin' },
    { key: 'offset', value: String(offset) },
    { key: 'length', value: String(length) },
  ],
): { spec: ModelSpec; weights: Uint8Array } {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const initializers = (spec.initializers ?? []).map((t): onnxProto.onnx.ITensorProto => {
    const bytes = new Uint8Array(Float32Array.from(t.floatData ?? []).buffer);
    const external = {
      name: t.name,
      dims: t.dims,
      dataType: DataType.FLOAT,
      dataLocation: 1, // TensorProto.DataLocation.EXTERNAL
      externalData: entries(t.name ?? '', offset, bytes.byteLength),
    };
    chunks.push(bytes);
    offset += bytes.byteLength;
    return external;
  });
  const weights = new Uint8Array(offset);
  let at = 0;
  for (const chunk of chunks) {
    weights.set(chunk, at);
    at += chunk.byteLength;
  }
  return { spec: { ...spec, initializers }, weights };
}

let root = '';

async function modelDir(name: string, files: Record<string, Uint8Array>): Promise<string> {
  const dir = path.join(root, name);
  await mkdir(dir, { recursive: true });
  for (const [file, bytes] of Object.entries(files)) await writeFile(path.join(dir, file), bytes);
  return dir;
}

function logitsOf(classifier: { logits(x: tf.Tensor4D): tf.Tensor2D }, x: tf.Tensor4D): number[] {
  const logits = classifier.logits(x);
  const values = Array.from(logits.dataSync());
  logits.dispose();
  return values;
}

async function refusal<T extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => T) {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(type);
  return error as T;
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ratio-limits-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('model limits by place', () => {
  it('the service keeps its limits unless RATIO_MAX_MODEL_* set them; malformed values name the variable', () => {
    expect(serviceModelLimits({})).toEqual(SERVICE_MODEL_LIMITS);
    expect(
      serviceModelLimits({
        RATIO_MAX_MODEL_BYTES: '4e9',
        RATIO_MAX_MODEL_PARAMETERS: '300000000',
        RATIO_MAX_MODEL_ELEMENTS: '',
      }),
    ).toEqual({ ...SERVICE_MODEL_LIMITS, maxBytes: 4e9, maxParameters: 3e8 });
    for (const bad of ['-1', '0x10', 'Infinity', 'lots', '0']) {
      expect(() => serviceModelLimits({ RATIO_MAX_MODEL_FLOPS: bad })).toThrow(/RATIO_MAX_MODEL_FLOPS/);
    }
    expect(limitVariable('bytes')).toBe('RATIO_MAX_MODEL_BYTES');
    expect(limitVariable('tensorElements')).toBe('RATIO_MAX_MODEL_ELEMENTS');
  });

  it('local files get a third of the memory, the flag before the environment', () => {
    const memoryBytes = 24 * 2 ** 30;
    const byMemory = localModelLimits({ env: {}, memoryBytes });
    expect(byMemory.maxBytes).toBe(Math.floor(memoryBytes / 3));
    expect(byMemory.maxParameters).toBe(Math.floor(memoryBytes / 6));
    const env = { RATIO_MAX_MODEL_BYTES: '1000' };
    expect(localModelLimits({ env, memoryBytes }).maxBytes).toBe(1000);
    expect(localModelLimits({ env, memoryBytes, maxBytes: 5e9 })).toMatchObject({
      maxBytes: 5e9,
      maxParameters: 2.5e9,
    });
  });

  it('a file over the service limit loads from disk and is refused as an upload, naming the limit', async () => {
    const limit = fixtureBytes.byteLength - 1;
    const service = serviceModelLimits({ RATIO_MAX_MODEL_BYTES: String(limit) });
    const local = await loadModelDir(FIXTURE);
    const upload = new Map([['model.onnx', fixtureBytes]]);
    const error = await refusal(loadUploadedModel(upload, 'model_files', 1e9, service), ModelLimitError);
    expect(error).toMatchObject({ limit: 'bytes', maximum: limit, value: fixtureBytes.byteLength });
    // The same limit on the CLI's side refuses it there too: the limit is what decides.
    const cli = await refusal(
      loadModelDir(FIXTURE, {}, undefined, localModelLimits({ maxBytes: limit })),
      ModelLimitError,
    );
    expect(cli).toMatchObject({ limit: 'bytes', maximum: limit });
    expect(local.card.inputShape).toEqual([32, 32, 3]);
    local.dispose();
  });

  it('a served models folder skips a model over the service limit', async () => {
    const dir = await modelDir('served/torch', { 'model.onnx': fixtureBytes });
    const skipped: unknown[] = [];
    const loaded = await loadModelsFolder(
      path.dirname(dir),
      () => {},
      (_, error) => skipped.push(error),
      undefined,
      serviceModelLimits({ RATIO_MAX_MODEL_PARAMETERS: '1000' }),
    );
    expect(loaded.size).toBe(0);
    expect(skipped[0]).toBeInstanceOf(ModelLimitError);
    expect(skipped[0]).toMatchObject({ limit: 'parameters', maximum: 1000 });
  });

  it('answers an upload over RATIO_MAX_MODEL_BYTES with 413 naming the variable', async () => {
    vi.stubEnv('RATIO_MAX_MODEL_BYTES', '50000');
    try {
      const app = createApp({ models: new Map(), audits: new AuditQueue() });
      const data = await cifarFileLabelledBy(await tinyCifarModelFiles(), 4);
      const files = new Map([['torch.onnx', fixtureBytes]]);
      const res = await app.request('/v1/audits', {
        method: 'POST',
        body: auditForm(files, data, { norm: 'L2', eps: '0.01', n: '4' }),
      });
      expect(res.status).toBe(413);
      const problem = (await res.json()) as {
        type: string;
        detail: string;
        errors: Array<{ field: string }>;
      };
      expect(problem.type).toMatch(/model-too-large$/);
      expect(problem.detail).toContain('over the limit of 50000');
      expect(problem.detail).toContain('RATIO_MAX_MODEL_BYTES');
      expect(problem.errors[0].field).toBe('torch.onnx');
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it('keeps a limit refusal and an external data refusal typed across the intake thread', () => {
    const limit = reviveError(
      serializeError(new ModelLimitError('m.onnx', undefined, 'flops', 3e10, 2e10, 'too many FLOPs')),
    );
    expect(limit).toBeInstanceOf(ModelLimitError);
    expect(limit).toMatchObject({
      limit: 'flops',
      value: 3e10,
      maximum: 2e10,
      message: 'm.onnx: too many FLOPs',
    });
    const cause = new OnnxExternalDataError('external', 'not-local', 'w.bin');
    const external = reviveError(serializeError(new ModelFileError('m.onnx', undefined, 'x', { cause })));
    expect(external.cause).toBeInstanceOf(OnnxExternalDataError);
    expect(external.cause).toMatchObject({ reason: 'not-local', location: 'w.bin' });
  });

  it('models inspect takes --max-model-bytes and refuses over it with exit 2', async () => {
    const lines: string[] = [];
    const spies = [
      vi.spyOn(console, 'log').mockImplementation((m: unknown) => void lines.push(String(m))),
      vi.spyOn(console, 'error').mockImplementation((m: unknown) => void lines.push(String(m))),
    ];
    try {
      expect(await models(['inspect', FIXTURE, '--max-model-bytes', '1000'])).toBe(2);
      expect(lines.join('\n')).toContain('over the limit of 1000');
      expect(lines.join('\n')).toContain('--max-model-bytes or RATIO_MAX_MODEL_BYTES');
      expect(await models(['inspect', FIXTURE, '--max-model-bytes', 'lots'])).toBe(2);
      expect(lines.join('\n')).toContain(
        "--max-model-bytes must be a positive decimal number such as 4e9, got 'lots'",
      );
      lines.length = 0;
      expect(await models(['inspect', FIXTURE, '--json', '--max-model-bytes', '1e6'])).toBe(0);
      expect(JSON.parse(lines.join('\n')).opsUsed.Conv).toBe(2);
    } finally {
      for (const spy of spies) spy.mockRestore();
    }
  });
});

describe('ONNX external data', () => {
  it('gives the logits of the same model with embedded weights, from a directory or a .onnx path', async () => {
    const embedded = buildModel(convSpec());
    const { spec, weights } = externalSpec(convSpec());
    const dir = await modelDir('external', { 'model.onnx': buildModel(spec), 'weights.bin': weights });
    await writeFile(path.join(dir, 'other.onnx'), buildModel(spec));
    const before = tf.memory().numTensors;
    const reference = await loadModelDir(await modelDir('embedded', { 'model.onnx': embedded }));
    const fromDir = await loadModelDir(dir);
    const fromFile = await loadModelDir(path.join(dir, 'other.onnx'));
    const x = tf.randomUniform([3, 4, 4, 3], 0, 1, 'float32', 7) as tf.Tensor4D;
    const expected = logitsOf(reference, x);
    expect(expected.some((v) => v !== 0)).toBe(true);
    expect(logitsOf(fromDir, x)).toEqual(expected);
    expect(logitsOf(fromFile, x)).toEqual(expected);
    expect((await inspectModel(dir)).parameterCount).toBe(108 + 4 + 8 + 2);
    for (const c of [reference, fromDir, fromFile]) c.dispose();
    x.dispose();
    expect(tf.memory().numTensors).toBe(before);
    // What a shard worker or the audit store gets: the side file travels with the model.
    expect([...(await readLocalModel(dir)).keys()].sort()).toEqual(['model.onnx', 'weights.bin']);
  });

  it('refuses external data in an upload with a typed error, with or without the side file', async () => {
    const { spec, weights } = externalSpec(convSpec());
    const onnx = buildModel(spec);
    const alone = await refusal(
      loadUploadedModel(new Map([['model.onnx', onnx]]), 'model_files', 1e9),
      ModelFileError,
    );
    expect(alone.cause).toBeInstanceOf(OnnxExternalDataError);
    expect((alone.cause as OnnxExternalDataError).reason).toBe('not-local');
    const withFile = new Map([
      ['model.onnx', onnx],
      ['weights.bin', weights],
    ]);
    const both = await refusal(loadUploadedModel(withFile, 'model_files', 1e9), ModelFileError);
    expect(both.message).toContain('an ONNX model is one .onnx file');
  });

  it('refuses locations outside the directory, bytes past the end and symlinks out', async () => {
    const hostile = async (name: string, location: string, extra: Record<string, Uint8Array> = {}) => {
      const { spec, weights } = externalSpec(convSpec(), (_, offset, length) => [
        { key: 'location', value: location },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(length) },
      ]);
      const dir = await modelDir(name, { 'model.onnx': buildModel(spec), ...extra });
      await writeFile(path.join(root, 'outside.bin'), weights);
      return dir;
    };
    for (const location of ['../outside.bin', '/etc/passwd', 'a/../../outside.bin', 'C:/w.bin']) {
      const dir = await hostile(`hostile-${location.replace(/\W/g, '_')}`, location);
      const error = await refusal(loadModelDir(dir), ModelFileError);
      expect(error.cause).toBeInstanceOf(OnnxExternalDataError);
      expect(error.cause).toMatchObject({ reason: 'outside-directory', location });
    }
    // The right file, cut short: the last tensor's bytes lie past its end.
    const { weights } = externalSpec(convSpec());
    const short = await hostile('short', 'weights.bin', {
      'weights.bin': weights.slice(0, weights.length - 4),
    });
    const past = await refusal(loadModelDir(short), ModelFileError);
    expect(past.cause).toMatchObject({ reason: 'out-of-range', location: 'weights.bin' });
    // An offset beyond the file.
    const { spec: far } = externalSpec(convSpec(), (_, offset, length) => [
      { key: 'location', value: 'weights.bin' },
      { key: 'offset', value: String(offset + 10_000) },
      { key: 'length', value: String(length) },
    ]);
    const farDir = await modelDir('far', { 'model.onnx': buildModel(far), 'weights.bin': weights });
    expect((await refusal(loadModelDir(farDir), ModelFileError)).cause).toMatchObject({
      reason: 'out-of-range',
    });
    // A side file that is a symlink out of the directory is never read.
    const linked = await hostile('linked', 'weights.bin');
    await symlink(path.join(root, 'outside.bin'), path.join(linked, 'weights.bin'));
    const escaped = await refusal(loadModelDir(linked), ModelDirError);
    expect(escaped.message).toContain('leaves the model directory');
    // A missing side file.
    const missing = await hostile('missing', 'weights.bin');
    expect((await refusal(loadModelDir(missing), ModelDirError)).message).toContain('file is missing');
  });
});
