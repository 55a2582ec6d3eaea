/** Options every long-running engine call accepts (docs/design.md: the engine). */
export interface LongRunOptions<P = EngineProgress> {
  /** Checked between iterations; an aborted signal rejects with an `AbortError`. */
  signal?: AbortSignal;
  onProgress?: (progress: P) => void;
  /** Seeds the call's own PRNG so a run can be reproduced bit for bit on one backend. */
  seed?: number;
}

export interface EngineProgress {
  phase: string;
  done: number;
  total: number;
}

export type Norm = 'L2' | 'Linf';

/** Throws the standard AbortError when the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    const reason: unknown = signal.reason;
    if (reason instanceof Error && reason.name === 'AbortError') throw reason;
    throw new DOMException('the operation was aborted', 'AbortError');
  }
}

/** The AutoAttack versions (Croce & Hein 2020), listed once for the engine, the CLI and the API. */
export const AUTOATTACK_VERSIONS = ['standard', 'plus', 'rand'] as const;
export type AutoAttackVersion = (typeof AUTOATTACK_VERSIONS)[number];
