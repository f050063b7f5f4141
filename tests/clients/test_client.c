/* Unit tests of the client library against the scripted fake server: the
 * handshake, every call's request and result, notifications interleaved with
 * responses, lockstep continue, reconnect with since_seq (no gap, no
 * duplicate), and every failure the library reports instead of crashing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fake_server.h"
#include "trainbus/client.h"

/* Script steps are {op, text} pairs; naming the unused ms field in every one
 * would double the scripts' length for nothing. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define AUTH_OK(role)                                                                              \
  "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"role\":\"" role "\",\"protocol\":1}}"
#define OK(id) "{\"jsonrpc\":\"2.0\",\"id\":" #id ",\"result\":{\"ok\":true}}"
#define EV(seq, rest)                                                                              \
  "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{\"run\":\"r1\",\"seq\":" #seq             \
  ",\"time\":1.5," rest "}}"

static fake_server_t fs;

static tb_client_t *connect_as(tb_role_t role, const char *token) {
  tb_client_opts_t o = {
      .addr = fs.addr, .token = token, .role = role, .name = "unit", .call_timeout_ms = 3000};
  tb_client_t *c = NULL;
  tb_client_err_t err;
  int rc = tb_client_connect(&o, &c, &err);
  if (rc != 0)
    fprintf(stderr, "connect: %s\n", err.msg);
  assert_int_equal(rc, 0);
  assert_non_null(c);
  return c;
}

static void finish(void) {
  const char *f = fake_server_join(&fs);
  if (f[0])
    fail_msg("fake server: %s", f);
}

static void test_handshake(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "\"method\":\"auth\"|\"token\":\"sekrit\"|\"role\":\"controller\"|"
                  "\"client\":\"unit\"|\"protocol\":1|\"id\":1"},
      {FS_SEND, AUTH_OK("controller")},
      {FS_EXPECT, "\"method\":\"ping\"|\"id\":2"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"pong\":true,\"time\":12.25}}"},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_CONTROLLER, "sekrit");
  assert_int_equal(tb_client_role(c), TB_ROLE_CONTROLLER);
  assert_string_equal(tb_client_hello(c)->server, "fake/0");
  assert_true(tb_client_hello(c)->auth_required);
  double t = 0;
  assert_int_equal(tb_client_ping(c, &t, NULL), 0);
  assert_true(t == 12.25);
  tb_client_free(c);
  finish();
}

static void test_observer_granted(void **state) {
  static const fs_step_t steps[] = {{FS_SEND, HELLO},
                                    {FS_EXPECT, "\"role\":\"observer\""},
                                    {FS_SEND, AUTH_OK("observer")},
                                    {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, true), 0);
  tb_client_t *c = connect_as(TB_ROLE_NONE, NULL); /* over the unix socket, no token */
  assert_int_equal(tb_client_role(c), TB_ROLE_OBSERVER);
  tb_client_free(c);
  finish();
  /* The last line must not carry a token at all. */
  assert_null(strstr(fs.last_line, "token"));
}

static void test_bad_token(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "\"token\":\"wrong\""},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32001,\"message\":\"auth: "
                "invalid token\",\"data\":{\"name\":\"unauthorized\"}}}"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"method\":\"bye\",\"params\":{\"reason\":\"auth_failed\"}}"},
      {FS_CLOSE},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_opts_t o = {.addr = fs.addr, .token = "wrong", .role = TB_ROLE_CONTROLLER};
  tb_client_t *c = (tb_client_t *)&o; /* must be reset to NULL */
  tb_client_err_t err;
  int rc = tb_client_connect(&o, &c, &err);
  assert_int_equal(rc, TB_PROTO_EUNAUTHORIZED);
  assert_null(c);
  assert_true(tb_client_err_is_remote(rc));
  assert_string_equal(err.name, "unauthorized");
  assert_string_equal(err.msg, "auth: invalid token");
  finish();
}

