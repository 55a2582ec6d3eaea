import { type ChildProcess, fork } from 'node:child_process';
import { appendFile, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGzip, gzipSync } from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import { zipSync } from 'fflate';
import { Agent, FormData, fetch, type RequestInit, type Response } from 'undici';
import { saveModelToFiles } from '../../src/engine/model/files.js';
import { buildModel, floatTensor } from '../engine/model/onnx/onnx-builder.js';
import { idxImages } from '../helpers/idx.js';
import { concat, lengthField as field, repeatedField, withGraphPrefix } from '../helpers/protobuf-wire.js';
import { parseLogLine, type ServiceProcess } from '../helpers/service.js';
import { convModelFiles } from '../helpers/uploads.js';

/**
 * The hostile client of issue 26, against the real server (`ratio serve` in a child process, two
 * API keys): each case sends what broke the service before (and variants), and records the
 * answers, any 5xx, whether the server died, how long /health/live took meanwhile (polled every
 * 20 ms by a process of its own, live-poller.mjs: a stall of the server's event loop shows as a slow
 * answer, and nothing this process does delays a poll), and the resident memory of the server and
 * its worker processes before and after (after a forced GC in every thread). Each case builds its
 * payload before its window opens; the window times only sending it and reading the answers.
 */

export const KEY_A = 'hostile-key-a';
export const KEY_B = 'hostile-key-b';
const MB = 1024 * 1024;

export interface HostileCase {
  family: string;
  name: string;
  /** What the service must answer (e.g. '422', '202 then cancelled'). */
  expected: string;
  /** What it answered. */
  answers: string;
  ok: boolean;
  fiveXX: number;
  crashed: boolean;
  seconds: number;
  /** /health/live polls sent during the case, and those that got no 200. */
  livePolls: number;
  liveFailed: number;
  liveMedianMs: number;
  liveMaxMs: number;
  /** /health/live answers slower than 100 ms (each one a stall of the event loop or worse). */
  stallsOver100: number;
  stallsOver200: number;
  rssBeforeMb: number;
  rssAfterMb: number;
  note?: string;
}

export interface HostileReport {
  cases: HostileCase[];
  /** Audits listed before a restart that were not listed after it. */
  auditsLost: number;
  /** Cancelled audits that went on to run (started after the cancel) or ended other than cancelled. */
  runAfterCancel: number;
  /** Seconds from DELETE to the final state of an audit cancelled mid-step. */
  cancelSeconds: number[];
}

// ---------------------------------------------------------------- process measurements

/** Resident memory of a process and all its descendants, MB (Linux /proc). */
export async function treeRssMb(pid: number): Promise<number> {
  let total = 0;
  const visit = async (id: number) => {
    const status = await readFile(`/proc/${id}/status`, 'utf8').catch(() => '');
    total += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
    const tasks = await readdir(`/proc/${id}/task`).catch(() => [] as string[]);
    for (const task of tasks) {
      const children = await readFile(`/proc/${id}/task/${task}/children`, 'utf8').catch(() => '');
      for (const child of children.split(' ').filter(Boolean)) await visit(Number(child));
    }
  };
  await visit(pid);
  return total;
}

/** What the poller saw during one case's window. */
export interface LiveWindow {
  samples: number;
  /** Polls that got no 200 (refused, reset or timed out: during a restart, or worse). */
  failed: number;
  medianMs: number;
  maxMs: number;
  over100: number;
  over200: number;
}

/** Epoch milliseconds, high resolution: the clock the poller process timestamps its polls on. */
export const epochNow = () => performance.timeOrigin + performance.now();

/**
 * /health/live polled every 20 ms from a process of its own (live-poller.mjs): this process builds
 * and sends 100-200 MB payloads, which would delay its own polls and count as the server's stall.
 * `window(from, to)` (epoch ms, `epochNow`) returns the latencies of the polls sent in between.
 */
export class LiveMonitor {
  private child: ChildProcess | undefined;
  private next = 0;
  private readonly waiting = new Map<number, (window: LiveWindow) => void>();

  constructor(private url: string) {}

  async start(): Promise<void> {
    const child = fork(fileURLToPath(new URL('./live-poller.mjs', import.meta.url)), [this.url], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [],
    });
    this.child = child;
    child.on('message', (message: { type: string; id?: number } & LiveWindow) => {
      if (message.type !== 'window' || message.id === undefined) return;
      const { id: _, type: __, ...window } = message;
      this.waiting.get(message.id)?.(window);
      this.waiting.delete(message.id);
    });
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`the /health/live poller exited (code ${code})`)));
    });
  }

  retarget(url: string): void {
    this.url = url;
    this.child?.send({ type: 'target', url });
  }

  window(from: number, to: number): Promise<LiveWindow> {
    const child = this.child;
    if (!child?.connected) return Promise.reject(new Error('the /health/live poller is not running'));
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, resolve);
      child.once('exit', () => reject(new Error('the /health/live poller exited')));
      child.send({ type: 'window', id, from, to });
    });
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    if (child.connected) child.send({ type: 'stop' });
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- hostile payloads

