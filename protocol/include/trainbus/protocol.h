/* The trainbus wire protocol: JSON-RPC 2.0 messages, one compact JSON object
 * per line. docs/PROTOCOL.md is the contract; this header is its C binding.
 *
 * Four parts, each usable alone:
 *   - errors: one X-macro table of wire error codes, which are also the C
 *     return codes of every function here (0 is success);
 *   - framing (tb_frame_next): a pure, resumable scanner over a caller's buffer;
 *   - decoding: tb_req_decode (server side: client requests into tb_req_t) and
 *     tb_smsg_decode (client side: server messages into tb_smsg_t), both
 *     validating everything and explaining failures in a tb_proto_err_t;
 *   - encoding: tb_msg_* append one complete line (with its '\n') to a
 *     growable tb_buf_t; tb_msg_event_to writes an event into a fixed buffer
 *     without allocating, for the per-batch path.
 *
 * Threads: every function is reentrant and keeps no global state, except that
 * decoding uses cJSON, whose allocator hooks (cJSON_InitHooks) are
 * process-wide. No function here does I/O. */
#ifndef TRAINBUS_PROTOCOL_H
#define TRAINBUS_PROTOCOL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "trainbus/proto_limits.h"

/* ---------------------------------------------------------------- errors -- */

/* X(name, code, wire name, text). The code is the JSON-RPC error code sent on
 * the wire and, negated nowhere, also the C return value: functions return 0
 * or one of these. -32700..-32603 are JSON-RPC's own; -32001..-32008 are ours,
 * in the range JSON-RPC leaves to servers. The wire name travels in
 * error.data.name so clients can switch on a word rather than a number. */
#define TB_PROTO_ERR_MAP(X)                                                                        \
  X(PARSE, -32700, "parse_error", "not a valid JSON text")                                         \
  X(INVALID_REQUEST, -32600, "invalid_request", "not a valid request")                             \
  X(METHOD_NOT_FOUND, -32601, "method_not_found", "no such method")                                \
  X(INVALID_PARAMS, -32602, "invalid_params", "invalid parameters")                                \
  X(INTERNAL, -32603, "internal_error", "internal error")                                          \
  X(UNAUTHORIZED, -32001, "unauthorized", "not authenticated")                                     \
  X(FORBIDDEN, -32002, "forbidden", "not allowed for this role")                                   \
  X(NO_SUCH_RUN, -32003, "no_such_run", "no such run")                                             \
  X(INVALID_STATE, -32004, "invalid_state", "not possible in the current state")                   \
  X(OVERLOADED, -32005, "overloaded", "server overloaded")                                         \
  X(TOO_LARGE, -32006, "too_large", "message too large")                                           \
  X(TIMEOUT, -32007, "timeout", "timed out")                                                       \
  X(TLS_REQUIRED, -32008, "tls_required", "this listener speaks TLS only")

typedef enum {
#define X(name, code, wire, text) TB_PROTO_E##name = code,
  TB_PROTO_ERR_MAP(X)
#undef X
} tb_proto_errno_t;

/* Returned by tb_frame_next when the buffer holds no complete line yet. Not an
 * error and not in the table: it never goes on the wire. */
#define TB_PROTO_NEED_MORE (-1)

/* Short text for a code ("no such run"); "unknown error" for anything else. */
const char *tb_proto_strerror(int code);
/* Wire name for a code ("no_such_run"); "unknown" for anything else. */
const char *tb_proto_err_name(int code);

/* A failure explained: code is a TB_PROTO_E* value, msg a full sentence that
 * names the field and the offending value
 * (`params.lr: expected a finite positive number, got -1`). msg is always
 * NUL-terminated; both are zero/empty after a success. */
typedef struct tb_proto_err_s {
  int code;
  char msg[256];
} tb_proto_err_t;

/* ---------------------------------------------------------------- framing -- */

/* Finds the next complete line in buf[0, len).
 *
 * buf must start at the beginning of a line. *scan_from is the scanning state:
 * set it to 0 for a new line and pass it back unchanged on the next call with
 * the same line start (the buffer may have grown, and may have moved); the
 * framer then resumes where it stopped instead of rescanning. max_line is the
 * longest line accepted, terminator excluded (TB_PROTO_MAX_LINE_DEFAULT unless
 * configured; at most TB_PROTO_MAX_LINE_CEIL).
 *
 * Returns
 *   > 0                  a line: buf[0, *line_len) is its text without "\n" or
 *                        "\r\n", and the return value is the number of bytes to
 *                        consume (text plus terminator); *scan_from is reset
 *                        to 0 for the next line. A blank line gives
 *                        *line_len == 0; callers skip it.
 *   TB_PROTO_NEED_MORE   no complete line yet; read more and call again.
 *   TB_PROTO_ETOO_LARGE  more than max_line bytes arrived without a newline
 *                        (detected as soon as byte max_line + 1 arrives, or
 *                        the end of the UTF-8 character it starts or
 *                        continues: the verdict never depends on how the
 *                        stream was split into reads).
 *   TB_PROTO_EPARSE      invalid UTF-8 (overlong forms, surrogates, code points
 *                        above U+10FFFF, stray continuation bytes), a raw
 *                        control byte other than TAB, or a CR not followed by LF.
 * After an error the stream cannot be resynchronised safely: send one error
 * and close. *line_len is set only when a line is returned. */
