/* The publisher (trainbus/publisher.h): a training loop's events to a
 * daemon, the daemon's controls back into the loop's control block.
 *
 * Two threads. The loop's thread runs the hooks: each one numbers its event
 * (the trainer's seq), packs it into a record at the end of a byte queue
 * under one mutex (header, logs' values and names; no allocation in the
 * steady state) and wakes the I/O thread through an eventfd only when that
 * thread is asleep. The I/O thread owns the connection: it takes the whole
 * queue at once, encodes the records into publish notifications (up to
 * 48 KiB each), sends them, reads what the daemon sends (controls, continue,
 * lockstep hooks, refusals, acknowledgements) and reconnects.
 *
 * What was sent stays in a list of sent lines until the daemon has taken it:
 * every 200 ms (or 1 MiB) one publish goes as a request, whose answer says
 * the trainer's seq the run holds, and the lines up to it are let go (the
 * list is bounded; while idle, the last lines simply stay). After a
 * reconnect, attach answers the same number, and the lines past it are sent
 * again (the daemon skips any event it holds), so a connection lost with
 * events in flight loses none and repeats none.
 *
 * Controls: a "control" from the daemon is written into the control block
 * (tb_control_set_lr_ticket, _stop, _pause, _resume, _checkpoint_ticket) by
 * the I/O thread; the loop applies it at its next batch boundary and the
 * block's note comes back here on the loop's thread, where it becomes an
 * "applied" record in the queue, behind the events before it, carrying the
 * id of the control it answers (the core ticket maps to the daemon's id). */
#include "trainbus/publisher.h"
#include "internal.h"
#include "trainbus/model.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define ALIGN8(n) (((n) + 7) & ~(size_t)7)

enum {
  MSG_BYTES = 48 * 1024,      /* a publish line is flushed past this (max_line is 64 KiB) */
  ACK_MS = 200,               /* ask the daemon how far it got at least this often */
  ACK_BYTES = 1024 * 1024,    /* ... or once this much has been sent unconfirmed */
  SENT_MAX = 64 * 1024 * 1024 /* sent and unconfirmed lines kept at most */
};

typedef enum { REC_EVENT = 1, REC_APPLIED } rec_type_t;

/* A record in the queue, followed by its tail (8-aligned): n_logs doubles,
 * n_logs names, and for REC_APPLIED the texts by, path and error. */
typedef struct rec_s {
  uint32_t size;
  uint8_t type;
  uint8_t kind; /* tb_event_kind_t */
  bool lockstep, has_lr, has_value, has_old;
  int n_logs;
  int epoch, batch;
  int64_t seq, dropped, time_us;
  double lr;
  tb_classes_t *classes; /* train_begin: the model's class names, owned */
  /* applied */
  int64_t id;
  double value, old;
  char action[16];
} rec_t;

typedef struct sent_s {
  struct sent_s *next;
  int64_t last_seq; /* the trainer's seq of its last event */
  size_t len;
  char text[];
} sent_t;

struct tb_publisher_s {
  tb_callback_t cb;
  tb_client_opts_t copts;
  char addr[1024], token[TB_PROTO_TOKEN_MAX], state_dir[1024], client_name[TB_PROTO_TEXT_MAX];
  char ca_file[1024], server_name[256], cert_file[1024], key_file[1024];
  char name[TB_PROTO_TEXT_MAX];
  char *model;
  int epochs, steps;
  double lr0;
  tb_control_t *control;
  tb_control_notify_fn old_notify;
  void *old_user;
  bool checkpoints;
  size_t queue_bytes;
  int reconnect_ms;
  char run[TB_PROTO_RUN_MAX];

  /* loop's thread */
  int64_t seq;     /* the trainer's seq, last given (under mu, read by stats) */
  bool skip_begin; /* resuming: train_begin is no event, the seq comes from the checkpoint */
  bool continuing; /* a run given in the options: load_state sets the seq */
  int64_t ls_wait; /* the seq of the lockstep event being waited on */

  /* shared, under mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char *q;
  size_t q_len, q_cap;
  int64_t q_dropped; /* batch events dropped since the last record */
  bool connected;
  uint64_t gen;     /* connections made so far (a lockstep wait ends with its connection) */
  int64_t released; /* the last lockstep seq the daemon said to go on from */
  bool stop, finish_asked, finished;
  tb_run_state_t finish_state;
  char finish_reason[TB_PROTO_TEXT_MAX];
  int finish_rc;
  tb_client_err_t finish_err;
  /* Controls forwarded and not yet reported applied: core's ticket (or 0)
   * and the daemon's id. */
  struct {
    uint64_t ticket;
    int64_t id;
    tb_control_action_t action;
  } map[64];
  int n_map;
  tb_publisher_stats_t st;

  _Atomic uint32_t ls_hooks;
  _Atomic int ls_timeout_ms;
  _Atomic bool sleeping;
  int wake_fd;

  /* I/O thread */
  pthread_t thread;
  bool thread_started;
  tb_client_t *c;
  char *cur; /* the records being sent */
  size_t cur_len, cur_cap;
  tb_buf_t out;     /* the publish line being built */
  int n_out_events; /* events in it */
  int64_t out_last;
  bool out_ack; /* it is a request (an acknowledgement is asked) */
  int64_t ack_id;
  uint64_t ack_ms;
  size_t unacked_bytes;
  sent_t *sent, *sent_tail;
  size_t sent_bytes;
  int64_t held;       /* the trainer's seq the daemon holds (attach and acknowledgements) */
  int64_t skip_upto;  /* events up to this seq are not sent: the run holds them */
  tb_req_t *req;      /* scratch for applied and attach */
  tb_pub_event_t *ev; /* scratch for encoding */
  int64_t n_logged;   /* messages printed, to keep a flood of refusals quiet */
};

