/* Runs that trainers publish: a training loop in another process (trainbus
 * train --connect, a Python or PyTorch loop, rank 0 of an MPI run) is a run
 * on the bus like one the daemon trains (docs/PROTOCOL.md section 13).
 *
 * A connection with the trainer role attaches a run (a new one, or its own
 * again after a reconnect) and publishes its hook events, many per message.
 * Each event the daemon takes becomes a record in the same queue as a
 * daemon-trained run's (tb__push, from the loop thread): the drain numbers
 * nothing new, it encodes, logs, retains, answers and fans out exactly as for
 * its own runs, so replay, history, output limits and dropped notices are the
 * same code. The trainer numbers its events itself (its seq, 1, 2, ... over
 * the life of the run, never reset): the run holds them in that order and no
 * other, skips those it has already (a trainer redoing work after a restart)
 * and refuses one that would leave a gap. The run's own seq goes on across
 * the daemon's state and control events in between.
 *
 * Control is forwarded: set_lr, stop, pause, resume and checkpoint requests
 * for the run go to its trainer as "control" notifications with an id; the
 * trainer applies them at its next batch boundary and says so with
 * "applied", which becomes the run's control event (and state event) and
 * answers the waiting request, as the trainer thread's control note does for
 * a daemon-trained run. A lockstep event the trainer marks as waited on is
 * delivered to lockstep subscribers by the same code as a daemon run's; when
 * every answer is in (their actions forwarded as controls first) or the
 * timeout has passed, the trainer is sent "continue".
 *
 * A trainer whose connection goes leaves its run `detached` (a state event
 * tells the observers); the same run attached again continues where its
 * trainer's seq says, and after trainer_timeout_ms the run is `lost`. A
 * daemon restart is not a detach: runs come back from their logs and wait,
 * silently, for their trainers to attach again. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What one connection, and all trainers together, may hold open: a trainer
 * that attaches in a loop gets `overloaded`, not the daemon's memory. */
enum { TB_TRAINER_RUNS_PER_CONN = 16, TB_TRAINER_RUNS_MAX = 256 };

typedef struct tb_trun_s {
  uint64_t conn_id;      /* the connection that publishes it; 0 while none does */
  int64_t tseq;          /* the trainer's seq of the last event the run holds */
  tb_run_state_t state;  /* the state last put in its stream */
  tb_run_state_t before; /* detached: the state to go back to */
  int64_t steps;
  char *model;
  bool checkpoints;
  bool paused;     /* a pause forwarded and not resumed since */
  int64_t next_id; /* ids of the controls forwarded to it */
  /* A lockstep wait: the trainer's seq of the event and where it was. */
  int64_t ls_tseq;
  int ls_epoch, ls_batch;
  uint64_t ls_deadline_ms; /* 0: no wait */
  uint64_t lost_at_ms;     /* 0: not waiting to be attached again */
  /* The lockstep hooks it was told of last. */
  bool told;
  uint32_t told_hooks;
  int told_timeout;
} trun_t;

const char *tb__source_name(tb_source_t s) {
  return s == TB_SOURCE_TRAINER ? "trainer" : s == TB_SOURCE_EMBEDDED ? "embedded" : "daemon";
}

static conn_t *trainer_conn(const tb_run_t *r) {
  return r->tr != NULL && r->tr->conn_id != 0 ? tb__conn_find(r->srv, r->tr->conn_id) : NULL;
}

/* Queues a line for c, written at once unless a drain writes it at its end. */
static void send_buf(conn_t *c, tb_buf_t *b) {
  if (c != NULL && b->len > 0) {
    tb__conn_send(c, b->data, b->len);
    if (!c->srv->draining)
      tb__conn_flush(c);
  }
  b->len = 0;
}

static void push_state(tb_run_t *r, tb_run_state_t st, const char *reason) {
  tb__push_state(r, st, r->tr->state, reason, -1, -1);
  r->tr->state = st;
}

/* ---- deadlines ----------------------------------------------------------- */

static void on_trainer_timer(uv_timer_t *h);

/* (Re)starts the server's trainer timer for the earliest deadline. */
static void arm(tb_server_t *s) {
  uint64_t first = 0;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (r->tr == NULL)
      continue;
    uint64_t d[2] = {r->tr->ls_deadline_ms, r->tr->lost_at_ms};
    for (int i = 0; i < 2; i++)
      if (d[i] != 0 && (first == 0 || d[i] < first))
        first = d[i];
  }
  if (s->stopped || uv_is_closing((uv_handle_t *)&s->trainer_timer))
    return;
  if (first == 0) {
    uv_timer_stop(&s->trainer_timer);
    return;
  }
  uint64_t now = tb__srv_now_ms();
  uv_timer_start(&s->trainer_timer, on_trainer_timer, first > now ? first - now : 0, 0);
}

