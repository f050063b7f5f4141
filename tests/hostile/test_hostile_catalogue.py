"""The hostile-input catalogue: every entry of CASES is one test. Each sends
its bytes on a fresh connection to one daemon that is training the suite's
job, and asserts the documented answer (docs/PROTOCOL.md sections 1, 2, 7, 8
and 10): the error name (and the request's own id where the id could be
read), an HTTP 400 for HTTP, and whether the connection is closed (promptly:
well before the auth timeout) or kept open (a ping on it is answered). After
every case a fresh client must get a pong.

Throughout, a "gate" controller holds the run at train_end with a lockstep
subscription, so every input reaches a run that is still running; at the end
the gate continues (with no actions), and the final weights file must equal,
byte for byte, that of the same job trained by a daemon no client ever
connected to. The run's history must hold no control event: no input changed
the run. Finally SIGTERM must end the daemon with status 0 and, in an ASan
build, no sanitizer report.

Run one case: python3 -m unittest -v test_hostile_catalogue.Catalogue.test_c012_line_never_ends
"""
import json
import os
import random
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_util as H  # noqa: E402

EPOCHS = 40
MAX_LINE = 65536


def req(method, params=None, rid=7, **extra):
    """One request line; extra envelope members go in as given."""
    m = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        m["params"] = params
    m.update(extra)
    return (json.dumps(m, separators=(",", ":")) + "\n").encode()


def raw(s):
    return s.encode() if isinstance(s, str) else s


def padded_ping(total):
    """A valid ping of exactly `total` bytes before its newline (spaces pad it:
    JSON whitespace between tokens)."""
    head = b'{"jsonrpc":"2.0","id":"pad","method":"ping"'
    return head + b" " * (total - len(head) - 1) + b"}\n"


def tls_client_hello():
    """The start of a TLS 1.2 ClientHello record, as a TLS client would send
    it to a port it believes speaks TLS."""
    rnd = random.Random(3)
    body = (b"\x03\x03" + bytes(rnd.getrandbits(8) for _ in range(32)) + b"\x00"
            + b"\x00\x04\x13\x01\xc0\x2f" + b"\x01\x00" + b"\x00\x00")
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def garbage(seed, n):
    rnd = random.Random(seed)
    return bytes(rnd.getrandbits(8) for _ in range(n))


R1 = "r1"

# Each case: name, role to authenticate as first (None: not at all), bytes,
# expected answer ("error name", "http400", "pong", "result"), whether the
# connection must be closed (True), kept open (False) or either (None), the id
# the answer must carry ("any": not checked), and what PROTOCOL.md says.
C = []


def case(name, role, data, expect, closed, rid="any", why="", skip=0):
    C.append(dict(name=name, role=role, data=raw(data), expect=expect, closed=closed, id=rid,
                  why=why, skip=skip))


# -- framing (section 1): these close the connection, with id null.
case("malformed_json_truncated", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping"\n',
     "parse_error", True, None, "s8 parse_error; closed after parse_error")
case("malformed_json_trailing_data", "controller",
     b'{"jsonrpc":"2.0","id":7,"method":"ping"} {"x":1}\n', "parse_error", True, None,
     "s8 trailing data after the object")
case("malformed_single_quotes", "controller", b"{'jsonrpc':'2.0','id':7,'method':'ping'}\n",
     "parse_error", True, None, "s8 not JSON")
case("malformed_trailing_comma", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping",}\n',
     "parse_error", True, None, "s8 not JSON")
case("not_json_text", "controller", b"hello trainbus\n", "parse_error", True, None, "s8")
case("whitespace_only_line", "controller", b"    \t \n", "parse_error", True, None,
     "not an empty line, not JSON")
case("line_over_limit", "controller", b"{" + b" " * MAX_LINE + b"}\n", "too_large", True, None,
     "s1/s10: a line longer than max_line")
case("line_never_ends", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"x":"'
     + b"a" * (70 * 1024), "too_large", True, None,
     "s1: 70 KB without newline answered too_large and closed without waiting")
case("line_exactly_at_limit", "controller", padded_ping(MAX_LINE), "pong", False, "pad",
     "s1: a line of max_line bytes is accepted")
