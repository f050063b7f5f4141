/* The bridge's pure parts: names on the broker, control requests turned into
 * protocol requests (with the protocol's own errors), replies, event and
 * status payloads read back, the bounded queue's drop policy, nkeys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

static void test_topics(void **state) {
  (void)state;
  char t[TB__SUBJECT_MAX];
  tb__topic(t, '.', TB__TOPIC_EVENT, "acme", "r1", "epoch_end");
  assert_string_equal(t, "tb.acme.run.r1.evt.epoch_end");
  tb__topic(t, '/', TB__TOPIC_EVENT, "acme", "r1", "epoch_end");
  assert_string_equal(t, "tb/acme/run/r1/evt/epoch_end");
  tb__topic(t, '.', TB__TOPIC_STATUS, "acme", "a.b:c", NULL);
  assert_string_equal(t, "tb.acme.run.a%2Eb:c.status");
  tb__topic(t, '/', TB__TOPIC_STATUS, "acme", "a.b:c", NULL);
  assert_string_equal(t, "tb/acme/run/a.b:c/status");
  tb__topic(t, '.', TB__TOPIC_CTL, "acme", "*", "*");
  assert_string_equal(t, "tb.acme.run.*.ctl.*");
  tb__topic(t, '.', TB__TOPIC_EVENT, "acme", "*", ">");
  assert_string_equal(t, "tb.acme.run.*.evt.>");
  tb__topic(t, '.', TB__TOPIC_RUNS, "acme", NULL, NULL);
  assert_string_equal(t, "tb.acme.runs");
  tb__topic(t, '/', TB__TOPIC_BRIDGE, "acme", NULL, NULL);
  assert_string_equal(t, "tb/acme/bridge");
  /* The longest run id, all dots, still fits. */
  char run[TB_PROTO_RUN_MAX];
  memset(run, '.', sizeof run - 1);
  run[sizeof run - 1] = '\0';
  size_t n = tb__topic(t, '.', TB__TOPIC_CTL, "abcdefghijklmnopqrstuvwxy", run, "checkpoint");
  assert_int_equal(n, strlen(t));
  assert_true(strstr(t, ".ctl.checkpoint") != NULL);
}

static void test_ns(void **state) {
  (void)state;
  tb_client_err_t err;
  assert_int_equal(tb__ns_check("acme-1_X", &err), 0);
  assert_int_equal(tb__ns_check("", &err), TB_BRIDGE_ECONFIG);
  assert_int_equal(tb__ns_check("a.b", &err), TB_BRIDGE_ECONFIG);
  assert_non_null(strstr(err.msg, "'.'"));
  assert_string_equal(err.name, "bad_config");
  assert_int_equal(tb__ns_check("a*", &err), TB_BRIDGE_ECONFIG);
  assert_int_equal(tb__ns_check("abcdefghijklmnopqrstuvwxyz", &err), TB_BRIDGE_ECONFIG);
}

static int parse(const char *topic, char sep, char *run, char *method) {
  tb_proto_err_t err = {0};
  return tb__ctl_topic_parse(topic, strlen(topic), sep, "acme", run, method, &err);
}

