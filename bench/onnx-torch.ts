/**
 * `npm run bench:onnx -- --torchvision NAME [--model FILE.onnx]` (or `--model FILE.onnx --torchscript
 * FILE.pt`): an ONNX model imported by us against PyTorch running the model it was exported from, on
 * the same batch and the same threads, in one run. PyTorch runs in a peer process
 * (scripts/torch-onnx-peer.py) that times one operation per request, so rounds alternate between the
 * two and machine noise hits both alike; each side times its own work (no inter-process time counted).
 */
import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import * as tf from '@tensorflow/tfjs';
import { type NpyArray, parseNpy } from '../src/data/npy.js';
import { crossEntropyLoss } from '../src/engine/attacks/losses.js';
import type { BackendInfo } from '../src/engine/backend/backend.js';
import type { Classifier } from '../src/engine/model/classifier.js';
import { OnnxClassifier } from '../src/engine/model/onnx/index.js';
import { loadModelDir } from '../src/jobs/models/index.js';
import { maxRelativeDifference, median, significant, type TorchOptions, timeRatio } from './onnx-options.js';

/** PyTorch cannot be run for this comparison: the message says what is missing. */
export class TorchPeerError extends Error {
  override name = 'TorchPeerError';
}

/** Debian's interpreter, where python3-torch and python3-torchvision live (../shared/peer/README.md). */
const PYTHON = '/usr/bin/python3';
const PEER_SCRIPT = new URL('../scripts/torch-onnx-peer.py', import.meta.url).pathname;
/**
 * Logits further apart than this (relative) mean the two sides do not run the same model: float32
 * rounding alone moves a deep network's logits by up to 1e-3 (PyTorch's own float32 against float64,
 * reported beside), other weights move them by their whole size.
 */
const SAME_MODEL_LOGITS = 1e-2;
const log = (line: string) => console.error(line);

/** Throws TorchPeerError naming the missing package unless the peer's Python modules import. */
function checkPython(options: TorchOptions): void {
  const modules = options.torchvision !== undefined ? 'torch, torchvision' : 'torch';
  const install = `apt-get install python3-torch${options.torchvision !== undefined ? ' python3-torchvision' : ''}`;
  const run = spawnSync(PYTHON, ['-c', `import ${modules}`], { encoding: 'utf8', timeout: 120_000 });
  if (run.error) {
    throw new TorchPeerError(
      `the comparison with PyTorch needs ${PYTHON} with Debian's python3-torch (${install}): ${run.error.message}`,
    );
  }
  if (run.status !== 0) {
    const why = run.stderr.trim().split('\n').at(-1) ?? `exit status ${run.status}`;
    throw new TorchPeerError(
      `the comparison with PyTorch needs ${modules} in ${PYTHON} (${install}): ${why}`,
    );
  }
}

interface PeerReady {
  ready: true;
  torch: string;
  torchvision?: string;
  threads: number;
  parameters: number;
  classes: number;
  export_seconds?: number;
}

/** The PyTorch peer process: started, asked for one timed operation at a time, closed. */
class TorchPeer {
  private readonly lines: AsyncIterator<string>;
  private stderr = '';
  private exit: Promise<number | null>;

  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      // The last lines say why it stopped; keep a bounded tail.
      this.stderr = (this.stderr + chunk).slice(-8000);
    });
    this.exit = new Promise((resolve) => child.on('close', (code) => resolve(code)));
    child.on('error', () => {
      // Reported through the closed output stream and `exit`.
    });
  }

  /** The next JSON line; TorchPeerError with the peer's last error line when it ended instead. */
  private async next<T>(): Promise<T> {
    for (;;) {
      const line = await this.lines.next();
      if (line.done) {
        const code = await this.exit;
        const why = this.stderr.trim().split('\n').at(-1) || `exit status ${code}`;
        throw new TorchPeerError(`the PyTorch peer (${PEER_SCRIPT}) stopped: ${why}`);
      }
      // Libraries may print lines of their own; the peer's answers are JSON objects.
      if (line.value.startsWith('{')) return JSON.parse(line.value) as T;
    }
  }

  ready(): Promise<PeerReady> {
    return this.next<PeerReady>();
  }

  async time(operation: 'forward' | 'gradient'): Promise<number> {
    this.child.stdin.write(`${operation}\n`);
    return (await this.next<{ ms: number }>()).ms;
  }

  async close(): Promise<void> {
    this.child.stdin.end();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const ended = await Promise.race([this.exit, new Promise((r) => setTimeout(r, 10_000, 'timeout'))]);
      if (ended === 'timeout') this.child.kill();
    }
  }
}

