// End to end (issue 11, kinds 2 and 4): the dashboard through daemon
// restarts. The real trainbusd serves the page on a fixed --http port and is
// stopped during the run twice, with SIGTERM and with SIGKILL (mid-epoch), and
// started again with --resume on the same state directory and HTTP address.
// The page that was open all along and a page opened afterwards must show
// the run as it is: the right epoch and batch out of the right totals, every
// training batch once on the batch chart (the batches a resumed run trains
// again after a SIGKILL are not shown twice), every epoch once, the run's
// last seq, and the final state.
//
//   TRAINBUSD   the daemon (default: build/trainbusd)
// Exit 77 (skipped) when the daemon has no --http.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, openPage, until, hook, check, failed, assert } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const top = path.resolve(here, '../..');
const TRAINBUSD = process.env.TRAINBUSD || path.join(top, 'build/trainbusd');
const TOKEN = 'T';
// Enough training that the run outlasts a restart and the page's reconnection
// on a loaded machine, where the page can lag the run by a dozen epochs: 24
// epochs of the dashboard job with 512-unit layers (more work per batch, not
// more events: with two training threads an epoch of 256 units is ~0.1 s).
const EPOCHS = 24;

let help = '';
try { help = execFileSync(TRAINBUSD, ['--help'], { encoding: 'utf8' }); } catch (e) { help = String(e.stdout || ''); }
if (!help.includes('--http')) {
  console.log(`skipped: ${TRAINBUSD} has no --http`);
  process.exit(77);
}

/** A port free now, for the HTTP front all three daemons serve on. */
async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Starts trainbusd; resolves once it has printed both of its addresses. */
function startDaemon(stateDir, httpPort, extra) {
  const args = ['--http', `127.0.0.1:${httpPort}`, '--listen', '127.0.0.1:0', '--state-dir', stateDir,
    '--token', TOKEN, ...extra];
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
/** Stops a daemon with sig; resolves with its exit code or signal. */
function stopDaemon(d, sig) {
  return new Promise((resolve) => {
    d.proc.removeAllListeners('exit');
    d.proc.on('exit', (code, signal) => resolve(code === null ? signal : code));
    d.proc.kill(sig);
  });
}
/** One request over a raw TCP connection, as an observer. */
function rpc(addr, method, params) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const s = net.connect(port, host);
    let buf = '';
    const send = (id, m, p) => s.write(`${JSON.stringify({ jsonrpc: '2.0', id, method: m, params: p })}\n`);
    s.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.id === 1) send(2, method, params);
        if (msg.id === 2) { s.end(); if (msg.error) reject(new Error(msg.error.message)); else resolve(msg.result); }
      }
    });
    s.on('connect', () => send(1, 'auth', { role: 'observer' }));
    s.on('error', reject);
  });
}
async function historyAll(addr) {
  const out = [];
  for (let since = 1; ;) {
    const h = await rpc(addr, 'history', { run: 'r1', since_seq: since, limit: 10000 });
    out.push(...h.events);
    if (!h.events.length || h.next_seq <= since) return out;
    since = h.next_seq;
  }
}
const text = (page, sel) => page.locator(sel).innerText();

const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-web-restart-'));
const job = JSON.parse(fs.readFileSync(path.join(here, 'job_dashboard.json'), 'utf8'));
job.epochs = EPOCHS;
for (const l of job.model.layers) if (l.units === 256) l.units = 512;
const jobPath = path.join(stateDir, 'job.json');
fs.writeFileSync(jobPath, JSON.stringify(job));
const httpPort = await freePort();
let daemon = await startDaemon(stateDir, httpPort, ['--job', jobPath]);
const url = `http://${daemon.http}/`;
const { context, close } = await launch();
let page, problems;

