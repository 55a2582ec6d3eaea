import { getPriority, setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import { type MultipartForm, type MultipartLimits, MultipartParser } from '../../data/multipart.js';
import { initBackend } from '../../engine/backend/backend.js';
import {
  type PartRequest,
  type PreparedParts,
  prepareParts,
  type SerializedError,
  serializeError,
} from './intake.js';

/**
 * One upload's intake thread (started by intake-host.ts): parses the multipart body as its chunks
 * arrive, then decodes the data set and loads, checks and trial-runs the model when asked, and
 * sends back only the audited points, the model's facts and its files. The host ends the thread
 * when the upload is done with, whatever happened: its memory goes with it.
 */

export type IntakeMessage =
  | { type: 'open'; contentType: string; limits: MultipartLimits }
  | { type: 'chunk'; bytes: Uint8Array }
  | { type: 'end' }
  | { type: 'prepare'; request: PartRequest };

export type IntakeReply =
  | { type: 'ready' }
  | {
      type: 'form';
      fields: Array<[string, string]>;
      files: Array<{ field: string; filename: string; type: string }>;
    }
  | { type: 'prepared'; parts: PreparedParts }
  | { type: 'error'; error: SerializedError };

const port = parentPort;
if (!port) throw new Error('intake-worker.ts runs only as a worker thread');

const reply = (message: IntakeReply, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);

// On Linux a priority is per thread: this one yields the CPU to the event loop that answers requests.
try {
  setPriority(Math.min(19, getPriority() + 5));
} catch {
  // Not permitted here: the same work at the same priority.
}

// The backend starts while the body streams in: the trial forward pass needs it.
const backend = initBackend();
backend.then(
  () => reply({ type: 'ready' }),
  () => reply({ type: 'ready' }),
);

let parser: MultipartParser | undefined;
let failed = false;
let form: MultipartForm | undefined;

function fail(error: unknown): void {
  failed = true;
  parser?.abort();
  reply({ type: 'error', error: serializeError(error) });
}

port.on('message', (message: IntakeMessage) => {
  if (failed) return;
  try {
    if (message.type === 'open') parser = new MultipartParser(message.contentType, message.limits);
    else if (message.type === 'chunk') parser?.write(message.bytes);
    else if (message.type === 'end') {
      void parser
        ?.end()
        .then((parsed) => {
          form = parsed;
          reply({
            type: 'form',
            fields: parsed.fields,
            files: parsed.files.map(({ field, filename, type }) => ({ field, filename, type })),
          });
        })
        .catch(fail);
    } else if (message.type === 'prepare') {
      void (async () => {
        await backend;
        if (!form) throw new Error('prepare before the form was read');
        const parts = await prepareParts(form.files, message.request);
        const transfer = [
          parts.dataset.images.buffer,
          parts.dataset.labels.buffer,
          // Model files may share a pooled buffer: each buffer once (the thread ends after this).
          ...(parts.model?.files ?? []).map(([, bytes]) => bytes.buffer),
        ].filter(
          (buffer, i, all): buffer is ArrayBuffer =>
            buffer instanceof ArrayBuffer && all.indexOf(buffer) === i,
        );
        reply({ type: 'prepared', parts }, transfer);
      })().catch(fail);
    }
  } catch (error) {
    fail(error);
  }
});