/* ---- messages --------------------------------------------------------------- */

static void say(tb_publisher_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(tb_publisher_t *p, const char *fmt, ...) {
  if (p->n_logged++ > 20 && p->n_logged % 1000 != 0)
    return;
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fprintf(stderr, "trainbus publisher: %s%s\n", msg,
          p->n_logged == 21 ? " (further messages only every 1000th)" : "");
}

static uint64_t now_ms(void) {
  return (uint64_t)tb__now_ms();
}

static void wake(tb_publisher_t *p) {
  if (atomic_exchange(&p->sleeping, false)) {
    uint64_t one = 1;
    ssize_t n = write(p->wake_fd, &one, sizeof(one));
    (void)n; /* a full counter is awake anyway */
  }
}

/* ---- the loop's side ------------------------------------------------------------ */

/* Room for `need` more bytes in the queue (under mu). */
static bool q_reserve(tb_publisher_t *p, size_t need) {
  if (p->q_len + need <= p->q_cap)
    return true;
  size_t cap = p->q_cap ? p->q_cap : 64 * 1024;
  while (cap < p->q_len + need)
    cap *= 2;
  char *q = realloc(p->q, cap);
  if (q == NULL)
    return false;
  p->q = q;
  p->q_cap = cap;
  return true;
}

/* Appends a record with logs and texts (under mu); false if out of memory. */
static bool q_put(tb_publisher_t *p, rec_t *rec, const tb_logs_t *logs, const char *by,
                  const char *path, const char *error) {
  int n = logs != NULL ? logs->n : 0;
  size_t names = 0, texts = 0, len[TB_LOGS_MAX];
  for (int i = 0; i < n; i++)
    names += len[i] = strnlen(logs->names[i], TB_LOGS_NAME_MAX - 1) + 1;
  if (rec->type == REC_APPLIED)
    texts = strlen(by) + strlen(path) + strlen(error) + 3;
  size_t size = ALIGN8(sizeof(rec_t) + (size_t)n * sizeof(double) + names + texts);
  if (!q_reserve(p, size))
    return false;
  char *d = p->q + p->q_len;
  rec->size = (uint32_t)size;
  rec->n_logs = n;
  memcpy(d, rec, sizeof(*rec));
  char *t = d + sizeof(*rec);
  if (n > 0) {
    memcpy(t, logs->values, (size_t)n * sizeof(double));
    t += (size_t)n * sizeof(double);
    for (int i = 0; i < n; i++) {
      memcpy(t, logs->names[i], len[i] - 1);
      t[len[i] - 1] = '\0';
      t += len[i];
    }
  }
  if (rec->type == REC_APPLIED) {
    const char *s3[3] = {by, path, error};
    for (int i = 0; i < 3; i++) {
      size_t l = strlen(s3[i]) + 1;
      memcpy(t, s3[i], l);
      t += l;
    }
  }
  p->q_len += size;
  return true;
}

/* Waits for the daemon's continue for lockstep event seq (or the end of the
 * connection it went out on, or the timeout). */
static void lockstep_wait(tb_publisher_t *p, int64_t seq, uint64_t gen) {
  int timeout = atomic_load(&p->ls_timeout_ms);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  int64_t ms = (timeout > 0 ? timeout : TB_PROTO_LOCKSTEP_DEFAULT_MS) + 1000;
  deadline.tv_sec += ms / 1000;
  deadline.tv_nsec += (ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&p->mu);
  while (p->released < seq && p->gen == gen && p->connected && !p->stop)
    if (pthread_cond_timedwait(&p->cv, &p->mu, &deadline) != 0)
      break;
  pthread_mutex_unlock(&p->mu);
}

static int on_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  tb_publisher_t *p = cb->user;
  if (ctx->hook == TB_HOOK_TRAIN_BEGIN && p->skip_begin)
    return 0; /* resumed: its observers saw train_begin; the seq comes with the checkpoint */
  tb_event_kind_t kind = (tb_event_kind_t)(ctx->hook + 1); /* the same order as core's hooks */
  rec_t rec;
  memset(&rec, 0, sizeof(rec));
  rec.type = REC_EVENT;
  rec.kind = (uint8_t)kind;
  /* Where a daemon run's events say they are (server/src/publish.c). */
  rec.epoch = ctx->hook == TB_HOOK_TRAIN_BEGIN || ctx->hook >= TB_HOOK_PREDICT_BEGIN ||
                      (ctx->hook == TB_HOOK_TRAIN_END && ctx->epoch < 0)
                  ? -1
                  : ctx->epoch;
  rec.batch = tb_hook_is_batch(ctx->hook) ? index : -1;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  rec.time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
  if (ctx->model != NULL) {
    rec.has_lr = true;
    rec.lr = tb_model_lr(ctx->model);
  }
  uint32_t hooks = atomic_load(&p->ls_hooks);
  bool droppable = tb_hook_is_batch(ctx->hook) && !(hooks & (1u << kind));
  size_t need = sizeof(rec_t) + (size_t)(logs ? logs->n : 0) * (8 + TB_LOGS_NAME_MAX);

  pthread_mutex_lock(&p->mu);
  if (droppable && p->q_len + need > p->queue_bytes) {
    /* The I/O thread has fallen behind (or is reconnecting): a batch event
     * is dropped, not numbered, and the next one tells the daemon. */
    p->q_dropped++;
    p->st.dropped++;
    pthread_mutex_unlock(&p->mu);
    return 0;
  }
  rec.lockstep = (hooks & (1u << kind)) && p->connected;
  rec.seq = ++p->seq;
  rec.dropped = p->q_dropped;
  if (ctx->hook == TB_HOOK_TRAIN_BEGIN && ctx->model != NULL &&
      tb_classes_copy(tb_model_classes(ctx->model), &rec.classes) != 0)
    rec.classes = NULL;
  if (q_put(p, &rec, logs, NULL, NULL, NULL)) {
    p->q_dropped = 0;
    p->st.events++;
  } else {
    /* Out of memory: said as a drop of the next record's. */
    tb_classes_free(rec.classes);
    p->seq--;
    p->q_dropped++;
    p->st.dropped++;
    rec.lockstep = false;
  }
  uint64_t gen = p->gen;
  pthread_mutex_unlock(&p->mu);
  wake(p);
  if (rec.lockstep) {
    lockstep_wait(p, rec.seq, gen);
    /* What the subscribers answered takes effect in the hook, as a local
     * callback's change would; during validation (and evaluate, predict)
     * the note says batch -1, the epoch's end. */
    if (p->control != NULL) {
      int batch = ctx->batch;
      if (ctx->hook >= TB_HOOK_TEST_BEGIN)
        ctx->batch = -1;
      tb_control_apply_changes(p->control, ctx);
      ctx->batch = batch;
    }
  }
  return 0;
}

