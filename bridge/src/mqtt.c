/* The MQTT side of the bridge, through libmosquitto with its own network
 * thread (mosquitto_loop_start), MQTT 5.
 *
 * The same tree as NATS with '/' for '.': lifecycle, state and control
 * events at QoS 1, batch events at QoS 0, the status of each run, the run
 * list and the bridge's state retained, and a retained last will on
 * tb/NS/bridge saying the bridge is gone. A QoS 1 event is published only
 * once the previous one was acknowledged (PUBACK), so subscribers get them
 * in seq order; one not acknowledged within a few seconds is sent again
 * (QoS 1 is at-least-once: a subscriber may see a seq twice and skips it).
 *
 * MQTT keeps no history, so after a bridge restart the bridge learns where
 * each run stands from the retained status messages (their last_seq) and
 * catches up from the daemon from there. Control requests are MQTT 5
 * request/response: the answer goes to the request's response topic with
 * its correlation data. */
#include "brokers.h"

#include <mqtt_protocol.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Message ids are 16 bits; the acknowledgement of each is remembered by
 * when it came (a running count), so the publisher can wait for its own
 * among any number of others (QoS 0 messages report too). */
#define N_MIDS 65536

typedef struct seen_s {
  char run[TB_PROTO_RUN_MAX];
  int64_t seq;
} seen_t;

typedef struct mqtt_s {
  struct mosquitto *m;
  char host[256];
  int port;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool connected, ever_connected;
  int connack; /* the last CONNACK's reason code */
  size_t max_packet;
  uint32_t n_acked;          /* acknowledgements so far */
  uint32_t acked_at[N_MIDS]; /* n_acked when mid's came */
  uint8_t acked_rc[N_MIDS];  /* its reason code */
  /* Retained statuses read at start: where each run stands on the broker. */
  bool collecting;
  int64_t last_status_ms;
  seen_t *seen;
  int n_seen, cap_seen;
} mqtt_t;

static mqtt_t *st(tb_bridge_t *b) {
  return b->be_state;
}

/* ------------------------------------------------------------------ setup -- */

int tb__mqtt_url(const char *url, char *host, size_t host_len, int *port, char *user,
                 size_t user_len, char *pass, size_t pass_len, bool *tls, tb_client_err_t *err) {
  user[0] = pass[0] = host[0] = '\0';
  *tls = strncmp(url, "mqtts://", 8) == 0;
  const char *p = url + (*tls ? 8 : 7);
  *port = *tls ? 8883 : 1883;
  const char *at = strrchr(p, '@');
  if (at != NULL) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t ul = (size_t)((colon ? colon : at) - p);
    if (ul >= user_len)
      return tb__berr(err, TB_BRIDGE_ECONFIG, "%s: user name too long", url);
    memcpy(user, p, ul);
    user[ul] = '\0';
    if (colon != NULL) {
      size_t pl = (size_t)(at - colon - 1);
      if (pl >= pass_len)
        return tb__berr(err, TB_BRIDGE_ECONFIG, "%s: password too long", url);
      memcpy(pass, colon + 1, pl);
      pass[pl] = '\0';
    }
    p = at + 1;
  }
  const char *end = p + strcspn(p, "/?");
  const char *hs = p, *he, *ps = NULL;
  if (*p == '[') {
    hs = p + 1;
    he = memchr(hs, ']', (size_t)(end - hs));
    if (he == NULL)
      return tb__berr(err, TB_BRIDGE_ECONFIG, "%s: unclosed [ in the host", url);
    if (he + 1 < end && he[1] == ':')
      ps = he + 2;
  } else {
    he = memchr(p, ':', (size_t)(end - p));
    if (he != NULL)
      ps = he + 1;
    else
      he = end;
  }
  if (he == hs || (size_t)(he - hs) >= host_len)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "%s: expected a host", url);
  memcpy(host, hs, (size_t)(he - hs));
  host[he - hs] = '\0';
  if (ps != NULL) {
    char *e;
    long v = strtol(ps, &e, 10);
    if (e != end || v < 1 || v > 65535)
      return tb__berr(err, TB_BRIDGE_ECONFIG, "%s: expected a port in 1..65535", url);
    *port = (int)v;
  }
  return 0;
}

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static void lib_init(void) {
  mosquitto_lib_init();
}

