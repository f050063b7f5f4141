/* Checkpoints and exact resume: a run interrupted at an epoch end, mid-epoch,
 * or by SIGKILL, then resumed, ends with bitwise the same weights, history
 * and CSV log as the uninterrupted run; bad checkpoints are refused and
 * nothing is overwritten. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "internal.h"
#include "trainbus/callbacks.h"
#include "trainbus/model.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { EPOCHS = 6 };

typedef struct run_s {
  tb_model_t *m;
  tb_dataset_t *d;
  tb_callback_t *es, *rl, *csv, *crash;
  tb_callbacks_t list;
  tb_fit_opts_t f;
  char csv_path[256], ckpt_dir[256];
  int crash_epoch, crash_batch; /* abort fit there (a crash), or -1 */
} run_t;

static int crash_hook(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  run_t *r = cb->user;
  if (ctx->epoch == r->crash_epoch && batch == r->crash_batch)
    return TB_EIO;
  return 0;
}

/* The same job every time: dropout, Adam, ReduceLROnPlateau, EarlyStopping
 * and a CSV log, so every kind of state matters. */
static void setup(run_t *r, const char *dir, int every) {
  memset(r, 0, sizeof(*r));
  assert_int_equal(tb_gen_blobs(120, 3, 4, 2.5, 5, &r->d), 0);
  r->m = tb_model_new(4, 77);
  tb_model_add_dense(r->m, 16, TB_ACT_RELU);
  tb_model_add_dropout(r->m, 0.25f);
  tb_model_add_dense(r->m, 3, TB_ACT_SOFTMAX);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  o.optim.lr = 0.02;
  assert_int_equal(tb_model_compile(r->m, &o, NULL), 0);
  tb_early_stopping_opts_t eo;
  tb_early_stopping_defaults(&eo);
  eo.patience = 50;
  eo.restore_best_weights = true;
  r->es = tb_early_stopping_new(&eo, NULL);
  tb_reduce_lr_opts_t ro;
  tb_reduce_lr_defaults(&ro);
  ro.patience = 1;
  ro.factor = 0.5;
  ro.min_delta = 0.05;
  r->rl = tb_reduce_lr_new(&ro, NULL);
  snprintf(r->csv_path, sizeof(r->csv_path), "%s/log.csv", dir);
  snprintf(r->ckpt_dir, sizeof(r->ckpt_dir), "%s/ckpt", dir);
  mkdir(r->ckpt_dir, 0755);
  tb_csv_logger_opts_t co;
  tb_csv_logger_defaults(&co);
  co.filename = r->csv_path;
  r->csv = tb_csv_logger_new(&co, NULL);
  r->crash_epoch = r->crash_batch = -1;
  tb_callback_t tmpl = {.name = "crash", .on_train_batch_end = crash_hook, .user = r};
  r->crash = tb_lambda_new(&tmpl);
  tb_callbacks_init(&r->list);
  tb_callbacks_add(&r->list, r->es);
  tb_callbacks_add(&r->list, r->rl);
  tb_callbacks_add(&r->list, r->csv);
  tb_callbacks_add(&r->list, r->crash);
  tb_fit_opts_defaults(&r->f);
  r->f.epochs = EPOCHS;
  r->f.batch_size = 16;
  r->f.validation_split = 0.25;
  r->f.verbose = 0;
  r->f.checkpoint_dir = r->ckpt_dir;
  r->f.checkpoint_every = every;
  r->f.job_id = "job-1";
}

static void teardown(run_t *r) {
  tb_callbacks_release(&r->list);
  tb_callback_free(r->es);
  tb_callback_free(r->rl);
  tb_callback_free(r->csv);
  tb_callback_free(r->crash);
  tb_model_free(r->m);
  tb_dataset_free(r->d);
}

typedef struct outcome_s {
  float params[4 * 16 + 16 + 16 * 3 + 3];
  tb_logs_t history[EPOCHS];
  int n_history;
  char csv[8192];
  long iterations;
} outcome_t;

static void capture(run_t *r, outcome_t *o) {
  memset(o, 0, sizeof(*o));
  long n = tb_model_n_params(r->m);
  assert_int_equal(n, (long)(sizeof(o->params) / sizeof(float)));
  assert_int_equal(tb_model_get_params(r->m, o->params, n), 0);
  const tb_history_t *h = tb_model_history(r->m);
  o->n_history = h->n;
  memcpy(o->history, h->logs, (size_t)h->n * sizeof(tb_logs_t));
  FILE *f = fopen(r->csv_path, "r");
  assert_non_null(f);
  size_t got = fread(o->csv, 1, sizeof(o->csv) - 1, f);
  o->csv[got] = '\0';
  fclose(f);
  o->iterations = tb_model_iterations(r->m);
}