/* The daemon's id for an applied action: for a rate or a checkpoint, the
 * last request the core ticket covers (several requests applied together
 * answer the last), for the others the last forwarded; 0 for an action of
 * the loop's own. Under mu. */
static int64_t id_for(tb_publisher_t *p, const tb_control_note_t *n) {
  int64_t id = 0;
  for (int i = 0; i < p->n_map; i++) {
    bool ticketed = n->action == TB_CONTROL_SET_LR || n->action == TB_CONTROL_CHECKPOINT;
    if (p->map[i].action != n->action || (ticketed && p->map[i].ticket > n->ticket))
      continue;
    if (p->map[i].id > id)
      id = p->map[i].id;
    p->map[i--] = p->map[--p->n_map];
  }
  return id;
}

static void on_note(tb_control_t *ctl, const tb_control_note_t *n, void *user) {
  tb_publisher_t *p = user;
  static const char *const names[] = {"",       "set_lr",     "stop",    "pause",
                                      "resume", "checkpoint", "shutdown"};
  if (p->old_notify != NULL)
    p->old_notify(ctl, n, p->old_user);
  if (n->action < TB_CONTROL_SET_LR || n->action > TB_CONTROL_CHECKPOINT)
    return; /* a shutdown is the loop's own business */
  rec_t rec;
  memset(&rec, 0, sizeof(rec));
  rec.type = REC_APPLIED;
  rec.epoch = n->epoch;
  rec.batch = n->batch;
  snprintf(rec.action, sizeof(rec.action), "%s", names[n->action]);
  if (n->action == TB_CONTROL_SET_LR) {
    rec.has_value = rec.has_old = true;
    rec.value = n->new_value;
    rec.old = n->old_value;
  }
  pthread_mutex_lock(&p->mu);
  rec.id = id_for(p, n);
  q_put(p, &rec, NULL, n->by != NULL ? n->by : "",
        n->action == TB_CONTROL_CHECKPOINT && n->path != NULL ? n->path : "", "");
  pthread_mutex_unlock(&p->mu);
  wake(p);
}

/* The trainer's seq goes into every checkpoint, so that a loop resumed from
 * one numbers its events as it did (the run holds those up to its seq). */
static int save_state(tb_callback_t *cb, tb_state_t *st) {
  tb_publisher_t *p = cb->user;
  pthread_mutex_lock(&p->mu);
  int64_t seq = p->seq;
  pthread_mutex_unlock(&p->mu);
  return tb_state_put_i64(st, "seq", seq);
}

static int load_state(tb_callback_t *cb, const tb_state_t *st) {
  tb_publisher_t *p = cb->user;
  int64_t seq;
  p->skip_begin = false;
  if (p->continuing && tb_state_get_i64(st, "seq", &seq) == 0 && seq >= 0) {
    pthread_mutex_lock(&p->mu);
    p->seq = seq;
    pthread_mutex_unlock(&p->mu);
  }
  return 0;
}

/* ---- the I/O thread ----------------------------------------------------------- */

static void io_lost(tb_publisher_t *p, const char *why) {
  if (p->c != NULL && tb_client_fd(p->c) >= 0)
    say(p, "run %s: connection lost (%s); reconnecting", p->run, why);
  pthread_mutex_lock(&p->mu);
  p->connected = false;
  pthread_cond_broadcast(&p->cv); /* a lockstep wait ends with its connection */
  pthread_mutex_unlock(&p->mu);
  p->out.len = 0;
  p->n_out_events = 0;
  p->ack_id = 0;
}

static int io_send(tb_publisher_t *p, const char *buf, size_t len) {
  tb_client_err_t e;
  int rc = tb__client_send_raw(p->c, buf, len, tb__deadline(30000), &e);
  if (rc != 0)
    io_lost(p, e.msg);
  return rc;
}

