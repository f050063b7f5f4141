/* The publisher: the core callback that puts a run's events on the bus.
 *
 * It runs on the trainer thread and does as little as it can there: number
 * the event, pack its header and logs into the server's queue (one copy,
 * under one mutex, no allocation in the steady state), and wake the loop with
 * uv_async_send only when the queue was empty: while the loop has not taken
 * the queue yet, it has been woken already and takes this record too.
 * Encoding, logging to disk and fan-out happen on the loop thread. The
 * trainer waits only at lockstep events, and only as long as the
 * subscriber's timeout allows.
 *
 * The queue is bounded (o.queue_bytes) without ever blocking the trainer:
 * past the bound a batch event is dropped and counted, and the next record
 * of that run is preceded by a gap record from which the loop tells every
 * subscriber of the run what it lost (a "dropped" notice). Lifecycle, state
 * and control events and lockstep events are never dropped: they are few
 * (a handful per epoch) and may grow the queue past the bound. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN8(n) (((n) + 7) & ~(size_t)7)

/* Room for `need` more bytes; false if the allocation failed. */
static bool q_reserve(tb_server_t *s, size_t need) {
  if (s->q_len + need <= s->q_cap)
    return true;
  size_t cap = s->q_cap ? s->q_cap : 64 * 1024;
  while (cap < s->q_len + need)
    cap *= 2;
  char *q = realloc(s->q, cap);
  if (q == NULL)
    return false;
  s->q = q;
  s->q_cap = cap;
  return true;
}

/* The gap record telling the loop what the queue dropped for run r. */
static void push_gap_locked(tb_server_t *s, tb_run_t *r) {
  if (!q_reserve(s, sizeof(tb_rec_t)))
    return; /* told with the next record */
  tb_rec_t *g = (tb_rec_t *)(s->q + s->q_len);
  memset(g, 0, sizeof(*g));
  g->run = r;
  g->size = (uint32_t)sizeof(tb_rec_t);
  g->kind = TB_EVENT_INVALID;
  g->lr = NAN;
  g->drop_count = r->qd_count;
  g->drop_from = r->qd_from;
  g->drop_to = r->qd_to;
  s->q_len += g->size;
  r->qd_count = 0;
}

static size_t put_str(char *d, const char *str) {
  size_t n = strlen(str) + 1;
  memcpy(d, str, n);
  return n;
}

void tb__push(tb_run_t *r, tb_rec_t *rec, const tb_logs_t *logs, const char *action, const char *by,
              const char *reason) {
  tb_server_t *s = r->srv;
  rec->run = r;
  int n_logs = logs != NULL ? logs->n : 0;
  size_t name_len[TB_LOGS_MAX], names = 0, text = 0;
  for (int i = 0; i < n_logs; i++)
    names += name_len[i] = strnlen(logs->names[i], TB_LOGS_NAME_MAX - 1) + 1;
  bool texts = rec->kind == TB_EVENT_STATE || rec->kind == TB_EVENT_CONTROL;
  if (texts)
    text = strlen(action ? action : "") + strlen(by ? by : "") + strlen(reason ? reason : "") + 3;
  size_t size = ALIGN8(sizeof(tb_rec_t) + (size_t)n_logs * sizeof(double) + names + text);
  bool droppable = tb_event_is_batch(rec->kind) && !rec->lockstep;

  pthread_mutex_lock(&s->q_mu);
  bool was_empty = s->q_len == 0;
  if (droppable && s->q_len + size > s->o.queue_bytes) {
    /* The loop has fallen behind: drop this batch event and say so later. */
    if (r->qd_count == 0)
      r->qd_from = rec->seq;
    r->qd_to = rec->seq;
    r->qd_count++;
    s->n_qdropped++;
    pthread_mutex_unlock(&s->q_mu);
    return;
  }
  if (r->qd_count > 0)
    push_gap_locked(s, r);
  if (!q_reserve(s, size)) {
    /* Out of memory: a batch event is dropped like one over the bound;
     * anything else waits for the loop to drain. */
    if (droppable) {
      if (r->qd_count == 0)
        r->qd_from = rec->seq;
      r->qd_to = rec->seq;
      r->qd_count++;
      s->n_qdropped++;
      pthread_mutex_unlock(&s->q_mu);
      return;
    }
    pthread_mutex_unlock(&s->q_mu);
    uv_async_send(&s->wake);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    tb__push(r, rec, logs, action, by, reason);
    return;
  }
  char *d = s->q + s->q_len;
  rec->size = (uint32_t)size;
  rec->n_logs = n_logs;
  memcpy(d, rec, sizeof(*rec));
  char *t = d + sizeof(*rec);
  if (n_logs > 0) {
    memcpy(t, logs->values, (size_t)n_logs * sizeof(double));
    t += (size_t)n_logs * sizeof(double);
    for (int i = 0; i < n_logs; i++) {
      memcpy(t, logs->names[i], name_len[i] - 1);
      t[name_len[i] - 1] = '\0';
      t += name_len[i];
    }
  }
  if (texts) {
    t += put_str(t, action ? action : "");
    t += put_str(t, by ? by : "");
    put_str(t, reason ? reason : "");
  }
  s->q_len += size;
  pthread_mutex_unlock(&s->q_mu);
  if (was_empty)
    uv_async_send(&s->wake);
}

