/* The NATS side of the bridge, through libnats in its default threaded mode
 * (a reader and a flusher thread per connection, a dispatch thread for the
 * control subscription); not the libuv adapter, whose copy in Debian's
 * libnats 3.4.1 predates its crash fixes (scaleout-anchors.md §1.8).
 *
 * Events are published to JetStream one at a time with js_PublishMsg, which
 * waits for the stream's acknowledgement: the next event goes only once the
 * previous one is stored, so the stream holds every run's events in seq
 * order even across failures (a timed-out publish is repeated with the same
 * Nats-Msg-Id, which the stream deduplicates). About 10,000 a second on
 * loopback with file storage: far more than lifecycle events and sampled
 * batch events need. */
#include "brokers.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct nats_s {
  natsOptions *opts;
  natsConnection *nc;
  jsCtx *js;
  natsSubscription *ctl_sub;
  tb__once_t ctl_done; /* the control subscription's last callback returned */
  tb__once_t closed;   /* the connection's closed callback ran: no more callbacks */
  char stream[48], last_stream[48];
} nats_t;

void tb__once_init(tb__once_t *o) {
  pthread_mutex_init(&o->mu, NULL);
  pthread_cond_init(&o->cv, NULL);
  o->done = false;
}

void tb__once_signal(void *closure) {
  tb__once_t *o = closure;
  pthread_mutex_lock(&o->mu);
  o->done = true;
  pthread_cond_broadcast(&o->cv);
  pthread_mutex_unlock(&o->mu);
}

bool tb__once_wait(tb__once_t *o, int timeout_ms) {
  int64_t end = tb__mono_ms() + timeout_ms;
  pthread_mutex_lock(&o->mu);
  while (!o->done && tb__mono_ms() < end) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&o->cv, &o->mu, &ts);
  }
  bool done = o->done;
  pthread_mutex_unlock(&o->mu);
  pthread_mutex_destroy(&o->mu);
  pthread_cond_destroy(&o->cv);
  return done;
}

static nats_t *st(tb_bridge_t *b) {
  return b->be_state;
}

static int fail(tb_client_err_t *err, int code, const char *what, natsStatus s, jsErrCode jerr) {
  const char *last = nats_GetLastError(NULL);
  if (jerr != 0)
    return tb__berr(err, code, "%s: %s (JetStream error %d%s%s)", what, natsStatus_GetText(s),
                    (int)jerr, last ? ": " : "", last ? last : "");
  return tb__berr(err, code, "%s: %s%s%s", what, natsStatus_GetText(s), last ? ": " : "",
                  last ? last : "");
}

/* ------------------------------------------------------------- callbacks -- */

static void on_disconnected(natsConnection *nc, void *closure) {
  tb_bridge_t *b = closure;
  if (!atomic_load(&b->stopping))
    tb__blog(b, 1, "disconnected from the NATS server; reconnecting");
}

static void on_reconnected(natsConnection *nc, void *closure) {
  tb_bridge_t *b = closure;
  tb__stat_add(b, &b->st.broker_reconnects, 1);
  char url[256] = "";
  natsConnection_GetConnectedUrl(nc, url, sizeof url);
  tb__blog(b, 1, "reconnected to the NATS server %s", url);
}

static void on_closed(natsConnection *nc, void *closure) {
  tb__once_signal(&((nats_t *)closure)->closed);
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure) {
  tb_bridge_t *b = closure;
  const char *last = NULL;
  natsConnection_GetLastError(nc, &last);
  tb__blog(b, 0, "NATS: %s%s%s", natsStatus_GetText(err), last ? ": " : "", last ? last : "");
}

