/* The trainbus client library: a blocking client of the wire protocol
 * (docs/PROTOCOL.md) over TCP, TLS (OpenSSL 3) or a Unix socket.
 *
 * One tb_client_t is one connection: tb_client_connect reads the server's
 * hello and authenticates; then the caller makes calls (each sends one request
 * and waits for its response) and waits for notifications with
 * tb_client_next. The two interleave safely: events that arrive while a call
 * waits for its response are queued and handed out by tb_client_next, in
 * order. The client remembers the last seq it delivered for every run and its
 * subscriptions, so tb_client_reconnect can resume an interrupted watch with
 * no gap and no duplicate.
 *
 * Errors: every function returns 0 or a negative code and, when the caller
 * passes a tb_client_err_t, explains the failure in it. Codes are
 *   - TB_PROTO_E* (-32700..-32001): the server refused the request; err->name
 *     is the wire name ("no_such_run") and err->msg the server's message;
 *   - TB_CLIENT_E* (below): a failure on this side or of the connection;
 *   - -errno: a system call failed (connect, send, recv, ...).
 * Nothing here exits, aborts or raises a signal: a dead peer gives
 * TB_CLIENT_ECLOSED or -EPIPE, never SIGPIPE.
 *
 * Threads: a tb_client_t is used by one thread at a time; distinct clients are
 * independent. No global state, apart from cJSON's process-wide allocator. */
#ifndef TRAINBUS_CLIENT_H
#define TRAINBUS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "trainbus/protocol.h"

/* --------------------------------------------------------------- errors -- */

/* Local failures: X(name, code, name, text). The range below -33000 is clear
 * of JSON-RPC's codes and of -errno. */
#define TB_CLIENT_ERR_MAP(X)                                                                       \
  X(CLOSED, -33001, "closed", "connection closed")                                                 \
  X(TIMEOUT, -33002, "client_timeout", "timed out waiting for the server")                         \
  X(BAD_REPLY, -33003, "bad_reply", "the server sent something this client cannot read")           \
  X(ADDRESS, -33004, "bad_address", "cannot parse or resolve the address")                         \
  X(INVALID, -33005, "invalid_argument", "invalid argument")                                       \
  X(NOMEM, -33006, "out_of_memory", "out of memory")                                               \
  X(TLS, -33007, "tls_error", "TLS failed (handshake, certificate, or the peer is not TLS)")

typedef enum {
#define X(name, code, wire, text) TB_CLIENT_E##name = code,
  TB_CLIENT_ERR_MAP(X)
#undef X
} tb_client_errno_t;

/* A failure explained. code is the function's return value; name a stable word
 * (the server's data.name for TB_PROTO_E* codes, the table's name for
 * TB_CLIENT_E* codes, "system_error" for -errno); msg a full sentence. All
 * three are zero/empty after a success. */
typedef struct tb_client_err_s {
  int code;
  char name[32];
  char msg[320];
} tb_client_err_t;

/* Text for any code this library returns ("no such run", "connection closed",
 * strerror for -errno). Never NULL. */
const char *tb_client_strerror(int code);
/* Stable name for any code ("no_such_run", "closed", "system_error"). */
const char *tb_client_err_name(int code);
/* True if code is an error the server sent (a TB_PROTO_E* code): the daemon
 * was reached and refused the request. */
bool tb_client_err_is_remote(int code);

/* ------------------------------------------------------------ connection -- */

typedef struct tb_client_s tb_client_t;

