import { spawn } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cifarRecordPng } from '../../src/web/build.js';
import type { AuditReport, OodResponse, PredictResponse } from '../../src/web/client/api.js';
import { percent } from '../../src/web/client/format.js';
import { predictionSentence, worstCaseSentence } from '../../src/web/client/verdicts.js';
import { DATA_FILE, MODEL_DIR } from '../helpers/cifar-audit.js';
import { withoutTimings } from '../helpers/reports.js';
import { type ServiceProcess, startServiceProcess } from '../helpers/service.js';
import { type Browser, hasChromium, launchChromium } from './chromium.js';

/**
 * The page at `/` in a real browser (Debian's Chromium through playwright-core) against real
 * `ratio serve` processes (stopped by PID): the Models view shows every card, an uploaded PNG gets
 * the same verdicts as the API answers and a decoded counterfactual grid, an audit submitted from
 * the page finishes with the report `ratio audit` gives on the same input, and a keyed service
 * refuses the page until it has the key.
 */

const API_KEY = 'browser-test-key';
const MODELS = ['plain-cifar10', 'ratio-cifar10'];
/** A small budget: these check the page, not the attacks. */
const ANALYSIS = { iterations: '5', radii: '0.5, 1' };

let workDir = '';
let modelsDir = '';
let pngPath = '';
let png: Uint8Array;
let dev: ServiceProcess | undefined;
let keyed: ServiceProcess | undefined;
let browser: Browser | undefined;

async function stopByPid(service: ServiceProcess | undefined): Promise<void> {
  const child = service?.child;
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  process.kill(child.pid, 'SIGTERM');
  await exited;
}

async function newPage(): Promise<Page> {
  const page = await browser!.context.newPage();
  page.on('pageerror', (error) => {
    throw error;
  });
  return page;
}

async function api<T>(base: string, route: string, init: RequestInit): Promise<T> {
  const res = await fetch(`${base}${route}`, init);
  expect(res.status, route).toBe(200);
  return (await res.json()) as T;
}

/** Fills the view's analysis settings (the <details> opened first). */
async function smallAnalysis(page: Page): Promise<void> {
  await page.click('details.settings summary');
  await page.fill('#iterations', ANALYSIS.iterations);
  await page.fill('#radii', ANALYSIS.radii);
}

