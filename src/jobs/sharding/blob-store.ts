import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeFileAtomically } from '../../data/atomic-file.js';
import { defaultStateDir } from '../../data/data-root.js';

/**
 * Where model files and audited points travel to queue workers on other machines: a store of
 * byte blobs under slash-separated keys, named by URL. A local (or shared, e.g. NFS) directory is
 * the default (`file:///srv/ratio-store` or a plain path); `s3://bucket/prefix` goes through an
 * S3-compatible object client the caller provides (`S3ObjectClient`: AWS S3, MinIO, R2, ...).
 */

export interface BlobStore {
  /** The URL the store was opened from (what other machines pass to reach the same blobs). */
  readonly url: string;
  put(key: string, bytes: Uint8Array): Promise<void>;
  /** Rejects with `BlobNotFoundError` when the key holds nothing. */
  get(key: string): Promise<Uint8Array>;
  /** Removes every blob whose key starts with `prefix` (nothing to remove is fine). */
  removePrefix(prefix: string): Promise<void>;
}

/** A store URL that names no store this build can open, or a key that is not a plain relative path. */
export class BlobStoreError extends Error {
  override readonly name = 'BlobStoreError';
}

export class BlobNotFoundError extends Error {
  override readonly name = 'BlobNotFoundError';
  constructor(readonly key: string) {
    super(`the store holds no blob '${key}'`);
  }
}

/** Keys are relative paths of safe segments: never absolute, never '..', so a key cannot leave the store. */
const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function checkKey(key: string): string {
  const segments = key.split('/');
  if (key.length === 0 || key.length > 512 || !segments.every((s) => SEGMENT.test(s) && s !== '..')) {
    throw new BlobStoreError(`not a store key: '${key}' (slash-separated names of [A-Za-z0-9._-])`);
  }
  return key;
}

/** Blobs as files under a directory; every write lands atomically (temporary name, then rename). */
export class FileBlobStore implements BlobStore {
  readonly url: string;
  constructor(readonly dir: string) {
    this.url = `file://${path.resolve(dir)}`;
  }

  private file(key: string): string {
    return path.join(this.dir, ...checkKey(key).split('/'));
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    const target = this.file(key);
    await mkdir(path.dirname(target), { recursive: true });
    await writeFileAtomically(target, bytes);
  }

  async get(key: string): Promise<Uint8Array> {
    try {
      return new Uint8Array(await readFile(this.file(key)));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new BlobNotFoundError(key);
      throw error;
    }
  }

  async removePrefix(prefix: string): Promise<void> {
    const trimmed = prefix.replace(/\/+$/, '');
    const parent = path.dirname(this.file(trimmed));
    const base = path.basename(trimmed);
    const names = await readdir(parent).catch(() => [] as string[]);
    await Promise.all(
      names
        .filter((name) => name.startsWith(base))
        .map((name) => rm(path.join(parent, name), { recursive: true, force: true })),
    );
  }
}

/**
 * The part of an S3 client the store needs, shaped after the S3 API's PutObject, GetObject,
 * ListObjectsV2 and DeleteObjects (an adapter over `@aws-sdk/client-s3` or a MinIO client is a few
 * lines). `getObject` resolves `undefined` for a missing key (S3's NoSuchKey).
 */
export interface S3ObjectClient {
  putObject(input: { bucket: string; key: string; body: Uint8Array }): Promise<void>;
  getObject(input: { bucket: string; key: string }): Promise<Uint8Array | undefined>;
  /** Every key under the prefix (the adapter follows continuation tokens). */
  listObjects(input: { bucket: string; prefix: string }): Promise<string[]>;
  deleteObjects(input: { bucket: string; keys: string[] }): Promise<void>;
}

/** Blobs as objects `<prefix>/<key>` in an S3-compatible bucket. */
export class S3BlobStore implements BlobStore {
  readonly url: string;
  constructor(
    private readonly client: S3ObjectClient,
    readonly bucket: string,
    readonly prefix = '',
  ) {
    this.url = `s3://${bucket}${prefix ? `/${prefix}` : ''}`;
  }

  private objectKey(key: string): string {
    return this.prefix ? `${this.prefix}/${checkKey(key)}` : checkKey(key);
  }

  put(key: string, bytes: Uint8Array): Promise<void> {
    return this.client.putObject({ bucket: this.bucket, key: this.objectKey(key), body: bytes });
  }

  async get(key: string): Promise<Uint8Array> {
    const bytes = await this.client.getObject({ bucket: this.bucket, key: this.objectKey(key) });
    if (bytes === undefined) throw new BlobNotFoundError(key);
    return bytes;
  }

  async removePrefix(prefix: string): Promise<void> {
    const keys = await this.client.listObjects({ bucket: this.bucket, prefix: this.objectKey(prefix) });
    // DeleteObjects takes at most 1000 keys a call.
    for (let i = 0; i < keys.length; i += 1000) {
      await this.client.deleteObjects({ bucket: this.bucket, keys: keys.slice(i, i + 1000) });
    }
  }
}

export interface OpenBlobStoreOptions {
  /** The object client for `s3://` URLs (none is bundled: see docs/audits.md, "Many machines"). */
  s3?: S3ObjectClient;
}

/**
 * Opens the store a URL names: `file:///dir`, a plain path (relative to the working directory), or
 * `s3://bucket[/prefix]` with `options.s3`. Throws `BlobStoreError` for anything else.
 */
export function openBlobStore(url: string, options: OpenBlobStoreOptions = {}): BlobStore {
  if (url.startsWith('file:')) return new FileBlobStore(fileURLToPath(url));
  if (url.startsWith('s3://')) {
    const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*?))?\/?$/.exec(url);
    if (!match) throw new BlobStoreError(`not an S3 URL: '${url}' (s3://bucket[/prefix])`);
    if (!options.s3) {
      throw new BlobStoreError(
        `'${url}' needs an S3 object client; this build bundles none (pass one as 'S3ObjectClient', or use a shared directory)`,
      );
    }
    return new S3BlobStore(options.s3, match[1], match[2] ?? '');
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new BlobStoreError(`unknown store URL scheme in '${url}' (file:// or s3://, or a directory path)`);
  }
  return new FileBlobStore(path.resolve(url));
}

/** RATIO_STORE_URL, else the directory `store` under the state directory (one machine, or a shared mount). */
export function defaultStoreUrl(env: NodeJS.ProcessEnv = process.env): string {
  return env.RATIO_STORE_URL || path.join(defaultStateDir(env), 'store');
}