function readNpy(dir: string, name: string): NpyArray {
  const file = path.join(dir, name);
  return parseNpy(new Uint8Array(readFileSync(file)), file);
}

function ourForward(classifier: Classifier, x: tf.Tensor4D): Float32Array {
  return tf.tidy(() => classifier.logits(x).dataSync() as Float32Array);
}

/** d sum_i CE(logits_i, label_i) / d x, as the attacks compute it; NHWC like x. */
function ourGradient(classifier: Classifier, x: tf.Tensor4D, labels: tf.Tensor1D): tf.Tensor4D {
  return tf.grad((input: tf.Tensor) =>
    crossEntropyLoss(classifier.logits(input as tf.Tensor4D), labels).sum(),
  )(x) as tf.Tensor4D;
}

const roundAll = <K extends string>(values: Record<K, number | null>): Record<K, number | null> =>
  Object.fromEntries(
    Object.entries<number | null>(values).map(([k, v]) => [k, v === null ? null : significant(v)]),
  ) as Record<K, number | null>;

function timed(run: () => void): number {
  const start = performance.now();
  run();
  return performance.now() - start;
}

/** The side of the square RGB images `classifier` takes; TorchPeerError when not that or not `size`. */
function imageSize(modelPath: string, classifier: Classifier, size: number | undefined): number {
  const [h, w, c] = classifier.card.inputShape;
  if (h !== w || c !== 3) {
    throw new TorchPeerError(
      `${modelPath} takes ${c}x${h}x${w} images; the comparison makes batches of square RGB images`,
    );
  }
  if (size !== undefined && size !== h) {
    throw new TorchPeerError(
      `${modelPath} takes 3x${h}x${w} images, not the 3x${size}x${size} of --size ${size}`,
    );
  }
  return h;
}

async function load(modelPath: string): Promise<{ classifier: Classifier; seconds: number }> {
  log(`importing ${modelPath}...`);
  const start = performance.now();
  const classifier = await loadModelDir(modelPath);
  return { classifier, seconds: (performance.now() - start) / 1000 };
}

