/* The event bus: Keras's callback list.
 *
 * A callback is a struct of optional hook functions (one per Keras hook) plus a
 * `void *user`. A callback list calls its members in order, all sharing one
 * tb_logs_t, so a later callback sees what an earlier one wrote. fit(),
 * evaluate() and predict() fire the hooks in Keras's order; a hand-written
 * training loop fires them through the same tb_callbacks_fire(). The daemon's
 * publisher is one more member of such a list.
 *
 * Every hook has the same signature; ctx->hook says which hook is firing, so
 * one function may serve several (or all) slots. Threading: a list and its
 * callbacks are used by one thread, the trainer's. */
#ifndef TRAINBUS_CALLBACK_H
#define TRAINBUS_CALLBACK_H

#include <stdbool.h>
#include <stdio.h>
#include "trainbus/control.h"
#include "trainbus/error.h"
#include "trainbus/logs.h"
#include "trainbus/state.h"

typedef struct tb_model_s tb_model_t;
typedef struct tb_callback_s tb_callback_t;

/* The fourteen Keras hooks, in the order of the fields of tb_callback_t. */
#define TB_HOOK_MAP(X)                                                                             \
  X(TRAIN_BEGIN, train_begin)                                                                      \
  X(TRAIN_END, train_end)                                                                          \
  X(EPOCH_BEGIN, epoch_begin)                                                                      \
  X(EPOCH_END, epoch_end)                                                                          \
  X(TRAIN_BATCH_BEGIN, train_batch_begin)                                                          \
  X(TRAIN_BATCH_END, train_batch_end)                                                              \
  X(TEST_BEGIN, test_begin)                                                                        \
  X(TEST_END, test_end)                                                                            \
  X(TEST_BATCH_BEGIN, test_batch_begin)                                                            \
  X(TEST_BATCH_END, test_batch_end)                                                                \
  X(PREDICT_BEGIN, predict_begin)                                                                  \
  X(PREDICT_END, predict_end)                                                                      \
  X(PREDICT_BATCH_BEGIN, predict_batch_begin)                                                      \
  X(PREDICT_BATCH_END, predict_batch_end)

typedef enum {
#define X(up, low) TB_HOOK_##up,
  TB_HOOK_MAP(X)
#undef X
      TB_HOOK_COUNT
} tb_hook_t;

/* "train_begin", "epoch_end", ... (the Keras method name without "on_"). */
const char *tb_hook_name(tb_hook_t hook);
/* The hook with that name, or -1. */
int tb_hook_from_name(const char *name);
/* True for the six batch-level hooks. */
bool tb_hook_is_batch(tb_hook_t hook);

/* What a hook sees: Keras's self.params, self.model and the stop flags. */
typedef struct tb_ctx_s {
  /* params, set by fit/evaluate/predict (or by a manual loop) */
  int epochs;            /* total epochs of this fit */
  int steps;             /* batches per epoch (train), or per evaluate/predict call */
  int batch_size;        /* rows per full batch */
  int verbose;           /* 0 silent, 1 progress bar, 2 one line per epoch */
  tb_model_t *model;     /* may be NULL in a manual loop without a model */
  tb_control_t *control; /* cross-thread control block; may be NULL */

  /* position, updated by tb_callbacks_fire() */
  tb_hook_t hook; /* the hook now firing */
  int epoch;      /* 0-based current epoch (-1 before the first) */
  int batch;      /* 0-based batch within the epoch, or -1 */

  /* Keras's model.stop_training / stop_evaluating / stop_predicting: a callback
   * sets one; the loop honours it after the current batch. */
  bool stop_training;
  bool stop_evaluating;
  bool stop_predicting;

  /* At predict_batch_end: the batch's model outputs (rows * cols, row-major). */
  const float *outputs;
  int outputs_rows;
  int outputs_cols;

  /* Set by tb_callbacks_fire() when a hook fails: the callback's name. */
  const char *failed;
  tb_err_t err; /* a failing hook may explain itself here */

  /* Checkpoint requests made during the current dispatch (by
   * tb_ctx_request_checkpoint()); fit() writes them once every callback has
   * run, so the file holds every callback's state after the hook. */
  int n_ckpt_requests;
  char ckpt_requests[4][1024];
  /* A checkpoint to resume from, set by fit's options or by a callback in
   * train_begin (BackupAndRestore); fit() restores it right after
   * train_begin. */
  char resume_path[1200];
  bool resumed; /* true once fit() has restored a checkpoint */
  /* The path of the last checkpoint fit() wrote, "" if none. */
  char last_checkpoint[1024];
} tb_ctx_t;

