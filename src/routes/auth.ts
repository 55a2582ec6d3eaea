import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { MiddlewareHandler } from 'hono';
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import type { ServiceEnv } from './context.js';
import { ProblemError, problemResponse } from './problem.js';

/**
 * API keys as bearer tokens, per-key rate limits and per-key audit quotas.
 *
 * Keys come from `RATIO_API_KEYS` (comma-separated keys) and `RATIO_API_KEYS_FILE` (sha256 hex of
 * each key, one a line). Only hashes are kept; a presented token is hashed and compared with every
 * known hash in constant time. A request is identified by its key's id (the first 16 hex digits of
 * its sha256), which owns its audits and keys its limits; the key itself is never stored or logged.
 * Without keys the service runs only in an explicit development mode (`RATIO_DEV_MODE=1`), in which
 * every request is the one principal `dev`.
 */

export interface AuthConfig {
  /** sha256 hex digests of the accepted keys. */
  keyHashes: string[];
  /** No keys: every request is `dev`. Must be asked for explicitly outside tests. */
  devMode: boolean;
  /** Whether predict, OOD, counterfactuals and /v2 infer need a key (uploads and audits always do). */
  requireKeyForAnalysis: boolean;
  /**
   * /metrics without a key (RATIO_METRICS_PUBLIC=1: a scraper on a private network); by default it
   * needs one, as the audits do. Development mode needs none anywhere.
   */
  metricsPublic: boolean;
  /** Requests per key per minute over all /v1 routes (0 = unlimited). */
  requestsPerMinute: number;
  /** Audits one key may have running or queued at once. */
  auditsPerKey: number;
}

export const DEFAULT_RATE_LIMIT_PER_MINUTE = 120_000;

export const DEV_PRINCIPAL = 'dev';
export const ANONYMOUS_PRINCIPAL = 'anonymous';

export const DEFAULT_AUTH: AuthConfig = {
  keyHashes: [],
  devMode: true,
  requireKeyForAnalysis: false,
  metricsPublic: false,
  requestsPerMinute: 0,
  auditsPerKey: 4,
};

/** A configuration that cannot be served (e.g. neither keys nor development mode). */
export class AuthConfigError extends Error {
  override readonly name = 'AuthConfigError';
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

const HEX_DIGEST = /^[0-9a-f]{64}$/;

function nonNegativeInteger(raw: string | undefined, name: string, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw))
    throw new AuthConfigError(`${name} must be a non-negative decimal integer, got '${raw}'`);
  return Number(raw);
}

/**
 * The auth configuration from the environment. Throws `AuthConfigError` when no key is configured
 * and development mode is not asked for, or when the keys file is unreadable or malformed.
 */
export function authConfigFromEnv(env: NodeJS.ProcessEnv = process.env): AuthConfig {
  const hashes = (env.RATIO_API_KEYS ?? '')
    .split(',')
    .map((key) => key.trim())
    .filter((key) => key.length > 0)
    .map(sha256Hex);
  if (env.RATIO_API_KEYS_FILE) {
    let text: string;
    try {
      text = readFileSync(env.RATIO_API_KEYS_FILE, 'utf8');
    } catch (error) {
      throw new AuthConfigError(
        `RATIO_API_KEYS_FILE '${env.RATIO_API_KEYS_FILE}' cannot be read: ${(error as NodeJS.ErrnoException).code}`,
      );
    }
    text.split('\n').forEach((line, i) => {
      const digest = line.trim().toLowerCase();
      if (digest === '' || digest.startsWith('#')) return;
      if (!HEX_DIGEST.test(digest)) {
        throw new AuthConfigError(
          `RATIO_API_KEYS_FILE line ${i + 1} is not a sha256 hex digest (64 hex digits)`,
        );
      }
      hashes.push(digest);
    });
  }
  const devMode = env.RATIO_DEV_MODE === '1' || env.RATIO_DEV_MODE === 'true';
  if (hashes.length === 0 && !devMode) {
    throw new AuthConfigError(
      'no API keys configured: set RATIO_API_KEYS or RATIO_API_KEYS_FILE, or RATIO_DEV_MODE=1 to run without keys (development only)',
    );
  }
  return {
    keyHashes: hashes,
    devMode: hashes.length === 0,
    requireKeyForAnalysis:
      env.RATIO_REQUIRE_KEY_FOR_ANALYSIS === '1' || env.RATIO_REQUIRE_KEY_FOR_ANALYSIS === 'true',
    metricsPublic: env.RATIO_METRICS_PUBLIC === '1' || env.RATIO_METRICS_PUBLIC === 'true',
    requestsPerMinute: nonNegativeInteger(
      env.RATIO_RATE_LIMIT_PER_MINUTE,
      'RATIO_RATE_LIMIT_PER_MINUTE',
      // 2,000 requests a second per key: stops a runaway client, not an OOD gate at line rate.
      DEFAULT_RATE_LIMIT_PER_MINUTE,
    ),
    auditsPerKey: nonNegativeInteger(
      env.RATIO_AUDITS_PER_KEY,
      'RATIO_AUDITS_PER_KEY',
      DEFAULT_AUTH.auditsPerKey,
    ),
  };
}

