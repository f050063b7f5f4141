"""End to end (issue 11, kind 2): a daemon stopped with SIGTERM or SIGKILL and
started again with --resume on the same state directory looks to its clients
like a short network blip.

- the token is generated once and kept (mode 0600); a given one wins;
- every read-only method (status of the daemon and of each run, runs,
  history in pages, subscribe with since_seq, ping) answers after the restart
  exactly what it answered before, for runs in every state;
- `trainbus watch --json --reconnect 30` and a lockstep remote callback (the
  Python PlateauLR through run_callback(state_dir=...), and the C example
  plateau_remote) live through a SIGTERM and a SIGKILL restart on port 0 (so
  the port changes: they follow the state directory): the watcher sees every
  seq once, the run's history is the uninterrupted run's, event for event, the
  callback prints what it prints against an uninterrupted run, and the final
  weights are the uninterrupted run's, byte for byte. One kill lands while the
  trainer waits for the callback's answer (the answer is lost with the daemon
  and asked for again after the restart);
- a client never presents one daemon's token to another: an explicit address
  gets no token from a state directory that belongs to another address
  (the README's order, run.sh then Ctrl-C then the tests, used to fail so).

Every client here runs with HOME set to an empty directory (e2e_util), so
nothing depends on or touches the user's ~/.trainbus."""
import json
import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from e2e_util import CLI, PLATEAU_JOB, SOURCE, Daemon, need_binaries, wait_for

sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
import trainbus  # noqa: E402

PYPATH = os.path.join(SOURCE, "clients", "python")
EXAMPLES = os.path.join(PYPATH, "examples")

# The Python callback under test: the seed's PlateauLR, holding for a while
# inside on_epoch_end at the epochs in TB_HOLD (so the test can stop the
# daemon while the trainer waits for the answer), writing a marker file first.
CALLBACK = r'''
import os, sys, time
sys.path.insert(0, os.environ["TB_EXAMPLES"])
import trainbus
from plateau_lr import PlateauLR

hold = {int(e) for e in os.environ.get("TB_HOLD", "").split(",") if e}

class Held(PlateauLR):
    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if epoch in hold:
            hold.discard(epoch)
            open(os.path.join(os.environ["TB_MARKS"], "held-%d" % epoch), "w").close()
            time.sleep(float(os.environ.get("TB_HOLD_S", "1.5")))

state = trainbus.run_callback(Held(), state_dir=os.environ["TB_STATE"], run="r1",
                              lockstep=True, reconnect=60)
print("run ended:", state, flush=True)
'''


def plateau_job(weights):
    """The e2e plateau job, slower (more rows) so restarts land mid-run, with
    the weights written at every epoch end (the file compared)."""
    job = json.loads(json.dumps(PLATEAU_JOB))
    job["data"]["n"] = 2000
    job["epochs"] = 16
    job["callbacks"] = [{"type": "ModelCheckpoint", "filepath": weights,
                         "save_weights_only": True, "save_freq": "epoch"}]
    return job


def client_env(state_dir):
    """A client's environment: only the state directory says where the daemon is."""
    e = dict(os.environ)
    for k in ("TRAINBUS_ADDR", "TRAINBUS_TOKEN"):
        e.pop(k, None)
    e["TRAINBUS_STATE_DIR"] = state_dir
    e["PYTHONPATH"] = PYPATH
    e["TB_EXAMPLES"] = EXAMPLES
    e["TB_STATE"] = state_dir
    return e


