/* Request handlers: one decoded request in, exactly one response out (now, or
 * for set_lr and checkpoint when the trainer has applied the change).
 *
 * Every request is validated by the protocol decoder and checked against the
 * connection's role before anything changes; a refused request changes
 * nothing. Control requests only write the run's control block; the trainer
 * applies them at its next batch boundary. */
#include "internal.h"
#include "trainbus/version.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void reply(conn_t *c, tb_buf_t *b) {
  tb__conn_send(c, b->data, b->len);
  b->len = 0;
}

static void error(conn_t *c, const tb_id_t *id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void error(conn_t *c, const tb_id_t *id, int code, const char *fmt, ...) {
  char msg[512]; /* what tb_msg_error() keeps */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_error(&b, id, code, "%s", msg);
  reply(c, &b);
  tb_buf_free(&b);
}

static void error_from(conn_t *c, const tb_id_t *id, const tb_proto_err_t *err) {
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_error_from(&b, id, err);
  reply(c, &b);
  tb_buf_free(&b);
}

void tb__reply_error(conn_t *c, const tb_req_t *q, int64_t seq, int64_t index, int code,
                     const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (q->id.kind != TB_ID_NONE) {
    error(c, &q->id, code, "%s", msg);
    return;
  }
  /* A notification gets no response: a trainer's stream is told what was
   * refused by a notification of its own. */
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_rejected(&b, tb_method_name(q->method), q->run, seq, index, code, msg);
  reply(c, &b);
  tb_buf_free(&b);
}

static void ok(conn_t *c, const tb_id_t *id) {
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_ok(&b, id);
  reply(c, &b);
  tb_buf_free(&b);
}

/* Constant-time comparison, so the token cannot be guessed byte by byte. */
static bool token_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char d = (unsigned char)(la != lb);
  for (size_t i = 0; i < la && i < lb; i++)
    d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0 && la > 0;
}

/* The role a token grants: the control token every role (CONTROLLER stands
 * for it), the observer token OBSERVER, the trainer token TRAINER; NONE for
 * any other. Each is compared in constant time, and all three always are,
 * so the time taken says nothing of which (if any) matched. */
static tb_role_t token_grants(const tb_server_t *s, const char *t) {
  bool ctl = token_equal(t, s->token);
  bool obs = token_equal(t, s->observer_token);
  bool tr = token_equal(t, s->trainer_token);
  return ctl ? TB_ROLE_CONTROLLER : obs ? TB_ROLE_OBSERVER : tr ? TB_ROLE_TRAINER : TB_ROLE_NONE;
}

static void auth_failed(conn_t *c, const tb_req_t *q, const char *why) {
  error(c, &q->id, TB_PROTO_EUNAUTHORIZED, "auth: %s", why);
  tb__log(c->srv, 1, "%s: failed auth as %s", c->label, tb_role_name(q->auth.role));
  tb__conn_close(c, "auth_failed", "invalid or missing token");
}

/* Roles by token (docs/PROTOCOL.md section 3). The role granted is the one
 * asked for when the token allows it; a client that asks for controller
 * with a token of a lesser role gets that role (its control calls then
 * answer forbidden, saying why), and one that asks for a role its token does
 * not give otherwise is refused (forbidden) and may try again. Without a
 * token, only an observer on a loopback or Unix listener is let in. */
