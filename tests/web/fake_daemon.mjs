// A stand-in for `trainbusd --http`: serves server/web/dashboard.html at "/" and
// speaks the trainbus protocol (docs/PROTOCOL.md) over a WebSocket at "/ws", one
// JSON-RPC line per text message. Behind it is a small simulated trainer: runs
// made of epochs of batches with plausible loss/accuracy curves, an event log
// per run (for since_seq replay, history and status), and the control methods
// answered the way the daemon answers them (set_lr and checkpoint when applied,
// at the next batch boundary).
//
// Used by page.test.mjs (the page's fast test) and by hand:
//   node tests/web/fake_daemon.mjs [--port 8788] [--token T] [--pre-epochs 2]
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const PAGE = path.resolve(here, '../../server/web/dashboard.html');

const FINAL = new Set(['finished', 'stopped', 'cancelled', 'failed']);
const glob = (pat, s) => new RegExp(`^${pat.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`).test(s);
const now = () => Number((Date.now() / 1000).toFixed(6));

/** One simulated run: its state, position and event log. */
class Run {
  constructor(sim, id, { epochs, steps, lr }) {
    Object.assign(this, { sim, id, epochs, steps, lr });
    this.state = 'queued'; this.epoch = -1; this.batch = -1;
    this.log = [];            // every event's params, seq = index + 1
    this.pending = [];        // set_lr/checkpoint requests waiting for a batch boundary
    this.pauseWanted = false; this.stopWanted = false;
    this.sums = {};           // running sums for the epoch's batch means
  }
  obj() {
    const o = { run: this.id, state: this.state, epoch: this.epoch, epochs: this.epochs,
      batch: this.batch, last_seq: this.log.length };
    if (this.lr !== undefined) o.lr = this.lr;
    return o;
  }
  emit(event, fields = {}) {
    const p = { run: this.id, seq: this.log.length + 1, event };
    if (this.epoch >= 0 && event !== 'train_begin') p.epoch = this.epoch;
    Object.assign(p, fields);
    p.time = now();
    p.logs = p.logs || {};
    this.log.push(p);
    this.sim.publish(p);
    return p;
  }
  setState(state, reason) {
    const prev = this.state;
    this.state = state;
    const f = { state, prev_state: prev };
    if (reason) f.reason = reason;
    if (this.batch >= 0) f.batch = this.batch;
    this.emit('state', f);
  }
  /** The synthetic "true" loss at fractional epoch x (lower with a larger lr, up to a point). */
  curve(x) {
    return 0.08 + 0.62 * Math.exp(-0.45 * x * Math.min(3, this.lr / 0.001)) + 0.02 * Math.sin(x * 3);
  }
  begin() {
    this.setState('running');
    this.emit('train_begin');
    this.epoch = 0;
    this.emit('epoch_begin');
    this.sums = { loss: 0, accuracy: 0, n: 0 };
  }
  /** Applies the requests waiting for a boundary; true if the run should not go on. */
  boundary() {
    for (const req of this.pending.splice(0)) req();
    if (this.stopWanted) { this.end('stopped', 'stop requested'); return true; }
    if (this.pauseWanted) {
      this.pauseWanted = false;
      this.emit('control', { batch: Math.max(this.batch, 0), action: 'pause', by: 'client' });
      this.setState('paused', 'client');
      return true;
    }
    return false;
  }
  /** One batch: begin and end events, then the epoch's end when it was the last. */
  step() {
    if (this.state !== 'running' && this.state !== 'stopping') return;
    if (this.boundary()) return;
    const b = this.batch + 1;
    this.batch = b;
    this.emit('train_batch_begin', { batch: b, logs: { batch: b, size: 32 } });
    const x = this.epoch + b / this.steps;
    const noise = () => (Math.random() - 0.5) * 0.25;
    const loss = this.curve(x) * (1 + noise());
    const acc = Math.min(1, 1 - loss * 0.6 + noise() * 0.1);
    const s = this.sums;
    s.loss += loss; s.accuracy += acc; s.n++;
    this.emit('train_batch_end', { batch: b, logs: { loss: s.loss / s.n, accuracy: s.accuracy / s.n } });
    if (b + 1 < this.steps) return;
    // End of epoch: validation, epoch_end with val_ metrics and lr, next epoch.
    this.batch = -1;
    const vl = this.curve(this.epoch + 1) * 1.12;
    const val = { loss: vl, accuracy: Math.min(1, 1 - vl * 0.55) };
    this.emit('test_begin');
    this.emit('test_end', { logs: val });
    const logs = { loss: s.loss / s.n, accuracy: s.accuracy / s.n, val_loss: val.loss, val_accuracy: val.accuracy, lr: this.lr };
    this.emit('epoch_end', { logs });
    if (this.epoch + 1 >= this.epochs) { this.end('finished', null, logs); return; }
    this.epoch++;
    this.emit('epoch_begin');
    this.sums = { loss: 0, accuracy: 0, n: 0 };
  }
  end(state, reason, logs) {
    this.batch = -1;
    for (const req of this.pending.splice(0)) req(true);
    this.emit('train_end', { logs: logs || {} });
    this.setState(state, reason);
    this.sim.next();
  }
}