static void test_connect_refused_and_bad_address(void **state) {
  /* A port nobody listens on: bind one, note it, close it. */
  assert_int_equal(fake_server_start(&fs, (const fs_step_t[]){{FS_END}}, false), 0);
  tb_client_opts_t o0 = {.addr = fs.addr};
  tb_client_t *c0 = NULL;
  /* The fake accepts one connection and then ends; connect and let it go. */
  tb_client_opts_t quick = {.addr = fs.addr, .connect_timeout_ms = 300};
  int rc0 = tb_client_connect(&quick, &c0, NULL);
  assert_int_not_equal(rc0, 0); /* no hello: closed */
  finish();
  tb_client_err_t err;
  tb_client_t *c = NULL;
  int rc = tb_client_connect(&o0, &c, &err);
  assert_int_equal(rc, -ECONNREFUSED);
  assert_false(tb_client_err_is_remote(rc));
  assert_string_equal(err.name, "system_error");
  assert_non_null(strstr(err.msg, "cannot connect"));

  const char *bad[] = {"nohostport", "localhost:0", "localhost:99999",
                       "[::1:80",    "unix:",       "no.such.host.invalid:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    tb_client_opts_t o = {.addr = bad[i]};
    assert_int_equal(tb_client_connect(&o, &c, &err), TB_CLIENT_EADDRESS);
    assert_string_equal(err.name, "bad_address");
  }
  tb_client_opts_t none = {0};
  assert_int_equal(tb_client_connect(&none, &c, &err), TB_CLIENT_EINVALID);
}

static void test_not_a_server(void **state) {
  static const fs_step_t steps[] = {{FS_SEND, "HTTP/1.1 400 Bad Request\r"}, {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_opts_t o = {.addr = fs.addr};
  tb_client_t *c = NULL;
  tb_client_err_t err;
  assert_int_equal(tb_client_connect(&o, &c, &err), TB_CLIENT_EBAD_REPLY);
  finish();
}

static void test_events_queued_during_call(void **state) {
  /* Two events arrive before the status response and one after it: the call
   * gets its result, and tb_client_next hands out all three in order. */
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("observer")},
      {FS_EXPECT, "\"method\":\"status\"|\"run\":\"r1\"|\"id\":2"},
      {FS_SEND, EV(1, "\"event\":\"train_begin\"")},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":99,\"result\":{\"ok\":true}}"}, /* stale */
      {FS_SEND, EV(2, "\"event\":\"epoch_begin\",\"epoch\":0")},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"run\":\"r1\",\"state\":\"running\","
                "\"epoch\":0,\"epochs\":10,\"batch\":3,\"last_seq\":2,\"lr\":0.001,\"new\":1}}"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"method\":\"future_thing\",\"params\":{}}"},
      {FS_SEND, EV(3, "\"event\":\"train_batch_end\",\"epoch\":0,\"batch\":0,"
                      "\"logs\":{\"loss\":0.5,\"acc\":\"NaN\"}")},
      {FS_SLEEP, NULL, 200},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_OBSERVER, "t");
  tb_run_info_t info;
  tb_client_err_t err;
  int rc = tb_client_status(c, "r1", &info, &err);
  if (rc != 0)
    fprintf(stderr, "status: %s\n", err.msg);
  assert_int_equal(rc, 0);
  assert_string_equal(info.id, "r1");
  assert_int_equal(info.state, TB_RUN_RUNNING);
  assert_int_equal(info.epochs, 10);
  assert_true(info.has_lr && info.lr == 0.001);
  assert_int_equal(tb_client_pending(c), 2);
  tb_smsg_t m;
  const char *want[] = {"train_begin", "epoch_begin", "train_batch_end"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
    assert_int_equal(m.kind, TB_SMSG_EVENT);
    assert_int_equal(m.event.seq, i + 1);
    assert_string_equal(m.event.name, want[i]);
    if (i == 2) {
      assert_int_equal(m.event.n_logs, 2);
      assert_true(m.event.log_values[0] == 0.5);
      assert_true(isnan(m.event.log_values[1]));
      assert_int_equal(m.event.batch, 0);
    }
    tb_smsg_free(&m);
  }
  assert_int_equal(tb_client_last_seq(c, "r1"), 3);
  assert_int_equal(tb_client_next(c, 50, &m, &err), TB_CLIENT_ETIMEOUT);
  assert_string_equal(err.name, "client_timeout");
  tb_client_free(c);
  finish();
}

/* tb_client_raw gives the line as sent, whole: the decoded event keeps
 * strings only up to TB_PROTO_TEXT_MAX - 1 bytes. */
#define LONG_REASON                                                                                \
  "wrote /a/very/long/state/directory/that/goes/on/and/on/and/on/and/on/and/on/and/on/and/on/"     \
  "and/on/and/on/and/on/runs/r1/checkpoint-e0002-b00133.tbck"