typedef struct tb_client_opts_s {
  /* Where the daemon listens: "HOST:PORT" (an IPv6 host in brackets:
   * "[::1]:7070"), "tls://HOST:PORT" (TLS, as with tls below), "unix:PATH",
   * or a PATH containing a '/'. Copied. Required unless state_dir is given. */
  const char *addr;
  /* The token; NULL or "" sends none (enough for an observer on a loopback or
   * Unix listener), unless state_dir provides one. Copied. */
  const char *token;
  /* The daemon's state directory (trainbusd --state-dir), or NULL. When addr
   * is NULL the address is read from its `address` file, and when token is
   * NULL the token from its `token` file, at connect and again at every
   * tb_client_reconnect: a daemon restarted with `--listen HOST:0` has a new
   * port, and the client follows it. The directory's token is sent only to
   * the directory's own address (the `address` file's text, compared as
   * written): a client never presents one daemon's token to another, so an
   * explicit addr of another daemon gets no token from here. Copied. */
  const char *state_dir;
  /* The role asked for: TB_ROLE_OBSERVER, TB_ROLE_CONTROLLER or
   * TB_ROLE_TRAINER (a training loop that publishes its own run:
   * trainbus/publisher.h); TB_ROLE_NONE means observer. The token decides
   * what is granted (tb_client_role): asking for controller with the
   * observer token gives observer, whose control calls then fail with
   * TB_PROTO_EFORBIDDEN. */
  tb_role_t role;
  /* Name shown in the daemon's logs and in "by" of control events; NULL for
   * "libtrainbus". Copied, truncated to TB_PROTO_TEXT_MAX - 1 bytes. */
  const char *name;
  /* Limit for connecting and the handshake; 0 means 5000. */
  int connect_timeout_ms;
  /* Limit for each call's response; 0 means 60000 (set_lr and checkpoint
   * answer only once applied, which can wait for a batch or a lockstep
   * client); negative means no limit. */
  int call_timeout_ms;
  /* TLS (docs/PROTOCOL.md, "TLS"): on with tls or a "tls://" address (TCP
   * only). The server's certificate must chain to a CA in ca_file (PEM;
   * NULL: the system's CAs) and name the host of addr (or server_name when
   * given: a DNS name or an IP address), TLS 1.2 or later. insecure skips
   * both checks (the connection is then encrypted but not authenticated:
   * warn your user). cert_file and key_file (PEM) present a client
   * certificate, for daemons started with --tls-client-ca. Paths copied. */
  bool tls;
  const char *ca_file;
  const char *server_name;
  bool insecure;
  const char *cert_file, *key_file;
} tb_client_opts_t;

/* Connects, reads the hello, sends auth and waits for its answer.
 *
 * Returns 0 and a new client in *out, or a negative code with *out = NULL:
 * -errno or TB_CLIENT_EADDRESS when the daemon cannot be reached (or,
 * with only a state_dir, its `address` file is missing),
 * TB_CLIENT_ECLOSED/ETIMEOUT/EBAD_REPLY when it does not answer properly,
 * TB_CLIENT_ETLS when TLS fails (err->msg says why: a certificate not
 * signed by a trusted CA, made for another name, or expired; a server that
 * answered in plaintext; a refused client certificate; unreadable TLS files),
 * TB_PROTO_ETLS_REQUIRED when a plaintext connection reached a TLS port,
 * and TB_PROTO_EUNAUTHORIZED (bad token) or another TB_PROTO_E* when it
 * refuses the auth. A plaintext connection starts with an empty line, which
 * every server ignores and a TLS port answers with tls_required at once.
 * err may be NULL. */
int tb_client_connect(const tb_client_opts_t *opts, tb_client_t **out, tb_client_err_t *err);

/* Closes the connection and frees everything. NULL-safe. */
void tb_client_free(tb_client_t *c);

/* The role the server granted (docs/PROTOCOL.md section 3). */
tb_role_t tb_client_role(const tb_client_t *c);
/* The server's hello of the current connection; valid until the next
 * reconnect or free. */
const tb_hello_t *tb_client_hello(const tb_client_t *c);
/* The socket, for callers that poll several sources (readable means
 * tb_client_next may have something; it may also hold queued events, and
 * received bytes not yet framed or, with TLS, not yet decrypted: call
 * tb_client_next with timeout 0 until it times out before polling). -1 while
 * disconnected. */
int tb_client_fd(const tb_client_t *c);
/* Number of notifications already received and queued (tb_client_next returns
 * them without reading the socket). */
size_t tb_client_pending(const tb_client_t *c);

/* Closes the current connection (if any), connects again with the same options
 * (reading the state directory's files again, when the options named one),
 * and renews every subscription made on this client. A subscription to exactly
 * one run without '*' resumes with since_seq = one more than the last seq
 * delivered for that run (or where it would have started, if none was yet),
 * so the caller sees no gap and no duplicate; other subscriptions resume live.
 * Queued notifications are kept. Subscription ids change (the server assigns
 * new ones).
 *
 * Returns 0 or the codes of tb_client_connect (then the client stays
 * disconnected: call again later), or a subscribe error (the connection stays
 * up; for example TB_PROTO_ENO_SUCH_RUN when a restarted daemon forgot the
 * run). */
