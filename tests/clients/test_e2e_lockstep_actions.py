"""End to end (issue 11, kind 3): every action a lockstep `continue` carries,
and every control method sent while the trainer waits at a lockstep hook,
takes effect where docs/PROTOCOL.md says (its table "Where an action takes
effect"), at each of the hooks of fit.

One daemon with a state directory; for every (hook, action, how) a run of a
small job (3 epochs of 10 batches, validation of 4 batches after each) with a
lockstep subscription at the hook. At the hook's chosen occurrence (epoch 1;
batch 3 of it, or test batch 1) the action is either carried by the
`continue` ("continue"), or sent as the control method on another connection
before a plain `continue` ("method"). The run's history then says where it
took effect:

- set_lr and stop: a control event right after the hook's event; set_lr is
  the rate of every training batch after it; stop ends training as Keras's
  stop_training does (the current batch, or one batch when set before an
  epoch's first, trains; the epoch validates and ends; no epoch begins after);
- pause and checkpoint: right after the hook where training can hold and be
  checkpointed (train_begin, epoch_begin, train_batch_end, epoch_end); after
  the batch for train_batch_begin; after epoch_end for the validation hooks.
  The checkpoint file is named for that position (after epoch_end of epoch 1:
  checkpoint-e0002-b00000, the end of that epoch);
- after train_end there is nothing to pause, checkpoint or stop: a
  `continue` carrying one is refused and the wait goes on."""
import json
import os
import sys
import threading
import unittest

from e2e_util import SOURCE, Daemon, need_binaries

sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
import trainbus  # noqa: E402

EPOCHS, STEPS, VAL_STEPS = 3, 10, 4
JOB = {
    "name": "actions", "seed": 5, "threads": 1,
    "data": {"source": "blobs", "n": 400, "classes": 3, "features": 2, "std": 2.0, "seed": 5},
    "model": {"layers": [{"type": "dense", "units": 8, "activation": "relu"},
                         {"type": "dense", "units": 3, "activation": "softmax"}]},
    "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
    "optimizer": {"name": "sgd", "learning_rate": 0.125},
    "epochs": EPOCHS, "batch_size": 32, "validation_split": 0.25,
}
# Both exact in float32, the trainer's (and Keras's) type for the rate.
OLD_LR, NEW_LR = 0.125, 0.0625

# hook -> (the occurrence acted on: epoch, batch or None), as the event says it
TARGET = {
    "train_begin": (None, None),
    "epoch_begin": (1, None),
    "train_batch_begin": (1, 3),
    "train_batch_end": (1, 3),
    "test_begin": (1, None),
    "test_batch_begin": (1, 1),
    "test_batch_end": (1, 1),
    "test_end": (1, None),
    "epoch_end": (1, None),
    "train_end": (None, None),
}
# hook -> (the event right before a pause or checkpoint takes effect, its
# epoch and batch; the checkpoint file's position: epoch, next batch)
HOLD_AT = {
    "train_begin": (("train_begin", None, None), (0, 0)),
    "epoch_begin": (("epoch_begin", 1, None), (1, 0)),
    "train_batch_begin": (("train_batch_end", 1, 3), (1, 4)),
    "train_batch_end": (("train_batch_end", 1, 3), (1, 4)),
    "test_begin": (("epoch_end", 1, None), (2, 0)),
    "test_batch_begin": (("epoch_end", 1, None), (2, 0)),
    "test_batch_end": (("epoch_end", 1, None), (2, 0)),
    "test_end": (("epoch_end", 1, None), (2, 0)),
    "epoch_end": (("epoch_end", 1, None), (2, 0)),
}
# hook -> the training batches a stop there leaves in its epoch (Keras: the
# loop looks at stop_training after each batch), and the epoch it ends in
STOP_LEAVES = {
    "train_begin": (0, 1), "epoch_begin": (1, 1), "train_batch_begin": (1, 4),
    "train_batch_end": (1, 4), "test_begin": (1, STEPS), "test_batch_begin": (1, STEPS),
    "test_batch_end": (1, STEPS), "test_end": (1, STEPS), "epoch_end": (1, STEPS),
}


def is_target(hook, ev):
    epoch, batch = TARGET[hook]
    return ev.get("epoch") == epoch and ev.get("batch") == batch if epoch is not None else True