int tb_frame_next(const char *buf, size_t len, size_t *scan_from, size_t max_line,
                  size_t *line_len);

/* ------------------------------------------------------------ vocabulary -- */

/* Request methods: X(name, wire name, the role needed: see tb_role_may). */
#define TB_METHOD_MAP(X)                                                                           \
  X(AUTH, "auth", TB_ROLE_NONE)                                                                    \
  X(PING, "ping", TB_ROLE_NONE)                                                                    \
  X(SUBSCRIBE, "subscribe", TB_ROLE_OBSERVER)                                                      \
  X(UNSUBSCRIBE, "unsubscribe", TB_ROLE_OBSERVER)                                                  \
  X(STATUS, "status", TB_ROLE_OBSERVER)                                                            \
  X(RUNS, "runs", TB_ROLE_OBSERVER)                                                                \
  X(HISTORY, "history", TB_ROLE_OBSERVER)                                                          \
  X(SET_LR, "set_lr", TB_ROLE_CONTROLLER)                                                          \
  X(STOP, "stop", TB_ROLE_CONTROLLER)                                                              \
  X(PAUSE, "pause", TB_ROLE_CONTROLLER)                                                            \
  X(RESUME, "resume", TB_ROLE_CONTROLLER)                                                          \
  X(CHECKPOINT, "checkpoint", TB_ROLE_CONTROLLER)                                                  \
  X(SUBMIT, "submit", TB_ROLE_CONTROLLER)                                                          \
  X(CANCEL, "cancel", TB_ROLE_CONTROLLER)                                                          \
  X(CONTINUE, "continue", TB_ROLE_CONTROLLER)                                                      \
  X(ATTACH, "attach", TB_ROLE_TRAINER)                                                             \
  X(PUBLISH, "publish", TB_ROLE_TRAINER)                                                           \
  X(APPLIED, "applied", TB_ROLE_TRAINER)                                                           \
  X(FINISH, "finish", TB_ROLE_TRAINER)

/* Roles (docs/PROTOCOL.md section 3). An observer reads; a controller may
 * do everything an observer may, and control; a trainer (issue 14: a
 * training loop in another process that publishes its own run) may call
 * only the trainer's methods, which a controller may call too. Which role a
 * connection gets is decided by the token it authenticates with (server
 * configuration), not by the order of this enum: use tb_role_may. */
typedef enum {
  TB_ROLE_NONE = 0,
  TB_ROLE_OBSERVER = 1,
  TB_ROLE_CONTROLLER = 2,
  TB_ROLE_TRAINER = 3
} tb_role_t;

/* Whether a connection holding `role` may call a method that needs `need`:
 * NONE needs nothing; OBSERVER: an observer or a controller; CONTROLLER: a
 * controller; TRAINER: a trainer or a controller. Pure. */
bool tb_role_may(tb_role_t role, tb_role_t need);

typedef enum {
  TB_METHOD_INVALID = 0,
#define X(name, wire, role) TB_METHOD_##name,
  TB_METHOD_MAP(X)
#undef X
} tb_method_t;

/* Wire name of a method ("set_lr"); "" for TB_METHOD_INVALID. */
const char *tb_method_name(tb_method_t m);
/* The method for a wire name, TB_METHOD_INVALID if unknown. */
tb_method_t tb_method_from_name(const char *name);
/* The role a connection needs to call m (TB_ROLE_NONE: also before auth),
 * as tb_role_may reads it. subscribe with lockstep events needs
 * TB_ROLE_CONTROLLER. */
tb_role_t tb_method_role(tb_method_t m);
/* "observer", "controller", "trainer"; "none" for TB_ROLE_NONE. */
const char *tb_role_name(tb_role_t r);

/* Event names: the Keras hooks without "on_", then "state" (a run changed
 * state) and "control" (a control action took effect, or a lockstep wait timed
 * out). X(name, wire name, is a batch event). */
