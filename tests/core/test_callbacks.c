/* The built-in callbacks, driven with scripted logs whose outcome is worked
 * out by hand from Keras 3's rules (the comments show the working), plus runs
 * through fit(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "trainbus/callbacks.h"
#include "trainbus/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The float32 a value becomes: Keras keeps the rate in a float32 variable. */
#define F(x) ((double)(float)(x))

/* A one-unit model: something whose rate and weights callbacks can change;
 * with the accuracy metric, so auto mode can tell accuracy's direction. */
static tb_model_t *tiny_m(double lr, unsigned metrics) {
  tb_model_t *m = tb_model_new(1, 1);
  assert_int_equal(tb_model_add_dense(m, 1, TB_ACT_LINEAR), 0);
  tb_compile_opts_t o = {.loss = TB_LOSS_MSE, .metrics = metrics};
  tb_optim_defaults(&o.optim, TB_OPT_SGD);
  o.optim.lr = lr;
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  return m;
}

static tb_model_t *tiny(double lr) {
  return tiny_m(lr, 0);
}

typedef struct script_s {
  tb_model_t *m;
  tb_ctx_t ctx;
  tb_callbacks_t list;
  double lr_after[16]; /* the rate after each epoch_end */
  int stopped_at;      /* first epoch whose epoch_end set stop_training, or -1 */
  int rc;              /* the first failing hook's code */
} script_t;

/* Fires train_begin, then for each epoch epoch_begin and epoch_end with logs
 * {key: values[e]} (NaN: the key is absent), then train_end. Before each
 * epoch_end the weights are set to e, so restored weights tell the epoch. */
static void run_script(script_t *s, tb_callback_t *cb, const char *key, const double *values,
                       int n) {
  tb_callbacks_init(&s->list);
  tb_callbacks_add(&s->list, cb);
  tb_ctx_init(&s->ctx);
  s->ctx.model = s->m;
  s->ctx.epochs = n;
  s->stopped_at = -1;
  s->rc = tb_callbacks_fire(&s->list, &s->ctx, TB_HOOK_TRAIN_BEGIN, -1, NULL);
  for (int e = 0; e < n && s->rc == 0; e++) {
    tb_logs_t logs;
    tb_logs_clear(&logs);
    if ((s->rc = tb_callbacks_fire(&s->list, &s->ctx, TB_HOOK_EPOCH_BEGIN, e, &logs)) != 0)
      break;
    if (!isnan(values[e]))
      tb_logs_set(&logs, key, values[e]);
    tb_logs_set(&logs, "loss", 1.0);
    float w[2] = {(float)e, (float)e};
    tb_model_set_params(s->m, w, 2);
    s->rc = tb_callbacks_fire(&s->list, &s->ctx, TB_HOOK_EPOCH_END, e, &logs);
    s->lr_after[e] = tb_model_lr(s->m);
    if (s->ctx.stop_training && s->stopped_at < 0)
      s->stopped_at = e;
    if (s->ctx.stop_training)
      break;
  }
  if (s->rc == 0)
    s->rc = tb_callbacks_fire(&s->list, &s->ctx, TB_HOOK_TRAIN_END, -1, NULL);
  tb_callbacks_release(&s->list);
}

/* The rates are float32 values: exactly the float32 chain Keras computes. */
static void assert_lrs(const script_t *s, const double *want, int n) {
  for (int e = 0; e < n; e++)
    if (s->lr_after[e] != F(want[e]))
      fail_msg("epoch %d: lr %.17g, want %.17g", e, s->lr_after[e], F(want[e]));
}

static int64_t state_i64(tb_callback_t *cb, const char *key) {
  tb_state_t st;
  int64_t v = -999;
  tb_state_init(&st);
  assert_int_equal(cb->save_state(cb, &st), 0);
  assert_int_equal(tb_state_get_i64(&st, key, &v), 0);
  tb_state_release(&st);
  return v;
}

/* ---- ReduceLROnPlateau ---------------------------------------------------- */

