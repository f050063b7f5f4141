/* Training on several threads (issue 17): the worker pool, concurrent BLAS
 * calls, bitwise determinism for a thread count, agreement within rounding
 * across thread counts, and waits that do not spin. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "internal.h"
#include "pool.h"
#include "trainbus/callbacks.h"
#include "trainbus/model.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- the pool ------------------------------------------------------------ */

typedef struct counts_s {
  tb__pool_t *pool;
  int n;
  long slot[8];
  _Atomic long bad;
  int sleeper; /* a lane that sleeps before the barrier, or -1 */
} counts_t;

/* Every lane bumps its slot, waits at the barrier, and checks that every
 * other lane's bump is visible; then a second round. */
static void count_task(void *arg, int lane) {
  counts_t *c = arg;
  for (int round = 0; round < 2; round++) {
    long want = c->slot[lane] + 1;
    if (lane == c->sleeper && round == 0)
      sleep_ms(2); /* past the spin: the others sleep in the barrier */
    c->slot[lane] = want;
    tb__pool_barrier(c->pool);
    for (int i = 0; i < c->n; i++)
      if (c->slot[i] != want)
        atomic_fetch_add(&c->bad, 1);
    tb__pool_barrier(c->pool);
  }
}

static void test_pool(void **state) {
  (void)state;
  for (int n = 1; n <= 4; n++) {
    counts_t c = {.n = n, .sleeper = -1};
    assert_int_equal(tb__pool_new(n, &c.pool), 0);
    assert_int_equal(tb__pool_lanes(c.pool), n);
    for (int run = 0; run < 2000; run++) {
      c.sleeper = run % 500 == 7 ? run % n : -1;
      tb__pool_run(c.pool, count_task, &c);
      if (run % 700 == 3)
        sleep_ms(1); /* the workers fall asleep between runs */
    }
    for (int i = 0; i < n; i++)
      assert_int_equal(c.slot[i], 4000);
    assert_int_equal(atomic_load(&c.bad), 0);
    tb__pool_free(c.pool);
  }
}

/* An idle pool sleeps: its threads burn no CPU between runs. */
static void test_pool_idle_sleeps(void **state) {
  (void)state;
  counts_t c = {.n = 3, .sleeper = -1};
  assert_int_equal(tb__pool_new(3, &c.pool), 0);
  tb__pool_run(c.pool, count_task, &c);
  double t0 = cpu_s();
  sleep_ms(300);
  double used = cpu_s() - t0;
  /* two workers spinning would take 600 ms; a bounded spin takes 0.1 ms */
  assert_true(used < 0.03);
  tb__pool_free(c.pool);
}

/* ---- BLAS from several threads at once --------------------------------- */

enum { SG_SHAPES = 4, SG_THREADS = 3, SG_ROUNDS = 60 };
static const int sg_shape[SG_SHAPES][5] = {
    /* ta, tb, m, n, k: a packed (buffered) product of each kind, and small
     * ones (OpenBLAS's small-matrix kernels on AVX-512 machines) */
    {0, 0, 64, 256, 784},
    {1, 0, 784, 256, 64},
    {0, 1, 64, 128, 10},
    {0, 0, 9, 10, 16}};

typedef struct sg_s {
  const float *A, *B;
  float *C[SG_SHAPES];
  _Atomic int go;
} sg_t;

static void sg_one(const float *A, const float *B, float *C, int s) {
  const int *p = sg_shape[s];
  tb__sgemm(p[0], p[1], p[2], p[3], p[4], 1.0f, A, B, 0.0f, C);
}

static void *sg_thread(void *arg) {
  sg_t *g = arg;
  size_t most = 784 * 256;
  float *C = malloc(most * sizeof(float));
  long bad = 0;
  while (!atomic_load(&g->go))
    ;
  for (int r = 0; r < SG_ROUNDS; r++)
    for (int s = 0; s < SG_SHAPES; s++) {
      sg_one(g->A, g->B, C, s);
      const int *p = sg_shape[s];
      bad += memcmp(C, g->C[s], (size_t)p[2] * p[3] * sizeof(float)) != 0;
    }
  free(C);
  return (void *)bad;
}

/* With OpenBLAS at one thread, concurrent products from several threads
 * give exactly what one thread alone gets (core/src/blas.c says why). */