/* ---- lockstep ------------------------------------------------------------- */

/* Forgets the wait in progress (the trainer went on, or went away): late
 * answers to it get invalid_state, as after a timeout. */
static void ls_clear(tb_run_t *r) {
  pthread_mutex_lock(&r->ls_mu);
  int64_t seq = r->ls_seq;
  r->ls_seq = 0;
  pthread_mutex_unlock(&r->ls_mu);
  r->tr->ls_deadline_ms = 0;
  if (seq == 0)
    return;
  for (conn_t *c = r->srv->conns; c != NULL; c = c->next)
    for (int i = 0; i < c->n_owed; i++)
      if (c->owed[i].run == r && c->owed[i].seq == seq)
        c->owed[i--] = c->owed[--c->n_owed];
}

/* The wait is over: the trainer goes on. */
static void ls_release(tb_run_t *r, bool timed_out) {
  trun_t *t = r->tr;
  pthread_mutex_lock(&r->ls_mu);
  r->ls_seq = 0;
  pthread_mutex_unlock(&r->ls_mu);
  t->ls_deadline_ms = 0;
  tb_buf_t b;
  tb_buf_init(&b);
  if (tb_msg_continue(&b, r->id, t->ls_tseq, timed_out) == 0)
    send_buf(trainer_conn(r), &b);
  tb_buf_free(&b);
}

void tb__trainer_ls_check(tb_run_t *r) {
  if (r->tr == NULL || r->tr->ls_deadline_ms == 0)
    return;
  pthread_mutex_lock(&r->ls_mu);
  bool over = r->ls_seq != 0 && r->ls_armed && r->ls_waiting == 0;
  pthread_mutex_unlock(&r->ls_mu);
  if (over) {
    ls_release(r, false);
    arm(r->srv);
  }
}

void tb__trainer_lockstep_changed(tb_run_t *r) {
  trun_t *t = r->tr;
  conn_t *c = trainer_conn(r);
  if (t == NULL || c == NULL)
    return;
  uint32_t hooks = atomic_load(&r->lockstep_mask);
  int timeout = atomic_load(&r->lockstep_timeout_ms);
  if ((!t->told && hooks == 0) ||
      (t->told && hooks == t->told_hooks && (hooks == 0 || timeout == t->told_timeout)))
    return;
  tb_buf_t b;
  tb_buf_init(&b);
  if (tb_msg_lockstep(&b, r->id, hooks, timeout > 0 ? timeout : TB_PROTO_LOCKSTEP_DEFAULT_MS) ==
      0) {
    send_buf(c, &b);
    t->told = true;
    t->told_hooks = hooks;
    t->told_timeout = timeout;
  }
  tb_buf_free(&b);
}

/* ---- timers ---------------------------------------------------------------- */

static void on_trainer_timer(uv_timer_t *h) {
  tb_server_t *s = h->data;
  uint64_t now = tb__srv_now_ms();
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    trun_t *t = r->tr;
    if (t == NULL)
      continue;
    if (t->ls_deadline_ms != 0 && now >= t->ls_deadline_ms) {
      /* As a daemon run's trainer does when its wait times out. */
      int64_t seq;
      pthread_mutex_lock(&r->ls_mu);
      seq = r->ls_seq;
      pthread_mutex_unlock(&r->ls_mu);
      tb_rec_t rec;
      memset(&rec, 0, sizeof(rec));
      rec.kind = TB_EVENT_CONTROL;
      rec.epoch = t->ls_epoch;
      rec.batch = t->ls_batch;
      rec.time_us = tb__srv_now_us();
      rec.lr = NAN;
      rec.epochs = r->epochs;
      rec.seq = ++r->seq;
      char why[160];
      snprintf(why, sizeof(why), "no continue for seq %lld within %d ms; training goes on",
               (long long)seq, atomic_load(&r->lockstep_timeout_ms));
      tb__push(r, &rec, NULL, "lockstep_timeout", NULL, why);
      ls_release(r, true);
    }
    if (t->lost_at_ms != 0 && now >= t->lost_at_ms) {
      t->lost_at_ms = 0;
      char why[160];
      snprintf(why, sizeof(why), "its trainer did not attach again within %d ms",
               s->o.trainer_timeout_ms);
      tb__log(s, 1, "run %s: lost (%s)", r->id, why);
      push_state(r, TB_RUN_LOST, why);
      tb__pending_fail(r, "was lost before the change could be applied");
    }
  }
  arm(s);
}

