import { parentPort, workerData } from 'node:worker_threads';
import { initBackend } from '../../engine/backend/backend.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { loadClassifierFromFiles } from '../../engine/model/files.js';
import { CHECKED_MODEL_LIMITS, loadOptions } from '../models/index.js';
import { InProcessCompute } from './compute.js';
import type { WorkerInit, WorkerReply, WorkerRequest } from './compute-protocol.js';

/**
 * The body of a compute worker thread (started by src/jobs/serving/compute-host.ts): its own tfjs backend and
 * its own copy of the served models, loaded from the files the host sends; it runs forward passes and
 * analyses on request, so the HTTP event loop only parses and answers.
 */

const port = parentPort;
if (!port) throw new Error('compute-worker.ts runs only as a worker thread');

const init = workerData as WorkerInit;
const controllers = new Map<number, AbortController>();

function serializeError(error: unknown): WorkerReply & { ok: false } {
  const base = { ok: false as const, id: -1 };
  if (error instanceof Error) {
    const field = (error as { field?: unknown }).field;
    return {
      ...base,
      error: {
        name: error.name,
        message: error.message,
        field: typeof field === 'string' ? field : undefined,
      },
    };
  }
  return { ...base, error: { name: 'Error', message: String(error) } };
}

async function start(): Promise<InProcessCompute> {
  const backend = await initBackend();
  const models = new Map<string, Classifier>();
  for (const model of init.models) {
    // The main thread loaded these files under the service's limits already.
    models.set(
      model.name,
      await loadClassifierFromFiles(model.files, {
        ...loadOptions(CHECKED_MODEL_LIMITS, 'local'),
        card: { name: model.name },
      }),
    );
  }
  port?.postMessage({ ok: true, id: 0, ready: { backend: backend.name, models: [...models.keys()] } });
  return new InProcessCompute(models);
}

// A failed start is reported as the answer to the start-up message (id 0); the host then ends the thread.
const ready = start().catch((error: unknown) => {
  port.postMessage({ ...serializeError(error), id: 0 });
  return undefined;
});

async function handle(request: WorkerRequest, compute: InProcessCompute): Promise<void> {
  const controller = new AbortController();
  controllers.set(request.id, controller);
  try {
    if (request.op === 'probabilities') {
      const started = performance.now();
      const values = await compute.probabilities(
        request.model,
        request.images,
        request.count,
        request.temperatures,
      );
      const reply: WorkerReply = {
        ok: true,
        id: request.id,
        probabilities: values,
        computeMs: performance.now() - started,
      };
      port?.postMessage(reply, [values.buffer as ArrayBuffer]);
    } else if (request.op === 'logits') {
      const values = await compute.logits(request.model, request.images, request.count);
      port?.postMessage({ ok: true, id: request.id, logits: values } satisfies WorkerReply, [
        values.buffer as ArrayBuffer,
      ]);
    } else if (request.op === 'worstCase') {
      const rows = await compute.worstCase(
        request.model,
        request.images,
        request.count,
        request.request,
        controller.signal,
      );
      port?.postMessage({ ok: true, id: request.id, worstCase: rows } satisfies WorkerReply, [
        rows.images.buffer as ArrayBuffer,
      ]);
    } else {
      const rows = await compute.counterfactuals(
        request.model,
        request.images,
        request.count,
        request.request,
        controller.signal,
      );
      port?.postMessage({ ok: true, id: request.id, counterfactuals: rows } satisfies WorkerReply, [
        ...rows.radii.map((r) => r.images.buffer as ArrayBuffer),
      ]);
    }
  } catch (error) {
    port?.postMessage({ ...serializeError(error), id: request.id });
  } finally {
    controllers.delete(request.id);
  }
}

port.on('message', (message: WorkerRequest | { op: 'cancel'; id: number }) => {
  if (message.op === 'cancel') {
    controllers.get(message.id)?.abort(new DOMException('the request was cancelled', 'AbortError'));
    return;
  }
  void ready.then((compute) => {
    if (compute) return handle(message, compute);
    port.postMessage({
      ok: false,
      id: message.id,
      error: { name: 'Error', message: 'the worker failed to start' },
    });
  });
});
