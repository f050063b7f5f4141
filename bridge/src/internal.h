/* Private to the bridge: the shared structures and the helpers its files
 * share. wire.c is pure (protocol and cJSON only, no broker library), so the
 * fuzz targets and unit tests build it alone. */
#ifndef TB_BRIDGE_INTERNAL_H
#define TB_BRIDGE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "trainbus/bridge.h"
#include "trainbus/protocol.h"

/* Namespaces: "TB_" + NS + "_LAST" must stay within JetStream's advice of
 * 32 characters for stream names (they become directory names). */
#define TB__NS_MAX 25
/* A subject or topic: tb.NS.run.RUN.evt.EVENT with RUN escaped (each '.' may
 * become three characters). */
#define TB__SUBJECT_MAX (16 + TB__NS_MAX + 3 * TB_PROTO_RUN_MAX + TB_PROTO_NAME_MAX)
/* A control request's payload: what a protocol line may hold, less the
 * envelope the bridge wraps around it. */
#define TB__CTL_PAYLOAD_MAX (TB_PROTO_MAX_LINE_DEFAULT - 256)
/* A transient broker failure: the same message is tried again. */
#define TB__EAGAIN (-34100)

/* ----------------------------------------------------------------- wire.c -- */

/* What a name on the broker is for. */
typedef enum {
  TB__TOPIC_EVENT = 1, /* tb.NS.run.RUN.evt.EVENT */
  TB__TOPIC_STATUS,    /* tb.NS.run.RUN.status */
  TB__TOPIC_RUNS,      /* tb.NS.runs */
  TB__TOPIC_BRIDGE,    /* tb.NS.bridge */
  TB__TOPIC_CTL,       /* tb.NS.run.RUN.ctl.METHOD */
} tb__topic_t;

/* 0 if ns is a valid namespace, else TB_BRIDGE_ECONFIG with err. */
int tb__ns_check(const char *ns, tb_client_err_t *err);
/* Writes the subject (sep '.', NATS) or topic (sep '/', MQTT) of kind into
 * dst (TB__SUBJECT_MAX bytes). run and name may be NULL or "*" / "+" / ">" /
 * "#" wildcards where the kind has them. Returns the length. */
size_t tb__topic(char *dst, char sep, tb__topic_t kind, const char *ns, const char *run,
                 const char *name);
/* Reads run and method out of a control subject or topic of namespace ns.
 * Returns 0, or TB_PROTO_EINVALID_REQUEST when it is not one (err says why). */
int tb__ctl_topic_parse(const char *topic, size_t len, char sep, const char *ns,
                        char run[TB_PROTO_RUN_MAX], char method[TB_PROTO_NAME_MAX],
                        tb_proto_err_t *err);

/* Turns a control request from the broker (the method from its subject, the
 * run from its subject, the payload: the method's params as a JSON object,
 * "run" optional, or nothing at all) into the request the daemon would get,
 * validated by the protocol's own decoder, so a bad payload gets exactly the
 * error the daemon would give. Methods: set_lr, stop, pause, resume,
 * checkpoint, cancel. Returns 0, or a TB_PROTO_E* code with err (parse_error,
 * invalid_params, method_not_found, too_large). Call tb_req_free(out). */
int tb__ctl_request(const char *method, const char *run, const char *payload, size_t len,
                    tb_req_t *out, tb_proto_err_t *err);

/* A reply on the broker: {"result": RESULT} or {"error": {"code", "message",
 * "data": {"name"}}}, the members of a JSON-RPC response. */
int tb__reply_result(tb_buf_t *b, const cJSON *result);
int tb__reply_error(tb_buf_t *b, int code, const char *name, const char *msg);

/* Decodes an event message's payload (an event params object) into *m, as if
 * the daemon had sent it; 0 or a TB_PROTO_E* code with err. Call
 * tb_smsg_free(m). */
int tb__event_payload_decode(const char *p, size_t len, tb_smsg_t *m, tb_proto_err_t *err);
/* The payload of an event too large for the broker: its identity and where
 * it happened, "truncated":true and its "size", so a subscriber knows to ask
 * the daemon's history for the rest. */
