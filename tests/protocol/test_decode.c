/* tb_req_decode: every method decoded into its fields, and every way a request
 * can be wrong refused with the right code and a message that names the spot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "trainbus/protocol.h"

static int decode(const char *s, tb_req_t *r, tb_proto_err_t *err) {
  return tb_req_decode(s, strlen(s), r, err);
}

#define REQ(method, params)                                                                        \
  "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"" method "\",\"params\":" params "}"

static void test_ping_and_ids(void **state) {
  (void)state;
  tb_req_t r;
  tb_proto_err_t err;
  assert_int_equal(decode("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}", &r, &err), 0);
  assert_int_equal(r.method, TB_METHOD_PING);
  assert_int_equal(r.id.kind, TB_ID_INT);
  assert_int_equal(r.id.num, 1);
  assert_int_equal(err.code, 0);
  tb_req_free(&r);
  assert_int_equal(decode(" {\"method\":\"ping\",\"id\":\"a-b\",\"jsonrpc\":\"2.0\"} ", &r, &err),
                   0);
  assert_int_equal(r.id.kind, TB_ID_STR);
  assert_string_equal(r.id.str, "a-b");
  tb_req_free(&r);
  assert_int_equal(
      decode("{\"jsonrpc\":\"2.0\",\"id\":-9007199254740991,\"method\":\"ping\"}", &r, &err), 0);
  assert_int_equal(r.id.num, -9007199254740991LL);
  tb_req_free(&r);
}

static void test_methods(void **state) {
  (void)state;
  tb_req_t r;
  tb_proto_err_t err;

  assert_int_equal(decode(REQ("auth", "{\"token\":\"abc\",\"role\":\"controller\","
                                      "\"client\":\"cli\",\"protocol\":1}"),
                          &r, &err),
                   0);
  assert_string_equal(r.auth.token, "abc");
  assert_int_equal(r.auth.role, TB_ROLE_CONTROLLER);
  assert_string_equal(r.auth.client, "cli");
  tb_req_free(&r);
  assert_int_equal(decode(REQ("auth", "{\"token\":\"t\",\"role\":\"trainer\"}"), &r, &err), 0);
  assert_int_equal(r.auth.role, TB_ROLE_TRAINER);
  tb_req_free(&r);
  assert_int_equal(decode(REQ("auth", "{\"role\":\"observer\"}"), &r, &err), 0);
  assert_int_equal(r.auth.role, TB_ROLE_OBSERVER);
  tb_req_free(&r);

  assert_int_equal(
      decode(REQ("subscribe", "{\"runs\":[\"r1\"],\"events\":[\"*_end\",\"train_batch_*\"],"
                              "\"every\":10,\"since_seq\":5,\"lockstep\":[\"epoch_end\"],"
                              "\"lockstep_timeout_ms\":2000}"),
             &r, &err),
      0);
  assert_int_equal(r.subscribe.n_runs, 1);
  assert_string_equal(r.subscribe.runs[0], "r1");
  assert_int_equal(r.subscribe.n_events, 2);
  assert_string_equal(r.subscribe.events[1], "train_batch_*");
  assert_int_equal(r.subscribe.every, 10);
  assert_true(r.subscribe.has_since_seq);
  assert_int_equal(r.subscribe.since_seq, 5);
  assert_int_equal(r.subscribe.n_lockstep, 1);
  assert_int_equal(r.subscribe.lockstep[0], TB_EVENT_EPOCH_END);
  assert_int_equal(r.subscribe.lockstep_timeout_ms, 2000);
  tb_req_free(&r);

  assert_int_equal(decode(REQ("subscribe", "{}"), &r, &err), 0);
  assert_int_equal(r.subscribe.n_runs, 0);
  assert_int_equal(r.subscribe.every, 1);
  assert_false(r.subscribe.has_since_seq);
  assert_int_equal(r.subscribe.lockstep_timeout_ms, TB_PROTO_LOCKSTEP_DEFAULT_MS);
  tb_req_free(&r);

  assert_int_equal(decode(REQ("set_lr", "{\"run\":\"r1\",\"lr\":0.001}"), &r, &err), 0);
  assert_int_equal(r.method, TB_METHOD_SET_LR);
  assert_string_equal(r.run, "r1");
  assert_true(r.set_lr.lr == 0.001);
  tb_req_free(&r);

  assert_int_equal(decode(REQ("history", "{\"run\":\"r1\"}"), &r, &err), 0);
  assert_int_equal(r.history.limit, 1000);
  assert_int_equal(r.history.since_seq, 0);
  tb_req_free(&r);

  assert_int_equal(
      decode(REQ("submit", "{\"job\":{\"epochs\":3,\"model\":{\"layers\":[]}}}"), &r, &err), 0);
  assert_non_null(r.submit.job);
  assert_int_equal(cJSON_GetObjectItem(r.submit.job, "epochs")->valueint, 3);
  tb_req_free(&r);
  assert_null(r.submit.job);

  assert_int_equal(decode(REQ("continue", "{\"run\":\"r1\",\"seq\":42,\"actions\":"
                                          "{\"set_lr\":0.5,\"stop\":true}}"),
                          &r, &err),
                   0);
  assert_int_equal(r.cont.seq, 42);
  assert_true(r.cont.has_lr);
  assert_true(r.cont.lr == 0.5);
  assert_true(r.cont.stop);
  assert_false(r.cont.pause);
  tb_req_free(&r);

  static const char *const simple[] = {"stop", "pause", "resume", "checkpoint", "cancel"};
  for (size_t i = 0; i < 5; i++) {
    char line[128];
    snprintf(line, sizeof line,
             "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\",\"params\":{\"run\":\"r-2.x\"}}",
             simple[i]);
    assert_int_equal(decode(line, &r, &err), 0);
    assert_string_equal(tb_method_name(r.method), simple[i]);
    assert_string_equal(r.run, "r-2.x");
    tb_req_free(&r);
  }
  assert_int_equal(decode(REQ("status", "{}"), &r, &err), 0);
  assert_string_equal(r.run, "");
  tb_req_free(&r);
  assert_int_equal(decode(REQ("runs", "{}"), &r, &err), 0);
  tb_req_free(&r);
  assert_int_equal(decode(REQ("unsubscribe", "{\"sub\":3}"), &r, &err), 0);
  assert_true(r.unsubscribe.has_sub);
  assert_int_equal(r.unsubscribe.sub, 3);
  tb_req_free(&r);
}

/* One bad input, the code it must get, and a substring of the message. */
typedef struct {
  const char *in;
  int code;
  const char *msg;
} bad_t;