try {
  await check('the page follows the run', async () => {
    ({ page, problems } = await openPage(context, url));
    await until('run r1 shown', async () => (await hook(page, 'tb.run()')) === 'r1');
    await until('epoch 3 on the page', async () => (await hook(page, 'tb.epochPoints()')) >= 3, 60000);
  });

  await check('after a SIGTERM restart the page shows where the run is', async () => {
    const code = await stopDaemon(daemon, 'SIGTERM');
    assert(code === 0, `trainbusd exited with ${code} after SIGTERM`);
    await until('the page notices', async () => !(await hook(page, 'tb.connected()')));
    daemon = await startDaemon(stateDir, httpPort, ['--resume']);
    await until('reconnected', () => hook(page, 'tb.connected()'), 20000);
    const st = await rpc(daemon.tcp, 'status', { run: 'r1' });
    assert(st.state === 'running' && st.epoch >= 3, `status after the restart: ${JSON.stringify(st).slice(0, 200)}`);
    await until('the epoch shown is the run\'s', async () => {
      const s = await rpc(daemon.tcp, 'status', { run: 'r1' });
      const shown = await text(page, '#eptext');
      return shown === `${s.epoch + 1} / ${EPOCHS}`;
    });
    const runs = await hook(page, 'tb.runs()');
    assert(runs.length === 1 && runs[0].state === 'running', `runs: ${JSON.stringify(runs)}`);
  });

  await check('after a SIGKILL restart in the middle of an epoch no batch is shown twice', async () => {
    await until('two epochs more', async () => (await hook(page, 'tb.epochPoints()')) >= 6, 60000);
    await until('mid-epoch', async () => {
      const s = await rpc(daemon.tcp, 'status', { run: 'r1' });
      return s.batch >= 60;
    }, 30000, 5);
    const code = await stopDaemon(daemon, 'SIGKILL');
    assert(code === 'SIGKILL', `trainbusd ended with ${code}`);
    daemon = await startDaemon(stateDir, httpPort, ['--resume']);
    await until('reconnected', () => hook(page, 'tb.connected()'), 20000);
    await until('finished', async () => (await rpc(daemon.tcp, 'status', { run: 'r1' })).state === 'finished', 240000);
  });

  const expectShown = async (p, what) => {
    const st = await rpc(daemon.tcp, 'status', { run: 'r1' });
    const h = await historyAll(daemon.tcp);
    const ends = h.filter((e) => e.event === 'train_batch_end');
    const steps = Math.max(...ends.map((e) => e.batch)) + 1;
    const keys = new Set(ends.map((e) => `${e.epoch}/${e.batch}`));
    assert(keys.size === ends.length && ends.length === EPOCHS * steps,
      `the run's history has ${ends.length} batch ends for ${EPOCHS} x ${steps} batches (${keys.size} distinct)`);
    await until(`${what}: every batch once`, async () => (await hook(p, 'tb.batchPoints()')) === EPOCHS * steps, 30000);
    await until(`${what}: the last seq`, async () => (await hook(p, 'tb.lastSeq()')) === st.last_seq, 30000);
    await until(`${what}: finished`, async () => (await hook(p, 'tb.state()')) === 'finished', 30000);
    assert((await hook(p, 'tb.epochPoints()')) === EPOCHS, `${what}: epochs ${await hook(p, 'tb.epochPoints()')}`);
    assert((await text(p, '#eptext')) === `${EPOCHS} / ${EPOCHS}`, `${what}: epoch text ${await text(p, '#eptext')}`);
    assert((await text(p, '#btext')) === `${steps} / ${steps}`, `${what}: batch text ${await text(p, '#btext')}`);
    // A few more batch events would mean a batch shown twice: none came late.
    await new Promise((r) => setTimeout(r, 500));
    assert((await hook(p, 'tb.batchPoints()')) === EPOCHS * steps, `${what}: batch points ${await hook(p, 'tb.batchPoints()')}`);
  };

  await check('the page open through both restarts shows the whole run once', async () => {
    await expectShown(page, 'the page open all along');
  });

  await check('a page opened after the restarts shows the same', async () => {
    const late = await openPage(context, url);
    await until('run r1 shown', async () => (await hook(late.page, 'tb.run()')) === 'r1');
    await expectShown(late.page, 'the late page');
    problems.push(...late.problems);
  });

  await check('no exceptions or requests elsewhere', async () => {
    // The page logs its lost connections as console errors of the browser
    // (a WebSocket refused while the daemon is down): those are expected.
    const real = problems.filter((p) => !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(p));
    assert(real.length === 0, real.join('\n'));
  });
} finally {
  await close();
  const code = await stopDaemon(daemon, 'SIGTERM');
  if (code !== 0) { console.log(`FAIL trainbusd exited with ${code} after SIGTERM`); process.exitCode = 1; }
  fs.rmSync(stateDir, { recursive: true, force: true });
}
console.log(failed() ? `${failed()} check(s) failed` : 'all checks passed');
process.exit(failed() || process.exitCode ? 1 : 0);
