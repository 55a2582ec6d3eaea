#!/usr/bin/env node
// The `ratio` CLI: the compiled JavaScript in dist/ (`npm ci` builds it, or `npm run build`).
// RATIO_FROM_SOURCE=1 runs the TypeScript sources through tsx instead (the tests set it, so the
// commands they start run the code under test, never a stale build).
import { existsSync } from 'node:fs';

if (process.env.RATIO_FROM_SOURCE === '1') {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli.ts');
} else {
  const cli = new URL('../dist/cli.js', import.meta.url);
  if (!existsSync(cli)) {
    console.error('ratio: dist/ is not built; run `npm run build` (npm ci builds it)');
    process.exit(2);
  }
  await import(cli.href);
}
