"""The blocking protocol client (see docs/PROTOCOL.md and docs/PYTHON.md).

One Client is one connection. Calls send a request and wait for the response
with the same id; notifications (events, dropped, bye) that arrive meanwhile
are queued, and :meth:`Client.next_event` and subscription iterators hand them
out in order. The client remembers the last seq it delivered per run and the
subscriptions it made, so :meth:`Client.reconnect` resumes a watch with no gap
and no duplicate (single-run subscriptions restart at last seq + 1, and
anything at or below the last delivered seq is skipped).
"""

import collections
import json
import math
import os
import socket
import ssl
import time
import warnings

PROTOCOL_VERSION = 1
FINAL_STATES = frozenset(("finished", "stopped", "cancelled", "failed", "lost"))
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_MAX_LINE = 16 * 1024 * 1024  # longer lines from a server are refused


class TrainbusError(Exception):
    """Any failure. ``name`` is a stable word (the server's ``data.name``, or
    ``closed``, ``client_timeout``, ``bad_reply``, ``bad_address``,
    ``connect_failed``, ``tls_error``, ``invalid_argument``), ``code`` the
    JSON-RPC code when the server sent one, ``message`` a sentence."""

    def __init__(self, name, message, code=None):
        super().__init__(message)
        self.name = name
        self.message = message
        self.code = code

    def __str__(self):
        return self.message


class RemoteError(TrainbusError):
    """The daemon refused the request (``no_such_run``, ``invalid_params``...)."""


class ConnectionLost(TrainbusError):
    """The daemon could not be reached, or the connection broke."""


class Event(dict):
    """An event's params object (``run``, ``seq``, ``event``, ``epoch``,
    ``batch``, ``time``, ``logs``, ...), with attribute access for convenience:
    ``ev.event``, ``ev.logs``. Missing attributes read as None. Non-finite log
    values (sent as "NaN", "Infinity") are floats here."""

    __slots__ = ()

    def __getattr__(self, name):
        return self.get(name)


def _state_dir(state_dir=None):
    d = state_dir or os.environ.get("TRAINBUS_STATE_DIR")
    return d if d else os.path.join(os.path.expanduser("~"), ".trainbus")


def _read_first_line(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def resolve_address(addr=None, token=None, state_dir=None):
    """(addr, token) from the arguments, else TRAINBUS_ADDR / TRAINBUS_TOKEN,
    else the ``address`` and ``token`` files trainbusd writes in its state
    directory (state_dir, else TRAINBUS_STATE_DIR, else ~/.trainbus). The
    directory's token goes only with the directory's own address: an
    address of another daemon gets no token from it (a client never presents
    one daemon's token to another). token may be None."""
    d = _state_dir(state_dir)
    addr = addr or os.environ.get("TRAINBUS_ADDR")
    dir_addr = _read_first_line(os.path.join(d, "address"))
    if not addr:
        addr = dir_addr
    if not addr:
        raise ConnectionLost(
            "bad_address",
            "no daemon address: pass addr=, set TRAINBUS_ADDR, or start trainbusd "
            "(it writes %s/address)" % d,
        )
    if token is None:
        token = os.environ.get("TRAINBUS_TOKEN") or None
    if token is None and addr == dir_addr:
        token = _read_first_line(os.path.join(d, "token"))
    return addr, token


def _fix_numbers(params):
    logs = params.get("logs")
    if isinstance(logs, dict):
        for k, v in logs.items():
            if isinstance(v, str):
                if v not in _NONFINITE:
                    raise TrainbusError("bad_reply", "logs.%s: unexpected string %r" % (k, v))
                logs[k] = _NONFINITE[v]
    for k in ("value", "old"):
        if isinstance(params.get(k), str) and params[k] in _NONFINITE:
            params[k] = _NONFINITE[params[k]]
    return params


# OpenSSL's reasons for a peer whose bytes are not TLS at all.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "UNKNOWN_PROTOCOL", "HTTP_REQUEST")
# The server's alerts about the client's certificate.
_CERT_ALERTS = ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE",
                "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE")


