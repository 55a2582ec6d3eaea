/**
 * `ratio <command> [options]`: one entry point for serving, auditing, evaluating and training.
 * Each command lives in `src/commands/<name>.ts` and is loaded only when used, so `ratio --help`
 * starts fast and a command's heavy dependencies (tfjs, sharp) load only for it.
 */
import type { CommandModule } from './commands/command.js';

const commands: Record<string, () => Promise<CommandModule>> = {
  audit: () => import('./commands/audit.js'),
  datasets: () => import('./commands/datasets.js'),
  eval: () => import('./commands/eval.js'),
  models: () => import('./commands/models.js'),
  serve: () => import('./commands/serve.js'),
  train: () => import('./commands/train.js'),
  worker: () => import('./commands/worker.js'),
};

function usage(): string {
  const lines = ['usage: ratio <command> [options]', '', 'commands:'];
  for (const name of Object.keys(commands).sort()) lines.push(`  ${name}`);
  lines.push('', "run 'ratio <command> --help' for a command's options");
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return 0;
  }
  const load = commands[name];
  if (!load) {
    console.error(`ratio: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  const command = await load();
  return command.run(rest);
}

process.exitCode = await main(process.argv.slice(2));
