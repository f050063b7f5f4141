"""Training loops of your own on the bus: publish their events to a daemon as
a trainer, and take control back (docs/PROTOCOL.md section 13).

:class:`Publisher` is for hand-written loops: call its hook methods with
Keras's names and arguments (``on_epoch_begin(epoch, logs)``,
``on_train_batch_end(batch, logs)``, ...). The run then shows in ``trainbus
runs``, ``watch``, the dashboard and the history like a run the daemon trains,
and ``trainbus set-lr``, ``stop``, ``pause``, ``resume`` and ``checkpoint``
steer it. Controls take effect at the batch boundaries the daemon's own runs
have (right after train_begin, epoch_begin, each train_batch_end and
epoch_end), inside those hook calls: a new rate goes to the function you gave
(``set_lr=``), a stop sets :attr:`Publisher.stop_training` (stop your batch
loop when it is true, validate, end the epoch: Keras's semantics), a pause
blocks the hook until resumed. Or apply them yourself: pass
``apply_controls=False`` and call :meth:`Publisher.pending`.

:class:`TorchPublisher` applies the rate to a ``torch.optim`` optimizer's
param groups; :func:`keras_callback` makes a Keras callback (tf.keras or
Keras 3, imported only when called) that publishes every hook and applies
controls to ``model.optimizer.learning_rate`` and ``model.stop_training``.

The loop never waits for the network: events go into a bounded queue that a
thread of the publisher sends; when it is full, batch events are dropped and
counted (the daemon tells subscribers "dropped"), lifecycle events never are.
The one wait is lockstep, at the hooks a lockstep subscriber asked for. A lost
connection is retried (the state directory's address and token read again),
the run attached again, and what the daemon had not taken sent again.
"""

import collections
import json
import math
import os
import select
import threading
import time

from .client import Client, ConnectionLost, TrainbusError

_BATCH = {"train_batch_begin", "train_batch_end", "test_batch_begin", "test_batch_end",
          "predict_batch_begin", "predict_batch_end"}
_BOUNDARY = {"train_begin", "epoch_begin", "train_batch_end", "epoch_end"}
_MSG_BYTES = 48 * 1024
_ACK_S = 0.2


