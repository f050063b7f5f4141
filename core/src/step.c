/* One batch split over the threads: the engine's data parallelism inside a
 * process, in reduce.h's layout.
 *
 * A training step with L lanes (the thread count, tb_get_num_threads()):
 *
 *   caller     draw the batch's dropout masks (model RNG, row order)
 *   lane t     rows [t n / L, (t + 1) n / L): gather them, forward, loss,
 *              backward into its partial gradient sums (lane 0 straight into
 *              the step buffer), its statistics
 *   barrier
 *   lane 0     statistics of lanes 0, 1, ... added in lane order
 *   lane t     parameter slice t: gradients of lanes 0, 1, ... added in lane
 *              order, then the optimizer update of that slice, a few
 *              thousand parameters at a time (the sum is still in cache)
 *
 * With several participants (reduce.h, size > 1) the slice sums and the
 * update are two passes around the reduction, which lane 0 calls between two
 * barriers. Every lane runs single-threaded BLAS on its own rows
 * (tb__blas_threads(1)); the order of every float32 sum depends on the
 * batch, the lane count and the participant count only, so the same job,
 * seed and thread count give bitwise the same weights, and another thread
 * count the same within rounding. One lane (one thread, or a batch too small
 * to split) runs on the calling thread alone, exactly as the engine did
 * before it had threads.
 *
 * BLAS's own threads are used instead only where they were measured to win:
 * see blas_wins(). */
#include "internal.h"

#include "pool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Fewer rows than this per lane, and a batch is not split further: below it
 * the products are too thin for sgemm's kernels to reach their speed. */
#define TB__MIN_LANE_ROWS 8
/* Nor is it split into lanes of less work than this (floating-point
 * operations of a training step's rows, about 6 per parameter per row): a
 * step's three hand-overs cost a few microseconds with both threads awake,
 * and a wake-up from sleep tens; 4 MFLOP is 20 to 40 us of sgemm. */
#define TB__MIN_LANE_FLOPS 4e6
/* Parameters summed and updated together: the chunk's partial sums, weights
 * and Adam slots stay in L1/L2 between the two passes. */
#define TB__CHUNK 4096

enum { STEP_TRAIN, STEP_TEST, STEP_PREDICT };

typedef struct step_s {
  tb_model_t *m;
  const tb__batch_t *b;
  int kind;
  int n_lanes;      /* lanes running the task (the pool's, or 1) */
  int n_active;     /* lanes with rows */
  float inv_n;      /* 1 / the global batch's rows */
  float *out;       /* STEP_PREDICT: n x n_outputs */
  tb__sync_t *sync; /* NULL: one participant */
  tb_err_t *err;
  int rc; /* the reduction's result, set by lane 0 */
  tb__pool_t *pool;
  tb__optim_coef_t coef;
} step_t;

TB_CLONES
static void add_into(float *restrict g, const float *restrict p, long n) {
  for (long i = 0; i < n; i++)
    g[i] += p[i];
}

static bool multi(const tb__sync_t *sync) {
  return sync != NULL && sync->red != NULL && sync->red->size > 1;
}

void tb__batch_share(tb__batch_t *b, int n, const tb_reduce_t *red) {
  int rank = red != NULL ? red->rank : 0, size = red != NULL && red->size > 1 ? red->size : 1;
  b->n = n;
  b->row0 = (int)((long)n * rank / size);
  b->rows = (int)((long)n * (rank + 1) / size) - b->row0;
}

/* Whether one lane with BLAS's threads beats the lanes for a step of n rows
 * of a model of n_params parameters on t threads. The lanes each pack every
 * weight matrix for their own products and write a partial gradient that a
 * second pass adds: traffic in proportion to the parameters, for every lane.
 * While the weights fit in the cache that is cheap beside the products; once
 * they do not, it goes to memory, and BLAS's split of each product (over its
 * output columns: each weight read once, no partial sums) wins, at any batch.
 * Measured with tests/bench/bench_threads on 2 threads (samples/s of BLAS's
 * threads over the lanes'): MLP 784-256-128-10 at batch 128 0.56, at 512
 * 0.70; 1024-1024-10 (1.06 M parameters, 4 MB) at batch 32 0.73-0.86, 128
 * 0.80, 1024 0.72; 1448-1448-10 (2.1 M, 8.4 MB) at 64 1.00, 256 0.84;
 * 2048-2048-10 (4.2 M, 17 MB) at 32 1.12-1.29, 128 1.17, 512 1.23;
 * 4096-4096-10 (16.8 M, 67 MB) at 32 1.19, 128 1.06, 512 1.16-1.22. Hence
 * BLAS's threads from 3 M parameters (12 MB) on. */