static const bad_t bad[] = {
    /* -32700 */
    {"", TB_PROTO_EPARSE, "empty line"},
    {"{\"jsonrpc\":", TB_PROTO_EPARSE, "invalid JSON"},
    {"hello", TB_PROTO_EPARSE, "invalid JSON at byte 0"},
    {"{\"a\":01}", TB_PROTO_EPARSE, "malformed number at byte 5"},
    {"{\"a\":1.}", TB_PROTO_EPARSE, "malformed number"},
    {"{\"a\":-}", TB_PROTO_EPARSE, "malformed number"},
    {"{} {}", TB_PROTO_EPARSE, "after the value at byte 3"},
    {"{\"a\":\"x\ty\"}", TB_PROTO_EPARSE, "raw control character 0x09"},
    {"{\"a\":\"\xC0\x80\"}", TB_PROTO_EPARSE, "invalid UTF-8 at byte 6"},
    {"{\"a\":\"\\x\"}", TB_PROTO_EPARSE, "invalid JSON"},
    {"{\"a\":\"\\uD800\"}", TB_PROTO_EPARSE, "invalid JSON"},
    {"{\"a\":1234567890123456789012345678901234567890123}", TB_PROTO_EPARSE, "has 43 characters"},
    {"\x01{}", TB_PROTO_EPARSE, "control byte 0x01"},
    /* -32600 */
    {"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]", TB_PROTO_EINVALID_REQUEST,
     "batch requests are not supported"},
    {"[]", TB_PROTO_EINVALID_REQUEST, "batch"},
    {"42", TB_PROTO_EINVALID_REQUEST, "expected a request object, got 42"},
    {"{\"id\":1,\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST,
     "jsonrpc: expected \"2.0\", got nothing"},
    {"{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST,
     "got \"1.0\""},
    {"{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST, "id: missing"},
    {"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST,
     "null is not accepted"},
    {"{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST, "got 1.5"},
    {"{\"jsonrpc\":\"2.0\",\"id\":9007199254740992,\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST,
     "id: expected an integer"},
    {"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST,
     "got an object"},
    {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":7}", TB_PROTO_EINVALID_REQUEST,
     "method: expected a method name, got 7"},
    {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"extra\":1}", TB_PROTO_EINVALID_REQUEST,
     "extra: unknown member"},
    {"{\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"ping\"}", TB_PROTO_EINVALID_REQUEST,
     "message: duplicate key \"id\""},
    {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"a\":\"\\u0000\"}}",
     TB_PROTO_EINVALID_REQUEST, "U+0000"},
    {"{\"x\":1e999}", TB_PROTO_EINVALID_REQUEST, "x: number out of range"},
    /* -32601 */
    {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"frobnicate\"}", TB_PROTO_EMETHOD_NOT_FOUND,
     "method \"frobnicate\" not found"},
    {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc.discover\"}", TB_PROTO_EMETHOD_NOT_FOUND,
     "rpc.discover"},
    /* -32602 */
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":-1}"), TB_PROTO_EINVALID_PARAMS,
     "params.lr: expected a finite positive number, got -1"},
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":0}"), TB_PROTO_EINVALID_PARAMS, "got 0"},
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":\"0.1\"}"), TB_PROTO_EINVALID_PARAMS, "got \"0.1\""},
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":1e400}"), TB_PROTO_EINVALID_PARAMS,
     "params.lr: number out of range"},
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":1e300}"), TB_PROTO_EINVALID_PARAMS,
     "params.lr: expected a rate within float32's range (at most 3.4e38), got 1.0"},
    {REQ("continue", "{\"run\":\"r\",\"seq\":1,\"actions\":{\"set_lr\":4e38}}"),
     TB_PROTO_EINVALID_PARAMS, "params.actions.set_lr: expected a rate within float32's range"},
    {REQ("set_lr", "{\"run\":\"r1\"}"), TB_PROTO_EINVALID_PARAMS, "params.lr: missing"},
    {REQ("set_lr", "{\"lr\":0.1}"), TB_PROTO_EINVALID_PARAMS,
     "params.run: missing (set_lr needs a run id)"},
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":0.1,\"lr_\":2}"), TB_PROTO_EINVALID_PARAMS,
     "params.lr_: unknown field (set_lr takes run, lr)"},
    {REQ("set_lr", "{\"run\":\"r1\",\"lr\":0.1,\"lr\":2}"), TB_PROTO_EINVALID_PARAMS,
     "params: duplicate key \"lr\""},
    {REQ("ping", "[]"), TB_PROTO_EINVALID_PARAMS, "params: expected an object"},
    {REQ("ping", "{\"x\":1}"), TB_PROTO_EINVALID_PARAMS, "ping takes no parameters"},
    {REQ("auth", "{\"role\":\"admin\"}"), TB_PROTO_EINVALID_PARAMS,
     "params.role: expected \"observer\", \"controller\" or \"trainer\", got \"admin\""},
    {REQ("auth", "{\"token\":5,\"role\":\"observer\"}"), TB_PROTO_EINVALID_PARAMS,
     "params.token: expected a string, got 5"},
    {REQ("auth", "{\"role\":\"observer\",\"protocol\":2}"), TB_PROTO_EINVALID_PARAMS,
     "speaks protocol 1, got 2"},
    {REQ("stop", "{\"run\":\"a b\"}"), TB_PROTO_EINVALID_PARAMS,
     "params.run: character ' ' not allowed"},
    {REQ("stop", "{\"run\":\"\"}"), TB_PROTO_EINVALID_PARAMS, "non-empty run id"},
    {REQ("stop", "{\"run\":\"r*\"}"), TB_PROTO_EINVALID_PARAMS, "character '*'"},
    {REQ("stop", "{\"run\":\"0123456789012345678901234567890123456789012345678901234567890123"
                 "\"}"),
     TB_PROTO_EINVALID_PARAMS, "params.run: longer than 63 bytes"},
    {REQ("subscribe", "{\"runs\":[\"a\",\"b\"],\"since_seq\":3}"), TB_PROTO_EINVALID_PARAMS,
     "params.since_seq: needs exactly one run"},
    {REQ("subscribe", "{\"runs\":[\"r*\"],\"since_seq\":3}"), TB_PROTO_EINVALID_PARAMS,
     "since_seq"},
    {REQ("subscribe", "{\"every\":0}"), TB_PROTO_EINVALID_PARAMS,
     "params.every: expected an integer from 1 to 1000000, got 0"},
    {REQ("subscribe", "{\"every\":2.5}"), TB_PROTO_EINVALID_PARAMS, "got 2.5"},
    {REQ("subscribe", "{\"runs\":\"r1\"}"), TB_PROTO_EINVALID_PARAMS,
     "params.runs: expected an array of strings, got \"r1\""},
    {REQ("subscribe", "{\"runs\":[1]}"), TB_PROTO_EINVALID_PARAMS,
     "params.runs[0]: expected a string, got 1"},
    {REQ("subscribe", "{\"events\":[\"Epoch_End\"]}"), TB_PROTO_EINVALID_PARAMS,
     "params.events[0]: character 'E'"},
    {REQ("subscribe", "{\"lockstep\":[\"epoch_end\",\"state\"]}"), TB_PROTO_EINVALID_PARAMS,
     "params.lockstep[1]: expected a hook event name"},
    {REQ("subscribe", "{\"lockstep_timeout_ms\":1}"), TB_PROTO_EINVALID_PARAMS,
     "lockstep_timeout_ms"},
    {REQ("subscribe", "{\"since_seq\":-1,\"runs\":[\"a\"]}"), TB_PROTO_EINVALID_PARAMS,
     "params.since_seq: expected an integer from 0"},
    {REQ("history", "{\"run\":\"r\",\"limit\":10001}"), TB_PROTO_EINVALID_PARAMS, "params.limit"},
    {REQ("submit", "{\"job\":[]}"), TB_PROTO_EINVALID_PARAMS,
     "params.job: expected an object, got an array"},
    {REQ("submit", "{}"), TB_PROTO_EINVALID_PARAMS, "params.job: missing"},
    {REQ("continue", "{\"run\":\"r\",\"seq\":1,\"actions\":{\"set_lr\":\"NaN\"}}"),
     TB_PROTO_EINVALID_PARAMS, "params.actions.set_lr: expected a finite positive number"},
    {REQ("continue", "{\"run\":\"r\",\"seq\":1,\"actions\":{\"stop\":1}}"),
     TB_PROTO_EINVALID_PARAMS, "params.actions.stop: expected true or false, got 1"},
    {REQ("continue", "{\"run\":\"r\",\"seq\":1,\"actions\":{\"restart\":true}}"),
     TB_PROTO_EINVALID_PARAMS, "params.actions.restart: unknown field"},
    {REQ("continue", "{\"run\":\"r\",\"seq\":1e300}"), TB_PROTO_EINVALID_PARAMS,
     "params.seq: expected an integer from 1 to 9007199254740991, got 1.0000000000000001e+300"},
};

