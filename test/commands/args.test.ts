import { describe, expect, it } from 'vitest';
import { readOptions, UsageError } from '../../src/commands/args.js';

const spec = {
  model: { type: 'string' },
  n: { type: 'string' },
  eps: { type: 'string' },
  norm: { type: 'string' },
  quick: { type: 'boolean' },
} as const;

/** Flags each read refuses: the arguments, the read, the usage error's message. */
const refusals: Array<[string[], (options: ReturnType<typeof readOptions>) => unknown, string]> = [
  [['--n', '1.5'], (o) => o.integer('n', 1), "--n must be an integer >= 1, got '1.5'"],
  [['--n', ''], (o) => o.integer('n', 1), "--n must be an integer >= 1, got ''"],
  [['--n=-1'], (o) => o.integer('n', 1, 0), "--n must be an integer >= 0, got '-1'"],
  [['--eps', 'NaN'], (o) => o.positive('eps', 1), "--eps must be a number > 0, got 'NaN'"],
  [['--eps', '0'], (o) => o.positive('eps', 1), "--eps must be a number > 0, got '0'"],
  [
    ['--norm', 'L3'],
    (o) => o.choice('norm', ['L2', 'Linf'] as const, 'L2'),
    "--norm must be L2 or Linf, got 'L3'",
  ],
  [
    ['--norm', 'x'],
    (o) => o.choice('norm', ['a', 'b', 'c'] as const, 'a'),
    "--norm must be a, b or c, got 'x'",
  ],
  [[], (o) => o.require('model'), '--model is required'],
];

describe('readOptions', () => {
  it('reads values and falls back to defaults for absent flags', () => {
    const options = readOptions(['--model', 'm', '--n', '12', '--eps', '0.25', '--quick'], { ...spec });
    expect(options.text('model')).toBe('m');
    expect(options.integer('n', 5)).toBe(12);
    expect(options.positive('eps', 1)).toBe(0.25);
    expect(options.choice('norm', ['L2', 'Linf'] as const, 'L2')).toBe('L2');
    expect(options.values.quick).toBe(true);
    expect(readOptions([], { ...spec }).integer('n', 7)).toBe(7);
  });

  it.each(refusals)('rejects %j with a usage error naming the flag', (argv, read, message) => {
    const options = readOptions(argv, { ...spec });
    expect(() => read(options)).toThrow(UsageError);
    expect(() => read(options)).toThrow(message);
  });

  it('turns unknown flags into usage errors', () => {
    expect(() => readOptions(['--nope'], { ...spec })).toThrow(UsageError);
  });
});
