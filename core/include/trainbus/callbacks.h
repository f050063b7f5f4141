/* Built-in callbacks, with Keras 3's parameters, defaults and semantics
 * (docs/CALLBACKS.md lists every parameter and where we differ from Keras).
 *
 * Each constructor validates its options, returns a tb_callback_t owned by the
 * caller (free it with tb_callback_free()) or NULL with the reason in *err,
 * and copies every string it is given. Stateful callbacks save their state in
 * checkpoints under their name, which defaults to the Keras class name; give
 * two callbacks of the same kind distinct names (opts.name) if both keep
 * state. */
#ifndef TRAINBUS_CALLBACKS_H
#define TRAINBUS_CALLBACKS_H

#include <stdbool.h>
#include <stdio.h>
#include "trainbus/callback.h"
#include "trainbus/error.h"

/* Keras's ProgbarLogger. verbose 1: a live progress bar redrawn in place (for
 * a terminal); verbose 2: one line per epoch (for logs and pipes). Validation
 * batches are not shown; the epoch line carries the val_ metrics. Writes to
 * `out` (stdout when NULL). */
tb_callback_t *tb_progbar_new(int verbose, FILE *out);

/* How a monitored quantity improves. AUTO: "loss", "mse", "mae" (with or
 * without "val_") are minimised, "accuracy"/"acc" maximised; any other name
 * needs an explicit mode (an error at the first epoch end, as in Keras 3). */
typedef enum { TB_MODE_AUTO = 0, TB_MODE_MIN, TB_MODE_MAX } tb_mode_t;
/* "auto", "min", "max" -> mode, or -1. */
int tb_mode_from_name(const char *name);

typedef struct tb_early_stopping_opts_s {
  const char *name;    /* default "EarlyStopping" */
  const char *monitor; /* default "val_loss" */
  double min_delta;    /* default 0; its absolute value is used */
  int patience;        /* default 0 */
  int verbose;         /* default 0 */
  tb_mode_t mode;      /* default AUTO */
  bool has_baseline;   /* default false */
  double baseline;
  bool restore_best_weights; /* default false */
  int start_from_epoch;      /* default 0 */
} tb_early_stopping_opts_t;
void tb_early_stopping_defaults(tb_early_stopping_opts_t *o);
tb_callback_t *tb_early_stopping_new(const tb_early_stopping_opts_t *o, tb_err_t *err);
/* The epoch at which it stopped training (0 if it did not), as Keras's
 * stopped_epoch; and the best value and epoch seen. */
int tb_early_stopping_stopped_epoch(const tb_callback_t *cb);
int tb_early_stopping_best_epoch(const tb_callback_t *cb);

typedef struct tb_reduce_lr_opts_s {
  const char *name;    /* default "ReduceLROnPlateau" */
  const char *monitor; /* default "val_loss" */
  double factor;       /* default 0.1; must be < 1 (and > 0) */
  int patience;        /* default 10 */
  int verbose;         /* default 0 */
  tb_mode_t mode;      /* default AUTO */
  double min_delta;    /* default 1e-4 */
  int cooldown;        /* default 0 */
  double min_lr;       /* default 0 */
} tb_reduce_lr_opts_t;
void tb_reduce_lr_defaults(tb_reduce_lr_opts_t *o);
tb_callback_t *tb_reduce_lr_new(const tb_reduce_lr_opts_t *o, tb_err_t *err);

/* LearningRateScheduler: at every epoch_begin the rate becomes
 * fn(epoch, current_rate, user), which must be finite and non-negative (it is
 * rounded to float32, as Keras's assignment to optimizer.learning_rate). */
typedef double (*tb_schedule_fn)(int epoch, double lr, void *user);
tb_callback_t *tb_lr_scheduler_new(tb_schedule_fn fn, void *user, int verbose, tb_err_t *err);

/* Named schedules (for job files), as functions of the 0-based epoch: Keras's
 * schedule classes (keras/src/optimizers/schedules/learning_rate_schedule.py)
 * called with the epoch as their step, computed in float32 as Keras computes
 * them; "step" is the classic step decay a Keras user writes as a Python
 * function (computed in double). */
