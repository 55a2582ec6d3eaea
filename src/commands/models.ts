import { parseArgs } from 'node:util';
import type { ModelLimits } from '../jobs/models/index.js';
import { commandOptions, localLimitsOption, UsageError } from './args.js';
import { type CommandModule, runCommand } from './command.js';

/** `ratio models inspect <model>`: what an imported (ONNX) model is, without running it. */

const HELP = `usage: ratio models inspect <file.onnx | dir with model.onnx> [--json] [--max-model-bytes <n>]

  prints the model's input (NCHW, as exported) and output, the ONNX ops it uses, its parameter
  count, opset and producer, and warnings (e.g. a final Softmax); exit 2 when the importer refuses it.
  External data (weights in files beside the .onnx) is read from the model's directory.

  --max-model-bytes <n>  largest model read (the .onnx with its external data; e.g. 4e9); default
                         RATIO_MAX_MODEL_BYTES, else a third of this machine's memory
`;

interface InspectArguments {
  modelPath: string;
  json: boolean;
  limits: ModelLimits;
}

async function parseInspect(argv: string[]): Promise<InspectArguments | 'help'> {
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: commandOptions(['max-model-bytes'], ['json']),
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (parsed.values.help) return 'help';
  const modelPath = parsed.positionals[0];
  if (!modelPath) throw new UsageError('a model path is required');
  const maxBytes = parsed.values['max-model-bytes'];
  return {
    modelPath,
    json: parsed.values.json === true,
    limits: await localLimitsOption(typeof maxBytes === 'string' ? maxBytes : undefined),
  };
}

async function inspect({ modelPath, json, limits }: InspectArguments): Promise<number> {
  const { inspectModel } = await import('../jobs/models/index.js');
  const summary = await inspectModel(modelPath, limits);
  if (json) {
    console.log(JSON.stringify(summary, null, 2));
    return 0;
  }
  const shape = (dims: ReadonlyArray<number | string>) => `[${dims.join(', ')}]`;
  const ops = Object.entries(summary.opsUsed)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([op, count]) => `${op} x${count}`);
  console.log(
    [
      `input:       ${summary.input.name} ${shape(summary.input.shape)} float32, ${summary.input.layout} (audited as NHWC images)`,
      `output:      ${summary.output.name} ${shape(summary.output.shape)}`,
      `ops used:    ${ops.join(', ')}`,
      `parameters:  ${summary.parameterCount}`,
      `FLOPs:       ${summary.flopsPerImage.toExponential(3)} per image`,
      `opset:       ${summary.opset} (IR ${summary.irVersion})${summary.producer ? `, produced by ${summary.producer}` : ''}`,
      `run steps:   ${summary.runtimeSteps} tfjs ops per call after folding and fusion`,
      ...summary.warnings.map((w) => `warning:     ${w}`),
    ].join('\n'),
  );
  return 0;
}

export const summary = 'inspect a model file (ONNX): inputs, outputs, ops used, parameter count';

export async function run(argv: string[]): Promise<number> {
  const [subcommand, ...rest] = argv;
  if (subcommand === 'inspect') {
    return runCommand({
      name: 'models inspect',
      help: HELP,
      options: { model: '<model>' },
      parse: () => parseInspect(rest),
      execute: inspect,
    });
  }
  if (!subcommand || subcommand === '--help' || subcommand === '-h') {
    console.log(HELP);
    return subcommand ? 0 : 2;
  }
  console.error(`ratio models: unknown subcommand '${subcommand}'\n\n${HELP}`);
  return 2;
}

const command: CommandModule = { summary, run };
export default command;