int tb__mqtt_client(const tb_broker_opts_t *o, const char *client_id, void *obj,
                    struct mosquitto **out, char *host, size_t host_len, int *port,
                    tb_client_err_t *err) {
  *out = NULL;
  char user[256], pass[256];
  bool tls;
  int rc =
      tb__mqtt_url(o->url, host, host_len, port, user, sizeof user, pass, sizeof pass, &tls, err);
  if (rc != 0)
    return rc;
  pthread_once(&lib_once, lib_init);
  struct mosquitto *m = mosquitto_new(client_id, true, obj);
  if (m == NULL)
    return tb__berr(err, TB_CLIENT_ENOMEM, "cannot make an MQTT client: %s", strerror(errno));
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  /* The broker's Nagle delay cost 15-30 ms per message here (broker-baseline). */
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  const char *u = o->user ? o->user : user[0] ? user : NULL;
  const char *pw = o->password ? o->password : pass[0] ? pass : NULL;
  if (u != NULL && (rc = mosquitto_username_pw_set(m, u, pw)) != MOSQ_ERR_SUCCESS) {
    mosquitto_destroy(m);
    return tb__berr(err, TB_BRIDGE_ECONFIG, "MQTT login: %s", mosquitto_strerror(rc));
  }
  if (tls || o->tls_ca || o->tls_cert || o->tls_key) {
    if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
      mosquitto_destroy(m);
      return tb__berr(err, TB_BRIDGE_ECONFIG, "TLS: a client certificate needs its key, and back");
    }
    rc = mosquitto_tls_set(m, o->tls_ca, o->tls_ca ? NULL : "/etc/ssl/certs", o->tls_cert,
                           o->tls_key, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
      mosquitto_destroy(m);
      return tb__berr(err, TB_BRIDGE_ECONFIG, "MQTT TLS: %s", mosquitto_strerror(rc));
    }
  }
  mosquitto_reconnect_delay_set(m, 1, 4, true);
  *out = m;
  return 0;
}

/* -------------------------------------------------------------- callbacks -- */

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags,
                       const mosquitto_property *props) {
  tb_bridge_t *b = obj;
  mqtt_t *q = st(b);
  uint32_t maxp = 0;
  if (rc == 0 && mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE, &maxp, false))
    tb__blog(b, 2, "the MQTT broker takes packets of up to %u bytes", maxp);
  if (rc == 0) {
    char ctl[TB__SUBJECT_MAX];
    tb__topic(ctl, '/', TB__TOPIC_CTL, b->ns, "+", "+");
    mosquitto_subscribe_v5(m, NULL, ctl, 1, 0, NULL);
  }
  pthread_mutex_lock(&q->mu);
  q->connack = rc;
  q->connected = rc == 0;
  if (rc == 0) {
    q->max_packet = maxp ? maxp : 256u << 20;
    if (q->ever_connected) {
      tb__stat_add(b, &b->st.broker_reconnects, 1);
      tb__blog(b, 1, "reconnected to the MQTT broker");
    }
    q->ever_connected = true;
  }
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  if (rc != 0)
    tb__blog(b, 0, "the MQTT broker refused the connection: %s", mosquitto_reason_string(rc));
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *props) {
  tb_bridge_t *b = obj;
  mqtt_t *q = st(b);
  pthread_mutex_lock(&q->mu);
  bool was = q->connected;
  q->connected = false;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
  if (was && !atomic_load(&b->stopping))
    tb__blog(b, 1, "disconnected from the MQTT broker (%s); reconnecting",
             mosquitto_reason_string(rc));
}

