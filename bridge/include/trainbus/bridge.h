/* trainbus-bridge: the bus of one daemon published into a NATS (with
 * JetStream) or MQTT broker, and control taken back from it.
 *
 * The bridge is an ordinary client of trainbusd (docs/PROTOCOL.md): an
 * observer connection for the events, controller connections for control.
 * On the broker side it speaks the broker's own protocol through its C
 * library (libnats 3.4 in its threaded mode, libmosquitto 2.0). docs/BRIDGE.md
 * is the contract of what appears on the broker; this header is its C entry.
 *
 * Names on the broker (NS is the namespace, RUN the run id, with '.' written
 * "%2E" on NATS, where '.' separates tokens):
 *
 *   NATS subject                       MQTT topic                      what
 *   tb.NS.run.RUN.evt.EVENT            tb/NS/run/RUN/evt/EVENT         each event: the protocol's
 * event params object, run and seq in headers (Tb-Run, Tb-Seq) or user properties (tb-run, tb-seq)
 *   tb.NS.run.RUN.status               tb/NS/run/RUN/status (retained) the run object of `status`
 *   tb.NS.runs                         tb/NS/runs (retained)           {"runs":[run objects]}
 *   tb.NS.bridge                       tb/NS/bridge (retained, will)   the bridge's own state and
 * counters tb.NS.run.RUN.ctl.METHOD           tb/NS/run/RUN/ctl/METHOD        control requests
 * (request-reply; MQTT 5 response topic)
 *
 * On NATS, the stream TB_NS keeps tb.NS.run.*.evt.> (bounded by age and
 * bytes) and TB_NS_LAST keeps one message per subject of tb.NS.run.*.status,
 * tb.NS.runs and tb.NS.bridge. Every event carries Nats-Msg-Id RUN:SEQ, so a
 * message sent again after a reconnect is stored once.
 *
 * Guarantees (tested in tests/bridge): lifecycle, state and control events
 * reach the broker in seq order, each once (JetStream) or at least once (MQTT
 * QoS 1), whatever happens to the broker, the daemon or the bridge in
 * between: after any outage the bridge asks the daemon for what it missed
 * (`history` from the last seq the broker holds). Batch events are sampled
 * (every, batch_hz) and are the only events ever dropped, when the bridge's
 * bounded queue is full; they are counted. The trainer never waits for the
 * bridge: the daemon's fan-out to it is non-blocking like every client's.
 *
 * Errors: functions return 0 or a negative code, explained in a
 * tb_client_err_t: TB_CLIENT_E* and TB_PROTO_E* codes as in
 * trainbus/client.h, plus TB_BRIDGE_E* below for the broker's side.
 *
 * Threads: tb_bridge_run runs the bridge on the calling thread plus its own
 * threads (the daemon reader, the publisher, the control workers, and the
 * broker library's). tb_bridge_stop may be called from any thread or a
 * signal handler. The tb_follow_* functions run on the calling thread (plus
 * the broker library's threads) and call back on a library thread one
 * message at a time. */
#ifndef TRAINBUS_BRIDGE_H
#define TRAINBUS_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trainbus/client.h"

/* --------------------------------------------------------------- errors -- */

/* X(name, code, wire name, text). Below the client library's -33000 range. */
#define TB_BRIDGE_ERR_MAP(X)                                                                       \
  X(BROKER, -34001, "broker_error", "the broker failed or refused")                                \
  X(BROKER_AUTH, -34002, "broker_auth", "the broker refused the credentials")                      \
  X(CONFIG, -34003, "bad_config", "invalid bridge configuration")                                  \
  X(NO_RESPONDERS, -34004, "no_responders", "nothing answers on this subject (no bridge running)")

typedef enum {
#define X(name, code, wire, text) TB_BRIDGE_E##name = code,
  TB_BRIDGE_ERR_MAP(X)
#undef X
} tb_bridge_errno_t;

/* Text and stable name of any code the bridge, the client library or the
 * protocol returns. Never NULL. */
const char *tb_bridge_strerror(int code);
const char *tb_bridge_err_name(int code);

/* --------------------------------------------------------------- broker -- */

typedef enum { TB_BROKER_NONE = 0, TB_BROKER_NATS, TB_BROKER_MQTT } tb_broker_kind_t;