/* Sends the publish line being built and keeps it until acknowledged. */
static int flush_out(tb_publisher_t *p) {
  if (p->n_out_events == 0)
    return 0;
  if (tb_msg_publish_end(&p->out) != 0)
    return TB_CLIENT_ENOMEM;
  sent_t *s = malloc(sizeof(*s) + p->out.len);
  if (s != NULL) {
    s->next = NULL;
    s->last_seq = p->out_last;
    s->len = p->out.len;
    memcpy(s->text, p->out.data, p->out.len);
    if (p->sent_tail != NULL)
      p->sent_tail->next = s;
    else
      p->sent = s;
    p->sent_tail = s;
    p->sent_bytes += s->len;
    /* Bounded: past it, the oldest lines would not be sent again after a
     * reconnect (the daemon has long had them: it acknowledges five times a
     * second). */
    while (p->sent_bytes > SENT_MAX && p->sent != NULL) {
      sent_t *old = p->sent;
      p->sent = old->next;
      if (p->sent == NULL)
        p->sent_tail = NULL;
      p->sent_bytes -= old->len;
      free(old);
    }
  }
  int n = p->n_out_events;
  p->unacked_bytes += p->out.len;
  int rc = io_send(p, p->out.data, p->out.len);
  p->out.len = 0;
  p->n_out_events = 0;
  if (rc == 0) {
    pthread_mutex_lock(&p->mu);
    p->st.sent += n;
    pthread_mutex_unlock(&p->mu);
  }
  return rc;
}

/* The daemon holds the trainer's events up to seq: their lines go. */
static void acked(tb_publisher_t *p, int64_t seq) {
  if (seq > p->held)
    p->held = seq;
  while (p->sent != NULL && p->sent->last_seq <= p->held) {
    sent_t *s = p->sent;
    p->sent = s->next;
    if (p->sent == NULL)
      p->sent_tail = NULL;
    p->sent_bytes -= s->len;
    free(s);
  }
}

static void tail_of(const rec_t *rec, const double **values, const char **names,
                    const char **texts) {
  const char *t = (const char *)rec + sizeof(*rec);
  *values = (const double *)t;
  t += (size_t)rec->n_logs * sizeof(double);
  for (int i = 0; i < rec->n_logs; i++) {
    names[i] = t;
    t += strlen(t) + 1;
  }
  for (int i = 0; i < 3 && texts != NULL; i++) {
    texts[i] = t;
    t += strlen(t) + 1;
  }
}

static int send_event(tb_publisher_t *p, const rec_t *rec) {
  if (rec->seq <= p->skip_upto) {
    /* The run holds it (a loop resumed from an older checkpoint): not sent,
     * and a lockstep wait at it is over at once (it was answered then). */
    if (rec->lockstep) {
      pthread_mutex_lock(&p->mu);
      if (rec->seq > p->released)
        p->released = rec->seq;
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
    }
    return 0;
  }
  tb_pub_event_t *e = p->ev;
  const double *values;
  const char *names[TB_LOGS_MAX];
  tail_of(rec, &values, names, NULL);
  e->seq = rec->seq;
  e->kind = (tb_event_kind_t)rec->kind;
  e->epoch = rec->epoch;
  e->batch = rec->batch;
  e->has_time = true;
  e->time_us = rec->time_us;
  e->has_lr = rec->has_lr && isfinite(rec->lr) && rec->lr > 0;
  e->lr = rec->lr;
  e->lockstep = rec->lockstep;
  e->dropped = rec->dropped;
  e->n_logs = rec->n_logs;
  for (int i = 0; i < rec->n_logs; i++) {
    snprintf(e->log_names[i], sizeof(e->log_names[i]), "%s", names[i]);
    e->log_values[i] = values[i];
  }
  e->n_classes = rec->classes != NULL ? rec->classes->n : 0;
  e->classes = NULL;
  if (p->n_out_events == 0) {
    /* A line asks for an acknowledgement now and then (a request: its
     * answer says how far the daemon got). */
    uint64_t now = now_ms();
    p->out_ack = p->ack_id == 0 && (now - p->ack_ms >= ACK_MS || p->unacked_bytes >= ACK_BYTES);
    tb_id_t id = {0};
    if (p->out_ack) {
      id.kind = TB_ID_INT;
      id.num = p->ack_id = tb__client_new_id(p->c);
      p->ack_ms = now;
      p->unacked_bytes = 0;
    }
    if (tb_msg_publish_begin(&p->out, &id, p->run) != 0)
      return TB_CLIENT_ENOMEM;
  }
  if (tb_pub_event_append(&p->out, e,
                          rec->classes != NULL ? (const char *const *)rec->classes->names : NULL,
                          p->n_out_events == 0) != 0)
    return TB_CLIENT_ENOMEM;
  p->n_out_events++;
  p->out_last = rec->seq;
  if (p->out.len >= MSG_BYTES || rec->lockstep)
    return flush_out(p);
  return 0;
}

/* An applied (or, with error, a refusal of) control id. */
static int send_applied(tb_publisher_t *p, int64_t id, const char *action, int epoch, int batch,
                        bool has_value, double value, bool has_old, double old, const char *by,
                        const char *path, const char *error) {
  int rc = flush_out(p);
  if (rc != 0)
    return rc;
  tb_req_t *r = p->req;
  memset(r, 0, sizeof(*r));
  r->method = TB_METHOD_APPLIED;
  snprintf(r->run, sizeof(r->run), "%s", p->run);
  r->applied.id = id;
  snprintf(r->applied.action, sizeof(r->applied.action), "%s", action);
  r->applied.epoch = epoch;
  r->applied.batch = batch;
  r->applied.has_value = has_value;
  r->applied.value = value;
  r->applied.has_old = has_old;
  r->applied.old = old;
  snprintf(r->applied.path, sizeof(r->applied.path), "%s", path);
  snprintf(r->applied.by, sizeof(r->applied.by), "%s", by);
  snprintf(r->applied.error, sizeof(r->applied.error), "%s", error);
  tb_buf_t b;
  tb_buf_init(&b);
  rc = tb_req_encode(&b, r) == 0 ? io_send(p, b.data, b.len) : TB_CLIENT_ENOMEM;
  tb_buf_free(&b);
  return rc;
}

