import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { extract } from 'tar';
import { fetch } from 'undici';
import { DatasetError } from './errors.js';

/**
 * `ratio datasets fetch`: the official archives, their published checksums, download (undici),
 * verification and unpacking. Nothing here runs in tests against the network: `installArchive` (verify +
 * unpack) is tested on local files, and `fetchDataset` takes an injectable `download`.
 */

export type OfficialDatasetName = 'cifar10' | 'cifar100' | 'svhn' | 'mnist' | 'fashion-mnist';

export interface OfficialFile {
  /** Official URL first, then mirrors tried in order when it fails. */
  urls: string[];
  /** Published MD5 (the data sets' own pages publish MD5s). */
  md5: string;
  /** File name written under the target folder. */
  file: string;
  /** `tar.gz`: unpacked into the folder after verification; `keep`: left as it is. */
  unpack: 'tar.gz' | 'keep';
}

export interface OfficialDataset {
  description: string;
  files: OfficialFile[];
  /** What is left to the user. */
  note?: string;
}

const MNIST_MIRROR = 'https://ossci-datasets.s3.amazonaws.com/mnist/';
const FASHION = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/';

function mnistFile(file: string, md5: string): OfficialFile {
  return {
    urls: [`https://yann.lecun.com/exdb/mnist/${file}`, `${MNIST_MIRROR}${file}`],
    md5,
    file,
    unpack: 'keep',
  };
}

/**
 * Sources and checksums: the CIFAR page (cs.toronto.edu/~kriz/cifar.html), the SVHN page
 * (ufldl.stanford.edu/housenumbers), the MNIST page (and the PyTorch mirror with the same files), the
 * Fashion-MNIST README. The t10k MNIST and all Fashion-MNIST MD5s are also checked in shared/data/README.md.
 */
export const OFFICIAL_DATASETS: Record<OfficialDatasetName, OfficialDataset> = {
  cifar10: {
    description: 'CIFAR-10 binary version: data_batch_1..5.bin (50,000 train), test_batch.bin (10,000)',
    files: [
      {
        urls: ['https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'],
        md5: 'c32a1d4ab5d03f1284b67883e8d87530',
        file: 'cifar-10-binary.tar.gz',
        unpack: 'tar.gz',
      },
    ],
  },
  cifar100: {
    description: 'CIFAR-100 binary version: train.bin (50,000), test.bin (10,000), label names',
    files: [
      {
        urls: ['https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'],
        md5: '03b5dce01913d631647c71ecec9e9cb8',
        file: 'cifar-100-binary.tar.gz',
        unpack: 'tar.gz',
      },
    ],
  },
  svhn: {
    description: 'SVHN cropped digits: train_32x32.mat (73,257), test_32x32.mat (26,032)',
    files: [
      {
        urls: ['http://ufldl.stanford.edu/housenumbers/train_32x32.mat'],
        md5: 'e26dedcc434d2e4c54c9b2d4a06d8373',
        file: 'train_32x32.mat',
        unpack: 'keep',
      },
      {
        urls: ['http://ufldl.stanford.edu/housenumbers/test_32x32.mat'],
        md5: 'eb5a983be6a315427106f1b164d9cef3',
        file: 'test_32x32.mat',
        unpack: 'keep',
      },
    ],
    note: 'downloaded and verified, not converted: the .mat (MATLAB v5) files are not read by loadDataset yet',
  },
  mnist: {
    description: 'MNIST: train (60,000) and t10k (10,000) images and labels, IDX gzip',
    files: [
      mnistFile('train-images-idx3-ubyte.gz', 'f68b3c2dcbeaaa9fbdd348bbdeb94873'),
      mnistFile('train-labels-idx1-ubyte.gz', 'd53e105ee54ea40749a09fcbcd1e9432'),
      mnistFile('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
      mnistFile('t10k-labels-idx1-ubyte.gz', 'ec29112dd5afa0611ce80d1b7f02629c'),
    ],
  },
  'fashion-mnist': {
    description: 'Fashion-MNIST: train (60,000) and t10k (10,000) images and labels, IDX gzip',
    files: [
      ['train-images-idx3-ubyte.gz', '8d4fb7e6c68d591d4c3dfef9ec88bf0d'],
      ['train-labels-idx1-ubyte.gz', '25c81989df183df01b3e8a0aad5dffbe'],
      ['t10k-images-idx3-ubyte.gz', 'bef4ecab320f06d8554ea6380940ec79'],
      ['t10k-labels-idx1-ubyte.gz', 'bb300cfdad3c16e7a12a480ee83cd310'],
    ].map(([file, md5]) => ({ urls: [`${FASHION}${file}`], md5, file, unpack: 'keep' as const })),
  },
};

export function isOfficialDatasetName(name: string): name is OfficialDatasetName {
  return Object.hasOwn(OFFICIAL_DATASETS, name);
}

export class ChecksumError extends DatasetError {
  override readonly name = 'ChecksumError';
  constructor(file: string, expected: string, actual: string) {
    super(
      'bad-magic',
      `'${file}' has md5 ${actual}, the published checksum is ${expected}: corrupt or wrong download`,
    );
  }
}

export async function md5File(file: string): Promise<string> {
  const hash = createHash('md5');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}

export async function verifyFile(file: string, md5: string): Promise<void> {
  const actual = await md5File(file);
  if (actual !== md5.toLowerCase()) throw new ChecksumError(file, md5, actual);
}

/**
 * Verifies an archive against its checksum, then unpacks it into `dir` (tar refuses absolute paths and
 * `..` entries). Returns the unpacked entry paths (or the file itself when not an archive).
 */
export async function installArchive(
  archive: string,
  spec: Pick<OfficialFile, 'md5' | 'unpack'>,
  dir: string,
): Promise<string[]> {
  await verifyFile(archive, spec.md5);
  if (spec.unpack === 'keep') return [archive];
  await mkdir(dir, { recursive: true });
  const entries: string[] = [];
  await extract({ file: archive, cwd: dir, strict: true, onReadEntry: (entry) => entries.push(entry.path) });
  return entries;
}

export interface FetchProgress {
  file: string;
  bytes: number;
  /** From Content-Length; undefined when the server does not say. */
  totalBytes?: number;
}

/** Downloads `url` to `target`; replaceable so the install flow can be tested without a network. */
export type Downloader = (url: string, target: string, options: FetchOptions) => Promise<void>;

export interface FetchOptions {
  signal?: AbortSignal;
  onProgress?: (progress: FetchProgress) => void;
  download?: Downloader;
}

export const downloadWithUndici: Downloader = async (url, target, options) => {
  const response = await fetch(url, { signal: options.signal, redirect: 'follow' });
  if (!response.ok || !response.body) {
    throw new Error(`GET ${url}: HTTP ${response.status} ${response.statusText}`);
  }
  const total = Number(response.headers.get('content-length')) || undefined;
  let bytes = 0;
  const file = path.basename(target);
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      bytes += chunk.length;
      options.onProgress?.({ file, bytes, totalBytes: total });
      callback(null, chunk);
    },
  });
  await pipeline(
    Readable.fromWeb(response.body as WebReadableStream<Uint8Array>),
    counter,
    createWriteStream(target),
  );
};

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

