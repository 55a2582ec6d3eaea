import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BUNDLE_DIR, buildSamples, buildWebAssets, dataDir } from '../../src/web/build.js';

/**
 * The committed page (src/web/bundle) is what `npm run build:web` builds from src/web/client, and it
 * loads nothing from elsewhere (works offline).
 */

async function committedFiles(folder: string): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await readdir(folder, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      for (const inner of await committedFiles(path.join(folder, entry.name)))
        names.push(`${entry.name}/${inner}`);
    } else names.push(entry.name);
  }
  return names.sort();
}

describe('src/web/bundle', () => {
  it('equals a fresh build of src/web/client (run `npm run build:web` after changing the page)', async () => {
    const built = await buildWebAssets();
    for (const [name, bytes] of built) {
      const committed = new Uint8Array(await readFile(path.join(BUNDLE_DIR, name)));
      expect(Buffer.from(committed).equals(Buffer.from(bytes)), `${name} drifted`).toBe(true);
    }
    const extra = (await committedFiles(BUNDLE_DIR)).filter(
      (name) => !built.has(name) && !name.startsWith('samples/'),
    );
    expect(extra).toEqual([]);
  });

  it.skipIf(!existsSync(path.join(dataDir(), 'cifar10/test_batch_first1000.bin')))(
    'holds the sample images exactly as the data sets give them',
    async () => {
      const samples = await buildSamples(dataDir());
      const committed = (await committedFiles(path.join(BUNDLE_DIR, 'samples'))).map(
        (name) => `samples/${name}`,
      );
      expect(committed).toEqual([...samples.keys()].sort());
      for (const [name, bytes] of samples) {
        expect(
          Buffer.from(await readFile(path.join(BUNDLE_DIR, name))).equals(Buffer.from(bytes)),
          name,
        ).toBe(true);
      }
    },
  );

  it('stays small and loads nothing from another origin', async () => {
    const script = await readFile(path.join(BUNDLE_DIR, 'app.js'), 'utf8');
    const style = await readFile(path.join(BUNDLE_DIR, 'app.css'), 'utf8');
    expect(script.length + style.length).toBeLessThan(80 * 1024);
    // No URL of another host in code that fetches or imports (the page works offline).
    expect(script).not.toMatch(/\bimport\s*\(?\s*["']https?:/);
    expect(script).not.toMatch(/fetch\(\s*["'`]https?:/);
    expect(style).not.toMatch(/url\(\s*["']?https?:/);
    expect(style).not.toMatch(/@import/);
  });
});