static void test_raw_lines(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("observer")},
      {FS_SEND, EV(1, "\"event\":\"train_begin\"")},
      {FS_SEND,
       EV(2, "\"event\":\"control\",\"action\":\"checkpoint\",\"reason\":\"" LONG_REASON "\"")},
      {FS_SLEEP, NULL, 200},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_OBSERVER, "t");
  tb_smsg_t m;
  size_t len;
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  tb_smsg_free(&m);
  assert_null(tb_client_raw(c, &len)); /* off by default */
  assert_int_equal(len, 0);
  tb_client_keep_raw(c, true);
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  assert_int_equal(strlen(m.event.reason), TB_PROTO_TEXT_MAX - 1);
  const char *raw = tb_client_raw(c, &len);
  assert_non_null(raw);
  assert_int_equal(len, strlen(steps[4].text));
  assert_memory_equal(raw, steps[4].text, len);
  tb_smsg_free(&m);
  tb_client_free(c);
  finish();
}

static void test_subscribe_every_option(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("controller")},
      {FS_EXPECT, "\"method\":\"subscribe\"|\"runs\":[\"r1\"]|\"events\":[\"epoch_end\",\"*_end\"]"
                  "|\"every\":10|\"since_seq\":5|\"lockstep\":[\"epoch_end\"]"
                  "|\"lockstep_timeout_ms\":2000"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"sub\":7,\"next_seq\":40}}"},
      {FS_EXPECT, "\"method\":\"subscribe\"|\"params\":{}"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"sub\":8,\"next_seq\":0}}"},
      {FS_EXPECT, "\"method\":\"unsubscribe\"|\"sub\":8"},
      {FS_SEND, OK(4)},
      {FS_EXPECT, "\"method\":\"unsubscribe\"|\"params\":{}"},
      {FS_SEND, OK(5)},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_CONTROLLER, "t");
  const char *runs[] = {"r1"}, *events[] = {"epoch_end", "*_end"}, *lock[] = {"epoch_end"};
  tb_client_sub_opts_t o = {.runs = runs,
                            .n_runs = 1,
                            .events = events,
                            .n_events = 2,
                            .every = 10,
                            .has_since_seq = true,
                            .since_seq = 5,
                            .lockstep = lock,
                            .n_lockstep = 1,
                            .lockstep_timeout_ms = 2000};
  int64_t sub = 0, next = 0;
  assert_int_equal(tb_client_subscribe(c, &o, &sub, &next, NULL), 0);
  assert_int_equal(sub, 7);
  assert_int_equal(next, 40);
  tb_client_sub_opts_t all = {0};
  assert_int_equal(tb_client_subscribe(c, &all, &sub, NULL, NULL), 0);
  assert_int_equal(sub, 8);
  assert_int_equal(tb_client_unsubscribe(c, 8, NULL), 0);
  assert_int_equal(tb_client_unsubscribe(c, -1, NULL), 0);
  /* Refused locally, nothing sent: a lockstep name that is not a hook. */
  const char *bad[] = {"state"};
  tb_client_sub_opts_t b = {.lockstep = bad, .n_lockstep = 1};
  tb_client_err_t err;
  assert_int_equal(tb_client_subscribe(c, &b, NULL, NULL, &err), TB_CLIENT_EINVALID);
  tb_client_free(c);
  finish();
}

