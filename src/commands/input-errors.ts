/**
 * Bad input found by a use case, as the line a command prints before exiting with code 2: the
 * typed errors of the layers below, chosen by type and prefixed with the option the input came from.
 * The error classes are imported when an error is there to classify, so `--help` stays fast.
 */

/** Option names by use-case field, e.g. `{ model: '--model', dataset: '--data' }`. */
export type OptionOfField = Record<string, string>;

/** The message for a bad-input error, or undefined when `error` is not one (a bug, an abort). */
export async function inputErrorMessage(error: unknown, options: OptionOfField): Promise<string | undefined> {
  if (!(error instanceof Error)) return undefined;
  const { DatasetError, ImageError, InputFieldError, InvalidInputError, ModelLoadError } = await import(
    '../jobs/errors.js'
  );
  const {
    limitVariable,
    ModelContractError,
    ModelDirError,
    ModelFileError,
    ModelLimitError,
    NonFiniteLogitsError,
  } = await import('../jobs/models/index.js');
  // Inputs without an option here carry their option in the message already (e.g. `--ood 'x' ...`).
  const prefixed = (field: string, message: string) =>
    options[field] === undefined ? message : `${options[field]}: ${message}`;
  if (
    error instanceof InvalidInputError ||
    error instanceof InputFieldError ||
    error instanceof ModelLoadError
  ) {
    return prefixed(error.field, error.message);
  }
  if (error instanceof ModelLimitError) {
    // A local model over a limit of this machine: say how to raise it.
    const variable = limitVariable(error.limit);
    const how = [error.limit === 'bytes' ? '--max-model-bytes' : undefined, variable].filter(Boolean);
    return prefixed(
      'model',
      how.length > 0 ? `${error.message} (raise it with ${how.join(' or ')})` : error.message,
    );
  }
  if (error instanceof DatasetError || error instanceof ImageError) return prefixed('dataset', error.message);
  if (
    error instanceof ModelDirError ||
    error instanceof ModelFileError ||
    error instanceof ModelContractError ||
    // A model whose logits are not finite gives no verdict: an input error, not a low score.
    error instanceof NonFiniteLogitsError
  ) {
    return prefixed('model', error.message);
  }
  return undefined;
}