typedef struct tb_schedule_s {
  enum {
    TB_SCHED_STEP = 1,    /* initial_lr * drop ^ floor(epoch / every) */
    TB_SCHED_EXPONENTIAL, /* ExponentialDecay: initial_lr * decay_rate ^ (epoch / decay_epochs),
                             the exponent floored with staircase */
    TB_SCHED_COSINE,      /* CosineDecay: with a warmup target, linear warmup from initial_lr to
                             it over warmup_epochs, then cosine decay from it to alpha times it
                             over decay_epochs; without one, warmup_epochs is ignored and the
                             decay starts from initial_lr */
    TB_SCHED_PIECEWISE    /* PiecewiseConstantDecay: values[0] while epoch <= boundaries[0],
                             values[i] while boundaries[i-1] < epoch <= boundaries[i], the last
                             value after the last boundary (Keras's sum of indicator terms, so
                             boundaries need not increase) */
  } kind;
  double initial_lr;      /* used when non-zero or has_initial_lr; else the optimizer's rate at
                             train_begin */
  bool has_initial_lr;    /* initial_lr was given (0 included: a warmup may start at 0) */
  double drop;            /* step: default 0.5 */
  int every;              /* step: default 10 */
  double decay_rate;      /* exponential */
  double decay_epochs;    /* exponential, cosine: > 0 */
  bool staircase;         /* exponential */
  double alpha;           /* cosine: default 0 */
  double warmup_target;   /* cosine: a target when non-zero or has_warmup_target */
  bool has_warmup_target; /* warmup_target was given (Keras's warmup_target=None otherwise) */
  int warmup_epochs;      /* cosine: >= 0 */
  int n_boundaries;       /* piecewise: 1 to 32; values has n_boundaries + 1 entries */
  int boundaries[32];
  double values[33];
} tb_schedule_t;
/* The rate a named schedule gives at `epoch`, starting from initial rate lr0. */
double tb_schedule_eval(const tb_schedule_t *s, int epoch, double lr0);
tb_callback_t *tb_lr_schedule_new(const tb_schedule_t *s, int verbose, tb_err_t *err);

typedef struct tb_model_checkpoint_opts_s {
  const char *name;     /* default "ModelCheckpoint" */
  const char *filepath; /* required; {epoch}, {batch} (1-based) and any logs key, with an
                           optional format spec: "ckpt-{epoch:02d}-{val_loss:.3f}.tbck" */
  const char *monitor;  /* default "val_loss" */
  int verbose;
  bool save_best_only;
  bool save_weights_only; /* a weights file; otherwise a full checkpoint */
  tb_mode_t mode;
  int save_freq; /* 0: every epoch; N: every N batches */
  bool has_initial_value_threshold;
  double initial_value_threshold;
} tb_model_checkpoint_opts_t;
void tb_model_checkpoint_defaults(tb_model_checkpoint_opts_t *o);
tb_callback_t *tb_model_checkpoint_new(const tb_model_checkpoint_opts_t *o, tb_err_t *err);
/* Formats a ModelCheckpoint file path; TB_ENOTFOUND names the missing key in
 * *err. Exposed for tests and tools. */
int tb_format_filepath(const char *pattern, int epoch1, int batch1, const tb_logs_t *logs,
                       char *out, size_t len, tb_err_t *err);

typedef struct tb_csv_logger_opts_s {
  const char *name;     /* default "CSVLogger" */
  const char *filename; /* required */
  char separator;       /* default ',' */
  bool append;          /* default false */
} tb_csv_logger_opts_t;
void tb_csv_logger_defaults(tb_csv_logger_opts_t *o);
tb_callback_t *tb_csv_logger_new(const tb_csv_logger_opts_t *o, tb_err_t *err);

/* TerminateOnNaN: a NaN or infinite `loss` at a train batch end stops
 * training gracefully (the epoch still ends), or with raise_error aborts fit()
 * with TB_ENONFINITE and skips train_end, as Keras's RuntimeError does. */
tb_callback_t *tb_terminate_on_nan_new(bool raise_error);

typedef struct tb_backup_opts_s {
  const char *name;       /* default "BackupAndRestore" */
  const char *backup_dir; /* required */
  int save_freq;          /* 0: every epoch; N: every N batches */
  bool delete_checkpoint; /* default true: removed when training ends */
} tb_backup_opts_t;
void tb_backup_defaults(tb_backup_opts_t *o);
tb_callback_t *tb_backup_new(const tb_backup_opts_t *o, tb_err_t *err);

/* LambdaCallback: a heap copy of `hooks` (any hook pointers, name and user),
 * freed by tb_callback_free(). */
tb_callback_t *tb_lambda_new(const tb_callback_t *hooks);

#endif