static void do_auth(conn_t *c, const tb_req_t *q) {
  tb_server_t *s = c->srv;
  if (c->role != TB_ROLE_NONE) {
    error(c, &q->id, TB_PROTO_EINVALID_STATE,
          "auth: this connection is already authenticated "
          "as %s",
          tb_role_name(c->role));
    return;
  }
  if (q->auth.protocol != 0 && q->auth.protocol != TB_PROTO_VERSION) {
    error(c, &q->id, TB_PROTO_EINVALID_PARAMS,
          "params.protocol: this server speaks protocol %d, the client asked for %lld",
          TB_PROTO_VERSION, (long long)q->auth.protocol);
    return;
  }
  tb_role_t want = q->auth.role, granted;
  bool has_token = q->auth.token[0] != '\0';
  tb_role_t grants = has_token ? token_grants(s, q->auth.token) : TB_ROLE_NONE;
  if (has_token && grants == TB_ROLE_NONE) {
    auth_failed(c, q, "invalid token");
    return;
  }
  if (!has_token) {
    if (want != TB_ROLE_OBSERVER || !c->local) {
      auth_failed(c, q,
                  want == TB_ROLE_CONTROLLER ? "the controller role needs the control token"
                  : want == TB_ROLE_TRAINER
                      ? "the trainer role needs the trainer token (or the control token)"
                      : "a token is needed on this listener");
      return;
    }
    granted = TB_ROLE_OBSERVER;
  } else if (grants == TB_ROLE_CONTROLLER || grants == want) {
    granted = want;
  } else if (want == TB_ROLE_CONTROLLER) {
    granted = grants; /* the token's own, lesser role */
  } else {
    error(c, &q->id, TB_PROTO_EFORBIDDEN,
          "auth: the %s token grants the %s role, not %s (the control token grants every role)",
          tb_role_name(grants), tb_role_name(grants), tb_role_name(want));
    return;
  }
  c->role = granted;
  c->token_role = grants;
  snprintf(c->client, sizeof(c->client), "%s", q->auth.client);
  if (c->client[0])
    snprintf(c->label, sizeof(c->label), "client %llu (%s)", (unsigned long long)c->id, c->client);
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_auth(&b, &q->id, c->role);
  reply(c, &b);
  tb_buf_free(&b);
  tb__log(s, 2, "%s: authenticated as %s (%s)", c->label, tb_role_name(c->role),
          grants == TB_ROLE_NONE         ? "no token"
          : grants == TB_ROLE_CONTROLLER ? "the control token"
          : grants == TB_ROLE_OBSERVER   ? "the observer token"
                                         : "the trainer token");
}

static tb_run_t *run_or_error(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = tb__run_find(c->srv, q->run);
  if (r == NULL)
    error(c, &q->id, TB_PROTO_ENO_SUCH_RUN, "%s: no run \"%s\"", tb_method_name(q->method), q->run);
  return r;
}

static bool is_final(tb_run_state_t st) {
  return tb_run_state_is_final(st);
}

/* The run is training (or paused) and can take control; else an error. */
static bool controllable(conn_t *c, const tb_req_t *q, tb_run_t *r) {
  if (r->trained && !is_final(r->state) &&
      (q->method == TB_METHOD_STOP || q->method == TB_METHOD_PAUSE ||
       q->method == TB_METHOD_CHECKPOINT)) {
    /* train_end has fired: no batch is left to stop after, pause before or
     * checkpoint at (as for a continue there). */
    error(c, &q->id, TB_PROTO_EINVALID_STATE, "%s: run %s has finished training",
          tb_method_name(q->method), r->id);
    return false;
  }
  if (r->state == TB_RUN_RUNNING || r->state == TB_RUN_PAUSED || r->state == TB_RUN_STOPPING)
    return true;
  /* A queued run can be paused (and resumed) ahead: it then waits before its
   * first batch. */
  if (r->state == TB_RUN_QUEUED && !r->cancel_requested &&
      (q->method == TB_METHOD_PAUSE || q->method == TB_METHOD_RESUME))
    return true;
  error(c, &q->id, TB_PROTO_EINVALID_STATE, "%s: run %s is %s", tb_method_name(q->method), r->id,
        tb_run_state_name(r->state));
  return false;
}

/* The lockstep subscriptions changed. */
static void recount_all(tb_server_t *s) {
  for (tb_run_t *r = s->runs; r != NULL; r = r->next)
    tb__lockstep_recount(r);
  tb__ghosts_save(s);
}

void tb__conn_drop_subs(conn_t *c) {
  bool had_lockstep = false;
  for (int i = 0; i < c->n_subs; i++) {
    had_lockstep |= c->subs[i].lockstep != 0;
    if (c->subs[i].replay_file != NULL)
      fclose(c->subs[i].replay_file);
  }
  c->n_subs = 0;
  if (had_lockstep)
    recount_all(c->srv);
}