/* ---- checks shared by the trainer's methods -------------------------------- */

/* The run named by q, published by this connection and not over; else q is
 * answered with why and NULL returned. */
static tb_run_t *own_run(conn_t *c, const tb_req_t *q) {
  const char *m = tb_method_name(q->method);
  tb_run_t *r = tb__run_find(c->srv, q->run);
  if (r == NULL) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_ENO_SUCH_RUN, "%s: no run \"%s\"", m, q->run);
    return NULL;
  }
  if (r->tr == NULL || r->tr->conn_id != c->id) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EFORBIDDEN,
                    "%s: run %s is not attached on this connection (a trainer publishes only to "
                    "the runs it attached)",
                    m, r->id);
    return NULL;
  }
  if (tb_run_state_is_final(r->tr->state)) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_STATE, "%s: run %s is %s", m, r->id,
                    tb_run_state_name(r->tr->state));
    return NULL;
  }
  return r;
}

/* ---- attach ------------------------------------------------------------------ */

static void save_description(tb_run_t *r) {
  if (r->dir[0] == '\0')
    return;
  cJSON *o = cJSON_CreateObject();
  if (o == NULL)
    return;
  cJSON_AddStringToObject(o, "name", r->name);
  cJSON_AddNumberToObject(o, "epochs", r->epochs);
  cJSON_AddNumberToObject(o, "steps", (double)r->tr->steps);
  cJSON_AddBoolToObject(o, "checkpoints", r->tr->checkpoints);
  if (r->tr->model != NULL)
    cJSON_AddStringToObject(o, "model", r->tr->model);
  char *text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (text == NULL)
    return;
  size_t n = strlen(text);
  char *line = malloc(n + 2);
  if (line != NULL) {
    memcpy(line, text, n);
    memcpy(line + n, "\n", 2);
    char path[1200];
    snprintf(path, sizeof(path), "%s/trainer.json", r->dir);
    tb__write_private(path, line);
    free(line);
  }
  cJSON_free(text);
}

/* What attach says about the run (a reattach may say it again, or more). */
static void describe(tb_run_t *r, const tb_req_t *q) {
  trun_t *t = r->tr;
  if (q->attach.name[0])
    snprintf(r->name, sizeof(r->name), "%s", q->attach.name);
  if (q->attach.epochs > 0)
    r->epochs = (int)q->attach.epochs;
  if (q->attach.steps > 0)
    t->steps = q->attach.steps;
  if (q->attach.model != NULL) {
    char *m = strdup(q->attach.model);
    if (m != NULL) {
      free(t->model);
      t->model = m;
    }
  }
  t->checkpoints = q->attach.checkpoints;
  if (q->attach.has_lr) {
    r->has_lr = true;
    r->lr = q->attach.lr;
  }
  save_description(r);
}

static void attach_reply(conn_t *c, const tb_req_t *q, tb_run_t *r) {
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_begin(&b, &q->id);
  TB_LIT(&b, "{\"run\":");
  tb_json_str(&b, r->id);
  TB_LIT(&b, ",\"last_seq\":");
  tb_json_int(&b, r->tr->tseq);
  TB_LIT(&b, ",\"state\":");
  tb_json_str(&b, tb_run_state_name(r->tr->state));
  TB_LIT(&b, "}");
  tb_msg_result_end(&b);
  tb__conn_send(c, b.data, b.len);
  tb_buf_free(&b);
}

