/* The seed's logging callback: prints every metric after each batch and
 * after each epoch, trained with fit() on two spirals with validation.
 *
 * A callback is a struct of optional hooks plus a user pointer; this one fills
 * two hooks with the same function, which reads the hook's name from ctx. */
#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/model.h"

#include <stdio.h>

static int print_logs(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  FILE *out = cb->user;
  if (ctx->hook == TB_HOOK_TRAIN_BATCH_END)
    fprintf(out, "epoch %d batch %d:", ctx->epoch, index);
  else
    fprintf(out, "epoch %d end:", index);
  for (int i = 0; i < logs->n; i++)
    fprintf(out, " %s=%.4f", logs->names[i], logs->values[i]);
  fputc('\n', out);
  return 0;
}

int main(void) {
  tb_dataset_t *d = NULL;
  tb_err_t err;
  if (tb_gen_spirals(200, 0.1, 7, &d) != 0)
    return 1;
  tb_model_t *m = tb_model_new(2, 7);
  tb_model_add_dense(m, 32, TB_ACT_RELU);
  tb_model_add_dense(m, 32, TB_ACT_RELU);
  tb_model_add_dense(m, 2, TB_ACT_SOFTMAX);
  tb_compile_opts_t co = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                          .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&co.optim, TB_OPT_ADAM);
  co.optim.lr = 0.01;
  if (tb_model_compile(m, &co, &err) != 0) {
    fprintf(stderr, "logging_callback: %s\n", err.msg);
    return 1;
  }

  tb_callback_t logger = {.name = "logger",
                          .on_train_batch_end = print_logs,
                          .on_epoch_end = print_logs,
                          .user = stdout};
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_callbacks_add(&cbs, &logger);

  tb_fit_opts_t fo;
  tb_fit_opts_defaults(&fo);
  fo.epochs = 5;
  fo.batch_size = 40;
  fo.validation_split = 0.2; /* 320 training rows: 8 batches an epoch */
  fo.verbose = 0;
  int r = tb_model_fit(m, d, &fo, &cbs, NULL, &err);
  if (r != 0)
    fprintf(stderr, "logging_callback: %s\n", err.msg);
  tb_callbacks_release(&cbs);
  tb_model_free(m);
  tb_dataset_free(d);
  return r == 0 ? 0 : 1;
}
