/* A control a trainer's loop applies the moment the publisher asks its
 * control block for it is still answered (clients/lib/publisher.c,
 * on_control).
 *
 * The publisher's I/O thread writes a forwarded set_lr or checkpoint into
 * the loop's control block (tb_control_set_lr_ticket, _checkpoint_ticket)
 * and records which daemon request the block's ticket answers; the loop may
 * apply the request at its very next step, and its note must find that
 * record. The publisher once recorded the ticket after the request, so a
 * note in between answered id 0 and the daemon's request waited for the
 * run's end: a `trainbus set-lr` on a 4-rank run under load hung 60 s.
 *
 * The window is made as wide as it can be, deterministically: this program
 * links the publisher with --wrap=tb_control_set_lr_ticket and
 * --wrap=tb_control_checkpoint_ticket, and the wrappers, after the real
 * request, wait (up to 2 s) until the loop has applied it and its note has
 * reached the block's notify chain. With the record made under the lock the
 * note needs, the wrapper's wait sees the note at once and the answer
 * carries the request's id; without it, the note finds no record. The loop
 * is a real fit() with the publisher in its callbacks, publishing to the
 * real trainbusd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "srv_util.h"

#include "trainbus/control.h"
#include "trainbus/job.h"
#include "trainbus/model.h"
#include "trainbus/publisher.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int __real_tb_control_set_lr_ticket(tb_control_t *c, double lr, const char *by, uint64_t *ticket);
void __real_tb_control_checkpoint_ticket(tb_control_t *c, const char *by, uint64_t *ticket);
int __wrap_tb_control_set_lr_ticket(tb_control_t *c, double lr, const char *by, uint64_t *ticket);
void __wrap_tb_control_checkpoint_ticket(tb_control_t *c, const char *by, uint64_t *ticket);

static atomic_uint_fast64_t g_noted; /* the highest ticket a note carried */

static void note_seen(tb_control_t *c, const tb_control_note_t *n, void *user) {
  (void)c;
  (void)user;
  if ((n->action == TB_CONTROL_SET_LR || n->action == TB_CONTROL_CHECKPOINT) &&
      n->ticket > atomic_load(&g_noted))
    atomic_store(&g_noted, n->ticket);
}

/* Until the note for ticket has been seen, at most 2 s. */
static void wait_noted(uint64_t ticket) {
  for (int i = 0; i < 2000 && atomic_load(&g_noted) < ticket; i++)
    nanosleep(&(struct timespec){0, 1000000}, NULL);
}

int __wrap_tb_control_set_lr_ticket(tb_control_t *c, double lr, const char *by, uint64_t *ticket) {
  uint64_t t = 0;
  int r = __real_tb_control_set_lr_ticket(c, lr, by, &t);
  if (ticket != NULL)
    *ticket = t;
  if (r == 0)
    wait_noted(t);
  return r;
}

void __wrap_tb_control_checkpoint_ticket(tb_control_t *c, const char *by, uint64_t *ticket) {
  uint64_t t = 0;
  __real_tb_control_checkpoint_ticket(c, by, &t);
  if (ticket != NULL)
    *ticket = t;
  wait_noted(t);
}

typedef struct loop_s {
  tb_job_t *job;
  tb_callbacks_t cbs;
  tb_control_t control;
  tb_fit_opts_t fo;
  int rc;
} loop_t;

static void *loop_main(void *arg) {
  loop_t *l = arg;
  tb_err_t err = {{0}};
  l->rc = tb_model_fit(l->job->model, l->job->train, &l->fo, &l->cbs, NULL, &err);
  return NULL;
}

static void test_control_applied_at_once_is_answered(void **state) {
  (void)state;
  char *dir = su_tmpdir(), st[700], ck[700];
  snprintf(st, sizeof(st), "%s/state", dir);
  snprintf(ck, sizeof(ck), "%s/ck", dir);
  assert_int_equal(mkdir(ck, 0700), 0);
  su_proc_t d;
  su_daemon(&d, st, (const char *const[]){"--no-job", NULL});

  /* a loop of tiny steps: it reaches its next step boundary at once */
  static const char job_json[] =
      "{\"name\":\"race\",\"seed\":3,\"data\":{\"source\":\"spirals\",\"n_per_class\":500},"
      "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"
      "\"loss\":\"sparse_categorical_crossentropy\",\"optimizer\":{\"name\":\"sgd\","
      "\"learning_rate\":0.01},\"epochs\":1000000,\"batch_size\":4}";
  loop_t l;
  memset(&l, 0, sizeof(l));
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_parse(job_json, strlen(job_json), "race", NULL, &l.job, &err), 0);
  assert_int_equal(tb_job_prepare(l.job, &err), 0);
  assert_int_equal(tb_control_init(&l.control), 0);
  tb_control_set_notify(&l.control, note_seen, NULL); /* the publisher chains it */
  tb_publisher_opts_t po = {.addr = d.addr,
                            .token = SU_TOKEN,
                            .client_name = "race-test",
                            .name = "race",
                            .control = &l.control,
                            .checkpoints = true};
  tb_publisher_t *pub = NULL;
  tb_client_err_t cerr;
  if (tb_publisher_new(&po, &pub, &cerr) != 0)
    fail_msg("publisher: %s", cerr.msg);
  tb_callbacks_init(&l.cbs);
  assert_int_equal(tb_callbacks_add(&l.cbs, tb_publisher_callback(pub)), 0);
  l.fo = l.job->fit;
  l.fo.verbose = 0;
  l.fo.control = &l.control;
  l.fo.checkpoint_dir = ck;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, loop_main, &l), 0);

  tb_client_t *c = su_client(d.addr, TB_ROLE_CONTROLLER, "race-steer");
  const char *run = tb_publisher_run(pub);
  for (int i = 0; i < 10; i++) {
    tb_client_applied_t ap;
    tb_client_err_t e;
    double lr = 0.001 * (i + 1);
    if (i % 5 == 4) {
      if (tb_client_checkpoint(c, run, &ap, &e) != 0) {
        su_dump(&d);
        fail_msg("checkpoint %d: %s", i, e.msg);
      }
      assert_non_null(strstr(ap.path, ck));
      continue;
    }
    if (tb_client_set_lr(c, run, lr, &ap, &e) != 0) {
      su_dump(&d);
      fail_msg("set_lr %d (%g): %s", i, lr, e.msg);
    }
    assert_true(fabs(ap.lr - lr) <= 1e-6 * lr);
  }
  assert_int_equal(tb_client_stop(c, run, NULL, NULL), 0);
  pthread_join(th, NULL);
  assert_int_equal(l.rc, 0);
  assert_int_equal(tb_publisher_finish(pub, TB_RUN_STOPPED, NULL, 10000, NULL), 0);
  tb_publisher_free(pub);
  tb_client_free(c);
  tb_callbacks_release(&l.cbs);
  tb_control_destroy(&l.control);
  tb_job_free(l.job);
  su_kill(&d);
  su_rmdir(dir); /* the run's event log: hundreds of MB of tiny steps */
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_control_applied_at_once_is_answered),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
