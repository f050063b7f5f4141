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
 * leak detection also proves every connection was freed.
 *
 * The bus under pressure, with the loop held still by the test (an async
 * handle whose callback waits): the trainers' queue is bounded without
 * blocking the trainer (batch events past the bound are dropped, counted and
 * told to subscribers as a "dropped" range before the next event, lifecycle
 * events never dropped), and a client whose socket is full gets its output
 * gathered into a few large buffers (one per drain step, not one per
 * event) that go out together when the socket drains. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "internal.h"
#include "srv_util.h"

#include <math.h>
#include <stdatomic.h>
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

/* ---- holding the loop still -------------------------------------------------- */

static uv_async_t holder;
static uv_sem_t held, released;
static atomic_bool holder_closing;

static void on_hold(uv_async_t *a) {
  if (atomic_load(&holder_closing)) {
    uv_close((uv_handle_t *)a, NULL);
    return;
  }
  uv_sem_post(&held);
  uv_sem_wait(&released);
}

/* Returns once the loop thread is waiting in on_hold: until release_loop(),
 * the test may read the loop's structures. */
static void hold_loop(void) {
  uv_async_send(&holder);
  uv_sem_wait(&held);
}

static void release_loop(void) {
  uv_sem_post(&released);
}

/* Starts a server with these options and the holder handle on its loop
 * (made before the loop thread runs, as uv_async_init must be). */
static tb_server_t *start_held(tb_server_opts_t *o) {
  o->listen[0] = "127.0.0.1:0";
  o->n_listen = 1;
  o->token = SU_TOKEN;
  o->token_given = true;
  o->log_level = 0;
  tb_server_t *s = NULL;
  tb_err_t err = {{0}};
  if (tb_server_new(o, &s, &err) != 0)
    fail_msg("tb_server_new: %s", err.msg);
  atomic_store(&holder_closing, false);
  assert_int_equal(uv_sem_init(&held, 0), 0);
  assert_int_equal(uv_sem_init(&released, 0), 0);
  assert_int_equal(uv_async_init(&s->loop, &holder, on_hold), 0);
  assert_int_equal(tb_server_start(s), 0);
  return s;
}

