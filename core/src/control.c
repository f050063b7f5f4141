/* The control block. Writers (any thread) take the mutex and set a request;
 * the trainer applies requests at batch boundaries. A pause is a condition
 * wait on the trainer thread, woken by resume or stop. */
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

static void copy_by(char *dst, size_t len, const char *by) {
  snprintf(dst, len, "%s", by != NULL ? by : "");
}

int tb_control_set_lr(tb_control_t *c, double lr, const char *by) {
  if (!(isfinite(lr) && lr > 0.0))
    return TB_ERANGE;
  pthread_mutex_lock(&c->mu);
  c->has_lr = true;
  c->lr = lr;
  copy_by(c->lr_by, sizeof(c->lr_by), by);
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

void tb_control_pause(tb_control_t *c) {
  pthread_mutex_lock(&c->mu);
  c->pause = true;
  pthread_mutex_unlock(&c->mu);
}

void tb_control_resume(tb_control_t *c) {
  pthread_mutex_lock(&c->mu);
  c->pause = false;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void tb_control_checkpoint(tb_control_t *c) {
  pthread_mutex_lock(&c->mu);
  c->checkpoint = true;
  pthread_mutex_unlock(&c->mu);
}

int tb_control_apply(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *out) {
  tb_applied_t a;
  memset(&a, 0, sizeof(a));
  pthread_mutex_lock(&c->mu);
  if (c->pause && !c->stop) {
    a.paused = true;
    while (c->pause && !c->stop)
      pthread_cond_wait(&c->cv, &c->mu);
  }
  if (c->has_lr && ctx->model != NULL) {
    a.lr_changed = true;
    a.old_lr = tb_model_lr(ctx->model);
    a.new_lr = c->lr;
    memcpy(a.lr_by, c->lr_by, sizeof(a.lr_by));
    tb_model_set_lr(ctx->model, c->lr);
    c->has_lr = false;
  }
  if (c->stop) {
    a.stopped = !ctx->stop_training;
    ctx->stop_training = true;
    c->stop = false;
  }
  if (c->checkpoint) {
    a.checkpoint = true;
    c->checkpoint = false;
  }
  pthread_mutex_unlock(&c->mu);
  if (out != NULL)
    *out = a;
  return 0;
}
