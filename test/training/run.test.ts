import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayDataset } from '../../src/data/dataset.js';
import { maxProbabilities } from '../../src/engine/ood/calibration.js';
import { thresholdAtTpr } from '../../src/engine/ood/metrics.js';
import { buildArchitecture } from '../../src/training/architectures.js';
import { CheckpointError, decodeCheckpoint, encodeCheckpoint } from '../../src/training/checkpoint.js';
import { resolveConfig, type TrainConfig } from '../../src/training/config.js';
import { splitValidation } from '../../src/training/data.js';
import { runTraining } from '../../src/training/run.js';
import { datasetLogits, Trainer } from '../../src/training/trainer.js';
import { Rng } from '../../src/util/random.js';

let folder: string;
beforeAll(async () => {
  folder = await mkdtemp(path.join(tmpdir(), 'ratio-train-'));
});
afterAll(async () => {
  await rm(folder, { recursive: true, force: true });
});

/** Random 8x8x3 images: labels follow the mean brightness of the red channel (learnable, but barely matters here). */
function syntheticData(n: number, seed: number, labelled: boolean): ArrayDataset {
  const rng = new Rng(seed);
  const images = new Uint8Array(n * 8 * 8 * 3);
  for (let i = 0; i < images.length; i++) images[i] = rng.int(256);
  const labels = labelled ? Int32Array.from({ length: n }, (_, i) => images[i * 192] % 3) : undefined;
  return new ArrayDataset({ images, shape: [8, 8, 3], labels, classNames: labelled ? ['a', 'b', 'c'] : [] });
}

function smallRatioConfig(name: string, overrides: Partial<TrainConfig> = {}): TrainConfig {
  return resolveConfig({
    name,
    objective: 'ratio',
    architecture: 'small-cnn',
    width: 0.125,
    outData: 'synthetic',
    validationSize: 12,
    epochs: 2,
    batchSize: 12,
    lr: 0.05,
    warmupEpochs: 0.5,
    ema: 0.9,
    epsIn: 0.25,
    epsOut: 0.5,
    stepsIn: 2,
    stepsOut: 2,
    cutout: 4,
    seed: 7,
    runDir: path.join(folder, 'runs'),
    outDir: path.join(folder, 'models'),
    ...overrides,
  });
}

const data = () => ({ train: syntheticData(48, 1, true), out: syntheticData(40, 2, false) });

async function weightsOf(model: tf.LayersModel): Promise<Float32Array[]> {
  return model.weights.map((w) => w.read().dataSync() as Float32Array);
}

