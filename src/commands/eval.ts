import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ImageSet } from '../jobs/datasets/index.js';
import type { EvalSettings } from '../jobs/evaluation/index.js';
import type { ModelLimits } from '../jobs/models/index.js';
import { commandOptions, localLimitsOption, readOptions, UsageError } from './args.js';
import { type CommandModule, runCommand } from './command.js';

/**
 * `ratio eval`: the RATIO paper's table (Acc, R.Acc, ECE, AUC, WC AUC, MMC) and figures
 * (counterfactual grid, confidence curves) for one model directory. Exit 0 on success, 2 on bad input.
 */

const HELP = `usage: ratio eval --model <dir> --data <in-dist test> [--ood <set>]... [options]

  --model <dir|file.onnx>   model directory (model.json + shards, or model.onnx; card.json),
                            or a PyTorch ONNX export
  --data <path>             labelled in-distribution test images: CIFAR-10/100 binary, IDX(.gz), .npy,
                            or an image folder <root>/<class>/*.png|jpg (a seeded random subset)
  --ood <set>               OOD set, repeatable: svhn | cifar100 | mnist | fashion-mnist | noise (built
                            in: ../shared/data or RATIO_DATA_DIR; noise = uniform) or name=path (any
                            file or image folder the data layer reads, labelled or not); default:
                            svhn, cifar100, noise for 32x32x3 models, the other MNIST + noise for 28x28x1
  --n <int>                 reported in-distribution points (default 1000)
  --calibration-data <path> labelled held-out set for the temperature (default: the last
                            --calibration-n points of --data, never reported)
  --calibration-n <int>     held-out points taken from --data (default 500)
  --ood-n <int>             images per OOD set (default 1024)
  --eps <number>            L2 radius of the robust accuracy (default 0.5)
  --eps-ood <number>        L2 radius of the worst-case OOD confidence (default 1.0)
  --robust-n <int>          points attacked by AutoAttack (default: all reported points)
  --out <dir>               output folder (default eval-<model folder name>)
  --seed <int>              seed (default 0)
  --batch-size <int>        images per batch (default 128)
  --cf-rows <int>           counterfactual rows (default 6)
  --cf-target second|true   counterfactual target: second most likely class (default) or the label
  --curve-n <int>           points per set for the confidence curves (default 100)
  --iterations <int>        APGD iterations for AutoAttack, worst-case OOD and curves (default 100)
  --cf-iterations <int>     APGD iterations per counterfactual radius (default 500)
  --quick                   smoke test: 5 iterations, APGD-CE + APGD-T only, small figures
  --workers <int>           worker processes for AutoAttack and the worst-case OOD search (default
                            RATIO_WORKERS, else one per core; 1 = in process); the same numbers for any count
  --write-calibration       write the fitted temperature and the OOD threshold (95% of the calibration
                            points in-distribution) into the model's card.json
  --max-model-bytes <n>     largest model read (its weights, or the .onnx with its external data; e.g.
                            4e9; default RATIO_MAX_MODEL_BYTES, else a third of this machine's memory)
`;

interface EvalArguments {
  model: string;
  data: string;
  calibrationData?: string;
  ood: string[];
  out?: string;
  writeCalibration: boolean;
  workers: number;
  /** Limits of the model (--max-model-bytes, RATIO_MAX_MODEL_*, the machine's memory). */
  limits: ModelLimits;
  settings: EvalSettings;
}

