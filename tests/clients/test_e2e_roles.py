"""Roles by token (issue 12; docs/PROTOCOL.md section 3) against the real
trainbusd, with the real CLI and the Python package:

- the observer token watches (`trainbus watch`, status, runs, history,
  subscribe) and every control method answers `forbidden` to it, saying the
  token is read-only, whether the client asked for the observer or the
  controller role; the run is untouched (no control event, rate unchanged);
- the trainer token grants the trainer role only (issue 14's methods): no
  reading, no control; a role a token does not give is refused and the
  connection may try again; a wrong token closes it;
- tokens come from flags, the environment (TRAINBUS_OBSERVER_TOKEN,
  TRAINBUS_TRAINER_TOKEN) or files in the state directory (0600, made once,
  kept across restarts); the three must differ;
- on a non-loopback listener an observer needs a token (the observer token
  serves).
"""
import json
import os
import socket
import stat
import subprocess
import time
import unittest

from e2e_util import CLI, TRAINBUSD, DaemonCase, run_state, spirals_job, wait_for
import trainbus

CTL, OBS, TRN = "ctl-token-1", "obs-token-2", "trn-token-3"


class Raw:
    """A raw protocol connection (any bytes, any role)."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=10)
        self.f = self.s.makefile("rb")
        self.next_id = 1
        self.hello = self.read()

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("closed")
        return json.loads(line)

    def call(self, method, params=None):
        rid = self.next_id
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            req["params"] = params
        self.s.sendall((json.dumps(req) + "\n").encode())
        while True:
            m = self.read()
            if m.get("id") == rid:
                return m

    def close(self):
        self.s.close()


def err_name(m):
    return (m.get("error") or {}).get("data", {}).get("name")


# Every control method, with valid params for run r1.
CONTROL = [("set_lr", {"run": "r1", "lr": 0.5}), ("stop", {"run": "r1"}), ("pause", {"run": "r1"}),
           ("resume", {"run": "r1"}), ("checkpoint", {"run": "r1"}), ("cancel", {"run": "r1"}),
           ("continue", {"run": "r1", "seq": 1}),
           ("submit", {"job": {"data": {"source": "spirals"}, "model": {"layers": [
               {"type": "dense", "units": 2, "activation": "softmax"}]},
               "loss": "sparse_categorical_crossentropy", "epochs": 1}}),
           ("subscribe", {"runs": ["r1"], "lockstep": ["epoch_end"]})]


class RolesE2E(DaemonCase):

    def test_observer_token_reads_and_may_not_control(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000", "--observer-token", OBS, token=CTL)
        wait_for(lambda: run_state(d) == "running")
        lr0 = json.loads(d.cli("status", "--run", "r1", "--json").stdout)["lr"]
        for role in ("observer", "controller"):
            c = Raw(d.addr)
            res = c.call("auth", {"role": role, "token": OBS})
            self.assertEqual(res["result"]["role"], "observer", res)
            for method, params in CONTROL:
                m = c.call(method, params)
                self.assertEqual(err_name(m), "forbidden", (method, m))
                self.assertIn("read-only", m["error"]["message"])
            self.assertEqual(c.call("status", {"run": "r1"})["result"]["run"], "r1")
            self.assertIn("runs", c.call("runs")["result"])
            self.assertIn("events", c.call("history", {"run": "r1", "limit": 5})["result"])
            self.assertIn("sub", c.call("subscribe", {"runs": ["r1"], "events": ["epoch_end"]})["result"])
            c.close()
        # The CLI with the observer token: watch works, control is refused (exit 1).
        env = d.env()
        env["TRAINBUS_TOKEN"] = OBS
        # The run is long: read watch's first epoch, then end it.
        r = subprocess.Popen([CLI, "watch", "--json", "--events", "epoch_end", "--from-seq", "1",
                              "--run", "r1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        first = r.stdout.readline()
        r.kill()
        r.communicate()
        self.assertEqual(json.loads(first)["event"], "epoch_end", first)
        for cmd in (["set-lr", "0.5"], ["stop"], ["pause"], ["checkpoint"], ["cancel"]):
            p = d.cli(*cmd, "--run", "r1", env=env)
            self.assertEqual(p.returncode, 1, (cmd, p.stderr))
            self.assertIn("needs the controller role, this connection is observer", p.stderr)
            self.assertIn("read-only", p.stderr)
        # Python: the role granted is observer, control raises forbidden.
        with trainbus.Client(d.addr, OBS, role="controller") as c:
            self.assertEqual(c.role, "observer")
            with self.assertRaises(trainbus.RemoteError) as cm:
                c.set_lr("r1", 0.5)
            self.assertEqual(cm.exception.name, "forbidden")
            self.assertEqual(c.status("r1")["run"], "r1")
        # Nothing reached the run.
        st = json.loads(d.cli("status", "--run", "r1", "--json").stdout)
        self.assertEqual((st["state"], st["lr"]), ("running", lr0))
        events = [json.loads(l) for l in d.cli("history", "--run", "r1", "--json").stdout.splitlines()]
        self.assertEqual(events[0]["seq"], 1)
        self.assertEqual([e for e in events if e["event"] == "control"], [])

    def test_trainer_token_and_role_refusals(self):
        d = self.daemon("--no-job", "--observer-token", OBS, "--trainer-token", TRN, token=CTL)
        c = Raw(d.addr)
        # A role the token does not give: forbidden, and the connection may try again.
        m = c.call("auth", {"role": "observer", "token": TRN})
        self.assertEqual(err_name(m), "forbidden", m)
        self.assertIn("the trainer token grants the trainer role, not observer", m["error"]["message"])
        m = c.call("auth", {"role": "trainer", "token": TRN})
        self.assertEqual(m["result"]["role"], "trainer")
        for method, params in CONTROL + [("status", {}), ("runs", None), ("subscribe", {})]:
            self.assertEqual(err_name(c.call(method, params)), "forbidden", method)
        self.assertTrue(c.call("ping")["result"]["pong"])
        c.close()
        c = Raw(d.addr)
        m = c.call("auth", {"role": "trainer", "token": OBS})
        self.assertEqual(err_name(m), "forbidden", m)
        m = c.call("auth", {"role": "trainer", "token": CTL})  # the control token serves
        self.assertEqual(m["result"]["role"], "trainer")
        c.close()
        c = Raw(d.addr)
        m = c.call("auth", {"role": "controller", "token": TRN})
        self.assertEqual(m["result"]["role"], "trainer")
        self.assertIn("trainer token", c.call("stop", {"run": "r1"})["error"]["message"])
        c.close()
        # Without a token, only an observer; a wrong token closes the connection.
        c = Raw(d.addr)
        m = c.call("auth", {"role": "trainer"})
        self.assertEqual(err_name(m), "unauthorized", m)
        self.assertIn("the trainer role needs the trainer token", m["error"]["message"])
        c.close()
        c = Raw(d.addr)
        self.assertEqual(err_name(c.call("auth", {"role": "observer", "token": "nope"})), "unauthorized")
        self.assertEqual(c.read()["params"]["reason"], "auth_failed")
        c.close()
        # The C library asks for the trainer role too.
        with trainbus.Client(d.addr, TRN, role="trainer") as p:
            self.assertEqual(p.role, "trainer")

    def test_tokens_from_environment_and_state_directory(self):
        d = self.daemon("--no-job", token=CTL)
        path = os.path.join(d.state_dir, "observer_token")
        self.assertTrue(wait_for(lambda: os.path.exists(path), 5))
        for name in ("observer_token", "trainer_token"):
            mode = stat.S_IMODE(os.stat(os.path.join(d.state_dir, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        with open(path) as f:
            made = f.read().strip()
        self.assertRegex(made, r"^[0-9a-f]{48}$")
        c = Raw(d.addr)
        self.assertEqual(c.call("auth", {"role": "controller", "token": made})["result"]["role"],
                         "observer")
        c.close()
        # Kept across a restart with the same state directory.
        self.assertEqual(d.stop(), 0)
        self.daemons.remove(d)
        d2 = self.daemon("--no-job", state_dir=d.state_dir, token=CTL)
        with open(path) as f:
            self.assertEqual(f.read().strip(), made)
        c = Raw(d2.addr)
        self.assertEqual(c.call("auth", {"role": "observer", "token": made})["result"]["role"],
                         "observer")
        c.close()
        # From the environment (and written where a restart finds it).
        env = dict(os.environ, TRAINBUS_OBSERVER_TOKEN="env-obs", TRAINBUS_TRAINER_TOKEN="env-trn")
        env.pop("TRAINBUS_TOKEN", None)
        p = subprocess.Popen([TRAINBUSD, "--no-job", "--listen", "127.0.0.1:0", "--state-dir",
                              d.state_dir, "--token", CTL], env=env, stderr=subprocess.PIPE,
                             text=True)
        try:
            line = ""
            while "listening on" not in line:
                line = p.stderr.readline()
                self.assertTrue(line, "trainbusd ended early")
            addr = line.split()[-1]
            c = Raw(addr)
            self.assertEqual(c.call("auth", {"role": "observer", "token": "env-obs"})["result"]["role"],
                             "observer")
            c.close()
            c = Raw(addr)
            self.assertEqual(c.call("auth", {"role": "trainer", "token": "env-trn"})["result"]["role"],
                             "trainer")
            c.close()
        finally:
            p.terminate()
            p.wait(30)
            p.stderr.close()
        with open(path) as f:
            self.assertEqual(f.read().strip(), "env-obs")

    def test_tokens_must_differ(self):
        r = subprocess.run([TRAINBUSD, "--no-job", "--no-state", "--token", "same",
                            "--observer-token", "same"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("the control, observer and trainer tokens must differ", r.stderr)

    def test_non_loopback_observer_needs_a_token(self):
        d = self.daemon("--no-job", "--allow-plaintext", "--observer-token", OBS, token=CTL,
                        listen="0.0.0.0:0")
        addr = "127.0.0.1:%d" % d.port
        c = Raw(addr)
        self.assertTrue(c.hello["params"]["auth_required"])
        m = c.call("auth", {"role": "observer"})
        self.assertEqual(err_name(m), "unauthorized", m)
        self.assertIn("a token is needed on this listener", m["error"]["message"])
        c.close()
        c = Raw(addr)
        self.assertEqual(c.call("auth", {"role": "observer", "token": OBS})["result"]["role"],
                         "observer")
        c.close()
        env = dict(os.environ, TRAINBUS_ADDR=addr, TRAINBUS_TOKEN=OBS)
        env.pop("TRAINBUS_STATE_DIR", None)
        r = subprocess.run([CLI, "runs"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