case("invalid_utf8_ff", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"c":"\xff"}}\n',
     "parse_error", True, None, "s1 UTF-8")
case("invalid_utf8_overlong", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"\xc0\xaf"}\n',
     "parse_error", True, None, "s1 no overlong forms")
case("invalid_utf8_surrogate", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"\xed\xa0\x80"}\n',
     "parse_error", True, None, "s1 no surrogates")
case("invalid_utf8_above_10ffff", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"\xf4\x90\x80\x80"}\n',
     "parse_error", True, None, "s1 nothing above U+10FFFF")
case("invalid_utf8_truncated", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"\xe2\x82"}\n',
     "parse_error", True, None, "s1 UTF-8")
case("raw_control_byte", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"a\x01b"}\n',
     "parse_error", True, None, "s1 raw control bytes")
case("raw_nul_byte", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping"}\x00\n', "parse_error",
     True, None, "s1 raw control bytes")
case("bare_cr", "controller", b'{"jsonrpc":"2.0","id":7,"method":"ping"}\r{"a":1}\n', "parse_error",
     True, None, "s1 a CR must be followed by LF")
case("utf8_bom", "controller", b'\xef\xbb\xbf{"jsonrpc":"2.0","id":7,"method":"ping"}\n',
     "parse_error", True, None, "not JSON at byte 0")
case("binary_garbage_1", "controller", garbage(1, 4096), "parse_error", True, None,
     "s1: control bytes / invalid UTF-8")
case("binary_garbage_preauth", None, garbage(2, 512) + b"\n", "parse_error", True, None,
     "s1 before auth")
case("tls_client_hello", None, tls_client_hello(), "parse_error", True, None,
     "s1: bytes 16 03 01 ... are control bytes; closed without waiting for a newline")
case("ssh_banner", None, b"SSH-2.0-OpenSSH_9.6\r\n", "parse_error", True, None,
     "s1: not JSON before auth closes")
case("http_get", None, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "http400", True, None,
     "an HTTP request gets an HTTP 400")
case("http_post", None, b"POST /rpc HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "http400", True, None,
     "an HTTP request gets an HTTP 400")
case("http_after_auth_is_just_bad_json", "controller", b"GET / HTTP/1.1\r\n\r\n", "parse_error",
     True, None, "after auth it is a line like any other")
# -- numbers (section 7)
case("bare_nan_token", "controller", req("set_lr", {"run": R1, "lr": 1}).replace(b'"lr":1', b'"lr":NaN'),
     "parse_error", True, None, "s7: NaN is not JSON")
case("bare_infinity_token", "controller",
     req("set_lr", {"run": R1, "lr": 1}).replace(b'"lr":1', b'"lr":Infinity'), "parse_error", True, None,
     "s7")
case("number_leading_zero", "controller", req("set_lr", {"run": R1, "lr": 1}).replace(b'"lr":1', b'"lr":01'),
     "parse_error", True, None, "s7 RFC 8259 numbers")
case("number_trailing_dot", "controller", req("set_lr", {"run": R1, "lr": 1}).replace(b'"lr":1', b'"lr":1.'),
     "parse_error", True, None, "s7 no `1.`")
case("number_over_40_chars", "controller",
     req("set_lr", {"run": R1, "lr": 1}).replace(b'"lr":1', b'"lr":0.' + b"0" * 45 + b"1"),
     "parse_error", True, None, "s7/s10: number token at most 40 characters")
case("number_1e999_in_params", "controller",
     req("set_lr", {"run": R1, "lr": 1}).replace(b'"lr":1', b'"lr":1e999'), "invalid_params", False, 7,
     "s7: 1e999 refused, not turned into infinity; s2: the response carries the request's id")
case("id_1e400", "controller", b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}\n', ("invalid_request", "parse_error"),
     None, None, "s2/s7: an id that is not an exact integer")
# -- envelope (section 2)
case("json_scalar", "controller", b"42\n", "invalid_request", False, None, "s8 not an object")
case("json_string", "controller", b'"ping"\n', "invalid_request", False, None, "s8 not an object")
case("json_null", "controller", b"null\n", "invalid_request", False, None, "s8 not an object")
case("empty_object", "controller", b"{}\n", "invalid_request", False, None, "s8 missing members")
case("batch", "controller", b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]\n',
     "invalid_request", False, None, "s2: batches get one invalid_request with id null")
