"""Unit tests of the Python package (clients/python/trainbus) against the
scripted fake server: handshake, calls, events queued during calls,
subscription iterators, reconnect without gap or duplicate, errors, and the
RemoteCallback runner in lockstep (the seed's plateau callback) and not."""
import io
import math
import os
import socket
import sys
import unittest
from contextlib import redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python", "examples"))
sys.path.insert(0, HERE)

import trainbus  # noqa: E402
from fake_server import FakeServer, event, handshake  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ClientTest(unittest.TestCase):
    def run_script(self, script):
        self.fs = FakeServer(script)
        return self.fs

    def tearDown(self):
        if getattr(self, "fs", None):
            self.assertEqual(self.fs.join(), [])

    def test_handshake_and_calls(self):
        fs = self.run_script(handshake() + [
            ("expect", "set_lr", {"run": "r1", "lr": 0.0001}),
            ("send", event("r1", 9, "control", action="set_lr", value=0.0001, old=0.001)),
            ("reply", {"run": "r1", "old": 0.001, "lr": 0.0001,
                       "applied_at": {"epoch": 3, "batch": 18}}),
            ("expect", "set_lr", {"lr": -1.0}),
            ("error", -32602, "invalid_params", "params.lr: expected a finite positive number, got -1"),
            ("expect", "stop", {"run": "r1", "reason": "plateau"}), ("reply", {"ok": True}),
            ("expect", "pause", {"run": "r1"}), ("reply", {"ok": True}),
            ("expect", "resume", {"run": "r1"}), ("reply", {"ok": True}),
            ("expect", "checkpoint", {"run": "r1"}), ("reply", {"run": "r1", "path": "/x.tbck"}),
            ("expect", "submit", {"job": {"epochs": 2}}), ("reply", {"run": "r2"}),
            ("expect", "cancel", {"run": "r2"}), ("reply", {"ok": True}),
            ("expect", "continue", {"run": "r1", "seq": 12, "actions": {"set_lr": 0.5, "stop": True}}),
            ("reply", {"ok": True}),
            ("expect", "runs", {}), ("reply", {"runs": [{"run": "r1", "state": "running"}]}),
            ("expect", "status", {"run": "r1"}), ("reply", {"run": "r1", "state": "running"}),
            ("expect", "history", {"run": "r1", "since_seq": 1}),
            ("reply", {"run": "r1", "events": [{"run": "r1", "seq": 1, "event": "epoch_end",
                                                 "logs": {"loss": "NaN"}}], "next_seq": 2}),
        ])
        c = trainbus.Client(fs.addr, "tok", role="controller", name="unit")
        self.assertEqual(c.role, "controller")
        self.assertEqual(c.hello["server"], "fake/0")
        res = c.set_lr("r1", 0.0001)
        self.assertEqual(res["applied_at"], {"epoch": 3, "batch": 18})
        with self.assertRaises(trainbus.RemoteError) as cm:
            c.set_lr("r1", -1)
        self.assertEqual(cm.exception.name, "invalid_params")
        self.assertIn("got -1", str(cm.exception))
        c.stop("r1", reason="plateau")
        c.pause("r1")
        c.resume("r1")
        self.assertEqual(c.checkpoint("r1")["path"], "/x.tbck")
        self.assertEqual(c.submit('{"epochs": 2}'), "r2")
        c.cancel("r2")
        getattr(c, "continue")("r1", 12, set_lr=0.5, stop=True)
        self.assertEqual(c.runs()[0]["run"], "r1")
        self.assertEqual(c.status("r1")["state"], "running")
        h = c.history("r1", since_seq=1)
        self.assertTrue(math.isnan(h["events"][0].logs["loss"]))
        ev = c.next_event(timeout=1)  # the control event queued during set_lr
        self.assertEqual((ev.event, ev.value), ("control", 0.0001))
        self.assertEqual(fs.requests[0]["params"]["token"], "tok")
        c.close()

    def test_subscription_iterator_and_reconnect(self):
        fs = self.run_script(handshake("observer") + [
            ("expect", "subscribe", {"runs": ["r1"], "events": ["*"], "every": 5}),
            ("reply", {"sub": 1, "next_seq": 10}),
            ("send", event("r1", 10, "epoch_begin", epoch=0)),
            ("send", event("r1", 11, "train_batch_end", epoch=0, batch=0, logs={"loss": 0.5})),
            ("close",),
            ("accept",),
        ] + handshake("observer") + [
            ("expect", "subscribe", {"runs": ["r1"], "since_seq": 12}),
            ("reply", {"sub": 1, "next_seq": 14}),
            ("send", event("r1", 11, "train_batch_end", epoch=0, batch=0)),  # duplicate
            ("send", event("r1", 12, "epoch_end", epoch=0, logs={"loss": "Infinity"})),
            ("send", event("r1", 13, "state", state="finished", prev_state="running")),
            ("send", event("r1", 14, "train_end")),  # after the end: not read
            ("sleep", 0.2),
        ])
        c = trainbus.Client(fs.addr, None)
        seqs = []
        for ev in c.subscribe(runs="r1", events="*", every=5, reconnect=5):
            seqs.append(ev.seq)
        self.assertEqual(seqs, [10, 11, 12, 13])
        self.assertEqual(c.last_seq("r1"), 13)
        c.close()

    def test_bye_and_closed(self):
        fs = self.run_script(handshake("observer") + [
            ("send", {"jsonrpc": "2.0", "method": "bye", "params": {"reason": "shutdown"}}),
            ("close",),
        ])
        c = trainbus.Client(fs.addr, None)
        n = c.next_event(timeout=2, notices=True)
        self.assertEqual((n["_kind"], n["reason"]), ("bye", "shutdown"))
        with self.assertRaises(trainbus.ConnectionLost):
            c.next_event(timeout=2)
        with self.assertRaises(trainbus.ConnectionLost):
            c.ping()

    def test_connect_errors(self):
        with self.assertRaises(trainbus.ConnectionLost) as cm:
            trainbus.Client("127.0.0.1:%d" % free_port(), None, connect_timeout=2)
        self.assertEqual(cm.exception.name, "connect_failed")
        with self.assertRaises(trainbus.ConnectionLost) as cm:
            trainbus.Client("nocolon", None)
        self.assertEqual(cm.exception.name, "bad_address")
        fs = self.run_script([("send", trainbus.client.json.loads(
            '{"jsonrpc":"2.0","method":"hello","params":{"protocol":1}}')),
            ("expect", "auth", {"token": "bad"}),
            ("error", -32001, "unauthorized", "auth: invalid token")])
        with self.assertRaises(trainbus.RemoteError) as cm:
            trainbus.Client(fs.addr, "bad", role="controller")
        self.assertEqual(cm.exception.name, "unauthorized")

    def test_address_from_state_dir(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "address"), "w") as f:
                f.write("127.0.0.1:7070\n")
            with open(os.path.join(d, "token"), "w") as f:
                f.write("abc\n")
            env = {k: os.environ.pop(k) for k in ("TRAINBUS_ADDR", "TRAINBUS_TOKEN")
                   if k in os.environ}
            try:
                self.assertEqual(trainbus.resolve_address(state_dir=d), ("127.0.0.1:7070", "abc"))
                self.assertEqual(trainbus.resolve_address("h:1", "t", state_dir=d), ("h:1", "t"))
                # The directory's token goes with its own address only.
                self.assertEqual(trainbus.resolve_address("h:1", state_dir=d), ("h:1", None))
                self.assertEqual(trainbus.resolve_address("127.0.0.1:7070", state_dir=d),
                                 ("127.0.0.1:7070", "abc"))
                os.environ["TRAINBUS_ADDR"] = "h:2"
                self.assertEqual(trainbus.resolve_address(state_dir=d), ("h:2", None))
            finally:
                os.environ.pop("TRAINBUS_ADDR", None)
                os.environ.update(env)

    def test_state_dir_read_again_at_reconnect(self):
        """A daemon restarted on another port with another token: the client
        follows the directory's files."""
        import tempfile
        first = FakeServer(handshake() + [("close",)])
        second = FakeServer([handshake()[0], ("expect", "auth", {"token": "tok-b"}),
                             ("reply", {"role": "controller", "protocol": 1})])
        with tempfile.TemporaryDirectory() as d:
            def write(addr, token):
                for name, text in (("address", addr), ("token", token)):
                    with open(os.path.join(d, name), "w") as f:
                        f.write(text + "\n")
            write(first.addr, "tok-a")
            c = trainbus.Client(state_dir=d, role="controller")
            self.assertEqual((c.addr, c.token), (first.addr, "tok-a"))
            with self.assertRaises(trainbus.ConnectionLost):  # the daemon went away
                c.next_event(timeout=5)
            write(second.addr, "tok-b")
            c.reconnect(retry_for=5)
            self.assertEqual((c.addr, c.token), (second.addr, "tok-b"))
            c.close()
        self.assertEqual(first.join(), [])
        self.assertEqual(second.join(), [])

    def test_lockstep_asked_again(self):
        """A lockstep event asked again (same seq) after a restart gets the
        answer given before; one never answered is handed out again."""
        fs = self.run_script(handshake() + [
            ("expect", "subscribe", {"lockstep": ["epoch_end"]}), ("reply", {"sub": 1, "next_seq": 5}),
            ("send", event("r1", 5, "epoch_end", epoch=1, lockstep=True)),
            ("expect", "continue", {"run": "r1", "seq": 5, "actions": {"set_lr": 0.5}}),
            ("reply", {"ok": True}),
            ("send", event("r1", 5, "epoch_end", epoch=1, lockstep=True)),
            ("expect", "continue", {"run": "r1", "seq": 5, "actions": {"set_lr": 0.5}}),
            ("reply", {"ok": True}),
            ("send", event("r1", 6, "epoch_end", epoch=2, lockstep=True)),
            ("send", event("r1", 6, "epoch_end", epoch=2, lockstep=True)),
            ("expect", "continue", {"run": "r1", "seq": 6}), ("reply", {"ok": True}),
        ])
        c = trainbus.Client(fs.addr, "t", role="controller")
        c.subscribe(runs=["r1"], events=["epoch_end"], lockstep=["epoch_end"])
        ev = c.next_event(timeout=5)
        self.assertEqual((ev.seq, ev.lockstep), (5, True))
        c.continue_("r1", 5, set_lr=0.5)
        ev = c.next_event(timeout=5)  # 5 again is answered inside
        self.assertEqual(ev.seq, 6)
        ev = c.next_event(timeout=5)
        self.assertEqual((ev.seq, ev.lockstep), (6, True))  # never answered: again
        c.continue_("r1", 6)
        c.close()


