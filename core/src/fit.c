/* fit / evaluate / predict: Keras's loops, hook for hook.
 *
 *   train_begin
 *   for epoch:  epoch_begin; apply the control block
 *               for batch: train_batch_begin, step, train_batch_end(running means)
 *                          apply the control block; break if stop_training
 *               epoch logs = the last batch logs (epoch means)
 *               if validating: test_begin, test_batch_*, test_end; add val_ keys
 *               epoch_end(epoch logs); apply the control block;
 *               break if stop_training
 *   train_end(last epoch logs)
 *
 * A hook that fails aborts the loop at once and, as in Keras (which has no
 * try/finally), train_end is not fired. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int fail_hook(tb_ctx_t *ctx, int r, tb_err_t *err) {
  if (err != NULL) {
    if (ctx->err.msg[0] != '\0')
      tb_errf(err, r, "callback %s failed in %s: %s", ctx->failed ? ctx->failed : "?",
              tb_hook_name(ctx->hook), ctx->err.msg);
    else
      tb_errf(err, r, "callback %s failed in %s: %s", ctx->failed ? ctx->failed : "?",
              tb_hook_name(ctx->hook), tb_strerror(r));
  }
  return r;
}

/* Copies rows idx[from..from+n) (or from..from+n when idx is NULL) of a
 * dataset into the model's batch buffers. */
static void gather(tb_model_t *m, const tb_dataset_t *d, const int *idx, int from, int n) {
  size_t xw = (size_t)d->n_features, yw = (size_t)d->n_outputs;
  for (int r = 0; r < n; r++) {
    int src = idx ? idx[from + r] : from + r;
    memcpy(m->xbuf + r * xw, d->x + (size_t)src * xw, xw * sizeof(float));
    memcpy(m->ybuf + r * yw, d->y + (size_t)src * yw, yw * sizeof(float));
  }
}

static int check_data(const tb_model_t *m, const tb_dataset_t *d, const char *what, tb_err_t *err) {
  if (d == NULL || d->n <= 0)
    return tb_errf(err, TB_EINVAL, "%s: no rows", what);
  if (d->n_features != m->n_inputs)
    return tb_errf(err, TB_ESHAPE, "%s: rows have %d features but the model takes %d", what,
                   d->n_features, m->n_inputs);
  if (d->n_outputs != m->y_width)
    return tb_errf(err, TB_ESHAPE, "%s: targets have %d columns but %s with %d outputs needs %d",
                   what, d->n_outputs, tb_loss_name(m->opts.loss), tb_model_n_outputs(m),
                   m->y_width);
  if (m->opts.loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY) {
    int k = tb_model_n_outputs(m);
    for (int i = 0; i < d->n; i++) {
      float v = d->y[i];
      if (!(v >= 0.0f && v < (float)k) || v != floorf(v))
        return tb_errf(err, TB_ERANGE, "%s: row %d: label %g is not a class index in [0, %d)", what,
                       i, (double)v, k);
    }
  }
  return 0;
}

/* The test loop, shared by evaluate() and fit()'s validation. */
static int run_test(tb_model_t *m, const tb_dataset_t *d, int bs, tb_callbacks_t *cbs,
                    tb_ctx_t *ctx, tb_logs_t *out, tb_err_t *err) {
  int r, steps = (d->n + bs - 1) / bs;
  tb_logs_t logs;
  tb_logs_clear(&logs);
  ctx->stop_evaluating = false;
  if ((r = tb_callbacks_fire(cbs, ctx, TB_HOOK_TEST_BEGIN, -1, &logs)) != 0)
    return fail_hook(ctx, r, err);
  tb_model_reset_metrics(m);
  for (int b = 0; b < steps; b++) {
    int n = b == steps - 1 ? d->n - b * bs : bs;
    tb_logs_clear(&logs);
    if ((r = tb_callbacks_fire(cbs, ctx, TB_HOOK_TEST_BATCH_BEGIN, b, &logs)) != 0)
      return fail_hook(ctx, r, err);
    if ((r = tb_model_test_step(m, d->x + (size_t)b * bs * d->n_features,
                                d->y + (size_t)b * bs * d->n_outputs, n, &logs)) != 0)
      return tb_errf(err, r, "evaluate: batch %d: %s", b, tb_strerror(r));
    if ((r = tb_callbacks_fire(cbs, ctx, TB_HOOK_TEST_BATCH_END, b, &logs)) != 0)
      return fail_hook(ctx, r, err);
    if (ctx->stop_evaluating)
      break;
  }
  tb_logs_clear(out);
  tb__metrics_logs(m, out);
  tb_logs_clear(&logs);
  tb_logs_merge(&logs, out, NULL);
  if ((r = tb_callbacks_fire(cbs, ctx, TB_HOOK_TEST_END, -1, &logs)) != 0)
    return fail_hook(ctx, r, err);
  return 0;
}

