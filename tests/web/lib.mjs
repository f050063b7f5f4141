// Shared by the browser tests: launching Debian's Chromium through playwright-core,
// small wait/assert helpers.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Headless Chromium with a fresh profile (--user-data-dir, which playwright
 * passes for a persistent context) and no background network of its own.
 * `args`: more command-line switches (the TLS test pins its server's key
 * with --ignore-certificate-errors-spki-list).
 */
export async function launch({ args = [] } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', ...args],
    viewport: { width: 1400, height: 1000 },
  });
  const close = async () => { await context.close(); fs.rmSync(profile, { recursive: true, force: true }); };
  return { context, close };
}

/**
 * Opens `url` in a new page and records what the page does that a test may
 * want to refuse: console errors, uncaught exceptions, requests to other origins.
 */
export async function openPage(context, url, { width = 1400, height = 1000, colorScheme = 'light' } = {}) {
  const page = await context.newPage();
  await page.setViewportSize({ width, height });
  await page.emulateMedia({ colorScheme });
  const problems = [];
  const origin = new URL(url).origin;
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`exception: ${e.message}`));
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith(origin.replace('http', 'ws')) && !u.startsWith('data:')) problems.push(`external request: ${u}`);
  });
  await page.goto(url);
  return { page, problems };
}

/** Polls `fn` (in node) until it returns a truthy value, or fails with `what`. */
export async function until(what, fn, timeoutMs = 15000, everyMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
/** Polls an expression of the page's test hook (window.__tb). */
export const hook = (page, expr) => page.evaluate(`(() => { const tb = window.__tb; return ${expr}; })()`);

let failures = 0;
/** A named check: prints ok/FAIL and keeps going. */
export async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}
export const failed = () => failures;
export function assert(cond, msg) { if (!cond) throw new Error(msg); }
