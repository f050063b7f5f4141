/* The bridge's life and its publisher.
 *
 * tb_bridge_run opens the broker, starts the daemon reader (reader.c) and
 * the control workers (ctl.c), and then runs the publisher on the calling
 * thread: it takes events from the bounded queue in order and publishes each
 * until the broker has it (a transient failure repeats the same message, so
 * the broker never sees seq k+1 before seq k), keeps each run's status up to
 * date from the events it publishes, and publishes the status, the run list
 * and the bridge's own state as they change. */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- helpers -- */

const char *tb_bridge_strerror(int code) {
  const char *t = tb__bridge_code_name(code, true);
  return t ? t : tb_client_strerror(code);
}

const char *tb_bridge_err_name(int code) {
  const char *t = tb__bridge_code_name(code, false);
  return t ? t : tb_client_err_name(code);
}

tb_broker_kind_t tb_broker_kind(const char *url) {
  if (url == NULL)
    return TB_BROKER_NONE;
  if (strncmp(url, "nats://", 7) == 0 || strncmp(url, "tls://", 6) == 0)
    return TB_BROKER_NATS;
  if (strncmp(url, "mqtt://", 7) == 0 || strncmp(url, "mqtts://", 8) == 0)
    return TB_BROKER_MQTT;
  return TB_BROKER_NONE;
}

int64_t tb__mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tb__nap(tb_bridge_t *b, int ms) {
  while (ms > 0 && !atomic_load(&b->stopping)) {
    int step = ms < 50 ? ms : 50;
    struct timespec ts = {0, (long)step * 1000000L};
    nanosleep(&ts, NULL);
    ms -= step;
  }
}

void tb__blog(tb_bridge_t *b, int level, const char *fmt, ...) {
  if (level > b->o.log_level)
    return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "trainbus-bridge: %s\n", line);
}

void tb__stat_add(tb_bridge_t *b, int64_t *field, int64_t n) {
  pthread_mutex_lock(&b->stats_mu);
  *field += n;
  pthread_mutex_unlock(&b->stats_mu);
}

void tb_bridge_stats(tb_bridge_t *b, tb_bridge_stats_t *out) {
  pthread_mutex_lock(&b->stats_mu);
  *out = b->st;
  pthread_mutex_unlock(&b->stats_mu);
  out->queued = tb__queue_len(&b->q);
  pthread_mutex_lock(&b->q.mu);
  out->dropped_batch = b->q.dropped;
  pthread_mutex_unlock(&b->q.mu);
}

/* ------------------------------------------------------------- new / free -- */

/* Copies the options' strings into one block, so the caller's may go. */
static int copy_strings(tb_bridge_t *b) {
  const char **fields[] = {&b->o.broker.url,
                           &b->o.broker.user,
                           &b->o.broker.password,
                           &b->o.broker.token,
                           &b->o.broker.creds_file,
                           &b->o.broker.nkey_seed_file,
                           &b->o.broker.tls_ca,
                           &b->o.broker.tls_cert,
                           &b->o.broker.tls_key,
                           &b->o.broker.client_name,
                           &b->o.ns,
                           &b->o.daemon_addr,
                           &b->o.daemon_token,
                           &b->o.daemon_observer_token,
                           &b->o.daemon_ca_file,
                           &b->o.daemon_cert_file,
                           &b->o.daemon_key_file,
                           &b->o.state_dir};
  size_t n = sizeof fields / sizeof fields[0], total = 0;
  for (size_t i = 0; i < n; i++)
    total += *fields[i] ? strlen(*fields[i]) + 1 : 0;
  b->strings = malloc(total + 1);
  if (b->strings == NULL)
    return -1;
  char *p = b->strings;
  for (size_t i = 0; i < n; i++) {
    if (*fields[i] == NULL)
      continue;
    size_t len = strlen(*fields[i]) + 1;
    memcpy(p, *fields[i], len);
    *fields[i] = p;
    p += len;
  }
  return 0;
}

