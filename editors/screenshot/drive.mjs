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
const ghostSelector = '.ghost-text-decoration, .ghost-text, .suggest-preview-text';

/** The editor's lines as rendered (only the visible ones; the file here is short). */
const editorLines = () =>
  page.evaluate(() =>
    [...document.querySelectorAll('.monaco-editor .view-lines .view-line')]
      .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
      .map((e) => (e.textContent ?? '').replace(/\u00a0/g, ' ')),
  );
async function waitFor(what, fn, ms = 30000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    const v = await fn();
    if (v) return v;
    await page.waitForTimeout(200);
  }
  throw new Error(`timed out waiting for ${what}`);
}
const checks = [];
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
  const ghost = await page.waitForSelector(ghostSelector, { timeout }).catch(() => null);
  if (ghost) {
    step(`ghost text: ${JSON.stringify(await ghost.textContent())}`);
  } else {
    step('no ghost text within the timeout');
  }
  await page.screenshot({ path: out });
  step(`saved ${out}`);
  checks.push(['ghost text shown', !!ghost]);

  if (ghost) {
    // Tab accepts: the ghost text becomes real text on the line.
    const line = Number(process.env.LINE ?? '6') - 1;
    const beforeAccept = await page.evaluate(
      (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent ?? '').join(''),
      ghostSelector,
    );
    await page.keyboard.press('Tab');
    const accepted = await waitFor('the completion to be inserted', async () => {
      const ghosts = await page.$$(ghostSelector);
      const lines = await editorLines();
      return ghosts.length === 0 && lines[line] && lines[line].length > '    let total = '.length ? lines[line] : null;
    }).catch((e) => (step(String(e)), null));
    step(`line ${line + 1} after Tab: ${JSON.stringify(accepted)} (ghost was ${JSON.stringify(beforeAccept)})`);
    checks.push(['Tab accepted the completion', !!accepted]);
  }

  // Diffusion: Fill selection on the body of sum_even_squares (line 3).
  step('Fill selection on line 3');
  await page.keyboard.press('Escape');
  const before = await editorLines();
  await page.keyboard.press('Control+G');
  await page.keyboard.type('3');
  await page.keyboard.press('Enter');
  await page.keyboard.press('End');
  await page.keyboard.press('Shift+Home');
  await page.keyboard.press('Control+Shift+P');
  await page.waitForSelector('.quick-input-widget input', { timeout: 30000 });
  await page.keyboard.type('Diffusion: Fill selection');
  await page.waitForTimeout(800);
  await page.keyboard.press('Enter');
  const filled = await waitFor('the selection to be filled', async () => {
    const lines = await editorLines();
    return lines[2] !== before[2] ? lines[2] : null;
  }).catch((e) => (step(String(e)), null));
  step(`line 3 after Fill selection: ${JSON.stringify(filled)} (was ${JSON.stringify(before[2])})`);
  checks.push(['Fill selection edited the selection', !!filled && (await editorLines())[0] === before[0]]);
  await page.screenshot({ path: out.replace(/\.png$/, '') + '-after.png' });

  for (const [what, ok] of checks) step(`${ok ? 'PASS' : 'FAIL'} ${what}`);
  process.exitCode = checks.every(([, ok]) => ok) ? 0 : 2;
} catch (e) {
  await page.screenshot({ path: out }).catch(() => {});
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
