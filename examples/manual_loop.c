/* The seed's manual training loop: no fit(), just a train step in a loop of
 * our own, firing the same callback list (the event bus) that fit() fires.
 *
 * The data is the seed example, x = [1, 2, 3, 4] and y = [0, 0, 1, 1]; the
 * model is one sigmoid unit trained with binary crossentropy. A logging
 * callback prints every metric after each batch and each epoch, exactly as it
 * would under fit(), which is the point: anything written as a callback works
 * with any loop. */
#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/model.h"

#include <stdio.h>
#include <string.h>

/* The logging callback: prints every metric of the logs it is given. */
static int log_metrics(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  printf("%s %d:", tb_hook_name(ctx->hook), index);
  for (int i = 0; i < logs->n; i++)
    printf(" %s=%.4f", logs->names[i], logs->values[i]);
  printf("\n");
  return 0;
}

int main(void) {
  enum { EPOCHS = 60, BATCH = 2 };
  tb_dataset_t *d = NULL;
  tb_model_t *m = tb_model_new(1, 42);
  if (m == NULL || tb_gen_seed(&d) != 0)
    return 1;
  tb_model_add_dense(m, 1, TB_ACT_SIGMOID);
  tb_compile_opts_t opts = {.loss = TB_LOSS_BINARY_CROSSENTROPY, .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&opts.optim, TB_OPT_SGD);
  opts.optim.lr = 0.5;
  tb_err_t err;
  if (tb_model_compile(m, &opts, &err) != 0) {
    fprintf(stderr, "manual_loop: %s\n", err.msg);
    return 1;
  }

  tb_callback_t logger = {.name = "logger",
                          .on_train_batch_end = log_metrics,
                          .on_epoch_end = log_metrics,
                          .on_train_end = log_metrics};
  tb_callbacks_t bus;
  tb_callbacks_init(&bus);
  tb_callbacks_add(&bus, &logger);

  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.model = m;
  ctx.epochs = EPOCHS;
  ctx.steps = (d->n + BATCH - 1) / BATCH;
  ctx.batch_size = BATCH;

  tb_logs_t logs;
  tb_logs_clear(&logs);
  tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_BEGIN, -1, &logs);
  for (int epoch = 0; epoch < EPOCHS && !ctx.stop_training; epoch++) {
    tb_model_reset_metrics(m);
    tb_logs_clear(&logs);
    tb_callbacks_fire(&bus, &ctx, TB_HOOK_EPOCH_BEGIN, epoch, &logs);
    for (int b = 0; b < ctx.steps; b++) {
      tb_logs_clear(&logs);
      tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_BATCH_BEGIN, b, &logs);
      tb_model_train_step(m, d->x + b * BATCH, d->y + b * BATCH, BATCH, &logs);
      tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_BATCH_END, b, &logs);
    }
    tb_callbacks_fire(&bus, &ctx, TB_HOOK_EPOCH_END, epoch, &logs);
  }
  tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_END, -1, &logs);

  float pred[4];
  tb_model_forward(m, d->x, 4, pred);
  printf("predictions: %.3f %.3f %.3f %.3f\n", pred[0], pred[1], pred[2], pred[3]);
  tb_callbacks_release(&bus);
  tb_model_free(m);
  tb_dataset_free(d);
  return 0;
}
