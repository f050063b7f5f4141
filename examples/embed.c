/* Embedding the trainbus server in a program with its own training loop.
 *
 * The loop is the seed's manual loop (examples/manual_loop.c): one sigmoid
 * unit learning x = [1, 2, 3, 4] -> y = [0, 0, 1, 1], a train step per batch
 * and every hook fired through the callback list. Three additions make it
 * observable and steerable from other processes, exactly like a trainbusd
 * job:
 *   - a server on its own thread (tb_server_new, tb_server_start);
 *   - a run attached to it (tb_server_attach), whose publisher callback goes
 *     last in the list (as Keras runs History after the user's callbacks);
 *   - tb_control_apply() on the run's control block at every batch boundary,
 *     which applies set_lr, stop and pause (it waits there while paused).
 *
 *   embed [--listen HOST:PORT] [--token TOKEN] [--epochs N] [--step-ms MS]
 *
 * --step-ms sleeps in every batch, standing in for real work so that a person
 * (or a test) has time to watch and steer. Then, from another terminal:
 *   trainbus watch --connect ADDR
 *   trainbus control set-lr embed 0.05 --connect ADDR --token TOKEN */
#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/model.h"
#include "trainbus/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
  const char *listen = "127.0.0.1:0", *token = NULL;
  int epochs = 60, step_ms = 0;
  enum { BATCH = 2 };
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
      listen = argv[++i];
    else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
      token = argv[++i];
    else if (strcmp(argv[i], "--epochs") == 0 && i + 1 < argc)
      epochs = atoi(argv[++i]);
    else if (strcmp(argv[i], "--step-ms") == 0 && i + 1 < argc)
      step_ms = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: embed [--listen HOST:PORT] [--token TOKEN] [--epochs N] "
                      "[--step-ms MS]\n");
      return 2;
    }
  }
  if (epochs < 1 || step_ms < 0) {
    fprintf(stderr, "embed: --epochs must be positive and --step-ms not negative\n");
    return 2;
  }

  /* The model and data, as in the manual loop. */
  tb_dataset_t *d = NULL;
  tb_model_t *m = tb_model_new(1, 42);
  if (m == NULL || tb_gen_seed(&d) != 0)
    return 1;
  tb_model_add_dense(m, 1, TB_ACT_SIGMOID);
  tb_compile_opts_t opts = {.loss = TB_LOSS_BINARY_CROSSENTROPY, .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&opts.optim, TB_OPT_SGD);
  opts.optim.lr = 0.5;
  tb_err_t err = {{0}};
  if (tb_model_compile(m, &opts, &err) != 0) {
    fprintf(stderr, "embed: %s\n", err.msg);
    return 1;
  }

  /* The server, on its own thread, and our run. */
  tb_server_opts_t so;
  tb_server_opts_defaults(&so);
  so.listen[0] = listen;
  so.n_listen = 1;
  so.token = token;
  so.token_given = token != NULL;
  tb_server_t *srv = NULL;
  tb_run_t *run = NULL;
  if (tb_server_new(&so, &srv, &err) != 0) {
    fprintf(stderr, "embed: %s\n", err.msg);
    return 1;
  }
  if (tb_server_start(srv) != 0 || tb_server_attach(srv, "embed", epochs, &run, &err) != 0) {
    fprintf(stderr, "embed: cannot start the server: %s\n", err.msg);
    tb_server_stop(srv);
    tb_server_free(srv);
    return 1;
  }
  printf("embed: listening on %s\n", tb_server_address(srv, 0));
  if (token == NULL)
    printf("embed: token %s\n", tb_server_token(srv));
  printf("embed: run \"embed\", %d epochs\n", epochs);
  fflush(stdout);

  tb_callbacks_t bus;
  tb_callbacks_init(&bus);
  tb_callbacks_add(&bus, tb_run_callback(run)); /* last, like Keras's History */
  tb_control_t *control = tb_run_control(run);

  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.model = m;
  ctx.control = control;
  ctx.epochs = epochs;
  ctx.steps = (d->n + BATCH - 1) / BATCH;
  ctx.batch_size = BATCH;

  tb_logs_t logs;
  tb_logs_clear(&logs);
  int rc = tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_BEGIN, -1, &logs);
  /* A request made before the first batch applies to it. */
  tb_control_apply(control, &ctx, NULL);
  int epoch = 0;
  for (; rc == 0 && epoch < epochs && !ctx.stop_training; epoch++) {
    tb_model_reset_metrics(m);
    tb_logs_clear(&logs);
    rc = tb_callbacks_fire(&bus, &ctx, TB_HOOK_EPOCH_BEGIN, epoch, &logs);
    for (int b = 0; rc == 0 && b < ctx.steps && !ctx.stop_training; b++) {
      int rows = b == ctx.steps - 1 ? d->n - b * BATCH : BATCH;
      tb_logs_clear(&logs);
      rc = tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_BATCH_BEGIN, b, &logs);
      if (rc == 0)
        rc = tb_model_train_step(m, d->x + b * BATCH * d->n_features,
                                 d->y + b * BATCH * d->n_outputs, rows, &logs);
      if (step_ms > 0)
        sleep_ms(step_ms);
      if (rc == 0)
        rc = tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_BATCH_END, b, &logs);
      /* The batch boundary: remote set_lr, stop and pause take effect here. */
      if (rc == 0)
        rc = tb_control_apply(control, &ctx, NULL);
    }
    /* The rate this epoch trained with, as fit() reports it. */
    tb_logs_set(&logs, "lr", tb_model_lr(m));
    if (rc == 0)
      rc = tb_callbacks_fire(&bus, &ctx, TB_HOOK_EPOCH_END, epoch, &logs);
  }
  if (rc == 0)
    rc = tb_callbacks_fire(&bus, &ctx, TB_HOOK_TRAIN_END, -1, &logs);
  tb_run_detach(run, rc != 0);

  float pred[4];
  tb_model_forward(m, d->x, 4, pred);
  printf("embed: %s after %d epochs, lr %g\n",
         rc != 0             ? "failed"
         : ctx.stop_training ? "stopped"
                             : "finished",
         epoch, tb_model_lr(m));
  printf("predictions: %.3f %.3f %.3f %.3f\n", pred[0], pred[1], pred[2], pred[3]);
  fflush(stdout);

  /* Clients get the last events, then "bye shutdown". */
  tb_server_stop(srv);
  tb_server_free(srv);
  tb_callbacks_release(&bus);
  tb_model_free(m);
  tb_dataset_free(d);
  return rc == 0 ? 0 : 1;
}