def _tls_failure(addr, host, e, certfile):
    """A ConnectionLost('tls_error') saying which check failed and what to do."""
    if isinstance(e, ssl.SSLCertVerificationError):
        code = getattr(e, "verify_code", 0)
        msg = getattr(e, "verify_message", "") or str(e)
        if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            text = ("%s: the server's certificate is not for %s (%s): connect with a name it "
                    "was made for (or insecure=True to skip the check)" % (addr, host, msg))
        elif code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            text = "%s: the server's certificate has expired: the daemon needs a new one" % addr
        elif code in (2, 18, 19, 20, 21, 7):
            text = ("%s: the server's certificate is not signed by a CA this client trusts "
                    "(%s): give the CA that signed it with cafile=" % (addr, msg))
        else:
            text = "%s: the server's certificate was refused: %s" % (addr, msg)
        return ConnectionLost("tls_error", text)
    reason = getattr(e, "reason", None) or ""
    if reason in _NOT_TLS:
        return ConnectionLost("tls_error", (
            "%s answered in plaintext, not TLS: it is a trainbus port without TLS (connect "
            "without tls://, or start trainbusd with --tls-cert and --tls-key)" % addr))
    if reason in _CERT_ALERTS:
        return ConnectionLost("tls_error", "%s: the server refused the TLS connection (%s): %s" % (
            addr, reason.lower(), "is the client certificate from the CA it trusts?" if certfile
            else "it may want a client certificate (certfile=, keyfile=)"))
    return ConnectionLost("tls_error", "%s: TLS failed: %s" % (addr, e))


class Subscription:
    """An iterator over the events of one subscribe call (really of the whole
    connection: the server delivers each event once however many
    subscriptions match it). Iteration ends after a final ``state`` event of
    the run when the subscription names exactly one run, and reconnects by
    itself when ``reconnect`` (seconds to keep trying) is set."""

    def __init__(self, client, result, runs, timeout=None, reconnect=None, notices=False):
        self.client = client
        self.id = result.get("sub")
        self.next_seq = result.get("next_seq", 0)
        self._single = runs[0] if runs and len(runs) == 1 and "*" not in runs[0] else None
        self._timeout = timeout
        self._reconnect = reconnect
        self._notices = notices
        self._done = False

    def __iter__(self):
        return self

    def __next__(self):
        while not self._done:
            try:
                msg = self.client.next_event(self._timeout, notices=True)
            except ConnectionLost:
                if not self._reconnect:
                    raise
                self.client.reconnect(retry_for=self._reconnect)
                continue
            if msg is None:  # timeout
                raise StopIteration
            kind = msg.get("_kind")
            if kind == "event":
                if (
                    self._single
                    and msg.get("run") == self._single
                    and msg.get("event") == "state"
                    and msg.get("state") in FINAL_STATES
                ):
                    self._done = True
                return msg
            if self._notices:
                return msg
        raise StopIteration