int tb_bridge_new(const tb_bridge_opts_t *o, tb_bridge_t **out, tb_client_err_t *err) {
  *out = NULL;
  if (o == NULL || o->broker.url == NULL)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "a broker URL is required");
  tb_broker_kind_t kind = tb_broker_kind(o->broker.url);
  if (kind == TB_BROKER_NONE)
    return tb__berr(err, TB_BRIDGE_ECONFIG,
                    "broker URL \"%.200s\": expected nats://, tls://, mqtt:// or mqtts://",
                    o->broker.url);
  const char *ns = o->ns ? o->ns : "default";
  int rc = tb__ns_check(ns, err);
  if (rc != 0)
    return rc;
  if (o->every < 0 || o->every > TB_PROTO_EVERY_MAX)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "every: expected 1..%d, got %lld", TB_PROTO_EVERY_MAX,
                    (long long)o->every);
  if (!(o->batch_hz >= 0 && o->batch_hz <= 1e6))
    return tb__berr(err, TB_BRIDGE_ECONFIG, "batch_hz: expected 0..1000000 per second");
  if (o->ctl_workers < 0 || o->ctl_workers > 16)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "ctl_workers: expected 0..16, got %d", o->ctl_workers);
  if (kind == TB_BROKER_MQTT &&
      (o->broker.token || o->broker.creds_file || o->broker.nkey_seed_file))
    return tb__berr(
        err, TB_BRIDGE_ECONFIG,
        "MQTT logs in with a user and password only (token, creds and nkey are NATS's)");
  tb_bridge_t *b = calloc(1, sizeof *b);
  if (b == NULL)
    return tb__berr(err, TB_CLIENT_ENOMEM, "out of memory");
  b->o = *o;
  if (copy_strings(b) != 0) {
    free(b);
    return tb__berr(err, TB_CLIENT_ENOMEM, "out of memory");
  }
  snprintf(b->ns, sizeof b->ns, "%s", ns);
  b->o.ns = b->ns;
  if (b->o.every == 0)
    b->o.every = 1;
  if (b->o.ctl_workers == 0)
    b->o.ctl_workers = 2;
  if (b->o.js_max_age_s <= 0)
    b->o.js_max_age_s = 7 * 24 * 3600;
  if (b->o.js_max_bytes <= 0)
    b->o.js_max_bytes = (int64_t)1 << 30;
  if (b->o.js_dup_window_s <= 0)
    b->o.js_dup_window_s = 120;
  b->kind = kind;
  b->be = kind == TB_BROKER_NATS ? &tb__nats_backend : &tb__mqtt_backend;
  atomic_init(&b->stopping, false);
  atomic_init(&b->broker_up, false);
  snprintf(b->daemon_state, sizeof b->daemon_state, "connecting");
  if (tb__queue_init(&b->q, b->o.queue_max) != 0) {
    free(b->strings);
    free(b);
    return tb__berr(err, TB_CLIENT_ENOMEM, "cannot make the queue");
  }
  pthread_mutex_init(&b->ctl_mu, NULL);
  pthread_cond_init(&b->ctl_cv, NULL);
  pthread_mutex_init(&b->stats_mu, NULL);
  *out = b;
  return 0;
}

void tb_bridge_free(tb_bridge_t *b) {
  if (b == NULL)
    return;
  tb__queue_destroy(&b->q);
  while (b->ctl_head != NULL) {
    tb__ctl_t *c = b->ctl_head;
    b->ctl_head = c->next;
    tb__ctl_free(c);
  }
  pthread_mutex_destroy(&b->ctl_mu);
  pthread_cond_destroy(&b->ctl_cv);
  pthread_mutex_destroy(&b->stats_mu);
  free(b->strings);
  free(b);
}

void tb_bridge_stop(tb_bridge_t *b) {
  atomic_store(&b->stopping, true);
}

/* ---------------------------------------------------------------- control -- */

