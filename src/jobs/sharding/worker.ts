import { getPriority, setPriority } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../engine/backend/backend.js';
import type { Classifier } from '../../engine/model/classifier.js';
import { loadClassifierFromFiles } from '../../engine/model/files.js';
import { worstCaseConfidence } from '../../engine/ood/worst-case.js';
import { CHECKED_MODEL_LIMITS, loadOptions } from '../models/index.js';
import type { ParentMessage, ShardTaskMessage, WorkerMessage, WorstCaseTaskMessage } from './protocol.js';
import { runShard } from './shards.js';

/**
 * A shard-pool worker process (forked by `ShardPool`): its own tfjs backend, one shard at a time,
 * the model of the last audit kept loaded. Exits when the parent goes away.
 */

/** Sends to the parent; when the parent is gone (killed), this worker has no one to work for. */
const send = (message: WorkerMessage) => {
  if (!process.connected) process.exit(0);
  process.send?.(message, undefined, undefined, (error: Error | null) => {
    if (error) process.exit(0);
  });
};

/** The model of the current audit; `loaded` once its load has finished (to free it at once). */
let model: { key: string; classifier: Promise<Classifier>; loaded?: Classifier } | undefined;
const controllers = new Map<number, AbortController>();

function classifierFor(message: ShardTaskMessage | WorstCaseTaskMessage): Promise<Classifier> {
  if (model?.key !== message.modelKey) {
    if (!message.files) throw new Error(`the worker holds no model '${message.modelKey}' and got no files`);
    const previous = model?.classifier;
    void previous?.then(
      (c) => c.dispose(),
      () => {},
    );
    const entry: NonNullable<typeof model> = {
      key: message.modelKey,
      // The parent loaded these files under its place's limits already.
      classifier: loadClassifierFromFiles(message.files, loadOptions(CHECKED_MODEL_LIMITS, 'local')),
    };
    entry.classifier.then(
      (loaded) => {
        entry.loaded = loaded;
      },
      () => {},
    );
    model = entry;
  }
  return model.classifier;
}

async function runTask(message: ShardTaskMessage): Promise<void> {
  const controller = new AbortController();
  controllers.set(message.task, controller);
  let x: tf.Tensor4D | undefined;
  let probe: { x: tf.Tensor4D; y: Int32Array } | undefined;
  // Everything inside the try: this runs on a voided promise, and an unhandled rejection would be
  // rethrown by tfjs-wasm's runtime and end the worker with its task unanswered.
  try {
    x = tf.tensor4d(message.x, message.shape);
    probe = message.probe
      ? { x: tf.tensor4d(message.probe.x, message.probe.shape), y: message.probe.y }
      : undefined;
    const classifier = await classifierFor(message);
    const part = await runShard(classifier, { x, y: message.y, probe }, message.range, message.settings, {
      signal: controller.signal,
      onProgress: (progress) => send({ type: 'progress', task: message.task, progress }),
    });
    send({ type: 'result', task: message.task, part });
  } catch (error) {
    const failure = error instanceof Error ? error : new Error(String(error));
    send({ type: 'error', task: message.task, name: failure.name, message: failure.message });
  } finally {
    controllers.delete(message.task);
    tf.dispose([x, probe?.x]);
  }
}

async function runWorstCase(message: WorstCaseTaskMessage): Promise<void> {
  const controller = new AbortController();
  controllers.set(message.task, controller);
  let x: tf.Tensor4D | undefined;
  try {
    x = tf.tensor4d(message.x, message.shape);
    const classifier = await classifierFor(message);
    const found = await worstCaseConfidence(classifier, x, {
      ...message.options,
      signal: controller.signal,
      onProgress: (p) =>
        send({ type: 'worst-case-progress', task: message.task, done: p.done, total: p.total }),
    });
    const images = found.images.dataSync() as Float32Array;
    found.images.dispose();
    const { confidence, cleanConfidence, predicted } = found;
    send({
      type: 'worst-case-result',
      task: message.task,
      part: { confidence, cleanConfidence, predicted, images },
    });
  } catch (error) {
    const failure = error instanceof Error ? error : new Error(String(error));
    send({ type: 'error', task: message.task, name: failure.name, message: failure.message });
  } finally {
    controllers.delete(message.task);
    x?.dispose();
  }
}

// Attacks yield the CPU to the service's event loop when both want it (a lower priority).
try {
  setPriority(Math.min(19, getPriority() + 5));
} catch {
  // Not permitted here: the same work at the same priority.
}
const backend = await initBackend();
process.on('message', (message: ParentMessage) => {
  if (message.type === 'shard') void runTask(message);
  else if (message.type === 'worst-case') void runWorstCase(message);
  else if (message.type === 'cancel') {
    controllers.get(message.task)?.abort(new DOMException('the audit was cancelled', 'AbortError'));
  } else if (message.type === 'release') {
    if (model?.key === message.modelKey) {
      const released = model;
      model = undefined;
      // At once when loaded: a 'memory' message read in the same tick must see it freed.
      if (released.loaded) released.loaded.dispose();
      else
        void released.classifier.then(
          (c) => c.dispose(),
          () => {},
        );
    }
  } else if (message.type === 'memory') {
    const memory = tf.memory();
    send({
      type: 'memory',
      request: message.request,
      tensors: memory.numTensors,
      heapUsed: process.memoryUsage().heapUsed,
      rss: process.memoryUsage().rss,
    });
  }
});
process.on('disconnect', () => process.exit(0));
send({ type: 'ready', backend: backend.name, pid: process.pid });
