import type { ServiceApp } from './context.js';

/**
 * 405 support: the methods other routes accept on a path that exists, so a wrong method is answered
 * 405 with `Allow` rather than 404.
 */

const patterns = new WeakMap<ServiceApp, Array<{ method: string; pattern: RegExp }>>();

function routePattern(path: string): RegExp {
  const source = path
    .split('/')
    .map((segment) =>
      segment.startsWith(':') ? '[^/]+' : segment.replace(/[.*+?^${}()|[\]\\]/g, (m) => `\\${m}`),
    )
    .join('/');
  return new RegExp(`^${source}$`);
}

/** The methods allowed on `path` when `method` is not one of them; undefined when no route has the path. */
export function methodNotAllowed(app: ServiceApp, method: string, path: string): string[] | undefined {
  let routes = patterns.get(app);
  if (!routes) {
    routes = app.routes
      .filter((route) => route.method !== 'ALL' && !route.path.includes('*'))
      .map((route) => ({ method: route.method.toUpperCase(), pattern: routePattern(route.path) }));
    patterns.set(app, routes);
  }
  const allowed = new Set(routes.filter((route) => route.pattern.test(path)).map((route) => route.method));
  if (allowed.size === 0 || allowed.has(method.toUpperCase())) return undefined;
  if (allowed.has('GET')) allowed.add('HEAD');
  return [...allowed].sort();
}