static void test_reduce_lr_basic(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_reduce_lr_opts_t o;
  tb_reduce_lr_defaults(&o);
  o.factor = 0.5;
  o.patience = 2;
  o.min_delta = 0;
  tb_callback_t *cb = tb_reduce_lr_new(&o, NULL);
  /* e0 best 1.0; e1 best .9; e2 wait 1; e3 wait 2 -> .5, wait 0; e4 wait 1;
   * e5 best .8; e6 wait 1; e7 wait 2 -> .25 */
  double v[] = {1.0, 0.9, 0.95, 0.96, 0.97, 0.8, 0.85, 0.86};
  run_script(&s, cb, "val_loss", v, 8);
  assert_int_equal(s.rc, 0);
  double want[] = {1, 1, 1, .5, .5, .5, .5, .25};
  assert_lrs(&s, want, 8);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static void test_reduce_lr_cooldown_min_lr(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_reduce_lr_opts_t o;
  tb_reduce_lr_defaults(&o);
  o.factor = 0.5;
  o.patience = 1;
  o.cooldown = 2;
  o.min_lr = 0.3;
  tb_callback_t *cb = tb_reduce_lr_new(&o, NULL);
  /* e0 best; e1 wait 1 -> .5, cooldown 2; e2 counter 1; e3 counter 0, wait 1
   * -> max(.25, .3) = .3, float32(.3) once assigned; e4 counter 1; e5 counter
   * 0, wait 1 but float32(.3) is not above float32(.3): nothing reduced, wait
   * not reset; e6 wait 2; e7 wait 3 */
  double v[] = {1, 1, 1, 1, 1, 1, 1, 1};
  run_script(&s, cb, "val_loss", v, 8);
  double want[] = {1, .5, .5, .3, .3, .3, .3, .3};
  assert_lrs(&s, want, 8);
  assert_int_equal(state_i64(cb, "wait"), 3);
  assert_int_equal(state_i64(cb, "cooldown_counter"), 0);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static void test_reduce_lr_mode_max_min_delta(void **state) {
  (void)state;
  script_t s = {.m = tiny_m(1.0, TB_METRIC_ACCURACY)};
  tb_reduce_lr_opts_t o;
  tb_reduce_lr_defaults(&o);
  o.monitor = "val_accuracy"; /* auto -> max: the compiled accuracy goes up */
  o.factor = 0.1;
  o.patience = 1;
  o.min_delta = 0.01;
  tb_callback_t *cb = tb_reduce_lr_new(&o, NULL);
  /* e0 best .5; e1 .505 - .01 > .5? no -> .1; e2 .52 - .01 > .5 -> best .52;
   * e3 .51 > .52? no -> .01 */
  double v[] = {0.5, 0.505, 0.52, 0.52};
  run_script(&s, cb, "val_accuracy", v, 4);
  double want[] = {1, .1, .1, F(.1) * .1};
  assert_lrs(&s, want, 4);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static void test_reduce_lr_errors(void **state) {
  (void)state;
  tb_reduce_lr_opts_t o;
  tb_err_t err = {{0}};
  tb_reduce_lr_defaults(&o);
  o.factor = 1.0;
  assert_null(tb_reduce_lr_new(&o, &err));
  assert_non_null(strstr(err.msg, "factor must be < 1.0"));
  /* A missing monitor changes nothing (Keras warns). */
  script_t s = {.m = tiny(1.0)};
  tb_reduce_lr_defaults(&o);
  o.patience = 0;
  tb_callback_t *cb = tb_reduce_lr_new(&o, NULL);
  double v[] = {NAN, NAN, NAN};
  run_script(&s, cb, "val_loss", v, 3);
  double want[] = {1, 1, 1};
  assert_lrs(&s, want, 3);
  tb_callback_free(cb);
  /* auto cannot guess a custom metric's direction */
  tb_reduce_lr_defaults(&o);
  o.monitor = "val_f1";
  cb = tb_reduce_lr_new(&o, NULL);
  double w[] = {0.5};
  run_script(&s, cb, "val_f1", w, 1);
  assert_int_equal(s.rc, TB_EINVAL);
  assert_non_null(strstr(s.ctx.err.msg, "set \"mode\" to \"max\" or \"min\""));
  tb_callback_free(cb);
  /* Keras 3 infers auto from the compiled metrics, not from the name: "lr",
   * "learning_rate", "mse" without an mse metric and "val_accuracy" without
   * accuracy all fail; "loss" and "val_loss" are always minimised. */
  const char *unknown[] = {"lr", "learning_rate", "mse", "val_accuracy", "val_val_loss"};
  for (int i = 0; i < 5; i++) {
    tb_reduce_lr_defaults(&o);
    o.monitor = unknown[i];
    cb = tb_reduce_lr_new(&o, NULL);
    run_script(&s, cb, unknown[i], w, 1);
    if (s.rc != TB_EINVAL || strstr(s.ctx.err.msg, unknown[i]) == NULL)
      fail_msg("monitor %s: rc %d, %s", unknown[i], s.rc, s.ctx.err.msg);
    tb_callback_free(cb);
  }
  tb_model_free(s.m);
}

/* ---- EarlyStopping -------------------------------------------------------- */

static void test_early_stopping_patience(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_early_stopping_opts_t o;
  tb_early_stopping_defaults(&o);
  o.patience = 2;
  tb_callback_t *cb = tb_early_stopping_new(&o, NULL);
  /* e0 best; e1 best; e2 wait 1; e3 wait 2 >= 2 -> stop */
  double v[] = {1.0, 0.9, 0.95, 0.96, 0.5};
  run_script(&s, cb, "val_loss", v, 5);
  assert_int_equal(s.stopped_at, 3);
  assert_int_equal(tb_early_stopping_stopped_epoch(cb), 3);
  assert_int_equal(tb_early_stopping_best_epoch(cb), 1);
  /* patience 0 never stops at epoch 0, stops at the first non-improvement */
  tb_callback_free(cb);
  o.patience = 0;
  cb = tb_early_stopping_new(&o, NULL);
  double w[] = {1.0, 1.0};
  run_script(&s, cb, "val_loss", w, 2);
  assert_int_equal(s.stopped_at, 1);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static void test_early_stopping_baseline(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_early_stopping_opts_t o;
  tb_early_stopping_defaults(&o);
  o.patience = 2;
  o.has_baseline = true;
  o.baseline = 0.5;
  tb_callback_t *cb = tb_early_stopping_new(&o, NULL);
  /* e0 wait 1, improvement, baseline not beaten: wait stays 1; e1 wait 2 ->
   * stop after patience epochs */
  double v[] = {1.0, 1.0, 1.0};
  run_script(&s, cb, "val_loss", v, 3);
  assert_int_equal(s.stopped_at, 1);
  tb_callback_free(cb);
  /* beating the baseline resets wait */
  cb = tb_early_stopping_new(&o, NULL);
  double w[] = {0.4, 0.3, 0.35, 0.36, 0.37};
  run_script(&s, cb, "val_loss", w, 5);
  assert_int_equal(s.stopped_at, 3);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static void test_early_stopping_restore_best(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_early_stopping_opts_t o;
  tb_early_stopping_defaults(&o);
  o.patience = 2;
  o.restore_best_weights = true;
  tb_callback_t *cb = tb_early_stopping_new(&o, NULL);
  /* best at e1; stops at e3; train_end restores epoch 1's weights */
  double v[] = {0.5, 0.3, 0.4, 0.45, 0.6};
  run_script(&s, cb, "val_loss", v, 5);
  assert_int_equal(s.stopped_at, 3);
  float p[2];
  tb_model_get_params(s.m, p, 2);
  assert_float_equal(p[0], 1.0, 0);
  tb_callback_free(cb);
  /* Keras 3 restores at train end even when it did not stop training */
  o.patience = 10;
  cb = tb_early_stopping_new(&o, NULL);
  double w[] = {0.5, 0.3, 0.4};
  run_script(&s, cb, "val_loss", w, 3);
  assert_int_equal(s.stopped_at, -1);
  tb_model_get_params(s.m, p, 2);
  assert_float_equal(p[0], 1.0, 0);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static void test_early_stopping_start_and_delta(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_early_stopping_opts_t o;
  tb_early_stopping_defaults(&o);
  o.patience = 1;
  o.start_from_epoch = 2;
  tb_callback_t *cb = tb_early_stopping_new(&o, NULL);
  /* e0, e1 ignored; e2 best 1.0; e3 wait 1 -> stop */
  double v[] = {0.1, 0.1, 1.0, 1.1, 1.2};
  run_script(&s, cb, "val_loss", v, 5);
  assert_int_equal(s.stopped_at, 3);
  tb_callback_free(cb);
  tb_early_stopping_defaults(&o);
  o.patience = 1;
  o.min_delta = -0.1; /* the absolute value is used */
  o.mode = TB_MODE_MIN;
  cb = tb_early_stopping_new(&o, NULL);
  /* e1: .95 is not below 1.0 by more than .1 -> wait 1 -> stop */
  double w[] = {1.0, 0.95, 0.85};
  run_script(&s, cb, "val_loss", w, 3);
  assert_int_equal(s.stopped_at, 1);
  tb_callback_free(cb);
  tb_model_free(s.m);
}

static int count_files(const char *dir, const char *prefix);

/* Keras compares in float32 (ops.less/ops.greater on Python floats make
 * float32 tensors): 1 - 1e-12 is not below 1.0, nor is 0.3 + 1e-9 above the
 * baseline 0.3. */
static void test_monitor_compares_in_float32(void **state) {
  (void)state;
  script_t s = {.m = tiny(1.0)};
  tb_reduce_lr_opts_t o;
  tb_reduce_lr_defaults(&o);
  o.factor = 0.5;
  o.patience = 1;
  o.min_delta = 0;
  tb_callback_t *cb = tb_reduce_lr_new(&o, NULL);
  double v[] = {1.0, 1.0 - 1e-12, 1.0 - 1e-12};
  run_script(&s, cb, "val_loss", v, 3);
  double want[] = {1, .5, .25};
  assert_lrs(&s, want, 3);
  tb_callback_free(cb);
  /* a baseline that is never beaten in float32: wait keeps growing */
  tb_early_stopping_opts_t e;
  tb_early_stopping_defaults(&e);
  e.mode = TB_MODE_MAX;
  e.monitor = "val_f1";
  e.patience = 2;
  e.has_baseline = true;
  e.baseline = 0.3;
  cb = tb_early_stopping_new(&e, NULL);
  double w[] = {0.3 + 1e-9, 0.3 + 2e-9, 0.3 + 3e-9, 0.3 + 4e-9};
  run_script(&s, cb, "val_f1", w, 4);
  /* e0: best, but the baseline is not beaten in float32: wait 1; e1: no
   * improvement in float32: wait 2 >= 2 -> stop (in double both beat it) */
  assert_int_equal(s.stopped_at, 1);
  tb_callback_free(cb);
  /* ModelCheckpoint's best too: 0.7 + 1e-12 does not improve on 0.7 */
  char dir[] = "/tmp/tb_mcpXXXXXX", pat[256];
  assert_non_null(mkdtemp(dir));
  snprintf(pat, sizeof(pat), "%s/w-{epoch}.tbw", dir);
  tb_model_checkpoint_opts_t c;
  tb_model_checkpoint_defaults(&c);
  c.filepath = pat;
  c.save_best_only = true;
  c.save_weights_only = true;
  c.mode = TB_MODE_MIN;
  c.has_initial_value_threshold = true;
  c.initial_value_threshold = 0.7;
  cb = tb_model_checkpoint_new(&c, NULL);
  double x[] = {0.7 - 1e-12, 0.6};
  run_script(&s, cb, "val_loss", x, 2);
  assert_int_equal(s.rc, 0);
  assert_int_equal(count_files(dir, "w-1"), 0);
  assert_int_equal(count_files(dir, "w-2"), 1);
  tb_callback_free(cb);
  tb_model_free(s.m);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

/* ---- LearningRateScheduler ------------------------------------------------ */

static void test_named_schedules(void **state) {
  (void)state;
  tb_schedule_t st = {.kind = TB_SCHED_STEP, .drop = 0.5, .every = 2};
  double want_step[] = {.1, .1, .05, .05, .025};
  for (int e = 0; e < 5; e++)
    assert_float_equal(tb_schedule_eval(&st, e, 0.1), want_step[e], 1e-15);
  /* Keras's schedule classes compute in float32 */
  tb_schedule_t ex = {.kind = TB_SCHED_EXPONENTIAL, .decay_rate = 0.5, .decay_epochs = 2};
  assert_float_equal(tb_schedule_eval(&ex, 1, 0.1), 0.1 * sqrt(0.5), 1e-8);
  assert_true(tb_schedule_eval(&ex, 1, 0.1) == F(tb_schedule_eval(&ex, 1, 0.1)));
  ex.staircase = true;
  assert_true(tb_schedule_eval(&ex, 3, 0.1) == F(0.1) * 0.5);
  tb_schedule_t co = {.kind = TB_SCHED_COSINE,
                      .initial_lr = 0.1,
                      .warmup_target = 1.0,
                      .warmup_epochs = 2,
                      .decay_epochs = 4};
  double want_cos[] = {0.1, 0.55,
                       1.0, 0.5 * (1 + cos(3.141592653589793 / 4)),
                       0.5, 0.5 * (1 + cos(3 * 3.141592653589793 / 4)),
                       0.0, 0.0};
  for (int e = 0; e < 8; e++)
    assert_float_equal(tb_schedule_eval(&co, e, 0.0), want_cos[e], 1e-7);
  /* Without a warmup target (Keras's None) the warmup is skipped, whatever
   * warmup_epochs says, and the decay starts from initial_lr. */
  tb_schedule_t nw = {
      .kind = TB_SCHED_COSINE, .initial_lr = 0.01, .decay_epochs = 10, .warmup_epochs = 2};
  assert_true(tb_schedule_eval(&nw, 0, 0.5) == F(0.01));
  assert_float_equal(tb_schedule_eval(&nw, 5, 0.5), 0.005, 1e-9);
  tb_callback_t *ok = tb_lr_schedule_new(&nw, 0, NULL);
  assert_non_null(ok);
  tb_callback_free(ok);
  /* A warmup may start from 0 (has_initial_lr) to a target of 0 too. */
  tb_schedule_t z = {.kind = TB_SCHED_COSINE,
                     .has_initial_lr = true,
                     .warmup_target = 0.1,
                     .warmup_epochs = 2,
                     .decay_epochs = 2};
  assert_true(tb_schedule_eval(&z, 0, 0.5) == 0.0);
  assert_true(tb_schedule_eval(&z, 1, 0.5) == F(0.1) * 0.5f);
  tb_schedule_t pw = {
      .kind = TB_SCHED_PIECEWISE, .n_boundaries = 2, .boundaries = {2, 4}, .values = {1, .5, .1}};
  double want_pw[] = {1, 1, 1, .5, .5, .1};
  for (int e = 0; e < 6; e++)
    assert_true(tb_schedule_eval(&pw, e, 9) == F(want_pw[e]));
  /* Keras sums indicator terms and accepts boundaries in any order: with
   * [2, 1], epoch 2 is both <= 2 and > 1. */
  pw.boundaries[1] = 1;
  double want_odd[] = {1, 1, F(1.0f + (float).1), .1};
  for (int e = 0; e < 4; e++)
    assert_true(tb_schedule_eval(&pw, e, 9) == F(want_odd[e]));
  tb_callback_t *cb = tb_lr_schedule_new(&pw, 0, NULL);
  assert_non_null(cb);
  tb_callback_free(cb);
  tb_err_t err = {{0}};
  pw.values[2] = NAN;
  assert_null(tb_lr_schedule_new(&pw, 0, &err));
  assert_non_null(strstr(err.msg, "values must be finite"));
}

static double halve_every_epoch(int epoch, double lr, void *user) {
  (void)user;
  return epoch == 0 ? lr : lr / 2;
}

static double bad_schedule(int epoch, double lr, void *user) {
  return epoch == 1 ? NAN : lr;
}

static void test_lr_scheduler_in_fit(void **state) {
  (void)state;
  tb_dataset_t *d;
  assert_int_equal(tb_gen_seed(&d), 0);
  tb_model_t *m = tiny(0.1);
  tb_callback_t *cb = tb_lr_scheduler_new(halve_every_epoch, NULL, 0, NULL);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, cb);
  tb_fit_opts_t o;
  tb_fit_opts_defaults(&o);
  o.epochs = 3;
  o.verbose = 0;
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, NULL), 0);
  /* the epoch logs record the rate each epoch trained with */
  const tb_history_t *h = tb_model_history(m);
  double lr;
  for (int e = 0; e < 3; e++) {
    assert_true(tb_logs_get(&h->logs[e], "lr", &lr));
    assert_true(lr == F(0.1) / (1 << e));
    assert_true(tb_logs_get(&h->logs[e], "learning_rate", &lr));
    assert_true(lr == F(0.1) / (1 << e));
  }
  tb_callback_free(cb);
  cb = tb_lr_scheduler_new(bad_schedule, NULL, 0, NULL);
  l.items[0] = cb;
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_fit(m, d, &o, &l, NULL, &err), TB_ERANGE);
  assert_non_null(strstr(err.msg, "LearningRateScheduler"));
  assert_non_null(strstr(err.msg, "epoch 1"));
  tb_callbacks_release(&l);
  tb_callback_free(cb);
  tb_model_free(m);
  tb_dataset_free(d);
}

/* ---- ModelCheckpoint ------------------------------------------------------ */

static void test_filepath_format(void **state) {
  (void)state;
  tb_logs_t logs;
  tb_logs_clear(&logs);
  tb_logs_set(&logs, "val_loss", 0.12345);
  char out[256];
  tb_err_t err = {{0}};
  assert_int_equal(
      tb_format_filepath("w-{epoch:02d}-{val_loss:.3f}.tbw", 3, 0, &logs, out, sizeof(out), &err),
      0);
  assert_string_equal(out, "w-03-0.123.tbw");
  assert_int_equal(tb_format_filepath("b{batch}-e{epoch}", 2, 7, &logs, out, sizeof(out), &err), 0);
  assert_string_equal(out, "b7-e2");
  assert_int_equal(tb_format_filepath("{val_acc}", 1, 0, &logs, out, sizeof(out), &err),
                   TB_ENOTFOUND);
  assert_non_null(strstr(err.msg, "Failed to format this callback filepath"));
  assert_non_null(strstr(err.msg, "'val_acc'"));
  assert_int_equal(tb_format_filepath("{epoch", 1, 0, &logs, out, sizeof(out), &err), TB_EINVAL);
  assert_non_null(strstr(err.msg, "expected '}' before end of string"));
  assert_int_equal(tb_format_filepath("{epoch:>5s}", 1, 0, &logs, out, sizeof(out), &err),
                   TB_EINVAL);
  assert_non_null(strstr(err.msg, "Unknown format code 's' for object of type 'int'"));
  /* Python's str.format: a bare float is its repr, specs are the whole
   * mini-language (tests/keras/test_pyformat.py compares with python3) */
  assert_int_equal(tb_format_filepath("m-{val_loss}-{val_loss:+.2f}-{epoch:_>4}-{val_loss:.1%}", 3,
                                      0, &logs, out, sizeof(out), &err),
                   0);
  assert_string_equal(out, "m-0.12345-+0.12-___3-12.3%");
  /* {batch} comes from the logs when they have one, as in Keras */
  tb_logs_set(&logs, "batch", 9);
  assert_int_equal(tb_format_filepath("b{batch}", 2, 7, &logs, out, sizeof(out), &err), 0);
  assert_string_equal(out, "b9.0");
}

static int count_files(const char *dir, const char *prefix) {
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "ls %s 2>/dev/null | grep -c '^%s'", dir, prefix);
  FILE *p = popen(cmd, "r");
  int n = 0;
  if (fscanf(p, "%d", &n) != 1)
    n = -1;
  pclose(p);
  return n;
}

static tb_model_t *blob_model(tb_dataset_t **d, double lr) {
  assert_int_equal(tb_gen_blobs(64, 2, 2, 3.0, 5, d), 0);
  tb_model_t *m = tb_model_new(2, 3);
  tb_model_add_dense(m, 4, TB_ACT_RELU);
  tb_model_add_dense(m, 2, TB_ACT_SOFTMAX);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  o.optim.lr = lr;
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  return m;
}

static void test_model_checkpoint_in_fit(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_mcpXXXXXX", pat[256];
  assert_non_null(mkdtemp(dir));
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 0.05);
  snprintf(pat, sizeof(pat), "%s/sub/w-{epoch:02d}.tbw", dir);
  tb_model_checkpoint_opts_t o;
  tb_model_checkpoint_defaults(&o);
  o.filepath = pat;
  o.save_weights_only = true;
  tb_callback_t *every = tb_model_checkpoint_new(&o, NULL);
  char bpat[256];
  snprintf(bpat, sizeof(bpat), "%s/b-{epoch}-{batch}.tbck", dir);
  o.name = "batches";
  o.filepath = bpat;
  o.save_weights_only = false;
  o.save_freq = 3; /* 2 batches per epoch: saves after batches 3 and 6 overall */
  tb_callback_t *batches = tb_model_checkpoint_new(&o, NULL);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, every);
  tb_callbacks_add(&l, batches);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.epochs = 3;
  f.verbose = 0;
  f.validation_split = 0.5; /* 32 train rows: 1 batch of 32 -> use 16 */
  f.batch_size = 16;
  assert_int_equal(tb_model_fit(m, d, &f, &l, NULL, NULL), 0);
  char sub[300];
  snprintf(sub, sizeof(sub), "%s/sub", dir);
  assert_int_equal(count_files(sub, "w-0"), 3); /* parent folder created */
  char path[300];
  snprintf(path, sizeof(path), "%s/b-2-1.tbck", dir); /* epoch 2 (1-based), batch 1 */
  assert_int_equal(access(path, F_OK), 0);
  snprintf(path, sizeof(path), "%s/b-3-2.tbck", dir);
  assert_int_equal(access(path, F_OK), 0);
  assert_int_equal(count_files(dir, "b-"), 2);
  tb_callback_free(every);
  tb_callback_free(batches);
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_model_checkpoint_best_only(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_mcpXXXXXX", pat[256];
  assert_non_null(mkdtemp(dir));
  snprintf(pat, sizeof(pat), "%s/w-{epoch}.tbw", dir);
  script_t s = {.m = tiny(1.0)};
  tb_model_checkpoint_opts_t o;
  tb_model_checkpoint_defaults(&o);
  o.filepath = pat;
  o.save_best_only = true;
  o.save_weights_only = true;
  tb_callback_t *cb = tb_model_checkpoint_new(&o, NULL);
  /* improvements at e0, e1, e3 -> files w-1, w-2, w-4 */
  double v[] = {1.0, 0.8, 0.9, 0.7, 0.7};
  run_script(&s, cb, "val_loss", v, 5);
  assert_int_equal(s.rc, 0);
  assert_int_equal(count_files(dir, "w-"), 3);
  char p[300];
  snprintf(p, sizeof(p), "%s/w-4.tbw", dir);
  assert_int_equal(access(p, F_OK), 0);
  tb_callback_free(cb);
  /* a placeholder missing from the logs fails the run with the key named */
  snprintf(pat, sizeof(pat), "%s/w-{val_acc:.2f}.tbw", dir);
  o.save_best_only = false;
  cb = tb_model_checkpoint_new(&o, NULL);
  run_script(&s, cb, "val_loss", v, 1);
  assert_int_equal(s.rc, TB_ENOTFOUND);
  assert_non_null(strstr(s.ctx.err.msg, "val_acc"));
  tb_callback_free(cb);
  tb_model_free(s.m);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

/* ---- CSVLogger ------------------------------------------------------------ */

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char *buf = calloc(1, 1 << 16);
  size_t n = fread(buf, 1, (1 << 16) - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static void test_csv_logger_late_validation(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_csvXXXXXX", path[256];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/log.csv", dir);
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 0.05);
  tb_csv_logger_opts_t o;
  tb_csv_logger_defaults(&o);
  o.filename = path;
  tb_callback_t *cb = tb_csv_logger_new(&o, NULL);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, cb);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.epochs = 3;
  f.verbose = 0;
  f.validation_split = 0.25;
  f.validation_freq = 2; /* validation appears at the second epoch */
  assert_int_equal(tb_model_fit(m, d, &f, &l, NULL, NULL), 0);
  char *csv = slurp(path);
  /* keys sorted at the first epoch, then every key's val_ twin (the rate's
   * too, as Keras does); lines end with the csv module's "\r\n" */
  const char *head = "epoch,accuracy,learning_rate,loss,lr,val_accuracy,val_learning_rate,"
                     "val_loss,val_lr\r\n0,";
  assert_true(strncmp(csv, head, strlen(head)) == 0);
  char *row0 = strchr(csv, '\n') + 1, *row1 = strchr(row0, '\n') + 1;
  char *row2 = strchr(row1, '\n') + 1;
  assert_non_null(strstr(row0, ",NA,NA,NA,NA\r\n1,"));
  /* epoch 1 validated: val_accuracy and val_loss are there, the rate's twins
   * never are */
  assert_true(strncmp(row1, "1,", 2) == 0);
  char *cells[9], *save = NULL, *row1c = strndup(row1, (size_t)(row2 - row1 - 2));
  int nc = 0;
  for (char *c = strtok_r(row1c, ",", &save); c != NULL && nc < 9; c = strtok_r(NULL, ",", &save))
    cells[nc++] = c;
  assert_int_equal(nc, 9);
  assert_string_not_equal(cells[5], "NA");
  assert_string_equal(cells[6], "NA");
  assert_string_not_equal(cells[7], "NA");
  assert_string_equal(cells[8], "NA");
  free(row1c);
  assert_true(strncmp(row2, "2,", 2) == 0);
  /* values are Python's repr of the float32 values: the rate is
   * float32(0.05) */
  assert_non_null(strstr(row0, ",0.05000000074505806,"));
  free(csv);

  /* append: no second header, rows continue; separator ';' */
  tb_callback_free(cb);
  o.append = true;
  o.separator = ';';
  cb = tb_csv_logger_new(&o, NULL);
  l.items[0] = cb;
  f.epochs = 1;
  assert_int_equal(tb_model_fit(m, d, &f, &l, NULL, NULL), 0);
  csv = slurp(path);
  int headers = 0, lines = 0;
  for (char *p = csv; (p = strstr(p, "epoch")) != NULL; p++)
    headers++;
  for (char *p = csv; *p; p++)
    lines += *p == '\n';
  assert_int_equal(headers, 1);
  assert_int_equal(lines, 5);
  assert_non_null(strstr(csv, "\n0;"));
  free(csv);
  tb_callback_free(cb);
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
  remove(path);
  rmdir(dir);
}

