/**
 * Typed errors of the data layer, so callers can map them without parsing messages: the HTTP layer
 * answers 422 for an `ImageError`/`DatasetError` (bad upload) and 413 for `too-large`.
 */

export type ImageErrorCode =
  | 'empty'
  | 'not-an-image'
  | 'unsupported-format'
  | 'truncated'
  | 'too-large'
  | 'bad-channels'
  | 'bad-argument';

export class ImageError extends Error {
  override readonly name: string = 'ImageError';
  constructor(
    readonly code: ImageErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export type DatasetErrorCode =
  | 'bad-size'
  | 'bad-magic'
  | 'bad-header'
  | 'empty'
  | 'mixed-sizes'
  | 'not-found'
  | 'unknown-format'
  | 'too-large'
  | 'bad-argument';

export class DatasetError extends Error {
  override readonly name: string = 'DatasetError';
  constructor(
    readonly code: DatasetErrorCode,
    message: string,
  ) {
    super(message);
  }
}
