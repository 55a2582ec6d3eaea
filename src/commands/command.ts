import { UsageError } from './args.js';
import { inputErrorMessage, type OptionOfField } from './input-errors.js';

/** What every `src/commands/<name>.ts` exports for the `ratio` entry point (src/cli.ts). */
export interface CommandModule {
  summary: string;
  /** Returns the process exit code: 0 ok, 1 a failed gate (e.g. robust accuracy under threshold), 2 bad input. */
  run(argv: string[]): Promise<number>;
}

export interface CommandSteps<A> {
  /** The command's name, as `ratio <name>` prints it. */
  name: string;
  help: string;
  /** The use-case field each option feeds, for bad-input messages (`{ dataset: '--data' }`). */
  options: OptionOfField;
  /** Parses argv: the arguments, or 'help'; throws UsageError on bad flags. */
  parse(): A | 'help' | Promise<A | 'help'>;
  /** Runs the command; returns its exit code. */
  execute(args: A): Promise<number>;
}

/**
 * The frame every command shares: `--help` prints the help (0); bad flags or bad input found by the
 * use case print a message naming the option and the help (2); an interrupt prints so (130).
 */
export async function runCommand<A>(steps: CommandSteps<A>): Promise<number> {
  try {
    const args = await steps.parse();
    if (args === 'help') {
      console.log(steps.help);
      return 0;
    }
    return await steps.execute(args);
  } catch (error) {
    const message =
      error instanceof UsageError ? error.message : await inputErrorMessage(error, steps.options);
    if (message !== undefined) {
      console.error(`ratio ${steps.name}: ${message}\n\n${steps.help}`);
      return 2;
    }
    if (error instanceof Error && error.name === 'AbortError') {
      console.error(`ratio ${steps.name}: interrupted`);
      return 130;
    }
    throw error;
  }
}
