"""Keras-style callbacks that run in another process.

A :class:`RemoteCallback` has the methods and arguments of
``keras.callbacks.Callback``. :func:`run_callback` attaches one to a run of a
daemon: it subscribes to the events of the hooks the callback overrides,
calls the matching method with Keras's arguments, and sends back what the
callback asked for (``self.set_lr(...)``, ``self.model.optimizer.learning_rate
= ...``, ``self.stop_training = True`` or ``self.model.stop_training = True``).

In lockstep mode (the default) the trainer waits at each of those hooks until
the callback has run, and the changes travel with the ``continue`` answer, so
they take effect before training goes on: the same batch boundary where a
local callback's changes would apply. Without lockstep, training does not
wait; changes are sent as ordinary set_lr / stop calls and apply at the next
batch boundary after they arrive.
"""

from .client import FINAL_STATES, Client, ConnectionLost

# Hook method -> event name, with the kind of first argument Keras passes.
_HOOKS = {
    "on_train_begin": ("train_begin", None),
    "on_train_end": ("train_end", None),
    "on_epoch_begin": ("epoch_begin", "epoch"),
    "on_epoch_end": ("epoch_end", "epoch"),
    "on_train_batch_begin": ("train_batch_begin", "batch"),
    "on_train_batch_end": ("train_batch_end", "batch"),
    "on_test_begin": ("test_begin", None),
    "on_test_end": ("test_end", None),
    "on_test_batch_begin": ("test_batch_begin", "batch"),
    "on_test_batch_end": ("test_batch_end", "batch"),
    "on_predict_begin": ("predict_begin", None),
    "on_predict_end": ("predict_end", None),
    "on_predict_batch_begin": ("predict_batch_begin", "batch"),
    "on_predict_batch_end": ("predict_batch_end", "batch"),
}
_EVENT_TO_HOOK = {ev: hook for hook, (ev, _) in _HOOKS.items()}
# Keras's deprecated aliases: overriding them means the train batch hooks.
_ALIASES = {"on_batch_begin": "on_train_batch_begin", "on_batch_end": "on_train_batch_end"}


class _Optimizer:
    """``model.optimizer`` as a callback sees it: the learning rate only."""

    def __init__(self, cb):
        self._cb = cb

    @property
    def learning_rate(self):
        return self._cb.get_lr()

    @learning_rate.setter
    def learning_rate(self, value):
        self._cb.set_lr(value)

    lr = learning_rate


class _RemoteModel:
    """``self.model`` for a remote callback: ``stop_training`` and
    ``optimizer.learning_rate`` (read and write); the weights stay with the
    trainer."""

    def __init__(self, cb):
        self._cb = cb
        self.optimizer = _Optimizer(cb)

    @property
    def stop_training(self):
        return self._cb.stop_training

    @stop_training.setter
    def stop_training(self, value):
        self._cb.stop_training = value


class RemoteCallback:
    """Base class for remote callbacks: subclass and override the hooks you
    need, with Keras's names and arguments. Available inside a hook:

    - ``self.params``: {"epochs", "run", "verbose": 0, "steps"} (steps once known);
    - ``self.model.optimizer.learning_rate`` / ``self.get_lr()``: the current rate;
    - ``self.set_lr(lr)`` or assigning ``self.model.optimizer.learning_rate``;
    - ``self.stop_training = True`` or ``self.model.stop_training = True``;
    - ``self.run`` (the run id) and ``self.client`` (the :class:`Client`);
    - ``self.classes``: the run's class names when its labels were names
      (output i is class ``classes[i]``), else None.
    """

    def __init__(self):
        self.model = _RemoteModel(self)
        self.params = {}
        self.run = None
        self.client = None
        self.stop_training = False
        self.classes = None
        self._lr = None
        self._pending_lr = None

    # Keras's setters, kept so code that calls them keeps working.
    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self.model = model

    def get_lr(self):
        """The learning rate as of the last event (including a change this
        callback asked for and that is about to apply)."""
        return self._pending_lr if self._pending_lr is not None else self._lr

    def set_lr(self, lr):
        """Asks for a new learning rate; applied before training goes on in
        lockstep mode, at the next batch boundary otherwise."""
        lr = float(lr)
        if not lr > 0 or lr == float("inf"):
            raise ValueError("learning rate must be finite and positive, got %r" % lr)
        self._pending_lr = lr

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


def overridden_hooks(cb):
    """Event names of the hooks cb's class overrides, in Keras order."""
    cls = type(cb)
    out = []
    for hook, (event, _) in _HOOKS.items():
        if getattr(cls, hook) is not getattr(RemoteCallback, hook):
            out.append(event)
    for alias, hook in _ALIASES.items():
        ev = _HOOKS[hook][0]
        if getattr(cls, alias) is not getattr(RemoteCallback, alias) and ev not in out:
            out.append(ev)
    return out


