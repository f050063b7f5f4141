/* The embeddable server in-process: tb_server_new on 127.0.0.1:0 without a
 * state directory, tb_server_start on its own thread, real sockets.
 *
 * Covers the hello, the auth rules (observer without a token on loopback,
 * controller only with the right token, nothing but ping and auth before
 * auth, the auth deadline), a non-loopback bind without a token refused, an
 * attached run whose hooks reach a subscriber exactly once each and in order,
 * and an orderly stop: every client gets "bye shutdown" and EOF, the loop
 * thread ends with no handle left open (what uv_loop_close() needs to return
 * 0), checked both white-box (through server/src/internal.h) and through
 * tb_server_free's return value, uv_loop_close's verdict. Run under ASan,
 * leak detection also proves every connection was freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "internal.h"
#include "srv_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int idle_timeout_ms; /* for the next start() */

static tb_server_t *start(int auth_timeout_ms) {
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.listen[0] = "127.0.0.1:0";
  o.n_listen = 1;
  o.token = SU_TOKEN;
  o.token_given = true;
  o.log_level = 0;
  if (auth_timeout_ms > 0)
    o.auth_timeout_ms = auth_timeout_ms;
  o.idle_timeout_ms = idle_timeout_ms;
  tb_server_t *s = NULL;
  tb_err_t err = {{0}};
  int r = tb_server_new(&o, &s, &err);
  if (r != 0)
    fail_msg("tb_server_new: %s", err.msg);
  assert_int_equal(tb_server_start(s), 0);
  return s;
}

static void count_handle(uv_handle_t *h, void *arg) {
  (void)h;
  (*(int *)arg)++;
}

/* Stops the server and checks the loop ended with every handle closed. */
static void finish(tb_server_t *s) {
  tb_server_stop(s);
  assert_int_equal(uv_thread_join(&s->loop_thread), 0);
  s->loop_thread_started = false; /* joined here, not again in tb_server_free */
  int open_handles = 0;
  uv_walk(&s->loop, count_handle, &open_handles);
  assert_int_equal(open_handles, 0);
  assert_int_equal(uv_loop_alive(&s->loop), 0);
  assert_int_equal(s->n_conns, 0);
  assert_int_equal(tb_server_free(s), 0); /* uv_loop_close's verdict */
}

static void send_req(su_conn_t *c, int id, const char *method, const char *params) {
  char buf[1024];
  snprintf(buf, sizeof(buf), "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"%s\"%s%s}\n", id, method,
           params ? ",\"params\":" : "", params ? params : "");
  su_sends(c, buf);
}

/* The next message must be the response to id with an error named name
 * (NULL: a result). Returns the result's role for auth replies. */
static void expect_reply(su_conn_t *c, int id, const char *error_name) {
  tb_smsg_t m;
  assert_int_equal(su_msg(c, 5000, &m), 1);
  if (error_name == NULL) {
    if (m.kind != TB_SMSG_RESULT)
      fail_msg("id %d: expected a result, got error %s (%s)", id, m.error.name, m.error.message);
  } else {
    assert_int_equal(m.kind, TB_SMSG_ERROR);
    assert_string_equal(m.error.name, error_name);
  }
  assert_int_equal(m.id.kind, TB_ID_INT);
  assert_int_equal(m.id.num, id);
  tb_smsg_free(&m);
}

