"""A job submitted to trainbusd with "distributed": {"ranks": N} (issue 15):
the daemon launches mpirun for it and supervises it, and the run is watched
and steered like any other (docs/DISTRIBUTED.md, "Submitted to trainbusd").

Each test starts its own trainbusd on 127.0.0.1 (ephemeral port, its own
state directory) with the mpirun options test_dist uses (--oversubscribe,
shared memory without CMA, waits that yield), drives it with the real CLI,
and kills the daemon and every process it launched by PID at the end.

  - a job submitted over the network, reading a CSV beneath --data-dir by a
    relative path, trains on 4 ranks as one run: `trainbus watch` follows it,
    `set-lr` is applied at one step and the epochs after it train at the new
    rate, `stop` ends it, mpirun and its ranks exit, the history is the whole
    run once with seq without gaps;
  - kill -9 of rank 1 fails the run within seconds with mpirun's reason
    (naming rank 1), and the daemon goes on to the next queued job;
  - what the daemon refuses at submit, each with its message: more ranks than
    --max-ranks, hosts in a network job, the memory of every rank over the
    budget, no state directory, --max-ranks 0.
"""
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import test_dist
from test_dist import CLI, TRAINBUSD, env, spirals_job

# mpi_cmd's options, before its -n: what the operator gives trainbusd.
MPIRUN_ARGS = test_dist.mpi_cmd(1, [])[1:]
MPIRUN_ARGS = MPIRUN_ARGS[:MPIRUN_ARGS.index("-n")] + MPIRUN_ARGS[MPIRUN_ARGS.index("-n") + 2:]


def rank_pids():
    """This test's ranks: processes whose environment has the marker env()
    puts there (trainbusd passes it on to mpirun, mpirun to the ranks),
    as {rank: pid}."""
    mark = ("TB_DIST_TEST=%d" % os.getpid()).encode()
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                envs = f.read().split(b"\0")
        except OSError:
            continue
        if mark not in envs:
            continue
        for e in envs:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(e.split(b"=")[1])] = int(pid)
    return out


class Daemon:
    """trainbusd in its own session, with a state directory in d."""

    def __init__(self, d, *extra, state=True):
        self.state = os.path.join(d, "state")
        self.log = os.path.join(d, "trainbusd.log")
        argv = [TRAINBUSD, "--listen", "127.0.0.1:0", "--token", "T", "--no-job"]
        argv += ["--state-dir", self.state] if state else ["--no-state"]
        for a in MPIRUN_ARGS:
            argv += ["--mpirun-arg", a]
        argv += list(extra)
        with open(self.log, "w") as f:
            self.p = subprocess.Popen(argv, stdout=f, stderr=f, env=env(),
                                      start_new_session=True)
        self.addr = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.addr is None:
            if state and os.path.exists(os.path.join(self.state, "address")):
                self.addr = True
            with open(self.log) as f:
                m = re.search(r"listening on (\S+)", f.read())
            if m and not state:
                self.addr = m.group(1)
            if self.p.poll() is not None:
                raise AssertionError("trainbusd exited: " + self.text())
            time.sleep(0.05)
        if self.addr is None:
            raise AssertionError("trainbusd did not start: " + self.text())
        self.common = (["--state-dir", self.state] if state else ["--connect", self.addr])
        self.common += ["--token", "T"]

    def text(self):
        with open(self.log) as f:
            return f.read()

    def cli(self, *argv, timeout=60):
        return subprocess.run([CLI] + list(argv) + self.common, capture_output=True, text=True,
                              timeout=timeout)

    def status(self, run):
        r = self.cli("status", "--run", run, "--json")
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def wait_state(self, run, states, timeout):
        deadline = time.monotonic() + timeout
        st = {}
        while time.monotonic() < deadline:
            st = self.status(run)
            if st.get("state") in states:
                return st
            time.sleep(0.2)
        raise AssertionError("run %s: %s after %d s, not %s; log:\n%s"
                             % (run, st.get("state"), timeout, states, self.text()[-4000:]))

    def stop(self):
        """SIGTERM (the daemon ends its mpirun), then every process of the
        session and every rank left, by PID."""
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            pass
        test_dist.kill_session(self.p.pid, *rank_pids().values())
        self.p.wait()