/* Sends what the loop queued. */
static int send_queued(tb_publisher_t *p) {
  pthread_mutex_lock(&p->mu);
  char *q = p->q;
  size_t len = p->q_len, cap = p->q_cap;
  p->q = p->cur;
  p->q_cap = p->cur_cap;
  p->q_len = 0;
  pthread_mutex_unlock(&p->mu);
  p->cur = q;
  p->cur_len = len;
  p->cur_cap = cap;
  int rc = 0;
  size_t off = 0;
  for (; off < p->cur_len && rc == 0;) {
    rec_t *rec = (rec_t *)(p->cur + off);
    if (rec->type == REC_EVENT) {
      rc = send_event(p, rec);
    } else {
      const double *values;
      const char *names[TB_LOGS_MAX], *texts[3];
      tail_of(rec, &values, names, texts);
      rc = send_applied(p, rec->id, rec->action, rec->epoch, rec->batch, rec->has_value, rec->value,
                        rec->has_old, rec->old, texts[0], texts[1], texts[2]);
    }
    if (rc != 0)
      break;
    tb_classes_free(rec->classes);
    rec->classes = NULL;
    off += rec->size;
  }
  if (rc == 0)
    rc = flush_out(p);
  if (off < p->cur_len) {
    /* Not sent (the connection went): back to the front of the queue. The
     * lines already made are in the sent list and go again after the
     * reconnect. */
    pthread_mutex_lock(&p->mu);
    size_t rest = p->cur_len - off;
    if (q_reserve(p, rest)) {
      memmove(p->q + rest, p->q, p->q_len);
      memcpy(p->q, p->cur + off, rest);
      p->q_len += rest;
    }
    pthread_mutex_unlock(&p->mu);
  }
  p->cur_len = 0;
  if (p->cur_cap > 4 * p->queue_bytes) {
    free(p->cur);
    p->cur = NULL;
    p->cur_cap = 0;
  }
  return rc;
}

/* A control from the daemon into the loop's control block. */
static void on_control(tb_publisher_t *p, const tb_smsg_t *m) {
  const __typeof__(m->trainer) *t = &m->trainer;
  const char *why = NULL;
  tb_control_action_t a = strcmp(t->action, "set_lr") == 0       ? TB_CONTROL_SET_LR
                          : strcmp(t->action, "stop") == 0       ? TB_CONTROL_STOP
                          : strcmp(t->action, "pause") == 0      ? TB_CONTROL_PAUSE
                          : strcmp(t->action, "resume") == 0     ? TB_CONTROL_RESUME
                          : strcmp(t->action, "checkpoint") == 0 ? TB_CONTROL_CHECKPOINT
                                                                 : 0;
  pthread_mutex_lock(&p->mu);
  p->st.controls++;
  pthread_mutex_unlock(&p->mu);
  if (p->control == NULL)
    why = "this trainer takes no control";
  else if (a == 0)
    why = "an action this trainer does not know";
  else if (a == TB_CONTROL_SET_LR && !(t->has_value && isfinite((float)t->value) && t->value > 0))
    why = "the rate is not a positive number within float32's range";
  else if (a == TB_CONTROL_CHECKPOINT && !p->checkpoints)
    why = "this trainer has no checkpoint directory";
  if (why != NULL) {
    send_applied(p, t->id, t->action, -1, -1, false, 0, false, 0, t->by, "", why);
    return;
  }
  uint64_t ticket = 0;
  /* Mapped, with the ticket the block gives it, before its note can be
   * matched: the loop may apply the request at once, and its note (on_note,
   * on the loop's thread) waits for mu, which is held until the ticket is
   * in the map. A note matched in between would find no request and answer
   * id 0, leaving the daemon's request waiting for the run's end. The block
   * calls its notify with its own lock released, so taking the block's lock
   * under mu here cannot deadlock with on_note. */
  pthread_mutex_lock(&p->mu);
  if (p->n_map == (int)(sizeof(p->map) / sizeof(p->map[0])))
    p->map[0] = p->map[--p->n_map]; /* the oldest never came back */
  int slot = p->n_map++;
  p->map[slot].id = t->id;
  p->map[slot].action = a;
  switch (a) {
  case TB_CONTROL_SET_LR:
    tb_control_set_lr_ticket(p->control, t->value, t->by, &ticket);
    break;
  case TB_CONTROL_STOP:
    tb_control_stop(p->control, t->by);
    break;
  case TB_CONTROL_PAUSE:
    tb_control_pause(p->control, t->by);
    break;
  case TB_CONTROL_RESUME:
    tb_control_resume(p->control, t->by);
    break;
  default:
    tb_control_checkpoint_ticket(p->control, t->by, &ticket);
    break;
  }
  p->map[slot].ticket = ticket;
  pthread_mutex_unlock(&p->mu);
}