static tb_run_t *attach_new(conn_t *c, const tb_req_t *q) {
  tb_server_t *s = c->srv;
  int mine = 0, live = 0;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (r->tr == NULL || tb_run_state_is_final(r->tr->state))
      continue;
    live++;
    mine += r->tr->conn_id == c->id;
  }
  if (mine >= TB_TRAINER_RUNS_PER_CONN || live >= TB_TRAINER_RUNS_MAX) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EOVERLOADED,
                    "attach: %s (at most %d runs per trainer connection and %d trainers' runs "
                    "that have not ended); finish a run first",
                    mine >= TB_TRAINER_RUNS_PER_CONN ? "this connection has as many runs open as "
                                                       "it may"
                                                     : "too many trainers' runs are open",
                    TB_TRAINER_RUNS_PER_CONN, TB_TRAINER_RUNS_MAX);
    return NULL;
  }
  trun_t *t = calloc(1, sizeof(*t));
  char id[64];
  pthread_mutex_lock(&s->runs_mu);
  snprintf(id, sizeof(id), "r%d", ++s->next_run);
  pthread_mutex_unlock(&s->runs_mu);
  tb_run_t *r = t != NULL ? tb__run_new(s, id, false) : NULL;
  if (r == NULL) {
    free(t);
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINTERNAL, "attach: out of memory");
    return NULL;
  }
  r->source = TB_SOURCE_TRAINER;
  r->tr = t;
  t->state = TB_RUN_QUEUED;
  t->conn_id = c->id;
  describe(r, q);
  char why[300];
  snprintf(why, sizeof(why), "attached by %s", c->label);
  push_state(r, TB_RUN_RUNNING, why);
  tb__log(s, 1, "run %s attached by %s (%s)", r->id, c->label, r->name[0] ? r->name : "unnamed");
  return r;
}

static tb_run_t *attach_again(conn_t *c, const tb_req_t *q) {
  tb_server_t *s = c->srv;
  tb_run_t *r = tb__run_find(s, q->run);
  if (r == NULL) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_ENO_SUCH_RUN,
                    "attach: no run \"%s\" (a daemon restarted without --resume forgets its runs; "
                    "attach without params.run for a new one)",
                    q->run);
    return NULL;
  }
  trun_t *t = r->tr;
  if (t == NULL) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EFORBIDDEN,
                    "attach: run %s is trained by the %s, not published by a trainer; a trainer "
                    "may attach only its own runs",
                    r->id,
                    r->source == TB_SOURCE_EMBEDDED ? "program embedding the daemon" : "daemon");
    return NULL;
  }
  if (tb_run_state_is_final(t->state)) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_STATE, "attach: run %s is %s", r->id,
                    tb_run_state_name(t->state));
    return NULL;
  }
  conn_t *holder = trainer_conn(r);
  if (holder != NULL && holder != c) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_STATE,
                    "attach: run %s is attached by %s; it can be attached again once that "
                    "connection is gone",
                    r->id, holder->label);
    return NULL;
  }
  t->conn_id = c->id;
  t->lost_at_ms = 0;
  t->told = false;
  describe(r, q);
  if (t->state == TB_RUN_QUEUED) {
    /* The run the daemon launched mpirun for (launch.c): rank 0 is here. */
    char why[320];
    snprintf(why, sizeof(why), "started on %d ranks (mpirun pid %d); rank 0 attached as %s",
             tb__launch_ranks(r), tb__launch_pid(r), c->label);
    push_state(r, TB_RUN_RUNNING, why);
  } else if (t->state == TB_RUN_DETACHED) {
    char why[320];
    snprintf(why, sizeof(why), "attached again by %s (its seq %lld, the run holds %lld)", c->label,
             (long long)(q->attach.has_last_seq ? q->attach.last_seq : -1), (long long)t->tseq);
    push_state(r, t->before, why);
  }
  tb__log(s, 1, "run %s attached again by %s: the trainer says seq %lld, the run holds %lld", r->id,
          c->label, (long long)(q->attach.has_last_seq ? q->attach.last_seq : -1),
          (long long)t->tseq);
  return r;
}

void tb__trainer_attach(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = q->run[0] ? attach_again(c, q) : attach_new(c, q);
  if (r == NULL)
    return;
  attach_reply(c, q, r);
  /* What it is to do from now on: the lockstep hooks (subscriptions made
   * before it existed count too), and a pause or stop it has not applied. */
  tb__lockstep_recount(r);
  tb__trainer_lockstep_changed(r);
  if (r->tr->paused)
    tb__trainer_forward(r, "pause", false, 0, "the pause before the trainer attached again", NULL);
  if (r->stop_requested)
    tb__trainer_forward(r, "stop", false, 0, "the stop before the trainer attached again", NULL);
  arm(c->srv);
}

/* ---- publish ---------------------------------------------------------------- */

/* The class names of a train_begin, as core keeps them; NULL with *why set
 * when they cannot be (a name given twice). */
static tb_classes_t *classes_of(const tb_pub_event_t *e, const char **why) {
  const char **names = calloc((size_t)e->n_classes, sizeof(*names));
  tb_classes_t *out = NULL;
  *why = "out of memory";
  if (names == NULL)
    return NULL;
  int i = 0;
  for (const cJSON *it = e->classes->child; it != NULL && i < e->n_classes; it = it->next)
    names[i++] = it->valuestring;
  int rc = tb_classes_new(names, NULL, e->n_classes, &out);
  free(names);
  if (rc != 0) {
    *why = rc == TB_ENOMEM ? "out of memory" : "a class name is given twice";
    return NULL;
  }
  return out;
}