static void test_blas_concurrent(void **state) {
  (void)state;
  size_t most = 784 * 256;
  float *A = malloc(most * sizeof(float)), *B = malloc(most * sizeof(float));
  sg_t g = {.A = A, .B = B};
  for (size_t i = 0; i < most; i++) {
    A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    B[i] = (float)((i * 104729) % 1000) * 1e-4f - 0.05f;
  }
  tb__blas_threads(1);
  for (int s = 0; s < SG_SHAPES; s++) {
    g.C[s] = malloc(most * sizeof(float));
    sg_one(A, B, g.C[s], s);
  }
  pthread_t th[SG_THREADS];
  for (int i = 0; i < SG_THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, sg_thread, &g), 0);
  atomic_store(&g.go, 1);
  for (int i = 0; i < SG_THREADS; i++) {
    void *bad;
    pthread_join(th[i], &bad);
    assert_int_equal((long)bad, 0);
  }
  for (int s = 0; s < SG_SHAPES; s++)
    free(g.C[s]);
  free(A);
  free(B);
}

/* ---- training ------------------------------------------------------------ */

enum { EPOCHS = 3, FEATURES = 20, CLASSES = 4 };

typedef struct outcome_s {
  float *params;
  long n_params;
  tb_logs_t history[EPOCHS];
  tb_logs_t batch_logs[64]; /* every training batch's logs, in order */
  int n_batches;
  int lanes;
} outcome_t;

static int record_batch(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  outcome_t *o = cb->user;
  if (o->n_batches < 64)
    o->batch_logs[o->n_batches++] = *logs;
  return 0;
}

/* The same job every time: dropout, a validation split, a last batch shorter
 * than the others (480 training rows in batches of 50), Adam. */
static void train(int threads, outcome_t *o) {
  memset(o, 0, sizeof(*o));
  tb_set_num_threads(threads);
  tb_dataset_t *d;
  assert_int_equal(tb_gen_blobs(600, CLASSES, FEATURES, 3.0, 11, &d), 0);
  tb_model_t *m = tb_model_new(FEATURES, 5);
  assert_int_equal(tb_model_add_dense(m, 32, TB_ACT_RELU), 0);
  assert_int_equal(tb_model_add_dropout(m, 0.2f), 0);
  assert_int_equal(tb_model_add_dense(m, 16, TB_ACT_TANH), 0);
  assert_int_equal(tb_model_add_dense(m, CLASSES, TB_ACT_SOFTMAX), 0);
  tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&c.optim, TB_OPT_ADAM);
  c.optim.lr = 0.01;
  assert_int_equal(tb_model_compile(m, &c, NULL), 0);
  tb_callback_t rec = {.name = "rec", .on_train_batch_end = record_batch, .user = o};
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &rec);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.epochs = EPOCHS;
  f.batch_size = 50;
  f.validation_split = 0.2;
  f.verbose = 0;
  tb_err_t err = {{0}};
  if (tb_model_fit(m, d, &f, &l, NULL, &err) != 0)
    fail_msg("fit: %s", err.msg);
  o->n_params = tb_model_n_params(m);
  o->params = malloc((size_t)o->n_params * sizeof(float));
  assert_int_equal(tb_model_get_params(m, o->params, o->n_params), 0);
  const tb_history_t *h = tb_model_history(m);
  assert_int_equal(h->n, EPOCHS);
  memcpy(o->history, h->logs, sizeof(o->history));
  o->lanes = m->n_lanes;
  tb_callbacks_release(&l);
  tb_model_free(m);
  tb_dataset_free(d);
  tb_set_num_threads(1);
}

static void test_bitwise_per_thread_count(void **state) {
  (void)state;
  for (int t = 1; t <= 3; t++) {
    outcome_t a, b;
    train(t, &a);
    train(t, &b);
    /* the batch was split over t lanes */
    assert_int_equal(a.lanes, t);
    assert_int_equal(a.n_batches, EPOCHS * 10);
    assert_memory_equal(a.params, b.params, (size_t)a.n_params * sizeof(float));
    assert_memory_equal(a.history, b.history, sizeof(a.history));
    assert_memory_equal(a.batch_logs, b.batch_logs, (size_t)a.n_batches * sizeof(tb_logs_t));
    free(a.params);
    free(b.params);
  }
}

static double logged(const tb_logs_t *l, const char *name) {
  double v = NAN;
  assert_true(tb_logs_get(l, name, &v));
  return v;
}

/* Another thread count adds the same float32 terms in another order: the
 * weights and every log agree within rounding, and differ in their last
 * bits (so the comparison above is not vacuous). */
