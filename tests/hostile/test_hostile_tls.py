"""Hostile inputs that only TLS has (issue 12), against one trainbusd with a
certificate of a throwaway CA (tests/tls/make_certs.sh) and an auth timeout
of 1 s, training the suite's job throughout:

- a truncated ClientHello, and a handshake that never finishes (a full
  ClientHello, the server's flight read, no Finished): closed at the auth
  timeout, which bounds the handshake; 20 of them at once do not slow a
  well-behaved client;
- renegotiation (TLS 1.2, openssl s_client's "R"): refused with an alert,
  the connection ends, nothing else is affected; TLS 1.3 key updates ("K",
  "k") are fine and the connection goes on;
- garbage after the handshake (random bytes that are not records) and a
  record with one bit flipped: the connection is closed at once;
- a client offering TLS 1.1 only: refused with a protocol_version alert;
- plaintext on the TLS port (binary garbage, HTTP): told so in plaintext
  (tls_required, HTTP 400), closed at once;
- a ClientHello fed one byte per write, and the client's first requests
  sent in the same segment as its Finished: both work.

After every case a fresh TLS client gets a pong; at the end the run has
finished with no control event (no input reached it) and SIGTERM ends the
daemon with status 0 and, in an ASan build, no sanitizer report.
"""
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_util as H  # noqa: E402

H.TLS = True  # this file is about TLS whatever TB_HOSTILE_TLS says
tls_util = H.tls_util
AUTH_TIMEOUT_S = 1.0
PROMPT = 1.0 * H.SLOW  # "at once": within a second on a loaded 2-core machine


AUTH = b'{"jsonrpc":"2.0","id":0,"method":"auth","params":{"role":"observer"}}\n'


def ping_line(rid="p"):
    return (json.dumps({"jsonrpc": "2.0", "id": rid, "method": "ping"}) + "\n").encode()


class Raw:
    """A TLS client whose bytes are ours: an ssl.SSLObject between memory
    BIOs over a plain socket, so the test can stop, cut or corrupt the
    handshake and the records at will."""

    def __init__(self, d, ctx=None):
        self.sock = socket.create_connection((d.host, d.port), timeout=10 * H.SLOW)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (ctx or tls_util.client_context()).wrap_bio(self.inc, self.out,
                                                               server_hostname=d.host)
        self.plain = b""

    def close(self):
        self.sock.close()

    def client_hello(self):
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def pump_handshake(self, send=True):
        """Runs the handshake to its end; returns the bytes of the client's
        last flight (sent unless send is False)."""
        while True:
            try:
                self.obj.do_handshake()
                flight = self.out.read()
                if send:
                    self.sock.sendall(flight)
                return flight
            except ssl.SSLWantReadError:
                data = self.out.read()
                if data:
                    self.sock.sendall(data)
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise H.Closed(b"")
                self.inc.write(chunk)

    def read_line(self, timeout=5.0):
        end = time.monotonic() + timeout * H.SLOW
        while b"\n" not in self.plain:
            try:
                self.plain += self.obj.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise H.Closed(self.plain)
            self.inc.write(chunk)
        line, self.plain = self.plain.split(b"\n", 1)
        return json.loads(line)

    def send_plain(self, data):
        self.obj.write(data)
        self.sock.sendall(self.out.read())

    def closed_within(self, timeout):
        """Seconds until the server closed the connection (reading and
        dropping whatever it sends), or None if it did not within timeout."""
        t0 = time.monotonic()
        end = t0 + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return time.monotonic() - t0
        return None