#define TB_EVENT_MAP(X)                                                                            \
  X(TRAIN_BEGIN, "train_begin", 0)                                                                 \
  X(TRAIN_END, "train_end", 0)                                                                     \
  X(EPOCH_BEGIN, "epoch_begin", 0)                                                                 \
  X(EPOCH_END, "epoch_end", 0)                                                                     \
  X(TRAIN_BATCH_BEGIN, "train_batch_begin", 1)                                                     \
  X(TRAIN_BATCH_END, "train_batch_end", 1)                                                         \
  X(TEST_BEGIN, "test_begin", 0)                                                                   \
  X(TEST_END, "test_end", 0)                                                                       \
  X(TEST_BATCH_BEGIN, "test_batch_begin", 1)                                                       \
  X(TEST_BATCH_END, "test_batch_end", 1)                                                           \
  X(PREDICT_BEGIN, "predict_begin", 0)                                                             \
  X(PREDICT_END, "predict_end", 0)                                                                 \
  X(PREDICT_BATCH_BEGIN, "predict_batch_begin", 1)                                                 \
  X(PREDICT_BATCH_END, "predict_batch_end", 1)                                                     \
  X(STATE, "state", 0)                                                                             \
  X(CONTROL, "control", 0)

typedef enum {
  TB_EVENT_INVALID = 0,
#define X(name, wire, batch) TB_EVENT_##name,
  TB_EVENT_MAP(X)
#undef X
} tb_event_kind_t;

/* Wire name of an event kind; "" for TB_EVENT_INVALID. */
const char *tb_event_name(tb_event_kind_t k);
/* The kind for a wire name; TB_EVENT_INVALID if unknown. */
tb_event_kind_t tb_event_from_name(const char *name);
/* True for the *_batch_* events, the only ones that sampling and slow-consumer
 * dropping apply to. */
bool tb_event_is_batch(tb_event_kind_t k);

/* Run states. X(name, wire name, is final). `detached` and `lost` are for
 * runs a trainer publishes (docs/PROTOCOL.md section 13): its trainer is not
 * connected (it may attach again), or did not come back in time. */
#define TB_RUN_STATE_MAP(X)                                                                        \
  X(QUEUED, "queued", 0)                                                                           \
  X(RUNNING, "running", 0)                                                                         \
  X(PAUSED, "paused", 0)                                                                           \
  X(STOPPING, "stopping", 0)                                                                       \
  X(FINISHED, "finished", 1)                                                                       \
  X(STOPPED, "stopped", 1)                                                                         \
  X(CANCELLED, "cancelled", 1)                                                                     \
  X(FAILED, "failed", 1)                                                                           \
  X(DETACHED, "detached", 0)                                                                       \
  X(LOST, "lost", 1)

typedef enum {
  TB_RUN_INVALID = 0,
#define X(name, wire, final) TB_RUN_##name,
  TB_RUN_STATE_MAP(X)
#undef X
} tb_run_state_t;

const char *tb_run_state_name(tb_run_state_t s);
tb_run_state_t tb_run_state_from_name(const char *name);
/* True for the final states (finished, stopped, cancelled, failed, lost). */
bool tb_run_state_is_final(tb_run_state_t s);

/* Glob match used for run and event patterns: '*' matches any sequence of
 * bytes (including none), every other byte matches itself. Linear in
 * strlen(pattern) * strlen(name) at worst; both are short by the limits. */
bool tb_proto_match(const char *pattern, const char *name);

/* ----------------------------------------------------------- message types -- */

/* A JSON-RPC request id. Requests must carry an integer (|id| <= 2^53 - 1) or a
 * string id; the server echoes it verbatim. TB_ID_NONE means "not known" (a
 * message that could not be read that far) and is sent as null. */
typedef enum { TB_ID_NONE = 0, TB_ID_INT, TB_ID_STR } tb_id_kind_t;

typedef struct tb_id_s {
  tb_id_kind_t kind;
  int64_t num;               /* the id when kind == TB_ID_INT */
  char str[TB_PROTO_ID_MAX]; /* the id when kind == TB_ID_STR, NUL-terminated */
} tb_id_t;

/* A decoded client request. Strings are NUL-terminated copies; the only
 * allocations are submit.job, attach.model and publish.events, released by
 * tb_req_free. Fields of other methods are zero. Optional integers come with
 * a has_ flag. */