describe('resume', () => {
  it('an interrupted and resumed run ends with exactly the weights of an uninterrupted one', async () => {
    // 36 training images / batch 12 = 3 steps per epoch, 6 in all; the EMA weights are exported.
    const straight = await runTraining(smallRatioConfig('straight'), { data: data() });
    expect(straight.stopped).toBe('finished');
    expect(straight.step).toBe(6);

    // Interrupt like SIGINT (abort) after step 2, then stop again by the step budget, then finish.
    const controller = new AbortController();
    const first = await runTraining(smallRatioConfig('interrupted'), {
      data: data(),
      signal: controller.signal,
      onProgress: (p) => {
        if (p.step === 2) controller.abort();
      },
    });
    expect(first.stopped).toBe('aborted');
    expect(first.step).toBe(2);
    first.model.dispose();
    const second = await runTraining(smallRatioConfig('interrupted', { maxSteps: 2 }), {
      data: data(),
      resume: true,
    });
    expect(second.stopped).toBe('max-steps');
    expect(second.step).toBe(4);
    second.model.dispose();
    const last = await runTraining(smallRatioConfig('interrupted'), { data: data(), resume: true });
    expect(last.stopped).toBe('finished');
    expect(last.step).toBe(6);

    const a = await weightsOf(straight.model);
    const b = await weightsOf(last.model);
    expect(b.length).toBe(a.length);
    for (let i = 0; i < a.length; i++) expect(Array.from(b[i])).toEqual(Array.from(a[i]));
    // Not trivially equal: training moved the weights from their start.
    expect(straight.card?.steps).toBe(6);
    const log = (await readFile(path.join(folder, 'runs', 'interrupted', 'log.jsonl'), 'utf8'))
      .trim()
      .split('\n');
    const starts = log
      .map((line) => JSON.parse(line) as { type: string; resumedAtStep?: number })
      .filter((r) => r.type === 'start');
    expect(starts.map((r) => r.resumedAtStep)).toEqual([0, 2, 4]);
    // Every step is logged once, in order, across the three processes.
    const stepRecords = log
      .map((line) => JSON.parse(line) as { type: string; step?: number })
      .filter((r) => r.type === 'step');
    expect(stepRecords.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
    const exported = JSON.parse(await readFile(path.join(folder, 'models', 'straight', 'card.json'), 'utf8'));
    expect(exported).toMatchObject({
      objective: 'ratio',
      epsIn: 0.25,
      epsOut: 0.5,
      inputShape: [8, 8, 3],
      epochs: 2,
    });
    expect(exported.classNames).toEqual(['a', 'b', 'c']);
    expect(exported.temperature).toBeGreaterThan(0);
    straight.model.dispose();
    last.model.dispose();
  });

  it('writes into the card only the budgets its objective trained with', async () => {
    const plain = await runTraining(smallRatioConfig('plain-card', { objective: 'plain', epochs: 1 }), {
      data: data(),
    });
    const card = JSON.parse(await readFile(path.join(folder, 'models', 'plain-card', 'card.json'), 'utf8'));
    expect(card.objective).toBe('plain');
    expect(card).not.toHaveProperty('epsIn');
    expect(card).not.toHaveProperty('epsOut');
    expect(card).not.toHaveProperty('lambda');
    expect(card.outData).toBeNull();
    // The OOD threshold lets 95% of the validation split through at the card's temperature.
    const { validation } = splitValidation(data().train, 12, 7);
    const scores = maxProbabilities(datasetLogits(plain.model, validation!, 12), 3, card.temperature);
    expect(card.oodThreshold).toBe(thresholdAtTpr(scores, 0.95));
    expect(card.metrics.oodThresholdTruePositiveRate).toBe(0.95);
    plain.model.dispose();
  });

  it('refuses a corrupt, truncated or foreign checkpoint with a clear message', async () => {
    const config = smallRatioConfig('guarded', { epochs: 1, maxSteps: 1 });
    const first = await runTraining(config, { data: data() });
    first.model.dispose();
    const bytes = new Uint8Array(await readFile(first.checkpointFile));
    expect(() => decodeCheckpoint(bytes)).not.toThrow();

    const corrupt = bytes.slice();
    corrupt[corrupt.length - 3] ^= 0xff;
    await writeFile(first.checkpointFile, corrupt);
    await expect(runTraining(config, { data: data(), resume: true })).rejects.toThrow(
      /corrupt: the payload's sha256/,
    );

    await writeFile(first.checkpointFile, bytes.slice(0, bytes.length - 100));
    await expect(runTraining(config, { data: data(), resume: true })).rejects.toThrow(/truncated/);

    await writeFile(first.checkpointFile, new TextEncoder().encode('{"weights": []}'));
    await expect(runTraining(config, { data: data(), resume: true })).rejects.toThrow(CheckpointError);

    await writeFile(first.checkpointFile, bytes);
    const foreign = smallRatioConfig('guarded', { epochs: 1, lambda: 0.5 });
    await expect(runTraining(foreign, { data: data(), resume: true })).rejects.toThrow(
      /belongs to a different run.*lambda: checkpoint 1, this run 0.5/,
    );
    await expect(runTraining(config, { data: data() })).rejects.toThrow(
      /pass --resume to continue it or --fresh/,
    );
    const wider = smallRatioConfig('guarded', { epochs: 1, width: 0.25 });
    await expect(runTraining(wider, { data: data(), resume: true })).rejects.toThrow(/model weight shapes/);
  });

  it('round-trips checkpoint content exactly', () => {
    const content = {
      fingerprint: { a: 1 },
      position: {
        step: 3,
        epoch: 1,
        position: 24,
        outEpoch: 0,
        outPosition: 36,
        rng: { state: 99, spareNormal: 0.5 },
        elapsedSeconds: 2,
      },
      weights: [Float32Array.from([1, 2, 3]), Float32Array.from([-0.5])],
      optimizer: [null, Float32Array.from([4])],
      ema: [Float32Array.from([1, 1, 1]), Float32Array.from([0])],
    };
    const decoded = decodeCheckpoint(encodeCheckpoint(content));
    expect(decoded.position).toEqual(content.position);
    expect(decoded.weights.map((w) => Array.from(w))).toEqual([[1, 2, 3], [-0.5]]);
    expect(decoded.optimizer.map((w) => (w ? Array.from(w) : null))).toEqual([null, [4]]);
    expect(decoded.ema?.map((w) => Array.from(w))).toEqual([[1, 1, 1], [0]]);
  });
});

describe('initFrom: a run that starts from another run', () => {
  it("starts from the source's EMA weights with a fresh optimiser, and its own resume is bit for bit", async () => {
    const source = await runTraining(smallRatioConfig('init-source', { epochs: 1 }), { data: data() });
    source.model.dispose();
    const sourceBytes = new Uint8Array(await readFile(source.checkpointFile));
    const sourceContent = decodeCheckpoint(sourceBytes);
    expect(sourceContent.ema).not.toBeNull();

    // The starting point, seen through the trainer: the EMA weights exactly, no momentum carried over.
    const model = buildArchitecture('small-cnn', { numClasses: 3, inputShape: [8, 8, 3], width: 0.125 });
    const config = smallRatioConfig('init-unit', { initFrom: source.checkpointFile });
    const trainer = new Trainer(model, config, { ...data(), validation: undefined });
    trainer.startFrom(sourceContent);
    const start = trainer.checkpoint();
    expect(start.weights.map((w) => Array.from(w))).toEqual(sourceContent.ema!.map((w) => Array.from(w)));
    expect(start.ema!.map((w) => Array.from(w))).toEqual(sourceContent.ema!.map((w) => Array.from(w)));
    expect(start.optimizer.every((buffer) => buffer === null || buffer.every((v) => v === 0))).toBe(true);
    expect(start.fingerprint.initFrom).toBe(sourceContent.payloadSha256);
    trainer.dispose();
    model.dispose();

    // Continued straight, and continued with an interruption while the source file is overwritten.
    const continued = (name: string, overrides: Partial<TrainConfig> = {}) =>
      smallRatioConfig(name, { initFrom: source.checkpointFile, lr: 0.01, warmupEpochs: 0, ...overrides });
    const straight = await runTraining(continued('init-straight'), { data: data() });
    expect(straight.stopped).toBe('finished');
    const first = await runTraining(continued('init-interrupted', { maxSteps: 3 }), { data: data() });
    expect(first.stopped).toBe('max-steps');
    first.model.dispose();
    await writeFile(source.checkpointFile, new Uint8Array([1, 2, 3]));
    const last = await runTraining(continued('init-interrupted'), { data: data(), resume: true });
    expect(last.stopped).toBe('finished');
    const a = await weightsOf(straight.model);
    const b = await weightsOf(last.model);
    for (let i = 0; i < a.length; i++) expect(Array.from(b[i])).toEqual(Array.from(a[i]));

    // The same config without initFrom may not resume a checkpoint that started from other weights.
    const fromScratch = await runTraining(smallRatioConfig('init-straight', { lr: 0.01, warmupEpochs: 0 }), {
      data: data(),
      resume: true,
    }).catch((error: unknown) => error);
    expect(fromScratch).toBeInstanceOf(CheckpointError);
    expect((fromScratch as Error).message).toMatch(/initFrom: checkpoint "[0-9a-f]{64}", this run undefined/);
    await writeFile(source.checkpointFile, sourceBytes);
    straight.model.dispose();
    last.model.dispose();
  });

  it('refuses a source of other weight shapes, naming the setting', async () => {
    const source = await runTraining(smallRatioConfig('init-narrow', { epochs: 1, maxSteps: 1 }), {
      data: data(),
    });
    source.model.dispose();
    const wider = smallRatioConfig('init-wider', { width: 0.25, initFrom: source.checkpointFile });
    await expect(runTraining(wider, { data: data() })).rejects.toThrow(
      /'initFrom' weight \d+ has \d+ values/,
    );
    const missing = smallRatioConfig('init-missing', { initFrom: path.join(folder, 'nowhere.bin') });
    await expect(runTraining(missing, { data: data() })).rejects.toThrow(/cannot read checkpoint/);
  });
});