/* How to reach and log in to a broker. Strings are borrowed for the call that
 * takes them (copied where kept). */
typedef struct tb_broker_opts_s {
  /* nats://HOST:PORT, tls://HOST:PORT (NATS over TLS; several NATS URLs may
   * be given comma-separated), mqtt://HOST:PORT, mqtts://HOST:PORT. A
   * user:password@ or token@ part is the login (NATS's own URL syntax; MQTT
   * takes user:password@). Required. */
  const char *url;
  /* Login, overriding the URL's: user and password (both brokers), token
   * (NATS), a NATS credentials file (JWT and nkey seed, as nsc writes it), or
   * a file holding an nkey user seed ("SU..."; the public key is derived from
   * it). NULL for none. */
  const char *user, *password, *token, *creds_file, *nkey_seed_file;
  /* TLS: a CA bundle to trust (PEM), and a client certificate and key for
   * servers that verify clients. Any of them, or a tls:// or mqtts:// URL,
   * turns TLS on; the server's name (or IP address) is verified. */
  const char *tls_ca, *tls_cert, *tls_key;
  /* The connection's name in the broker's monitoring and logs (NATS name,
   * MQTT client id); NULL for a generated one. */
  const char *client_name;
  /* Time allowed to connect; 0 means 5000. */
  int connect_timeout_ms;
} tb_broker_opts_t;

/* The broker kind a URL names, TB_BROKER_NONE if it names none. */
tb_broker_kind_t tb_broker_kind(const char *url);

/* --------------------------------------------------------------- bridge -- */

typedef struct tb_bridge_s tb_bridge_t;

typedef struct tb_bridge_opts_s {
  tb_broker_opts_t broker;
  /* Namespace: 1 to 24 characters from A-Z a-z 0-9 _ - (a NATS token, an
   * MQTT level and part of a JetStream stream name). NULL means "default". */
  const char *ns;

  /* The daemon. addr and token as the CLI takes them; NULL for each means:
   * $TRAINBUS_ADDR / $TRAINBUS_TOKEN, else the files `address` and `token`
   * in state_dir (NULL: $TRAINBUS_STATE_DIR, else ~/.trainbus), read again
   * at every reconnect, so the bridge follows a restarted daemon. A state
   * directory's token is only sent to that directory's address. */
  const char *daemon_addr, *daemon_token, *state_dir;
  /* The daemon's observer (read-only) token, for the connection that reads
   * the events (docs/PROTOCOL.md section 3): NULL means
   * $TRAINBUS_OBSERVER_TOKEN, else the file `observer_token` in state_dir
   * (only for that directory's address), else daemon_token. Control
   * requests always go with daemon_token (the control token); a bridge given
   * only an observer token answers every control request with the daemon's
   * forbidden. */
  const char *daemon_observer_token;
  /* TLS to the daemon, as the client library's tb_client_opts_t takes it:
   * on for a "tls://" address; the daemon's certificate must chain to a CA
   * in daemon_ca_file (NULL: $TRAINBUS_CACERT, else the system's CAs);
   * daemon_insecure skips the check (warned); daemon_cert_file and
   * daemon_key_file (NULL: $TRAINBUS_CERT, $TRAINBUS_KEY) present a client
   * certificate to a daemon that wants one (--tls-client-ca). */
  const char *daemon_ca_file, *daemon_cert_file, *daemon_key_file;
  bool daemon_insecure;

  /* Batch events: only those whose batch is a multiple of every (the
   * protocol's subscribe `every`, applied by the daemon; 0 or 1: all), and
   * at most batch_hz per second per run and event name, by the events' own
   * timestamps (0: no cap). Lifecycle, state and control events always go. */
  int64_t every;
  double batch_hz;

  /* Events waiting for the broker, at most (0: 4096). Past three quarters
   * full, batch events are dropped and counted; lifecycle events wait for
   * room (the daemon then holds them, and past its limit the bridge catches
   * up from history after reconnecting). */
  size_t queue_max;

  /* JetStream (NATS only): how long and how many bytes TB_NS keeps (0:
   * 7 days, 1 GiB), memory instead of file storage, and the stream's
   * deduplication window (0: 2 minutes, NATS's default). */
  int64_t js_max_age_s, js_max_bytes, js_dup_window_s;
  bool js_memory;

  /* Control workers, each with its own controller connection (0: 2): a
   * set_lr waits until the trainer applies it, and others can go on
   * meanwhile. 0 control connections are made until the first request. */
  int ctl_workers;

  /* 0 errors only, 1 info (default), 2 debug; lines go to stderr prefixed
   * "trainbus-bridge: ". */
  int log_level;
} tb_bridge_opts_t;

