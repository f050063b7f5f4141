/* Private to core: the model's layout, shared by model.c, layers.c, loss.c,
 * optim.c, fit.c and weights.c. */
#ifndef TB_CORE_INTERNAL_H
#define TB_CORE_INTERNAL_H

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

  /* running metrics since tb_model_reset_metrics() */
  double m_loss_sum, m_acc_sum, m_mse_sum, m_mae_sum;
  long m_count;
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
};

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

/* loss.c: loss of the batch (mean over rows) and, if dout is not NULL, its
 * gradient w.r.t. the model output (or w.r.t. the softmax's input when fused).
 * Also accumulates the running metrics. */
double tb__loss(tb_model_t *m, const float *out, const float *pre, const float *y, int n,
                float *dout);
void tb__metrics_update(tb_model_t *m, const float *out, const float *y, int n, double loss);
void tb__metrics_logs(const tb_model_t *m, tb_logs_t *logs);

/* optim.c */
int tb__optim_alloc(tb_model_t *m);
void tb__optim_step(tb_model_t *m);

#endif
