import type { Context } from 'hono';

/**
 * The origin a client used to reach the service: the request's scheme and host, with the scheme a
 * TLS-terminating proxy reports in `X-Forwarded-Proto` (Cloud Run, Knative, ingress controllers
 * speak plain HTTP to the container). Browsers cannot set that header on a cross-origin request
 * without a CORS preflight, so a page elsewhere cannot use it to pass as this origin.
 */
export function requestOrigin(c: Context): string {
  const url = new URL(c.req.url);
  const forwarded = c.req.header('x-forwarded-proto')?.split(',')[0].trim().toLowerCase();
  const scheme = forwarded === 'https' || forwarded === 'http' ? forwarded : url.protocol.slice(0, -1);
  return `${scheme}://${url.host}`;
}
