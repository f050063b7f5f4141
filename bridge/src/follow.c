/* The subscriber's side: one run's events through the broker.
 *
 * NATS: a JetStream ordered consumer on the run's event subjects of stream
 * TB_NS (libnats's js_Subscribe with Ordered: flow control, heartbeats, and
 * a new consumer from the last stream sequence seen whenever one is missed),
 * so a follower that joins late gets the stored history and then the live
 * events with no gap and no duplicate. The run's seq is read from each
 * payload; events before since_seq are skipped.
 *
 * MQTT: a QoS 1 subscription to the run's event topics, live only; a seq
 * already delivered (a QoS 1 redelivery) is skipped.
 *
 * Messages arrive on the broker library's thread; each is decoded with the
 * protocol's own decoder (wire.c) and handed to the callback under a lock,
 * one at a time. The calling thread waits for the end. */
#include "brokers.h"

#include <mqtt_protocol.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct follow_s {
  const tb_follow_opts_t *o;
  tb_follow_cb cb;
  void *user;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int64_t last_seq;
  int64_t last_event_ms;
  int mqtt_connack; /* MQTT: -1 until the CONNACK */
  tb_smsg_t msg;
  char err[320];
} follow_t;

static bool final_state(const char *s) {
  tb_run_state_t st = s ? tb_run_state_from_name(s) : TB_RUN_INVALID;
  return st == TB_RUN_FINISHED || st == TB_RUN_STOPPED || st == TB_RUN_CANCELLED ||
         st == TB_RUN_FAILED;
}

static bool wanted(const tb_follow_opts_t *o, const char *name) {
  if (o->n_events == 0)
    return true;
  for (int i = 0; i < o->n_events; i++)
    if (tb_proto_match(o->events[i], name))
      return true;
  return false;
}

/* One message's payload, from any broker thread. */
static void deliver(follow_t *f, const char *data, size_t len) {
  pthread_mutex_lock(&f->mu);
  f->last_event_ms = tb__mono_ms();
  if (f->done) {
    pthread_mutex_unlock(&f->mu);
    return;
  }
  tb_proto_err_t perr = {0};
  if (tb__event_payload_decode(data, len, &f->msg, &perr) != 0) {
    snprintf(f->err, sizeof f->err, "a message on the broker is not an event: %s", perr.msg);
    tb_smsg_free(&f->msg);
    pthread_mutex_unlock(&f->mu);
    return;
  }
  const tb_event_t *ev = &f->msg.event;
  bool go = true;
  if (strcmp(ev->run, f->o->run) == 0 && ev->seq > f->last_seq &&
      (f->o->since_seq <= 0 || ev->seq >= f->o->since_seq)) {
    f->last_seq = ev->seq;
    bool end = strcmp(ev->name, "state") == 0 && final_state(ev->state);
    if (wanted(f->o, ev->name))
      go = f->cb(f->user, ev);
    if (end || !go) {
      f->done = true;
      pthread_cond_broadcast(&f->cv);
    }
  }
  tb_smsg_free(&f->msg);
  pthread_mutex_unlock(&f->mu);
}

/* Waits until done, or timeout_ms without an event. */
static int wait_done(follow_t *f, int timeout_ms, tb_client_err_t *err) {
  pthread_mutex_lock(&f->mu);
  f->last_event_ms = tb__mono_ms();
  while (!f->done) {
    if (timeout_ms >= 0 && tb__mono_ms() - f->last_event_ms >= timeout_ms) {
      pthread_mutex_unlock(&f->mu);
      return tb__berr(err, TB_CLIENT_ETIMEOUT, "no event of run %s for %d ms", f->o->run,
                      timeout_ms);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&f->cv, &f->mu, &ts);
  }
  pthread_mutex_unlock(&f->mu);
  return 0;
}

/* ------------------------------------------------------------------- NATS -- */

static void on_nats_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  deliver(closure, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
  natsMsg_Destroy(msg);
}

static int nats_connect(const tb_broker_opts_t *bo, natsOptions **opts, natsConnection **nc,
                        jsCtx **js, tb_client_err_t *err) {
  *opts = NULL;
  *nc = NULL;
  *js = NULL;
  int rc = tb__nats_options(bo, "trainbus-follow", opts, err);
  if (rc != 0)
    return rc;
  natsStatus s = natsConnection_Connect(nc, *opts);
  if (s != NATS_OK) {
    rc = tb__nats_connect_code(s);
    return tb__berr(err, rc == TB__EAGAIN ? TB_BRIDGE_EBROKER : rc, "%s: %s", bo->url,
                    natsStatus_GetText(s));
  }
  if ((s = natsConnection_JetStream(js, *nc, NULL)) != NATS_OK)
    return tb__berr(err, TB_BRIDGE_EBROKER, "JetStream: %s", natsStatus_GetText(s));
  return 0;
}