static bool blas_wins(double n_params, int n, int t) {
  if (tb__threading_force >= 0)
    return tb__threading_force == 1;
  (void)n, (void)t;
  return n_params >= 3e6;
}

int tb__threading_force = -1;

int tb__lanes_for(int threads, int n, double n_params) {
  if (threads <= 1 || blas_wins(n_params, n, threads))
    return 1;
  double min_rows = TB__MIN_LANE_ROWS, work = TB__MIN_LANE_FLOPS / (6.0 * n_params + 1.0);
  if (tb__threading_force != 0 && work > min_rows)
    min_rows = ceil(work);
  double by_rows = floor((double)n / min_rows);
  return by_rows < 1.0 ? 1 : by_rows < threads ? (int)by_rows : threads;
}

int tb__step_lanes(const tb_model_t *m, int n) {
  return tb__lanes_for(tb_get_num_threads(), n, (double)m->n_params);
}

void tb__step_free(tb_model_t *m) {
  tb__pool_free(m->pool);
  m->pool = NULL;
  for (int i = 0; i < m->n_lanes; i++)
    tb__lane_release(m, &m->lanes[i]);
  free(m->lanes);
  m->lanes = NULL;
  m->n_lanes = 0;
}

/* Lanes, their buffers and the pool for a step of `rows` rows on n_active
 * lanes out of n_lanes. */
static int prepare(tb_model_t *m, int kind, int n_lanes, int n_active, int rows, tb_err_t *err) {
  int r;
  if (m->n_lanes < n_lanes) {
    tb__lane_t *l = realloc(m->lanes, (size_t)n_lanes * sizeof(*l));
    if (l == NULL)
      return tb_errf(err, TB_ENOMEM, "out of memory for %d threads' buffers", n_lanes);
    memset(l + m->n_lanes, 0, (size_t)(n_lanes - m->n_lanes) * sizeof(*l));
    m->lanes = l;
    m->n_lanes = n_lanes;
  }
  int per = n_active > 0 ? (rows + n_active - 1) / n_active : 0;
  for (int i = 0; i < n_active; i++) {
    tb__lane_t *ln = &m->lanes[i];
    if ((r = tb__lane_reserve(m, ln, per)) != 0)
      return tb_errf(err, r, "out of memory for a batch of %d rows", rows);
    if (kind == STEP_TRAIN && i > 0 && ln->part == NULL &&
        (ln->part = malloc((size_t)(m->n_params ? m->n_params : 1) * sizeof(float))) == NULL)
      return tb_errf(err, TB_ENOMEM, "out of memory for %d threads' gradients", n_active);
  }
  if (n_lanes > 1 && (m->pool == NULL || tb__pool_lanes(m->pool) != n_lanes)) {
    tb__pool_free(m->pool);
    m->pool = NULL;
    if ((r = tb__pool_new(n_lanes, &m->pool)) != 0)
      return tb_errf(err, r, "cannot start %d training threads: %s", n_lanes - 1, tb_strerror(r));
  }
  return 0;
}

