"""Keras's values, input by input (issue 11, kind 1).

Each job file under jobs/ is one input of the issue. Each is run twice: by
`trainbus train --json` (events on stdout, verbose messages between them) and
by a real trainbusd started here on 127.0.0.1:0 with a temporary --state-dir,
to which the job is submitted with `trainbus submit`; the daemon's retained
history gives the events. Both must show the value Keras 3 gives.

The reference is Keras 3's own rule, transcribed below from its source
(keras/src/callbacks/reduce_lr_on_plateau.py, the schedules in
keras/src/optimizers/schedules/learning_rate_schedule.py,
model_checkpoint.py's _get_file_path, csv_logger.py) with Keras's float32
variable for the rate, fed with the logs trainbus produced; Python's own
str.format and csv module write the file names and CSV bytes. float32
arithmetic is emulated exactly with struct: a +, -, * or / of two float32s
done in double and rounded once is the float32 result."""
import csv
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import trainbus  # clients/python

CLI = os.environ.get("TRAINBUS_CLI", "")
TRAINBUSD = os.environ.get("TRAINBUSD", "")
HERE = os.path.dirname(os.path.abspath(__file__))
FINAL = ("finished", "failed", "stopped", "cancelled")


def f32(x):
    """The float32 nearest x (inf beyond float32's range), as a Python float."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def num(v):
    """A logs value from JSON: the protocol writes non-finite numbers as strings."""
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}.get(v, v) \
        if isinstance(v, str) else v


def logs_of(e):
    return {k: num(v) for k, v in e.get("logs", {}).items()}


# ---- Keras 3's rules, transcribed ------------------------------------------------

def keras_reduce_lr(values, lr0, factor, patience, min_delta, min_lr, cooldown=0):
    """ReduceLROnPlateau (mode min) over the monitored values: the rate each
    epoch trained with (float(var)) and the messages verbose=1 prints."""
    var, best, wait, cool = f32(lr0), None, 0, 0
    md = -abs(min_delta)
    lrs, msgs = [], []
    for epoch, current in enumerate(values):
        lrs.append(var)
        if cool > 0:
            cool -= 1
            wait = 0
        if best is None or f32(current - md) < f32(best):
            best, wait = current, 0
        elif not cool > 0:
            wait += 1
            if wait >= patience:
                old_lr = var
                if old_lr > f32(min_lr):
                    new_lr = max(old_lr * factor, min_lr)
                    var = f32(new_lr)
                    msgs.append("Epoch %d: ReduceLROnPlateau reducing learning rate to %r."
                                % (epoch + 1, new_lr))
                    cool, wait = cooldown, 0
    return lrs, msgs


def keras_cosine_decay(step, initial, decay_steps, alpha=0.0):
    """CosineDecay(initial, decay_steps, alpha, warmup_target=None)(step), in
    float32 (cos evaluated in double and rounded, as trainbus does)."""
    initial, decay_steps = f32(initial), f32(decay_steps)
    step = min(f32(step), decay_steps)
    completed = f32(step / decay_steps)
    pi = f32(math.pi)
    cosine_decayed = f32(0.5 * f32(1.0 + f32(math.cos(f32(pi * completed)))))
    decayed = f32(f32(f32(1 - alpha) * cosine_decayed) + f32(alpha))
    return f32(initial * decayed)


def keras_csv(rows, sep):
    """CSVLogger.on_epoch_end over [(epoch, logs)], with Python's csv module."""
    out = io.StringIO()
    keys, writer = None, None

    class Dialect(csv.excel):
        delimiter = sep

    for epoch, logs in rows:
        if keys is None:
            keys = sorted(logs.keys())
            if not any(k.startswith("val_") for k in keys) and keys:
                keys.extend(["val_" + k for k in keys])
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=["epoch"] + keys, dialect=Dialect)
            writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, logs.get(k, "NA")) for k in keys)
        writer.writerow(row)
    return out.getvalue().encode("utf-8")