/** Known key hashes; `identify` answers the key id of a token, comparing every hash in constant time. */
export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(hashes: readonly string[]) {
    this.digests = hashes.map((hex) => Buffer.from(hex, 'hex'));
  }

  get size(): number {
    return this.digests.length;
  }

  /** The key id (first 16 hex digits of its sha256) of a known token, else undefined. */
  identify(token: string): string | undefined {
    const presented = createHash('sha256').update(token, 'utf8').digest();
    let found: Buffer | undefined;
    // No early exit: the time taken does not depend on which key (if any) matched.
    for (const digest of this.digests) {
      if (timingSafeEqual(digest, presented)) found = digest;
    }
    return found?.toString('hex').slice(0, 16);
  }
}

function problem(status: number, slug: string, title: string, detail: string, retryAfter?: number) {
  return new ProblemError(status, slug, title, detail, [], retryAfter);
}

/**
 * Whether a request needs a key: uploads and audits (and their event streams) always, analyses on
 * /v1 and /v2 when configured, /metrics unless made public.
 */
function needsKey(method: string, path: string, config: AuthConfig): boolean {
  if (path === '/v1/audits' || path.startsWith('/v1/audits/')) return true;
  if (method === 'POST' && /^\/v1\/models\/[^/]+\/(predict|ood|counterfactuals)$/.test(path)) {
    return config.requireKeyForAnalysis;
  }
  if (method === 'POST' && /^\/v2\/models\/[^/]+\/infer$/.test(path)) return config.requireKeyForAnalysis;
  if (path === '/metrics') return !config.metricsPublic;
  return false;
}

/**
 * The one key and rate-limit policy of the service, mounted on /v1, /v2 (but its health) and
 * /metrics: one limiter, so a key's requests count together whichever route family they use.
 * Sets `principal` for every request it guards: the key id of a valid bearer token, `dev` in development
 * mode, `anonymous` where no key is needed and none was sent. A missing key where one is needed, or
 * an invalid key anywhere, is 401 with `WWW-Authenticate: Bearer`. Then the per-principal rate limit
 * (429 with Retry-After).
 */
export function authMiddleware(config: AuthConfig): MiddlewareHandler<ServiceEnv> {
  const keys = new ApiKeys(config.keyHashes);
  const limiter =
    config.requestsPerMinute > 0
      ? new RateLimiterMemory({ points: config.requestsPerMinute, duration: 60 })
      : undefined;
  return async (c, next) => {
    const header = c.req.header('authorization');
    let principal: string;
    if (config.devMode) principal = DEV_PRINCIPAL;
    else {
      const match = header === undefined ? null : /^Bearer[ ]+([^\s]+)[ ]*$/i.exec(header);
      const identified = match ? keys.identify(match[1]) : undefined;
      if (header !== undefined && identified === undefined) {
        const res = problemResponse(
          c,
          problem(
            401,
            'unauthorized',
            'Unauthorized',
            'the API key is not valid (send Authorization: Bearer <key>)',
          ),
        );
        res.headers.set('www-authenticate', 'Bearer error="invalid_token"');
        return res;
      }
      if (identified === undefined && needsKey(c.req.method, c.req.path, config)) {
        const res = problemResponse(
          c,
          problem(
            401,
            'unauthorized',
            'Unauthorized',
            'this operation needs an API key (Authorization: Bearer <key>)',
          ),
        );
        res.headers.set('www-authenticate', 'Bearer');
        return res;
      }
      principal = identified ?? ANONYMOUS_PRINCIPAL;
    }
    c.set('principal', principal);
    if (limiter) {
      try {
        await limiter.consume(principal);
      } catch (error) {
        if (!(error instanceof RateLimiterRes)) throw error;
        return problemResponse(
          c,
          problem(
            429,
            'rate-limited',
            'Rate limit exceeded',
            `more than ${config.requestsPerMinute} requests a minute for this key`,
            Math.max(1, error.msBeforeNext / 1000),
          ),
        );
      }
    }
    await next();
  };
}

/** Running plus queued audits per principal, counted with rate-limiter-flexible as a never-expiring quota. */
export class AuditQuota {
  private readonly quota: RateLimiterMemory;

  constructor(readonly perPrincipal: number) {
    this.quota = new RateLimiterMemory({ points: Math.max(1, perPrincipal), duration: 0 });
  }

  /** Takes one audit slot for `principal`; false (and nothing taken) when its quota is used up. */
  async take(principal: string): Promise<boolean> {
    try {
      await this.quota.consume(principal);
      return true;
    } catch (error) {
      if (!(error instanceof RateLimiterRes)) throw error;
      await this.quota.reward(principal);
      return false;
    }
  }

  /** Gives back a slot (the audit ended, or its submission failed). */
  async give(principal: string): Promise<void> {
    await this.quota.reward(principal);
  }
}