static void test_control_calls(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("controller")},
      {FS_EXPECT, "\"method\":\"set_lr\"|\"run\":\"r1\"|\"lr\":0.0001"},
      /* The event that acknowledges the change comes before the answer. */
      {FS_SEND,
       EV(9, "\"event\":\"control\",\"action\":\"set_lr\",\"value\":0.0001,\"old\":0.001")},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"run\":\"r1\",\"old\":0.001,\"lr\":"
                "0.0001,\"applied_at\":{\"epoch\":3,\"batch\":18}}}"},
      {FS_EXPECT, "\"method\":\"set_lr\"|\"lr\":-1"},
      {FS_SEND,
       "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32602,\"message\":\"params.lr: "
       "expected a finite positive number, got -1\",\"data\":{\"name\":\"invalid_params\"}}}"},
      {FS_EXPECT, "\"method\":\"stop\"|\"reason\":\"plateau\""},
      {FS_SEND, OK(4)},
      {FS_EXPECT, "\"method\":\"pause\"|\"run\":\"r1\""},
      {FS_SEND, OK(5)},
      {FS_EXPECT, "\"method\":\"resume\""},
      {FS_SEND,
       "{\"jsonrpc\":\"2.0\",\"id\":6,\"error\":{\"code\":-32004,\"message\":\"resume: run "
       "r1 is running\",\"data\":{\"name\":\"invalid_state\"}}}"},
      {FS_EXPECT, "\"method\":\"checkpoint\""},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"run\":\"r1\",\"path\":\"/s/c.tbck\","
                "\"applied_at\":{\"epoch\":2,\"batch\":0}}}"},
      {FS_EXPECT, "\"method\":\"cancel\"|\"run\":\"r9\""},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":8,\"error\":{\"code\":-32003,\"message\":\"no run "
                "r9\",\"data\":{\"name\":\"no_such_run\"}}}"},
      {FS_EXPECT, "\"method\":\"submit\"|\"job\":{\"epochs\":2,\"data\":{\"source\":\"seed\"}}"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{\"run\":\"r2\"}}"},
      {FS_EXPECT, "\"method\":\"continue\"|\"seq\":12|\"actions\":{\"set_lr\":0.5,\"stop\":true}"},
      {FS_SEND, OK(10)},
      {FS_EXPECT, "\"method\":\"continue\"|\"seq\":13|\"params\":{\"run\":\"r1\",\"seq\":13}"},
      {FS_SEND, OK(11)},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_CONTROLLER, "t");
  tb_client_applied_t ap;
  tb_client_err_t err;
  assert_int_equal(tb_client_set_lr(c, "r1", 0.0001, &ap, &err), 0);
  assert_true(ap.has_applied_at && ap.epoch == 3 && ap.batch == 18);
  assert_true(ap.has_lr && ap.old_lr == 0.001 && ap.lr == 0.0001);
  assert_int_equal(tb_client_set_lr(c, "r1", -1, &ap, &err), TB_PROTO_EINVALID_PARAMS);
  assert_string_equal(err.name, "invalid_params");
  assert_string_equal(err.msg, "params.lr: expected a finite positive number, got -1");
  assert_int_equal(tb_client_stop(c, "r1", "plateau", NULL), 0);
  assert_int_equal(tb_client_pause(c, "r1", NULL), 0);
  assert_int_equal(tb_client_resume(c, "r1", &err), TB_PROTO_EINVALID_STATE);
  assert_string_equal(err.name, "invalid_state");
  assert_int_equal(tb_client_checkpoint(c, "r1", &ap, NULL), 0);
  assert_string_equal(ap.path, "/s/c.tbck");
  assert_int_equal(ap.epoch, 2);
  assert_int_equal(tb_client_cancel(c, "r9", NULL, &err), TB_PROTO_ENO_SUCH_RUN);
  char run[TB_PROTO_RUN_MAX];
  const char *job = "{\"epochs\":2,\"data\":{\"source\":\"seed\"}}";
  assert_int_equal(tb_client_submit(c, job, strlen(job), run, NULL), 0);
  assert_string_equal(run, "r2");
  assert_int_equal(tb_client_submit(c, "[1]", 3, run, &err), TB_CLIENT_EINVALID);
  assert_int_equal(tb_client_submit(c, "{", 1, run, &err), TB_CLIENT_EINVALID);
  tb_client_actions_t act = {.has_lr = true, .lr = 0.5, .stop = true};
  assert_int_equal(tb_client_continue(c, "r1", 12, &act, NULL), 0);
  assert_int_equal(tb_client_continue(c, "r1", 13, NULL, NULL), 0);
  /* Local argument checks send nothing. */
  assert_int_equal(tb_client_stop(c, "", NULL, &err), TB_CLIENT_EINVALID);
  /* The control event queued during set_lr is still delivered. */
  tb_smsg_t m;
  assert_int_equal(tb_client_next(c, 0, &m, NULL), 0);
  assert_string_equal(m.event.name, "control");
  assert_true(m.event.has_value && m.event.value == 0.0001);
  tb_smsg_free(&m);
  tb_client_free(c);
  finish();
}