def _num(v):
    """A log value for the wire: a float, or the protocol's strings."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


class Control(dict):
    """A control from the daemon: ``action`` (set_lr, stop, pause, resume,
    checkpoint), ``value`` (the rate, for set_lr), ``by`` and ``id``."""

    __slots__ = ()

    def __getattr__(self, name):
        return self.get(name)


class Publisher:
    """Publishes one run of a hand-written loop.

    addr, token, state_dir: where the daemon is (as :class:`Client`; the
    control token or a trainer token). name, epochs, steps, model: what is
    trained (steps per epoch; model a summary text), shown in status.
    get_lr / set_lr: functions returning and setting the loop's learning rate
    (set_lr receives the new rate). checkpoint: a function writing a
    checkpoint and returning its path (None: the run takes no checkpoint
    requests). run, last_seq: continue a run this trainer published before
    (its id and the last seq it published), after a restart. queue_size:
    events held before batch events are dropped. reconnect: seconds to keep
    reconnecting. apply_controls: apply controls inside the boundary hooks
    (default) or leave them to :meth:`pending`. tls, cafile, insecure,
    certfile, keyfile, server_hostname: TLS, as :class:`Client`'s (a
    "tls://" addr turns it on too).
    """

    def __init__(self, addr=None, token=None, state_dir=None, name=None, epochs=None,
                 steps=None, model=None, get_lr=None, set_lr=None, checkpoint=None, run=None,
                 last_seq=0, queue_size=20000, reconnect=60.0, apply_controls=True,
                 client_name="trainbus-publisher", timeout=30.0, tls=False, cafile=None,
                 insecure=False, certfile=None, keyfile=None, server_hostname=None):
        self._get_lr, self._set_lr, self._checkpoint = get_lr, set_lr, checkpoint
        self.apply_controls = apply_controls
        self.stop_training = False
        self.epoch = -1
        self.batch = -1
        self.queue_size = queue_size
        self.reconnect = reconnect
        self.stats = {"events": 0, "sent": 0, "dropped": 0, "rejected": 0, "reconnects": 0,
                      "controls": 0}
        self.errors = collections.deque(maxlen=100)  # messages of refusals
        self._attach_params = {"name": name, "epochs": epochs, "steps": steps, "model": model,
                               "checkpoints": checkpoint is not None or None}
        lr = self._lr_now()
        if lr is not None and lr > 0:
            self._attach_params["lr"] = lr
        self._lock = threading.Condition()
        self._queue = collections.deque()  # ("event", dict) / ("applied", dict) / ("finish", dict)
        self._dropped = 0
        self._seq = int(last_seq or 0)
        self._controls = collections.deque()
        self._paused = False
        self._released = 0
        self._gen = 0
        self._connected = False
        self._closing = False
        self._finished = None
        self._hooks, self._ls_timeout = set(), 5000
        self._sent = collections.deque()  # (last_seq, line) not yet acknowledged
        self._held = 0
        self._skip_upto = 0
        self._ack_id = None
        self._ack_t = 0.0
        # The I/O thread sleeps in select(); the loop wakes it through a pipe
        # only when it does (a byte per wake, not per event).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sleeping = False
        self._client = Client(addr, token, role="trainer", name=client_name, timeout=timeout,
                              state_dir=state_dir, tls=tls, cafile=cafile, insecure=insecure,
                              certfile=certfile, keyfile=keyfile,
                              server_hostname=server_hostname)
        self.run = run
        self._attach()
        self._read(0)
        self._connected = True
        self._gen = 1
        self._thread = threading.Thread(target=self._io, name="trainbus-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- hooks --

    def on_train_begin(self, logs=None):
        self._hook("train_begin", -1, -1, logs)

    def on_train_end(self, logs=None):
        self._hook("train_end", self.epoch if self.epoch >= 0 else -1, -1, logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = int(epoch)
        self.batch = -1
        self._hook("epoch_begin", self.epoch, -1, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch = int(epoch)
        self.batch = -1
        self._hook("epoch_end", self.epoch, -1, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self.batch = int(batch)
        self._hook("train_batch_begin", self.epoch, self.batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.batch = int(batch)
        self._hook("train_batch_end", self.epoch, self.batch, logs)

    def on_test_begin(self, logs=None):
        self._hook("test_begin", self.epoch, -1, logs)

    def on_test_end(self, logs=None):
        self._hook("test_end", self.epoch, -1, logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._hook("test_batch_begin", self.epoch, int(batch), logs)

    def on_test_batch_end(self, batch, logs=None):
        self._hook("test_batch_end", self.epoch, int(batch), logs)

    def on_predict_begin(self, logs=None):
        self._hook("predict_begin", -1, -1, logs)

    def on_predict_end(self, logs=None):
        self._hook("predict_end", -1, -1, logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._hook("predict_batch_begin", -1, int(batch), logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._hook("predict_batch_end", -1, int(batch), logs)

    # Keras's deprecated names for the train batch hooks.
    on_batch_begin = on_train_batch_begin
    on_batch_end = on_train_batch_end

    def _lr_now(self):
        if self._get_lr is None:
            return None
        try:
            return float(self._get_lr())
        except (TypeError, ValueError):
            return None

    def _hook(self, event, epoch, batch, logs):
        ev = {"event": event, "time": round(time.time(), 6)}
        if epoch >= 0:
            ev["epoch"] = epoch
        if batch >= 0:
            ev["batch"] = batch
        if logs:
            out = {}
            for k, v in logs.items():
                v = _num(v)
                if v is not None and len(out) < 32:
                    out[str(k)[:47]] = v
            ev["logs"] = out
        lr = self._lr_now()
        if lr is not None and lr > 0 and math.isfinite(lr):
            ev["lr"] = lr
        with self._lock:
            lockstep = event in self._hooks and self._connected
            if (event in _BATCH and not lockstep and len(self._queue) >= self.queue_size):
                self._dropped += 1
                self.stats["dropped"] += 1
                return
            self._seq += 1
            seq = ev["seq"] = self._seq
            if self._dropped:
                ev["dropped"] = self._dropped
                self._dropped = 0
            if lockstep:
                ev["lockstep"] = True
            gen = self._gen
            self._queue.append(("event", ev))
            self.stats["events"] += 1
            self._wake()
            if lockstep:
                limit = time.monotonic() + self._ls_timeout / 1000.0 + 1.0
                while (self._released < seq and self._gen == gen and self._connected
                       and not self._closing):
                    left = limit - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
        if self.apply_controls:
            if lockstep:
                self._apply(changes_only=True)  # what the answer carried, in the hook
            if event in _BOUNDARY:
                self._apply()

    # ---------------------------------------------------------- controls --

    def pending(self):
        """The controls received and not applied yet (taken: apply them and
        report each with :meth:`applied`)."""
        with self._lock:
            out = list(self._controls)
            self._controls.clear()
        return out

    def applied(self, control, old=None, value=None, path=None, error=None):
        """Reports a control taken from :meth:`pending` as applied here, at
        the current epoch and batch (error: it could not be)."""
        a = {"id": control.get("id") or 0, "action": control["action"], "by": control.get("by")}
        if self.epoch >= 0:
            a["epoch"] = self.epoch
        if self.batch >= 0:
            a["batch"] = self.batch
        if value is not None:
            a["value"] = float(value)
        elif control["action"] == "set_lr" and control.get("value") is not None:
            a["value"] = float(control["value"])
        if old is not None:
            a["old"] = float(old)
        if path:
            a["path"] = str(path)
        if error:
            a["error"] = str(error)[:255]
        with self._lock:
            self._queue.append(("applied", {k: v for k, v in a.items() if v is not None}))
            self._wake()

    def _apply(self, changes_only=False):
        """Applies pending controls: a rate and a stop always; pause,
        resume and checkpoint only at a boundary (not changes_only)."""
        while True:
            with self._lock:
                todo = [c for c in self._controls
                        if not changes_only or c["action"] in ("set_lr", "stop")]
                for c in todo:
                    self._controls.remove(c)
            for c in todo:
                self._apply_one(c)
            if changes_only:
                return
            with self._lock:
                if not self._paused or self.stop_training or self._closing:
                    return
                if not self._controls:
                    self._lock.wait(0.5)

    def _apply_one(self, c):
        action = c["action"]
        if action == "set_lr":
            old = self._lr_now()
            if self._set_lr is None:
                self.applied(c, error="this loop takes no learning rate (no set_lr function)")
                return
            self._set_lr(float(c["value"]))
            now = self._lr_now()
            self.applied(c, old=old, value=now if now is not None else c["value"])
        elif action == "stop":
            if not self.stop_training:
                self.stop_training = True
                self.applied(c)
            with self._lock:
                self._paused = False
        elif action == "pause":
            with self._lock:
                was = self._paused
                self._paused = True
            if not was:
                self.applied(c)
        elif action == "resume":
            with self._lock:
                was = self._paused
                self._paused = False
            if was:
                self.applied(c)
        elif action == "checkpoint":
            try:
                path = self._checkpoint()
            except Exception as e:  # the loop's own failure, said to the requester
                self.applied(c, error="the checkpoint failed: %s" % e)
                return
            self.applied(c, path=path)

    # ------------------------------------------------------------- life --

    def finish(self, state="finished", reason=None, timeout=60.0):
        """Ends the run after every queued event has gone out (state
        "finished" or "failed"; the daemon makes it stopped or cancelled when
        a stop or cancel was applied). Returns once the daemon has answered,
        raising TrainbusError when it cannot be reached in time."""
        with self._lock:
            self._queue.append(("finish", {"state": state, "reason": reason}))
            self._wake()
            limit = time.monotonic() + timeout
            while self._finished is None and time.monotonic() < limit:
                self._lock.wait(0.1)
            done = self._finished
            self._closing = True
            self._wake()
        self._thread.join(5)
        self._close_pipe()
        self._client.close()
        if done is None:
            raise TrainbusError("client_timeout", "run %s: the daemon did not answer finish in "
                                "time" % self.run)
        if isinstance(done, Exception):
            raise done

    def close(self):
        """Stops publishing without ending the run (it is detached on the
        daemon, and may be attached again with run= and last_seq=)."""
        with self._lock:
            self._closing = True
            self._wake()
        self._thread.join(5)
        self._client.close()
        self._close_pipe()

    def _wake(self):
        """Under the lock: wakes the I/O thread if it sleeps."""
        self._lock.notify_all()
        if self._sleeping:
            self._sleeping = False
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # the pipe is full: it is being woken anyway

    def _close_pipe(self):
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def wait_lockstep(self, timeout):
        """Waits up to timeout seconds for the daemon to announce lockstep
        hooks (a lockstep subscriber, such as a remote callback run with
        trainbus.run_callback, is there): start training then, and it sees
        every hook from the first. True if it came."""
        limit = time.monotonic() + timeout
        with self._lock:
            while not self._hooks and time.monotonic() < limit:
                self._lock.wait(0.05)
            return bool(self._hooks)

    @property
    def last_seq(self):
        """The seq of the last event published (the trainer's numbering)."""
        with self._lock:
            return self._seq

    # ---------------------------------------------------------- the I/O --

    def _attach(self):
        params = {k: v for k, v in self._attach_params.items() if v is not None}
        if self.run:
            params["run"] = self.run
            params["last_seq"] = self._seq
        res = self._client.call("attach", **params)
        self.run = res["run"]
        self._acked(int(res.get("last_seq", 0)), reset=True)
        self._skip_upto = self._held

    def _acked(self, seq, reset=False):
        if reset:
            self._held = 0
        self._held = max(self._held, seq)
        while self._sent and self._sent[0][0] <= self._held:
            self._sent.popleft()

    def _send_line(self, obj):
        c = self._client
        data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        try:
            c._sock.settimeout(30)
            c._sock.sendall(data)
        except (OSError, AttributeError) as e:
            c.close()
            raise ConnectionLost("closed", "sending to the daemon: %s" % e) from None
        return data

    def _flush(self, events):
        if not events:
            return
        msg = {"jsonrpc": "2.0", "method": "publish", "params": {"run": self.run,
                                                                 "events": events}}
        now = time.monotonic()
        if self._ack_id is None and now - self._ack_t >= _ACK_S:
            self._client._next_id += 1
            self._ack_id = msg["id"] = self._client._next_id
            self._ack_t = now
        line = self._send_line(msg)
        self._sent.append((events[-1]["seq"], line))
        self.stats["sent"] += len(events)

    def _send(self, items):
        events, size = [], 0
        for kind, body in items:
            if kind == "event":
                if body["seq"] <= self._skip_upto:
                    if body.get("lockstep"):
                        with self._lock:
                            self._released = max(self._released, body["seq"])
                            self._lock.notify_all()
                    continue
                events.append(body)
                size += 200 + 40 * len(body.get("logs", ()))
                if size >= _MSG_BYTES or body.get("lockstep"):
                    self._flush(events)
                    events, size = [], 0
            elif kind == "applied":
                self._flush(events)
                events, size = [], 0
                self._send_line({"jsonrpc": "2.0", "method": "applied",
                                 "params": dict(body, run=self.run)})
            else:
                self._flush(events)
                events, size = [], 0
                params = {"run": self.run}
                if body.get("state") and body["state"] != "finished":
                    params["state"] = body["state"]
                if body.get("reason"):
                    params["reason"] = str(body["reason"])[:127]
                try:
                    self._client.call("finish", **params)
                    result = True
                except ConnectionLost:
                    raise
                except TrainbusError as e:
                    result = e
                self._read(0)
                with self._lock:
                    self._finished = result
                    self._lock.notify_all()
        self._flush(events)

    def _read(self, timeout):
        c = self._client
        while True:
            if c._queue:
                msg = c._queue.popleft()
            else:
                if c._sock is None:
                    raise ConnectionLost("closed", "not connected")
                pending = getattr(c._sock, "pending", None)  # a TLS socket's buffered bytes
                if b"\n" not in c._buf and not (pending and pending()):
                    r, _, _ = select.select([c._sock, self._wake_r], [], [], timeout)
                    if self._wake_r in r:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                    if c._sock not in r:
                        return
                timeout = 0
                msg = c._decode(c._read_line(time.monotonic() + 5))
            self._on_message(msg)

    def _on_message(self, msg):
        method, p = msg.get("method"), msg.get("params") or {}
        if method == "control":
            self.stats["controls"] += 1
            c = Control(p)
            why = None
            if c.action == "checkpoint" and self._checkpoint is None:
                why = "this trainer takes no checkpoint requests (no checkpoint function)"
            elif c.action == "set_lr" and self._set_lr is None and self.apply_controls:
                why = "this loop takes no learning rate (no set_lr function)"
            if why:
                self._send_line({"jsonrpc": "2.0", "method": "applied", "params": {
                    "run": self.run, "id": c.id, "action": c.action, "error": why}})
                return
            with self._lock:
                self._controls.append(c)
                self._lock.notify_all()
        elif method == "continue":
            with self._lock:
                self._released = max(self._released, int(p.get("seq", 0)))
                self._lock.notify_all()
        elif method == "lockstep":
            with self._lock:
                self._hooks = set(p.get("hooks") or [])
                self._ls_timeout = int(p.get("timeout_ms") or 5000)
                self._lock.notify_all()
        elif method == "rejected":
            self.stats["rejected"] += 1
            self.errors.append(p.get("message"))
        elif "id" in msg and "method" not in msg:
            if msg.get("id") == self._ack_id:
                self._ack_id = None
            if "result" in msg and isinstance(msg["result"], dict) and "last_seq" in msg["result"]:
                self._acked(int(msg["result"]["last_seq"]))
            elif "error" in msg:
                self.stats["rejected"] += 1
                self.errors.append((msg.get("error") or {}).get("message"))

    def _lost(self):
        with self._lock:
            self._connected = False
            self._ack_id = None
            self._lock.notify_all()  # a lockstep wait ends with its connection

    def _reconnect(self):
        give_up = time.monotonic() + self.reconnect
        delay = 0.1
        while True:
            with self._lock:
                if self._closing:
                    return False
            try:
                self._client._open()
                self._attach()
                for _, line in list(self._sent):
                    self._client._sock.sendall(line)
                self._read(0)
                with self._lock:
                    self._connected = True
                    self._gen += 1
                self.stats["reconnects"] += 1
                return True
            except ConnectionLost:
                pass
            except TrainbusError as e:  # the daemon refuses the run: it is over for us
                self.errors.append(str(e))
                with self._lock:
                    self._finished = e
                    self._closing = True
                    self._lock.notify_all()
                return False
            if time.monotonic() + delay > give_up:
                with self._lock:
                    self._finished = ConnectionLost("closed", "the daemon could not be reached")
                    self._closing = True
                    self._lock.notify_all()
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _io(self):
        while True:
            with self._lock:
                if self._closing and (not self._queue or not self._connected):
                    return
                items = list(self._queue)
                self._queue.clear()
                self._sleeping = not items and self._connected
            try:
                if not self._connected:
                    with self._lock:
                        self._queue.extendleft(reversed(items))
                    if not self._reconnect():
                        return
                    continue
                if items:
                    self._send(items)
                    items = []
                    self._read(0)
                else:
                    self._read(1.0)  # until the daemon sends or the loop wakes it
                with self._lock:
                    self._sleeping = False
            except ConnectionLost:
                with self._lock:
                    # What was not sent goes after the reconnect (the sent
                    # lines go again first).
                    self._queue.extendleft(reversed(items))
                self._lost()


class TorchPublisher(Publisher):
    """A :class:`Publisher` whose rate is a ``torch.optim`` optimizer's:
    ``set_lr`` sets ``lr`` in every param group (as
    ``torch.optim.lr_scheduler`` does), ``stop`` and ``pause`` take effect at
    the next batch boundary (check :attr:`stop_training` after each batch).
    Imports nothing from torch."""

    def __init__(self, optimizer, **kwargs):
        self.optimizer = optimizer

        def get_lr():
            return float(optimizer.param_groups[0]["lr"])

        def set_lr(lr):
            for group in optimizer.param_groups:
                group["lr"] = float(lr)

        kwargs.setdefault("get_lr", get_lr)
        kwargs.setdefault("set_lr", set_lr)
        super().__init__(**kwargs)


def _keras_lr(opt):
    lr = getattr(opt, "learning_rate", None)
    if lr is None:
        lr = getattr(opt, "lr", None)
    for read in (lambda v: v.numpy(), lambda v: v):
        try:
            return float(read(lr))
        except (TypeError, ValueError, AttributeError):
            continue
    return None


def _keras_set_lr(opt, value):
    lr = getattr(opt, "learning_rate", None)
    if hasattr(lr, "assign"):
        lr.assign(value)
    else:
        opt.learning_rate = value


class _KerasMixin:
    """The methods of the Keras callback (see :func:`keras_callback`)."""

    def _tb_init(self, kwargs):
        self._tb_kwargs = kwargs
        self.publisher = None

    def _tb_pub(self):
        if self.publisher is None:
            model = self.model
            params = getattr(self, "params", None) or {}
            kw = dict(self._tb_kwargs)
            kw.setdefault("epochs", params.get("epochs"))
            kw.setdefault("steps", params.get("steps"))
            kw.setdefault("name", getattr(model, "name", None))
            kw.setdefault("get_lr", lambda: _keras_lr(model.optimizer))
            kw.setdefault("set_lr", lambda v: _keras_set_lr(model.optimizer, v))
            self.publisher = Publisher(**kw)
        return self.publisher

    def _tb_after(self):
        if self.publisher is not None and self.publisher.stop_training:
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        self._tb_pub().on_train_begin(logs)
        self._tb_after()

    def on_train_end(self, logs=None):
        self._tb_pub().on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._tb_pub().on_epoch_begin(epoch, logs)
        self._tb_after()

    def on_epoch_end(self, epoch, logs=None):
        self._tb_pub().on_epoch_end(epoch, logs)
        self._tb_after()

    def on_train_batch_begin(self, batch, logs=None):
        self._tb_pub().on_train_batch_begin(batch, logs)
        self._tb_after()

    def on_train_batch_end(self, batch, logs=None):
        self._tb_pub().on_train_batch_end(batch, logs)
        self._tb_after()

    def on_test_begin(self, logs=None):
        self._tb_pub().on_test_begin(logs)

    def on_test_end(self, logs=None):
        self._tb_pub().on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._tb_pub().on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._tb_pub().on_test_batch_end(batch, logs)

    def on_predict_begin(self, logs=None):
        self._tb_pub().on_predict_begin(logs)

    def on_predict_end(self, logs=None):
        self._tb_pub().on_predict_end(logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._tb_pub().on_predict_batch_begin(batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._tb_pub().on_predict_batch_end(batch, logs)

    def finish(self, state="finished", reason=None):
        """Ends the run on the daemon (call after fit, and evaluate or
        predict if you publish those too)."""
        if self.publisher is not None:
            self.publisher.finish(state, reason)


_keras_classes = {}


def keras_callback(base=None, **kwargs):
    """A Keras callback that publishes every hook of ``model.fit`` (and
    evaluate, predict) to a daemon, and applies the daemon's controls to
    ``model.optimizer.learning_rate`` and ``model.stop_training``. kwargs are
    :class:`Publisher`'s (addr, token, state_dir, name, ...); the run is
    attached at the first hook, with the fit's epochs and steps. Call its
    ``finish()`` when done. base: the Callback class to derive from (default:
    ``keras.callbacks.Callback`` of Keras 3, else ``tf.keras``'s), imported
    here, not when trainbus is."""
    if base is None:
        try:
            import keras  # noqa: F401  (Keras 3, or the Keras tf.keras is)
            base = keras.callbacks.Callback
        except ImportError:
            from tensorflow import keras as tfk  # tf.keras 2
            base = tfk.callbacks.Callback
    cls = _keras_classes.get(base)
    if cls is None:
        def __init__(self, **kw):
            base.__init__(self)
            self._tb_init(kw)

        cls = type("TrainbusPublisher", (_KerasMixin, base), {"__init__": __init__})
        _keras_classes[base] = cls
    return cls(**kwargs)


class KerasPublisher:
    """The Keras callback class: ``KerasPublisher(**kwargs)`` is
    ``keras_callback(**kwargs)``, an instance of a subclass of Keras's
    ``Callback`` made when first used (so importing trainbus imports no
    Keras)."""

    def __new__(cls, base=None, **kwargs):
        return keras_callback(base=base, **kwargs)
