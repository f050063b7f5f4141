/* LearningRateScheduler (keras/src/callbacks/learning_rate_scheduler.py):
 * at every epoch_begin the rate becomes schedule(epoch, current rate); the
 * result must be finite and non-negative. Named schedules give job files
 * Keras's schedule classes (ExponentialDecay, CosineDecay with its optional
 * warmup, PiecewiseConstantDecay) counted in epochs, plus the classic step
 * decay.
 *
 * Keras's schedule classes compute in the dtype of initial_learning_rate,
 * float32: every operation below rounds to float32 (F), with cos and pow
 * evaluated in double and rounded, and Python floats mixed in (1 - alpha) are
 * computed in double first, as Python does, then converted. */
#include "internal.h"
#include "pyfmt.h"
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

static float F(double x) {
  return (float)x;
}

/* CosineDecay._decay_function */
static float cosine_decay(const tb_schedule_t *s, float step, float decay_steps, float from) {
  float completed = step / decay_steps;
  float pi = F(3.141592653589793);
  float cosine_decayed = 0.5f * (1.0f + F(cos((double)(pi * completed))));
  float decayed = F(1.0 - s->alpha) * cosine_decayed + F(s->alpha);
  return from * decayed;
}

double tb_schedule_eval(const tb_schedule_t *s, int epoch, double lr0) {
  double init = s->initial_lr != 0 || s->has_initial_lr ? s->initial_lr : lr0;
  switch (s->kind) {
  case TB_SCHED_STEP:
    return init * pow(s->drop, floor((double)epoch / s->every));
  case TB_SCHED_EXPONENTIAL: {
    float p = F(epoch) / F(s->decay_epochs);
    if (s->staircase)
      p = floorf(p);
    return F(init) * F(pow((double)F(s->decay_rate), (double)p));
  }
  case TB_SCHED_COSINE: {
    float step = F(epoch), decay_steps = F(s->decay_epochs), initial = F(init);
    if (!(s->warmup_target != 0 || s->has_warmup_target))
      return cosine_decay(s, fminf(step, decay_steps), decay_steps, initial);
    float target = F(s->warmup_target), warmup_steps = F(s->warmup_epochs);
    step = fminf(step, decay_steps + warmup_steps);
    if (step < warmup_steps) /* _warmup_function */
      return (target - initial) * (step / warmup_steps) + initial;
    return cosine_decay(s, step - warmup_steps, decay_steps, target);
  }
  case TB_SCHED_PIECEWISE: {
    /* the sum of Keras's indicator terms, in its order */
    int n = s->n_boundaries;
    float r = 0.0f;
    r += (float)(epoch <= s->boundaries[0]) * F(s->values[0]);
    r += (float)(epoch > s->boundaries[n - 1]) * F(s->values[n]);
    for (int i = 0; i + 1 < n; i++)
      r += (float)(epoch > s->boundaries[i] && epoch <= s->boundaries[i + 1]) * F(s->values[i + 1]);
    return r;
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
  if (s->verbose > 0) {
    char v[32];
    tb__py_repr(lr, v);
    printf("\nEpoch %d: LearningRateScheduler setting learning rate to %s.\n", epoch + 1, v);
  }
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
    bad = "initial_lr must be >= 0 (absent: the optimizer's rate)";
  else if (sp->kind == TB_SCHED_STEP && (!(sp->drop > 0) || !isfinite(sp->drop) || sp->every < 1))
    bad = "step: drop must be > 0 and every >= 1";
  else if (sp->kind == TB_SCHED_EXPONENTIAL &&
           (!(sp->decay_epochs > 0) || !isfinite(sp->decay_epochs) || !isfinite(sp->decay_rate)))
    bad = "exponential: decay_epochs must be > 0 (Keras's decay_steps) and decay_rate finite";
  else if (sp->kind == TB_SCHED_COSINE &&
           (!(sp->decay_epochs > 0) || !isfinite(sp->decay_epochs) || !isfinite(sp->alpha) ||
            sp->warmup_epochs < 0 || !isfinite(sp->warmup_target)))
    bad = "cosine: decay_epochs must be > 0 (Keras's decay_steps), alpha and warmup_target "
          "finite, warmup_epochs >= 0";
  else if (sp->kind == TB_SCHED_PIECEWISE) {
    if (sp->n_boundaries < 1 || sp->n_boundaries > 32)
      bad = "piecewise: 1 to 32 boundaries, and one more value than boundaries";
    for (int i = 0; bad == NULL && i <= sp->n_boundaries; i++)
      if (!isfinite(sp->values[i]))
        bad = "piecewise: values must be finite";
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