/* Writes the checkpoints callbacks asked for during the last dispatch. */
static int flush_requests(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const tb_fit_opts_t *o,
                          tb_err_t *err) {
  int r = 0;
  for (int i = 0; i < ctx->n_ckpt_requests && r == 0; i++)
    r = tb__checkpoint_save(m, ctx, cbs, o->job_id, ctx->ckpt_requests[i], err);
  ctx->n_ckpt_requests = 0;
  return r;
}

/* The fit's own checkpoints: <dir>/latest.tbck at epoch ends (and every
 * checkpoint_every batches), plus a named file when control asks for one. */
static int own_checkpoint(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const tb_fit_opts_t *o,
                          bool named, tb_err_t *err) {
  char path[1200];
  int r;
  if (o->checkpoint_dir == NULL)
    return 0;
  if (named) {
    snprintf(path, sizeof(path), "%s/checkpoint-e%04d-b%05d.tbck", o->checkpoint_dir, m->pos.epoch,
             m->pos.next_batch);
    if ((r = tb__checkpoint_save(m, ctx, cbs, o->job_id, path, err)) != 0)
      return r;
  }
  snprintf(path, sizeof(path), "%s/%s", o->checkpoint_dir, TB_CHECKPOINT_LATEST);
  char keep[sizeof(ctx->last_checkpoint)];
  memcpy(keep, ctx->last_checkpoint, sizeof(keep));
  r = tb__checkpoint_save(m, ctx, cbs, o->job_id, path, err);
  if (named) /* report the named file, not latest */
    memcpy(ctx->last_checkpoint, keep, sizeof(keep));
  return r;
}

/* At a batch boundary: apply the control block, then write whatever
 * checkpoints are due. A checkpoint asked for through the control block is
 * reported back through it with the file's path; a shutdown request writes
 * the latest checkpoint and leaves fit() with TB_EINTERRUPTED (or, with no
 * checkpoint directory to resume from, stops the run as Keras would). */
static int boundary(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const tb_fit_opts_t *o,
                    bool batch_due, tb_err_t *err) {
  int r;
  for (;;) {
    tb_applied_t a = {0};
    if (ctx->control != NULL)
      tb_control_apply(ctx->control, ctx, &a);
    if ((r = flush_requests(m, ctx, cbs, o, err)) != 0)
      return r;
    if (a.shutdown && o->checkpoint_dir == NULL) {
      ctx->stop_training = true;
      a.shutdown = false;
    }
    if (a.checkpoint && o->checkpoint_dir == NULL)
      return tb_errf(err, TB_ESTATE,
                     "checkpoint requested but the run has no checkpoint directory");
    if (a.checkpoint || a.shutdown || batch_due) {
      if ((r = own_checkpoint(m, ctx, cbs, o, a.checkpoint, err)) != 0)
        return r;
      batch_due = false;
    }
    if (a.checkpoint || a.shutdown) {
      tb_control_note_t n = {.action = a.checkpoint ? TB_CONTROL_CHECKPOINT : TB_CONTROL_SHUTDOWN,
                             .by = a.checkpoint_by,
                             .path = ctx->last_checkpoint,
                             .epoch = ctx->epoch,
                             .batch = ctx->batch,
                             .ticket = a.checkpoint_ticket};
      tb_control_note(ctx->control, &n);
      if (a.checkpoint && a.shutdown) {
        n.action = TB_CONTROL_SHUTDOWN;
        tb_control_note(ctx->control, &n);
      }
    }
    if (a.shutdown)
      return tb_errf(err, TB_EINTERRUPTED,
                     "interrupted for shutdown at epoch %d batch %d; resume from %s", ctx->epoch,
                     ctx->batch, ctx->last_checkpoint);
    if (!a.in_pause)
      return 0;
    /* A checkpoint was written during a pause: go back to waiting. */
  }
}

