"""Hostile trainers (issue 14): connections with the trainer role (or
pretending to have it) that publish events out of order, to another run,
with huge logs, as an observer, and in floods. Each gets the error or limit
docs/PROTOCOL.md section 13 documents, and nothing else is affected:

- the daemon's own training (run r1, the suite's job, a ModelCheckpoint
  writing its weights) ends with weights equal, byte for byte, to a daemon
  no client ever connected to, and no control event in its history;
- another trainer's run (r2, published throughout by the real Python
  Publisher) holds every event its trainer published, seq 1..N without a gap,
  and a subscriber of it saw every one of them, with no `dropped` notice;
- the daemon answers a fresh ping after every attack, and SIGTERM ends it
  with status 0 (in an ASan build: no sanitizer report).

A "gate" controller holds r1 in lockstep at its first epoch_end, so that the
attacks meet a run that is still training; the flood test lets it train on
(the gate answers each epoch_end at once) while the floods go on, and the
gate holds it again at train_end until the end.

Run one: python3 -m unittest -v test_hostile_trainers.Trainers.test_c_huge_logs
"""
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
import hostile_util as H  # noqa: E402
import trainbus  # noqa: E402

EPOCHS = 40
MAX_LINE = 65536
OBSERVER_TOKEN = "hostile-observer-token-0123"
TRAINER_TOKEN = "hostile-trainer-token-0123"
# Memory is measured only in a plain build (ASan's shadow memory and
# valgrind change it), as in test_hostile_resources.
MEASURE = os.environ.get("TB_SANITIZED") != "1" and not H.WRAP


def line(obj):
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def ev(seq, event, epoch=None, batch=None, **extra):
    e = {"seq": seq, "event": event}
    if epoch is not None:
        e["epoch"] = epoch
    if batch is not None:
        e["batch"] = batch
    e.update(extra)
    return e


class Trainer(H.Client):
    """A raw trainer: auth with the trainer role, attach, publish by hand."""

    def __init__(self, d, token=H.TOKEN, role="trainer", attach=True, **params):
        super().__init__((d.host, d.port))
        self.auth(role, token=token)
        self.run = None
        if attach:
            self.run = self.ok("attach", dict({"name": "hostile-trainer"}, **params))["run"]

    def publish(self, events, rid=None, run=None):
        """A publish: a request (rid given: returns the response) or a
        notification (returns nothing)."""
        msg = {"jsonrpc": "2.0", "method": "publish",
               "params": {"run": run or self.run, "events": events}}
        if rid is None:
            self.send(line(msg))
            return None
        msg["id"] = rid
        self.send(line(msg))
        return self.read_response(rid)

    def notify(self, method, params):
        self.send(line({"jsonrpc": "2.0", "method": method, "params": params}))

    def rejected(self, timeout=10.0):
        """The next rejected notification."""
        end = time.monotonic() + timeout * H.SLOW
        while True:
            m = self.read_msg(max(0.01, end - time.monotonic()) / H.SLOW)
            if m.get("method") == "rejected":
                return m["params"]
            if time.monotonic() > end:
                raise socket.timeout("no rejected notice")


def err_name(m):
    return (m.get("error") or {}).get("data", {}).get("name")


class GoodTrainer:
    """r2: the real Python Publisher publishing an endless small loop until
    told to stop, then finishing; and a subscriber of r2 that records every
    event and notice it gets."""

    def __init__(self, d):
        tls = {"cafile": H.tls_util.path("ca.pem")} if H.TLS else {}
        self.pub = trainbus.Publisher(addr=d.addr, token=H.TOKEN, name="good", steps=20,
                                      client_name="good-trainer", **tls)
        self.run = self.pub.run
        self.stop = threading.Event()
        self.published = 0
        self.error = None
        self.watch_events, self.watch_notes = [], []
        self.sub = trainbus.Client(d.addr, H.TOKEN, **tls)
        self.sub_iter = self.sub.subscribe(runs=[self.run], since_seq=1, notices=True)
        self.watch_thread = threading.Thread(target=self._watch, daemon=True)
        self.watch_thread.start()
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()

    def _watch(self):
        try:
            for e in self.sub_iter:
                if e.get("_kind") not in (None, "event"):  # dropped, bye: nothing may be lost
                    self.watch_notes.append(dict(e))
                    continue
                self.watch_events.append(e)
                if e.event == "state" and e.get("state") in ("finished", "stopped", "failed",
                                                             "lost", "cancelled"):
                    return
        except Exception as e:  # reported by finish()
            self.watch_notes.append(repr(e))

    def _train(self):
        p = self.pub
        try:
            p.on_train_begin()
            self.published += 1
            epoch = 0
            while not self.stop.is_set():
                p.on_epoch_begin(epoch)
                for b in range(20):
                    p.on_train_batch_begin(b)
                    p.on_train_batch_end(b, {"loss": 1.0 / (1 + epoch * 20 + b), "accuracy": 0.5})
                p.on_epoch_end(epoch, {"loss": 1.0 / (1 + epoch)})
                self.published += 42
                epoch += 1
                time.sleep(0.02)
            p.on_train_end({})
            self.published += 1
            p.finish(timeout=60 * H.SLOW)
        except Exception as e:
            self.error = e

    def finish(self):
        self.stop.set()
        self.thread.join(120 * H.SLOW)
        self.watch_thread.join(60 * H.SLOW)
        self.sub.close()


