"""Runs through a NATS broker, standard library only (docs/BRIDGE.md).

trainbus-bridge publishes a daemon's runs into NATS: every event on
``tb.NS.run.RUN.evt.EVENT`` (kept by the JetStream stream ``TB_NS``), the
latest status of each run on ``tb.NS.run.RUN.status``, the run list on
``tb.NS.runs`` (both kept one per subject by ``TB_NS_LAST``), and it answers
control requests on ``tb.NS.run.RUN.ctl.METHOD``.

- :func:`follow` yields a run's events (:class:`trainbus.Event`) through a
  JetStream ordered consumer: the stored history from a seq on, then the live
  events, with no gap and no duplicate, until the run ends.
- :func:`call` sends a control request (``set_lr``, ``stop``, ``pause``,
  ``resume``, ``checkpoint``, ``cancel``) and returns the daemon's answer.
- :class:`Nats` is the small NATS client both use: the text protocol with
  headers (HPUB/HMSG), request-reply with no-responders, TLS, user/password
  and token logins. (nkey and JWT logins need Ed25519, which the standard
  library lacks: use the C client, ``trainbus watch --nats``.)

A Nats object is used by one thread at a time; messages are read on the
calling thread, in the calls that wait for them.
"""

import base64
import json
import os
import socket
import ssl
import time
import urllib.parse

from .client import FINAL_STATES, ConnectionLost, Event, RemoteError, TrainbusError, _fix_numbers

__all__ = ["Msg", "Nats", "NatsError", "NoResponders", "call", "follow", "runs", "status", "stored"]

_MAX_CONTROL_LINE = 4096
_MAX_PAYLOAD = 64 * 1024 * 1024


class NatsError(ConnectionLost):
    """The NATS server refused something (``-ERR``: a permissions violation,
    an authorization failure, a payload over max_payload) or the connection
    broke. ``name`` is ``nats_error``, ``message`` the server's text."""

    def __init__(self, message, name="nats_error"):
        super().__init__(name, message)


class NoResponders(TrainbusError):
    """Nothing subscribes to the request's subject: no bridge serves this
    namespace (NATS's 503 no-responders status)."""

    def __init__(self, subject):
        super().__init__("no_responders", "no responders on %s: is a trainbus-bridge running "
                         "for this namespace?" % subject)


class Msg:
    """A received message: ``subject``, ``reply`` (or None), ``headers`` (a
    dict of the first value of each header), ``data`` (bytes), and for status
    messages ``status`` (an int, e.g. 503, 100) and ``description``."""

    __slots__ = ("subject", "sid", "reply", "headers", "data", "status", "description",
                 "stream_seq", "pending")

    def __init__(self, subject, sid, reply, headers, data, status=None, description=""):
        self.subject = subject
        self.sid = sid
        self.reply = reply
        self.headers = headers
        self.data = data
        self.status = status
        self.description = description
        self.stream_seq = None  # JetStream: the message's stream sequence
        self.pending = None     # JetStream: messages still to come for the consumer

    def json(self):
        return json.loads(self.data.decode("utf-8"))


def _parse_headers(block):
    """The NATS/1.0 header block: (status, description, headers)."""
    lines = block.decode("utf-8", "replace").split("\r\n")
    first = lines[0].split(" ", 2)
    if not first or first[0] != "NATS/1.0":
        raise NatsError("bad header block from the server: %r" % lines[0][:60])
    status = int(first[1]) if len(first) > 1 and first[1].isdigit() else None
    desc = first[2] if len(first) > 2 else ""
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if sep:
            headers.setdefault(k.strip(), v.strip())
    return status, desc, headers


def _encode_headers(headers):
    out = "NATS/1.0\r\n"
    for k, v in headers.items():
        out += "%s: %s\r\n" % (k, v)
    return (out + "\r\n").encode("utf-8")