/** The simulated daemon: runs one after another, publishes to subscribed connections. */
export class Sim {
  constructor({ token = 'T', observerToken = 'O', batchMs = 15, runs = [{ epochs: 8, steps: 60, lr: 0.001 }] } = {}) {
    this.token = token; this.observerToken = observerToken; this.batchMs = batchMs;
    this.runs = runs.map((r, i) => new Run(this, `r${i + 1}`, r));
    this.clients = new Set();
    this.received = [];       // every request any client sent: {client, msg}
    this.current = null;
    this.timer = null;
  }
  get(id) { return this.runs.find((r) => r.id === id); }
  /** Starts the first run, trains `preBatches` batches at once (a history the page
   *  has not seen when it opens), then one batch every batchMs. */
  start(preBatches = 0) {
    this.next();
    for (let i = 0; i < preBatches && this.current; i++) this.current.step();
    this.timer = setInterval(() => this.current && this.current.step(), this.batchMs);
  }
  next() {
    this.current = this.runs.find((r) => r.state === 'queued') || null;
    if (this.current) this.current.begin();
  }
  /** Holds the trainer (no batches) so a test can compare counts; release() goes on. */
  hold() { clearInterval(this.timer); this.timer = null; }
  release() { if (!this.timer) this.timer = setInterval(() => this.current && this.current.step(), this.batchMs); }
  /** train_batch_end events of a run so far. */
  batchEnds(run) { return this.get(run).log.filter((e) => e.event === 'train_batch_end').length; }
  stop() { clearInterval(this.timer); for (const c of this.clients) c.ws.terminate(); }
  publish(p) {
    const line = JSON.stringify({ jsonrpc: '2.0', method: 'event', params: p });
    for (const c of this.clients) if (c.wants(p)) c.send(line);
  }
  /** Sends a `dropped` notice to every client (the page should just note it). */
  dropNotice(run, count = 5) {
    const r = this.get(run);
    const to = r.log.length;
    for (const c of this.clients) c.notify('dropped', { run, count, from_seq: to - count * 2 + 1, to_seq: to });
  }
  /** Closes every connection, as a daemon restart would. */
  kick() { for (const c of this.clients) c.ws.close(1001, 'going away'); }
}