class HostileTls(unittest.TestCase):
    d = None

    @classmethod
    def setUpClass(cls):
        cls.wpath = os.path.join(tempfile.mkdtemp(prefix="tb-hostile-tls-"), "w.tbw")
        cls.d = H.Daemon(H.job(cls.wpath, 40),
                         args=["--auth-timeout-ms", str(int(AUTH_TIMEOUT_S * 1000))])
        # The gate: holds the run at train_end until every case has run, so
        # each input meets a running run (as in the catalogue).
        cls.gate = H.controller(cls.d)
        cls.gate.ok("subscribe", {"runs": ["r1"], "events": ["train_end"],
                                  "lockstep": ["train_end"], "lockstep_timeout_ms": 600000})

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.kill()

    def setUp(self):
        self.assertTrue(self.d.alive(), "trainbusd is not running")

    def fresh_ping(self):
        t0 = time.monotonic()
        c = self.d.connect()
        try:
            c.send(ping_line("fresh"))
            self.assertTrue(c.read_response("fresh", timeout=10)["result"]["pong"])
        finally:
            c.close()
        return time.monotonic() - t0

    def log_has(self, text, timeout=5.0):
        return H.wait_until(lambda: any(text in l for l in self.d.log), timeout * H.SLOW)

    # -- handshakes that stall -------------------------------------------------

    def test_a_truncated_client_hello(self):
        r = Raw(self.d)
        try:
            hello = r.client_hello()
            r.sock.sendall(hello[:len(hello) // 2])
            took = r.closed_within(AUTH_TIMEOUT_S + 3 * H.SLOW)
            self.assertIsNotNone(took, "a truncated ClientHello kept the connection open")
            self.assertGreater(took, AUTH_TIMEOUT_S * 0.8, "closed before the auth timeout")
        finally:
            r.close()
        self.assertTrue(self.log_has("no TLS handshake within 1000 ms"))
        self.fresh_ping()

    def test_b_handshake_never_finishes(self):
        r = Raw(self.d)
        try:
            r.sock.sendall(r.client_hello())
            r.sock.settimeout(5 * H.SLOW)
            flight = r.sock.recv(65536)  # ServerHello ... server Finished
            self.assertTrue(flight.startswith(b"\x16\x03"), flight[:16])
            took = r.closed_within(AUTH_TIMEOUT_S + 3 * H.SLOW)
            self.assertIsNotNone(took, "a handshake that never finished kept the connection open")
        finally:
            r.close()
        self.fresh_ping()

    def test_c_twenty_stalled_handshakes(self):
        raws = [Raw(self.d) for _ in range(20)]
        rnd = random.Random(20)
        try:
            for r in raws:
                hello = r.client_hello()
                r.sock.sendall(hello[:rnd.randint(1, len(hello) - 1)])
            # Meanwhile a well-behaved client is served at once.
            self.assertLess(self.fresh_ping(), 0.5 * H.SLOW)
            end = time.monotonic() + AUTH_TIMEOUT_S + 3 * H.SLOW
            for r in raws:
                self.assertIsNotNone(r.closed_within(max(0.1, end - time.monotonic())))
        finally:
            for r in raws:
                r.close()
        self.fresh_ping()

    # -- renegotiation and key updates -----------------------------------------

    def s_client(self, args, lines, hold=0.4):
        """openssl s_client with the test CA, fed lines one at a time;
        returns (exit status, stdout, stderr)."""
        p = subprocess.Popen(["openssl", "s_client", "-connect", "%s:%d" % (self.d.host, self.d.port),
                              "-CAfile", tls_util.path("ca.pem"), "-quiet", "-no_ign_eof"] + args,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for line in lines:
                time.sleep(hold)
                p.stdin.write(line)
                p.stdin.flush()
            time.sleep(hold)
        except BrokenPipeError:
            pass  # s_client ended first
        try:
            p.stdin.close()  # s_client ends at the end of its input
        except BrokenPipeError:
            pass
        out, err = p.stdout.read(), p.stderr.read()
        p.wait(30 * H.SLOW)
        return p.returncode, out, err

    def test_d_renegotiation_refused(self):
        rc, out, err = self.s_client(["-tls1_2"], [AUTH, ping_line(1), b"R\n", ping_line(2)])
        self.assertIn(b'"id":1,"result":{"pong":true', out)
        self.assertIn(b"RENEGOTIATING", err)
        self.assertIn(b"no renegotiation", err)
        self.assertNotIn(b'"id":2', out, "a renegotiated connection went on")
        self.assertNotEqual(rc, 0)
        self.assertTrue(self.log_has("TLS error"))
        self.fresh_ping()

    def test_e_key_updates_are_fine(self):
        rc, out, err = self.s_client(["-tls1_3"], [AUTH, ping_line(1), b"K\n", b"k\n",
                                                   ping_line(2)])
        self.assertEqual(err.count(b"KEYUPDATE"), 2, err)
        self.assertIn(b'"id":2,"result":{"pong":true', out)
        self.fresh_ping()

    def test_f_tls_1_1_refused(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.set_ciphers("DEFAULT@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ssl.SSLError, ValueError) as e:
            self.skipTest("this Python's OpenSSL cannot offer TLS 1.1 at all: %s" % e)
        r = Raw(self.d, ctx)
        try:
            t0 = time.monotonic()
            with self.assertRaises((ssl.SSLError, H.Closed)) as cm:
                r.pump_handshake()
            self.assertLess(time.monotonic() - t0, PROMPT)
            if isinstance(cm.exception, ssl.SSLError):
                self.assertIn("PROTOCOL_VERSION", str(cm.exception).upper().replace(" ", "_"))
        finally:
            r.close()
        self.fresh_ping()

    # -- garbage after the handshake -------------------------------------------

    def established(self):
        r = Raw(self.d)
        r.pump_handshake()
        self.assertEqual(r.read_line()["method"], "hello")
        return r

    def test_g_garbage_after_handshake(self):
        r = self.established()
        try:
            r.sock.sendall(bytes(random.Random(5).getrandbits(8) for _ in range(4096)))
            took = r.closed_within(PROMPT + 1)
            self.assertIsNotNone(took, "garbage after the handshake kept the connection open")
            self.assertLess(took, PROMPT)
        finally:
            r.close()
        self.assertTrue(self.log_has("TLS error"))
        self.fresh_ping()

    def test_h_record_with_a_flipped_bit(self):
        r = self.established()
        try:
            r.obj.write(ping_line("flipped"))
            rec = bytearray(r.out.read())
            rec[len(rec) // 2] ^= 0x01
            r.sock.sendall(bytes(rec))
            took = r.closed_within(PROMPT + 1)
            self.assertIsNotNone(took, "a corrupted record kept the connection open")
            self.assertLess(took, PROMPT)
        finally:
            r.close()
        self.fresh_ping()

    # -- plaintext on the TLS port ---------------------------------------------

    def plaintext(self, data):
        s = socket.create_connection((self.d.host, self.d.port), timeout=5 * H.SLOW)
        try:
            t0 = time.monotonic()
            s.sendall(data)
            got = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
            self.assertLess(time.monotonic() - t0, PROMPT)
            return got
        finally:
            s.close()

    def test_i_plaintext_garbage(self):
        got = self.plaintext(bytes(random.Random(9).getrandbits(8) | 0x80 for _ in range(512)))
        first = json.loads(got.split(b"\n")[0])
        self.assertEqual(first["error"]["data"]["name"], "tls_required", first)
        self.assertIn("tls://", first["error"]["message"])
        self.fresh_ping()

    def test_j_plaintext_http(self):
        got = self.plaintext(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 400 "), got[:100])
        self.assertIn(b"with TLS", got)
        self.fresh_ping()

    # -- odd but valid ----------------------------------------------------------

    def test_k_client_hello_byte_at_a_time(self):
        r = Raw(self.d)
        try:
            for b in r.client_hello():
                r.sock.sendall(bytes([b]))
            r.pump_handshake()
            self.assertEqual(r.read_line()["method"], "hello")
            r.send_plain(ping_line("bytes"))
            self.assertTrue(r.read_line()["result"]["pong"])
        finally:
            r.close()

    def test_l_requests_with_the_finished(self):
        r = Raw(self.d)
        try:
            flight = r.pump_handshake(send=False)
            r.obj.write(b'{"jsonrpc":"2.0","id":1,"method":"auth","params":{"role":"observer"}}\n'
                        + ping_line("early"))
            r.sock.sendall(flight + r.out.read())  # one segment
            msgs = [r.read_line() for _ in range(3)]
            self.assertEqual(msgs[0]["method"], "hello")
            self.assertEqual(msgs[1]["result"]["role"], "observer")
            self.assertTrue(msgs[2]["result"]["pong"])
        finally:
            r.close()

    # -- the end ---------------------------------------------------------------

    def test_z1_run_untouched(self):
        held = None
        while held is None:
            m = self.gate.read_msg(300)
            if m.get("method") == "event" and m["params"]["event"] == "train_end":
                held = m["params"]
        self.assertTrue(held.get("lockstep"), held)
        self.assertEqual(self.gate.ok("continue", {"run": "r1", "seq": held["seq"]}), {"ok": True})
        H.LogWatch(self.d.state_dir).wait("final", 300, self.d.alive)
        events = H.log_events(self.d.state_dir)
        self.assertEqual(H.final_state(events), "finished")
        self.assertEqual([e for e in events if e["event"] == "control"], [])
        self.assertEqual([e["seq"] for e in events], list(range(1, len(events) + 1)))

    def test_z2_daemon_stops_cleanly(self):
        self.d.assert_clean_stop(self)
        HostileTls.d = None


if __name__ == "__main__":
    unittest.main()