def _pick_run(client):
    active = [r["run"] for r in client.runs() if r.get("state") not in FINAL_STATES]
    if len(active) != 1:
        raise ValueError("name the run with run=: %s" % (
            "no run is active" if not active else "several are active (%s)" % ", ".join(active)))
    return active[0]


def _answer(client, run, ev, lr, stop, who, reconnect):
    """Sends what the callback asked for. A lockstep answer lost with the
    connection (the daemon restarting) is not sent again here: the restarted
    daemon asks for it again and the client repeats it (Client.next_event).
    A plain set_lr or stop is sent again once reconnected."""
    for attempt in (0, 1):
        try:
            if ev.get("lockstep"):
                client.continue_(run, ev["seq"], set_lr=lr, stop=stop)
            else:
                if lr is not None:
                    client.set_lr(run, lr)
                if stop:
                    client.stop(run, reason="stop_training set by %s" % who)
            return
        except ConnectionLost:
            if not reconnect or ev.get("lockstep") or attempt:
                if reconnect and ev.get("lockstep"):
                    return
                raise
            client.reconnect(retry_for=reconnect)


def run_callback(cb, addr=None, token=None, run=None, lockstep=True, lockstep_timeout_ms=30000,
                 since_seq=None, every=None, reconnect=60.0, client=None, state_dir=None,
                 **connect):
    """Runs callback cb against run (default: the only active run) of the
    daemon at addr until the run ends; returns its final state.

    lockstep: True waits at every hook cb overrides; a list of hook event
    names ("epoch_end") waits at those only; False never waits. Changes the
    callback asks for are sent with continue (lockstep events) or as set_lr /
    stop calls. since_seq replays past events first (without lockstep);
    every samples batch events; reconnect is how many seconds to keep
    reconnecting if the daemon goes away (the run resumes with no gap or
    duplicate). client: an existing controller Client to use instead.
    state_dir: the daemon's state directory, where the address and token are
    read (at every reconnect too) when addr and token are not given.
    connect: more keyword arguments for the Client (TLS: tls, cafile,
    insecure, certfile, keyfile, server_hostname).
    """
    own = client is None
    if own:
        client = Client(addr, token, role="controller", name=type(cb).__name__,
                        state_dir=state_dir, **connect)
    try:
        run = run or _pick_run(client)
        info = client.status(run)
        cb.run = run
        cb.client = client
        cb._lr = info.get("lr")
        cb.classes = info.get("classes")
        cb.params = {"epochs": info.get("epochs"), "run": run, "verbose": 0, "steps": None}
        hooks = overridden_hooks(cb) or ["epoch_end"]
        if lockstep is True:
            lock = list(hooks)
        elif lockstep:
            lock = list(lockstep)
        else:
            lock = []
        events = sorted(set(hooks) | set(lock) | {"state", "control"})
        if since_seq is None and info.get("state") in FINAL_STATES:
            return info.get("state")
        sub = client.subscribe(
            runs=[run], events=events, every=every,
            since_seq=since_seq if since_seq is not None else info.get("last_seq", 0) + 1,
            lockstep=lock or None, lockstep_timeout_ms=lockstep_timeout_ms if lock else None,
            reconnect=reconnect)
        stop_sent = False
        max_batch = -1
        for ev in sub:
            name = ev.get("event")
            logs = dict(ev.get("logs") or {})
            if "lr" in logs:
                cb._lr = logs["lr"]
            if name == "control" and ev.get("action") == "set_lr" and ev.get("value") is not None:
                cb._lr = ev["value"]
            if name == "state" and ev.get("state") in FINAL_STATES:
                return ev["state"]
            if name == "train_begin" and "classes" in ev:
                cb.classes = ev["classes"]
            hook = _EVENT_TO_HOOK.get(name)
            if hook is None or name not in hooks:
                continue
            if name == "train_batch_end":
                max_batch = max(max_batch, ev.get("batch", -1))
            elif name == "epoch_end" and max_batch >= 0:
                cb.params["steps"] = max_batch + 1
            arg = _HOOKS[hook][1]
            try:
                if arg is None:
                    getattr(cb, hook)(logs=logs)
                else:
                    getattr(cb, hook)(ev.get(arg, -1), logs=logs)
            finally:
                lr, cb._pending_lr = cb._pending_lr, None
                stop = bool(cb.stop_training) and not stop_sent
                if lr is not None:
                    cb._lr = lr
                _answer(client, run, ev, lr, stop, type(cb).__name__, reconnect)
                stop_sent = stop_sent or stop
        return client.status(run).get("state")
    finally:
        if own:
            client.close()
