"""End to end: training loops of other processes on the bus (issue 14).

The real trainbusd, the real CLI (`trainbus train --connect`), the Python
Publisher driving the seed's manual loop in PyTorch (examples/
torch_manual_loop.py, Debian's python3-torch: this file runs under the system
interpreter that has it), watched and steered with the real clients.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from e2e_util import CLI, SOURCE, Daemon, need_binaries, wait_for

sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
sys.path.insert(0, os.path.join(SOURCE, "examples"))
sys.path.insert(0, os.path.join(SOURCE, "tests", "tls"))

import tls_util as T  # noqa: E402
import trainbus  # noqa: E402

EXAMPLE = os.path.join(SOURCE, "examples", "torch_manual_loop.py")
HOOKS = {"train_begin", "train_end", "epoch_begin", "epoch_end", "train_batch_begin",
         "train_batch_end", "test_begin", "test_end", "test_batch_begin", "test_batch_end",
         "predict_begin", "predict_end", "predict_batch_begin", "predict_batch_end"}

# A small spirals job: deterministic (seed, one thread), quick.
JOB = {"name": "spirals-small", "seed": 3, "threads": 1,
       "data": {"source": "spirals"},
       "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                            {"type": "dense", "units": 2, "activation": "softmax"}]},
       "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
       "optimizer": {"name": "sgd", "learning_rate": 0.1},
       "epochs": 3, "batch_size": 16, "validation_split": 0.25}
# The same data with a model slow enough (about 0.1 s an epoch) to be
# interrupted in the middle.
SLOW = dict(JOB, data={"source": "spirals", "n_per_class": 4000, "noise": 0.15},
            model={"layers": [{"type": "dense", "units": 512, "activation": "relu"},
                              {"type": "dense", "units": 512, "activation": "relu"},
                                   {"type": "dense", "units": 2, "activation": "softmax"}]},
            batch_size=32, epochs=30)


def write_json(obj, test):
    fd, path = tempfile.mkstemp(prefix="tb-trainer-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    test.addCleanup(os.unlink, path)
    return path


def hook_events(events):
    """(event, epoch, batch, logs) of the hook events, as a local run prints
    them (--json) and the daemon keeps them."""
    out = []
    for e in events:
        name = e["event"]
        if name not in HOOKS:
            continue
        batch = e.get("batch", -1) if "batch" in name else -1
        epoch = e.get("epoch", -1) if name.startswith(("epoch", "train_batch", "test")) else None
        out.append((name, epoch, batch, dict(e.get("logs") or {})))
    return out


def local_json_events(job_path, *extra):
    r = subprocess.run([CLI, "train", job_path, "--json", *extra], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


class TrainerE2E(unittest.TestCase):
    def setUp(self):
        need_binaries(self)

    def daemon(self, *args, **kw):
        d = Daemon(["--no-job", *args], **kw)
        self.addCleanup(d.stop)
        return d

    def history(self, d, run="r1"):
        with trainbus.Client(d.addr, d.token) as c:
            try:
                return c.history_all(run)
            except trainbus.RemoteError:  # not attached yet
                return []

    def clients(self, d):
        with trainbus.Client(d.addr, d.token) as c:
            return c.status()["clients"]

    def example(self, d, *args):
        p = subprocess.Popen([sys.executable, EXAMPLE, "--connect", d.addr, "--token", d.token,
                              *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        first = p.stdout.readline().split()
        self.assertEqual(first[:1], ["run"], p.stderr.read() if p.poll() is not None else first)
        return p, first[1]

    # -- the PyTorch loop through the Python Publisher -------------------

    def test_torch_loop_watched_and_steered(self):
        d = self.daemon()
        p, run = self.example(d, "--epochs", "100000", "--batch-sleep", "0.002")
        # watch shows it, like a daemon-trained run (source aside)
        w = subprocess.Popen([CLI, "watch", "--run", run, "--json"], env=d.env(),
                             stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: w.poll() is None and w.kill())
        # Read all it prints (a pipe left full would block it, and its exit).
        lines = []
        def pump():
            for line in w.stdout:
                lines.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        self.assertTrue(wait_for(lambda: len(lines) >= 6, timeout=60))
        seen = [json.loads(line) for line in lines[:6]]
        self.assertTrue(all(e["run"] == run and e["source"] == "trainer" for e in seen), seen)
        self.assertIn("train_batch_end", [e["event"] for e in seen])
        runs = json.loads(d.cli("runs", "--json").stdout.splitlines()[0])
        self.assertEqual((runs["run"], runs["state"], runs["source"]), (run, "running", "trainer"))

        # set-lr: applied by the torch optimizer at the next batch, the reply says where
        r = d.cli("set-lr", "0.005", "--run", run)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("-> 0.005 at epoch", r.stdout)
        self.assertTrue(wait_for(lambda: any(e["event"] == "train_batch_end" and
                                             e["logs"]["lr"] == 0.005 for e in self.history(d, run))))
        with trainbus.Client(d.addr, d.token, role="controller") as c:
            res = c.set_lr(run, 0.004)
        at = res["applied_at"]
        self.assertEqual((res["old"], res["lr"]), (0.005, 0.004))
        evs = wait_for(lambda: [e for e in self.history(d, run) if e["seq"] > at["seq"] + 4])
        self.assertTrue(evs)
        hist = self.history(d, run)
        ctl = [e for e in hist if e["seq"] == at["seq"]][0]
        self.assertEqual((ctl["event"], ctl["action"], ctl["epoch"], ctl.get("batch", -1)),
                         ("control", "set_lr", at["epoch"], at["batch"]))
        before = [e for e in hist if e["event"] == "train_batch_end" and e["seq"] < at["seq"]][-1]
        after = [e for e in hist if e["event"] == "train_batch_end" and e["seq"] > at["seq"]][0]
        if at["batch"] >= 0:  # applied after that batch (else between epochs)
            self.assertEqual(before["batch"], at["batch"])
        self.assertEqual(before["logs"]["lr"], 0.005)  # the batch before still had the old rate
        self.assertEqual(after["logs"]["lr"], 0.004)   # the next one trains with the new

        # stop: Keras's semantics, the epoch ends after the current batch
        r = d.cli("stop", "--run", run)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(p.wait(60), 0, p.stderr.read())
        self.assertEqual(w.wait(30), 0)
        reader.join(10)
        self.assertEqual(json.loads(lines[-1])["state"], "stopped")
        hist = self.history(d, run)
        stop = [e for e in hist if e["event"] == "control" and e["action"] == "stop"][0]
        rest = [e["event"] for e in hist if e["seq"] > stop["seq"] and e["event"] in HOOKS]
        last = [e["event"] for e in hist if e["seq"] < stop["seq"] and e["event"] in HOOKS][-1]
        # Where Keras's stop_training set at that hook leads: after a batch,
        # the epoch ends; after epoch_end, no epoch follows; after
        # epoch_begin, the epoch trains one batch.
        expect = {"train_batch_end": ["epoch_end", "train_end"], "epoch_end": ["train_end"],
                  "epoch_begin": ["train_batch_begin", "train_batch_end", "epoch_end",
                                  "train_end"]}[last]
        self.assertEqual(rest, expect)
        self.assertEqual(stop.get("batch", -1), -1 if last != "train_batch_end" else
                         [e for e in hist if e["seq"] < stop["seq"]
                          and e["event"] == "train_batch_end"][-1]["batch"])
        self.assertEqual(hist[-1]["state"], "stopped")
        seqs = [e["seq"] for e in hist]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))  # no gap, no duplicate

    def test_torch_remote_plateau_in_lockstep_equals_local(self):
        d = self.daemon()
        local = subprocess.run([sys.executable, EXAMPLE, "--connect", d.addr, "--token", d.token,
                                "--epochs", "7", "--local-plateau"], capture_output=True,
                               text=True, timeout=120)
        self.assertEqual(local.returncode, 0, local.stderr)
        p, run = self.example(d, "--epochs", "7", "--wait-lockstep", "20")
        from torch_manual_loop import PlateauLR
        cb = PlateauLR(patience=1, factor=0.5, min_delta=10.0, min_lr=0.05)
        state = trainbus.run_callback(cb, addr=d.addr, token=d.token, run=run,
                                      lockstep=["epoch_end"])
        out, err = p.communicate(timeout=120)
        self.assertEqual((p.returncode, state), (0, "finished"), err)
        lines = lambda text: [l for l in text.splitlines() if l.startswith(("epoch", "weights"))]
        self.assertEqual(lines(out), lines(local.stdout))
        rates = [float(l.split()[-1]) for l in lines(out) if l.startswith("epoch")]
        self.assertEqual(rates, [0.5, 0.25, 0.125, 0.0625, 0.05, 0.05, 0.05])

    def test_torch_loop_goes_on_across_daemon_restarts(self):
        """The Python Publisher under a daemon SIGKILLed and SIGTERMed and
        restarted with --resume on another port: it finds the daemon again
        through the state directory, attaches its run again by itself, and the
        run holds every batch of the loop once, in order; set-lr and stop
        still reach it."""
        sd = tempfile.mkdtemp(prefix="tb-trainer-py-")
        d = Daemon(["--no-job"], state_dir=sd, listen="127.0.0.1:0")
        self.addCleanup(lambda: d.stop())
        p = subprocess.Popen([sys.executable, EXAMPLE, "--state-dir", sd, "--epochs", "100000",
                              "--batch-sleep", "0.002"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        run = p.stdout.readline().split()[1]
        for sig in (signal.SIGKILL, signal.SIGTERM):
            n = len(self.history(d, run))
            self.assertTrue(wait_for(lambda: len(self.history(d, run)) > n + 40, timeout=60))
            d.stop(sig)
            time.sleep(0.3)  # the loop goes on meanwhile, queueing
            d = Daemon(["--no-job", "--resume"], state_dir=sd, listen="127.0.0.1:0")
            n = len(self.history(d, run))
            self.assertTrue(wait_for(lambda: len(self.history(d, run)) > n + 40, timeout=60),
                            "the publisher did not attach again")
            self.assertIsNone(p.poll())
        r = d.cli("set-lr", "0.004", "--run", run)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(d.cli("stop", "--run", run).returncode, 0)
        self.assertEqual(p.wait(60), 0, p.stderr.read())
        hist = self.history(d, run)
        self.assertEqual([e["seq"] for e in hist], list(range(1, len(hist) + 1)))
        batches = [(e["epoch"], e["batch"]) for e in hist if e["event"] == "train_batch_end"]
        # Two batches an epoch: every one once, in order, up to the stop.
        self.assertEqual(batches, [(k // 2, k % 2) for k in range(len(batches))])
        self.assertEqual([e["state"] for e in hist if e["event"] == "state"],
                         ["running", "stopping", "stopped"])
        self.assertIn(0.004, [e["logs"]["lr"] for e in hist if e["event"] == "train_batch_end"])

    # -- the Keras callback ------------------------------------------------

    def test_keras_callback_publishes_and_applies_controls(self):
        """keras_callback under a stand-in for keras.callbacks.Callback
        (Keras itself is not installable here: no PyPI, no Debian package),
        driven the way Keras's fit drives callbacks: set_model, params, the
        hooks in order. A remote set-lr reaches model.optimizer.learning_rate
        (a variable assigned, as Keras 3's) at the next batch boundary, stop
        sets model.stop_training; importing trainbus imported no Keras."""
        self.assertNotIn("keras", sys.modules)
        self.assertNotIn("tensorflow", sys.modules)
        d = self.daemon()

        class Variable:
            def __init__(self, v):
                self.v = v

            def assign(self, v):
                self.v = float(v)

            def numpy(self):
                return self.v

        class Callback:  # keras.callbacks.Callback's surface that callbacks use
            def __init__(self):
                self.model, self.params = None, {}

            def set_model(self, model):
                self.model = model

            def set_params(self, params):
                self.params = params

        class Model:
            name = "stand-in"
            stop_training = False

            class optimizer:
                learning_rate = Variable(0.01)

        model = Model()
        cb = trainbus.keras_callback(base=Callback, addr=d.addr, token=d.token)
        self.assertIsInstance(cb, Callback)
        cb.set_model(model)
        cb.set_params({"epochs": 1000, "steps": 5})
        cb.on_train_begin({})
        run = cb.publisher.run
        seen_lr, stopped_at = [], None
        setter = None
        for epoch in range(1000):
            cb.on_epoch_begin(epoch, {})
            for b in range(5):
                cb.on_train_batch_begin(b, {})
                seen_lr.append(model.optimizer.learning_rate.v)
                cb.on_train_batch_end(b, {"loss": 1.0 / (1 + b)})
                if setter is None and epoch == 2:
                    setter = threading.Thread(target=lambda: d.cli("set-lr", "0.005", "--run",
                                                                   run))
                    setter.start()
                if model.stop_training:
                    break
            cb.on_epoch_end(epoch, {"loss": 0.5})
            if model.optimizer.learning_rate.v == 0.005 and stopped_at is None:
                self.assertEqual(d.cli("stop", "--run", run).returncode, 0)
                stopped_at = epoch
            if model.stop_training:
                break
            time.sleep(0.01)
        cb.on_train_end({})
        cb.finish()
        setter.join()
        self.assertIsNotNone(stopped_at)
        self.assertTrue(model.stop_training)
        self.assertEqual(seen_lr[0], 0.01)
        self.assertEqual(seen_lr[-1], 0.005)
        hist = self.history(d, run)
        ctl = [e for e in hist if e["event"] == "control"]
        self.assertEqual([c["action"] for c in ctl], ["set_lr", "stop"])
        self.assertEqual((ctl[0]["value"], ctl[0]["old"]), (0.005, 0.01))
        self.assertEqual(hist[-1]["state"], "stopped")
        self.assertEqual(hist[0]["source"], "trainer")
        names = [e["event"] for e in hist if e["event"] in HOOKS]
        self.assertEqual(names[:2], ["train_begin", "epoch_begin"])
        self.assertEqual(names[-2:], ["epoch_end", "train_end"])
        runs = json.loads(d.cli("status", "--run", run, "--json").stdout)
        self.assertEqual((runs["name"], runs["epochs"], runs["steps"]), ("stand-in", 1000, 5))

    # -- over TLS, with the trainer token -----------------------------------

    def test_trainers_over_tls_with_the_trainer_token(self):
        """`trainbus train --connect tls://...` and the Python Publisher take
        the same TLS options as the other clients (--cacert / cafile=), and
        the trainer token: the run is published and steered over TLS. The
        observer token cannot publish; an untrusted server is refused
        promptly."""
        tt, ot = "trainer-token-0123456789", "observer-token-0123456789"
        d = self.daemon("--trainer-token", tt, "--observer-token", ot, *T.daemon_args())
        self.assertTrue(d.addr.startswith("tls://127.0.0.1:"), d.addr)
        ca = T.path("ca.pem")
        job = write_json(JOB, self)
        local = local_json_events(job)
        env = dict(d.env(token=False))
        env.pop("TRAINBUS_TOKEN", None)
        r = subprocess.run([CLI, "train", job, "--connect", d.addr, "--token", tt, "--cacert", ca,
                            "--verbose", "0"], env=env, capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("publishing as run r1", r.stderr)
        with trainbus.Client(d.addr, d.token, cafile=ca) as c:
            hist = c.history_all("r1")
        self.assertEqual(hook_events(hist), hook_events(local))
        self.assertEqual(hist[-1]["state"], "finished")
        # The Python Publisher over TLS, steered by set-lr over TLS.
        rates = []
        pub = trainbus.Publisher(addr=d.addr, token=tt, cafile=ca, name="tls-loop",
                                 get_lr=lambda: rates[-1] if rates else 0.1,
                                 set_lr=rates.append)
        self.assertEqual(pub.run, "r2")
        answers = []
        setter = threading.Thread(target=lambda: answers.append(
            d.cli("set-lr", "0.05", "--run", "r2", "--cacert", ca)))
        pub.on_train_begin()
        epoch = 0
        while epoch < 2000 and 0.05 not in rates:
            pub.on_epoch_begin(epoch)
            pub.on_train_batch_begin(0)
            pub.on_train_batch_end(0, {"loss": 1.0})
            pub.on_epoch_end(epoch, {"loss": 1.0})
            if epoch == 3:
                setter.start()
            epoch += 1
            time.sleep(0.005)
        setter.join(60)
        pub.on_train_end()
        pub.finish()
        self.assertIn(0.05, rates)
        answer = answers[0]
        self.assertEqual(answer.returncode, 0, answer.stderr)
        self.assertIn("-> 0.05 at epoch", answer.stdout)
        self.assertEqual(pub.stats["rejected"], 0, list(pub.errors))
        # The observer token grants no trainer role: refused at auth.
        with self.assertRaises(trainbus.RemoteError) as cm:
            trainbus.Publisher(addr=d.addr, token=ot, cafile=ca)
        self.assertEqual(cm.exception.name, "forbidden", str(cm.exception))
        r = subprocess.run([CLI, "train", job, "--connect", d.addr, "--token", ot, "--cacert", ca,
                            "--verbose", "0"], env=env, capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("the observer token grants the observer role, not trainer", r.stderr)
        # Without the CA: the server is not trusted, promptly (exit 3).
        t0 = time.monotonic()
        r = subprocess.run([CLI, "train", job, "--connect", d.addr, "--token", tt, "--verbose",
                            "0"], env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("certificate", r.stderr)
        self.assertLess(time.monotonic() - t0, 10)
        with trainbus.Client(d.addr, d.token, cafile=ca) as c:
            self.assertEqual([x["run"] for x in c.runs()], ["r1", "r2"])

    # -- trainbus train --connect ----------------------------------------

    def test_cli_connect_same_events_and_weights_as_local(self):
        d = self.daemon()
        job = write_json(JOB, self)
        tmp = tempfile.mkdtemp(prefix="tb-trainer-w-")
        local = local_json_events(job, "--save-weights", os.path.join(tmp, "local.tbw"))
        weights = []
        for k, observers in enumerate((0, 8)):
            watchers = [subprocess.Popen([CLI, "watch", "--json"], env=d.env(),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for _ in range(observers)]
            for w in watchers:
                self.addCleanup(lambda w=w: w.poll() is None and w.kill())
            if observers:
                wait_for(lambda: self.clients(d) >= observers)
            path = os.path.join(tmp, "w%d.tbw" % k)
            r = d.cli("train", job, "--connect", d.addr, "--verbose", "0", "--save-weights", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            run = "r%d" % (k + 1)
            hist = self.history(d, run)
            self.assertEqual(hook_events(hist), hook_events(local))
            self.assertTrue(all(e["source"] == "trainer" for e in hist))
            self.assertEqual([e["state"] for e in hist if e["event"] == "state"],
                             ["running", "finished"])
            with open(path, "rb") as f:
                weights.append(f.read())
            for w in watchers:
                w.kill()
        with open(os.path.join(tmp, "local.tbw"), "rb") as f:
            self.assertEqual(weights, [f.read()] * 2)

    def test_cli_connect_pause_resume_checkpoint(self):
        """pause, resume and checkpoint of a `trainbus train --connect` run
        reach its loop: paused and running again (state events), and a
        checkpoint the loop wrote in the job's checkpoint_dir, its path in
        the answer; a job without checkpoint_dir refuses checkpoint."""
        d = self.daemon()
        ck = tempfile.mkdtemp(prefix="tb-trainer-ck-")
        job = write_json(dict(SLOW, checkpoint_dir=ck), self)
        t = subprocess.Popen([CLI, "train", job, "--connect", d.addr, "--verbose", "0"],
                             env=d.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        self.addCleanup(lambda: t.poll() is None and t.kill())
        self.assertTrue(wait_for(lambda: any(e["event"] == "epoch_end"
                                             for e in self.history(d)), timeout=60))
        self.assertEqual(d.cli("pause", "--run", "r1").returncode, 0)
        self.assertTrue(wait_for(lambda: json.loads(d.cli("status", "--run", "r1", "--json")
                                                    .stdout)["state"] == "paused"))
        n = len(self.history(d))
        time.sleep(0.3)
        self.assertEqual(len(self.history(d)), n)  # nothing trains while paused
        r = d.cli("checkpoint", "--run", "r1")  # applied while paused, as a daemon run's
        self.assertEqual(r.returncode, 0, r.stderr)
        path = r.stdout.split("checkpoint ", 1)[1].split(" at epoch")[0]
        self.assertTrue(path.startswith(ck) and os.path.exists(path), r.stdout)
        self.assertEqual(d.cli("resume", "--run", "r1").returncode, 0)
        self.assertTrue(wait_for(lambda: len(self.history(d)) > n + 10))
        self.assertEqual(d.cli("stop", "--run", "r1").returncode, 0)
        _, err = t.communicate(timeout=120)
        self.assertEqual(t.returncode, 0, err)
        hist = self.history(d)
        self.assertEqual([e["state"] for e in hist if e["event"] == "state"],
                         ["running", "paused", "running", "stopping", "stopped"])
        ctl = [e for e in hist if e["event"] == "control"]
        self.assertEqual([e["action"] for e in ctl], ["pause", "checkpoint", "resume", "stop"])
        self.assertEqual(ctl[1]["reason"], "wrote " + path)
        # Without a checkpoint_dir the run takes no checkpoint request.
        t = subprocess.Popen([CLI, "train", write_json(SLOW, self), "--connect", d.addr,
                              "--verbose", "0"], env=d.env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: t.poll() is None and t.kill())
        self.assertTrue(wait_for(lambda: bool(self.history(d, "r2")), timeout=60))
        r = d.cli("checkpoint", "--run", "r2")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("nowhere to write checkpoints", r.stderr)
        self.assertEqual(d.cli("stop", "--run", "r2").returncode, 0)
        self.assertEqual(t.wait(120), 0)

    def test_trainer_sigkilled_and_restarted_with_its_run(self):
        d = self.daemon("--trainer-timeout-ms", "60000")
        ck = tempfile.mkdtemp(prefix="tb-trainer-ck-")
        job = write_json(dict(SLOW, checkpoint_dir=ck), self)
        local = local_json_events(write_json(SLOW, self))
        t = subprocess.Popen([CLI, "train", job, "--connect", d.addr, "--verbose", "0"],
                             env=d.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.assertTrue(wait_for(lambda: any(e["event"] == "epoch_end" and e["epoch"] >= 3
                                             for e in self.history(d)), timeout=60))
        self.assertIsNone(t.poll())
        t.send_signal(signal.SIGKILL)
        t.wait()
        self.assertTrue(wait_for(lambda: json.loads(d.cli("status", "--run", "r1", "--json")
                                                    .stdout)["state"] == "detached"))
        r = d.cli("train", job, "--connect", d.addr, "--verbose", "0", "--run", "r1",
                  "--resume", ck, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        hist = self.history(d)
        seqs = [e["seq"] for e in hist]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(hook_events(hist), hook_events(local))  # no gap, no duplicate
        self.assertEqual([e["state"] for e in hist if e["event"] == "state"],
                         ["running", "detached", "running", "finished"])

    def test_daemon_restarted_under_a_connected_trainer(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with self.subTest(signal=sig):
                sd = tempfile.mkdtemp(prefix="tb-trainer-sd-")
                d = Daemon(["--no-job"], state_dir=sd, listen="127.0.0.1:0")
                job = write_json(SLOW, self)
                local = local_json_events(job)
                env = dict(d.env(), TRAINBUS_TOKEN=d.token)
                env.pop("TRAINBUS_ADDR")  # found in the state directory, read again on reconnect
                t = subprocess.Popen([CLI, "train", job, "--state-dir", sd, "--verbose", "0"],
                                     env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                self.addCleanup(lambda: t.poll() is None and t.kill())
                self.assertTrue(wait_for(lambda: any(e["event"] == "epoch_end"
                                                     for e in self.history(d)), timeout=60))
                self.assertIsNone(t.poll())
                d.stop(sig)
                d = Daemon(["--no-job", "--resume"], state_dir=sd, listen="127.0.0.1:0")
                self.addCleanup(d.stop)
                _, err = t.communicate(timeout=300)
                self.assertEqual(t.returncode, 0, err)
                self.assertIn("attached again", err)
                hist = self.history(d)
                seqs = [e["seq"] for e in hist]
                self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
                self.assertEqual(hook_events(hist), hook_events(local))
                self.assertEqual(hist[-1]["state"], "finished")
                d.stop()


if __name__ == "__main__":
    unittest.main()
