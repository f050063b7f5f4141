"""A scripted fake trainbus server for the Python client's unit tests.

A script is a list of steps run on a thread:
  ("send", obj)           send obj (a dict, JSON-encoded, or a str as is) + "\n"
  ("expect", method, sub) read a request; its method must be `method` and its
                          params must contain every key/value of `sub`
  ("reply", result)       answer the last request read with this result
  ("error", code, name, message)  answer it with an error
  ("close",)              close the connection
  ("accept",)             accept the next connection
  ("sleep", seconds)
Failures are collected in `failures`; the test asserts it is empty.
"""
import json
import socket
import threading
import time

HELLO = {"jsonrpc": "2.0", "method": "hello", "params": {
    "protocol": 1, "server": "fake/0", "auth_required": True, "auth_timeout_ms": 5000,
    "max_line": 65536}}


def event(run, seq, name, **fields):
    p = {"run": run, "seq": seq, "event": name, "time": 1.0, "logs": fields.pop("logs", {})}
    p.update(fields)
    return {"jsonrpc": "2.0", "method": "event", "params": p}


def handshake(role="controller"):
    return [("send", HELLO), ("expect", "auth", {}), ("reply", {"role": role, "protocol": 1})]


class FakeServer:
    def __init__(self, script):
        self.script = script
        self.failures = []
        self.requests = []
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _readline(self, f):
        line = b"\n"
        while line.strip() == b"":  # empty lines are ignored (a client starts with one)
            line = f.readline()
            if not line:
                raise EOFError("client closed")
        return json.loads(line)

    def _run(self):
        conn = None
        f = None
        last = None
        try:
            self.lsock.settimeout(5)
            conn, _ = self.lsock.accept()
            conn.settimeout(5)
            f = conn.makefile("rb")
            for i, step in enumerate(self.script):
                op = step[0]
                if op == "send":
                    data = step[1] if isinstance(step[1], str) else json.dumps(step[1])
                    conn.sendall(data.encode() + b"\n")
                elif op == "expect":
                    last = self._readline(f)
                    self.requests.append(last)
                    params = last.get("params", {})
                    if last.get("method") != step[1]:
                        self.failures.append("step %d: expected %s, got %s" % (i, step[1], last))
                    for k, v in step[2].items():
                        if params.get(k, "<missing>") != v:
                            self.failures.append("step %d: %s: params.%s = %r, want %r" % (
                                i, step[1], k, params.get(k, "<missing>"), v))
                elif op == "reply":
                    conn.sendall(json.dumps({"jsonrpc": "2.0", "id": last["id"],
                                             "result": step[1]}).encode() + b"\n")
                elif op == "error":
                    conn.sendall(json.dumps({"jsonrpc": "2.0", "id": last["id"], "error": {
                        "code": step[1], "message": step[3], "data": {"name": step[2]}}}
                    ).encode() + b"\n")
                elif op == "close":
                    f.close()
                    conn.close()
                    conn = None
                elif op == "accept":
                    conn, _ = self.lsock.accept()
                    conn.settimeout(5)
                    f = conn.makefile("rb")
                elif op == "sleep":
                    time.sleep(step[1])
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.failures.append("fake server: %r" % e)
        finally:
            if conn is not None:
                time.sleep(0.05)
                conn.close()

    def join(self):
        self.thread.join(10)
        self.lsock.close()
        return self.failures
