import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { encodePng } from '../../src/data/image.js';

/**
 * Writes an image folder `<root>/<prefix><c>/<i>.png` of `classes` x `perClass` uniform RGB PNGs of
 * `size` x `size`, each filled with 10 * class + index, so every loaded point names its source.
 */
export async function writeClassFolder(
  root: string,
  options: { classes: number; perClass: number; size: number; prefix?: string },
): Promise<void> {
  const { classes, perClass, size, prefix = 'class' } = options;
  for (let c = 0; c < classes; c++) {
    await mkdir(path.join(root, `${prefix}${c}`), { recursive: true });
    for (let i = 0; i < perClass; i++) {
      const data = new Uint8Array(size * size * 3).fill(10 * c + i);
      await writeFile(
        path.join(root, `${prefix}${c}`, `${i}.png`),
        await encodePng({ data, height: size, width: size, channels: 3 }),
      );
    }
  }
}
