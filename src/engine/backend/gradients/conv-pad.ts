/** A convolution's padding as tfjs takes it (here on its own so the kernels share it without a cycle). */
export type ConvPad =
  | 'same'
  | 'valid'
  | number
  | [[number, number], [number, number], [number, number], [number, number]];