/* One event into the run: a record in the queue, as a daemon trainer's. */
static void take(tb_run_t *r, const tb_pub_event_t *e, tb_classes_t *classes) {
  tb_server_t *s = r->srv;
  trun_t *t = r->tr;
  if (e->dropped > 0) {
    /* Batch events the trainer could not send: seqs of the run no one gets,
     * told to its subscribers as "dropped" (the queue's gap record). */
    pthread_mutex_lock(&s->q_mu);
    if (r->qd_count == 0)
      r->qd_from = r->seq + 1;
    r->qd_to = r->seq + e->dropped;
    r->qd_count += e->dropped;
    s->n_qdropped += e->dropped;
    pthread_mutex_unlock(&s->q_mu);
    r->seq += e->dropped;
  }
  tb_rec_t rec;
  memset(&rec, 0, sizeof(rec));
  rec.kind = e->kind;
  rec.epoch = (int)e->epoch;
  rec.batch = (int)e->batch;
  rec.time_us = e->has_time ? e->time_us : tb__srv_now_us();
  rec.lr = e->has_lr ? e->lr : NAN;
  rec.epochs = r->epochs;
  rec.classes = classes;
  rec.seq = ++r->seq;
  if (e->lockstep) {
    /* Armed before the loop delivers it, as the trainer thread does. A wait
     * still in progress is over: the trainer has gone on. */
    if (t->ls_deadline_ms != 0)
      ls_clear(r);
    pthread_mutex_lock(&r->ls_mu);
    r->ls_seq = rec.seq;
    r->ls_armed = false;
    r->ls_waiting = 0;
    pthread_mutex_unlock(&r->ls_mu);
    int timeout = atomic_load(&r->lockstep_timeout_ms);
    t->ls_tseq = e->seq;
    t->ls_epoch = rec.epoch;
    t->ls_batch = rec.batch;
    t->ls_deadline_ms = tb__srv_now_ms() + (uint64_t)(timeout > 0 ? timeout : 5000);
    rec.lockstep = true;
  }
  tb_logs_t logs;
  logs.n = e->n_logs;
  for (int i = 0; i < e->n_logs; i++) {
    memcpy(logs.names[i], e->log_names[i], sizeof(logs.names[i]));
    logs.values[i] = e->log_values[i];
  }
  tb__push(r, &rec, &logs, NULL, NULL, NULL);
  t->tseq = e->seq;
}

void tb__trainer_publish(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = own_run(c, q);
  if (r == NULL)
    return;
  trun_t *t = r->tr;
  tb_pub_event_t *e = malloc(sizeof(*e));
  if (e == NULL) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINTERNAL, "publish: out of memory");
    return;
  }
  int64_t skipped = 0, taken = 0;
  bool lockstep = false;
  int i = 0;
  for (const cJSON *it = q->publish.events->child; it != NULL; it = it->next, i++) {
    tb_proto_err_t perr;
    if (tb_pub_event_read(it, i, e, &perr) != 0) {
      tb__reply_error(c, q, e->seq, i, perr.code,
                      "%s; the run holds seq %lld of this trainer: this event and the %d after "
                      "it were not taken",
                      perr.msg, (long long)t->tseq, q->publish.n_events - i - 1);
      break;
    }
    if (e->seq <= t->tseq) {
      skipped++; /* held already: a trainer going over its work again */
      continue;
    }
    if (e->seq != t->tseq + 1) {
      tb__reply_error(c, q, e->seq, i, TB_PROTO_EINVALID_PARAMS,
                      "params.events[%d].seq: expected %lld (the run holds seq %lld of this "
                      "trainer; seqs go up by one), got %lld: this event and the %d after it "
                      "were not taken",
                      i, (long long)t->tseq + 1, (long long)t->tseq, (long long)e->seq,
                      q->publish.n_events - i - 1);
      break;
    }
    tb_classes_t *classes = NULL;
    if (e->n_classes > 0) {
      const char *why;
      if ((classes = classes_of(e, &why)) == NULL) {
        tb__reply_error(c, q, e->seq, i, TB_PROTO_EINVALID_PARAMS,
                        "params.events[%d].classes: %s: this event and the %d after it were not "
                        "taken",
                        i, why, q->publish.n_events - i - 1);
        break;
      }
    }
    take(r, e, classes);
    lockstep |= e->lockstep;
    taken++;
  }
  free(e);
  if (lockstep)
    arm(c->srv);
  if (q->id.kind != TB_ID_NONE && i == q->publish.n_events) {
    /* The answer lets the trainer forget what it says the run holds: those
     * events must be in the run's log first (written, so a SIGKILL of the
     * daemon cannot lose them), not just in the queue. Trainers ask a few
     * times a second, so draining here costs what the drain would anyway. */
    if (taken > 0)
      tb__drain_all(c->srv);
    tb_buf_t b;
    tb_buf_init(&b);
    tb_msg_result_begin(&b, &q->id);
    TB_LIT(&b, "{\"run\":");
    tb_json_str(&b, r->id);
    TB_LIT(&b, ",\"last_seq\":");
    tb_json_int(&b, t->tseq);
    TB_LIT(&b, ",\"taken\":");
    tb_json_int(&b, taken);
    TB_LIT(&b, ",\"skipped\":");
    tb_json_int(&b, skipped);
    TB_LIT(&b, "}");
    tb_msg_result_end(&b);
    tb__conn_send(c, b.data, b.len);
    tb_buf_free(&b);
  }
}

