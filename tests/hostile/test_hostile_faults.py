"""Fault runs: one daemon (--no-job); for each fault the suite's job is
submitted and trained while the fault is applied. Every fault run must finish,
keep its event sequence whole (history from seq 1 in pages: 1..last with no
gap), and, unless the fault is meant to change the run (the control flood),
end with weights equal byte for byte to those of a daemon no client ever
connected to. Each test reports the trainer's wall time (train_begin to
train_end) against a clean run on the same daemon.

SOAK=1: more cycles, more killed clients, a longer flood, three clean runs
for the median.
"""
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_util as H  # noqa: E402

EPOCHS = 40
LONG_EPOCHS = 120
CYCLES = 10000 if H.SOAK else 1000
KILLED_MID_LINE = 200 if H.SOAK else 20
KILLED_MID_LOCKSTEP = 10 if H.SOAK else 3
FLOOD = 30000 if H.SOAK else 3000
CLEAN_RUNS = 3 if H.SOAK else 1



def doomed_child(host, port, mode, run, pad, wfd):
    """In a forked child: connect as a controller, then either write half a
    set_lr line (mode "line") or subscribe with lockstep at epoch_end and wait
    for a held event (mode "lockstep"); tell the parent through wfd, then
    sleep until killed. Forked rather than exec'd: a new interpreter per
    child would cost the trainer CPU on a 2-core machine."""
    try:
        s = H.connect_raw(host, port)
        f = s.makefile("rb")
        f.readline()
        s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": "auth",
                               "params": {"role": "controller", "token": H.TOKEN,
                                          "client": "doomed"}}) + "\n").encode())
        f.readline()
        if mode == "line":
            s.sendall(b'{"jsonrpc":"2.0","id":2,"method":"set_lr","params":{"run":"' + run.encode()
                      + b'","lr":0.5' + b" " * pad)
            os.write(wfd, b"ready\n")
        else:
            s.sendall((json.dumps({"jsonrpc": "2.0", "id": 2, "method": "subscribe",
                                   "params": {"runs": [run], "events": ["epoch_end"],
                                              "lockstep": ["epoch_end"],
                                              "lockstep_timeout_ms": 5000}}) + "\n").encode())
            while True:
                m = json.loads(f.readline())
                if m.get("method") == "event" and m["params"].get("lockstep"):
                    os.write(wfd, b"held %d\n" % m["params"]["seq"])
                    break
        time.sleep(3600)
    finally:
        os._exit(0)



