import { readdir, readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { ArrayDataset, type Dataset } from './dataset.js';
import { DatasetError, ImageError } from './errors.js';
import { DEFAULT_MAX_PIXELS, decodeImage, type RawImage, readImageHeader, resizeTo } from './image.js';

/**
 * Image folders: `<root>/<class>/*.png|jpg|...` (label = index of the class folder in sorted order), or
 * `<root>/*.png|jpg` without class folders (an unlabelled set, e.g. out-distribution images).
 */

export const IMAGE_EXTENSIONS = /\.(png|jpe?g|webp|gif|tiff?)$/i;

export interface FolderEntry {
  /** Shown in errors: the file path, or the path inside an archive. */
  name: string;
  /** -1 for unlabelled. */
  label: number;
  read: () => Promise<Uint8Array>;
}

export interface FolderListing {
  classNames: string[];
  entries: FolderEntry[];
}

export interface ImageFolderOptions {
  /** Resize every image to [H, W]: shorter side to fit, then centre crop (`resizeTo` 'cover'). */
  resize?: readonly [number, number];
  channels?: 1 | 3 | 4;
  /** Per-image pixel limit checked from each header before decoding. */
  maxPixels?: number;
  /** Images decoded at once (sharp decodes on its own thread pool). Default: cores x 2. */
  concurrency?: number;
  /** Decode only the first `limit` entries (in class then file order). */
  limit?: number;
  /** Most images accepted; a bigger folder is an error rather than an out-of-memory crash. Default 1,000,000. */
  maxImages?: number;
  /**
   * Most bytes the decoded set may hold (images x height x width x channels), checked from the image
   * headers before any image is decoded. Default 4 GiB.
   */
  maxDecodedBytes?: number;
}

const DEFAULT_MAX_DECODED_BYTES = 4 * 1024 ** 3;

/**
 * Reads every entry's header (format and size, no pixels) and refuses the set before decoding any
 * image: one over the pixel limit, sizes that differ when no resize is asked for, or a decoded total
 * over the budget: a 2 MB zip of 40 PNGs of 4096x4096 would decode to 2 GB.
 */
async function checkHeaders(
  entries: readonly FolderEntry[],
  options: ImageFolderOptions & { source: string },
  channels: number,
): Promise<void> {
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  const maxDecoded = options.maxDecodedBytes ?? DEFAULT_MAX_DECODED_BYTES;
  let first: { name: string; width: number; height: number } | undefined;
  for (const entry of entries) {
    const header = await readImageHeader(await entry.read(), entry.name);
    if (header.width * header.height > maxPixels) {
      throw new ImageError(
        'too-large',
        `'${entry.name}' is ${header.width}x${header.height} (width x height), over the limit of ${maxPixels} pixels`,
      );
    }
    first ??= { name: entry.name, width: header.width, height: header.height };
    if (!options.resize && (header.width !== first.width || header.height !== first.height)) {
      throw new DatasetError(
        'mixed-sizes',
        `'${options.source}' mixes image sizes: '${first.name}' is ${first.width}x${first.height}, '${entry.name}' is ` +
          `${header.width}x${header.height} (width x height); ask for a resize to load it`,
      );
    }
  }
  if (!first) return;
  const [height, width] = options.resize ?? [first.height, first.width];
  const decoded = entries.length * height * width * channels;
  if (decoded > maxDecoded) {
    throw new DatasetError(
      'too-large',
      `'${options.source}' would decode to ${decoded} bytes (${entries.length} images of ${width}x${height}x${channels}), over the limit of ${maxDecoded}`,
    );
  }
}

const byCodeUnits = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** Lists an image folder without decoding anything (class names sorted, files sorted per class). */
export async function listImageFolder(root: string): Promise<FolderListing> {
  const top = await readdir(root, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    throw new DatasetError('not-found', `cannot read folder '${root}': ${error.code ?? error.message}`);
  });
  const classDirs = top
    .filter((entry) => entry.isDirectory() && !entry.name.startsWith('.'))
    .map((e) => e.name);
  classDirs.sort(byCodeUnits);
  const entries: FolderEntry[] = [];
  const fileEntry = (file: string, label: number): FolderEntry => ({
    name: file,
    label,
    read: () => readFile(file),
  });
  if (classDirs.length > 0) {
    for (const [label, className] of classDirs.entries()) {
      const dir = path.join(root, className);
      const files = (await readdir(dir, { withFileTypes: true }))
        .filter((entry) => entry.isFile() && IMAGE_EXTENSIONS.test(entry.name))
        .map((entry) => entry.name)
        .sort(byCodeUnits);
      for (const file of files) entries.push(fileEntry(path.join(dir, file), label));
    }
  } else {
    const files = top
      .filter((entry) => entry.isFile() && IMAGE_EXTENSIONS.test(entry.name))
      .map((entry) => entry.name)
      .sort(byCodeUnits);
    for (const file of files) entries.push(fileEntry(path.join(root, file), -1));
  }
  return { classNames: classDirs, entries };
}