def rpc_lines(addr, requests, want):
    """Sends requests pipelined on one raw connection; returns the answers
    by id once ids in `want` are all answered."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    f = s.makefile("rb")
    s.sendall("".join(json.dumps(r) + "\n" for r in requests).encode())
    got = {}
    while not set(want) <= set(got):
        m = json.loads(f.readline())
        if "id" in m and m["id"] is not None:
            got[m["id"]] = m
    s.close()
    return got


def lockstep_subscribed(state):
    """A lockstep subscription has been made (trainbusd keeps them in
    STATE_DIR/lockstep, docs/PROTOCOL.md section 12)."""
    try:
        with open(os.path.join(state, "lockstep")) as f:
            return '"lockstep":' in f.read()
    except OSError:
        return False


def event_key(e):
    """What makes an event the same event in two runs (not its time, nor the
    connection numbers in `by`)."""
    return (e["seq"], e["event"], e.get("epoch"), e.get("batch"), e.get("state"),
            e.get("action"), e.get("value"), json.dumps(e.get("logs"), sort_keys=True))


class Restart(unittest.TestCase):
    def setUp(self):
        need_binaries(self)
        self.tmp = tempfile.mkdtemp(prefix="tb-restart-")
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.stop()

    def start(self, state, *args, token=None, keep=()):
        """A daemon on state; keep: options it is restarted with too."""
        d = Daemon(list(args) + list(keep), state_dir=state, token=token)
        d.keep = tuple(keep)
        self.daemons.append(d)
        return d

    def restart(self, d, sig, hold=None):
        """Stops d with sig and starts it again with --resume. hold: a client
        process kept stopped (SIGSTOP) while the signal is sent, so the
        trainer cannot run ahead of the restart (it waits for that lockstep
        client); it goes on (SIGCONT) before the daemon is waited for."""
        if hold is not None:
            hold.send_signal(signal.SIGSTOP)
        d.proc.send_signal(sig)
        if hold is not None:
            hold.send_signal(signal.SIGCONT)
        rc = d.proc.wait(60)
        d.thread.join(5)
        self.assertEqual(rc, -9 if sig == signal.SIGKILL else 0, "\n".join(d.log))
        return self.start(d.state_dir, "--resume", keep=d.keep)

    # ------------------------------------------------------------- token --

    def test_token_generated_once_and_kept(self):
        state = os.path.join(self.tmp, "state")
        d = self.start(state, "--no-job")
        path = os.path.join(state, "token")
        token = open(path).read().strip()
        self.assertRegex(token, r"^[0-9a-f]{48}$")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            d = self.restart(d, sig)
            self.assertEqual(open(path).read().strip(), token, "the token changed at a restart")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with trainbus.Client(d.addr, token, role="controller") as c:
                self.assertEqual(c.role, "controller")
        # A token the operator gives wins, and is what the directory says.
        d.stop()
        d = self.start(state, "--no-job", token="operator-token")
        self.assertEqual(open(path).read().strip(), "operator-token")
        with self.assertRaises(trainbus.RemoteError):
            trainbus.Client(d.addr, token, role="controller")
        # A clean stop removes the address the daemon wrote; the token stays.
        d.stop()
        self.assertFalse(os.path.exists(os.path.join(state, "address")))
        self.assertTrue(os.path.exists(path))

    # ---------------------------------------------- read-only before/after --

    def read_only_pairs(self, sig):
        state = os.path.join(self.tmp, "state")
        d = self.start(state, "--no-job")
        token = open(os.path.join(state, "token")).read().strip()
        long_job = dict(PLATEAU_JOB, epochs=2000)
        with trainbus.Client(state_dir=state, role="controller") as c:
            # r1 finished, with a set_lr on the way and a lr schedule of its own
            r1 = c.submit(dict(PLATEAU_JOB, epochs=4))
            self.assertTrue(wait_for(lambda: c.status(r1)["state"] == "finished", 60))
            # r2 stopped
            r2 = c.submit(long_job)
            self.assertTrue(wait_for(lambda: c.status(r2)["epoch"] >= 1, 60))
            c.set_lr(r2, 0.125)
            c.stop(r2)
            self.assertTrue(wait_for(lambda: c.status(r2)["state"] == "stopped", 60))
            # r3 failed: three classes in the data, two outputs in the model
            bad = json.loads(json.dumps(PLATEAU_JOB))
            bad["model"]["layers"][-1]["units"] = 2
            r3 = c.submit(bad)
            self.assertTrue(wait_for(lambda: c.status(r3)["state"] == "failed", 60))
            # r4 paused in the middle of an epoch, after a set_lr
            r4 = c.submit(long_job)
            self.assertTrue(wait_for(lambda: c.status(r4)["epoch"] >= 2, 60))
            c.set_lr(r4, 0.25)
            c.pause(r4)
            self.assertTrue(wait_for(lambda: c.status(r4)["state"] == "paused", 60))
            # r5 queued behind it, r6 cancelled in the queue
            r5 = c.submit(long_job)
            r6 = c.submit(long_job)
            c.cancel(r6)
            self.assertTrue(wait_for(lambda: c.status(r6)["state"] == "cancelled", 60))
        runs = [r1, r2, r3, r4, r5, r6]
        before = self.snapshot(d, runs)
        self.assertEqual(before["status " + r4]["state"], "paused")
        self.assertEqual(before["status " + r5]["state"], "queued")
        self.assertTrue(before["status " + r1]["history"])
        self.assertIn("lr", before["status " + r4])
        d = self.restart(d, sig)
        after = self.snapshot(d, runs)
        for k in before:
            self.assertEqual(after[k], before[k], "%s differs after the restart (%s)" % (k, sig))
        # The paused run is held where it was (its trainer retrained what
        # the checkpoint lacked, silently): later answers are still the same.
        time.sleep(1.0)
        later = self.snapshot(d, runs)
        for k in before:
            self.assertEqual(later[k], before[k], "%s changed after the restart (%s)" % (k, sig))
        # ... and it goes on when resumed, then the queued run trains.
        with trainbus.Client(d.addr, token, role="controller") as c:
            c.resume(r4)
            self.assertTrue(wait_for(lambda: c.status(r4)["last_seq"] >
                                     before["status " + r4]["last_seq"] + 5, 60))
            c.stop(r4)
            self.assertTrue(wait_for(lambda: c.status(r5)["state"] == "running", 60))
            events = c.history_all(r4)
            self.assertEqual([e["seq"] for e in events], list(range(1, len(events) + 1)))
            self.assertEqual(sum(e["event"] == "train_begin" for e in events), 1)
            c.cancel(r5)

    def snapshot(self, d, runs):
        """Every read-only answer, for comparison: the daemon's status (asked
        first, alone: `clients` counts this connection only), status of each
        run, runs, history in pages of 7 and from the middle, a replay from
        seq 1 through subscribe, and ping."""
        out = {}
        with trainbus.Client(d.addr) as c:
            wait_for(lambda: c.call("status")["clients"] == 1, 10)
            out["status"] = c.call("status")
            out["runs"] = c.call("runs")
            out["ping"] = c.call("ping")["pong"]
            for r in runs:
                out["status " + r] = c.call("status", run=r)
                pages, since = [], 0
                while True:
                    p = c.call("history", run=r, since_seq=since, limit=7)
                    pages.append(p)
                    if not p["events"]:
                        break
                    since = p["next_seq"]
                out["history " + r] = pages
                mid = max(1, out["status " + r]["last_seq"] // 2)
                out["history-mid " + r] = c.call("history", run=r, since_seq=mid, limit=5)
        for r in runs:
            last = out["status " + r]["last_seq"]
            if last == 0:
                continue
            got = rpc_lines(d.addr, [
                {"jsonrpc": "2.0", "id": 1, "method": "auth", "params": {"role": "observer"}},
                {"jsonrpc": "2.0", "id": 2, "method": "subscribe",
                 "params": {"runs": [r], "since_seq": 1}},
                {"jsonrpc": "2.0", "id": 3, "method": "history",
                 "params": {"run": r, "since_seq": last, "limit": 1}}], [1, 2, 3])
            out["subscribe " + r] = got[2]["result"]
            replay = []
            host, port = d.addr.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=30)
            f = s.makefile("rb")
            s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": "auth",
                                   "params": {"role": "observer"}}) + "\n" +
                       json.dumps({"jsonrpc": "2.0", "id": 2, "method": "subscribe",
                                   "params": {"runs": [r], "since_seq": 1}}) + "\n").encode())
            while len(replay) < last:
                m = json.loads(f.readline())
                if m.get("method") == "event":
                    replay.append(m["params"])
            s.close()
            out["replay " + r] = replay
        return out

    def test_read_only_answers_survive_sigterm(self):
        self.read_only_pairs(signal.SIGTERM)

    def test_read_only_answers_survive_sigkill(self):
        self.read_only_pairs(signal.SIGKILL)

    # ------------------------------------- watcher and lockstep callbacks --

    def paused_run(self, d, job):
        """Submits job as r1 and pauses it before its first batch (pipelined,
        so the pause is there before training is), so that the callback and
        the watcher attach before anything happens."""
        token = open(os.path.join(d.state_dir, "token")).read().strip()
        rid = 3
        reqs = [{"jsonrpc": "2.0", "id": 1, "method": "auth",
                 "params": {"role": "controller", "token": token}},
                {"jsonrpc": "2.0", "id": 2, "method": "submit", "params": {"job": job}},
                {"jsonrpc": "2.0", "id": 3, "method": "pause", "params": {"run": "r1"}}]
        got = rpc_lines(d.addr, reqs, [1, 2, 3])
        self.assertIn("result", got[2], got[2])
        while "error" in got[rid]:  # pausing before the run exists in the queue: again
            rid += 1
            got = rpc_lines(d.addr, reqs[:1] + [{"jsonrpc": "2.0", "id": rid, "method": "pause",
                                                 "params": {"run": "r1"}}], [1, rid])
        self.assertTrue(wait_for(lambda: trainbus.Client(d.addr).status("r1")["state"] ==
                                 "paused", 30))
        return token

    def scenario(self, callback, holds, kill_plan, hold_callback=False):
        """Runs the plateau job as r1 with `callback` (a function starting the
        callback process) and a watcher attached, restarting the daemon as
        kill_plan says: a list of (trigger, signal), trigger a function of
        the callback's output lines and the marker directory; hold_callback:
        keep the callback stopped around each signal (see restart). Returns the
        callback's output, the watcher's events, the run's history and the
        weights file's bytes."""
        tag = "ref" if not kill_plan else "test"
        state = os.path.join(self.tmp, tag)
        marks = os.path.join(self.tmp, tag + "-marks")
        os.makedirs(marks)
        # A submitted job writes files only beneath a data directory.
        data = os.path.join(self.tmp, tag + "-data")
        os.makedirs(data)
        weights = os.path.join(data, "final.weights")
        d = self.start(state, "--no-job", keep=("--data-dir", data))
        token = self.paused_run(d, plateau_job(weights))
        env = client_env(state)
        env["TB_MARKS"] = marks
        env["TB_HOLD"] = ",".join(str(e) for e in holds) if kill_plan else ""
        cb = callback(env)
        lines = []

        def pump():
            for line in cb.stdout:
                lines.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        watch = subprocess.Popen([CLI, "watch", "--json", "--reconnect", "30", "--run", "r1",
                                  "--from-seq", "1"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wlines, werr = [], []

        def pump_watch():
            for line in watch.stdout:
                wlines.append(line)

        def pump_watch_err():
            for line in watch.stderr:
                werr.append(line)

        for t in (pump_watch, pump_watch_err):
            threading.Thread(target=t, daemon=True).start()
        # The callback's lockstep subscription is in place (the daemon keeps
        # it in STATE_DIR/lockstep) before training goes on; the watcher
        # replays from seq 1 and cannot miss anything.
        self.assertTrue(wait_for(lambda: lockstep_subscribed(state), 60))
        with trainbus.Client(d.addr, token, role="controller") as c:
            c.resume("r1")
        for trigger, sig in kill_plan:
            since = len(lines)
            self.assertTrue(wait_for(lambda: trigger(lines, since, marks), 120, step=0.002),
                            "the kill point never came:\n" + "\n".join(lines))
            d = self.restart(d, sig, cb if hold_callback else None)
        self.assertEqual(cb.wait(180), 0, "\n".join(lines) + cb.stderr.read())
        reader.join(10)
        self.assertEqual(watch.wait(120), 0, "".join(werr))
        wait_for(lambda: watch.stdout.closed or False, 1)
        with trainbus.Client(state_dir=state) as c:
            history = c.history_all("r1")
            self.assertEqual(c.status("r1")["state"], "finished")
        with open(weights, "rb") as f:
            w = f.read()
        time.sleep(0.2)  # the pumps read the last lines
        return lines, [json.loads(l) for l in wlines], history, w, "".join(werr)

    def check_against_reference(self, ref, got):
        r_lines, r_watch, r_hist, r_w, _ = ref
        lines, watched, hist, w, werr = got
        # The callback decided exactly as against the uninterrupted run.
        self.assertEqual(lines, r_lines)
        self.assertTrue(any("has not improved" in l for l in lines), lines)
        # Same weights, byte for byte.
        self.assertTrue(w == r_w, "the final weights differ from the uninterrupted run's")
        # The run's events are the uninterrupted run's, event for event.
        self.assertEqual([event_key(e) for e in hist], [event_key(e) for e in r_hist])
        # The watcher saw every seq once, followed the daemon to its new
        # ports, and saw what history has.
        self.assertEqual([e["seq"] for e in watched], list(range(1, len(hist) + 1)))
        self.assertEqual([event_key(e) for e in watched], [event_key(e) for e in hist])
        self.assertGreaterEqual(werr.count("reconnected"), 1, werr)

    def python_callback(self, env):
        return subprocess.Popen([sys.executable, "-c", CALLBACK], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def c_callback(self, env):
        return subprocess.Popen([os.environ["PLATEAU_REMOTE"], "--run", "r1", "--reconnect", "60"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def test_watch_and_python_lockstep_callback_survive_restarts(self):
        def held(epoch):
            return lambda lines, since, marks: os.path.exists(os.path.join(marks,
                                                                           "held-%d" % epoch))

        # SIGTERM while the trainer waits for the answer at epoch 4's end (the
        # daemon lets the wait finish); SIGKILL while it waits at epoch 9's
        # end (the answer is lost; the restarted daemon asks again).
        plan = [(held(4), signal.SIGTERM), (held(9), signal.SIGKILL)]
        ref = self.scenario(self.python_callback, [], [])
        got = self.scenario(self.python_callback, [4, 9], plan)
        self.check_against_reference(ref, got)

    def test_watch_and_c_lockstep_callback_survive_restarts(self):
        def printed(n):
            return lambda lines, since, marks: len(lines) >= since + n

        # The C callback cannot be held inside its hook: it is stopped
        # (SIGSTOP) once it has printed n more epoch lines, so the trainer
        # waits for it at the next epoch end at the latest while the daemon
        # goes; it goes on (SIGCONT) as the signal is sent.
        plan = [(printed(3), signal.SIGKILL), (printed(4), signal.SIGTERM),
                (printed(4), signal.SIGKILL)]
        ref = self.scenario(self.c_callback, [], [])
        got = self.scenario(self.c_callback, [], plan, hold_callback=True)
        self.check_against_reference(ref, got)

    # ------------------------------------------- a stop cut by a restart --

    def stopped_at_batch(self, restart):
        """A run stopped at epoch 1's batch 4 (a stop sent while the trainer
        waits there in lockstep), the daemon stopped with SIGTERM right then
        when `restart`: the run's history."""
        state = os.path.join(self.tmp, "stop-%s" % restart)
        d = self.start(state, "--no-job")
        token = self.paused_run(d, dict(PLATEAU_JOB, epochs=4))
        c = trainbus.Client(d.addr, token, role="controller")
        # (The subscription leaves with the daemon: the resumed run waits
        # for it no longer than its timeout.)
        sub = c.subscribe(runs=["r1"], events=["train_batch_end"], lockstep=["train_batch_end"],
                          lockstep_timeout_ms=2000, timeout=60)
        c.resume("r1")
        for ev in sub:
            if (ev.epoch, ev.batch) == (1, 4):
                with trainbus.Client(d.addr, token, role="controller") as c2:
                    c2.stop("r1")
                if restart:
                    d.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.3)
                c.continue_("r1", ev.seq)
                break
            c.continue_("r1", ev.seq)
        c.close()
        if restart:
            self.assertEqual(d.proc.wait(60), 0, "\n".join(d.log))
            d = self.start(state, "--resume")
        with trainbus.Client(d.addr) as c:
            self.assertTrue(wait_for(lambda: c.status("r1")["state"] == "stopped", 60),
                            c.status("r1"))
            return c.history_all("r1")

    def test_stop_cut_by_a_restart_ends_as_without_it(self):
        """The stop applied, then the daemon stops at that same boundary: the
        resumed run must still validate and end the epoch, as it would have
        (its checkpoint says the stop came in the middle of the epoch)."""
        ref = self.stopped_at_batch(False)
        got = self.stopped_at_batch(True)
        self.assertEqual([event_key(e) for e in got], [event_key(e) for e in ref])
        self.assertEqual([(e["event"], e.get("epoch")) for e in got if e["event"] in
                          ("epoch_end", "train_end")], [("epoch_end", 0), ("epoch_end", 1),
                                                        ("train_end", 1)])

    # ----------------------------------- what watch shows (issue 11, kind 4) --

    def test_watch_progress_after_a_restart(self):
        """The progress bar of `trainbus watch` (on a terminal) through a
        SIGTERM restart in the middle of an epoch, and of a watch started
        after the restart in the middle of that epoch: each has the epoch's
        "Epoch 2/3" header, counts the right steps, and its time per step is
        the training's, not the daemon's downtime nor the time before the
        watch joined spread over batches it did not see."""
        state = os.path.join(self.tmp, "state")
        d = self.start(state, "--no-job")
        job = {"name": "paced", "seed": 3, "threads": 1,
               "data": {"source": "spirals", "n_per_class": 2000, "noise": 0.2, "seed": 3},
               "model": {"layers": [{"type": "dense", "units": 32, "activation": "relu"},
                                    {"type": "dense", "units": 2, "activation": "softmax"}]},
               "loss": "sparse_categorical_crossentropy", "optimizer": {"name": "adam"},
               "epochs": 3, "batch_size": 40}
        steps = 100
        token = self.paused_run(d, job)
        # A lockstep client paces training (about 5 ms a batch) and holds it
        # at batch 40 of epoch 1 while the daemon is restarted.
        held, go = threading.Event(), threading.Event()
        paced = []

        def pacer():
            with trainbus.Client(state_dir=state, role="controller") as c:
                sub = c.subscribe(runs=["r1"], events=["train_batch_end", "state"],
                                  lockstep=["train_batch_end"], lockstep_timeout_ms=20000,
                                  reconnect=60)
                for ev in sub:
                    if ev.event != "train_batch_end":
                        continue
                    paced.append((ev.epoch, ev.batch))
                    if (ev.epoch, ev.batch) == (1, 40):
                        held.set()
                        go.wait(60)
                    time.sleep(0.005)
                    if not ev.get("lockstep"):
                        continue
                    try:
                        c.continue_("r1", ev.seq)
                    except trainbus.ConnectionLost:
                        pass  # asked again after the restart if it did not apply

        threading.Thread(target=pacer, daemon=True).start()
        env = client_env(state)

        def tty_watch(*args):
            master, slave = pty.openpty()
            p = subprocess.Popen([CLI, "watch", "--run", "r1", "--reconnect", "30"] + list(args),
                                 env=env, stdin=subprocess.DEVNULL, stdout=slave,
                                 stderr=subprocess.PIPE)
            os.close(slave)
            out = []

            def pump():
                while True:
                    try:
                        b = os.read(master, 65536)
                    except OSError:
                        break
                    if not b:
                        break
                    out.append(b.decode(errors="replace"))

            threading.Thread(target=pump, daemon=True).start()
            return p, out

        w1, out1 = tty_watch("--from-seq", "1")
        self.assertTrue(wait_for(lambda: lockstep_subscribed(state), 60))
        with trainbus.Client(d.addr, token, role="controller") as c:
            c.resume("r1")
        self.assertTrue(held.wait(60))
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        go.set()  # the SIGTERM lets the lockstep wait finish, then the daemon goes
        self.assertEqual(d.proc.wait(60), 0, "\n".join(d.log))
        time.sleep(3.0)  # downtime: not training time
        d = self.start(state, "--resume")
        self.assertTrue(wait_for(lambda: (1, 60) in paced, 60))
        w2, out2 = tty_watch()  # joins epoch 2 (1-based) in its middle
        for p in (w1, w2):
            self.assertEqual(p.wait(120), 0, p.stderr.read())
        time.sleep(0.3)
        bar = re.compile(r"(\d+)/(\d+|Unknown) \[[=>.]+\] - (\d+)s (\d+)(us|ms|s)/step")

        def finals(out):
            """Each epoch's last bar (the one after which a newline came)."""
            text = "".join(out).replace("\r\n", "\n")
            lines = [seg.split("\r")[-1] for seg in text.split("\n")]
            return [l for l in lines if bar.search(l)], lines

        def per_step_ms(line):
            m = bar.search(line)
            unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(5)]
            return int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)) * unit

        f1, lines1 = finals(out1)
        self.assertEqual(len(f1), 3, lines1)
        self.assertEqual([l for l in lines1 if l.startswith("Epoch ")],
                         ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"], lines1)
        done, total, secs, ms = per_step_ms(f1[1])
        self.assertEqual((done, total), (steps, str(steps)), f1[1])
        # About 5 ms a batch; with the 3 s downtime counted it would be 35.
        self.assertLess(ms, 15, f1[1])
        self.assertGreaterEqual(ms, 3, "through the restart: " + f1[1])
        self.assertLessEqual(secs, 2, f1[1])
        f2, lines2 = finals(out2)
        self.assertEqual(lines2[0].strip(), "Epoch 2/3", lines2)
        self.assertEqual(len(f2), 2, lines2)
        done, total, secs, ms = per_step_ms(f2[0])
        self.assertEqual((done, total), (steps, str(steps)), f2[0])
        self.assertTrue(any("/Unknown" in l for l in "".join(out2).split("\r")), lines2)
        # Over the ~40 batches it watched, not the 100 of the epoch.
        self.assertGreaterEqual(ms, 3, "joined: %s (%s)" % (f2[0], paced[-120:]))
        self.assertLess(ms, 15, f2[0])
        self.assertEqual(per_step_ms(f2[1])[:2], (steps, str(steps)), f2[1])

    # ------------------------------------------------ whose token is sent --

    def test_client_never_sends_another_daemons_token(self):
        # A state directory of another daemon (run.sh's ~/.trainbus after
        # Ctrl-C): its address is not ours, its token is not ours.
        other = os.path.join(self.tmp, "other")
        os.makedirs(other)
        with open(os.path.join(other, "address"), "w") as f:
            f.write("127.0.0.1:7787\n")
        with open(os.path.join(other, "token"), "w") as f:
            f.write("0123456789abcdef-not-this-daemons\n")
        d = self.start(os.path.join(self.tmp, "state"), "--epochs", "2000")
        env = dict(os.environ, TRAINBUS_STATE_DIR=other, TRAINBUS_ADDR=d.addr)
        env.pop("TRAINBUS_TOKEN", None)
        # An observer with an explicit address: no token sent, it works.
        r = subprocess.run([CLI, "status", "--run", "r1"], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        with trainbus.Client(d.addr, state_dir=other) as c:
            self.assertEqual(c.token, None)
            self.assertEqual(c.status("r1")["run"], "r1")
        # The C library likewise (through the CLI with --connect).
        r = subprocess.run([CLI, "runs", "--connect", d.addr, "--state-dir", other], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        # Control needs the token: refused for lack of one, not for a wrong one.
        r = subprocess.run([CLI, "pause", "--run", "r1"], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("the controller role needs the control token", r.stderr)
        # When the directory is this daemon's, its token goes with its address.
        own = d.state_dir
        env["TRAINBUS_STATE_DIR"] = own
        r = subprocess.run([CLI, "pause", "--run", "r1"], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        with trainbus.Client(d.addr, role="controller", state_dir=own) as c:
            c.resume("r1")


if __name__ == "__main__":
    unittest.main()