static void test_thread_counts_agree(void **state) {
  (void)state;
  outcome_t one;
  train(1, &one);
  for (int t = 2; t <= 3; t++) {
    outcome_t o;
    train(t, &o);
    assert_int_equal(o.n_params, one.n_params);
    double scale = 0, diff = 0;
    for (long i = 0; i < o.n_params; i++) {
      scale = fmax(scale, fabs(one.params[i]));
      diff = fmax(diff, fabs((double)o.params[i] - one.params[i]));
    }
    print_message("threads %d: max |dw| %.3g of max |w| %.3g\n", t, diff, scale);
    assert_true(diff > 0.0);
    assert_true(diff <= 1e-4 * scale);
    for (int e = 0; e < EPOCHS; e++) {
      static const char *const keys[] = {"loss", "accuracy", "val_loss", "val_accuracy"};
      for (int k = 0; k < 4; k++) {
        double a = logged(&one.history[e], keys[k]), b = logged(&o.history[e], keys[k]);
        assert_true(fabs(a - b) <= 1e-5 * fmax(1.0, fabs(a)));
      }
    }
    for (int i = 0; i < o.n_batches; i++)
      assert_true(fabs(logged(&o.batch_logs[i], "loss") - logged(&one.batch_logs[i], "loss")) <=
                  1e-5);
    free(o.params);
  }
  free(one.params);
}

/* One lane with BLAS's threads (what large models get): also bitwise
 * reproducible, and within rounding of one thread. */
static void test_blas_threads_mode(void **state) {
  (void)state;
  tb__threading_force = 1;
  outcome_t a, b, one;
  train(2, &a);
  train(2, &b);
  train(1, &one);
  assert_int_equal(a.lanes, 1);
  assert_memory_equal(a.params, b.params, (size_t)a.n_params * sizeof(float));
  assert_memory_equal(a.history, b.history, sizeof(a.history));
  for (long i = 0; i < a.n_params; i++)
    assert_true(fabs((double)a.params[i] - one.params[i]) <= 1e-4);
  free(a.params);
  free(b.params);
  free(one.params);
  tb__threading_force = 0;
}

/* A hand-written loop's steps (tb_model_train_step) split too, and give the
 * same bits as fit()'s for the same rows. */
static void test_train_step_threads(void **state) {
  (void)state;
  tb_set_num_threads(2);
  tb_dataset_t *d;
  assert_int_equal(tb_gen_blobs(64, 3, 5, 1.0, 2, &d), 0);
  tb_model_t *m[2];
  for (int i = 0; i < 2; i++) {
    m[i] = tb_model_new(5, 9);
    assert_int_equal(tb_model_add_dense(m[i], 8, TB_ACT_RELU), 0);
    assert_int_equal(tb_model_add_dense(m[i], 3, TB_ACT_SOFTMAX), 0);
    tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
    tb_optim_defaults(&c.optim, TB_OPT_RMSPROP);
    c.optim.momentum = 0.5;
    assert_int_equal(tb_model_compile(m[i], &c, NULL), 0);
  }
  tb_logs_t logs;
  for (int b = 0; b < 4; b++)
    assert_int_equal(tb_model_train_step(m[0], d->x + b * 16 * 5, d->y + b * 16, 16, &logs), 0);
  assert_int_equal(m[0]->n_lanes, 2);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.batch_size = 16;
  f.shuffle = false;
  f.verbose = 0;
  assert_int_equal(tb_model_fit(m[1], d, &f, NULL, NULL, NULL), 0);
  long n = tb_model_n_params(m[0]);
  assert_memory_equal(m[0]->params, m[1]->params, (size_t)n * sizeof(float));
  /* and inference over threads gives what one thread gives */
  float out2[64 * 3], out1[64 * 3];
  assert_int_equal(tb_model_forward(m[0], d->x, 64, out2), 0);
  tb_set_num_threads(1);
  assert_int_equal(tb_model_forward(m[0], d->x, 64, out1), 0);
  assert_memory_equal(out1, out2, sizeof(out1));
  for (int i = 0; i < 2; i++)
    tb_model_free(m[i]);
  tb_dataset_free(d);
}

/* By default a step splits only when each lane gets enough work: a small
 * model stays on one thread (no pool at all), a Fashion-MNIST-sized one
 * splits from 16 rows. */
