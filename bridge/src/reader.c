/* The daemon side of the bridge: one observer connection, and the catch-up
 * that makes outages lose nothing.
 *
 * At every (re)connection the reader subscribes to every run live first and
 * only then asks for the run list and, for each run, pages `history` from
 * the last seq it has handed on (or, for a run it has not seen in this
 * process, the last seq the broker holds) up to the run's last seq. Events
 * that arrive live meanwhile wait in the client library's queue and are then
 * skipped up to what history gave, so the broker sees every event once and
 * in order: no gap across a daemon restart, a dropped connection or a
 * bridge restart, no duplicate.
 *
 * Batch events are sampled here (every, batch_hz) before they take room in
 * the queue; every other event always goes on. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct rrun_s {
  char id[TB_PROTO_RUN_MAX];
  int64_t hw; /* the last seq handed to the queue or skipped on purpose */
  int64_t last_batch_us[TB_EVENT_CONTROL + 1]; /* batch_hz: time of the last one sent */
} rrun_t;

typedef struct reader_s {
  tb_bridge_t *b;
  tb_client_t *c;
  rrun_t *runs;
  int n_runs, cap_runs;
  tb_smsg_t *m, *h; /* decoding space: live events, history events */
  tb_buf_t enc;
} reader_t;

/* ----------------------------------------------------------- the daemon -- */

static bool read_first_line(const char *dir, const char *name, char *out, size_t len) {
  char path[2048];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return false;
  bool ok = fgets(out, (int)len, f) != NULL;
  fclose(f);
  if (!ok)
    return false;
  out[strcspn(out, "\r\n")] = '\0';
  return out[0] != '\0';
}

static const char *env_or(const char *given, const char *var) {
  const char *e = given != NULL ? given : getenv(var);
  return e != NULL && e[0] != '\0' ? e : NULL;
}

int tb__daemon_resolve(const tb_bridge_t *b, tb_role_t role, char *addr, size_t addr_len,
                       char *token, size_t token_len, tb_client_err_t *err) {
  char dir[1024], dir_addr[1024] = "";
  const char *sd = b->o.state_dir ? b->o.state_dir : getenv("TRAINBUS_STATE_DIR");
  if (sd != NULL && sd[0] != '\0') {
    snprintf(dir, sizeof dir, "%s", sd);
  } else {
    const char *home = getenv("HOME");
    snprintf(dir, sizeof dir, "%s/.trainbus", home ? home : ".");
  }
  bool have_dir_addr = read_first_line(dir, "address", dir_addr, sizeof dir_addr);
  const char *env_addr = getenv("TRAINBUS_ADDR");
  if (b->o.daemon_addr != NULL)
    snprintf(addr, addr_len, "%s", b->o.daemon_addr);
  else if (env_addr != NULL && env_addr[0] != '\0')
    snprintf(addr, addr_len, "%s", env_addr);
  else if (have_dir_addr)
    snprintf(addr, addr_len, "%s", dir_addr);
  else
    return tb__berr(err, TB_CLIENT_EADDRESS,
                    "no daemon address: give --connect, set TRAINBUS_ADDR, or start trainbusd "
                    "(it writes %.900s/address)",
                    dir);
  /* The control token (--token, $TRAINBUS_TOKEN, the directory's `token`)
   * and the read-only one (--observer-token, $TRAINBUS_OBSERVER_TOKEN, the
   * directory's `observer_token`); a state directory's tokens belong to the
   * daemon at its address only. The side that only reads holds no more than
   * it needs: the observer token where there is one. Control goes with the
   * control token; with none, with the observer token, so that the daemon
   * itself answers that it is read-only. */
  bool from_dir = have_dir_addr && strcmp(dir_addr, addr) == 0;
  char ctl[TB_PROTO_TOKEN_MAX] = "", obs[TB_PROTO_TOKEN_MAX] = "";
  const char *given = env_or(b->o.daemon_token, "TRAINBUS_TOKEN");
  if (given != NULL)
    snprintf(ctl, sizeof ctl, "%s", given);
  else if (from_dir)
    read_first_line(dir, "token", ctl, sizeof ctl);
  given = env_or(b->o.daemon_observer_token, "TRAINBUS_OBSERVER_TOKEN");
  if (given != NULL)
    snprintf(obs, sizeof obs, "%s", given);
  else if (from_dir)
    read_first_line(dir, "observer_token", obs, sizeof obs);
  const char *pick = role == TB_ROLE_OBSERVER ? (obs[0] ? obs : ctl) : (ctl[0] ? ctl : obs);
  snprintf(token, token_len, "%s", pick);
  return 0;
}

