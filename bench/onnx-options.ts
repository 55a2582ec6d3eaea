import { parseArgs } from 'node:util';

/** A command line bench/onnx.ts cannot run: the message says which option and why. */
export class BenchOptionError extends Error {
  override name = 'BenchOptionError';
}

/** The smallCnn fixture imported from ONNX against the native tf.layers smallCnn. */
export interface SmallCnnOptions {
  mode: 'small-cnn';
  batch: number;
  repeats: number;
}

/** An ONNX model against PyTorch's same model (the torchvision model it was exported from, or a TorchScript file). */
export interface TorchOptions {
  mode: 'torch';
  /** A torchvision classifier (or a small configuration of scripts/torchvision-onnx.py --list-small). */
  torchvision?: string;
  /** A TorchScript file of the model (torch.jit.save), for an ONNX file not made from torchvision. */
  torchscript?: string;
  /** The ONNX file to import; absent: the torchvision model exported by the peer in this run. */
  model?: string;
  /** Image side; absent: the model file's, else 224. */
  size?: number;
  batch: number;
  classes: number;
  seed: number;
  repeats: number;
}

export type OnnxBenchOptions = SmallCnnOptions | TorchOptions;

function integer(raw: string, name: string, min: number): number {
  const value = /^\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min) {
    throw new BenchOptionError(`'--${name}' must be an integer of at least ${min}, got '${raw}'`);
  }
  return value;
}

/**
 * `npm run bench:onnx -- [options]` into what to run. Without --torchvision, --torchscript or --model:
 * the smallCnn comparison (batch 64). With them: an ONNX model against PyTorch (batch 8; the size of
 * the model file, else 224x224).
 */
export function parseOnnxBenchArgs(argv: readonly string[]): OnnxBenchOptions {
  let values: Record<string, string | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        model: { type: 'string' },
        torchvision: { type: 'string' },
        torchscript: { type: 'string' },
        size: { type: 'string' },
        batch: { type: 'string' },
        classes: { type: 'string' },
        seed: { type: 'string' },
        repeats: { type: 'string', default: '7' },
      },
    }));
  } catch (error) {
    throw new BenchOptionError((error as Error).message);
  }
  const repeats = integer(values.repeats ?? '7', 'repeats', 1);
  const { model, torchvision, torchscript } = values;
  if (model === undefined && torchvision === undefined && torchscript === undefined) {
    for (const name of ['size', 'classes', 'seed'] as const) {
      if (values[name] !== undefined) {
        throw new BenchOptionError(`'--${name}' applies with --torchvision or --torchscript only`);
      }
    }
    return { mode: 'small-cnn', batch: integer(values.batch ?? '64', 'batch', 1), repeats };
  }
  if (torchvision !== undefined && torchscript !== undefined) {
    throw new BenchOptionError(`'--torchvision' and '--torchscript' name PyTorch's model twice: give one`);
  }
  if (torchvision === undefined && torchscript === undefined) {
    throw new BenchOptionError(
      `'--model' needs PyTorch's same model to compare with: '--torchvision NAME' (the torchvision model it was exported from by scripts/torchvision-onnx.py) or '--torchscript FILE'`,
    );
  }
  if (torchscript !== undefined && model === undefined) {
    throw new BenchOptionError(
      `'--torchscript' needs '--model FILE.onnx', the ONNX export of the same model`,
    );
  }
  if (torchvision !== undefined && !/^[a-z][a-z0-9_]*$/.test(torchvision)) {
    throw new BenchOptionError(
      `'--torchvision' must be a torchvision model name such as resnet50, got '${torchvision}'`,
    );
  }
  if (torchscript !== undefined && values.classes !== undefined) {
    throw new BenchOptionError(
      `'--classes' applies with --torchvision only (a TorchScript model has its own)`,
    );
  }
  return {
    mode: 'torch',
    ...(torchvision !== undefined && { torchvision }),
    ...(torchscript !== undefined && { torchscript }),
    ...(model !== undefined && { model }),
    ...(values.size !== undefined && { size: integer(values.size, 'size', 1) }),
    batch: integer(values.batch ?? '8', 'batch', 1),
    classes: integer(values.classes ?? '1000', 'classes', 2),
    seed: integer(values.seed ?? '0', 'seed', 0),
    repeats,
  };
}

/** The middle value (the mean of the two middle ones for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('the median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** ours / theirs to three decimals (below 1: ours is faster). */
export function timeRatio(ours: number, theirs: number): number {
  if (!(ours >= 0) || !(theirs > 0)) throw new RangeError(`no ratio of ${ours} ms over ${theirs} ms`);
  return Math.round((ours / theirs) * 1000) / 1000;
}

/**
 * Per item (the leading dimension of both arrays, `items` of them): max |ours - reference| over max
 * |reference|, the measure docs/onnx.md uses for logits and input gradients. A reference of zeros
 * gives 0 where ours is zero too and Infinity where it is not.
 */
export function maxRelativeDifference(
  ours: ArrayLike<number>,
  reference: ArrayLike<number>,
  items: number,
): number[] {
  if (ours.length !== reference.length) {
    throw new RangeError(`${ours.length} values against ${reference.length} in the reference`);
  }
  if (!Number.isInteger(items) || items < 1 || reference.length % items !== 0) {
    throw new RangeError(`${reference.length} values do not split into ${items} items`);
  }
  const per = reference.length / items;
  return Array.from({ length: items }, (_, item) => {
    let difference = 0;
    let scale = 0;
    for (let i = item * per; i < (item + 1) * per; i++) {
      const d = Math.abs(ours[i] - reference[i]);
      // NaN anywhere makes the item's difference NaN, never a silent match.
      difference = Number.isNaN(d) || Number.isNaN(difference) ? Number.NaN : Math.max(difference, d);
      scale = Math.max(scale, Math.abs(reference[i]));
    }
    if (difference === 0) return 0;
    return scale === 0 ? Number.POSITIVE_INFINITY : difference / scale;
  });
}

/** Two significant digits, for figures that are compared by order of magnitude. */
export const significant = (value: number): number => Number(value.toPrecision(2));
