import * as tf from '@tensorflow/tfjs';
import type { Batch, Dataset } from '../data/dataset.js';
import { classAtRank, logitsOf } from '../engine/model/logits.js';
import { Rng } from '../util/random.js';
import type { CheckpointContent, DecodedCheckpoint, TrainingPosition } from './checkpoint.js';
import { runFingerprint } from './checkpoint.js';
import { ConfigError, type TrainConfig } from './config.js';
import { WeightEma } from './ema.js';
import {
  attackInDistribution,
  attackOutDistribution,
  type InnerAttackSettings,
  OBJECTIVE_PARTS,
  objectiveLoss,
} from './objectives.js';
import { Sgd } from './optimizer.js';
import { learningRateAt, type ScheduleSettings } from './schedule.js';

export interface TrainProgress {
  epoch: number;
  epochs: number;
  step: number;
  totalSteps: number;
  stepsPerEpoch: number;
  lr: number;
  loss: number;
  ceIn: number;
  ceOut: number | null;
  /** In-distribution training images per second over this process's steps. */
  imagesPerSecond: number;
  etaSeconds: number;
}

export interface TrainEvents {
  signal?: AbortSignal;
  onProgress?: (progress: TrainProgress) => void;
  /** One JSON-serialisable record per step / epoch (the JSON-lines log). */
  onLog?: (record: Record<string, unknown>) => void;
  /** Persists a checkpoint (every `checkpointMinutes`, at epoch ends, on stop). */
  saveCheckpoint?: (content: CheckpointContent) => Promise<void>;
}

export type StopReason = 'finished' | 'aborted' | 'max-steps';

/**
 * The training loop of every objective. The trainer owns its optimizer and EMA state but not the
 * model or the data; all of its state is in `checkpoint()` so a run resumes bit for bit.
 */
export class Trainer {
  readonly stepsPerEpoch: number;
  readonly totalSteps: number;
  private readonly optimizer: Sgd;
  private readonly ema: WeightEma | undefined;
  private readonly rng: Rng;
  private readonly schedule: ScheduleSettings;
  private readonly numClasses: number;
  /** sha256 of the checkpoint payload this run started from (config `initFrom`), if any. */
  private startingWeights: string | undefined;
  position: TrainingPosition;

  constructor(
    readonly model: tf.LayersModel,
    readonly config: TrainConfig,
    readonly data: { train: Dataset; validation?: Dataset; out?: Dataset },
  ) {
    const parts = OBJECTIVE_PARTS[config.objective];
    if (parts.out && !data.out)
      throw new ConfigError(`objective '${config.objective}' needs out-distribution data`);
    if (data.train.size < config.batchSize) {
      throw new ConfigError(
        `'batchSize' (${config.batchSize}) exceeds the training set (${data.train.size} images)`,
      );
    }
    if (data.out && data.out.size < config.batchSize) {
      throw new ConfigError(
        `'batchSize' (${config.batchSize}) exceeds the out-distribution set (${data.out.size} images)`,
      );
    }
    this.numClasses = model.outputs[0].shape[1] as number;
    this.stepsPerEpoch = Math.floor(data.train.size / config.batchSize);
    this.totalSteps = this.stepsPerEpoch * config.epochs;
    this.schedule = {
      schedule: config.schedule,
      lr: config.lr,
      warmupSteps: Math.round(config.warmupEpochs * this.stepsPerEpoch),
      totalSteps: this.totalSteps,
      milestones: config.stepMilestones.map((epoch) => Math.round(epoch * this.stepsPerEpoch)),
      gamma: config.stepGamma,
    };
    this.optimizer = new Sgd(model.trainableWeights, config);
    this.ema = config.ema > 0 ? new WeightEma(model, config.ema) : undefined;
    this.rng = new Rng(config.seed);
    this.position = {
      step: 0,
      epoch: 0,
      position: 0,
      outEpoch: 0,
      outPosition: 0,
      rng: this.rng.getState(),
      elapsedSeconds: 0,
    };
  }

  fingerprint(): Record<string, unknown> {
    const fingerprint = runFingerprint(
      this.config,
      this.model.weights.map((w) => w.shape as number[]),
    );
    return this.startingWeights ? { ...fingerprint, initFrom: this.startingWeights } : fingerprint;
  }

  /**
   * Starts from another run's weights (config `initFrom`): its EMA average where it kept one (the
   * weights it exported), else its weights; the average of this run starts there too. Call before
   * the first step; `payloadSha256` identifies the source in this run's fingerprint.
   */
  startFrom(source: Pick<DecodedCheckpoint, 'weights' | 'ema' | 'payloadSha256'>): void {
    if (this.position.step > 0) throw new Error('startFrom must come before the first step');
    const values = source.ema ?? source.weights;
    const weights = this.model.weights;
    if (values.length !== weights.length) {
      throw new ConfigError(`'initFrom' holds ${values.length} weights, this model has ${weights.length}`);
    }
    weights.forEach((w, i) => {
      if (values[i].length !== tf.util.sizeFromShape(w.shape as number[])) {
        throw new ConfigError(
          `'initFrom' weight ${i} has ${values[i].length} values, this model's ${w.name} is [${w.shape}]`,
        );
      }
    });
    weights.forEach((w, i) => {
      const tensor = tf.tensor(values[i], w.shape as number[]);
      w.write(tensor);
      tensor.dispose();
    });
    this.ema?.setState(values);
    this.startingWeights = source.payloadSha256;
  }