/* Reads what has arrived (waiting up to timeout_ms for the first). */
static int io_read(tb_publisher_t *p, int timeout_ms) {
  for (;;) {
    tb_smsg_t *m = calloc(1, sizeof(*m));
    tb_client_err_t e;
    if (m == NULL)
      return TB_CLIENT_ENOMEM;
    int rc = tb__client_read(p->c, timeout_ms, m, &e);
    timeout_ms = 0;
    if (rc == TB_CLIENT_ETIMEOUT) {
      free(m);
      return 0;
    }
    if (rc != 0) {
      free(m);
      io_lost(p, e.msg);
      return rc;
    }
    switch (m->kind) {
    case TB_SMSG_CONTROL:
      on_control(p, m);
      break;
    case TB_SMSG_CONTINUE:
      pthread_mutex_lock(&p->mu);
      if (m->trainer.seq > p->released)
        p->released = m->trainer.seq;
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
      break;
    case TB_SMSG_LOCKSTEP:
      atomic_store(&p->ls_timeout_ms, (int)m->trainer.timeout_ms);
      atomic_store(&p->ls_hooks, m->trainer.hooks);
      break;
    case TB_SMSG_REJECTED:
      pthread_mutex_lock(&p->mu);
      p->st.rejected++;
      pthread_mutex_unlock(&p->mu);
      say(p, "run %s: the daemon refused a %s: %s", p->run, m->trainer.method, m->trainer.message);
      break;
    case TB_SMSG_RESULT: {
      const cJSON *ls = cJSON_GetObjectItemCaseSensitive(m->result, "last_seq");
      if (cJSON_IsNumber(ls))
        acked(p, (int64_t)ls->valuedouble);
      if (m->id.kind == TB_ID_INT && m->id.num == p->ack_id)
        p->ack_id = 0;
      break;
    }
    case TB_SMSG_ERROR:
      if (m->id.kind == TB_ID_INT && m->id.num == p->ack_id)
        p->ack_id = 0;
      pthread_mutex_lock(&p->mu);
      p->st.rejected++;
      pthread_mutex_unlock(&p->mu);
      say(p, "run %s: the daemon answered an error: %s", p->run, m->error.message);
      break;
    case TB_SMSG_BYE:
      say(p, "run %s: the daemon said bye (%s)", p->run, m->bye.reason);
      break;
    default:
      break;
    }
    tb_smsg_free(m);
    free(m);
  }
}

/* Attaches (a new run, or p->run again). 0, or the daemon's refusal. */
static int io_attach(tb_publisher_t *p, tb_client_err_t *err) {
  tb_req_t *r = p->req;
  memset(r, 0, sizeof(*r));
  r->method = TB_METHOD_ATTACH;
  snprintf(r->run, sizeof(r->run), "%s", p->run);
  snprintf(r->attach.name, sizeof(r->attach.name), "%s", p->name);
  r->attach.epochs = p->epochs;
  r->attach.steps = p->steps;
  r->attach.model = p->model;
  r->attach.checkpoints = p->checkpoints;
  if (p->lr0 > 0) {
    r->attach.has_lr = true;
    r->attach.lr = p->lr0;
  }
  if (p->run[0]) {
    pthread_mutex_lock(&p->mu);
    r->attach.has_last_seq = true;
    r->attach.last_seq = p->seq;
    pthread_mutex_unlock(&p->mu);
  }
  cJSON *res = NULL;
  int rc = tb_client_call(p->c, r, &res, err);
  r->attach.model = NULL; /* p's */
  if (rc != 0)
    return rc;
  const cJSON *run = cJSON_GetObjectItemCaseSensitive(res, "run");
  const cJSON *held = cJSON_GetObjectItemCaseSensitive(res, "last_seq");
  if (!cJSON_IsString(run) || strlen(run->valuestring) >= sizeof(p->run)) {
    cJSON_Delete(res);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "attach: the answer names no run");
  }
  snprintf(p->run, sizeof(p->run), "%s", run->valuestring);
  int64_t k = cJSON_IsNumber(held) ? (int64_t)held->valuedouble : 0;
  cJSON_Delete(res);
  p->held = 0;
  acked(p, k);
  p->skip_upto = k;
  return 0;
}

/* Connects again and attaches again; the lines the daemon did not take go
 * again. 0, or a code (then try later). */
static int io_reconnect(tb_publisher_t *p) {
  tb_client_err_t e;
  int rc = tb_client_reconnect(p->c, &e);
  if (rc == 0)
    rc = io_attach(p, &e);
  if (rc != 0) {
    if (tb_client_err_is_remote(rc) && rc != TB_PROTO_EOVERLOADED) {
      /* The daemon forgot the run (restarted without --resume) or it
       * ended: nothing more can be published to it. */
      say(p, "run %s: cannot attach again: %s; publishing stops (the loop goes on)", p->run, e.msg);
      pthread_mutex_lock(&p->mu);
      p->stop = true;
      p->finished = true;
      p->finish_rc = rc;
      p->finish_err = e;
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
    }
    return rc;
  }
  for (sent_t *s = p->sent; s != NULL && rc == 0; s = s->next)
    rc = io_send(p, s->text, s->len);
  if (rc != 0)
    return rc;
  pthread_mutex_lock(&p->mu);
  p->connected = true;
  p->gen++;
  p->st.reconnects++;
  pthread_mutex_unlock(&p->mu);
  say(p, "run %s: attached again (the run holds seq %lld)", p->run, (long long)p->held);
  p->ack_ms = 0;
  return 0;
}

