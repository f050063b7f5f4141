"""Helpers of the hostile-conditions suite: start the real trainbusd on
127.0.0.1 with an ephemeral port, talk to it over raw sockets (so that any
byte can be sent), read events back, compare weights files, and measure the
trainer's wall time and the daemon's memory.

Environment (set by ctest from tests/hostile/CMakeLists.txt):
  TRAINBUSD        the daemon under test (an ASan build makes every test a
                   sanitizer check too: stop() fails on any report)
  SOAK=1           longer mode: more cycles, more kill points, more repeats
  TB_HOSTILE_WRAP  a command prefix for the daemon, e.g. "valgrind -q
                   --leak-check=full --error-exitcode=99" (scripts/soak.sh)
  TB_HOSTILE_REPORT  a file to which each test appends one JSON line with its
                   measurements (scripts/soak.sh collects them)
  TB_HOSTILE_TLS=1 the same suite over TLS: every daemon gets a certificate
                   of a throwaway CA (tests/tls/make_certs.sh) and every
                   client of the suite connects through it (connect_raw)
"""
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

# Nothing here may depend on or touch the user's own state (~/.trainbus).
os.environ["HOME"] = tempfile.mkdtemp(prefix="tb-hostile-home-")
os.environ.pop("TRAINBUS_STATE_DIR", None)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tls"))
import tls_util  # noqa: E402

TRAINBUSD = os.environ.get("TRAINBUSD", "")
SOAK = os.environ.get("SOAK", "0") not in ("", "0")
WRAP = shlex.split(os.environ.get("TB_HOSTILE_WRAP", ""))
REPORT = os.environ.get("TB_HOSTILE_REPORT", "")
LISTEN_RE = re.compile(r"^trainbusd: listening on (?:tls://)?(\S+)$")
TLS = os.environ.get("TB_HOSTILE_TLS", "0") not in ("", "0")
# A peer that closed: what a plain socket and an ssl one say.
PEER_GONE = (BrokenPipeError, ConnectionResetError, ssl.SSLError)
TOKEN = "hostile-token-0123456789"

# What a sanitizer or valgrind prints when it finds something.
SANITIZER_RE = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                          r"WARNING: ThreadSanitizer|==\d+== (Invalid|Conditional|Mismatched)|"
                          r"definitely lost: [1-9]|ERROR SUMMARY: [1-9]")

# Slower under valgrind or ASan: deadlines scale with this.
SLOW = 20.0 if WRAP else (3.0 if os.environ.get("TB_SANITIZED") == "1" else 1.0)