  checkpoint(): CheckpointContent {
    return {
      fingerprint: this.fingerprint(),
      position: { ...this.position, rng: this.rng.getState() },
      weights: this.model.weights.map((w) => w.read().dataSync() as Float32Array),
      optimizer: this.optimizer.state(),
      ema: this.ema ? this.ema.state() : null,
    };
  }

  /** Restores a checkpoint whose fingerprint the caller has checked. */
  restore(content: CheckpointContent): void {
    const weights = this.model.weights;
    if (content.weights.length !== weights.length) {
      throw new Error(`checkpoint holds ${content.weights.length} weights, the model has ${weights.length}`);
    }
    weights.forEach((w, i) => {
      const values = tf.tensor(content.weights[i], w.shape as number[]);
      w.write(values);
      values.dispose();
    });
    this.optimizer.setState(content.optimizer);
    if (this.ema && content.ema) this.ema.setState(content.ema);
    this.rng.setState(content.position.rng);
    this.position = { ...content.position };
    const source = content.fingerprint.initFrom;
    this.startingWeights = typeof source === 'string' ? source : undefined;
  }

  private augmentOptions() {
    return this.config.augment ? { cropPadding: 4, flip: true, cutout: this.config.cutout } : false;
  }

  private inBatches(): Generator<Batch> {
    return this.data.train.batches(this.config.batchSize, {
      shuffle: true,
      seed: this.config.seed,
      epoch: this.position.epoch,
      start: this.position.position,
      augment: this.augmentOptions(),
      dropLast: true,
    });
  }

  private outBatches(): Generator<Batch> | undefined {
    return this.data.out?.batches(this.config.batchSize, {
      shuffle: true,
      // The out-distribution stream has its own order, independent of the in-distribution one.
      seed: (this.config.seed + 0x0d1) >>> 0,
      epoch: this.position.outEpoch,
      start: this.position.outPosition,
      augment: this.augmentOptions(),
      dropLast: true,
    });
  }

  private nextOut(stream: { it: Generator<Batch> | undefined }): Batch | undefined {
    if (!stream.it) return undefined;
    let next = stream.it.next();
    if (next.done) {
      this.position.outEpoch += 1;
      this.position.outPosition = 0;
      stream.it = this.outBatches();
      next = (stream.it as Generator<Batch>).next();
      if (next.done) throw new Error('the out-distribution set yields no full batch');
    }
    this.position.outPosition = next.value.end;
    return next.value;
  }

  /** One optimisation step on an in-distribution batch (and an out-distribution batch of equal size). */
  async step(xIn: tf.Tensor4D, yIn: Int32Array, xOut: tf.Tensor4D | undefined, lr: number) {
    const config = this.config;
    const parts = OBJECTIVE_PARTS[config.objective];
    const labels = tf.tensor1d(yIn, 'int32');
    const inference = (x: tf.Tensor4D) => this.model.apply(x, { training: false }) as tf.Tensor2D;
    const settings = (eps: number, steps: number, stepSize: number): InnerAttackSettings => ({
      attack: config.innerAttack,
      eps,
      steps,
      stepSize,
      rng: this.rng,
    });
    const attackedIn = parts.attackIn
      ? await attackInDistribution(
          inference,
          xIn,
          labels,
          this.numClasses,
          settings(config.epsIn, config.stepsIn, config.stepSizeIn),
        )
      : xIn;
    let attackedOut: tf.Tensor4D | undefined;
    if (parts.out) {
      if (!xOut) throw new Error(`'xOut' is required for objective '${config.objective}'`);
      attackedOut = parts.attackOut
        ? await attackOutDistribution(
            inference,
            xOut,
            this.numClasses,
            settings(config.epsOut, config.stepsOut, config.stepSizeOut),
          )
        : xOut;
    }
    // Both halves go through the network together so BatchNorm's batch statistics see both.
    const input = attackedOut ? tf.concat([attackedIn, attackedOut]) : attackedIn;
    let ceIn = 0;
    let ceOut: number | null = null;
    const variables = this.model.trainableWeights.map((w) => w.read() as tf.Variable);
    const { value, grads } = tf.variableGrads(() => {
      const logits = this.model.apply(input, { training: true }) as tf.Tensor2D;
      const terms = objectiveLoss(config.objective, logits, labels, config.lambda);
      ceIn = terms.ceIn.dataSync()[0];
      ceOut = terms.ceOut ? terms.ceOut.dataSync()[0] : null;
      return terms.total;
    }, variables);
    this.optimizer.step(grads, lr);
    this.ema?.update(this.position.step);
    const loss = value.dataSync()[0];
    tf.dispose([value, labels, ...Object.values(grads)]);
    // The caller owns xIn and xOut; only what this step created is freed here.
    if (input !== attackedIn) input.dispose();
    if (attackedIn !== xIn) attackedIn.dispose();
    if (attackedOut && attackedOut !== xOut) attackedOut.dispose();
    // A cast: TypeScript cannot see the assignment inside the gradient closure.
    return { loss, ceIn, ceOut: ceOut as number | null };
  }