static void on_publish(struct mosquitto *m, void *obj, int mid, int rc,
                       const mosquitto_property *props) {
  tb_bridge_t *b = obj;
  mqtt_t *q = st(b);
  pthread_mutex_lock(&q->mu);
  q->n_acked++;
  q->acked_at[mid & (N_MIDS - 1)] = q->n_acked;
  q->acked_rc[mid & (N_MIDS - 1)] = (uint8_t)rc;
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

static void remember(mqtt_t *q, const char *run, int64_t seq) {
  for (int i = 0; i < q->n_seen; i++)
    if (strcmp(q->seen[i].run, run) == 0) {
      if (seq > q->seen[i].seq)
        q->seen[i].seq = seq;
      return;
    }
  if (q->n_seen == q->cap_seen) {
    int cap = q->cap_seen ? q->cap_seen * 2 : 16;
    seen_t *v = realloc(q->seen, (size_t)cap * sizeof *v);
    if (v == NULL)
      return;
    q->seen = v;
    q->cap_seen = cap;
  }
  snprintf(q->seen[q->n_seen].run, TB_PROTO_RUN_MAX, "%s", run);
  q->seen[q->n_seen++].seq = seq;
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props) {
  tb_bridge_t *b = obj;
  mqtt_t *q = st(b);
  const char *topic = msg->topic;
  size_t tlen = strlen(topic);
  if (tlen > 7 && strcmp(topic + tlen - 7, "/status") == 0 && strstr(topic, "/ctl/") == NULL) {
    tb_run_info_t info;
    tb_proto_err_t perr;
    pthread_mutex_lock(&q->mu);
    if (q->collecting &&
        tb__status_decode(msg->payload, (size_t)msg->payloadlen, &info, &perr) == 0)
      remember(q, info.id, info.last_seq);
    q->last_status_ms = tb__mono_ms();
    pthread_mutex_unlock(&q->mu);
    return;
  }
  tb__ctl_t *c = tb__ctl_new(msg->payload, msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
  if (c == NULL)
    return;
  tb_proto_err_t perr = {0};
  if (tb__ctl_topic_parse(topic, tlen, '/', b->ns, c->run, c->method, &perr) != 0) {
    c->topic_error = perr.code;
    snprintf(c->topic_msg, sizeof c->topic_msg, "%s", perr.msg);
  }
  char *resp = NULL;
  void *corr = NULL;
  uint16_t corr_len = 0;
  mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &resp, false);
  mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len, false);
  c->reply_to = resp;
  c->corr = corr;
  c->corr_len = corr_len;
  tb__ctl_submit(b, c);
}

/* ------------------------------------------------------------------- open -- */

static void mqtt_cleanup(tb_bridge_t *b) {
  mqtt_t *q = st(b);
  if (q == NULL)
    return;
  if (q->m != NULL) {
    mosquitto_disconnect_v5(q->m, 0, NULL);
    mosquitto_loop_stop(q->m, false);
    mosquitto_destroy(q->m);
  }
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->cv);
  free(q->seen);
  free(q);
  b->be_state = NULL;
}

/* Waits on q->cv until ms pass. */
static void timed_wait(mqtt_t *q, int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&q->cv, &q->mu, &ts);
}

static int mqtt_open(tb_bridge_t *b, tb_client_err_t *err) {
  mqtt_cleanup(b);
  mqtt_t *q = calloc(1, sizeof *q);
  if (q == NULL)
    return tb__berr(err, TB_CLIENT_ENOMEM, "out of memory");
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  b->be_state = q;
  char id[64];
  snprintf(id, sizeof id, "trainbus-bridge-%s", b->ns);
  int rc = tb__mqtt_client(&b->o.broker, b->o.broker.client_name ? b->o.broker.client_name : id, b,
                           &q->m, q->host, sizeof q->host, &q->port, err);
  if (rc != 0) {
    mqtt_cleanup(b);
    return rc;
  }
  char will[TB__SUBJECT_MAX], gone[128];
  tb__topic(will, '/', TB__TOPIC_BRIDGE, b->ns, NULL, NULL);
  int glen =
      snprintf(gone, sizeof gone, "{\"online\":false,\"ns\":\"%s\",\"daemon\":\"gone\"}", b->ns);
  mosquitto_will_set_v5(q->m, will, glen, gone, 1, true, NULL);
  mosquitto_connect_v5_callback_set(q->m, on_connect);
  mosquitto_disconnect_v5_callback_set(q->m, on_disconnect);
  mosquitto_publish_v5_callback_set(q->m, on_publish);
  mosquitto_message_v5_callback_set(q->m, on_message);
  rc = mosquitto_connect_async(q->m, q->host, q->port, 10);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_loop_start(q->m);
  if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_ERRNO) {
    tb__berr(err, TB_BRIDGE_EBROKER, "MQTT %s:%d: %s", q->host, q->port, mosquitto_strerror(rc));
    mqtt_cleanup(b);
    return TB_BRIDGE_EBROKER;
  }
  if (rc == MOSQ_ERR_ERRNO && (rc = mosquitto_loop_start(q->m)) != MOSQ_ERR_SUCCESS) {
    tb__berr(err, TB_BRIDGE_EBROKER, "MQTT: %s", mosquitto_strerror(rc));
    mqtt_cleanup(b);
    return TB_BRIDGE_EBROKER;
  }
  /* Wait for the first CONNACK. */
  int64_t deadline =
      tb__mono_ms() + (b->o.broker.connect_timeout_ms > 0 ? b->o.broker.connect_timeout_ms : 5000);
  pthread_mutex_lock(&q->mu);
  while (!q->connected && q->connack == 0 && tb__mono_ms() < deadline && !atomic_load(&b->stopping))
    timed_wait(q, 100);
  bool up = q->connected;
  int connack = q->connack;
  pthread_mutex_unlock(&q->mu);
  if (!up) {
    if (connack == MQTT_RC_BAD_USERNAME_OR_PASSWORD || connack == MQTT_RC_NOT_AUTHORIZED) {
      tb__berr(err, TB_BRIDGE_EBROKER_AUTH, "MQTT %s:%d refused the login: %s", q->host, q->port,
               mosquitto_reason_string(connack));
      mqtt_cleanup(b);
      return TB_BRIDGE_EBROKER_AUTH;
    }
    tb__berr(err, TB__EAGAIN, "MQTT %s:%d: no connection%s%s", q->host, q->port,
             connack ? ": " : "", connack ? mosquitto_reason_string(connack) : "");
    mqtt_cleanup(b);
    return TB__EAGAIN;
  }
  /* Where each run stands: the retained statuses, which arrive right after
   * the subscription; collect until they stop coming. */
  char status[TB__SUBJECT_MAX];
  tb__topic(status, '/', TB__TOPIC_STATUS, b->ns, "+", NULL);
  pthread_mutex_lock(&q->mu);
  q->collecting = true;
  q->last_status_ms = tb__mono_ms();
  pthread_mutex_unlock(&q->mu);
  mosquitto_subscribe_v5(q->m, NULL, status, 1, 0, NULL);
  int64_t until = tb__mono_ms() + 3000;
  pthread_mutex_lock(&q->mu);
  while (tb__mono_ms() < until && tb__mono_ms() - q->last_status_ms < 400)
    timed_wait(q, 50);
  q->collecting = false;
  pthread_mutex_unlock(&q->mu);
  mosquitto_unsubscribe(q->m, NULL, status);
  return 0;
}