/* Phase one of lane t: its rows through the model. */
static void lane_rows(step_t *s, int t) {
  tb_model_t *m = s->m;
  const tb__batch_t *b = s->b;
  tb__lane_t *ln = &m->lanes[t];
  int lo = (int)((long)b->rows * t / s->n_active);
  int hi = (int)((long)b->rows * (t + 1) / s->n_active);
  int n = hi - lo, brow = b->row0 + lo; /* the batch row of its first row */
  size_t xw = (size_t)m->n_inputs, yw = (size_t)m->y_width;
  const float *x, *y;
  memset(ln->stats, 0, sizeof(ln->stats));
  if (b->data != NULL) {
    for (int r = 0; r < n; r++) {
      int src = b->idx ? b->idx[b->from + brow + r] : b->from + brow + r;
      /* Shuffled rows are scattered over the data set: fetch the row after
       * next while this one is copied (the copy waits on memory otherwise;
       * a third faster on the Fashion-MNIST benchmark's gather). */
      if (r + 2 < n) {
        int ahead = b->idx ? b->idx[b->from + brow + r + 2] : b->from + brow + r + 2;
        const char *p = (const char *)(b->data->x + (size_t)ahead * xw);
        for (size_t c = 0; c < xw * sizeof(float); c += 64)
          __builtin_prefetch(p + c);
      }
      memcpy(ln->x + r * xw, b->data->x + (size_t)src * xw, xw * sizeof(float));
      memcpy(ln->y + r * yw, b->data->y + (size_t)src * yw, yw * sizeof(float));
    }
    x = ln->x;
    y = ln->y;
  } else {
    x = b->x + (size_t)brow * xw;
    y = b->y != NULL ? b->y + (size_t)brow * yw : NULL;
  }
  bool train = s->kind == STEP_TRAIN;
  const float *out = tb__forward(m, ln, x, n, brow, train);
  if (s->kind == STEP_PREDICT) {
    int k = tb_model_n_outputs(m);
    memcpy(s->out + (size_t)brow * (size_t)k, out, (size_t)n * (size_t)k * sizeof(float));
    return;
  }
  const float *pre = ln->z[m->n_layers - 1];
  ln->stats[TB_REDUCE_LOSS] = tb__loss_sum(m, out, pre, y, n, s->inv_n, train ? ln->dout : NULL);
  ln->stats[TB_REDUCE_ROWS] = (float)n;
  tb__metric_sums(m, out, y, n, ln->stats);
  if (train)
    tb__backward(m, ln, x, n, t == 0 ? m->grads : ln->part);
}

/* The lanes' statistics added in lane order into stats. */
static void add_stats(const step_t *s, float *stats) {
  memset(stats, 0, TB_REDUCE_N_STATS * sizeof(float));
  for (int t = 0; t < s->n_active; t++)
    for (int i = 0; i < TB_REDUCE_N_STATS; i++)
      stats[i] += s->m->lanes[t].stats[i];
}

/* Lane t's slice of the parameters, cut at multiples of 16 floats. */
static void slice(const step_t *s, int t, long *lo, long *hi) {
  long P = s->m->n_params;
  *lo = (P * t / s->n_lanes) & ~15L;
  *hi = t == s->n_lanes - 1 ? P : (P * (t + 1) / s->n_lanes) & ~15L;
}

/* The other lanes' partial gradients added to lane 0's, in lane order. */
static void add_partials(const step_t *s, long lo, long hi) {
  for (int j = 1; j < s->n_active; j++)
    add_into(s->m->grads + lo, s->m->lanes[j].part + lo, hi - lo);
}

static void barrier(step_t *s) {
  if (s->pool != NULL)
    tb__pool_barrier(s->pool);
}

static void train_task(void *arg, int t) {
  step_t *s = arg;
  tb_model_t *m = s->m;
  long P = m->n_params, lo, hi;
  if (t < s->n_active)
    lane_rows(s, t);
  barrier(s);
  if (t == 0)
    add_stats(s, m->grads + P);
  slice(s, t, &lo, &hi);
  if (!multi(s->sync)) {
    for (long c = lo; c < hi; c += TB__CHUNK) {
      long e = c + TB__CHUNK < hi ? c + TB__CHUNK : hi;
      add_partials(s, c, e);
      tb__optim_apply(m, &s->coef, c, e);
    }
    return;
  }
  add_partials(s, lo, hi);
  barrier(s);
  if (t == 0) {
    tb__sync_t *y = s->sync;
    long n_sum = P + TB_REDUCE_N_STATS;
    if (y->take != NULL)
      y->take(y->user, &y->ctl);
    tb_reduce_ctl_put(m->grads, n_sum, &y->ctl);
    s->rc = y->red->allreduce(y->red, m->grads, n_sum, s->err);
    if (s->rc == 0) {
      tb_reduce_ctl_get(m->grads, n_sum, &y->ctl);
      /* the coordinator's rate, exactly (the rate is a float32) */
      m->lr = y->ctl.lr;
      tb__optim_prepare(m, &s->coef);
    }
  }
  barrier(s);
  if (s->rc == 0)
    tb__optim_apply(m, &s->coef, lo, hi);
}

