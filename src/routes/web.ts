import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Context } from 'hono';
import type { ServiceApp } from './context.js';
import { ProblemError, problemResponse } from './problem.js';

/**
 * The page for people at `/` (src/web/client, built into src/web/bundle by `npm run build:web`): the
 * served models' cards, one image's prediction, worst-case OOD and counterfactuals, and audits with
 * live progress. Its assets are read once at start from the built folder and served from memory,
 * under `/web/`, with an ETag; a file name from the URL never reaches the file system.
 */

/** Where the built page lives (committed, so the service needs no build step to serve it). */
export const WEB_BUNDLE = fileURLToPath(new URL('../web/bundle/', import.meta.url));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

interface Asset {
  bytes: Uint8Array;
  type: string;
  etag: string;
}

/** Every servable file under `directory` by its URL path relative to it ('app.js', 'samples/cat.png'). */
export function readWebAssets(directory: string): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  const walk = (folder: string, prefix: string) => {
    let names: string[];
    try {
      names = readdirSync(folder).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const full = path.join(folder, name);
      if (statSync(full).isDirectory()) {
        walk(full, `${prefix}${name}/`);
        continue;
      }
      const type = TYPES[path.extname(name)];
      if (!type) continue;
      const bytes = new Uint8Array(readFileSync(full));
      const etag = `"${createHash('sha256').update(bytes).digest('hex').slice(0, 20)}"`;
      assets.set(`${prefix}${name}`, { bytes, type, etag });
    }
  };
  walk(directory, '');
  return assets;
}

function serve(c: Context, asset: Asset): Response {
  // Revalidated on every load (a tiny 304), so a new build is picked up without cache-busting names.
  const headers = { 'content-type': asset.type, etag: asset.etag, 'cache-control': 'no-cache' };
  if (c.req.header('if-none-match') === asset.etag) return new Response(null, { status: 304, headers });
  return new Response(Buffer.from(asset.bytes), { status: 200, headers });
}

export function registerWebRoutes(app: ServiceApp, directory: string = WEB_BUNDLE): void {
  const assets = readWebAssets(directory);
  app.get('/', (c) => {
    const page = assets.get('index.html');
    if (!page) {
      return problemResponse(
        c,
        new ProblemError(404, 'not-found', 'Not found', 'the web page is not built: run npm run build:web'),
      );
    }
    return serve(c, page);
  });
  app.get('/web/*', (c) => {
    const asset = assets.get(c.req.path.slice('/web/'.length));
    if (!asset) {
      return problemResponse(
        c,
        new ProblemError(404, 'not-found', 'Not found', `no route for ${c.req.method} ${c.req.path}`),
      );
    }
    return serve(c, asset);
  });
}

/**
 * Every answer's Content-Security-Policy: scripts, styles and fetches from this origin only, no
 * inline script or style, images also from data: (the API's PNGs) and blob: (a file picked for
 * preview), nothing framed, no plugins.
 */
export const CONTENT_SECURITY_POLICY = {
  defaultSrc: ["'none'"],
  scriptSrc: ["'self'"],
  styleSrc: ["'self'"],
  imgSrc: ["'self'", 'data:', 'blob:'],
  connectSrc: ["'self'"],
  fontSrc: ["'self'"],
  manifestSrc: ["'self'"],
  baseUri: ["'none'"],
  formAction: ["'self'"],
  frameAncestors: ["'none'"],
};
