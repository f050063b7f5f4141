/* A sequential model: layers, a loss, an optimizer, and Keras's
 * fit / evaluate / predict.
 *
 * float32, row-major; every matrix product goes through one cblas_sgemm
 * wrapper. A model is used by one thread at a time; its steps run on a pool
 * of threads of its own (tb_set_num_threads), joined by tb_model_free. */
#ifndef TRAINBUS_MODEL_H
#define TRAINBUS_MODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/error.h"
#include "trainbus/logs.h"
#include "trainbus/reduce.h"
#include "trainbus/rng.h"

typedef enum {
  TB_ACT_LINEAR = 0,
  TB_ACT_RELU,
  TB_ACT_LEAKY_RELU, /* Keras's "leaky_relu": negative_slope 0.2 */
  TB_ACT_SIGMOID,
  TB_ACT_TANH,
  TB_ACT_SOFTMAX /* over the last axis */
} tb_act_t;

typedef enum {
  TB_LOSS_BINARY_CROSSENTROPY = 0,
  TB_LOSS_CATEGORICAL_CROSSENTROPY,
  TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
  TB_LOSS_MSE,
  TB_LOSS_MAE
} tb_loss_kind_t;

typedef enum { TB_OPT_SGD = 0, TB_OPT_ADAM, TB_OPT_RMSPROP } tb_optim_kind_t;

/* Keras names ("relu", "binary_crossentropy", "adam") to enums: -1 if unknown. */
int tb_act_from_name(const char *name);
const char *tb_act_name(tb_act_t a);
int tb_loss_from_name(const char *name);
const char *tb_loss_name(tb_loss_kind_t l);
int tb_optim_from_name(const char *name);
const char *tb_optim_name(tb_optim_kind_t o);

typedef struct tb_optim_opts_s {
  tb_optim_kind_t kind;
  double lr;       /* learning_rate */
  double momentum; /* SGD, RMSprop */
  bool nesterov;   /* SGD */
  double beta_1;   /* Adam */
  double beta_2;   /* Adam */
  double epsilon;  /* Adam, RMSprop */
  double rho;      /* RMSprop */
} tb_optim_opts_t;

/* Keras defaults: SGD lr 0.01 momentum 0; Adam lr 0.001 beta_1 0.9 beta_2 0.999
 * epsilon 1e-7; RMSprop lr 0.001 rho 0.9 momentum 0 epsilon 1e-7. */
void tb_optim_defaults(tb_optim_opts_t *o, tb_optim_kind_t kind);

/* Metrics are a bitmask. "accuracy" is resolved from the loss as Keras does:
 * binary for binary_crossentropy (threshold 0.5, or 0 with from_logits),
 * categorical for categorical_crossentropy, sparse for sparse_categorical_
 * crossentropy; for mse/mae, binary when the output has one unit, else
 * categorical. */
enum { TB_METRIC_ACCURACY = 1 << 0, TB_METRIC_MSE = 1 << 1, TB_METRIC_MAE = 1 << 2 };
#define TB_METRICS_MAX 8

/* The metric a name stands for, as Keras's compile resolves the strings of
 * metrics=[...] (keras/src/trainers/compile_utils.py get_metric): "accuracy"
 * and "acc" in any case; "mse", "MSE", "mean_squared_error",
 * "MeanSquaredError"; the same four for mae. 0 if unknown. */
unsigned tb_metric_from_name(const char *name);

typedef struct tb_compile_opts_s {
  tb_loss_kind_t loss;
  bool from_logits; /* crossentropies: the output is a logit, not a probability */
  unsigned metrics; /* the TB_METRIC_ bits; logged as "accuracy", "mse", "mae" */
  tb_optim_opts_t optim;
  /* Optional, instead of the bitmask: the metrics by the names the user
   * wrote, in order. Logs carry each under its name and "val_" + its name, as
   * Keras names a metric after its string ("acc" -> acc, val_acc). Names are
   * at most TB_LOGS_NAME_MAX - 5 bytes; compile() sets `metrics` from them. */
  int n_metric_names;
  char metric_names[TB_METRICS_MAX][TB_LOGS_NAME_MAX];
} tb_compile_opts_t;