static void test_runs_and_history(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("observer")},
      {FS_EXPECT, "\"method\":\"runs\""},
      {FS_SEND,
       "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"runs\":[{\"run\":\"r1\",\"state\":"
       "\"running\",\"epoch\":3,\"epochs\":10,\"batch\":17,\"last_seq\":1234,\"lr\":0.001},"
       "{\"run\":\"r2\",\"state\":\"queued\",\"epoch\":-1,\"epochs\":5,\"batch\":-1,"
       "\"last_seq\":0}]}}"},
      {FS_EXPECT, "\"method\":\"history\"|\"since_seq\":1|\"limit\":2"},
      {FS_SEND,
       "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"run\":\"r1\",\"events\":[{\"run\":"
       "\"r1\",\"seq\":1,\"event\":\"train_begin\",\"time\":1.0,\"logs\":{}},{\"run\":\"r1\","
       "\"seq\":2,\"event\":\"epoch_end\",\"epoch\":0,\"time\":2.0,\"logs\":{\"loss\":0.25}}],"
       "\"next_seq\":3}}"},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_OBSERVER, "t");
  tb_run_info_t *runs;
  int n;
  assert_int_equal(tb_client_runs(c, &runs, &n, NULL), 0);
  assert_int_equal(n, 2);
  assert_string_equal(runs[1].id, "r2");
  assert_int_equal(runs[1].state, TB_RUN_QUEUED);
  assert_false(runs[1].has_lr);
  assert_int_equal(runs[0].last_seq, 1234);
  free(runs);
  cJSON *events;
  int64_t next;
  assert_int_equal(tb_client_history(c, "r1", 1, 2, &events, &next, NULL), 0);
  assert_int_equal(cJSON_GetArraySize(events), 2);
  assert_int_equal(next, 3);
  tb_smsg_t m;
  assert_int_equal(tb_client_event_decode(cJSON_GetArrayItem(events, 1), &m, NULL), 0);
  assert_string_equal(m.event.name, "epoch_end");
  assert_int_equal(m.event.epoch, 0);
  assert_true(m.event.log_values[0] == 0.25);
  tb_smsg_free(&m);
  cJSON_Delete(events);
  tb_client_free(c);
  finish();
}

static void test_reconnect_no_gap_no_duplicate(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("observer")},
      {FS_EXPECT, "\"method\":\"subscribe\"|\"runs\":[\"r1\"]|\"events\":[\"*\"]"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"sub\":1,\"next_seq\":5}}"},
      {FS_SEND, EV(5, "\"event\":\"epoch_begin\",\"epoch\":1")},
      {FS_SEND, EV(6, "\"event\":\"train_batch_end\",\"epoch\":1,\"batch\":0")},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"method\":\"bye\",\"params\":{\"reason\":\"shutdown\","
                "\"message\":\"daemon stopping\"}}"},
      {FS_CLOSE},
      {FS_ACCEPT},
      {FS_SEND, HELLO},
      {FS_EXPECT, "\"method\":\"auth\"|\"id\":4"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"role\":\"observer\",\"protocol\":1}}"},
      /* Resumes after the last event delivered (5), as one more than it. */
      {FS_EXPECT, "\"method\":\"subscribe\"|\"runs\":[\"r1\"]|\"since_seq\":6|\"id\":5"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"sub\":1,\"next_seq\":8}}"},
      {FS_SEND, EV(6, "\"event\":\"train_batch_end\",\"epoch\":1,\"batch\":0")},
      {FS_SEND, EV(7, "\"event\":\"train_batch_end\",\"epoch\":1,\"batch\":1")},
      {FS_SEND, EV(8, "\"event\":\"state\",\"state\":\"finished\",\"prev_state\":\"running\"")},
      {FS_SLEEP, NULL, 100},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_OBSERVER, "t");
  const char *runs[] = {"r1"}, *events[] = {"*"};
  tb_client_sub_opts_t o = {.runs = runs, .n_runs = 1, .events = events, .n_events = 1};
  assert_int_equal(tb_client_subscribe(c, &o, NULL, NULL, NULL), 0);
  tb_smsg_t m;
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  assert_int_equal(m.event.seq, 5);
  tb_smsg_free(&m);
  /* Read seq 6 from the socket but pretend the caller never saw it: pull it
   * into the queue with a call that fails, leaving it undelivered. */
  tb_client_err_t err;
  assert_int_equal(tb_client_ping(c, NULL, &err), TB_CLIENT_ECLOSED);
  assert_non_null(strstr(err.msg, "shutdown"));
  assert_int_equal(tb_client_pending(c), 2); /* event 6 and the bye */
  assert_int_equal(tb_client_fd(c), -1);
  int rc0 = tb_client_reconnect(c, &err);
  if (rc0 != 0)
    fprintf(stderr, "reconnect: %s\n", err.msg);
  assert_int_equal(rc0, 0);
  int64_t seqs[8];
  int n = 0;
  for (;;) {
    int rc = tb_client_next(c, 2000, &m, &err);
    assert_int_equal(rc, 0);
    if (m.kind == TB_SMSG_BYE) {
      assert_string_equal(m.bye.reason, "shutdown");
      tb_smsg_free(&m);
      continue;
    }
    assert_int_equal(m.kind, TB_SMSG_EVENT);
    seqs[n++] = m.event.seq;
    bool end = strcmp(m.event.name, "state") == 0;
    tb_smsg_free(&m);
    if (end)
      break;
  }
  assert_int_equal(n, 3);
  assert_int_equal(seqs[0], 6);
  assert_int_equal(seqs[1], 7);
  assert_int_equal(seqs[2], 8);
  tb_client_free(c);
  finish();
}