int tb__event_stub(tb_buf_t *b, const tb_event_t *ev, size_t size);
/* Reads a status payload (a run object) into *out: 0 or TB_PROTO_E*. */
int tb__status_decode(const char *p, size_t len, tb_run_info_t *out, tb_proto_err_t *err);
/* Reads a runs payload ({"runs":[...]}) into an allocated array. */
int tb__runs_decode(const char *p, size_t len, tb_run_info_t **runs, int *n, tb_proto_err_t *err);
/* Reads a decimal seq (a header value): 0 and *out, or -1. */
int tb__seq_parse(const char *s, size_t len, int64_t *out);

/* ---------------------------------------------------------------- queue.c -- */

/* One event on its way to the broker, or run facts for the status. */
typedef enum { TB__ITEM_EVENT = 1, TB__ITEM_RUNINFO } tb__item_kind_t;

typedef struct tb__item_s {
  struct tb__item_s *next;
  tb__item_kind_t kind;
  char run[TB_PROTO_RUN_MAX];
  int64_t seq;                  /* EVENT: its seq; RUNINFO: the last seq the broker holds */
  char name[TB_PROTO_NAME_MAX]; /* event name */
  bool batch;                   /* a batch event: may be dropped */
  bool truncated;               /* payload is the stub of a larger event */
  tb_run_info_t info;           /* RUNINFO: the daemon's view; EVENT: what it changes */
  bool has_state, has_lr;       /* EVENT: info.state / info.lr are set by it */
  int64_t time_us;              /* the event's own time */
  size_t len;                   /* payload bytes */
  char payload[];               /* the event params object, JSON */
} tb__item_t;

/* A bounded FIFO between the daemon reader and the publisher. */
typedef struct tb__queue_s {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full;
  tb__item_t *head, *tail;
  size_t n, max;
  int64_t dropped; /* batch events refused because the queue was 3/4 full */
} tb__queue_t;

typedef enum { TB__PUSHED = 0, TB__DROPPED = 1, TB__STOPPED = 2 } tb__push_t;

int tb__queue_init(tb__queue_t *q, size_t max);
/* Frees the queue and what is still in it. */
void tb__queue_destroy(tb__queue_t *q);
/* Appends it (the queue owns it from then on, whatever the result). A batch
 * item is dropped (and counted) when the queue is at least 3/4 full; any
 * other waits for room, waking every 100 ms to check *stop. */
tb__push_t tb__queue_push(tb__queue_t *q, tb__item_t *it, const atomic_bool *stop);
/* The oldest item, waiting up to timeout_ms; NULL if none came. */
tb__item_t *tb__queue_pop(tb__queue_t *q, int timeout_ms);
size_t tb__queue_len(tb__queue_t *q);

/* --------------------------------------------------------------- bridge.c -- */

/* A control request from the broker, on its way to a control worker. */
typedef struct tb__ctl_s {
  struct tb__ctl_s *next;
  char run[TB_PROTO_RUN_MAX];
  char method[TB_PROTO_NAME_MAX];
  char *reply_to;  /* NATS reply subject / MQTT response topic; NULL: no answer wanted */
  void *corr;      /* MQTT correlation data, copied; NULL if none */
  int corr_len;    /* its bytes */
  int topic_error; /* nonzero: the subject itself was wrong; answer this */
  char topic_msg[256];
  size_t len;
  char payload[];
} tb__ctl_t;

/* A message for the broker. */
typedef struct tb__msg_s {
  tb__topic_t kind;
  const char *run;  /* EVENT, STATUS */
  const char *name; /* EVENT: the event name */
  int64_t seq;      /* EVENT */
  bool batch;       /* EVENT: batch events go at QoS 0 on MQTT */
  const char *data;
  size_t len;
} tb__msg_t;

/* A broker, behind one interface (nats.c, mqtt.c). Every function is called
 * from one bridge thread at a time except reply (control workers) and
 * stored_seq (the reader). */
