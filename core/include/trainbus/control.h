/* The control block: the one place through which a run is steered.
 *
 * Local callbacks and remote clients (through the daemon's loop thread) write
 * requests here; the training loop applies them at every batch boundary with
 * tb_control_apply(). Requests are guarded by a mutex, so any thread may
 * write; only the trainer applies. Every applied action is reported through
 * the optional notify function, on the trainer thread, so that it can be
 * published as an event ("lr changed at epoch E, batch B, by whom"). */
#ifndef TRAINBUS_CONTROL_H
#define TRAINBUS_CONTROL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct tb_ctx_s tb_ctx_t;
typedef struct tb_control_s tb_control_t;

typedef enum {
  TB_CONTROL_SET_LR = 1,
  TB_CONTROL_STOP,
  TB_CONTROL_PAUSE,  /* the trainer is about to wait */
  TB_CONTROL_RESUME, /* the trainer goes on after a pause */
  TB_CONTROL_CHECKPOINT,
  TB_CONTROL_SHUTDOWN /* the run is interrupted (checkpointed) for a daemon shutdown */
} tb_control_action_t;

/* One applied action. `epoch`/`batch` are where it took effect (ctx's). */
typedef struct tb_control_note_s {
  tb_control_action_t action;
  double old_value, new_value; /* SET_LR */
  const char *by;              /* who asked; "" if unknown */
  const char *path;            /* CHECKPOINT: the file written */
  int epoch, batch;
  uint64_t ticket; /* SET_LR, CHECKPOINT: the ticket of the last request this applies */
} tb_control_note_t;

/* Called on the trainer thread, without the control mutex held. */
typedef void (*tb_control_notify_fn)(tb_control_t *c, const tb_control_note_t *note, void *user);

/* What tb_control_apply() did, for the caller to act on. */
typedef struct tb_applied_s {
  bool lr_changed;
  double old_lr, new_lr;
  bool stopped;    /* a stop request was turned into ctx->stop_training */
  bool paused;     /* the loop waited in a pause */
  bool checkpoint; /* the caller should write a checkpoint now */
  bool shutdown;   /* the caller should checkpoint and leave the loop */
  bool in_pause;   /* returned during a pause to serve a checkpoint: call again */
  char checkpoint_by[64];
  uint64_t checkpoint_ticket;
} tb_applied_t;

struct tb_control_s {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop;
  bool pause;
  bool checkpoint;
  bool shutdown;
  bool has_lr;
  double lr;
  char lr_by[64];
  char stop_by[64];
  char pause_by[64];
  char checkpoint_by[64];
  uint64_t tickets; /* requests numbered so far */
  uint64_t lr_ticket, checkpoint_ticket;
  bool in_pause;               /* trainer side: inside a pause (between PAUSE and RESUME) */
  tb_control_notify_fn notify; /* optional */
  void *notify_user;
};

int tb_control_init(tb_control_t *c);
void tb_control_destroy(tb_control_t *c);
/* Sets the notify function (before training starts). */
void tb_control_set_notify(tb_control_t *c, tb_control_notify_fn fn, void *user);

/* Requests. Any thread. tb_control_set_lr refuses (TB_ERANGE) a rate that is
 * not finite and positive. `by` may be NULL. */
int tb_control_set_lr(tb_control_t *c, double lr, const char *by);
void tb_control_stop(tb_control_t *c, const char *by);
void tb_control_pause(tb_control_t *c, const char *by);
void tb_control_resume(tb_control_t *c, const char *by);
void tb_control_checkpoint(tb_control_t *c, const char *by);
/* The same requests numbered: *ticket (may be NULL) receives a number that
 * the note reporting the applied change carries (or a later one, when
 * several requests were applied together), so a requester can tell which
 * note answers it. */
int tb_control_set_lr_ticket(tb_control_t *c, double lr, const char *by, uint64_t *ticket);
void tb_control_checkpoint_ticket(tb_control_t *c, const char *by, uint64_t *ticket);
/* A pause that was noted already: the trainer waits at its next boundary
 * without a new PAUSE note (a run that was paused when its process stopped,
 * continuing after a restart). Called by the trainer's thread, or before
 * training starts; tb_control_resume ends it with a RESUME note as usual. */
void tb_control_hold(tb_control_t *c, const char *by);
/* Asks the trainer to checkpoint and leave fit() with TB_EINTERRUPTED at the
 * next boundary, without firing the remaining hooks, so that the run can be
 * resumed exactly later; ends the wait of a pause without a RESUME note (the
 * run stays paused for whoever resumes it). */
void tb_control_shutdown(tb_control_t *c);
/* True while a pause is requested. */
bool tb_control_paused(tb_control_t *c);

/* Trainer side, at a batch boundary: applies a pending learning rate to
 * ctx->model and a stop request to ctx->stop_training, notifying each; while
 * a pause is requested, notifies PAUSE, waits (still applying learning-rate
 * changes and stops as they come), then notifies RESUME. Checkpoint and
 * shutdown requests are reported in *out for the caller, which notifies them
 * with tb_control_note() once done; a checkpoint asked for during a pause
 * returns at once with out->in_pause set, and the caller, having written it,
 * calls again to go on waiting. out may be NULL. */
int tb_control_apply(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *out);
/* Applies only a pending learning rate and stop (with their notes), never
 * waiting: for the middle of a hook, where a remote lockstep client's answer
 * must take effect before training goes on, as a local callback's would. */
void tb_control_apply_changes(tb_control_t *c, tb_ctx_t *ctx);
/* Trainer side, where the participants of a reduction meet (fit() with
 * reduce.h's size > 1, on the coordinator, just before a step's reduction):
 * applies a pending learning rate and stop as tb_control_apply_changes()
 * does, and hands over pending checkpoint and shutdown requests in *out,
 * without ever waiting. out->paused says whether a pause is requested; the
 * request stays, for tb_control_apply() to wait in at the step's boundary
 * (once every participant knows of it). */
void tb_control_take(tb_control_t *c, tb_ctx_t *ctx, tb_applied_t *out);
/* Sends a note through the notify function, if any (trainer thread). */
void tb_control_note(tb_control_t *c, const tb_control_note_t *note);

#endif
