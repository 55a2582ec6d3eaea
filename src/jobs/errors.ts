/**
 * Typed errors of the use cases. Each names the input at fault in the use case's own words
 * (`dataset`, `model`, `targets.0`, `images`); the CLI turns them into exit code 2 with its option
 * name, the HTTP layer into a problem document naming the form or JSON field. Chosen by type, never
 * by message.
 */

export { DatasetError, ImageError } from '../data/errors.js';
export { MultipartError } from '../data/multipart.js';

/** An input a use case cannot work with (a bad parameter, a data set that does not fit the model). */
export class InvalidInputError extends Error {
  override readonly name = 'InvalidInputError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A typed error of a lower layer (an `ImageError`, `DatasetError`, `ModelFileError`, ...) raised
 * while reading one input, with the field it came from; callers map `cause` by its type.
 */
export class InputFieldError extends Error {
  override readonly name = 'InputFieldError';
  constructor(
    readonly field: string,
    override readonly cause: Error,
  ) {
    super(cause.message);
  }
}

/** The model cannot be loaded for a reason its loader did not type (a tfjs failure on odd weights). */
export class ModelLoadError extends Error {
  override readonly name = 'ModelLoadError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** Thrown when both the running slots and the waiting line of a queue are full (compute or audits). */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
  constructor(
    message: string,
    /** Suggested seconds before retrying. */
    readonly retryAfter: number,
    /** Which queue is full: synchronous compute (predict, OOD, counterfactuals) or audits. */
    readonly queue: 'compute' | 'audit' = 'compute',
  ) {
    super(message);
  }
}

/**
 * An upload the intake cannot take: too many waiting ('busy'), or one that needs more memory or time
 * to check than the service gives one upload. HTTP answers 429 (busy, with Retry-After) or 413.
 */
export class IntakeLimitError extends Error {
  override readonly name = 'IntakeLimitError';
  constructor(
    readonly kind: 'busy' | 'memory' | 'time',
    message: string,
    /** Seconds to wait before a retry ('busy'). */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}
