// The dashboard page (server/web/dashboard.html) in headless Chromium against
// the fake daemon (fake_daemon.mjs): a fast test of the page alone, which needs
// no build. Run: node tests/web/page.test.mjs (after npm ci in tests/web).
import fs from 'node:fs';
import { startFake, PAGE } from './fake_daemon.mjs';
import { launch, openPage, until, hook, check, failed, assert } from './lib.mjs';

const STEPS = 40;
const text = (page, sel) => page.locator(sel).innerText();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Holds the trainer and waits until the page has every batch event of `run`, no more. */
async function expectAllBatches(page, sim, run) {
  sim.hold();
  try {
    const want = sim.batchEnds(run);
    await until(`all ${want} batch events of ${run} in the page`, async () => (await hook(page, 'tb.batchPoints()')) >= want);
    await sleep(200);
    const got = await hook(page, 'tb.batchPoints()');
    assert(got === want, `page has ${got} batch events, the run has ${want} (a gap or a duplicate)`);
  } finally { sim.release(); }
}

const { context, close } = await launch();
const fake = await startFake({
  preBatches: 2 * STEPS + 10, batchMs: 10,
  runs: [{ epochs: 1000, steps: STEPS, lr: 0.001 }, { epochs: 3, steps: STEPS, lr: 0.01 }],
});
const { sim } = fake;
const { page, problems } = await openPage(context, fake.url);

await check('the page is one small self-contained file', async () => {
  const html = fs.readFileSync(PAGE, 'utf8');
  assert(html.length < 60 * 1024, `${html.length} bytes`);
  assert(!/<script[^>]+src=|<link[^>]+href="(?!data:)|@import|fetch\(|XMLHttpRequest/.test(html), 'external resource or fetch in the page');
});

await check('a late-opening page shows the history, then goes live', async () => {
  await until('connected', () => hook(page, 'tb.connected()'));
  await until('r1 chosen', async () => (await hook(page, 'tb.run()')) === 'r1');
  await until('2 epochs from history', async () => (await hook(page, 'tb.epochPoints()')) >= 2);
  const first = await until('replayed batches', async () => { const n = await hook(page, 'tb.batchPoints()'); return n >= 2 * STEPS + 10 && n; });
  await until('live batches', async () => (await hook(page, 'tb.batchPoints()')) > first + 20);
  await expectAllBatches(page, sim, 'r1');
  const charts = await hook(page, 'tb.charts()');
  for (const c of ['epoch:loss', 'epoch:accuracy', 'batch:loss', 'batch:accuracy', 'lr']) assert(charts.includes(c), `no chart ${c}: ${charts}`);
  await until('run list', async () => /r1\s+running[\s\S]*r2\s+queued/.test(await text(page, '#runs')));
  await until('state badge', async () => /running/.test(await text(page, '#runstate')));
  await until('epoch text', async () => / \/ 1000$/.test(await text(page, '#eptext')));
  await until('batch text', async () => /^\d+ \/ 40$/.test(await text(page, '#btext')));
  // The observer connection authenticated without a token (loopback).
  const auths = sim.received.filter((r) => r.msg.method === 'auth');
  assert(auths.length === 1 && auths[0].msg.params.role === 'observer' && !('token' in auths[0].msg.params), JSON.stringify(auths));
});

await check('controls stay locked without the right token', async () => {
  for (const id of ['lr', 'setlr', 'pause', 'resume', 'stop', 'checkpoint']) assert(await page.locator(`#${id}`).isDisabled(), `#${id} enabled`);
  await page.fill('#token', 'wrong');
  await page.click('#unlock');
  await until('refusal shown', async () => /Token refused: auth: invalid token/.test(await text(page, '#ctlmsg')));
  assert(await page.locator('#setlr').isDisabled(), 'set enabled after a bad token');
  assert(!(await hook(page, 'tb.controlReady()')), 'control ready after a bad token');
});

await check('a read-only (observer) token keeps the controls locked and says why', async () => {
  await page.fill('#token', 'O');
  await page.click('#unlock');
  await until('read-only shown', async () => /This token is read-only \(observer\): you can watch, not control/.test(await text(page, '#ctlmsg')));
  assert(await page.locator('#setlr').isDisabled(), 'set enabled with the observer token');
  assert(!(await hook(page, 'tb.controlReady()')), 'control ready with the observer token');
  assert(await hook(page, 'tb.connected()'), 'the observer connection went down');
});

await check('the token unlocks the controls on a second (controller) connection', async () => {
  await page.fill('#token', 'T');
  await page.click('#unlock');
  await until('controller', () => hook(page, 'tb.controlReady()'));
  await until('controls enabled', async () => !(await page.locator('#setlr').isDisabled()));
  assert(await page.locator('#token').inputValue() === '', 'token left in the input');
  const ctl = sim.received.filter((r) => r.msg.method === 'auth' && r.msg.params.role === 'controller' && r.msg.params.token === 'T');
  const obs = sim.received.find((r) => r.msg.method === 'auth' && r.msg.params.role === 'observer');
  assert(ctl.length === 1 && ctl[0].client !== obs.client, 'controller auth not on its own connection');
  assert(await hook(page, 'tb.controlReady()'), 'not controller');
  assert(await page.locator('#resume').isDisabled(), 'resume enabled while running');
  // The token is not kept anywhere but in memory.
  const stored = await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie);
  assert(!stored.includes('"T"') && stored.length < 10, `stored: ${stored}`);
});