typedef struct tb_req_s {
  tb_method_t method;
  /* TB_ID_NONE for a notification: only publish and applied may be sent
   * without an id (a trainer's stream: no answer, errors come back as
   * "rejected" notifications). */
  tb_id_t id;
  /* The run a method acts on (history, set_lr, stop, pause, resume,
   * checkpoint, cancel, continue, publish, applied: required; status,
   * attach: optional, "" = the daemon / a new run). */
  char run[TB_PROTO_RUN_MAX];

  struct {
    char token[TB_PROTO_TOKEN_MAX]; /* "" when none was given */
    tb_role_t role;                 /* OBSERVER, CONTROLLER or TRAINER */
    char client[TB_PROTO_TEXT_MAX]; /* free-form client name, may be "" */
    int64_t protocol;               /* version the client speaks; 0 = not given */
  } auth;

  struct {
    /* Run patterns; n_runs == 0 means every run, current and future. */
    int n_runs;
    char runs[TB_PROTO_SUB_RUNS_MAX][TB_PROTO_RUN_MAX];
    /* Event patterns; n_events == 0 means every event. */
    int n_events;
    char events[TB_PROTO_SUB_EVENTS_MAX][TB_PROTO_NAME_MAX];
    /* Deliver every N-th batch event (seq-independent: by batch counter); 1 = all. */
    int64_t every;
    /* Replay from this seq (inclusive) before live events. Only with exactly
     * one run and no '*' in it. */
    bool has_since_seq;
    int64_t since_seq;
    /* Exact hook names at which the trainer waits for this client's
     * "continue" (needs the controller role). */
    int n_lockstep;
    tb_event_kind_t lockstep[TB_PROTO_SUB_EVENTS_MAX];
    int64_t lockstep_timeout_ms; /* TB_PROTO_LOCKSTEP_DEFAULT_MS if not given */
  } subscribe;

  struct {
    bool has_sub; /* false: drop every subscription of the connection */
    int64_t sub;  /* id returned by subscribe */
  } unsubscribe;

  struct {
    int64_t since_seq; /* first seq wanted, 0 if not given */
    int64_t limit;     /* at most this many events, 1..TB_PROTO_HISTORY_MAX; default 1000 */
  } history;

  struct {
    double lr; /* finite and > 0 */
  } set_lr;

  struct {
    char reason[TB_PROTO_TEXT_MAX]; /* stop, cancel: optional, may be "" */
  } stop;

  struct {
    cJSON *job; /* the job description (an object), owned by the request */
  } submit;

  struct {
    int64_t seq;     /* seq of the lockstep event being answered */
    bool has_lr;     /* actions.set_lr given */
    double lr;       /* finite and > 0 */
    bool stop;       /* actions.stop */
    bool pause;      /* actions.pause */
    bool checkpoint; /* actions.checkpoint */
  } cont;

  /* attach (trainer): opens a run this connection publishes, or continues
   * the run given in `run` (then last_seq says how far the trainer got). */
  struct {
    char name[TB_PROTO_TEXT_MAX]; /* what is trained, may be "" */
    int64_t epochs;               /* epochs planned, 0 if not given */
    int64_t steps;                /* batches per epoch, 0 if not given */
    char *model;                  /* a summary of the model (text, at most
                                     TB_PROTO_MODEL_MAX - 1 bytes), or NULL */
    bool has_last_seq;
    int64_t last_seq; /* the trainer's seq of the last event it published */
    bool has_lr;
    double lr;        /* the learning rate now (finite, > 0) */
    bool checkpoints; /* the trainer can write checkpoints (checkpoint control) */
  } attach;

  /* publish (trainer): events of `run`. The decoder checks the array (1 to
   * TB_PROTO_PUBLISH_MAX elements); the server reads and checks each event
   * with tb_pub_event_read, taking those before a bad one. */
  struct {
    cJSON *events; /* the params.events array (1..TB_PROTO_PUBLISH_MAX items), owned */
    int n_events;
  } publish;

  /* applied (trainer): a control action took effect at (epoch, batch). */
  struct {
    int64_t id;      /* the id of the forwarded control it answers; 0: none (a
                        local action of the trainer's own) */
    char action[16]; /* set_lr, stop, pause, resume, checkpoint */
    int64_t epoch;   /* where it took effect; -1 if not given */
    int64_t batch;   /* -1: between epochs (or not given) */
    bool has_value;  /* set_lr: the new rate */
    double value;
    bool has_old; /* set_lr: the rate before */
    double old;
    char path[1024];                   /* checkpoint: the file written, "" if none */
    char by[TB_PROTO_TEXT_MAX];        /* who asked (echoed from the control), "" if not said */
    char error[TB_PROTO_TEXT_MAX * 2]; /* not applied: why ("" when applied) */
  } applied;

  /* finish (trainer): the run is over. */
  struct {
    tb_run_state_t state;           /* FINISHED (default), STOPPED or FAILED */
    char reason[TB_PROTO_TEXT_MAX]; /* why, may be "" (a failure's message) */
  } finish;
} tb_req_t;

/* One event a trainer publishes (an element of publish's params.events):
 * a hook event numbered by the trainer (seq 1, 2, ... over the life of the
 * run), with the optional fields a daemon-trained run's events have. */
