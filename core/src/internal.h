/* Private to core: the model's layout, shared by model.c, layers.c, loss.c,
 * optim.c, fit.c and weights.c. */
#ifndef TB_CORE_INTERNAL_H
#define TB_CORE_INTERNAL_H

#include "trainbus/callbacks.h"
#include "trainbus/model.h"
#include "trainbus/reduce.h"

#include <stdbool.h>

typedef enum { TB__DENSE = 0, TB__ACTIVATION, TB__DROPOUT } tb__kind_t;

/* For a hot elementwise loop: compiled for AVX-512, AVX2 and the x86-64
 * baseline, the best picked at load time (GCC's and clang's target_clones).
 * Every clone gives the same bits: no multiply-add is fused (core builds
 * with -ffp-contract=off), and sqrt and division are correctly rounded at
 * every vector width. */
#if defined(__x86_64__) && defined(__GNUC__)
#define TB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TB_CLONES
#endif

/* One layer. Dense holds its kernel W (n_in x n_out, row-major like Keras's
 * kernel shape (in, out)) and bias b as views into the model's single
 * parameter block; its gradients are views into the gradient block (lane 0's
 * partial sums, then the batch's sums). Activations live in the lanes. */
typedef struct tb__layer_s {
  tb__kind_t kind;
  char name[32];
  int n_in, n_out;
  tb_act_t act;
  float alpha; /* leaky_relu negative slope */
  float rate;  /* dropout */
  long off;    /* offset of W in the parameter block (dense) */
  float *W, *b, *dW, *db;
  float *mask; /* dropout: 0 or 1/(1-rate) per element of the whole batch */
} tb__layer_t;

/* One lane of a step (step.c): a thread's rows of the batch, with its own
 * activation buffers sized for the most rows it has had, and its partial
 * sums. Lane 0 runs on the thread that called the step and adds its
 * gradients straight into the model's gradient block. */
typedef struct tb__lane_s {
  int cap;      /* rows the buffers hold */
  int row0;     /* the batch row its rows start at (dropout masks) */
  float *x, *y; /* its rows, gathered from a dataset (fit) */
  float *dout;  /* dL/d(last output) of its rows, or dL/dz of the fused softmax */
  float **z;    /* per layer: pre-activation (dense) or the input copy (activation) */
  float **a;    /* per layer: output */
  float **g;    /* per layer: dL/d output, then dL/dz */
  float *part;  /* partial gradient sums, n_params (lanes > 0) */
  float stats[TB_REDUCE_N_STATS];
} tb__lane_t;

struct tb_model_s {
  int n_inputs;
  int n_layers, cap_layers;
  tb__layer_t *layers;
  bool compiled;
  tb_compile_opts_t opts;
  tb_rng_t rng;
  uint64_t seed;

  long n_params;
  float *params; /* every W and b, layer by layer */
  /* The step buffer, TB_REDUCE_LEN(n_params + TB_REDUCE_N_STATS) floats in
   * reduce.h's layout: gradient sums (same layout as params), the batch's
   * statistics, the control words. */
  float *grads;
  /* optimizer state: slot1 = Adam m / SGD momentum / RMSprop velocity,
   * slot2 = Adam v / RMSprop momentum */
  float *slot1, *slot2;
  long iterations; /* optimizer steps taken (Keras's optimizer.iterations) */
  double lr;

  /* Threads (step.c): the pool, its lanes, and the rows the dropout masks
   * hold. A validation or test batch's statistics and control words. */
  struct tb__pool_s *pool;
  int n_lanes;
  tb__lane_t *lanes;
  int cap_rows;
  float test_buf[TB_REDUCE_LEN(TB_REDUCE_N_STATS)];
  int y_width; /* width of y the loss expects (1 for sparse) */

  /* running metrics since tb_model_reset_metrics(): float32 totals and one
   * float32 count, as Keras's Mean trackers (every tracker counts the same
   * rows) */
  float m_loss_sum, m_acc_sum, m_mse_sum, m_mae_sum;
  float m_count;
  bool fused_softmax_ce; /* last activation softmax + (sparse) CCE on probabilities */

