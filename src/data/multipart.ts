import busboy from 'busboy';

/**
 * multipart/form-data bodies parsed as their chunks arrive (busboy), with every limit checked while
 * reading: bytes in all, parts, file parts, bytes of one part, bytes of one text field. The web
 * platform's `formData()` parses a whole body at once: 1.5 million parts held the event loop for
 * 11 s, one 200 MB file for 6 s. Throws `MultipartError` naming what is over which limit.
 */

export interface MultipartLimits {
  /** Bytes of the whole body. */
  maxBodyBytes: number;
  /** Parts of any kind. */
  maxParts: number;
  /** File parts. */
  maxFiles: number;
  /** Bytes of one file part. */
  maxFileBytes: number;
  /** Bytes of one text field. */
  maxFieldBytes: number;
}

/** Parts of a model upload (weight shards, card), data set, labels and parameters, with room. */
export const DEFAULT_MULTIPART_LIMITS: Omit<MultipartLimits, 'maxBodyBytes' | 'maxFileBytes'> = {
  maxParts: 256,
  maxFiles: 200,
  maxFieldBytes: 4096,
};

/** A body over a limit ('too-large') or not parseable as multipart ('malformed'). */
export class MultipartError extends Error {
  override readonly name = 'MultipartError';
  constructor(
    readonly kind: 'too-large' | 'malformed',
    /** The part at fault, or 'body'. */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

export interface MultipartFile {
  /** The form field (e.g. `model_files`, `dataset`). */
  field: string;
  filename: string;
  type: string;
  bytes: Uint8Array;
}

export interface MultipartForm {
  /** Text fields in order, as (name, value). */
  fields: Array<[string, string]>;
  files: MultipartFile[];
}

/** Parses a multipart body fed chunk by chunk: `write` each chunk as it comes, then `end`. */
export class MultipartParser {
  private readonly parser: busboy.Busboy;
  private readonly form: MultipartForm = { fields: [], files: [] };
  private readonly pending: Array<Promise<void>> = [];
  private failure: MultipartError | undefined;
  private received = 0;
  private readonly closed: Promise<void>;

  constructor(
    contentType: string,
    private readonly limits: MultipartLimits,
  ) {
    try {
      this.parser = busboy({
        headers: { 'content-type': contentType },
        limits: {
          parts: limits.maxParts,
          files: limits.maxFiles,
          fileSize: limits.maxFileBytes,
          fieldSize: limits.maxFieldBytes,
          fieldNameSize: 200,
          headerPairs: 20,
        },
      });
    } catch (error) {
      throw new MultipartError('malformed', 'body', `the body is not multipart: ${(error as Error).message}`);
    }
    const parser = this.parser;
    parser.on('field', (name, value, info) => {
      if (info.valueTruncated) {
        this.fail(
          new MultipartError('too-large', name, `the field '${name}' is over ${limits.maxFieldBytes} bytes`),
        );
      } else this.form.fields.push([name, value]);
    });
    parser.on('file', (field, stream, info) => {
      const chunks: Buffer[] = [];
      let over = false;
      stream.on('data', (chunk: Buffer) => {
        if (!over) chunks.push(chunk);
      });
      stream.on('limit', () => {
        over = true;
        chunks.length = 0;
        this.fail(
          new MultipartError('too-large', field, `the part '${field}' is over ${limits.maxFileBytes} bytes`),
        );
      });
      this.pending.push(
        new Promise<void>((done) => {
          stream.on('close', () => {
            if (!over && !this.failure) {
              const bytes = Buffer.concat(chunks);
              this.form.files.push({
                field,
                filename: info.filename ?? field,
                type: info.mimeType,
                bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength),
              });
            }
            chunks.length = 0;
            done();
          });
        }),
      );
    });
    parser.on('partsLimit', () =>
      this.fail(new MultipartError('too-large', 'body', `the form has more than ${limits.maxParts} parts`)),
    );
    parser.on('filesLimit', () =>
      this.fail(
        new MultipartError('too-large', 'body', `the form has more than ${limits.maxFiles} file parts`),
      ),
    );
    parser.on('fieldsLimit', () =>
      this.fail(new MultipartError('too-large', 'body', 'the form has too many fields')),
    );
    this.closed = new Promise<void>((resolve) => {
      parser.on('close', resolve);
      parser.on('error', (error: Error) => {
        this.fail(
          new MultipartError('malformed', 'body', `the multipart body cannot be parsed: ${error.message}`),
        );
        resolve();
      });
    });
  }

  private fail(error: MultipartError): void {
    this.failure ??= error;
  }

  /** Feeds one chunk; throws the first limit crossed (the rest of the body need not be read). */
  write(chunk: Uint8Array): void {
    if (this.failure) throw this.failure;
    this.received += chunk.byteLength;
    if (this.received > this.limits.maxBodyBytes) {
      this.fail(
        new MultipartError(
          'too-large',
          'body',
          `the body exceeds the limit of ${this.limits.maxBodyBytes} bytes`,
        ),
      );
      throw this.failure;
    }
    this.parser.write(chunk);
    if (this.failure) throw this.failure;
  }

  /** The parsed form once the body ended; throws the first limit crossed or the parse error. */
  async end(): Promise<MultipartForm> {
    if (this.failure) throw this.failure;
    this.parser.end();
    await this.closed;
    await Promise.all(this.pending);
    if (this.failure) throw this.failure;
    return this.form;
  }

  /** Stops parsing (the client went away, or a limit was crossed). */
  abort(): void {
    this.parser.destroy();
  }
}