static void test_ctl_topic(void **state) {
  (void)state;
  char run[TB_PROTO_RUN_MAX], method[TB_PROTO_NAME_MAX];
  assert_int_equal(parse("tb.acme.run.r1.ctl.set_lr", '.', run, method), 0);
  assert_string_equal(run, "r1");
  assert_string_equal(method, "set_lr");
  assert_int_equal(parse("tb.acme.run.a%2Eb:c.ctl.stop", '.', run, method), 0);
  assert_string_equal(run, "a.b:c");
  assert_int_equal(parse("tb/acme/run/a.b/ctl/pause", '/', run, method), 0);
  assert_string_equal(run, "a.b");
  /* Every way to be wrong is invalid_request. */
  const char *bad[] = {"tb.other.run.r1.ctl.stop",
                       "tb.acme.run..ctl.stop",
                       "tb.acme.run.r1.evt.stop",
                       "tb.acme.run.r1.ctl.",
                       "tb.acme.run.r1.ctl.Stop",
                       "tb.acme.run.r1.ctl.st.op",
                       "tb.acme.run.r*1.ctl.stop",
                       "tb.acme.run.r1",
                       "tb.acme.run",
                       "",
                       "tb.acme.run.r%2X.ctl.stop",
                       "tb.acme.runs"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(parse(bad[i], '.', run, method), TB_PROTO_EINVALID_REQUEST);
  char longrun[200] = "tb.acme.run.";
  memset(longrun + 12, 'a', 64);
  strcpy(longrun + 76, ".ctl.stop");
  assert_int_equal(parse(longrun, '.', run, method), TB_PROTO_EINVALID_REQUEST);
}

static int ctl(const char *method, const char *payload, tb_req_t *r, tb_proto_err_t *err) {
  return tb__ctl_request(method, "r1", payload, payload ? strlen(payload) : 0, r, err);
}

static void test_ctl_request(void **state) {
  (void)state;
  tb_req_t r;
  tb_proto_err_t err;
  assert_int_equal(ctl("set_lr", "{\"lr\":0.01}", &r, &err), 0);
  assert_int_equal(r.method, TB_METHOD_SET_LR);
  assert_string_equal(r.run, "r1");
  assert_true(r.set_lr.lr == 0.01);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", " \r\n{\"run\":\"r1\",\"lr\":2}\t", &r, &err), 0);
  assert_true(r.set_lr.lr == 2);
  tb_req_free(&r);
  /* No payload, or an empty object: the run is the subject's. */
  assert_int_equal(ctl("stop", NULL, &r, &err), 0);
  assert_int_equal(r.method, TB_METHOD_STOP);
  tb_req_free(&r);
  assert_int_equal(ctl("pause", " {} ", &r, &err), 0);
  tb_req_free(&r);
  assert_int_equal(ctl("stop", "{\"reason\":\"plateau\"}", &r, &err), 0);
  assert_string_equal(r.stop.reason, "plateau");
  tb_req_free(&r);

  /* The protocol's errors, with its messages. */
  assert_int_equal(ctl("set_lr", "{\"lr\":-1}", &r, &err), TB_PROTO_EINVALID_PARAMS);
  assert_non_null(strstr(err.msg, "params.lr"));
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{}", &r, &err), TB_PROTO_EINVALID_PARAMS);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"lr\":1e999}", &r, &err), TB_PROTO_EINVALID_PARAMS);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"lr_\":0.1}", &r, &err), TB_PROTO_EINVALID_PARAMS);
  assert_non_null(strstr(err.msg, "lr_"));
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"lr\":0.1,\"lr\":0.2}", &r, &err), TB_PROTO_EINVALID_PARAMS);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"lr\":01}", &r, &err), TB_PROTO_EPARSE);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"run\":\"r2\",\"lr\":0.1}", &r, &err),
                   TB_PROTO_EINVALID_PARAMS);
  assert_non_null(strstr(err.msg, "r2"));
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"run\":5,\"lr\":0.1}", &r, &err), TB_PROTO_EINVALID_PARAMS);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "[0.1]", &r, &err), TB_PROTO_EINVALID_PARAMS);
  assert_non_null(strstr(err.msg, "array"));
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "0.1", &r, &err), TB_PROTO_EINVALID_PARAMS);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"lr\":0.1", &r, &err), TB_PROTO_EPARSE);
  tb_req_free(&r);
  assert_int_equal(ctl("set_lr", "{\"lr\":0.1} {}", &r, &err), TB_PROTO_EPARSE);
  tb_req_free(&r);
  /* Nothing outside the object can reach the envelope. */
  assert_int_equal(ctl("set_lr", "{\"lr\":0.1},\"id\":2,\"x\":{}", &r, &err), TB_PROTO_EPARSE);
  tb_req_free(&r);
  assert_int_equal(ctl("frobnicate", "{}", &r, &err), TB_PROTO_EMETHOD_NOT_FOUND);
  tb_req_free(&r);
  assert_int_equal(ctl("subscribe", "{}", &r, &err), TB_PROTO_EMETHOD_NOT_FOUND);
  tb_req_free(&r);
  assert_int_equal(ctl("continue", "{\"seq\":1}", &r, &err), TB_PROTO_EMETHOD_NOT_FOUND);
  tb_req_free(&r);
  char *big = malloc(TB__CTL_PAYLOAD_MAX + 2);
  memset(big, ' ', TB__CTL_PAYLOAD_MAX + 1);
  big[TB__CTL_PAYLOAD_MAX + 1] = '\0';
  assert_int_equal(ctl("stop", big, &r, &err), TB_PROTO_ETOO_LARGE);
  tb_req_free(&r);
  free(big);
}

