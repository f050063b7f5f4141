/* examples/embed.c, run as a program and driven remotely: a hand-written
 * training loop that embeds the server is observed (subscribe sees every
 * hook of its run, seq after seq) and steered (set_lr changes its rate from
 * the next batch on; stop ends its loop, Keras-style, and the program exits
 * 0 after telling its clients "bye shutdown"). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "srv_util.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMBED TB_BINARY_DIR "/examples/embed"

static int next_ev(tb_client_t *c, su_ev_t *e) {
  for (;;) {
    tb_smsg_t m;
    if (tb_client_next(c, 10000, &m, NULL) != 0)
      return -1;
    bool ev = m.kind == TB_SMSG_EVENT;
    bool bye = m.kind == TB_SMSG_BYE && strcmp(m.bye.reason, "shutdown") == 0;
    if (ev)
      su_ev_from(e, &m.event);
    tb_smsg_free(&m);
    if (ev)
      return 1;
    if (bye)
      return 0;
  }
}

static void test_embed_driven_remotely(void **state) {
  (void)state;
  char *dir = su_tmpdir(), log[600];
  snprintf(log, sizeof(log), "%s/embed.log", dir);
  char *const argv[] = {EMBED,      "--listen", "127.0.0.1:0", "--token", SU_TOKEN,
                        "--epochs", "100000",   "--step-ms",   "1",       NULL};
  su_proc_t p;
  su_spawn(&p, argv, log);
  tb_client_t *c = su_client(p.addr, TB_ROLE_CONTROLLER, "embed-test");

  /* everything of the run, from its first event */
  tb_client_sub_opts_t o = {
      .runs = (const char *const[]){"embed"}, .n_runs = 1, .has_since_seq = true, .since_seq = 1};
  assert_int_equal(tb_client_subscribe(c, &o, NULL, NULL, NULL), 0);
  su_ev_t e;
  int64_t last = 0;
  static const char *const first[] = {
      "state",           "train_begin",       "epoch_begin",     "train_batch_begin",
      "train_batch_end", "train_batch_begin", "train_batch_end", "epoch_end",
      "epoch_begin"};
  for (size_t i = 0; i < sizeof(first) / sizeof(first[0]); i++) {
    assert_int_equal(next_ev(c, &e), 1);
    assert_int_equal(e.seq, ++last);
    assert_string_equal(e.name, first[i]);
    if (strcmp(e.name, "epoch_end") == 0)
      assert_true(e.lr == 0.5);
  }
  assert_int_equal(tb_client_status(c, "embed", &(tb_run_info_t){0}, NULL), 0);

  /* set_lr: applied at the loop's next batch boundary, and the epoch that
   * follows trains with it */
  tb_client_applied_t ap;
  tb_client_err_t err;
  if (tb_client_set_lr(c, "embed", 0.05, &ap, &err) != 0)
    fail_msg("set_lr: %s", err.msg);
  assert_true(ap.old_lr == 0.5 && ap.lr == 0.05);
  assert_true(ap.has_applied_at && ap.batch >= 0 && ap.batch <= 1);
  bool saw_control = false;
  for (;;) {
    assert_int_equal(next_ev(c, &e), 1);
    assert_int_equal(e.seq, ++last);
    if (strcmp(e.name, "control") == 0) {
      assert_string_equal(e.action, "set_lr");
      assert_true(e.value == 0.05 && e.old == 0.5);
      assert_non_null(strstr(e.by, "embed-test"));
      assert_int_equal(e.epoch, ap.epoch);
      assert_int_equal(e.batch, ap.batch);
      saw_control = true;
    }
    if (saw_control && strcmp(e.name, "epoch_end") == 0) {
      assert_true(e.lr == (double)0.05f); /* the model's rate is a float32 */
      break;
    }
  }
  tb_run_info_t info;
  assert_int_equal(tb_client_status(c, "embed", &info, NULL), 0);
  assert_true(info.has_lr && info.lr == (double)0.05f);
  assert_string_equal(tb_run_state_name(info.state), "running");

  /* stop: the loop ends after the current batch; train_end; stopped; the
   * program exits 0 and its clients get bye */
  assert_int_equal(tb_client_stop(c, "embed", NULL, NULL), 0);
  bool saw_stop = false, saw_train_end = false, saw_stopped = false;
  char stopped_prev[16] = "";
  int64_t stop_epoch = -1;
  int r;
  while ((r = next_ev(c, &e)) == 1) {
    assert_int_equal(e.seq, ++last);
    if (strcmp(e.name, "control") == 0 && strcmp(e.action, "stop") == 0) {
      saw_stop = true;
      stop_epoch = e.epoch;
    }
    if (saw_stop && strcmp(e.name, "train_batch_begin") == 0 && e.epoch == stop_epoch)
      fail_msg("a batch of epoch %lld began after the stop", (long long)e.epoch);
    if (saw_stop && strcmp(e.name, "epoch_begin") == 0)
      fail_msg("an epoch began after the stop");
    if (strcmp(e.name, "train_end") == 0)
      saw_train_end = true;
    if (strcmp(e.name, "state") == 0 && strcmp(e.state, "stopped") == 0) {
      assert_true(saw_stop && saw_train_end);
      snprintf(stopped_prev, sizeof(stopped_prev), "%s", e.prev_state);
      saw_stopped = true;
    }
  }
  assert_int_equal(r, 0); /* bye shutdown */
  assert_true(saw_stopped);
  int rc = su_wait(&p, 10000);
  if (rc != 0)
    su_dump(&p);
  assert_int_equal(rc, 0);
  char *out = su_read(log, NULL);
  assert_non_null(out);
  assert_non_null(strstr(out, "embed: stopped after"));
  assert_non_null(strstr(out, "lr 0.05"));
  free(out);
  tb_client_free(c);
  su_rmdir(dir);
  free(dir);
  /* as for a daemon job: running -> stopping -> stopped */
  assert_string_equal(stopped_prev, "stopping");
}

/* Without a remote client the example trains to the end on its own. */
static void test_embed_alone(void **state) {
  (void)state;
  char *dir = su_tmpdir(), log[600];
  snprintf(log, sizeof(log), "%s/embed.log", dir);
  char *const argv[] = {EMBED, "--epochs", "60", NULL};
  su_proc_t p;
  su_spawn(&p, argv, log);
  assert_int_equal(su_wait(&p, 20000), 0);
  char *out = su_read(log, NULL);
  assert_non_null(strstr(out, "embed: token "));
  assert_non_null(strstr(out, "embed: finished after 60 epochs, lr 0.5"));
  float pr[4];
  const char *at = strstr(out, "predictions:");
  assert_non_null(at);
  assert_int_equal(sscanf(at, "predictions: %f %f %f %f", &pr[0], &pr[1], &pr[2], &pr[3]), 4);
  assert_true(pr[0] < 0.5f && pr[1] < 0.5f && pr[2] > 0.5f && pr[3] > 0.5f);
  free(out);
  su_rmdir(dir);
  free(dir);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_embed_driven_remotely),
      cmocka_unit_test(test_embed_alone),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
