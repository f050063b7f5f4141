/* EarlyStopping and ReduceLROnPlateau, on one monitor rule (Keras 3's
 * MonitorCallback, keras/src/callbacks/monitor_callback.py), which
 * ModelCheckpoint shares too:
 *
 *   - min_delta is used as its absolute value, negated when minimising;
 *   - improvement(cur, ref) = ref is unset || op(cur - min_delta, ref), with
 *     op "<" when minimising and ">" when maximising: a strict improvement by
 *     more than |min_delta|. Keras's ops.less/ops.greater turn the two Python
 *     floats into float32 tensors, so the comparison is in float32;
 *   - "auto" strips one "val_" and minimises "loss"; any other name must be a
 *     compiled metric, whose direction decides (accuracy up, mse and mae
 *     down); anything else is refused at the first epoch end (Keras 3 raises
 *     a ValueError), even a name that looks like a loss ("lr", "mse" without
 *     an mse metric).
 *
 * The two callbacks then follow keras/src/callbacks/early_stopping.py and
 * reduce_lr_on_plateau.py step for step; the comments name the steps, and
 * the verbose messages and warnings are Keras's words. */
#include "internal.h"
#include "pyfmt.h"
#include "trainbus/callbacks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int tb_mode_from_name(const char *name) {
  if (name == NULL)
    return -1;
  if (strcmp(name, "auto") == 0)
    return TB_MODE_AUTO;
  if (strcmp(name, "min") == 0)
    return TB_MODE_MIN;
  if (strcmp(name, "max") == 0)
    return TB_MODE_MAX;
  return -1;
}

int tb__monitor_init(tb__monitor_t *mo, const char *monitor, tb_mode_t mode, double min_delta,
                     const char *who, tb_err_t *err) {
  if (monitor == NULL || monitor[0] == '\0' || strlen(monitor) >= TB_LOGS_NAME_MAX)
    return tb_errf(err, TB_EINVAL, "%s: monitor must be a logs key of 1 to %d bytes", who,
                   TB_LOGS_NAME_MAX - 1);
  if ((unsigned)mode > TB_MODE_MAX)
    return tb_errf(err, TB_EINVAL, "%s: mode must be auto, min or max", who);
  if (!isfinite(min_delta))
    return tb_errf(err, TB_EINVAL, "%s: min_delta must be finite", who);
  memset(mo, 0, sizeof(*mo));
  snprintf(mo->monitor, sizeof(mo->monitor), "%s", monitor);
  mo->mode = mode;
  mo->min_delta = fabs(min_delta);
  return 0;
}

/* Keras sets the op lazily at the first epoch end, once metrics are built. */
int tb__monitor_op(tb__monitor_t *mo, tb_ctx_t *ctx, const char *who) {
  if (mo->op_set)
    return 0;
  if (mo->mode == TB_MODE_MIN) {
    mo->less = true;
  } else if (mo->mode == TB_MODE_MAX) {
    mo->less = false;
  } else {
    const char *n = strncmp(mo->monitor, "val_", 4) == 0 ? mo->monitor + 4 : mo->monitor;
    int dir = ctx->model != NULL ? tb__metric_direction(ctx->model, n) : 0;
    if (dir != 0)
      mo->less = dir < 0;
    else if (strcmp(n, "loss") == 0)
      mo->less = true;
    else
      return tb_errf(&ctx->err, TB_EINVAL,
                     "%s: set \"mode\" to \"max\" or \"min\" for monitor \"%s\": auto cannot "
                     "tell whether it should be maximized or minimized (it is neither the loss "
                     "nor a compiled metric; Keras raises a ValueError)",
                     who, mo->monitor);
  }
  if (mo->less)
    mo->min_delta = -mo->min_delta;
  mo->op_set = true;
  return 0;
}

bool tb__monitor_improved(const tb__monitor_t *mo, double cur, bool has_ref, double ref) {
  if (!has_ref)
    return true;
  float a = (float)(cur - mo->min_delta), b = (float)ref;
  return mo->less ? a < b : a > b;
}

void tb__monitor_warn(tb__monitor_t *mo, const tb_logs_t *logs, const char *what, const char *end) {
  if (mo->warned)
    return;
  char keys[512] = "";
  for (int i = 0; i < logs->n; i++) {
    strncat(keys, i ? "," : "", sizeof(keys) - strlen(keys) - 1);
    strncat(keys, logs->names[i], sizeof(keys) - strlen(keys) - 1);
  }
  fprintf(stderr, "warning: %s `%s` which is not available. Available metrics are: %s%s\n", what,
          mo->monitor, keys, end);
  mo->warned = true;
}

