import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AUTOATTACK_VERSIONS, type AutoAttackVersion } from '../engine/types.js';
import { readOptions, UsageError } from './args.js';
import { type CommandModule, runCommand } from './command.js';

/**
 * `ratio audit`: AutoAttack robust accuracy of a model directory on a labelled data file, as a CI
 * gate: exit 0 when robust accuracy >= --min-robust-accuracy, 1 under it, 2 on bad input.
 */

const HELP = `usage: ratio audit --model <dir> --data <path> --norm L2|Linf --eps <number> [options]

  --model <dir|file.onnx>       model directory (model.json + shards, or model.onnx; card.json),
                                or a PyTorch ONNX export
  --data <path>                 labelled images: CIFAR-10/100 binary, idx(.gz), .npy, image folder, zip
  --norm L2|Linf                threat model
  --eps <number>                perturbation budget (> 0)
  --n <int>                     audit the first n points (default 1000, or all if fewer)
  --version ${AUTOATTACK_VERSIONS.join('|')}  AutoAttack version (default standard)
  --seed <int>                  seed (default 0); the same seed on one backend gives the same report
  --batch-size <int>            points per attack call (default 250)
  --restarts <int>              restarts of the white-box attacks (default 1; plus: 5)
  --report <file>               write the JSON report there
  --min-robust-accuracy <p>     exit 1 when robust accuracy is below p (in [0,1])
`;

/** The command-line option each input of the audit use case comes from. */
const OPTION_OF_FIELD = { model: '--model', dataset: '--data' };

interface AuditArguments {
  model: string;
  data: string;
  norm: 'L2' | 'Linf';
  eps: number;
  n: number;
  version: AutoAttackVersion;
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
    version: options.choice('version', AUTOATTACK_VERSIONS, 'standard'),
    seed: options.integer('seed', 0, 0),
    batchSize: options.integer('batch-size', 250, 1),
    restarts: options.text('restarts') === undefined ? undefined : options.integer('restarts', 1, 1),
    report: options.text('report'),
    minRobustAccuracy,
  };
}

async function audit(args: AuditArguments): Promise<number> {
  const { initBackend } = await import('../engine/backend.js');
  const { prepareAudit, runAudit } = await import('../jobs/audit.js');
  const { PhaseProgress } = await import('./progress.js');
  const backend = await initBackend();

  const prepared = await prepareAudit({
    model: { kind: 'directory', dir: args.model },
    data: { kind: 'path', path: args.data },
    parameters: {
      norm: args.norm,
      eps: args.eps,
      version: args.version,
      n: args.n,
      seed: args.seed,
      restarts: args.restarts,
    },
  });
  const controller = new AbortController();
  const interrupt = () => controller.abort();
  process.once('SIGINT', interrupt);
  const progress = new PhaseProgress(process.stderr);
  let attack = '';
  try {
    const report = await runAudit(prepared, {
      batchSize: args.batchSize,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.attack !== attack) {
          if (attack) progress.done();
          attack = p.attack;
          progress.start(attack);
        }
        progress.update(p.done, p.total);
      },
    });
    if (attack) progress.done();
    const document = {
      model: { dir: path.resolve(args.model), name: prepared.classifier.card.name },
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
    prepared.classifier.dispose();
  }
}

const command: CommandModule = {
  summary: 'AutoAttack robust accuracy of a model on labelled data; exit 1 under --min-robust-accuracy',
  run: (argv) =>
    runCommand({
      name: 'audit',
      help: HELP,
      options: OPTION_OF_FIELD,
      parse: () => parseAuditArguments(argv),
      execute: audit,
    }),
};

export default command;
export const { summary, run } = command;
