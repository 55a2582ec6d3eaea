import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { parseCifar, parseClassNames } from '../data/cifar.js';
import { resolveDataPath } from '../data/data-root.js';
import type { Dataset } from '../data/dataset.js';
import { DatasetError } from '../data/errors.js';
import { idxDataset, maybeGunzip, parseIdx } from '../data/idx.js';
import { loadImageFolder } from '../data/image-folder.js';
import { concatDatasets } from '../data/load.js';
import { Rng } from '../util/random.js';
import { ConfigError } from './config.js';

async function classNamesBeside(file: string): Promise<string[] | undefined> {
  const meta = path.join(path.dirname(file), 'batches.meta.txt');
  return existsSync(meta) ? parseClassNames(await readFile(meta, 'utf8')) : undefined;
}

async function loadFile(file: string): Promise<Dataset> {
  if (/idx3-ubyte(\.gz)?$/.test(file)) {
    const images = parseIdx(maybeGunzip(new Uint8Array(await readFile(file)), file), file);
    const labelFile = file.replace('images-idx3', 'labels-idx1');
    const labels = existsSync(labelFile)
      ? parseIdx(maybeGunzip(new Uint8Array(await readFile(labelFile)), labelFile), labelFile)
      : undefined;
    const classes = labels ? Array.from({ length: 10 }, (_, k) => String(k)) : undefined;
    return idxDataset(images, labels, classes, file);
  }
  if (file.endsWith('.bin')) {
    const classNames = await classNamesBeside(file);
    return parseCifar(new Uint8Array(await readFile(file)), { variant: 'cifar10', classNames, source: file });
  }
  throw new DatasetError(
    'unknown-format',
    `data file '${file}' is neither CIFAR binary (.bin) nor IDX images (*-idx3-ubyte[.gz])`,
  );
}

/**
 * Loads a training set from a spec: comma-separated CIFAR binary files, IDX image files, folders
 * of `.bin` files, or an image folder `<root>/<class>/*.jpg`. `limit` keeps a seeded random subset
 * (image folders are in class order, so a prefix would hold few classes).
 */
export async function loadTrainingData(
  spec: string,
  options: { limit?: number; seed?: number } = {},
): Promise<Dataset> {
  const parts: Dataset[] = [];
  for (const item of spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const resolved = resolveDataPath(item);
    if ((await stat(resolved)).isDirectory()) {
      const binaries = (await readdir(resolved)).filter((f) => f.endsWith('.bin')).sort();
      if (binaries.length > 0) {
        for (const file of binaries) parts.push(await loadFile(path.join(resolved, file)));
      } else {
        parts.push(await loadImageFolder(resolved));
      }
    } else {
      parts.push(await loadFile(resolved));
    }
  }
  if (parts.length === 0) throw new DatasetError('not-found', `data spec '${spec}' names no files`);
  const dataset = concatDatasets(parts);
  const limit = options.limit ?? 0;
  if (limit > 0 && limit < dataset.size) {
    return dataset.subset(new Rng(options.seed ?? 0).permutation(dataset.size).slice(0, limit));
  }
  return dataset;
}

/** Seeded split of a training set into (train, held-out validation) with `validationSize` images. */
export function splitValidation(
  dataset: Dataset,
  validationSize: number,
  seed: number,
): { train: Dataset; validation: Dataset | undefined } {
  if (validationSize <= 0) return { train: dataset, validation: undefined };
  if (validationSize >= dataset.size) {
    throw new ConfigError(
      `'validationSize' (${validationSize}) must be below the training set size (${dataset.size})`,
    );
  }
  // A seed of its own, so the split does not move when the shuffle seed's use changes.
  const order = new Rng((seed ^ 0x5eed5) >>> 0).permutation(dataset.size);
  return {
    validation: dataset.subset(order.slice(0, validationSize)),
    train: dataset.subset(order.slice(validationSize)),
  };
}
