import { rename, rm, writeFile } from 'node:fs/promises';

let temporaryCount = 0;

/**
 * Writes `bytes` to a temporary name beside `target` (unique per process and call, so concurrent
 * writers of one target never share it), then renames it into place: a reader sees the old file or
 * the whole new one, never a part.
 */
export async function writeFileAtomically(target: string, bytes: Uint8Array | string): Promise<void> {
  const temporary = `${target}.tmp-${process.pid}-${++temporaryCount}`;
  try {
    await writeFile(temporary, bytes);
    await rename(temporary, target);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}
