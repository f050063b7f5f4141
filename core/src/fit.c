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
                    tb_ctx_t *ctx, tb__sync_t *sync, tb_logs_t *out, tb_err_t *err) {
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
    tb__batch_t bt = {.x = d->x + (size_t)b * bs * d->n_features,
                      .y = d->y + (size_t)b * bs * d->n_outputs};
    tb__batch_share(&bt, n, sync != NULL ? sync->red : NULL);
    tb_err_t e = {{0}};
    if ((r = tb__test_batch(m, &bt, sync, &e)) != 0)
      return tb_errf(err, r, "evaluate: batch %d: %s", b, e.msg[0] ? e.msg : tb_strerror(r));
    tb__metrics_logs(m, &logs);
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

/* ---- several participants (reduce.h, size > 1) ----------------------------
 *
 * The coordinator (rank 0) owns the control block. Just before each step's
 * reduction it takes what the block asks (tb_control_take: a new rate and a
 * stop are applied at once, checkpoint, shutdown and pause requests handed
 * over) and writes it into the control words; every participant then trains
 * the step at the words' rate and, at the step's boundary, applies the same
 * stop, checkpoint (the coordinator writes it), shutdown or pause. A pause is
 * the coordinator waiting in its control block while the others wait in a
 * control-only exchange (allreduce of no sums), which then hands them what
 * changed during the pause. The boundaries after epoch_begin's and
 * epoch_end's hooks are the coordinator's in the same way, so every
 * participant gets its stop decision there (a lockstep client may have made
 * it on the coordinator alone); after epoch_end the weights' checksums are
 * compared too. Only the coordinator writes the fit's own checkpoints. */

typedef struct fit_sync_s {
  tb_model_t *m;
  tb_ctx_t *ctx;
  const tb_fit_opts_t *o;
  tb_applied_t taken;   /* coordinator: what the last take handed over */
  tb_reduce_ctl_t last; /* coordinator: the last words sent */
} fit_sync_t;

/* The coordinator's words: its rate and the flags, numbered by change. */
static void words(fit_sync_t *fs, tb_reduce_ctl_t *ctl, uint32_t flags) {
  float lr = (float)fs->m->lr;
  bool changed = flags != fs->last.flags || memcmp(&lr, &fs->last.lr, sizeof(lr)) != 0;
  *ctl = (tb_reduce_ctl_t){.flags = flags, .lr = lr, .version = fs->last.version + changed};
  fs->last = *ctl;
}

static void coordinator_take(void *user, tb_reduce_ctl_t *ctl) {
  fit_sync_t *fs = user;
  tb_ctx_t *ctx = fs->ctx;
  tb_applied_t a;
  memset(&a, 0, sizeof(a));
  if (ctx->control != NULL)
    tb_control_take(ctx->control, ctx, &a);
  /* As boundary(): a shutdown with nowhere to checkpoint stops the run. */
  if (a.shutdown && fs->o->checkpoint_dir == NULL) {
    ctx->stop_training = true;
    a.shutdown = false;
  }
  fs->taken = a;
  words(fs, ctl,
        (ctx->stop_training ? TB_REDUCE_STOP : 0u) | (a.paused ? TB_REDUCE_PAUSE : 0u) |
            (a.checkpoint ? TB_REDUCE_CHECKPOINT : 0u) | (a.shutdown ? TB_REDUCE_SHUTDOWN : 0u));
}

/* A control-only exchange: every participant leaves with the coordinator's
 * rate and stop decision (flags are the coordinator's). */
static int exchange(tb__sync_t *sync, uint32_t flags, tb_err_t *err) {
  fit_sync_t *fs = sync->user;
  float buf[TB_REDUCE_LEN(0)];
  tb_reduce_ctl_t ctl = {.lr = (float)fs->m->lr};
  if (sync->red->rank == 0)
    words(fs, &ctl, flags);
  tb_reduce_ctl_put(buf, 0, &ctl);
  int r = sync->red->allreduce(sync->red, buf, 0, err);
  if (r != 0)
    return r;
  tb_reduce_ctl_get(buf, 0, &sync->ctl);
  fs->m->lr = sync->ctl.lr;
  fs->ctx->stop_training = (sync->ctl.flags & TB_REDUCE_STOP) != 0;
  return 0;
}

/* A boundary outside a step (after epoch_begin's and epoch_end's hooks, and
 * for a pause): the coordinator applies its control block as one process
 * does (boundary(): waiting through a pause, writing checkpoints), while the
 * others flush their own callbacks' requests and wait in an exchange that
 * then gives them its outcome: the rate, the stop decision, a shutdown. */
static int coordinator_boundary(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs,
                                const tb_fit_opts_t *o, tb__sync_t *sync, tb_err_t *err) {
  bool coord = sync->red->rank == 0;
  int r = coord ? boundary(m, ctx, cbs, o, false, err) : flush_requests(m, ctx, cbs, o, err);
  if (r != 0 && r != TB_EINTERRUPTED)
    return r;
  bool shut = r == TB_EINTERRUPTED;
  uint32_t flags = (ctx->stop_training ? TB_REDUCE_STOP : 0u) | (shut ? TB_REDUCE_SHUTDOWN : 0u);
  if ((r = exchange(sync, flags, coord && shut ? NULL : err)) != 0)
    return r;
  if (sync->ctl.flags & TB_REDUCE_SHUTDOWN)
    return coord ? TB_EINTERRUPTED
                 : tb_errf(err, TB_EINTERRUPTED,
                           "interrupted for shutdown at epoch %d batch %d (by the coordinator)",
                           ctx->epoch, ctx->batch);
  return 0;
}

/* The step's boundary on every participant, from the reduced words. */
static int multi_boundary(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const tb_fit_opts_t *o,
                          tb__sync_t *sync, bool batch_due, tb_err_t *err) {
  fit_sync_t *fs = sync->user;
  bool coord = sync->red->rank == 0;
  uint32_t f = sync->ctl.flags;
  int r;
  if ((r = flush_requests(m, ctx, cbs, o, err)) != 0)
    return r;
  if (f & TB_REDUCE_STOP)
    ctx->stop_training = true;
  bool ckpt = (f & TB_REDUCE_CHECKPOINT) != 0, shut = (f & TB_REDUCE_SHUTDOWN) != 0;
  if (coord) {
    if (ckpt && o->checkpoint_dir == NULL)
      return tb_errf(err, TB_ESTATE,
                     "checkpoint requested but the run has no checkpoint directory");
    if ((ckpt || shut || batch_due) && (r = own_checkpoint(m, ctx, cbs, o, ckpt, err)) != 0)
      return r;
    if (ckpt || shut) {
      tb_control_note_t n = {.action = ckpt ? TB_CONTROL_CHECKPOINT : TB_CONTROL_SHUTDOWN,
                             .by = fs->taken.checkpoint_by,
                             .path = ctx->last_checkpoint,
                             .epoch = ctx->epoch,
                             .batch = ctx->batch,
                             .ticket = fs->taken.checkpoint_ticket};
      tb_control_note(ctx->control, &n);
      if (ckpt && shut) {
        n.action = TB_CONTROL_SHUTDOWN;
        tb_control_note(ctx->control, &n);
      }
    }
  }
  if (shut)
    return tb_errf(err, TB_EINTERRUPTED, "interrupted for shutdown at epoch %d batch %d%s%s",
                   ctx->epoch, ctx->batch, coord ? "; resume from " : " (by the coordinator)",
                   coord ? ctx->last_checkpoint : "");
  /* A pause: the coordinator waits in its control block, the others in the
   * exchange. */
  if (f & TB_REDUCE_PAUSE)
    return coordinator_boundary(m, ctx, cbs, o, sync, err);
  return 0;
}

/* What the coordinator broadcasts before the first step, besides the
 * weights, optimizer slots and row order. */
typedef struct fit_state_s {
  int64_t n_params, n_rows, iterations;
  double lr;
  tb_rng_t rng;
  int32_t epoch, next_batch, mid_epoch, stop, shutdown, pad;
  float sums[5]; /* loss, accuracy, mse, mae totals and the count */
  tb_logs_t train_logs;
} fit_state_t;

/* The coordinator's state to every participant (see reduce.h). shutdown:
 * the coordinator is leaving (a shutdown before the first step); every
 * participant then returns TB_EINTERRUPTED. */
static int broadcast_state(tb_model_t *m, tb_ctx_t *ctx, tb_reduce_t *red, bool shutdown,
                           tb_err_t *err) {
  fit_state_t h;
  int r;
  memset(&h, 0, sizeof(h));
  h.n_params = m->n_params;
  h.n_rows = m->pos.n;
  h.iterations = m->iterations;
  h.lr = m->lr;
  h.rng = m->rng;
  h.epoch = m->pos.epoch;
  h.next_batch = m->pos.next_batch;
  h.mid_epoch = m->pos.mid_epoch;
  h.stop = ctx->stop_training;
  h.shutdown = shutdown;
  float sums[5] = {m->m_loss_sum, m->m_acc_sum, m->m_mse_sum, m->m_mae_sum, m->m_count};
  memcpy(h.sums, sums, sizeof(sums));
  h.train_logs = m->pos.train_logs;
  if ((r = red->broadcast(red, &h, sizeof(h), err)) != 0)
    return r;
  if (h.shutdown)
    return red->rank == 0 ? TB_EINTERRUPTED
                          : tb_errf(err, TB_EINTERRUPTED,
                                    "interrupted for shutdown before the first step "
                                    "(by the coordinator)");
  if (h.n_params != m->n_params || h.n_rows != m->pos.n)
    return tb_errf(err, TB_ESHAPE,
                   "participant %d has %ld parameters and %d training rows, the coordinator "
                   "%lld and %lld: every participant must train the same model on the same data",
                   red->rank, m->n_params, m->pos.n, (long long)h.n_params, (long long)h.n_rows);
  size_t pb = (size_t)m->n_params * sizeof(float);
  if ((r = red->broadcast(red, m->params, pb, err)) != 0 ||
      (m->slot1 != NULL && (r = red->broadcast(red, m->slot1, pb, err)) != 0) ||
      (m->slot2 != NULL && (r = red->broadcast(red, m->slot2, pb, err)) != 0) ||
      (r = red->broadcast(red, m->pos.idx, (size_t)m->pos.n * sizeof(int), err)) != 0)
    return r;
  m->iterations = (long)h.iterations;
  m->lr = h.lr;
  m->rng = h.rng;
  m->pos.epoch = h.epoch;
  m->pos.next_batch = h.next_batch;
  m->pos.mid_epoch = h.mid_epoch != 0;
  m->pos.stop = h.stop != 0;
  ctx->stop_training = h.stop != 0;
  m->m_loss_sum = h.sums[0];
  m->m_acc_sum = h.sums[1];
  m->m_mse_sum = h.sums[2];
  m->m_mae_sum = h.sums[3];
  m->m_count = h.sums[4];
  m->pos.train_logs = h.train_logs;
  return 0;
}

/* After every epoch's end: the coordinator's boundary (its outcome to
 * everyone), then the weights' and optimizer slots' checksums compared. */
static int epoch_sync(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const tb_fit_opts_t *o,
                      tb__sync_t *sync, int epoch, tb_err_t *err) {
  int r;
  if ((r = coordinator_boundary(m, ctx, cbs, o, sync, err)) != 0)
    return r;
  uint64_t h = tb_reduce_checksum(TB_REDUCE_CHECKSUM_INIT, m->params, m->n_params);
  if (m->slot1 != NULL)
    h = tb_reduce_checksum(h, m->slot1, m->n_params);
  if (m->slot2 != NULL)
    h = tb_reduce_checksum(h, m->slot2, m->n_params);
  char what[64];
  snprintf(what, sizeof(what), "weights and optimizer state after epoch %d", epoch + 1);
  return sync->red->check(sync->red, h, what, err);
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
  tb_reduce_t *red = o->reduce != NULL && o->reduce->size > 1 ? o->reduce : NULL;
  if (o->reduce != NULL &&
      (o->reduce->size < 1 || o->reduce->rank < 0 || o->reduce->rank >= o->reduce->size ||
       (red != NULL && (red->allreduce == NULL || red->broadcast == NULL || red->check == NULL))))
    return tb_errf(err, TB_EINVAL,
                   "fit: reduction: rank %d of %d participants, or an operation "
                   "missing",
                   o->reduce->rank, o->reduce->size);
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
  fit_sync_t fs = {.m = m, .ctx = &ctx, .o = o};
  tb__sync_t sync = {.red = red, .user = &fs, .ctl = {.lr = (float)m->lr}};
  /* A request made before training starts applies to the first batch. */
  r = red == NULL || red->rank == 0 ? boundary(m, &ctx, &list, o, false, err) : 0;
  if (red != NULL) {
    sync.take = red->rank == 0 ? coordinator_take : NULL;
    if (r != 0 && r != TB_EINTERRUPTED)
      goto done;
    int rb = broadcast_state(m, &ctx, red, r == TB_EINTERRUPTED, r == 0 ? err : NULL);
    r = r != 0 ? r : rb;
  }
  if (r != 0)
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
      if ((r = red != NULL ? coordinator_boundary(m, &ctx, &list, o, &sync, err)
                           : boundary(m, &ctx, &list, o, false, err)) != 0)
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
      tb__batch_t bt = {.data = train, .idx = o->shuffle ? m->pos.idx : NULL, .from = b * bs};
      tb__batch_share(&bt, rows, red);
      tb_err_t e = {{0}};
      if ((r = tb__train_batch(m, &bt, red != NULL ? &sync : NULL, &e)) != 0) {
        tb_errf(err, r, "fit: epoch %d batch %d: %s", epoch, b, e.msg[0] ? e.msg : tb_strerror(r));
        goto done;
      }
      tb__metrics_logs(m, &logs);
      if ((r = tb_callbacks_fire(&list, &ctx, TB_HOOK_TRAIN_BATCH_END, b, &logs)) != 0) {
        fail_hook(&ctx, r, err);
        goto done;
      }
      m->pos.next_batch = b + 1;
      bool due = o->checkpoint_every > 0 && m->iterations % o->checkpoint_every == 0;
      if ((r = red != NULL ? multi_boundary(m, &ctx, &list, o, &sync, due, err)
                           : boundary(m, &ctx, &list, o, due, err)) != 0)
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
      if ((r = run_test(m, val, bs, &list, &ctx, red != NULL ? &sync : NULL, &val_logs, err)) != 0)
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
        ((red == NULL || red->rank == 0) &&
         (r = own_checkpoint(m, &ctx, &list, o, false, err)) != 0))
      goto done;
    /* What epoch_end asked for takes effect before the next epoch begins: a
     * pause holds here and a checkpoint is the end of this epoch (named for
     * the next epoch's batch 0), not a batch into the next one. With several
     * participants the coordinator does it, and the epoch's exchange tells
     * the others (who wait in it meanwhile) what came of it. */
    if ((r = red != NULL ? epoch_sync(m, &ctx, &list, o, &sync, epoch, err)
                         : boundary(m, &ctx, &list, o, false, err)) != 0)
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
  return run_test(m, data, batch_size, cbs, &ctx, NULL, out, err);
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