/** One WebSocket client of the simulated daemon. */
class Client {
  static count = 0;
  constructor(sim, ws, loopback) {
    Object.assign(this, { sim, ws, loopback, role: null, subs: new Map(), nextSub: 1 });
    this.n = ++Client.count;
    this.notify('hello', { protocol: 1, server: 'trainbus/0.1.0 (fake)', auth_required: !loopback, auth_timeout_ms: 5000, max_line: 65536 });
    ws.on('message', (data, binary) => this.receive(binary ? null : data.toString()));
  }
  send(line) { if (this.ws.readyState === 1) this.ws.send(line); }
  notify(method, params) { this.send(JSON.stringify({ jsonrpc: '2.0', method, params })); }
  reply(id, result) { this.send(JSON.stringify({ jsonrpc: '2.0', id, result })); }
  error(id, code, name, message) { this.send(JSON.stringify({ jsonrpc: '2.0', id, error: { code, message, data: { name } } })); }
  wants(p) {
    for (const s of this.subs.values()) {
      if (!s.live) continue;
      if (!s.runs.some((r) => glob(r, p.run)) || !s.events.some((e) => glob(e, p.event))) continue;
      if (/_batch_/.test(p.event) && p.batch % s.every !== 0) continue;
      return true;
    }
    return false;
  }
  receive(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { this.error(null, -32700, 'parse_error', 'invalid JSON'); this.ws.close(); return; }
    this.sim.received.push({ client: this.n, msg });
    const { id, method, params = {} } = msg;
    if (method !== 'auth' && method !== 'ping' && !this.role) { this.error(id, -32001, 'unauthorized', `${method}: authenticate first`); return; }
    const h = this[`m_${method}`];
    if (!h) { this.error(id, -32601, 'method_not_found', `method "${method}" not found`); return; }
    const control = ['set_lr', 'stop', 'pause', 'resume', 'checkpoint'].includes(method);
    if (control && this.role !== 'controller') {
      this.error(id, -32002, 'forbidden', `${method}: needs the controller role, this connection is ${this.role}`); return;
    }
    let run = null;
    if (control || method === 'history' || (method === 'status' && params.run)) {
      run = this.sim.get(params.run);
      if (!run) { this.error(id, -32003, 'no_such_run', `no run ${params.run}`); return; }
    }
    h.call(this, id, params, run);
  }
  m_ping(id) { this.reply(id, { pong: true, time: now() }); }
  m_auth(id, p) {
    // Roles by token, as trainbusd: the observer token grants observer only,
    // also to a client that asks for controller.
    if (p.token !== undefined && p.token === this.sim.observerToken) {
      this.role = 'observer';
      this.reply(id, { role: 'observer', protocol: 1 });
      return;
    }
    const needToken = p.role === 'controller' || !this.loopback;
    if (needToken && p.token !== this.sim.token) {
      this.error(id, -32001, 'unauthorized', 'auth: invalid token');
      this.notify('bye', { reason: 'auth_failed', message: 'invalid token' });
      setTimeout(() => this.ws.close(), 20);
      return;
    }
    this.role = p.role;
    this.reply(id, { role: p.role, protocol: 1 });
  }
  m_runs(id) { this.reply(id, { runs: this.sim.runs.map((r) => r.obj()) }); }
  m_status(id, p, run) {
    if (!run) { this.reply(id, { server: 'trainbus/0.1.0 (fake)', protocol: 1, runs: this.sim.runs.length }); return; }
    this.reply(id, { ...run.obj(), history: run.log.filter((e) => e.event === 'epoch_end') });
  }
  m_history(id, p, run) {
    const since = Math.max(1, p.since_seq || 1), limit = p.limit || 1000;
    const events = run.log.slice(since - 1, since - 1 + limit);
    this.reply(id, { run: run.id, events, next_seq: since + events.length });
  }
  m_subscribe(id, p) {
    const s = { runs: p.runs || ['*'], events: p.events || ['*'], every: p.every || 1, live: false };
    const sub = this.nextSub++;
    this.subs.set(sub, s);
    const run = s.runs.length === 1 && !s.runs[0].includes('*') ? this.sim.get(s.runs[0]) : null;
    this.reply(id, { sub, next_seq: run ? run.log.length + 1 : 0 });
    // Replay from since_seq, then live: both happen before the next trainer tick.
    if (p.since_seq !== undefined && run) {
      for (const e of run.log.slice(Math.max(1, p.since_seq) - 1)) {
        if (s.events.some((x) => glob(x, e.event)) && !(/_batch_/.test(e.event) && e.batch % s.every)) {
          this.send(JSON.stringify({ jsonrpc: '2.0', method: 'event', params: e }));
        }
      }
    }
    s.live = true;
  }
  m_unsubscribe(id, p) {
    if (p.sub === undefined) this.subs.clear();
    else if (!this.subs.delete(p.sub)) { this.error(id, -32602, 'invalid_params', `params.sub: no subscription ${p.sub}`); return; }
    this.reply(id, { ok: true });
  }
  by() { return `client ${this.n} (dashboard)`; }
  /** set_lr and checkpoint: answered at the next batch boundary (at once while paused). */
  applyLater(run, id, apply) {
    const req = (ended) => {
      if (ended) { this.error(id, -32004, 'invalid_state', `run ${run.id} ended before a batch boundary`); return; }
      apply();
    };
    if (run.state === 'paused') req(); else run.pending.push(req);
  }
  m_set_lr(id, p, run) {
    if (!(typeof p.lr === 'number' && p.lr > 0 && Number.isFinite(p.lr))) {
      this.error(id, -32602, 'invalid_params', `params.lr: expected a finite positive number, got ${JSON.stringify(p.lr)}`); return;
    }
    if (FINAL.has(run.state)) { this.error(id, -32004, 'invalid_state', `set_lr: run ${run.id} is ${run.state}`); return; }
    // Not the daemon's rule: a way for the page test to see an error reply displayed.
    if (p.lr >= 1000) { this.error(id, -32602, 'invalid_params', `params.lr: ${p.lr} refused by the fake daemon (lr >= 1000)`); return; }
    this.applyLater(run, id, () => {
      const old = run.lr;
      run.lr = p.lr;
      const b = Math.max(run.batch, 0);   // like the daemon: the batch after which it applies
      const ev = run.emit('control', { batch: b, value: p.lr, old, action: 'set_lr', by: this.by() });
      this.reply(id, { run: run.id, old, lr: p.lr, applied_at: { epoch: run.epoch, batch: b, seq: ev.seq } });
    });
  }
  m_checkpoint(id, p, run) {
    if (FINAL.has(run.state)) { this.error(id, -32004, 'invalid_state', `checkpoint: run ${run.id} is ${run.state}`); return; }
    this.applyLater(run, id, () => {
      const b = Math.max(run.batch, 0);   // like the daemon: the batch after which it applies
      const file = `/tmp/fake/runs/${run.id}/checkpoint-e${String(run.epoch).padStart(4, '0')}-b${String(b).padStart(5, '0')}.tbck`;
      const ev = run.emit('control', { batch: b, action: 'checkpoint', by: this.by(), reason: `wrote ${file}` });
      this.reply(id, { run: run.id, path: file, applied_at: { epoch: run.epoch, batch: b, seq: ev.seq } });
    });
  }
  m_pause(id, p, run) {
    if (run.state !== 'running') { this.error(id, -32004, 'invalid_state', `pause: run ${run.id} is ${run.state}`); return; }
    run.pauseWanted = true;
    this.reply(id, { ok: true });
  }
  m_resume(id, p, run) {
    if (run.state !== 'paused') { this.error(id, -32004, 'invalid_state', `resume: run ${run.id} is ${run.state}`); return; }
    this.reply(id, { ok: true });
    run.emit('control', { batch: Math.max(run.batch, 0), action: 'resume', by: this.by() });
    run.setState('running', this.by());
  }
  m_stop(id, p, run) {
    if (FINAL.has(run.state)) { this.error(id, -32004, 'invalid_state', `stop: run ${run.id} is ${run.state}`); return; }
    this.reply(id, { ok: true });
    run.stopWanted = true;
    if (run.state === 'queued') { run.end('stopped', p.reason); return; }
    const paused = run.state === 'paused';
    run.setState('stopping', p.reason || this.by());
    if (paused) run.boundary();
  }
}

