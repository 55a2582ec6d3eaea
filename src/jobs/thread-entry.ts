import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/**
 * The code that starts a worker thread on a TypeScript entry: tsx's loader is registered in the
 * thread first (loader hooks do not pass on to worker threads in Node 20), then the entry is
 * imported. For `new Worker(code, { eval: true })`.
 */
export function threadEntryCode(entry: URL): string {
  const file = fileURLToPath(entry);
  if (!existsSync(file)) throw new Error(`the worker thread's source is missing: ${file}`);
  // tsx's ESM entry (a require.resolve of 'tsx/esm/api' would give the CommonJS one).
  const tsxRoot = path.dirname(createRequire(import.meta.url).resolve('tsx/package.json'));
  const tsx = pathToFileURL(path.join(tsxRoot, 'dist/esm/api/index.mjs')).href;
  return `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(entry.href)}); });`;
}