/* ---- TerminateOnNaN, Lambda ----------------------------------------------- */

static void test_terminate_on_nan(void **state) {
  (void)state;
  tb_callback_t *cb = tb_terminate_on_nan_new(false);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, cb);
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  tb_logs_t logs;
  tb_logs_clear(&logs);
  tb_logs_set(&logs, "loss", 0.5);
  assert_int_equal(tb_callbacks_fire(&l, &ctx, TB_HOOK_TRAIN_BATCH_END, 0, &logs), 0);
  assert_false(ctx.stop_training);
  tb_logs_set(&logs, "loss", INFINITY);
  assert_int_equal(tb_callbacks_fire(&l, &ctx, TB_HOOK_TRAIN_BATCH_END, 1, &logs), 0);
  assert_true(ctx.stop_training);
  /* test batches are not checked */
  tb_ctx_init(&ctx);
  tb_logs_set(&logs, "loss", NAN);
  assert_int_equal(tb_callbacks_fire(&l, &ctx, TB_HOOK_TEST_BATCH_END, 0, &logs), 0);
  assert_false(ctx.stop_training);
  tb_callback_free(cb);
  cb = tb_terminate_on_nan_new(true);
  l.items[0] = cb;
  assert_int_equal(tb_callbacks_fire(&l, &ctx, TB_HOOK_TRAIN_BATCH_END, 0, &logs), TB_ENONFINITE);
  tb_callback_free(cb);
  tb_callbacks_release(&l);
}