static void rows_task(void *arg, int t) {
  step_t *s = arg;
  if (t < s->n_active)
    lane_rows(s, t);
}

/* Sets up a step of kind over batch b and runs its lanes. */
static int run(step_t *s, tb_model_t *m, int kind, const tb__batch_t *b, tb_err_t *err) {
  int r, threads = tb_get_num_threads();
  bool blas = threads > 1 && blas_wins((double)m->n_params, b->n, threads);
  /* How many lanes split the rows is decided from the global batch, so that
   * every participant splits alike. */
  int lanes = tb__step_lanes(m, b->n);
  s->m = m;
  s->b = b;
  s->kind = kind;
  s->err = err;
  s->inv_n = 1.0f / (float)b->n;
  s->n_active = b->rows <= 0 ? 0 : b->rows < lanes ? b->rows : lanes;
  /* The pool runs when the rows are split (all its lanes share the update,
   * whether they had rows or not). */
  bool pool = lanes > 1 && s->n_active > 0 && (kind == STEP_TRAIN || s->n_active > 1);
  s->n_lanes = pool ? threads : 1;
  tb__blas_threads(blas ? threads : 1);
  if ((r = prepare(m, kind, s->n_lanes, s->n_active, b->rows, err)) != 0)
    return r;
  s->pool = pool ? m->pool : NULL;
  if (kind == STEP_TRAIN && (r = tb__draw_masks(m, b->n)) != 0)
    return tb_errf(err, r, "out of memory for dropout masks of %d rows", b->n);
  if (kind == STEP_TRAIN) {
    if (s->n_active == 0) /* no rows here: this participant adds zeros */
      memset(m->grads, 0, (size_t)m->n_params * sizeof(float));
    tb__optim_prepare(m, &s->coef);
  }
  if (s->pool == NULL)
    (kind == STEP_TRAIN ? train_task : rows_task)(s, 0);
  else
    tb__pool_run(s->pool, kind == STEP_TRAIN ? train_task : rows_task, s);
  return s->rc;
}

int tb__train_batch(tb_model_t *m, const tb__batch_t *b, tb__sync_t *sync, tb_err_t *err) {
  step_t s = {.sync = sync};
  int r = run(&s, m, STEP_TRAIN, b, err);
  if (r != 0)
    return r;
  m->iterations++;
  tb__metrics_add(m, m->grads + m->n_params);
  return 0;
}

int tb__test_batch(tb_model_t *m, const tb__batch_t *b, tb__sync_t *sync, tb_err_t *err) {
  step_t s = {.sync = sync};
  int r = run(&s, m, STEP_TEST, b, err);
  if (r != 0)
    return r;
  add_stats(&s, m->test_buf);
  if (multi(sync)) {
    tb_reduce_ctl_t none = {.lr = (float)m->lr};
    tb_reduce_ctl_put(m->test_buf, TB_REDUCE_N_STATS, &none);
    if ((r = sync->red->allreduce(sync->red, m->test_buf, TB_REDUCE_N_STATS, err)) != 0)
      return r;
  }
  tb__metrics_add(m, m->test_buf);
  return 0;
}

int tb__predict_batch(tb_model_t *m, const float *x, int n, float *out) {
  tb__batch_t b = {.x = x};
  tb__batch_share(&b, n, NULL);
  step_t s = {.out = out};
  return run(&s, m, STEP_PREDICT, &b, NULL);
}