static void test_default_split(void **state) {
  (void)state;
  tb__threading_force = -1;
  tb_set_num_threads(2);
  static const int widths[2][3] = {{4, 8, 3}, {784, 256, 10}};
  for (int k = 0; k < 2; k++) {
    int in = widths[k][0], rows = 64;
    tb_model_t *m = tb_model_new(in, 1);
    assert_int_equal(tb_model_add_dense(m, widths[k][1], TB_ACT_RELU), 0);
    assert_int_equal(tb_model_add_dense(m, widths[k][2], TB_ACT_SOFTMAX), 0);
    tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
    tb_optim_defaults(&c.optim, TB_OPT_ADAM);
    assert_int_equal(tb_model_compile(m, &c, NULL), 0);
    float *x = calloc((size_t)rows * in, sizeof(float)), y[64] = {0};
    assert_int_equal(tb_model_train_step(m, x, y, rows, NULL), 0);
    assert_int_equal(tb__step_lanes(m, rows), k == 0 ? 1 : 2);
    assert_int_equal(tb__step_lanes(m, 15), 1);
    assert_true(k == 0 ? m->pool == NULL : m->pool != NULL);
    free(x);
    tb_model_free(m);
  }
  tb_set_num_threads(1);
  tb__threading_force = 0;
}

/* ---- a paused run does not spin ------------------------------------------ */

typedef struct pauser_s {
  tb_control_t *c;
  double cpu_during;
  _Atomic int paused;
} pauser_t;

static void on_note(tb_control_t *c, const tb_control_note_t *n, void *user) {
  pauser_t *p = user;
  if (n->action == TB_CONTROL_PAUSE)
    atomic_store(&p->paused, 1);
}

static void *resumer(void *arg) {
  pauser_t *p = arg;
  while (!atomic_load(&p->paused))
    sleep_ms(1);
  sleep_ms(20); /* past every spin */
  double t0 = cpu_s();
  sleep_ms(300);
  p->cpu_during = cpu_s() - t0;
  tb_control_resume(p->c, "test");
  return NULL;
}

/* Pauses at epoch 0, batch 3: the pool's threads are up by then. */
static int pause_at(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  pauser_t *p = cb->user;
  if (ctx->epoch == 0 && batch == 3)
    tb_control_pause(p->c, "test");
  return 0;
}

static void test_pause_sleeps(void **state) {
  (void)state;
  tb_set_num_threads(3);
  tb_dataset_t *d;
  assert_int_equal(tb_gen_blobs(480, 3, 8, 1.0, 4, &d), 0);
  tb_model_t *m = tb_model_new(8, 3);
  assert_int_equal(tb_model_add_dense(m, 16, TB_ACT_RELU), 0);
  assert_int_equal(tb_model_add_dense(m, 3, TB_ACT_SOFTMAX), 0);
  tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
  tb_optim_defaults(&c.optim, TB_OPT_ADAM);
  assert_int_equal(tb_model_compile(m, &c, NULL), 0);
  tb_control_t ctl;
  assert_int_equal(tb_control_init(&ctl), 0);
  pauser_t p = {.c = &ctl};
  tb_control_set_notify(&ctl, on_note, &p);
  tb_callback_t cb = {.name = "pause", .on_train_batch_end = pause_at, .user = &p};
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, resumer, &p), 0);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.epochs = 2;
  f.batch_size = 48;
  f.verbose = 0;
  f.control = &ctl;
  assert_int_equal(tb_model_fit(m, d, &f, &l, NULL, NULL), 0);
  pthread_join(th, NULL);
  tb_callbacks_release(&l);
  assert_int_equal(m->n_lanes, 3);
  print_message("CPU during a 300 ms pause with 3 threads: %.1f ms\n", p.cpu_during * 1e3);
  assert_true(p.cpu_during < 0.03);
  assert_int_equal(tb_model_iterations(m), 20);
  tb_control_destroy(&ctl);
  tb_model_free(m);
  tb_dataset_free(d);
  tb_set_num_threads(1);
}

int main(void) {
  /* Split every batch of 16 rows or more, however small the model (by
   * default a step of little work stays on one thread). */
  tb__threading_force = 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool),
      cmocka_unit_test(test_pool_idle_sleeps),
      cmocka_unit_test(test_blas_concurrent),
      cmocka_unit_test(test_bitwise_per_thread_count),
      cmocka_unit_test(test_thread_counts_agree),
      cmocka_unit_test(test_blas_threads_mode),
      cmocka_unit_test(test_train_step_threads),
      cmocka_unit_test(test_default_split),
      cmocka_unit_test(test_pause_sleeps),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
