/* Encoders: exact bytes for the canonical event, round trips through the
 * decoders (exact doubles, non-finite values, every request, every error
 * code), escaping, bounded buffers and allocation failure. */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "trainbus/protocol.h"

/* Decodes the single line in b (checking the framer accepts it first). */
static int smsg(const tb_buf_t *b, tb_smsg_t *m) {
  size_t from = 0, line_len;
  int n = tb_frame_next(b->data, b->len, &from, TB_PROTO_MAX_LINE_DEFAULT, &line_len);
  assert_int_equal(n, (int)b->len);
  tb_proto_err_t err;
  int rc = tb_smsg_decode(b->data, line_len, m, &err);
  if (rc)
    print_error("smsg: %s\n", err.msg);
  return rc;
}

static const char names[3][48] = {"loss", "accuracy", "lr"};

static tb_event_t canonical(const double *values) {
  tb_event_t ev = {0};
  ev.run = "r1";
  ev.seq = 1234;
  ev.name = "train_batch_end";
  ev.epoch = 3;
  ev.batch = 17;
  ev.time_us = 1732730000123456LL;
  ev.n_logs = 3;
  ev.log_names = names;
  ev.log_values = values;
  return ev;
}

static void test_event_bytes(void **state) {
  (void)state;
  const double v[3] = {0.25, 0.5, 0.001};
  tb_event_t ev = canonical(v);
  char out[512];
  int n = tb_msg_event_to(out, sizeof out, &ev);
  const char *want = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{\"run\":\"r1\","
                     "\"seq\":1234,\"event\":\"train_batch_end\",\"epoch\":3,\"batch\":17,"
                     "\"time\":1732730000.123456,\"logs\":{\"loss\":0.25,\"accuracy\":0.5,"
                     "\"lr\":0.001}}}\n";
  assert_int_equal(n, (int)strlen(want));
  assert_memory_equal(out, want, (size_t)n);
  /* Every smaller buffer is refused, never overrun. */
  for (size_t cap = 0; cap < (size_t)n; cap++) {
    char *small = malloc(cap ? cap : 1);
    assert_int_equal(tb_msg_event_to(small, cap, &ev), TB_PROTO_ETOO_LARGE);
    free(small);
  }
  assert_true(tb_msg_event_max(&ev) >= (size_t)n);
  /* Epoch/batch -1 are omitted (train_begin has neither). */
  ev.epoch = -1;
  ev.batch = -1;
  ev.n_logs = 0;
  n = tb_msg_event_to(out, sizeof out, &ev);
  out[n] = '\0';
  assert_null(strstr(out, "epoch"));
  assert_non_null(strstr(out, "\"logs\":{}"));
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next_u64(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static bool same_double(double a, double b) {
  return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b));
}

/* Random bit patterns and edge values come back bit for bit (NaN as NaN). */
static void test_event_roundtrip_exact(void **state) {
  (void)state;
  double v[32];
  const char *namev[32];
  char namebuf[32][16];
  const double edges[] = {0.1,
                          -0.0,
                          0.0,
                          DBL_MAX,
                          -DBL_MAX,
                          DBL_MIN,
                          5e-324,
                          1e21,
                          9007199254740993.0,
                          123456789012345678.0,
                          NAN,
                          INFINITY,
                          -INFINITY,
                          1.0 / 3.0,
                          2.5e-7,
                          -1e-300};
  for (int i = 0; i < 32; i++) {
    snprintf(namebuf[i], sizeof namebuf[i], "m%d", i);
    namev[i] = namebuf[i];
  }
  tb_buf_t b = {0};
  for (int round = 0; round < 400; round++) {
    for (int i = 0; i < 32; i++) {
      if (round == 0 && i < (int)(sizeof edges / sizeof edges[0])) {
        v[i] = edges[i];
      } else {
        uint64_t bits = next_u64();
        memcpy(&v[i], &bits, sizeof bits);
      }
    }
    tb_event_t ev = {0};
    ev.run = "run-7";
    ev.seq = round + 1;
    ev.name = "epoch_end";
    ev.epoch = round;
    ev.batch = -1;
    ev.time_us = 1700000000000000LL + round * 1234567LL;
    ev.n_logs = 32;
    ev.log_namev = namev;
    ev.log_values = v;
    b.len = 0;
    assert_int_equal(tb_msg_event(&b, &ev), 0);
    tb_smsg_t m;
    assert_int_equal(smsg(&b, &m), 0);
    assert_int_equal(m.kind, TB_SMSG_EVENT);
    assert_string_equal(m.event.run, "run-7");
    assert_string_equal(m.event.name, "epoch_end");
    assert_int_equal(m.event.seq, round + 1);
    assert_int_equal(m.event.epoch, round);
    assert_int_equal(m.event.batch, -1);
    assert_int_equal(m.event.time_us, ev.time_us);
    assert_int_equal(m.event.n_logs, 32);
    for (int i = 0; i < 32; i++) {
      assert_string_equal(m.event.log_names[i], namev[i]);
      if (!same_double(m.event.log_values[i], v[i])) {
        print_error("log %d: sent %.17g, got %.17g\n", i, v[i], m.event.log_values[i]);
        fail();
      }
    }
    tb_smsg_free(&m);
  }
  tb_buf_free(&b);
}

static void test_nonfinite_on_wire(void **state) {
  (void)state;
  const double v[3] = {NAN, INFINITY, -INFINITY};
  tb_event_t ev = canonical(v);
  char out[512];
  int n = tb_msg_event_to(out, sizeof out, &ev);
  out[n] = '\0';
  assert_non_null(strstr(out, "\"logs\":{\"loss\":\"NaN\",\"accuracy\":\"Infinity\","
                              "\"lr\":\"-Infinity\"}"));
}

static void test_state_and_control_events(void **state) {
  (void)state;
  tb_event_t ev = {0};
  ev.run = "r1";
  ev.seq = 9;
  ev.name = "control";
  ev.epoch = 2;
  ev.batch = 5;
  ev.action = "set_lr";
  ev.by = "client 7";
  ev.has_value = true;
  ev.value = 0.001;
  ev.has_old = true;
  ev.old_value = 0.01;
  ev.lockstep = true;
  tb_buf_t b = {0};
  assert_int_equal(tb_msg_event(&b, &ev), 0);
  tb_smsg_t m;
  assert_int_equal(smsg(&b, &m), 0);
  assert_string_equal(m.event.action, "set_lr");
  assert_string_equal(m.event.by, "client 7");
  assert_true(m.event.has_value && m.event.value == 0.001);
  assert_true(m.event.has_old && m.event.old_value == 0.01);
  assert_true(m.event.lockstep);
  assert_null(m.event.state);
  tb_smsg_free(&m);

  tb_event_t st = {0};
  st.run = "r1";
  st.seq = 10;
  st.name = "state";
  st.epoch = -1;
  st.batch = -1;
  st.state = "paused";
  st.prev_state = "running";
  st.reason = "remote pause";
  b.len = 0;
  assert_int_equal(tb_msg_event(&b, &st), 0);
  assert_int_equal(smsg(&b, &m), 0);
  assert_string_equal(m.event.state, "paused");
  assert_string_equal(m.event.prev_state, "running");
  assert_string_equal(m.event.reason, "remote pause");
  assert_null(m.event.action);
  tb_smsg_free(&m);
  tb_buf_free(&b);
}

/* Hostile strings stay one valid line: escapes, quotes, invalid UTF-8. */
enum { CLASSES_MAX = 64 };

/* train_begin carries the class names of a run whose labels are names; a
 * client that does not know the field ignores it. */
static void test_train_begin_classes(void **state) {
  (void)state;
  static const char *const cls[] = {"a, b", "say \"c\"", "\xff\xfe", "line\nbreak"};
  tb_event_t ev = {0};
  ev.run = "r1";
  ev.seq = 1;
  ev.name = "train_begin";
  ev.epoch = ev.batch = -1;
  ev.n_classes = 4;
  ev.classes = cls;
  tb_buf_t b = {0};
  assert_int_equal(tb_msg_event(&b, &ev), 0);
  assert_non_null(strstr(b.data, ",\"logs\":{},\"classes\":[\"a, b\",\"say \\\"c\\\"\","
                                 "\"\xef\xbf\xbd\xef\xbf\xbd\",\"line\\nbreak\"]}}\n"));
  tb_smsg_t m;
  assert_int_equal(smsg(&b, &m), 0);
  assert_string_equal(m.event.name, "train_begin");
  assert_int_equal(m.event.n_classes, 0); /* not kept by the decoder */
  tb_smsg_free(&m);
  /* The fixed-size writer's bound holds the worst case (every byte escaped). */
  static char big[CLASSES_MAX][200];
  const char *many[CLASSES_MAX];
  for (int i = 0; i < CLASSES_MAX; i++) {
    memset(big[i], 1, sizeof(big[i]) - 1);
    big[i][sizeof(big[i]) - 1] = '\0';
    many[i] = big[i];
  }
  ev.n_classes = CLASSES_MAX;
  ev.classes = many;
  b.len = 0;
  assert_int_equal(tb_msg_event(&b, &ev), 0);
  assert_true(b.len > (size_t)CLASSES_MAX * 199 * 6);
  tb_buf_free(&b);
}

static void test_escaping(void **state) {
  (void)state;
  char run[] = "a\"b\\c\n\r\t\x01\x1f\xC3\xA9\xFF\xC0\x80z";
  tb_buf_t b = {0};
  assert_int_equal(tb_msg_bye(&b, "shutdown", run), 0);
  tb_smsg_t m;
  assert_int_equal(smsg(&b, &m), 0);
  assert_int_equal(m.kind, TB_SMSG_BYE);
  assert_string_equal(m.bye.message,
                      "a\"b\\c\n\r\t\x01\x1f\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz");
  tb_smsg_free(&m);
  tb_buf_free(&b);
}

static tb_req_t *req_new(tb_method_t m) {
  tb_req_t *r = calloc(1, sizeof *r);
  r->method = m;
  r->id.kind = TB_ID_INT;
  r->id.num = 42;
  snprintf(r->run, sizeof r->run, "r1");
  return r;
}

/* Encoding a request and decoding it gives the same fields back. */
static void test_request_roundtrip(void **state) {
  (void)state;
  tb_buf_t b = {0};
  for (int m = 1; m <= TB_METHOD_CONTINUE; m++) {
    tb_req_t *r = req_new((tb_method_t)m);
    switch (m) {
    case TB_METHOD_AUTH:
      snprintf(r->auth.token, sizeof r->auth.token, "s3cret");
      r->auth.role = TB_ROLE_OBSERVER;
      r->auth.protocol = 1;
      r->run[0] = '\0';
      break;
    case TB_METHOD_SUBSCRIBE:
      r->subscribe.n_runs = 1;
      snprintf(r->subscribe.runs[0], TB_PROTO_RUN_MAX, "r1");
      r->subscribe.n_events = 2;
      snprintf(r->subscribe.events[0], TB_PROTO_NAME_MAX, "*_end");
      snprintf(r->subscribe.events[1], TB_PROTO_NAME_MAX, "state");
      r->subscribe.every = 5;
      r->subscribe.has_since_seq = true;
      r->subscribe.since_seq = 77;
      r->subscribe.n_lockstep = 1;
      r->subscribe.lockstep[0] = TB_EVENT_EPOCH_END;
      r->subscribe.lockstep_timeout_ms = 250;
      r->run[0] = '\0';
      break;
    case TB_METHOD_UNSUBSCRIBE:
      r->unsubscribe.has_sub = true;
      r->unsubscribe.sub = 3;
      r->run[0] = '\0';
      break;
    case TB_METHOD_PING:
    case TB_METHOD_RUNS:
      r->run[0] = '\0';
      break;
    case TB_METHOD_HISTORY:
      r->history.since_seq = 10;
      r->history.limit = 50;
      break;
    case TB_METHOD_SET_LR:
      r->set_lr.lr = 0.1 + 0.2; /* not the shortest decimal: 0.30000000000000004 */
      break;
    case TB_METHOD_STOP:
      snprintf(r->stop.reason, sizeof r->stop.reason, "plateau");
      break;
    case TB_METHOD_SUBMIT:
      r->submit.job = cJSON_Parse("{\"epochs\":2,\"optimizer\":{\"name\":\"sgd\",\"lr\":0.1}}");
      r->run[0] = '\0';
      break;
    case TB_METHOD_CONTINUE:
      r->cont.seq = 99;
      r->cont.has_lr = true;
      r->cont.lr = 1e-5;
      r->cont.pause = true;
      r->cont.checkpoint = true;
      break;
    default:
      break;
    }
    b.len = 0;
    assert_int_equal(tb_req_encode(&b, r), 0);
    tb_req_t got;
    tb_proto_err_t err;
    int rc = tb_req_decode(b.data, b.len - 1, &got, &err);
    if (rc)
      print_error("%s: %.*s -> %s\n", tb_method_name(r->method), (int)b.len, b.data, err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(got.method, r->method);
    assert_int_equal(got.id.num, 42);
    assert_string_equal(got.run, r->run);
    if (m == TB_METHOD_SUBMIT) {
      assert_true(cJSON_Compare(got.submit.job, r->submit.job, 1));
      cJSON_Delete(r->submit.job);
      r->submit.job = NULL;
    } else if (m == TB_METHOD_HISTORY) {
      assert_memory_equal(&got.history, &r->history, sizeof got.history);
    } else {
      /* Every other field must match exactly, which also checks defaults. */
      assert_memory_equal(&got.auth, &r->auth, sizeof got.auth);
      assert_memory_equal(&got.subscribe.runs, &r->subscribe.runs, sizeof got.subscribe.runs);
      assert_int_equal(got.subscribe.every, m == TB_METHOD_SUBSCRIBE ? 5 : 0);
      assert_int_equal(got.subscribe.since_seq, r->subscribe.since_seq);
      assert_memory_equal(got.subscribe.lockstep, r->subscribe.lockstep,
                          sizeof got.subscribe.lockstep);
      assert_memory_equal(&got.unsubscribe, &r->unsubscribe, sizeof got.unsubscribe);
      assert_true(got.set_lr.lr == r->set_lr.lr);
      assert_string_equal(got.stop.reason, r->stop.reason);
      assert_memory_equal(&got.cont, &r->cont, sizeof got.cont);
    }
    tb_req_free(&got);
    free(r);
  }
  tb_buf_free(&b);
}

/* Every code of the table goes out as an error response with its name. */
static void test_every_error_code(void **state) {
  (void)state;
  static const int codes[] = {
#define X(name, code, wire, text) code,
      TB_PROTO_ERR_MAP(X)
#undef X
  };
  tb_buf_t b = {0};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    tb_id_t id = {.kind = TB_ID_STR};
    snprintf(id.str, sizeof id.str, "req-%zu", i);
    b.len = 0;
    assert_int_equal(tb_msg_error(&b, &id, codes[i], "run %s: %s", "r9", "went wrong"), 0);
    tb_smsg_t m;
    assert_int_equal(smsg(&b, &m), 0);
    assert_int_equal(m.kind, TB_SMSG_ERROR);
    assert_int_equal(m.error.code, codes[i]);
    assert_string_equal(m.error.name, tb_proto_err_name(codes[i]));
    assert_string_equal(m.error.message, "run r9: went wrong");
    assert_string_equal(m.id.str, id.str);
    tb_smsg_free(&m);
  }
  assert_string_equal(tb_proto_err_name(TB_PROTO_ENO_SUCH_RUN), "no_such_run");
  assert_string_equal(tb_proto_strerror(TB_PROTO_ETIMEOUT), "timed out");
  /* A decoder error with no id goes out with id null. */
  tb_req_t r;
  tb_proto_err_t err;
  assert_int_equal(tb_req_decode("{", 1, &r, &err), TB_PROTO_EPARSE);
  b.len = 0;
  assert_int_equal(tb_msg_error_from(&b, &r.id, &err), 0);
  assert_non_null(strstr(b.data, "\"id\":null,\"error\":{\"code\":-32700"));
  tb_req_free(&r);
  tb_buf_free(&b);
}

static void test_other_messages(void **state) {
  (void)state;
  tb_buf_t b = {0};
  tb_smsg_t m;
  tb_hello_t h = {.protocol = TB_PROTO_VERSION,
                  .auth_required = true,
                  .auth_timeout_ms = 2000,
                  .max_line = TB_PROTO_MAX_LINE_DEFAULT};
  snprintf(h.server, sizeof h.server, "trainbus/0.1.0");
  assert_int_equal(tb_msg_hello(&b, &h), 0);
  assert_int_equal(smsg(&b, &m), 0);
  assert_int_equal(m.kind, TB_SMSG_HELLO);
  assert_memory_equal(&m.hello, &h, sizeof h);
  tb_smsg_free(&m);

  b.len = 0;
  assert_int_equal(tb_msg_dropped(&b, "r1", 40, 100, 139), 0);
  assert_int_equal(smsg(&b, &m), 0);
  assert_int_equal(m.kind, TB_SMSG_DROPPED);
  assert_string_equal(m.dropped.run, "r1");
  assert_int_equal(m.dropped.count, 40);
  assert_int_equal(m.dropped.from_seq, 100);
  assert_int_equal(m.dropped.to_seq, 139);
  tb_smsg_free(&m);

  tb_id_t id = {.kind = TB_ID_INT, .num = 5};
  tb_run_info_t runs[2] = {
      {.id = "r1",
       .state = TB_RUN_RUNNING,
       .epoch = 2,
       .epochs = 10,
       .batch = 7,
       .last_seq = 300,
       .has_lr = true,
       .lr = 0.1},
      {.id = "r2",
       .state = TB_RUN_FINISHED,
       .epoch = 9,
       .epochs = 10,
       .batch = -1,
       .last_seq = 4000},
  };
  b.len = 0;
  assert_int_equal(tb_msg_result_runs(&b, &id, runs, 2), 0);
  assert_int_equal(smsg(&b, &m), 0);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  assert_int_equal(m.id.num, 5);
  const cJSON *arr = cJSON_GetObjectItem(m.result, "runs");
  assert_int_equal(cJSON_GetArraySize(arr), 2);
  for (int i = 0; i < 2; i++) {
    tb_run_info_t got;
    assert_int_equal(tb_run_info_decode(cJSON_GetArrayItem(arr, i), &got, NULL), 0);
    assert_memory_equal(&got, &runs[i], sizeof got);
  }
  tb_smsg_free(&m);

  const double v[3] = {1, 2, 3};
  tb_event_t evs[2] = {canonical(v), canonical(v)};
  evs[1].seq = 1235;
  b.len = 0;
  assert_int_equal(tb_msg_result_history(&b, &id, "r1", evs, 2, 1236), 0);
  assert_int_equal(smsg(&b, &m), 0);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(m.result, "events")), 2);
  assert_int_equal(cJSON_GetObjectItem(m.result, "next_seq")->valuedouble, 1236);
  tb_smsg_free(&m);

  /* Fixed results parse and say what they should. */
  b.len = 0;
  assert_int_equal(tb_msg_result_ok(&b, &id), 0);
  assert_int_equal(tb_msg_result_pong(&b, &id, 1000000), 0);
  assert_int_equal(tb_msg_result_auth(&b, &id, TB_ROLE_CONTROLLER), 0);
  assert_int_equal(tb_msg_result_subscribe(&b, &id, 4, 17), 0);
  assert_int_equal(tb_msg_result_submit(&b, &id, "r3"), 0);
  assert_int_equal(tb_msg_result_status(&b, &id, &runs[0]), 0);
  cJSON *res = cJSON_CreateObject();
  cJSON_AddNumberToObject(res, "x", 1);
  assert_int_equal(tb_msg_result(&b, &id, res), 0);
  cJSON_Delete(res);
  const char *p = b.data, *end = b.data + b.len;
  int lines = 0;
  while (p < end) {
    size_t from = 0, line_len;
    int n = tb_frame_next(p, (size_t)(end - p), &from, 1 << 16, &line_len);
    assert_true(n > 0);
    assert_int_equal(tb_smsg_decode(p, line_len, &m, NULL), 0);
    assert_int_equal(m.kind, TB_SMSG_RESULT);
    tb_smsg_free(&m);
    p += n;
    lines++;
  }
  assert_int_equal(lines, 7);

  /* Unknown notifications are reported as such, not as errors. */
  const char *future = "{\"jsonrpc\":\"2.0\",\"method\":\"weather\",\"params\":{\"sun\":true}}";
  assert_int_equal(tb_smsg_decode(future, strlen(future), &m, NULL), 0);
  assert_int_equal(m.kind, TB_SMSG_UNKNOWN);
  assert_string_equal(m.method, "weather");
  tb_smsg_free(&m);
  tb_buf_free(&b);
}