tb__ctl_t *tb__ctl_new(const char *payload, size_t len) {
  tb__ctl_t *c = calloc(1, sizeof *c + len + 1);
  if (c == NULL)
    return NULL;
  if (len > 0)
    memcpy(c->payload, payload, len);
  c->len = len;
  return c;
}

void tb__ctl_free(tb__ctl_t *c) {
  if (c == NULL)
    return;
  free(c->reply_to);
  free(c->corr);
  free(c);
}

/* At most this many requests wait for a worker; past it they are answered
 * "overloaded" at once. */
#define CTL_QUEUE_MAX 256

void tb__ctl_submit(tb_bridge_t *b, tb__ctl_t *c) {
  c->next = NULL;
  pthread_mutex_lock(&b->ctl_mu);
  bool full = b->n_ctl >= CTL_QUEUE_MAX || atomic_load(&b->stopping);
  if (!full) {
    if (b->ctl_tail != NULL)
      b->ctl_tail->next = c;
    else
      b->ctl_head = c;
    b->ctl_tail = c;
    b->n_ctl++;
    pthread_cond_signal(&b->ctl_cv);
  }
  pthread_mutex_unlock(&b->ctl_mu);
  tb__stat_add(b, &b->st.ctl_requests, 1);
  if (full) {
    tb_buf_t r;
    tb_buf_init(&r);
    if (tb__reply_error(&r, TB_PROTO_EOVERLOADED, "overloaded",
                        atomic_load(&b->stopping)
                            ? "the bridge is stopping"
                            : "too many control requests are waiting; retry later") == 0 &&
        c->reply_to != NULL)
      b->be->reply(b, c, r.data, r.len);
    tb_buf_free(&r);
    tb__stat_add(b, &b->st.ctl_errors, 1);
    tb__ctl_free(c);
  }
}

/* -------------------------------------------------------------- publisher -- */

/* What the publisher knows of a run: the daemon's view (from `runs`) kept up
 * to date by every event it publishes. */
typedef struct prun_s {
  tb_run_info_t info;
  int64_t status_ms; /* when its status was last published */
  bool status_dirty;
  bool status_failed; /* the last attempt failed; try again on the next tick */
} prun_t;

typedef struct pub_s {
  tb_bridge_t *b;
  prun_t *runs;
  int n_runs, cap_runs;
  bool runs_dirty;
  int64_t bridge_ms; /* when the bridge's state was last published */
  tb_buf_t buf;
} pub_t;

static prun_t *prun_get(pub_t *p, const char *run) {
  for (int i = 0; i < p->n_runs; i++)
    if (strcmp(p->runs[i].info.id, run) == 0)
      return &p->runs[i];
  if (p->n_runs == p->cap_runs) {
    int cap = p->cap_runs ? p->cap_runs * 2 : 16;
    prun_t *r = realloc(p->runs, (size_t)cap * sizeof *r);
    if (r == NULL)
      return NULL;
    p->runs = r;
    p->cap_runs = cap;
  }
  prun_t *r = &p->runs[p->n_runs++];
  memset(r, 0, sizeof *r);
  snprintf(r->info.id, sizeof r->info.id, "%s", run);
  r->info.state = TB_RUN_QUEUED;
  r->info.epoch = -1;
  r->info.batch = -1;
  p->runs_dirty = true;
  return r;
}

/* Publishes with the broker's own retry semantics: the same message again
 * after a transient failure, until it is taken, or the drain deadline of a
 * stopping bridge passes. */