/* ---- control --------------------------------------------------------------- */

bool tb__trainer_ready(conn_t *c, const tb_req_t *q, tb_run_t *r) {
  if (trainer_conn(r) != NULL)
    return true;
  if (r->tr->state == TB_RUN_QUEUED && r->launch != NULL) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_STATE,
                    "%s: run %s is starting on %d ranks (mpirun pid %d); it takes control once "
                    "its rank 0 attaches (cancel ends it now)",
                    tb_method_name(q->method), r->id, tb__launch_ranks(r), tb__launch_pid(r));
    return false;
  }
  tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_STATE,
                  "%s: run %s has no trainer connected (%s); it takes control once its trainer "
                  "attaches again",
                  tb_method_name(q->method), r->id,
                  r->tr->state == TB_RUN_DETACHED ? "it is detached"
                                                  : "not since the daemon restarted");
  return false;
}

bool tb__trainer_paused(const tb_run_t *r) {
  return r->tr != NULL && r->tr->paused;
}

bool tb__trainer_checkpoints(const tb_run_t *r) {
  return r->tr != NULL && r->tr->checkpoints;
}

void tb__trainer_forward(tb_run_t *r, const char *action, bool has_value, double value,
                         const char *by, uint64_t *ticket) {
  trun_t *t = r->tr;
  int64_t id = ++t->next_id;
  if (ticket != NULL)
    *ticket = (uint64_t)id;
  if (strcmp(action, "pause") == 0)
    t->paused = true;
  else if (strcmp(action, "resume") == 0 || strcmp(action, "stop") == 0)
    t->paused = false;
  tb_buf_t b;
  tb_buf_init(&b);
  if (tb_msg_control(&b, r->id, id, action, has_value, value, by) == 0)
    send_buf(trainer_conn(r), &b);
  tb_buf_free(&b);
}

/* The requests waiting for control `id` get the trainer's refusal. */
static void refuse_pending(tb_run_t *r, int64_t id, const char *action, const char *why) {
  pending_t **pp = &r->pending;
  while (*pp != NULL) {
    pending_t *p = *pp;
    if (p->ticket != (uint64_t)id) {
      pp = &p->next;
      continue;
    }
    *pp = p->next;
    conn_t *c = tb__conn_find(r->srv, p->conn_id);
    if (c != NULL) {
      tb_buf_t b;
      tb_buf_init(&b);
      tb_msg_error(&b, &p->id, TB_PROTO_EINVALID_STATE, "%s: run %s's trainer did not apply it: %s",
                   action, r->id, why);
      send_buf(c, &b);
      tb_buf_free(&b);
    }
    free(p);
  }
}