/** A CIFAR-10 classifier as ONNX: x [n,3,32,32] -> Flatten -> Gemm(10). */
function cifarOnnx(options: { bias?: number; opset?: number; nodesBefore?: number } = {}): Uint8Array {
  const chain = Array.from({ length: options.nodesBefore ?? 0 }, (_, i) => ({
    op: 'Relu',
    inputs: [i === 0 ? 'x' : `r${i - 1}`],
    outputs: [`r${i}`],
  }));
  const last = chain.length > 0 ? `r${chain.length - 1}` : 'x';
  const weights = new Float32Array(10 * 3072);
  for (let i = 0; i < weights.length; i++) weights[i] = ((i * 7919) % 201) / 100_000 - 0.001;
  return buildModel({
    nodes: [
      ...chain,
      { op: 'Flatten', inputs: [last], outputs: ['flat'] },
      { op: 'Gemm', inputs: ['flat', 'w', 'b'], outputs: ['y'], attributes: { transB: 1 } },
    ],
    inputs: [{ name: 'x', dims: ['n', 3, 32, 32] }],
    outputs: [{ name: 'y', dims: ['n', 10] }],
    initializers: [
      floatTensor('w', [10, 3072], weights),
      floatTensor(
        'b',
        [10],
        Array.from({ length: 10 }, (_, i) => (i === 0 && options.bias !== undefined ? options.bias : 0)),
      ),
    ],
    opset: options.opset ?? 17,
  });
}

const gzip = (bytes: Uint8Array) => new Uint8Array(gzipSync(bytes, { level: 9 }));

/** gzip of an IDX header for `count` 28x28 images and their zero pixels, streamed (never held). */
async function gzippedIdxZeros(count: number): Promise<Uint8Array> {
  const stream = createGzip({ level: 9 });
  const out: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => out.push(chunk));
  const done = new Promise((resolve) => stream.on('end', resolve));
  const write = (bytes: Uint8Array) =>
    new Promise<void>((resolve) => {
      if (stream.write(bytes)) resolve();
      else stream.once('drain', resolve);
    });
  const header = idxImages(0);
  new DataView(header.buffer).setUint32(4, count);
  await write(header);
  const zeros = new Uint8Array(16 * MB);
  let left = count * 784;
  while (left > 0) {
    const size = Math.min(left, zeros.length);
    await write(zeros.subarray(0, size));
    left -= size;
  }
  stream.end();
  await done;
  return new Uint8Array(Buffer.concat(out));
}

/** A dense model of about `megabytes` of weights (3072 inputs), and one overflowing on any image. */
async function denseModel(units: number, kernel?: number): Promise<Map<string, Uint8Array>> {
  const model = tf.sequential({
    layers: [
      tf.layers.flatten({ inputShape: [32, 32, 3] }),
      tf.layers.dense({
        units,
        kernelInitializer:
          kernel === undefined
            ? tf.initializers.glorotUniform({ seed: 1 })
            : tf.initializers.constant({ value: kernel }),
      }),
      ...(units === 10
        ? []
        : [tf.layers.dense({ units: 10, kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) })]),
    ],
  });
  try {
    return await saveModelToFiles(model, { name: 'hostile' });
  } finally {
    model.dispose();
  }
}

/**
 * `layers` 3x3 convolutions on 32x32x3 (the last down to 1 channel), then one with a 3000x3000
 * kernel and 2 filters: every weight present (72 MB), 18M parameters (under the limit), but one
 * image costs 3.7e10 FLOPs, over the 2e10 budget, at layer `layers`.
 */
function deepConvModel(layers: number): Map<string, Uint8Array> {
  return convModelFiles(
    [32, 32, 3],
    [
      ...Array.from({ length: layers }, (_, i) => ({ kernel: 3, filters: i === layers - 1 ? 1 : 3 })),
      { kernel: 3000, filters: 2 },
    ],
  );
}

/**
 * POSTs `body` in chunks and resolves with the status of the first answer: a server that refuses
 * mid-body (413) may close the connection before the rest is sent, which fetch reports as a failure.
 */