static int publish_retry(tb_bridge_t *b, const tb__msg_t *m) {
  int delay = 50;
  bool logged = false;
  for (;;) {
    tb_client_err_t err = {0};
    int rc = b->be->publish(b, m, &err);
    if (rc == 0) {
      if (logged)
        tb__blog(b, 1, "the broker takes messages again");
      return 0;
    }
    if (rc != TB__EAGAIN) {
      tb__blog(b, 0, "the broker refused %s seq %lld of run %s: %s",
               m->name ? m->name : "a message", (long long)m->seq, m->run ? m->run : "-", err.msg);
      return rc;
    }
    if (!logged) {
      tb__blog(b, 1, "the broker does not take messages (%s); holding events and trying again",
               err.msg);
      logged = true;
    }
    tb__stat_add(b, &b->st.retries, 1);
    if (atomic_load(&b->stopping) && tb__mono_ms() >= b->drain_deadline_ms)
      return rc;
    struct timespec ts = {0, (long)delay * 1000000L};
    nanosleep(&ts, NULL);
    delay = delay < 500 ? delay * 2 : 1000;
  }
}

static void publish_status(pub_t *p, prun_t *r) {
  tb_bridge_t *b = p->b;
  p->buf.len = 0;
  if (tb_json_run_info(&p->buf, &r->info) != 0)
    return;
  tb__msg_t m = {.kind = TB__TOPIC_STATUS,
                 .run = r->info.id,
                 .seq = r->info.last_seq,
                 .data = p->buf.data,
                 .len = p->buf.len};
  tb_client_err_t err = {0};
  int rc = b->be->publish(b, &m, &err);
  r->status_failed = rc != 0;
  if (rc == 0) {
    r->status_dirty = false;
    r->status_ms = tb__mono_ms();
  }
}

/* {"runs":[run objects]}, oldest first as the protocol's `runs`; when the
 * list is larger than the broker takes, the oldest runs are left out and
 * counted in "omitted". */
static void publish_runs(pub_t *p) {
  tb_bridge_t *b = p->b;
  size_t max = b->be->max_payload(b);
  for (int skip = 0; skip <= p->n_runs; skip++) {
    tb_buf_t *o = &p->buf;
    o->len = 0;
    int rc = tb_buf_append(o, "{\"runs\":[", 9);
    for (int i = skip; rc == 0 && i < p->n_runs; i++)
      rc = (i > skip && tb_buf_append(o, ",", 1)) || tb_json_run_info(o, &p->runs[i].info);
    rc = rc || tb_buf_append(o, "]", 1);
    if (rc == 0 && skip > 0)
      rc = tb_buf_append(o, ",\"omitted\":", 11) || tb_json_int(o, skip);
    rc = rc || tb_buf_append(o, "}", 1);
    if (rc != 0)
      return;
    tb__msg_t m = {.kind = TB__TOPIC_RUNS, .data = o->data, .len = o->len};
    if (max != 0 && o->len + b->be->overhead(b, &m) > max && skip < p->n_runs)
      continue;
    tb_client_err_t err = {0};
    if (b->be->publish(b, &m, &err) == 0)
      p->runs_dirty = false;
    return;
  }
}

/* The bridge's own state: online, whether it reaches the daemon, counters. */
static void bridge_json(tb_bridge_t *b, tb_buf_t *o, bool online) {
  tb_bridge_stats_t s;
  tb_bridge_stats(b, &s);
  char daemon[32];
  pthread_mutex_lock(&b->stats_mu);
  snprintf(daemon, sizeof daemon, "%s", b->daemon_state);
  pthread_mutex_unlock(&b->stats_mu);
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  o->len = 0;
  int rc = tb_buf_append(o, "{\"online\":", 10) ||
           tb_buf_append(o, online ? "true" : "false", online ? 4 : 5) ||
           tb_buf_append(o, ",\"ns\":", 6) || tb_json_str(o, b->ns) ||
           tb_buf_append(o, ",\"daemon\":", 10) || tb_json_str(o, online ? daemon : "gone") ||
           tb_buf_append(o, ",\"time\":", 8) ||
           tb_json_num(o, (double)now.tv_sec + (double)(now.tv_nsec / 1000) * 1e-6);
#define NUM(k, v) (rc = rc || tb_buf_append(o, ",\"" k "\":", sizeof(k) + 3) || tb_json_int(o, v))
  NUM("received", s.received);
  NUM("published", s.published);
  NUM("sampled_out", s.sampled_out);
  NUM("dropped_batch", s.dropped_batch);
  NUM("truncated", s.truncated);
  NUM("caught_up", s.caught_up);
  NUM("retries", s.retries);
  NUM("ctl_requests", s.ctl_requests);
  NUM("ctl_errors", s.ctl_errors);
  NUM("daemon_reconnects", s.daemon_reconnects);
  NUM("broker_reconnects", s.broker_reconnects);
  NUM("queued", (int64_t)s.queued);
#undef NUM
  if (rc || tb_buf_append(o, "}", 1))
    o->len = 0;
}

