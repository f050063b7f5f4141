/* The publisher: the core callback that puts a run's events on the bus.
 *
 * It runs on the trainer thread and does as little as it can there: number
 * the event, copy its logs into a record and append the record to the
 * server's queue (one mutex, no allocation in the steady state), then wake the
 * loop with uv_async_send. Encoding, logging to disk and fan-out happen on
 * the loop thread. The trainer waits only at lockstep events, and only as long
 * as the subscriber's timeout allows. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tb__push(tb_run_t *r, tb_rec_t *rec) {
  tb_server_t *s = r->srv;
  rec->run = r;
  pthread_mutex_lock(&s->q_mu);
  if (s->q_len == s->q_cap) {
    size_t cap = s->q_cap ? s->q_cap * 2 : 256;
    tb_rec_t *q = realloc(s->q, cap * sizeof(*q));
    if (q == NULL) {
      /* Out of memory: a batch event is dropped (the log shows the gap in
       * seq); anything else waits for the loop to drain. */
      pthread_mutex_unlock(&s->q_mu);
      if (tb_event_is_batch(rec->kind))
        return;
      uv_async_send(&s->wake);
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
      tb__push(r, rec);
      return;
    }
    s->q = q;
    s->q_cap = cap;
  }
  /* Copy only the used part of the logs: most events carry a handful. */
  bool was_empty = s->q_len == 0;
  tb_rec_t *dst = &s->q[s->q_len++];
  size_t head = offsetof(tb_rec_t, logs);
  memcpy(dst, rec, head);
  dst->logs.n = rec->logs.n;
  memcpy(dst->logs.names, rec->logs.names, (size_t)rec->logs.n * TB_LOGS_NAME_MAX);
  memcpy(dst->logs.values, rec->logs.values, (size_t)rec->logs.n * sizeof(double));
  memcpy((char *)dst + offsetof(tb_rec_t, state), (const char *)rec + offsetof(tb_rec_t, state),
         sizeof(tb_rec_t) - offsetof(tb_rec_t, state));
  pthread_mutex_unlock(&s->q_mu);
  /* One wake-up per batch of records: while the queue is non-empty the loop
   * has been woken already and will take this record too. */
  if (was_empty)
    uv_async_send(&s->wake);
}

/* kind TB_EVENT_INVALID: not an event (the finished record), so no seq. */
static void rec_init(tb_rec_t *rec, tb_run_t *r, tb_event_kind_t kind, int epoch, int batch) {
  /* Only the header and the small fields are set; logs are filled by the
   * caller (n = 0 here). */
  memset(rec, 0, offsetof(tb_rec_t, logs));
  rec->logs.n = 0;
  memset((char *)rec + offsetof(tb_rec_t, state), 0, sizeof(tb_rec_t) - offsetof(tb_rec_t, state));
  rec->run = r;
  rec->seq = kind != TB_EVENT_INVALID ? ++r->seq : 0;
  rec->kind = kind;
  rec->epoch = epoch;
  rec->batch = batch;
  rec->time_us = tb__srv_now_us();
  rec->lr = NAN;
  rec->epochs = r->epochs;
}

/* The trainer thread's last record: not an event (no seq), it tells the loop
 * to join the thread and start the next run. */
void tb__push_finished(tb_run_t *r) {
  tb_rec_t rec;
  rec_init(&rec, r, TB_EVENT_INVALID, -1, -1);
  rec.finished = true;
  tb__push(r, &rec);
}

void tb__push_state(tb_run_t *r, tb_run_state_t state, tb_run_state_t prev, const char *reason,
                    int epoch, int batch) {
  tb_rec_t rec;
  rec_init(&rec, r, TB_EVENT_STATE, epoch, batch);
  rec.state = state;
  rec.prev_state = prev;
  snprintf(rec.reason, sizeof(rec.reason), "%s", reason ? reason : "");
  tb__push(r, &rec);
}

/* Waits for the lockstep subscribers' answers to `seq`, at most timeout_ms. */
static bool lockstep_wait(tb_run_t *r, int64_t seq, int timeout_ms) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  bool answered = true;
  pthread_mutex_lock(&r->ls_mu);
  while (r->ls_seq == seq && !(r->ls_armed && r->ls_waiting == 0)) {
    if (pthread_cond_timedwait(&r->ls_cv, &r->ls_mu, &deadline) != 0) {
      answered = r->ls_armed && r->ls_waiting == 0;
      break;
    }
  }
  r->ls_seq = 0;
  pthread_mutex_unlock(&r->ls_mu);
  return answered;
}

