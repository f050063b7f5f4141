"""Helpers of the end-to-end tests: start the real trainbusd on 127.0.0.1
with an ephemeral port and a temporary state directory, learn its address
from its stderr line, run the real CLI, stop the daemon cleanly.

Paths come from the environment ctest sets (TRAINBUSD, TRAINBUS_CLI,
PLATEAU_REMOTE, TB_SOURCE_DIR). A missing TRAINBUSD is a failure, not a skip:
ctest registers these tests only when the trainbusd target exists."""
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

# No test depends on or touches the user's own state (~/.trainbus, what
# scripts/run.sh uses): every client these tests start, and the in-process
# Python clients, see an empty home of their own.
os.environ["HOME"] = tempfile.mkdtemp(prefix="tb-e2e-home-")
os.environ.pop("TRAINBUS_STATE_DIR", None)

TRAINBUSD = os.environ.get("TRAINBUSD", "")
CLI = os.environ.get("TRAINBUS_CLI", "")
SOURCE = os.environ.get("TB_SOURCE_DIR",
                        os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
LISTEN_RE = re.compile(r"^trainbusd: listening on (\S+)$")

# The seed's plateau job (examples/plateau_lr.c): lr too high on purpose, so
# val_loss plateaus; validation every other epoch.
PLATEAU_JOB = {
    "name": "plateau", "seed": 11, "threads": 1,
    "data": {"source": "blobs", "n": 400, "classes": 3, "features": 2, "std": 2.0, "seed": 11},
    "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                         {"type": "dense", "units": 3, "activation": "softmax"}]},
    "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
    "optimizer": {"name": "sgd", "learning_rate": 0.5},
    "epochs": 30, "batch_size": 32, "validation_split": 0.25, "validation_freq": 2,
}


def spirals_job():
    """["--job", PATH] for the spirals demo (`trainbus train --demo spirals
    --print-job`, written to a temporary file): the quick job the tests
    steer, where the built-in demo is Fashion-MNIST."""
    text = subprocess.run([CLI, "train", "--demo", "spirals", "--print-job"], check=True,
                          capture_output=True, text=True).stdout
    fd, path = tempfile.mkstemp(prefix="tb-spirals-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return ["--job", path]


def need_binaries(test):
    if not TRAINBUSD or not os.access(TRAINBUSD, os.X_OK):
        test.fail("TRAINBUSD=%r is not an executable daemon" % TRAINBUSD)
    if not CLI or not os.access(CLI, os.X_OK):
        test.fail("TRAINBUS_CLI=%r is not an executable" % CLI)


class DaemonCase(unittest.TestCase):
    """A test case whose daemons (made with self.daemon(...)) are stopped after
    each test; with check_exit, each must then exit 0."""
    check_exit = True

    def setUp(self):
        need_binaries(self)
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            rc = d.stop()
            if self.check_exit:
                self.assertEqual(rc, 0, "\n".join(d.log[-30:]))

    def daemon(self, *args, **kw):
        d = Daemon(args, **kw)
        self.daemons.append(d)
        return d


class Daemon:
    """One trainbusd process. args are extra options (e.g. --epochs 500)."""

    def __init__(self, args=(), state_dir=None, listen="127.0.0.1:0", token="e2e-token"):
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="tb-e2e-")
        self.token = token
        self.log = []
        cmd = [TRAINBUSD, "--listen", listen, "--state-dir", self.state_dir]
        if token:
            cmd += ["--token", token]
        cmd += list(args)
        env = dict(os.environ)
        env.pop("TRAINBUS_TOKEN", None)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, text=True)
        self.addr = None
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                line = line.rstrip("\n")
                self.log.append(line)
                m = LISTEN_RE.match(line)
                if m and self.addr is None and not m.group(1).startswith("unix:"):
                    self.addr = m.group(1)
                    found.set()
            found.set()

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()
        if not found.wait(15) or self.addr is None:
            self.stop()
            raise AssertionError("trainbusd did not report its address:\n" + "\n".join(self.log))

    @property
    def port(self):
        return int(self.addr.rsplit(":", 1)[1])

    def env(self, token=True):
        e = dict(os.environ)
        e["TRAINBUS_ADDR"] = self.addr
        if token and self.token:
            e["TRAINBUS_TOKEN"] = self.token
        else:
            e.pop("TRAINBUS_TOKEN", None)
        e.pop("TRAINBUS_STATE_DIR", None)
        return e

    def cli(self, *args, token=True, timeout=60, env=None):
        """Runs trainbus ARGS against this daemon; returns CompletedProcess."""
        return subprocess.run([CLI] + [str(a) for a in args], env=env or self.env(token),
                              capture_output=True, text=True, timeout=timeout)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        return self.proc.returncode


def wait_for(pred, timeout=20, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def run_state(d, run="r1"):
    r = d.cli("status", "--run", run, "--json")
    return json.loads(r.stdout).get("state") if r.returncode == 0 else None