/* A control request: read its subject, hand it to the workers. */
static void on_ctl(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  tb_bridge_t *b = closure;
  const char *subj = natsMsg_GetSubject(msg), *reply = natsMsg_GetReply(msg);
  tb__ctl_t *c = tb__ctl_new(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
  if (c != NULL) {
    tb_proto_err_t perr = {0};
    if (tb__ctl_topic_parse(subj, strlen(subj), '.', b->ns, c->run, c->method, &perr) != 0) {
      c->topic_error = perr.code;
      snprintf(c->topic_msg, sizeof c->topic_msg, "%s", perr.msg);
    }
    if (reply != NULL && reply[0] != '\0' && (c->reply_to = strdup(reply)) == NULL) {
      tb__ctl_free(c);
      c = NULL;
    }
  }
  natsMsg_Destroy(msg);
  if (c != NULL)
    tb__ctl_submit(b, c);
}

/* ------------------------------------------------------------------ open -- */

static char *read_seed(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return NULL;
  char line[256], *seed = NULL;
  while (fgets(line, sizeof line, f) != NULL) {
    line[strcspn(line, "\r\n \t")] = '\0';
    if (line[0] == 'S' && line[1] == 'U') {
      seed = strdup(line);
      break;
    }
  }
  fclose(f);
  return seed;
}

static int set_login(const tb_broker_opts_t *o, natsOptions *opts, tb_client_err_t *err) {
  natsStatus s = NATS_OK;
  if (o->user != NULL)
    s = natsOptions_SetUserInfo(opts, o->user, o->password ? o->password : "");
  if (s == NATS_OK && o->token != NULL)
    s = natsOptions_SetToken(opts, o->token);
  if (s == NATS_OK && o->creds_file != NULL)
    s = natsOptions_SetUserCredentialsFromFiles(opts, o->creds_file, NULL);
  if (s != NATS_OK)
    return fail(err, TB_BRIDGE_ECONFIG, "NATS login options", s, 0);
  if (o->nkey_seed_file != NULL) {
    char *seed = read_seed(o->nkey_seed_file);
    if (seed == NULL)
      return tb__berr(err, TB_BRIDGE_ECONFIG, "%s: no nkey user seed (a line starting SU)",
                      o->nkey_seed_file);
    char pub[128];
    int rc = tb__nkey_public(seed, pub, sizeof pub, err);
    memset(seed, 0, strlen(seed));
    free(seed);
    if (rc != 0)
      return rc;
    if ((s = natsOptions_SetNKeyFromSeed(opts, pub, o->nkey_seed_file)) != NATS_OK)
      return fail(err, TB_BRIDGE_ECONFIG, o->nkey_seed_file, s, 0);
  }
  return 0;
}

static int set_tls(const tb_broker_opts_t *o, natsOptions *opts, tb_client_err_t *err) {
  bool tls = strncmp(o->url, "tls://", 6) == 0 || o->tls_ca || o->tls_cert || o->tls_key;
  if (!tls)
    return 0;
  natsStatus s = natsOptions_SetSecure(opts, true);
  if (s == NATS_OK && o->tls_ca != NULL)
    s = natsOptions_LoadCATrustedCertificates(opts, o->tls_ca);
  if (s == NATS_OK && (o->tls_cert != NULL || o->tls_key != NULL)) {
    if (o->tls_cert == NULL || o->tls_key == NULL)
      return tb__berr(err, TB_BRIDGE_ECONFIG, "TLS: a client certificate needs its key, and back");
    s = natsOptions_LoadCertificatesChain(opts, o->tls_cert, o->tls_key);
  }
  return s == NATS_OK ? 0 : fail(err, TB_BRIDGE_ECONFIG, "TLS", s, 0);
}

int tb__nats_options(const tb_broker_opts_t *o, const char *default_name, natsOptions **out,
                     tb_client_err_t *err) {
  natsOptions *opts = NULL;
  *out = NULL;
  natsStatus s = natsOptions_Create(&opts);
  if (s != NATS_OK)
    return fail(err, TB_CLIENT_ENOMEM, "NATS options", s, 0);
  int timeout = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000;
  if ((s = natsOptions_SetURL(opts, o->url)) != NATS_OK) {
    natsOptions_Destroy(opts);
    return fail(err, TB_BRIDGE_ECONFIG, o->url, s, 0);
  }
  s = natsOptions_SetName(opts, o->client_name ? o->client_name : default_name);
  if (s == NATS_OK)
    s = natsOptions_SetTimeout(opts, timeout);
  if (s == NATS_OK)
    s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK)
    s = natsOptions_SetReconnectWait(opts, 250);
  /* A server that stops answering (kill -STOP) is noticed within about
   * three seconds instead of libnats's default two minutes. */
  if (s == NATS_OK)
    s = natsOptions_SetPingInterval(opts, 1000);
  if (s == NATS_OK)
    s = natsOptions_SetMaxPingsOut(opts, 2);
  if (s == NATS_OK)
    s = natsOptions_SetFailRequestsOnDisconnect(opts, true);
  if (s != NATS_OK) {
    natsOptions_Destroy(opts);
    return fail(err, TB_CLIENT_ENOMEM, "NATS options", s, 0);
  }
  int rc = set_login(o, opts, err);
  if (rc == 0)
    rc = set_tls(o, opts, err);
  if (rc != 0) {
    natsOptions_Destroy(opts);
    return rc;
  }
  *out = opts;
  return 0;
}