class Faults(unittest.TestCase):
    d = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tb-hostile-faults-")
        cls.ref_weights, cls.ref_wall = H.reference_run(EPOCHS, "faults-ref")
        # Submitted jobs write their weights under a data directory only.
        cls.d = H.Daemon(None, args=("--data-dir", cls.tmp))
        cls.ctl = H.controller(cls.d)
        cls.n = 0
        cls.clean = []
        for _ in range(CLEAN_RUNS):
            run, w = cls.submit()
            cls.wait_log_final(run)
            cls.clean.append(H.train_wall(H.log_events(cls.d.state_dir, run)))
        cls.clean_wall = H.median(cls.clean)

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.kill()

    @classmethod
    def submit(cls, epochs=EPOCHS):
        cls.n += 1
        w = os.path.join(cls.tmp, "w%d.tbw" % cls.n)
        run = cls.ctl.ok("submit", {"job": H.job(w, epochs)})["run"]
        return run, w

    @classmethod
    def wait_log_final(cls, run):
        H.LogWatch(cls.d.state_dir, run).wait("final", alive=cls.d.alive)

    @classmethod
    def wait_training(cls, run):
        H.LogWatch(cls.d.state_dir, run).wait("train_begin", alive=cls.d.alive)

    def check_run(self, run, wpath, name, same_weights=True, ref=None, epochs=EPOCHS, **extra):
        """The run finished, its history is whole, its weights are the
        reference's; reports its slowdown."""
        self.wait_log_final(run)
        c = H.controller(self.d)
        try:
            info = H.wait_final(c, run)
            self.assertEqual(info["state"], "finished", info)
            events = H.history_all(c, run)
        finally:
            c.close()
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, list(range(1, info["last_seq"] + 1)), "history is not 1..last_seq")
        self.assertEqual([e["event"] for e in events].count("train_end"), 1)
        wall = H.train_wall(events)
        if same_weights:
            with open(wpath, "rb") as f:
                self.assertTrue(f.read() == (ref or self.ref_weights),
                                "%s: final weights differ from a run without clients" % name)
        clean = self.clean_wall * epochs / EPOCHS
        H.report(name, wall_s=round(wall, 3), clean_wall_s=round(clean, 3),
                 slowdown=round(wall / clean, 3), events=len(events), **extra)
        return events, wall

    def test_clean_run_equals_reference(self):
        """A submitted run on this daemon equals the --job run of a daemon
        without clients (the baseline for every other fault)."""
        run, w = self.submit()
        self.check_run(run, w, "clean")

    @classmethod
    def long_ref(cls):
        """The weights of a LONG_EPOCHS run on a daemon without clients
        (made once, for the tests that need a run outlasting their faults)."""
        if getattr(cls, "_long_ref", None) is None:
            cls._long_ref, _ = H.reference_run(LONG_EPOCHS, "faults-long-ref")
        return cls._long_ref

    def test_connect_disconnect_cycles(self):
        # LONG_EPOCHS: over TLS each cycle is a handshake, and on a quiet
        # machine 1000 of them outlast an EPOCHS run.
        ref = self.long_ref()
        run, w = self.submit(LONG_EPOCHS)
        self.wait_training(run)
        t0 = time.monotonic()
        for i in range(CYCLES):
            s = H.connect_raw(self.d.host, self.d.port)
            if i % 10 == 0:
                # Authenticate and subscribe, then vanish with a reset.
                f = s.makefile("rb")
                f.readline()
                s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"auth","params":{"role":"observer"}}\n'
                          b'{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{}}\n')
                f.readline()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif i % 3 == 0:
                s.recv(4096)  # the hello
            s.close()
        took = time.monotonic() - t0
        w8 = H.LogWatch(self.d.state_dir, run)
        w8.poll()
        during = "train_end" not in w8.seen
        self.assertTrue(during, "training ended before the %d cycles did (%.1fs); the job is too short"
                        % (CYCLES, took))
        self.check_run(run, w, "connect_disconnect", ref=ref, epochs=LONG_EPOCHS, cycles=CYCLES,
                       cycles_s=round(took, 2))
        c = H.controller(self.d)
        st = c.ok("status")
        c.close()
        self.assertLessEqual(st["clients"], 3, "connections not released: %r" % st)

    def spawn(self, mode, run, pad=0):
        """Forks a doomed child; returns (pid, its first line)."""
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            doomed_child(self.d.host, self.d.port, mode, run, pad, wfd)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            line = r.readline().decode()
        return pid, line

    def kill_child(self, pid):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def test_clients_killed_mid_line(self):
        """Children write half a set_lr (up to 60 KB of it) and are killed
        with SIGKILL: nothing is applied, nothing is lost."""
        run, w = self.submit()
        self.wait_training(run)
        for i in range(KILLED_MID_LINE):
            pid, line = self.spawn("line", run, (i * 7919) % 60000)
            self.assertTrue(line.startswith("ready"), line)
            self.kill_child(pid)
        events, _ = self.check_run(run, w, "killed_mid_line", killed=KILLED_MID_LINE)
        self.assertEqual([e for e in events if e["event"] == "control"], [])

    def test_clients_killed_mid_lockstep(self):
        """Children hold the trainer at epoch_end (lockstep, timeout 5 s) and
        are killed before they answer: the trainer goes on (at worst after
        the timeout), and no event is lost."""
        run, w = self.submit()
        self.wait_training(run)
        held = []
        for i in range(KILLED_MID_LOCKSTEP):
            pid, line = self.spawn("lockstep", run)
            self.assertTrue(line.startswith("held "), line)
            held.append(int(line.split()[1]))
            time.sleep(0.05)
            self.kill_child(pid)
        events, wall = self.check_run(run, w, "killed_mid_lockstep", killed=KILLED_MID_LOCKSTEP)
        by_seq = {e["seq"]: e for e in events}
        gaps = []
        for seq in held:
            self.assertEqual(by_seq[seq]["event"], "epoch_end")
            gaps.append(by_seq[seq + 1]["time"] - by_seq[seq]["time"])
        timeouts = [e for e in events if e["event"] == "control" and e.get("action") == "lockstep_timeout"]
        H.report("killed_mid_lockstep_wait", waits_s=[round(g, 3) for g in gaps], timeouts=len(timeouts))
        for g in gaps:
            self.assertLess(g, 5.0 + 1.0 * H.SLOW, "the trainer waited %.2fs for a dead client" % g)

    def test_client_never_reads(self):
        """A client subscribed to everything never reads: the trainer is not
        slowed, and the client is told what it lost (dropped, with ranges) or
        disconnected; lifecycle events are never dropped."""
        s = H.connect_raw(self.d.host, self.d.port, rcvbuf=4096)
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"auth","params":{"role":"observer"}}\n'
                  b'{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{"events":["*"]}}\n')
        time.sleep(0.2)
        # Long enough to publish more than the kernel's socket buffers hold
        # (tcp_wmem up to 4 MiB): about 7 MB of events.
        ref = self.long_ref()
        run, w = self.submit(LONG_EPOCHS)
        events, wall = self.check_run(run, w, "never_reads", ref=ref, epochs=LONG_EPOCHS)
        # Now read everything it was sent. A ping sent now is answered after
        # every event already queued for this client, so its answer marks the
        # end (a fixed read timeout could stop mid-line on a loaded machine).
        try:
            s.sendall(b'{"jsonrpc":"2.0","id":99,"method":"ping"}\n')
        except OSError:
            pass  # disconnected as a slow consumer: read what it was sent
        s.settimeout(60)
        data = b""
        while b'"id":99' not in data:
            try:
                chunk = s.recv(1 << 20)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        s.close()
        got, dropped, bye = set(), [], None
        for line in data.split(b"\n")[:-1]:  # the last piece may be cut off
            if not line:
                continue
            m = json.loads(line)
            p = m.get("params", {})
            if m.get("method") == "event" and p.get("run") == run:
                got.add(p["seq"])
            elif m.get("method") == "dropped" and p.get("run") == run:
                dropped.append((p["from_seq"], p["to_seq"], p["count"]))
            elif m.get("method") == "bye":
                bye = p.get("reason")
        n_dropped = sum(d[2] for d in dropped)
        slowdown = wall / (self.clean_wall * LONG_EPOCHS / EPOCHS)
        H.report("never_reads_client", delivered=len(got), dropped=n_dropped, bye=bye,
                 ranges=len(dropped), slowdown=round(slowdown, 3))
        self.assertTrue(dropped or bye == "slow_consumer",
                        "a client that never read was neither told of drops nor disconnected")
        if bye is None:
            for e in events:
                in_range = any(a <= e["seq"] <= b for a, b, _ in dropped)
                if e["event"].startswith(("train_batch", "test_batch", "predict_batch")):
                    self.assertTrue(e["seq"] in got or in_range,
                                    "seq %d neither delivered nor reported dropped" % e["seq"])
                else:
                    self.assertIn(e["seq"], got, "lifecycle event %r was dropped" % e)
        # Generous: timings on a shared 2-core machine are noisy; a trainer
        # that waited on this client would never finish at all.
        self.assertLess(slowdown, 3.0, "a client that never reads slowed the trainer")

    def test_read_only_flood(self):
        """status, ping, runs and history requests as fast as possible, from
        two clients, for the whole run: weights unchanged."""
        run, w = self.submit()
        self.wait_training(run)
        stop = threading.Event()
        counts = []

        def flood(k):
            c = H.controller(self.d)
            n = 0
            reqs = [("ping", None), ("status", None), ("status", {"run": run}), ("runs", None),
                    ("history", {"run": run, "since_seq": 1, "limit": 200})]
            while not stop.is_set():
                batch = b""
                for j in range(50):
                    m, p = reqs[(n + j) % len(reqs)]
                    r = {"jsonrpc": "2.0", "id": n + j, "method": m}
                    if p:
                        r["params"] = p
                    batch += (json.dumps(r) + "\n").encode()
                c.send(batch)
                for j in range(50):
                    r = c.read_response(n + j, 30)
                    assert "result" in r, r
                n += 50
            counts.append(n)
            c.close()

        ts = [threading.Thread(target=flood, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        self.wait_log_final(run)
        stop.set()
        for t in ts:
            t.join(60)
        self.assertEqual(len(counts), 2, "a flooding client failed")
        self.check_run(run, w, "read_only_flood", requests=sum(counts))

    def test_control_flood(self):
        """Thousands of pause/resume/set_lr from one controller, pipelined as
        fast as it can: every request gets exactly one answer, the daemon keeps
        answering a ping, the run finishes, and its final rate is the last one
        requested."""
        run, w = self.submit()
        self.wait_training(run)
        c = H.controller(self.d)
        answers = {}
        done = threading.Event()

        def reader():
            try:
                while len(answers) < FLOOD:
                    m = c.read_response("any", 120)
                    answers[m["id"]] = m
            except Exception as e:  # noqa: BLE001
                answers["reader"] = e
            done.set()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        pinger_lat = []
        stop_ping = threading.Event()
        pinging = threading.Event()

        def pinger():
            p = self.d.connect()
            while not stop_ping.is_set():
                t0 = time.monotonic()
                p.ok("ping")
                pinger_lat.append(time.monotonic() - t0)
                pinging.set()
                time.sleep(0.01)
            p.close()

        pt = threading.Thread(target=pinger, daemon=True)
        pt.start()
        # The flood starts once the pinger is answered (over TLS under ASan
        # its handshake can outlast a flood answered in a fraction of a second).
        self.assertTrue(pinging.wait(30 * H.SLOW), "the pinger was never answered")
        last_lr = None
        t0 = time.monotonic()
        buf = b""
        for i in range(FLOOD):
            k = i % 4
            if i == FLOOD - 2:
                k = 2  # the last two are a set_lr and a resume:
            if i == FLOOD - 1:
                k = 1  # the run must not end paused
            if k == 0:
                r = {"method": "pause", "params": {"run": run}}
            elif k == 1:
                r = {"method": "resume", "params": {"run": run}}
            else:
                last_lr = 0.001 + (i % 97) * 1e-5
                r = {"method": "set_lr", "params": {"run": run, "lr": last_lr}}
            r.update(jsonrpc="2.0", id=i)
            buf += (json.dumps(r) + "\n").encode()
            if len(buf) > 8192 or i == FLOOD - 1:
                c.send(buf)
                buf = b""
        sent_s = time.monotonic() - t0
        self.assertTrue(done.wait(120 * H.SLOW), "not every request was answered")
        stop_ping.set()
        pt.join(10)
        self.assertNotIn("reader", answers, answers.get("reader"))
        self.assertEqual(sorted(answers), list(range(FLOOD)), "not exactly one answer per request")
        names = {}
        for m in answers.values():
            key = "ok" if "result" in m else m["error"]["data"]["name"]
            names[key] = names.get(key, 0) + 1
        self.assertEqual(set(names) - {"ok", "invalid_state"}, set(), names)
        c.close()
        events, wall = self.check_run(run, w, "control_flood", same_weights=False, requests=FLOOD,
                                      sent_s=round(sent_s, 2), answers=names,
                                      max_ping_s=round(max(pinger_lat), 3) if pinger_lat else None)
        self.assertLess(max(pinger_lat), 2.0 * H.SLOW, "the daemon stopped answering during the flood")
        ends = [e for e in events if e["event"] == "epoch_end"]
        # the epoch trained at float32(last_lr), Keras's float32 variable
        self.assertEqual(ends[-1]["logs"]["lr"], struct.unpack("f", struct.pack("f", last_lr))[0],
                         "the last epoch did not train at the last rate")
        applied = [e for e in events if e["event"] == "control" and e.get("action") == "set_lr"]
        self.assertEqual(applied[-1]["value"], last_lr, "the last applied set_lr is not the last requested")
        # s5: set_lr is answered when applied, with the rate applied; several
        # requests between two boundaries get the rate that won (the last).
        # So the answer to the last request must carry the last rate, and its
        # applied_at.seq must be a control event that applied that rate.
        last = answers[FLOOD - 2]["result"]
        by_seq = {e["seq"]: e for e in events}
        ev = by_seq.get(last["applied_at"]["seq"], {})
        self.assertEqual((last["lr"], ev.get("value")), (last_lr, last_lr),
                         "the answer to the last set_lr (lr %r) says %r, applied at %r, whose control "
                         "event set %r; a later control event applied %r at seq %r"
                         % (last_lr, last["lr"], last["applied_at"], ev.get("value"),
                            applied[-1]["value"], applied[-1]["seq"]))

    def test_zz_daemon_stops_cleanly(self):
        self.ctl.close()
        self.d.assert_clean_stop(self)
        Faults.d = None


if __name__ == "__main__":
    unittest.main()