static int fail_after = -1;
static void *failing_realloc(void *p, size_t n) {
  if (fail_after == 0)
    return NULL;
  if (fail_after > 0)
    fail_after--;
  return realloc(p, n);
}

/* Out of memory gives TB_PROTO_EINTERNAL and leaves the buffer as it was. */
/* Values from a cJSON tree (results, submitted jobs, history elements) are
 * written with their numbers exact: cJSON_Print would round 0.30000000000000004
 * to "0.3" and 0.7678571428571429 to 0.767857142857143. */
static void test_json_value_exact(void **state) {
  (void)state;
  const char *text = "{\"a\":[0.30000000000000004,0.7678571428571429,1e300,-0,5e-324,"
                     "9007199254740993,-1.5],\"s\":\"x\\n\\u00e9\\\"\",\"t\":true,\"f\":false,"
                     "\"n\":null,\"o\":{},\"e\":[]}";
  cJSON *doc = cJSON_Parse(text);
  assert_non_null(doc);
  tb_buf_t b;
  tb_buf_init(&b);
  assert_int_equal(tb_json_value(&b, doc), 0);
  assert_int_equal(tb_buf_append(&b, "", 1), 0);
  cJSON *back = cJSON_ParseWithLength(b.data, b.len - 1);
  assert_non_null(back);
  const cJSON *x = cJSON_GetObjectItem(doc, "a")->child, *y = cJSON_GetObjectItem(back, "a")->child;
  for (; x != NULL; x = x->next, y = y->next) {
    assert_non_null(y);
    assert_memory_equal(&x->valuedouble, &y->valuedouble, sizeof(double));
  }
  assert_null(y);
  assert_string_equal(cJSON_GetObjectItem(back, "s")->valuestring, "x\n\xc3\xa9\"");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(back, "t")));
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(back, "n")));
  assert_non_null(strstr(b.data, "\"o\":{},\"e\":[]"));
  cJSON_Delete(back);
  /* The same through tb_msg_result. */
  b.len = 0;
  tb_id_t id = {.kind = TB_ID_INT, .num = 3};
  assert_int_equal(tb_msg_result(&b, &id, doc), 0);
  assert_int_equal(tb_buf_append(&b, "", 1), 0);
  assert_non_null(strstr(b.data, "{\"a\":[0.30000000000000004,0.7678571428571429,"));
  tb_buf_free(&b);
  cJSON_Delete(doc);
}