/* A lockstep event asked again by a restarted daemon (same seq) gets the
 * answer given before, sent by the library; one never answered is handed out
 * again. */
static void test_lockstep_asked_again(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("controller")},
      {FS_EXPECT, "\"method\":\"subscribe\"|\"lockstep\":[\"epoch_end\"]"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"sub\":1,\"next_seq\":5}}"},
      {FS_SEND, EV(5, "\"event\":\"epoch_end\",\"epoch\":1,\"lockstep\":true")},
      {FS_EXPECT, "\"method\":\"continue\"|\"seq\":5|\"set_lr\":0.5|\"id\":3"},
      {FS_SEND, OK(3)},
      /* the daemon restarted before the answer took effect: asked again */
      {FS_SEND, EV(5, "\"event\":\"epoch_end\",\"epoch\":1,\"lockstep\":true")},
      {FS_EXPECT, "\"method\":\"continue\"|\"seq\":5|\"set_lr\":0.5|\"id\":4"},
      {FS_SEND, OK(4)},
      {FS_SEND, EV(6, "\"event\":\"epoch_end\",\"epoch\":2,\"lockstep\":true")},
      /* never answered, asked again: handed out again */
      {FS_SEND, EV(6, "\"event\":\"epoch_end\",\"epoch\":2,\"lockstep\":true")},
      {FS_EXPECT, "\"method\":\"continue\"|\"seq\":6|\"stop\":true|\"id\":5"},
      {FS_SEND, OK(5)},
      {FS_SEND, EV(7, "\"event\":\"state\",\"state\":\"stopped\",\"prev_state\":\"stopping\"")},
      {FS_SLEEP, NULL, 100},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_CONTROLLER, "t");
  const char *runs[] = {"r1"}, *lock[] = {"epoch_end"};
  tb_client_sub_opts_t o = {
      .runs = runs, .n_runs = 1, .events = lock, .n_events = 1, .lockstep = lock, .n_lockstep = 1};
  assert_int_equal(tb_client_subscribe(c, &o, NULL, NULL, NULL), 0);
  tb_smsg_t m;
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  assert_int_equal(m.event.seq, 5);
  assert_true(m.event.lockstep);
  tb_smsg_free(&m);
  tb_client_actions_t a = {.has_lr = true, .lr = 0.5};
  assert_int_equal(tb_client_continue(c, "r1", 5, &a, NULL), 0);
  /* the repeated ask of 5 is answered inside, then 6 comes, twice */
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  assert_int_equal(m.event.seq, 6);
  tb_smsg_free(&m);
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  assert_int_equal(m.event.seq, 6);
  assert_true(m.event.lockstep);
  tb_smsg_free(&m);
  tb_client_actions_t stop = {.stop = true};
  assert_int_equal(tb_client_continue(c, "r1", 6, &stop, NULL), 0);
  assert_int_equal(tb_client_next(c, 2000, &m, NULL), 0);
  assert_int_equal(m.event.seq, 7);
  tb_smsg_free(&m);
  tb_client_free(c);
  finish();
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* With a state directory the client reads address and token at connect and
 * again at every reconnect (a restarted daemon on a new port), and sends the
 * directory's token only to the directory's address. */