function postAnsweredEarly(url: URL, body: Uint8Array, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = httpRequest(
      url,
      { method: 'POST', headers: { ...headers, 'content-length': String(body.length) } },
      (res) => {
        answered = true;
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    // An error after the answer is the server closing the refused upload: expected.
    req.on('error', (error) => {
      if (!answered) reject(error);
    });
    void (async () => {
      for (let at = 0; at < body.length && !answered && !req.destroyed; at += 1 << 16) {
        if (!req.write(body.subarray(at, at + (1 << 16))))
          await new Promise((resolve) => {
            req.once('drain', resolve);
            req.once('close', resolve);
          });
      }
      if (!answered && !req.destroyed) req.end();
    })();
  });
}

// ---------------------------------------------------------------- the probe

interface Ctx {
  service: () => ServiceProcess;
  monitor: LiveMonitor;
  cifar: Uint8Array;
  agent: Agent;
  restart: () => Promise<void>;
  gc: () => Promise<void>;
}

const auth = (key: string) => ({ authorization: `Bearer ${key}` });

function auditForm(
  model: Map<string, Uint8Array> | { served: string },
  dataset: { bytes: Uint8Array; name: string },
  fields: Record<string, string> = {},
  labels?: Uint8Array,
) {
  const form = new FormData();
  if ('served' in model) form.append('model', model.served as string);
  else for (const [name, bytes] of model) form.append('model_files', new Blob([new Uint8Array(bytes)]), name);
  form.append('dataset', new Blob([new Uint8Array(dataset.bytes)]), dataset.name);
  if (labels) form.append('labels', new Blob([new Uint8Array(labels)]), 'labels-idx1-ubyte.gz');
  for (const [key, value] of Object.entries({
    norm: 'L2',
    eps: '0.5',
    n: '4',
    iterations: '1',
    queries: '10',
    ...fields,
  }))
    form.append(key, value);
  return form;
}

async function send(
  ctx: Ctx,
  pathname: string,
  init: Omit<RequestInit, 'headers'> & { key?: string; headers?: Record<string, string> } = {},
): Promise<Response> {
  const { key, headers, ...rest } = init;
  return fetch(`${ctx.service().url}${pathname}`, {
    ...rest,
    headers: { ...(key ? auth(key) : {}), ...(headers ?? {}) },
    dispatcher: ctx.agent,
  });
}