await check('set_lr: the reply shows where it was applied; the run has the rate', async () => {
  await page.fill('#lr', '0.002');
  await page.click('#setlr');
  const r = await until('set_lr reply', async () => (await hook(page, 'tb.replies()')).find((x) => x.method === 'set_lr' && (x.result || x.error)));
  assert(r.result && r.result.lr === 0.002 && r.result.old === 0.001, JSON.stringify(r));
  const ev = sim.get('r1').log[r.result.applied_at.seq - 1];
  assert(ev.event === 'control' && ev.action === 'set_lr' && ev.value === 0.002, JSON.stringify(ev));
  assert(sim.get('r1').lr === 0.002, 'rate not set');
  const shown = await text(page, '#replies li:first-child');
  assert(/set_lr r1: lr 0\.001 → 0\.002, applied at epoch \d+, after batch \d+ \(seq \d+\)/.test(shown), shown);
  await until('page lr', async () => (await hook(page, 'tb.lr()')) === 0.002);
  await until('activity', async () => /set_lr 0\.001 → 0\.002/.test(await text(page, '#activity')));
});

await check('errors: a bad value is refused in the page, a refused request shows its message', async () => {
  await page.fill('#lr', 'abc');
  await page.click('#setlr');
  assert(/not a positive number: "abc"/.test(await text(page, '#replies li:first-child')), 'local check');
  await page.fill('#lr', '5000');
  await page.click('#setlr');
  await until('error shown', async () => /set_lr r1: params\.lr: 5000 refused by the fake daemon/.test(await text(page, '#replies li:first-child')));
  const r = (await hook(page, 'tb.replies()')).pop();
  assert(r.error && r.error.name === 'invalid_params', JSON.stringify(r));
});

await check('pause, set_lr while paused, checkpoint, resume', async () => {
  await page.click('#pause');
  await until('paused', async () => (await hook(page, 'tb.state()')) === 'paused');
  await until('resume enabled', async () => !(await page.locator('#resume').isDisabled()));
  assert(await page.locator('#pause').isDisabled(), 'pause enabled while paused');
  await page.fill('#lr', '0.0015');
  await page.click('#setlr');
  await until('set_lr answered at once', async () => /lr 0\.002 → 0\.0015/.test(await text(page, '#replies li:first-child')));
  await page.click('#checkpoint');
  await until('checkpoint reply', async () => /checkpoint r1: wrote \/tmp\/fake\/runs\/r1\/checkpoint-.*\.tbck, applied at/.test(await text(page, '#replies li:first-child')));
  await page.click('#resume');
  await until('running', async () => (await hook(page, 'tb.state()')) === 'running');
});

await check('dropped notices are noted', async () => {
  sim.dropNotice('r1', 5);
  await until('dropped counted', async () => (await hook(page, 'tb.dropped()')) === 5);
  await until('activity', async () => /missed 5 batch events of r1/.test(await text(page, '#activity')));
});