int tb__nats_connect_code(natsStatus s) {
  switch (s) {
  case NATS_NO_SERVER:
  case NATS_TIMEOUT:
  case NATS_IO_ERROR:
  case NATS_CONNECTION_CLOSED:
  case NATS_CONNECTION_DISCONNECTED:
    return TB__EAGAIN;
  case NATS_CONNECTION_AUTH_FAILED:
  case NATS_NOT_PERMITTED:
    return TB_BRIDGE_EBROKER_AUTH;
  default:
    return TB_BRIDGE_EBROKER;
  }
}

static int add_stream(tb_bridge_t *b, jsStreamConfig *cfg, tb_client_err_t *err) {
  nats_t *n = st(b);
  jsErrCode jerr = 0;
  natsStatus s = js_AddStream(NULL, n->js, cfg, NULL, &jerr);
  if (s == NATS_OK)
    return 0;
  if (jerr == JSStreamNameExistErr) {
    jerr = 0;
    s = js_UpdateStream(NULL, n->js, cfg, NULL, &jerr);
    if (s != NATS_OK)
      tb__blog(b, 0,
               "stream %s exists with a configuration that cannot be changed to ours (%s, %d); "
               "using it as it is",
               cfg->Name, natsStatus_GetText(s), (int)jerr);
    return 0;
  }
  if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledForAccountErr)
    return tb__berr(err, TB_BRIDGE_EBROKER,
                    "stream %s: JetStream is not enabled on this NATS server or account (start "
                    "nats-server with -js, or give the account JetStream limits)",
                    cfg->Name);
  if (s == NATS_TIMEOUT)
    return fail(err, TB__EAGAIN, cfg->Name, s, jerr);
  return fail(err, TB_BRIDGE_EBROKER, cfg->Name, s, jerr);
}