static void nats_disconnect(natsOptions *opts, natsConnection *nc, jsCtx *js) {
  jsCtx_Destroy(js);
  if (nc != NULL) {
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
  }
  natsOptions_Destroy(opts);
}

static int follow_nats(follow_t *f, int timeout_ms, tb_client_err_t *err) {
  const tb_follow_opts_t *o = f->o;
  const char *ns = o->ns ? o->ns : "default";
  natsOptions *opts;
  natsConnection *nc;
  jsCtx *js;
  int rc = nats_connect(&o->broker, &opts, &nc, &js, err);
  if (rc != 0) {
    nats_disconnect(opts, nc, js);
    return rc;
  }
  char stream[48], subj[TB__SUBJECT_MAX];
  snprintf(stream, sizeof stream, "TB_%s", ns);
  tb__topic(subj, '.', TB__TOPIC_EVENT, ns, o->run, ">");
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = stream;
  so.Ordered = true;
  so.Config.DeliverPolicy = o->since_seq > 0 ? js_DeliverAll : js_DeliverNew;
  natsSubscription *sub = NULL;
  jsErrCode jerr = 0;
  tb__once_t done;
  tb__once_init(&done);
  natsStatus s = js_Subscribe(&sub, js, subj, on_nats_msg, f, NULL, &so, &jerr);
  if (s == NATS_OK)
    natsSubscription_SetOnCompleteCB(sub, tb__once_signal, &done);
  if (s != NATS_OK) {
    if (jerr == JSStreamNotFoundErr || s == NATS_NOT_FOUND)
      rc = tb__berr(err, TB_PROTO_ENO_SUCH_RUN,
                    "no stream %s on the NATS server: no bridge has run for namespace %s", stream,
                    ns);
    else
      rc = tb__berr(err, TB_BRIDGE_EBROKER, "subscribe %s: %s (%d)", subj, natsStatus_GetText(s),
                    (int)jerr);
    nats_disconnect(opts, nc, js);
    return rc;
  }
  rc = wait_done(f, timeout_ms, err);
  /* The message callback runs on libnats's dispatch thread: f may go only
   * once its last call has returned. */
  if (natsSubscription_Unsubscribe(sub) == NATS_OK)
    tb__once_wait(&done, 5000);
  natsSubscription_Destroy(sub);
  nats_disconnect(opts, nc, js);
  return rc;
}

int tb_follow_runs(const tb_broker_opts_t *broker, const char *ns, tb_run_info_t **runs,
                   int *n_runs, tb_client_err_t *err) {
  *runs = NULL;
  *n_runs = 0;
  if (tb_broker_kind(broker->url) != TB_BROKER_NATS)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "the run list is kept on NATS only");
  if (ns == NULL)
    ns = "default";
  int rc = tb__ns_check(ns, err);
  if (rc != 0)
    return rc;
  natsOptions *opts;
  natsConnection *nc;
  jsCtx *js;
  if ((rc = nats_connect(broker, &opts, &nc, &js, err)) != 0) {
    nats_disconnect(opts, nc, js);
    return rc;
  }
  char stream[48], subj[TB__SUBJECT_MAX];
  snprintf(stream, sizeof stream, "TB_%s_LAST", ns);
  tb__topic(subj, '.', TB__TOPIC_RUNS, ns, NULL, NULL);
  natsMsg *msg = NULL;
  jsErrCode jerr = 0;
  natsStatus s = js_GetLastMsg(&msg, js, stream, subj, NULL, &jerr);
  if (s == NATS_OK) {
    tb_proto_err_t perr = {0};
    rc = tb__runs_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), runs, n_runs,
                         &perr);
    if (rc != 0)
      tb__berr(err, rc, "%s: %s", subj, perr.msg);
    natsMsg_Destroy(msg);
  } else if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr || jerr == JSStreamNotFoundErr) {
    rc =
        tb__berr(err, TB_PROTO_ENO_SUCH_RUN, "no run list on the NATS server for namespace %s", ns);
  } else {
    rc = tb__berr(err, TB_BRIDGE_EBROKER, "%s: %s (%d)", subj, natsStatus_GetText(s), (int)jerr);
  }
  nats_disconnect(opts, nc, js);
  return rc;
}