static void do_subscribe(conn_t *c, const tb_req_t *q) {
  tb_server_t *s = c->srv;
  const __typeof__(q->subscribe) *p = &q->subscribe;
  tb_run_t *replay = NULL;
  if (p->has_since_seq) {
    if (p->n_runs != 1 || strchr(p->runs[0], '*') != NULL) {
      error(c, &q->id, TB_PROTO_EINVALID_PARAMS,
            "params.since_seq: needs exactly one run in params.runs, without '*'");
      return;
    }
    if ((replay = tb__run_find(s, p->runs[0])) == NULL) {
      error(c, &q->id, TB_PROTO_ENO_SUCH_RUN, "subscribe: no run \"%s\"", p->runs[0]);
      return;
    }
  }
  if (c->n_subs >= 16) {
    error(c, &q->id, TB_PROTO_EOVERLOADED, "subscribe: at most 16 subscriptions per connection");
    return;
  }
  if (c->n_subs == c->cap_subs) {
    int cap = c->cap_subs ? c->cap_subs * 2 : 1;
    sub_t *subs = realloc(c->subs, (size_t)cap * sizeof(*subs));
    if (subs == NULL) {
      error(c, &q->id, TB_PROTO_EINTERNAL, "subscribe: out of memory");
      return;
    }
    c->subs = subs;
    c->cap_subs = cap;
  }
  sub_t *sb = &c->subs[c->n_subs];
  memset(sb, 0, sizeof(*sb));
  sb->id = ++c->next_sub;
  sb->n_runs = p->n_runs;
  memcpy(sb->runs, p->runs, sizeof(sb->runs));
  sb->n_events = p->n_events;
  memcpy(sb->events, p->events, sizeof(sb->events));
  sb->every = p->every > 0 ? p->every : 1;
  for (int i = 0; i < p->n_lockstep; i++)
    sb->lockstep |= 1u << p->lockstep[i];
  sb->lockstep_timeout_ms = p->lockstep_timeout_ms;
  if (replay != NULL) {
    sb->replay_run = replay;
    sb->replay_next = p->since_seq > 0 ? p->since_seq : 1;
  }
  c->n_subs++;
  tb_run_t *single =
      p->n_runs == 1 && strchr(p->runs[0], '*') == NULL ? tb__run_find(s, p->runs[0]) : NULL;
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_subscribe(&b, &q->id, sb->id, single ? single->last_seq + 1 : 0);
  reply(c, &b);
  tb_buf_free(&b);
  if (sb->lockstep) {
    /* The trainers know of the subscription before a run held for it (a
     * restored run waiting for its lockstep client) is let go. */
    recount_all(s);
    tb__ghosts_renewed(s, sb);
  }
  if (replay != NULL)
    tb__replay_pump(c);
}

static void do_unsubscribe(conn_t *c, const tb_req_t *q) {
  if (!q->unsubscribe.has_sub) {
    tb__conn_drop_subs(c);
    ok(c, &q->id);
    return;
  }
  for (int i = 0; i < c->n_subs; i++) {
    if (c->subs[i].id != q->unsubscribe.sub)
      continue;
    bool ls = c->subs[i].lockstep != 0;
    if (c->subs[i].replay_file != NULL)
      fclose(c->subs[i].replay_file);
    c->subs[i] = c->subs[--c->n_subs];
    if (ls)
      recount_all(c->srv);
    ok(c, &q->id);
    return;
  }
  error(c, &q->id, TB_PROTO_EINVALID_PARAMS, "params.sub: no subscription %lld on this connection",
        (long long)q->unsubscribe.sub);
}

/* A run's status, plus its epoch history (every epoch_end's logs) so that a
 * late joiner has the whole curve in one call. */