static int make_streams(tb_bridge_t *b, tb_client_err_t *err) {
  nats_t *n = st(b);
  char evt[TB__SUBJECT_MAX], status[TB__SUBJECT_MAX], runs[TB__SUBJECT_MAX],
      bridge[TB__SUBJECT_MAX];
  tb__topic(evt, '.', TB__TOPIC_EVENT, b->ns, "*", ">");
  tb__topic(status, '.', TB__TOPIC_STATUS, b->ns, "*", NULL);
  tb__topic(runs, '.', TB__TOPIC_RUNS, b->ns, NULL, NULL);
  tb__topic(bridge, '.', TB__TOPIC_BRIDGE, b->ns, NULL, NULL);

  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  const char *s1[] = {evt};
  cfg.Name = n->stream;
  cfg.Description = "trainbus events (lifecycle, state, control, sampled batch)";
  cfg.Subjects = s1;
  cfg.SubjectsLen = 1;
  cfg.Retention = js_LimitsPolicy;
  cfg.MaxAge = b->o.js_max_age_s * 1000000000LL;
  cfg.MaxBytes = b->o.js_max_bytes;
  cfg.Discard = js_DiscardOld;
  cfg.Storage = b->o.js_memory ? js_MemoryStorage : js_FileStorage;
  cfg.Duplicates = b->o.js_dup_window_s * 1000000000LL;
  int rc = add_stream(b, &cfg, err);
  if (rc != 0)
    return rc;

  jsStreamConfig_Init(&cfg);
  const char *s2[] = {status, runs, bridge};
  cfg.Name = n->last_stream;
  cfg.Description = "trainbus: the latest status of each run, the run list, the bridge";
  cfg.Subjects = s2;
  cfg.SubjectsLen = 3;
  cfg.Retention = js_LimitsPolicy;
  cfg.MaxMsgsPerSubject = 1;
  cfg.MaxAge = b->o.js_max_age_s * 1000000000LL;
  cfg.MaxBytes = b->o.js_max_bytes / 16 > (64 << 20) ? 64 << 20 : b->o.js_max_bytes / 16;
  cfg.Discard = js_DiscardOld;
  cfg.Storage = b->o.js_memory ? js_MemoryStorage : js_FileStorage;
  return add_stream(b, &cfg, err);
}

/* Stops the control subscription and waits until its last callback has
 * returned (libnats calls it on a dispatch thread of its own). */
static void stop_ctl(nats_t *n) {
  if (n->ctl_sub == NULL)
    return;
  if (natsSubscription_Unsubscribe(n->ctl_sub) == NATS_OK)
    tb__once_wait(&n->ctl_done, 5000);
  natsSubscription_Destroy(n->ctl_sub);
  n->ctl_sub = NULL;
}

static void nats_cleanup(tb_bridge_t *b) {
  nats_t *n = st(b);
  if (n == NULL)
    return;
  stop_ctl(n);
  jsCtx_Destroy(n->js);
  if (n->nc != NULL) {
    /* The connection's callbacks (disconnected, closed) run on libnats's
     * own thread after Close returns: wait for the last, closed, before
     * anything they use goes. */
    natsConnection_Close(n->nc);
    tb__once_wait(&n->closed, 5000);
    natsConnection_Destroy(n->nc);
  }
  natsOptions_Destroy(n->opts);
  free(n);
  b->be_state = NULL;
}

static int nats_open(tb_bridge_t *b, tb_client_err_t *err) {
  nats_cleanup(b);
  nats_t *n = calloc(1, sizeof *n);
  if (n == NULL)
    return tb__berr(err, TB_CLIENT_ENOMEM, "out of memory");
  b->be_state = n;
  tb__once_init(&n->ctl_done);
  tb__once_init(&n->closed);
  snprintf(n->stream, sizeof n->stream, "TB_%s", b->ns);
  snprintf(n->last_stream, sizeof n->last_stream, "TB_%s_LAST", b->ns);
  char name[64];
  snprintf(name, sizeof name, "trainbus-bridge:%s", b->ns);
  int rc = tb__nats_options(&b->o.broker, name, &n->opts, err);
  natsStatus s = NATS_OK;
  if (rc == 0)
    s = natsOptions_SetDisconnectedCB(n->opts, on_disconnected, b);
  if (rc == 0 && s == NATS_OK)
    s = natsOptions_SetReconnectedCB(n->opts, on_reconnected, b);
  if (rc == 0 && s == NATS_OK)
    s = natsOptions_SetErrorHandler(n->opts, on_error, b);
  if (rc == 0 && s == NATS_OK)
    s = natsOptions_SetClosedCB(n->opts, on_closed, n);
  if (rc == 0 && s != NATS_OK)
    rc = fail(err, TB_CLIENT_ENOMEM, "NATS options", s, 0);
  if (rc == 0 && (s = natsConnection_Connect(&n->nc, n->opts)) != NATS_OK)
    rc = fail(err, tb__nats_connect_code(s), b->o.broker.url, s, 0);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 2000;
  if (rc == 0 && (s = natsConnection_JetStream(&n->js, n->nc, &jo)) != NATS_OK)
    rc = fail(err, TB_BRIDGE_EBROKER, "JetStream", s, 0);
  if (rc == 0)
    rc = make_streams(b, err);
  char ctl[TB__SUBJECT_MAX];
  tb__topic(ctl, '.', TB__TOPIC_CTL, b->ns, "*", "*");
  if (rc == 0 && (s = natsConnection_QueueSubscribe(&n->ctl_sub, n->nc, ctl, "trainbus-bridge",
                                                    on_ctl, b)) != NATS_OK)
    rc = fail(err, TB_BRIDGE_EBROKER, ctl, s, 0);
  if (rc == 0) {
    natsSubscription_SetPendingLimits(n->ctl_sub, 4096, 64 << 20);
    natsSubscription_SetOnCompleteCB(n->ctl_sub, tb__once_signal, &n->ctl_done);
  }
  if (rc == 0 && (s = natsConnection_FlushTimeout(n->nc, 2000)) != NATS_OK)
    rc = fail(err, TB__EAGAIN, "NATS flush", s, 0);
  if (rc != 0)
    nats_cleanup(b);
  return rc;
}