def connect_raw(host, port, timeout=None, rcvbuf=None):
    """A connected stream to the daemon: a plain TCP socket, or under
    TB_HOSTILE_TLS an ssl socket whose handshake is done (verifying the
    daemon's certificate). rcvbuf: SO_RCVBUF, set before connecting."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, port))
    if not TLS:
        return s
    return tls_util.client_context().wrap_socket(s, server_hostname=host)


def report(name, **values):
    """Appends one measurement line for scripts/soak.sh (and prints it)."""
    line = json.dumps(dict(test=name, **values), sort_keys=True)
    print("hostile-report: " + line, flush=True)
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(line + "\n")


def job(weights_path, epochs=40, **over):
    """The suite's job: spirals through two 256-unit layers, 125 batches per
    epoch, about 70 ms per epoch on one core; a ModelCheckpoint writes the
    weights to weights_path at every epoch end (the file compared between
    runs). threads 1 and a fixed seed make runs bitwise reproducible."""
    j = {
        "name": "hostile", "seed": 7, "threads": 1,
        "data": {"source": "spirals", "n_per_class": 2500, "noise": 0.2, "seed": 7},
        "model": {"layers": [{"type": "dense", "units": 256, "activation": "relu"},
                             {"type": "dense", "units": 256, "activation": "relu"},
                             {"type": "dense", "units": 2, "activation": "softmax"}]},
        "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
        "optimizer": {"name": "adam", "learning_rate": 0.003},
        "epochs": epochs, "batch_size": 32, "validation_split": 0.2, "verbose": 0,
        "callbacks": [{"type": "ModelCheckpoint", "filepath": weights_path,
                       "save_weights_only": True, "save_freq": "epoch"}],
    }
    j.update(over)
    return j


def need_daemon(test):
    if not TRAINBUSD or not os.access(TRAINBUSD, os.X_OK):
        test.fail("TRAINBUSD=%r is not an executable daemon" % TRAINBUSD)


class Daemon:
    """One trainbusd process on 127.0.0.1:0 with its own state directory.
    job: a job dict (written to a file and passed with --job) or None for
    --no-job. stop() asserts a clean exit without sanitizer reports."""

    def __init__(self, job=None, args=(), state_dir=None, token=TOKEN, resume=False,
                 wrap=None):
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="tb-hostile-")
        os.makedirs(self.state_dir, exist_ok=True)
        self.token = token
        self.log = []
        cmd = list(WRAP if wrap is None else wrap) + [
            TRAINBUSD, "--listen", "127.0.0.1:0", "--state-dir", self.state_dir,
            "--token", token] + (tls_util.daemon_args() if TLS else [])
        if resume:
            cmd.append("--resume")
        elif job is None:
            cmd.append("--no-job")
        else:
            path = os.path.join(self.state_dir, "job.json")
            with open(path, "w") as f:
                json.dump(job, f)
            cmd += ["--job", path]
        cmd += list(args)
        env = dict(os.environ)
        env.pop("TRAINBUS_TOKEN", None)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, text=True, errors="replace")
        self.addr = None
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                line = line.rstrip("\n")
                self.log.append(line)
                m = LISTEN_RE.match(line)
                if m and self.addr is None:
                    self.addr = m.group(1)
                    found.set()
            found.set()

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()
        if not found.wait(30 * SLOW) or self.addr is None:
            self.kill()
            raise AssertionError("trainbusd did not report its address:\n" + "\n".join(self.log))
        host, port = self.addr.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def connect(self, **kw):
        return Client((self.host, self.port), **kw)

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def sanitizer_reports(self):
        return [l for l in self.log if SANITIZER_RE.search(l)]

    def stop(self, timeout=60):
        """SIGTERM; returns (exit status, sanitizer report lines)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.append("hostile: trainbusd did not stop within %ds of SIGTERM" % timeout)
        self.thread.join(10)
        self.proc.stderr.close()
        return self.proc.returncode, self.sanitizer_reports()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(10)
        self.proc.stderr.close()

    def run_dir(self, run="r1"):
        return os.path.join(self.state_dir, "runs", run)

    def assert_clean_stop(self, test):
        rc, reports = self.stop()
        test.assertEqual(reports, [], "sanitizer reports from trainbusd:\n" + "\n".join(self.log[-80:]))
        test.assertEqual(rc, 0, "trainbusd exit status %r after SIGTERM; log tail:\n%s"
                         % (rc, "\n".join(self.log[-40:])))


class Closed(Exception):
    pass


