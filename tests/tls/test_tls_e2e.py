"""TLS end to end (docs/PROTOCOL.md, "TLS"): the real trainbusd with a
throwaway CA and certificates made by the test (make_certs.sh), driven by
the real `trainbus` CLI and the Python package.

- `trainbus watch` and `trainbus set-lr` over TLS: the watch sees the
  control event of the rate set, the rate is applied at a batch boundary;
- the Python client over TLS (subscribe, set_lr, stop);
- each documented failure gives its documented error within a second, from
  the CLI (exit 3) and from Python (ConnectionLost "tls_error", or the
  server's "tls_required"): a CA that did not sign the server's
  certificate, a certificate for another host name, an expired
  certificate, a plaintext client on a TLS port, a TLS client on a
  plaintext port; client certificates (--tls-client-ca): none, from
  another CA, the right one; --insecure connects, with a warning;
- protected mode: a non-loopback listener (and --http) without TLS is
  refused with the fix in the message, and starts with --allow-plaintext
  or with TLS; unusable TLS files are refused naming the file.
"""
import json
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients"))
sys.path.insert(0, HERE)
from e2e_util import CLI, TRAINBUSD, DaemonCase, spirals_job, wait_for  # noqa: E402
import tls_util as T  # noqa: E402
import trainbus  # noqa: E402

# "Within a second", on a loaded 2-core machine; an ASan build is slower.
PROMPT = 1.0 * (3 if os.environ.get("TB_SANITIZED") == "1" else 1)