static void test_bad_inputs(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tb_req_t r;
    tb_proto_err_t err;
    int rc = decode(bad[i].in, &r, &err);
    if (rc != bad[i].code || strstr(err.msg, bad[i].msg) == NULL) {
      print_error("input %zu: %s\n  got %d \"%s\"\n  want %d containing \"%s\"\n", i, bad[i].in, rc,
                  err.msg, bad[i].code, bad[i].msg);
      fail();
    }
    assert_int_equal(err.code, rc);
    tb_req_free(&r);
  }
}

/* The id is kept for the error reply even when the rest is wrong. */
static void test_id_survives_errors(void **state) {
  (void)state;
  tb_req_t r;
  tb_proto_err_t err;
  assert_int_equal(decode(REQ("set_lr", "{\"run\":\"r1\",\"lr\":-1}"), &r, &err),
                   TB_PROTO_EINVALID_PARAMS);
  assert_int_equal(r.id.kind, TB_ID_INT);
  assert_int_equal(r.id.num, 7);
  tb_req_free(&r);
  assert_int_equal(decode("{\"jsonrpc\":\"2.0\",\"id\":\"q\",\"method\":\"nope\"}", &r, &err),
                   TB_PROTO_EMETHOD_NOT_FOUND);
  assert_string_equal(r.id.str, "q");
  tb_req_free(&r);
  /* A failed submit frees its job. */
  assert_int_equal(decode(REQ("submit", "{\"job\":{},\"x\":1}"), &r, NULL),
                   TB_PROTO_EINVALID_PARAMS);
  assert_null(r.submit.job);
  tb_req_free(&r);
}