class Client:
    """A connection to a trainbus daemon.

    addr: "HOST:PORT", "[V6]:PORT", "tls://HOST:PORT", "unix:PATH" or a path
    with a '/'; token: the daemon's control, observer or trainer token (None:
    observers on loopback need none); role: "observer", "controller" or
    "trainer", the role asked for: the token decides what is granted
    (``self.role``; asking for controller with the observer token gives
    observer, whose control calls raise RemoteError "forbidden"). Without addr/token they come
    from the environment or the state directory (see
    :func:`resolve_address`). timeout: seconds to wait for each call's answer
    (set_lr and checkpoint answer once applied); connect_timeout: for
    connecting and the handshake.

    state_dir: the daemon's state directory; what addr and token do not say
    is read from its files, at connect and again at every reconnect (a
    daemon restarted on port 0 has a new port: the client follows it).

    TLS (docs/PROTOCOL.md, "TLS"; the standard ``ssl`` module): on with
    tls=True or a "tls://" address. The server's certificate must chain to a
    CA in cafile (PEM; default $TRAINBUS_CACERT, else the system's CAs) and
    name the host connected to (or server_hostname). insecure=True skips
    both checks, with a warning. certfile/keyfile (default $TRAINBUS_CERT,
    $TRAINBUS_KEY): a client certificate, for daemons with --tls-client-ca.

    Raises ConnectionLost when the daemon cannot be reached (name
    ``tls_error`` when TLS fails, with what to do), RemoteError when it
    refuses the auth (bad token) or, over plaintext, says the port speaks
    TLS (``tls_required``). Usable as a context manager.
    """

    def __init__(self, addr=None, token=None, role="observer", name="trainbus-py",
                 timeout=60.0, connect_timeout=5.0, state_dir=None, tls=False, cafile=None,
                 insecure=False, certfile=None, keyfile=None, server_hostname=None):
        if role not in ("observer", "controller", "trainer"):
            raise TrainbusError("invalid_argument",
                                "role must be observer, controller or trainer")
        # What was given stays; the rest is looked up again at every connect.
        self._given = (addr or os.environ.get("TRAINBUS_ADDR") or None,
                       token if token is not None else (os.environ.get("TRAINBUS_TOKEN") or None),
                       state_dir)
        self.addr, self.token = resolve_address(*self._given)
        self.tls = tls
        self.cafile = cafile or os.environ.get("TRAINBUS_CACERT") or None
        self.certfile = certfile or os.environ.get("TRAINBUS_CERT") or None
        self.keyfile = keyfile or os.environ.get("TRAINBUS_KEY") or None
        self.insecure = insecure
        self.server_hostname = server_hostname
        self._ssl_ctx = None
        if insecure:
            warnings.warn("trainbus: insecure=True: the server's certificate is not checked, so "
                          "whoever is between you and it can read and change the connection",
                          RuntimeWarning, stacklevel=2)
        self.want_role = role
        self.name = name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.role = None
        self.hello = None
        self._sock = None
        self._buf = b""
        self._eof = False
        self._queue = collections.deque()
        self._next_id = 0
        self._last_seq = {}
        self._answers = {}  # run -> (seq, actions) of the last continue sent
        self._subs = []  # [params dict, next_seq]
        self.bye = None
        self._open()

    # ----------------------------------------------------------- plumbing --

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the connection. Queued notifications stay readable."""
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buf = b""
        self._eof = False

    def _tls_context(self):
        if self._ssl_ctx is None:
            try:
                ctx = ssl.create_default_context(cafile=self.cafile)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                if self.insecure:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                if self.certfile or self.keyfile:
                    ctx.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError, TypeError) as e:
                raise ConnectionLost("tls_error", "TLS files (cafile %s, certfile %s, keyfile %s): "
                                     "%s" % (self.cafile, self.certfile, self.keyfile, e)) from None
            self._ssl_ctx = ctx
        return self._ssl_ctx

    def _wrap_tls(self, s, host):
        name = self.server_hostname or host
        try:
            t = self._tls_context().wrap_socket(s, server_hostname=name,
                                                do_handshake_on_connect=False)
            t.settimeout(self.connect_timeout)
            t.do_handshake()
            return t
        except ssl.SSLError as e:
            s.close()
            raise _tls_failure(self.addr, name, e, self.certfile) from None
        except socket.timeout:
            s.close()
            raise ConnectionLost("tls_error", "%s: no TLS handshake from the server in time" %
                                 self.addr) from None
        except OSError as e:
            s.close()
            raise ConnectionLost("tls_error", "%s: the server closed the connection during the "
                                 "TLS handshake (%s)" % (self.addr, e.strerror or e)) from None

    def _connect_socket(self):
        a = self.addr
        tls = self.tls or a.startswith("tls://")
        if a.startswith("tls://"):
            a = a[6:]
        try:
            if tls and (a.startswith("unix:") or "/" in a):
                raise ConnectionLost("bad_address", "%s: TLS is for TCP addresses (HOST:PORT)"
                                     % self.addr)
            if a.startswith("unix:") or "/" in a:
                path = a[5:] if a.startswith("unix:") else a
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(self.connect_timeout)
                s.connect(path)
                return s
            if a.startswith("["):
                host, _, port = a[1:].partition("]:")
            else:
                host, _, port = a.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConnectionLost("bad_address",
                                     "address %r: expected HOST:PORT, unix:PATH or a path" % a)
            s = socket.create_connection((host, int(port)), timeout=self.connect_timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                return self._wrap_tls(s, host)
            # An empty line, ignored by a plaintext server: a TLS port answers
            # it with tls_required at once rather than wait for a handshake.
            s.sendall(b"\n")
            return s
        except ConnectionLost:
            raise
        except socket.gaierror as e:
            raise ConnectionLost("bad_address", "cannot resolve %r: %s" % (a, e)) from None
        except OSError as e:
            raise ConnectionLost("connect_failed", "cannot connect to %s: %s" % (
                a, e.strerror or e)) from None

    def _open(self):
        self.close()
        self.bye = None
        self.addr, self.token = resolve_address(*self._given)
        self._sock = self._connect_socket()
        deadline = time.monotonic() + self.connect_timeout
        line = self._read_line(deadline)
        msg = self._decode(line)
        if msg.get("method") != "hello":
            self.close()
            if "error" in msg:  # tls_required: a plaintext client on a TLS port
                raise self._error(msg["error"])
            if msg.get("method") == "bye":
                p = msg.get("params") or {}
                raise ConnectionLost("closed", "%s: the server said bye (%s: %s)" % (
                    self.addr, p.get("reason"), p.get("message")))
            raise TrainbusError("bad_reply", "%s: not a trainbus server (no hello)" % self.addr)
        self.hello = msg.get("params") or {}
        if self.hello.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise TrainbusError("bad_reply", "%s: the server speaks protocol %r, this client %d" % (
                self.addr, self.hello.get("protocol"), PROTOCOL_VERSION))
        params = {"role": self.want_role, "client": self.name, "protocol": PROTOCOL_VERSION}
        if self.token:
            params["token"] = self.token
        try:
            res = self._call("auth", params, deadline)
        except TrainbusError:
            self.close()
            raise
        self.role = res.get("role")

    def _read_line(self, deadline):
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line:
                    return line
                continue
            if self._sock is None or self._eof:
                self.close()
                reason = (self.bye or {}).get("reason")
                raise ConnectionLost("closed", "connection closed by the server" + (
                    " (bye: %s)" % reason if reason else ""))
            if len(self._buf) > _MAX_LINE:
                self.close()
                raise TrainbusError("bad_reply", "the server sent a line over %d bytes" % _MAX_LINE)
            if deadline is None:
                self._sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TrainbusError("client_timeout", "no answer from the server in time")
                self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                raise TrainbusError("client_timeout", "no answer from the server in time") from None
            except ssl.SSLError as e:
                # TLS 1.3 tells of a refused client certificate after the handshake.
                self.close()
                raise _tls_failure(self.addr, self.server_hostname or self.addr, e,
                                   self.certfile) from None
            except OSError as e:
                self.close()
                raise ConnectionLost("closed", "reading from the server: %s" % e) from None
            if not data:
                self._eof = True
            self._buf += data

    def _decode(self, line):
        try:
            msg = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.close()
            raise TrainbusError("bad_reply", "the server sent an unreadable line: %s" % e) from None
        if not isinstance(msg, dict):
            self.close()
            raise TrainbusError("bad_reply", "the server sent a line that is not an object")
        return msg

    def _send(self, obj):
        if self._sock is None:
            raise ConnectionLost("closed", "not connected")
        try:
            data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        except ValueError as e:
            raise TrainbusError("invalid_argument", "cannot send %s: %s" % (
                obj.get("method"), e)) from None
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)  # Python ignores SIGPIPE: errors come as EPIPE
        except OSError as e:
            self.close()
            raise ConnectionLost("closed", "sending %s: %s" % (obj.get("method"), e)) from None

    def _call(self, method, params, deadline):
        self._next_id += 1
        rid = self._next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            line = self._read_line(deadline)
            msg = self._decode(line)
            if "id" in msg and "method" not in msg:
                if msg["id"] is None and "error" in msg:
                    raise self._error(msg["error"])
                if msg["id"] != rid:
                    continue  # the late answer to a call that timed out
                if "error" in msg:
                    raise self._error(msg["error"])
                return msg.get("result")
            if msg.get("method") == "bye":
                self.bye = msg.get("params") or {}
            self._queue.append(msg)

    @staticmethod
    def _error(e):
        e = e if isinstance(e, dict) else {}
        name = (e.get("data") or {}).get("name") or "error"
        return RemoteError(name, e.get("message") or name, e.get("code"))

    # -------------------------------------------------------------- calls --

    def call(self, method, **params):
        """Sends one request and returns its result (a dict). Raises
        RemoteError when the daemon refuses, ConnectionLost when the
        connection breaks, TrainbusError('client_timeout') after timeout."""
        params = {k: v for k, v in params.items() if v is not None}
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        return self._call(method, params, deadline)

    def ping(self):
        return self.call("ping")

    def status(self, run=None):
        """A run object ({run, state, epoch, epochs, batch, last_seq, lr}), or
        the daemon's status without run."""
        return self.call("status", run=run)

    def runs(self):
        """Every run object, oldest first."""
        return self.call("runs")["runs"]

    def history(self, run, since_seq=None, limit=None):
        """One page: {run, events: [Event...], next_seq}."""
        res = self.call("history", run=run, since_seq=since_seq, limit=limit)
        res["events"] = [Event(_fix_numbers(e)) for e in res.get("events", [])]
        return res

    def history_all(self, run, since_seq=0):
        """Every retained event of run, paging until caught up."""
        out = []
        while True:
            page = self.history(run, since_seq=since_seq, limit=10000)
            out.extend(page["events"])
            nxt = page.get("next_seq", since_seq)
            if not page["events"] or nxt <= since_seq:
                return out
            since_seq = nxt

    def set_lr(self, run, lr):
        """Sets the learning rate; returns once applied ({run, old, lr,
        applied_at} from current daemons, {ok: true} from older ones)."""
        return self.call("set_lr", run=run, lr=float(lr))

    def stop(self, run, reason=None):
        return self.call("stop", run=run, reason=reason)

    def pause(self, run):
        return self.call("pause", run=run)

    def resume(self, run):
        return self.call("resume", run=run)

    def checkpoint(self, run):
        """Writes a checkpoint; returns once written ({run, path, applied_at})."""
        return self.call("checkpoint", run=run)

    def submit(self, job):
        """Queues a job (a dict, or JSON text, as in a job file); returns the new run id."""
        if isinstance(job, (str, bytes)):
            job = json.loads(job)
        return self.call("submit", job=job)["run"]

    def cancel(self, run, reason=None):
        return self.call("cancel", run=run, reason=reason)

    def continue_(self, run, seq, set_lr=None, stop=False, pause=False, checkpoint=False):
        """Answers lockstep event seq of run; the actions take effect before
        training goes on. (Also reachable as ``getattr(client, "continue")``.)
        The answer is kept, to be sent again if a restarted daemon asks again
        (see :meth:`next_event`)."""
        actions = {}
        if set_lr is not None:
            actions["set_lr"] = float(set_lr)
        if stop:
            actions["stop"] = True
        if pause:
            actions["pause"] = True
        if checkpoint:
            actions["checkpoint"] = True
        self._answers[run] = (seq, actions)
        return self.call("continue", run=run, seq=seq, actions=actions or None)

    # ------------------------------------------------------------- events --

    def subscribe(self, runs=None, events=None, every=None, since_seq=None, lockstep=None,
                  lockstep_timeout_ms=None, timeout=None, reconnect=None, notices=False):
        """Subscribes and returns an iterator of :class:`Event`.

        runs / events: lists of patterns ('*' globs; None = all); every: only
        every N-th batch event; since_seq: replay from this seq (one run
        only); lockstep: hook names the trainer waits at until you call
        continue_ (controller); lockstep_timeout_ms: how long it waits.
        Iterator options: timeout (seconds without an event before the
        iteration stops; None waits forever), reconnect (seconds to keep
        reconnecting after the connection breaks; None raises
        ConnectionLost), notices (also yield 'dropped' and 'bye' notices,
        dicts with _kind set to their name).
        """
        if isinstance(runs, str):
            runs = [runs]
        if isinstance(events, str):
            events = [events]
        params = {"runs": runs, "events": events, "every": every, "since_seq": since_seq,
                  "lockstep": lockstep, "lockstep_timeout_ms": lockstep_timeout_ms}
        params = {k: v for k, v in params.items() if v is not None}
        res = self.call("subscribe", **params)
        self._subs.append([params, res.get("next_seq", 0)])
        return Subscription(self, res, runs, timeout, reconnect, notices)

    def unsubscribe(self, sub=None):
        """Drops one subscription (by id), or all of them."""
        self.call("unsubscribe", sub=sub)
        if sub is None:
            self._subs = []

    def last_seq(self, run):
        """The last seq delivered for run (0 if none)."""
        return self._last_seq.get(run, 0)

    def next_event(self, timeout=None, notices=False):
        """The next event (an :class:`Event`, with ``_kind`` 'event'), or None
        after timeout seconds (None: wait forever). With notices, 'dropped'
        and 'bye' notices are returned too (dicts with ``_kind`` set).
        Events already delivered for their run are skipped, except a
        lockstep event a restarted daemon asks again (it stopped while
        waiting for the answer): the answer given to it is sent again, or, if
        none was, the event is returned again. Raises ConnectionLost when the
        connection is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._queue:
                msg = self._queue.popleft()
            else:
                try:
                    msg = self._decode(self._read_line(deadline))
                except TrainbusError as e:
                    if e.name == "client_timeout":
                        return None
                    raise
            method = msg.get("method")
            params = msg.get("params") or {}
            if method == "event":
                ev = Event(_fix_numbers(params))
                run, seq = ev.get("run"), ev.get("seq", 0)
                if seq <= self._last_seq.get(run, 0):
                    if ev.get("lockstep"):
                        answer = self._answers.get(run)
                        if answer is None or answer[0] != seq:
                            ev["_kind"] = "event"
                            return ev
                        try:
                            self.call("continue", run=run, seq=seq, actions=answer[1] or None)
                        except RemoteError:
                            pass  # the wait is over already
                    continue
                self._last_seq[run] = seq
                ev["_kind"] = "event"
                return ev
            if method in ("dropped", "bye"):
                if method == "bye":
                    self.bye = params
                if notices:
                    n = Event(params)
                    n["_kind"] = method
                    return n
            # responses left over and unknown notifications are skipped

    def reconnect(self, retry_for=0.0):
        """Connects again (reading the state directory's address and token
        again, when they come from there) and renews every subscription;
        single-run ones resume at the last seq delivered + 1 (no gap, no
        duplicate). Retries
        for retry_for seconds while the daemon cannot be reached. Raises
        ConnectionLost when it stays unreachable, RemoteError when it
        refuses (for example no_such_run after a restart without --resume)."""
        give_up = time.monotonic() + (retry_for or 0)
        delay = 0.1
        while True:
            try:
                self._open()
                break
            except ConnectionLost:
                if time.monotonic() + delay > give_up:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        for sub in self._subs:
            params, next_seq = dict(sub[0]), sub[1]
            runs = params.get("runs") or []
            if len(runs) == 1 and "*" not in runs[0]:
                last = self._last_seq.get(runs[0], 0)
                if last:
                    params["since_seq"] = last + 1
                elif "since_seq" not in params and next_seq:
                    params["since_seq"] = next_seq
            else:
                params.pop("since_seq", None)
            self.call("subscribe", **params)


setattr(Client, "continue", Client.continue_)