void tb__rec_tail(const tb_rec_t *rec, tb_rec_tail_t *t) {
  const char *p = (const char *)rec + sizeof(*rec);
  t->values = (const double *)p;
  p += (size_t)rec->n_logs * sizeof(double);
  for (int i = 0; i < rec->n_logs; i++) {
    t->names[i] = p;
    p += strlen(p) + 1;
  }
  t->action = t->by = t->reason = "";
  if (rec->kind == TB_EVENT_STATE || rec->kind == TB_EVENT_CONTROL) {
    t->action = p;
    p += strlen(p) + 1;
    t->by = p;
    p += strlen(p) + 1;
    t->reason = p;
  }
}

/* kind TB_EVENT_INVALID: not an event (the finished record), so no seq. */
static void rec_init(tb_rec_t *rec, tb_run_t *r, tb_event_kind_t kind, int epoch, int batch) {
  memset(rec, 0, sizeof(*rec));
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
  tb__push(r, &rec, NULL, NULL, NULL, NULL);
}

void tb__push_state(tb_run_t *r, tb_run_state_t state, tb_run_state_t prev, const char *reason,
                    int epoch, int batch) {
  tb_rec_t rec;
  rec_init(&rec, r, TB_EVENT_STATE, epoch, batch);
  rec.state = state;
  rec.prev_state = prev;
  tb__push(r, &rec, NULL, NULL, NULL, reason);
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
  /* Which output is which class, for clients (NULL on OOM: not said). */
  if (ctx->hook == TB_HOOK_TRAIN_BEGIN && ctx->model != NULL &&
      tb_classes_copy(tb_model_classes(ctx->model), &rec.classes) != 0)
    rec.classes = NULL;
  uint32_t mask = atomic_load(&r->lockstep_mask);
  if (!(mask & (1u << kind))) {
    tb__push(r, &rec, logs, NULL, NULL, NULL);
    return 0;
  }
  /* Lockstep: arm the wait before the loop can see the event. */
  rec.lockstep = true;
  pthread_mutex_lock(&r->ls_mu);
  r->ls_seq = rec.seq;
  r->ls_armed = false;
  r->ls_waiting = 0;
  pthread_mutex_unlock(&r->ls_mu);
  tb__push(r, &rec, logs, NULL, NULL, NULL);
  int timeout = atomic_load(&r->lockstep_timeout_ms);
  if (!lockstep_wait(r, rec.seq, timeout > 0 ? timeout : 5000)) {
    tb_rec_t t;
    rec_init(&t, r, TB_EVENT_CONTROL, epoch, batch);
    char why[160];
    snprintf(why, sizeof(why), "no continue for seq %lld within %d ms; training goes on",
             (long long)rec.seq, timeout);
    tb__push(r, &t, NULL, "lockstep_timeout", NULL, why);
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
  char by[128];
  snprintf(by, sizeof(by), "%s", n->by && n->by[0] ? n->by : "callback");
  if (n->action == TB_CONTROL_SET_LR) {
    rec.has_value = rec.has_old = true;
    rec.value = n->new_value;
    rec.old_value = n->old_value;
    rec.lr = n->new_value;
  }
  if (n->path != NULL && n->path[0] != '\0')
    rec.path = strdup(n->path); /* NULL on OOM: the event just names no file */
  rec.ticket = n->ticket;
  tb__push(r, &rec, NULL, names[n->action], by, NULL);
  if (n->action == TB_CONTROL_PAUSE)
    tb__push_state(r, TB_RUN_PAUSED, TB_RUN_RUNNING, by, n->epoch, n->batch);
  else if (n->action == TB_CONTROL_RESUME && !r->stop_requested)
    tb__push_state(r, TB_RUN_RUNNING, TB_RUN_PAUSED, by, n->epoch, n->batch);
  else if (n->action == TB_CONTROL_STOP) {
    r->stop_requested = true;
    tb__push_state(r, TB_RUN_STOPPING, TB_RUN_RUNNING, by, n->epoch, n->batch);
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
