import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { create } from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChecksumError,
  type Downloader,
  fetchFiles,
  installArchive,
  md5File,
  OFFICIAL_DATASETS,
  type OfficialFile,
} from '../../src/data/fetch.js';
import { loadDataset } from '../../src/data/load.js';

// Never touches the network: downloads are local copies through an injected Downloader.
let dir: string;
let archive: string;
let archiveMd5: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'ratio-fetch-'));
  const source = path.join(dir, 'source', 'tiny-batches-bin');
  await mkdir(source, { recursive: true });
  const records = new Uint8Array(2 * 3073);
  records[0] = 1;
  records[3073] = 2;
  await writeFile(path.join(source, 'test_batch.bin'), records);
  await writeFile(path.join(source, 'batches.meta.txt'), 'zero\none\ntwo\n');
  archive = path.join(dir, 'tiny.tar.gz');
  await create({ gzip: true, file: archive, cwd: path.join(dir, 'source') }, ['tiny-batches-bin']);
  archiveMd5 = await md5File(archive);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Serves `file://`-like local paths; anything else fails as a network error would. */
function localDownloader(calls: string[]): Downloader {
  return async (url, target) => {
    calls.push(url);
    if (!url.startsWith('local:')) throw new Error('HTTP 503 Service Unavailable');
    await copyFile(url.slice('local:'.length), target);
  };
}

describe('official data set table', () => {
  it('lists every data set with https/http URLs and 32-hex-digit MD5s', () => {
    expect(Object.keys(OFFICIAL_DATASETS).sort()).toEqual([
      'cifar10',
      'cifar100',
      'fashion-mnist',
      'mnist',
      'svhn',
    ]);
    for (const spec of Object.values(OFFICIAL_DATASETS)) {
      for (const file of spec.files) {
        expect(file.md5).toMatch(/^[0-9a-f]{32}$/);
        expect(file.urls.length).toBeGreaterThan(0);
        for (const url of file.urls) expect(url).toMatch(/^https?:\/\/[^/]+\/.+/);
      }
    }
    // The checksums shared/data/README.md confirms for its official copies.
    const md5s = OFFICIAL_DATASETS.mnist.files.map((f) => f.md5);
    expect(md5s).toContain('9fb629c4189551a2d022fa330f9573f3');
    expect(md5s).toContain('ec29112dd5afa0611ce80d1b7f02629c');
  });
});

describe('installArchive (verify, then unpack)', () => {
  it('unpacks a tar.gz whose checksum matches, and the result loads', async () => {
    const out = path.join(dir, 'installed');
    const entries = await installArchive(archive, { md5: archiveMd5, unpack: 'tar.gz' }, out);
    expect(entries).toContain('tiny-batches-bin/test_batch.bin');
    const set = await loadDataset(path.join(out, 'tiny-batches-bin', 'test_batch.bin'));
    expect(Array.from(set.labels)).toEqual([1, 2]);
    expect(set.classNames).toEqual(['zero', 'one', 'two']);
  });

  it('refuses a wrong checksum and unpacks nothing', async () => {
    const out = path.join(dir, 'refused');
    const error = await installArchive(archive, { md5: '0'.repeat(32), unpack: 'tar.gz' }, out).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ChecksumError);
    expect((error as Error).message).toMatch(
      new RegExp(`md5 ${archiveMd5}, the published checksum is 0{32}`),
    );
    expect(await readdir(out).catch(() => 'absent')).toBe('absent');
  });
});

describe('fetchFiles', () => {
  const spec = (md5: string): OfficialFile => ({
    urls: ['https://unreachable.invalid/tiny.tar.gz', `local:${archive}`],
    md5,
    file: 'tiny.tar.gz',
    unpack: 'tar.gz',
  });

  it('falls back to the next mirror, verifies, unpacks, then reuses the verified file', async () => {
    const out = path.join(dir, 'fetched');
    const calls: string[] = [];
    const [result] = await fetchFiles([spec(archiveMd5)], out, { download: localDownloader(calls) });
    expect(calls).toEqual(['https://unreachable.invalid/tiny.tar.gz', `local:${archive}`]);
    expect(result.source).toBe(`local:${archive}`);
    expect(result.unpacked).toBeGreaterThanOrEqual(2);
    expect((await readFile(path.join(out, 'tiny-batches-bin', 'batches.meta.txt'), 'utf8')).trim()).toBe(
      'zero\none\ntwo',
    );
    const again = await fetchFiles([spec(archiveMd5)], out, { download: localDownloader(calls) });
    expect(again[0].source).toBe('already present');
    expect(calls).toHaveLength(2);
  });

  it('fails with every URL named when no copy has the published checksum, leaving no partial file', async () => {
    const out = path.join(dir, 'mismatch');
    const error = await fetchFiles([spec('f'.repeat(32))], out, { download: localDownloader([]) }).catch(
      (e: unknown) => e,
    );
    expect((error as Error).message).toMatch(
      /cannot fetch tiny.tar.gz: https:\/\/unreachable.invalid.*HTTP 503.*local:.*published checksum/,
    );
    expect(await readdir(out)).toEqual([]);
  });
});
