"""Helpers of the bridge's end-to-end tests: real nats-server and mosquitto
processes on loopback ports with their own configuration and store
directories, the real trainbusd and trainbus-bridge, all stopped by PID.

Paths come from the environment ctest sets (TRAINBUSD, TRAINBUS_BRIDGE,
TRAINBUS_CLI, TB_SOURCE_DIR). A missing server package is a skip (exit 77
from the test file's main), said so; a missing trainbus binary is a failure.
"""
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SOURCE = os.environ.get("TB_SOURCE_DIR",
                        os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))

import trainbus  # noqa: E402
import trainbus.nats as tn  # noqa: E402

TRAINBUSD = os.environ.get("TRAINBUSD", "")
BRIDGE = os.environ.get("TRAINBUS_BRIDGE", "")
CLI = os.environ.get("TRAINBUS_CLI", "")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TOKEN = "bridge-e2e-token"
SANITIZED = os.environ.get("TB_SANITIZED") == "1"
# Everything takes longer under ASan.
SLOW = 3.0 if SANITIZED else 1.0


def missing_packages(*names):
    """The server programs a test file needs that are not installed."""
    have = {"nats-server": os.access(NATS_SERVER, os.X_OK),
            "mosquitto": os.access(MOSQUITTO, os.X_OK),
            "mosquitto_sub": shutil.which("mosquitto_sub") is not None,
            "mosquitto_rr": shutil.which("mosquitto_rr") is not None,
            "mosquitto_passwd": shutil.which("mosquitto_passwd") is not None,
            "openssl": shutil.which("openssl") is not None}
    return [n for n in names if not have.get(n)]


def main(*needs):
    """unittest.main, or exit 77 (skipped) when a server package is missing."""
    import unittest
    gone = missing_packages(*needs)
    if gone:
        print("skipped: not installed: %s (scripts/setup.sh installs them)" % ", ".join(gone))
        sys.exit(77)
    for path, what in ((TRAINBUSD, "TRAINBUSD"), (BRIDGE, "TRAINBUS_BRIDGE")):
        if not path or not os.access(path, os.X_OK):
            print("%s=%r is not an executable" % (what, path))
            sys.exit(1)
    unittest.main(verbosity=2)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|UndefinedBehavior)Sanitizer|runtime error:")


def stop_all(test, procs):
    """Stops procs (newest first) and fails test if any of them (the ASan
    build's trainbusd and trainbus-bridge) reported a sanitizer finding."""
    for p in reversed(procs):
        p.stop()
    bad = [(p.name, [l for l in p.log if SANITIZER_RE.search(l)][:3]) for p in procs
           if any(SANITIZER_RE.search(l) for l in p.log)]
    if bad:
        test.fail("sanitizer reports: %s\n%s" % (bad, "\n".join(
            "\n".join(p.log[-60:]) for p in procs if p.name == bad[0][0])))


def wait_for(pred, timeout=20.0, step=0.05):
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def report(name, **values):
    """One line the test log keeps (ctest --output-on-failure, or -V)."""
    print("REPORT %s %s" % (name, json.dumps(values, sort_keys=True)), file=sys.stderr)