static int io_finish(tb_publisher_t *p) {
  tb_req_t *r = p->req;
  memset(r, 0, sizeof(*r));
  r->method = TB_METHOD_FINISH;
  snprintf(r->run, sizeof(r->run), "%s", p->run);
  pthread_mutex_lock(&p->mu);
  r->finish.state = p->finish_state;
  snprintf(r->finish.reason, sizeof(r->finish.reason), "%s", p->finish_reason);
  pthread_mutex_unlock(&p->mu);
  tb_client_err_t e;
  int rc = tb_client_call(p->c, r, NULL, &e);
  if (rc != 0 && !tb_client_err_is_remote(rc)) {
    io_lost(p, e.msg);
    return rc; /* try again once connected */
  }
  /* Controls, continues and refusals read during the call. */
  io_read(p, 0);
  pthread_mutex_lock(&p->mu);
  p->finished = true;
  p->finish_rc = rc;
  p->finish_err = e;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

static void *io_main(void *arg) {
  tb_publisher_t *p = arg;
  int backoff = 100;
  uint64_t lost_at = 0, next_try = 0;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    bool stop = p->stop, finish = p->finish_asked && !p->finished, connected = p->connected;
    bool more = p->q_len > 0;
    pthread_mutex_unlock(&p->mu);
    if (stop)
      break;
    if (!connected) {
      uint64_t now = now_ms();
      if (lost_at == 0)
        lost_at = now;
      if (p->reconnect_ms >= 0 && now - lost_at > (uint64_t)p->reconnect_ms) {
        say(p, "run %s: the daemon could not be reached for %d ms; publishing stops", p->run,
            p->reconnect_ms);
        pthread_mutex_lock(&p->mu);
        p->stop = p->finished = true;
        p->finish_rc = TB_CLIENT_ECLOSED;
        tb__cerr(&p->finish_err, TB_CLIENT_ECLOSED, "the daemon could not be reached");
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        break;
      }
      if (now >= next_try) {
        if (io_reconnect(p) == 0) {
          lost_at = 0;
          backoff = 100;
          continue;
        }
        next_try = now + (uint64_t)backoff;
        backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
      }
      /* Wait for the next try (woken by a finish or free). */
      atomic_store(&p->sleeping, true);
      struct pollfd pf = {.fd = p->wake_fd, .events = POLLIN};
      int left = next_try > now_ms() ? (int)(next_try - now_ms()) : 0;
      if (poll(&pf, 1, left) > 0) {
        uint64_t v;
        ssize_t n = read(p->wake_fd, &v, sizeof(v));
        (void)n;
      }
      atomic_store(&p->sleeping, false);
      continue;
    }
    if (more && send_queued(p) != 0)
      continue;
    if (io_read(p, 0) != 0)
      continue;
    if (finish) {
      pthread_mutex_lock(&p->mu);
      bool empty = p->q_len == 0;
      pthread_mutex_unlock(&p->mu);
      if (empty) {
        io_finish(p);
        continue;
      }
    }
    /* Sleep until the loop queues something or the daemon sends. */
    atomic_store(&p->sleeping, true);
    pthread_mutex_lock(&p->mu);
    more = p->q_len > 0 || (p->finish_asked && !p->finished) || p->stop;
    pthread_mutex_unlock(&p->mu);
    if (!more) {
      struct pollfd pf[2] = {{.fd = p->wake_fd, .events = POLLIN},
                             {.fd = tb_client_fd(p->c), .events = POLLIN}};
      if (poll(pf, 2, -1) > 0 && (pf[0].revents & POLLIN)) {
        uint64_t v;
        ssize_t n = read(p->wake_fd, &v, sizeof(v));
        (void)n;
      }
    }
    atomic_store(&p->sleeping, false);
  }
  return NULL;
}

/* ---- life ------------------------------------------------------------------------- */