def write_job(d, name, job):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        json.dump(job, f)
    return path


def spirals(d, epochs, ranks, **kw):
    with open(spirals_job(d, epochs=epochs, **kw)) as f:
        job = json.load(f)
    job["distributed"] = {"ranks": ranks}
    return job


class SubmittedTest(unittest.TestCase):
    def setUp(self):
        self.d = tempfile.mkdtemp(prefix="tb_dsub")
        self.daemons = []

    def tearDown(self):
        for dm in self.daemons:
            dm.stop()
        shutil.rmtree(self.d, ignore_errors=True)

    def daemon(self, *extra, state=True):
        dm = Daemon(self.d, *extra, state=state)
        self.daemons.append(dm)
        return dm

    def submit(self, dm, job, name="job.json"):
        r = dm.cli("submit", write_job(self.d, name, job))
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip().split()[-1]

    def test_submitted_job_watched_and_steered(self):
        data = os.path.join(self.d, "data")
        os.mkdir(data)
        # two interleaved spirals as CSV, read by the ranks by a relative path
        with open(os.path.join(data, "spirals.csv"), "w") as f:
            f.write("x,y,label\n")
            import math
            for i in range(2000):
                c, t = i % 2, (i // 2) / 1000 * 3 * math.pi
                r = t / (3 * math.pi) + 0.05
                f.write("%.6f,%.6f,%d\n" % (r * math.cos(t + c * math.pi),
                                            r * math.sin(t + c * math.pi), c))
        dm = self.daemon("--max-ranks", "4", "--data-dir", data)
        job = spirals(self.d, epochs=3000, ranks=4)  # stopped long before
        job["data"] = {"source": "csv", "path": "spirals.csv", "label_column": "label",
                       "scale": "standard"}
        run = self.submit(dm, job)
        watch = subprocess.Popen([CLI, "watch", "--run", run] + dm.common,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            st = {}
            while time.monotonic() < deadline:
                st = dm.status(run)
                if st.get("state") == "running" and st.get("epoch", -1) >= 1:
                    break
                self.assertNotIn(st.get("state"), ("failed", "finished"), dm.text()[-3000:])
                time.sleep(0.2)
            self.assertEqual(st.get("state"), "running", dm.text()[-3000:])
            self.assertEqual(st.get("source"), "trainer", st)
            self.assertEqual(st.get("ranks"), 4, st)
            self.assertEqual(sorted(rank_pids()), [0, 1, 2, 3], "four ranks train it")
            r = dm.cli("set-lr", "0.0005", "--run", run)
            self.assertEqual(r.returncode, 0, r.stderr)
            m = re.search(r"at epoch (\d+)", r.stdout)  # 1-based, as the CLI prints
            self.assertIsNotNone(m, r.stdout)
            at = int(m.group(1)) - 1
            r = dm.cli("stop", "--run", run)
            self.assertEqual(r.returncode, 0, r.stderr)
            dm.wait_state(run, ("stopped",), 120)
            out, err = watch.communicate(timeout=60)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        self.assertEqual(watch.returncode, 0, err)
        self.assertIn("set_lr", out)
        self.assertIn("stopped", out)
        # mpirun and its ranks are gone
        deadline = time.monotonic() + 30
        while rank_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(rank_pids(), {}, "ranks left after the run ended")
        deadline = time.monotonic() + 30  # mpirun itself outlives its ranks a moment
        while "exited with status 0" not in dm.text() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("mpirun (4 ranks) exited with status 0", dm.text())
        r = dm.cli("history", "--run", run, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        hist = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        seqs = [h["seq"] for h in hist]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "history has a gap")
        self.assertEqual(sum(h["event"] == "train_begin" for h in hist), 1)
        ctl = [h for h in hist if h["event"] == "control" and h.get("action") == "set_lr"]
        self.assertEqual(len(ctl), 1, ctl)
        self.assertEqual(ctl[0]["epoch"], at, ctl)
        f32 = struct.unpack("f", struct.pack("f", 0.0005))[0]
        after = [h for h in hist if h["event"] == "epoch_end" and h["epoch"] > at]
        for h in after:
            self.assertEqual(h["logs"]["learning_rate"], f32, h)
        states = [h for h in hist if h["event"] == "state"]
        self.assertTrue(any("started on 4 ranks" in h.get("reason", "") for h in states), states)
        print("submitted 4-rank run %s: set_lr at epoch %d, stopped, %d events"
              % (run, at, len(hist)))

    def test_rank_killed_fails_run(self):
        dm = self.daemon("--max-ranks", "2")
        run = self.submit(dm, spirals(self.d, epochs=3000, ranks=2, n_per_class=2000))
        nxt = self.submit(dm, spirals(self.d, epochs=2, ranks=2), name="next.json")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = dm.status(run)
            if st.get("state") == "running" and st.get("epoch", -1) >= 1:
                break
            time.sleep(0.2)
        self.assertEqual(dm.status(nxt).get("state"), "queued", "one run at a time")
        pids = rank_pids()
        self.assertIn(1, pids, dm.text()[-3000:])
        t0 = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        st = dm.wait_state(run, ("failed",), 60)
        took = time.monotonic() - t0
        self.assertLess(took, 30, "the run took %.1f s to fail" % took)
        r = dm.cli("history", "--run", run, "--json")
        last = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")][-1]
        self.assertEqual(last["event"], "state", last)
        self.assertEqual(last["state"], "failed", last)
        self.assertIn("mpirun (2 ranks) exited with status", last.get("reason", ""))
        self.assertIn("rank 1", last.get("reason", ""))
        print("kill -9 of rank 1: failed in %.2f s: %s" % (took, last["reason"]))
        # the queue goes on
        dm.wait_state(nxt, ("finished",), 180)

    def test_remote_plateau_equals_local(self):
        """A lockstep remote ReduceLROnPlateau (Python, Keras's rule with
        min_delta 0: trainbus.RemoteCallback) on a submitted 4-rank run gives
        the rate trajectory of the job's own ReduceLROnPlateau on 4 ranks:
        every epoch's rate, and every epoch's logs, alike. The remote
        callback subscribes while the run waits in the queue behind another
        (the lockstep file in the state directory says it has), so no epoch
        goes by before it is there."""
        base = spirals(self.d, epochs=10, ranks=4, n_per_class=500)
        base["optimizer"] = {"name": "adam", "learning_rate": 0.05}
        local = dict(base, callbacks=[{"type": "ReduceLROnPlateau", "monitor": "val_loss",
                                       "factor": 0.5, "patience": 1, "min_delta": 0}])
        rc, out, err = test_dist.run(test_dist.mpi_cmd(4, [CLI, "train", write_job(
            self.d, "local.json", local), "--json"]))
        self.assertEqual(rc, 0, err)
        want = [e for e in test_dist.events(out) if e["event"] == "epoch_end"]

        dm = self.daemon("--max-ranks", "4")
        blocker = self.submit(dm, dict(spirals(self.d, epochs=100000, ranks=1)), "block.json")
        run = self.submit(dm, base, "remote.json")
        code = (
            "import math, sys, trainbus\n"
            "class ReduceLROnPlateau(trainbus.RemoteCallback):\n"
            "    # keras/src/callbacks/reduce_lr_on_plateau.py, mode min, min_delta 0\n"
            "    def __init__(self):\n"
            "        super().__init__(); self.best = math.inf; self.wait = 0\n"
            "    def on_epoch_end(self, epoch, logs=None):\n"
            "        cur = logs['val_loss']\n"
            "        if cur < self.best:\n"
            "            self.best = cur; self.wait = 0\n"
            "            return\n"
            "        self.wait += 1\n"
            "        if self.wait >= 1:\n"
            "            self.model.optimizer.learning_rate = logs['learning_rate'] * 0.5\n"
            "            self.wait = 0\n"
            "print(trainbus.run_callback(ReduceLROnPlateau(), run=sys.argv[1],\n"
            "      state_dir=sys.argv[2], lockstep=['epoch_end']))\n")
        cb = subprocess.Popen([sys.executable, "-c", code, run, dm.state],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TRAINBUS_TOKEN="T", PYTHONPATH=os.path.join(
                                  os.environ["TB_SOURCE_DIR"], "clients", "python")))
        try:
            lock = os.path.join(dm.state, "lockstep")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    os.path.exists(lock) and '"lockstep":' in open(lock).read()):
                time.sleep(0.05)
            self.assertIn('"lockstep":', open(lock).read())
            self.assertEqual(dm.status(run).get("state"), "queued")
            r = dm.cli("cancel", "--run", blocker)
            self.assertEqual(r.returncode, 0, r.stderr)
            out, err = cb.communicate(timeout=300)
        finally:
            if cb.poll() is None:
                cb.kill()
                cb.wait()
        self.assertEqual(cb.returncode, 0, err)
        self.assertEqual(out.strip(), "finished", err)
        r = dm.cli("history", "--run", run, "--json")
        got = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        got = [e for e in got if e["event"] == "epoch_end"]
        rates = lambda es: [e["logs"]["learning_rate"] for e in es]
        self.assertEqual(rates(got), rates(want))
        self.assertGreater(len(set(rates(want))), 1, "the rate was never reduced")
        for g, w in zip(got, want):
            self.assertEqual(g["logs"], w["logs"], "epoch %d" % w["epoch"])
        print("remote ReduceLROnPlateau on 4 ranks, rates by epoch:", rates(got))

    def test_refused_at_submit(self):
        dm = self.daemon("--max-ranks", "2", "--max-job-memory", "4M")

        def refused(job, want):
            r = dm.cli("submit", write_job(self.d, "bad.json", job))
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn(want, r.stderr)

        refused(spirals(self.d, epochs=1, ranks=3),
                "distributed.ranks: 3 ranks, more than the 2 this daemon launches a job on "
                "(--max-ranks)")
        job = spirals(self.d, epochs=1, ranks=2)
        job["distributed"]["hosts"] = ["node1:2"]
        refused(job, "distributed.hosts: a job submitted over the network runs on this "
                     "machine only")
        # one rank's estimate fits in 4 MiB, two ranks' does not
        big = spirals(self.d, epochs=1, ranks=1, n_per_class=12000)
        r = dm.cli("submit", write_job(self.d, "one.json", big))
        self.assertEqual(r.returncode, 0, r.stderr)
        big["distributed"] = {"ranks": 2}
        refused(big, "for its 2 ranks on this machine, more than the 4.00 MiB a job may use "
                     "(--max-job-memory)")
        # the ranks read the job and write checkpoints in the state directory
        stateless = self.daemon("--max-ranks", "2", state=False)
        r = stateless.cli("submit", write_job(self.d, "two.json", spirals(self.d, 1, ranks=2)))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("launching mpirun needs a state directory", r.stderr)
        none = self.daemon("--max-ranks", "0")
        r = none.cli("submit", write_job(self.d, "two.json", spirals(self.d, epochs=1, ranks=2)))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("this daemon launches no MPI jobs (--max-ranks 0)", r.stderr)
        self.assertEqual(rank_pids(), {})


if __name__ == "__main__":
    unittest.main()
