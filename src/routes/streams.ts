import { refusal } from './problem.js';

/**
 * Open event streams (SSE) per key and in total. Each open stream holds a connection and a
 * listener on its audit; 500 of them from one key made /health/live time out. A stream over either
 * cap is refused with 429 before it opens.
 */
export class StreamSlots {
  private readonly byKey = new Map<string, number>();
  private total = 0;

  constructor(
    readonly perKey: number,
    readonly overall: number,
  ) {}

  get open(): number {
    return this.total;
  }

  /** Takes a slot for `key`; returns its release (idempotent), or throws a 429 ProblemError. */
  take(key: string): () => void {
    const held = this.byKey.get(key) ?? 0;
    if (held >= this.perKey || this.total >= this.overall) {
      const detail =
        held >= this.perKey
          ? `this key already has ${held} event streams open (the limit is ${this.perKey}); close one first`
          : `the service has ${this.total} event streams open (the limit is ${this.overall})`;
      throw refusal(429, 'too-many-streams', 'Too many event streams', detail, 5);
    }
    this.byKey.set(key, held + 1);
    this.total += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.total -= 1;
      const left = (this.byKey.get(key) ?? 1) - 1;
      if (left <= 0) this.byKey.delete(key);
      else this.byKey.set(key, left);
    };
  }
}