/* ---------------------------------------------------------------- publish -- */

static size_t mqtt_max_payload(tb_bridge_t *b) {
  mqtt_t *q = st(b);
  pthread_mutex_lock(&q->mu);
  size_t m = q->max_packet;
  pthread_mutex_unlock(&q->mu);
  /* Larger than a megabyte is never needed. */
  return m > (1u << 20) ? 1u << 20 : m;
}

/* A PUBLISH packet besides its payload: fixed header (at most 5 bytes), the
 * topic (2 + its length), the packet id (2), the properties (a length of at
 * most 4, and per user property 1 + 2 + name + 2 + value). */
static size_t mqtt_overhead(tb_bridge_t *b, const tb__msg_t *m) {
  char topic[TB__SUBJECT_MAX];
  size_t n = 5 + 2 + tb__topic(topic, '/', m->kind, b->ns, m->run, m->name) + 2 + 4;
  if (m->run != NULL)
    n += (1 + 2 + 6 + 2 + strlen(m->run)) + (1 + 2 + 6 + 2 + 20);
  return n;
}

/* Waits for the acknowledgement of mid, published when n_acked was since:
 * 0, a broker refusal, or TB__EAGAIN when none came within 3 s of connected
 * time. */
static int wait_ack(tb_bridge_t *b, mqtt_t *q, int mid, uint32_t since, tb_client_err_t *err) {
  /* Time counts only while connected: a broker that is away has the
   * message in libmosquitto's queue, which sends it again on reconnection. */
  int64_t waited = 0, t = tb__mono_ms();
  pthread_mutex_lock(&q->mu);
  for (;;) {
    uint32_t at = q->acked_at[mid & (N_MIDS - 1)];
    if (at - since - 1 < 0x80000000u) { /* at > since, modulo 2^32 */
      int rc = q->acked_rc[mid & (N_MIDS - 1)];
      pthread_mutex_unlock(&q->mu);
      if (rc >= 128)
        return tb__berr(err, TB_BRIDGE_EBROKER, "the MQTT broker refused it: %s",
                        mosquitto_reason_string(rc));
      return 0;
    }
    if (waited >= 3000) {
      pthread_mutex_unlock(&q->mu);
      return tb__berr(err, TB__EAGAIN, "no acknowledgement from the MQTT broker");
    }
    if (atomic_load(&b->stopping) && tb__mono_ms() >= b->drain_deadline_ms) {
      pthread_mutex_unlock(&q->mu);
      return tb__berr(err, TB__EAGAIN, "stopping");
    }
    bool up = q->connected;
    timed_wait(q, 50);
    int64_t now = tb__mono_ms();
    if (up && q->connected)
      waited += now - t;
    t = now;
  }
}