async function parseEvalArguments(argv: string[], defaults: EvalSettings): Promise<EvalArguments | 'help'> {
  const options = readOptions(argv, {
    ...commandOptions(
      [
        'model',
        'data',
        'n',
        'calibration-data',
        'calibration-n',
        'ood-n',
        'eps',
        'eps-ood',
        'robust-n',
        'out',
        'seed',
        'batch-size',
        'cf-rows',
        'cf-target',
        'curve-n',
        'iterations',
        'cf-iterations',
        'workers',
        'max-model-bytes',
      ],
      ['quick', 'write-calibration'],
    ),
    ood: { type: 'string', multiple: true },
  });
  const { values, text, integer } = options;
  if (values.help) return 'help';
  options.require('model', 'data');
  const radius = options.positive;
  const quick = values.quick === true;
  const cfTarget = options.choice('cf-target', ['second', 'true'] as const, 'second');
  const attackIterations = integer('iterations', quick ? 5 : defaults.iterations.autoAttack);
  const n = integer('n', defaults.n);
  const { parseWorkerCount } = await import('../jobs/sharding/index.js');
  let workers: number;
  try {
    workers = parseWorkerCount(text('workers') ?? process.env.RATIO_WORKERS);
  } catch (error) {
    throw new UsageError(`--workers (or RATIO_WORKERS): ${(error as Error).message}`);
  }
  return {
    model: text('model')!,
    data: text('data')!,
    calibrationData: text('calibration-data'),
    ood: (values.ood as string[] | undefined) ?? [],
    out: text('out'),
    writeCalibration: values['write-calibration'] === true,
    workers,
    limits: await localLimitsOption(text('max-model-bytes')),
    settings: {
      ...defaults,
      n,
      calibrationN: integer('calibration-n', defaults.calibrationN),
      oodN: integer('ood-n', defaults.oodN),
      eps: radius('eps', defaults.eps),
      epsOod: radius('eps-ood', defaults.epsOod),
      robustN: integer('robust-n', n),
      seed: integer('seed', defaults.seed, 0),
      batchSize: integer('batch-size', defaults.batchSize),
      quick,
      iterations: {
        autoAttack: attackIterations,
        worstCase: attackIterations,
        curves: quick ? Math.min(3, attackIterations) : attackIterations,
        counterfactuals: integer('cf-iterations', quick ? 10 : defaults.iterations.counterfactuals),
      },
      counterfactualRows: integer('cf-rows', quick ? 4 : defaults.counterfactualRows),
      counterfactualTarget: cfTarget,
      curveN: integer('curve-n', quick ? 16 : defaults.curveN),
      curveRadii: quick ? [0, 0.5, 1, 2, 3] : defaults.curveRadii,
    },
  };
}