static void test_state_dir_followed_and_token_tied(void **state) {
  static const fs_step_t first[] = {{FS_SEND, HELLO},
                                    {FS_EXPECT, "\"method\":\"auth\"|\"token\":\"tok-a\""},
                                    {FS_SEND, AUTH_OK("controller")},
                                    {FS_CLOSE},
                                    {FS_END}};
  static const fs_step_t second[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "\"method\":\"auth\"|\"token\":\"tok-b\"|\"id\":2"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"role\":\"controller\","
                "\"protocol\":1}}"},
      {FS_SLEEP, NULL, 50},
      {FS_END}};
  static const fs_step_t other[] = {{FS_SEND, HELLO},
                                    {FS_EXPECT, "\"method\":\"auth\"|\"role\":\"observer\""},
                                    {FS_SEND, AUTH_OK("observer")},
                                    {FS_SLEEP, NULL, 50},
                                    {FS_END}};
  char dir[] = "/tmp/tb-unit-state-XXXXXX";
  assert_non_null(mkdtemp(dir));
  fake_server_t a, b, o;
  assert_int_equal(fake_server_start(&a, first, false), 0);
  assert_int_equal(fake_server_start(&b, second, false), 0);
  char line[300];
  snprintf(line, sizeof line, "%s\n", a.addr);
  write_file(dir, "address", line);
  write_file(dir, "token", "tok-a\n");
  tb_client_opts_t opts = {.state_dir = dir, .role = TB_ROLE_CONTROLLER, .name = "unit"};
  tb_client_t *c = NULL;
  tb_client_err_t err;
  assert_int_equal(tb_client_connect(&opts, &c, &err), 0);
  /* the daemon goes; another one comes up elsewhere with its own token */
  tb_smsg_t m;
  assert_int_not_equal(tb_client_next(c, 2000, &m, &err), 0);
  snprintf(line, sizeof line, "%s\n", b.addr);
  write_file(dir, "address", line);
  write_file(dir, "token", "tok-b\n");
  assert_int_equal(tb_client_reconnect(c, &err), 0);
  tb_client_free(c);
  const char *f = fake_server_join(&a);
  if (f[0])
    fail_msg("first server: %s", f);
  f = fake_server_join(&b);
  if (f[0])
    fail_msg("second server: %s", f);

  /* An explicit address of another daemon gets no token from the directory. */
  assert_int_equal(fake_server_start(&o, other, false), 0);
  tb_client_opts_t opts2 = {.addr = o.addr, .state_dir = dir, .name = "unit"};
  assert_int_equal(tb_client_connect(&opts2, &c, &err), 0);
  tb_client_free(c);
  f = fake_server_join(&o);
  if (f[0])
    fail_msg("other server: %s", f);
  assert_null(strstr(o.last_line, "token"));
  /* No address anywhere: a clear error naming the file. */
  char path[512];
  snprintf(path, sizeof path, "%s/address", dir);
  unlink(path);
  assert_int_equal(tb_client_connect(&opts, &c, &err), TB_CLIENT_EADDRESS);
  assert_non_null(strstr(err.msg, "/address"));
  snprintf(path, sizeof path, "%s/token", dir);
  unlink(path);
  rmdir(dir);
}

static void test_reconnect_before_first_event(void **state) {
  /* Nothing delivered yet: resume where the live stream would have begun. */
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("observer")},
      {FS_EXPECT, "subscribe"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"sub\":1,\"next_seq\":41}}"},
      {FS_CLOSE},
      {FS_ACCEPT},
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"role\":\"observer\",\"protocol\":1}}"},
      {FS_EXPECT, "\"since_seq\":41"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":4,\"error\":{\"code\":-32003,\"message\":\"no run "
                "r1\",\"data\":{\"name\":\"no_such_run\"}}}"},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_OBSERVER, "t");
  const char *runs[] = {"r1"};
  tb_client_sub_opts_t o = {.runs = runs, .n_runs = 1};
  assert_int_equal(tb_client_subscribe(c, &o, NULL, NULL, NULL), 0);
  tb_smsg_t m;
  tb_client_err_t err;
  assert_int_equal(tb_client_next(c, 2000, &m, &err), TB_CLIENT_ECLOSED);
  assert_int_equal(tb_client_next(c, 0, &m, &err), TB_CLIENT_ECLOSED);
  assert_int_equal(tb_client_reconnect(c, &err), TB_PROTO_ENO_SUCH_RUN);
  assert_string_equal(err.name, "no_such_run");
  tb_client_free(c);
  finish();
}

static void test_server_gone_no_sigpipe(void **state) {
  /* The server closes; a large request then meets a dead socket. The process
   * must survive (SIGPIPE would kill it) and get an error code. */
  static const fs_step_t steps[] = {{FS_SEND, HELLO},
                                    {FS_EXPECT, "auth"},
                                    {FS_SEND, AUTH_OK("controller")},
                                    {FS_CLOSE},
                                    {FS_END}};
  signal(SIGPIPE, SIG_DFL);
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_CONTROLLER, "t");
  finish();
  size_t big = 4 << 20;
  char *job = malloc(big);
  assert_non_null(job);
  memset(job, ' ', big);
  memcpy(job, "{\"name\":\"", 9);
  memset(job + 9, 'x', big - 20);
  memcpy(job + big - 11, "\"}", 2);
  tb_client_err_t err;
  for (int i = 0; i < 3; i++) {
    int rc = tb_client_submit(c, job, big, NULL, &err);
    assert_true(rc == TB_CLIENT_ECLOSED || rc == -EPIPE || rc == -ECONNRESET);
  }
  free(job);
  tb_client_free(c);
}