typedef struct tb_pub_event_s {
  int64_t seq;          /* the trainer's seq (>= 1) */
  tb_event_kind_t kind; /* one of the 14 hook events (never state or control) */
  int64_t epoch;        /* -1 when absent */
  int64_t batch;        /* -1 when absent */
  bool has_time;
  int64_t time_us; /* the trainer's clock, Unix microseconds */
  int n_logs;
  char log_names[TB_PROTO_LOGS_MAX][TB_PROTO_LOG_NAME_MAX];
  double log_values[TB_PROTO_LOGS_MAX]; /* may be NaN or infinite */
  bool has_lr;
  double lr;            /* the trainer's learning rate now, for status (finite, > 0) */
  bool lockstep;        /* the trainer waits for "continue" at this event */
  int64_t dropped;      /* batch events the trainer dropped just before this one */
  int n_classes;        /* train_begin: class names (0: none) ... */
  const cJSON *classes; /* ... the array, borrowed from the decoded request */
} tb_pub_event_t;

/* One event of a run, as the encoder takes it and tb_smsg_decode returns it.
 * Pointers are borrowed: the encoder only reads them during the call. */
typedef struct tb_event_s {
  const char *run;  /* run id */
  int64_t seq;      /* per-run sequence number, from 1, no gaps */
  const char *name; /* event name (tb_event_name), or any name for forward compatibility */
  int64_t epoch;    /* 0-based epoch, or -1 when not meaningful (omitted) */
  int64_t batch;    /* 0-based batch within the epoch, or -1 (omitted) */
  int64_t time_us;  /* wall clock, microseconds since the Unix epoch */
  bool lockstep;    /* the trainer waits for a "continue" for this event */
  /* Where the run's events come from: "daemon" (a job the daemon trains),
   * "embedded" (a program embedding the server), "trainer" (a trainer that
   * publishes over the protocol); NULL = omitted. */
  const char *source;

  /* Logs as parallel arrays, core's tb_logs_t layout: give log_names (a
   * `char names[][48]` array) or log_namev (an array of pointers); values may
   * be NaN or infinite. n_logs 0 writes "logs":{}. */
  int n_logs;
  const char (*log_names)[TB_PROTO_LOG_NAME_MAX];
  const char *const *log_namev;
  const double *log_values;

  /* "state" events; NULL = omitted. */
  const char *state;      /* new state (tb_run_state_name) */
  const char *prev_state; /* previous state */
  /* "control" events; NULL / false = omitted. */
  const char *action; /* set_lr, stop, pause, resume, checkpoint, cancel, lockstep_timeout */
  const char *by;     /* who asked ("client 7", "callback"), may be NULL */
  bool has_value;
  double value; /* the new value (set_lr) */
  bool has_old;
  double old_value; /* the previous value (set_lr) */
  /* Both kinds: why, free text; NULL = omitted. */
  const char *reason;
  /* train_begin of a run whose labels are class names: the names, in class
   * order (output i of the model is classes[i]); n_classes 0 = omitted.
   * Written as "classes":[...]; clients read it from the params object
   * (tb_smsg_decode does not keep it). */
  int n_classes;
  const char *const *classes;
} tb_event_t;

/* A run as status and runs report it. */
typedef struct tb_run_info_s {
  char id[TB_PROTO_RUN_MAX];
  tb_run_state_t state;
  int64_t epoch;    /* current epoch, -1 before the first */
  int64_t epochs;   /* epochs planned */
  int64_t batch;    /* current batch in the epoch, -1 outside one */
  int64_t last_seq; /* seq of the last event, 0 if none */
  bool has_lr;
  double lr;                    /* current learning rate */
  char source[16];              /* "daemon", "embedded", "trainer"; "" = omitted */
  char name[TB_PROTO_TEXT_MAX]; /* what is trained (the job's or trainer's name); "" = omitted */
} tb_run_info_t;

/* The server's first line. */
typedef struct tb_hello_s {
  int64_t protocol;               /* TB_PROTO_VERSION */
  char server[TB_PROTO_TEXT_MAX]; /* "trainbus/0.1.0" */
  bool auth_required;             /* a token is needed (for any role) */
  int64_t auth_timeout_ms;        /* auth must arrive within this */
  int64_t max_line;               /* longest line the server accepts */
} tb_hello_t;

/* A decoded server message (client side). */
typedef enum {
  TB_SMSG_HELLO = 1, /* hello notification */
  TB_SMSG_RESULT,    /* response with result */
  TB_SMSG_ERROR,     /* response with error (id may be TB_ID_NONE) */
  TB_SMSG_EVENT,     /* event notification */
  TB_SMSG_DROPPED,   /* dropped notification */
  TB_SMSG_BYE,       /* bye notification; the server closes after it */
  TB_SMSG_UNKNOWN,   /* a notification this version does not know: ignore it */
  /* To a trainer (docs/PROTOCOL.md section 13): */
  TB_SMSG_CONTROL,  /* control: apply this action at the next batch boundary */
  TB_SMSG_CONTINUE, /* continue: the lockstep wait at trainer seq `seq` is over */
  TB_SMSG_LOCKSTEP, /* lockstep: the hooks at which to wait, and for how long */
  TB_SMSG_REJECTED  /* rejected: a publish or applied notification was refused */
} tb_smsg_kind_t;