  /** Runs (or continues) training until the last epoch, `maxSteps` steps in this call, or abort. */
  async run(events: TrainEvents = {}): Promise<StopReason> {
    const started = performance.now();
    const startStep = this.position.step;
    const startElapsed = this.position.elapsedSeconds;
    let lastCheckpoint = started;
    const save = async () => {
      this.position.elapsedSeconds = startElapsed + (performance.now() - started) / 1000;
      if (events.saveCheckpoint) await events.saveCheckpoint(this.checkpoint());
      lastCheckpoint = performance.now();
    };
    const outStream = { it: this.outBatches() };
    while (this.position.epoch < this.config.epochs) {
      const inStream = this.inBatches();
      for (const batch of inStream) {
        if (
          events.signal?.aborted ||
          (this.config.maxSteps > 0 && this.position.step - startStep >= this.config.maxSteps)
        ) {
          batch.x.dispose();
          await save();
          if (events.signal?.aborted) return 'aborted';
          return 'max-steps';
        }
        const out = this.nextOut(outStream);
        const lr = learningRateAt(this.position.step, this.schedule);
        let result: Awaited<ReturnType<Trainer['step']>>;
        try {
          result = await this.step(batch.x, batch.y, out?.x, lr);
        } finally {
          batch.x.dispose();
          out?.x.dispose();
        }
        this.position.step += 1;
        this.position.position = batch.end;
        const seconds = (performance.now() - started) / 1000;
        const stepsDone = this.position.step - startStep;
        const progress: TrainProgress = {
          epoch: this.position.epoch,
          epochs: this.config.epochs,
          step: this.position.step,
          totalSteps: this.totalSteps,
          stepsPerEpoch: this.stepsPerEpoch,
          lr,
          ...result,
          imagesPerSecond: (stepsDone * this.config.batchSize) / Math.max(seconds, 1e-9),
          etaSeconds: ((this.totalSteps - this.position.step) * seconds) / stepsDone,
        };
        events.onProgress?.(progress);
        events.onLog?.({ type: 'step', ...progress, time: new Date().toISOString() });
        if (performance.now() - lastCheckpoint >= this.config.checkpointMinutes * 60_000) await save();
        // A step resolves through microtasks only; yielding to the event loop lets signal handlers
        // (SIGINT/SIGTERM -> abort) and log writes run between steps, not only at epoch ends.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      const validation = this.validate();
      this.position.epoch += 1;
      this.position.position = 0;
      events.onLog?.({
        type: 'epoch',
        epoch: this.position.epoch,
        ...validation,
        time: new Date().toISOString(),
      });
      await save();
    }
    return 'finished';
  }

  /** Validation accuracy of the raw and (when used) the EMA weights. */
  validate(): { validationAccuracy: number | null; validationAccuracyEma: number | null } {
    if (!this.data.validation) return { validationAccuracy: null, validationAccuracyEma: null };
    const accuracy = () => accuracyOf(this.model, this.data.validation as Dataset, this.config.batchSize);
    const validationAccuracy = accuracy();
    let validationAccuracyEma: number | null = null;
    if (this.ema) {
      this.ema.swapInto();
      validationAccuracyEma = accuracy();
      this.ema.swapInto();
    }
    return { validationAccuracy, validationAccuracyEma };
  }

  /** Puts the weights to export (EMA when used) into the model; irreversible, call once at the end. */
  useFinalWeights(): void {
    this.ema?.swapInto();
  }

  dispose(): void {
    this.optimizer.dispose();
    this.ema?.dispose();
  }
}

/** The model in inference mode as the engine's logits source. */
export function inferenceLogits(model: tf.LayersModel): {
  numClasses: number;
  logits(x: tf.Tensor4D): tf.Tensor2D;
} {
  return {
    numClasses: model.outputs[0].shape[1] as number,
    logits: (x) => model.apply(x, { training: false }) as tf.Tensor2D,
  };
}

/** Logits of a whole data set, batched, in inference mode. */
export function datasetLogits(model: tf.LayersModel, dataset: Dataset, batchSize: number): Float32Array {
  return logitsOf(inferenceLogits(model), dataset, batchSize);
}

export function accuracyOf(model: tf.LayersModel, dataset: Dataset, batchSize: number): number {
  const numClasses = model.outputs[0].shape[1] as number;
  const predicted = classAtRank(datasetLogits(model, dataset, batchSize), numClasses);
  let correct = 0;
  for (let i = 0; i < dataset.size; i++) if (predicted[i] === dataset.labels[i]) correct++;
  return correct / Math.max(dataset.size, 1);
}