static void test_deep_nesting(void **state) {
  (void)state;
  char line[512];
  tb_req_t r;
  tb_proto_err_t err;
  for (int depth = 30; depth <= 34; depth++) {
    /* {"job":{"a":[[...]]}}: envelope, params, job and the arrays. */
    int n =
        snprintf(line, sizeof line,
                 "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"submit\",\"params\":{\"job\":{\"a\":");
    for (int i = 0; i < depth - 3; i++)
      line[n++] = '[';
    for (int i = 0; i < depth - 3; i++)
      line[n++] = ']';
    memcpy(line + n, "}}}", 4);
    int rc = decode(line, &r, &err);
    if (depth <= TB_PROTO_MAX_DEPTH) {
      assert_int_equal(rc, 0);
    } else {
      assert_int_equal(rc, TB_PROTO_EINVALID_REQUEST);
      assert_non_null(strstr(err.msg, "nesting deeper than 32 levels"));
    }
    tb_req_free(&r);
  }
  /* Far deeper than cJSON's own limit: refused early, no recursion. */
  static char deep[20000];
  memset(deep, '[', sizeof deep);
  assert_int_equal(tb_req_decode(deep, sizeof deep, &r, &err), TB_PROTO_EINVALID_REQUEST);
  tb_req_free(&r);
}

