import { type ParseArgsConfig, parseArgs } from 'node:util';

/**
 * Option parsing shared by the commands: node's parseArgs (strict), with every malformed value
 * reported as a UsageError naming the flag, which the commands turn into exit code 2.
 */

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

type OptionValues = Record<string, string | boolean | Array<string | boolean> | undefined>;

export interface OptionReader {
  values: OptionValues;
  /** The string value of --name, if given. */
  text(name: string): string | undefined;
  /** Throws unless every named option was given. */
  require(...names: string[]): void;
  /** An integer >= minimum, or the fallback when the flag is absent. */
  integer(name: string, fallback: number, minimum?: number): number;
  /** A finite number > 0, or the fallback when the flag is absent. */
  positive(name: string, fallback: number): number;
  /** The value when it is one of `choices`, the fallback when absent. */
  choice<T extends string>(name: string, choices: readonly T[], fallback: T): T;
}

interface StringFlag {
  type: 'string';
}

interface Switch {
  type: 'boolean';
}

/**
 * A command's parseArgs options: a flag taking a value for each of `strings`, a switch for each of
 * `switches`, and --help (-h). The literal names keep parseArgs' values typed.
 */
export function commandOptions<S extends string, B extends string = never>(
  strings: readonly S[],
  switches: readonly B[] = [],
): Record<S, StringFlag> & Record<B, Switch> & { help: { type: 'boolean'; short: 'h' } } {
  return {
    ...(Object.fromEntries(strings.map((name) => [name, { type: 'string' }])) as Record<S, StringFlag>),
    ...(Object.fromEntries(switches.map((name) => [name, { type: 'boolean' }])) as Record<B, Switch>),
    help: { type: 'boolean', short: 'h' } as const,
  };
}

/** Parses `argv` against `options` (strict: unknown flags are usage errors). */
export function readOptions(argv: string[], options: NonNullable<ParseArgsConfig['options']>): OptionReader {
  let values: OptionValues;
  try {
    ({ values } = parseArgs({ args: argv, strict: true, options }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const text = (name: string) => {
    const value = values[name];
    return typeof value === 'string' ? value : undefined;
  };
  return {
    values,
    text,
    require(...names) {
      for (const name of names) {
        if (text(name) === undefined) throw new UsageError(`--${name} is required`);
      }
    },
    integer(name, fallback, minimum = 1) {
      const raw = text(name);
      if (raw === undefined) return fallback;
      const value = Number(raw);
      if (raw.trim() === '' || !Number.isInteger(value) || value < minimum) {
        throw new UsageError(`--${name} must be an integer >= ${minimum}, got '${raw}'`);
      }
      return value;
    },
    positive(name, fallback) {
      const raw = text(name);
      if (raw === undefined) return fallback;
      const value = Number(raw);
      if (!(value > 0 && Number.isFinite(value))) {
        throw new UsageError(`--${name} must be a number > 0, got '${raw}'`);
      }
      return value;
    },
    choice(name, choices, fallback) {
      const raw = text(name);
      if (raw === undefined) return fallback;
      const found = choices.find((c) => c === raw);
      if (found === undefined) {
        const list =
          choices.length === 2
            ? choices.join(' or ')
            : `${choices.slice(0, -1).join(', ')} or ${choices.at(-1)}`;
        throw new UsageError(`--${name} must be ${list}, got '${raw}'`);
      }
      return found;
    },
  };
}

/**
 * The limits of a local model: `--max-model-bytes` when given, else RATIO_MAX_MODEL_* and the
 * machine's memory (`localModelLimits`); a malformed value is a UsageError naming the flag or variable.
 */
export async function localLimitsOption(raw: string | undefined) {
  const { localModelLimits, parseModelLimit } = await import('../jobs/models/index.js');
  try {
    const maxBytes = raw === undefined ? undefined : parseModelLimit(raw, '--max-model-bytes');
    return localModelLimits({ maxBytes });
  } catch (error) {
    if (error instanceof RangeError) throw new UsageError(error.message);
    throw error;
  }
}