class Trainers(unittest.TestCase):
    d = None

    @classmethod
    def setUpClass(cls):
        cls.started = time.monotonic()
        cls.ref = {}

        def reference():
            try:
                cls.ref["weights"], cls.ref["wall"] = H.reference_run(EPOCHS, "trainers-ref")
            except Exception as e:  # reported by the final test
                cls.ref["error"] = e

        cls.ref_thread = threading.Thread(target=reference, daemon=True)
        cls.ref_thread.start()
        cls.wpath = os.path.join(tempfile.mkdtemp(prefix="tb-hostile-tr-"), "w.tbw")
        cls.d = H.Daemon(H.job(cls.wpath, EPOCHS),
                         args=("--trainer-timeout-ms", "60000", "--observer-token", OBSERVER_TOKEN,
                               "--trainer-token", TRAINER_TOKEN))
        cls.d.addr = "%s%s:%d" % ("tls://" if H.TLS else "", cls.d.host, cls.d.port)
        # The gate: holds r1 at its first epoch_end (and later at train_end).
        cls.gate = H.controller(cls.d)
        cls.gate.ok("subscribe", {"runs": ["r1"], "events": ["epoch_end", "train_end"],
                                  "lockstep": ["epoch_end", "train_end"],
                                  "lockstep_timeout_ms": 600000})
        cls.n_seen = 0
        cls.held = cls.next_held()
        cls.good = GoodTrainer(cls.d)

    @classmethod
    def next_held(cls):
        """The next lockstep event of r1 (read now, or kept aside by a call
        that skipped it)."""
        end = time.monotonic() + 300 * H.SLOW
        while time.monotonic() < end:
            while cls.n_seen < len(cls.gate.notes):
                m = cls.gate.notes[cls.n_seen]
                cls.n_seen += 1
                if m.get("method") == "event" and m["params"].get("lockstep"):
                    return m["params"]
            cls.gate.read_msg(300)
        raise AssertionError("r1 was not held")

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.kill()

    def setUp(self):
        self.assertTrue(self.d.alive(), "trainbusd is not running")

    def tearDown(self):
        if self.d is not None:
            self.fresh_ping()

    def fresh_ping(self, limit=10.0):
        c = self.d.connect()
        try:
            t0 = time.monotonic()
            r = c.call("ping", timeout=limit)
            self.assertTrue(r.get("result", {}).get("pong"), r)
            return time.monotonic() - t0
        finally:
            c.close()

    def status(self, run):
        c = self.d.connect()
        try:
            c.auth("observer", token=None)
            return c.ok("status", {"run": run})
        finally:
            c.close()

    # -- events out of order -------------------------------------------------

    def test_a_events_out_of_order(self):
        t = Trainer(self.d)
        try:
            r = t.publish([ev(1, "train_begin"), ev(2, "epoch_begin", 0),
                           ev(3, "train_batch_begin", 0, 0)], rid=1)
            self.assertEqual(r["result"], {"run": t.run, "last_seq": 3, "taken": 3, "skipped": 0})
            # A gap, as a notification: one rejected notice naming the seq expected.
            t.publish([ev(5, "train_batch_end", 0, 0)])
            n = t.rejected()
            self.assertEqual((n["method"], n["run"], n["seq"], n["index"], n["name"]),
                             ("publish", t.run, 5, 0, "invalid_params"), n)
            self.assertIn("expected 4", n["message"])
            # A gap in the middle of a message: those before it are taken.
            r = t.publish([ev(4, "train_batch_end", 0, 0, logs={"loss": 1}),
                           ev(6, "train_batch_begin", 0, 1), ev(7, "train_batch_end", 0, 1)],
                          rid=2)
            self.assertEqual(err_name(r), "invalid_params", r)
            self.assertIn("params.events[1].seq: expected 5", r["error"]["message"])
            # Going back: events the run holds are skipped, without error.
            r = t.publish([ev(1, "train_begin"), ev(2, "epoch_begin", 0), ev(5, "epoch_end", 0),
                           ev(5, "epoch_end", 0)], rid=3)
            self.assertEqual(r["result"], {"run": t.run, "last_seq": 5, "taken": 1, "skipped": 3})
            # The daemon's own event names, seq 0, an unknown event: refused.
            for bad, where in (([ev(6, "state")], "event"), ([ev(0, "train_end")], "seq"),
                               ([ev(6, "frobnicate")], "event"),
                               ([ev(6, "train_end", extra=1)], "extra")):
                r = t.publish(bad, rid=4)
                self.assertEqual(err_name(r), "invalid_params", r)
                self.assertIn(where, r["error"]["message"])
            hist = self.history(t.run)
            hooks = [(e["event"], e.get("epoch"), e.get("batch")) for e in hist
                     if e["event"] not in ("state", "control")]
            self.assertEqual(hooks, [("train_begin", None, None), ("epoch_begin", 0, None),
                                     ("train_batch_begin", 0, 0), ("train_batch_end", 0, 0),
                                     ("epoch_end", 0, None)])
            self.assertEqual([e["seq"] for e in hist], list(range(1, len(hist) + 1)))
            self.assertEqual(self.status(t.run)["state"], "running")
        finally:
            t.close()

    def history(self, run):
        c = self.d.connect()
        try:
            c.auth("observer", token=None)
            return H.history_all(c, run)
        finally:
            c.close()

    # -- for another run --------------------------------------------------------

    def test_b_another_run(self):
        t = Trainer(self.d)
        good = self.good.run
        try:
            cases = [
                ("publish", {"run": "r1", "events": [ev(1, "train_begin")]}, "forbidden"),
                ("publish", {"run": good, "events": [ev(10 ** 6, "epoch_end", 0)]}, "forbidden"),
                ("publish", {"run": "r999", "events": [ev(1, "train_begin")]}, "no_such_run"),
                ("applied", {"run": good, "id": 1, "action": "stop"}, "forbidden"),
                ("applied", {"run": "r1", "action": "set_lr", "value": 9.0}, "forbidden"),
                ("finish", {"run": good}, "forbidden"),
                ("finish", {"run": "r1", "state": "failed", "reason": "hostile"}, "forbidden"),
                ("attach", {"run": "r1"}, "forbidden"),
                ("attach", {"run": good, "last_seq": 0}, "invalid_state"),
                ("attach", {"run": "r999"}, "no_such_run"),
                ("applied", {"run": t.run, "id": 77, "action": "stop"}, "invalid_params"),
            ]
            for method, params, want in cases:
                r = t.call(method, params)
                self.assertEqual(err_name(r), want, (method, params, r))
                self.assertTrue(r["error"]["message"])
            # The same as notifications: rejected notices, nothing else.
            t.notify("publish", {"run": good, "events": [ev(10 ** 6, "epoch_end", 0)]})
            n = t.rejected()
            self.assertEqual((n["method"], n["run"], n["name"]), ("publish", good, "forbidden"), n)
            t.notify("applied", {"run": "r1", "action": "stop"})
            n = t.rejected()
            self.assertEqual((n["method"], n["run"], n["name"]), ("applied", "r1", "forbidden"), n)
            self.assertEqual(self.status("r1")["state"], "running")
            self.assertEqual(self.status(good)["state"], "running")
        finally:
            t.close()

    # -- huge logs -------------------------------------------------------------

    def test_c_huge_logs(self):
        t = Trainer(self.d)
        try:
            t.publish([ev(1, "train_begin")], rid=1)
            big = {"m%02d" % i: i for i in range(33)}
            cases = [
                ([ev(2, "epoch_begin", 0, logs=big)], "logs: 33 entries, at most 32"),
                ([ev(2, "epoch_begin", 0, logs={"x" * 48: 1})], "a name of 48 bytes"),
                ([ev(2, "epoch_begin", 0, logs={"loss": "lots"})], "logs.loss"),
                ([ev(2, "epoch_begin", 0, logs={"loss": [1, 2]})], "logs.loss"),
                ([ev(2, "epoch_begin", 0, classes=["a"])], "only train_begin"),
                ([ev(2, "epoch_begin", 0, time=1e13)], "time"),
                ([ev(2, "epoch_begin", 0, lr=-1)], "lr"),
            ]
            for events, why in cases:
                r = t.publish(events, rid=2)
                self.assertEqual(err_name(r), "invalid_params", r)
                self.assertIn(why, r["error"]["message"])
            r = t.call("attach", {"name": "x", "model": "m" * 8192})
            self.assertEqual(err_name(r), "invalid_params", r)
            self.assertIn("params.model: longer than 8191 bytes", r["error"]["message"])
            # The largest logs allowed are taken whole.
            full = {("l%02d" % i) + "x" * 44: 1e300 * (i + 1) for i in range(32)}
            r = t.publish([ev(2, "epoch_begin", 0, logs=full)], rid=3)
            self.assertEqual(r["result"]["last_seq"], 2, r)
            got = [e for e in self.history(t.run) if e["event"] == "epoch_begin"][0]["logs"]
            self.assertEqual(got, full)
            # A line over max_line: too_large, the connection closed, the run
            # detached; attached again from a new connection, it goes on.
            huge = {"jsonrpc": "2.0", "method": "publish",
                    "params": {"run": t.run, "events": [ev(3, "epoch_end", 0, logs={"loss": 1})
                                                        for _ in range(3000)]}}
            # Just over the limit, all of it read by the daemon before it
            # closes (so the close is a FIN after the error, not a reset).
            data = line(huge)[:MAX_LINE + 100]
            try:
                t.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            seen = []
            try:
                while True:
                    seen.append(t.read_msg(10))
            except H.Closed:
                pass
            errs = [m for m in seen if "error" in m]
            self.assertEqual([err_name(m) for m in errs], ["too_large"], seen)
            self.assertIsNone(errs[0]["id"])
            end = time.monotonic() + 10 * H.SLOW
            while self.status(t.run)["state"] != "detached" and time.monotonic() < end:
                time.sleep(0.02)
            self.assertEqual(self.status(t.run)["state"], "detached")
            t2 = Trainer(self.d, attach=False)
            try:
                r = t2.ok("attach", {"run": t.run, "last_seq": 3})
                self.assertEqual((r["last_seq"], r["state"]), (2, "running"))
                self.assertEqual(t2.call("finish", {"run": t.run})["result"], {"ok": True})
            finally:
                t2.close()
            states = [e["state"] for e in self.history(t.run) if e["event"] == "state"]
            self.assertEqual(states, ["running", "detached", "running", "finished"])
        finally:
            t.close()

    # -- publishing as an observer ---------------------------------------------

    def test_d_publishing_as_an_observer(self):
        o = self.d.connect()
        try:
            o.auth("observer", token=None)
            good = self.good.run
            for method, params in (
                    ("publish", {"run": good, "events": [ev(10 ** 6, "epoch_end", 0)]}),
                    ("attach", {"name": "sneaky"}),
                    ("attach", {"run": good}),
                    ("applied", {"run": good, "id": 1, "action": "stop"}),
                    ("finish", {"run": good})):
                r = o.call(method, params)
                self.assertEqual(err_name(r), "forbidden", (method, r))
                self.assertIn("needs the trainer role, this connection is observer",
                              r["error"]["message"])
            o.send(line({"jsonrpc": "2.0", "method": "publish",
                         "params": {"run": good, "events": [ev(10 ** 6, "epoch_end", 0)]}}))
            m = o.read_msg(10)
            while m.get("method") == "event":
                m = o.read_msg(10)
            self.assertEqual((m.get("method"), m["params"]["name"]), ("rejected", "forbidden"), m)
            # The observer token (read-only) cannot publish, nor be a trainer.
            v = self.d.connect()
            try:
                self.assertEqual(v.auth("observer", token=OBSERVER_TOKEN)["role"], "observer")
                r = v.call("publish", {"run": good, "events": [ev(10 ** 6, "epoch_end", 0)]})
                self.assertEqual(err_name(r), "forbidden", r)
                self.assertIn("observer token, which is read-only", r["error"]["message"])
            finally:
                v.close()
            for role, token in (("trainer", OBSERVER_TOKEN), ("observer", TRAINER_TOKEN),
                                ("controller", TRAINER_TOKEN)):
                v = self.d.connect()
                try:
                    r = v.call("auth", {"role": role, "token": token})
                    if role == "controller":  # granted the token's own, lesser role
                        self.assertEqual(r["result"]["role"], "trainer", r)
                        r = v.call("stop", {"run": "r1"})
                    self.assertEqual(err_name(r), "forbidden", (role, r))
                finally:
                    v.close()
            # The trainer token makes a trainer, and nothing else.
            tt = Trainer(self.d, token=TRAINER_TOKEN)
            try:
                self.assertEqual(tt.call("finish", {"run": tt.run})["result"], {"ok": True})
            finally:
                tt.close()
            # The trainer role needs a token, and may not observe or control.
            n = self.d.connect()
            r = n.call("auth", {"role": "trainer"})
            self.assertEqual(err_name(r), "unauthorized", r)
            self.assertTrue(n.wait_closed(5))
            n.close()
            t = Trainer(self.d, attach=False)
            try:
                for method, params in (("subscribe", {"runs": [good]}), ("status", {}),
                                       ("set_lr", {"run": good, "lr": 0.5}),
                                       ("stop", {"run": "r1"}),
                                       ("submit", {"job": {"data": {"source": "spirals"}}})):
                    r = t.call(method, params)
                    self.assertEqual(err_name(r), "forbidden", (method, r))
            finally:
                t.close()
            self.assertEqual(self.status(good)["state"], "running")
        finally:
            o.close()

    # -- floods ------------------------------------------------------------------

    def test_e_attach_flood(self):
        """A connection may hold 16 runs open: the 17th attach is
        overloaded; finishing one makes room."""
        t = Trainer(self.d, attach=False)
        try:
            runs = [t.ok("attach", {"name": "flood-%d" % i})["run"] for i in range(16)]
            r = t.call("attach", {"name": "flood-16"})
            self.assertEqual(err_name(r), "overloaded", r)
            self.assertIn("at most 16 runs per trainer connection", r["error"]["message"])
            self.assertEqual(t.call("finish", {"run": runs[0]})["result"], {"ok": True})
            runs.append(t.ok("attach", {"name": "flood-16"})["run"])
            for run in runs[1:]:
                self.assertEqual(t.call("finish", {"run": run})["result"], {"ok": True})
        finally:
            t.close()

    def test_f_floods_while_the_daemon_trains(self):
        """Three floods at once while r1 trains its 39 remaining epochs: a
        trainer publishing batch events as fast as its socket takes them,
        with a subscriber of that run that never reads; and a trainer sending
        refused notifications without ever reading its rejected notices. The
        daemon's memory stays bounded, it answers pings throughout, and the
        other runs are untouched (checked by the final test)."""
        rss0 = self.d.rss_kb()
        stop = threading.Event()
        counts = {"events": 0, "bad": 0}
        errors = []

        flooder = Trainer(self.d)
        lurker = self.d.connect()
        lurker.auth("observer", token=None)
        lurker.ok("subscribe", {"runs": [flooder.run]})
        lurker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        spammer = Trainer(self.d)

        def flood_events():
            seq = 0
            try:
                flooder.publish([ev(1, "train_begin"), ev(2, "epoch_begin", 0)])
                seq = 2
                while not stop.is_set() and seq < 200000:
                    batch = []
                    for b in range(300):
                        seq += 1
                        batch.append(ev(seq, "train_batch_end", 0, seq, logs={"loss": 0.5}))
                    flooder.publish(batch)
                    counts["events"] = seq
            except OSError as e:
                errors.append("event flood: %r" % e)

        def flood_bad():
            bad = line({"jsonrpc": "2.0", "method": "publish",
                        "params": {"run": spammer.run, "events": [ev(9, "epoch_end", 0)]}})
            spammer.sock.settimeout(1.0)
            try:
                while not stop.is_set():
                    spammer.send(bad * 200)
                    counts["bad"] += 200
            except (socket.timeout, OSError):
                pass  # the daemon stopped reading it (its backlog) or closed it

        threads = [threading.Thread(target=f, daemon=True) for f in (flood_events, flood_bad)]
        for th in threads:
            th.start()
        # r1 trains on meanwhile: the gate answers each epoch_end at once.
        pings, peak = [], rss0
        held = type(self).held
        while held["event"] != "train_end":
            self.gate.ok("continue", {"run": "r1", "seq": held["seq"]}, timeout=60)
            held = type(self).next_held()
            pings.append(self.fresh_ping(limit=10))
            peak = max(peak, self.d.rss_kb())
        type(self).held = held
        end = time.monotonic() + 60 * H.SLOW
        while counts["events"] < 50000 and not errors and time.monotonic() < end:
            pings.append(self.fresh_ping(limit=10))
            peak = max(peak, self.d.rss_kb())
            if counts["events"] == 0 and not threads[0].is_alive():
                break
            time.sleep(0.05)
        stop.set()
        for th in threads:
            th.join(60 * H.SLOW)
        peak = max(peak, self.d.rss_kb())
        self.assertEqual(errors, [])
        # Every event the flooder sent and the daemon read is in its run, in
        # order; the never-reading subscriber was cut off or told "dropped",
        # never by holding the daemon.
        r = flooder.publish([ev(counts["events"] + 1, "epoch_end", 0)], rid="last")
        self.assertEqual(r["result"]["last_seq"], counts["events"] + 1, r)
        self.assertEqual(flooder.call("finish", {"run": flooder.run})["result"], {"ok": True})
        st = self.status(flooder.run)
        self.assertEqual((st["state"], st["last_seq"]), ("finished", counts["events"] + 3), st)
        grown_mb = (peak - rss0) / 1024.0
        # The flooded run's retained events (~200 bytes each, up to 200,000
        # of them) are the documented cost; the rest must not grow with the
        # flood: the refused notices stay within the spammer's output limit.
        retained_mb = min(counts["events"], 200000) * 400 / 1e6
        H.report("trainers_flood", events=counts["events"], refused=counts["bad"],
                 rss_growth_mb=round(grown_mb, 1), ping_max_s=round(max(pings), 3),
                 pings=len(pings))
        if MEASURE:
            self.assertLess(grown_mb, retained_mb + 64, "daemon memory grew by %.0f MB" % grown_mb)
        self.assertGreater(counts["events"], 10000)
        for c in (flooder, lurker, spammer):
            c.close()

    # -- nothing else was affected ---------------------------------------------

    def test_z1_nothing_else_affected(self):
        held = type(self).held
        while held["event"] != "train_end":  # the flood test did not run
            self.gate.ok("continue", {"run": "r1", "seq": held["seq"]}, timeout=60)
            held = type(self).next_held()
        runs = {r["run"]: r for r in self.gate.ok("runs", {})["runs"]}
        self.assertEqual(runs["r1"]["source"], "daemon")
        self.assertEqual(self.gate.ok("continue", {"run": "r1", "seq": held["seq"]}), {"ok": True})
        info = H.wait_final(self.gate)
        self.assertEqual(info["state"], "finished", info)
        self.assertEqual(info["lr"], struct.unpack("f", struct.pack("f", 0.003))[0])
        events = H.history_all(self.gate)
        self.assertEqual([e["seq"] for e in events], list(range(1, len(events) + 1)), "seq gap")
        self.assertEqual([e for e in events if e["event"] == "control"], [],
                         "a hostile trainer changed the daemon's run")
        self.assertTrue(all(e["source"] == "daemon" for e in events))
        # The good trainer's run: every event, in order, seen by its subscriber.
        g = self.good
        g.finish()
        self.assertIsNone(g.error)
        self.assertEqual((g.pub.stats["dropped"], g.pub.stats["rejected"]), (0, 0), g.pub.errors)
        hist = self.history(g.run)
        self.assertEqual([e["seq"] for e in hist], list(range(1, len(hist) + 1)))
        hooks = [e for e in hist if e["event"] not in ("state", "control")]
        self.assertEqual(len(hooks), g.published)
        self.assertEqual([e["state"] for e in hist if e["event"] == "state"],
                         ["running", "finished"])
        self.assertEqual(g.watch_notes, [])
        self.assertEqual([e.seq for e in g.watch_events], [e["seq"] for e in hist])
        self.ref_thread.join(300 * H.SLOW)
        if "error" in self.ref:
            raise self.ref["error"]
        with open(self.wpath, "rb") as f:
            mine = f.read()
        self.assertTrue(mine == self.ref["weights"], "final weights differ from a run without clients")
        H.report("trainers", seconds=round(time.monotonic() - self.started, 2),
                 good_events=g.published)

    def test_z2_daemon_stops_cleanly(self):
        self.d.assert_clean_stop(self)
        Trainers.d = None


if __name__ == "__main__":
    unittest.main()