static void do_status(conn_t *c, const tb_req_t *q) {
  tb_server_t *s = c->srv;
  tb_buf_t b;
  tb_buf_init(&b);
  if (q->run[0] == '\0') {
    int running = 0, queued = 0;
    for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
      running +=
          r->state == TB_RUN_RUNNING || r->state == TB_RUN_PAUSED || r->state == TB_RUN_STOPPING;
      queued += r->state == TB_RUN_QUEUED;
    }
    tb_msg_result_begin(&b, &q->id);
    TB_LIT(&b, "{\"server\":\"" TB_SERVER_SOFTWARE "\",\"protocol\":");
    tb_json_int(&b, TB_PROTO_VERSION);
    TB_LIT(&b, ",\"runs\":");
    tb_json_int(&b, s->n_runs);
    TB_LIT(&b, ",\"running\":");
    tb_json_int(&b, running);
    TB_LIT(&b, ",\"queued\":");
    tb_json_int(&b, queued);
    TB_LIT(&b, ",\"clients\":");
    tb_json_int(&b, s->n_conns);
    TB_LIT(&b, ",\"events\":");
    tb_json_int(&b, s->n_events);
    /* Memory held for replay and history (tb_server_opts_t.retain_bytes). */
    TB_LIT(&b, ",\"retained_events\":");
    tb_json_int(&b, s->n_retained);
    TB_LIT(&b, ",\"retained_bytes\":");
    tb_json_int(&b, (int64_t)s->retained_bytes);
    TB_LIT(&b, ",\"retain_bytes\":");
    uint64_t bound = tb__retain_bound(s), exact = ((uint64_t)1 << 53) - 1;
    tb_json_int(&b, (int64_t)(bound < exact ? bound : exact)); /* JSON's exact integers */
    TB_LIT(&b, ",\"evicted_events\":");
    tb_json_int(&b, s->n_evicted);
    TB_LIT(&b, "}");
    tb_msg_result_end(&b);
    reply(c, &b);
    tb_buf_free(&b);
    return;
  }
  tb_run_t *r = run_or_error(c, q);
  if (r == NULL) {
    tb_buf_free(&b);
    return;
  }
  tb_run_info_t info;
  tb__run_info(r, &info);
  tb_msg_result_begin(&b, &q->id);
  tb_json_run_info(&b, &info);
  /* tb_json_run_info wrote a whole object: reopen it to add the class names
   * and the history. */
  if (b.len > 0 && b.data[b.len - 1] == '}')
    b.len--;
  tb__trainer_status(r, &b);
  if (r->classes != NULL) {
    TB_LIT(&b, ",\"classes\":[");
    for (int i = 0; i < r->classes->n; i++) {
      if (i > 0)
        TB_LIT(&b, ",");
      tb_json_str(&b, r->classes->names[i]);
    }
    TB_LIT(&b, "]");
  }
  TB_LIT(&b, ",\"history\":[");
  int n = 0;
  for (int64_t seq = r->last_seq - (int64_t)r->n_ring + 1; seq <= r->last_seq; seq++) {
    tb_ev_t *e = tb__run_event(r, seq);
    if (e == NULL || e->kind != TB_EVENT_EPOCH_END)
      continue;
    static const char head[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":";
    if (n++)
      TB_LIT(&b, ",");
    tb_buf_append(&b, e->data + sizeof(head) - 1, e->len - (sizeof(head) - 1) - 2);
  }
  TB_LIT(&b, "]}");
  tb_msg_result_end(&b);
  reply(c, &b);
  tb_buf_free(&b);
}

static void do_runs(conn_t *c, const tb_req_t *q) {
  tb_server_t *s = c->srv;
  tb_run_info_t *infos = calloc((size_t)(s->n_runs ? s->n_runs : 1), sizeof(*infos));
  if (infos == NULL) {
    error(c, &q->id, TB_PROTO_EINTERNAL, "runs: out of memory");
    return;
  }
  int n = 0;
  for (tb_run_t *r = s->runs; r != NULL && n < s->n_runs; r = r->next)
    tb__run_info(r, &infos[n++]);
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_runs(&b, &q->id, infos, n);
  reply(c, &b);
  tb_buf_free(&b);
  free(infos);
}