class TlsE2E(DaemonCase):

    def cli(self, d, *args, timeout=60):
        """The CLI against d over TLS, trusting the test CA, with the token."""
        return d.cli(*args, "--cacert", T.path("ca.pem"), timeout=timeout)

    def ok(self, r):
        self.assertEqual(r.returncode, 0, "stdout: %s\nstderr: %s" % (r.stdout, r.stderr))
        return r.stdout

    def assert_prompt_failure(self, d, args, exit_code, *want, env=None):
        """Runs the CLI with args; it must fail with exit_code, promptly, its
        message holding every string of want."""
        t0 = time.monotonic()
        r = d.cli(*args, timeout=30, env=env)
        took = time.monotonic() - t0
        self.assertEqual(r.returncode, exit_code, "stdout: %s\nstderr: %s" % (r.stdout, r.stderr))
        for w in want:
            self.assertIn(w, r.stderr)
        self.assertLess(took, PROMPT, "took %.2f s: %s" % (took, r.stderr))
        return r.stderr

    def assert_python_failure(self, addr, name, *want, **kw):
        t0 = time.monotonic()
        with self.assertRaises(trainbus.TrainbusError) as cm:
            trainbus.Client(addr, "e2e-token", connect_timeout=10, **kw)
        took = time.monotonic() - t0
        self.assertEqual(cm.exception.name, name, str(cm.exception))
        for w in want:
            self.assertIn(w, str(cm.exception))
        self.assertLess(took, PROMPT, "took %.2f s: %s" % (took, cm.exception))

    # -- working over TLS -----------------------------------------------------

    def test_cli_watch_and_set_lr(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000", *T.daemon_args())
        self.assertTrue(d.addr.startswith("tls://127.0.0.1:"), d.addr)
        # --from-seq 1: the watch sees the set_lr even if it subscribes after it
        w = subprocess.Popen([CLI, "watch", "--json", "--events", "control,state", "--run", "r1",
                              "--from-seq", "1", "--cacert", T.path("ca.pem")], env=d.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: "running" in self.cli(d, "status", "--run", "r1").stdout)
            out = self.ok(self.cli(d, "set-lr", "0.005"))
            self.assertRegex(out, r"^r1: lr [0-9.e-]+ -> 0\.005 at epoch \d+(, batch \d+)?")  # no batch: between epochs
            st = json.loads(self.ok(self.cli(d, "status", "--run", "r1", "--json")))
            self.assertAlmostEqual(st["lr"], 0.005, places=6)
            self.ok(self.cli(d, "stop", "--reason", "tls e2e"))
            out, err = w.communicate(timeout=60)
        finally:
            if w.poll() is None:
                w.kill()
                w.communicate()
        self.assertEqual(w.returncode, 0, err)
        evs = [json.loads(l) for l in out.splitlines()]
        sets = [e for e in evs if e["event"] == "control" and e.get("action") == "set_lr"]
        self.assertEqual([e["value"] for e in sets], [0.005], evs)
        self.assertEqual(evs[-1]["event"], "state")
        self.assertEqual(evs[-1]["state"], "stopped")
        self.assertTrue(any("TLS" in l for l in d.log), d.log)

    def test_python_client(self):
        d = self.daemon(*spirals_job(), "--epochs", "2000", *T.daemon_args())
        with trainbus.Client(d.addr, d.token, role="controller", cafile=T.path("ca.pem")) as c:
            self.assertEqual(c.role, "controller")
            sub = c.subscribe(runs=["r1"], events=["train_batch_end", "control", "state"],
                              timeout=30)
            first = next(sub)
            self.assertEqual(first.run, "r1")
            res = c.set_lr("r1", 0.004)
            self.assertEqual(res["lr"], 0.004)
            self.assertIn("applied_at", res)
            seen = None
            for ev in sub:
                if ev.event == "control" and ev.action == "set_lr":
                    seen = ev
                    break
            self.assertIsNotNone(seen)
            self.assertEqual(seen.value, 0.004)
            c.stop("r1")
            states = [ev.state for ev in sub if ev.event == "state"]
            self.assertEqual(states[-1], "stopped")
        # tls=True with a plain HOST:PORT address is the same.
        with trainbus.Client(d.addr[len("tls://"):], tls=True, cafile=T.path("ca.pem")) as c:
            self.assertEqual(c.status("r1")["state"], "stopped")

    # -- failures, each with its documented error, promptly -------------------

    def test_untrusted_ca(self):
        d = self.daemon("--no-job", *T.daemon_args())
        self.assert_prompt_failure(d, ["status", "--cacert", T.path("rogue-ca.pem")], 3,
                                   "not signed by a CA this client trusts", "--cacert")
        # No --cacert: the system's CAs do not know the test CA either.
        self.assert_prompt_failure(d, ["status"], 3, "not signed by a CA this client trusts")
        self.assert_python_failure(d.addr, "tls_error", "not signed by a CA this client trusts",
                                   cafile=T.path("rogue-ca.pem"))
        # A server whose certificate comes from another CA, seen with ours.
        r = self.daemon("--no-job", *T.daemon_args("rogue"))
        self.assert_prompt_failure(r, ["status", "--cacert", T.path("ca.pem")], 3,
                                   "not signed by a CA this client trusts")

    def test_wrong_host_name(self):
        d = self.daemon("--no-job", *T.daemon_args("other"))
        self.assert_prompt_failure(d, ["status", "--cacert", T.path("ca.pem")], 3,
                                   "certificate is not for 127.0.0.1", "DNS:other.example")
        self.assert_python_failure(d.addr, "tls_error", "certificate is not for 127.0.0.1",
                                   cafile=T.path("ca.pem"))
        # The name it was made for, given as the name to check, passes.
        with trainbus.Client(d.addr, cafile=T.path("ca.pem"), server_hostname="other.example") as c:
            self.assertEqual(c.role, "observer")
        # And localhost matches the server certificate, by name.
        g = self.daemon("--no-job", *T.daemon_args())
        self.ok(g.cli("status", "--connect", "tls://localhost:%d" % g.port, "--cacert",
                      T.path("ca.pem")))

    def test_expired_certificate(self):
        d = self.daemon("--no-job", *T.daemon_args("expired"))
        self.assertTrue(wait_for(lambda: any("has expired" in l for l in d.log), 10), d.log)
        self.assert_prompt_failure(d, ["status", "--cacert", T.path("ca.pem")], 3,
                                   "certificate has expired")
        self.assert_python_failure(d.addr, "tls_error", "certificate has expired",
                                   cafile=T.path("ca.pem"))

    def test_plaintext_client_on_tls_port(self):
        d = self.daemon("--no-job", *T.daemon_args())
        plain = d.addr[len("tls://"):]
        self.assert_prompt_failure(d, ["status", "--connect", plain], 3, "this port speaks TLS",
                                   "tls://")
        self.assert_python_failure(plain, "tls_required", "this port speaks TLS")
        # A raw client that sends nothing (nc) hears it at the auth timeout.
        self.assertTrue(any("plaintext client on a TLS listener" in l for l in d.log), d.log)

    def test_tls_client_on_plaintext_port(self):
        d = self.daemon("--no-job")
        self.assert_prompt_failure(d, ["status", "--connect", "tls://" + d.addr, "--cacert",
                                       T.path("ca.pem")], 3, "answered in plaintext, not TLS")
        self.assert_prompt_failure(d, ["status", "--tls", "--cacert", T.path("ca.pem")], 3,
                                   "answered in plaintext, not TLS")
        self.assert_python_failure("tls://" + d.addr, "tls_error", "answered in plaintext",
                                   cafile=T.path("ca.pem"))
        wait_for(lambda: any("TLS ClientHello on a plaintext port" in l for l in d.log), 5)
        self.assertTrue(any("TLS ClientHello on a plaintext port" in l for l in d.log), d.log)

    def test_client_certificates(self):
        d = self.daemon("--no-job", *T.daemon_args(client_ca=True))
        ca = T.path("ca.pem")
        self.assert_prompt_failure(d, ["status", "--cacert", ca], 3,
                                   "refused the TLS connection", "--cert FILE --key FILE")
        self.assert_prompt_failure(d, ["status", "--cacert", ca, "--cert", T.path("rogue-client.pem"),
                                       "--key", T.path("rogue-client.key")], 3,
                                   "refused the TLS connection")
        self.assert_prompt_failure(d, ["status", "--cacert", ca, "--cert", T.path("client.pem"),
                                       "--key", T.path("server.key")], 3, "client key")
        self.ok(d.cli("status", "--cacert", ca, "--cert", T.path("client.pem"), "--key",
                      T.path("client.key")))
        env = d.env()
        env.update(TRAINBUS_CACERT=ca, TRAINBUS_CERT=T.path("client.pem"),
                   TRAINBUS_KEY=T.path("client.key"))
        self.ok(d.cli("status", env=env))
        self.assert_python_failure(d.addr, "tls_error", "refused the TLS connection", cafile=ca)
        with trainbus.Client(d.addr, cafile=ca, certfile=T.path("client.pem"),
                             keyfile=T.path("client.key")) as c:
            self.assertEqual(c.role, "observer")
        self.assertTrue(any("client certificate /CN=trainbus-client" in l or "TLS" in l
                            for l in d.log))

    def test_insecure_connects_with_a_warning(self):
        d = self.daemon("--no-job", *T.daemon_args("other"))
        r = d.cli("status", "--insecure")
        self.ok(r)
        self.assertIn("warning: --insecure", r.stderr)
        with self.assertWarns(RuntimeWarning):
            c = trainbus.Client(d.addr, insecure=True)
        c.close()

    # -- protected mode and the daemon's own errors ----------------------------

    def run_daemon(self, *args):
        """trainbusd that must refuse to start: (exit status, stderr)."""
        r = subprocess.run([TRAINBUSD, "--no-job", "--no-state", "--token", "t0k", *args],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, r.stderr

    def test_non_loopback_needs_tls(self):
        rc, err = self.run_daemon("--listen", "0.0.0.0:0")
        self.assertEqual(rc, 1, err)
        for w in ("refusing a non-loopback address without TLS", "--tls-cert FILE --tls-key FILE",
                  "--allow-plaintext"):
            self.assertIn(w, err)
        rc, err = self.run_daemon("--listen", "127.0.0.1:0", "--http", "0.0.0.0:0")
        self.assertEqual(rc, 1, err)
        self.assertIn("--http 0.0.0.0:0: refusing a non-loopback address without TLS", err)
        # Allowed in plaintext, and with TLS (the dashboard then over HTTPS).
        d = self.daemon("--no-job", "--allow-plaintext", listen="0.0.0.0:0")
        self.assertRegex(d.addr, r"^0\.0\.0\.0:\d+$")
        d = self.daemon("--no-job", "--http", "0.0.0.0:0", *T.daemon_args(), listen="0.0.0.0:0")
        self.assertRegex(d.addr, r"^tls://0\.0\.0\.0:\d+$")
        self.assertTrue(wait_for(lambda: any("dashboard: https://" in l for l in d.log), 10), d.log)
        self.ok(d.cli("status", "--connect", "tls://127.0.0.1:%d" % d.port, "--cacert",
                      T.path("ca.pem")))

    def test_bad_tls_files(self):
        missing = os.path.join(T.certs(), "nope.pem")
        rc, err = self.run_daemon("--tls-cert", missing, "--tls-key", T.path("server.key"))
        self.assertEqual(rc, 1)
        self.assertIn("--tls-cert %s: cannot use it" % missing, err)
        rc, err = self.run_daemon("--tls-cert", T.path("server.pem"), "--tls-key",
                                  T.path("client.key"))
        self.assertEqual(rc, 1)
        self.assertIn("--tls-key %s: cannot use it with the certificate in %s" % (
            T.path("client.key"), T.path("server.pem")), err)
        rc, err = self.run_daemon("--tls-cert", T.path("server.pem"))
        self.assertEqual(rc, 1)
        self.assertIn("needs both --tls-cert FILE and --tls-key FILE", err)
        rc, err = self.run_daemon("--tls-client-ca", T.path("ca.pem"))
        self.assertEqual(rc, 1)
        self.assertIn("--tls-client-ca needs --tls-cert and --tls-key", err)


if __name__ == "__main__":
    unittest.main()