static void publish_bridge(pub_t *p) {
  tb_bridge_t *b = p->b;
  bridge_json(b, &p->buf, true);
  if (p->buf.len == 0)
    return;
  tb__msg_t m = {.kind = TB__TOPIC_BRIDGE, .data = p->buf.data, .len = p->buf.len};
  tb_client_err_t err = {0};
  b->be->publish(b, &m, &err);
  p->bridge_ms = tb__mono_ms();
}

static void apply(prun_t *r, const tb__item_t *it) {
  tb_run_info_t *i = &r->info;
  if (it->kind == TB__ITEM_RUNINFO) {
    /* The daemon's view is the status only once the broker holds every
     * event up to it (it->seq: where the broker stands); until then the
     * events yet to be published move the status, and only the number of
     * epochs (in no event) is taken. */
    i->epochs = it->info.epochs;
    if (it->info.last_seq <= it->seq && it->info.last_seq >= i->last_seq) {
      char id[TB_PROTO_RUN_MAX];
      memcpy(id, i->id, sizeof id);
      *i = it->info;
      memcpy(i->id, id, sizeof id);
    }
    return;
  }
  if (it->seq > i->last_seq)
    i->last_seq = it->seq;
  if (it->info.epoch >= 0)
    i->epoch = it->info.epoch;
  if (it->batch) {
    if (strncmp(it->name, "train_", 6) == 0)
      i->batch = it->info.batch;
  } else if (strcmp(it->name, "epoch_begin") == 0 || strcmp(it->name, "epoch_end") == 0) {
    i->batch = -1;
  }
  if (it->has_state)
    i->state = it->info.state;
  if (it->has_lr) {
    i->has_lr = true;
    i->lr = it->info.lr;
  }
}

/* Publishes one event, as a stub when it is larger than the broker takes. */
static void publish_event(pub_t *p, tb__item_t *it) {
  tb_bridge_t *b = p->b;
  tb__msg_t m = {.kind = TB__TOPIC_EVENT,
                 .run = it->run,
                 .name = it->name,
                 .seq = it->seq,
                 .batch = it->batch,
                 .data = it->payload,
                 .len = it->len};
  size_t max = b->be->max_payload(b);
  if (max != 0 && it->len + b->be->overhead(b, &m) > max) {
    tb_event_t ev = {.run = it->run,
                     .seq = it->seq,
                     .name = it->name,
                     .epoch = it->info.epoch,
                     .batch = it->batch ? it->info.batch : -1,
                     .time_us = it->time_us};
    p->buf.len = 0;
    if (tb__event_stub(&p->buf, &ev, it->len) != 0 || p->buf.len + b->be->overhead(b, &m) > max) {
      tb__blog(b, 0, "run %s seq %lld (%s, %zu bytes) does not fit the broker's %zu bytes", it->run,
               (long long)it->seq, it->name, it->len, max);
      return;
    }
    tb__blog(b, 1, "run %s seq %lld (%s) is %zu bytes, over the broker's limit of %zu: sent a stub",
             it->run, (long long)it->seq, it->name, it->len, max);
    m.data = p->buf.data;
    m.len = p->buf.len;
    tb__stat_add(b, &b->st.truncated, 1);
  }
  if (publish_retry(b, &m) == 0)
    tb__stat_add(b, &b->st.published, 1);
}