int tb__monitor_save(const tb__monitor_t *mo, tb_state_t *st) {
  int r = tb_state_put_i64(st, "op", mo->op_set ? (mo->less ? -1 : 1) : 0);
  return r ? r : tb_state_put_f64(st, "min_delta", mo->min_delta);
}

int tb__monitor_load(tb__monitor_t *mo, const tb_state_t *st) {
  int64_t op;
  int r = tb_state_get_i64(st, "op", &op);
  if (r == 0)
    r = tb_state_get_f64(st, "min_delta", &mo->min_delta);
  if (r == 0) {
    mo->op_set = op != 0;
    mo->less = op < 0;
  }
  return r;
}

/* ---- EarlyStopping ------------------------------------------------------ */

typedef struct early_s {
  tb_callback_t cb;
  char name[96];
  tb__monitor_t mo;
  tb_early_stopping_opts_t o;
  int wait, stopped_epoch, best_epoch;
  bool has_best;
  double best;
  float *best_weights; /* NULL until stored */
  long n_weights;
} early_t;

void tb_early_stopping_defaults(tb_early_stopping_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->name = "EarlyStopping";
  o->monitor = "val_loss";
}

static int es_store_weights(early_t *e, tb_model_t *m) {
  if (m == NULL)
    return 0;
  long n = tb_model_n_params(m);
  if (e->best_weights == NULL || e->n_weights != n) {
    free(e->best_weights);
    if ((e->best_weights = malloc((size_t)(n ? n : 1) * sizeof(float))) == NULL)
      return TB_ENOMEM;
    e->n_weights = n;
  }
  return tb_model_get_params(m, e->best_weights, n);
}

static int es_train_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  early_t *e = cb->user;
  e->wait = 0;
  e->stopped_epoch = 0;
  e->best_epoch = 0;
  e->has_best = false;
  free(e->best_weights);
  e->best_weights = NULL;
  return 0;
}

static int es_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  early_t *e = cb->user;
  double cur;
  int r;
  if ((r = tb__monitor_op(&e->mo, ctx, e->name)) != 0)
    return r;
  /* 1. nothing to compare, or not yet watching */
  if (!tb_logs_get(logs, e->mo.monitor, &cur)) {
    tb__monitor_warn(&e->mo, logs, "Early stopping conditioned on metric", "");
    return 0;
  }
  if (epoch < e->o.start_from_epoch)
    return 0;
  /* 2. keep the first weights seen (they are the best so far) */
  if (e->o.restore_best_weights && e->best_weights == NULL) {
    if ((r = es_store_weights(e, ctx->model)) != 0)
      return r;
    e->best_epoch = epoch;
  }
  /* 3. wait grows before the comparison */
  e->wait++;
  /* 4. an improvement resets wait only if it also beats the baseline */
  if (tb__monitor_improved(&e->mo, cur, e->has_best, e->best)) {
    e->best = cur;
    e->has_best = true;
    e->best_epoch = epoch;
    if (e->o.restore_best_weights && (r = es_store_weights(e, ctx->model)) != 0)
      return r;
    if (!e->o.has_baseline || tb__monitor_improved(&e->mo, cur, true, e->o.baseline))
      e->wait = 0;
    return 0;
  }
  /* 5. patience exhausted (never at epoch 0) */
  if (e->wait >= e->o.patience && epoch > 0) {
    e->stopped_epoch = epoch;
    ctx->stop_training = true;
  }
  return 0;
}

/* Keras 3 restores the best weights at train end, whatever stopped training
 * (tf.keras only did when EarlyStopping itself stopped it). */
static int es_train_end(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  early_t *e = cb->user;
  if (e->stopped_epoch > 0 && e->o.verbose > 0)
    printf("Epoch %d: early stopping\n", e->stopped_epoch + 1);
  if (e->o.restore_best_weights && e->best_weights != NULL && ctx->model != NULL) {
    if (e->o.verbose > 0)
      printf("Restoring model weights from the end of the best epoch: %d.\n", e->best_epoch + 1);
    return tb_model_set_params(ctx->model, e->best_weights, e->n_weights);
  }
  return 0;
}

static int es_save(tb_callback_t *cb, tb_state_t *st) {
  early_t *e = cb->user;
  int r;
  if ((r = tb__monitor_save(&e->mo, st)) || (r = tb_state_put_i64(st, "wait", e->wait)) ||
      (r = tb_state_put_i64(st, "stopped_epoch", e->stopped_epoch)) ||
      (r = tb_state_put_i64(st, "best_epoch", e->best_epoch)) ||
      (r = tb_state_put_i64(st, "has_best", e->has_best)) ||
      (r = tb_state_put_f64(st, "best", e->best)))
    return r;
  if (e->best_weights != NULL)
    return tb_state_put_f32s(st, "best_weights", e->best_weights, (size_t)e->n_weights);
  return 0;
}

