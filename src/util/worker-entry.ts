import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * Where a worker process or thread starts: the entry file `name` beside the module that starts it,
 * of the same kind as that module. Compiled (dist/, what bin/ratio.js and the images run) the
 * entry is `name.js` and starts as it is; run from the TypeScript sources (the tests, tsx,
 * RATIO_FROM_SOURCE=1) it is `name.ts` and starts through tsx's loader.
 */
export interface WorkerEntry {
  /** The entry file's path. */
  path: string;
  /** Whether the entry is TypeScript, run through tsx. */
  source: boolean;
  /** What a child process needs in its execArgv to run the entry. */
  execArgv: string[];
  /**
   * Code for `new Worker(code, { eval: true })` that runs the entry in a thread: loader hooks do not
   * pass on to worker threads in Node 20, so a TypeScript entry registers tsx there first.
   */
  threadCode: string;
}

export function workerEntry(startingModule: string, name: string): WorkerEntry {
  const source = startingModule.endsWith('.ts');
  const url = new URL(`./${name}.${source ? 'ts' : 'js'}`, startingModule);
  if (!source) {
    return {
      path: fileURLToPath(url),
      source,
      execArgv: [],
      threadCode: `import(${JSON.stringify(url.href)});`,
    };
  }
  // tsx's ESM entry (a require.resolve of 'tsx/esm/api' would give the CommonJS one).
  const tsxRoot = path.dirname(createRequire(startingModule).resolve('tsx/package.json'));
  const tsx = pathToFileURL(path.join(tsxRoot, 'dist/esm/api/index.mjs')).href;
  return {
    path: fileURLToPath(url),
    source,
    execArgv: ['--import', import.meta.resolve('tsx')],
    threadCode: `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(url.href)}); });`,
  };
}