void tb__trainer_applied(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = own_run(c, q);
  if (r == NULL)
    return;
  trun_t *t = r->tr;
  const __typeof__(q->applied) *a = &q->applied;
  if (a->id > t->next_id) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_PARAMS,
                    "params.id: no control %lld was sent for run %s (the last was %lld)",
                    (long long)a->id, r->id, (long long)t->next_id);
    return;
  }
  if (strcmp(a->action, "set_lr") == 0 && !a->has_value && !a->error[0]) {
    tb__reply_error(c, q, 0, -1, TB_PROTO_EINVALID_PARAMS,
                    "params.value: missing (the rate set_lr applied)");
    return;
  }
  if (a->error[0]) {
    refuse_pending(r, a->id, a->action, a->error);
  } else {
    tb_rec_t rec;
    memset(&rec, 0, sizeof(rec));
    rec.kind = TB_EVENT_CONTROL;
    rec.epoch = (int)a->epoch;
    rec.batch = (int)a->batch;
    rec.time_us = tb__srv_now_us();
    rec.lr = NAN;
    rec.epochs = r->epochs;
    rec.ticket = (uint64_t)a->id;
    if (strcmp(a->action, "set_lr") == 0) {
      rec.has_value = true;
      rec.value = a->value;
      rec.has_old = a->has_old;
      rec.old_value = a->old;
      rec.lr = a->value;
    }
    if (strcmp(a->action, "checkpoint") == 0 && a->path[0])
      rec.path = strdup(a->path); /* NULL on OOM: the event names no file */
    rec.seq = ++r->seq;
    tb__push(r, &rec, NULL, a->action, a->by[0] ? a->by : "callback", NULL);
    const char *by = a->by[0] ? a->by : "callback";
    if (strcmp(a->action, "stop") == 0 && !r->stop_requested) {
      r->stop_requested = true;
      push_state(r, TB_RUN_STOPPING, by);
    } else if (strcmp(a->action, "pause") == 0 && t->state == TB_RUN_RUNNING) {
      push_state(r, TB_RUN_PAUSED, by);
    } else if (strcmp(a->action, "resume") == 0 && t->state == TB_RUN_PAUSED &&
               !r->stop_requested) {
      push_state(r, TB_RUN_RUNNING, by);
    }
  }
  if (q->id.kind != TB_ID_NONE) {
    tb_buf_t b;
    tb_buf_init(&b);
    tb_msg_result_ok(&b, &q->id);
    tb__conn_send(c, b.data, b.len);
    tb_buf_free(&b);
  }
}

void tb__trainer_finish(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = own_run(c, q);
  if (r == NULL)
    return;
  trun_t *t = r->tr;
  tb_run_state_t final = q->finish.state == TB_RUN_FAILED                         ? TB_RUN_FAILED
                         : r->cancel_requested                                    ? TB_RUN_CANCELLED
                         : r->stop_requested || q->finish.state == TB_RUN_STOPPED ? TB_RUN_STOPPED
                                                                                  : TB_RUN_FINISHED;
  if (final == TB_RUN_FAILED)
    snprintf(r->fail_msg, sizeof(r->fail_msg), "%s", q->finish.reason);
  if (t->ls_deadline_ms != 0)
    ls_clear(r);
  push_state(r, final, q->finish.reason[0] ? q->finish.reason : NULL);
  t->conn_id = 0;
  t->lost_at_ms = 0;
  tb__pending_fail(r, "ended before the change could be applied");
  tb__log(c->srv, 1, "run %s %s (its trainer, %s)", r->id, tb_run_state_name(final), c->label);
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_ok(&b, &q->id);
  tb__conn_send(c, b.data, b.len);
  tb_buf_free(&b);
  arm(c->srv);
}

/* cancel of a trainer's run: a stop its trainer applies, then finish says
 * cancelled; a run without a trainer connected ends at once. */
void tb__trainer_cancel(tb_run_t *r, const char *by) {
  trun_t *t = r->tr;
  r->cancel_requested = true;
  if (trainer_conn(r) != NULL) {
    tb__trainer_forward(r, "stop", false, 0, by, NULL);
    return;
  }
  tb__launch_kill(r); /* ranks starting: they are not needed */
  if (t->ls_deadline_ms != 0)
    ls_clear(r);
  t->lost_at_ms = 0;
  push_state(r, TB_RUN_CANCELLED, by);
  arm(r->srv);
}

/* ---- connections going, restarts ------------------------------------------- */

void tb__trainer_conn_gone(conn_t *c) {
  tb_server_t *s = c->srv;
  bool any = false;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    trun_t *t = r->tr;
    if (t == NULL || t->conn_id != c->id)
      continue;
    t->conn_id = 0;
    any = true;
    if (tb_run_state_is_final(t->state))
      continue;
    if (t->ls_deadline_ms != 0)
      ls_clear(r);
    tb__pending_fail(r, "lost its trainer before the change could be applied");
    /* A daemon stopping is not an event of the run: after the restart it
     * waits for its trainer silently (tb__trainer_restore). */
    if (s->stopping)
      continue;
    t->before = t->state;
    char why[300];
    snprintf(why, sizeof(why), "its trainer (%s) disconnected", c->label);
    push_state(r, TB_RUN_DETACHED, why);
    t->lost_at_ms = tb__srv_now_ms() + (uint64_t)s->o.trainer_timeout_ms;
    tb__log(s, 1, "run %s: detached (%s)", r->id, why);
  }
  if (any)
    arm(s);
}