  /* fit()'s position, saved in checkpoints: the current epoch, the next batch
   * to run, whether the epoch has begun, and this epoch's row order. */
  struct {
    int epoch, next_batch, steps, n;
    bool mid_epoch;
    bool stop; /* stop_training was set when the checkpoint was taken */
    int *idx;
    tb_logs_t train_logs; /* the last finished epoch's logs */
  } pos;
  tb_history_t history;
  tb_callback_t history_cb;
  /* The names of the output classes (tb_model_set_classes), owned; NULL
   * when the labels were numbers. Kept in checkpoints and weights files. */
  tb_classes_t *classes;
};

/* cb_monitor.c: Keras 3's MonitorCallback (keras/src/callbacks/
 * monitor_callback.py), shared by EarlyStopping, ReduceLROnPlateau and
 * ModelCheckpoint. */
typedef struct tb__monitor_s {
  char monitor[TB_LOGS_NAME_MAX];
  tb_mode_t mode;
  double min_delta; /* |min_delta|, negated once the op is known to be "<" */
  bool op_set;
  bool less; /* the op: true for "<" */
  bool warned;
} tb__monitor_t;
int tb__monitor_init(tb__monitor_t *mo, const char *monitor, tb_mode_t mode, double min_delta,
                     const char *who, tb_err_t *err);
/* _set_monitor_op, at the first epoch end: min, max, or for auto "loss" (with
 * or without "val_") minimised and a compiled metric by its direction; any
 * other name fails (Keras raises ValueError) with a message naming the
 * monitor and the fix. */
int tb__monitor_op(tb__monitor_t *mo, tb_ctx_t *ctx, const char *who);
/* _is_improvement: true without a reference, else op(cur - min_delta, ref),
 * compared in float32 as Keras's ops.less / ops.greater compare Python
 * floats (converted to float32 tensors). */
bool tb__monitor_improved(const tb__monitor_t *mo, double cur, bool has_ref, double ref);
int tb__monitor_save(const tb__monitor_t *mo, tb_state_t *st);
int tb__monitor_load(tb__monitor_t *mo, const tb_state_t *st);
/* One warning (Keras's text after "warning: "): `what` then the monitor and
 * the keys there are. */
void tb__monitor_warn(tb__monitor_t *mo, const tb_logs_t *logs, const char *what, const char *end);

/* state.c: mkdir -p of the folder part of a file path. */
int tb__make_parent(const char *path);

/* checkpoint.c */
int tb__checkpoint_save(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const char *job_id,
                        const char *path, tb_err_t *err);
int tb__checkpoint_load(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const char *job_id,
                        const char *path, tb_err_t *err);
int tb__check_state_names(tb_callbacks_t *cbs, tb_err_t *err);
/* history.c */
void tb__history_init(tb_model_t *m);
void tb__history_free(tb_model_t *m);

/* blas.c: the one sgemm wrapper. C = alpha * op(A) * op(B) + beta * C, all
 * row-major; op(X) is X or X^T as ta / tb say; op(A) is m x k, op(B) k x n. */
void tb__sgemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, const float *B,
               float beta, float *C);

/* layers.c */
void tb__act_forward(tb_act_t act, float alpha, const float *restrict z, float *restrict a,
                     int rows, int cols);
/* g (in: dL/da, out: dL/dz), given z and a. */
void tb__act_backward(tb_act_t act, float alpha, const float *z, const float *a, float *g, int rows,
                      int cols);
/* Grows a lane's buffers to hold rows rows (TB_ENOMEM). */
int tb__lane_reserve(tb_model_t *m, tb__lane_t *ln, int rows);
void tb__lane_release(tb_model_t *m, tb__lane_t *ln);
/* Draws every dropout layer's mask for a batch of rows rows, layer by layer
 * and row by row from the model RNG (the order one thread would draw them
 * in); TB_ENOMEM. */
int tb__draw_masks(tb_model_t *m, int rows);
/* The lane's forward pass over n rows of x (n x n_inputs) that start at row
 * row0 of the batch (for the dropout masks); returns its output rows. */
const float *tb__forward(tb_model_t *m, tb__lane_t *ln, const float *x, int n, int row0,
                         bool training);
/* Walks back from ln->dout and writes the lane's gradients of its n rows
 * into grads (the parameter layout): dW = X^T dZ with beta 0, so grads need
 * not be cleared. */
void tb__backward(tb_model_t *m, tb__lane_t *ln, const float *x, int n, float *grads);