class LockstepActions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(["--no-job"])
        cls.next_run = 0

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def setUp(self):
        need_binaries(self)

    def run_with(self, hook, action, how):
        """Runs the job with a lockstep subscription at hook, acting at its
        target occurrence; returns the run's history and what the controller
        was answered."""
        d = self.d
        LockstepActions.next_run += 1
        run = "r%d" % LockstepActions.next_run
        answers = {}
        with trainbus.Client(d.addr, d.token, role="controller") as c:
            sub = c.subscribe(runs=[run], events=[hook, "state"], lockstep=[hook],
                              lockstep_timeout_ms=20000, timeout=60)
            self.assertEqual(c.submit(JOB), run)
            acted = False
            side = []
            for ev in sub:
                if ev.event == "state":
                    if ev.state == "paused":
                        with trainbus.Client(d.addr, d.token, role="controller") as c2:
                            c2.resume(run)
                    continue
                self.assertTrue(ev.get("lockstep"), ev)
                kw = {}
                if not acted and is_target(hook, ev):
                    acted = True
                    if how == "continue":
                        kw = {"set_lr": {"set_lr": NEW_LR}, "stop": {"stop": True},
                              "pause": {"pause": True},
                              "checkpoint": {"checkpoint": True}}[action]
                        if hook == "train_end" and action != "set_lr":
                            with self.assertRaises(trainbus.RemoteError) as cm:
                                c.continue_(run, ev.seq, **kw)
                            answers["refused"] = cm.exception
                            kw = {}
                    else:
                        side.append(self.send_method(run, action, answers))
                        # the request is in before the trainer goes on
                        self.assertTrue(answers["sent"].wait(10))
                c.continue_(run, ev.seq, **kw)
            self.assertTrue(acted, "the target %s never came" % hook)
            for t in side:
                t.join(30)
            history = c.history_all(run)
        return history, answers

    def send_method(self, run, action, answers):
        """The control method, from another connection (set_lr and checkpoint
        are answered only once applied: a thread waits for that)."""
        answers["sent"] = threading.Event()

        def go():
            with trainbus.Client(self.d.addr, self.d.token, role="controller") as c2:
                c2._send({"jsonrpc": "2.0", "id": 99, "method": action,
                          "params": dict({"run": run}, **({"lr": NEW_LR} if action == "set_lr"
                                                          else {}))})
                # A connection's requests are handled in order: once the
                # ping is answered, the daemon has the request.
                c2._send({"jsonrpc": "2.0", "id": 100, "method": "ping"})
                while "method" not in answers:
                    m = c2._decode(c2._read_line(None))
                    if m.get("id") == 100:
                        answers["sent"].set()
                    elif m.get("id") == 99:
                        answers["method"] = m
                answers["sent"].set()

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t

    def check(self, hook, action, how):
        hist, answers = self.run_with(hook, action, how)
        label = "%s at %s (%s)" % (action, hook, how)
        seqs = [e["seq"] for e in hist]
        self.assertEqual(seqs, list(range(1, len(hist) + 1)), label)
        target = next(i for i, e in enumerate(hist) if e["event"] == hook and is_target(hook, e))
        controls = [i for i, e in enumerate(hist)
                    if e["event"] == "control" and e.get("action") == action]
        final = hist[-1]
        self.assertEqual(final["event"], "state", label)
        if hook == "train_end" and action != "set_lr":
            if how == "continue":
                self.assertEqual(answers["refused"].name, "invalid_state", label)
                self.assertIn("finished training", answers["refused"].message, label)
                self.assertEqual(controls, [], label)
            else:
                self.assertEqual(answers["method"]["error"]["data"]["name"], "invalid_state",
                                 label)
                self.assertIn("finished training", answers["method"]["error"]["message"], label)
            self.assertEqual(final["state"], "finished", label)
            return
        self.assertEqual(len(controls), 1, "%s: %s" % (label, [hist[i] for i in controls]))
        at = controls[0]
        ev = hist[at]
        if how == "method" and action in ("set_lr", "checkpoint"):
            self.assertIn("result", answers["method"], label)
            self.assertEqual(answers["method"]["result"]["applied_at"]["seq"], ev["seq"], label)
        if action in ("set_lr", "stop"):
            # Right after the hook's event: before training goes on.
            self.assertEqual(at, target + 1, "%s: applied at %s" % (label, ev))
            if hook.startswith("test_"):
                self.assertEqual((ev.get("epoch"), ev.get("batch")), (1, None), label)
        if action == "set_lr":
            self.assertEqual(ev["value"], NEW_LR, label)
            ends = {e["epoch"]: e["logs"]["lr"] for e in hist if e["event"] == "epoch_end"}
            first_new = {"train_begin": 0, "epoch_begin": 1, "train_batch_begin": 1,
                         "train_batch_end": 1, "epoch_end": 2, "train_end": EPOCHS}.get(hook, 1)
            for epoch, lr in ends.items():
                self.assertEqual(lr, NEW_LR if epoch >= first_new else OLD_LR,
                                 "%s: epoch %d's lr" % (label, epoch))
            self.assertEqual(final["state"], "finished", label)
        elif action == "stop":
            self.assertEqual(final["state"], "stopped", label)
            epoch, batches = STOP_LEAVES[hook]
            trained = [(e["epoch"], e["batch"]) for e in hist if e["event"] == "train_batch_end"]
            self.assertEqual(trained[-1], (epoch, batches - 1), label)
            self.assertEqual(len([t for t in trained if t[0] == epoch]), batches, label)
            self.assertEqual([e["epoch"] for e in hist if e["event"] == "epoch_end"][-1], epoch,
                             label)
            self.assertFalse(any(e["event"] == "epoch_begin" and e["epoch"] > epoch
                                 for e in hist), label)
        else:
            (name, epoch, batch), (ck_epoch, ck_batch) = HOLD_AT[hook]
            before = hist[at - 1]
            self.assertEqual((before["event"], before.get("epoch"), before.get("batch")),
                             (name, epoch, batch), "%s: took effect after %s" % (label, before))
            self.assertEqual(final["state"], "finished", label)
            if action == "pause":
                self.assertEqual(hist[at + 1]["event"], "state", label)
                self.assertEqual(hist[at + 1]["state"], "paused", label)
            else:
                path = ev["reason"].split("wrote ", 1)[1]
                self.assertEqual(os.path.basename(path),
                                 "checkpoint-e%04d-b%05d.tbck" % (ck_epoch, ck_batch), label)
                self.assertTrue(os.path.isfile(path), label)


def _make(hook, action, how):
    return lambda self: self.check(hook, action, how)


for _hook in TARGET:
    for _action in ("set_lr", "stop", "pause", "checkpoint"):
        for _how in ("continue", "method"):
            setattr(LockstepActions, "test_%s_at_%s_by_%s" % (_action, _hook, _how),
                    _make(_hook, _action, _how))

if __name__ == "__main__":
    unittest.main()
