import { gzipSync } from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DatasetError } from '../../../src/data/errors.js';
import { MultipartError } from '../../../src/data/multipart.js';
import { type AuditIntake, InProcessIntake, type IntakeSession } from '../../../src/jobs/audit/intake.js';
import { WorkerIntake } from '../../../src/jobs/audit/intake-host.js';
import { IntakeLimitError } from '../../../src/jobs/errors.js';
import { DeferredClassifier } from '../../../src/jobs/models/deferred.js';
import { ModelFileError } from '../../../src/jobs/models/index.js';
import { buildModel, floatTensor, withHead } from '../../engine/model/onnx/onnx-builder.js';
import { varint } from '../../helpers/protobuf-wire.js';
import { rejectionOf } from '../../helpers/rejection.js';
import { cifarFileLabelledBy, tinyCifarModelFiles } from '../../helpers/uploads.js';

/**
 * Issue 26: model loading, data decoding and form parsing ran on the request thread (a 99,990-node
 * ONNX chain held it 18.4 s and left 1.8 GB behind). The worker intake does all of it in a thread
 * per upload, ended when the upload is done with; it must answer exactly as the in-process intake.
 */

const LIMITS = {
  maxBodyBytes: 64 * 1024 * 1024,
  maxParts: 256,
  maxFiles: 200,
  maxFileBytes: 64 * 1024 * 1024,
  maxFieldBytes: 4096,
};
const PARAMETERS = { norm: 'L2' as const, eps: 0.5, version: 'standard' as const, n: 3, seed: 0 };

/** A form as a multipart body in 64 kB chunks, with its content type. */
async function multipart(form: FormData): Promise<{ chunks: Uint8Array[]; contentType: string }> {
  const request = new Request('http://x/', { method: 'POST', body: form });
  const bytes = new Uint8Array(await request.arrayBuffer());
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += 65536) chunks.push(bytes.slice(at, at + 65536));
  return { chunks, contentType: request.headers.get('content-type')! };
}

async function* stream(chunks: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const chunk of chunks) yield chunk;
}

function uploadForm(files: Map<string, Uint8Array>, dataset: Uint8Array, name = 'test_batch.bin'): FormData {
  const form = new FormData();
  for (const [file, bytes] of files) form.append('model_files', new Blob([new Uint8Array(bytes)]), file);
  form.append('dataset', new Blob([new Uint8Array(dataset)]), name);
  form.append('norm', 'L2');
  return form;
}

async function receive(intake: AuditIntake, form: FormData, signal?: AbortSignal): Promise<IntakeSession> {
  const { chunks, contentType } = await multipart(form);
  return intake.receive(stream(chunks), contentType, LIMITS, signal);
}

/** Prepares the form's upload audit through `intake`; the session is closed afterwards. */
async function prepare(intake: AuditIntake, form: FormData) {
  const session = await receive(intake, form);
  try {
    const parts = session.form.getAll('model_files') as File[];
    return await session.prepare({
      model: { kind: 'upload', parts, field: 'model_files', maxBytes: LIMITS.maxBodyBytes },
      data: { part: session.form.get('dataset') as File, maxBytes: LIMITS.maxBodyBytes },
      parameters: PARAMETERS,
    });
  } finally {
    session.close();
  }
}

const refusal = (promise: Promise<unknown>) => rejectionOf(promise, Error);

let intake: WorkerIntake;
let files: Map<string, Uint8Array>;
let cifar: Uint8Array;
beforeAll(async () => {
  intake = new WorkerIntake({ maxConcurrent: 1, heapMb: 256 });
  files = await tinyCifarModelFiles();
  cifar = await cifarFileLabelledBy(files, 4);
});
afterAll(async () => {
  await intake?.close();
});