describe.skipIf(!hasChromium)('the web page in Chromium (skipped where /usr/bin/chromium is absent)', () => {
  beforeAll(async () => {
    workDir = await mkdtemp(path.join(tmpdir(), 'ratio-browser-'));
    modelsDir = path.join(workDir, 'models');
    for (const name of MODELS) {
      await cp(path.join(path.dirname(MODEL_DIR), name), path.join(modelsDir, name), { recursive: true });
    }
    // CIFAR-10 test image 7 (a frog) as the PNG a person would upload.
    png = cifarRecordPng(new Uint8Array(await readFile(DATA_FILE)), 7);
    pngPath = path.join(workDir, 'frog.png');
    await writeFile(pngPath, png);
    const args = ['--models', modelsDir, '--workers', '1'];
    [dev, keyed, browser] = await Promise.all([
      startServiceProcess({ args }),
      startServiceProcess({
        args,
        env: { RATIO_API_KEYS: API_KEY, RATIO_REQUIRE_KEY_FOR_ANALYSIS: '1' },
      }),
      launchChromium(),
    ]);
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await Promise.all([stopByPid(dev), stopByPid(keyed)]);
    if (workDir) await rm(workDir, { recursive: true, force: true });
  }, 60_000);

  it('shows every served model card side by side', async () => {
    const page = await newPage();
    await page.goto(`${dev!.url}/#models`);
    await page.waitForSelector('.card dd >> text=small-cnn');
    expect(await page.$$eval('.card h2', (hs) => hs.map((h) => h.textContent))).toEqual(MODELS);
    const boxes = await page.$$eval('.card', (cards) => cards.map((c) => c.getBoundingClientRect().top));
    expect(boxes[0]).toBe(boxes[1]);
    for (const name of MODELS) {
      const card = JSON.parse(await readFile(path.join(modelsDir, name, 'card.json'), 'utf8')) as {
        metrics: { validationAccuracy: number };
      };
      const text = await page.textContent(`article[aria-labelledby="card-${name}"]`);
      expect(text).toContain(`Validation accuracy${percent(card.metrics.validationAccuracy)}`);
      expect(text).toContain('Worst-case AUCnot in the card');
    }
    await page.close();
  });

  it('answers an uploaded PNG with the API’s probabilities and verdicts and a decoded counterfactual grid', async () => {
    const page = await newPage();
    await page.goto(`${dev!.url}/#image/ratio-cifar10`);
    await smallAnalysis(page);
    await page.setInputFiles('#image-file', pngPath);

    const route = '/v1/models/ratio-cifar10';
    const predicted = await api<PredictResponse>(dev!.url, `${route}/predict?top_k=10`, {
      method: 'POST',
      headers: { 'content-type': 'image/png' },
      body: Buffer.from(png),
    });
    await page.waitForSelector('#predict-verdict');
    expect(await page.textContent('#predict-verdict')).toContain(predictionSentence(predicted));
    const bars = await page.$$eval('#prediction ol.bars li .value', (values) =>
      values.map((v) => v.textContent),
    );
    expect(bars).toEqual(predicted.predictions[0].probabilities.map((p) => percent(p)));

    const ood = await api<OodResponse>(dev!.url, `${route}/ood`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        images: [Buffer.from(png).toString('base64')],
        iterations: Number(ANALYSIS.iterations),
      }),
    });
    await page.waitForSelector('#ood-verdict', { timeout: 120_000 });
    expect(await page.textContent('#ood-verdict')).toBe(worstCaseSentence(ood));

    // Two targets x (the original + 2 radii), every image decoded and described.
    await page.waitForSelector('#counterfactuals table img', { timeout: 120_000 });
    const grid = await page.$$eval('#counterfactuals table img', (imgs) =>
      (imgs as HTMLImageElement[]).map((img) => ({ width: img.naturalWidth, alt: img.alt })),
    );
    expect(grid).toHaveLength(6);
    for (const image of grid) {
      expect(image.width).toBeGreaterThan(0);
      expect(image.alt).toMatch(/^frog\.png(, unchanged| changed towards \w+ within L2 (0\.5|1): p\(\w+\) )/);
    }
    const worst = await page.$eval(
      '#worst-case img[src^="data:"]',
      (img) => (img as HTMLImageElement).naturalWidth,
    );
    expect(worst).toBe(32);
    // Every image on the page carries alt text (empty only for the samples' decorative thumbnails).
    const missing = await page.$$eval('img', (imgs) => imgs.filter((img) => !img.hasAttribute('alt')).length);
    expect(missing).toBe(0);
    await page.close();
  }, 240_000);

  it('runs an audit to the report ratio audit gives on the same input, with live progress', async () => {
    const page = await newPage();
    await page.goto(`${dev!.url}/#audit`);
    await page.waitForSelector('#audit-model option', { state: 'attached' });
    await page.selectOption('#audit-model', 'ratio-cifar10');
    await page.setInputFiles('#audit-dataset', DATA_FILE);
    await page.fill('#audit-n', '8');
    await page.fill('#audit-eps', '1');
    await page.fill('#audit-seed', '1');
    await page.click('form.audit details summary');
    await page.fill('#audit-iterations', '1');
    await page.fill('#audit-queries', '60');
    // Every progress sentence the page shows, recorded as it appears.
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { progressSeen: string[] }).progressSeen = seen;
      new MutationObserver(() => {
        const text = document.getElementById('audit-progress')?.textContent;
        if (text && seen[seen.length - 1] !== text) seen.push(text);
      }).observe(document.body, { subtree: true, childList: true, characterData: true });
    });
    await page.click('form.audit button[type=submit]');
    await page.waitForSelector('#audit-summary', { timeout: 180_000 });
    expect(await page.textContent('#audit-state')).toBe('succeeded');

    const [download] = await Promise.all([page.waitForEvent('download'), page.click('text=JSON report')]);
    const fromPage = JSON.parse(await readFile((await download.path())!, 'utf8')) as AuditReport;
    const [junit] = await Promise.all([page.waitForEvent('download'), page.click('text=JUnit XML')]);
    expect(await readFile((await junit.path())!, 'utf8')).toContain('<testsuites tests=');
    const progress = await page.evaluate(
      () => (window as unknown as { progressSeen: string[] }).progressSeen,
    );
    expect(
      progress.some((line) => /^Attack 1 \(apgd-ce\): \d+ of \d+ points done, \d+ left; elapsed/.test(line)),
    ).toBe(true);

    const cliReport = path.join(workDir, 'cli-report.json');
    let cliErrors = '';
    const cli = await new Promise<number>((resolve) => {
      const child = spawn(
        process.execPath,
        [
          'bin/ratio.js',
          'audit',
          ...['--model', path.join(modelsDir, 'ratio-cifar10'), '--data', DATA_FILE, '--norm', 'L2'],
          ...['--eps', '1', '--n', '8', '--seed', '1', '--iterations', '1', '--queries', '60'],
          ...['--workers', '1', '--report', cliReport],
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      child.stderr!.on('data', (chunk: Buffer) => {
        cliErrors += chunk.toString();
      });
      child.once('close', (code) => resolve(code ?? -1));
    });
    expect(cli, cliErrors).toBe(0);
    const fromCli = JSON.parse(await readFile(cliReport, 'utf8')) as AuditReport;
    expect(fromPage.robust_accuracy).toBe(fromCli.robust_accuracy);
    const { n, norm, eps, version, seed, backend, clean_accuracy, robust_accuracy, warnings } = fromCli;
    expect(withoutTimings(fromPage)).toEqual(
      withoutTimings({
        ...{ n, norm, eps, version, seed, backend, clean_accuracy, robust_accuracy, warnings },
        per_attack: fromCli.per_attack,
        samples: fromCli.samples,
        seconds: fromCli.seconds,
      }),
    );
    const summary = `Robust accuracy ${percent(fromCli.robust_accuracy)}`;
    expect(await page.textContent('#audit-summary')).toContain(summary);
    // The audit's id is in the URL: a reload shows the same report again.
    expect(page.url()).toMatch(/#audit\/[0-9a-f-]{36}$/);
    await page.reload();
    await page.waitForSelector('#audit-summary');
    expect(await page.textContent('#audit-summary')).toContain(summary);
    await page.close();
  }, 300_000);

  it('on a keyed service: refuses without the key or with a wrong one, works with it, cancels an audit', async () => {
    const page = await newPage();
    await page.goto(`${keyed!.url}/#image/ratio-cifar10`);
    await smallAnalysis(page);
    await page.setInputFiles('#image-file', pngPath);
    await page.waitForSelector('#prediction .error');
    expect(await page.textContent('#prediction .error')).toBe(
      'This needs an API key (401 Unauthorized). Enter one under "API key" at the top; it stays in this tab only.',
    );
    // The 401 opened the key field.
    await page.waitForSelector('#api-key', { state: 'visible' });
    // A wrong key is refused everywhere, the model list included.
    await page.fill('#api-key', 'not-the-key');
    await page.click('text=Use key');
    await page.waitForSelector('main .error >> text=refused the API key');

    // The refusal opened the key field again.
    await page.waitForSelector('#api-key', { state: 'visible' });
    await page.fill('#api-key', API_KEY);
    await page.click('text=Use key');
    expect(await page.evaluate(() => sessionStorage.getItem('ratio-api-key'))).toBe(API_KEY);
    await page.click('details.settings summary');
    await page.click('text=Run again with these settings');
    await page.waitForSelector('#predict-verdict');
    expect(await page.textContent('#predict-verdict')).toMatch(/^(In|Out of) distribution: max confidence/);

    // An audit with the key: it runs, then the cancel button stops it.
    await page.goto(`${keyed!.url}/#audit`);
    await page.waitForSelector('#audit-model option', { state: 'attached' });
    await page.selectOption('#audit-model', 'ratio-cifar10');
    await page.setInputFiles('#audit-dataset', DATA_FILE);
    await page.fill('#audit-n', '100');
    await page.click('form.audit button[type=submit]');
    await page.waitForSelector('#audit-progress >> text=/^Attack 1/', { timeout: 120_000 });
    await page.click('text=Cancel audit');
    await page.waitForSelector('#audit-state >> text=cancelled', { timeout: 60_000 });

    // Without the key the audit form is refused with the same sentence.
    await page.click('text=New audit');
    await page.click('summary >> text=API key');
    await page.click('text=Forget key');
    await page.setInputFiles('#audit-dataset', DATA_FILE);
    await page.click('form.audit button[type=submit]');
    await page.waitForSelector('form.audit .error');
    expect(await page.textContent('form.audit .error')).toContain('This needs an API key (401 Unauthorized)');
    await page.close();
  }, 300_000);
});