static void assert_same(const outcome_t *a, const outcome_t *b) {
  assert_memory_equal(a->params, b->params, sizeof(a->params));
  assert_int_equal(a->n_history, b->n_history);
  assert_memory_equal(a->history, b->history, (size_t)a->n_history * sizeof(tb_logs_t));
  assert_string_equal(a->csv, b->csv);
  assert_int_equal(a->iterations, b->iterations);
}

static void baseline(const char *dir, int every, outcome_t *out) {
  run_t r;
  setup(&r, dir, every);
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err), 0);
  capture(&r, out);
  teardown(&r);
}

/* Crashes at (epoch, batch), then resumes in a fresh process state. */
static void crash_and_resume(const char *dir, int every, int epoch, int batch, outcome_t *out) {
  run_t r;
  setup(&r, dir, every);
  remove(r.csv_path); /* a fresh run: no log from an earlier one */
  r.crash_epoch = epoch;
  r.crash_batch = batch;
  assert_int_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, NULL), TB_EIO);
  teardown(&r);

  setup(&r, dir, every);
  char latest[300];
  snprintf(latest, sizeof(latest), "%s/%s", r.ckpt_dir, TB_CHECKPOINT_LATEST);
  r.f.resume_from = latest;
  tb_err_t err = {{0}};
  if (tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err) != 0)
    fail_msg("resume failed: %s", err.msg);
  capture(&r, out);
  teardown(&r);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void rm_rf(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_resume_from_epoch_end(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_resumeXXXXXX";
  assert_non_null(mkdtemp(dir));
  outcome_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
  baseline(dir, 0, a);
  assert_int_equal(a->n_history, EPOCHS);
  /* the plateau rule did cut the rate, so its state matters */
  double lr_first, lr_last;
  tb_logs_get(&a->history[0], "lr", &lr_first);
  tb_logs_get(&a->history[EPOCHS - 1], "lr", &lr_last);
  assert_true(lr_last < lr_first);
  /* crash in epoch 3: the last checkpoint is epoch 2's end */
  crash_and_resume(dir, 0, 3, 2, b);
  assert_same(a, b);
  free(a);
  free(b);
  rm_rf(dir);
}

static void test_resume_mid_epoch(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_resumeXXXXXX";
  assert_non_null(mkdtemp(dir));
  outcome_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
  baseline(dir, 2, a);
  /* 90 train rows / 16 = 6 batches an epoch; checkpoints every 2 steps: the
   * crash at epoch 2 batch 4 resumes from after batch 3 of that epoch */
  crash_and_resume(dir, 2, 2, 4, b);
  assert_same(a, b);
  /* before the first epoch ends: the CSV log does not exist yet */
  crash_and_resume(dir, 2, 0, 3, b);
  assert_same(a, b);
  /* and from after the last batch of an epoch, before its validation */
  crash_and_resume(dir, 3, 3, 0, b); /* 18 steps: checkpoint after epoch 2 batch 5 */
  baseline(dir, 3, a);
  assert_same(a, b);
  free(a);
  free(b);
  rm_rf(dir);
}

/* Written with 2 threads, resumed with 2 threads: bitwise the uninterrupted
 * 2-thread run (issue 17), from an epoch end and from mid-epoch. */
static void test_resume_two_threads(void **state) {
  (void)state;
  tb_set_num_threads(2);
  char dir[] = "/tmp/tb_resumeXXXXXX";
  assert_non_null(mkdtemp(dir));
  outcome_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b)), *one = malloc(sizeof(*one));
  baseline(dir, 2, a);
  crash_and_resume(dir, 2, 2, 4, b);
  assert_same(a, b);
  baseline(dir, 0, a);
  crash_and_resume(dir, 0, 3, 2, b);
  assert_same(a, b);
  /* the threads did split the batches: one thread adds in another order */
  tb_set_num_threads(1);
  baseline(dir, 0, one);
  assert_true(memcmp(one->params, a->params, sizeof(a->params)) != 0);
  free(a);
  free(b);
  free(one);
  rm_rf(dir);
}

static void test_resume_after_sigkill(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_resumeXXXXXX";
  assert_non_null(mkdtemp(dir));
  outcome_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
  baseline(dir, 1, a);
  char latest[300];
  snprintf(latest, sizeof(latest), "%s/ckpt/%s", dir, TB_CHECKPOINT_LATEST);
  /* Kill the child at several points; each time resume and compare. */
  for (int trial = 0; trial < 3; trial++) {
    unlink(latest);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      run_t r;
      setup(&r, dir, 1);
      for (;;) { /* train the same job over and over until killed */
        unlink(latest);
        tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, NULL);
        teardown(&r);
        setup(&r, dir, 1);
      }
    }
    /* wait for a checkpoint, then a little more, then SIGKILL */
    for (int i = 0; i < 2000 && access(latest, F_OK) != 0; i++)
      sleep_ms(1);
    sleep_ms(trial * 7 % 5);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    if (access(latest, F_OK) != 0)
      continue; /* killed between runs: nothing to resume */
    run_t r;
    setup(&r, dir, 1);
    r.f.resume_from = latest;
    tb_err_t err = {{0}};
    if (tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err) != 0)
      fail_msg("resume after SIGKILL failed: %s", err.msg);
    capture(&r, b);
    teardown(&r);
    assert_same(a, b);
  }
  free(a);
  free(b);
  rm_rf(dir);
}