/* -------------------------------------------------------------- publish -- */

static size_t nats_max_payload(tb_bridge_t *b) {
  nats_t *n = st(b);
  int64_t m = n && n->nc ? natsConnection_GetMaxPayload(n->nc) : 0;
  return m > 0 ? (size_t)m : 0;
}

/* The header block nats_publish makes: "NATS/1.0\r\n", "Key: value\r\n"
 * each, "\r\n"; max_payload counts it with the body. */
static size_t nats_overhead(tb_bridge_t *b, const tb__msg_t *m) {
  if (m->run == NULL)
    return 0;
  char seq[24];
  size_t rl = strlen(m->run), sl = (size_t)snprintf(seq, sizeof seq, "%lld", (long long)m->seq);
  size_t n = 10 + (8 + rl + 2) + (8 + sl + 2) + 2;
  if (m->kind == TB__TOPIC_EVENT)
    n += 13 + rl + 1 + sl + 2;
  return n;
}

static int nats_publish(tb_bridge_t *b, const tb__msg_t *m, tb_client_err_t *err) {
  nats_t *n = st(b);
  char subj[TB__SUBJECT_MAX], seq[24], id[TB_PROTO_RUN_MAX + 24];
  tb__topic(subj, '.', m->kind, b->ns, m->run, m->name);
  natsMsg *msg = NULL;
  natsStatus s = natsMsg_Create(&msg, subj, NULL, m->data, (int)m->len);
  jsPubOptions po;
  jsPubOptions_Init(&po);
  if (s == NATS_OK && m->run != NULL) {
    snprintf(seq, sizeof seq, "%lld", (long long)m->seq);
    s = natsMsgHeader_Set(msg, "Tb-Run", m->run);
    if (s == NATS_OK)
      s = natsMsgHeader_Set(msg, "Tb-Seq", seq);
    if (m->kind == TB__TOPIC_EVENT) {
      snprintf(id, sizeof id, "%s:%lld", m->run, (long long)m->seq);
      po.MsgId = id;
    }
  }
  if (s != NATS_OK) {
    natsMsg_Destroy(msg);
    return fail(err, TB_CLIENT_ENOMEM, "message", s, 0);
  }
  jsPubAck *pa = NULL;
  jsErrCode jerr = 0;
  s = js_PublishMsg(&pa, n->js, msg, &po, &jerr);
  natsMsg_Destroy(msg);
  if (s == NATS_OK) {
    if (pa != NULL && pa->Duplicate)
      tb__blog(b, 2, "%s seq %lld: the stream already had it", subj, (long long)m->seq);
    jsPubAck_Destroy(pa);
    return 0;
  }
  switch (s) {
  case NATS_TIMEOUT:
  case NATS_NO_RESPONDERS:
  case NATS_CONNECTION_DISCONNECTED:
  case NATS_CONNECTION_CLOSED:
  case NATS_NOT_YET_CONNECTED:
  case NATS_INSUFFICIENT_BUFFER:
  case NATS_IO_ERROR:
    return fail(err, TB__EAGAIN, subj, s, jerr);
  default:
    break;
  }
  if (jerr == JSStreamNotFoundErr) {
    /* Someone deleted a stream: make it again, then try again. */
    tb_client_err_t e2 = {0};
    if (make_streams(b, &e2) != 0)
      tb__blog(b, 0, "cannot make the streams again: %s", e2.msg);
    return fail(err, TB__EAGAIN, subj, s, jerr);
  }
  if (jerr == JSInsufficientResourcesErr)
    return fail(err, TB__EAGAIN, subj, s, jerr);
  return fail(err, TB_BRIDGE_EBROKER, subj, s, jerr);
}