export interface FetchResult {
  name: OfficialDatasetName;
  dir: string;
  files: { file: string; source: string; unpacked: number }[];
  note?: string;
}

/**
 * Downloads (or reuses, when already there with the right checksum) every file of an official data set
 * into `dir`, verifies it and unpacks archives. A download goes to `<file>.part` and is renamed only
 * after its checksum matches; a failing URL falls back to the next mirror.
 */
export async function fetchDataset(
  name: OfficialDatasetName,
  dir: string,
  options: FetchOptions = {},
): Promise<FetchResult> {
  const spec = OFFICIAL_DATASETS[name];
  return { name, dir, files: await fetchFiles(spec.files, dir, options), note: spec.note };
}

/** `fetchDataset` for any list of files (the official table, or local test fixtures). */
export async function fetchFiles(
  entries: readonly OfficialFile[],
  dir: string,
  options: FetchOptions = {},
): Promise<FetchResult['files']> {
  const download = options.download ?? downloadWithUndici;
  await mkdir(dir, { recursive: true });
  const files: FetchResult['files'] = [];
  for (const entry of entries) {
    const target = path.join(dir, entry.file);
    let source = 'already present';
    if (!(await exists(target)) || (await md5File(target)) !== entry.md5) {
      const part = `${target}.part`;
      const failures: string[] = [];
      let fetched = false;
      for (const url of entry.urls) {
        try {
          await download(url, part, options);
          await verifyFile(part, entry.md5);
          fetched = true;
          source = url;
          break;
        } catch (error) {
          await rm(part, { force: true });
          if (options.signal?.aborted) throw error;
          failures.push(`${url}: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
      if (!fetched) throw new DatasetError('not-found', `cannot fetch ${entry.file}: ${failures.join('; ')}`);
      await rename(part, target);
    }
    const unpacked = await installArchive(target, entry, dir);
    files.push({ file: target, source, unpacked: entry.unpack === 'keep' ? 0 : unpacked.length });
  }
  return files;
}
