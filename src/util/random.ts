/**
 * A small seeded PRNG (mulberry32) so every engine call, augmentation and shuffle can be
 * reproduced bit for bit. State is one uint32, so it can be checkpointed and restored.
 */
export class Rng {
  private state: number;
  private spareNormal: number | undefined;

  constructor(seed = 0) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal (Box-Muller; the second value is kept for the next call). */
  normal(): number {
    if (this.spareNormal !== undefined) {
      const value = this.spareNormal;
      this.spareNormal = undefined;
      return value;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const radius = Math.sqrt(-2 * Math.log(u));
    this.spareNormal = radius * Math.sin(2 * Math.PI * v);
    return radius * Math.cos(2 * Math.PI * v);
  }

  /** A fresh seed for a tfjs op that takes one (`tf.randomNormal(shape, 0, 1, 'float32', seed)`). */
  seed(): number {
    return Math.floor(this.next() * 2 ** 31);
  }

  /** Fills a Float32Array with standard normals. */
  normals(length: number): Float32Array {
    const out = new Float32Array(length);
    for (let i = 0; i < length; i++) out[i] = this.normal();
    return out;
  }

  /** Fisher-Yates permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = out[i];
      out[i] = out[j];
      out[j] = tmp;
    }
    return out;
  }

  /** The full state, for checkpoints. */
  getState(): { state: number; spareNormal: number | null } {
    return { state: this.state, spareNormal: this.spareNormal ?? null };
  }

  setState(saved: { state: number; spareNormal: number | null }): void {
    this.state = saved.state >>> 0;
    this.spareNormal = saved.spareNormal ?? undefined;
  }
}

/** murmur3's 32-bit finaliser: every input bit flips about half of the output bits. */
function avalanche(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * A uint32 seed that depends only on the given integers, in order (each taken modulo 2^32).
 * Attacks seed every example's draws with `mixSeed(seed, attack, globalIndex, restart)`, so an
 * example's random numbers never depend on the batch, shard or still-robust list it lands in.
 */
export function mixSeed(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const part of parts) h = avalanche((h ^ avalanche((part >>> 0) + 0x7f4a7c15)) + 0x165667b1);
  return h;
}

/** A stable 32-bit hash of a name (FNV-1a), e.g. to mix an attack's name into a seed. */
export function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