def _die_with_parent():
    """In the child, before exec: SIGKILL when the test process goes, even
    killed by ctest's timeout, so no server outlives its test."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    """A child process whose stderr (and stdout) lines are kept in .log."""

    def __init__(self, cmd, env=None, name="proc"):
        self.cmd = [str(c) for c in cmd]
        self.env = env
        self.name = name
        self.log = []
        self.proc = None
        self.start()

    def start(self):
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, text=True, errors="replace",
                                     preexec_fn=_die_with_parent)
        self.thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc):
        for line in proc.stdout:
            self.log.append(line.rstrip("\n"))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def kill(self):
        return self.stop(signal.SIGKILL)

    def wait(self, timeout):
        """Waits for the process to exit by itself; its exit status, once
        every line it wrote is in .log (the pump has read to the end)."""
        rc = self.proc.wait(timeout)
        self.thread.join(5)
        return rc

    def wait_log(self, pattern, timeout=20.0, start=0):
        rx = re.compile(pattern)
        found = wait_for(lambda: any(rx.search(l) for l in self.log[start:]), timeout)
        if not found:
            raise AssertionError("%s never logged /%s/; log:\n%s"
                                 % (self.name, pattern, "\n".join(self.log[-40:])))

    def text(self):
        return "\n".join(self.log)


# ------------------------------------------------------------------ brokers --

def certs(dirpath):
    """A self-signed certificate for 127.0.0.1 (also the CA to trust)."""
    cert, key = os.path.join(dirpath, "cert.pem"), os.path.join(dirpath, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _nkey(raw):
    c = _crc16(raw)
    return base64.b32encode(raw + bytes([c & 0xFF, c >> 8])).decode().rstrip("=")


def nkey_user(dirpath):
    """A fresh nkey user: (seed file path, public key). The Ed25519 public
    key comes from the openssl program, independently of the bridge's own
    derivation (bridge/src/nkey.c), which the server then checks."""
    seed = os.urandom(32)
    der = os.path.join(dirpath, "nkey.der")
    with open(der, "wb") as f:
        f.write(bytes.fromhex("302e020100300506032b657004220420") + seed)
    pub = subprocess.run(["openssl", "pkey", "-inform", "DER", "-in", der, "-pubout",
                          "-outform", "DER"], check=True, capture_output=True).stdout[-32:]
    os.unlink(der)
    seed_str = _nkey(bytes([(18 << 3) | ((20 << 3) >> 5), ((20 << 3) & 31) << 3]) + seed)
    pub_str = _nkey(bytes([20 << 3]) + pub)
    path = os.path.join(dirpath, "user.nk")
    with open(path, "w") as f:
        f.write(seed_str + "\n")
    os.chmod(path, 0o600)
    return path, pub_str


class NatsServer(Proc):
    """nats-server with JetStream on a fixed loopback port (kept across
    restarts, as the store directory is). conf: extra configuration text, or
    sample=True for docs/bridge/nats-server.conf with only its listen address
    and store directory replaced (passwords in the environment)."""

    def __init__(self, conf="", sample=False, env=None, tmp=None):
        self.tmp = tmp or tempfile.mkdtemp(prefix="tb-nats-")
        self.port = free_port()
        self.store = os.path.join(self.tmp, "js")
        self.conf_path = os.path.join(self.tmp, "nats.conf")
        if sample:
            with open(os.path.join(SOURCE, "docs", "bridge", "nats-server.conf")) as f:
                text = f.read()
            text = re.sub(r"(?m)^listen: .*$", "listen: 127.0.0.1:%d" % self.port, text)
            text = re.sub(r'store_dir: "[^"]*"', 'store_dir: "%s"' % self.store, text)
        else:
            text = ("listen: 127.0.0.1:%d\njetstream { store_dir: \"%s\" }\n%s\n"
                    % (self.port, self.store, conf))
        with open(self.conf_path, "w") as f:
            f.write(text)
        e = dict(os.environ)
        e.update(env or {})
        super().__init__([NATS_SERVER, "-c", self.conf_path], env=e, name="nats-server")
        self.ready()

    def ready(self, start=0):
        self.wait_log(r"Server is ready", 15, start)

    def restart(self, sig=signal.SIGKILL):
        self.stop(sig)
        n = len(self.log)
        self.start()
        self.ready(n)

    def url(self, scheme="nats", login=""):
        return "%s://%s127.0.0.1:%d" % (scheme, login + "@" if login else "", self.port)


class Mosquitto(Proc):
    """mosquitto on a fixed loopback port. conf: configuration lines after the
    listener; sample=True for docs/bridge/mosquitto.conf and mosquitto.acl
    with users from `users` (name -> password)."""

    def __init__(self, conf="allow_anonymous true\n", sample=False, users=None, tmp=None,
                 listener_extra=""):
        self.tmp = tmp or tempfile.mkdtemp(prefix="tb-mqtt-")
        self.port = free_port()
        path = os.path.join(self.tmp, "mosquitto.conf")
        if sample:
            pw = os.path.join(self.tmp, "passwd")
            for i, (u, p) in enumerate(sorted((users or {}).items())):
                subprocess.run(["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else [])
                               + [pw, u, p], check=True, capture_output=True)
            acl = os.path.join(self.tmp, "acl")
            shutil.copy(os.path.join(SOURCE, "docs", "bridge", "mosquitto.acl"), acl)
            with open(os.path.join(SOURCE, "docs", "bridge", "mosquitto.conf")) as f:
                text = f.read()
            text = re.sub(r"(?m)^listener .*$", "listener %d 127.0.0.1\n%s" % (self.port,
                                                                              listener_extra), text)
            text = re.sub(r"(?m)^password_file .*$", "password_file " + pw, text)
            text = re.sub(r"(?m)^acl_file .*$", "acl_file " + acl, text)
        else:
            text = "listener %d 127.0.0.1\n%s%s\nset_tcp_nodelay true\n" % (
                self.port, listener_extra, conf)
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the user "mosquitto", which
            # cannot read this test's private directory.
            text += "\nuser root\n"
        with open(path, "w") as f:
            f.write(text)
        super().__init__([MOSQUITTO, "-c", path], name="mosquitto")
        if not wait_for(lambda: self._accepting() or not self.alive(), 10) or not self.alive():
            raise AssertionError("mosquitto did not start:\n" + self.text())

    def _accepting(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def url(self, scheme="mqtt", login=""):
        return "%s://%s127.0.0.1:%d" % (scheme, login + "@" if login else "", self.port)


# ------------------------------------------------------------------ trainbus --

# Small: a few seconds on one core with every event through the broker.
QUICK_JOB = {
    "name": "bridge-quick", "seed": 5, "threads": 1,
    "data": {"source": "blobs", "n": 1200, "classes": 3, "features": 4, "std": 2.0, "seed": 5},
    "model": {"layers": [{"type": "dense", "units": 32, "activation": "relu"},
                         {"type": "dense", "units": 3, "activation": "softmax"}]},
    "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
    "optimizer": {"name": "sgd", "learning_rate": 0.05},
    "epochs": 8, "batch_size": 32, "validation_split": 0.2,
}


def demo_job(epochs, metrics=("accuracy",), loss="sparse_categorical_crossentropy"):
    """The daemon's demo job (about 0.15 s an epoch here), epochs long."""
    job = {
        "name": "bridge-demo", "seed": 42, "threads": 1,
        "data": {"source": "spirals", "n_per_class": 5000, "noise": 0.15, "scale": "standard"},
        "model": {"layers": [{"type": "dense", "units": 256, "activation": "relu"},
                             {"type": "dense", "units": 256, "activation": "relu"},
                             {"type": "dense", "units": 256, "activation": "relu"},
                             {"type": "dropout", "rate": 0.1},
                             {"type": "dense", "units": 2, "activation": "softmax"}]},
        "loss": loss, "metrics": list(metrics),
        "optimizer": {"name": "adam", "learning_rate": 0.001},
        "epochs": epochs, "batch_size": 32, "validation_split": 0.2,
    }
    return job