int tb__trainer_restore(tb_run_t *r, const char *path) {
  FILE *f = fopen(path, "r");
  char *text = NULL;
  size_t cap = 0;
  if (f == NULL)
    return -1;
  ssize_t n = getline(&text, &cap, f);
  fclose(f);
  cJSON *o = n > 0 ? cJSON_Parse(text) : NULL;
  free(text);
  trun_t *t = calloc(1, sizeof(*t));
  if (o == NULL || t == NULL) {
    cJSON_Delete(o);
    free(t);
    return -1;
  }
  const cJSON *v;
  if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "name")))
    snprintf(r->name, sizeof(r->name), "%s", v->valuestring);
  if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "epochs")))
    r->epochs = (int)v->valuedouble;
  if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "steps")))
    t->steps = (int64_t)v->valuedouble;
  if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "model")))
    t->model = strdup(v->valuestring);
  t->checkpoints = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "checkpoints"));
  cJSON_Delete(o);
  r->source = TB_SOURCE_TRAINER;
  r->tr = t;
  return 0;
}

/* After restore's log read: where the trainer's seq and the run's state are. */
void tb__trainer_restored(tb_run_t *r) {
  trun_t *t = r->tr;
  tb_server_t *s = r->srv;
  t->tseq = r->n_hooks;
  t->state = r->state;
  t->before = r->state == TB_RUN_DETACHED ? TB_RUN_RUNNING : r->state;
  t->paused = r->state == TB_RUN_PAUSED;
  r->stop_requested = r->state == TB_RUN_STOPPING;
  if (!tb_run_state_is_final(t->state)) {
    t->lost_at_ms = tb__srv_now_ms() + (uint64_t)s->o.trainer_timeout_ms;
    tb__log(s, 1, "restore: run %s (%s, published by a trainer) waits for its trainer (seq %lld)",
            r->id, tb_run_state_name(t->state), (long long)t->tseq);
  }
}

void tb__trainer_start(tb_server_t *s) {
  uv_timer_init(&s->loop, &s->trainer_timer);
  s->trainer_timer.data = s;
  arm(s);
}

void tb__trainer_free(tb_run_t *r) {
  if (r->tr != NULL)
    free(r->tr->model);
  free(r->tr);
  r->tr = NULL;
}

int tb__trainer_adopt(tb_run_t *r, int ranks) {
  trun_t *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return -1;
  t->state = TB_RUN_QUEUED;
  t->checkpoints = r->dir[0] != '\0'; /* launch.c gives the ranks the run's folder */
  r->source = TB_SOURCE_TRAINER;
  r->tr = t;
  tb__log(r->srv, 1, "run %s: to be trained on %d ranks by mpirun", r->id, ranks);
  return 0;
}

void tb__trainer_launch_ended(tb_run_t *r, const char *reason) {
  trun_t *t = r->tr;
  if (t == NULL || tb_run_state_is_final(t->state))
    return;
  if (t->ls_deadline_ms != 0)
    ls_clear(r);
  t->lost_at_ms = 0;
  t->conn_id = 0;
  tb_run_state_t final = r->cancel_requested ? TB_RUN_CANCELLED : TB_RUN_FAILED;
  if (final == TB_RUN_FAILED)
    snprintf(r->fail_msg, sizeof(r->fail_msg), "%s", reason);
  tb__pending_fail(r, "ended before the change could be applied");
  push_state(r, final, final == TB_RUN_FAILED ? reason : NULL);
  tb__log(r->srv, final == TB_RUN_FAILED ? 0 : 1, "run %s %s: %s", r->id, tb_run_state_name(final),
          reason);
  arm(r->srv);
}

/* For status: what attach said beyond the run object. */
void tb__trainer_status(const tb_run_t *r, tb_buf_t *b) {
  if (r->tr == NULL)
    return;
  if (tb__launch_ranks(r) > 0) {
    TB_LIT(b, ",\"ranks\":");
    tb_json_int(b, tb__launch_ranks(r));
  }
  if (r->tr->steps > 0) {
    TB_LIT(b, ",\"steps\":");
    tb_json_int(b, r->tr->steps);
  }
  if (r->tr->model != NULL) {
    TB_LIT(b, ",\"model\":");
    tb_json_str(b, r->tr->model);
  }
}
