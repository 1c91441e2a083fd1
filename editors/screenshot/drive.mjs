// Drives code-server in headless Chromium: opens src/main.rs, types, waits for ghost text from
// diffusion-ls and saves a screenshot. Run through ./run.sh, which starts code-server.
// Env: URL (code-server with the workspace folder), OUT (png path), CHROMIUM (browser binary).
import { chromium } from 'playwright-core';

const url = process.env.URL;
const out = process.env.OUT ?? 'screenshot.png';
const timeout = Number(process.env.GHOST_TIMEOUT_MS ?? 120000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
const step = (m) => console.log(`[drive] ${m}`);
try {
  step(`open ${url}`);
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('.monaco-workbench', { timeout: 120000 });
  await page.waitForTimeout(3000);

  step('open src/main.rs with Quick Open');
  await page.keyboard.press('Control+P');
  await page.waitForSelector('.quick-input-widget input', { timeout: 30000 });
  await page.keyboard.type('main.rs');
  await page.waitForTimeout(1000);
  await page.keyboard.press('Enter');
  await page.waitForSelector('.monaco-editor .view-lines', { timeout: 30000 });
  await page.waitForTimeout(2000);
  await page.click('.monaco-editor .view-lines');

  // The extension activates on the rust language; the status bar shows "diffusion" once ready.
  step('wait for the diffusion status-bar item');
  await page
    .waitForFunction(() => [...document.querySelectorAll('.statusbar-item')].some((e) => /diffusion/.test(e.textContent ?? '')), null, { timeout: 120000 })
    .catch(() => step('no status-bar item seen (continuing)'));

  step('go to the marked line and type');
  await page.keyboard.press('Control+G');
  await page.keyboard.type(process.env.LINE ?? '6');
  await page.keyboard.press('Enter');
  await page.keyboard.press('End');
  await page.keyboard.type(' ', { delay: 80 });
  // Ask explicitly too (Alt+\ is "Trigger inline suggestion").
  await page.keyboard.press('Alt+Backslash');

  step('wait for ghost text');
  const ghost = await page
    .waitForSelector('.ghost-text-decoration, .ghost-text, .suggest-preview-text', { timeout })
    .catch(() => null);
  if (ghost) {
    step(`ghost text: ${JSON.stringify(await ghost.textContent())}`);
  } else {
    step('no ghost text within the timeout');
  }
  await page.screenshot({ path: out });
  step(`saved ${out}`);
  process.exitCode = ghost ? 0 : 2;
} catch (e) {
  await page.screenshot({ path: out }).catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
