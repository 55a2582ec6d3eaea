import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ArrayDataset } from '../../../src/data/dataset.js';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import { type AuditEvent, AuditQueue } from '../../../src/jobs/audit/registry.js';
import { emptyReport } from '../../helpers/reports.js';

const classifier = functionClassifier({ inputShape: [2, 2, 1], numClasses: 2 }, (x) =>
  tf.tidy(
    () =>
      tf.concat(
        [tf.mean(x, [1, 2, 3]).reshape([-1, 1]), tf.zerosLike(tf.mean(x, [1, 2, 3]).reshape([-1, 1]))],
        1,
      ) as tf.Tensor2D,
  ),
);
const dataset = new ArrayDataset({
  images: new Uint8Array(4 * 4).fill(200),
  shape: [2, 2, 1],
  labels: Int32Array.from([0, 0, 0, 0]),
  classNames: ['a', 'b'],
});
const parameters = { model: 'm', norm: 'L2' as const, eps: 0.5, version: 'standard' as const, n: 3, seed: 0 };

describe('AuditQueue', () => {
  it('runs jobs in order with the first n points, reports progress, and frees the input tensor', async () => {
    const seen: number[] = [];
    const queue = new AuditQueue({
      run: async (_model, x, y, options) => {
        seen.push(x.shape[0], y.length);
        options.onProgress?.({ attack: 'fake', done: 1, total: 2 });
        return emptyReport(x.shape[0]);
      },
    });
    const before = tf.memory().numTensors;
    const job = queue.submit({ parameters, classifier, ownsClassifier: false, dataset });
    expect(job.state).toBe('queued');
    const events: AuditEvent['type'][] = [];
    queue.subscribe(job.id, (event) => events.push(event.type));
    const done = await queue.settled(job.id);
    expect(done?.state).toBe('succeeded');
    expect(done?.result?.robust_accuracy).toBe(0.5);
    expect(done?.progress).toEqual({ attack: 'fake', done: 1, total: 2 });
    expect(seen).toEqual([3, 3]);
    expect(events).toEqual(['state', 'progress', 'done']);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('records a failing audit as failed with its message, and cancels queued jobs before they start', async () => {
    let calls = 0;
    const queue = new AuditQueue({
      maxRunning: 1,
      run: async () => {
        calls += 1;
        throw new Error('model exploded');
      },
    });
    const first = queue.submit({ parameters, classifier, ownsClassifier: false, dataset });
    const second = queue.submit({ parameters, classifier, ownsClassifier: false, dataset });
    expect(queue.cancel(second.id)?.state).toBe('cancelled');
    const failed = await queue.settled(first.id);
    expect(failed).toMatchObject({ state: 'failed', error: 'model exploded' });
    expect(calls).toBe(1);
    expect(queue.countByState()).toMatchObject({ failed: 1, cancelled: 1 });
  });

  it('an audit whose model throws when freed ends as it ran, and the queue goes on', async () => {
    // tfjs throws when a model is disposed twice; the audit had succeeded by then.
    const fragile = {
      ...classifier,
      dispose: () => {
        throw new Error('the model is already disposed');
      },
    };
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown) => rejections.push(reason);
    process.on('unhandledRejection', onRejection);
    try {
      const queue = new AuditQueue({ maxRunning: 1, run: async (_m, x) => emptyReport(x.shape[0]) });
      const events: AuditEvent['type'][] = [];
      const first = queue.submit({ parameters, classifier: fragile, ownsClassifier: true, dataset });
      queue.subscribe(first.id, (event) => events.push(event.type));
      const second = queue.submit({ parameters, classifier, ownsClassifier: false, dataset });
      expect(await queue.settled(first.id)).toMatchObject({ state: 'succeeded', error: null });
      expect(events.at(-1)).toBe('done');
      expect((await queue.settled(second.id))?.state).toBe('succeeded');
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(rejections).toEqual([]);
    } finally {
      process.off('unhandledRejection', onRejection);
    }
  });

  it('forgets the oldest finished jobs beyond `retain`', async () => {
    const queue = new AuditQueue({ retain: 2, run: async (_m, x) => emptyReport(x.shape[0]) });
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const job = queue.submit({ parameters, classifier, ownsClassifier: false, dataset });
      ids.push(job.id);
      await queue.settled(job.id);
    }
    expect(queue.get(ids[0])).toBeUndefined();
    expect(queue.get(ids[3])?.state).toBe('succeeded');
  });
});