static void test_replies(void **state) {
  (void)state;
  tb_buf_t b;
  tb_buf_init(&b);
  cJSON *res = cJSON_Parse("{\"run\":\"r1\",\"applied_at\":{\"epoch\":3,\"batch\":18,\"seq\":9}}");
  assert_int_equal(tb__reply_result(&b, res), 0);
  cJSON_Delete(res);
  cJSON *back = cJSON_ParseWithLength(b.data, b.len);
  assert_non_null(back);
  const cJSON *at = cJSON_GetObjectItem(cJSON_GetObjectItem(back, "result"), "applied_at");
  assert_int_equal(cJSON_GetObjectItem(at, "batch")->valueint, 18);
  cJSON_Delete(back);
  b.len = 0;
  assert_int_equal(
      tb__reply_error(&b, TB_PROTO_EINVALID_STATE, "invalid_state", "run \"r1\" ended"), 0);
  back = cJSON_ParseWithLength(b.data, b.len);
  const cJSON *e = cJSON_GetObjectItem(back, "error");
  assert_int_equal(cJSON_GetObjectItem(e, "code")->valueint, -32004);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(e, "data"), "name")->valuestring,
                      "invalid_state");
  assert_string_equal(cJSON_GetObjectItem(e, "message")->valuestring, "run \"r1\" ended");
  cJSON_Delete(back);
  tb_buf_free(&b);
}

static void test_event_payloads(void **state) {
  (void)state;
  tb_smsg_t *m = malloc(sizeof *m);
  tb_proto_err_t err;
  const char *ok = "{\"run\":\"r1\",\"seq\":7,\"event\":\"epoch_end\",\"epoch\":2,\"time\":1.5,"
                   "\"logs\":{\"loss\":\"NaN\",\"lr\":0.001}}";
  assert_int_equal(tb__event_payload_decode(ok, strlen(ok), m, &err), 0);
  assert_string_equal(m->event.run, "r1");
  assert_int_equal(m->event.seq, 7);
  assert_int_equal(m->event.epoch, 2);
  assert_int_equal(m->event.n_logs, 2);
  assert_true(m->event.log_values[0] != m->event.log_values[0]); /* NaN */

  /* A stub of it decodes as the same event, without its logs. */
  tb_buf_t b;
  tb_buf_init(&b);
  assert_int_equal(tb__event_stub(&b, &m->event, 123456), 0);
  tb_smsg_free(m);
  assert_non_null(strstr(b.data, "\"truncated\":true,\"size\":123456"));
  assert_int_equal(tb__event_payload_decode(b.data, b.len, m, &err), 0);
  assert_int_equal(m->event.seq, 7);
  assert_string_equal(m->event.name, "epoch_end");
  assert_int_equal(m->event.n_logs, 0);
  tb_smsg_free(m);
  tb_buf_free(&b);

  const char *bad[] = {
      "",
      "[]",
      "{\"run\":\"r1\"}",
      "{\"run\":\"r1\",\"seq\":7,\"event\":\"x\",\"time\":1,\"logs\":{}},\"id\":1",
      "{\"run\":\"r1\",\"seq\":-7,\"event\":\"x\",\"time\":1,\"logs\":{}}",
      "{\"run\":\"r1\",\"seq\":7,\"event\":\"x\",\"time\":1,\"logs\":{\"a\":\"b\"}}",
      "{\"run\":\"r1\" \"seq\":7}",
      "null"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_not_equal(tb__event_payload_decode(bad[i], strlen(bad[i]), m, &err), 0);
    tb_smsg_free(m);
  }
  free(m);
}