describe('the worker intake (a thread per upload)', { timeout: 180_000 }, () => {
  it('prepares an upload audit exactly as the in-process intake does, leaving no tensor here', async () => {
    const before = tf.memory().numTensors;
    const inWorker = await prepare(intake, uploadForm(files, cifar));
    const inProcess = await prepare(new InProcessIntake(), uploadForm(files, cifar));
    expect(tf.memory().numTensors).toBe(before);
    expect(inWorker.classifier).toBeInstanceOf(DeferredClassifier);
    expect((inWorker.classifier as DeferredClassifier).facts).toEqual(
      (inProcess.classifier as DeferredClassifier).facts,
    );
    expect(inWorker.parameters).toEqual(inProcess.parameters);
    expect(inWorker.dataset.size).toBe(3);
    expect(Buffer.compare(Buffer.from(inWorker.dataset.images), Buffer.from(inProcess.dataset.images))).toBe(
      0,
    );
    expect([...inWorker.dataset.labels]).toEqual([...inProcess.dataset.labels]);
    expect([...inWorker.modelFiles!.keys()].sort()).toEqual([...files.keys()].sort());
    for (const [name, bytes] of files)
      expect(Buffer.compare(Buffer.from(inWorker.modelFiles!.get(name)!), Buffer.from(bytes))).toBe(0);
    // Loaded on this thread only when asked (an in-process run), then the same model.
    const deferred = inWorker.classifier as DeferredClassifier;
    await deferred.load();
    const x = tf.zeros([1, 32, 32, 3]) as tf.Tensor4D;
    const logits = deferred.logits(x);
    expect(logits.shape).toEqual([1, 10]);
    tf.dispose([x, logits]);
    deferred.dispose();
    inProcess.classifier.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refusals keep their types, and every upload thread ends when its upload is done', async () => {
    const nan = withHead([{ op: 'Relu', inputs: ['x'], outputs: ['r'] }], 'r');
    nan.initializers = nan.initializers.map((t) =>
      t.name === 'head_b' ? floatTensor('head_b', [2], [Number.NaN, 0]) : t,
    );
    const onnx = new Map([
      ['model.onnx', buildModel({ ...nan, inputs: [{ name: 'x', dims: ['n', 3, 32, 32] }] })],
    ]);
    const modelError = await refusal(prepare(intake, uploadForm(onnx, cifar)));
    expect(modelError).toBeInstanceOf(ModelFileError);
    expect(modelError.message).toContain('non-finite logits');
    const idx = new Uint8Array(16 + 100_000 * 784);
    new DataView(idx.buffer).setUint32(0, 0x00000803);
    new DataView(idx.buffer).setUint32(4, 100_000);
    new DataView(idx.buffer).setUint32(8, 28);
    new DataView(idx.buffer).setUint32(12, 28);
    const bomb = new Uint8Array(gzipSync(gzipSync(idx)));
    const dataError = await refusal(prepare(intake, uploadForm(files, bomb, 'train-images-idx3-ubyte.gz')));
    expect(dataError).toBeInstanceOf(DatasetError);
    expect((dataError as DatasetError).code).toBe('too-large');
    // The part limit is checked while the body streams in.
    const many = new FormData();
    for (let i = 0; i < 300; i++) many.append('norm', 'L2');
    const partsError = await refusal(receive(intake, many));
    expect(partsError).toBeInstanceOf(MultipartError);
    expect(partsError.message).toContain('more than 256 parts');
    // Only the spare is left: each upload's thread (and its memory) is gone. Threads end
    // asynchronously, later on a loaded machine: wait for it rather than for a fixed time.
    await vi.waitFor(() => expect(intake.active).toBe(1), { timeout: 30_000, interval: 100 });
  });

  it('an upload that needs more heap than a thread may use is refused (413), the process unharmed', async () => {
    const small = new WorkerIntake({ heapMb: 96 });
    // 3.9M empty value_info entries: under the decode limits, some 200 MB of objects to decode.
    const graph = buildModel({
      ...withHead([{ op: 'Relu', inputs: ['x'], outputs: ['r'] }], 'r'),
      inputs: [{ name: 'x', dims: ['n', 3, 32, 32] }],
    });
    const entries = new Uint8Array(3_900_000 * 2);
    for (let i = 0; i < entries.length; i += 2) entries[i] = (13 << 3) | 2;
    // A second graph field holding them (protobuf decodes it after the first).
    const header = [(7 << 3) | 2, ...varint(entries.length)];
    const model = new Uint8Array(graph.length + header.length + entries.length);
    model.set(graph);
    model.set(header, graph.length);
    model.set(entries, graph.length + header.length);
    try {
      const error = await refusal(prepare(small, uploadForm(new Map([['model.onnx', model]]), cifar)));
      expect(error).toBeInstanceOf(IntakeLimitError);
      expect((error as IntakeLimitError).kind).toBe('memory');
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(small.active).toBe(1);
    } finally {
      await small.close();
    }
  });

  it('a client gone mid-body ends its thread', async () => {
    const controller = new AbortController();
    const { chunks, contentType } = await multipart(uploadForm(files, cifar));
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield chunks[0];
      controller.abort();
      yield* chunks.slice(1);
    }
    await refusal(intake.receive(slow(), contentType, LIMITS, controller.signal));
    await vi.waitFor(() => expect(intake.active).toBe(1), { timeout: 30_000, interval: 100 });
  });
});