class Client:
    """A raw JSON-lines client. Messages read are parsed; notifications are
    kept in self.notes (events also in self.events)."""

    def __init__(self, addr, timeout=10.0, hello=True):
        self.sock = connect_raw(addr[0], addr[1], timeout=timeout * SLOW)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.notes = []
        self.events = []
        self.next_id = 1
        self.eof = False
        self.hello = self.read_msg() if hello else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def read_line(self, timeout=None):
        if timeout is not None:
            self.sock.settimeout(timeout * SLOW)
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except PEER_GONE:
                chunk = b""
            if not chunk:
                self.eof = True
                raise Closed(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def read_msg(self, timeout=None):
        line = self.read_line(timeout)
        m = json.loads(line)
        if "id" not in m:
            self.notes.append(m)
            if m.get("method") == "event":
                self.events.append(m["params"])
        return m

    def read_response(self, want_id="any", timeout=10.0):
        """The next response (a message with an id), skipping notifications;
        want_id: that id only ("any": the first response)."""
        end = time.monotonic() + timeout * SLOW
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise socket.timeout("no response with id %r" % (want_id,))
            m = self.read_msg(left / SLOW)
            if "id" in m and (want_id == "any" or m["id"] == want_id):
                return m

    def call(self, method, params=None, timeout=10.0):
        i = self.next_id
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": i, "method": method}
        if params is not None:
            req["params"] = params
        self.send(json.dumps(req, separators=(",", ":")) + "\n")
        return self.read_response(i, timeout)

    def ok(self, method, params=None, timeout=10.0):
        r = self.call(method, params, timeout)
        if "result" not in r:
            raise AssertionError("%s %r: %r" % (method, params, r))
        return r["result"]

    def auth(self, role="controller", token=TOKEN):
        p = {"role": role, "client": "hostile"}
        if token is not None:
            p["token"] = token
        return self.ok("auth", p)

    def wait_closed(self, timeout=5.0):
        """Reads until EOF; returns the messages seen (True) or False if the
        connection is still open after timeout."""
        end = time.monotonic() + timeout * SLOW
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                self.read_msg(left / SLOW)
            except Closed:
                return True
            except socket.timeout:
                return False
            except ValueError:
                continue


def wait_until(pred, timeout):
    """Polls pred until it is true or timeout seconds passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def controller(d):
    c = d.connect()
    c.auth("controller")
    return c


def wait_final(c, run="r1", timeout=120.0):
    """Polls status until the run is in a final state; returns its run object."""
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        r = c.call("status", {"run": run})
        if "result" in r and r["result"]["state"] in ("finished", "stopped", "cancelled", "failed"):
            return r["result"]
        time.sleep(0.05)
    raise AssertionError("run %s did not end within %ss" % (run, timeout))


def history_all(c, run="r1", page=1000):
    """Every retained event of the run, read with history in pages from seq 1."""
    out = []
    since = 1
    while True:
        res = c.ok("history", {"run": run, "since_seq": since, "limit": page}, timeout=30)
        out += res["events"]
        if not res["events"] or res["next_seq"] <= since:
            break
        since = res["next_seq"]
        if since > res["events"][-1]["seq"] and len(res["events"]) < page:
            break
    return out


def log_events(state_dir, run="r1"):
    """The run's on-disk event log (no client needed)."""
    path = os.path.join(state_dir, "runs", run, "events.ndjson")
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line)["params"])
    except FileNotFoundError:
        pass
    return out


FINAL_RE = re.compile(rb'"event":"state".*"state":"(finished|stopped|cancelled|failed)"')


class LogWatch:
    """Follows a run's event log on disk by reading only what was appended,
    so that waiting costs the trainer no CPU (the machine may have 2 cores)."""

    def __init__(self, state_dir, run="r1"):
        self.path = os.path.join(state_dir, "runs", run, "events.ndjson")
        self.off = 0
        self.tail = b""
        self.seen = set()

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return
        self.off += len(data)
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            if b'"event":"train_begin"' in line:
                self.seen.add("train_begin")
            elif b'"event":"train_end"' in line:
                self.seen.add("train_end")
            elif FINAL_RE.search(line):
                self.seen.add("final")

    def wait(self, what, timeout=300.0, alive=None):
        end = time.monotonic() + timeout * SLOW
        while time.monotonic() < end:
            self.poll()
            if what in self.seen:
                return True
            if alive is not None and not alive():
                raise AssertionError("trainbusd died")
            time.sleep(0.02)
        raise AssertionError("%s: no %s within %ss" % (self.path, what, timeout))


def train_wall(events):
    """Seconds from the last train_begin to the train_end after it."""
    begin = end = None
    for e in events:
        if e["event"] == "train_begin":
            begin, end = e["time"], None
        elif e["event"] == "train_end" and begin is not None:
            end = e["time"]
    return None if begin is None or end is None else end - begin


def final_state(events):
    for e in reversed(events):
        if e["event"] == "state" and e["state"] in ("finished", "stopped", "cancelled", "failed"):
            return e["state"]
    return None


def reference_run(epochs, tag="ref", timeout=300.0):
    """Trains the suite's job in a daemon that no client ever connects to and
    returns (weights bytes, train wall seconds). The end is seen in the run's
    event log on disk."""
    tmp = tempfile.mkdtemp(prefix="tb-hostile-%s-" % tag)
    wpath = os.path.join(tmp, "weights.tbw")
    d = Daemon(job(wpath, epochs), state_dir=os.path.join(tmp, "state"))
    try:
        LogWatch(d.state_dir).wait("final", timeout, d.alive)
        ev = log_events(d.state_dir)
        st = final_state(ev)
        if st != "finished":
            raise AssertionError("reference run ended %r:\n%s" % (st, "\n".join(d.log)))
    finally:
        rc, reports = d.stop()
    if reports or rc != 0:
        raise AssertionError("reference daemon: exit %r, reports %r" % (rc, reports))
    with open(wpath, "rb") as f:
        return f.read(), train_wall(ev)


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
