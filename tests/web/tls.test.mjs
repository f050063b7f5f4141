// End to end over TLS: the dashboard served by the real `trainbusd --http`
// with a certificate of a throwaway CA made by the test (tests/tls/make_certs.sh),
// in headless Chromium, over HTTPS and WSS. Chromium trusts exactly that
// server's key (--ignore-certificate-errors-spki-list pins it: no system CA
// store is touched); a browser without the pin refuses the page.
//
// Checks: plain http:// on the port is redirected to https://; the page
// loads over HTTPS, its WebSocket is wss:// and the batch chart receives
// points; set_lr typed in the page is applied (checked with `trainbus status`
// over TLS); stop ends the run; nothing was requested elsewhere.
//
// Then roles by token (issue 12) on a daemon whose dashboard listens beyond
// loopback (0.0.0.0, so observers need a token): the page asks for one, the
// observer (read-only) token lets it watch live while its controls stay
// locked, and every control method sent from the page's origin with that
// token answers forbidden; the run goes on untouched.
//
//   TRAINBUSD, TRAINBUS_CLI   the programs (default: build/trainbusd, build/trainbus)
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, openPage, until, hook, check, failed, assert } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const top = path.resolve(here, '../..');
const TRAINBUSD = process.env.TRAINBUSD || path.join(top, 'build/trainbusd');
const CLI = process.env.TRAINBUS_CLI || path.join(top, 'build/trainbus');
const TOKEN = 'T';

const pki = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-web-tls-'));
execFileSync('sh', [path.join(top, 'tests/tls/make_certs.sh'), pki], { stdio: 'inherit' });
const CA = path.join(pki, 'ca.pem');
const SPKI = fs.readFileSync(path.join(pki, 'spki.txt'), 'utf8').trim();

const OBSERVER_TOKEN = 'read-only-O';

/** Starts trainbusd with TLS; resolves once it has printed both of its addresses. */
function startDaemon(stateDir, httpHost = '127.0.0.1') {
  const args = ['--http', `${httpHost}:0`, '--listen', '127.0.0.1:0', '--state-dir', stateDir,
    '--token', TOKEN, '--observer-token', OBSERVER_TOKEN, '--tls-cert', path.join(pki, 'server.pem'),
    '--tls-key', path.join(pki, 'server.key'), '--job', path.join(here, 'job_dashboard.json')];
  const proc = spawn(TRAINBUSD, args, { stdio: ['ignore', 'inherit', 'pipe'] });
  let err = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`trainbusd did not print its addresses:\n${err}`)), 15000);
    proc.on('exit', (code) => reject(new Error(`trainbusd exited (${code}):\n${err}`)));
    proc.stderr.on('data', (d) => {
      process.stderr.write(d);
      err += d;
      const web = err.match(/^trainbusd: http on (\S+:\d+) \(dashboard: (\S+)\)/m);
      const tcp = err.match(/^trainbusd: listening on (tls:\/\/\S+:\d+)/m);
      if (web && tcp) { clearTimeout(timer); resolve({ proc, http: web[1], dashboard: web[2], tcp: tcp[1] }); }
    });
  });
}
/** `trainbus status --json` over TLS, trusting the test CA. */
function cliStatus(addr) {
  const out = execFileSync(CLI, ['status', '--run', 'r1', '--json', '--cacert', CA], {
    encoding: 'utf8', env: { ...process.env, TRAINBUS_ADDR: addr, TRAINBUS_TOKEN: TOKEN } });
  return JSON.parse(out);
}
const text = (page, sel) => page.locator(sel).innerText();
function get(mod, url, opts = {}) {
  return new Promise((resolve, reject) => {
    mod.get(url, opts, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    }).on('error', reject);
  });
}

const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-web-tls-state-'));
const daemon = await startDaemon(stateDir);
const url = `https://${daemon.http}/`;
const { context, close } = await launch({ args: [`--ignore-certificate-errors-spki-list=${SPKI}`] });
let page, problems;

