/* Private to core: the model's layout, shared by model.c, layers.c, loss.c,
 * optim.c, fit.c and weights.c. */
#ifndef TB_CORE_INTERNAL_H
#define TB_CORE_INTERNAL_H

#include "trainbus/callbacks.h"
#include "trainbus/model.h"

#include <stdbool.h>

typedef enum { TB__DENSE = 0, TB__ACTIVATION, TB__DROPOUT } tb__kind_t;

/* One layer. Dense holds its kernel W (n_in x n_out, row-major like Keras's
 * kernel shape (in, out)) and bias b as views into the model's single
 * parameter block; its gradients are views into the gradient block. Every
 * layer owns activation buffers sized for the largest batch seen so far. */
typedef struct tb__layer_s {
  tb__kind_t kind;
  char name[32];
  int n_in, n_out;
  tb_act_t act;
  float alpha; /* leaky_relu negative slope */
  float rate;  /* dropout */
  long off;    /* offset of W in the parameter block (dense) */
  float *W, *b, *dW, *db;
  float *z;    /* pre-activation (dense), or the input copy needed by backward */
  float *a;    /* output */
  float *mask; /* dropout: 0 or 1/(1-rate) per element */
  float *g;    /* gradient w.r.t. this layer's output, n x n_out */
} tb__layer_t;

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
  float *grads;  /* same layout */
  /* optimizer state: slot1 = Adam m / SGD momentum / RMSprop velocity,
   * slot2 = Adam v / RMSprop momentum */
  float *slot1, *slot2;
  long iterations; /* optimizer steps taken (Keras's optimizer.iterations) */
  double lr;

  int cap_rows; /* buffers hold this many rows */
  float *dout;  /* gradient of the loss w.r.t. the last output */
  float *xbuf;  /* gathered batch inputs for fit */
  float *ybuf;  /* gathered batch targets */
  int y_width;  /* width of y the loss expects (1 for sparse) */

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
const float *tb__forward(tb_model_t *m, const float *x, int n, bool training);
void tb__backward(tb_model_t *m, const float *x, int n);
int tb__ensure_rows(tb_model_t *m, int rows);

/* loss.c: loss of the batch (the float32 mean over rows of the float32
 * per-sample losses) and, if dout is not NULL, its gradient w.r.t. the model
 * output (or w.r.t. the softmax's input when fused). */
float tb__loss(tb_model_t *m, const float *out, const float *pre, const float *y, int n,
               float *dout);
/* Adds a batch to the running (float32) metric trackers. */
void tb__metrics_update(tb_model_t *m, const float *out, const float *y, int n, float loss);
/* The trackers' means, under the metrics' names. */
void tb__metrics_logs(const tb_model_t *m, tb_logs_t *logs);
/* +1 if the compiled metric `name` improves upward (accuracy), -1 downward
 * (mse, mae), 0 if the model has no metric of that name (Keras's
 * Metric._direction, looked up by MonitorCallback._set_monitor_op). */
int tb__metric_direction(const tb_model_t *m, const char *name);

/* optim.c */
int tb__optim_alloc(tb_model_t *m);
void tb__optim_step(tb_model_t *m);

#endif