static void expect_bye_then_eof(su_conn_t *c, const char *reason) {
  tb_smsg_t m;
  assert_int_equal(su_msg(c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_BYE);
  assert_string_equal(m.bye.reason, reason);
  tb_smsg_free(&m);
  assert_true(su_wait_eof(c, 5000));
}

static void test_hello_and_auth(void **state) {
  (void)state;
  tb_server_t *s = start(0);
  const char *addr = tb_server_address(s, 0);
  assert_non_null(addr);
  assert_true(strncmp(addr, "127.0.0.1:", 10) == 0);
  assert_true(atoi(addr + 10) > 0);
  assert_null(tb_server_address(s, 1));
  assert_string_equal(tb_server_token(s), SU_TOKEN);

  /* hello: protocol 1, no auth needed on loopback, the limits */
  su_conn_t c;
  su_connect(&c, addr, 0);
  tb_smsg_t m;
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_HELLO);
  assert_int_equal(m.hello.protocol, 1);
  assert_false(m.hello.auth_required);
  assert_int_equal(m.hello.auth_timeout_ms, 5000);
  assert_int_equal(m.hello.max_line, 65536);
  assert_true(strncmp(m.hello.server, "trainbus/", 9) == 0);
  tb_smsg_free(&m);
  /* before auth: ping works, anything else is unauthorized and the
   * connection stays usable */
  send_req(&c, 2, "ping", NULL);
  expect_reply(&c, 2, NULL);
  send_req(&c, 3, "status", NULL);
  expect_reply(&c, 3, "unauthorized");
  send_req(&c, 4, "runs", NULL);
  expect_reply(&c, 4, "unauthorized");
  /* observer without a token on loopback */
  send_req(&c, 5, "auth", "{\"role\":\"observer\",\"client\":\"unit\"}");
  expect_reply(&c, 5, NULL);
  send_req(&c, 6, "status", NULL);
  expect_reply(&c, 6, NULL);
  /* an observer may not control, and may not authenticate twice */
  send_req(&c, 7, "stop", "{\"run\":\"r1\"}");
  expect_reply(&c, 7, "forbidden");
  send_req(&c, 8, "auth", "{\"role\":\"controller\",\"token\":\"" SU_TOKEN "\"}");
  expect_reply(&c, 8, "invalid_state");
  send_req(&c, 9, "set_lr", "{\"run\":\"r1\",\"lr\":0.5}");
  expect_reply(&c, 9, "forbidden");
  su_close(&c);

  /* controller without a token: unauthorized, bye auth_failed, closed */
  su_connect(&c, addr, 0);
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  tb_smsg_free(&m);
  send_req(&c, 1, "auth", "{\"role\":\"controller\"}");
  expect_reply(&c, 1, "unauthorized");
  expect_bye_then_eof(&c, "auth_failed");
  su_close(&c);

  /* controller with a wrong token: the same */
  su_connect(&c, addr, 0);
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  tb_smsg_free(&m);
  send_req(&c, 1, "auth", "{\"role\":\"controller\",\"token\":\"nope\"}");
  expect_reply(&c, 1, "unauthorized");
  expect_bye_then_eof(&c, "auth_failed");
  su_close(&c);

  /* an observer that gives a wrong token is refused too */
  su_connect(&c, addr, 0);
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  tb_smsg_free(&m);
  send_req(&c, 1, "auth", "{\"role\":\"observer\",\"token\":\"nope\"}");
  expect_reply(&c, 1, "unauthorized");
  expect_bye_then_eof(&c, "auth_failed");
  su_close(&c);

  /* controller with the token: granted, and may call control methods (an
   * unknown run is then the only thing wrong) */
  su_connect(&c, addr, 0);
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  tb_smsg_free(&m);
  send_req(&c, 1, "auth", "{\"role\":\"controller\",\"token\":\"" SU_TOKEN "\",\"protocol\":1}");
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  cJSON *role = cJSON_GetObjectItemCaseSensitive(m.result, "role");
  assert_true(cJSON_IsString(role));
  assert_string_equal(role->valuestring, "controller");
  tb_smsg_free(&m);
  send_req(&c, 2, "stop", "{\"run\":\"r1\"}");
  expect_reply(&c, 2, "no_such_run");

  /* a second client stays connected through the stop */
  su_conn_t o;
  su_connect(&o, addr, 0);
  su_auth(&o, "observer", NULL);
  finish(s);
  expect_bye_then_eof(&c, "shutdown");
  expect_bye_then_eof(&o, "shutdown");
  su_close(&c);
  su_close(&o);
}

static void test_auth_timeout(void **state) {
  (void)state;
  tb_server_t *s = start(300);
  su_conn_t c;
  su_connect(&c, tb_server_address(s, 0), 0);
  tb_smsg_t m;
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_HELLO);
  assert_int_equal(m.hello.auth_timeout_ms, 300);
  tb_smsg_free(&m);
  uint64_t t0 = su_now_ms();
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_ERROR);
  assert_string_equal(m.error.name, "timeout");
  tb_smsg_free(&m);
  expect_bye_then_eof(&c, "auth_timeout");
  uint64_t waited = su_now_ms() - t0;
  assert_true(waited < 2000);
  su_close(&c);
  finish(s);
}

/* With an idle timeout, a client that neither subscribes nor sends is
 * disconnected; a subscriber is not. */