/* Past events, as event params objects, from memory or the disk log. */
static void do_history(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = run_or_error(c, q);
  if (r == NULL)
    return;
  static const char head[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":";
  int64_t seq = q->history.since_seq > 0 ? q->history.since_seq : 1;
  int64_t limit = q->history.limit > 0 ? q->history.limit : 1000;
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_begin(&b, &q->id);
  TB_LIT(&b, "{\"run\":");
  tb_json_str(&b, r->id);
  TB_LIT(&b, ",\"events\":[");
  sub_t disk = {0};
  int n = 0;
  while (seq <= r->last_seq && n < limit) {
    tb_ev_t *e = tb__run_event(r, seq);
    bool owned = false;
    if (e == NULL && r->dir[0] != '\0') {
      /* Older than memory: read the run's log from disk. */
      if (disk.replay_file == NULL) {
        char path[1200];
        snprintf(path, sizeof(path), "%s/events.ndjson", r->dir);
        disk.replay_file = fopen(path, "r");
      }
      char *line = NULL;
      size_t cap = 0;
      ssize_t len;
      while (disk.replay_file != NULL && (len = getline(&line, &cap, disk.replay_file)) > 0) {
        const char *p = strstr(line, "\"seq\":");
        if (p != NULL && strtoll(p + 6, NULL, 10) >= seq) {
          e = tb__ev_new(line, (size_t)len, strtoll(p + 6, NULL, 10), TB_EVENT_INVALID, -1);
          owned = true;
          break;
        }
      }
      free(line);
    }
    if (e == NULL) {
      /* Not retained anywhere: skip to what memory holds. */
      int64_t first = r->last_seq - (int64_t)r->n_ring + 1;
      if (first <= seq) {
        seq++; /* dropped at the queue: retained nowhere */
        continue;
      }
      seq = first;
      continue;
    }
    if (n++)
      TB_LIT(&b, ",");
    tb_buf_append(&b, e->data + sizeof(head) - 1, e->len - (sizeof(head) - 1) - 2);
    seq = e->seq + 1;
    if (owned)
      tb__ev_unref(e);
  }
  if (disk.replay_file != NULL)
    fclose(disk.replay_file);
  TB_LIT(&b, "],\"next_seq\":");
  tb_json_int(&b, seq);
  TB_LIT(&b, "}");
  tb_msg_result_end(&b);
  reply(c, &b);
  tb_buf_free(&b);
}

static pending_t *add_pending(conn_t *c, const tb_req_t *q, tb_run_t *r) {
  pending_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    error(c, &q->id, TB_PROTO_EINTERNAL, "%s: out of memory", tb_method_name(q->method));
    return NULL;
  }
  p->conn_id = c->id;
  p->id = q->id;
  p->method = q->method;
  /* Append, so requests are answered in order. */
  pending_t **pp = &r->pending;
  while (*pp != NULL)
    pp = &(*pp)->next;
  *pp = p;
  return p;
}

/* A job whose LearningRateScheduler sets the rate at every epoch begin owns
 * it: a set_lr would silently last until the next epoch. Refused, as Keras
 * refuses to set the rate of an optimizer driven by a LearningRateSchedule. */
static const char *schedule_owner(const tb_run_t *r) {
  if (r->job == NULL)
    return NULL;
  for (int i = 0; i < r->job->n_callbacks; i++)
    if (r->job->callbacks[i]->on_epoch_begin != NULL &&
        strstr(r->job->callbacks[i]->name, "LearningRateScheduler") != NULL)
      return r->job->callbacks[i]->name;
  return NULL;
}

/* Puts a control request to r: into its control block, or, for a run a
 * trainer publishes, to that trainer (trainer.c), which applies it at its
 * next batch boundary and says so. *ticket (may be NULL) receives the
 * number the applied change will answer to. */
static void request(tb_run_t *r, tb_method_t m, double lr, const char *by, uint64_t *ticket) {
  if (r->tr != NULL) {
    tb__trainer_forward(r, tb_method_name(m), m == TB_METHOD_SET_LR, lr, by, ticket);
    return;
  }
  switch (m) {
  case TB_METHOD_SET_LR:
    tb_control_set_lr_ticket(&r->control, lr, by, ticket);
    break;
  case TB_METHOD_STOP:
    tb_control_stop(&r->control, by);
    break;
  case TB_METHOD_PAUSE:
    tb_control_pause(&r->control, by);
    break;
  case TB_METHOD_RESUME:
    tb_control_resume(&r->control, by);
    break;
  case TB_METHOD_CHECKPOINT:
    tb_control_checkpoint_ticket(&r->control, by, ticket);
    break;
  default:
    break;
  }
}

