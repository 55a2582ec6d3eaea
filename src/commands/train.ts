import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { TrainProgress } from '../training/trainer.js';
import type { CommandModule } from './command.js';
import { formatDuration, progressBar } from './progress.js';

/**
 * `ratio train --config <file.json> [--<setting> <value>]... [--resume]`: trains one model, logs
 * JSON lines to `<runDir>/<name>/log.jsonl`, checkpoints, and exports `<outDir>/<name>/`.
 * Exit 0 finished (or stopped cleanly with a checkpoint), 2 bad input, 1 a training failure.
 */

/** One status line: epoch, step, a bar, images/s, loss terms, learning rate, ETA. */
export function progressLine(p: TrainProgress, barWidth = 20): string {
  const fraction = p.totalSteps > 0 ? p.step / p.totalSteps : 1;
  const out = p.ceOut === null ? '' : ` ce_out ${p.ceOut.toFixed(3)}`;
  return (
    `epoch ${p.epoch + 1}/${p.epochs} step ${p.step}/${p.totalSteps} [${progressBar(fraction, barWidth)}] ` +
    `${p.imagesPerSecond.toFixed(1)} img/s loss ${p.loss.toFixed(3)} ce_in ${p.ceIn.toFixed(3)}${out} ` +
    `lr ${p.lr.toExponential(2)} eta ${formatDuration(p.etaSeconds)}`
  );
}

async function usage(): Promise<string> {
  const { CONFIG_FIELDS, DEFAULT_CONFIG, flagName } = await import('../training/config.js');
  const lines = [
    'usage: ratio train --config <file.json> [--<setting> <value>]... [--resume]',
    '',
    '  --config <file>   JSON object of settings (configs/*.json); flags override it',
    '  --resume          continue from <runDir>/<name>/checkpoint.bin (bit for bit)',
    '  --fresh           start over although <runDir>/<name>/checkpoint.bin exists (else refused)',
    '  --quiet           no progress line (the JSON-lines log is still written)',
    '',
    'settings (default):',
  ];
  for (const key of Object.keys(CONFIG_FIELDS) as Array<keyof typeof CONFIG_FIELDS>) {
    const kind = CONFIG_FIELDS[key];
    const type = Array.isArray(kind) ? kind.join('|') : kind;
    lines.push(`  --${flagName(key)} <${type}>  (${JSON.stringify(DEFAULT_CONFIG[key]) ?? '-'})`);
  }
  return lines.join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const { CONFIG_FIELDS, ConfigError, flagName, resolveConfig } = await import('../training/config.js');
  const settingFlags = Object.fromEntries(
    (Object.keys(CONFIG_FIELDS) as Array<keyof typeof CONFIG_FIELDS>).map((key) => [
      flagName(key),
      { type: 'string' as const },
    ]),
  );
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        ...settingFlags,
        config: { type: 'string' },
        resume: { type: 'boolean' },
        fresh: { type: 'boolean' },
        quiet: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }) as { values: Record<string, string | boolean | undefined> });
  } catch (error) {
    console.error(`ratio train: ${(error as Error).message}\n\n${await usage()}`);
    return 2;
  }
  if (values.help) {
    console.log(await usage());
    return 0;
  }
  let config: Awaited<ReturnType<typeof resolveConfig>>;
  try {
    let fromFile: Record<string, unknown> = {};
    if (typeof values.config === 'string') {
      const text = await readFile(values.config, 'utf8').catch((error: Error) => {
        throw new ConfigError(`cannot read --config '${values.config}': ${error.message}`);
      });
      try {
        fromFile = JSON.parse(text) as Record<string, unknown>;
      } catch (error) {
        throw new ConfigError(`--config '${values.config}' is not valid JSON: ${(error as Error).message}`);
      }
      if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) {
        throw new ConfigError(`--config '${values.config}' must hold a JSON object`);
      }
    }
    const fromFlags: Record<string, unknown> = {};
    for (const key of Object.keys(CONFIG_FIELDS) as Array<keyof typeof CONFIG_FIELDS>) {
      const value = values[flagName(key)];
      if (value !== undefined) fromFlags[key] = value;
    }
    config = resolveConfig(fromFile, fromFlags);
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`ratio train: ${error.message}`);
      return 2;
    }
    throw error;
  }

  const { initBackend } = await import('../jobs/runtime.js');
  const { runTraining } = await import('../training/run.js');
  const { CheckpointError } = await import('../training/checkpoint.js');
  const { DatasetError, ImageError } = await import('../jobs/errors.js');
  const backend = await initBackend();
  console.error(
    `ratio train: ${config.name} (${config.objective}, ${config.architecture} x${config.width}) on ${backend.name}`,
  );

  // First signal: finish the current step, write a checkpoint, exit. Second: exit at once.
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130);
    console.error(`\nratio train: ${signal}, writing a checkpoint before exiting (again to exit now)`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const tty = process.stderr.isTTY === true && !values.quiet;
  let lastPrinted = 0;
  try {
    const result = await runTraining(config, {
      resume: values.resume === true,
      fresh: values.fresh === true,
      signal: controller.signal,
      onNote: (message) => console.error(`${tty ? '\n' : ''}ratio train: ${message}`),
      onProgress: (progress) => {
        if (values.quiet) return;
        if (tty) {
          process.stderr.write(`\r${progressLine(progress)}\u001b[K`);
        } else if (Date.now() - lastPrinted > 30_000 || progress.step === progress.totalSteps) {
          lastPrinted = Date.now();
          console.error(progressLine(progress));
        }
      },
    });
    result.model.dispose();
    if (result.exportFolder) console.log(result.exportFolder);
    return 0;
  } catch (error) {
    console.error(`ratio train: ${(error as Error).message}`);
    // Bad input (the config, a checkpoint, the data) is 2; anything else failed while training: 1.
    const badInput =
      error instanceof CheckpointError ||
      error instanceof ConfigError ||
      error instanceof DatasetError ||
      error instanceof ImageError;
    return badInput ? 2 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export const summary = 'train a model (plain, oe, at, acet, ratio) from a JSON config; resumable';

export default { summary, run } satisfies CommandModule;
