import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { PNG } from 'pngjs';

/**
 * Builds the page at `/` (src/web/client) into src/web/bundle, which is committed so the service
 * serves it without a build step (the Docker images copy src/): `npm run build:web`. The test
 * test/web/bundle.test.ts rebuilds it in memory and fails when the committed files differ.
 *
 * `npm run build:web -- --samples` also writes the bundled test images (src/web/bundle/samples) from
 * the real data sets (RATIO_DATA_DIR or ../shared/data).
 */

const here = path.dirname(fileURLToPath(import.meta.url));
export const CLIENT_DIR = path.join(here, 'client');
export const BUNDLE_DIR = path.join(here, 'bundle');
export const SAMPLES_DIR = 'samples';

const BANNER =
  '/*! ratio-audit web page. Bundles preact (MIT, Jason Miller) and eventsource-parser (MIT, Espen Hovlandsdal). */';

/** The built page by file name: index.html, app.js, app.css, icon.svg. */
export async function buildWebAssets(): Promise<Map<string, Uint8Array>> {
  const common = {
    bundle: true,
    minify: true,
    write: false,
    charset: 'utf8',
    legalComments: 'none',
    logLevel: 'silent',
  } as const;
  const script = await build({
    ...common,
    entryPoints: [path.join(CLIENT_DIR, 'main.tsx')],
    outfile: 'app.js',
    format: 'esm',
    target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    banner: { js: BANNER },
  });
  const style = await build({
    ...common,
    entryPoints: [path.join(CLIENT_DIR, 'app.css')],
    outfile: 'app.css',
    target: ['chrome100', 'firefox100', 'safari15'],
  });
  const files = new Map<string, Uint8Array>();
  files.set('app.js', script.outputFiles[0].contents);
  files.set('app.css', style.outputFiles[0].contents);
  for (const name of ['index.html', 'icon.svg']) {
    files.set(name, new Uint8Array(await readFile(path.join(CLIENT_DIR, name))));
  }
  return files;
}

export interface SampleImage {
  file: string;
  label: string;
  source: string;
}

/** Bundled test images: CIFAR-10 test points (one per class shown) and SVHN digits (out of distribution). */
const SAMPLES = [
  { set: 'cifar10', file: 'cifar10/test_batch_first1000.bin', records: [0, 1, 3, 6, 12, 13] },
  { set: 'svhn', file: 'svhn/train_first1000.bin', records: [0, 2] },
] as const;

const RECORD = 3073;

/** 32x32 RGB PNG of one CIFAR-10-binary record (1 label byte, then R, G and B planes). */
export function cifarRecordPng(bytes: Uint8Array, record: number): Uint8Array {
  const at = record * RECORD;
  if (at + RECORD > bytes.length) throw new RangeError(`record ${record} is past the end of the file`);
  const png = new PNG({ width: 32, height: 32, colorType: 2, inputColorType: 2, inputHasAlpha: false });
  const rgb = Buffer.alloc(32 * 32 * 3);
  for (let i = 0; i < 1024; i++) {
    rgb[i * 3] = bytes[at + 1 + i];
    rgb[i * 3 + 1] = bytes[at + 1 + 1024 + i];
    rgb[i * 3 + 2] = bytes[at + 1 + 2048 + i];
  }
  png.data = rgb;
  return new Uint8Array(PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false }));
}

/** The sample images and their index (samples/samples.json) from the data directory. */
export async function buildSamples(dataDir: string): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  const classes = (await readFile(path.join(dataDir, 'cifar10/batches.meta.txt'), 'utf8'))
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
  const index: SampleImage[] = [];
  for (const sample of SAMPLES) {
    const bytes = new Uint8Array(await readFile(path.join(dataDir, sample.file)));
    for (const [i, record] of sample.records.entries()) {
      const label = bytes[record * RECORD];
      // SVHN's file has no labels: its images are told apart by their order.
      const name = sample.set === 'cifar10' ? classes[label] : `house number ${i + 1}`;
      const file = `${sample.set}-${record}-${name.replace(/\W+/g, '-')}.png`;
      files.set(`${SAMPLES_DIR}/${file}`, cifarRecordPng(bytes, record));
      index.push({
        file,
        label: sample.set === 'cifar10' ? `CIFAR-10 ${name}` : `SVHN ${name}`,
        source: `${sample.file} record ${record}${sample.set === 'svhn' ? ' (out of distribution for CIFAR-10 models)' : ''}`,
      });
    }
  }
  files.set(`${SAMPLES_DIR}/samples.json`, new TextEncoder().encode(`${JSON.stringify(index, null, 2)}\n`));
  return files;
}

export function dataDir(): string {
  return process.env.RATIO_DATA_DIR ?? path.resolve(here, '../../../shared/data');
}

async function writeAll(files: Map<string, Uint8Array>): Promise<void> {
  for (const [name, bytes] of files) {
    const target = path.join(BUNDLE_DIR, name);
    await mkdir(path.dirname(target), { recursive: true });
    await writeFile(target, bytes);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const page = await buildWebAssets();
  for (const name of page.keys()) await rm(path.join(BUNDLE_DIR, name), { force: true });
  await writeAll(page);
  const sizes = [...page].map(([name, bytes]) => `${name} ${bytes.length} B`).join(', ');
  console.log(`wrote src/web/bundle: ${sizes}`);
  if (process.argv.includes('--samples')) {
    const samples = await buildSamples(dataDir());
    await rm(path.join(BUNDLE_DIR, SAMPLES_DIR), { recursive: true, force: true });
    await writeAll(samples);
    console.log(`wrote ${samples.size} files to src/web/bundle/${SAMPLES_DIR}`);
  }
}
