/* The reduction interface (reduce.h) with several participants, each a
 * thread of this process running its own tb_model_fit() through a
 * reduction that adds the participants' buffers in rank order (what
 * dist/'s MPI implementation does across processes, issue 15): the
 * interface alone must make N participants train as one model.
 *
 *   - 2 participants of 1 thread give bitwise what 1 process of 2 threads
 *     gives (the same rows, the same sums in the same order);
 *   - every participant holds the same weights after every epoch, two runs
 *     are identical, and a single process agrees within rounding;
 *   - the coordinator's control block steers everyone at the same step
 *     (set_lr, stop, pause with a rate change, a checkpoint);
 *   - a participant that drifts fails the run on every participant;
 *   - a run checkpointed by the coordinator resumes on every participant
 *     to the uninterrupted run's weights. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "internal.h"
#include "trainbus/callbacks.h"
#include "trainbus/control.h"
#include "trainbus/model.h"
#include "trainbus/reduce.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { MAX_RANKS = 4, EPOCHS = 3, MAX_BATCHES = 64 };

/* ---- a reduction between threads ----------------------------------------- */

typedef struct group_s {
  int size;
  pthread_barrier_t bar;
  float *bufs[MAX_RANKS];
  void *ptrs[MAX_RANKS];
  uint64_t values[MAX_RANKS];
  float *sum;
  long sum_cap;
  int calls[MAX_RANKS]; /* allreduce calls per rank */
} group_t;

typedef struct rank_s {
  tb_reduce_t r;
  group_t *g;
} rank_t;

static int t_allreduce(tb_reduce_t *r, float *buf, long n_sum, tb_err_t *err) {
  group_t *g = ((rank_t *)r->user)->g;
  g->bufs[r->rank] = buf;
  g->calls[r->rank]++;
  pthread_barrier_wait(&g->bar);
  if (r->rank == 0) {
    if (g->sum_cap < TB_REDUCE_LEN(n_sum)) {
      free(g->sum);
      g->sum_cap = TB_REDUCE_LEN(n_sum);
      g->sum = malloc((size_t)g->sum_cap * sizeof(float));
    }
    for (long i = 0; i < n_sum; i++) {
      float acc = g->bufs[0][i];
      for (int k = 1; k < g->size; k++)
        acc += g->bufs[k][i];
      g->sum[i] = acc;
    }
    memcpy(g->sum + n_sum, g->bufs[0] + n_sum, TB_REDUCE_N_CTL * sizeof(float));
  }
  pthread_barrier_wait(&g->bar);
  memcpy(buf, g->sum, (size_t)TB_REDUCE_LEN(n_sum) * sizeof(float));
  pthread_barrier_wait(&g->bar);
  return 0;
}

static int t_broadcast(tb_reduce_t *r, void *buf, size_t len, tb_err_t *err) {
  group_t *g = ((rank_t *)r->user)->g;
  g->ptrs[r->rank] = buf;
  pthread_barrier_wait(&g->bar);
  if (r->rank != 0)
    memcpy(buf, g->ptrs[0], len);
  pthread_barrier_wait(&g->bar);
  return 0;
}

static int t_check(tb_reduce_t *r, uint64_t value, const char *what, tb_err_t *err) {
  group_t *g = ((rank_t *)r->user)->g;
  g->values[r->rank] = value;
  pthread_barrier_wait(&g->bar);
  int differ = -1;
  for (int k = 1; k < g->size && differ < 0; k++)
    if (g->values[k] != g->values[0])
      differ = k;
  pthread_barrier_wait(&g->bar);
  if (differ < 0)
    return 0;
  return tb_errf(err, TB_EDIVERGED, "%s: rank %d differs from rank 0", what, differ);
}

/* ---- one participant's training ----------------------------------------- */

typedef struct job_s job_t;