static int es_load(tb_callback_t *cb, const tb_state_t *st) {
  early_t *e = cb->user;
  int64_t wait, stopped, best_epoch, has_best;
  int r;
  if ((r = tb__monitor_load(&e->mo, st)) || (r = tb_state_get_i64(st, "wait", &wait)) ||
      (r = tb_state_get_i64(st, "stopped_epoch", &stopped)) ||
      (r = tb_state_get_i64(st, "best_epoch", &best_epoch)) ||
      (r = tb_state_get_i64(st, "has_best", &has_best)) ||
      (r = tb_state_get_f64(st, "best", &e->best)))
    return r;
  e->wait = (int)wait;
  e->stopped_epoch = (int)stopped;
  e->best_epoch = (int)best_epoch;
  e->has_best = has_best != 0;
  long n = tb_state_count(st, "best_weights");
  free(e->best_weights);
  e->best_weights = NULL;
  if (n >= 0) {
    if ((e->best_weights = malloc((size_t)(n ? n : 1) * sizeof(float))) == NULL)
      return TB_ENOMEM;
    e->n_weights = n;
    return tb_state_get_f32s(st, "best_weights", e->best_weights, (size_t)n);
  }
  return 0;
}

static void es_destroy(tb_callback_t *cb) {
  early_t *e = cb->user;
  free(e->best_weights);
  free(e);
}

tb_callback_t *tb_early_stopping_new(const tb_early_stopping_opts_t *o, tb_err_t *err) {
  tb_early_stopping_opts_t d;
  if (o == NULL) {
    tb_early_stopping_defaults(&d);
    o = &d;
  }
  const char *name = o->name ? o->name : "EarlyStopping";
  if (o->patience < 0 || o->start_from_epoch < 0 || (o->has_baseline && !isfinite(o->baseline))) {
    tb_errf(err, TB_EINVAL, "%s: patience and start_from_epoch must be >= 0, baseline finite",
            name);
    return NULL;
  }
  early_t *e = calloc(1, sizeof(*e));
  if (e == NULL) {
    tb_errf(err, TB_ENOMEM, "%s: out of memory", name);
    return NULL;
  }
  if (tb__monitor_init(&e->mo, o->monitor ? o->monitor : "val_loss", o->mode, o->min_delta, name,
                       err) != 0) {
    free(e);
    return NULL;
  }
  e->o = *o;
  snprintf(e->name, sizeof(e->name), "%s", name);
  e->o.name = e->name;
  e->o.monitor = e->mo.monitor;
  e->cb.name = e->name;
  e->cb.on_train_begin = es_train_begin;
  e->cb.on_epoch_end = es_epoch_end;
  e->cb.on_train_end = es_train_end;
  e->cb.save_state = es_save;
  e->cb.load_state = es_load;
  e->cb.destroy = es_destroy;
  e->cb.user = e;
  return &e->cb;
}

int tb_early_stopping_stopped_epoch(const tb_callback_t *cb) {
  return ((const early_t *)cb->user)->stopped_epoch;
}

int tb_early_stopping_best_epoch(const tb_callback_t *cb) {
  return ((const early_t *)cb->user)->best_epoch;
}

/* ---- ReduceLROnPlateau -------------------------------------------------- */

typedef struct plateau_s {
  tb_callback_t cb;
  char name[96];
  tb__monitor_t mo;
  tb_reduce_lr_opts_t o;
  int wait, cooldown_counter;
  bool has_best;
  double best;
} plateau_t;

void tb_reduce_lr_defaults(tb_reduce_lr_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->name = "ReduceLROnPlateau";
  o->monitor = "val_loss";
  o->factor = 0.1;
  o->patience = 10;
  o->min_delta = 1e-4;
}

static int rl_train_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  plateau_t *p = cb->user;
  p->has_best = false;
  p->cooldown_counter = 0;
  p->wait = 0;
  return 0;
}