case("empty_batch", "controller", b"[]\n", "invalid_request", False, None, "s2")
case("jsonrpc_1_0", "controller", req("ping", jsonrpc="1.0"), "invalid_request", False, 7, "s8")
case("jsonrpc_missing", "controller", b'{"id":7,"method":"ping"}\n', "invalid_request", False, 7, "s8")
case("id_null", "controller", req("ping", rid=None), "invalid_request", False, None, "s2: null refused")
case("id_missing", "controller", b'{"jsonrpc":"2.0","method":"ping"}\n', "invalid_request", False, None,
     "s2: no notifications")
case("id_fraction", "controller", req("ping", rid=1.5), "invalid_request", False, None, "s2")
case("id_2_pow_53", "controller", req("ping", rid=2 ** 53), "invalid_request", False, None, "s2")
case("id_object", "controller", req("ping", rid={"a": 1}), "invalid_request", False, None, "s2")
case("id_string_64_bytes", "controller", req("ping", rid="x" * 64), "invalid_request", False, None,
     "s10: string id at most 63 bytes")
case("id_string_63_bytes_ok", "controller", req("ping", rid="y" * 63), "pong", False, "y" * 63, "s10")
case("extra_envelope_member", "controller", req("ping", extra=1), "invalid_request", False, 7,
     "s2: other members refused")
case("duplicate_key_envelope", "controller", b'{"jsonrpc":"2.0","id":7,"id":8,"method":"ping"}\n',
     "invalid_request", False, None, "s8 duplicate key")
case("duplicate_key_params", "controller",
     b'{"jsonrpc":"2.0","id":7,"method":"status","params":{"run":"r1","run":"r2"}}\n',
     "invalid_params", False, 7, "s8: duplicate key inside params; s2: the response carries the id")
case("escaped_nul_in_string", "controller", req("auth", {"role": "observer", "client": "a\u0000b"}),
     "invalid_request", False, "any", "s8 \\u0000 in a string")
case("nesting_33_levels", "controller",
     b'{"jsonrpc":"2.0","id":7,"method":"status","params":{"run":' + b"[" * 33 + b"]" * 33 + b"}}\n",
     "invalid_request", False, "any", "s8/s10 nesting deeper than 32")
case("nesting_20000_levels", "controller", b"[" * 20000 + b"]" * 20000 + b"\n", "invalid_request", False,
     None, "s10: must not recurse 20000 levels")
case("method_not_string", "controller", req(42), "invalid_request", False, 7, "s8")
case("method_unknown", "controller", req("frobnicate"), "method_not_found", False, 7, "s8")
case("method_wrong_case", "controller", req("PING"), "method_not_found", False, 7, "s8")
case("params_array", "controller", req("status", [1]), "invalid_params", False, 7, "s2 params by name")
case("params_unknown_field", "controller", req("status", {"run": R1, "verbose": True}), "invalid_params",
     False, 7, "s9 unknown parameters refused")
# -- auth and roles (section 3)
case("before_auth_status", None, req("status"), "unauthorized", False, 7, "s3")
case("before_auth_set_lr", None, req("set_lr", {"run": R1, "lr": 0.5}), "unauthorized", False, 7, "s3")
case("before_auth_subscribe", None, req("subscribe", {}), "unauthorized", False, 7, "s3")
case("wrong_token", None, req("auth", {"role": "controller", "token": "not-the-token"}), "unauthorized",
     True, 7, "s8: closed after unauthorized for a bad token")
case("controller_without_token", None, req("auth", {"role": "controller"}), "unauthorized", True, 7,
     "s3: the controller role always needs the token")
case("observer_wrong_token", None, req("auth", {"role": "observer", "token": "nope"}), "unauthorized", True, 7,
     "a token given must be right")
case("auth_unknown_role", None, req("auth", {"role": "admin", "token": H.TOKEN}), "invalid_params", None, 7,
     "s3 roles")