/* loss.c: the float32 sum over n rows of the per-sample losses and, if dout
 * is not NULL, the gradient of (that sum * inv_n) w.r.t. the model output
 * (or w.r.t. the softmax's input when fused); inv_n is 1 / the global batch
 * rows, so the lanes' gradients add up to the batch mean's. pre is the last
 * layer's z. */
float tb__loss_sum(const tb_model_t *m, const float *out, const float *pre, const float *y, int n,
                   float inv_n, float *dout);
/* Adds the rows' metric values into stats[TB_REDUCE_ACCURACY..MAE] (float32,
 * row order). */
void tb__metric_sums(const tb_model_t *m, const float *out, const float *y, int n, float *stats);
/* Adds a batch's reduced statistics to the running (float32) trackers. */
void tb__metrics_add(tb_model_t *m, const float *stats);
/* The trackers' means, under the metrics' names. */
void tb__metrics_logs(const tb_model_t *m, tb_logs_t *logs);
/* +1 if the compiled metric `name` improves upward (accuracy), -1 downward
 * (mse, mae), 0 if the model has no metric of that name (Keras's
 * Metric._direction, looked up by MonitorCallback._set_monitor_op). */
int tb__metric_direction(const tb_model_t *m, const char *name);

/* step.c: one batch split over the lanes. The batch's rows come from x/y
 * (contiguous, x n x n_inputs) or, when data is set, from data's rows
 * idx[from + i] (from + i when idx is NULL), gathered by each lane. A
 * participant of a reduction takes rows [row0, row0 + rows) of the n. */
typedef struct tb__batch_s {
  const float *x, *y;
  const tb_dataset_t *data;
  const int *idx;
  int from;
  int n;          /* rows of the (global) batch */
  int row0, rows; /* this participant's */
} tb__batch_t;
/* The participant's share of a batch of n rows. */
void tb__batch_share(tb__batch_t *b, int n, const tb_reduce_t *red);
/* With a reduction of size > 1 (fit()): the reduction, the coordinator's
 * hook that fills the control words just before a step's reduction, on the
 * step's thread (NULL on the other participants), and the words as reduced
 * (the coordinator's, on every participant). */
typedef struct tb__sync_s {
  tb_reduce_t *red;
  void (*take)(void *user, tb_reduce_ctl_t *ctl);
  void *user;
  tb_reduce_ctl_t ctl;
} tb__sync_t;
/* A training step: gradients (summed over lanes, then over participants),
 * the optimizer update at the words' rate, the running metrics. sync may be
 * NULL (one participant). 0, or an error with a sentence in *err. */
int tb__train_batch(tb_model_t *m, const tb__batch_t *b, tb__sync_t *sync, tb_err_t *err);
/* A test step: the running metrics only. */
int tb__test_batch(tb_model_t *m, const tb__batch_t *b, tb__sync_t *sync, tb_err_t *err);
/* Inference over n rows of x into out (n x n_outputs). */
int tb__predict_batch(tb_model_t *m, const float *x, int n, float *out);
/* The lanes a step of n rows uses with the current thread count; with
 * `threads` for a model of n_params parameters. */
int tb__step_lanes(const tb_model_t *m, int n);
int tb__lanes_for(int threads, int n, double n_params);
/* For tests and tests/bench/bench_threads: -1 decides from the measured
 * rules; 0 splits every batch of at least 2 x 8 rows into lanes, however
 * little work they get (so that small test models exercise the split); 1
 * runs one lane with BLAS's threads. Set it before a run, not during one. */
extern int tb__threading_force;
/* Joins the pool and frees the lanes. */
void tb__step_free(tb_model_t *m);

/* optim.c: a step is prepared once (the coefficients of iteration
 * iterations + 1 at the model's rate), applied to slices of the parameters
 * (any split gives the same result), then counted. */
typedef struct tb__optim_coef_s {
  float lr, alpha, one_b1, one_b2, eps, mu, rho, one_rho;
} tb__optim_coef_t;
int tb__optim_alloc(tb_model_t *m);
void tb__optim_prepare(const tb_model_t *m, tb__optim_coef_t *c);
void tb__optim_apply(tb_model_t *m, const tb__optim_coef_t *c, long lo, long hi);

/* blas.c: the BLAS threads for products of the step being prepared: 1 while
 * the lanes split the batch, n when one lane uses BLAS's own threads. */
void tb__blas_threads(int n);

#endif