static void test_alloc_failure(void **state) {
  (void)state;
  tb_proto_set_allocator(failing_realloc, NULL);
  tb_buf_t b = {0};
  fail_after = 0;
  assert_int_equal(tb_msg_bye(&b, "shutdown", "bye"), TB_PROTO_EINTERNAL);
  assert_int_equal(b.len, 0);
  fail_after = -1;
  assert_int_equal(tb_msg_bye(&b, "shutdown", "bye"), 0);
  size_t len = b.len;
  char big[4096];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  fail_after = 0;
  assert_int_equal(tb_msg_bye(&b, "shutdown", big), TB_PROTO_EINTERNAL);
  assert_int_equal(b.len, len);
  fail_after = -1;
  tb_buf_free(&b);
  tb_proto_set_allocator(NULL, NULL);
}

/* tb_json_num_to writes exactly what printf's "%.17g" does (it has a fast
 * integer path for fixed notation): checked on log-uniform values across
 * and around its range, random bit patterns, ties at the 17th digit (which
 * must round half to even, as printf does), and the range's edges. */
static uint64_t g17_state = 0x9E3779B97F4A7C15ull;
static uint64_t g17_rng(void) {
  g17_state ^= g17_state << 13;
  g17_state ^= g17_state >> 7;
  g17_state ^= g17_state << 17;
  return g17_state;
}