int tb__daemon_connect(const tb_bridge_t *b, tb_role_t role, int call_timeout_ms, tb_client_t **c,
                       tb_client_err_t *err) {
  char addr[1024], token[TB_PROTO_TOKEN_MAX], name[64];
  int rc = tb__daemon_resolve(b, role, addr, sizeof addr, token, sizeof token, err);
  if (rc != 0)
    return rc;
  snprintf(name, sizeof name, "bridge:%s", b->ns);
  tb_client_opts_t co = {.addr = addr,
                         .token = token,
                         .role = role,
                         .name = name,
                         .connect_timeout_ms = 5000,
                         .call_timeout_ms = call_timeout_ms,
                         .ca_file = env_or(b->o.daemon_ca_file, "TRAINBUS_CACERT"),
                         .insecure = b->o.daemon_insecure,
                         .cert_file = env_or(b->o.daemon_cert_file, "TRAINBUS_CERT"),
                         .key_file = env_or(b->o.daemon_key_file, "TRAINBUS_KEY")};
  return tb_client_connect(&co, c, err);
}

/* ------------------------------------------------------------- the runs -- */

static rrun_t *find_run(reader_t *r, const char *id) {
  for (int i = 0; i < r->n_runs; i++)
    if (strcmp(r->runs[i].id, id) == 0)
      return &r->runs[i];
  return NULL;
}

/* A run this process has not handed anything of yet: where the broker left
 * it. Waits for the broker if it cannot say. NULL when stopping or out of
 * memory. */
static rrun_t *learn_run(reader_t *r, const char *id, bool fresh) {
  tb_bridge_t *b = r->b;
  int64_t stored = 0;
  bool told = false;
  while (!fresh) {
    tb_client_err_t err = {0};
    int rc = b->be->stored_seq(b, id, &stored, &err);
    if (rc == 0)
      break;
    if (!told)
      tb__blog(b, 1, "cannot ask the broker where run %s stands (%s); waiting", id, err.msg);
    told = true;
    tb__nap(b, 500);
    if (atomic_load(&b->stopping))
      return NULL;
  }
  if (r->n_runs == r->cap_runs) {
    int cap = r->cap_runs ? r->cap_runs * 2 : 16;
    rrun_t *v = realloc(r->runs, (size_t)cap * sizeof *v);
    if (v == NULL)
      return NULL;
    r->runs = v;
    r->cap_runs = cap;
  }
  rrun_t *run = &r->runs[r->n_runs++];
  memset(run, 0, sizeof *run);
  snprintf(run->id, sizeof run->id, "%s", id);
  run->hw = stored;
  if (stored > 0)
    tb__blog(b, 1, "run %s: the broker holds it up to seq %lld; going on from there", id,
             (long long)stored);
  return run;
}

/* ----------------------------------------------------------- the events -- */

static bool lr_of(const tb_event_t *ev, double *lr) {
  if (ev->action != NULL && strcmp(ev->action, "set_lr") == 0 && ev->has_value) {
    *lr = ev->value;
    return true;
  }
  for (int i = 0; i < ev->n_logs; i++) {
    const char *n = ev->log_names ? ev->log_names[i] : ev->log_namev[i];
    if (strcmp(n, "lr") == 0 || strcmp(n, "learning_rate") == 0) {
      *lr = ev->log_values[i];
      return true;
    }
  }
  return false;
}

