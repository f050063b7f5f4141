/* The control block. Writers (any thread) take the mutex and set a request;
 * the trainer applies requests at batch boundaries. A pause is a condition
 * wait on the trainer thread, woken by resume, stop, shutdown or a new
 * learning rate (which is applied at once, so a paused run can be steered and
 * the requester told when it took effect). Notifications are sent with the
 * mutex released, so a notify function may take its own locks freely. */
#include "trainbus/control.h"
#include "trainbus/callback.h"
#include "trainbus/error.h"
#include "trainbus/model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int tb_control_init(tb_control_t *c) {
  memset(c, 0, sizeof(*c));
  if (pthread_mutex_init(&c->mu, NULL) != 0)
    return TB_ENOMEM;
  if (pthread_cond_init(&c->cv, NULL) != 0) {
    pthread_mutex_destroy(&c->mu);
    return TB_ENOMEM;
  }
  return 0;
}

void tb_control_destroy(tb_control_t *c) {
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
}

void tb_control_set_notify(tb_control_t *c, tb_control_notify_fn fn, void *user) {
  c->notify = fn;
  c->notify_user = user;
}

static void copy_by(char *dst, size_t len, const char *by) {
  snprintf(dst, len, "%s", by != NULL ? by : "");
}

int tb_control_set_lr(tb_control_t *c, double lr, const char *by) {
  return tb_control_set_lr_ticket(c, lr, by, NULL);
}

int tb_control_set_lr_ticket(tb_control_t *c, double lr, const char *by, uint64_t *ticket) {
  /* the model keeps a float32 (tb_model_set_lr): its range is the limit */
  if (!(isfinite((float)lr) && lr > 0.0))
    return TB_ERANGE;
  pthread_mutex_lock(&c->mu);
  c->lr_ticket = ++c->tickets;
  if (ticket != NULL)
    *ticket = c->lr_ticket;
  c->has_lr = true;
  c->lr = lr;
  copy_by(c->lr_by, sizeof(c->lr_by), by);
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return 0;
}