static int nats_stored_seq(tb_bridge_t *b, const char *run, int64_t *seq, tb_client_err_t *err) {
  nats_t *n = st(b);
  *seq = 0;
  char subj[TB__SUBJECT_MAX];
  tb__topic(subj, '.', TB__TOPIC_EVENT, b->ns, run, ">");
  natsMsg *msg = NULL;
  jsErrCode jerr = 0;
  natsStatus s = js_GetLastMsg(&msg, n->js, n->stream, subj, NULL, &jerr);
  if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
    return 0;
  if (s != NATS_OK)
    return fail(err, TB__EAGAIN, subj, s, jerr);
  const char *v = NULL;
  if (natsMsgHeader_Get(msg, "Tb-Seq", &v) != NATS_OK || v == NULL ||
      tb__seq_parse(v, strlen(v), seq) != 0) {
    tb__blog(b, 0, "%s: the last message has no Tb-Seq header; publishing run %s from seq 1", subj,
             run);
    *seq = 0;
  }
  natsMsg_Destroy(msg);
  return 0;
}

static int nats_reply(tb_bridge_t *b, const tb__ctl_t *c, const char *json, size_t len) {
  nats_t *n = st(b);
  size_t max = nats_max_payload(b);
  tb_buf_t small;
  tb_buf_init(&small);
  if (max != 0 && len > max) {
    char msg[160];
    snprintf(msg, sizeof msg, "the daemon's answer is %zu bytes, over the broker's max_payload %zu",
             len, max);
    tb__reply_error(&small, TB_PROTO_ETOO_LARGE, "too_large", msg);
    json = small.data;
    len = small.len;
  }
  natsStatus s = natsConnection_Publish(n->nc, c->reply_to, json, (int)len);
  tb_buf_free(&small);
  if (s != NATS_OK) {
    tb__blog(b, 0, "cannot answer on %s: %s", c->reply_to, natsStatus_GetText(s));
    return TB_BRIDGE_EBROKER;
  }
  return 0;
}

static void nats_close(tb_bridge_t *b, const char *json, size_t len) {
  nats_t *n = st(b);
  if (n == NULL)
    return;
  /* Stop taking requests first, then say the bridge is gone. */
  stop_ctl(n);
  if (n->js != NULL) {
    char subj[TB__SUBJECT_MAX];
    tb__topic(subj, '.', TB__TOPIC_BRIDGE, b->ns, NULL, NULL);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 1000;
    js_Publish(NULL, n->js, subj, json, (int)len, &po, NULL);
  }
  nats_cleanup(b);
}

const tb__backend_t tb__nats_backend = {
    .name = "NATS JetStream",
    .open = nats_open,
    .publish = nats_publish,
    .stored_seq = nats_stored_seq,
    .reply = nats_reply,
    .max_payload = nats_max_payload,
    .overhead = nats_overhead,
    .close = nats_close,
};
