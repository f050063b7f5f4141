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
 * (a handful per epoch) and may grow the queue past the bound.
 *
 * After a restart (--resume) a run continues from its latest checkpoint, which
 * may be older than the last event in its log (after a SIGKILL: up to an
 * epoch older). The publisher saves its seq in every checkpoint, so the
 * resumed trainer knows which logged event comes next: while it regenerates
 * events the log already holds (the "redo"), each one gets its logged seq and
 * is not published again (clients have it, or get it by replay), and the
 * control actions the log records after it (set_lr, stop: a remote callback's
 * answers, a user's commands) are requested again so they apply at the same
 * place. Training is deterministic, so the redo reproduces the log exactly and
 * the run continues as if the daemon had never stopped: same weights, every
 * seq once. A logged lockstep event whose answer never took effect (the daemon
 * died waiting) is asked again. Should training go another way than the log
 * (a new command arrived during the redo), the redo ends there and what
 * follows is numbered after the log, as new events. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
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
  /* A trainer's events come from the loop itself, which drains what it
   * pushes: they are never dropped here, so the log holds every event the
   * trainer was told the run holds (trainer.c). */
  bool droppable = tb_event_is_batch(rec->kind) && !rec->lockstep && r->source != TB_SOURCE_TRAINER;

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
     * anything else waits for the loop to drain (the loop itself cannot
     * wait for itself: a trainer's event is then lost, told as a gap). */
    if (droppable || r->source == TB_SOURCE_TRAINER) {
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

/* The record's seq is given by number() when it is published (none for
 * the finished record, which is not an event). */
static void rec_init(tb_rec_t *rec, tb_run_t *r, tb_event_kind_t kind, int epoch, int batch) {
  memset(rec, 0, sizeof(*rec));
  rec->run = r;
  rec->seq = 0;
  rec->kind = kind;
  rec->epoch = epoch;
  rec->batch = batch;
  rec->time_us = tb__srv_now_us();
  rec->lr = NAN;
  rec->epochs = r->epochs;
}

/* ---- the redo after a restart ------------------------------------------------ */

/* What the log says about one event, enough to recognise it again. */
typedef struct tb_redo_s {
  tb_event_kind_t kind;
  int epoch, batch;
  tb_run_state_t state, prev_state; /* state events */
  char action[24];                  /* control events */
  bool has_value;
  double value;
} tb_redo_t;

static const tb_redo_t *redo_at(const tb_run_t *r, int64_t seq) {
  int64_t i = seq - r->redo_base - 1;
  return i >= 0 && (size_t)i < r->n_redo_log ? &r->redo_log[i] : NULL;
}

/* Logged events a resumed trainer does not make again: pauses and resumes
 * (they change no weight, and a restored pause is taken up again when the
 * redo is over), checkpoints, lockstep timeouts (the redo does not wait) and
 * the shutdown notes of older daemons. */
static bool redo_skippable(const tb_redo_t *e) {
  if (e->kind == TB_EVENT_CONTROL)
    return strcmp(e->action, "set_lr") != 0 && strcmp(e->action, "stop") != 0;
  if (e->kind == TB_EVENT_STATE)
    return e->state == TB_RUN_PAUSED ||
           (e->state == TB_RUN_RUNNING && e->prev_state == TB_RUN_PAUSED);
  return false;
}

/* e is the logged event at rec's place (action: rec's, for control
 * events). A seq the queue dropped (kind TB_EVENT_INVALID in the table) was
 * a batch event: any batch event takes its place. */
static bool redo_same(const tb_redo_t *e, const tb_rec_t *rec, const char *action) {
  if (e->kind == TB_EVENT_INVALID)
    return tb_event_is_batch(rec->kind);
  if (e->kind != rec->kind || e->epoch != rec->epoch || e->batch != rec->batch)
    return false;
  if (rec->kind == TB_EVENT_STATE)
    return e->state == rec->state;
  if (rec->kind == TB_EVENT_CONTROL)
    return strcmp(e->action, action ? action : "") == 0 &&
           (!e->has_value || e->value == rec->value);
  return true;
}

/* The redo is over: what follows is new. A run that was paused when the
 * daemon stopped is paused again here, at the place it had paused, without a
 * new pause event (its clients saw that one). */
static void redo_end(tb_run_t *r) {
  r->redo = false;
  free(r->redo_log);
  r->redo_log = NULL;
  r->n_redo_log = 0;
  if (r->restored && r->restored_state == TB_RUN_PAUSED)
    tb_control_hold(&r->control, "the pause before the restart");
  r->restored = false;
}

/* Moves past logged events the trainer will not make again. */
static void redo_skip(tb_run_t *r) {
  const tb_redo_t *e;
  while (r->redo && (e = redo_at(r, r->seq + 1)) != NULL && redo_skippable(e))
    r->seq++;
  if (r->redo && r->seq >= r->logged_seq)
    redo_end(r);
}

/* Requests again the control actions the log shows next (up to the next
 * event that is not one), so the trainer applies them where it did before.
 * Returns true if it requested any. */
static bool redo_inject(tb_run_t *r, int64_t *upto) {
  bool any = false;
  for (int64_t seq = r->seq + 1; seq <= r->logged_seq; seq++) {
    const tb_redo_t *e = redo_at(r, seq);
    if (e == NULL)
      break;
    if (redo_skippable(e) || (e->kind == TB_EVENT_STATE && e->state == TB_RUN_STOPPING))
      continue;
    if (e->kind != TB_EVENT_CONTROL)
      break;
    if (seq > *upto) {
      if (strcmp(e->action, "set_lr") == 0 && e->has_value)
        tb_control_set_lr(&r->control, e->value, "the log (redo after a restart)");
      else
        tb_control_stop(&r->control, "the log (redo after a restart)");
      *upto = seq;
      any = true;
    }
  }
  return any;
}

/* Reads what the log holds after seq `base` and starts the redo there (the
 * trainer continues from a checkpoint taken at seq base). Without a readable
 * log the run simply goes on numbering after it. */
static void redo_begin(tb_run_t *r, int64_t base) {
  if (base >= r->logged_seq || r->dir[0] == '\0') {
    if (base > r->logged_seq)
      tb__log(r->srv, 0, "run %s: its checkpoint is newer (seq %lld) than its log (seq %lld)",
              r->id, (long long)base, (long long)r->logged_seq);
    redo_end(r);
    return;
  }
  size_t n = (size_t)(r->logged_seq - base);
  tb_redo_t *log = calloc(n, sizeof(*log));
  tb_smsg_t *m = malloc(sizeof(*m));
  char path[1200];
  snprintf(path, sizeof(path), "%s/events.ndjson", r->dir);
  FILE *f = log != NULL && m != NULL ? fopen(path, "r") : NULL;
  size_t got = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while (f != NULL && (len = getline(&line, &cap, f)) > 0) {
    const char *p = strstr(line, "\"seq\":");
    int64_t seq = p != NULL ? strtoll(p + 6, NULL, 10) : 0;
    if (seq <= base || seq > r->logged_seq)
      continue;
    tb_proto_err_t perr;
    if (seq < base + 1 + (int64_t)got || tb_smsg_decode(line, (size_t)len, m, &perr) != 0 ||
        m->kind != TB_SMSG_EVENT)
      break;
    /* Seqs the queue dropped (batch events) are not in the log: calloc left
     * their entries kind TB_EVENT_INVALID, which any batch event matches. */
    got = (size_t)(seq - base - 1);
    const tb_event_t *ev = &m->event;
    tb_redo_t *e = &log[got++];
    e->kind = tb_event_from_name(ev->name);
    e->epoch = (int)ev->epoch;
    e->batch = (int)ev->batch;
    e->state = ev->state ? tb_run_state_from_name(ev->state) : TB_RUN_INVALID;
    e->prev_state = ev->prev_state ? tb_run_state_from_name(ev->prev_state) : TB_RUN_INVALID;
    snprintf(e->action, sizeof(e->action), "%s", ev->action ? ev->action : "");
    e->has_value = ev->has_value;
    e->value = ev->value;
    tb_smsg_free(m);
  }
  free(line);
  free(m);
  if (f != NULL)
    fclose(f);
  if (got != n) {
    tb__log(r->srv, 0, "run %s: cannot read seq %lld..%lld of its log again; new events follow it",
            r->id, (long long)base + 1, (long long)r->logged_seq);
    free(log);
    r->seq = r->logged_seq;
    redo_end(r);
    return;
  }
  r->redo_log = log;
  r->n_redo_log = n;
  r->redo_base = base;
  r->seq = base;
  r->redo = true;
  tb__log(r->srv, 1, "run %s: retraining from seq %lld to %lld of its log", r->id, (long long)base,
          (long long)r->logged_seq);
  redo_skip(r);
}

/* Gives rec its seq (action: a control event's). Returns false when rec is
 * the redo of a logged event
 * (it keeps that event's seq and is not published again); *inject is then
 * set if control actions the log shows next were requested again. */
static bool number(tb_run_t *r, tb_rec_t *rec, const char *action, bool *inject) {
  *inject = false;
  if (r->redo) {
    const tb_redo_t *e = redo_at(r, r->seq + 1);
    if (e != NULL && redo_same(e, rec, action)) {
      rec->seq = ++r->seq;
      redo_skip(r);
      if (r->redo)
        *inject = redo_inject(r, &r->redo_injected);
      return false;
    }
    tb__log(r->srv, 0,
            "run %s: after the restart training went another way than its log at seq %lld "
            "(%s instead of %s); the events from here on are new",
            r->id, (long long)r->seq + 1, tb_event_name(rec->kind),
            e != NULL ? tb_event_name(e->kind) : "?");
    r->seq = r->logged_seq;
    redo_end(r);
  }
  rec->seq = ++r->seq;
  return true;
}

/* Called by the trainer before it fires train_begin (runs.c): a restored run
 * that had started redoes its log from the start when it has no checkpoint;
 * with one, from the checkpoint's seq (load_state below). */
void tb__publisher_begin(tb_run_t *r, bool from_checkpoint) {
  bool started = r->restored && r->restored_state != TB_RUN_QUEUED && r->logged_seq > 0;
  r->resuming = started && from_checkpoint;
  r->redo_injected = 0;
  if (started && !from_checkpoint)
    redo_begin(r, 0);
  else if (!r->resuming)
    redo_end(r);
}

/* The checkpoint records the seq of the last event before it. It waits (a
 * millisecond or two: one drain) until the loop has logged that event, so
 * that a crash right after cannot leave a checkpoint ahead of the log, whose
 * missing events no redo could make again. */
static int save_state(tb_callback_t *cb, tb_state_t *st) {
  tb_run_t *r = cb->user;
  /* Batch events the queue dropped since the last record will never be
   * logged: wait for what comes before them only. */
  tb_server_t *s = r->srv;
  pthread_mutex_lock(&s->q_mu);
  int64_t want = r->qd_count > 0 && r->qd_to == r->seq ? r->qd_from - 1 : r->seq;
  pthread_mutex_unlock(&s->q_mu);
  for (int i = 0; i < 1000 && r->log != NULL && atomic_load(&r->flushed_seq) < want; i++) {
    uv_async_send(&r->srv->wake);
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return tb_state_put_i64(st, "seq", r->seq);
}

/* A checkpoint without the key (written by another program) is fine: the
 * run then numbers its events after its log. */
static int load_state(tb_callback_t *cb, const tb_state_t *st) {
  tb_run_t *r = cb->user;
  int64_t seq;
  if (!r->resuming)
    return 0;
  if (tb_state_get_i64(st, "seq", &seq) == 0 && seq >= 0)
    redo_begin(r, seq);
  else
    redo_end(r);
  return 0;
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
  bool inject;
  if (number(r, &rec, NULL, &inject))
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

/* Applies a lockstep answer's rate and stop in the middle of a hook. During
 * validation (and evaluate, predict) ctx->batch is a test batch: the control
 * events say batch -1 there, "at the epoch's end", not a training batch. */
static void apply_changes(tb_run_t *r, tb_ctx_t *ctx) {
  int batch = ctx->batch;
  if (ctx->hook >= TB_HOOK_TEST_BEGIN)
    ctx->batch = -1;
  tb_control_apply_changes(&r->control, ctx);
  ctx->batch = batch;
}

static int on_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  tb_run_t *r = cb->user;
  tb_event_kind_t kind = (tb_event_kind_t)(ctx->hook + 1); /* same order as core's hooks */
  /* A run resumed from a checkpoint had begun before the restart: its
   * clients saw train_begin then, and the callbacks' states are restored
   * right after this one. */
  if (ctx->hook == TB_HOOK_TRAIN_BEGIN && r->resuming) {
    if (ctx->epochs > 0)
      r->epochs = ctx->epochs;
    return 0;
  }
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
  bool inject, fresh = number(r, &rec, NULL, &inject);
  if (!fresh) {
    /* A logged event made again. Its lockstep answer is in the log (the
     * actions just requested again take effect here, as the answer did),
     * unless it is the last event the log has: the daemon may have died
     * waiting for that answer, so it is asked for again. */
    if (!(mask & (1u << kind)) || r->redo || rec.seq != r->logged_seq) {
      tb_classes_free(rec.classes);
      if (inject)
        apply_changes(r, ctx);
      return 0;
    }
    rec.reask = true;
  } else if (!(mask & (1u << kind))) {
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
    if (number(r, &t, "lockstep_timeout", &inject))
      tb__push(r, &t, NULL, "lockstep_timeout", NULL, why);
  }
  /* What the clients asked for takes effect before training goes on. */
  apply_changes(r, ctx);
  return 0;
}

/* Control notes: every applied action becomes a control event, and pauses
 * and stops become state events. */
static void on_note(tb_control_t *c, const tb_control_note_t *n, void *user) {
  tb_run_t *r = user;
  static const char *names[] = {"", "set_lr", "stop", "pause", "resume", "checkpoint", "shutdown"};
  /* A daemon shutdown is not an event of the run: the run continues after a
   * restart as if nothing had happened (its clients are told by bye). */
  if (n->action == TB_CONTROL_SHUTDOWN)
    return;
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
  bool inject;
  if (number(r, &rec, names[n->action], &inject))
    tb__push(r, &rec, NULL, names[n->action], by, NULL);
  else
    free(rec.path);
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
  r->cb.save_state = save_state;
  r->cb.load_state = load_state;
  tb_control_set_notify(&r->control, on_note, r);
}
