import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { CommandModule } from '../cli.js';
import { readOptions, UsageError } from './args.js';

/**
 * `ratio audit`: AutoAttack robust accuracy of a model directory on a labelled data file, as a CI
 * gate: exit 0 when robust accuracy >= --min-robust-accuracy, 1 under it, 2 on bad input.
 */

const HELP = `usage: ratio audit --model <dir> --data <path> --norm L2|Linf --eps <number> [options]

  --model <dir>                 model directory: model.json, weight shards, card.json
  --data <path>                 labelled images: CIFAR-10/100 binary, idx(.gz), .npy, image folder, zip
  --norm L2|Linf                threat model
  --eps <number>                perturbation budget (> 0)
  --n <int>                     audit the first n points (default 1000, or all if fewer)
  --version standard|plus|rand  AutoAttack version (default standard)
  --seed <int>                  seed (default 0); the same seed on one backend gives the same report
  --batch-size <int>            points per attack call (default 250)
  --restarts <int>              restarts of the white-box attacks (default 1; plus: 5)
  --report <file>               write the JSON report there
  --min-robust-accuracy <p>     exit 1 when robust accuracy is below p (in [0,1])
`;

interface AuditArguments {
  model: string;
  data: string;
  norm: 'L2' | 'Linf';
  eps: number;
  n: number;
  version: 'standard' | 'plus' | 'rand';
  seed: number;
  batchSize: number;
  restarts?: number;
  report?: string;
  minRobustAccuracy?: number;
}