/** Builds a listing from archive paths (`class/file.png` or `file.png`, an optional common top folder). */
export function listArchiveEntries(files: ReadonlyMap<string, Uint8Array>): FolderListing {
  const images = [...files.keys()].filter(
    (name) => IMAGE_EXTENSIONS.test(name) && !/(^|\/)(\.|__MACOSX)/.test(name),
  );
  const parts = images.map((name) => name.split('/'));
  // Drop a single common top folder (zip of `cifar10-test/` rather than of its contents).
  const depth = Math.max(0, ...parts.map((p) => p.length));
  const common = parts.length > 0 && depth >= 2 && parts.every((p) => p.length >= 2 && p[0] === parts[0][0]);
  const relative = parts.map((p) => (common && depth > 2 ? p.slice(1) : p));
  const labelled = relative.some((p) => p.length >= 2);
  const classNames = labelled
    ? [...new Set(relative.filter((p) => p.length >= 2).map((p) => p[0]))].sort(byCodeUnits)
    : [];
  const entries: FolderEntry[] = [];
  const order = images
    .map((name, i) => ({ name, rel: relative[i] }))
    .sort((a, b) => byCodeUnits(a.rel.join('/'), b.rel.join('/')));
  for (const { name, rel } of order) {
    if (labelled && rel.length < 2) continue; // stray file beside the class folders
    const bytes = files.get(name)!;
    entries.push({ name, label: labelled ? classNames.indexOf(rel[0]) : -1, read: async () => bytes });
  }
  return { classNames, entries };
}

/** Decodes a listing into one uint8 buffer, `concurrency` images at a time. */
export async function decodeFolderEntries(
  listing: FolderListing,
  options: ImageFolderOptions & { source: string },
): Promise<Dataset> {
  const entries = options.limit !== undefined ? listing.entries.slice(0, options.limit) : listing.entries;
  const maxImages = options.maxImages ?? 1_000_000;
  if (entries.length === 0) {
    throw new DatasetError(
      'empty',
      `'${options.source}' holds no images (expected <class>/*.png|jpg or *.png|jpg)`,
    );
  }
  if (entries.length > maxImages) {
    throw new DatasetError(
      'too-large',
      `'${options.source}' holds ${entries.length} images, more than the limit ${maxImages}`,
    );
  }
  const channels = options.channels ?? 3;
  await checkHeaders(entries, options, channels);
  const concurrency = Math.max(1, options.concurrency ?? availableParallelism() * 2);
  let shape: [number, number, number] | undefined = options.resize
    ? [options.resize[0], options.resize[1], channels]
    : undefined;
  let firstName = '';
  let images: Uint8Array | undefined;
  const labels = Int32Array.from(entries, (entry) => entry.label);
  const decodeOne = async (index: number): Promise<void> => {
    const entry = entries[index];
    let image: RawImage = await decodeImage(await entry.read(), {
      channels,
      maxPixels: options.maxPixels ?? DEFAULT_MAX_PIXELS,
      source: entry.name,
    });
    if (options.resize) image = await resizeTo(image, options.resize, 'cover');
    if (!shape) {
      shape = [image.height, image.width, channels];
      firstName = entry.name;
    }
    if (image.height !== shape[0] || image.width !== shape[1]) {
      throw new DatasetError(
        'mixed-sizes',
        `'${options.source}' mixes image sizes: '${firstName}' is ${shape[1]}x${shape[0]}, '${entry.name}' is ` +
          `${image.width}x${image.height} (width x height); ask for a resize to load it`,
      );
    }
    images ??= new Uint8Array(entries.length * shape[0] * shape[1] * shape[2]);
    images.set(image.data, index * image.data.length);
  };
  // The first image fixes the shape; the rest run `concurrency` at a time.
  await decodeOne(0);
  let next = 1;
  const worker = async (): Promise<void> => {
    while (next < entries.length) await decodeOne(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, entries.length - 1) }, worker));
  return new ArrayDataset({ images: images!, shape: shape!, labels, classNames: listing.classNames });
}

/** Loads `<root>/<class>/*.jpg|png` (or an unlabelled flat folder). */
export async function loadImageFolder(root: string, options: ImageFolderOptions = {}): Promise<Dataset> {
  // Decoding errors stay `ImageError`s naming the file at fault.
  return decodeFolderEntries(await listImageFolder(root), { ...options, source: root });
}