static int mqtt_publish(tb_bridge_t *b, const tb__msg_t *msg, tb_client_err_t *err) {
  mqtt_t *q = st(b);
  pthread_mutex_lock(&q->mu);
  bool up = q->connected;
  uint32_t since = q->n_acked;
  pthread_mutex_unlock(&q->mu);
  if (!up)
    return tb__berr(err, TB__EAGAIN, "not connected to the MQTT broker");
  char topic[TB__SUBJECT_MAX], seq[24];
  tb__topic(topic, '/', msg->kind, b->ns, msg->run, msg->name);
  mosquitto_property *props = NULL;
  if (msg->run != NULL) {
    snprintf(seq, sizeof seq, "%lld", (long long)msg->seq);
    mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "tb-run", msg->run);
    mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "tb-seq", seq);
  }
  bool qos0 = msg->kind == TB__TOPIC_EVENT && msg->batch;
  bool retain = msg->kind != TB__TOPIC_EVENT;
  int mid = 0;
  int rc = mosquitto_publish_v5(q->m, &mid, topic, (int)msg->len, msg->data, qos0 ? 0 : 1, retain,
                                props);
  mosquitto_property_free_all(&props);
  if (rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_ERRNO)
    return tb__berr(err, TB__EAGAIN, "MQTT: %s", mosquitto_strerror(rc));
  if (rc != MOSQ_ERR_SUCCESS)
    return tb__berr(err, TB_BRIDGE_EBROKER, "MQTT %s: %s", topic, mosquitto_strerror(rc));
  return qos0 ? 0 : wait_ack(b, q, mid, since, err);
}

static int mqtt_stored_seq(tb_bridge_t *b, const char *run, int64_t *seq, tb_client_err_t *err) {
  mqtt_t *q = st(b);
  *seq = 0;
  pthread_mutex_lock(&q->mu);
  for (int i = 0; i < q->n_seen; i++)
    if (strcmp(q->seen[i].run, run) == 0)
      *seq = q->seen[i].seq;
  pthread_mutex_unlock(&q->mu);
  return 0;
}

static int mqtt_reply(tb_bridge_t *b, const tb__ctl_t *c, const char *json, size_t len) {
  mqtt_t *q = st(b);
  tb_buf_t small;
  tb_buf_init(&small);
  size_t max = mqtt_max_payload(b);
  if (max != 0 && len + strlen(c->reply_to) + (size_t)c->corr_len + 64 > max) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "the daemon's answer is %zu bytes, over the broker's packet limit %zu", len, max);
    tb__reply_error(&small, TB_PROTO_ETOO_LARGE, "too_large", msg);
    json = small.data;
    len = small.len;
  }
  mosquitto_property *props = NULL;
  if (c->corr != NULL)
    mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, c->corr,
                                  (uint16_t)c->corr_len);
  int rc = mosquitto_publish_v5(q->m, NULL, c->reply_to, (int)len, json, 1, false, props);
  mosquitto_property_free_all(&props);
  tb_buf_free(&small);
  if (rc != MOSQ_ERR_SUCCESS) {
    tb__blog(b, 0, "cannot answer on %s: %s", c->reply_to, mosquitto_strerror(rc));
    return TB_BRIDGE_EBROKER;
  }
  return 0;
}

static void mqtt_close(tb_bridge_t *b, const char *json, size_t len) {
  mqtt_t *q = st(b);
  if (q == NULL)
    return;
  char topic[TB__SUBJECT_MAX], ctl[TB__SUBJECT_MAX];
  tb__topic(topic, '/', TB__TOPIC_BRIDGE, b->ns, NULL, NULL);
  tb__topic(ctl, '/', TB__TOPIC_CTL, b->ns, "+", "+");
  mosquitto_unsubscribe(q->m, NULL, ctl);
  int mid = 0;
  pthread_mutex_lock(&q->mu);
  uint32_t since = q->n_acked;
  pthread_mutex_unlock(&q->mu);
  if (mosquitto_publish_v5(q->m, &mid, topic, (int)len, json, 1, true, NULL) == MOSQ_ERR_SUCCESS) {
    /* A second for the acknowledgement, then a clean disconnect (which
     * tells the broker not to send the will: the state just went). */
    b->drain_deadline_ms = tb__mono_ms() + 1000;
    tb_client_err_t e = {0};
    wait_ack(b, q, mid, since, &e);
  }
  mqtt_cleanup(b);
}

const tb__backend_t tb__mqtt_backend = {
    .name = "MQTT 5",
    .open = mqtt_open,
    .publish = mqtt_publish,
    .stored_seq = mqtt_stored_seq,
    .reply = mqtt_reply,
    .max_payload = mqtt_max_payload,
    .overhead = mqtt_overhead,
    .close = mqtt_close,
};