case("auth_token_256_bytes", None, req("auth", {"role": "controller", "token": "t" * 256}), "invalid_params",
     None, 7, "s10 token at most 255 bytes")
case("auth_protocol_2", None, req("auth", {"role": "observer", "protocol": 2}), "invalid_params", None, 7,
     "s9 names both versions")
case("auth_twice", "controller", req("auth", {"role": "controller", "token": H.TOKEN}), "invalid_state",
     False, 7, "already authenticated")
case("auth_client_name_too_long", None, req("auth", {"role": "observer", "client": "c" * 200}),
     "invalid_params", None, 7, "s3 client <= 127 bytes")
case("observer_set_lr", "observer", req("set_lr", {"run": R1, "lr": 0.5}), "forbidden", False, 7, "s3")
case("observer_stop", "observer", req("stop", {"run": R1}), "forbidden", False, 7, "s3")
case("observer_pause", "observer", req("pause", {"run": R1}), "forbidden", False, 7, "s3")
case("observer_submit", "observer", req("submit", {"job": {}}), "forbidden", False, 7, "s3")
case("observer_lockstep", "observer", req("subscribe", {"runs": [R1], "lockstep": ["epoch_end"]}),
     "forbidden", False, 7, "s5: lockstep needs the controller role")
case("observer_with_controller_token_set_lr", None,
     req("auth", {"role": "observer", "token": H.TOKEN}) + req("set_lr", {"run": R1, "lr": 0.5}, rid=8),
     "forbidden", False, 8, "the role granted is the one asked for", skip=1)
# -- set_lr values (section 5)
case("set_lr_zero", "controller", req("set_lr", {"run": R1, "lr": 0}), "invalid_params", False, 7, "s5")
case("set_lr_negative", "controller", req("set_lr", {"run": R1, "lr": -1}), "invalid_params", False, 7, "s5")
case("set_lr_beyond_float32", "controller", req("set_lr", {"run": R1, "lr": 1e300}), "invalid_params", False, 7,
     "s5: the rate is a float32, as Keras's variable")
case("set_lr_negative_zero", "controller", req("set_lr", {"run": R1, "lr": -0.0}), "invalid_params", False, 7,
     "s5 > 0")
case("set_lr_nan_string", "controller", req("set_lr", {"run": R1, "lr": "NaN"}), "invalid_params", False, 7,
     "s7: non-finite never valid in requests")
case("set_lr_infinity_string", "controller", req("set_lr", {"run": R1, "lr": "Infinity"}), "invalid_params",
     False, 7, "s7")
case("set_lr_string_number", "controller", req("set_lr", {"run": R1, "lr": "0.1"}), "invalid_params", False, 7,
     "wrong type")
case("set_lr_bool", "controller", req("set_lr", {"run": R1, "lr": True}), "invalid_params", False, 7, "wrong type")
case("set_lr_missing_lr", "controller", req("set_lr", {"run": R1}), "invalid_params", False, 7, "missing")
case("set_lr_misspelt_field", "controller", req("set_lr", {"run": R1, "lr_": 0.1}), "invalid_params", False, 7,
     "s9")
case("set_lr_unknown_run", "controller", req("set_lr", {"run": "nope", "lr": 0.5}), "no_such_run", False, 7,
     "s5")
# -- runs and other methods
case("run_id_bad_chars", "controller", req("status", {"run": "../etc"}), "invalid_params", False, 7, "s4")
case("run_id_64_bytes", "controller", req("status", {"run": "r" * 64}), "invalid_params", False, 7, "s10")
case("run_id_not_string", "controller", req("status", {"run": 1}), "invalid_params", False, 7, "wrong type")
case("stop_unknown_run", "controller", req("stop", {"run": "r999"}), "no_such_run", False, 7, "s5")
case("pause_unknown_run", "controller", req("pause", {"run": "r999"}), "no_such_run", False, 7, "s5")
case("cancel_unknown_run", "controller", req("cancel", {"run": "r999"}), "no_such_run", False, 7, "s5")
case("checkpoint_unknown_run", "controller", req("checkpoint", {"run": "r999"}), "no_such_run", False, 7, "s5")
case("history_unknown_run", "controller", req("history", {"run": "r999"}), "no_such_run", False, 7, "s5")
case("resume_running_run", "controller", req("resume", {"run": R1}), "invalid_state", False, 7,
     "s5 resume on a running run")