class Nats:
    """One connection to a NATS server.

    url: ``nats://[USER:PASSWORD@|TOKEN@]HOST:PORT`` or ``tls://...``;
    user/password/token override the URL's login; tls_ca: a CA file to trust
    (turns TLS on, as does a ``tls://`` URL or a server that requires it);
    timeout: seconds for connecting and for each request.
    """

    def __init__(self, url="nats://127.0.0.1:4222", user=None, password=None, token=None,
                 tls_ca=None, name="trainbus-py", timeout=5.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("nats", "tls"):
            raise TrainbusError("invalid_argument", "%s: expected nats:// or tls://" % url)
        self.timeout = timeout
        self._buf = b""
        self._pending = {}   # sid -> list of Msg
        self._next_sid = 0
        self._inbox_prefix = "_INBOX.%s" % base64.b32encode(os.urandom(10)).decode().rstrip("=")
        self._resp_sid = None
        self._resp = {}
        self._req_n = 0
        self.info = {}
        host, port = u.hostname or "127.0.0.1", u.port or 4222
        if u.username and u.password is None and token is None and user is None:
            token = urllib.parse.unquote(u.username)
        elif u.username and user is None:
            user = urllib.parse.unquote(u.username)
            password = password if password is not None else urllib.parse.unquote(u.password or "")
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise NatsError("cannot connect to %s:%s: %s" % (host, port, e), "connect_failed")
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line = self._read_line(time.monotonic() + timeout)
        if not line.startswith(b"INFO "):
            raise NatsError("%s:%s is not a NATS server" % (host, port))
        self.info = json.loads(line[5:])
        if u.scheme == "tls" or tls_ca or self.info.get("tls_required"):
            ctx = ssl.create_default_context(cafile=tls_ca)
            self._sock = ctx.wrap_socket(self._sock, server_hostname=host)
        connect = {"verbose": False, "pedantic": False, "lang": "python-trainbus",
                   "version": "0.1.0", "protocol": 1, "headers": True, "no_responders": True,
                   "name": name}
        if user is not None:
            connect["user"], connect["pass"] = user, password or ""
        if token is not None:
            connect["auth_token"] = token
        self._send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline)
            if line == b"PONG":
                break
            if line.startswith(b"-ERR"):
                raise NatsError(line[5:].decode("utf-8", "replace").strip(" '"), "nats_auth")
            if line.startswith(b"INFO ") or line in (b"+OK", b"PING"):
                if line == b"PING":
                    self._send(b"PONG\r\n")
                continue

    @property
    def max_payload(self):
        return int(self.info.get("max_payload", 1024 * 1024))

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------- plumbing --

    def _send(self, data):
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise NatsError("connection lost: %s" % e, "closed")

    def _fill(self, deadline):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self._sock.settimeout(left)
        else:
            self._sock.settimeout(None)
        try:
            chunk = self._sock.recv(65536)
        except socket.timeout:
            raise
        except OSError as e:
            raise NatsError("connection lost: %s" % e, "closed")
        if not chunk:
            raise NatsError("the NATS server closed the connection", "closed")
        self._buf += chunk

    def _read_line(self, deadline):
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 2:]
                return line
            if len(self._buf) > _MAX_CONTROL_LINE:
                raise NatsError("control line too long from the server")
            self._fill(deadline)

    def _read_exact(self, n, deadline):
        while len(self._buf) < n:
            self._fill(deadline)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _read_one(self, deadline):
        """Reads one protocol message; queues MSG/HMSG; raises on -ERR."""
        line = self._read_line(deadline)
        if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
            parts = line.decode("utf-8", "replace").split(" ")
            if parts[0] == "MSG":
                subject, sid = parts[1], parts[2]
                reply = parts[3] if len(parts) == 5 else None
                hlen, total = 0, int(parts[-1])
            else:
                subject, sid = parts[1], parts[2]
                reply = parts[3] if len(parts) == 6 else None
                hlen, total = int(parts[-2]), int(parts[-1])
            if total > _MAX_PAYLOAD or hlen > total:
                raise NatsError("message of %d bytes from the server" % total)
            body = self._read_exact(total + 2, deadline)[:total]
            status, desc, headers = None, "", {}
            if hlen:
                status, desc, headers = _parse_headers(body[:hlen])
            msg = Msg(subject, sid, reply, headers, body[hlen:], status, desc)
            if sid == self._resp_sid:
                self._resp[subject] = msg
            elif sid in self._pending:
                self._pending[sid].append(msg)
        elif line == b"PING":
            self._send(b"PONG\r\n")
        elif line.startswith(b"-ERR"):
            raise NatsError(line[5:].decode("utf-8", "replace").strip(" '"))
        # +OK, PONG and INFO need nothing.

    # ----------------------------------------------------------------- API --

    def publish(self, subject, payload=b"", reply=None, headers=None):
        """Publishes payload (bytes or str) with optional headers (dict)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        r = (" " + reply) if reply else ""
        if headers:
            h = _encode_headers(headers)
            self._send(b"HPUB %s%s %d %d\r\n%s%s\r\n" % (
                subject.encode(), r.encode(), len(h), len(h) + len(payload), h, payload))
        else:
            self._send(b"PUB %s%s %d\r\n%s\r\n" % (subject.encode(), r.encode(), len(payload),
                                                  payload))

    def subscribe(self, subject, queue=None):
        """Subscribes; returns the sid for :meth:`next_msg`."""
        self._next_sid += 1
        sid = str(self._next_sid)
        self._pending[sid] = []
        q = (" " + queue) if queue else ""
        self._send(("SUB %s%s %s\r\n" % (subject, q, sid)).encode())
        return sid

    def unsubscribe(self, sid):
        self._pending.pop(sid, None)
        self._send(("UNSUB %s\r\n" % sid).encode())

    def next_msg(self, sid, timeout=None):
        """The next message of subscription sid, or None after timeout seconds
        (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            q = self._pending.get(sid)
            if q:
                return q.pop(0)
            try:
                self._read_one(deadline)
            except socket.timeout:
                return None

    def flush(self, timeout=None):
        """Round trip to the server: everything sent before has been read by it
        (and any -ERR for it raised)."""
        self._send(b"PING\r\n")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            line = self._read_line(deadline)
            if line == b"PONG":
                return
            if line.startswith(b"-ERR"):
                raise NatsError(line[5:].decode("utf-8", "replace").strip(" '"))
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                self._buf = line + b"\r\n" + self._buf
                self._read_one(deadline)
            elif line == b"PING":
                self._send(b"PONG\r\n")

    def request(self, subject, payload=b"", timeout=None, headers=None):
        """Sends a request and returns the reply Msg. Raises NoResponders at
        once when nothing subscribes to subject, TrainbusError
        ``client_timeout`` when no reply comes in time."""
        if self._resp_sid is None:
            self._next_sid += 1
            self._resp_sid = str(self._next_sid)
            self._send(("SUB %s.* %s\r\n" % (self._inbox_prefix, self._resp_sid)).encode())
        self._req_n += 1
        inbox = "%s.%d" % (self._inbox_prefix, self._req_n)
        self.publish(subject, payload, reply=inbox, headers=headers)
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while inbox not in self._resp:
            try:
                self._read_one(deadline)
            except socket.timeout:
                raise TrainbusError("client_timeout", "no reply on %s within %.1fs"
                                    % (subject, timeout if timeout is not None else self.timeout))
        msg = self._resp.pop(inbox)
        if msg.status == 503:
            raise NoResponders(subject)
        return msg

    # ----------------------------------------------------------- JetStream --

    def js_api(self, what, body=None, timeout=None):
        """A JetStream API request ($JS.API.what); returns the decoded answer
        or raises NatsError with JetStream's description."""
        msg = self.request("$JS.API." + what, json.dumps(body or {}).encode(), timeout)
        res = msg.json()
        if "error" in res:
            e = res["error"]
            raise NatsError("%s: %s (%s)" % (what, e.get("description"), e.get("err_code")),
                            "jetstream_error")
        return res

    def ordered(self, stream, filter_subject, start_seq=None, idle_heartbeat=2.0):
        """Yields the messages of stream on filter_subject in stream order
        from stream sequence start_seq (None: all; 0: only new ones), then
        live ones, for ever: a JetStream ordered consumer. Flow control and
        heartbeats are answered; a missed message (a consumer sequence out of
        step) makes a new consumer start after the last message delivered,
        as nats.go's ordered consumer does."""
        last_sseq = None
        while True:
            deliver = "%s.d%d" % (self._inbox_prefix, self._next_sid + 1)
            sid = self.subscribe(deliver)
            cfg = {"deliver_subject": deliver, "ack_policy": "none", "max_deliver": 1,
                   "filter_subject": filter_subject, "flow_control": True,
                   "idle_heartbeat": int(idle_heartbeat * 1e9), "mem_storage": True,
                   "num_replicas": 1, "replay_policy": "instant",
                   "inactive_threshold": int(300 * 1e9)}
            if last_sseq is not None:
                cfg.update(deliver_policy="by_start_sequence", opt_start_seq=last_sseq + 1)
            elif start_seq is None:
                cfg["deliver_policy"] = "all"
            elif start_seq == 0:
                cfg["deliver_policy"] = "new"
            else:
                cfg.update(deliver_policy="by_start_sequence", opt_start_seq=start_seq)
            info = self.js_api("CONSUMER.CREATE." + stream, {"stream_name": stream, "config": cfg})
            consumer = info.get("name")
            cseq = 0
            reset = False
            while not reset:
                msg = self.next_msg(sid, idle_heartbeat * 3)
                if msg is None:  # heartbeats stopped: the consumer is gone
                    reset = True
                    break
                if msg.status == 100:
                    if msg.reply:  # flow control request
                        self.publish(msg.reply, b"")
                    stalled = msg.headers.get("Nats-Consumer-Stalled")
                    if stalled:
                        self.publish(stalled, b"")
                    lc = msg.headers.get("Nats-Last-Consumer")
                    if lc is not None and lc.isdigit() and int(lc) != cseq:
                        reset = True
                    continue
                if msg.status is not None:
                    continue
                tok = (msg.reply or "").split(".")
                if len(tok) < 9 or tok[0] != "$JS" or tok[1] != "ACK":
                    continue
                # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or
                # with a domain and account hash in front of the stream (12+ tokens).
                base = 2 if len(tok) == 9 else 4
                sseq, mseq = int(tok[base + 3]), int(tok[base + 4])
                if mseq != cseq + 1:
                    reset = True
                    break
                cseq = mseq
                last_sseq = sseq
                msg.stream_seq, msg.pending = sseq, int(tok[base + 6])
                yield msg
            self.unsubscribe(sid)
            try:
                self.js_api("CONSUMER.DELETE.%s.%s" % (stream, consumer))
            except TrainbusError:
                pass


def _subject(ns, run, *rest):
    return ".".join(("tb", ns, "run", run.replace(".", "%2E")) + rest)


def follow(url, run, ns="default", since_seq=1, events=None, timeout=None, **login):
    """Yields the events of run (trainbus.Event objects, as a direct
    subscription gives them) through the broker: from event seq since_seq
    (1: the whole stored history; 0: only new events), then live, with no
    gap and no duplicate, until the run's final state event (included).
    events: event names or '*' globs to yield (all by default); timeout:
    seconds for connecting and for each JetStream request (a quiet run is
    waited for as long as it takes: the consumer's heartbeats show it is
    alive, and a consumer that stops sending them is made again). login:
    user, password, token, tls_ca, name (see :class:`Nats`)."""
    import fnmatch
    nc = Nats(url, timeout=timeout or 5.0, **login)
    try:
        last = since_seq - 1 if since_seq > 0 else 0
        it = nc.ordered("TB_" + ns, _subject(ns, run, "evt", ">"),
                        start_seq=None if since_seq > 0 else 0)
        for msg in it:
            params = _fix_numbers(msg.json())
            ev = Event(params)
            seq = ev.get("seq", 0)
            if ev.get("run") != run or seq <= last:
                continue
            last = seq
            if events is None or any(fnmatch.fnmatchcase(ev.event, p) for p in events):
                yield ev
            if ev.event == "state" and ev.get("state") in FINAL_STATES:
                return
    finally:
        nc.close()


def call(url, run, method, params=None, ns="default", timeout=60.0, **login):
    """Sends control request method (set_lr, stop, pause, resume, checkpoint,
    cancel) with params (a dict, without "run") for run through the bridge,
    and returns the daemon's result (set_lr and checkpoint: once applied,
    with applied_at). Raises RemoteError with the protocol's error name
    (invalid_params, no_such_run, invalid_state, ...), NoResponders when no
    bridge serves the namespace, NatsError when the broker refuses (an
    observer user publishing to a control subject: a permissions
    violation)."""
    with Nats(url, timeout=timeout, **login) as nc:
        body = json.dumps(params or {}).encode()
        subject = _subject(ns, run, "ctl", method)
        if len(body) + len(subject) + 256 > nc.max_payload:
            raise TrainbusError("too_large", "the request is %d bytes, over the server's "
                                "max_payload %d" % (len(body), nc.max_payload))
        msg = nc.request(subject, body, timeout)
        res = msg.json()
        if "error" in res:
            e = res["error"]
            raise RemoteError((e.get("data") or {}).get("name", "error"), e.get("message", ""),
                              e.get("code"))
        return res.get("result")


def _last(url, stream, subject, **login):
    with Nats(url, **login) as nc:
        try:
            res = nc.js_api("STREAM.MSG.GET." + stream, {"last_by_subj": subject})
        except NatsError as e:
            if "10037" in e.message or "10059" in e.message:
                return None
            raise
        return json.loads(base64.b64decode(res["message"].get("data", "")))


def stored(url, run, ns="default", **login):
    """Every message the stream holds for run right now, in stream order, as
    (Tb-Seq header, Event) pairs, duplicates included: what a consumer that
    replays the run from the start gets before the live part."""
    nc = Nats(url, **login)
    out = []
    try:
        try:
            last = nc.js_api("STREAM.MSG.GET.TB_" + ns,
                             {"last_by_subj": _subject(ns, run, "evt", ">")})["message"]["seq"]
        except NatsError as e:
            if "10037" in e.message:  # nothing stored for the run
                return out
            raise
        for msg in nc.ordered("TB_" + ns, _subject(ns, run, "evt", ">")):
            out.append((int(msg.headers.get("Tb-Seq", "0")), Event(_fix_numbers(msg.json()))))
            if msg.stream_seq >= last:
                break
    except NatsError as e:
        if "10059" in e.message:
            return out
        raise
    finally:
        nc.close()
    return out


def status(url, run, ns="default", **login):
    """The latest status (a run object) the bridge published for run, or None."""
    return _last(url, "TB_%s_LAST" % ns, _subject(ns, run, "status"), **login)


def runs(url, ns="default", **login):
    """The latest run list the bridge published ({"runs": [...]}), or None."""
    return _last(url, "TB_%s_LAST" % ns, "tb.%s.runs" % ns, **login)