static int on_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  tb_run_t *r = cb->user;
  tb_event_kind_t kind = (tb_event_kind_t)(ctx->hook + 1); /* same order as core's hooks */
  int epoch = ctx->hook == TB_HOOK_TRAIN_BEGIN || ctx->hook >= TB_HOOK_PREDICT_BEGIN ||
                      (ctx->hook == TB_HOOK_TRAIN_END && ctx->epoch < 0)
                  ? -1
                  : ctx->epoch;
  int batch = tb_hook_is_batch(ctx->hook) ? index : -1;
  if (ctx->hook == TB_HOOK_TRAIN_BEGIN && ctx->epochs > 0)
    r->epochs = ctx->epochs;
  tb_rec_t rec;
  rec_init(&rec, r, kind, epoch, batch);
  if (ctx->model != NULL)
    rec.lr = tb_model_lr(ctx->model);
  rec.logs.n = logs->n;
  memcpy(rec.logs.names, logs->names, (size_t)logs->n * TB_LOGS_NAME_MAX);
  memcpy(rec.logs.values, logs->values, (size_t)logs->n * sizeof(double));
  uint32_t mask = atomic_load(&r->lockstep_mask);
  if (!(mask & (1u << kind))) {
    tb__push(r, &rec);
    return 0;
  }
  /* Lockstep: arm the wait before the loop can see the event. */
  rec.lockstep = true;
  pthread_mutex_lock(&r->ls_mu);
  r->ls_seq = rec.seq;
  r->ls_armed = false;
  r->ls_waiting = 0;
  pthread_mutex_unlock(&r->ls_mu);
  tb__push(r, &rec);
  int timeout = atomic_load(&r->lockstep_timeout_ms);
  if (!lockstep_wait(r, rec.seq, timeout > 0 ? timeout : 5000)) {
    tb_rec_t t;
    rec_init(&t, r, TB_EVENT_CONTROL, epoch, batch);
    snprintf(t.action, sizeof(t.action), "lockstep_timeout");
    snprintf(t.reason, sizeof(t.reason), "no continue for seq %lld within %d ms; training goes on",
             (long long)rec.seq, timeout);
    tb__push(r, &t);
  }
  /* What the clients asked for takes effect before training goes on. */
  tb_control_apply_changes(&r->control, ctx);
  return 0;
}

/* Control notes: every applied action becomes a control event, and pauses
 * and stops become state events. */
static void on_note(tb_control_t *c, const tb_control_note_t *n, void *user) {
  tb_run_t *r = user;
  static const char *names[] = {"", "set_lr", "stop", "pause", "resume", "checkpoint", "shutdown"};
  tb_rec_t rec;
  rec_init(&rec, r, TB_EVENT_CONTROL, n->epoch, n->batch);
  snprintf(rec.action, sizeof(rec.action), "%s", names[n->action]);
  snprintf(rec.by, sizeof(rec.by), "%s", n->by && n->by[0] ? n->by : "callback");
  if (n->action == TB_CONTROL_SET_LR) {
    rec.has_value = rec.has_old = true;
    rec.value = n->new_value;
    rec.old_value = n->old_value;
    rec.lr = n->new_value;
  }
  if (n->path != NULL && n->path[0] != '\0')
    rec.path = strdup(n->path); /* NULL on OOM: the event just names no file */
  rec.ticket = n->ticket;
  tb__push(r, &rec);
  if (n->action == TB_CONTROL_PAUSE)
    tb__push_state(r, TB_RUN_PAUSED, TB_RUN_RUNNING, rec.by, n->epoch, n->batch);
  else if (n->action == TB_CONTROL_RESUME && !r->stop_requested)
    tb__push_state(r, TB_RUN_RUNNING, TB_RUN_PAUSED, rec.by, n->epoch, n->batch);
  else if (n->action == TB_CONTROL_STOP) {
    r->stop_requested = true;
    tb__push_state(r, TB_RUN_STOPPING, TB_RUN_RUNNING, rec.by, n->epoch, n->batch);
  }
}

void tb__publisher_init(tb_run_t *r) {
  memset(&r->cb, 0, sizeof(r->cb));
  r->cb.name = "trainbus-publisher";
  for (int i = 0; i < TB_HOOK_COUNT; i++)
    r->cb.hooks[i] = on_hook;
  r->cb.user = r;
  tb_control_set_notify(&r->control, on_note, r);
}