try {
  await check('the daemon says its dashboard is at https://', async () => {
    assert(daemon.dashboard === url, `dashboard: ${daemon.dashboard}`);
  });

  await check('the page is served over HTTPS (the test CA verifies it) and plain HTTP is redirected', async () => {
    const res = await get(https, url, { ca: fs.readFileSync(CA) });
    assert(res.status === 200 && /<html|<!doctype/i.test(res.body), `GET ${url}: ${res.status}`);
    const plain = await get(http, `http://${daemon.http}/`);
    assert(plain.status === 301 && plain.headers.location === url, `http://: ${plain.status} ${plain.headers.location}`);
    let refused = null;
    try { await get(https, url); } catch (e) { refused = e; }
    assert(refused && /certificate/i.test(refused.message), `an untrusting client was not refused: ${refused}`);
  });

  await check('a browser that does not trust the certificate refuses the page', async () => {
    const other = await launch();
    try {
      const p = await other.context.newPage();
      let error = null;
      try { await p.goto(url); } catch (e) { error = e; }
      assert(error && /ERR_CERT/.test(error.message), `no certificate error: ${error}`);
    } finally {
      await other.close();
    }
  });

  await check('the page loads over HTTPS, its WebSocket is wss:// and the batch chart receives points', async () => {
    const sockets = [];
    ({ page, problems } = await openPage(context, url, { height: 1180 }));
    page.on('websocket', (ws) => sockets.push(ws.url()));
    await until('connected', () => hook(page, 'tb.connected()'));
    assert(await page.evaluate(() => location.protocol) === 'https:', 'not https');
    await until('run r1 shown', async () => (await hook(page, 'tb.run()')) === 'r1');
    const n = await until('batch points', async () => { const k = await hook(page, 'tb.batchPoints()'); return k > 0 && k; });
    await until('more batch points', async () => (await hook(page, 'tb.batchPoints()')) > n);
    // The page's first socket opened before the listener was attached: open the
    // controller's below and look at it; every socket seen must be wss://.
    await page.fill('#token', TOKEN);
    await page.click('#unlock');
    await until('controls unlocked', () => hook(page, 'tb.controlReady()'));
    assert(sockets.length > 0 && sockets.every((u) => u === `wss://${daemon.http}/ws`), `sockets: ${sockets}`);
  });

  await check('set_lr from the page is applied (trainbus status over TLS says so)', async () => {
    await page.fill('#lr', '0.0005');
    await page.click('#setlr');
    const r = await until('set_lr reply', async () => (await hook(page, 'tb.replies()')).find((x) => x.method === 'set_lr' && (x.result || x.error)));
    assert(r.result && r.result.lr === 0.0005 && r.result.applied_at, `set_lr: ${JSON.stringify(r)}`);
    const st = cliStatus(daemon.tcp);
    assert(st.lr === Math.fround(0.0005), `trainbus status: lr ${st.lr}`);
  });

  await check('stop from the page ends the run (stopped)', async () => {
    await page.click('#stop');
    await until('page shows stopped', async () => (await hook(page, 'tb.state()')) === 'stopped', 30000);
    await until('state badge', async () => /stopped/.test(await text(page, '#runstate')));
    assert(cliStatus(daemon.tcp).state === 'stopped', 'trainbus status: not stopped');
  });

  await check('no console errors, exceptions or requests elsewhere', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
} finally {
  daemon.proc.kill('SIGTERM');
  const code = await new Promise((resolve) => daemon.proc.on('exit', (c) => resolve(c)));
  if (code !== 0) { console.log(`FAIL trainbusd exited with ${code} after SIGTERM`); process.exitCode = 1; }
  fs.rmSync(stateDir, { recursive: true, force: true });
}

// --- roles by token, the dashboard beyond loopback ----------------------------------
const stateDir2 = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-web-tls-state-'));
const wide = await startDaemon(stateDir2, '0.0.0.0');
const port = wide.http.slice(wide.http.lastIndexOf(':') + 1);
const url2 = `https://127.0.0.1:${port}/`;
try {
  let p2;
  await check('beyond loopback the page needs a token; the observer token lets it watch, read-only', async () => {
    ({ page: p2 } = await openPage(context, url2));
    await until('needs token', async () => /needs token/.test(await text(p2, '#conn')));
    await p2.fill('#token', OBSERVER_TOKEN);
    await p2.click('#unlock');
    await until('connected', () => hook(p2, 'tb.connected()'));
    assert((await hook(p2, 'tb.observerRole()')) === 'observer', 'not observer');
    await until('read-only shown', async () => /This token is read-only \(observer\)/.test(await text(p2, '#ctlmsg')));
    const n = await until('batch points', async () => { const k = await hook(p2, 'tb.batchPoints()'); return k > 0 && k; });
    await until('more batch points', async () => (await hook(p2, 'tb.batchPoints()')) > n);
    assert(!(await hook(p2, 'tb.controlReady()')), 'controls unlocked with the observer token');
    for (const id of ['setlr', 'stop', 'pause', 'checkpoint']) assert(await p2.locator(`#${id}`).isDisabled(), `#${id} enabled`);
  });

  await check('every control method sent with the observer token answers forbidden; the run is untouched', async () => {
    const before = cliStatus(wide.tcp);
    const answers = await p2.evaluate(async (obs) => {
      const ws = new WebSocket(`wss://${location.host}/ws`);
      const out = {};
      let next = 1;
      const pending = new Map();
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.method === 'hello') ws.dispatchEvent(new Event('hello'));
        else if (pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
      };
      const call = (method, params) => new Promise((resolve) => { const id = next++; pending.set(id, resolve); ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params })); });
      await new Promise((resolve) => ws.addEventListener('hello', resolve, { once: true }));
      out.auth = await call('auth', { role: 'controller', token: obs, client: 'tls.test' });
      for (const [m, p] of [['set_lr', { run: 'r1', lr: 0.5 }], ['stop', { run: 'r1' }], ['pause', { run: 'r1' }],
        ['resume', { run: 'r1' }], ['checkpoint', { run: 'r1' }], ['cancel', { run: 'r1' }],
        ['continue', { run: 'r1', seq: 1 }], ['submit', { job: {} }], ['subscribe', { runs: ['r1'], lockstep: ['epoch_end'] }]]) {
        out[m] = await call(m, p);
      }
      out.status = await call('status', { run: 'r1' });
      ws.close();
      return out;
    }, OBSERVER_TOKEN);
    assert(answers.auth.result && answers.auth.result.role === 'observer', `auth: ${JSON.stringify(answers.auth)}`);
    for (const m of ['set_lr', 'stop', 'pause', 'resume', 'checkpoint', 'cancel', 'continue', 'submit', 'subscribe']) {
      const e = answers[m].error;
      assert(e && e.data.name === 'forbidden' && /read-only/.test(e.message), `${m}: ${JSON.stringify(answers[m])}`);
    }
    assert(answers.status.result && answers.status.result.run === 'r1', 'status refused');
    const after = cliStatus(wide.tcp);
    assert(after.state === 'running' && after.lr === before.lr, `run changed: ${JSON.stringify(after)}`);
  });
} finally {
  await close();
  wide.proc.kill('SIGTERM');
  const code = await new Promise((resolve) => wide.proc.on('exit', (c) => resolve(c)));
  if (code !== 0) { console.log(`FAIL trainbusd (0.0.0.0) exited with ${code} after SIGTERM`); process.exitCode = 1; }
  fs.rmSync(stateDir2, { recursive: true, force: true });
  fs.rmSync(pki, { recursive: true, force: true });
}
console.log(failed() ? `${failed()} check(s) failed` : 'all checks passed');
process.exit(failed() || process.exitCode ? 1 : 0);
