// End to end: the dashboard served by the real daemon (`trainbusd --http`) in
// headless Chromium. The page loads, the batch chart receives points, setting
// the learning rate in the page is applied by the daemon at the next batch,
// stop ends the run. Takes a screenshot during the run.
//
//   TRAINBUSD, TRAINBUS_CLI   the programs (default: build/trainbusd, build/trainbus)
//   TB_SCREENSHOT             where to write the screenshot (default: $TB_WEB_OUT or
//                             the temp dir, dashboard.png); to refresh the one in
//                             the docs: TB_SCREENSHOT=docs/dashboard.png
// Exit 77 (skipped) when the daemon has no --http.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PAGE } from './fake_daemon.mjs';
import { launch, openPage, until, hook, check, failed, assert } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const top = path.resolve(here, '../..');
const TRAINBUSD = process.env.TRAINBUSD || path.join(top, 'build/trainbusd');
const CLI = process.env.TRAINBUS_CLI || path.join(top, 'build/trainbus');
const TOKEN = 'T';
const SHOT = path.resolve(process.env.TB_SCREENSHOT || path.join(process.env.TB_WEB_OUT || os.tmpdir(), 'dashboard.png'));

let help = '';
try { help = execFileSync(TRAINBUSD, ['--help'], { encoding: 'utf8' }); } catch (e) { help = String(e.stdout || ''); }
if (!help.includes('--http')) {
  console.log(`skipped: ${TRAINBUSD} has no --http`);
  process.exit(77);
}

/** Starts trainbusd; resolves once it has printed both of its addresses. */
function startDaemon(stateDir) {
  const args = ['--http', '127.0.0.1:0', '--listen', '127.0.0.1:0', '--state-dir', stateDir,
    '--token', TOKEN, '--job', path.join(here, 'job_dashboard.json')];
  const proc = spawn(TRAINBUSD, args, { stdio: ['ignore', 'inherit', 'pipe'] });
  let err = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`trainbusd did not print its addresses:\n${err}`)), 15000);
    proc.on('exit', (code) => reject(new Error(`trainbusd exited (${code}):\n${err}`)));
    proc.stderr.on('data', (d) => {
      process.stderr.write(d);
      err += d;
      const http = err.match(/^trainbusd: http on (\S+:\d+)/m);
      const tcp = err.match(/^trainbusd: listening on (\S+:\d+)/m);
      if (http && tcp) { clearTimeout(timer); resolve({ proc, http: http[1], tcp: tcp[1] }); }
    });
  });
}
/** One request over a raw TCP connection (newline-delimited JSON-RPC), as an observer. */
function rpc(addr, method, params) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const s = net.connect(port, host);
    let buf = '';
    const send = (id, m, p) => s.write(`${JSON.stringify({ jsonrpc: '2.0', id, method: m, params: p })}\n`);
    s.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (msg.method === 'hello') send(1, 'auth', { role: 'observer', token: TOKEN, client: 'dashboard.test' });
        else if (msg.id === 1) { if (msg.error) reject(new Error(msg.error.message)); else send(2, method, params); }
        else if (msg.id === 2) { s.end(); if (msg.error) reject(new Error(msg.error.message)); else resolve(msg.result); }
      }
    });
    s.on('error', reject);
  });
}
/** `trainbus status --json` through the CLI, addressed by the environment. */
function cliStatus(addr) {
  const out = execFileSync(CLI, ['status', '--run', 'r1', '--json'], {
    encoding: 'utf8', env: { ...process.env, TRAINBUS_ADDR: addr, TRAINBUS_TOKEN: TOKEN } });
  return JSON.parse(out);
}
const text = (page, sel) => page.locator(sel).innerText();

const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-web-e2e-'));
const daemon = await startDaemon(stateDir);
const url = `http://${daemon.http}/`;
const { context, close } = await launch();
let page, problems;