/**
 * Starts the HTTP + WebSocket server. `loopback: false` makes it behave like a
 * daemon on a public address (observers need the token). Resolves to
 * {url, port, sim, requests, close}.
 */
export async function startFake({ port = 0, loopback = true, start = true, preBatches = 0, ...simOpts } = {}) {
  const sim = new Sim(simOpts);
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url);
    if (req.method === 'GET' && (req.url === '/' || req.url.startsWith('/?'))) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(fs.readFileSync(PAGE));
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
    }
  });
  const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 65536 });
  wss.on('connection', (ws) => {
    const c = new Client(sim, ws, loopback);
    sim.clients.add(c);
    ws.on('close', () => sim.clients.delete(c));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const actual = server.address().port;
  if (start) sim.start(preBatches);
  return {
    url: `http://127.0.0.1:${actual}/`, port: actual, sim, requests,
    close: () => new Promise((resolve) => { sim.stop(); wss.close(); server.close(resolve); server.closeAllConnections?.(); }),
  };
}

// By hand: a server to open in a browser while working on the page.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, def) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : def; };
  const steps = Number(arg('--steps', 120));
  const f = await startFake({
    port: Number(arg('--port', 8788)), token: arg('--token', 'T'), batchMs: Number(arg('--batch-ms', 25)),
    preBatches: Number(arg('--pre-epochs', 2)) * steps,
    runs: [{ epochs: Number(arg('--epochs', 20)), steps, lr: 0.001 }, { epochs: 5, steps, lr: 0.01 }],
  });
  console.error(`fake trainbusd: http on 127.0.0.1:${f.port} (token ${f.sim.token})`);
}