await check('reconnects after the daemon closes, with no gap', async () => {
  const before = await hook(page, 'tb.batchPoints()');
  sim.kick();
  await until('disconnect seen', async () => !(await hook(page, 'tb.connected()')), 3000, 5);
  await until('reconnected', () => hook(page, 'tb.connected()'));
  await until('live again', async () => (await hook(page, 'tb.batchPoints()')) > before + 20);
  await expectAllBatches(page, sim, 'r1');
  await until('controller again', () => hook(page, 'tb.controlReady()'), 10000);
});

await check('choosing another run shows it; back again replays the first in full', async () => {
  await page.click('#runs li[data-run="r2"]');
  await until('r2 shown', async () => (await hook(page, 'tb.run()')) === 'r2');
  assert((await hook(page, 'tb.batchPoints()')) === 0, 'r2 has no batches');
  await until('r2 state shown', async () => /queued/.test(await text(page, '#runstate')));
  await page.click('#runs li[data-run="r1"]');
  await until('r1 shown', async () => (await hook(page, 'tb.run()')) === 'r1');
  await expectAllBatches(page, sim, 'r1');
});

// A second page, opened now, that nobody clicks in: it follows the active run.
const second = await openPage(context, fake.url);
await until('second page on r1', async () => (await hook(second.page, 'tb.run()')) === 'r1');

await check('stop ends the run; the controls lock; an idle page follows the next run', async () => {
  await page.click('#stop');
  await until('stopped', async () => (await hook(page, 'tb.state()')) === 'stopped');
  await until('stop reply', async () => /stop r1: ok/.test(await text(page, '#replies')));
  await until('controls disabled', () => page.locator('#setlr').isDisabled());
  assert((await hook(page, 'tb.run()')) === 'r1', 'the page that chose r1 left it');
  await until('second page follows r2', async () => (await hook(second.page, 'tb.run()')) === 'r2');
  await until('r2 batches', async () => (await hook(second.page, 'tb.batchPoints()')) > 0);
});

await check('screenshots in light and dark', async () => {
  await page.click('#runs li[data-run="r2"]');
  await until('r2 batches', async () => (await hook(page, 'tb.batchPoints()')) > 5);
  await page.screenshot({ path: `${process.env.TB_WEB_OUT || '/tmp'}/dashboard-fake-light.png` });
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: `${process.env.TB_WEB_OUT || '/tmp'}/dashboard-fake-dark.png` });
});

await check('no console errors, exceptions or requests elsewhere', async () => {
  const all = problems.concat(second.problems);
  assert(all.length === 0, all.join('\n'));
  assert(fake.requests.every((u) => u === '/' || u === '/ws'), fake.requests.join(' '));
});
await fake.close();

await check('a daemon that wants a token from observers: the page asks for it', async () => {
  const f = await startFake({ loopback: false, preBatches: 30 * 400 + 7, batchMs: 1000, runs: [{ epochs: 100, steps: 400, lr: 0.01 }] });
  try {
    const { page: p, problems: probs } = await openPage(context, f.url);
    await until('needs token', async () => /needs token/.test(await text(p, '#conn')));
    // The observer token is enough to watch: the page connects, the
    // controls stay locked.
    await p.fill('#token', 'O');
    await p.click('#unlock');
    await until('connected', () => hook(p, 'tb.connected()'));
    await until('observer', async () => (await hook(p, 'tb.observerRole()')) === 'observer');
    await until('read-only shown', async () => /read-only/.test(await text(p, '#ctlmsg')));
    assert(!(await hook(p, 'tb.controlReady()')), 'controls with the observer token');
    await p.fill('#token', 'T');
    await p.click('#unlock');
    await until('controller', () => hook(p, 'tb.controlReady()'));
    // 12007 batches: all counted, at most MAX_BATCH_POINTS (4000) kept for drawing.
    await until('history replayed', async () => (await hook(p, 'tb.batchPoints()')) >= 12007, 20000);
    const kept = await hook(p, 'tb.storedBatchPoints()');
    assert(kept <= 4000 && kept > 1000, `kept ${kept}`);
    assert((await hook(p, 'tb.epochPoints()')) === 30, 'epochs');
    assert(probs.filter((x) => !/WebSocket/.test(x)).length === 0, probs.join('\n'));
  } finally { await f.close(); }
});

await close();
console.log(failed() ? `${failed()} check(s) failed` : 'all checks passed');
process.exit(failed() ? 1 : 0);
