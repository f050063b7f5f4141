"""trainbus-bridge into NATS, end to end: a real nats-server (JetStream) on a
loopback port, the real trainbusd, trainbus-bridge, the CLI and the Python
package. Each test starts what it needs and stops it by PID."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import bridge_util as U
from bridge_util import tn, trainbus


def same_event(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def broker_caught_up(url, daemon, ns, run="r1", **login):
    """Waits until the bridge's status of run reaches the daemon's last seq."""
    with daemon.client() as c:
        last = c.status(run)["last_seq"]
    st = U.wait_for(lambda: (tn.status(url, run, ns=ns, **login) or {}).get("last_seq") == last
                    and last, 30)
    if not st:
        raise AssertionError("the broker's status of %s never reached seq %d (is %s)"
                             % (run, last, tn.status(url, run, ns=ns, **login)))
    return last


class NatsBridge(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.nats = U.NatsServer()
        cls.url = cls.nats.url()

    @classmethod
    def tearDownClass(cls):
        cls.nats.stop()

    def setUp(self):
        self.procs = []

    def tearDown(self):
        U.stop_all(self, self.procs)

    def start(self, p):
        self.procs.append(p)
        return p

    def test_every_event_in_seq_order(self):
        """With sampling off, the stream holds every event of the run, in seq
        order, each once, byte for byte the daemon's; the CLI and the Python
        follower read them back."""
        d = self.start(U.Daemon(U.QUICK_JOB))
        b = self.start(U.Bridge(self.url, d, ns="all", args=["--every", "1", "--batch-hz", "0"]))
        b.connected()
        d.wait_state("finished")
        last = broker_caught_up(self.url, d, "all")
        hist = d.history()
        self.assertEqual([e["seq"] for e in hist], list(range(1, last + 1)))
        stored = tn.stored(self.url, "r1", ns="all")
        self.assertEqual([s for s, _ in stored], list(range(1, last + 1)), b.text())
        for (seq, ev), want in zip(stored, hist):
            self.assertEqual(seq, ev["seq"])
            self.assertTrue(same_event(ev, want), (ev, want))
        # Each stored message names its run and seq in headers, with the
        # message id JetStream deduplicates by: a repeat of a publish (what
        # the bridge sends after a timed-out acknowledgement) is not stored.
        import base64
        with tn.Nats(self.url) as nc:
            got = nc.js_api("STREAM.MSG.GET.TB_all",
                            {"last_by_subj": "tb.all.run.r1.evt.train_end"})
            msg = got["message"]
            hdrs = tn._parse_headers(base64.b64decode(msg["hdrs"]))[2]
            seq = json.loads(base64.b64decode(msg["data"]))["seq"]
            self.assertEqual((hdrs.get("Tb-Run"), hdrs.get("Tb-Seq"), hdrs.get("Nats-Msg-Id")),
                             ("r1", str(seq), "r1:%d" % seq), hdrs)
            before = nc.js_api("STREAM.INFO.TB_all")["state"]["messages"]
            ack = nc.request("tb.all.run.r1.evt.train_end", base64.b64decode(msg["data"]),
                             timeout=10, headers={"Tb-Run": "r1", "Tb-Seq": str(seq),
                                                  "Nats-Msg-Id": "r1:%d" % seq}).json()
            self.assertTrue(ack.get("duplicate"), ack)
            self.assertEqual(nc.js_api("STREAM.INFO.TB_all")["state"]["messages"], before)
        followed = list(tn.follow(self.url, "r1", ns="all", timeout=10))
        self.assertEqual([e.seq for e in followed], list(range(1, last + 1)))
        out = subprocess.run([U.CLI, "watch", "--nats", self.url, "--ns", "all", "--run", "r1",
                              "--json", "--timeout", "10"], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = [json.loads(l) for l in out.stdout.splitlines()]
        self.assertEqual(len(lines), last)
        for got, want in zip(lines, hist):
            self.assertTrue(same_event(got, want), (got, want))
        U.report("nats_every_event", events=last)

    def test_late_joiner_history_then_live(self):
        """A follower that joins mid-run replays the stored history, then goes
        on live: the same events as one that followed from the start, no gap,
        no duplicate, every lifecycle event of the run."""
        d = self.start(U.Daemon(U.demo_job(40)))
        b = self.start(U.Bridge(self.url, d, ns="late"))
        b.connected()
        early = []
        t_early = threading.Thread(
            target=lambda: early.extend(tn.follow(self.url, "r1", ns="late", timeout=30)))
        t_early.start()
        # Join once the run is well under way on the broker.
        U.wait_for(lambda: ((tn.status(self.url, "r1", ns="late") or {}).get("epoch", -1) >= 8
                            and d.state() == "running"), 60, 0.05)
        joined_at = (tn.status(self.url, "r1", ns="late") or {}).get("last_seq")
        self.assertEqual(d.state(), "running", "the run ended before the late joiner came")
        late = []
        t_late = threading.Thread(
            target=lambda: late.extend(tn.follow(self.url, "r1", ns="late", timeout=30)))
        t_late.start()
        cli = subprocess.Popen([U.CLI, "watch", "--nats", self.url, "--ns", "late", "--json",
                                "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        t_early.join(120)
        t_late.join(120)
        out, err = cli.communicate(timeout=120)
        self.assertEqual(cli.returncode, 0, err)
        seqs = [e.seq for e in late]
        self.assertEqual(seqs, sorted(set(seqs)), "a gap in order or a duplicate")
        self.assertEqual(seqs, [e.seq for e in early])
        self.assertEqual(late[-1].event, "state")
        self.assertEqual(late[-1].state, "finished")
        self.assertEqual([json.loads(l)["seq"] for l in out.splitlines()], seqs)
        hist = d.history()
        want = [e["seq"] for e in U.lifecycle(hist)]
        got = set(seqs)
        self.assertEqual([s for s in want if s not in got], [], "lifecycle events missing")
        self.assertEqual([s for s, _ in tn.stored(self.url, "r1", ns="late")], seqs)
        U.report("nats_late_joiner", joined_at_seq=joined_at, events=len(seqs),
                 lifecycle=len(want), last_seq=hist[-1]["seq"])

    def test_control_request_reply(self):
        """set_lr, pause, resume and stop through NATS request-reply: the reply
        is the daemon's answer, set_lr's with applied_at, matching the
        control event the run published; errors are the protocol's."""
        d = self.start(U.Daemon(U.demo_job(200)))
        b = self.start(U.Bridge(self.url, d, ns="ctl"))
        b.connected()
        d.wait_state("running")
        U.wait_for(lambda: (tn.status(self.url, "r1", ns="ctl") or {}).get("epoch", -1) >= 1, 30)

        res = tn.call(self.url, "r1", "set_lr", {"lr": 0.0042}, ns="ctl")
        self.assertTrue(U.close_lr(res["lr"], 0.0042), res)
        self.assertTrue(U.close_lr(res["old"], 0.001), res)
        at = res["applied_at"]
        self.assertEqual(tn.call(self.url, "r1", "pause", ns="ctl"), {"ok": True})
        U.wait_for(lambda: (tn.status(self.url, "r1", ns="ctl") or {}).get("state") == "paused",
                   20)
        self.assertEqual(d.state(), "paused")
        # While paused a set_lr applies at once, still with applied_at.
        res2 = tn.call(self.url, "r1", "set_lr", {"lr": 0.002}, ns="ctl", timeout=10)
        self.assertTrue(U.close_lr(res2["old"], 0.0042), res2)
        self.assertIn("applied_at", res2)
        with self.assertRaises(trainbus.RemoteError) as cm:
            tn.call(self.url, "r1", "pause", ns="ctl")
        self.assertEqual(cm.exception.name, "invalid_state")
        self.assertEqual(tn.call(self.url, "r1", "resume", {}, ns="ctl"), {"ok": True})
        self.assertEqual(tn.call(self.url, "r1", "stop", {"reason": "through nats"}, ns="ctl"),
                         {"ok": True})
        d.wait_state("stopped")
        broker_caught_up(self.url, d, "ctl")
        stored = {ev["seq"]: ev for _, ev in tn.stored(self.url, "r1", ns="ctl")}
        ev = stored[at["seq"]]
        self.assertEqual((ev["event"], ev["action"]), ("control", "set_lr"))
        self.assertTrue(U.close_lr(ev["value"], 0.0042), ev)
        # Between epochs the event has no batch and applied_at says -1.
        self.assertEqual((ev["epoch"], ev.get("batch", -1)), (at["epoch"], at["batch"]))
        self.assertIn("bridge:ctl", ev["by"])
        # The rate took effect from the next batch: the next epoch_end's logs carry it.
        after = [e for s, e in sorted(stored.items()) if s > at["seq"] and e["event"] == "epoch_end"]
        self.assertTrue(U.close_lr(after[0]["logs"]["lr"], 0.002), after[0])
        states = [e["state"] for e in stored.values() if e["event"] == "state"]
        self.assertEqual(states[-1], "stopped")
        self.assertIn("paused", states)
        # A finished run, an unknown run: the daemon's errors.
        with self.assertRaises(trainbus.RemoteError) as cm:
            tn.call(self.url, "r1", "set_lr", {"lr": 0.1}, ns="ctl")
        self.assertEqual(cm.exception.name, "invalid_state")
        with self.assertRaises(trainbus.RemoteError) as cm:
            tn.call(self.url, "r7", "stop", ns="ctl")
        self.assertEqual(cm.exception.name, "no_such_run")
        U.report("nats_control", set_lr_applied_at=at)

    def test_malformed_control_gets_protocol_errors(self):
        """Bad payloads over the broker get the protocol's errors as replies,
        and the run goes on untouched."""
        d = self.start(U.Daemon(U.demo_job(200)))
        b = self.start(U.Bridge(self.url, d, ns="bad"))
        b.connected()
        d.wait_state("running")
        cases = [
            ("set_lr", b'{"lr":-1}', "invalid_params"),
            ("set_lr", b'{"lr":"0.1"}', "invalid_params"),
            ("set_lr", b'{"lr":1e999}', "invalid_params"),
            ("set_lr", b'{"lr":0.1,"lr":0.2}', "invalid_params"),
            ("set_lr", b'{"lr_":0.1}', "invalid_params"),
            ("set_lr", b'{"run":"r2","lr":0.1}', "invalid_params"),
            ("set_lr", b"[0.1]", "invalid_params"),
            ("set_lr", b"{", "parse_error"),
            ("set_lr", b'{"lr":0.1} trailing', "parse_error"),
            ("set_lr", b'{"lr":\xff}', "parse_error"),
            ("set_lr", b'{"lr":0.1},"method":"stop","x":{}', "parse_error"),
            ("stop", b'{"reason":' + b'"' + b"x" * 200 + b'"}', "invalid_params"),
            ("frobnicate", b"{}", "method_not_found"),
            ("subscribe", b"{}", "method_not_found"),
            ("continue", b'{"seq":1}', "method_not_found"),
            ("resume", b"{}", "invalid_state"),
        ]
        with tn.Nats(self.url) as nc:
            for method, payload, name in cases:
                msg = nc.request("tb.bad.run.r1.ctl." + method, payload, timeout=10)
                res = msg.json()
                self.assertIn("error", res, (method, payload, res))
                self.assertEqual(res["error"]["data"]["name"], name, (method, payload, res))
                self.assertIsInstance(res["error"]["code"], int)
                self.assertTrue(res["error"]["message"])
            # A subject that is not a control request: method too deep.
            with self.assertRaises(tn.NoResponders):
                nc.request("tb.bad.run.r1.ctl.set_lr.x", b"{}", timeout=5)
        self.assertEqual(d.state(), "running")
        with d.client() as c:
            self.assertTrue(U.close_lr(c.status("r1")["lr"], 0.001))

    def test_no_bridge_no_responders(self):
        """Without a bridge for the namespace, a control request fails at once
        with NATS's no-responders, not after a timeout."""
        t0 = time.monotonic()
        with self.assertRaises(tn.NoResponders):
            tn.call(self.url, "r1", "stop", ns="nobody", timeout=30)
        took = time.monotonic() - t0
        self.assertLess(took, 2.0)
        U.report("nats_no_responders", seconds=round(took, 4))

    def test_oversized_messages_respect_max_payload(self):
        """With a server max_payload of 380 bytes, events that do not fit
        (epoch_end with six metrics) go as stubs that say so and where; an
        answer that does not fit (a checkpoint's long path) becomes a too_large
        error; a request over max_payload is refused by the server; the bridge
        goes on, and events that fit go whole."""
        nats = U.NatsServer(conf="max_payload: 380")
        self.procs.append(nats)
        base = tempfile.mkdtemp(prefix="tb-long-")
        state = os.path.join(base, *["d" * 60] * 6)
        os.makedirs(state)
        d = self.start(U.Daemon(U.demo_job(200, metrics=("accuracy", "mse", "mae"),
                                           loss="categorical_crossentropy"),
                                state_dir=state))
        b = self.start(U.Bridge(nats.url(), d, ns="big"))
        b.connected()
        d.wait_state("running")
        U.wait_for(lambda: (tn.status(nats.url(), "r1", ns="big") or {}).get("epoch", -1) >= 2, 60)
        with self.assertRaises(trainbus.RemoteError) as cm:
            tn.call(nats.url(), "r1", "checkpoint", ns="big", timeout=30)
        self.assertEqual(cm.exception.name, "too_large")
        self.assertIn("max_payload", cm.exception.message)
        res = tn.call(nats.url(), "r1", "set_lr", {"lr": 0.002}, ns="big")
        self.assertIn("applied_at", res)
        tn.call(nats.url(), "r1", "stop", ns="big")
        d.wait_state("stopped")
        broker_caught_up(nats.url(), d, "big")
        hist = {e["seq"]: e for e in d.history()}
        self.assertTrue(any(e.get("action") == "checkpoint" for e in hist.values()),
                        "the checkpoint was not applied")
        stored = {ev["seq"]: ev for _, ev in tn.stored(nats.url(), "r1", ns="big")}
        stubs = [ev for ev in stored.values() if ev.get("truncated")]
        whole = [ev for ev in stored.values() if not ev.get("truncated")]
        self.assertTrue(stubs and whole)
        for ev in stubs:
            full = hist[ev["seq"]]
            # The protocol's encoding (numbers to 17 digits) is at least Python's.
            size = len(json.dumps(full, separators=(",", ":")))
            self.assertEqual((ev["event"], ev.get("epoch")), (full["event"], full.get("epoch")))
            self.assertGreaterEqual(ev["size"], size)
            self.assertGreater(ev["size"], 300)
            self.assertEqual(ev["logs"], {})
        self.assertIn("epoch_end", {ev["event"] for ev in stubs})
        for ev in whole:
            self.assertTrue(same_event(ev, hist[ev["seq"]]), (ev, hist[ev["seq"]]))
        # Every lifecycle event is there, whole or as a stub.
        want = [e["seq"] for e in U.lifecycle(hist.values())]
        self.assertEqual([s for s in want if s not in stored], [])
        # The server refuses a request over its max_payload; the bridge is not involved.
        with tn.Nats(nats.url()) as nc:
            self.assertEqual(nc.max_payload, 380)
            with self.assertRaises(tn.NatsError) as cm:
                nc.request("tb.big.run.r1.ctl.set_lr", b'{"lr":0.1,"pad":"' + b"x" * 500 + b'"}',
                           timeout=5)
            self.assertIn("Maximum Payload", cm.exception.message)
        with self.assertRaises(trainbus.TrainbusError) as cm:
            tn.call(nats.url(), "r1", "stop", {"reason": "x" * 500}, ns="big")
        self.assertEqual(cm.exception.name, "too_large")
        self.assertTrue(b.alive())
        U.report("nats_oversize", stubs=len(stubs), whole=len(whole))

    def test_roles_by_subject_permissions(self):
        """docs/bridge/nats-server.conf: the observer follows runs but its
        control request is refused by the server's permissions (and it cannot
        forge events); the controller steers; the bridge logs in as bridge."""
        pw = {"TB_BRIDGE_PASSWORD": "b-secret", "TB_OBSERVER_PASSWORD": "o-secret",
              "TB_CONTROLLER_PASSWORD": "c-secret"}
        nats = U.NatsServer(sample=True, env=pw)
        self.procs.append(nats)
        d = self.start(U.Daemon(U.demo_job(200)))
        bad = self.start(U.Bridge(nats.url(), d, ns="acme", args=["--user", "bridge", "--password",
                                                                  "wrong"]))
        self.assertEqual(bad.wait(30 * U.SLOW), 1, bad.text())
        self.assertIn("Authorization", bad.text())
        b = self.start(U.Bridge(nats.url(), d, ns="acme", env={"TRAINBUS_BROKER_PASSWORD":
                                                               "b-secret"},
                                args=["--user", "bridge"]))
        b.connected()
        d.wait_state("running")
        alice = {"user": "alice", "password": "o-secret"}
        carol = {"user": "carol", "password": "c-secret"}
        U.wait_for(lambda: tn.status(nats.url(), "r1", ns="acme", **alice), 20)
        with self.assertRaises(tn.NatsError) as cm:
            tn.call(nats.url(), "r1", "set_lr", {"lr": 0.5}, ns="acme", timeout=5, **alice)
        self.assertIn("Permissions Violation for Publish", cm.exception.message)
        with tn.Nats(nats.url(), **alice) as nc:
            nc.publish("tb.acme.run.r1.evt.epoch_end", b"{}")
            with self.assertRaises(tn.NatsError) as cm2:
                nc.flush()
            self.assertIn("Permissions Violation", cm2.exception.message)
        with d.client() as c:
            self.assertTrue(U.close_lr(c.status("r1")["lr"], 0.001))
        res = tn.call(nats.url(), "r1", "set_lr", {"lr": 0.003}, ns="acme", **carol)
        self.assertIn("applied_at", res)
        tn.call(nats.url(), "r1", "stop", ns="acme", **carol)
        d.wait_state("stopped")
        # The observer follows through the CLI (libnats) and Python.
        out = subprocess.run([U.CLI, "watch", "--nats", nats.url(login="alice:o-secret"), "--ns",
                              "acme", "--json", "--events", "control,state", "--timeout", "20"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        actions = [json.loads(l).get("action") for l in out.stdout.splitlines()]
        self.assertEqual(actions.count("set_lr"), 1)
        evs = list(tn.follow(nats.url(), "r1", ns="acme", events=["state"], timeout=20, **alice))
        self.assertEqual(evs[-1].state, "stopped")
        self.assertNotIn("Permissions Violation", b.text())

    def test_tls_token_and_nkey_logins(self):
        """TLS to the server with a token login, and an nkey login (the
        public key derived from the seed file by the bridge)."""
        tmp = tempfile.mkdtemp(prefix="tb-tls-")
        cert, key = U.certs(tmp)
        nats = U.NatsServer(conf='tls { cert_file: "%s", key_file: "%s" }\n'
                                 'authorization { token: "s3cret-token" }' % (cert, key), tmp=tmp)
        self.procs.append(nats)
        d = self.start(U.Daemon(U.QUICK_JOB))
        b = self.start(U.Bridge(nats.url("tls"), d, ns="tls",
                                args=["--tls-ca", cert, "--broker-token", "s3cret-token"]))
        b.connected()
        d.wait_state("finished")
        U.wait_for(lambda: (tn.status(nats.url("tls"), "r1", ns="tls", tls_ca=cert,
                                      token="s3cret-token") or {}).get("state") == "finished", 30)
        evs = list(tn.follow(nats.url("tls"), "r1", ns="tls", tls_ca=cert, token="s3cret-token",
                             events=["epoch_end"], timeout=20))
        self.assertEqual(len(evs), U.QUICK_JOB["epochs"])
        out = subprocess.run([U.CLI, "watch", "--nats", nats.url("tls"), "--ns", "tls", "--tls-ca",
                              cert, "--broker-token", "s3cret-token", "--timeout", "20"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Epoch %d/%d" % (U.QUICK_JOB["epochs"], U.QUICK_JOB["epochs"]), out.stdout)
        # Plain TCP to a TLS server, or no token: refused.
        plain = self.start(U.Bridge(nats.url("tls"), d, ns="tls", args=["--tls-ca", cert]))
        self.assertEqual(plain.wait(30 * U.SLOW), 1, plain.text())

        seed, pub = U.nkey_user(tmp)
        other, _ = U.nkey_user(tempfile.mkdtemp())
        nk = U.NatsServer(conf='authorization { users = [ {nkey: "%s"} ] }' % pub)
        self.procs.append(nk)
        b2 = self.start(U.Bridge(nk.url(), d, ns="nk", args=["--nkey-seed", seed]))
        b2.connected()
        b2.wait_log(r"published|following")
        b3 = self.start(U.Bridge(nk.url(), d, ns="nk", args=["--nkey-seed", other]))
        self.assertEqual(b3.wait(30 * U.SLOW), 1, b3.text())
        out = subprocess.run([U.CLI, "watch", "--nats", nk.url(), "--ns", "nk", "--nkey-seed",
                              seed, "--events", "epoch_end", "--json", "--timeout", "20"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len(out.stdout.splitlines()), U.QUICK_JOB["epochs"])

    def test_daemon_over_tls_by_role(self):
        """A daemon on TLS with an observer (read-only) token: the bridge
        reaches it at its tls:// address trusting --cacert, reads the events
        with the observer token (granted observer) and steers with the
        control token; a bridge given only the observer token gets the
        daemon's forbidden for every control request; one that trusts
        another CA is refused by TLS and keeps trying; trainbusd --bridge
        hands its bridge both tokens, and TRAINBUS_CACERT from its own
        environment."""
        tmp = tempfile.mkdtemp(prefix="tb-dtls-")
        cert, key = U.certs(tmp)
        other, _ = U.certs(tempfile.mkdtemp(prefix="tb-dtls-other-"))
        obs = "bridge-observer-token-0123456789"
        d = self.start(U.Daemon(U.demo_job(200), tls=(cert, key), observer_token=obs))
        self.assertTrue(d.addr.startswith("tls://"), d.addr)
        b = self.start(U.Bridge(self.url, d, ns="dtls",
                                args=["--cacert", cert, "--observer-token", obs]))
        b.wait_log(r"following the daemon at .* \(observer\)")
        d.wait_state("running")
        U.wait_for(lambda: (tn.status(self.url, "r1", ns="dtls") or {}).get("epoch", -1) >= 1, 30)
        res = tn.call(self.url, "r1", "set_lr", {"lr": 0.003}, ns="dtls")
        self.assertIn("applied_at", res)
        # The observer token only: a read-only bridge.
        ro = self.start(U.Bridge(self.url, ns="dro", args=["--connect", d.addr, "--cacert", cert,
                                                           "--observer-token", obs]))
        ro.wait_log(r"following the daemon at .* \(observer\)")
        with self.assertRaises(trainbus.RemoteError) as cm:
            tn.call(self.url, "r1", "set_lr", {"lr": 0.5}, ns="dro")
        self.assertEqual(cm.exception.name, "forbidden", cm.exception.message)
        self.assertIn("read-only", cm.exception.message)
        with d.client() as c:
            self.assertTrue(U.close_lr(c.status("r1")["lr"], 0.003))
        U.wait_for(lambda: (tn.status(self.url, "r1", ns="dro") or {}).get("epoch", -1) >= 1, 30)
        # Another CA: TLS refuses the daemon's certificate; said once, retried.
        wrong = self.start(U.Bridge(self.url, d, ns="dwrong", args=["--cacert", other]))
        wrong.wait_log(r"cannot reach the daemon \(.*certificate")
        time.sleep(1)
        self.assertNotIn("following the daemon", wrong.text())
        self.assertTrue(wrong.alive())
        self.assertEqual(wrong.text().count("cannot reach the daemon"), 1, wrong.text())
        tn.call(self.url, "r1", "stop", ns="dtls")
        d.wait_state("stopped")
        for p in (b, ro, wrong):
            p.stop()
        # Supervised: the daemon's address is tls://, its CA from its environment.
        d2 = self.start(U.Daemon(U.demo_job(200), tls=(cert, key), observer_token=obs,
                                 env={"TRAINBUS_CACERT": cert},
                                 args=["--bridge", self.url, "--bridge-arg", "--ns=dsup",
                                       "--verbose"]))
        d2.wait_log(r"following the daemon at .* \(observer\)")
        import re
        pid = int(re.search(r"started trainbus-bridge \(pid (\d+)\)", d2.text()).group(1))
        with open("/proc/%d/cmdline" % pid) as f:
            cmdline = f.read()
        self.assertNotIn(obs, cmdline)
        self.assertNotIn(U.TOKEN, cmdline)
        d2.wait_state("running")
        U.wait_for(lambda: (tn.status(self.url, "r1", ns="dsup") or {}).get("epoch", -1) >= 1, 30)
        self.assertIn("applied_at", tn.call(self.url, "r1", "set_lr", {"lr": 0.002}, ns="dsup"))
        tn.call(self.url, "r1", "stop", ns="dsup")
        d2.wait_state("stopped")

    def test_python_examples(self):
        """clients/python/examples/nats_control.py steers a running run and
        nats_watch.py then shows it, history first, to its end."""
        ex = os.path.join(U.SOURCE, "clients", "python", "examples")
        env = dict(os.environ, PYTHONPATH=os.path.join(U.SOURCE, "clients", "python"))
        d = self.start(U.Daemon(U.demo_job(200)))
        b = self.start(U.Bridge(self.url, d, ns="ex"))
        b.connected()
        d.wait_state("running")
        U.wait_for(lambda: tn.status(self.url, "r1", ns="ex"), 20)
        out = subprocess.run([sys.executable, os.path.join(ex, "nats_control.py"), self.url, "ex",
                              "r1", "0.0007"], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("lr 0.001 -> 0.0007, applied at epoch", out.stdout)
        self.assertIn("resumed", out.stdout)
        tn.call(self.url, "r1", "stop", ns="ex")
        d.wait_state("stopped")
        out = subprocess.run([sys.executable, os.path.join(ex, "nats_watch.py"), self.url, "ex"],
                             capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(lines[0], "run r1: queued -> running")
        self.assertIn("run r1: set_lr 0.0007", out.stdout)
        self.assertEqual(lines[-1], "run r1: stopping -> stopped")

    def test_daemon_supervises_the_bridge(self):
        """trainbusd --bridge URL starts the bridge, starts it again when it
        dies (the broker still gets every lifecycle event once), and stops it
        with itself."""
        d = self.start(U.Daemon(U.demo_job(60), args=["--bridge", self.url, "--bridge-arg",
                                                      "--ns=sup", "--verbose"]))
        d.wait_log(r"started trainbus-bridge \(pid (\d+)\)")
        U.wait_for(lambda: (tn.status(self.url, "r1", ns="sup") or {}).get("epoch", -1) >= 3, 60)
        import re
        pid = int(re.search(r"started trainbus-bridge \(pid (\d+)\)", d.text()).group(1))
        os.kill(pid, signal.SIGKILL)
        d.wait_log(r"trainbus-bridge was killed by signal 9")
        d.wait_log(r"started trainbus-bridge \(pid (?!%d\))\d+\)" % pid)
        pid2 = int(re.findall(r"started trainbus-bridge \(pid (\d+)\)", d.text())[-1])
        self.assertNotEqual(pid, pid2)
        d.wait_state("finished")
        broker_caught_up(self.url, d, "sup")
        stored = [s for s, _ in tn.stored(self.url, "r1", ns="sup")]
        self.assertEqual(stored, sorted(set(stored)))
        want = [e["seq"] for e in U.lifecycle(d.history())]
        self.assertEqual([s for s in want if s not in set(stored)], [])
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists("/proc/%d" % pid2) and
                         open("/proc/%d/stat" % pid2).read().split()[2] != "Z",
                         "the bridge outlived its daemon")


if __name__ == "__main__":
    U.main("nats-server", "openssl")