static void test_garbage_and_protocol_error(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("observer")},
      {FS_EXPECT, "ping"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32700,\"message\":\"invalid "
                "JSON at byte 3\",\"data\":{\"name\":\"parse_error\"}}}"},
      {FS_SEND, "this is not json"},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_t *c = connect_as(TB_ROLE_OBSERVER, "t");
  tb_client_err_t err;
  assert_int_equal(tb_client_ping(c, NULL, &err), TB_PROTO_EPARSE);
  assert_string_equal(err.name, "parse_error");
  tb_smsg_t m;
  assert_int_equal(tb_client_next(c, 2000, &m, &err), TB_CLIENT_EBAD_REPLY);
  assert_int_equal(tb_client_fd(c), -1);
  tb_client_free(c);
  finish();
}

static void test_call_timeout_then_stale_answer(void **state) {
  static const fs_step_t steps[] = {
      {FS_SEND, HELLO},
      {FS_EXPECT, "auth"},
      {FS_SEND, AUTH_OK("controller")},
      {FS_EXPECT, "\"method\":\"set_lr\"|\"id\":2"},
      {FS_SLEEP, NULL, 250},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"ok\":true}}"},
      {FS_EXPECT, "\"method\":\"ping\"|\"id\":3"},
      {FS_SEND, "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"pong\":true,\"time\":1}}"},
      {FS_END}};
  assert_int_equal(fake_server_start(&fs, steps, false), 0);
  tb_client_opts_t o = {.addr = fs.addr, .role = TB_ROLE_CONTROLLER, .call_timeout_ms = 150};
  tb_client_t *c;
  assert_int_equal(tb_client_connect(&o, &c, NULL), 0);
  tb_client_err_t err;
  assert_int_equal(tb_client_set_lr(c, "r1", 0.1, NULL, &err), TB_CLIENT_ETIMEOUT);
  assert_false(tb_client_err_is_remote(err.code));
  double t = 0;
  struct timespec ts = {0, 200 * 1000000L};
  nanosleep(&ts, NULL);
  /* The late answer to set_lr is skipped; ping gets its own. */
  assert_int_equal(tb_client_ping(c, &t, &err), 0);
  assert_true(t == 1);
  tb_client_free(c);
  finish();
}

static void test_strerror(void **state) {
  assert_string_equal(tb_client_err_name(TB_PROTO_ENO_SUCH_RUN), "no_such_run");
  assert_string_equal(tb_client_err_name(TB_CLIENT_ECLOSED), "closed");
  assert_string_equal(tb_client_err_name(-ECONNREFUSED), "system_error");
  assert_string_equal(tb_client_strerror(-ECONNREFUSED), strerror(ECONNREFUSED));
  assert_string_equal(tb_client_strerror(TB_CLIENT_ETIMEOUT), "timed out waiting for the server");
  assert_true(tb_client_err_is_remote(TB_PROTO_ETIMEOUT));
  assert_false(tb_client_err_is_remote(TB_CLIENT_ETIMEOUT));
  tb_client_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handshake),
      cmocka_unit_test(test_observer_granted),
      cmocka_unit_test(test_bad_token),
      cmocka_unit_test(test_connect_refused_and_bad_address),
      cmocka_unit_test(test_not_a_server),
      cmocka_unit_test(test_events_queued_during_call),
      cmocka_unit_test(test_raw_lines),
      cmocka_unit_test(test_subscribe_every_option),
      cmocka_unit_test(test_control_calls),
      cmocka_unit_test(test_runs_and_history),
      cmocka_unit_test(test_reconnect_no_gap_no_duplicate),
      cmocka_unit_test(test_reconnect_before_first_event),
      cmocka_unit_test(test_lockstep_asked_again),
      cmocka_unit_test(test_state_dir_followed_and_token_tied),
      cmocka_unit_test(test_server_gone_no_sigpipe),
      cmocka_unit_test(test_garbage_and_protocol_error),
      cmocka_unit_test(test_call_timeout_then_stale_answer),
      cmocka_unit_test(test_strerror),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