/* A pause requested and not resumed. */
static bool paused(tb_run_t *r) {
  if (r->tr != NULL)
    return tb__trainer_paused(r) || r->state == TB_RUN_PAUSED;
  return tb_control_paused(&r->control);
}

/* Where checkpoints go: the daemon's state directory, or a trainer's own. */
static bool can_checkpoint(const tb_run_t *r) {
  return r->tr != NULL ? tb__trainer_checkpoints(r) : r->dir[0] != '\0';
}

static const char *no_checkpoints(const tb_run_t *r) {
  return r->tr != NULL ? "its trainer attached without checkpoints: true"
                       : "start trainbusd with --state-dir";
}

static void do_control(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = run_or_error(c, q);
  if (r == NULL)
    return;
  if (q->method != TB_METHOD_CANCEL && r->tr != NULL &&
      (!controllable(c, q, r) || !tb__trainer_ready(c, q, r)))
    return;
  switch (q->method) {
  case TB_METHOD_SET_LR: {
    if (!controllable(c, q, r))
      return;
    const char *owner = schedule_owner(r);
    if (owner != NULL) {
      error(c, &q->id, TB_PROTO_EINVALID_STATE,
            "set_lr: run %s's learning rate is owned by its %s, which sets it at every epoch "
            "begin; remove the schedule from the job to steer the rate by hand",
            r->id, owner);
      return;
    }
    pending_t *p = add_pending(c, q, r);
    if (p != NULL)
      request(r, TB_METHOD_SET_LR, q->set_lr.lr, c->label, &p->ticket);
    return;
  }
  case TB_METHOD_STOP:
    if (!controllable(c, q, r))
      return;
    request(r, TB_METHOD_STOP, 0, c->label, NULL);
    ok(c, &q->id);
    return;
  case TB_METHOD_PAUSE:
    if (!controllable(c, q, r))
      return;
    if (r->state == TB_RUN_PAUSED || paused(r)) {
      error(c, &q->id, TB_PROTO_EINVALID_STATE, "pause: run %s is already paused", r->id);
      return;
    }
    request(r, TB_METHOD_PAUSE, 0, c->label, NULL);
    ok(c, &q->id);
    return;
  case TB_METHOD_RESUME:
    if (!controllable(c, q, r))
      return;
    if (!paused(r)) {
      error(c, &q->id, TB_PROTO_EINVALID_STATE, "resume: run %s is not paused", r->id);
      return;
    }
    request(r, TB_METHOD_RESUME, 0, c->label, NULL);
    ok(c, &q->id);
    return;
  case TB_METHOD_CHECKPOINT:
    if (!controllable(c, q, r))
      return;
    if (!can_checkpoint(r)) {
      error(c, &q->id, TB_PROTO_EINVALID_STATE,
            "checkpoint: run %s has nowhere to write checkpoints (%s)", r->id, no_checkpoints(r));
      return;
    }
    pending_t *p = add_pending(c, q, r);
    if (p != NULL)
      request(r, TB_METHOD_CHECKPOINT, 0, c->label, &p->ticket);
    return;
  case TB_METHOD_CANCEL:
    if (is_final(r->state)) {
      error(c, &q->id, TB_PROTO_EINVALID_STATE, "cancel: run %s is already %s", r->id,
            tb_run_state_name(r->state));
      return;
    }
    if (r->tr != NULL) {
      tb__trainer_cancel(r, c->label);
      ok(c, &q->id);
      return;
    }
    r->cancel_requested = true;
    if (r->state == TB_RUN_QUEUED || (r->restored && !r->thread_started)) {
      /* Not training (yet): no trainer will apply a stop. */
      tb__push_state(r, TB_RUN_CANCELLED, r->state, c->label, -1, -1);
    } else {
      atomic_store(&r->cancel_flag, true);
      tb_control_stop(&r->control, c->label);
    }
    ok(c, &q->id);
    return;
  default:
    return;
  }
}