static void test_idle_timeout(void **state) {
  (void)state;
  idle_timeout_ms = 300;
  tb_server_t *s = start(0);
  idle_timeout_ms = 0;
  su_conn_t idle, sub;
  tb_smsg_t m;
  su_connect(&idle, tb_server_address(s, 0), 0);
  su_connect(&sub, tb_server_address(s, 0), 0);
  su_auth(&idle, "observer", NULL); /* reads the hello too */
  su_auth(&sub, "observer", NULL);
  su_sends(&sub, "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\",\"params\":{}}\n");
  assert_int_equal(su_msg(&sub, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  tb_smsg_free(&m);
  uint64_t t0 = su_now_ms();
  expect_bye_then_eof(&idle, "idle");
  assert_true(su_now_ms() - t0 < 3000);
  /* The subscriber is still there and answers. */
  su_sends(&sub, "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}\n");
  assert_int_equal(su_msg(&sub, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  tb_smsg_free(&m);
  su_close(&idle);
  su_close(&sub);
  finish(s);
}

static void test_non_loopback_needs_token(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.listen[0] = "0.0.0.0:0";
  o.n_listen = 1;
  o.log_level = 0;
  tb_server_t *s = (tb_server_t *)1;
  tb_err_t err = {{0}};
  assert_int_not_equal(tb_server_new(&o, &s, &err), 0);
  assert_null(s);
  assert_non_null(strstr(err.msg, "token"));
}

/* An attached run: the caller fires the hooks; a subscriber that joined
 * with since_seq 1 sees each exactly once, in order, seq 1, 2, 3, ... */
static void test_attached_run_events(void **state) {
  (void)state;
  tb_server_t *s = start(0);
  tb_run_t *run = NULL;
  tb_err_t err = {{0}};
  assert_int_equal(tb_server_attach(s, "unit-run", 1, &run, &err), 0);
  tb_run_t *dup = NULL;
  assert_int_not_equal(tb_server_attach(s, "unit-run", 1, &dup, &err), 0);

  su_conn_t c;
  su_connect(&c, tb_server_address(s, 0), 0);
  su_auth(&c, "observer", NULL);
  send_req(&c, 2, "subscribe", "{\"runs\":[\"unit-run\"],\"since_seq\":1}");
  expect_reply(&c, 2, NULL);

  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  assert_int_equal(tb_callbacks_add(&cbs, tb_run_callback(run)), 0);
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  ctx.steps = 3;
  tb_logs_t logs;
  tb_logs_clear(&logs);
  assert_int_equal(tb_callbacks_fire(&cbs, &ctx, TB_HOOK_TRAIN_BEGIN, -1, &logs), 0);
  assert_int_equal(tb_callbacks_fire(&cbs, &ctx, TB_HOOK_EPOCH_BEGIN, 0, &logs), 0);
  for (int b = 0; b < 3; b++) {
    assert_int_equal(tb_callbacks_fire(&cbs, &ctx, TB_HOOK_TRAIN_BATCH_BEGIN, b, &logs), 0);
    tb_logs_set(&logs, "loss", 1.0 / (b + 1));
    assert_int_equal(tb_callbacks_fire(&cbs, &ctx, TB_HOOK_TRAIN_BATCH_END, b, &logs), 0);
    assert_int_equal(tb_control_apply(tb_run_control(run), &ctx, NULL), 0);
  }
  assert_int_equal(tb_callbacks_fire(&cbs, &ctx, TB_HOOK_EPOCH_END, 0, &logs), 0);
  assert_int_equal(tb_callbacks_fire(&cbs, &ctx, TB_HOOK_TRAIN_END, -1, &logs), 0);
  tb_run_detach(run, false);
  tb_callbacks_release(&cbs);

  static const char *const want[] = {
      "state",           "train_begin",       "epoch_begin",     "train_batch_begin",
      "train_batch_end", "train_batch_begin", "train_batch_end", "train_batch_begin",
      "train_batch_end", "epoch_end",         "train_end",       "state"};
  int n = (int)(sizeof(want) / sizeof(want[0]));
  for (int i = 0; i < n; i++) {
    tb_smsg_t m;
    assert_int_equal(su_msg(&c, 5000, &m), 1);
    assert_int_equal(m.kind, TB_SMSG_EVENT);
    assert_string_equal(m.event.run, "unit-run");
    assert_int_equal(m.event.seq, i + 1);
    assert_string_equal(m.event.name, want[i]);
    if (i == 0)
      assert_string_equal(m.event.state, "running");
    if (i == n - 1) {
      assert_string_equal(m.event.state, "finished");
      assert_string_equal(m.event.prev_state, "running");
    }
    if (strcmp(want[i], "train_batch_end") == 0) {
      int b = (i - 4) / 2;
      assert_int_equal(m.event.batch, b);
      assert_int_equal(m.event.epoch, 0);
      assert_int_equal(m.event.n_logs, 1);
      assert_true(m.event.log_values[0] == 1.0 / (b + 1));
    }
    tb_smsg_free(&m);
  }
  /* nothing more */
  tb_smsg_t m;
  assert_int_equal(su_msg(&c, 200, &m), -1);
  send_req(&c, 3, "status", "{\"run\":\"unit-run\"}");
  assert_int_equal(su_msg(&c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  tb_run_info_t info;
  assert_int_equal(tb_run_info_decode(m.result, &info, NULL), 0);
  assert_int_equal(info.state, TB_RUN_FINISHED);
  assert_int_equal(info.last_seq, n);
  assert_int_equal(info.epochs, 1);
  tb_smsg_free(&m);
  finish(s);
  expect_bye_then_eof(&c, "shutdown");
  su_close(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hello_and_auth),      cmocka_unit_test(test_auth_timeout),
      cmocka_unit_test(test_idle_timeout),        cmocka_unit_test(test_non_loopback_needs_token),
      cmocka_unit_test(test_attached_run_events),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