/** Runs the comparison and returns the bench's JSON; sets process.exitCode = 1 when the models differ. */
export async function benchAgainstTorch(options: TorchOptions, backend: BackendInfo): Promise<object> {
  checkPython(options);
  const dir = mkdtempSync(path.join(tmpdir(), 'ratio-onnx-bench-'));
  const waitPolicy = process.env.OMP_WAIT_POLICY ?? 'PASSIVE';
  const tensors: tf.Tensor[] = [];
  let loaded: { classifier: Classifier; seconds: number } | undefined;
  let peer: TorchPeer | undefined;
  try {
    // A file given: its input sets the size PyTorch runs at.
    if (options.model !== undefined) loaded = await load(options.model);
    const size =
      loaded && options.model
        ? imageSize(options.model, loaded.classifier, options.size)
        : (options.size ?? 224);
    const peerArgs = [
      PEER_SCRIPT,
      ...(options.torchvision !== undefined
        ? ['--torchvision', options.torchvision, '--classes', String(options.classes)]
        : ['--torchscript', options.torchscript ?? '']),
      ...(options.model === undefined ? ['--export'] : []),
      ...['--dir', dir, '--size', String(size), '--batch', String(options.batch)],
      ...['--seed', String(options.seed), '--threads', String(backend.threads)],
    ];
    log(
      `PyTorch peer: ${options.torchvision ?? options.torchscript}, ${size}x${size}, batch ${options.batch}, ${backend.threads} threads${options.model === undefined ? ', exporting to ONNX' : ''}...`,
    );
    // The wait policy ours runs with (onednn/addon.ts): spinning OpenMP threads would take the cores
    // from the other side between its rounds.
    peer = new TorchPeer(
      spawn(PYTHON, peerArgs, {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, OMP_WAIT_POLICY: waitPolicy },
      }),
    );
    const ready = await peer.ready();
    if (!loaded) {
      const exported = path.join(dir, 'model.onnx');
      loaded = await load(exported);
      imageSize(exported, loaded.classifier, size);
    }
    const model = loaded.classifier;
    const loadSeconds = loaded.seconds;

    const input = readNpy(dir, 'input.npy');
    const labels = readNpy(dir, 'labels.npy');
    const x = tf.tidy(() =>
      tf
        .tensor4d(input.data as Float32Array, input.shape as [number, number, number, number])
        .transpose([0, 2, 3, 1]),
    ) as tf.Tensor4D;
    const y = tf.tensor1d(Int32Array.from(labels.data), 'int32');
    tensors.push(x, y);
    // Warm-up (kernels compiled, weights uploaded), and what both compute, compared.
    const logits = ourForward(model, x);
    const gradient = tf.tidy(
      () => ourGradient(model, x, y).transpose([0, 3, 1, 2]).dataSync() as Float32Array,
    );
    const reference = {
      logits: readNpy(dir, 'logits.npy').data,
      gradient: readNpy(dir, 'input_grad.npy').data,
      // Absent where the peer could not convert the model to float64.
      logits64: existsSync(path.join(dir, 'logits_float64.npy'))
        ? readNpy(dir, 'logits_float64.npy').data
        : undefined,
      gradient64: existsSync(path.join(dir, 'input_grad_float64.npy'))
        ? readNpy(dir, 'input_grad_float64.npy').data
        : undefined,
    };
    /** Max over images of the per-image relative difference; null without the reference. */
    const apart = (ours: ArrayLike<number>, exact: ArrayLike<number> | undefined) =>
      exact === undefined ? null : Math.max(...maxRelativeDifference(ours, exact, options.batch));
    const maxLogits = apart(logits, reference.logits) ?? Number.NaN;
    const difference = {
      logits: {
        onnxVsPytorch: maxLogits,
        onnxVsFloat64: apart(logits, reference.logits64),
        pytorchVsFloat64: apart(reference.logits, reference.logits64),
      },
      inputGradient: {
        onnxVsPytorch: apart(gradient, reference.gradient),
        onnxVsFloat64: apart(gradient, reference.gradient64),
        pytorchVsFloat64: apart(reference.gradient, reference.gradient64),
      },
    };
    await peer.time('forward');
    await peer.time('gradient');

    const times = { onnxForward: [] as number[], torchForward: [] as number[] };
    const gradients = { onnx: [] as number[], torch: [] as number[] };
    for (let round = 0; round < options.repeats; round++) {
      log(`round ${round + 1}/${options.repeats}`);
      times.onnxForward.push(timed(() => ourForward(model, x)));
      times.torchForward.push(await peer.time('forward'));
      gradients.torch.push(await peer.time('gradient'));
      gradients.onnx.push(
        timed(() => {
          const grad = ourGradient(model, x, y);
          grad.dataSync();
          grad.dispose();
        }),
      );
    }

    const ms = (v: number) => Math.round(v * 10) / 10;
    const sameModel = maxLogits <= SAME_MODEL_LOGITS;
    if (!sameModel) {
      log(
        `the logits differ by ${significant(maxLogits)} of their largest: the ONNX file is not PyTorch's model (exported with other --seed, --size or --classes?)`,
      );
      process.exitCode = 1;
    }
    const summary = model instanceof OnnxClassifier ? model.summary : undefined;
    return {
      bench: 'onnx-torch',
      model: options.model ?? `${options.torchvision} exported by scripts/torch-onnx-peer.py (opset 17)`,
      pytorch: options.torchvision ?? options.torchscript,
      size,
      batch: options.batch,
      classes: ready.classes,
      seed: options.seed,
      repeats: options.repeats,
      machine: {
        cores: cpus().length,
        cpu: cpus()[0]?.model ?? 'unknown',
        backend: backend.name,
        kernels: backend.kernels,
        threads: backend.threads,
      },
      onnx: {
        loadSeconds: Math.round(loadSeconds * 10) / 10,
        parameters: summary?.parameterCount,
        flopsPerImage: summary?.flopsPerImage,
        runtimeSteps: summary?.runtimeSteps,
      },
      peer: {
        torch: ready.torch,
        torchvision: ready.torchvision,
        threads: ready.threads,
        ompWaitPolicy: waitPolicy,
        parameters: ready.parameters,
        exportSeconds: ready.export_seconds,
      },
      forwardMs: { onnx: ms(median(times.onnxForward)), pytorch: ms(median(times.torchForward)) },
      inputGradientMs: { onnx: ms(median(gradients.onnx)), pytorch: ms(median(gradients.torch)) },
      // ours / PyTorch: below 1, the import is faster.
      ratio: {
        forward: timeRatio(median(times.onnxForward), median(times.torchForward)),
        inputGradient: timeRatio(median(gradients.onnx), median(gradients.torch)),
      },
      // Per image max |a - b| / max |b|, the largest over the batch; float64: PyTorch's model in
      // float64, the exact values (docs/onnx.md on input gradients at ReLU kinks).
      maxRelativeDifference: {
        logits: roundAll(difference.logits),
        inputGradient: roundAll(difference.inputGradient),
      },
      sameModel,
    };
  } finally {
    await peer?.close();
    tf.dispose(tensors);
    loaded?.classifier.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}