/* Initialises ctx for a manual loop (all zero, epoch and batch -1). */
void tb_ctx_init(tb_ctx_t *ctx);

/* A hook. `index` is the epoch for epoch hooks, the batch for batch hooks, -1
 * otherwise. Return 0 to go on; a negative code aborts the loop, and as in Keras
 * (which has no try/finally) train_end is then not fired. */
typedef int (*tb_hook_fn)(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs);

struct tb_callback_s {
  const char *name; /* shown in errors; a stable key for saved state */
  union {
    struct {
      tb_hook_fn on_train_begin;
      tb_hook_fn on_train_end;
      tb_hook_fn on_epoch_begin;
      tb_hook_fn on_epoch_end;
      tb_hook_fn on_train_batch_begin;
      tb_hook_fn on_train_batch_end;
      tb_hook_fn on_test_begin;
      tb_hook_fn on_test_end;
      tb_hook_fn on_test_batch_begin;
      tb_hook_fn on_test_batch_end;
      tb_hook_fn on_predict_begin;
      tb_hook_fn on_predict_end;
      tb_hook_fn on_predict_batch_begin;
      tb_hook_fn on_predict_batch_end;
    };
    tb_hook_fn hooks[TB_HOOK_COUNT]; /* the same slots, indexed by tb_hook_t */
  };
  /* Optional: frees what the callback owns (and the callback itself if it was
   * allocated); called by tb_callback_free(). */
  void (*destroy)(tb_callback_t *cb);
  /* Optional, for stateful callbacks: save and restore the state that makes a
   * resumed run continue exactly (EarlyStopping's wait and best, ...). Keys
   * are put under "cb.<name>." by the engine, so callbacks that keep state
   * need distinct names; fit() refuses duplicates. load_state runs after
   * train_begin. */
  int (*save_state)(tb_callback_t *cb, tb_state_t *st);
  int (*load_state)(tb_callback_t *cb, const tb_state_t *st);
  void *user;
};

/* Asks fit() to write a full checkpoint (weights, optimizer, RNG, position,
 * history and every callback's state) to `path` when the current dispatch
 * ends. At most four per dispatch; TB_ERANGE beyond, TB_EINVAL if too long. */
int tb_ctx_request_checkpoint(tb_ctx_t *ctx, const char *path);

/* Calls cb->destroy if set. NULL is a no-op. */
void tb_callback_free(tb_callback_t *cb);

/* The list. It borrows its members: freeing the list frees none of them. */
typedef struct tb_callbacks_s {
  tb_callback_t **items;
  int n;
  int cap;
} tb_callbacks_t;

void tb_callbacks_init(tb_callbacks_t *l);
void tb_callbacks_release(tb_callbacks_t *l);
int tb_callbacks_add(tb_callbacks_t *l, tb_callback_t *cb);
/* Removes cb if present. */
void tb_callbacks_remove(tb_callbacks_t *l, tb_callback_t *cb);

/* Fires `hook` on every member in order with one shared logs (NULL is allowed
 * and becomes an empty logs). Sets ctx->hook and, for epoch and batch hooks,
 * ctx->epoch / ctx->batch. Stops at the first hook that fails, records its name
 * in ctx->failed and returns its code. l may be NULL. */
int tb_callbacks_fire(tb_callbacks_t *l, tb_ctx_t *ctx, tb_hook_t hook, int index, tb_logs_t *logs);

#endif