static int count_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  (*(int *)cb->user)++;
  return 0;
}

static void test_lambda(void **state) {
  (void)state;
  int n = 0;
  tb_callback_t tmpl = {.on_epoch_end = count_hook, .on_test_end = count_hook, .user = &n};
  tb_callback_t *cb = tb_lambda_new(&tmpl);
  assert_string_equal(cb->name, "LambdaCallback");
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, cb);
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  tb_callbacks_fire(&l, &ctx, TB_HOOK_EPOCH_END, 0, NULL);
  tb_callbacks_fire(&l, &ctx, TB_HOOK_TEST_END, -1, NULL);
  tb_callbacks_fire(&l, &ctx, TB_HOOK_EPOCH_BEGIN, 1, NULL);
  assert_int_equal(n, 2);
  tb_callback_free(cb);
  tb_callbacks_release(&l);
}

/* Two stateful callbacks with one name cannot be told apart in a checkpoint. */
static void test_duplicate_state_names(void **state) {
  (void)state;
  tb_dataset_t *d;
  tb_model_t *m = blob_model(&d, 0.05);
  tb_callback_t *a = tb_early_stopping_new(NULL, NULL), *b = tb_early_stopping_new(NULL, NULL);
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, a);
  tb_callbacks_add(&l, b);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.verbose = 0;
  tb_err_t err = {{0}};
  assert_int_equal(tb_model_fit(m, d, &f, &l, NULL, &err), TB_EEXISTS);
  assert_non_null(strstr(err.msg, "two callbacks named \"EarlyStopping\""));
  tb_callback_free(a);
  tb_callback_free(b);
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
}

int main(void) {
  tb_set_num_threads(1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reduce_lr_basic),
      cmocka_unit_test(test_reduce_lr_cooldown_min_lr),
      cmocka_unit_test(test_reduce_lr_mode_max_min_delta),
      cmocka_unit_test(test_reduce_lr_errors),
      cmocka_unit_test(test_early_stopping_patience),
      cmocka_unit_test(test_early_stopping_baseline),
      cmocka_unit_test(test_early_stopping_restore_best),
      cmocka_unit_test(test_early_stopping_start_and_delta),
      cmocka_unit_test(test_monitor_compares_in_float32),
      cmocka_unit_test(test_named_schedules),
      cmocka_unit_test(test_lr_scheduler_in_fit),
      cmocka_unit_test(test_filepath_format),
      cmocka_unit_test(test_model_checkpoint_in_fit),
      cmocka_unit_test(test_model_checkpoint_best_only),
      cmocka_unit_test(test_csv_logger_late_validation),
      cmocka_unit_test(test_terminate_on_nan),
      cmocka_unit_test(test_lambda),
      cmocka_unit_test(test_duplicate_state_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