int tb_publisher_new(const tb_publisher_opts_t *o, tb_publisher_t **out, tb_client_err_t *err) {
  *out = NULL;
  if (o == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_publisher_new: no options");
  if (o->model != NULL && strlen(o->model) >= TB_PROTO_MODEL_MAX)
    return tb__cerr(err, TB_CLIENT_EINVALID, "the model summary is longer than %d bytes",
                    TB_PROTO_MODEL_MAX - 1);
  if (o->run != NULL && strlen(o->run) >= TB_PROTO_RUN_MAX)
    return tb__cerr(err, TB_CLIENT_EINVALID, "run id longer than %d bytes", TB_PROTO_RUN_MAX - 1);
  tb_publisher_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  p->wake_fd = -1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  snprintf(p->addr, sizeof(p->addr), "%s", o->addr ? o->addr : "");
  snprintf(p->token, sizeof(p->token), "%s", o->token ? o->token : "");
  snprintf(p->state_dir, sizeof(p->state_dir), "%s", o->state_dir ? o->state_dir : "");
  snprintf(p->client_name, sizeof(p->client_name), "%s",
           o->client_name ? o->client_name : "trainbus-publisher");
  snprintf(p->name, sizeof(p->name), "%s", o->name ? o->name : "");
  snprintf(p->run, sizeof(p->run), "%s", o->run ? o->run : "");
  p->model = o->model != NULL ? strdup(o->model) : NULL;
  p->epochs = o->epochs;
  p->steps = o->steps;
  p->lr0 = o->lr;
  p->control = o->control;
  p->checkpoints = o->checkpoints;
  p->queue_bytes = o->queue_bytes > 0 ? o->queue_bytes : 8 * 1024 * 1024;
  p->reconnect_ms = o->reconnect_ms == 0 ? 60000 : o->reconnect_ms;
  p->continuing = p->run[0] != '\0';
  p->skip_begin = p->continuing && o->resuming;
  p->copts.addr = p->addr[0] ? p->addr : NULL;
  p->copts.token = p->token[0] ? p->token : NULL;
  p->copts.state_dir = p->state_dir[0] ? p->state_dir : NULL;
  p->copts.role = TB_ROLE_TRAINER;
  p->copts.name = p->client_name;
  p->copts.connect_timeout_ms = o->connect_timeout_ms;
  p->copts.call_timeout_ms = 30000;
  snprintf(p->ca_file, sizeof(p->ca_file), "%s", o->ca_file ? o->ca_file : "");
  snprintf(p->server_name, sizeof(p->server_name), "%s", o->server_name ? o->server_name : "");
  snprintf(p->cert_file, sizeof(p->cert_file), "%s", o->cert_file ? o->cert_file : "");
  snprintf(p->key_file, sizeof(p->key_file), "%s", o->key_file ? o->key_file : "");
  p->copts.tls = o->tls;
  p->copts.insecure = o->insecure;
  p->copts.ca_file = p->ca_file[0] ? p->ca_file : NULL;
  p->copts.server_name = p->server_name[0] ? p->server_name : NULL;
  p->copts.cert_file = p->cert_file[0] ? p->cert_file : NULL;
  p->copts.key_file = p->key_file[0] ? p->key_file : NULL;
  atomic_store(&p->ls_timeout_ms, TB_PROTO_LOCKSTEP_DEFAULT_MS);
  tb_buf_init(&p->out);
  int rc;
  p->req = calloc(1, sizeof(*p->req));
  p->ev = calloc(1, sizeof(*p->ev));
  if ((o->model != NULL && p->model == NULL) || p->req == NULL || p->ev == NULL) {
    rc = tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
    goto fail;
  }
  if ((p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
    rc = tb__cerr(err, -errno, "eventfd: %s", strerror(errno));
    goto fail;
  }
  if ((rc = tb_client_connect(&p->copts, &p->c, err)) != 0)
    goto fail;
  if ((rc = io_attach(p, err)) != 0)
    goto fail;
  /* Lockstep hooks the daemon announced right after the answer. */
  io_read(p, 0);
  p->connected = true;
  p->gen = 1;
  p->cb.name = "trainbus-publisher";
  for (int i = 0; i < TB_HOOK_COUNT; i++)
    p->cb.hooks[i] = on_hook;
  p->cb.save_state = save_state;
  p->cb.load_state = load_state;
  p->cb.user = p;
  if (p->control != NULL) {
    p->old_notify = p->control->notify;
    p->old_user = p->control->notify_user;
    tb_control_set_notify(p->control, on_note, p);
  }
  if ((rc = pthread_create(&p->thread, NULL, io_main, p)) != 0) {
    rc = tb__cerr(err, -rc, "cannot start the publisher's thread: %s", strerror(rc));
    goto fail;
  }
  p->thread_started = true;
  *out = p;
  return 0;
fail:
  tb_publisher_free(p);
  return rc;
}

tb_callback_t *tb_publisher_callback(tb_publisher_t *p) {
  return &p->cb;
}

const char *tb_publisher_run(const tb_publisher_t *p) {
  return p->run;
}

int tb_publisher_finish(tb_publisher_t *p, tb_run_state_t state, const char *reason, int timeout_ms,
                        tb_client_err_t *err) {
  if (p == NULL || !p->thread_started)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_publisher_finish: no publisher");
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  if (timeout_ms >= 0) {
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000L;
    }
  }
  pthread_mutex_lock(&p->mu);
  p->finish_asked = true;
  p->finish_state = state == TB_RUN_INVALID ? TB_RUN_FINISHED : state;
  snprintf(p->finish_reason, sizeof(p->finish_reason), "%s", reason ? reason : "");
  pthread_mutex_unlock(&p->mu);
  atomic_store(&p->sleeping, true);
  wake(p);
  pthread_mutex_lock(&p->mu);
  int rc = 0;
  while (!p->finished && rc == 0)
    rc = timeout_ms < 0 ? pthread_cond_wait(&p->cv, &p->mu)
                        : pthread_cond_timedwait(&p->cv, &p->mu, &deadline);
  bool done = p->finished;
  int frc = p->finish_rc;
  tb_client_err_t fe = p->finish_err;
  p->stop = true;
  pthread_mutex_unlock(&p->mu);
  atomic_store(&p->sleeping, true);
  wake(p);
  pthread_join(p->thread, NULL);
  p->thread_started = false;
  if (!done)
    return tb__cerr(err, TB_CLIENT_ETIMEOUT, "run %s: the daemon did not answer finish in time",
                    p->run);
  if (frc != 0 && err != NULL)
    *err = fe;
  return frc;
}

void tb_publisher_free(tb_publisher_t *p) {
  if (p == NULL)
    return;
  if (p->thread_started) {
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    atomic_store(&p->sleeping, true);
    wake(p);
    pthread_join(p->thread, NULL);
  }
  if (p->control != NULL && p->control->notify == on_note)
    tb_control_set_notify(p->control, p->old_notify, p->old_user);
  tb_client_free(p->c);
  for (size_t off = 0; off < p->q_len;) {
    rec_t *rec = (rec_t *)(p->q + off);
    tb_classes_free(rec->classes);
    off += rec->size;
  }
  while (p->sent != NULL) {
    sent_t *s = p->sent;
    p->sent = s->next;
    free(s);
  }
  if (p->wake_fd >= 0)
    close(p->wake_fd);
  free(p->q);
  free(p->cur);
  tb_buf_free(&p->out);
  free(p->req);
  free(p->ev);
  free(p->model);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free(p);
}

void tb_publisher_stats(const tb_publisher_t *p, tb_publisher_stats_t *out) {
  pthread_mutex_lock((pthread_mutex_t *)&p->mu);
  *out = p->st;
  pthread_mutex_unlock((pthread_mutex_t *)&p->mu);
}
