// Drives Debian's Chromium (headless, via playwright-core) through anticamera's waiting room:
// the page shows a position, the position updates in place without a reload (JavaScript polling),
// and the user gets through to the portal when admitted.
//
//   node tests/browser/queue.mjs --url http://127.0.0.1:8080/claim [--timeout 40] [--screenshot q.png]
//
// Prints one JSON line and exits 0 on success, 1 with the reason otherwise.
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), [])
);
const url = args.url;
const timeoutMs = (Number(args.timeout) || 40) * 1000;
const fail = (msg, extra = {}) => {
  console.log(JSON.stringify({ ok: false, error: msg, ...extra }));
  process.exit(1);
};
if (!url) fail('missing --url');

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++; });
  await page.goto(url);
  const lang = await page.getAttribute('html', 'lang');
  if (!['it', 'en'].includes(lang)) fail('html lang missing', { lang });
  if (!(await page.$('main[data-anticamera="queue"]'))) fail('not the queue page', { html: (await page.content()).slice(0, 500) });
  const live = await page.$('[role="status"][aria-live="polite"]');
  if (!live) fail('no live region');
  const first = (await page.textContent('#position')).trim();
  if (!/^\d+$/.test(first)) fail('no position shown', { first });
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  const navBefore = navigations;
  // 1. The position changes in place.
  await page.waitForFunction((p) => {
    const e = document.querySelector('#position');
    return e && e.textContent.trim() !== p;
  }, first, { timeout: timeoutMs, polling: 100 }).catch(() => fail('position never changed', { first }));
  const second = (await page.textContent('#position').catch(() => '')).trim();
  if (navigations !== navBefore) fail('the page reloaded to update the position', { navigations });
  // 2. The user gets through: the portal's page, not the queue.
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const q = await page.$('main[data-anticamera="queue"]').catch(() => null);
    if (!q) break;
    if (Date.now() > deadline) fail('never admitted', { first, second });
    await page.waitForTimeout(200);
  }
  const body = (await page.textContent('body').catch(() => '')).slice(0, 200);
  console.log(JSON.stringify({ ok: true, lang, first, second, navigations, body }));
} finally {
  await browser.close();
}
