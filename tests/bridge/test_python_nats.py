"""trainbus.nats against a scripted fake NATS server (no nats-server needed):
the text protocol with headers, no-responders, -ERR, and the ordered
consumer's recovery when a message is missed (a consumer sequence out of
step makes a new consumer start after the last stream sequence delivered)."""
import json
import os
import socket
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))

import trainbus  # noqa: E402
import trainbus.nats as tn  # noqa: E402


class FakeNats:
    """Accepts one client; handler(self, line, payload) answers each PUB/HPUB."""

    def __init__(self, handler, info=None):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.handler = handler
        self.info = info or {"server_id": "fake", "max_payload": 1024, "headers": True}
        self.subs = {}      # subject -> sid
        self.pubs = []      # (subject, reply, headers bytes, payload)
        self.conn = None
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def send(self, data):
        self.conn.sendall(data)

    def msg(self, subject, payload, reply=None, headers=None):
        """Delivers to every matching subscription, as NATS does."""
        for pat, sid in list(self.subs.items()):
            if (pat == subject or (pat.endswith(".*") and subject.startswith(pat[:-1])
                                   and "." not in subject[len(pat) - 1:])
                    or (pat.endswith(">") and subject.startswith(pat[:-1]))):
                self._msg(sid, subject, payload, reply, headers)

    def _msg(self, sid, subject, payload, reply, headers):
        r = (" " + reply) if reply else ""
        if headers is not None:
            h = headers.encode()
            self.send(b"HMSG %s %s%s %d %d\r\n%s%s\r\n" % (subject.encode(), sid.encode(), r.encode(),
                                                         len(h), len(h) + len(payload), h, payload))
        else:
            self.send(b"MSG %s %s%s %d\r\n%s\r\n" % (subject.encode(), sid.encode(), r.encode(),
                                                   len(payload), payload))

    def run(self):
        self.conn, _ = self.srv.accept()
        self.send(b"INFO " + json.dumps(self.info).encode() + b"\r\n")
        f = self.conn.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            line = line.rstrip(b"\r\n").decode()
            parts = line.split(" ")
            if parts[0] == "PING":
                self.send(b"PONG\r\n")
            elif parts[0] == "SUB":
                self.subs[parts[1]] = parts[-1]
            elif parts[0] in ("PUB", "HPUB"):
                hl = int(parts[-2]) if parts[0] == "HPUB" else 0
                total = int(parts[-1])
                body = f.read(total + 2)[:total]
                reply = parts[2] if len(parts) == (5 if parts[0] == "HPUB" else 4) else None
                self.pubs.append((parts[1], reply, body[:hl], body[hl:]))
                self.handler(self, parts[1], reply, body[hl:])

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass
        self.srv.close()


class PythonNats(unittest.TestCase):

    def test_request_reply_headers_and_errors(self):
        def handler(fs, subject, reply, payload):
            if subject == "tb.ns.run.r1.ctl.set_lr":
                fs.msg(reply, b'{"result":{"ok":true}}', headers="NATS/1.0\r\nX-A: 1\r\n\r\n")
            elif subject == "tb.ns.run.r1.ctl.stop":
                fs.msg(reply, b"", headers="NATS/1.0 503\r\n\r\n")
            elif subject == "tb.ns.run.r1.ctl.pause":
                fs.msg(reply, b'{"error":{"code":-32004,"message":"paused","data":'
                              b'{"name":"invalid_state"}}}')
            elif subject == "forbidden":
                fs.send(b"-ERR 'Permissions Violation for Publish to \"forbidden\"'\r\n")

        fs = FakeNats(handler)
        url = "nats://127.0.0.1:%d" % fs.port
        with tn.Nats(url) as nc:
            self.assertEqual(nc.max_payload, 1024)
            msg = nc.request("tb.ns.run.r1.ctl.set_lr", b"{}")
            self.assertEqual(msg.headers, {"X-A": "1"})
            self.assertEqual(msg.json(), {"result": {"ok": True}})
            with self.assertRaises(tn.NoResponders):
                nc.request("tb.ns.run.r1.ctl.stop", b"{}")
            nc.publish("forbidden", b"x", headers={"Tb-Seq": "1"})
            with self.assertRaises(tn.NatsError) as cm:
                nc.flush()
            self.assertIn("Permissions Violation", cm.exception.message)
        fs.close()
        fs = FakeNats(handler)
        with self.assertRaises(trainbus.RemoteError) as cm:
            tn.call("nats://127.0.0.1:%d" % fs.port, "r1", "pause", ns="ns")
        self.assertEqual(cm.exception.name, "invalid_state")
        fs.close()
        # The request is refused here when it cannot fit the server's max_payload.
        fs = FakeNats(handler)
        with self.assertRaises(trainbus.TrainbusError) as cm:
            tn.call("nats://127.0.0.1:%d" % fs.port, "r1", "stop", {"reason": "x" * 2000}, ns="ns")
        self.assertEqual(cm.exception.name, "too_large")
        fs.close()

    def test_ordered_consumer_recovers_a_missed_message(self):
        """Stream messages 1..6 for run r1; the first consumer skips one
        (consumer sequence 3 after 1): the client deletes it and makes a
        new consumer from the stream sequence after the last it delivered;
        the run's events come out 1..6, once each."""
        stream = [json.dumps({"run": "r1", "seq": i, "event": "epoch_end" if i < 6 else "state",
                              "time": 1.0 + i, "logs": {},
                              **({"state": "finished", "prev_state": "running"} if i == 6 else {})
                              }).encode() for i in range(1, 7)]
        creates = []

        def handler(fs, subject, reply, payload):
            if subject == "$JS.API.CONSUMER.CREATE.TB_ns":
                cfg = json.loads(payload)["config"]
                creates.append(cfg)
                name = "c%d" % len(creates)
                fs.msg(reply, json.dumps({"name": name}).encode())
                start = cfg.get("opt_start_seq", 1)
                plan = list(range(start, 7))
                if len(creates) == 1:
                    plan = [1, 3, 4]  # consumer sequences 1, 2(missing), 3...
                cseq = 0
                for sseq in plan:
                    cseq += 2 if (len(creates) == 1 and sseq == 3) else 1
                    ack = "$JS.ACK.TB_ns.%s.1.%d.%d.1700000000.%d" % (name, sseq, cseq, 6 - sseq)
                    fs.msg(cfg["deliver_subject"], stream[sseq - 1], reply=ack,
                           headers="NATS/1.0\r\nTb-Seq: %d\r\n\r\n" % sseq)
            elif subject.startswith("$JS.API.CONSUMER.DELETE."):
                fs.msg(reply, b'{"success":true}')

        fs = FakeNats(handler)
        evs = list(tn.follow("nats://127.0.0.1:%d" % fs.port, "r1", ns="ns", timeout=5))
        self.assertEqual([e.seq for e in evs], [1, 2, 3, 4, 5, 6])
        self.assertEqual(len(creates), 2)
        self.assertEqual(creates[0]["deliver_policy"], "all")
        self.assertEqual(creates[0]["filter_subject"], "tb.ns.run.r1.evt.>")
        self.assertEqual((creates[1]["deliver_policy"], creates[1]["opt_start_seq"]),
                         ("by_start_sequence", 2))
        self.assertTrue(any(p[0] == "$JS.API.CONSUMER.DELETE.TB_ns.c1" for p in fs.pubs))
        fs.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