function parseAuditArguments(argv: string[]): AuditArguments | 'help' {
  const options = readOptions(argv, {
    model: { type: 'string' },
    data: { type: 'string' },
    norm: { type: 'string' },
    eps: { type: 'string' },
    n: { type: 'string' },
    version: { type: 'string' },
    seed: { type: 'string' },
    'batch-size': { type: 'string' },
    restarts: { type: 'string' },
    report: { type: 'string' },
    'min-robust-accuracy': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (options.values.help) return 'help';
  options.require('model', 'data', 'norm', 'eps');
  const threshold = options.text('min-robust-accuracy');
  const minRobustAccuracy = threshold === undefined ? undefined : Number(threshold);
  if (minRobustAccuracy !== undefined && !(minRobustAccuracy >= 0 && minRobustAccuracy <= 1)) {
    throw new UsageError(`--min-robust-accuracy must lie in [0, 1], got '${threshold}'`);
  }
  return {
    model: options.text('model')!,
    data: options.text('data')!,
    norm: options.choice('norm', ['L2', 'Linf'] as const, 'L2'),
    eps: options.positive('eps', 0),
    n: options.integer('n', 1000, 1),
    version: options.choice('version', ['standard', 'plus', 'rand'] as const, 'standard'),
    seed: options.integer('seed', 0, 0),
    batchSize: options.integer('batch-size', 250, 1),
    restarts: options.text('restarts') === undefined ? undefined : options.integer('restarts', 1, 1),
    report: options.text('report'),
    minRobustAccuracy,
  };
}

/** The model directory's files through the data layer (no escaping paths, size-capped). */
async function readModelDirectory(dir: string): Promise<Map<string, Uint8Array>> {
  const { readModelDir, ModelDirError } = await import('../data/model-dir.js');
  return readModelDir(dir).catch((error: unknown) => {
    if (error instanceof ModelDirError) throw new UsageError(`--model: ${error.message}`);
    throw error;
  });
}

/** A one-line progress bar with ETA on a TTY, plain lines every 10% otherwise. */
function progressPrinter(stream: NodeJS.WriteStream) {
  let attack = '';
  let started = 0;
  let lastDecile = -1;
  return {
    update(progress: { attack: string; done: number; total: number }) {
      if (progress.attack !== attack) {
        if (stream.isTTY && attack) stream.write('\n');
        attack = progress.attack;
        started = performance.now();
        lastDecile = -1;
      }
      const share = progress.total > 0 ? progress.done / progress.total : 1;
      const elapsed = (performance.now() - started) / 1000;
      const eta = share > 0 ? (elapsed * (1 - share)) / share : Number.NaN;
      const etaText = Number.isFinite(eta) ? `${eta.toFixed(0)}s` : '?';
      if (stream.isTTY) {
        const width = 30;
        const filled = Math.round(share * width);
        stream.write(
          `\r${attack.padEnd(9)} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ` +
            `${progress.done}/${progress.total} ETA ${etaText}   `,
        );
      } else if (Math.floor(share * 10) > lastDecile) {
        lastDecile = Math.floor(share * 10);
        stream.write(`${attack}: ${progress.done}/${progress.total} points, ETA ${etaText}\n`);
      }
    },
    end() {
      if (stream.isTTY && attack) stream.write('\n');
    },
  };
}

async function audit(args: AuditArguments): Promise<number> {
  const { initBackend } = await import('../engine/backend.js');
  const { loadModelFromFiles, ModelFileError } = await import('../engine/model-files.js');
  const { autoAttack } = await import('../engine/autoattack.js');
  const { loadDataset } = await import('../data/load.js');
  const { DatasetError } = await import('../data/errors.js');
  const backend = await initBackend();

  const files = await readModelDirectory(args.model);
  const classifier = await loadModelFromFiles(files).catch((error: unknown) => {
    if (error instanceof ModelFileError) throw new UsageError(`--model: ${error.message}`);
    throw error;
  });
  try {
    const dataset = await loadDataset(args.data)
      .then((loaded) => loaded.take(args.n))
      .catch((error: unknown) => {
        if (error instanceof DatasetError) throw new UsageError(`--data: ${error.message}`);
        throw error;
      });
    const expected = classifier.card.inputShape;
    if (dataset.shape.join() !== expected.join()) {
      throw new UsageError(
        `--data holds ${dataset.shape.join('x')} images, the model expects ${expected.join('x')}`,
      );
    }
    const labels = dataset.labels;
    if (labels.some((label) => label < 0 || label >= classifier.numClasses)) {
      throw new UsageError(
        `--data needs labels in [0, ${classifier.numClasses}) for every image (unlabelled data, or another label set?)`,
      );
    }
    const x = dataset.tensor();
    const controller = new AbortController();
    const interrupt = () => controller.abort();
    process.once('SIGINT', interrupt);
    const progress = progressPrinter(process.stderr);
    try {
      const report = await autoAttack(classifier, x, labels, {
        norm: args.norm,
        eps: args.eps,
        version: args.version,
        seed: args.seed,
        batchSize: args.batchSize,
        restarts: args.restarts,
        signal: controller.signal,
        onProgress: (p) => progress.update(p),
      });
      progress.end();
      const document = {
        model: { dir: path.resolve(args.model), name: classifier.card.name },
        data: { path: path.resolve(args.data) },
        backend_threads: backend.threads,
        tfjs: backend.version,
        min_robust_accuracy: args.minRobustAccuracy ?? null,
        ...report,
      };
      if (args.report) await writeFile(args.report, `${JSON.stringify(document, null, 2)}\n`);
      for (const warning of report.warnings) console.error(`warning: ${warning}`);
      console.log(
        `clean accuracy ${(report.clean_accuracy * 100).toFixed(2)}%, robust accuracy ` +
          `${(report.robust_accuracy * 100).toFixed(2)}% (${report.norm}, eps ${report.eps}, n ${report.n}, ` +
          `${report.version}, seed ${report.seed}, ${report.backend}, ${report.seconds.toFixed(1)} s)`,
      );
      for (const step of report.per_attack) {
        console.log(
          `  after ${step.name.padEnd(9)} ${(step.robust_accuracy_after * 100).toFixed(2)}% ` +
            `(${step.broken} broken, ${step.seconds.toFixed(1)} s)`,
        );
      }
      if (args.minRobustAccuracy !== undefined && report.robust_accuracy < args.minRobustAccuracy) {
        console.error(
          `robust accuracy ${report.robust_accuracy} is below the threshold ${args.minRobustAccuracy}`,
        );
        return 1;
      }
      return 0;
    } finally {
      process.removeListener('SIGINT', interrupt);
      x.dispose();
    }
  } finally {
    classifier.dispose();
  }
}

const command: CommandModule = {
  summary: 'AutoAttack robust accuracy of a model on labelled data; exit 1 under --min-robust-accuracy',
  async run(argv) {
    try {
      const args = parseAuditArguments(argv);
      if (args === 'help') {
        console.log(HELP);
        return 0;
      }
      return await audit(args);
    } catch (error) {
      if (error instanceof UsageError) {
        console.error(`ratio audit: ${error.message}\n\n${HELP}`);
        return 2;
      }
      if (error instanceof Error && error.name === 'AbortError') {
        console.error('ratio audit: interrupted');
        return 130;
      }
      throw error;
    }
  },
};

export default command;
export const { summary, run } = command;