case("continue_not_waited", "controller", req("continue", {"run": R1, "seq": 999999999}), "invalid_state",
     False, 7, "s5 not the event being waited on")
case("continue_seq_1", "controller", req("continue", {"run": R1, "seq": 1}), "invalid_state", False, 7,
     "s5 an event long past")
case("continue_unknown_run", "controller", req("continue", {"run": "r999", "seq": 1}), "no_such_run", False, 7,
     "s5")
case("continue_bad_action", "controller", req("continue", {"run": R1, "seq": 1, "actions": {"set_lr": -1}}),
     "invalid_params", False, 7, "s5 set_lr finite > 0")
case("history_limit_0", "controller", req("history", {"run": R1, "limit": 0}), "invalid_params", False, 7,
     "s5 limit 1..10000")
case("history_limit_10001", "controller", req("history", {"run": R1, "limit": 10001}), "invalid_params",
     False, 7, "s10")
case("history_negative_since", "controller", req("history", {"run": R1, "since_seq": -1}), "invalid_params",
     False, 7, "s5 since_seq >= 0")
case("subscribe_every_0", "controller", req("subscribe", {"every": 0}), "invalid_params", False, 7, "s10")
case("subscribe_every_string", "controller", req("subscribe", {"every": "10"}), "invalid_params", False, 7,
     "wrong type")
case("subscribe_runs_not_array", "controller", req("subscribe", {"runs": "r1"}), "invalid_params", False, 7,
     "wrong type")
case("subscribe_33_runs", "controller", req("subscribe", {"runs": ["r%d" % i for i in range(33)]}),
     "invalid_params", False, 7, "s10 at most 32")
case("subscribe_lockstep_timeout_5ms", "controller",
     req("subscribe", {"runs": [R1], "lockstep": ["epoch_end"], "lockstep_timeout_ms": 5}), "invalid_params",
     False, 7, "s10 10..600000")
case("subscribe_lockstep_not_a_hook", "controller", req("subscribe", {"runs": [R1], "lockstep": ["epoch_*"]}),
     "invalid_params", False, 7, "s5 exact hook names")
case("subscribe_since_seq_wildcard", "controller", req("subscribe", {"runs": ["r*"], "since_seq": 1}),
     "invalid_params", False, 7, "s5 exactly one run without *")
case("subscribe_since_seq_unknown_run", "controller", req("subscribe", {"runs": ["r999"], "since_seq": 1}),
     "no_such_run", False, 7, "s5")
case("unsubscribe_unknown_sub", "controller", req("unsubscribe", {"sub": 12345}), "invalid_params", False, 7,
     "s5")
case("submit_invalid_job", "controller",
     req("submit", {"job": {"data": {"source": "spirals"},
                            "model": {"layers": [{"type": "dense", "units": -3}]}, "loss": "mse"}}),
     "invalid_params", False, 7, "s5 submit validates")
case("submit_job_not_object", "controller", req("submit", {"job": "rm -rf /"}), "invalid_params", False, 7,
     "wrong type")


# -- jobs that cannot take the daemon down (issue 12; docs/JOB.md "Budgets" and
# "Data directories"). The daemon has no --data-dir: a submitted job may name no
# file. The sizes are such that, were one accepted, its allocation would fail
# at once (terabytes) rather than grow until the OOM killer came.
def job_with(data=None, layers=None, **top):
    j = {"data": data or {"source": "spirals", "n_per_class": 50},
         "model": {"layers": layers or [{"type": "dense", "units": 2, "activation": "softmax"}]},
         "loss": "sparse_categorical_crossentropy", "epochs": 1}
    j.update(top)
    return {"job": j}


WIDE = {"type": "dense", "units": 1 << 20, "activation": "relu"}
OUT2 = {"type": "dense", "units": 2, "activation": "softmax"}
case("submit_budget_wide_layers", "controller", req("submit", job_with(layers=[WIDE, WIDE, OUT2])),
     "invalid_params", False, 7, "JOB.md budgets: 2^40 weights")
