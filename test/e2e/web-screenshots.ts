import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { CIFAR_TEST_FILE } from '../helpers/data.js';
import { startServiceProcess, stopServiceProcess } from '../helpers/service.js';
import { launchChromium } from './chromium.js';

/**
 * `npm run screenshots:web`: the three views of the page at / as small PNGs in docs/ (linked from the
 * README), taken in Debian's Chromium from `ratio serve` on the shipped models.
 */

const OUT = path.resolve('docs');

/** Palette PNG: screenshots of flat UI compress to a fraction of the RGBA size. */
async function save(bytes: Buffer, name: string): Promise<void> {
  const file = path.join(OUT, name);
  const info = await sharp(bytes).png({ palette: true, colours: 128, compressionLevel: 9 }).toFile(file);
  console.log(`${file}: ${info.width}x${info.height}, ${info.size} bytes`);
}

const service = await startServiceProcess({
  args: ['--models', 'models', '--workers', '1'],
  stderr: 'ignore',
});
const browser = await launchChromium({ width: 1000, height: 760 });
try {
  await mkdir(OUT, { recursive: true });
  const page = await browser.context.newPage();

  await page.goto(`${service.url}/#models`);
  await page.waitForSelector('.card dd >> text=small-cnn');
  await page.waitForTimeout(300);
  await save(await page.screenshot(), 'web-models.png');

  await page.goto(`${service.url}/#image/ratio-cifar10`);
  await page.click('.samples button >> text=CIFAR-10 cat');
  await page.waitForSelector('#counterfactuals table img', { timeout: 120_000 });
  await page.waitForSelector('#ood-verdict', { timeout: 120_000 });
  await save(await page.screenshot({ fullPage: true }), 'web-image.png');

  await page.goto(`${service.url}/#audit`);
  await page.waitForSelector('#audit-model option', { state: 'attached' });
  await page.selectOption('#audit-model', 'ratio-cifar10');
  await page.setInputFiles('#audit-dataset', CIFAR_TEST_FILE);
  await page.fill('#audit-n', '8');
  await page.fill('#audit-eps', '0.5');
  await page.click('form.audit details summary');
  await page.fill('#audit-iterations', '10');
  await page.fill('#audit-queries', '100');
  await page.click('form.audit button[type=submit]');
  await page.waitForSelector('#audit-summary', { timeout: 300_000 });
  await page.waitForSelector('.downloads a');
  await save(await page.screenshot({ fullPage: true }), 'web-audit.png');

  await page.setViewportSize({ width: 360, height: 740 });
  await page.goto(`${service.url}/#image/ratio-cifar10`);
  await page.click('.samples button >> text=SVHN house number 1');
  await page.waitForSelector('#ood-verdict', { timeout: 120_000 });
  await page.locator('#prediction').scrollIntoViewIfNeeded();
  await save(await page.screenshot(), 'web-image-360px.png');
} finally {
  await browser.close();
  await stopServiceProcess(service);
}