try {
  await check('the daemon serves the page built from server/web/dashboard.html', async () => {
    const res = await fetch(url);
    assert(res.status === 200, `GET / gave ${res.status}`);
    assert(/^text\/html/.test(res.headers.get('content-type') || ''), `content-type ${res.headers.get('content-type')}`);
    const body = await res.text();
    assert(body === fs.readFileSync(PAGE, 'utf8'), 'the embedded page differs from server/web/dashboard.html (stale build?)');
  });

  await check('the page loads, shows the run and the batch chart receives points', async () => {
    ({ page, problems } = await openPage(context, url, { height: 1180 }));
    await until('connected', () => hook(page, 'tb.connected()'));
    await until('run r1 shown', async () => (await hook(page, 'tb.run()')) === 'r1');
    const n = await until('batch points', async () => { const k = await hook(page, 'tb.batchPoints()'); return k > 0 && k; });
    await until('more batch points', async () => (await hook(page, 'tb.batchPoints()')) > n);
    await until('charts', async () => (await hook(page, 'tb.charts()')).includes('batch:loss'));
    await until('state badge', async () => /running/.test(await text(page, '#runstate')));
  });

  let reply;
  let clickedAt;
  await check('set_lr from the page is applied by the daemon at the next batch', async () => {
    await until('two epochs on the chart', async () => (await hook(page, 'tb.epochPoints()')) >= 2, 60000);
    await page.fill('#token', TOKEN);
    await page.click('#unlock');
    await until('controls unlocked', () => hook(page, 'tb.controlReady()'));
    await page.fill('#lr', '0.0005');
    clickedAt = Date.now() / 1000;
    await page.click('#setlr');
    const r = await until('set_lr reply', async () => (await hook(page, 'tb.replies()')).find((x) => x.method === 'set_lr' && (x.result || x.error)));
    assert(r.result, `set_lr failed: ${JSON.stringify(r.error)}`);
    reply = r.result;
    // The model keeps its rate in float32, as Keras does: old is float32(1e-4);
    // the reply echoes the value asked for.
    assert(reply.lr === 0.0005 && reply.old === Math.fround(0.0001) && reply.applied_at, JSON.stringify(reply));
    const shown = await text(page, '#replies li:first-child');
    // A request that arrives between epochs (during validation, say) is
    // applied at the epoch boundary: applied_at.batch is then -1
    // (PROTOCOL.md, where each control method takes effect).
    const at = reply.applied_at;
    const atBoundary = at.batch === -1 || at.batch === undefined;
    const want = atBoundary ? /set_lr r1: lr 1e-4 → 5e-4, applied at epoch \d+ \(seq \d+\)/
      : /set_lr r1: lr 1e-4 → 5e-4, applied at epoch \d+, after batch \d+ \(seq \d+\)/;
    assert(want.test(shown), `reply shown: ${shown}`);
    // The daemon's log: the batch named by applied_at ends (or the epoch's
    // hook), the control event follows at once, then the next batch begins
    // (with the new rate), and the epoch ends with it.
    const h = await rpc(daemon.tcp, 'history', { run: 'r1', since_seq: at.seq - 1, limit: 3 });
    const [prev, ctl, next] = h.events;
    assert(ctl.seq === at.seq && ctl.event === 'control' && ctl.action === 'set_lr' && ctl.value === 0.0005 && ctl.old === Math.fround(0.0001),
      `control event ${JSON.stringify(ctl)}`);
    assert(ctl.epoch === at.epoch && (ctl.batch === at.batch || (atBoundary && ctl.batch === undefined)), `control at ${ctl.epoch}/${ctl.batch}, reply ${JSON.stringify(at)}`);
    assert(ctl.time >= clickedAt - 1, 'control event older than the click');
    if (atBoundary) {
      assert((prev.event === 'epoch_begin' || prev.event === 'epoch_end') && prev.epoch === at.epoch, `before: ${JSON.stringify(prev)}`);
      assert(next.event === 'train_batch_begin' || next.event === 'epoch_begin' || next.event === 'epoch_end', `after: ${JSON.stringify(next)}`);
    } else {
      assert(prev.event === 'train_batch_end' && prev.epoch === at.epoch && prev.batch === at.batch, `before: ${JSON.stringify(prev)}`);
      assert((next.event === 'train_batch_begin' && next.epoch === at.epoch && next.batch === at.batch + 1) ||
        next.event === 'epoch_end' || next.event === 'test_begin', `after: ${JSON.stringify(next)}`);
    }
    const st = cliStatus(daemon.tcp);
    assert(st.lr === Math.fround(0.0005), `trainbus status: lr ${st.lr}`);
    await until('epoch_end with the new rate', async () => {
      const s = await rpc(daemon.tcp, 'status', { run: 'r1' });
      return s.history.some((e) => e.epoch >= at.epoch && e.logs.lr === Math.fround(0.0005));
    }, 60000);
    await until('page lr', async () => (await hook(page, 'tb.lr()')) === Math.fround(0.0005));
  });

  await check(`screenshot during the run (${SHOT})`, async () => {
    const e0 = await hook(page, 'tb.epochPoints()');
    await until('an epoch more', async () => (await hook(page, 'tb.epochPoints()')) >= e0 + 2, 60000);
    assert((await hook(page, 'tb.state()')) === 'running', 'the run ended before the screenshot');
    fs.mkdirSync(path.dirname(SHOT), { recursive: true });
    await page.screenshot({ path: SHOT });
  });

  await check('stop from the page ends the run (stopped)', async () => {
    await page.click('#stop');
    await until('page shows stopped', async () => (await hook(page, 'tb.state()')) === 'stopped', 30000);
    await until('stop reply', async () => /stop r1: ok/.test(await text(page, '#replies')));
    await until('state badge', async () => /stopped/.test(await text(page, '#runstate')));
    await until('controls locked', () => page.locator('#setlr').isDisabled());
    const st = cliStatus(daemon.tcp);
    assert(st.state === 'stopped', `trainbus status: ${st.state}`);
    assert(st.epoch < 119, `the run went on to epoch ${st.epoch}`);
  });

  await check('a page opened after the run shows its whole history', async () => {
    const late = await openPage(context, url);
    const st = await rpc(daemon.tcp, 'status', { run: 'r1' });
    await until('all epochs', async () => (await hook(late.page, 'tb.epochPoints()')) === st.history.length);
    const h = await rpc(daemon.tcp, 'history', { run: 'r1', since_seq: 1, limit: 10000 });
    let ends = h.events.filter((e) => e.event === 'train_batch_end').length;
    for (let next = h.next_seq; next <= st.last_seq;) {
      const more = await rpc(daemon.tcp, 'history', { run: 'r1', since_seq: next, limit: 10000 });
      ends += more.events.filter((e) => e.event === 'train_batch_end').length;
      next = more.next_seq;
    }
    await until(`all ${ends} batch events`, async () => (await hook(late.page, 'tb.batchPoints()')) === ends);
    problems.push(...late.problems);
  });

  await check('no console errors, exceptions or requests elsewhere', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
} finally {
  await close();
  daemon.proc.kill('SIGTERM');
  const code = await new Promise((resolve) => daemon.proc.on('exit', (c) => resolve(c)));
  if (code !== 0) { console.log(`FAIL trainbusd exited with ${code} after SIGTERM`); process.exitCode = 1; }
  fs.rmSync(stateDir, { recursive: true, force: true });
}
console.log(failed() ? `${failed()} check(s) failed` : 'all checks passed');
process.exit(failed() || process.exitCode ? 1 : 0);