/* Counters, for tests and the bridge's status message. */
typedef struct tb_bridge_stats_s {
  int64_t received;      /* events read from the daemon (live and history) */
  int64_t published;     /* events the broker acknowledged (MQTT QoS 0: sent) */
  int64_t sampled_out;   /* batch events skipped by batch_hz */
  int64_t dropped_batch; /* batch events dropped because the queue was full */
  int64_t truncated;     /* events larger than the broker's limit, sent as a stub */
  int64_t caught_up;     /* events fetched with `history` after an outage */
  int64_t retries;       /* publishes repeated after a broker failure */
  int64_t ctl_requests;  /* control requests received */
  int64_t ctl_errors;    /* of which answered with an error */
  int64_t daemon_reconnects, broker_reconnects;
  size_t queued; /* events in the queue now */
} tb_bridge_stats_t;

/* Validates the options and makes a bridge; connects to nothing yet.
 * Returns 0 and *out, or TB_BRIDGE_ECONFIG / TB_CLIENT_ENOMEM with err. */
int tb_bridge_new(const tb_bridge_opts_t *o, tb_bridge_t **out, tb_client_err_t *err);

/* Connects to the broker (retrying until it answers or tb_bridge_stop), makes
 * the JetStream streams, then to the daemon (likewise), and bridges until
 * tb_bridge_stop. Returns 0 after a stop, or an error that retrying cannot
 * fix (the broker refused the credentials or the stream configuration). */
int tb_bridge_run(tb_bridge_t *b, tb_client_err_t *err);

/* Asks tb_bridge_run to return: the queue is flushed to the broker for up to
 * two seconds first. Async-signal-safe; any thread. */
void tb_bridge_stop(tb_bridge_t *b);

/* Copies the counters. Any thread. */
void tb_bridge_stats(tb_bridge_t *b, tb_bridge_stats_t *out);

/* Frees a bridge that is not running. NULL-safe. */
void tb_bridge_free(tb_bridge_t *b);

/* --------------------------------------------------------------- follow -- */

/* The subscriber's side, for `trainbus watch --nats` and other C programs:
 * one run's events through the broker, as tb_smsg_t events (kind
 * TB_SMSG_EVENT) decoded and validated exactly as from the daemon. */
typedef struct tb_follow_opts_s {
  tb_broker_opts_t broker;
  const char *ns;  /* NULL: "default" */
  const char *run; /* required */
  /* NATS: replay the run's stored events from this seq on (1: its whole
   * history; 0: only new events), then go on live, through a JetStream
   * ordered consumer: no gap, no duplicate. MQTT keeps no history: live
   * events only. */
  int64_t since_seq;
  /* Event patterns ('*' globs, as in subscribe); NULL/0: every event. */
  const char *const *events;
  int n_events;
} tb_follow_opts_t;

/* Called for each event, in seq order, on a library thread. Return true to
 * go on, false to end tb_follow. */
typedef bool (*tb_follow_cb)(void *user, const tb_event_t *ev);

/* Follows until cb returns false, the run reaches a final state (after its
 * state event is delivered), or timeout_ms passes without any event
 * (negative: no limit). Returns 0 (cb or the run ended it), TB_CLIENT_ETIMEOUT,
 * or the connection's error. */
int tb_follow(const tb_follow_opts_t *o, tb_follow_cb cb, void *user, int timeout_ms,
              tb_client_err_t *err);

/* The latest run list the bridge published (tb.NS.runs, NATS only): *runs is
 * allocated (free()), *n_runs its length. TB_PROTO_ENO_SUCH_RUN when the
 * broker holds none. */
int tb_follow_runs(const tb_broker_opts_t *broker, const char *ns, tb_run_info_t **runs,
                   int *n_runs, tb_client_err_t *err);

#endif