# What the daemon and the bridge would take from the environment: the tests
# give each what it needs explicitly.
DAEMON_ENV = ("TRAINBUS_TOKEN", "TRAINBUS_ADDR", "TRAINBUS_STATE_DIR", "TRAINBUS_OBSERVER_TOKEN",
              "TRAINBUS_TRAINER_TOKEN", "TRAINBUS_CACERT", "TRAINBUS_CERT", "TRAINBUS_KEY")


class Daemon(Proc):
    """trainbusd on 127.0.0.1 (port 0 unless given), its own state directory,
    a job file. token None: the daemon makes one (and writes it to the state
    directory, as the bridge reads it there). tls: (certificate, key) for
    --tls-cert/--tls-key (the certificate is then also the CA the test's
    clients trust); observer_token: --observer-token."""

    LISTEN_RE = re.compile(r"^trainbusd: listening on (\S+)$")

    def __init__(self, job=None, state_dir=None, token=TOKEN, args=(), resume=False,
                 listen="127.0.0.1:0", tls=None, observer_token=None, env=None):
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="tb-bridge-d-")
        self.token = token
        self.cafile = tls[0] if tls else None
        cmd = [TRAINBUSD, "--listen", listen, "--state-dir", self.state_dir, "--quiet"]
        if token:
            cmd += ["--token", token]
        if observer_token:
            cmd += ["--observer-token", observer_token]
        if tls:
            cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        if resume:
            cmd += ["--resume"]
        if job is not None and not resume:
            path = os.path.join(self.state_dir, "job.json")
            with open(path, "w") as f:
                json.dump(job, f)
            cmd += ["--job", path]
        elif not resume:
            cmd += ["--no-job"]
        cmd += list(args)
        extra, env = env, dict(os.environ)
        for k in DAEMON_ENV:
            env.pop(k, None)
        env.update(extra or {})
        super().__init__(cmd, env=env, name="trainbusd")
        self.addr = None
        wait_for(lambda: any(self.LISTEN_RE.match(l) for l in self.log), 15)
        for l in self.log:
            m = self.LISTEN_RE.match(l)
            if m:
                self.addr = m.group(1)
                break
        if self.addr is None:
            self.stop()
            raise AssertionError("trainbusd did not report its address:\n" + self.text())

    def client(self, role="observer"):
        tok = self.token or open(os.path.join(self.state_dir, "token")).read().strip()
        return trainbus.Client(self.addr, tok, role=role, name="bridge-test", cafile=self.cafile)

    def history(self, run="r1"):
        """Every event of run the daemon holds, in seq order."""
        out = []
        with self.client() as c:
            since = 1
            while True:
                page = c.history(run, since_seq=since, limit=10000)
                evs = page["events"]
                out += evs
                if not evs or page["next_seq"] <= since:
                    return out
                since = page["next_seq"]

    def state(self, run="r1"):
        try:
            with self.client() as c:
                return c.status(run).get("state")
        except trainbus.TrainbusError:
            return None

    def wait_state(self, states, run="r1", timeout=120.0):
        if isinstance(states, str):
            states = (states,)
        st = wait_for(lambda: self.state(run) in states and self.state(run), timeout, 0.1)
        if st not in states:
            raise AssertionError("run %s never reached %s (is %s)" % (run, states, st))
        return st