async function evaluate(args: EvalArguments): Promise<number> {
  const { initBackend } = await import('../jobs/runtime.js');
  const { evaluateModel, writeCalibration } = await import('../jobs/evaluation/index.js');
  const { loadModelDir } = await import('../jobs/models/index.js');
  const { checkImageShape, defaultOodSpecs, loadImageSet, parseOodSpec, uniformNoise } = await import(
    '../jobs/datasets/index.js'
  );
  const { PhaseProgress } = await import('./progress.js');
  const backend = await initBackend();

  const classifier = await loadModelDir(args.model, {}, undefined, args.limits);
  try {
    const inputShape = classifier.card.inputShape;
    const { settings } = args;
    // Enough points for the reported split and, when held out from --data, the calibration split.
    const oodSpecs = (args.ood.length > 0 ? args.ood : defaultOodSpecs(inputShape, args.data)).map((spec) =>
      parseOodSpec(spec),
    );
    const inDistribution = await loadImageSet(
      args.data,
      path.basename(args.data),
      args.calibrationData ? settings.n : settings.n + settings.calibrationN,
      inputShape,
      settings.seed,
    );
    checkImageShape(inDistribution, inputShape, '--data');
    let calibration: ImageSet | undefined;
    if (args.calibrationData) {
      calibration = await loadImageSet(
        args.calibrationData,
        path.basename(args.calibrationData),
        settings.calibrationN,
        inputShape,
        settings.seed,
      );
      checkImageShape(calibration, inputShape, '--calibration-data');
    }
    const ood: ImageSet[] = [];
    for (const parsed of oodSpecs) {
      const set =
        parsed.kind === 'noise'
          ? uniformNoise(settings.oodN, inputShape, settings.seed)
          : await loadImageSet(parsed.path, parsed.name, settings.oodN, inputShape, settings.seed);
      checkImageShape(set, inputShape, '--ood');
      ood.push(set);
    }
    console.error(
      `ratio eval: ${classifier.card.name} on ${backend.name}, ${inDistribution.shape[0]} in-distribution images, ` +
        `OOD ${ood.map((s) => `${s.name} (${s.shape[0]})`).join(', ')}`,
    );
    // AutoAttack and the worst-case OOD search on a pool of worker processes (the model travels
    // as its files); one worker runs everything in process.
    const { ShardPool, defaultShardCount } = await import('../jobs/sharding/index.js');
    const { readLocalModel } = await import('../jobs/models/index.js');
    // Workers start only when a phase splits into more than one shard (quick mode's AutoAttack stays here).
    const robustShards = settings.quick
      ? 1
      : defaultShardCount(Math.min(settings.robustN, settings.n), args.workers);
    const oodShards = ood.length > 0 ? defaultShardCount(settings.oodN, args.workers) : 1;
    const pool =
      args.workers > 1 && Math.max(robustShards, oodShards) > 1
        ? new ShardPool({ workers: args.workers })
        : undefined;
    const modelFiles = pool ? await readLocalModel(args.model, args.limits) : undefined;
    let artifacts: Awaited<ReturnType<typeof evaluateModel>>;
    try {
      artifacts = await evaluateModel(
        classifier,
        {
          model: { name: classifier.card.name, source: path.resolve(args.model) },
          inDistribution,
          calibration,
          ood,
        },
        settings,
        new PhaseProgress(process.stderr),
        undefined,
        pool && {
          autoAttack: (c, x, y, options) => pool.autoAttack(c, x, y, { ...options, modelFiles }),
          worstCaseConfidence: (c, x, options) => pool.worstCaseConfidence(c, x, { ...options, modelFiles }),
        },
      );
    } finally {
      await pool?.close();
    }
    const { report, markdown, counterfactualsPng, curvesSvg } = artifacts;
    const out = args.out ?? `eval-${path.basename(path.resolve(args.model))}`;
    await mkdir(out, { recursive: true });
    await writeFile(path.join(out, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
    await writeFile(path.join(out, 'report.md'), markdown);
    await writeFile(path.join(out, 'counterfactuals.png'), counterfactualsPng);
    if (curvesSvg) await writeFile(path.join(out, 'confidence-curves.svg'), curvesSvg);
    if (args.writeCalibration) {
      const { temperature, ood_threshold: threshold } = report.summary;
      await writeCalibration(args.model, report);
      console.error(
        `temperature ${temperature.toFixed(4)} and OOD threshold ${threshold.toFixed(4)} written to ${args.model}/card.json`,
      );
    }
    const s = report.summary;
    const pct = (v: number | null) => (v === null ? 'n/a' : (100 * v).toFixed(1));
    console.log(
      `Acc ${pct(s.acc)}  R.Acc ${pct(s.robust_acc)}  ECE ${pct(s.ece)}  AUC ${pct(s.auc)}  ` +
        `WC AUC ${pct(s.wc_auc)}  MMC ${pct(s.mmc)}  (T = ${s.temperature.toFixed(3)})  -> ${out}/report.md`,
    );
    return 0;
  } finally {
    classifier.dispose();
  }
}

export const summary =
  'calibration, OOD detection, worst-case OOD, counterfactuals: the RATIO table and figures';

/** The command-line option each input of the evaluation use case comes from. */
const OPTION_OF_FIELD = { model: '--model' };

export async function run(argv: string[]): Promise<number> {
  const { DEFAULT_EVAL_SETTINGS } = await import('../jobs/evaluation/index.js');
  return runCommand({
    name: 'eval',
    help: HELP,
    options: OPTION_OF_FIELD,
    parse: () => parseEvalArguments(argv, DEFAULT_EVAL_SETTINGS),
    execute: evaluate,
  });
}

const command: CommandModule = { summary, run };
export default command;
