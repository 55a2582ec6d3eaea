/** A valid uint8 IDX file of `count` 28x28 images, all zero. */
export function idxImages(count: number): Uint8Array {
  const bytes = new Uint8Array(16 + count * 28 * 28);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, 0x00000803);
  view.setUint32(4, count);
  view.setUint32(8, 28);
  view.setUint32(12, 28);
  return bytes;
}

/** A valid uint8 IDX label file of `count` labels, all zero. */
export function idxLabels(count: number): Uint8Array {
  const bytes = new Uint8Array(8 + count);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, 0x00000801);
  view.setUint32(4, count);
  return bytes;
}
