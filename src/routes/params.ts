import { z } from '@hono/zod-openapi';
import { invalidField } from './problem.js';

/**
 * Strict numbers for query strings and form fields: plain decimal notation only. `Number()` reads
 * '0x10' as 16, '1e3' as 1000 and '' or ' ' as 0, so `?threshold=` became threshold 0 and `n=0x10`
 * became 16; here each is an error naming the field.
 */

const INTEGER = /^-?\d+$/;
const DECIMAL = /^-?(\d+(\.\d*)?|\.\d+)$/;

export interface NumberRange {
  integer: boolean;
  min: number;
  max: number;
  /** Exclude `min` itself (e.g. eps > 0). */
  exclusiveMin?: boolean;
}

/** Parses `raw` as a decimal number in `range` or throws a 422 naming `field`. */
export function parseDecimal(raw: string, field: string, range: NumberRange): number {
  const pattern = range.integer ? INTEGER : DECIMAL;
  const value = Number(raw);
  const ok =
    pattern.test(raw) &&
    Number.isFinite(value) &&
    (range.exclusiveMin ? value > range.min : value >= range.min) &&
    value <= range.max;
  if (!ok) {
    const kind = range.integer ? 'a decimal integer' : 'a decimal number';
    const low = range.exclusiveMin ? `> ${range.min}` : `>= ${range.min}`;
    throw invalidField(field, `'${field}' must be ${kind} ${low} and <= ${range.max}, got '${raw}'`);
  }
  return value;
}

/**
 * A query parameter holding a decimal number: present and empty (`?threshold=`) is an error, not 0.
 * The schema checks the notation; `parseDecimal` in the handler checks the range.
 */
export function decimalQuery(range: NumberRange, openapi: { description?: string; example?: number }) {
  return z
    .string()
    .regex(
      range.integer ? INTEGER : DECIMAL,
      range.integer ? 'must be a decimal integer' : 'must be a decimal number',
    )
    .optional()
    .openapi({
      // Documented as the number it is (clients pass numbers); read strictly from its text here.
      type: range.integer ? 'integer' : 'number',
      minimum: range.min,
      maximum: range.max,
      ...(openapi.description ? { description: openapi.description } : {}),
      ...(openapi.example !== undefined ? { example: openapi.example } : {}),
    });
}