typedef struct part_s {
  job_t *job;
  rank_t rank;
  tb_model_t *m;
  tb_control_t *control; /* rank 0's */
  int rc;
  tb_err_t err;
  tb_logs_t batch_logs[MAX_BATCHES];
  double batch_lr[MAX_BATCHES];
  int n_batches;
  tb_logs_t history[EPOCHS];
  int n_epochs;
  long iterations;
  float *params;
} part_t;

/* What every participant is given. */
struct job_s {
  int size;
  group_t g;
  part_t parts[MAX_RANKS];
  const char *ckpt_dir;
  const char *resume;
  /* rank 0's own actions at a (epoch, batch) train_batch_end, or -1 */
  int lr_epoch, lr_batch;
  int stop_epoch, stop_batch;
  int pause_epoch, pause_batch;
  int ckpt_epoch, ckpt_batch;
  int shutdown_epoch, shutdown_batch; /* rank 0's control block asks for a shutdown */
  int crash_epoch, crash_batch;       /* every rank fails there */
  int drift_rank;                     /* that rank moves a weight at epoch 1's end */
};

static int on_batch_end(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  part_t *p = cb->user;
  job_t *j = p->job;
  if (p->n_batches < MAX_BATCHES) {
    p->batch_lr[p->n_batches] = tb_model_lr(p->m);
    p->batch_logs[p->n_batches++] = *logs;
  }
  if (ctx->epoch == j->crash_epoch && batch == j->crash_batch)
    return TB_EIO;
  if (p->rank.r.rank != 0)
    return 0;
  if (ctx->epoch == j->lr_epoch && batch == j->lr_batch)
    assert_int_equal(tb_control_set_lr(p->control, 0.004, "test"), 0);
  if (ctx->epoch == j->stop_epoch && batch == j->stop_batch)
    tb_control_stop(p->control, "test");
  if (ctx->epoch == j->pause_epoch && batch == j->pause_batch)
    tb_control_pause(p->control, "test");
  if (ctx->epoch == j->ckpt_epoch && batch == j->ckpt_batch)
    tb_control_checkpoint(p->control, "test");
  if (ctx->epoch == j->shutdown_epoch && batch == j->shutdown_batch)
    tb_control_shutdown(p->control);
  return 0;
}

static int on_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  part_t *p = cb->user;
  if (epoch == 1 && p->rank.r.rank == p->job->drift_rank) {
    float w;
    long n = tb_model_n_params(p->m);
    float *all = malloc((size_t)n * sizeof(float));
    tb_model_get_params(p->m, all, n);
    w = all[3];
    all[3] = nextafterf(w, 1.0f);
    tb_model_set_params(p->m, all, n);
    free(all);
  }
  return 0;
}

/* Rank 0 resumes a pause 50 ms after it began, with a new rate. */
static void on_note(tb_control_t *c, const tb_control_note_t *n, void *user) {
  (void)user;
  if (n->action == TB_CONTROL_PAUSE) {
    /* The note comes on the trainer thread before it waits: requests made
     * now are served by the wait. */
    tb_control_set_lr(c, 0.002, "test");
    tb_control_resume(c, "test");
  }
}