static void holder_close(void) {
  atomic_store(&holder_closing, true);
  uv_async_send(&holder);
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

/* Protected mode: a non-loopback listener without TLS is refused even with
 * a token, and the message says how to fix it; allow_plaintext lets it. */
static void test_non_loopback_needs_tls(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.listen[0] = "0.0.0.0:0";
  o.n_listen = 1;
  o.token = SU_TOKEN;
  o.token_given = true;
  o.log_level = 0;
  tb_server_t *s = (tb_server_t *)1;
  tb_err_t err = {{0}};
  assert_int_not_equal(tb_server_new(&o, &s, &err), 0);
  assert_null(s);
  assert_non_null(strstr(err.msg, "without TLS"));
  assert_non_null(strstr(err.msg, "--tls-cert FILE --tls-key FILE"));
  assert_non_null(strstr(err.msg, "--allow-plaintext"));
  o.allow_plaintext = true;
  assert_int_equal(tb_server_new(&o, &s, &err), 0);
  assert_non_null(s);
  assert_non_null(strstr(tb_server_address(s, 0), "0.0.0.0:"));
  tb_server_stop(s);
  assert_int_equal(tb_server_run(s), 0);
  assert_int_equal(tb_server_free(s), 0);
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

static void fire(tb_callbacks_t *cbs, tb_ctx_t *ctx, tb_hook_t hook, int index, double loss) {
  tb_logs_t logs;
  tb_logs_clear(&logs);
  if (index >= 0)
    tb_logs_set(&logs, "loss", loss);
  assert_int_equal(tb_callbacks_fire(cbs, ctx, hook, index, &logs), 0);
}

static void test_queue_bound_drops_batch_events_only(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.queue_bytes = 16 * 1024; /* some 70 batch records */
  tb_server_t *s = start_held(&o);
  tb_run_t *run = NULL;
  tb_err_t err = {{0}};
  assert_int_equal(tb_server_attach(s, "q-run", 1, &run, &err), 0);
  su_conn_t c;
  su_connect(&c, tb_server_address(s, 0), 0);
  su_auth(&c, "observer", NULL);
  send_req(&c, 2, "subscribe", "{\"runs\":[\"q-run\"],\"since_seq\":1}");
  expect_reply(&c, 2, NULL);
  tb_smsg_t m;
  assert_int_equal(su_msg(&c, 5000, &m), 1); /* state running: the loop is past it */
  assert_int_equal(m.kind, TB_SMSG_EVENT);
  assert_int_equal(m.event.seq, 1);
  tb_smsg_free(&m);

  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  assert_int_equal(tb_callbacks_add(&cbs, tb_run_callback(run)), 0);
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  ctx.steps = 500;
  /* The loop is held: the trainer fires a whole epoch. Were it blocked by a
   * full queue, this test would hang. */
  hold_loop();
  fire(&cbs, &ctx, TB_HOOK_TRAIN_BEGIN, -1, 0);
  fire(&cbs, &ctx, TB_HOOK_EPOCH_BEGIN, 0, 0);
  for (int b = 0; b < 500; b++) {
    fire(&cbs, &ctx, TB_HOOK_TRAIN_BATCH_BEGIN, b, 0);
    fire(&cbs, &ctx, TB_HOOK_TRAIN_BATCH_END, b, 1.0 / (b + 1));
  }
  fire(&cbs, &ctx, TB_HOOK_EPOCH_END, 0, 0);
  fire(&cbs, &ctx, TB_HOOK_TRAIN_END, -1, 0);
  pthread_mutex_lock(&s->q_mu);
  int64_t n_dropped = s->n_qdropped;
  size_t q_len = s->q_len;
  pthread_mutex_unlock(&s->q_mu);
  /* Most of the 1,000 batch events did not fit; the queue held to its bound
   * but for the lifecycle events (never dropped) and the gap record. */
  assert_true(n_dropped > 800 && n_dropped < 1000);
  assert_true(q_len <= o.queue_bytes + 4 * sizeof(tb_rec_t) + 4096);
  release_loop();
  tb_run_detach(run, false);
  tb_callbacks_release(&cbs);

  /* The subscriber sees every seq exactly once, as an event or inside the
   * dropped range told before the next event, in order. */
  int64_t last = 1006, next = 2, told = 0; /* 1 state, 2..1005 the epoch, 1006 state */
  int lifecycle = 0;
  bool finished = false;
  while (!finished) {
    assert_int_equal(su_msg(&c, 5000, &m), 1);
    if (m.kind == TB_SMSG_DROPPED) {
      assert_string_equal(m.dropped.run, "q-run");
      assert_int_equal(m.dropped.from_seq, next);
      assert_int_equal(m.dropped.to_seq - m.dropped.from_seq + 1, m.dropped.count);
      told += m.dropped.count;
      next = m.dropped.to_seq + 1;
    } else {
      assert_int_equal(m.kind, TB_SMSG_EVENT);
      assert_int_equal(m.event.seq, next);
      next++;
      const char *n = m.event.name;
      if (strcmp(n, "train_begin") == 0 || strcmp(n, "epoch_begin") == 0 ||
          strcmp(n, "epoch_end") == 0 || strcmp(n, "train_end") == 0)
        lifecycle++;
      finished = strcmp(n, "state") == 0 && strcmp(m.event.state, "finished") == 0;
    }
    tb_smsg_free(&m);
  }
  assert_int_equal(next, last + 1);
  assert_int_equal(lifecycle, 4);
  assert_int_equal(told, n_dropped);
  /* A replay from seq 1 afterwards covers the same: the retained events,
   * and the dropped seqs told as one range. */
  su_conn_t c2;
  su_connect(&c2, tb_server_address(s, 0), 0);
  su_auth(&c2, "observer", NULL);
  send_req(&c2, 2, "subscribe", "{\"runs\":[\"q-run\"],\"since_seq\":1}");
  expect_reply(&c2, 2, NULL);
  int64_t next2 = 1, told2 = 0;
  while (next2 <= last) {
    assert_int_equal(su_msg(&c2, 5000, &m), 1);
    if (m.kind == TB_SMSG_DROPPED) {
      assert_int_equal(m.dropped.from_seq, next2);
      told2 += m.dropped.count;
      next2 = m.dropped.to_seq + 1;
    } else {
      assert_int_equal(m.kind, TB_SMSG_EVENT);
      assert_int_equal(m.event.seq, next2);
      next2++;
    }
    tb_smsg_free(&m);
  }
  assert_int_equal(told2, n_dropped);
  su_close(&c2);
  hold_loop();
  assert_int_equal(run->n_qdropped, n_dropped);
  release_loop();
  holder_close();
  finish(s);
  expect_bye_then_eof(&c, "shutdown");
  su_close(&c);
}

static void test_output_gathers_while_a_write_is_in_flight(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  tb_server_t *s = start_held(&o);
  tb_run_t *run = NULL;
  tb_err_t err = {{0}};
  assert_int_equal(tb_server_attach(s, "g-run", 1, &run, &err), 0);
  su_conn_t c;
  su_connect(&c, tb_server_address(s, 0), 4096); /* a small window, not read below */
  su_auth(&c, "observer", NULL);
  send_req(&c, 2, "subscribe", "{\"runs\":[\"g-run\"]}");
  expect_reply(&c, 2, NULL);

  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  assert_int_equal(tb_callbacks_add(&cbs, tb_run_callback(run)), 0);
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  enum { N = 5000 }; /* ~1 MB of lines: more than the socket takes */
  ctx.steps = N;
  hold_loop();
  for (int b = 0; b < N; b++)
    fire(&cbs, &ctx, TB_HOOK_TRAIN_BATCH_END, b, 0.5);
  release_loop();
  /* Wait (holding the loop to look) until every event has been drained. */
  conn_t *sub = NULL;
  for (int tries = 0; tries < 500; tries++) {
    hold_loop();
    bool done = s->n_events >= N + 1;
    for (conn_t *k = s->conns; k != NULL; k = k->next)
      if (k->n_subs > 0)
        sub = k;
    if (done)
      break;
    release_loop();
    su_sleep_ms(10);
  }
  assert_non_null(sub);
  assert_true(s->n_events >= N + 1);
  /* The socket is full: libuv holds a write, and what came after it is
   * gathered, a drain step's lines in one buffer (not one per event, which
   * would be ~200 bytes each). */
  assert_int_equal(sub->inflight, 1);
  assert_true(sub->h.stream.write_queue_size > 0);
  assert_true(sub->n_out >= 1);
  assert_true(sub->n_out <= N / 1024 + 2);
  assert_true(sub->pend_bytes / (size_t)sub->n_out > 16 * 1024);
  release_loop();

  /* Reading now: every batch arrives once, in order, or inside a range told
   * as dropped (the backlog passed the drop threshold), told before the
   * run's next event (here the final state). */
  tb_run_detach(run, false);
  tb_callbacks_release(&cbs);
  int64_t want = 0;
  for (bool finished = false; !finished;) {
    tb_smsg_t m;
    assert_int_equal(su_msg(&c, 5000, &m), 1);
    if (m.kind == TB_SMSG_DROPPED) {
      assert_int_equal(m.dropped.from_seq, want + 2); /* seq 1 is the state "running" */
      want += m.dropped.count;
    } else {
      assert_int_equal(m.kind, TB_SMSG_EVENT);
      if (strcmp(m.event.name, "train_batch_end") == 0) {
        assert_int_equal(m.event.batch, want);
        want++;
      }
      finished = strcmp(m.event.name, "state") == 0 && strcmp(m.event.state, "finished") == 0;
    }
    tb_smsg_free(&m);
  }
  assert_int_equal(want, N);
  holder_close();
  finish(s);
  su_close(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hello_and_auth),
      cmocka_unit_test(test_auth_timeout),
      cmocka_unit_test(test_idle_timeout),
      cmocka_unit_test(test_non_loopback_needs_token),
      cmocka_unit_test(test_non_loopback_needs_tls),
      cmocka_unit_test(test_attached_run_events),
      cmocka_unit_test(test_queue_bound_drops_batch_events_only),
      cmocka_unit_test(test_output_gathers_while_a_write_is_in_flight),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
