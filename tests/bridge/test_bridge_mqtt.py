"""trainbus-bridge into MQTT, end to end: a real mosquitto on a loopback port,
the real trainbusd and trainbus-bridge, mosquitto_sub and mosquitto_rr (MQTT
5 request/response) as the clients, the CLI's watch --mqtt. Each test starts
what it needs and stops it by PID."""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

import bridge_util as U


class Sub(U.Proc):
    """mosquitto_sub (QoS 1) printing "TOPIC QOS PAYLOAD" per message (the QoS
    it came with: the publisher's, at most 1), subscribed (as the broker's
    log tells) when made."""

    def __init__(self, broker, topic, login=(), retained=True, extra=()):
        cmd = ["mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(broker.port), "-q",
               "1", "-i", "tb-test-sub", "-t", topic, "-F", "%t %q %p"] + list(login) + list(extra)
        if not retained:
            cmd.append("-R")
        n = len(broker.log)
        super().__init__(cmd, name="mosquitto_sub")
        broker.wait_log(r"as tb-test-sub", 10, n)
        time.sleep(0.3)  # the SUBSCRIBE follows the CONNECT

    def messages(self, qos=False):
        """(topic, event) per message, or (topic, qos, event) with qos."""
        out = []
        for line in list(self.log):
            topic, _, rest = line.partition(" ")
            q, _, payload = rest.partition(" ")
            if topic.startswith("tb/"):
                out.append((topic, int(q), json.loads(payload)) if qos else
                           (topic, json.loads(payload)))
        return out