static void test_bad_checkpoints_refused(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_resumeXXXXXX", latest[300];
  assert_non_null(mkdtemp(dir));
  outcome_t *a = malloc(sizeof(*a));
  baseline(dir, 0, a);
  snprintf(latest, sizeof(latest), "%s/ckpt/%s", dir, TB_CHECKPOINT_LATEST);
  struct stat before, after;
  assert_int_equal(stat(latest, &before), 0);

  /* another job */
  run_t r;
  setup(&r, dir, 0);
  r.f.resume_from = latest;
  r.f.job_id = "job-2";
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err), TB_ESTATE);
  assert_non_null(strstr(err.msg, "written by another job"));
  teardown(&r);

  /* another model shape */
  setup(&r, dir, 0);
  tb_model_free(r.m);
  r.m = tb_model_new(4, 77);
  tb_model_add_dense(r.m, 8, TB_ACT_RELU);
  tb_model_add_dropout(r.m, 0.25f);
  tb_model_add_dense(r.m, 3, TB_ACT_SOFTMAX);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  tb_model_compile(r.m, &o, NULL);
  r.f.resume_from = latest;
  assert_int_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err), TB_ESHAPE);
  assert_non_null(strstr(err.msg, "layer 0 is 4 -> 16 in the checkpoint but the model's dense"));
  teardown(&r);

  /* a corrupt file */
  FILE *f = fopen(latest, "r+b");
  fseek(f, 100, SEEK_SET);
  int c = fgetc(f);
  fseek(f, 100, SEEK_SET);
  fputc(c ^ 0x40, f);
  fclose(f);
  assert_int_equal(stat(latest, &before), 0);
  setup(&r, dir, 0);
  r.f.resume_from = latest;
  assert_int_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err), TB_ECHECKSUM);
  assert_non_null(strstr(err.msg, "checksum mismatch"));
  teardown(&r);
  /* a truncated file */
  assert_int_equal(truncate(latest, 50), 0);
  setup(&r, dir, 0);
  r.f.resume_from = latest;
  assert_int_not_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err), 0);
  teardown(&r);
  /* nothing was overwritten by the refused runs */
  assert_int_equal(stat(latest, &after), 0);
  assert_int_equal(after.st_size, 50);
  assert_int_equal(after.st_mtime, before.st_mtime);
  free(a);
  rm_rf(dir);
}

/* BackupAndRestore: the Keras way to resume, from inside the callback list. */
static void test_backup_and_restore(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_resumeXXXXXX", bdir[300], latest[400];
  assert_non_null(mkdtemp(dir));
  snprintf(bdir, sizeof(bdir), "%s/backup", dir);
  snprintf(latest, sizeof(latest), "%s/%s", bdir, TB_CHECKPOINT_LATEST);
  outcome_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
  tb_backup_opts_t bo;
  tb_backup_defaults(&bo);
  bo.backup_dir = bdir;
  bo.save_freq = 4;
  for (int pass = 0; pass < 2; pass++) {
    run_t r;
    setup(&r, dir, 0);
    r.f.checkpoint_dir = NULL;
    tb_callback_t *bk = tb_backup_new(&bo, NULL);
    tb_callbacks_add(&r.list, bk);
    if (pass == 1) {
      r.crash_epoch = 4;
      r.crash_batch = 1;
      assert_int_equal(tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, NULL), TB_EIO);
      assert_int_equal(access(latest, F_OK), 0); /* kept: training did not end */
      teardown(&r);
      tb_callback_free(bk);
      setup(&r, dir, 0);
      r.f.checkpoint_dir = NULL;
      bk = tb_backup_new(&bo, NULL);
      tb_callbacks_add(&r.list, bk);
    }
    tb_err_t err = {{0}};
    if (tb_model_fit(r.m, r.d, &r.f, &r.list, NULL, &err) != 0)
      fail_msg("fit: %s", err.msg);
    capture(&r, pass == 0 ? a : b);
    assert_int_not_equal(access(latest, F_OK), 0); /* deleted when training ends */
    teardown(&r);
    tb_callback_free(bk);
  }
  assert_same(a, b);
  free(a);
  free(b);
  rm_rf(dir);
}

int main(void) {
  /* Split every batch of 16 rows or more, however small the model (by
   * default a step of little work stays on one thread). */
  tb__threading_force = 0;
  tb_set_num_threads(1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resume_from_epoch_end),   cmocka_unit_test(test_resume_mid_epoch),
      cmocka_unit_test(test_resume_two_threads),      cmocka_unit_test(test_resume_after_sigkill),
      cmocka_unit_test(test_bad_checkpoints_refused), cmocka_unit_test(test_backup_and_restore),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