static int rl_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  plateau_t *p = cb->user;
  double cur;
  int r;
  /* 1. the op; 2. logs["lr"] is written by fit() before epoch_end */
  if ((r = tb__monitor_op(&p->mo, ctx, p->name)) != 0)
    return r;
  /* 3. no value, no decision */
  if (!tb_logs_get(logs, p->mo.monitor, &cur)) {
    tb__monitor_warn(&p->mo, logs, "Learning rate reduction is conditioned on metric", ".");
    return 0;
  }
  /* 4. cooling down: count down, and wait stays 0 */
  if (p->cooldown_counter > 0) {
    p->cooldown_counter--;
    p->wait = 0;
  }
  /* 5. improvement (tracked during cooldown too) */
  if (tb__monitor_improved(&p->mo, cur, p->has_best, p->best)) {
    p->best = cur;
    p->has_best = true;
    p->wait = 0;
  } else if (p->cooldown_counter == 0) { /* 6. re-checked after the decrement */
    p->wait++;
    if (p->wait >= p->o.patience && ctx->model != NULL) {
      /* old_lr is float(the float32 variable); the new rate is computed in
       * double and rounds to float32 when assigned, so once the rate sits at
       * float32(min_lr) nothing is reduced any more. */
      double old_lr = tb_model_lr(ctx->model);
      if (old_lr > (double)(float)p->o.min_lr) {
        double new_lr = fmax(old_lr * p->o.factor, p->o.min_lr);
        if ((r = tb_model_set_lr(ctx->model, new_lr)) != 0)
          return tb_errf(&ctx->err, r, "%s: cannot set the learning rate to %g", p->name, new_lr);
        if (p->o.verbose > 0) {
          char v[32];
          tb__py_repr(new_lr, v);
          printf("\nEpoch %d: ReduceLROnPlateau reducing learning rate to %s.\n", epoch + 1, v);
        }
        p->cooldown_counter = p->o.cooldown;
        p->wait = 0;
      }
      /* At min_lr nothing is reduced and wait is not reset: every later
       * epoch tries again, as in Keras. */
    }
  }
  return 0;
}

static int rl_save(tb_callback_t *cb, tb_state_t *st) {
  plateau_t *p = cb->user;
  int r;
  if ((r = tb__monitor_save(&p->mo, st)) || (r = tb_state_put_i64(st, "wait", p->wait)) ||
      (r = tb_state_put_i64(st, "cooldown_counter", p->cooldown_counter)) ||
      (r = tb_state_put_i64(st, "has_best", p->has_best)))
    return r;
  return tb_state_put_f64(st, "best", p->best);
}

static int rl_load(tb_callback_t *cb, const tb_state_t *st) {
  plateau_t *p = cb->user;
  int64_t wait, cool, has_best;
  int r;
  if ((r = tb__monitor_load(&p->mo, st)) || (r = tb_state_get_i64(st, "wait", &wait)) ||
      (r = tb_state_get_i64(st, "cooldown_counter", &cool)) ||
      (r = tb_state_get_i64(st, "has_best", &has_best)) ||
      (r = tb_state_get_f64(st, "best", &p->best)))
    return r;
  p->wait = (int)wait;
  p->cooldown_counter = (int)cool;
  p->has_best = has_best != 0;
  return 0;
}

static void rl_destroy(tb_callback_t *cb) {
  free(cb->user);
}

tb_callback_t *tb_reduce_lr_new(const tb_reduce_lr_opts_t *o, tb_err_t *err) {
  tb_reduce_lr_opts_t d;
  if (o == NULL) {
    tb_reduce_lr_defaults(&d);
    o = &d;
  }
  const char *name = o->name ? o->name : "ReduceLROnPlateau";
  if (!(o->factor < 1.0)) {
    tb_errf(err, TB_EINVAL,
            "%s: factor must be < 1.0 (Keras: ReduceLROnPlateau does not "
            "support a factor >= 1.0), got %g",
            name, o->factor);
    return NULL;
  }
  if (!(o->factor > 0.0) || o->patience < 0 || o->cooldown < 0 || !(o->min_lr >= 0.0) ||
      !isfinite(o->min_lr)) {
    tb_errf(err, TB_EINVAL, "%s: factor must be > 0, patience and cooldown >= 0, min_lr >= 0",
            name);
    return NULL;
  }
  plateau_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    tb_errf(err, TB_ENOMEM, "%s: out of memory", name);
    return NULL;
  }
  if (tb__monitor_init(&p->mo, o->monitor ? o->monitor : "val_loss", o->mode, o->min_delta, name,
                       err) != 0) {
    free(p);
    return NULL;
  }
  p->o = *o;
  snprintf(p->name, sizeof(p->name), "%s", name);
  p->o.name = p->name;
  p->o.monitor = p->mo.monitor;
  p->cb.name = p->name;
  p->cb.on_train_begin = rl_train_begin;
  p->cb.on_epoch_end = rl_epoch_end;
  p->cb.save_state = rl_save;
  p->cb.load_state = rl_load;
  p->cb.destroy = rl_destroy;
  p->cb.user = p;
  return &p->cb;
}