class RemoteCallbackTest(unittest.TestCase):
    def test_hooks_overridden(self):
        from logging_callback import LoggingCallback
        from plateau_lr import PlateauLR
        self.assertEqual(trainbus.callback.overridden_hooks(PlateauLR()), ["epoch_end"])
        self.assertEqual(trainbus.callback.overridden_hooks(LoggingCallback()),
                         ["epoch_begin", "epoch_end", "train_batch_end"])

        class Old(trainbus.RemoteCallback):
            def on_batch_end(self, batch, logs=None):
                pass
        self.assertEqual(trainbus.callback.overridden_hooks(Old()), ["train_batch_end"])

    def test_plateau_in_lockstep(self):
        from plateau_lr import PlateauLR

        def ep(seq, epoch, logs):
            return ("send", event("r1", seq, "epoch_end", epoch=epoch, logs=logs, lockstep=True))
        fs = FakeServer(handshake() + [
            ("expect", "runs", {}), ("reply", {"runs": [
                {"run": "r0", "state": "finished"}, {"run": "r1", "state": "running"}]}),
            ("expect", "status", {"run": "r1"}),
            ("reply", {"run": "r1", "state": "running", "epoch": 0, "epochs": 5, "batch": 2,
                       "last_seq": 20, "lr": 0.1}),
            ("expect", "subscribe", {"runs": ["r1"], "since_seq": 21, "lockstep": ["epoch_end"],
                                     "lockstep_timeout_ms": 30000,
                                     "events": ["control", "epoch_end", "state"]}),
            ("reply", {"sub": 1, "next_seq": 21}),
            ep(21, 0, {"loss": 1.0, "val_loss": 1.0, "lr": 0.1}),
            ("expect", "continue", {"run": "r1", "seq": 21}),
            ("reply", {"ok": True}),
            ep(22, 1, {"loss": 0.9, "lr": 0.1}),
            ("expect", "continue", {"seq": 22}), ("reply", {"ok": True}),
            ep(23, 2, {"loss": 0.8, "val_loss": 1.1, "lr": 0.1}),
            ("expect", "continue", {"seq": 23}), ("reply", {"ok": True}),
            ep(24, 3, {"loss": 0.7, "val_loss": 1.2, "lr": 0.1}),
            ("expect", "continue", {"seq": 24, "actions": {"set_lr": 0.05}}), ("reply", {"ok": True}),
            ("send", event("r1", 25, "control", action="set_lr", value=0.05, old=0.1)),
            ("send", event("r1", 26, "state", state="finished", prev_state="running")),
        ])
        out = io.StringIO()
        with redirect_stdout(out):
            state = trainbus.run_callback(PlateauLR(), addr=fs.addr, token="t")
        self.assertEqual(state, "finished")
        self.assertEqual(fs.join(), [])
        for r in fs.requests:
            if r["method"] == "continue" and r["params"]["seq"] != 24:
                self.assertNotIn("actions", r["params"])
        text = out.getvalue()
        self.assertIn("epoch 1: no validation data, skipped", text)
        self.assertIn("lr -> 0.05", text)

    def test_stop_training_without_lockstep(self):
        class StopAt2(trainbus.RemoteCallback):
            def on_epoch_end(self, epoch, logs=None):
                self.seen = getattr(self, "seen", []) + [(epoch, self.params["epochs"])]
                if epoch == 1:
                    self.model.stop_training = True

        fs = FakeServer(handshake() + [
            ("expect", "status", {"run": "r7"}),
            ("reply", {"run": "r7", "state": "running", "epochs": 9, "last_seq": 0}),
            ("expect", "subscribe", {"runs": ["r7"], "since_seq": 1}),
            ("reply", {"sub": 3, "next_seq": 1}),
            ("send", event("r7", 1, "epoch_end", epoch=0, logs={"loss": 1})),
            ("send", event("r7", 2, "epoch_end", epoch=1, logs={"loss": 1})),
            ("expect", "stop", {"run": "r7"}), ("reply", {"ok": True}),
            ("send", event("r7", 3, "state", state="stopped", prev_state="stopping")),
        ])
        cb = StopAt2()
        self.assertEqual(trainbus.run_callback(cb, addr=fs.addr, run="r7", lockstep=False),
                         "stopped")
        self.assertEqual(cb.seen, [(0, 9), (1, 9)])
        self.assertEqual(fs.join(), [])
        self.assertNotIn("lockstep", fs.requests[2]["params"])

    def test_set_lr_validates(self):
        cb = trainbus.RemoteCallback()
        with self.assertRaises(ValueError):
            cb.set_lr(-1)
        cb._lr = 0.1
        cb.model.optimizer.learning_rate = 0.01
        self.assertEqual(cb.get_lr(), 0.01)


if __name__ == "__main__":
    unittest.main()