async function job(
  ctx: Ctx,
  id: string,
  key = KEY_A,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await send(ctx, `/v1/audits/${id}`, { key });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function untilFinal(ctx: Ctx, id: string, timeoutMs = 300_000, key = KEY_A) {
  const started = Date.now();
  for (;;) {
    const { body } = await job(ctx, id, key);
    if (['succeeded', 'failed', 'cancelled'].includes(String(body.state))) return body;
    if (Date.now() - started > timeoutMs) throw new Error(`audit ${id} did not end in ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

type Outcome = { answers: string; ok: boolean; fiveXX?: number; note?: string };

/** Sends one request, drops its body, and is ok when it answered `expected`. */
async function answersStatus(
  ctx: Ctx,
  expected: number,
  pathname: string,
  init?: Parameters<typeof send>[2],
): Promise<Outcome> {
  const res = await send(ctx, pathname, init);
  await res.arrayBuffer();
  return { answers: String(res.status), ok: res.status === expected };
}
/** A case's timed part; the heavy payload it sends was built before, outside the case's window. */
type Act = () => Promise<Outcome>;

/** `RATIO_HOSTILE_CASES`: a regular expression on 'family: name'; only matching cases run. */
export const hostileCaseFilter = (): RegExp | undefined =>
  process.env.RATIO_HOSTILE_CASES ? new RegExp(process.env.RATIO_HOSTILE_CASES, 'i') : undefined;

export async function runHostileProbe(ctx: Ctx, stateDir: string): Promise<HostileReport> {
  const report: HostileReport = { cases: [], auditsLost: 0, runAfterCancel: 0, cancelSeconds: [] };
  const cifar = { bytes: ctx.cifar, name: 'test_batch.bin' };
  const only = hostileCaseFilter();

  /**
   * Runs one case: `prepare` builds its payload (untimed, before the window opens) and returns the
   * act, which sends it and says what was answered and whether that was what was due.
   */
  async function run(
    family: string,
    name: string,
    expected: string,
    prepare: () => Act | Promise<Act>,
  ): Promise<void> {
    if (only && !only.test(`${family}: ${name}`)) return;
    const act = await prepare();
    await ctx.gc();
    const pid = ctx.service().child.pid!;
    const rssBeforeMb = await treeRssMb(pid);
    // Requests the server logged as failed (every 5xx but a shutdown's 503 is logged at error level).
    const failedRequests = new Set<string>();
    const onLine = (line: string) => {
      const entry = parseLogLine(line);
      if (entry && typeof entry.level === 'number' && entry.level >= 50 && entry.request_id)
        failedRequests.add(String(entry.request_id));
    };
    ctx.service().lines.on('line', onLine);
    const started = epochNow();
    let result: Outcome;
    try {
      result = await act();
    } catch (error) {
      result = { answers: `error: ${(error as Error).message}`, ok: false };
    }
    const ended = epochNow();
    ctx.service().lines.off('line', onLine);
    const live = await ctx.monitor.window(started, ended);
    const crashed = ctx.service().child.exitCode !== null || ctx.service().child.signalCode !== null;
    if (crashed) await ctx.restart();
    await new Promise((resolve) => setTimeout(resolve, 500));
    await ctx.gc();
    const rssAfterMb = crashed ? 0 : await treeRssMb(ctx.service().child.pid!);
    const entry: HostileCase = {
      family,
      name,
      expected,
      answers: result.answers,
      ok: result.ok && !crashed,
      fiveXX: Math.max(result.fiveXX ?? 0, failedRequests.size),
      crashed,
      seconds: (ended - started) / 1000,
      livePolls: live.samples,
      liveFailed: live.failed,
      liveMedianMs: live.medianMs,
      liveMaxMs: live.maxMs,
      stallsOver100: live.over100,
      stallsOver200: live.over200,
      rssBeforeMb,
      rssAfterMb,
      ...(result.note ? { note: result.note } : {}),
    };
    report.cases.push(entry);
    // Each case as it ends (a JSON line), so a run stopped part-way still tells what it saw.
    if (process.env.RATIO_HOSTILE_LOG)
      await appendFile(process.env.RATIO_HOSTILE_LOG, `${JSON.stringify(entry)}\n`);
  }

  const upload = async (form: FormData, key = KEY_A) => {
    const res = await send(ctx, '/v1/audits', { method: 'POST', body: form, key });
    const text = await res.text();
    return { status: res.status, text };
  };
  /**
   * Sends a prepared form and checks the refusal by its status, its problem type (the slug after
   * /problems/) and, when given, the field of its first error: never by its message.
   */
  const refusedAs =
    (status: number, type: string, field?: string) =>
    async (form: FormData): Promise<Outcome> => {
      const answer = await upload(form);
      let problem: { type?: string; errors?: Array<{ field?: string }> } = {};
      try {
        problem = JSON.parse(answer.text) as typeof problem;
      } catch {
        // Not a problem document: reported as it came.
      }
      const slug = problem.type?.split('/problems/')[1] ?? '';
      const at = problem.errors?.[0]?.field ?? '';
      return {
        answers: `${answer.status} ${slug || answer.text.slice(0, 60)}${at ? ` (${at})` : ''}`,
        ok: answer.status === status && slug === type && (field === undefined || at === field),
        fiveXX: answer.status >= 500 ? 1 : 0,
      };
    };
  // ONNX limits are the service's model limits (RATIO_MAX_MODEL_*): 413 model-too-large.
  const overBudget = refusedAs(413, 'model-too-large', 'model.onnx');
  const invalidModel = refusedAs(422, 'invalid-model');
  const dataTooLarge = refusedAs(422, 'dataset-too-large', 'dataset');
  /** Expected column: status and problem type. */
  const as = (status: number, type: string) => `${status} ${type}`;

  // ---- ONNX limits enforced while reading
  const base = cifarOnnx();
  const onnxFiles = (bytes: Uint8Array) => new Map([['model.onnx', bytes]]);
  const onnxForm = (bytes: Uint8Array) => auditForm(onnxFiles(bytes), cifar);
  await run('onnx', '50M empty NodeProto before a valid graph (100 MB)', as(413, 'model-too-large'), () => {
    const form = onnxForm(withGraphPrefix(base, repeatedField(1, [], 50_000_000)));
    return () => overBudget(form);
  });
  await run('onnx', '5M empty nodes in a sub-graph (If branch attribute)', as(413, 'model-too-large'), () => {
    const sub = repeatedField(1, [], 5_000_000);
    const attribute = concat(field(1, new TextEncoder().encode('then_branch')), field(6, sub));
    const form = onnxForm(withGraphPrefix(base, field(1, field(5, attribute))));
    return () => overBudget(form);
  });
  await run('onnx', '2M nodes in a model-local function', as(413, 'model-too-large'), () => {
    const form = onnxForm(concat(base, field(25, repeatedField(7, [], 2_000_000))));
    return () => overBudget(form);
  });
  await run('onnx', '2M empty initializers', as(413, 'model-too-large'), () => {
    const form = onnxForm(withGraphPrefix(base, repeatedField(5, [], 2_000_000)));
    return () => overBudget(form);
  });
  await run('onnx', '10M empty value_info entries (other field)', as(413, 'model-too-large'), () => {
    const form = onnxForm(withGraphPrefix(base, repeatedField(13, [], 10_000_000)));
    return () => overBudget(form);
  });
  await run('onnx', 'types nested 10,000 deep', as(413, 'model-too-large'), () => {
    let type: Uint8Array = new Uint8Array(0);
    for (let i = 0; i < 10_000; i++) type = field(4, field(1, type));
    const form = onnxForm(withGraphPrefix(base, field(13, field(2, type))));
    return () => overBudget(form);
  });
  await run('onnx', 'opset 9 and opset 19', '422 invalid-model, 422 invalid-model', () => {
    const forms = [onnxForm(cifarOnnx({ opset: 9 })), onnxForm(cifarOnnx({ opset: 19 }))];
    return async () => {
      const [a, b] = [await invalidModel(forms[0]), await invalidModel(forms[1])];
      return {
        answers: `${a.answers}, ${b.answers}`,
        ok: a.ok && b.ok,
        fiveXX: (a.fiveXX ?? 0) + (b.fiveXX ?? 0),
      };
    };
  });
  await run('onnx', 'NaN bias (non-finite logits at the trial)', as(422, 'invalid-model'), () => {
    const form = onnxForm(cifarOnnx({ bias: Number.NaN }));
    return () => invalidModel(form);
  });

  // ---- decompression: one budget across nested layers
  let twice: Uint8Array | undefined;
  const bomb2 = async () => {
    twice ??= gzip(await gzippedIdxZeros(2_400_000)); // 1.88 GB inside, a few kB outside
    return twice;
  };
  const dataForm = (bytes: Uint8Array, name: string, labels?: Uint8Array) =>
    auditForm(onnxFiles(base), { bytes, name }, {}, labels);
  await run('data', 'double-gzipped IDX (1.88 GB inside)', as(422, 'dataset-too-large'), async () => {
    const form = dataForm(await bomb2(), 'train-images-idx3-ubyte.gz');
    return () => dataTooLarge(form);
  });
  // The third layer (1.88 GB) is where the budget runs out: every layer is peeled on the one budget.
  await run('data', 'triple-gzipped IDX', as(422, 'dataset-too-large'), async () => {
    const form = dataForm(gzip(await bomb2()), 'x-idx3-ubyte.gz');
    return () => dataTooLarge(form);
  });
  await run(
    'data',
    'gzipped images and labels, each under the budget, together over',
    as(422, 'dataset-too-large'),
    async () => {
      const half = await gzippedIdxZeros(200_000); // 157 MB inflated: under 256 MiB alone
      const labels = new Uint8Array(150 * MB);
      labels.set([0, 0, 8, 1, 0, 3, 13, 64]);
      const form = dataForm(half, 'x-idx3-ubyte.gz', gzip(labels));
      return () => dataTooLarge(form);
    },
  );
  let zipOver: Uint8Array | undefined;
  const zip300 = () => {
    zipOver ??= zipSync(
      { 'set/a/0.png': new Uint8Array(200 * MB), 'set/b/1.png': new Uint8Array(100 * MB) },
      { level: 9 },
    );
    return zipOver;
  };
  await run('data', 'zip whose entries declare 300 MB', as(422, 'dataset-too-large'), () => {
    const form = dataForm(zip300(), 'set.zip');
    return () => dataTooLarge(form);
  });
  // Unwrapped, the gzip holds a zip, checked as one: its entries go past the budget.
  await run('data', 'zip inside gzip', as(422, 'dataset-too-large'), () => {
    const form = dataForm(gzip(zip300()), 'set.gz');
    return () => dataTooLarge(form);
  });

  // ---- multipart and media type
  await run('multipart', '1.5M parts', '413', () => {
    const boundary = 'hostileboundary';
    const part = `--${boundary}\r\nContent-Disposition: form-data; name="norm"\r\n\r\nL2\r\n`;
    const body = new TextEncoder().encode(`${part.repeat(1_500_000)}--${boundary}--\r\n`);
    return async () => {
      const status = await postAnsweredEarly(new URL('/v1/audits', ctx.service().url), body, {
        ...auth(KEY_A),
        'content-type': `multipart/form-data; boundary=${boundary}`,
      });
      return { answers: String(status), ok: status === 413, fiveXX: status >= 500 ? 1 : 0 };
    };
  });
  await run('multipart', 'one 200 MB part of random bytes', as(422, 'invalid-dataset'), () => {
    const form = dataForm(new Uint8Array(200 * MB).fill(7), 'data.bin');
    return () => refusedAs(422, 'invalid-dataset', 'dataset')(form);
  });
  await run(
    'multipart',
    'urlencoded POST /v1/audits',
    '415',
    () => () =>
      answersStatus(ctx, 415, '/v1/audits', {
        method: 'POST',
        key: KEY_A,
        body: new URLSearchParams({ model: 'ratio-cifar10', norm: 'L2', eps: '0.5' }),
      }),
  );

  // ---- models loaded and trial-run off the event loop
  await run(
    'load',
    'TF.js model of 37 MB: loaded in the intake thread, then cancelled',
    '202, cancelled',
    async () => {
      const form = auditForm(await denseModel(3000), cifar); // 3072 x 3000 float32: 37 MB
      return async () => {
        const { status, text } = await upload(form);
        if (status !== 202) return { answers: String(status), ok: false, fiveXX: status >= 500 ? 1 : 0 };
        const { id } = JSON.parse(text) as { id: string };
        await send(ctx, `/v1/audits/${id}`, { method: 'DELETE', key: KEY_A }).then((r) => r.arrayBuffer());
        const end = await untilFinal(ctx, id);
        if (end.state !== 'cancelled' || end.result !== null) report.runAfterCancel += 1;
        return { answers: `202, ${end.state}`, ok: end.state === 'cancelled' };
      };
    },
  );
  // Every weight present (72 MB), so nothing but its cost refuses it: the 3000x3000 kernel takes
  // the FLOPs of one image past the budget, before tfjs builds any of the 401 layers.
  await run(
    'load',
    '400 convolutions and a 3000x3000 kernel (refused by its budget)',
    `${as(422, 'model-over-budget')} at layers[400]`,
    () => {
      const form = auditForm(deepConvModel(400), cifar);
      return () =>
        refusedAs(
          422,
          'model-over-budget',
          'model.json:modelTopology.config.layers[400].config.filters',
        )(form);
    },
  );
  await run(
    'load',
    'valid 99,990-node ONNX chain: checked off the loop; cancelled mid-load in the pool',
    '202, cancelled',
    () => {
      const form = onnxForm(cifarOnnx({ nodesBefore: 99_988 }));
      return async () => {
        const { status, text } = await upload(form);
        if (status !== 202)
          return { answers: `${status}: ${text.slice(0, 120)}`, ok: false, fiveXX: status >= 500 ? 1 : 0 };
        const { id } = JSON.parse(text) as { id: string };
        // Running: its pool worker is loading (planning) the graph, a long synchronous step.
        const started = Date.now();
        while ((await job(ctx, id)).body.state !== 'running' && Date.now() - started < 120_000)
          await new Promise((resolve) => setTimeout(resolve, 100));
        await new Promise((resolve) => setTimeout(resolve, 1500));
        const cancelled = performance.now();
        await send(ctx, `/v1/audits/${id}`, { method: 'DELETE', key: KEY_A }).then((r) => r.arrayBuffer());
        const end = await untilFinal(ctx, id);
        const seconds = (performance.now() - cancelled) / 1000;
        report.cancelSeconds.push(seconds);
        if (end.state !== 'cancelled' || end.result !== null) report.runAfterCancel += 1;
        return {
          answers: `202, ${end.state} ${seconds.toFixed(1)} s after DELETE`,
          ok: end.state === 'cancelled',
        };
      };
    },
  );
  await run(
    'model',
    'finite at the trial, infinite logits on the data',
    '202, failed (non-finite logit)',
    async () => {
      const form = auditForm(await denseModel(10, 1e38), cifar);
      return async () => {
        const { status, text } = await upload(form);
        if (status !== 202) return { answers: String(status), ok: false, fiveXX: status >= 500 ? 1 : 0 };
        const end = await untilFinal(ctx, (JSON.parse(text) as { id: string }).id);
        const failedRight =
          end.state === 'failed' && end.result === null && String(end.error).includes('non-finite logit');
        return { answers: `202, ${end.state}: ${String(end.error).slice(0, 60)}`, ok: failedRight };
      };
    },
  );

  // ---- cancellation that cannot be lost
  await run(
    'cancel',
    'DELETE while the audit is being persisted (x3)',
    'cancelled, never started',
    () => async () => {
      const ends: string[] = [];
      let ok = true;
      for (let i = 0; i < 3; i++) {
        const { status, text } = await upload(auditForm({ served: 'ratio-cifar10' }, cifar, { n: '4' }));
        if (status !== 202) return { answers: String(status), ok: false };
        const { id } = JSON.parse(text) as { id: string };
        await send(ctx, `/v1/audits/${id}`, { method: 'DELETE', key: KEY_A }).then((r) => r.arrayBuffer());
        const end = await untilFinal(ctx, id);
        ends.push(`${end.state}${end.started_at ? ' (started)' : ''}`);
        const right = end.state === 'cancelled' && end.result === null;
        if (!right) report.runAfterCancel += 1;
        ok &&= right;
      }
      // The quota slots came back: this key may start its 4 audits again.
      const again = await upload(auditForm({ served: 'ratio-cifar10' }, cifar, { n: '2' }));
      if (again.status === 202)
        await send(ctx, `/v1/audits/${(JSON.parse(again.text) as { id: string }).id}`, {
          method: 'DELETE',
          key: KEY_A,
        });
      return { answers: `${ends.join(', ')}; next submit ${again.status}`, ok: ok && again.status === 202 };
    },
  );

  // ---- /v2, /metrics: one key policy; bounded answers
  const pixels = (n: number) =>
    JSON.stringify({
      inputs: [
        { name: 'input', shape: [n, 32, 32, 3], datatype: 'FP32', data: new Array(n * 3072).fill(0.5) },
      ],
    });
  const v2 = async (body: string, key?: string) => {
    const res = await send(ctx, '/v2/models/ratio-cifar10/infer', {
      method: 'POST',
      body,
      key,
      headers: { 'content-type': 'application/json' },
    });
    return { status: res.status, text: await res.text() };
  };
  await run('v2', 'infer without a key (keys required for analyses)', '401', () => async () => {
    const { status } = await v2(pixels(1));
    return { answers: String(status), ok: status === 401 };
  });
  await run('v2', "'outputs' repeated 100k times with 64 images", '400', () => {
    const body = JSON.parse(pixels(64)) as Record<string, unknown>;
    body.outputs = Array.from({ length: 100_000 }, () => ({ name: 'probabilities' }));
    const text = JSON.stringify(body);
    return async () => {
      const answer = await v2(text, KEY_A);
      return {
        answers: `${answer.status}: ${answer.text.slice(0, 80)}`,
        ok: answer.status === 400,
        fiveXX: answer.status >= 500 ? 1 : 0,
      };
    };
  });
  await run('v2', 'temperature 1e-300; a value 1e309', '400 (range), 400 (Infinity)', () => async () => {
    const body = JSON.parse(pixels(1)) as Record<string, unknown>;
    body.parameters = { temperature: 1e-300 };
    const a = await v2(JSON.stringify(body), KEY_A);
    const b = await v2(pixels(1).replace('0.5', '1e309'), KEY_A);
    return {
      answers: `${a.status}, ${b.status}: ${b.text.slice(0, 90)}`,
      ok: a.status === 400 && b.status === 400 && b.text.includes('Infinity'),
    };
  });
  await run('v2', '/metrics without a key', '401', () => () => answersStatus(ctx, 401, '/metrics'));

  // ---- SSE: capped per key and in total
  await run(
    'sse',
    '500 event streams from one key on its own audit',
    '8 x 200, 492 x 429',
    () => async () => {
      const { status, text } = await upload(
        // A small eps breaks no point early: every attack runs its full budget, so the audit and its
        // streams stay open for the whole burst.
        auditForm({ served: 'ratio-cifar10' }, cifar, {
          n: '64',
          eps: '0.01',
          iterations: '20',
          queries: '1000',
        }),
      );
      if (status !== 202) return { answers: `${status}: ${text.slice(0, 90)}`, ok: false };
      const { id } = JSON.parse(text) as { id: string };
      const controller = new AbortController();
      const sseAgent = new Agent({ connections: 600 });
      const answers = await Promise.all(
        Array.from({ length: 500 }, () =>
          fetch(`${ctx.service().url}/v1/audits/${id}/events`, {
            headers: auth(KEY_A),
            signal: controller.signal,
            dispatcher: sseAgent,
          }).then(
            async (res) => {
              if (res.status !== 200) await res.arrayBuffer();
              return res.status;
            },
            () => 0,
          ),
        ),
      );
      await new Promise((resolve) => setTimeout(resolve, 3000));
      const stateAfterBurst = String((await job(ctx, id)).body.state);
      controller.abort();
      await sseAgent.close().catch(() => {});
      await send(ctx, `/v1/audits/${id}`, { method: 'DELETE', key: KEY_A }).then((r) => r.arrayBuffer());
      await untilFinal(ctx, id);
      const ok200 = answers.filter((s) => s === 200).length;
      const limited = answers.filter((s) => s === 429).length;
      return {
        answers: `${ok200} x 200, ${limited} x 429 (audit ${stateAfterBurst} after the burst)`,
        ok: ok200 === 8 && limited === 492,
      };
    },
  );

  // ---- durable state: one corrupt file, ONNX across kill -9, lost owner.json
  await run(
    'state',
    'kill -9 mid-audit, then job.json null and {}, a truncated shard, owner.json lost',
    'starts; 3 quarantined, others served, 0 lost',
    () => async () => {
      // Five audits: two finished, one ONNX and one served audit running or queued at the kill.
      const ids: string[] = [];
      for (const fields of [{ n: '2' }, { n: '2' }]) {
        const { text } = await upload(auditForm({ served: 'ratio-cifar10' }, cifar, fields), KEY_B);
        const { id } = JSON.parse(text) as { id: string };
        await untilFinal(ctx, id, 300_000, KEY_B);
        ids.push(id);
      }
      const slow = await upload(
        auditForm(
          { served: 'ratio-cifar10' },
          { bytes: ctx.cifar, name: 'test_batch.bin' },
          { n: '64', iterations: '2', queries: '100' },
        ),
        KEY_B,
      );
      const slowId = (JSON.parse(slow.text) as { id: string }).id;
      const onnxAudit = await upload(auditForm(onnxFiles(base), cifar, { n: '4' }), KEY_B);
      const onnxId = (JSON.parse(onnxAudit.text) as { id: string }).id;
      ids.push(slowId, onnxId);
      // Wait for a finished shard of the slow audit, then kill -9.
      const shards = path.join(stateDir, 'audits', slowId, 'shards');
      const started = Date.now();
      while (
        (await readdir(shards).catch(() => [] as string[])).filter((f) => f.endsWith('.json')).length === 0
      ) {
        if (Date.now() - started > 300_000) return { answers: 'no shard finished in 300 s', ok: false };
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      const before = new Map<string, number>();
      for (const id of ids) before.set(id, (await job(ctx, id, KEY_B)).status);
      ctx.service().child.kill('SIGKILL');
      await new Promise((resolve) => ctx.service().child.once('exit', resolve));
      const dir = (id: string) => path.join(stateDir, 'audits', id);
      await writeFile(path.join(dir(ids[0]), 'job.json'), 'null');
      await writeFile(path.join(dir(ids[1]), 'job.json'), '{}');
      const shardFile = (await readdir(shards)).find((f) => f.endsWith('.json'))!;
      await writeFile(path.join(shards, shardFile), '{"audit": "trunc');
      // owner.json lost on the ONNX audit: its owner is in job.json too.
      await rm(path.join(dir(onnxId), 'owner.json'), { force: true });
      await ctx.restart();
      const after = new Map<string, { status: number; state: string; error: string }>();
      for (const id of ids) {
        const { status, body } = await job(ctx, id, KEY_B);
        after.set(id, { status, state: String(body.state), error: String(body.error ?? '') });
      }
      // Quarantined audits are listed to their owner when job.json names it (the slow one); the
      // two whose job.json is gone are kept on disk and named at start, visible to no key.
      const onDisk = await Promise.all(
        ids.map((id) =>
          readdir(dir(id)).then(
            () => true,
            () => false,
          ),
        ),
      );
      // Lost: listed to its key before the kill, not after (quarantined ones are listed, as failed).
      report.auditsLost += ids.filter((id) => before.get(id) === 200 && after.get(id)?.status !== 200).length;
      const slowAfter = after.get(slowId)!;
      const onnxEnd = await untilFinal(ctx, onnxId, 300_000, KEY_B);
      const ready = (await send(ctx, '/health/ready')).status;
      const ok =
        ready === 200 &&
        onDisk.every(Boolean) &&
        ids.every((id) => after.get(id)?.status === 200) &&
        slowAfter.state === 'failed' &&
        slowAfter.error.includes('shards/') &&
        onnxEnd.state === 'succeeded';
      return {
        answers: `ready ${ready}; slow: ${slowAfter.state} (${slowAfter.error.slice(0, 50)}); ONNX: ${onnxEnd.state}; dirs kept ${onDisk.filter(Boolean).length}/${ids.length}`,
        ok,
        note: [...before.keys()]
          .map(
            (id) => `${id.slice(0, 8)} ${before.get(id)} -> ${after.get(id)?.status} ${after.get(id)?.state}`,
          )
          .join('; '),
      };
    },
  );
  return report;
}
