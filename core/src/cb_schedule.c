/* LearningRateScheduler (keras/src/callbacks/learning_rate_scheduler.py):
 * at every epoch_begin the rate becomes schedule(epoch, current rate); the
 * result must be finite and non-negative. Named schedules give job files Keras's
 * common shapes (step decay, ExponentialDecay, CosineDecay with warmup,
 * PiecewiseConstantDecay) counted in epochs. */
#include "internal.h"
#include "trainbus/callbacks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct sched_s {
  tb_callback_t cb;
  tb_schedule_fn fn;
  void *user;
  int verbose;
  tb_schedule_t named;
  double lr0; /* the rate at train_begin, for named schedules */
} sched_t;

double tb_schedule_eval(const tb_schedule_t *s, int epoch, double lr0) {
  double init = s->initial_lr > 0 ? s->initial_lr : lr0;
  switch (s->kind) {
  case TB_SCHED_STEP:
    return init * pow(s->drop, floor((double)epoch / s->every));
  case TB_SCHED_EXPONENTIAL: {
    double p = epoch / s->decay_epochs;
    return init * pow(s->decay_rate, s->staircase ? floor(p) : p);
  }
  case TB_SCHED_COSINE: {
    /* Keras's CosineDecay: warm up linearly from the initial rate to the
     * target, then decay from the target (or the initial rate) by a cosine to
     * alpha times it, and stay there. */
    double peak = s->warmup_target > 0 ? s->warmup_target : init;
    if (s->warmup_target > 0 && epoch < s->warmup_epochs)
      return init + (peak - init) * epoch / s->warmup_epochs;
    double t =
        fmin((double)(epoch - (s->warmup_target > 0 ? s->warmup_epochs : 0)), s->decay_epochs) /
        s->decay_epochs;
    double cosine = 0.5 * (1.0 + cos(3.141592653589793 * t));
    return peak * ((1.0 - s->alpha) * cosine + s->alpha);
  }
  case TB_SCHED_PIECEWISE: {
    int i = 0;
    while (i < s->n_boundaries && epoch > s->boundaries[i])
      i++;
    return s->values[i];
  }
  }
  return lr0;
}

static double named_fn(int epoch, double lr, void *user) {
  sched_t *s = user;
  return tb_schedule_eval(&s->named, epoch, s->lr0);
}

static int sc_train_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  sched_t *s = cb->user;
  if (ctx->model != NULL)
    s->lr0 = tb_model_lr(ctx->model);
  return 0;
}

static int sc_epoch_begin(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  sched_t *s = cb->user;
  if (ctx->model == NULL)
    return 0;
  double lr = s->fn(epoch, tb_model_lr(ctx->model), s->user);
  if (!(isfinite(lr) && lr >= 0))
    return tb_errf(&ctx->err, TB_ERANGE,
                   "the schedule gave learning rate %g at epoch %d; it must be finite and "
                   "non-negative",
                   lr, epoch);
  tb_model_set_lr(ctx->model, lr);
  if (s->verbose > 0)
    printf("\nEpoch %d: LearningRateScheduler setting learning rate to %g.\n", epoch + 1, lr);
  return 0;
}

/* lr0 is all a named schedule remembers; the rate itself is in the model. */
static int sc_save(tb_callback_t *cb, tb_state_t *st) {
  return tb_state_put_f64(st, "lr0", ((sched_t *)cb->user)->lr0);
}

static int sc_load(tb_callback_t *cb, const tb_state_t *st) {
  return tb_state_get_f64(st, "lr0", &((sched_t *)cb->user)->lr0);
}

static void sc_destroy(tb_callback_t *cb) {
  free(cb->user);
}

static sched_t *sched_alloc(int verbose) {
  sched_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  s->verbose = verbose;
  s->cb.name = "LearningRateScheduler";
  s->cb.on_train_begin = sc_train_begin;
  s->cb.on_epoch_begin = sc_epoch_begin;
  s->cb.save_state = sc_save;
  s->cb.load_state = sc_load;
  s->cb.destroy = sc_destroy;
  s->cb.user = s;
  return s;
}

tb_callback_t *tb_lr_scheduler_new(tb_schedule_fn fn, void *user, int verbose, tb_err_t *err) {
  if (fn == NULL) {
    tb_errf(err, TB_EINVAL, "LearningRateScheduler: no schedule function");
    return NULL;
  }
  sched_t *s = sched_alloc(verbose);
  if (s == NULL) {
    tb_errf(err, TB_ENOMEM, "LearningRateScheduler: out of memory");
    return NULL;
  }
  s->fn = fn;
  s->user = user;
  return &s->cb;
}

tb_callback_t *tb_lr_schedule_new(const tb_schedule_t *sp, int verbose, tb_err_t *err) {
  const char *bad = NULL;
  if (sp == NULL)
    bad = "no schedule";
  else if (!(sp->initial_lr >= 0) || !isfinite(sp->initial_lr))
    bad = "initial_lr must be >= 0 (0: the optimizer's rate)";
  else if (sp->kind == TB_SCHED_STEP && (!(sp->drop > 0) || sp->every < 1))
    bad = "step: drop must be > 0 and every >= 1";
  else if (sp->kind == TB_SCHED_EXPONENTIAL && (!(sp->decay_rate > 0) || !(sp->decay_epochs > 0)))
    bad = "exponential: decay_rate and decay_epochs must be > 0";
  else if (sp->kind == TB_SCHED_COSINE &&
           (!(sp->decay_epochs > 0) || !(sp->alpha >= 0 && sp->alpha <= 1) ||
            sp->warmup_epochs < 0 || !(sp->warmup_target >= 0) ||
            (sp->warmup_epochs > 0 && !(sp->warmup_target > 0))))
    bad = "cosine: decay_epochs > 0, alpha in [0, 1], warmup_epochs >= 0 with a positive "
          "warmup_target";
  else if (sp->kind == TB_SCHED_PIECEWISE) {
    if (sp->n_boundaries < 1 || sp->n_boundaries > 32)
      bad = "piecewise: 1 to 32 boundaries, and one more value than boundaries";
    for (int i = 0; bad == NULL && i < sp->n_boundaries; i++)
      if (i > 0 && sp->boundaries[i] <= sp->boundaries[i - 1])
        bad = "piecewise: boundaries must increase";
    for (int i = 0; bad == NULL && i <= sp->n_boundaries; i++)
      if (!(sp->values[i] > 0) || !isfinite(sp->values[i]))
        bad = "piecewise: values must be finite and positive";
  } else if (sp->kind < TB_SCHED_STEP || sp->kind > TB_SCHED_PIECEWISE)
    bad = "unknown schedule";
  if (bad != NULL) {
    tb_errf(err, TB_EINVAL, "LearningRateScheduler: %s", bad);
    return NULL;
  }
  sched_t *s = sched_alloc(verbose);
  if (s == NULL) {
    tb_errf(err, TB_ENOMEM, "LearningRateScheduler: out of memory");
    return NULL;
  }
  s->named = *sp;
  s->fn = named_fn;
  s->user = s;
  return &s->cb;
}
