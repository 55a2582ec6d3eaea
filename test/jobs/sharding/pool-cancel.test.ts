import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { functionClassifier } from '../../../src/engine/model/classifier.js';
import { NonFiniteLogitsError } from '../../../src/engine/model/logits.js';
import { ShardPool } from '../../../src/jobs/sharding/pool.js';
import { buildModel, withHead } from '../../engine/model/onnx/onnx-builder.js';
import { QUICK } from '../../helpers/cifar-audit.js';
import { rejectionOf } from '../../helpers/rejection.js';
import { overflowingModelFiles } from '../../helpers/uploads.js';

/**
 * Issue 26: a cancel reaches a pool worker between engine iterations; a worker stuck in a long
 * synchronous step (here: planning a 20,000-node ONNX graph) used to keep the audit and its memory
 * for as long as the step took. Past the grace period the worker is killed and replaced. A worker
 * also frees an audit's model once the audit ends.
 */

/** x [n,3,32,32] -> `length` Relu nodes -> the classifier head: slow to load, quick to run. */
function reluChain(length: number): Map<string, Uint8Array> {
  const nodes = Array.from({ length }, (_, i) => ({
    op: 'Relu',
    inputs: [i === 0 ? 'x' : `r${i - 1}`],
    outputs: [`r${i}`],
  }));
  const spec = withHead(nodes, `r${length - 1}`);
  return new Map([['model.onnx', buildModel({ ...spec, inputs: [{ name: 'x', dims: ['n', 3, 32, 32] }] })]]);
}

const stub = functionClassifier({ inputShape: [32, 32, 3], numClasses: 2 }, () => {
  throw new Error('the pool runs the model files, not this classifier');
});

let pool: ShardPool;
beforeAll(() => {
  pool = new ShardPool({ workers: 1, cancelGraceMs: 300 });
});
afterAll(async () => {
  await pool?.close();
});

describe('ShardPool cancellation', { timeout: 180_000 }, () => {
  it('kills a worker that does not stop a cancelled shard within the grace period, and replaces it', async () => {
    const x = tf.zeros([2, 32, 32, 3]) as tf.Tensor4D;
    const y = Int32Array.from([0, 1]);
    const controller = new AbortController();
    const restarts = pool.restarts;
    const audit = pool.autoAttack(stub, x, y, {
      ...QUICK,
      shards: 1,
      modelFiles: reluChain(20_000),
      signal: controller.signal,
    });
    // The worker has the shard (and is planning the graph): cancel.
    while (pool.busyPids.length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
    const busy = pool.busyPids[0];
    await new Promise((resolve) => setTimeout(resolve, 200));
    controller.abort(new DOMException('cancelled by the test', 'AbortError'));
    await expect(audit).rejects.toMatchObject({ name: 'AbortError' });
    x.dispose();
    expect(pool.restarts).toBe(restarts + 1);
    expect(pool.pids).not.toContain(busy);
  });

  it('frees the model in the workers when an audit ends', async () => {
    const x = tf.zeros([2, 32, 32, 3]) as tf.Tensor4D;
    const y = Int32Array.from([0, 1]);
    const report = await pool.autoAttack(stub, x, y, { ...QUICK, shards: 1, modelFiles: reluChain(4) });
    x.dispose();
    expect(report.n).toBe(2);
    expect(pool.modelsHeld).toBe(0);
    const memory = await pool.memory();
    expect(memory).toHaveLength(1);
    expect(memory[0].tensors).toBe(0);
  });

  it("a model whose logits overflow on the data fails the audit with the engine's error, not a shard failure", async () => {
    const x = tf.fill([2, 32, 32, 3], 0.5) as tf.Tensor4D;
    const audit = pool.autoAttack(stub, x, Int32Array.from([0, 1]), {
      ...QUICK,
      shards: 1,
      modelFiles: await overflowingModelFiles(2),
    });
    const error = await rejectionOf(audit, NonFiniteLogitsError);
    x.dispose();
    expect(error.message).toContain('non-finite logit');
  });
});
