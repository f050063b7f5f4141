"""Resource bounds of the daemon, from its VmRSS in /proc:

- 10,000 idle subscribers (authenticated observers, one subscription each):
  memory per subscriber is reported and bounded, the daemon keeps answering,
  and a second wave after the first has gone costs no more (nothing kept per
  closed connection);
- one client that never reads, subscribed to everything during a run that
  publishes ~7 MB of events: the daemon's peak RSS exceeds that of the same
  run without the client by at most the configured hard output limit (8 MiB)
  plus slack;
- one client that never reads and pipelines big `history` requests: the
  replies it does not read must also stay within the output limits
  (docs/PROTOCOL.md s6: past a hard limit the client is disconnected).
"""
import os
import resource
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_util as H  # noqa: E402

N_IDLE = 10000
HARD_LIMIT = 8 * 1024 * 1024  # tb_server_opts_defaults: out_hard_bytes
SLACK = 4 * 1024 * 1024
LONG_EPOCHS = 120
# ASan's allocator (redzones, quarantine) changes RSS: under a sanitizer these
# tests still run (for its reports at exit) but do not assert on memory.
MEASURE = os.environ.get("TB_SANITIZED") != "1" and not H.WRAP


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Sampler(threading.Thread):
    """Samples a process's VmRSS every 20 ms; peak in KiB."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d = d
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and self.d.alive():
            try:
                self.peak = max(self.peak, self.d.rss_kb())
            except OSError:
                break
            time.sleep(0.02)


def open_subscribers(d, n):
    """n observers, each authenticated with one subscription; returns the
    sockets once every one has its subscribe answer."""
    socks = []
    msg = (b'{"jsonrpc":"2.0","id":1,"method":"auth","params":{"role":"observer"}}\n'
           b'{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{"runs":["r1"],"events":["epoch_end"]}}\n')
    for _ in range(n):
        s = H.connect_raw(d.host, d.port, timeout=30)
        s.sendall(msg)
        socks.append(s)
    for s in socks:
        buf = b""
        while buf.count(b"\n") < 3:  # hello, auth result, subscribe result
            chunk = s.recv(4096)
            if not chunk:
                raise AssertionError("a subscriber was closed: %r" % buf)
            buf += chunk
        if b'"sub":1' not in buf:
            raise AssertionError("subscribe refused: %r" % buf)
    return socks


class Resources(unittest.TestCase):
    def test_idle_subscribers_10k(self):
        have = raise_nofile(N_IDLE + 200)
        self.assertGreaterEqual(have, N_IDLE + 100, "RLIMIT_NOFILE hard limit too low")
        d = H.Daemon(None)
        try:
            c = H.controller(d)
            time.sleep(0.2)
            base = d.rss_kb()
            t0 = time.monotonic()
            socks = open_subscribers(d, N_IDLE)
            took = time.monotonic() - t0
            time.sleep(0.2)
            rss1 = d.rss_kb()
            st = c.ok("status")
            self.assertEqual(st["clients"], N_IDLE + 1, st)
            t1 = time.monotonic()
            c.ok("ping")
            ping_s = time.monotonic() - t1
            for s in socks:
                s.close()
            end = time.monotonic() + 30
            while c.ok("status")["clients"] > 1 and time.monotonic() < end:
                time.sleep(0.05)
            self.assertEqual(c.ok("status")["clients"], 1, "closed connections not released")
            socks = open_subscribers(d, N_IDLE)
            time.sleep(0.2)
            rss2 = d.rss_kb()
            for s in socks:
                s.close()
            per_sub = (rss1 - base) * 1024 / N_IDLE
            H.report("idle_subscribers", subscribers=N_IDLE, base_kb=base, rss_kb=rss1,
                     second_wave_rss_kb=rss2, bytes_per_subscriber=round(per_sub),
                     connect_s=round(took, 2), ping_s=round(ping_s, 4))
            if MEASURE:
                self.assertLess(per_sub, 32 * 1024, "more than 32 KiB of RSS per idle subscriber")
                self.assertLess(rss2, rss1 + 4096 + rss1 // 4,
                                "a second wave of 10k subscribers grew RSS: kept per closed connection?")
            c.close()
        finally:
            d.assert_clean_stop(self)

    def peak_rss(self, never_reader):
        d = H.Daemon(H.job(os.path.join(tempfile.mkdtemp(prefix="tb-hostile-rss-"), "w.tbw"),
                           LONG_EPOCHS))
        s = None
        try:
            if never_reader:
                s = H.connect_raw(d.host, d.port, rcvbuf=4096)
                s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"auth","params":{"role":"observer"}}\n'
                          b'{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{"events":["*"]}}\n')
            smp = Sampler(d)
            smp.start()
            H.LogWatch(d.state_dir).wait("final", alive=d.alive)
            smp.stop.set()
            smp.join()
            return smp.peak
        finally:
            if s is not None:
                s.close()
            d.assert_clean_stop(self)

    def test_never_reader_memory_bounded(self):
        clean = self.peak_rss(False)
        slow = self.peak_rss(True)
        growth = (slow - clean) * 1024
        H.report("never_reader_rss", clean_peak_kb=clean, never_reader_peak_kb=slow,
                 growth_bytes=growth, bound_bytes=HARD_LIMIT + SLACK)
        if MEASURE:
            self.assertLess(growth, HARD_LIMIT + SLACK,
                            "a client that never reads grew the daemon by %d bytes" % growth)

    def test_never_reader_history_flood_bounded(self):
        """A client pipelines 100 history requests (limit 10000, about 1.3 MB
        each) and never reads. Expected: RSS growth within the hard output
        limit plus slack, the client disconnected (bye slow_consumer)."""
        d = H.Daemon(H.job(os.path.join(tempfile.mkdtemp(prefix="tb-hostile-hist-"), "w.tbw"), 40))
        s = None
        try:
            H.LogWatch(d.state_dir).wait("final", alive=d.alive)
            time.sleep(0.2)
            base = d.rss_kb()
            s = H.connect_raw(d.host, d.port, rcvbuf=4096)
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"auth","params":{"role":"observer"}}\n' + b"".join(
                b'{"jsonrpc":"2.0","id":%d,"method":"history","params":{"run":"r1","limit":10000}}\n' % (i + 2)
                for i in range(100)))
            smp = Sampler(d)
            smp.start()
            time.sleep(3)
            c = H.controller(d)
            clients = c.ok("status")["clients"]
            c.close()
            smp.stop.set()
            smp.join()
            growth = (smp.peak - base) * 1024
            H.report("history_flood_never_reads", base_kb=base, peak_kb=smp.peak, growth_bytes=growth,
                     bound_bytes=HARD_LIMIT + SLACK, still_connected=clients > 1)
            if MEASURE:
                self.assertLess(growth, HARD_LIMIT + SLACK,
                                "unread replies grew the daemon by %d bytes (hard limit %d)" % (growth, HARD_LIMIT))
        finally:
            if s is not None:
                s.close()
            d.assert_clean_stop(self)


if __name__ == "__main__":
    unittest.main()