static void do_continue(conn_t *c, const tb_req_t *q) {
  tb_run_t *r = run_or_error(c, q);
  if (r == NULL)
    return;
  bool owed = false;
  for (int i = 0; i < c->n_owed; i++)
    owed |= c->owed[i].run == r && c->owed[i].seq == q->cont.seq;
  if (!owed) {
    error(c, &q->id, TB_PROTO_EINVALID_STATE,
          "continue: run %s is not waiting for this connection at seq %lld (timed out, "
          "answered already, or not a lockstep event)",
          r->id, (long long)q->cont.seq);
    return;
  }
  /* After training (train_end, and the evaluate or predict hooks that come
   * after it) there is no batch left to pause before, no position to
   * checkpoint and nothing to stop: refused, rather than left pending for a
   * boundary that never comes (or turning a finished run into a stopped
   * one). */
  const tb_ev_t *asked = tb__run_event(r, q->cont.seq);
  bool over = asked != NULL &&
              (asked->kind == TB_EVENT_TRAIN_END || asked->kind == TB_EVENT_PREDICT_BEGIN ||
               asked->kind == TB_EVENT_PREDICT_END || asked->kind == TB_EVENT_PREDICT_BATCH_BEGIN ||
               asked->kind == TB_EVENT_PREDICT_BATCH_END || r->trained);
  if (over && (q->cont.pause || q->cont.checkpoint || q->cont.stop)) {
    error(c, &q->id, TB_PROTO_EINVALID_STATE,
          "continue: actions.%s: run %s has finished training (seq %lld is %s); only set_lr "
          "may be answered here; the wait for it goes on",
          q->cont.pause        ? "pause"
          : q->cont.checkpoint ? "checkpoint"
                               : "stop",
          r->id, (long long)q->cont.seq, tb_event_name(asked->kind));
    return;
  }
  if (q->cont.checkpoint && !can_checkpoint(r)) {
    /* Refused whole, before anything applies: the client may answer again
     * without the checkpoint. */
    error(c, &q->id, TB_PROTO_EINVALID_STATE,
          "continue: actions.checkpoint: run %s has nowhere to write checkpoints (%s); the wait "
          "for seq %lld goes on",
          r->id, no_checkpoints(r), (long long)q->cont.seq);
    return;
  }
  /* The actions go into the control block (or to the run's trainer) before
   * the trainer is released, so they take effect before training goes on. */
  if (q->cont.has_lr)
    request(r, TB_METHOD_SET_LR, q->cont.lr, c->label, NULL);
  if (q->cont.stop)
    request(r, TB_METHOD_STOP, 0, c->label, NULL);
  if (q->cont.pause)
    request(r, TB_METHOD_PAUSE, 0, c->label, NULL);
  if (q->cont.checkpoint)
    request(r, TB_METHOD_CHECKPOINT, 0, c->label, NULL);
  bool answered;
  tb__lockstep_answer(r, c, q->cont.seq, &answered);
  if (!answered) {
    error(c, &q->id, TB_PROTO_EINVALID_STATE,
          "continue: the wait for seq %lld is over (it timed out)", (long long)q->cont.seq);
    return;
  }
  ok(c, &q->id);
}