static void test_status_and_runs(void **state) {
  (void)state;
  tb_run_info_t info;
  tb_proto_err_t err;
  const char *s = "{\"run\":\"r1\",\"state\":\"running\",\"epoch\":3,\"epochs\":10,\"batch\":17,"
                  "\"last_seq\":1234,\"lr\":0.001}";
  assert_int_equal(tb__status_decode(s, strlen(s), &info, &err), 0);
  assert_int_equal(info.last_seq, 1234);
  assert_int_equal(info.state, TB_RUN_RUNNING);
  assert_int_not_equal(tb__status_decode("{}", 2, &info, &err), 0);
  assert_int_not_equal(tb__status_decode("x", 1, &info, &err), 0);
  tb_run_info_t *runs;
  int n;
  const char *l = "{\"runs\":[{\"run\":\"r1\",\"state\":\"finished\",\"epoch\":1,\"epochs\":2,"
                  "\"batch\":-1,\"last_seq\":9},{\"run\":\"r2\",\"state\":\"queued\",\"epoch\":-1,"
                  "\"epochs\":5,\"batch\":-1,\"last_seq\":0}],\"omitted\":3}";
  assert_int_equal(tb__runs_decode(l, strlen(l), &runs, &n, &err), 0);
  assert_int_equal(n, 2);
  assert_string_equal(runs[1].id, "r2");
  free(runs);
  assert_int_not_equal(tb__runs_decode("{\"runs\":{}}", 11, &runs, &n, &err), 0);
  assert_null(runs);
}

static void test_seq_parse(void **state) {
  (void)state;
  int64_t v;
  assert_int_equal(tb__seq_parse("0", 1, &v), 0);
  assert_int_equal(v, 0);
  assert_int_equal(tb__seq_parse("9007199254740991", 16, &v), 0);
  assert_int_equal(v, 9007199254740991LL);
  assert_int_equal(tb__seq_parse("9007199254740992", 16, &v), -1);
  assert_int_equal(tb__seq_parse("", 0, &v), -1);
  assert_int_equal(tb__seq_parse("-1", 2, &v), -1);
  assert_int_equal(tb__seq_parse("12a", 3, &v), -1);
  assert_int_equal(tb__seq_parse("12345678901234567", 17, &v), -1);
}

static tb__item_t *item(bool batch, int64_t seq) {
  tb__item_t *it = calloc(1, sizeof *it + 1);
  it->kind = TB__ITEM_EVENT;
  it->batch = batch;
  it->seq = seq;
  return it;
}

/* The queue keeps its last quarter for lifecycle events: batch events are
 * dropped (and counted) from three quarters on, lifecycle events only wait
 * when it is full, and a stopping bridge stops the wait. FIFO throughout. */
static void test_queue(void **state) {
  (void)state;
  tb__queue_t q;
  atomic_bool stop;
  atomic_init(&stop, false);
  assert_int_equal(tb__queue_init(&q, 8), 0);
  for (int i = 1; i <= 6; i++)
    assert_int_equal(tb__queue_push(&q, item(true, i), &stop), TB__PUSHED);
  assert_int_equal(tb__queue_push(&q, item(true, 7), &stop), TB__DROPPED);
  assert_int_equal(q.dropped, 1);
  assert_int_equal(tb__queue_push(&q, item(false, 8), &stop), TB__PUSHED);
  assert_int_equal(tb__queue_push(&q, item(false, 9), &stop), TB__PUSHED);
  assert_int_equal(tb__queue_len(&q), 8);
  assert_int_equal(tb__queue_push(&q, item(true, 10), &stop), TB__DROPPED);
  assert_int_equal(q.dropped, 2);
  atomic_store(&stop, true);
  assert_int_equal(tb__queue_push(&q, item(false, 11), &stop), TB__STOPPED);
  int64_t want[] = {1, 2, 3, 4, 5, 6, 8, 9};
  for (int i = 0; i < 8; i++) {
    tb__item_t *it = tb__queue_pop(&q, 10);
    assert_non_null(it);
    assert_int_equal(it->seq, want[i]);
    free(it);
  }
  assert_null(tb__queue_pop(&q, 10));
  /* Room again: a batch event goes in. */
  atomic_store(&stop, false);
  assert_int_equal(tb__queue_push(&q, item(true, 12), &stop), TB__PUSHED);
  tb__queue_destroy(&q);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_topics),          cmocka_unit_test(test_ns),
      cmocka_unit_test(test_ctl_topic),       cmocka_unit_test(test_ctl_request),
      cmocka_unit_test(test_replies),         cmocka_unit_test(test_event_payloads),
      cmocka_unit_test(test_status_and_runs), cmocka_unit_test(test_seq_parse),
      cmocka_unit_test(test_queue),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