void tb_control_stop(tb_control_t *c, const char *by) {
  pthread_mutex_lock(&c->mu);
  c->stop = true;
  copy_by(c->stop_by, sizeof(c->stop_by), by);
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void tb_control_pause(tb_control_t *c, const char *by) {
  pthread_mutex_lock(&c->mu);
  c->pause = true;
  copy_by(c->pause_by, sizeof(c->pause_by), by);
  pthread_mutex_unlock(&c->mu);
}

void tb_control_hold(tb_control_t *c, const char *by) {
  pthread_mutex_lock(&c->mu);
  c->pause = true;
  c->in_pause = true;
  copy_by(c->pause_by, sizeof(c->pause_by), by);
  pthread_mutex_unlock(&c->mu);
}

void tb_control_resume(tb_control_t *c, const char *by) {
  pthread_mutex_lock(&c->mu);
  c->pause = false;
  copy_by(c->pause_by, sizeof(c->pause_by), by);
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void tb_control_checkpoint(tb_control_t *c, const char *by) {
  tb_control_checkpoint_ticket(c, by, NULL);
}

void tb_control_checkpoint_ticket(tb_control_t *c, const char *by, uint64_t *ticket) {
  pthread_mutex_lock(&c->mu);
  c->checkpoint_ticket = ++c->tickets;
  if (ticket != NULL)
    *ticket = c->checkpoint_ticket;
  c->checkpoint = true;
  copy_by(c->checkpoint_by, sizeof(c->checkpoint_by), by);
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void tb_control_shutdown(tb_control_t *c) {
  pthread_mutex_lock(&c->mu);
  c->shutdown = true;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

bool tb_control_paused(tb_control_t *c) {
  pthread_mutex_lock(&c->mu);
  bool p = c->pause;
  pthread_mutex_unlock(&c->mu);
  return p;
}

void tb_control_note(tb_control_t *c, const tb_control_note_t *note) {
  if (c->notify != NULL)
    c->notify(c, note, c->notify_user);
}

static void note(tb_control_t *c, tb_ctx_t *ctx, tb_control_action_t action, double old_v,
                 double new_v, const char *by, uint64_t ticket) {
  tb_control_note_t n = {.action = action,
                         .old_value = old_v,
                         .new_value = new_v,
                         .by = by,
                         .epoch = ctx->epoch,
                         .batch = ctx->batch,
                         .ticket = ticket};
  tb_control_note(c, &n);
}

/* Applies the learning rate and stop requests; called with c->mu held, and
 * releases it around notifications. */
static void apply_now(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *a) {
  if (c->has_lr && ctx->model != NULL) {
    char by[64];
    double old_lr = tb_model_lr(ctx->model), lr = c->lr;
    uint64_t ticket = c->lr_ticket;
    memcpy(by, c->lr_by, sizeof(by));
    c->has_lr = false;
    tb_model_set_lr(ctx->model, lr);
    a->lr_changed = true;
    if (a->old_lr == 0)
      a->old_lr = old_lr;
    a->new_lr = lr;
    pthread_mutex_unlock(&c->mu);
    note(c, ctx, TB_CONTROL_SET_LR, old_lr, lr, by, ticket);
    pthread_mutex_lock(&c->mu);
  }
  if (c->stop) {
    char by[64];
    memcpy(by, c->stop_by, sizeof(by));
    c->stop = false;
    c->pause = false; /* a stop ends a pause */
    bool first = !ctx->stop_training;
    ctx->stop_training = true;
    a->stopped |= first;
    if (first) {
      pthread_mutex_unlock(&c->mu);
      note(c, ctx, TB_CONTROL_STOP, 0, 0, by, 0);
      pthread_mutex_lock(&c->mu);
    }
  }
}

void tb_control_apply_changes(tb_control_t *c, tb_ctx_t *ctx) {
  tb_applied_t a;
  memset(&a, 0, sizeof(a));
  pthread_mutex_lock(&c->mu);
  apply_now(c, ctx, &a);
  pthread_mutex_unlock(&c->mu);
}

int tb_control_apply(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *out) {
  tb_applied_t a;
  memset(&a, 0, sizeof(a));
  pthread_mutex_lock(&c->mu);
  apply_now(c, ctx, &a);
  if (c->pause && !c->shutdown && !ctx->stop_training) {
    char by[64];
    a.paused = true;
    if (!c->in_pause) {
      c->in_pause = true;
      memcpy(by, c->pause_by, sizeof(by));
      pthread_mutex_unlock(&c->mu);
      note(c, ctx, TB_CONTROL_PAUSE, 0, 0, by, 0);
      pthread_mutex_lock(&c->mu);
    }
    /* Wait; a checkpoint request is served without ending the pause. */
    while (c->pause && !c->shutdown && !ctx->stop_training && !c->checkpoint) {
      pthread_cond_wait(&c->cv, &c->mu);
      apply_now(c, ctx, &a);
    }
    a.in_pause = c->pause && !c->shutdown && !ctx->stop_training;
  }
  /* A shutdown ends the wait but not the pause: the run is interrupted, not
   * resumed, and stays paused when it continues after a restart. */
  if (c->in_pause && !a.in_pause && !c->shutdown) {
    char by[64];
    c->in_pause = false;
    memcpy(by, c->pause_by, sizeof(by));
    pthread_mutex_unlock(&c->mu);
    note(c, ctx, TB_CONTROL_RESUME, 0, 0, by, 0);
    pthread_mutex_lock(&c->mu);
  }
  if (c->checkpoint) {
    a.checkpoint = true;
    a.checkpoint_ticket = c->checkpoint_ticket;
    memcpy(a.checkpoint_by, c->checkpoint_by, sizeof(a.checkpoint_by));
    c->checkpoint = false;
  }
  if (c->shutdown)
    a.shutdown = true;
  pthread_mutex_unlock(&c->mu);
  if (out != NULL)
    *out = a;
  return 0;
}

void tb_control_take(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *out) {
  tb_applied_t a;
  memset(&a, 0, sizeof(a));
  pthread_mutex_lock(&c->mu);
  apply_now(c, ctx, &a);
  a.paused = c->pause && !c->shutdown && !ctx->stop_training;
  if (c->checkpoint) {
    a.checkpoint = true;
    a.checkpoint_ticket = c->checkpoint_ticket;
    memcpy(a.checkpoint_by, c->checkpoint_by, sizeof(a.checkpoint_by));
    c->checkpoint = false;
  }
  a.shutdown = c->shutdown;
  pthread_mutex_unlock(&c->mu);
  *out = a;
}