static void check_g17(double v) {
  char want[64], got[TB_PROTO_NUM_MAX + 1];
  if (isnan(v) || isinf(v) || v == 0.0)
    return;
  snprintf(want, sizeof(want), "%.17g", v);
  if (v > -9007199254740992.0 && v < 9007199254740992.0 && v == (double)(int64_t)v)
    snprintf(want, sizeof(want), "%lld", (long long)v);
  size_t n = tb_json_num_to(got, v);
  got[n] = '\0';
  if (strcmp(want, got) != 0) {
    print_error("tb_json_num_to(%a): want %s, got %s\n", v, want, got);
    fail();
  }
}

static void test_number_format_matches_printf(void **state) {
  (void)state;
  for (int i = 0; i < 2000000; i++) {
    /* log-uniform over 1e-7 .. 1e19, both signs */
    double u = (double)(g17_rng() >> 11) / 9007199254740992.0;
    double v = pow(10.0, -7.0 + 26.0 * u);
    check_g17((g17_rng() & 1) ? -v : v);
  }
  for (int i = 0; i < 1000000; i++) {
    uint64_t bits = g17_rng();
    double v;
    memcpy(&v, &bits, sizeof(v));
    check_g17(v);
  }
  /* Ties: 18 significant digits ending in 5, exactly representable. */
  static const double ties[] = {1234567890123456.75,
                                1234567890123456.25,
                                1234567890123456.5,
                                123456789012345.625,
                                123456789012345.375,
                                4503599627370495.5,
                                2251799813685247.75,
                                0.5,
                                1.5};
  for (size_t i = 0; i < sizeof(ties) / sizeof(ties[0]); i++)
    check_g17(ties[i]);
  /* Around the edges of the fast path and of every power of ten. */
  for (int e = -8; e <= 18; e++) {
    double p = pow(10.0, e);
    double v = p;
    for (int k = 0; k < 50; k++) {
      check_g17(v);
      check_g17(-v);
      v = nextafter(v, 0.0);
    }
    v = p;
    for (int k = 0; k < 50; k++) {
      check_g17(v);
      v = nextafter(v, INFINITY);
    }
  }
  check_g17(0.1);
  check_g17(0.3123456789);
  check_g17(1e-4);
  check_g17(9.999999999999999e16);
  check_g17(DBL_MIN);
  check_g17(DBL_MAX);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_event_bytes),       cmocka_unit_test(test_event_roundtrip_exact),
      cmocka_unit_test(test_nonfinite_on_wire), cmocka_unit_test(test_state_and_control_events),
      cmocka_unit_test(test_escaping),          cmocka_unit_test(test_request_roundtrip),
      cmocka_unit_test(test_every_error_code),  cmocka_unit_test(test_other_messages),
      cmocka_unit_test(test_alloc_failure),     cmocka_unit_test(test_number_format_matches_printf),
      cmocka_unit_test(test_train_begin_classes),
      cmocka_unit_test(test_json_value_exact),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
