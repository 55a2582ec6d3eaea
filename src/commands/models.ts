import { parseArgs } from 'node:util';
import type { CommandModule } from './command.js';
import { inputErrorMessage } from './input-errors.js';

/** `ratio models inspect <model>`: what an imported (ONNX) model is, without running it. */

const HELP = `usage: ratio models inspect <file.onnx | dir with model.onnx> [--json]

  prints the model's input (NCHW, as exported) and output, the ONNX ops it uses, its parameter
  count, opset and producer, and warnings (e.g. a final Softmax); exit 2 when the importer refuses it
`;

async function inspect(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const modelPath = positionals[0];
  if (!modelPath) {
    console.error(`ratio models inspect: a model path is required\n\n${HELP}`);
    return 2;
  }
  const { inspectModel } = await import('../jobs/models.js');
  let summary: Awaited<ReturnType<typeof inspectModel>>;
  try {
    summary = await inspectModel(modelPath);
  } catch (error) {
    const message = await inputErrorMessage(error, { model: 'model' });
    if (message === undefined) throw error;
    console.error(`ratio models inspect: ${message}`);
    return 2;
  }
  if (values.json) {
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
  if (subcommand === 'inspect') return inspect(rest);
  if (!subcommand || subcommand === '--help' || subcommand === '-h') {
    console.log(HELP);
    return subcommand ? 0 : 2;
  }
  console.error(`ratio models: unknown subcommand '${subcommand}'\n\n${HELP}`);
  return 2;
}

const command: CommandModule = { summary, run };
export default command;