/* Many distinct keys: no false duplicate, and the sorted path finds a real one. */
static void test_many_keys(void **state) {
  (void)state;
  size_t cap = 200000, n = 0;
  char *line = malloc(cap);
  assert_non_null(line);
  n += (size_t)snprintf(line, cap,
                        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"submit\","
                        "\"params\":{\"job\":{");
  for (int i = 0; i < 5000; i++)
    n += (size_t)snprintf(line + n, cap - n, "%s\"k%d\":%d", i ? "," : "", i, i);
  n += (size_t)snprintf(line + n, cap - n, "}}}");
  tb_req_t r;
  tb_proto_err_t err;
  assert_int_equal(tb_req_decode(line, n, &r, &err), 0);
  tb_req_free(&r);
  memcpy(line + n - 3, ",\"k4321\":0}}}", 14);
  assert_int_equal(tb_req_decode(line, n + 10, &r, &err), TB_PROTO_EINVALID_PARAMS);
  assert_non_null(strstr(err.msg, "params.job: duplicate key \"k4321\""));
  tb_req_free(&r);
  free(line);
}

static void test_authorize(void **state) {
  (void)state;
  tb_req_t r;
  tb_proto_err_t err;
  assert_int_equal(decode(REQ("set_lr", "{\"run\":\"r1\",\"lr\":0.1}"), &r, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_NONE, &err), TB_PROTO_EUNAUTHORIZED);
  assert_non_null(strstr(err.msg, "authenticate first"));
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_OBSERVER, &err), TB_PROTO_EFORBIDDEN);
  assert_string_equal(err.msg, "set_lr: needs the controller role, this connection is observer");
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_CONTROLLER, &err), 0);
  tb_req_free(&r);
  assert_int_equal(decode(REQ("subscribe", "{\"lockstep\":[\"epoch_end\"]}"), &r, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_OBSERVER, &err), TB_PROTO_EFORBIDDEN);
  assert_non_null(strstr(err.msg, "with lockstep"));
  tb_req_free(&r);
  assert_int_equal(decode(REQ("ping", "{}"), &r, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_NONE, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_TRAINER, &err), 0);
  tb_req_free(&r);
  /* Every control method is forbidden to an observer and to a trainer, and
   * every read method to a trainer (issue 14's trainer publishes its own run
   * only); a controller may call them all. */
  static const char *const control[] = {"set_lr",     "stop",   "pause",  "resume",
                                        "checkpoint", "submit", "cancel", "continue"};
  for (size_t i = 0; i < sizeof control / sizeof control[0]; i++) {
    memset(&r, 0, sizeof r);
    r.method = tb_method_from_name(control[i]);
    assert_int_not_equal(r.method, TB_METHOD_INVALID);
    assert_int_equal(tb_req_authorize(&r, TB_ROLE_OBSERVER, &err), TB_PROTO_EFORBIDDEN);
    assert_int_equal(tb_req_authorize(&r, TB_ROLE_TRAINER, &err), TB_PROTO_EFORBIDDEN);
    assert_int_equal(tb_req_authorize(&r, TB_ROLE_CONTROLLER, &err), 0);
  }
  assert_int_equal(decode(REQ("status", "{}"), &r, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_OBSERVER, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_CONTROLLER, &err), 0);
  assert_int_equal(tb_req_authorize(&r, TB_ROLE_TRAINER, &err), TB_PROTO_EFORBIDDEN);
  assert_string_equal(err.msg, "status: needs the observer role, this connection is trainer");
  tb_req_free(&r);
  assert_true(tb_role_may(TB_ROLE_TRAINER, TB_ROLE_TRAINER));
  assert_true(tb_role_may(TB_ROLE_CONTROLLER, TB_ROLE_TRAINER));
  assert_false(tb_role_may(TB_ROLE_OBSERVER, TB_ROLE_TRAINER));
  assert_false(tb_role_may(TB_ROLE_NONE, TB_ROLE_OBSERVER));
  assert_true(tb_role_may(TB_ROLE_NONE, TB_ROLE_NONE));
  assert_string_equal(tb_role_name(TB_ROLE_TRAINER), "trainer");
}