typedef struct tb_fit_opts_s {
  int epochs;                          /* default 1 */
  int batch_size;                      /* default 32 */
  int initial_epoch;                   /* default 0 */
  bool shuffle;                        /* reshuffle the training rows every epoch */
  double validation_split;             /* last fraction of the data, taken before shuffling */
  const tb_dataset_t *validation_data; /* alternative to validation_split */
  int validation_freq;                 /* validate every N epochs (1-based, Keras); default 1 */
  int verbose;                         /* copied into ctx->verbose */
  tb_control_t *control;               /* optional: read at every batch boundary */

  /* Checkpoints and exact resume. */
  const char *resume_from;    /* a checkpoint file to continue from, or NULL */
  const char *checkpoint_dir; /* where periodic and requested checkpoints go, or NULL */
  int checkpoint_every;       /* with checkpoint_dir: also every N batches (0: epoch ends only) */
  const char *job_id;         /* a fingerprint of the job, stored in checkpoints and checked
                                 on resume so that another job's checkpoint is refused */

  /* Several participants training one model (reduce.h), or NULL (and any
   * reduction of size 1) for one process. Borrowed for the fit. */
  tb_reduce_t *reduce;
} tb_fit_opts_t;

/* Keras's History: every epoch's logs, in order. fit() appends the model's
 * History to the callback list (last, as Keras does) and clears it at
 * train_begin; a resumed fit restores it from the checkpoint. */
typedef struct tb_history_s {
  int n;       /* epochs recorded */
  int *epochs; /* 0-based epoch numbers */
  tb_logs_t *logs;
  int cap;
} tb_history_t;

void tb_fit_opts_defaults(tb_fit_opts_t *o);

/* The cores training uses, for every model of the process (n < 1 counts as
 * 1; the default is OpenBLAS's own count: OPENBLAS_NUM_THREADS, else the
 * cores the process may run on). A step splits its batch's rows over that
 * many threads, each multiplying its rows with single-threaded BLAS, and
 * adds their gradients and statistics in a fixed order; the optimizer
 * update is split over the parameters. The same job, seed and thread count
 * give bitwise identical runs; another count changes the order of float32
 * sums only, so results agree within rounding (docs/JOB.md). Any thread;
 * takes effect at the next step. */
void tb_set_num_threads(int n);
int tb_get_num_threads(void);

/* A new empty model taking n_inputs features; seed drives weight init, shuffles
 * and dropout. */
tb_model_t *tb_model_new(int n_inputs, uint64_t seed);
void tb_model_free(tb_model_t *m);

/* Layers, before compile. Dense has glorot-uniform weights and zero bias. */
int tb_model_add_dense(tb_model_t *m, int units, tb_act_t act);
int tb_model_add_activation(tb_model_t *m, tb_act_t act);
int tb_model_add_dropout(tb_model_t *m, float rate);

int tb_model_compile(tb_model_t *m, const tb_compile_opts_t *o, tb_err_t *err);

int tb_model_n_inputs(const tb_model_t *m);
int tb_model_n_outputs(const tb_model_t *m);
int tb_model_n_layers(const tb_model_t *m);
long tb_model_n_params(const tb_model_t *m);
/* Keras-style summary: layer, output shape, parameter count, totals. */
void tb_model_summary(const tb_model_t *m, FILE *f);

/* The names of the classes the outputs stand for: output i (or class index
 * i of a sparse label) is c->names[i]. tb_job_prepare() sets them from a
 * data file's string labels (tb_dataset_t.classes); checkpoints and weights
 * files keep them, and restoring either into a model with other names is
 * refused (a weights file's names are adopted by a model without any). Set
 * copies c (NULL clears them): 0, TB_EINVAL or TB_ENOMEM. Get returns the
 * model's own copy (NULL for numeric labels), valid until the next set or
 * free. */