typedef struct tb__backend_s {
  const char *name;
  /* Connects and prepares (streams, subscriptions). TB__EAGAIN: not
   * reachable yet, try again; other codes: give up. */
  int (*open)(tb_bridge_t *b, tb_client_err_t *err);
  /* Publishes and waits for the broker's acknowledgement where it gives one
   * (JetStream ack; MQTT: handed to the library's in-order queue). 0,
   * TB__EAGAIN (try the same message again later) or a permanent failure. */
  int (*publish)(tb_bridge_t *b, const tb__msg_t *m, tb_client_err_t *err);
  /* The highest seq of run the broker already holds (0 if none). 0 or
   * TB__EAGAIN. */
  int (*stored_seq)(tb_bridge_t *b, const char *run, int64_t *seq, tb_client_err_t *err);
  /* Answers a control request. */
  int (*reply)(tb_bridge_t *b, const tb__ctl_t *c, const char *json, size_t len);
  /* The largest message the broker takes now (0: not known yet), and what
   * of it m takes besides its body (headers, topic, properties). */
  size_t (*max_payload)(tb_bridge_t *b);
  size_t (*overhead)(tb_bridge_t *b, const tb__msg_t *m);
  /* Publishes json as the bridge's final state and closes everything. */
  void (*close)(tb_bridge_t *b, const char *json, size_t len);
} tb__backend_t;

extern const tb__backend_t tb__nats_backend;
extern const tb__backend_t tb__mqtt_backend;

struct tb_bridge_s {
  /* Options, with owned copies of every string. */
  tb_bridge_opts_t o;
  char *strings; /* one block holding the copies */
  char ns[TB__NS_MAX + 1];
  tb_broker_kind_t kind;
  const tb__backend_t *be;
  void *be_state;

  atomic_bool stopping;
  int64_t drain_deadline_ms; /* the publisher's, once stopping */
  tb__queue_t q;

  pthread_mutex_t ctl_mu;
  pthread_cond_t ctl_cv;
  tb__ctl_t *ctl_head, *ctl_tail;
  int n_ctl;
  pthread_t reader, ctl_threads[16];
  int n_ctl_threads;
  bool reader_started;

  pthread_mutex_t stats_mu;
  tb_bridge_stats_t st;
  char daemon_state[32]; /* "connected", "connecting", for the status message */
  atomic_bool broker_up;
};

/* Logs one line to stderr at level (0 error, 1 info, 2 debug). */
void tb__blog(tb_bridge_t *b, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds to a counter (field offset into tb_bridge_stats_t) under the lock. */
void tb__stat_add(tb_bridge_t *b, int64_t *field, int64_t n);
/* Hands a control request to the workers (from a broker library thread).
 * The bridge owns c from then on. */
void tb__ctl_submit(tb_bridge_t *b, tb__ctl_t *c);
/* Allocates a control request with room for len payload bytes, copied. */
tb__ctl_t *tb__ctl_new(const char *payload, size_t len);
void tb__ctl_free(tb__ctl_t *c);
/* Monotonic milliseconds. */
int64_t tb__mono_ms(void);
/* Sleeps ms, in steps, returning early once the bridge stops. */
void tb__nap(tb_bridge_t *b, int ms);
/* The name (text false) or text of a TB_BRIDGE_E* code, NULL for others. */
const char *tb__bridge_code_name(int code, bool text);
/* Fills err; returns code. */
int tb__berr(tb_client_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* reader.c: the daemon side (observer connection, catch-up). */
void *tb__reader_main(void *arg);
/* Resolves the daemon's address and the token for role (TB_ROLE_OBSERVER:
 * the observer token if there is one, else the control token;
 * TB_ROLE_CONTROLLER: the control token) as tb_bridge_opts_t describes, at
 * this moment. 0 or TB_CLIENT_EADDRESS with err. */
int tb__daemon_resolve(const tb_bridge_t *b, tb_role_t role, char *addr, size_t addr_len,
                       char *token, size_t token_len, tb_client_err_t *err);
/* Connects to the daemon as role (resolved as above, with the TLS options)
 * named "bridge:NS". tb_client_connect's result. */
int tb__daemon_connect(const tb_bridge_t *b, tb_role_t role, int call_timeout_ms, tb_client_t **c,
                       tb_client_err_t *err);

/* ctl.c: the control workers. */
void *tb__ctl_main(void *arg);

/* nkey.c: the public key of an nkey seed ("SU..." -> "U..."); 0 or
 * TB_BRIDGE_ECONFIG. */
int tb__nkey_public(const char *seed, char *pub, size_t pub_len, tb_client_err_t *err);

#endif
