/* The control block: the one place through which a run is steered.
 *
 * Local callbacks and remote clients (through the daemon's loop thread) write
 * requests here; the training loop reads and applies them at every batch
 * boundary with tb_control_apply(). Requests are guarded by a mutex, so any
 * thread may write; only the trainer applies. */
#ifndef TRAINBUS_CONTROL_H
#define TRAINBUS_CONTROL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct tb_ctx_s tb_ctx_t;

/* What tb_control_apply() did, for the caller to report. */
typedef struct tb_applied_s {
  bool lr_changed;
  double old_lr, new_lr;
  char lr_by[64]; /* who asked ("callback", "client 7", ...) */
  bool stopped;   /* a stop request was turned into ctx->stop_training */
  bool paused;    /* the loop waited in a pause */
  bool checkpoint;
} tb_applied_t;

typedef struct tb_control_s {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop;
  bool pause;
  bool checkpoint;
  bool has_lr;
  double lr;
  char lr_by[64];
  char stop_by[64];
} tb_control_t;

int tb_control_init(tb_control_t *c);
void tb_control_destroy(tb_control_t *c);

/* Requests. Any thread. tb_control_set_lr refuses (TB_ERANGE) a rate that is
 * not finite and positive. `by` may be NULL. */
int tb_control_set_lr(tb_control_t *c, double lr, const char *by);
void tb_control_stop(tb_control_t *c, const char *by);
void tb_control_pause(tb_control_t *c);
void tb_control_resume(tb_control_t *c);
void tb_control_checkpoint(tb_control_t *c);

/* Trainer side, at a batch boundary: applies a pending learning rate to
 * ctx->model, turns a stop request into ctx->stop_training, waits while paused
 * (a stop ends the pause), and reports what it did in *out (may be NULL). */
int tb_control_apply(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *out);

#endif