typedef struct tb_smsg_s {
  tb_smsg_kind_t kind;
  tb_id_t id;                     /* RESULT, ERROR */
  cJSON *result;                  /* RESULT: the result value, owned by the message */
  char method[TB_PROTO_NAME_MAX]; /* UNKNOWN: the notification's method */
  struct {
    int code;
    char name[32];     /* data.name, "" if absent */
    char message[256]; /* truncated if longer */
  } error;
  tb_hello_t hello;
  tb_event_t event; /* EVENT: pointers into the storage below */
  struct {
    char run[TB_PROTO_RUN_MAX];
    int64_t count, from_seq, to_seq;
  } dropped;
  struct {
    char reason[TB_PROTO_NAME_MAX];
    char message[TB_PROTO_TEXT_MAX];
  } bye;
  /* CONTROL, CONTINUE, LOCKSTEP, REJECTED: for the run `run`. */
  struct {
    char run[TB_PROTO_RUN_MAX];
    int64_t id;      /* CONTROL: to echo in applied */
    char action[16]; /* CONTROL: set_lr, stop, pause, resume, checkpoint */
    bool has_value;  /* CONTROL set_lr: the rate */
    double value;
    char by[TB_PROTO_TEXT_MAX];     /* CONTROL: who asked */
    int64_t seq;                    /* CONTINUE, REJECTED: the trainer's seq (0: none) */
    bool timed_out;                 /* CONTINUE: no answer came in time */
    uint32_t hooks;                 /* LOCKSTEP: bitmask over tb_event_kind_t */
    int64_t timeout_ms;             /* LOCKSTEP: how long a wait may last */
    char method[TB_PROTO_NAME_MAX]; /* REJECTED: publish or applied */
    int64_t index;                  /* REJECTED: the event's index in params.events, -1 */
    int code;                       /* REJECTED: a TB_PROTO_E* code */
    char message[320];              /* REJECTED: why */
  } trainer;

  /* Storage behind event's pointers; read through event. */
  struct {
    char run[TB_PROTO_RUN_MAX];
    char name[TB_PROTO_NAME_MAX];
    char names[TB_PROTO_LOGS_MAX][TB_PROTO_LOG_NAME_MAX];
    double values[TB_PROTO_LOGS_MAX];
    char state[TB_PROTO_NAME_MAX], prev_state[TB_PROTO_NAME_MAX];
    char action[TB_PROTO_NAME_MAX], by[TB_PROTO_TEXT_MAX], reason[TB_PROTO_TEXT_MAX];
    char source[16];
  } ev_store;
} tb_smsg_t;

/* --------------------------------------------------------------- decoding -- */

/* Decodes one client request line (text from tb_frame_next, no terminator).
 * Validates the envelope (jsonrpc "2.0", integer or string id, known method,
 * no unknown members, no batch), every parameter (type, range, length, unknown
 * fields), nesting depth, duplicate keys and U+0000 anywhere in the text.
 *
 * Returns 0 and fills *out, or a TB_PROTO_E* code with err->msg saying what and
 * where. out->id is filled as soon as it is read, so on failure it is the id to
 * answer with (TB_ID_NONE: answer with null). Call tb_req_free(out) after
 * either outcome. err may be NULL. */
int tb_req_decode(const char *line, size_t len, tb_req_t *out, tb_proto_err_t *err);
/* Whether a connection holding role may make request r: 0, or
 * TB_PROTO_EUNAUTHORIZED (role NONE: auth first) or TB_PROTO_EFORBIDDEN (an
 * observer calling a control method, or subscribing with lockstep), with
 * err->msg naming the method and the role needed. Pure; the server calls it
 * after tb_req_decode and before routing. */
int tb_req_authorize(const tb_req_t *r, tb_role_t role, tb_proto_err_t *err);
/* Releases what tb_req_decode allocated (submit.job) and zeroes *r. NULL-safe. */
void tb_req_free(tb_req_t *r);

/* Decodes one server line (client side) into *out. Unknown notification methods
 * give TB_SMSG_UNKNOWN; unknown fields are ignored (servers may add fields
 * without changing the protocol version). Non-finite logs arrive as the
 * strings "NaN", "Infinity" and "-Infinity" and are returned as doubles.
 * Returns 0 or a TB_PROTO_E* code with err->msg. Call tb_smsg_free(out) after
 * either outcome. */
int tb_smsg_decode(const char *line, size_t len, tb_smsg_t *out, tb_proto_err_t *err);
/* Releases out->result and zeroes *m. NULL-safe. */
void tb_smsg_free(tb_smsg_t *m);

/* Reads a run object (an element of a runs result, or a status result) into
 * *out. Returns 0 or TB_PROTO_EINVALID_PARAMS with err->msg. */