int tb_client_reconnect(tb_client_t *c, tb_client_err_t *err);

/* --------------------------------------------------------------- events -- */

/* Subscription options: every parameter of the subscribe method. Arrays are
 * borrowed for the call (and copied for reconnects). */
typedef struct tb_client_sub_opts_s {
  const char *const *runs; /* run patterns ('*' globs); n_runs 0 = all runs */
  int n_runs;
  const char *const *events; /* event patterns; n_events 0 = all events */
  int n_events;
  int64_t every;      /* deliver batch events whose batch % every == 0; 0 or 1 = all */
  bool has_since_seq; /* replay from since_seq (needs one run without '*') */
  int64_t since_seq;
  const char *const *lockstep; /* exact hook names the trainer waits at (controller) */
  int n_lockstep;
  int64_t lockstep_timeout_ms; /* 10..600000; 0 = the server's default (5000) */
} tb_client_sub_opts_t;

/* Sends subscribe and waits for its answer. *sub_id (may be NULL) receives the
 * subscription id and *next_seq (may be NULL) the seq of the first live event
 * of a single-run subscription (0 otherwise). Replayed events follow as
 * ordinary events from tb_client_next. Returns 0, TB_CLIENT_EINVALID for
 * options the protocol cannot express (too many runs, unknown lockstep hook),
 * or a call error (see tb_client_call). */
int tb_client_subscribe(tb_client_t *c, const tb_client_sub_opts_t *o, int64_t *sub_id,
                        int64_t *next_seq, tb_client_err_t *err);
/* Drops subscription sub_id, or every subscription when sub_id < 0 (they are
 * then not renewed by tb_client_reconnect either). */
int tb_client_unsubscribe(tb_client_t *c, int64_t sub_id, tb_client_err_t *err);

/* Waits up to timeout_ms (negative: no limit; 0: only what is already there)
 * for the next notification and decodes it into *msg, whose kind is then
 * TB_SMSG_EVENT, TB_SMSG_DROPPED or TB_SMSG_BYE. Events already delivered
 * for their run (seq not above the last one delivered, as after a
 * reconnect's replay) are skipped; unknown notifications and stale responses
 * are skipped.
 *
 * A lockstep event is the exception: a restarted daemon asks again for the
 * answer to a lockstep event whose answer never took effect (it stopped while
 * waiting), with the same seq. If this client answered that seq already
 * (tb_client_continue), the same answer is sent again here and the event is
 * not returned; otherwise it is returned again, to be answered.
 *
 * Returns 0 (call tb_smsg_free(msg) when done), TB_CLIENT_ETIMEOUT (nothing
 * in time; *msg zeroed), TB_CLIENT_ECLOSED (the server closed the connection;
 * a bye, if it sent one, was returned first), TB_CLIENT_EBAD_REPLY (an
 * undecodable line; the connection is closed since the stream cannot be
 * trusted) or -errno. */
int tb_client_next(tb_client_t *c, int timeout_ms, tb_smsg_t *msg, tb_client_err_t *err);

/* Keeps the line of each notification tb_client_next returns, as the server
 * sent it, for tb_client_raw (off by default: it costs a copy per message).
 * For programs that pass events on whole: tb_smsg_t holds strings up to
 * TB_PROTO_TEXT_MAX - 1 bytes, and a daemon's reason (a checkpoint's path)
 * may be longer. */
void tb_client_keep_raw(tb_client_t *c, bool on);
/* The line (no newline) of the notification tb_client_next returned last;
 * NULL with *len 0 when keep_raw is off or nothing was returned yet. Valid
 * until the next call on c. */
const char *tb_client_raw(const tb_client_t *c, size_t *len);

/* The last seq delivered by tb_client_next for run, 0 if none. */
int64_t tb_client_last_seq(const tb_client_t *c, const char *run);

/* ---------------------------------------------------------------- calls -- */