class Bridge(Proc):
    """trainbus-bridge URL with args; by default the daemon's address and
    token are given explicitly (daemon=...), or the state directory only."""

    def __init__(self, url, daemon=None, ns="t", args=(), state_dir=None, env=None):
        cmd = [BRIDGE, "--ns", ns, "--verbose"]
        if daemon is not None and state_dir is None:
            cmd += ["--connect", daemon.addr]
            if daemon.token:
                cmd += ["--token", daemon.token]
        if state_dir is not None:
            cmd += ["--state-dir", state_dir]
        cmd += list(args) + [url]
        e = dict(os.environ)
        for k in DAEMON_ENV:
            e.pop(k, None)
        e.update(env or {})
        super().__init__(cmd, env=e, name="trainbus-bridge")

    def connected(self):
        self.wait_log(r"following the daemon")


def close_lr(got, want):
    """Learning rates as the engine keeps them: in float32, as Keras does
    (0.001 reads back as 0.0010000000474974513)."""
    return got is not None and abs(got - want) <= 1e-6 * abs(want)


def lifecycle(events):
    """The events that are never sampled nor dropped (all but *_batch_*)."""
    return [e for e in events if "_batch_" not in e["event"]]


def train_wall(events):
    """Seconds from the run's train_begin to its train_end (the trainer's
    own clock, as the events carry it)."""
    t = {e["event"]: e["time"] for e in events if e["event"] in ("train_begin", "train_end")}
    return t["train_end"] - t["train_begin"]
