import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The README and the pages under docs/ against the repository: every relative link reaches a file
 * (and a heading, when it names one), every source path they quote exists, every `npm run` script is
 * in package.json and every RATIO_* variable is one the code reads. Files move and settings change;
 * this keeps the pages that describe them from drifting.
 */

const ROOT = path.resolve('.');

function markdownFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir)).flatMap((name) => {
    const relative = path.join(dir, name);
    if (statSync(path.join(ROOT, relative)).isDirectory()) return markdownFiles(relative);
    return name.endsWith('.md') ? [relative] : [];
  });
}

const pages = ['README.md', ...markdownFiles('docs')];
const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');
/** Text outside fenced code blocks (links and headings there are not markdown). */
const prose = (text: string) => text.replace(/```[\s\S]*?```/g, '');

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const result = new Set<string>();
  for (const [, heading] of prose(markdown).matchAll(/^#{1,6}\s+(.+?)\s*#*$/gm)) {
    const base = heading
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\- _]/gu, '')
      .replace(/ /g, '-');
    const count = seen.get(base) ?? 0;
    seen.set(base, count + 1);
    result.add(count === 0 ? base : `${base}-${count}`);
  }
  return result;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir)).flatMap((name) => {
    const relative = path.join(dir, name);
    if (statSync(path.join(ROOT, relative)).isDirectory())
      return name === 'node_modules' || name === 'build' ? [] : sourceFiles(relative);
    return /\.(ts|mjs|js)$/.test(name) ? [relative] : [];
  });
}

describe('README and docs/', () => {
  it('link only to files and headings that exist', () => {
    const broken: string[] = [];
    for (const page of pages) {
      for (const [, target] of prose(read(page)).matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/i.test(target)) continue;
        const [file, anchor] = target.split('#', 2);
        const resolved = file ? path.join(path.dirname(page), file) : page;
        if (!existsSync(path.join(ROOT, resolved))) {
          broken.push(`${page}: ${target} (no such file)`);
        } else if (anchor && !anchors(read(resolved)).has(anchor)) {
          broken.push(`${page}: ${target} (no such heading)`);
        }
      }
    }
    expect(broken).toEqual([]);
  });

  it('quote only source paths that exist', () => {
    const missing: string[] = [];
    for (const page of pages) {
      for (const [, quoted] of read(page).matchAll(
        /`((?:src|test|bench|deploy|configs|scripts)\/[^`\s]+)`/g,
      )) {
        // Placeholders and patterns (`models/<name>/`, `deploy/ci/*.yml`, `configs/{a,b}.json`) name no file.
        if (/[<>*{}]/.test(quoted)) continue;
        if (!existsSync(path.join(ROOT, quoted.replace(/[.,;:]$/, '')))) missing.push(`${page}: ${quoted}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('name only npm scripts that package.json defines', () => {
    const scripts = Object.keys(
      (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts,
    );
    const unknown: string[] = [];
    for (const page of pages) {
      for (const [, name] of read(page).matchAll(/npm run ([a-z][\w:<>-]*)/g)) {
        // `npm run bench:<name>` stands for a family of scripts.
        const known = name.includes('<')
          ? scripts.some((s) => s.startsWith(name.split('<')[0]))
          : scripts.includes(name);
        if (!known) unknown.push(`${page}: npm run ${name}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it('name only RATIO_* variables that the code reads', () => {
    // Test and bench switches (RATIO_TORCHVISION_ALL, ...) are documented too; this file is left out
    // so that naming a variable here cannot make it known.
    const readers = [...sourceFiles('src'), ...sourceFiles('bench'), ...sourceFiles('test'), 'bin/ratio.js'];
    const code = readers
      .filter((file) => path.basename(file) !== 'links.test.ts')
      .map(read)
      .join('\n');
    const named = new Set(code.match(/\bRATIO_[A-Z0-9_]+\b/g));
    // Set by the CI workflow that calls `ratio audit --server`, not read by the code itself.
    const external = new Set(['RATIO_SERVER']);
    const unknown: string[] = [];
    for (const page of pages) {
      for (const [name] of read(page).matchAll(/\bRATIO_[A-Z0-9_]+\b/g)) {
        // `RATIO_MAX_*` names a family.
        if (name.endsWith('_')) continue;
        if (!external.has(name) && !named.has(name)) unknown.push(`${page}: ${name}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it("keep the README's test command `npm test`", () => {
    expect(read('README.md')).toMatch(/npm ci && npm test/);
  });
});