static void test_match(void **state) {
  (void)state;
  assert_true(tb_proto_match("*", "anything"));
  assert_true(tb_proto_match("*", ""));
  assert_true(tb_proto_match("*_end", "epoch_end"));
  assert_false(tb_proto_match("*_end", "epoch_begin"));
  assert_true(tb_proto_match("train_batch_*", "train_batch_end"));
  assert_false(tb_proto_match("train_batch_*", "test_batch_end"));
  assert_true(tb_proto_match("*batch*", "predict_batch_begin"));
  assert_true(tb_proto_match("a*b*c", "aXbYbZc"));
  assert_false(tb_proto_match("a*b*c", "aXbYbZ"));
  assert_true(tb_proto_match("epoch_end", "epoch_end"));
  assert_false(tb_proto_match("epoch_end", "epoch_ends"));
  assert_true(tb_event_is_batch(tb_event_from_name("test_batch_begin")));
  assert_false(tb_event_is_batch(tb_event_from_name("epoch_end")));
}

/* A request that is valid JSON but breaks a rule is answered with its own id. */
static void test_rule_breaking_keeps_id(void **state) {
  (void)state;
  static const char *lines[] = {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"set_lr\",\"params\":{"
                                "\"run\":\"r1\",\"lr\":1e999}}",
                                "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"status\",\"params\":{"
                                "\"run\":\"r1\",\"run\":\"r2\"}}"};
  for (size_t i = 0; i < 2; i++) {
    tb_req_t q;
    tb_proto_err_t err;
    assert_int_not_equal(tb_req_decode(lines[i], strlen(lines[i]), &q, &err), 0);
    assert_int_equal(q.id.kind, TB_ID_INT);
    assert_int_equal(q.id.num, 7);
    tb_req_free(&q);
  }
  /* Not JSON at all: no id to be had. */
  tb_req_t q;
  tb_proto_err_t err;
  assert_int_equal(tb_req_decode("{\"id\":7,", 7, &q, &err), TB_PROTO_EPARSE);
  assert_int_equal(q.id.kind, TB_ID_NONE);
  tb_req_free(&q);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rule_breaking_keeps_id),
      cmocka_unit_test(test_ping_and_ids),
      cmocka_unit_test(test_methods),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_id_survives_errors),
      cmocka_unit_test(test_deep_nesting),
      cmocka_unit_test(test_many_keys),
      cmocka_unit_test(test_authorize),
      cmocka_unit_test(test_match),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
