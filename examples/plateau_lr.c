/* The seed's learning-rate callback: halve the rate when val_loss has not
 * improved for 2 epochs. Epochs without validation data are skipped (here
 * validation runs every other epoch, so half the epochs have no val_loss).
 *
 * This is ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0) written by
 * hand, to show what a user's own stateful callback looks like: its state
 * lives behind `user`, and it changes the rate with tb_model_set_lr(). */
#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/model.h"

#include <math.h>
#include <stdio.h>

typedef struct plateau_s {
  double best;
  int wait;
} plateau_t;

static int on_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  plateau_t *p = cb->user;
  double val_loss;
  if (!tb_logs_get(logs, "val_loss", &val_loss)) {
    printf("epoch %d: no validation data, skipped\n", epoch);
    return 0;
  }
  if (val_loss < p->best) {
    p->best = val_loss;
    p->wait = 0;
  } else if (++p->wait >= 2) {
    double lr = tb_model_lr(ctx->model) * 0.5;
    tb_model_set_lr(ctx->model, lr);
    p->wait = 0;
    printf("epoch %d: val_loss %.4f has not improved on %.4f for 2 epochs; lr -> %g\n", epoch,
           val_loss, p->best, lr);
    return 0;
  }
  printf("epoch %d: val_loss %.4f (best %.4f, wait %d) lr %g\n", epoch, val_loss, p->best, p->wait,
         tb_model_lr(ctx->model));
  return 0;
}

int main(void) {
  tb_dataset_t *d = NULL;
  tb_err_t err;
  if (tb_gen_blobs(400, 3, 2, 2.0, 11, &d) != 0)
    return 1;
  tb_model_t *m = tb_model_new(2, 3);
  tb_model_add_dense(m, 16, TB_ACT_RELU);
  tb_model_add_dense(m, 3, TB_ACT_SOFTMAX);
  tb_compile_opts_t co = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                          .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&co.optim, TB_OPT_SGD);
  co.optim.lr = 0.5; /* too high on purpose, so the plateau comes */
  if (tb_model_compile(m, &co, &err) != 0) {
    fprintf(stderr, "plateau_lr: %s\n", err.msg);
    return 1;
  }
  plateau_t state = {.best = INFINITY};
  tb_callback_t plateau = {.name = "plateau", .on_epoch_end = on_epoch_end, .user = &state};
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_callbacks_add(&cbs, &plateau);
  tb_fit_opts_t fo;
  tb_fit_opts_defaults(&fo);
  fo.epochs = 30;
  fo.validation_split = 0.25;
  fo.validation_freq = 2;
  fo.verbose = 0;
  int r = tb_model_fit(m, d, &fo, &cbs, NULL, &err);
  if (r != 0)
    fprintf(stderr, "plateau_lr: %s\n", err.msg);
  printf("final lr %g\n", tb_model_lr(m));
  tb_callbacks_release(&cbs);
  tb_model_free(m);
  tb_dataset_free(d);
  return r == 0 ? 0 : 1;
}