/* Where an event's params object comes from, as the daemon wrote it: a
 * history element, or the raw line of a live notification. Without either,
 * ev is encoded again (tb_event_t keeps strings only up to TB_PROTO_TEXT_MAX
 * - 1 bytes: a long checkpoint reason would be cut). */
typedef struct src_s {
  const cJSON *params;
  const char *line;
  size_t len;
} src_t;

/* The params of an event line, into r->enc: the daemon's own bytes when the
 * line has the shape its encoder writes, else through cJSON. */
static int params_of(reader_t *r, const src_t *src) {
  static const char pre[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{";
  size_t n = sizeof pre - 1;
  if (src->params != NULL)
    return tb_json_value(&r->enc, src->params);
  if (src->line == NULL)
    return -1;
  if (src->len > n + 2 && memcmp(src->line, pre, n) == 0 && src->line[src->len - 1] == '}' &&
      src->line[src->len - 2] == '}')
    return tb_buf_append(&r->enc, src->line + n - 1, src->len - n);
  cJSON *doc = cJSON_ParseWithLength(src->line, src->len);
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(doc, "params");
  int rc = cJSON_IsObject(p) ? tb_json_value(&r->enc, p) : -1;
  cJSON_Delete(doc);
  return rc;
}

/* Hands one event to the publisher (or skips it by the sampling rules).
 * Returns false once the bridge stops. */
static bool hand_on(reader_t *r, rrun_t *run, const tb_event_t *ev, const src_t *src,
                    bool from_history) {
  tb_bridge_t *b = r->b;
  tb_event_kind_t kind = tb_event_from_name(ev->name);
  bool batch = tb_event_is_batch(kind);
  if (batch) {
    /* History holds every batch event; live ones were sampled by the daemon. */
    if (from_history && b->o.every > 1 && ev->batch >= 0 && ev->batch % b->o.every != 0) {
      run->hw = ev->seq;
      return true;
    }
    if (b->o.batch_hz > 0) {
      int64_t *last = &run->last_batch_us[kind];
      if (*last != 0 && ev->time_us >= *last &&
          (double)(ev->time_us - *last) < 1e6 / b->o.batch_hz) {
        run->hw = ev->seq;
        tb__stat_add(b, &b->st.sampled_out, 1);
        return true;
      }
      *last = ev->time_us;
    }
  }
  r->enc.len = 0;
  if (params_of(r, src) != 0 && (r->enc.len = 0, tb_msg_event_params(&r->enc, ev)) != 0)
    return true; /* out of memory: nothing sensible to hand on */
  tb__item_t *it = malloc(sizeof *it + r->enc.len + 1);
  if (it == NULL)
    return true;
  memset(it, 0, sizeof *it);
  it->kind = TB__ITEM_EVENT;
  snprintf(it->run, sizeof it->run, "%s", ev->run);
  snprintf(it->name, sizeof it->name, "%s", ev->name);
  it->seq = ev->seq;
  it->batch = batch;
  it->time_us = ev->time_us;
  it->info.epoch = ev->epoch;
  it->info.batch = ev->batch;
  if (kind == TB_EVENT_STATE && ev->state != NULL) {
    tb_run_state_t st = tb_run_state_from_name(ev->state);
    if (st != TB_RUN_INVALID) {
      it->has_state = true;
      it->info.state = st;
    }
  }
  it->has_lr = lr_of(ev, &it->info.lr);
  it->len = r->enc.len;
  memcpy(it->payload, r->enc.data, r->enc.len);
  it->payload[it->len] = '\0';
  tb__push_t pr = tb__queue_push(&b->q, it, &b->stopping);
  if (pr == TB__STOPPED)
    return false;
  run->hw = ev->seq;
  return true;
}

static int catch_up(reader_t *r, rrun_t *run, int64_t upto, tb_client_err_t *err);

/* One event from the daemon, live or from history. 0, or a connection
 * error of a catch-up it needed, or 1 once the bridge stops. */
static int on_event(reader_t *r, const tb_event_t *ev, const src_t *src, bool from_history,
                    tb_client_err_t *err) {
  tb_bridge_t *b = r->b;
  rrun_t *run = find_run(r, ev->run);
  if (run == NULL) {
    /* A run's first event live is seq 1: nothing of it can be on the broker.
     * Anything else means the run existed before: ask the broker. */
    run = learn_run(r, ev->run, !from_history && ev->seq == 1);
    if (run == NULL)
      return 1;
    if (!from_history && ev->seq > run->hw + 1) {
      int rc = catch_up(r, run, ev->seq - 1, err);
      if (rc != 0)
        return rc;
    }
  }
  if (ev->seq <= run->hw)
    return 0;
  tb__stat_add(b, &b->st.received, 1);
  if (from_history)
    tb__stat_add(b, &b->st.caught_up, 1);
  return hand_on(r, run, ev, src, from_history) ? 0 : 1;
}

/* Pages the run's history from what was handed on up to seq upto. */
static int catch_up(reader_t *r, rrun_t *run, int64_t upto, tb_client_err_t *err) {
  tb_bridge_t *b = r->b;
  int64_t start = run->hw + 1;
  while (run->hw < upto && !atomic_load(&b->stopping)) {
    cJSON *events = NULL;
    int64_t next = 0, from = run->hw + 1;
    int rc = tb_client_history(r->c, run->id, from, 1000, &events, &next, err);
    if (rc != 0)
      return rc;
    int n = cJSON_GetArraySize(events), done = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, events) {
      if (tb_client_event_decode(e, r->h, err) != 0)
        continue;
      if (done == 0 && r->h->event.seq > from)
        tb__blog(b, 0, "run %s: the daemon no longer holds seq %lld..%lld; they are lost", run->id,
                 (long long)from, (long long)r->h->event.seq - 1);
      done++;
      src_t src = {.params = e};
      rc = on_event(r, &r->h->event, &src, true, err);
      tb_smsg_free(r->h);
      if (rc != 0) {
        cJSON_Delete(events);
        return rc == 1 ? 0 : rc;
      }
    }
    cJSON_Delete(events);
    if (n == 0 || next <= from)
      break;
  }
  if (run->hw >= start)
    tb__blog(b, 2, "run %s: caught up seq %lld..%lld from history", run->id, (long long)start,
             (long long)run->hw);
  return 0;
}

/* Connects, subscribes, and catches every run up. 0 or an error (the
 * connection is then closed). */
static int connect_and_catch_up(reader_t *r, tb_client_err_t *err) {
  tb_bridge_t *b = r->b;
  int rc = tb__daemon_connect(b, TB_ROLE_OBSERVER, 30000, &r->c, err);
  if (rc != 0)
    return rc;
  tb_client_keep_raw(r->c, true);
  tb_client_sub_opts_t so = {.every = b->o.every};
  tb_run_info_t *runs = NULL;
  int n = 0;
  if ((rc = tb_client_subscribe(r->c, &so, NULL, NULL, err)) != 0 ||
      (rc = tb_client_runs(r->c, &runs, &n, err)) != 0)
    goto fail;
  for (int i = 0; i < n && !atomic_load(&b->stopping); i++) {
    rrun_t *run = find_run(r, runs[i].id);
    if (run == NULL && (run = learn_run(r, runs[i].id, false)) == NULL)
      break;
    if (run->hw > runs[i].last_seq) {
      tb__blog(b, 0,
               "run %s: the broker holds seq %lld but the daemon's run ends at %lld: a run of "
               "another daemon had this id in namespace %s; publishing this one from seq 1",
               run->id, (long long)run->hw, (long long)runs[i].last_seq, b->ns);
      run->hw = 0;
    }
    tb__item_t *it = calloc(1, sizeof *it + 1);
    if (it != NULL) {
      it->kind = TB__ITEM_RUNINFO;
      snprintf(it->run, sizeof it->run, "%s", runs[i].id);
      it->info = runs[i];
      it->seq = run->hw;
      if (tb__queue_push(&b->q, it, &b->stopping) == TB__STOPPED)
        break;
    }
    if ((rc = catch_up(r, run, runs[i].last_seq, err)) != 0)
      goto fail;
  }
  free(runs);
  return 0;
fail:
  free(runs);
  tb_client_free(r->c);
  r->c = NULL;
  return rc;
}

static void set_daemon_state(tb_bridge_t *b, const char *s) {
  pthread_mutex_lock(&b->stats_mu);
  snprintf(b->daemon_state, sizeof b->daemon_state, "%s", s);
  pthread_mutex_unlock(&b->stats_mu);
}

void *tb__reader_main(void *arg) {
  tb_bridge_t *b = arg;
  reader_t r = {.b = b};
  r.m = calloc(1, sizeof *r.m);
  r.h = calloc(1, sizeof *r.h);
  tb_buf_init(&r.enc);
  if (r.m == NULL || r.h == NULL) {
    tb__blog(b, 0, "out of memory");
    atomic_store(&b->stopping, true);
    goto out;
  }
  int delay = 100;
  char last_err[320] = "";
  while (!atomic_load(&b->stopping)) {
    tb_client_err_t err = {0};
    if (r.c == NULL) {
      int rc = connect_and_catch_up(&r, &err);
      if (rc != 0) {
        if (strcmp(last_err, err.msg) != 0)
          tb__blog(b, 1, "cannot reach the daemon (%s); trying again", err.msg);
        snprintf(last_err, sizeof last_err, "%s", err.msg);
        set_daemon_state(b, "connecting");
        tb__nap(b, delay);
        delay = delay < 1000 ? delay * 2 : 2000;
        continue;
      }
      if (r.c == NULL) /* stopped during the catch-up */
        break;
      tb__blog(b, 1, "following the daemon at %s (%s)", tb_client_hello(r.c)->server,
               tb_role_name(tb_client_role(r.c)));
      last_err[0] = '\0';
      delay = 100;
      set_daemon_state(b, "connected");
    }
    int rc = tb_client_next(r.c, 200, r.m, &err);
    if (rc == TB_CLIENT_ETIMEOUT)
      continue;
    if (rc == 0) {
      int stop = 0;
      if (r.m->kind == TB_SMSG_EVENT) {
        /* The event's params as the daemon wrote them, strings whole. */
        src_t src = {0};
        src.line = tb_client_raw(r.c, &src.len);
        stop = on_event(&r, &r.m->event, &src, false, &err);
      } else if (r.m->kind == TB_SMSG_DROPPED) {
        tb__blog(b, 2, "the daemon dropped %lld batch events of %s (seq %lld..%lld) for the bridge",
                 (long long)r.m->dropped.count, r.m->dropped.run, (long long)r.m->dropped.from_seq,
                 (long long)r.m->dropped.to_seq);
      } else if (r.m->kind == TB_SMSG_BYE) {
        tb__blog(b, 1, "the daemon said bye (%s: %s)", r.m->bye.reason, r.m->bye.message);
      }
      tb_smsg_free(r.m);
      if (stop == 1)
        break;
      if (stop == 0)
        continue;
      rc = stop;
    }
    tb__blog(b, 1, "lost the daemon (%s); reconnecting", err.msg);
    tb__stat_add(b, &b->st.daemon_reconnects, 1);
    set_daemon_state(b, "connecting");
    tb_client_free(r.c);
    r.c = NULL;
  }
out:
  tb_client_free(r.c);
  free(r.runs);
  free(r.m);
  free(r.h);
  tb_buf_free(&r.enc);
  return NULL;
}