/* ------------------------------------------------------------------- MQTT -- */

static void on_mqtt_connect(struct mosquitto *m, void *obj, int rc, int flags,
                            const mosquitto_property *props) {
  follow_t *f = obj;
  if (rc == 0) {
    char topic[TB__SUBJECT_MAX];
    tb__topic(topic, '/', TB__TOPIC_EVENT, f->o->ns ? f->o->ns : "default", f->o->run, "+");
    mosquitto_subscribe_v5(m, NULL, topic, 1, 0, NULL);
  }
  pthread_mutex_lock(&f->mu);
  f->mqtt_connack = rc;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
}

static void on_mqtt_msg(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                        const mosquitto_property *props) {
  deliver(obj, msg->payload, msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
}

static int follow_mqtt(follow_t *f, int timeout_ms, tb_client_err_t *err) {
  char host[256];
  int port;
  struct mosquitto *m = NULL;
  int rc = tb__mqtt_client(&f->o->broker, f->o->broker.client_name, f, &m, host, sizeof host, &port,
                           err);
  if (rc != 0)
    return rc;
  mosquitto_connect_v5_callback_set(m, on_mqtt_connect);
  mosquitto_message_v5_callback_set(m, on_mqtt_msg);
  f->mqtt_connack = -1;
  rc = mosquitto_connect_async(m, host, port, 10);
  if (rc != MOSQ_ERR_SUCCESS || mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) {
    mosquitto_destroy(m);
    return tb__berr(err, TB_BRIDGE_EBROKER, "MQTT %s:%d: %s", host, port, mosquitto_strerror(rc));
  }
  /* The CONNACK first: a refused login is an error, not a silent wait. */
  int64_t deadline = tb__mono_ms() + 5000;
  pthread_mutex_lock(&f->mu);
  while (f->mqtt_connack < 0 && tb__mono_ms() < deadline) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&f->cv, &f->mu, &ts);
  }
  int connack = f->mqtt_connack;
  pthread_mutex_unlock(&f->mu);
  if (connack != 0)
    rc = tb__berr(err,
                  connack == MQTT_RC_BAD_USERNAME_OR_PASSWORD || connack == MQTT_RC_NOT_AUTHORIZED
                      ? TB_BRIDGE_EBROKER_AUTH
                      : TB_BRIDGE_EBROKER,
                  "MQTT %s:%d: %s", host, port,
                  connack < 0 ? "no answer" : mosquitto_reason_string(connack));
  else
    rc = wait_done(f, timeout_ms, err);
  mosquitto_disconnect_v5(m, 0, NULL);
  mosquitto_loop_stop(m, false);
  mosquitto_destroy(m);
  return rc;
}

/* ------------------------------------------------------------------ entry -- */

int tb_follow(const tb_follow_opts_t *o, tb_follow_cb cb, void *user, int timeout_ms,
              tb_client_err_t *err) {
  if (err != NULL)
    memset(err, 0, sizeof *err);
  if (o == NULL || cb == NULL || o->run == NULL || o->broker.url == NULL)
    return tb__berr(err, TB_CLIENT_EINVALID,
                    "follow: a broker URL, a run and a callback are needed");
  int rc = tb__ns_check(o->ns ? o->ns : "default", err);
  if (rc != 0)
    return rc;
  follow_t *f = calloc(1, sizeof *f);
  if (f == NULL)
    return tb__berr(err, TB_CLIENT_ENOMEM, "out of memory");
  f->o = o;
  f->cb = cb;
  f->user = user;
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  switch (tb_broker_kind(o->broker.url)) {
  case TB_BROKER_NATS:
    rc = follow_nats(f, timeout_ms, err);
    break;
  case TB_BROKER_MQTT:
    rc = follow_mqtt(f, timeout_ms, err);
    break;
  default:
    rc = tb__berr(err, TB_BRIDGE_ECONFIG, "%s: expected nats://, tls://, mqtt:// or mqtts://",
                  o->broker.url);
  }
  if (rc == 0 && f->err[0] != '\0' && f->last_seq == 0)
    rc = tb__berr(err, TB_CLIENT_EBAD_REPLY, "%s", f->err);
  pthread_mutex_destroy(&f->mu);
  pthread_cond_destroy(&f->cv);
  free(f);
  return rc;
}
