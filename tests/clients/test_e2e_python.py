"""End to end: the Python package, its examples and the C example
plateau_remote against the real trainbusd.

The lockstep test is the point of RemoteCallback: the seed's plateau callback,
run remotely in lockstep, must change the learning rate exactly where a local
callback would, i.e. the epoch after the decision already trains with the new
rate (its epoch_end logs carry it). The Python and the C versions of the
callback, run against two identical deterministic runs, print the same lines."""
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from contextlib import redirect_stdout

from e2e_util import (PLATEAU_JOB, SOURCE, Daemon, need_binaries, run_state, spirals_job,
                      wait_for)

sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
sys.path.insert(0, os.path.join(SOURCE, "clients", "python", "examples"))

import trainbus  # noqa: E402


def job_daemon(job, test):
    d = Daemon(["--job", write_job(job, test)])
    test.addCleanup(d.stop)
    return d


def write_job(job, test):
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump(job, f)
    f.close()
    test.addCleanup(os.unlink, f.name)
    return f.name


class PythonE2E(unittest.TestCase):
    def setUp(self):
        need_binaries(self)

    def plateau_python(self, d):
        from plateau_lr import PlateauLR
        out = io.StringIO()
        with redirect_stdout(out):
            state = trainbus.run_callback(PlateauLR(), addr=d.addr, token=d.token, run="r1",
                                          lockstep=True)
        return state, out.getvalue()

    def epoch_logs(self, d):
        with trainbus.Client(d.addr, d.token) as c:
            return {e.epoch: e.logs for e in c.history_all("r1") if e.event == "epoch_end"}

    def paused_daemon(self, job):
        """A daemon whose run r1 (job) is held before its first epoch ends, so a
        callback attached now sees every epoch: submit and pause are sent in
        one write (pipelined), so the pause is there before training is."""
        d = Daemon(["--no-job"])
        self.addCleanup(d.stop)
        s = socket.create_connection((d.addr.rsplit(":", 1)[0], d.port))
        f = s.makefile("rb")
        req = [{"jsonrpc": "2.0", "id": 1, "method": "auth",
                "params": {"role": "controller", "token": d.token}},
               {"jsonrpc": "2.0", "id": 2, "method": "submit", "params": {"job": job}},
               {"jsonrpc": "2.0", "id": 3, "method": "pause", "params": {"run": "r1"}}]
        s.sendall("".join(json.dumps(r) + "\n" for r in req).encode())
        answers = {}
        rid = 3
        while True:  # pausing a queued run is invalid_state: ask again until it runs
            m = json.loads(f.readline())
            if "id" not in m:
                continue
            answers[m["id"]] = m
            if m["id"] == rid:
                if "queued" not in json.dumps(m.get("error", "")):
                    break
                rid += 1
                s.sendall((json.dumps({"jsonrpc": "2.0", "id": rid, "method": "pause",
                                       "params": {"run": "r1"}}) + "\n").encode())
        s.close()
        self.assertEqual(answers[2].get("result"), {"run": "r1"}, answers)
        self.assertIn("result", answers[rid], answers)
        self.assertTrue(wait_for(lambda: run_state(d) == "paused"))
        with trainbus.Client(d.addr, d.token) as c:
            self.assertEqual(
                [e.epoch for e in c.history_all("r1") if e.event == "epoch_end"], [])
        return d

    def resume_once_subscribed(self, d, lockstep=False):
        """Resumes r1 (held by paused_daemon) from a thread once the callback
        has subscribed: its lockstep subscription is in the state directory
        (docs/PROTOCOL.md section 12), or a second client is connected and
        has had a moment; a fixed delay could let a run on a loaded machine
        go by first."""
        def go():
            def ready():
                if lockstep:
                    path = os.path.join(d.state_dir, "lockstep")
                    return os.path.exists(path) and '"lockstep":' in open(path).read()
                with trainbus.Client(d.addr) as c:
                    return c.call("status")["clients"] >= 2
            wait_for(ready, 60)
            if not lockstep:
                time.sleep(0.3)
            with trainbus.Client(d.addr, d.token, role="controller") as c:
                c.resume("r1")

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t

    def test_plateau_lockstep_applies_before_next_epoch(self):
        d = self.paused_daemon(PLATEAU_JOB)
        resumer = self.resume_once_subscribed(d, lockstep=True)
        state, out = self.plateau_python(d)
        resumer.join(30)
        self.assertEqual(state, "finished", out)
        lines = out.splitlines()
        self.assertEqual(lines[0], "epoch 0: no validation data, skipped")
        halvings = [l for l in lines if "has not improved" in l]
        self.assertTrue(halvings, out)
        logs = self.epoch_logs(d)
        for l in halvings:
            epoch = int(l.split()[1].rstrip(":"))
            new_lr = float(l.rsplit("lr -> ", 1)[1])
            # Lockstep: the very next epoch trains with the new rate (a
            # halving at the last epoch has no next epoch to show it).
            if epoch + 1 in logs:
                self.assertAlmostEqual(logs[epoch + 1]["lr"], new_lr, msg=l)
            self.assertGreater(logs[epoch]["lr"], new_lr)
        return out

    def test_c_and_python_plateau_agree(self):
        py = self.test_plateau_lockstep_applies_before_next_epoch()
        d = self.paused_daemon(PLATEAU_JOB)
        c = subprocess.Popen([os.environ["PLATEAU_REMOTE"], "--connect", d.addr, "--token",
                              d.token, "--run", "r1"], stdout=subprocess.PIPE, text=True)
        self.resume_once_subscribed(d, lockstep=True).join(60)
        out, _ = c.communicate(timeout=120)
        self.assertEqual(c.returncode, 0, out)
        self.assertEqual([l for l in out.splitlines() if l.startswith("epoch ")],
                         [l for l in py.splitlines() if l.startswith("epoch ")])

    def test_logging_callback_without_lockstep(self):
        job = dict(PLATEAU_JOB, epochs=3, validation_freq=1)
        d = self.paused_daemon(job)
        p = subprocess.Popen([sys.executable, os.path.join(SOURCE, "clients", "python", "examples",
                                                           "logging_callback.py"),
                              "--connect", d.addr, "--token", d.token, "--run", "r1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ,
                                      PYTHONPATH=os.path.join(SOURCE, "clients", "python")))
        self.resume_once_subscribed(d).join(60)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        ends = [l for l in out.splitlines() if " end:" in l]
        self.assertEqual([l.split()[1] for l in ends], ["0", "1", "2"])
        self.assertIn("val_loss=", ends[0])
        batches = [l for l in out.splitlines() if " batch " in l]
        self.assertEqual(len(batches), 3 * 10)  # 300 training rows / 32 = 10 batches
        self.assertIn("run ended: finished", out)

    def test_lr_schedule_from_outside(self):
        job = dict(PLATEAU_JOB, epochs=12)
        d = self.paused_daemon(job)
        p = subprocess.Popen([sys.executable, os.path.join(SOURCE, "clients", "python", "examples",
                                                           "lr_schedule.py"),
                              "--connect", d.addr, "--token", d.token, "--every-epochs", "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ,
                                      PYTHONPATH=os.path.join(SOURCE, "clients", "python")))
        self.resume_once_subscribed(d).join(60)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        # Changes after epochs 4 and 8 are applied. The one after the last
        # epoch (12) either reaches the trainer at the boundary right after
        # epoch_end (applied at epoch 11, batch -1: the end of that epoch) or
        # finds the run ended and is refused, and the example says so
        # instead of failing; which one depends on timing.
        applied = [l for l in out.splitlines() if l.startswith("after epoch") and " -> " in l]
        if len(applied) == 3:
            self.assertIn("after epoch 12: lr 0.125 -> 0.0625 (applied at epoch 11, batch -1)",
                          out)
        else:
            self.assertEqual(len(applied), 2, out)
            self.assertIn("after epoch 12: not applied", out)
        logs = self.epoch_logs(d)
        self.assertEqual(logs[0]["lr"], 0.5)
        self.assertEqual(logs[11]["lr"], 0.5 * 0.5 ** 2)  # the third change lands after the end

    def test_client_calls_and_errors(self):
        d = Daemon(spirals_job() + ["--epochs", "2000"])
        self.addCleanup(d.stop)
        with trainbus.Client(d.addr, d.token, role="controller") as c:
            self.assertEqual(c.role, "controller")
            self.assertEqual(c.ping()["pong"], True)
            res = c.set_lr("r1", 0.001)
            self.assertEqual(res.get("lr"), 0.001)
            with self.assertRaises(trainbus.RemoteError) as cm:
                c.set_lr("r1", -1)
            self.assertEqual(cm.exception.name, "invalid_params")
            with self.assertRaises(trainbus.RemoteError) as cm:
                c.status("nope")
            self.assertEqual(cm.exception.name, "no_such_run")
            evs = []
            for ev in c.subscribe(runs=["r1"], events=["epoch_end"], timeout=10):
                evs.append(ev)
                if len(evs) == 2:
                    break
            self.assertEqual(evs[1].epoch, evs[0].epoch + 1)
            c.stop("r1")
        with self.assertRaises(trainbus.RemoteError):
            trainbus.Client(d.addr, "wrong", role="controller")
        obs = trainbus.Client(d.addr, None)  # observers need no token on loopback
        self.assertEqual(obs.role, "observer")
        with self.assertRaises(trainbus.RemoteError) as cm:
            obs.pause("r1")
        self.assertIn(cm.exception.name, ("forbidden", "unauthorized"))
        obs.close()

    def test_class_names_in_train_begin_and_status(self):
        """The issue's iris file (quoted header, quoted class names): the run's
        train_begin event and status carry the sorted names, and a restarted
        daemon still knows them from its log; a RemoteCallback sees them."""
        tmp = tempfile.mkdtemp(prefix="tb-iris-")
        names = ["setosa", "versicolor", "virginica"]
        with open(os.path.join(tmp, "iris.csv"), "w") as f:
            f.write('"sepal length (cm)","sepal width (cm)","petal length (cm)",'
                    '"petal width (cm)","species"\n')
            for i in range(60):
                k = (i * 2) % 3  # virginica comes before versicolor in the file
                f.write('%.1f,%.1f,%.1f,%.1f,"%s"\n' % (5 + k, 3.4 - k / 3, 1.4 + 2 * k,
                                                      0.2 + k, names[k]))
        job = {"data": {"source": "csv", "path": os.path.join(tmp, "iris.csv")},
               "model": {"layers": [{"type": "dense", "units": 3, "activation": "softmax"}]},
               "loss": "sparse_categorical_crossentropy", "epochs": 3}
        d = job_daemon(job, self)
        with trainbus.Client(d.addr, d.token) as c:
            begin = None
            for ev in c.subscribe(runs=["r1"], events=["train_begin"], since_seq=1, timeout=30):
                begin = ev
                break
            self.assertEqual(begin["classes"], names)
            self.assertEqual(wait_for(lambda: run_state(d) == "finished"), True)
            self.assertEqual(c.status("r1")["classes"], names)

        class Watcher(trainbus.RemoteCallback):
            def on_epoch_end(self, epoch, logs=None):
                pass
        cb = Watcher()
        self.assertEqual(trainbus.run_callback(cb, addr=d.addr, token=d.token, run="r1",
                                               lockstep=False), "finished")
        self.assertEqual(cb.classes, names)
        # A restart: the finished run's names come back from its event log.
        self.assertEqual(d.stop(), 0)
        d2 = Daemon(["--resume"], state_dir=d.state_dir)
        self.addCleanup(d2.stop)
        with trainbus.Client(d2.addr, d2.token) as c:
            self.assertEqual(c.status("r1")["classes"], names)
        # A run with numeric labels has no "classes".
        with trainbus.Client(d2.addr, d2.token, role="controller") as c:
            run = c.submit({"data": {"source": "blobs", "n": 30}, "epochs": 1,
                            "model": {"layers": [{"type": "dense", "units": 3,
                                                  "activation": "softmax"}]},
                            "loss": "sparse_categorical_crossentropy"})
            self.assertEqual(wait_for(lambda: run_state(d2, run) == "finished"), True)
            self.assertNotIn("classes", c.status(run))


if __name__ == "__main__":
    unittest.main()