/* Sends request r (its id is assigned here; r->id is ignored) and waits for
 * its response; notifications arriving meanwhile are queued for
 * tb_client_next. On success *result (may be NULL) receives the result, which
 * the caller frees with cJSON_Delete. Returns 0, the server's TB_PROTO_E*
 * code with its message, TB_CLIENT_ETIMEOUT (the response may still come; it
 * is then discarded), TB_CLIENT_ECLOSED, TB_CLIENT_EBAD_REPLY or -errno. */
int tb_client_call(tb_client_t *c, const tb_req_t *r, cJSON **result, tb_client_err_t *err);

/* Where and how a change was applied, from the set_lr and checkpoint results
 * (fields the server did not send are left unset). */
typedef struct tb_client_applied_s {
  bool has_applied_at;
  int64_t epoch; /* applied_at.epoch */
  int64_t batch; /* applied_at.batch, -1 if absent */
  bool has_lr;
  double old_lr;   /* set_lr: the rate before */
  double lr;       /* set_lr: the rate now */
  char path[1024]; /* checkpoint: the file written, "" if not reported */
} tb_client_applied_t;

/* Control actions for tb_client_continue. */
typedef struct tb_client_actions_s {
  bool has_lr;
  double lr; /* finite and > 0 */
  bool stop;
  bool pause;
  bool checkpoint;
} tb_client_actions_t;

/* The run methods. run is a run id (required). Each returns 0 or a call error;
 * the server's invalid_state, no_such_run and forbidden arrive as
 * TB_PROTO_E* codes. */

/* Sets the learning rate; returns once the server answers, which is once the
 * change is applied. out (may be NULL) receives where. */
int tb_client_set_lr(tb_client_t *c, const char *run, double lr, tb_client_applied_t *out,
                     tb_client_err_t *err);
/* Stops the run (reason may be NULL). */
int tb_client_stop(tb_client_t *c, const char *run, const char *reason, tb_client_err_t *err);
int tb_client_pause(tb_client_t *c, const char *run, tb_client_err_t *err);
int tb_client_resume(tb_client_t *c, const char *run, tb_client_err_t *err);
/* Writes a checkpoint; out (may be NULL) receives the path and position. */
int tb_client_checkpoint(tb_client_t *c, const char *run, tb_client_applied_t *out,
                         tb_client_err_t *err);
/* Cancels a queued or running run (reason may be NULL). */
int tb_client_cancel(tb_client_t *c, const char *run, const char *reason, tb_client_err_t *err);
/* Submits a job given as JSON text (job_len bytes, the contents of a job
 * file). run_out (TB_PROTO_RUN_MAX bytes, may be NULL) receives the new run id.
 * TB_CLIENT_EINVALID if the text is not a JSON object. */
int tb_client_submit(tb_client_t *c, const char *job_json, size_t job_len,
                     char run_out[TB_PROTO_RUN_MAX], tb_client_err_t *err);
/* Answers lockstep event seq of run, with actions (may be NULL for none) that
 * take effect before training goes on. The client keeps the last answer per
 * run, to send it again if a restarted daemon asks again (tb_client_next). */
int tb_client_continue(tb_client_t *c, const char *run, int64_t seq,
                       const tb_client_actions_t *actions, tb_client_err_t *err);

/* One run's status. */
int tb_client_status(tb_client_t *c, const char *run, tb_run_info_t *out, tb_client_err_t *err);
/* Every run, oldest first: *runs is allocated (release with free()), *n_runs
 * its length; both zeroed on failure. */
int tb_client_runs(tb_client_t *c, tb_run_info_t **runs, int *n_runs, tb_client_err_t *err);
/* A page of a run's retained events: *events (the caller frees it with
 * cJSON_Delete) is the array of event params objects, *next_seq (may be
 * NULL) the since_seq of the next page. limit 0 means the server's default. */
int tb_client_history(tb_client_t *c, const char *run, int64_t since_seq, int64_t limit,
                      cJSON **events, int64_t *next_seq, tb_client_err_t *err);
/* Decodes one element of a history page into *msg (kind TB_SMSG_EVENT), as
 * if it had arrived as a notification. Call tb_smsg_free(msg) after. */
int tb_client_event_decode(const cJSON *params, tb_smsg_t *msg, tb_client_err_t *err);
/* Round trip; *server_time (may be NULL) receives the server's clock in Unix
 * seconds. */
int tb_client_ping(tb_client_t *c, double *server_time, tb_client_err_t *err);

#endif