static void *participant(void *arg) {
  part_t *p = arg;
  job_t *j = p->job;
  tb_dataset_t *d;
  assert_int_equal(tb_gen_blobs(400, 3, 6, 2.0, 13, &d), 0);
  p->m = tb_model_new(6, 21);
  assert_int_equal(tb_model_add_dense(p->m, 24, TB_ACT_RELU), 0);
  assert_int_equal(tb_model_add_dropout(p->m, 0.2f), 0);
  assert_int_equal(tb_model_add_dense(p->m, 3, TB_ACT_SOFTMAX), 0);
  tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&c.optim, TB_OPT_ADAM);
  c.optim.lr = 0.01;
  assert_int_equal(tb_model_compile(p->m, &c, NULL), 0);
  tb_callback_t cb = {
      .name = "probe", .on_train_batch_end = on_batch_end, .on_epoch_end = on_epoch_end, .user = p};
  tb_callbacks_t l;
  tb_callbacks_init(&l);
  tb_callbacks_add(&l, &cb);
  tb_fit_opts_t f;
  tb_fit_opts_defaults(&f);
  f.epochs = EPOCHS;
  f.batch_size = 64; /* 320 training rows: 5 batches; 80 validation rows */
  f.validation_split = 0.2;
  f.verbose = 0;
  f.job_id = "reduce-test";
  f.checkpoint_dir = j->ckpt_dir;
  f.resume_from = j->resume;
  if (j->size > 0)
    f.reduce = &p->rank.r;
  if (p->rank.r.rank == 0 && p->control != NULL)
    f.control = p->control;
  p->rc = tb_model_fit(p->m, d, &f, &l, NULL, &p->err);
  const tb_history_t *h = tb_model_history(p->m);
  p->n_epochs = h->n;
  memcpy(p->history, h->logs, (size_t)h->n * sizeof(tb_logs_t));
  p->iterations = tb_model_iterations(p->m);
  long n = tb_model_n_params(p->m);
  p->params = malloc((size_t)n * sizeof(float));
  tb_model_get_params(p->m, p->params, n);
  tb_callbacks_release(&l);
  tb_model_free(p->m);
  p->m = NULL;
  tb_dataset_free(d);
  return NULL;
}

static void job_init(job_t *j, int size) {
  memset(j, 0, sizeof(*j));
  j->size = size;
  j->lr_epoch = j->stop_epoch = j->pause_epoch = j->ckpt_epoch = j->crash_epoch = -1;
  j->shutdown_epoch = -1;
  j->drift_rank = -1;
}

/* Runs the job on `size` participants (0: one process, no reduction). */
static void job_run(job_t *j) {
  int n = j->size > 0 ? j->size : 1;
  tb_control_t ctl;
  assert_int_equal(tb_control_init(&ctl), 0);
  tb_control_set_notify(&ctl, on_note, NULL);
  j->g.size = n;
  pthread_barrier_init(&j->g.bar, NULL, (unsigned)n);
  pthread_t th[MAX_RANKS];
  for (int r = 0; r < n; r++) {
    part_t *p = &j->parts[r];
    memset(p, 0, sizeof(*p));
    p->job = j;
    p->rank = (rank_t){{.rank = r,
                        .size = n,
                        .allreduce = t_allreduce,
                        .broadcast = t_broadcast,
                        .check = t_check,
                        .user = &p->rank},
                       &j->g};
    p->control = r == 0 ? &ctl : NULL;
    assert_int_equal(pthread_create(&th[r], NULL, participant, p), 0);
  }
  for (int r = 0; r < n; r++)
    pthread_join(th[r], NULL);
  pthread_barrier_destroy(&j->g.bar);
  free(j->g.sum);
  j->g.sum = NULL;
  j->g.sum_cap = 0;
  tb_control_destroy(&ctl);
}

static void job_free(job_t *j) {
  for (int r = 0; r < (j->size > 0 ? j->size : 1); r++)
    free(j->parts[r].params);
}

static long n_params(void) {
  return 6 * 24 + 24 + 24 * 3 + 3;
}

static void assert_ok(const part_t *p) {
  if (p->rc != 0)
    fail_msg("rank %d: fit: %s", p->rank.r.rank, p->err.msg);
}

static void assert_same_run(const part_t *a, const part_t *b) {
  assert_memory_equal(a->params, b->params, (size_t)n_params() * sizeof(float));
  assert_int_equal(a->n_epochs, b->n_epochs);
  assert_memory_equal(a->history, b->history, (size_t)a->n_epochs * sizeof(tb_logs_t));
  assert_int_equal(a->n_batches, b->n_batches);
  assert_memory_equal(a->batch_logs, b->batch_logs, (size_t)a->n_batches * sizeof(tb_logs_t));
  assert_memory_equal(a->batch_lr, b->batch_lr, (size_t)a->n_batches * sizeof(double));
  assert_int_equal(a->iterations, b->iterations);
}