def retained(port, topic, login=(), extra=()):
    """The retained message on topic (decoded), or None."""
    r = subprocess.run(["mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-t",
                        topic, "-C", "1", "-W", "2"] + list(login) + list(extra),
                       capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def rr(port, topic, payload, login=(), client="carol-1", ns="m", extra=(), wait=10):
    """One MQTT 5 request/response; (exit code, decoded answer or None)."""
    r = subprocess.run(["mosquitto_rr", "-h", "127.0.0.1", "-p", str(port), "-i", client, "-t",
                        topic, "-e", "tb/%s/reply/%s/1" % (ns, client), "-m", payload, "-W",
                        str(wait)] + list(login) + list(extra),
                       capture_output=True, text=True, timeout=wait + 30)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


class MqttBridge(unittest.TestCase):

    def setUp(self):
        self.procs = []

    def tearDown(self):
        U.stop_all(self, self.procs)

    def start(self, p):
        self.procs.append(p)
        return p

    def test_lifecycle_in_order_status_retained_and_will(self):
        """Every lifecycle event on MQTT in seq order (QoS 1), batch events
        too (QoS 0, sampling off), the run's status retained, and the last
        will saying the bridge is gone once it is killed."""
        m = self.start(U.Mosquitto())
        sub = self.start(Sub(m, "tb/m/run/r1/evt/#", retained=False))
        d = self.start(U.Daemon(U.QUICK_JOB))
        b = self.start(U.Bridge(m.url(), d, ns="m", args=["--every", "1", "--batch-hz", "0"]))
        b.connected()
        d.wait_state("finished")
        hist = d.history()
        last = hist[-1]["seq"]
        U.wait_for(lambda: any(ev["seq"] == last for _, ev in sub.messages()), 30)
        # Lifecycle events at QoS 1, batch events at QoS 0.
        for topic, q, ev in sub.messages(qos=True):
            self.assertEqual(q, 0 if "_batch_" in ev["event"] else 1, (topic, q, ev["seq"]))
        got = sub.messages()
        for topic, ev in got:
            self.assertEqual(topic, "tb/m/run/r1/evt/" + ev["event"])
        life = [ev["seq"] for _, ev in got if "_batch_" not in ev["event"]]
        self.assertEqual(life, [e["seq"] for e in U.lifecycle(hist)])
        seqs = [ev["seq"] for _, ev in got]
        self.assertEqual(seqs, sorted(seqs))
        by_seq = {e["seq"]: e for e in hist}
        for _, ev in got:
            self.assertEqual(json.dumps(ev, sort_keys=True),
                             json.dumps(by_seq[ev["seq"]], sort_keys=True))
        st = U.wait_for(lambda: (retained(m.port, "tb/m/run/r1/status") or {}).get("last_seq")
                        == last and retained(m.port, "tb/m/run/r1/status"), 20)
        self.assertEqual(st["state"], "finished")
        runs = retained(m.port, "tb/m/runs")
        self.assertEqual([r["run"] for r in runs["runs"]], ["r1"])
        self.assertTrue(retained(m.port, "tb/m/bridge")["online"])
        b.kill()
        gone = U.wait_for(lambda: retained(m.port, "tb/m/bridge") and
                          not retained(m.port, "tb/m/bridge")["online"] and
                          retained(m.port, "tb/m/bridge"), 20)
        self.assertTrue(gone, "no last will after the bridge was killed")
        self.assertEqual(gone["daemon"], "gone")
        U.report("mqtt_lifecycle", events=len(got), lifecycle=len(life))

    def test_request_response_control_and_errors(self):
        """set_lr, pause, resume, stop through MQTT 5 request/response: the
        answer (the daemon's, set_lr's with applied_at) comes to the response
        topic with the correlation data; bad payloads get the protocol's
        errors; the CLI follows through --mqtt."""
        m = self.start(U.Mosquitto())
        d = self.start(U.Daemon(U.demo_job(200)))
        b = self.start(U.Bridge(m.url(), d, ns="m"))
        b.connected()
        d.wait_state("running")
        n = len(m.log)
        watch = self.start(U.Proc([U.CLI, "watch", "--mqtt", m.url(), "--ns", "m", "--run", "r1",
                                   "--json", "--events", "control,state", "--timeout", "60"],
                                  name="watch"))
        # MQTT has no history: the watch must be subscribed before the set_lr.
        m.wait_log(r"New client connected", 20, n)
        time.sleep(0.5)
        U.wait_for(lambda: (retained(m.port, "tb/m/run/r1/status") or {}).get("epoch", -1) >= 1,
                   30)
        code, ans, err = rr(m.port, "tb/m/run/r1/ctl/set_lr", '{"lr":0.0042}')
        self.assertEqual(code, 0, err)
        res = ans["result"]
        self.assertTrue(U.close_lr(res["lr"], 0.0042) and U.close_lr(res["old"], 0.001), res)
        at = res["applied_at"]
        self.assertEqual(rr(m.port, "tb/m/run/r1/ctl/pause", "")[1], {"result": {"ok": True}})
        d.wait_state("paused")
        bad = [
            ("set_lr", '{"lr":-1}', "invalid_params"),
            ("set_lr", '{"lr":"x"}', "invalid_params"),
            ("set_lr", "{", "parse_error"),
            ("set_lr", "[1]", "invalid_params"),
            ("set_lr", '{"run":"r2","lr":1}', "invalid_params"),
            ("frobnicate", "{}", "method_not_found"),
            ("pause", "{}", "invalid_state"),
        ]
        for method, payload, name in bad:
            code, ans, err = rr(m.port, "tb/m/run/r1/ctl/" + method, payload)
            self.assertEqual(code, 0, err)
            self.assertEqual(ans["error"]["data"]["name"], name, (method, payload, ans))
        code, ans, err = rr(m.port, "tb/m/run/r9/ctl/stop", "{}")
        self.assertEqual(ans["error"]["data"]["name"], "no_such_run")
        self.assertEqual(rr(m.port, "tb/m/run/r1/ctl/resume", "{}")[1], {"result": {"ok": True}})
        self.assertEqual(rr(m.port, "tb/m/run/r1/ctl/stop", '{"reason":"mqtt"}')[1],
                         {"result": {"ok": True}})
        d.wait_state("stopped")
        self.assertEqual(watch.wait(60), 0, watch.text())
        evs = [json.loads(l) for l in watch.log if l.startswith("{")]
        ctl = [e for e in evs if e["event"] == "control"]
        self.assertEqual([e["action"] for e in ctl], ["set_lr", "pause", "resume", "stop"])
        # A control event applied between epochs has no batch; applied_at
        # says -1 then (docs/PROTOCOL.md, set_lr).
        self.assertEqual((ctl[0]["seq"], ctl[0]["epoch"], ctl[0].get("batch", -1)),
                         (at["seq"], at["epoch"], at["batch"]))
        self.assertEqual(evs[-1]["state"], "stopped")
        U.report("mqtt_control", set_lr_applied_at=at)

    def test_roles_by_acl_and_tls(self):
        """docs/bridge/mosquitto.conf and mosquitto.acl over TLS: the bridge
        and the controller log in, the observer's control request is refused
        by the broker (PUBACK: not authorized) and changes nothing, a wrong
        password is refused."""
        tmp = tempfile.mkdtemp(prefix="tb-mqtts-")
        cert, key = U.certs(tmp)
        users = {"bridge": "b-pw", "alice": "a-pw", "carol": "c-pw"}
        m = self.start(U.Mosquitto(sample=True, users=users, tmp=tmp,
                                   listener_extra="cafile %s\ncertfile %s\nkeyfile %s\n"
                                   % (cert, cert, key)))
        tls = ["--cafile", cert]
        d = self.start(U.Daemon(U.demo_job(200)))
        wrong = self.start(U.Bridge(m.url("mqtts"), d, ns="acme",
                                    args=["--user", "bridge", "--password", "nope", "--tls-ca",
                                          cert]))
        self.assertEqual(wrong.wait(30 * U.SLOW), 1, wrong.text())
        b = self.start(U.Bridge(m.url("mqtts", "bridge:b-pw"), d, ns="acme",
                                args=["--tls-ca", cert]))
        b.connected()
        d.wait_state("running")
        alice = ["-u", "alice", "-P", "a-pw"] + tls
        carol = ["-u", "carol", "-P", "c-pw"] + tls
        U.wait_for(lambda: retained(m.port, "tb/acme/run/r1/status", alice), 20)
        r = subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(m.port),
                            "-q", "1", "-t", "tb/acme/run/r1/ctl/set_lr", "-m", '{"lr":0.5}']
                           + alice, capture_output=True, text=True, timeout=30)
        self.assertIn("Not authorized", r.stderr)
        code, ans, _ = rr(m.port, "tb/acme/run/r1/ctl/set_lr", '{"lr":0.5}', alice,
                          client="alice-1", ns="acme", wait=3)
        self.assertNotEqual(code, 0)
        self.assertIsNone(ans)
        with d.client() as c:
            self.assertTrue(U.close_lr(c.status("r1")["lr"], 0.001))
        code, ans, err = rr(m.port, "tb/acme/run/r1/ctl/set_lr", '{"lr":0.003}', carol,
                            client="carol-1", ns="acme")
        self.assertEqual(code, 0, err)
        self.assertIn("applied_at", ans["result"])
        # A controller cannot read another client's answers.
        r = subprocess.run(["mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(m.port),
                            "-t", "tb/acme/reply/alice-1/#", "-C", "1", "-W", "1"] + carol,
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(rr(m.port, "tb/acme/run/r1/ctl/stop", "{}", carol, ns="acme")[1],
                         {"result": {"ok": True}})
        d.wait_state("stopped")
        st = U.wait_for(lambda: (retained(m.port, "tb/acme/run/r1/status", alice) or {})
                        .get("state") == "stopped", 20)
        self.assertTrue(st)

    def test_oversized_messages_respect_max_packet_size(self):
        """mosquitto with max_packet_size 450 (which it tells MQTT 5 clients
        in CONNACK): events that do not fit go as stubs that say so and
        where, an answer that does not fit (a checkpoint's long path) becomes
        a too_large error, the bridge is never disconnected for a packet too
        large, and a request over the limit is refused by the broker (it
        never reaches the run). As test_bridge_nats's max_payload test."""
        m = self.start(U.Mosquitto(conf="allow_anonymous true\nmax_packet_size 450\n"))
        sub = self.start(Sub(m, "tb/big/run/r1/evt/#", retained=False))
        base = tempfile.mkdtemp(prefix="tb-long-")
        state = os.path.join(base, *["d" * 60] * 6)
        os.makedirs(state)
        d = self.start(U.Daemon(U.demo_job(200, metrics=("accuracy", "mse", "mae"),
                                           loss="categorical_crossentropy"), state_dir=state))
        b = self.start(U.Bridge(m.url(), d, ns="big", args=["--verbose"]))
        b.connected()
        d.wait_state("running")
        U.wait_for(lambda: (retained(m.port, "tb/big/run/r1/status") or {}).get("epoch", -1) >= 2,
                   60)
        b.wait_log(r"takes packets of up to 450 bytes")
        code, ans, err = rr(m.port, "tb/big/run/r1/ctl/checkpoint", "{}", ns="big")
        self.assertEqual(code, 0, err)
        self.assertEqual(ans["error"]["data"]["name"], "too_large", ans)
        self.assertIn("packet limit", ans["error"]["message"])
        # A request larger than the broker takes: refused before the bridge.
        code, ans, err = rr(m.port, "tb/big/run/r1/ctl/set_lr", '{"lr":0.5}' + " " * 600,
                            ns="big", wait=3)
        self.assertNotEqual(code, 0)
        self.assertIsNone(ans)
        with d.client() as c:
            self.assertTrue(U.close_lr(c.status("r1")["lr"], 0.001))
        code, ans, err = rr(m.port, "tb/big/run/r1/ctl/set_lr", '{"lr":0.002}', ns="big")
        self.assertEqual(code, 0, err)
        self.assertIn("applied_at", ans["result"])
        self.assertEqual(rr(m.port, "tb/big/run/r1/ctl/stop", "{}", ns="big")[1],
                         {"result": {"ok": True}})
        d.wait_state("stopped")
        hist = {e["seq"]: e for e in d.history()}
        self.assertTrue(any(e.get("action") == "checkpoint" for e in hist.values()),
                        "the checkpoint was not applied")
        last = max(hist)
        U.wait_for(lambda: any(ev["seq"] == last for _, ev in sub.messages()), 30)
        got = {ev["seq"]: ev for _, ev in sub.messages()}
        stubs = [ev for ev in got.values() if ev.get("truncated")]
        whole = [ev for ev in got.values() if not ev.get("truncated")]
        self.assertTrue(stubs and whole)
        for ev in stubs:
            full = hist[ev["seq"]]
            self.assertEqual((ev["event"], ev.get("epoch")), (full["event"], full.get("epoch")))
            self.assertGreaterEqual(ev["size"], len(json.dumps(full, separators=(",", ":"))))
            self.assertEqual(ev["logs"], {})
        self.assertIn("epoch_end", {ev["event"] for ev in stubs})
        for ev in whole:
            self.assertEqual(json.dumps(ev, sort_keys=True),
                             json.dumps(hist[ev["seq"]], sort_keys=True))
        want = [e["seq"] for e in U.lifecycle(hist.values())]
        self.assertEqual([s for s in want if s not in got], [], "lifecycle events missing")
        self.assertTrue(b.alive())
        self.assertNotIn("disconnected from the MQTT broker", b.text())
        st = U.wait_for(lambda: (retained(m.port, "tb/big/run/r1/status") or {})
                        .get("state") == "stopped", 20)
        self.assertTrue(st, "the run's status did not reach the broker")
        U.report("mqtt_oversize", stubs=len(stubs), whole=len(whole))

    def test_bridge_restart_resumes_where_the_broker_was(self):
        """A bridge killed mid-run and started again learns from the retained
        statuses where each run stood and goes on from there: a subscriber
        connected all along sees every lifecycle event, in order, at most a
        repeat of the one in flight at the kill."""
        m = self.start(U.Mosquitto())
        sub = self.start(Sub(m, "tb/m/run/r1/evt/#", retained=False))
        d = self.start(U.Daemon(U.demo_job(60)))
        b = self.start(U.Bridge(m.url(), d, ns="m"))
        b.connected()
        U.wait_for(lambda: (retained(m.port, "tb/m/run/r1/status") or {}).get("epoch", -1) >= 10,
                   60)
        b.kill()
        self.assertNotEqual(d.state(), "finished", "the run ended before the kill")
        b2 = self.start(U.Bridge(m.url(), d, ns="m"))
        b2.wait_log(r"the broker holds it up to seq \d+")
        d.wait_state("finished")
        hist = d.history()
        last = hist[-1]["seq"]
        U.wait_for(lambda: any(ev["seq"] == last for _, ev in sub.messages()), 30)
        life = [ev["seq"] for _, ev in sub.messages() if "_batch_" not in ev["event"]]
        want = [e["seq"] for e in U.lifecycle(hist)]
        self.assertEqual(sorted(set(life)), want)
        self.assertEqual(life, sorted(life))
        self.assertLessEqual(len(life) - len(set(life)), 1)
        U.report("mqtt_bridge_restart", lifecycle=len(want), repeats=len(life) - len(set(life)))


if __name__ == "__main__":
    U.main("mosquitto", "mosquitto_sub", "mosquitto_rr", "mosquitto_passwd", "openssl")