int tb_model_fit(tb_model_t *m, const tb_dataset_t *data, const tb_fit_opts_t *o,
                 tb_callbacks_t *cbs, tb_logs_t *last, tb_err_t *err) {
  tb_dataset_t *train_part = NULL, *val_part = NULL;
  const tb_dataset_t *train = data, *val = NULL;
  tb_callbacks_t list;
  int r;
  tb_callbacks_init(&list);
  if (last != NULL)
    tb_logs_clear(last);
  if (m == NULL || o == NULL || !m->compiled)
    return tb_errf(err, TB_ESTATE, "fit: the model is not compiled");
  if (o->epochs < 0 || o->batch_size <= 0 || o->initial_epoch < 0 || o->validation_freq < 0 ||
      o->checkpoint_every < 0)
    return tb_errf(err, TB_EINVAL,
                   "fit: epochs, batch_size, initial_epoch, validation_freq and "
                   "checkpoint_every must be non-negative (batch_size positive)");
  if (o->validation_split != 0.0 && o->validation_data != NULL)
    return tb_errf(err, TB_EINVAL, "fit: give validation_split or validation_data, not both");
  if ((r = check_data(m, data, "fit data", err)) != 0)
    return r;
  if (o->validation_split != 0.0) {
    if ((r = tb_dataset_split_tail(data, o->validation_split, &train_part, &val_part, err)) != 0)
      return r;
    train = train_part;
    val = val_part;
  } else if (o->validation_data != NULL) {
    val = o->validation_data;
    if ((r = check_data(m, val, "validation data", err)) != 0)
      return r;
  }

  /* The dispatch list: the caller's callbacks, then History (Keras appends
   * its History after the user's callbacks). */
  for (int i = 0; cbs != NULL && i < cbs->n; i++)
    if ((r = tb_callbacks_add(&list, cbs->items[i])) != 0)
      goto oom;
  if ((r = tb_callbacks_add(&list, &m->history_cb)) != 0)
    goto oom;
  if ((r = tb__check_state_names(&list, err)) != 0)
    goto done;

  int bs = o->batch_size, n = train->n, steps = (n + bs - 1) / bs;
  int freq = o->validation_freq > 0 ? o->validation_freq : 1;
  if ((r = tb__ensure_rows(m, bs < n ? bs : n)) != 0)
    goto oom;
  int *idx = realloc(m->pos.idx, (size_t)n * sizeof(int));
  if (idx == NULL)
    goto oom;
  m->pos.idx = idx;
  for (int i = 0; i < n; i++)
    idx[i] = i;
  m->pos.n = n;
  m->pos.steps = steps;
  m->pos.epoch = o->initial_epoch;
  m->pos.next_batch = 0;
  m->pos.mid_epoch = false;
  m->pos.stop = false;
  tb_logs_clear(&m->pos.train_logs);

  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = o->epochs;
  ctx.steps = steps;
  ctx.batch_size = bs;
  ctx.verbose = o->verbose;
  ctx.model = m;
  ctx.control = o->control;
  ctx.stop_training = false;
  if (o->resume_from != NULL)
    snprintf(ctx.resume_path, sizeof(ctx.resume_path), "%s", o->resume_from);

  tb_logs_t logs, epoch_logs, val_logs;
  tb_logs_clear(&logs);
  if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_TRAIN_BEGIN, -1, &logs)) != 0) {
    fail_hook(&ctx, r, err);
    goto done;
  }
  /* Resume right after train_begin, which resets the callbacks' state (as
   * Keras's BackupAndRestore restores in on_train_begin). */
  if (ctx.resume_path[0] != '\0') {
    if ((r = tb__checkpoint_load(m, &ctx, &list, o->job_id, ctx.resume_path, err)) != 0)
      goto done;
    ctx.stop_training = m->pos.stop;
  }
  /* A request made before training starts applies to the first batch. */
  if ((r = boundary(m, &ctx, &list, o, false, err)) != 0)
    goto done;

  /* A checkpoint taken in the middle of an epoch after a stop (a shutdown at
   * the boundary where the stop applied) still owes that epoch its end:
   * validation and epoch_end, as without the interruption. */
  for (int epoch = m->pos.epoch; epoch < o->epochs && !(m->pos.stop && !m->pos.mid_epoch);
       epoch++) {
    m->pos.epoch = epoch;
    if (!m->pos.mid_epoch) {
      tb_model_reset_metrics(m);
      tb_logs_clear(&logs);
      if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_EPOCH_BEGIN, epoch, &logs)) != 0) {
        fail_hook(&ctx, r, err);
        goto done;
      }
      if (o->shuffle)
        tb_rng_shuffle(&m->rng, m->pos.idx, n);
      m->pos.mid_epoch = true;
      m->pos.next_batch = 0;
      if ((r = flush_requests(m, &ctx, &list, o, err)) != 0)
        goto done;
      /* What epoch_begin's callbacks (a lockstep client's answer among them)
       * asked for takes effect before the epoch's first batch: a pause holds
       * here, a checkpoint is this position (docs/PROTOCOL.md, continue). */
      if ((r = boundary(m, &ctx, &list, o, false, err)) != 0)
        goto done;
    } else {
      ctx.epoch = epoch; /* resumed inside this epoch: it has begun already */
      if (ctx.stop_training)
        m->pos.next_batch = steps; /* a stop had ended its batches */
    }
    for (int b = m->pos.next_batch; b < steps; b++) {
      int rows = b == steps - 1 ? n - b * bs : bs;
      tb_logs_clear(&logs);
      if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_TRAIN_BATCH_BEGIN, b, &logs)) != 0) {
        fail_hook(&ctx, r, err);
        goto done;
      }
      gather(m, train, o->shuffle ? m->pos.idx : NULL, b * bs, rows);
      if ((r = tb_model_train_step(m, m->xbuf, m->ybuf, rows, &logs)) != 0) {
        tb_errf(err, r, "fit: epoch %d batch %d: %s", epoch, b, tb_strerror(r));
        goto done;
      }
      if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_TRAIN_BATCH_END, b, &logs)) != 0) {
        fail_hook(&ctx, r, err);
        goto done;
      }
      m->pos.next_batch = b + 1;
      bool due = o->checkpoint_every > 0 && m->iterations % o->checkpoint_every == 0;
      if ((r = boundary(m, &ctx, &list, o, due, err)) != 0)
        goto done;
      /* As Keras's fit: stop_training is looked at after each batch, so a stop
       * set in train_begin or epoch_begin still trains that one batch. */
      if (ctx.stop_training)
        break;
    }
    /* Epoch logs are the epoch's means, captured before validation. */
    tb_logs_clear(&epoch_logs);
    tb__metrics_logs(m, &epoch_logs);
    if (val != NULL && (epoch + 1) % freq == 0) {
      if ((r = run_test(m, val, bs, &list, &ctx, &val_logs, err)) != 0)
        goto done;
      tb_logs_merge(&epoch_logs, &val_logs, "val_");
    }
    /* The rate the epoch trained with (float(the float32 variable)), so
     * History, CSVLogger and the bus see every change, whoever made it:
     * under Keras 3's name, learning_rate, and tf.keras 2's, lr. */
    tb_logs_set(&epoch_logs, "lr", m->lr);
    tb_logs_set(&epoch_logs, "learning_rate", m->lr);
    ctx.batch = -1;
    if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_EPOCH_END, epoch, &epoch_logs)) != 0) {
      fail_hook(&ctx, r, err);
      goto done;
    }
    m->pos.train_logs = epoch_logs;
    m->pos.epoch = epoch + 1;
    m->pos.next_batch = 0;
    m->pos.mid_epoch = false;
    m->pos.stop = ctx.stop_training;
    if ((r = flush_requests(m, &ctx, &list, o, err)) != 0 ||
        (r = own_checkpoint(m, &ctx, &list, o, false, err)) != 0)
      goto done;
    /* What epoch_end asked for takes effect before the next epoch begins: a
     * pause holds here and a checkpoint is the end of this epoch (named for
     * the next epoch's batch 0), not a batch into the next one. */
    if ((r = boundary(m, &ctx, &list, o, false, err)) != 0)
      goto done;
    m->pos.stop = ctx.stop_training;
  }
  if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_TRAIN_END, -1, &m->pos.train_logs)) != 0) {
    fail_hook(&ctx, r, err);
    goto done;
  }
  if (last != NULL)
    *last = m->pos.train_logs;
  goto done;