static void do_submit(conn_t *c, const tb_req_t *q) {
  /* Exactly the numbers the client sent (cJSON_Print would round some). */
  tb_buf_t job;
  tb_buf_init(&job);
  if (tb_json_value(&job, q->submit.job) != 0) {
    tb_buf_free(&job);
    error(c, &q->id, TB_PROTO_EINTERNAL, "submit: out of memory");
    return;
  }
  char id[64];
  tb_err_t err = {{0}};
  /* A job from the network: held to the network's policy (its files under
   * the data directories, relative paths against the first; the budget). */
  tb_server_t *s = c->srv;
  const char *base = s->o.n_data_dirs > 0 ? s->data_dirs[0] : NULL;
  int r = tb__server_submit(s, job.data, job.len, "params.job", base, true, id, &err);
  tb_buf_free(&job);
  if (r != 0) {
    /* The job parser names fields as "params.job: model.layers[2].units: ...";
     * join them into one path. A message about the whole job ("params.job:
     * needs an estimated ...") stays as it is. */
    char msg[600];
    const char *m = err.msg;
    size_t field = strncmp(m, "params.job: ", 12) == 0 ? strcspn(m + 12, " :") : 0;
    if (field > 0 && strncmp(m + 12 + field, ": ", 2) == 0)
      snprintf(msg, sizeof(msg), "params.job.%s", m + 12);
    else
      snprintf(msg, sizeof(msg), "%s", m);
    error(c, &q->id, r == -EAGAIN ? TB_PROTO_EOVERLOADED : TB_PROTO_EINVALID_PARAMS, "%s", msg);
    return;
  }
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_result_submit(&b, &q->id, id);
  reply(c, &b);
  tb_buf_free(&b);
  tb__log(c->srv, 1, "%s submitted run %s", c->label, id);
}

void tb__handle_line(conn_t *c, const char *line, size_t len) {
  static __thread tb_req_t q; /* 4.5 KB: kept off the stack */
  tb_proto_err_t err = {0};
  int r = tb_req_decode(line, len, &q, &err);
  if (r != 0) {
    /* A trainer's notification that cannot be read is refused by a
     * notification; anything else by an error response. */
    if (r != TB_PROTO_EPARSE && q.id.kind == TB_ID_NONE &&
        (q.method == TB_METHOD_PUBLISH || q.method == TB_METHOD_APPLIED) && c->role != TB_ROLE_NONE)
      tb__reply_error(c, &q, 0, -1, r, "%s", err.msg);
    else
      error_from(c, &q.id, &err);
    tb_req_free(&q);
    /* Unparseable input before auth is not a client of ours: close. */
    if (r == TB_PROTO_EPARSE || c->role == TB_ROLE_NONE)
      tb__conn_close(c, "protocol_error", err.msg);
    return;
  }
  if (q.method != TB_METHOD_AUTH && (r = tb_req_authorize(&q, c->role, &err)) != 0) {
    if (r == TB_PROTO_EFORBIDDEN && c->token_role != TB_ROLE_NONE &&
        c->token_role != TB_ROLE_CONTROLLER)
      /* Say why the role is what it is: the token's. */
      tb__reply_error(c, &q, 0, -1, r, "%s (it authenticated with the %s token%s)", err.msg,
                      tb_role_name(c->token_role),
                      c->token_role == TB_ROLE_OBSERVER ? ", which is read-only" : "");
    else
      tb__reply_error(c, &q, 0, -1, r, "%s", err.msg);
    tb_req_free(&q);
    return;
  }
  switch (q.method) {
  case TB_METHOD_PING: {
    tb_buf_t b;
    tb_buf_init(&b);
    tb_msg_result_pong(&b, &q.id, tb__srv_now_us());
    reply(c, &b);
    tb_buf_free(&b);
    break;
  }
  case TB_METHOD_AUTH:
    do_auth(c, &q);
    break;
  case TB_METHOD_SUBSCRIBE:
    do_subscribe(c, &q);
    break;
  case TB_METHOD_UNSUBSCRIBE:
    do_unsubscribe(c, &q);
    break;
  case TB_METHOD_STATUS:
    do_status(c, &q);
    break;
  case TB_METHOD_RUNS:
    do_runs(c, &q);
    break;
  case TB_METHOD_HISTORY:
    do_history(c, &q);
    break;
  case TB_METHOD_SUBMIT:
    do_submit(c, &q);
    break;
  case TB_METHOD_CONTINUE:
    do_continue(c, &q);
    break;
  case TB_METHOD_ATTACH:
    tb__trainer_attach(c, &q);
    break;
  case TB_METHOD_PUBLISH:
    tb__trainer_publish(c, &q);
    break;
  case TB_METHOD_APPLIED:
    tb__trainer_applied(c, &q);
    break;
  case TB_METHOD_FINISH:
    tb__trainer_finish(c, &q);
    break;
  default:
    do_control(c, &q);
    break;
  }
  tb_req_free(&q);
}
