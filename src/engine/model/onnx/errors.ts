/**
 * Why an ONNX file was refused. Every refusal happens while reading the file and planning the graph,
 * before any tensor exists; each kind has its own class (chosen by type, never by message).
 */
export abstract class OnnxImportError extends Error {}

/** The bytes are not a readable ONNX model: not protobuf, truncated, no graph, dangling names. */
export class OnnxFormatError extends OnnxImportError {
  override readonly name = 'OnnxFormatError';
  constructor(
    message: string,
    /** The node at fault, when there is one. */
    readonly node?: string,
  ) {
    super(message);
  }
}

/** Where in the graph an unsupported construct sits: node name, op type and the model's opset. */
export interface OnnxNodeRef {
  node: string;
  opType: string;
  opset: number;
}

/**
 * A valid model that uses something the importer does not support: an operator outside the
 * allow-list, an attribute value (e.g. `mode=reflect`), external weight data, a second input, a
 * non-float input, a dynamic dimension other than the batch. The message names the node, its op
 * type and the opset, and the attribute when one is at fault.
 */
export class OnnxUnsupportedError extends OnnxImportError {
  override readonly name: string = 'OnnxUnsupportedError';
  readonly node: string | undefined;
  readonly opType: string | undefined;
  readonly opset: number | undefined;
  constructor(
    message: string,
    at?: OnnxNodeRef,
    /** The attribute or input at fault (e.g. `group`, `pads`, `input`). */
    readonly attribute?: string,
  ) {
    super(
      at
        ? `node '${at.node}' (${at.opType}, opset ${at.opset})${attribute ? ` attribute '${attribute}'` : ''}: ${message}`
        : message,
    );
    this.node = at?.node;
    this.opType = at?.opType;
    this.opset = at?.opset;
  }
}

/**
 * ONNX external data (weights in a file beside the .onnx) that cannot be read: the model came as an
 * upload (`not-local`: an upload is one file, never a path to read), names a location that leaves
 * the model's directory (`outside-directory`), a file that is not there (`missing`), or bytes past
 * the end of its file (`out-of-range`).
 */
export class OnnxExternalDataError extends OnnxUnsupportedError {
  override readonly name = 'OnnxExternalDataError';
  constructor(
    message: string,
    readonly reason: 'not-local' | 'outside-directory' | 'missing' | 'out-of-range',
    /** The location as the model names it. */
    readonly location: string,
  ) {
    super(message);
  }
}

/** A size over the configured limits (file bytes, parameters, elements of one tensor). */
export class OnnxLimitError extends OnnxImportError {
  override readonly name = 'OnnxLimitError';
  constructor(
    readonly limit:
      | 'bytes'
      | 'parameters'
      | 'tensorElements'
      | 'nodes'
      | 'flops'
      | 'initializers'
      | 'protoElements'
      | 'depth',
    readonly value: number,
    readonly maximum: number,
    what: string,
    /** The node where the limit was crossed, when one is to blame. */
    readonly node?: string,
  ) {
    super(`${what}: ${value} ${limit}, over the limit of ${maximum}`);
  }
}

/**
 * The model loads but its trial forward pass of one zero image gives non-finite logits (NaN or
 * infinity: NaN weights, an overflowing layer): no attack or prediction on it would mean anything.
 */
export class OnnxTrialError extends OnnxImportError {
  override readonly name = 'OnnxTrialError';
}