oom:
  r = tb_errf(err, TB_ENOMEM, "fit: out of memory");
done:
  tb_callbacks_release(&list);
  tb_dataset_free(train_part);
  tb_dataset_free(val_part);
  return r;
}

int tb_model_evaluate(tb_model_t *m, const tb_dataset_t *data, int batch_size, int verbose,
                      tb_callbacks_t *cbs, tb_logs_t *out, tb_err_t *err) {
  int r;
  if (m == NULL || !m->compiled || out == NULL)
    return tb_errf(err, TB_ESTATE, "evaluate: the model is not compiled");
  if (batch_size <= 0)
    return tb_errf(err, TB_EINVAL, "evaluate: batch_size must be positive, got %d", batch_size);
  if ((r = check_data(m, data, "evaluate data", err)) != 0)
    return r;
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  ctx.steps = (data->n + batch_size - 1) / batch_size;
  ctx.batch_size = batch_size;
  ctx.verbose = verbose;
  ctx.model = m;
  return run_test(m, data, batch_size, cbs, &ctx, out, err);
}

int tb_model_predict(tb_model_t *m, const tb_dataset_t *data, int batch_size, int verbose,
                     tb_callbacks_t *cbs, float *out, tb_err_t *err) {
  int r;
  if (m == NULL || !m->compiled || out == NULL)
    return tb_errf(err, TB_ESTATE, "predict: the model is not compiled");
  if (batch_size <= 0)
    return tb_errf(err, TB_EINVAL, "predict: batch_size must be positive, got %d", batch_size);
  if (data == NULL || data->n <= 0 || data->n_features != m->n_inputs)
    return tb_errf(err, TB_ESHAPE, "predict: rows must have %d features", m->n_inputs);
  int k = tb_model_n_outputs(m), steps = (data->n + batch_size - 1) / batch_size;
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  ctx.steps = steps;
  ctx.batch_size = batch_size;
  ctx.verbose = verbose;
  ctx.model = m;
  ctx.stop_predicting = false;
  tb_logs_t logs;
  tb_logs_clear(&logs);
  if ((r = tb_callbacks_fire(cbs, &ctx, TB_HOOK_PREDICT_BEGIN, -1, &logs)) != 0)
    return fail_hook(&ctx, r, err);
  for (int b = 0; b < steps; b++) {
    int n = b == steps - 1 ? data->n - b * batch_size : batch_size;
    float *o = out + (size_t)b * batch_size * k;
    tb_logs_clear(&logs);
    if ((r = tb_callbacks_fire(cbs, &ctx, TB_HOOK_PREDICT_BATCH_BEGIN, b, &logs)) != 0)
      return fail_hook(&ctx, r, err);
    if ((r = tb_model_forward(m, data->x + (size_t)b * batch_size * data->n_features, n, o)) != 0)
      return tb_errf(err, r, "predict: batch %d: %s", b, tb_strerror(r));
    ctx.outputs = o;
    ctx.outputs_rows = n;
    ctx.outputs_cols = k;
    r = tb_callbacks_fire(cbs, &ctx, TB_HOOK_PREDICT_BATCH_END, b, &logs);
    ctx.outputs = NULL;
    if (r != 0)
      return fail_hook(&ctx, r, err);
    if (ctx.stop_predicting)
      break;
  }
  tb_logs_clear(&logs);
  if ((r = tb_callbacks_fire(cbs, &ctx, TB_HOOK_PREDICT_END, -1, &logs)) != 0)
    return fail_hook(&ctx, r, err);
  return 0;
}
