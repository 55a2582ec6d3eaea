/** What every `src/commands/<name>.ts` exports for the `ratio` entry point (src/cli.ts). */
export interface CommandModule {
  summary: string;
  /** Returns the process exit code: 0 ok, 1 a failed gate (e.g. robust accuracy under threshold), 2 bad input. */
  run(argv: string[]): Promise<number>;
}
