"""End to end: every `trainbus` network subcommand against the real trainbusd
(started on 127.0.0.1, port 0, a temporary state directory), including a
watch that survives a daemon restart with no gap and no duplicate, and the
documented exit codes: 1 refused by the daemon, 2 usage, 3 cannot connect."""
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from e2e_util import CLI, DaemonCase, run_state, spirals_job, wait_for
from fake_server import FakeServer, event, handshake


class CliE2E(DaemonCase):
    check_exit = False  # some tests end their daemons on purpose

    def ok(self, r):
        self.assertEqual(r.returncode, 0, "stdout: %s\nstderr: %s" % (r.stdout, r.stderr))
        return r.stdout

    def test_watch_start_cut_by_a_restart(self):
        """A daemon that goes away while watch is starting (its status call
        cut, as by a restart) is reconnected to within --reconnect, as once
        the watch follows the run; it then follows the run to its end."""
        fs = FakeServer(handshake("observer") + [
            ("expect", "status", {"run": "r1"}), ("close",),
            ("accept",)] + handshake("observer") + [
            ("expect", "status", {"run": "r1"}),
            ("reply", {"run": "r1", "state": "running", "epoch": 0, "epochs": 2, "batch": 3,
                       "last_seq": 9, "lr": 0.1}),
            ("expect", "subscribe", {"runs": ["r1"], "since_seq": 10}),
            ("reply", {"sub": 1, "next_seq": 10}),
            ("send", event("r1", 10, "epoch_end", epoch=0, logs={"loss": 0.5})),
            ("send", event("r1", 11, "state", state="finished", prev_state="running")),
            ("sleep", 0.5),
        ])
        env = dict(os.environ, TRAINBUS_TOKEN="t")
        r = subprocess.run([CLI, "watch", "--plain", "--run", "r1", "--reconnect", "10",
                            "--connect", fs.addr], env=env, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(fs.join(), [])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("reconnecting", r.stderr)
        self.assertIn("Epoch 1/2", r.stdout)

    def test_runs_status_and_state_dir_discovery(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000")
        out = self.ok(d.cli("runs"))
        self.assertRegex(out, r"(?m)^RUN\s+STATE")
        self.assertRegex(out, r"(?m)^r1\s+(queued|running)")
        self.assertRegex(self.ok(d.cli("status")), r"^run r1: (queued|running), epoch \d+/2000")
        st = json.loads(self.ok(d.cli("status", "--run", "r1", "--json")))
        self.assertEqual((st["run"], st["epochs"]), ("r1", 2000))
        runs = [json.loads(l) for l in self.ok(d.cli("runs", "--json")).splitlines()]
        self.assertEqual([r["run"] for r in runs], ["r1"])
        # No environment: address and token from the files in the state dir.
        env = dict(os.environ)
        for k in ("TRAINBUS_ADDR", "TRAINBUS_TOKEN", "TRAINBUS_STATE_DIR"):
            env.pop(k, None)
        r = subprocess.run([CLI, "status", "--state-dir", d.state_dir], env=env,
                           capture_output=True, text=True, timeout=30)
        self.ok(r)
        env["TRAINBUS_STATE_DIR"] = d.state_dir
        r = subprocess.run([CLI, "pause"], env=env, capture_output=True, text=True, timeout=30)
        # The token is --token here, not in the file: control needs it.
        self.assertIn(r.returncode, (0, 1))

    def test_set_lr_and_bad_value(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000")
        out = self.ok(d.cli("set-lr", "0.0005"))
        self.assertRegex(out, r"^r1: lr 0\.001 -> 0\.0005 at epoch \d+(, batch \d+)?$")  # no batch: between epochs
        st = json.loads(self.ok(d.cli("status", "--json")))
        # the model holds float32(0.0005), as Keras's float32 variable would
        self.assertEqual(st["lr"], struct.unpack("f", struct.pack("f", 0.0005))[0])
        # Validated by the daemon: exit 1 with its invalid_params message.
        r = d.cli("set-lr", "-1")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stderr.strip(),
                         "trainbus set-lr: params.lr: expected a finite positive number, got -1")
        r = d.cli("set-lr", "0")
        self.assertEqual(r.returncode, 1, r.stderr)
        # Not a number at all: a usage error, nothing sent.
        r = d.cli("set-lr", "fast")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1)
        r = d.cli("set-lr")
        self.assertEqual(r.returncode, 2)

    def test_pause_resume_checkpoint(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000")
        self.ok(d.cli("pause"))
        self.assertEqual(wait_for(lambda: run_state(d) == "paused"), True)
        r = d.cli("pause")
        self.assertEqual(r.returncode, 1, r.stderr)  # invalid_state
        # While paused, set_lr applies at once.
        self.assertRegex(self.ok(d.cli("set-lr", "0.01", timeout=10)), r"-> 0\.01")
        out = self.ok(d.cli("checkpoint", timeout=20))
        path = out.split("checkpoint ", 1)[1].split(" at ")[0]
        self.assertTrue(os.path.isfile(path), out)
        self.ok(d.cli("resume"))
        self.assertEqual(wait_for(lambda: run_state(d) == "running"), True)
        r = d.cli("resume")
        self.assertEqual(r.returncode, 1)
        self.assertIn("trainbus resume:", r.stderr)

    def test_watch_plain_until_stop(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000")
        w = subprocess.Popen([CLI, "watch", "--plain"], env=d.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        self.ok(d.cli("stop", "--reason", "e2e"))
        out, err = w.communicate(timeout=30)
        self.assertEqual(w.returncode, 0, err)
        self.assertRegex(out, r"(?m)^Epoch \d+/2000 - .*loss: ")
        self.assertRegex(out, r"(?m)^run r1: \w+ -> stopped")
        # The run has ended: watch says so and exits 0 at once.
        r = d.cli("watch", timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertIn("stopped", r.stdout)
        r = d.cli("stop", "--run", "r1")
        self.assertEqual(r.returncode, 1)  # a final run: invalid_state

    def test_watch_json_history_csv(self):
        d = self.daemon(*spirals_job(), "--epochs", "3")
        r = d.cli("watch", "--json", "--events", "epoch_end", "--from-seq", "1", "--run", "r1")
        self.ok(r)
        evs = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual([e["epoch"] for e in evs], [0, 1, 2])
        self.assertTrue(all(e["event"] == "epoch_end" and "loss" in e["logs"] for e in evs))
        self.assertEqual(evs, sorted(evs, key=lambda e: e["seq"]))
        wait_for(lambda: run_state(d) == "finished")
        table = self.ok(d.cli("history")).splitlines()
        self.assertRegex(table[0], r"^\s*epoch\s+loss\s+accuracy\s+val_loss")
        self.assertEqual(len(table), 4)
        csv = self.ok(d.cli("history", "--csv")).splitlines()
        self.assertTrue(csv[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy"), csv[0])
        self.assertEqual([l.split(",")[0] for l in csv[1:]], ["0", "1", "2"])
        # The CSV's numbers are exactly the watched ones.
        self.assertEqual(float(csv[1].split(",")[1]), evs[0]["logs"]["loss"])
        # every: only batches 0, 10, 20, ... of the replay.
        r = d.cli("watch", "--json", "--events", "train_batch_end", "--every", "10",
                  "--from-seq", "1")
        batches = {json.loads(l)["batch"] for l in self.ok(r).splitlines()}
        self.assertTrue(batches and all(b % 10 == 0 for b in batches), batches)

    def test_submit_and_cancel(self):
        d = self.daemon("--no-job")
        job = json.loads(subprocess.run([CLI, "train", "--demo", "spirals", "--print-job"],
                                        capture_output=True, text=True, check=True).stdout)
        job["epochs"] = 5000
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(job, f)
        try:
            run = self.ok(d.cli("submit", f.name)).strip()
            self.assertEqual(run, "r1")
            self.assertIn(wait_for(lambda: run_state(d, run) in ("running", "queued")), (True,))
            self.ok(d.cli("cancel", "--run", run, "--reason", "e2e"))
            self.assertEqual(wait_for(lambda: run_state(d, run) == "cancelled"), True)
            bad = dict(job, model={"layers": [{"type": "dense", "units": -3}]})
            with open(f.name, "w") as g:
                json.dump(bad, g)
            r = d.cli("submit", f.name)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("units", r.stderr)
            with open(f.name, "w") as g:
                g.write("{not json")
            self.assertEqual(d.cli("submit", f.name).returncode, 2)
            self.assertEqual(d.cli("submit", "/nonexistent/job.json").returncode, 2)
        finally:
            os.unlink(f.name)

    def test_error_exit_codes(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000")
        # Wrong address: nobody listens there.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        for cmd in (["status"], ["set-lr", "0.1"], ["watch"]):
            r = d.cli(*cmd, "--connect", "127.0.0.1:%d" % port)
            self.assertEqual(r.returncode, 3, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn("cannot connect", r.stderr)
        # Wrong token: refused by the daemon.
        r = d.cli("set-lr", "0.1", "--token", "wrong")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("token", r.stderr)
        # Unknown run.
        for cmd in (["status"], ["stop"], ["set-lr", "0.1"], ["history"], ["watch"]):
            r = d.cli(*cmd, "--run", "nope")
            self.assertEqual(r.returncode, 1, "%s: %s" % (cmd, r.stderr))
            self.assertIn("nope", r.stderr)
        # Usage.
        self.assertEqual(d.cli("watch", "--every", "0").returncode, 2)
        self.assertEqual(d.cli("frobnicate").returncode, 2)
        for sub in ("watch", "status", "runs", "history", "set-lr", "stop", "pause", "resume",
                    "checkpoint", "submit", "cancel", "train"):
            r = d.cli(sub, "--help")
            self.assertEqual(r.returncode, 0, sub)
            self.assertIn("usage: trainbus " + sub, r.stdout)
        self.assertIn("3 cannot connect", d.cli("--help").stdout)

    def test_watch_prints_the_test_set(self):
        """After training, the test set's evaluation: one `test:` line, as
        `trainbus train` prints it (fit's validation is not one)."""
        job = {"data": {"source": "spirals", "n_per_class": 200,
                        "test": {"source": "spirals", "n_per_class": 50, "seed": 9}},
               "model": {"layers": [{"type": "dense", "units": 32, "activation": "relu"},
                                    {"type": "dense", "units": 2, "activation": "softmax"}]},
               "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
               "epochs": 3, "validation_split": 0.2}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(job, f)
        self.addCleanup(os.unlink, f.name)
        d = self.daemon("--job", f.name)
        out = self.ok(d.cli("watch", "--plain", "--from-seq", "1", timeout=60))
        tests = [l for l in out.splitlines() if l.startswith("test:")]
        self.assertEqual(len(tests), 1, out)
        self.assertRegex(tests[0], r"^test: loss \d+\.\d{4} accuracy \d\.\d{4}$")
        self.assertLess(out.index("Epoch 3/3"), out.index("test:"))

    def test_daemon_demo_and_its_fallback(self):
        """No --job: the Fashion-MNIST demo, its test accuracy shown at the end;
        where the dataset cannot be read, the spirals with a one-line notice."""
        if os.access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", os.R_OK):
            d = self.daemon("--epochs", "1")
            out = self.ok(d.cli("watch", "--plain", "--from-seq", "1", timeout=240))
            self.assertRegex(out, r"(?m)^Epoch 1/1 - .*val_accuracy: ")
            test = [l for l in out.splitlines() if l.startswith("test:")]
            self.assertEqual(len(test), 1, out)
            acc = float(test[0].split("accuracy ")[1])
            self.assertGreater(acc, 0.75)
            self.assertTrue(any("run r1 started (demo-fashion-mnist)" in l for l in d.log), d.log)
            self.assertFalse(any("cannot be read" in l for l in d.log), d.log)
        old = os.environ.get("TRAINBUS_DEMO_DATA")
        os.environ["TRAINBUS_DEMO_DATA"] = "/nonexistent"
        try:
            d = self.daemon("--epochs", "1")
        finally:
            if old is None:
                del os.environ["TRAINBUS_DEMO_DATA"]
            else:
                os.environ["TRAINBUS_DEMO_DATA"] = old
        self.ok(d.cli("watch", "--plain", "--from-seq", "1", timeout=120))
        notices = [l for l in d.log if "Fashion-MNIST" in l]
        self.assertEqual(notices, [
            "trainbusd: Fashion-MNIST cannot be read (/nonexistent/train-images-idx3-ubyte.gz: "
            "No such file or directory; apt-get install dataset-fashion-mnist): the demo trains "
            "the spirals instead"])
        self.assertTrue(any("run r1 started (demo-spirals)" in l for l in d.log), d.log)

    def test_versions_from_one_place(self):
        """The CMake project version, everywhere: both programs' --version,
        the daemon's hello and status, the Python package."""
        version = os.environ["TB_VERSION"]
        r = subprocess.run([CLI, "--version"], capture_output=True, text=True, timeout=10)
        self.assertEqual(self.ok(r), "trainbus %s\n" % version)
        daemon = os.environ["TRAINBUSD"]
        r = subprocess.run([daemon, "--version"], capture_output=True, text=True, timeout=10)
        self.assertEqual(self.ok(r), "trainbusd %s\n" % version)
        d = self.daemon("--no-job")
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            hello = json.loads(s.makefile().readline())
        self.assertEqual(hello["params"]["server"], "trainbus/" + version)
        import trainbus
        with trainbus.Client(d.addr, d.token) as c:
            self.assertEqual(c.status()["server"], "trainbus/" + version)
        self.assertEqual(trainbus.__version__, version)

    def test_watch_survives_restart_without_gap(self):
        """A watch replaying from seq 1 while the daemon is stopped and started
        again with --resume: every event it prints is the daemon's own history,
        once each and in order."""
        d1 = self.daemon(*spirals_job())  # the spirals demo: 30 epochs
        events = "epoch_begin,epoch_end,state,control"
        w = subprocess.Popen([CLI, "watch", "--json", "--run", "r1", "--from-seq", "1",
                              "--events", events], env=d1.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        first = []
        while not any(e["event"] == "epoch_end" and e["epoch"] >= 4 for e in first):
            line = w.stdout.readline()
            self.assertTrue(line, "the watch ended early")
            first.append(json.loads(line))
        self.assertEqual(d1.stop(signal.SIGTERM), 0)  # the watch is now reconnecting
        time.sleep(0.5)
        d2 = self.daemon("--resume", state_dir=d1.state_dir, listen=d1.addr)
        # Read the rest through w.stdout itself: communicate() reads the pipe's
        # descriptor and would skip lines readline() has already buffered.
        timer = threading.Timer(120, w.kill)
        timer.start()
        out = w.stdout.read()
        err = w.stderr.read()
        w.wait()
        timer.cancel()
        self.assertEqual(w.returncode, 0, err)
        self.assertIn("reconnected", err)
        got = first + [json.loads(l) for l in out.splitlines()]
        seqs = [e["seq"] for e in got]
        self.assertEqual(seqs, sorted(set(seqs)), "duplicates or disorder")
        epochs = [e["epoch"] for e in got if e["event"] == "epoch_end"]
        self.assertEqual(epochs, list(range(30)))
        self.assertEqual(got[-1]["state"], "finished")
        # No gap: exactly the matching events of the daemon's retained history.
        hist = subprocess.run([CLI, "history", "--json", "--run", "r1"], env=d2.env(),
                              capture_output=True, text=True, timeout=30)
        self.ok(hist)
        want = [json.loads(l)["seq"] for l in hist.stdout.splitlines()
                if json.loads(l)["event"] in events.split(",")]
        self.assertEqual(seqs, want)


if __name__ == "__main__":
    unittest.main()