/* ---- the tests --------------------------------------------------------- */

/* Two participants of one thread each = one process of two threads: the
 * same rows per share, the same sums in the same order. */
static void test_ranks_equal_threads(void **state) {
  (void)state;
  job_t *two = malloc(sizeof(*two)), *one = malloc(sizeof(*one));
  tb_set_num_threads(1);
  job_init(two, 2);
  job_run(two);
  assert_ok(&two->parts[0]);
  assert_ok(&two->parts[1]);
  tb_set_num_threads(2);
  job_init(one, 0);
  job_run(one);
  assert_ok(&one->parts[0]);
  tb_set_num_threads(1);
  assert_same_run(&two->parts[0], &one->parts[0]);
  assert_same_run(&two->parts[1], &one->parts[0]);
  /* one reduction per step and per validation batch, and two control
   * exchanges per epoch (after epoch_begin's and epoch_end's hooks):
   * 3 x (5 + 2 + 2) */
  assert_int_equal(two->g.calls[0], EPOCHS * (5 + 2 + 2));
  job_free(two);
  job_free(one);
  free(two);
  free(one);
}

/* Three participants: identical weights everywhere, run after run, and
 * within rounding of one process. */
static void test_three_ranks(void **state) {
  (void)state;
  job_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b)), *one = malloc(sizeof(*one));
  tb_set_num_threads(1);
  job_init(a, 3);
  job_run(a);
  job_init(b, 3);
  job_run(b);
  job_init(one, 0);
  job_run(one);
  for (int r = 0; r < 3; r++) {
    assert_ok(&a->parts[r]);
    assert_same_run(&a->parts[r], &a->parts[0]);
    assert_same_run(&b->parts[r], &a->parts[0]);
  }
  double diff = 0, scale = 0;
  for (long i = 0; i < n_params(); i++) {
    diff = fmax(diff, fabs((double)a->parts[0].params[i] - one->parts[0].params[i]));
    scale = fmax(scale, fabs(one->parts[0].params[i]));
  }
  print_message("3 ranks against 1 process: max |dw| %.3g of %.3g\n", diff, scale);
  assert_true(diff <= 1e-4 * scale);
  for (int e = 0; e < EPOCHS; e++) {
    double x, y;
    assert_true(tb_logs_get(&a->parts[0].history[e], "val_loss", &x));
    assert_true(tb_logs_get(&one->parts[0].history[e], "val_loss", &y));
    assert_true(fabs(x - y) <= 1e-5);
  }
  job_free(a);
  job_free(b);
  job_free(one);
  free(a);
  free(b);
  free(one);
}

/* The coordinator's control block steers every participant at the same
 * step. The coordinator reads it just before each step's reduction (the one
 * point where all participants meet), where one process reads it at the
 * step's boundary after the hooks: a rate set in a batch's hooks takes
 * effect at the next update in both, and so does a rate set during a pause;
 * a stop made in a batch's hooks ends one process at that batch, and the
 * participants at the next. */
static void test_control_same_step(void **state) {
  (void)state;
  job_t *two = malloc(sizeof(*two)), *one = malloc(sizeof(*one));
  tb_set_num_threads(1);
  for (int k = 0; k < 2; k++) {
    job_t *j = k == 0 ? two : one;
    job_init(j, k == 0 ? 2 : 0);
    j->lr_epoch = 0, j->lr_batch = 2;
    j->pause_epoch = 1, j->pause_batch = 1;
    j->stop_epoch = 2, j->stop_batch = 1;
    job_run(j);
  }
  part_t *r0 = &two->parts[0], *r1 = &two->parts[1], *s = &one->parts[0];
  assert_ok(r0);
  assert_ok(r1);
  assert_ok(s);
  /* every participant saw the same rates at the same batches */
  assert_same_run(r0, r1);
  for (int k = 0; k < 2; k++) {
    const part_t *p = k == 0 ? r0 : s;
    assert_float_equal(p->batch_lr[2], (double)0.01f, 0);
    assert_float_equal(p->batch_lr[3], (double)0.004f, 0);
    assert_float_equal(p->batch_lr[6], (double)0.004f, 0);
  }
  assert_float_equal(s->batch_lr[7], (double)0.004f, 0);
  assert_float_equal(s->batch_lr[8], (double)0.002f, 0);
  /* the pause was requested in batch 1's hooks and began at batch 2's
   * boundary with participants (at batch 1's in one process); its rate took
   * effect at batch 3's update in both */
  assert_memory_equal(r0->batch_lr, s->batch_lr, (size_t)s->n_batches * sizeof(double));
  assert_int_equal(s->n_batches, 5 + 5 + 2);
  assert_int_equal(r0->n_batches, 5 + 5 + 3);
  assert_int_equal(r0->iterations, 13);
  job_free(two);
  job_free(one);
  free(two);
  free(one);
}