case("submit_budget_huge_batch", "controller",
     req("submit", job_with(data={"source": "spirals", "n_per_class": 1000000}, layers=[WIDE, OUT2],
                            batch_size=1 << 20)),
     "invalid_params", False, 7, "JOB.md budgets: 2^20 rows of 2^20 units")
case("submit_budget_huge_data", "controller",
     req("submit", job_with(data={"source": "blobs", "n": 100000000, "features": 100000})),
     "invalid_params", False, 7, "JOB.md budgets: 10^13 values")
case("submit_path_etc_shadow", "controller",
     req("submit", job_with(data={"source": "csv", "path": "/etc/shadow"})), "invalid_params", False, 7,
     "JOB.md data directories: none given")
case("submit_path_dotdot", "controller",
     req("submit", job_with(data={"source": "csv", "path": "../../../../etc/passwd"})), "invalid_params",
     False, 7, "JOB.md data directories")
case("submit_path_idx", "controller",
     req("submit", job_with(data={"source": "idx", "images": "/proc/self/environ",
                                  "labels": "/dev/zero"})), "invalid_params", False, 7,
     "JOB.md data directories")
case("submit_path_test_set", "controller",
     req("submit", job_with(data={"source": "spirals", "test": {"source": "csv", "path": "/etc/passwd"}})),
     "invalid_params", False, 7, "JOB.md data directories: every set")
case("submit_write_outside", "controller",
     req("submit", job_with(callbacks=[{"type": "ModelCheckpoint", "filepath": "/tmp/tb-hostile.tbw"}])),
     "invalid_params", False, 7, "JOB.md data directories: written paths too")
case("submit_checkpoint_dir_outside", "controller",
     req("submit", job_with(checkpoint_dir="/var/tmp/tb-hostile")), "invalid_params", False, 7,
     "JOB.md data directories: written paths too")