int tb_model_set_classes(tb_model_t *m, const tb_classes_t *c);
const tb_classes_t *tb_model_classes(const tb_model_t *m);

/* The learning rate now, and a direct change (takes effect at the next
 * optimizer step). The rate is kept as a float32, as Keras keeps it in a
 * float32 variable: a change rounds to the nearest float32, and tb_model_lr()
 * gives that value (set 0.01, read 0.009999999776482582), which is what epoch
 * logs carry. TB_ERANGE for a rate that is negative, not finite, or beyond
 * float32's range. */
double tb_model_lr(const tb_model_t *m);
int tb_model_set_lr(tb_model_t *m, double lr);
/* The model's RNG (shuffles, dropout), e.g. to save or restore its state. */
tb_rng_t *tb_model_rng(tb_model_t *m);
/* The History of the last fit(); valid until the next fit() or free. */
const tb_history_t *tb_model_history(const tb_model_t *m);
/* The optimizer steps taken so far (Keras's optimizer.iterations). */
long tb_model_iterations(const tb_model_t *m);

/* Keras's fit / evaluate / predict, firing every hook of `cbs` (may be NULL)
 * in Keras's order. fit() leaves the last epoch's logs in *last (may be NULL).
 * evaluate() writes its results (loss, metrics) in *out. predict() writes
 * data->n * n_outputs floats to out. */
int tb_model_fit(tb_model_t *m, const tb_dataset_t *data, const tb_fit_opts_t *o,
                 tb_callbacks_t *cbs, tb_logs_t *last, tb_err_t *err);
int tb_model_evaluate(tb_model_t *m, const tb_dataset_t *data, int batch_size, int verbose,
                      tb_callbacks_t *cbs, tb_logs_t *out, tb_err_t *err);
int tb_model_predict(tb_model_t *m, const tb_dataset_t *data, int batch_size, int verbose,
                     tb_callbacks_t *cbs, float *out, tb_err_t *err);

/* Building blocks for a hand-written loop (Keras's train_step / test_step).
 * Metrics are running means since the last tb_model_reset_metrics(), written
 * to *logs as Keras's step functions return them, in float32 as Keras's Mean
 * trackers keep them: a batch's loss is the float32 mean of its per-sample
 * losses (summed per thread, the threads' sums added in thread order, then
 * divided by the rows), and each tracker adds loss * rows to a float32 total and rows to a
 * float32 count and reports total / count (so a loss of 1e40 is inf). x is
 * n * n_inputs, y is n * (width of the dataset's y). */
void tb_model_reset_metrics(tb_model_t *m);
int tb_model_train_step(tb_model_t *m, const float *x, const float *y, int n, tb_logs_t *logs);
int tb_model_test_step(tb_model_t *m, const float *x, const float *y, int n, tb_logs_t *logs);
/* Forward pass in inference mode; out receives n * n_outputs floats. */
int tb_model_forward(tb_model_t *m, const float *x, int n, float *out);

/* All trainable parameters, layer by layer (W then b), as one float vector. */
int tb_model_get_params(const tb_model_t *m, float *out, long n);
int tb_model_set_params(tb_model_t *m, const float *in, long n);

/* Weights file: magic "TBWT", version, layer shapes, little-endian float32,
 * CRC-32. Loading checks every shape against the model; a truncated, corrupt
 * or mismatched file is refused and the model is left unchanged. Saving writes
 * a temporary file and renames it. */
int tb_model_save_weights(const tb_model_t *m, const char *path, tb_err_t *err);
int tb_model_load_weights(tb_model_t *m, const char *path, tb_err_t *err);

/* Checkpoints written by fit() hold weights, optimizer state, learning rate,
 * RNG state, epoch and batch position, history and every stateful callback's
 * state; see docs/CALLBACKS.md. The newest in a directory is "latest.tbck". */
#define TB_CHECKPOINT_LATEST "latest.tbck"

#endif