/* A participant whose weights drift fails the run on every participant at
 * the next epoch's end, with the ranks named. */
static void test_divergence_fails(void **state) {
  (void)state;
  job_t *j = malloc(sizeof(*j));
  tb_set_num_threads(1);
  job_init(j, 3);
  j->drift_rank = 2;
  job_run(j);
  for (int r = 0; r < 3; r++) {
    assert_int_equal(j->parts[r].rc, TB_EDIVERGED);
    assert_non_null(strstr(j->parts[r].err.msg, "after epoch 2"));
    assert_non_null(strstr(j->parts[r].err.msg, "rank 2"));
    assert_int_equal(j->parts[r].n_epochs, 2);
  }
  job_free(j);
  free(j);
}

static void rm_rf(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

/* The coordinator alone writes checkpoints (one asked for through its
 * control block, and latest.tbck at epoch ends); a crash, then every
 * participant resumed from the coordinator's file, ends with the
 * uninterrupted run's weights. */
static void test_checkpoint_resume(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_reduceXXXXXX";
  assert_non_null(mkdtemp(dir));
  job_t *full = malloc(sizeof(*full)), *part = malloc(sizeof(*part));
  tb_set_num_threads(1);
  job_init(full, 2);
  full->ckpt_dir = dir;
  full->ckpt_epoch = 1, full->ckpt_batch = 1;
  job_run(full);
  assert_ok(&full->parts[0]);
  assert_ok(&full->parts[1]);
  char named[300];
  /* asked for in batch 1's hooks: written at batch 2's boundary */
  snprintf(named, sizeof(named), "%s/checkpoint-e0001-b00003.tbck", dir);
  assert_int_equal(access(named, F_OK), 0);

  /* crash in epoch 2: latest.tbck is epoch 1's end */
  job_init(part, 2);
  part->ckpt_dir = dir;
  part->crash_epoch = 2, part->crash_batch = 3;
  job_run(part);
  assert_int_equal(part->parts[0].rc, TB_EIO);
  assert_int_equal(part->parts[1].rc, TB_EIO);
  job_free(part);
  char latest[300];
  snprintf(latest, sizeof(latest), "%s/%s", dir, TB_CHECKPOINT_LATEST);
  job_init(part, 2);
  part->ckpt_dir = dir;
  part->resume = latest;
  job_run(part);
  assert_ok(&part->parts[0]);
  assert_ok(&part->parts[1]);
  for (int r = 0; r < 2; r++) {
    assert_memory_equal(part->parts[r].params, full->parts[0].params,
                        (size_t)n_params() * sizeof(float));
    assert_int_equal(part->parts[r].iterations, full->parts[0].iterations);
  }
  /* and from the named mid-epoch checkpoint, on both */
  job_free(part);
  job_init(part, 2);
  part->ckpt_dir = dir;
  part->resume = named;
  job_run(part);
  assert_ok(&part->parts[0]);
  for (int r = 0; r < 2; r++)
    assert_memory_equal(part->parts[r].params, full->parts[0].params,
                        (size_t)n_params() * sizeof(float));
  job_free(full);
  job_free(part);
  free(full);
  free(part);
  rm_rf(dir);
}

/* A shutdown asked of the coordinator ends every participant at the same
 * step with TB_EINTERRUPTED, the coordinator having written latest.tbck;
 * every participant resumed from it ends with the uninterrupted run's
 * weights. */
static void test_shutdown_resume(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_reduceXXXXXX";
  assert_non_null(mkdtemp(dir));
  job_t *full = malloc(sizeof(*full)), *part = malloc(sizeof(*part));
  tb_set_num_threads(1);
  job_init(full, 2);
  job_run(full);
  assert_ok(&full->parts[0]);
  job_init(part, 2);
  part->ckpt_dir = dir;
  part->shutdown_epoch = 1, part->shutdown_batch = 2;
  job_run(part);
  for (int r = 0; r < 2; r++) {
    assert_int_equal(part->parts[r].rc, TB_EINTERRUPTED);
    /* asked in batch 2's hooks: taken at batch 3's reduction */
    assert_int_equal(part->parts[r].iterations, 5 + 4);
  }
  assert_non_null(strstr(part->parts[0].err.msg, "resume from"));
  assert_non_null(strstr(part->parts[1].err.msg, "by the coordinator"));
  job_free(part);
  char latest[300];
  snprintf(latest, sizeof(latest), "%s/%s", dir, TB_CHECKPOINT_LATEST);
  job_init(part, 2);
  part->resume = latest;
  job_run(part);
  for (int r = 0; r < 2; r++) {
    assert_ok(&part->parts[r]);
    assert_memory_equal(part->parts[r].params, full->parts[0].params,
                        (size_t)n_params() * sizeof(float));
  }
  job_free(full);
  job_free(part);
  free(full);
  free(part);
  rm_rf(dir);
}

/* The single implementation is the identity; the control words survive a
 * round trip bit for bit, whatever they hold. */
static void test_single_and_words(void **state) {
  (void)state;
  tb_reduce_t *s = tb_reduce_single();
  assert_int_equal(s->rank, 0);
  assert_int_equal(s->size, 1);
  float buf[TB_REDUCE_LEN(3)] = {1.5f, -2.0f, 3.25f};
  tb_reduce_ctl_t in = {.flags = TB_REDUCE_STOP | TB_REDUCE_SHUTDOWN,
                        .lr = 0.001f,
                        .version = 0xfffffff7u,
                        .reserved = 0},
                  out;
  tb_reduce_ctl_put(buf, 3, &in);
  assert_int_equal(s->allreduce(s, buf, 3, NULL), 0);
  tb_reduce_ctl_get(buf, 3, &out);
  assert_memory_equal(&in, &out, sizeof(in));
  assert_true(buf[0] == 1.5f && buf[1] == -2.0f && buf[2] == 3.25f);
  uint64_t v = 7;
  assert_int_equal(s->broadcast(s, &v, sizeof(v), NULL), 0);
  assert_int_equal(s->check(s, 1, "x", NULL), 0);
  /* a flipped bit changes the checksum */
  float w[2] = {1.0f, 2.0f};
  uint64_t h = tb_reduce_checksum(TB_REDUCE_CHECKSUM_INIT, w, 2);
  w[1] = nextafterf(w[1], 3.0f);
  assert_true(tb_reduce_checksum(TB_REDUCE_CHECKSUM_INIT, w, 2) != h);
}

int main(void) {
  /* Split every batch of 16 rows or more, however small the model (by
   * default a step of little work stays on one thread). */
  tb__threading_force = 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_single_and_words), cmocka_unit_test(test_ranks_equal_threads),
      cmocka_unit_test(test_three_ranks),      cmocka_unit_test(test_control_same_step),
      cmocka_unit_test(test_divergence_fails), cmocka_unit_test(test_checkpoint_resume),
      cmocka_unit_test(test_shutdown_resume),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