static void publisher(tb_bridge_t *b) {
  pub_t p = {.b = b};
  tb_buf_init(&p.buf);
  publish_bridge(&p);
  bool draining = false;
  for (;;) {
    if (!draining && atomic_load(&b->stopping)) {
      draining = true;
      b->drain_deadline_ms = tb__mono_ms() + 2000;
    }
    if (draining && (tb__queue_len(&b->q) == 0 || tb__mono_ms() >= b->drain_deadline_ms))
      break;
    tb__item_t *it = tb__queue_pop(&b->q, 100);
    int64_t now = tb__mono_ms();
    if (it != NULL) {
      prun_t *r = prun_get(&p, it->run);
      if (r != NULL) {
        tb_run_state_t before = r->info.state;
        if (it->kind == TB__ITEM_EVENT)
          publish_event(&p, it);
        apply(r, it);
        r->status_dirty = true;
        if (r->info.state != before)
          p.runs_dirty = true;
        /* Lifecycle events move the status at once; batch events at most
         * once a second per run. */
        if (it->kind == TB__ITEM_RUNINFO || !it->batch || now - r->status_ms >= 1000)
          publish_status(&p, r);
      }
      free(it);
      if (p.runs_dirty && tb__queue_len(&b->q) == 0)
        publish_runs(&p);
      continue;
    }
    /* Idle: whatever is still owed. */
    for (int i = 0; i < p.n_runs; i++)
      if (p.runs[i].status_dirty)
        publish_status(&p, &p.runs[i]);
    if (p.runs_dirty)
      publish_runs(&p);
    if (now - p.bridge_ms >= 5000)
      publish_bridge(&p);
  }
  for (int i = 0; i < p.n_runs; i++)
    if (p.runs[i].status_dirty)
      publish_status(&p, &p.runs[i]);
  free(p.runs);
  tb_buf_free(&p.buf);
}

/* ---------------------------------------------------------------------- run -- */

int tb_bridge_run(tb_bridge_t *b, tb_client_err_t *err) {
  tb_client_err_t local;
  if (err == NULL)
    err = &local;
  memset(err, 0, sizeof *err);
  bool told = false;
  for (;;) {
    if (atomic_load(&b->stopping))
      return 0;
    int rc = b->be->open(b, err);
    if (rc == 0)
      break;
    if (rc != TB__EAGAIN)
      return rc;
    if (!told)
      tb__blog(b, 1, "cannot reach the broker yet (%s); trying again every second", err->msg);
    told = true;
    tb__nap(b, 1000);
  }
  atomic_store(&b->broker_up, true);
  tb__blog(b, 1, "connected to %s (%s), namespace %s", b->o.broker.url, b->be->name, b->ns);

  int rc = pthread_create(&b->reader, NULL, tb__reader_main, b);
  if (rc != 0) {
    atomic_store(&b->stopping, true);
    b->be->close(b, "{\"online\":false}", 16);
    return tb__berr(err, -rc, "cannot start the reader thread: %s", strerror(rc));
  }
  b->reader_started = true;
  for (int i = 0; i < b->o.ctl_workers; i++)
    if (pthread_create(&b->ctl_threads[b->n_ctl_threads], NULL, tb__ctl_main, b) == 0)
      b->n_ctl_threads++;

  publisher(b);

  atomic_store(&b->stopping, true);
  pthread_join(b->reader, NULL);
  pthread_mutex_lock(&b->ctl_mu);
  pthread_cond_broadcast(&b->ctl_cv);
  pthread_mutex_unlock(&b->ctl_mu);
  for (int i = 0; i < b->n_ctl_threads; i++)
    pthread_join(b->ctl_threads[i], NULL);
  tb_buf_t o;
  tb_buf_init(&o);
  bridge_json(b, &o, false);
  b->be->close(b, o.data ? o.data : "{\"online\":false}", o.data ? o.len : 16);
  tb_buf_free(&o);
  return 0;
}