def keras_file_path(pattern, epoch, logs):
    """ModelCheckpoint._get_file_path at an epoch end."""
    return pattern.format(epoch=epoch + 1, **logs)


# ---- running jobs -----------------------------------------------------------------

class Run:
    """One run's outcome: exit code (CLI) or final state (daemon), events in
    order, the verbose messages (CLI), stderr, and the folder it ran in."""

    def __init__(self, rc, events, messages, err, folder, state=None):
        self.rc, self.events, self.messages, self.err = rc, events, messages, err
        self.folder, self.state = folder, state

    def of(self, name):
        return [e for e in self.events if e.get("event") == name]

    def epoch_logs(self):
        return [logs_of(e) for e in self.of("epoch_end")]

    def out_files(self):
        d = os.path.join(self.folder, "out")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


def copy_tree(dst):
    shutil.copytree(os.path.join(HERE, "jobs"), os.path.join(dst, "jobs"))
    return os.path.join(dst, "jobs")


class Daemon:
    """trainbusd on 127.0.0.1:0 with a temporary state directory; `cwd` is
    its data directory (--data-dir), where a submitted job's relative paths
    point and the only place its files may be."""

    def __init__(self, cwd):
        self.state_dir = tempfile.mkdtemp(prefix="tb-keras-state-")
        self.token = "keras-values"
        env = dict(os.environ)
        env.pop("TRAINBUS_TOKEN", None)
        self.proc = subprocess.Popen(
            [TRAINBUSD, "--listen", "127.0.0.1:0", "--state-dir", self.state_dir, "--token",
             self.token, "--no-job", "--data-dir", cwd], cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=env)
        self.addr, self.log = None, []
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                if self.addr is None and line.startswith("trainbusd: listening on 127."):
                    self.addr = line.split()[-1]
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(15) or self.addr is None:
            self.stop()
            raise AssertionError("trainbusd did not start:\n" + "\n".join(self.log))

    def run_job(self, job_path, folder):
        """Submits the job with the Python client (whose JSON numbers are
        exact), waits for its end, and reads its retained history."""
        with open(job_path) as f:
            job = json.load(f)
        with trainbus.Client(addr=self.addr, token=self.token, role="controller") as c:
            try:
                run = c.submit(job)
            except trainbus.RemoteError as e:
                return Run(1, [], [], str(e), folder, state="refused")
            end = time.monotonic() + 120
            st = {}
            while time.monotonic() < end:
                st = c.status(run)
                if st.get("state") in FINAL:
                    break
                time.sleep(0.05)
            events = [dict(e) for e in c.history_all(run, since_seq=0)]
        states = [e for e in events if e.get("event") == "state"]
        reason = states[-1].get("reason", "") if states else ""
        return Run(0, events, [], reason, folder, state=st.get("state"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.state_dir, ignore_errors=True)


class KerasValues(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for what, path in (("TRAINBUS_CLI", CLI), ("TRAINBUSD", TRAINBUSD)):
            if not path or not os.access(path, os.X_OK):
                raise AssertionError("%s=%r is not an executable" % (what, path))
        cls.tmp = tempfile.mkdtemp(prefix="tb-keras-")
        cls.daemon_jobs = copy_tree(os.path.join(cls.tmp, "daemon"))
        cls.daemon = Daemon(cls.daemon_jobs)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def cli_run(self, name):
        folder = copy_tree(tempfile.mkdtemp(dir=self.tmp))
        r = subprocess.run([CLI, "train", os.path.join(folder, name), "--json"],
                           capture_output=True, text=True, timeout=120)
        events, messages = [], []
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
            elif line.strip():
                messages.append(line)
        return Run(r.returncode, events, messages, r.stderr, folder)

    def daemon_run(self, name):
        """The job submitted as the file is (relative paths: the daemon's cwd)."""
        out = os.path.join(self.daemon_jobs, "out")
        shutil.rmtree(out, ignore_errors=True)
        return self.daemon.run_job(os.path.join(self.daemon_jobs, name), self.daemon_jobs)

    def cli_ok(self, name):
        run = self.cli_run(name)
        self.assertEqual(run.rc, 0, "trainbus train %s:\n%s" % (name, run.err))
        return run

    def daemon_ok(self, name):
        run = self.daemon_run(name)
        self.assertEqual(run.state, "finished", "daemon, %s: %s\n%s" %
                         (name, run.err, "\n".join(self.daemon.log)))
        return run

    # ---- 1. ReduceLROnPlateau at its floor ----------------------------------------

    def check_plateau(self, run, monitor, lr0, factor, min_delta, min_lr, want_at):
        logs = run.epoch_logs()
        self.assertEqual(len(logs), 6)
        self.assertIn("learning_rate", logs[0])
        lrs, msgs = keras_reduce_lr([l[monitor] for l in logs], lr0, factor, 1, min_delta, min_lr)
        self.assertEqual([l["learning_rate"] for l in logs], lrs, "the rate each epoch trained with")
        self.assertEqual([l["lr"] for l in logs], lrs)
        # Keras announces a reduction only while float32(rate) > float32(min_lr)
        self.assertEqual([int(m.split()[1].rstrip(":")) for m in msgs], want_at)
        if run.state is None:  # the CLI shows the messages
            self.assertEqual(run.messages, msgs)

    def check_1a(self, run):
        # the first epoch sets the best; each later one is a plateau, but only
        # the ends of epochs 2 and 3 (1-based) find float32(rate) > float32(min_lr)
        self.check_plateau(run, "val_loss", 0.01, 0.5, 100, 0.0025, [2, 3])
        if run.state is None:
            self.assertEqual(run.messages, [
                "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.004999999888241291.",
                "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.0025."])

    def test_1a_plateau_floor_cli(self):
        self.check_1a(self.cli_ok("1a_plateau_floor.json"))

    def test_1a_plateau_floor_daemon(self):
        self.check_1a(self.daemon_ok("1a_plateau_floor.json"))

    def check_1b(self, run):
        self.check_plateau(run, "loss", 0.001, 0.1, 10, 0.0001, [2, 3])
        self.assertEqual(run.epoch_logs()[-1]["learning_rate"], f32(0.0001))

    def test_1b_plateau_floor_seed_cli(self):
        self.check_1b(self.cli_ok("1b_plateau_floor_seed.json"))

    def test_1b_plateau_floor_seed_daemon(self):
        self.check_1b(self.daemon_ok("1b_plateau_floor_seed.json"))

    # ---- 2. metric names as written -----------------------------------------------

    def check_2(self, run):
        logs = run.epoch_logs()
        self.assertEqual(len(logs), 3)
        for l in logs:
            self.assertIn("acc", l)
            self.assertIn("val_acc", l)
            self.assertNotIn("accuracy", l)
            self.assertNotIn("val_accuracy", l)
        self.assertIn("acc", logs_of(run.of("train_batch_end")[0]))
        # val_acc is maximised (the compiled acc goes up): negated, it is minimised
        lrs, msgs = keras_reduce_lr([-l["val_acc"] for l in logs], 0.001, 0.5, 1, 100, 0)
        self.assertEqual([l["learning_rate"] for l in logs], lrs)
        self.assertEqual(len(msgs), 2)  # after epochs 1 and 2 (0-based)
        want = sorted(os.path.basename(keras_file_path("out/m-{epoch:02d}-{val_acc:.2f}.tbck", e, l))
                      for e, l in enumerate(logs))
        self.assertEqual(run.out_files(), want)
        self.assertTrue(want[0].startswith("m-01-"))
        if run.state is None:
            self.assertEqual([m.split(":")[0] for m in run.messages], ["Epoch 2", "Epoch 3"])
            self.assertNotIn("not available", run.err)

    def test_2_metric_names_cli(self):
        self.check_2(self.cli_ok("2_metric_names.json"))

    def test_2_metric_names_daemon(self):
        self.check_2(self.daemon_ok("2_metric_names.json"))

    # ---- 3. mode auto from the compiled metrics -----------------------------------

    def test_3_mode_auto_lr_cli(self):
        cli = self.cli_run("3_mode_auto_lr.json")
        self.assertEqual(cli.rc, 1, cli.err)
        self.assertIn('set "mode" to "max" or "min" for monitor "lr"', cli.err)
        # refused at the first epoch end (Keras raises there): no epoch ends,
        # and no train_end (Keras has no try/finally)
        self.assertTrue(cli.of("train_batch_end"))
        self.assertEqual(cli.of("epoch_end"), [])
        self.assertEqual(cli.of("train_end"), [])

    def test_3_mode_auto_lr_daemon(self):
        d = self.daemon_run("3_mode_auto_lr.json")
        self.assertEqual(d.state, "failed")
        self.assertIn('set "mode" to "max" or "min" for monitor "lr"', d.err)
        self.assertTrue(d.of("train_batch_end"))
        self.assertEqual(d.of("epoch_end"), [])

    # ---- 4. schedules accept what Keras's classes accept --------------------------

    def check_4(self, run):
        want = [keras_cosine_decay(e, 0.01, 10) for e in range(3)]
        self.assertEqual(want[0], f32(0.01))  # no warmup: the decay starts from initial_lr
        self.assertEqual([l["learning_rate"] for l in run.epoch_logs()], want)

    def test_4_cosine_no_warmup_target_cli(self):
        self.check_4(self.cli_ok("4_cosine_no_warmup_target.json"))

    def test_4_cosine_no_warmup_target_daemon(self):
        self.check_4(self.daemon_ok("4_cosine_no_warmup_target.json"))

    # ---- 5. float32 arithmetic ----------------------------------------------------

    def check_5(self, run):
        batches = [logs_of(e) for e in run.of("train_batch_end")]
        self.assertEqual(len(batches), 1, "TerminateOnNaN stops after batch 0")
        self.assertEqual(batches[0]["loss"], math.inf)  # (0 - 1e20)^2 overflows float32
        logs = run.epoch_logs()
        self.assertEqual(len(logs), 1)
        self.assertEqual(logs[0]["loss"], math.inf)  # History holds inf
        self.assertEqual(len(run.of("train_end")), 1)  # a graceful stop
        if run.state is None:
            self.assertEqual(run.messages, ["Batch 0: Invalid loss, terminating training"])

    def test_5_float32_overflow_cli(self):
        self.check_5(self.cli_ok("5_float32_overflow.json"))

    def test_5_float32_overflow_daemon(self):
        self.check_5(self.daemon_ok("5_float32_overflow.json"))

    def test_5b_float32_overflow_raise_cli(self):
        """TerminateOnNaN(raise_error=True): Keras's RuntimeError, no train_end."""
        cli = self.cli_run("5b_float32_overflow_raise.json")
        self.assertEqual(cli.rc, 1)
        self.assertIn("NaN or Inf loss encountered at batch 0. Loss value: inf. "
                      "Terminating training immediately.", cli.err)
        self.assertEqual(cli.messages, [])
        self.assertEqual(cli.of("epoch_end"), [])
        self.assertEqual(cli.of("train_end"), [])

    def test_5b_float32_overflow_raise_daemon(self):
        d = self.daemon_run("5b_float32_overflow_raise.json")
        self.assertEqual(d.state, "failed")
        self.assertIn("NaN or Inf loss encountered at batch 0. Loss value: inf.", d.err)

    # ---- 6. file names: Python's str.format ---------------------------------------

    def check_6(self, run):
        with open(os.path.join(HERE, "jobs", "6_filepath_format.json")) as f:
            patterns = [c["filepath"] for c in json.load(f)["callbacks"]]
        logs = run.epoch_logs()
        self.assertEqual(len(logs), 2)
        want = sorted({os.path.basename(keras_file_path(p, e, l))
                       for p in patterns for e, l in enumerate(logs)})
        self.assertEqual(run.out_files(), want)
        self.assertIn("m-%+.2f.tbck" % logs[0]["val_loss"], want)

    def test_6_filepath_format_cli(self):
        self.check_6(self.cli_ok("6_filepath_format.json"))

    def test_6_filepath_format_daemon(self):
        self.check_6(self.daemon_ok("6_filepath_format.json"))

    # ---- 7. CSV bytes: Python's csv module ----------------------------------------

    def check_7(self, run):
        rows = [(e["epoch"], logs_of(e)) for e in run.of("epoch_end")]
        self.assertEqual(len(rows), 4)
        self.assertNotIn("val_loss", rows[0][1])  # validation every other epoch
        for name, sep in (("log.csv", ","), ("log-e.csv", "e")):
            with open(os.path.join(run.folder, "out", name), "rb") as f:
                got = f.read()
            self.assertEqual(got, keras_csv(rows, sep), name)
            self.assertTrue(got.endswith(b"\r\n"))

    def test_7_csv_bytes_cli(self):
        self.check_7(self.cli_ok("7_csv_bytes.json"))

    def test_7_csv_bytes_daemon(self):
        self.check_7(self.daemon_ok("7_csv_bytes.json"))

    # ---- 8. the rate's name: learning_rate (Keras 3) and lr (tf.keras 2) ----------

    def check_8(self, run):
        logs = run.epoch_logs()
        # patience 2 on a rate that never changes: stops at epoch 3
        self.assertEqual(len(logs), 3)
        for l in logs:
            self.assertEqual(l["learning_rate"], f32(0.01))
            self.assertEqual(l["lr"], f32(0.01))
        self.assertEqual(run.out_files(), ["w-1e-02-1e-02.w"])
        if run.state is None:
            self.assertIn("Epoch 3: early stopping", run.messages)
            self.assertNotIn("not available", run.err)

    def test_8_learning_rate_name_cli(self):
        self.check_8(self.cli_ok("8_learning_rate_name.json"))

    def test_8_learning_rate_name_daemon(self):
        self.check_8(self.daemon_ok("8_learning_rate_name.json"))

    # ---- the callbacks' verbose messages: Keras's words and numbers ---------------

    def test_9_verbose_messages_cli(self):
        cli = self.cli_ok("9_verbose_messages.json")
        logs = cli.epoch_logs()
        path = os.path.join(cli.folder, "out/best.w")
        want, best, best_acc, best_epoch, wait, stopped = [], None, None, 0, 0, 0
        for epoch, l in enumerate(logs):
            # learning_rate_scheduler.py: the schedule's value, as Python prints
            # it; without initial_lr the schedule starts from the optimizer's
            # rate at train begin, float(the float32 variable)
            rate = f32(0.3) * 0.3 ** math.floor(epoch / 2)
            want.append("Epoch %d: LearningRateScheduler setting learning rate to %r."
                        % (epoch + 1, rate))
            self.assertEqual(l["learning_rate"], f32(rate))
            # model_checkpoint.py _should_save_model, then _save_model
            cur = l["val_loss"]
            best_str = "None" if best is None else "%.5f" % best
            if best is None or f32(cur) < f32(best):
                want.append("Epoch %d: val_loss improved from %s to %.5f, saving model to %s"
                            % (epoch + 1, best_str, cur, path))
                want.append("Epoch %d: finished saving model to %s" % (epoch + 1, path))
                best = cur
            else:
                want.append("Epoch %d: val_loss did not improve from %s" % (epoch + 1, best_str))
            # early_stopping.py, mode max from the compiled accuracy
            wait += 1
            if best_acc is None or f32(l["val_accuracy"] - 0.5) > f32(best_acc):
                best_acc, best_epoch, wait = l["val_accuracy"], epoch, 0
            elif wait >= 1 and epoch > 0:
                stopped = epoch
                break
        self.assertEqual(len(logs), stopped + 1)
        self.assertGreater(stopped, 0)
        want.append("Epoch %d: early stopping" % (stopped + 1))
        want.append("Restoring model weights from the end of the best epoch: %d." % (best_epoch + 1))
        self.assertEqual(cli.messages, want)


if __name__ == "__main__":
    unittest.main()