class Catalogue(unittest.TestCase):
    """One daemon for the whole catalogue (setUpClass); see the module doc."""

    d = None

    @classmethod
    def setUpClass(cls):
        cls.started = time.monotonic()
        cls.ref = {}

        def reference():
            try:
                cls.ref["weights"], cls.ref["wall"] = H.reference_run(EPOCHS, "catalogue-ref")
            except Exception as e:  # reported by the weights test
                cls.ref["error"] = e

        cls.ref_thread = threading.Thread(target=reference, daemon=True)
        cls.ref_thread.start()
        cls.wpath = os.path.join(__import__("tempfile").mkdtemp(prefix="tb-hostile-cat-"), "w.tbw")
        cls.d = H.Daemon(H.job(cls.wpath, EPOCHS))
        # The gate: holds the run at train_end until the catalogue is done.
        cls.gate = H.controller(cls.d)
        cls.gate.ok("subscribe", {"runs": ["r1"], "events": ["train_end", "state"],
                                  "lockstep": ["train_end"], "lockstep_timeout_ms": 600000})
        cls.n_cases = 0

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.kill()

    def fresh_ping(self):
        c = self.d.connect()
        try:
            c.send(req("ping", rid="fresh"))
            m = c.read_response("fresh", timeout=10)
            self.assertTrue(m.get("result", {}).get("pong"), m)
        finally:
            c.close()

    def run_case(self, k):
        self.assertTrue(self.d.alive(), "trainbusd is not running")
        c = self.d.connect()
        try:
            if k["role"] is not None:
                c.auth(k["role"], token=H.TOKEN if k["role"] == "controller" else None)
            t0 = time.monotonic()
            try:
                c.send(k["data"])
            except H.PEER_GONE:
                pass  # the server may close while a big input is still going
            if k["expect"] == "http400":
                data = b""
                c.sock.settimeout(5 * H.SLOW)
                while True:
                    try:
                        chunk = c.sock.recv(65536)
                    except (socket.timeout,) + H.PEER_GONE:
                        break
                    if not chunk:
                        break
                    data += chunk
                self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:200])
                self.assertLess(time.monotonic() - t0, 3 * H.SLOW, "HTTP answer not prompt")
                return
            try:
                for _ in range(k["skip"]):
                    c.read_response("any", timeout=5)
                m = c.read_response("any", timeout=5)
            except H.Closed:
                self.fail("closed without an answer (expected %r)" % (k["expect"],))
            if k["expect"] == "pong":
                self.assertIn("result", m, m)
                self.assertTrue(m["result"].get("pong"), m)
            elif k["expect"] == "result":
                self.assertIn("result", m, m)
            else:
                names = k["expect"] if isinstance(k["expect"], tuple) else (k["expect"],)
                self.assertIn("error", m, "expected %s, got %r" % (names, m))
                self.assertIn(m["error"]["data"]["name"], names, m)
                self.assertTrue(m["error"]["message"], m)
            if k["id"] != "any":
                self.assertEqual(m.get("id"), k["id"], "the answer must carry id %r: %r" % (k["id"], m))
            if k["closed"] is True:
                self.assertTrue(c.wait_closed(2.0), "connection not closed within 2 s after %r" % m)
                self.assertLess(time.monotonic() - t0, 3 * H.SLOW,
                                "closed, but not promptly (the auth timeout is 5 s)")
                later = [n for n in c.notes if n.get("method") not in ("hello", "bye", "event", "dropped")]
                self.assertEqual(later, [], "unexpected messages before the close")
            elif k["closed"] is False:
                c.send(req("ping", rid="still-open"))
                try:
                    r = c.read_response("still-open", timeout=5)
                except H.Closed:
                    self.fail("the connection was closed after %r; PROTOCOL.md s8 keeps it open" % m)
                self.assertTrue(r.get("result", {}).get("pong"), r)
            else:
                try:
                    c.send(req("ping", rid="maybe"))
                    c.read_response("maybe", timeout=2)
                except (H.Closed, OSError):
                    pass
        finally:
            c.close()
            self.fresh_ping()
            type(self).n_cases += 1

    # -- the multi-step cases -----------------------------------------------

    def test_b900_lockstep_out_of_order_continue(self):
        """A lockstep client answers a seq it was not sent, then the right
        one, then the right one again: invalid_state, ok, invalid_state."""
        c = H.controller(self.d)
        try:
            sub = c.ok("subscribe", {"runs": ["r1"], "events": ["epoch_end"], "lockstep": ["epoch_end"],
                                     "lockstep_timeout_ms": 20000})
            ev = None
            while ev is None:
                m = c.read_msg(20)
                if m.get("method") == "event" and m["params"].get("lockstep"):
                    ev = m["params"]
            seq = ev["seq"]
            r = c.call("continue", {"run": "r1", "seq": seq + 1})
            self.assertEqual(r.get("error", {}).get("data", {}).get("name"), "invalid_state", r)
            r = c.call("continue", {"run": "r1", "seq": seq - 1})
            self.assertEqual(r.get("error", {}).get("data", {}).get("name"), "invalid_state", r)
            self.assertEqual(c.ok("continue", {"run": "r1", "seq": seq}), {"ok": True})
            r = c.call("continue", {"run": "r1", "seq": seq})
            self.assertEqual(r.get("error", {}).get("data", {}).get("name"), "invalid_state", r)
            c.ok("unsubscribe", {"sub": sub["sub"]})
        finally:
            c.close()
            self.fresh_ping()

    def test_b901_seventeen_subscriptions(self):
        """s10: 16 subscriptions per connection; the 17th is overloaded and
        the connection stays usable."""
        c = H.controller(self.d)
        try:
            for i in range(16):
                c.ok("subscribe", {"runs": ["nothing-%d" % i]})
            r = c.call("subscribe", {"runs": ["nothing-16"]})
            self.assertEqual(r.get("error", {}).get("data", {}).get("name"), "overloaded", r)
            self.assertTrue(c.ok("ping")["pong"])
        finally:
            c.close()
            self.fresh_ping()

    def test_b902_pipelined_2000_requests(self):
        """2,000 requests in one write: 2,000 answers, in order."""
        c = H.controller(self.d)
        try:
            c.send(b"".join(req("ping", rid=i) for i in range(2000)))
            ids = [c.read_response("any", 30)["id"] for _ in range(2000)]
            self.assertEqual(ids, list(range(2000)))
        finally:
            c.close()
            self.fresh_ping()

    def test_b903_byte_at_a_time(self):
        """A request fed one byte per write is still one request."""
        c = self.d.connect()
        try:
            for b in req("ping", rid="slow"):
                c.send(bytes([b]))
            self.assertTrue(c.read_response("slow")["result"]["pong"])
        finally:
            c.close()
            self.fresh_ping()

    def test_b904_empty_lines_ignored(self):
        """s1: empty lines are ignored."""
        c = self.d.connect()
        try:
            c.send(b"\n\r\n\n\r\n" + req("ping", rid="after-empty"))
            self.assertTrue(c.read_response("after-empty")["result"]["pong"])
        finally:
            c.close()
            self.fresh_ping()

    def test_b905_half_line_then_close(self):
        """A client that sends half a request and closes its socket."""
        for _ in range(50):
            c = H.controller(self.d)
            c.send(b'{"jsonrpc":"2.0","id":1,"method":"set_lr","params":{"run":"r1","lr":')
            c.close()
        self.fresh_ping()

    def test_b906_auth_timeout(self):
        """s3: no auth within auth_timeout_ms: an error, bye auth_timeout,
        closed; the daemon is unaffected."""
        c = self.d.connect()
        try:
            t = c.hello["params"]["auth_timeout_ms"] / 1000.0
            self.assertTrue(c.wait_closed(t + 3), "not closed after the auth timeout")
            byes = [n for n in c.notes if n.get("method") == "bye"]
            self.assertEqual([b["params"]["reason"] for b in byes], ["auth_timeout"])
        finally:
            c.close()
            self.fresh_ping()

    # -- the end ------------------------------------------------------------

    def test_z1_final_weights_equal_a_run_without_clients(self):
        gate = self.gate
        held = None
        end = time.monotonic() + 300 * H.SLOW
        while held is None and time.monotonic() < end:
            m = gate.read_msg(300)
            if m.get("method") == "event" and m["params"]["event"] == "train_end":
                held = m["params"]
        self.assertIsNotNone(held)
        self.assertTrue(held.get("lockstep"), "train_end was not held: %r" % held)
        # No input queued a run (a refused submit leaves nothing behind).
        runs = gate.ok("runs", {})
        self.assertEqual([r["run"] for r in runs["runs"]], ["r1"], runs)
        # The run was still running (held at train_end) when every case ran.
        self.assertEqual(gate.ok("continue", {"run": "r1", "seq": held["seq"]}), {"ok": True})
        info = H.wait_final(gate)
        self.assertEqual(info["state"], "finished", info)
        self.assertEqual(info["lr"], struct.unpack("f", struct.pack("f", 0.003))[0],  # float32, as Keras
                         "the learning rate changed: %r" % info)
        events = H.history_all(gate)
        self.assertEqual([e["seq"] for e in events], list(range(1, len(events) + 1)), "seq gap")
        controls = [e for e in events if e["event"] == "control"]
        self.assertEqual(controls, [], "a hostile input changed the run")
        self.ref_thread.join(300 * H.SLOW)
        if "error" in self.ref:
            raise self.ref["error"]
        with open(self.wpath, "rb") as f:
            mine = f.read()
        self.assertEqual(len(mine), len(self.ref["weights"]))
        self.assertTrue(mine == self.ref["weights"], "final weights differ from a run without clients")
        H.report("catalogue", inputs=len(C) + 7, cases_run=type(self).n_cases,
                 seconds=round(time.monotonic() - self.started, 2))

    def test_z2_daemon_stops_cleanly(self):
        """SIGTERM: exit 0, and (ASan build) no sanitizer report."""
        self.d.assert_clean_stop(self)
        Catalogue.d = None


def _make(k):
    def t(self):
        self.run_case(k)
    t.__doc__ = "%s -> %s%s (%s)" % (k["name"], k["expect"], ", closed" if k["closed"] else "", k["why"])
    return t


for _i, _k in enumerate(C):
    setattr(Catalogue, "test_c%03d_%s" % (_i, _k["name"]), _make(_k))

if __name__ == "__main__":
    unittest.main()