int tb_run_info_decode(const cJSON *obj, tb_run_info_t *out, tb_proto_err_t *err);

/* ---------------------------------------------------------------- buffers -- */

/* A growable byte buffer. data is not NUL-terminated. Zero-initialise or call
 * tb_buf_init; release with tb_buf_free. Encoders append; on failure they
 * restore len, so a buffer never holds half a message. */
typedef struct tb_buf_s {
  char *data;
  size_t len; /* bytes in use */
  size_t cap; /* bytes allocated */
} tb_buf_t;

void tb_buf_init(tb_buf_t *b);
void tb_buf_free(tb_buf_t *b);
/* Makes room for extra more bytes. 0 or TB_PROTO_EINTERNAL (out of memory). */
int tb_buf_reserve(tb_buf_t *b, size_t extra);
/* Appends n bytes. 0 or TB_PROTO_EINTERNAL. */
int tb_buf_append(tb_buf_t *b, const void *p, size_t n);

/* Replaces the allocator of tb_buf_t (tests inject failures with it); NULL
 * arguments restore the C library's. Process-wide: call before any buffer
 * exists. cJSON's allocator is separate (cJSON_InitHooks). */
void tb_proto_set_allocator(void *(*realloc_fn)(void *, size_t), void (*free_fn)(void *));

/* JSON value writers for composing results by hand (between
 * tb_msg_result_begin and tb_msg_result_end). Each returns 0 or
 * TB_PROTO_EINTERNAL. */
int tb_json_str(tb_buf_t *b, const char *s);
int tb_json_strn(tb_buf_t *b, const char *s, size_t n);
/* A double that parses back to the identical value (%.17g, or an integer
 * when integral); NaN and infinities as "NaN", "Infinity", "-Infinity". */
int tb_json_num(tb_buf_t *b, double v);
int tb_json_int(tb_buf_t *b, int64_t v);
/* Any cJSON value, compact, every number written as tb_json_num writes it
 * (cJSON_Print rounds some doubles to 15 digits: 0.30000000000000004 would
 * come out "0.3"). 0 or TB_PROTO_EINTERNAL (b unchanged). */
int tb_json_value(tb_buf_t *b, const cJSON *v);

/* Writes v at dst (room for TB_PROTO_NUM_MAX bytes) as tb_json_num does and
 * returns the length. Exposed for benchmarks and other encoders. */
size_t tb_json_num_to(char *dst, double v);

/* --------------------------------------------------------------- encoding -- */

/* Every tb_msg_* appends one complete line, '\n' included, and returns 0 or
 * TB_PROTO_EINTERNAL (out of memory; b unchanged). Strings are escaped as
 * needed; invalid UTF-8 in a string is replaced by U+FFFD so the line stays
 * valid. */

/* {"jsonrpc":"2.0","method":"hello","params":{...}} */
int tb_msg_hello(tb_buf_t *b, const tb_hello_t *h);

/* An event notification. Writes the event into dst (cap bytes) without
 * allocating. Returns the line length (> 0) or TB_PROTO_ETOO_LARGE if cap is
 * too small (nothing useful in dst then). tb_msg_event_max(ev) bytes always
 * suffice. */
int tb_msg_event_to(char *dst, size_t cap, const tb_event_t *ev);
/* Upper bound on the encoded size of ev. */
size_t tb_msg_event_max(const tb_event_t *ev);
/* The same, appended to b. */
int tb_msg_event(tb_buf_t *b, const tb_event_t *ev);
/* Only the params object of an event ({"run":...}), no newline: for history
 * results, which are arrays of these. */
int tb_msg_event_params(tb_buf_t *b, const tb_event_t *ev);

/* {"method":"dropped","params":{"run","count","from_seq","to_seq"}}: events
 * from_seq..to_seq (inclusive) of run were not delivered to this client; count
 * of them were meant for it. */
int tb_msg_dropped(tb_buf_t *b, const char *run, int64_t count, int64_t from_seq, int64_t to_seq);
/* {"method":"bye","params":{"reason","message"}}; the server closes after it.
 * message may be NULL. */
int tb_msg_bye(tb_buf_t *b, const char *reason, const char *message);

/* An error response. code is a TB_PROTO_E* value; message a full sentence
 * (printf-style). */
int tb_msg_error(tb_buf_t *b, const tb_id_t *id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The error a decoder reported, as a response (err->code, err->msg). */
int tb_msg_error_from(tb_buf_t *b, const tb_id_t *id, const tb_proto_err_t *err);

/* Results. tb_msg_result_begin writes {"jsonrpc":"2.0","id":ID,"result": and
 * tb_msg_result_end writes "}\n"; between them write one JSON value with the
 * tb_json_* writers or tb_buf_append. If anything in between fails, truncate
 * b->len back yourself. */
int tb_msg_result_begin(tb_buf_t *b, const tb_id_t *id);
int tb_msg_result_end(tb_buf_t *b);
/* result: any cJSON value (written by tb_json_value, numbers exact). For results
 * off the hot path. */
int tb_msg_result(tb_buf_t *b, const tb_id_t *id, const cJSON *result);
/* result {"ok":true}: control methods (set_lr, stop, ...) and unsubscribe. */
int tb_msg_result_ok(tb_buf_t *b, const tb_id_t *id);
/* result {"pong":true,"time":T} for ping; time_us as in tb_event_t. */
int tb_msg_result_pong(tb_buf_t *b, const tb_id_t *id, int64_t time_us);
/* result {"role":"...","protocol":N} for auth. */
int tb_msg_result_auth(tb_buf_t *b, const tb_id_t *id, tb_role_t role);
/* result {"sub":N,"next_seq":S} for subscribe: next_seq is the seq the first
 * live event will carry for a single-run subscription, 0 otherwise. */
int tb_msg_result_subscribe(tb_buf_t *b, const tb_id_t *id, int64_t sub, int64_t next_seq);
/* result {"run":"..."} for submit. */
int tb_msg_result_submit(tb_buf_t *b, const tb_id_t *id, const char *run);
/* result: one run object, for status. */
int tb_msg_result_status(tb_buf_t *b, const tb_id_t *id, const tb_run_info_t *run);
/* result {"runs":[run objects]} for runs. */
int tb_msg_result_runs(tb_buf_t *b, const tb_id_t *id, const tb_run_info_t *runs, int n_runs);
/* result {"run":..,"events":[event params...],"next_seq":N} for history; pass
 * n_events events. */
int tb_msg_result_history(tb_buf_t *b, const tb_id_t *id, const char *run, const tb_event_t *events,
                          int n_events, int64_t next_seq);
/* A run object (no newline), for composing results by hand. */
int tb_json_run_info(tb_buf_t *b, const tb_run_info_t *run);

/* Client side: the request r as a line (what tb_req_decode reads back).
 * Returns 0, TB_PROTO_EINVALID_PARAMS for an unknown method, or
 * TB_PROTO_EINTERNAL. */
int tb_req_encode(tb_buf_t *b, const tb_req_t *r);

/* ------------------------------------------------- trainers (section 13) -- */

/* Reads element `index` of a publish request's params.events into *out,
 * checking every field. Returns 0 or TB_PROTO_EINVALID_PARAMS with err->msg naming the
 * field (`params.events[3].logs.loss: ...`). out->classes borrows from item. */
int tb_pub_event_read(const cJSON *item, int index, tb_pub_event_t *out, tb_proto_err_t *err);

/* Client side, a publish notification built piece by piece (no allocation
 * beyond b's growth; numbers as tb_json_num writes them, so they round-trip):
 * tb_msg_publish_begin writes {"jsonrpc":"2.0",["id":ID,]"method":"publish","params":
 * {"run":RUN,"events":[ ; tb_pub_event_append one event object (its own
 * leading comma when `first` is false); tb_msg_publish_end "]}}\n". id
 * NULL (or TB_ID_NONE) makes a notification, answered by nothing. Each
 * returns 0 or TB_PROTO_EINTERNAL with b rolled back. The event's kind must
 * be a hook event and its logs names non-empty (as the decoder checks). */
int tb_msg_publish_begin(tb_buf_t *b, const tb_id_t *id, const char *run);
int tb_pub_event_append(tb_buf_t *b, const tb_pub_event_t *e, const char *const *class_names,
                        bool first);
int tb_msg_publish_end(tb_buf_t *b);

/* Server side, the notifications to a trainer. Each appends one line. */
/* {"method":"control","params":{"run","id","action","value"?,"by"}}: apply
 * action (set_lr with value) at the next batch boundary, then send applied
 * with this id. */
int tb_msg_control(tb_buf_t *b, const char *run, int64_t id, const char *action, bool has_value,
                   double value, const char *by);
/* {"method":"continue","params":{"run","seq","timed_out"?}}: the lockstep
 * wait at the trainer's seq is over (the controls sent before it take effect
 * first). */
int tb_msg_continue(tb_buf_t *b, const char *run, int64_t seq, bool timed_out);
/* {"method":"lockstep","params":{"run","hooks":[names],"timeout_ms"}}: wait
 * at these hooks (a bitmask over tb_event_kind_t; 0: none). */
int tb_msg_lockstep(tb_buf_t *b, const char *run, uint32_t hooks, int64_t timeout_ms);
/* {"method":"rejected","params":{"method","run"?,"seq"?,"index"?,"code","name","message"}}:
 * a notification the server refused; seq 0 and index -1 are omitted. */
int tb_msg_rejected(tb_buf_t *b, const char *method, const char *run, int64_t seq, int64_t index,
                    int code, const char *message);

#endif
