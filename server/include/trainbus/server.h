/* The trainbus server: publishes training events over the wire protocol
 * (docs/PROTOCOL.md) and takes control back.
 *
 * Threads. One libuv loop thread owns every socket, the run registry and the
 * retained events; it never trains. Each running job trains on its own
 * thread and never touches a socket: its publisher (an ordinary core
 * callback) hands events to the loop through a queue and a uv_async, and
 * control comes back through the run's tb_control_t, applied by the trainer at
 * batch boundaries.
 *
 * Embedding. A program with its own training loop creates a server, starts it
 * on its own thread with tb_server_start(), attaches a run, adds the run's
 * callback to its callback list (last) and calls tb_control_apply() on the
 * run's control block at every batch boundary: remote clients then see and
 * steer that loop exactly as they would a daemon job (examples/embed.c). */
#ifndef TRAINBUS_SERVER_H
#define TRAINBUS_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "trainbus/callback.h"
#include "trainbus/control.h"
#include "trainbus/error.h"
#include "trainbus/job.h"

typedef struct tb_server_s tb_server_t;
typedef struct tb_run_s tb_run_t;

enum { TB_SERVER_MAX_LISTEN = 8, TB_SERVER_MAX_DATA_DIRS = 16, TB_SERVER_MAX_MPIRUN_ARGS = 32 };

typedef struct tb_server_opts_s {
  /* "HOST:PORT" (port 0: any free port) or a Unix socket path (contains '/'). */
  const char *listen[TB_SERVER_MAX_LISTEN];
  int n_listen;      /* default: one listener on 127.0.0.1:7787 */
  const char *token; /* NULL: generated (and written to state_dir/token) */
  bool token_given;  /* the token came from the user (flag or environment) */
  /* Roles by token (docs/PROTOCOL.md section 3): the control token grants
   * every role; the observer token grants the observer role only (read:
   * subscribe, status, runs, history; every control method answers
   * forbidden); the trainer token the trainer role only (issue 14's methods,
   * by which a training loop in another process publishes its run). NULL or
   * "": the one kept in state_dir/observer_token (trainer_token), mode 0600,
   * made once and kept across restarts; without a state directory, made for
   * this process (tb_server_observer_token). The three must differ. */
  const char *observer_token, *trainer_token;
  const char *state_dir; /* NULL: no persistence (no event logs, no checkpoints) */
  bool resume;           /* resume the runs found in state_dir */
  size_t max_line;       /* default TB_PROTO_MAX_LINE */
  int max_clients;       /* default 16384 */
  int auth_timeout_ms;   /* default 5000 */
  int flush_interval_ms; /* > 0: while events stream in, drain the trainers' queue at most once
                            per interval (a fixed delay, for measurements). Default 0: drain
                            on every wake-up; writes coalesce by themselves (a client is
                            written at once when nothing is in flight to it, and what comes
                            while a write is in flight goes out together in the next) */
  int idle_timeout_ms;   /* a client with no subscription that sends nothing this long is
                            disconnected (bye idle); 0 (default) never, as Redis's timeout 0 */
  size_t out_drop_bytes; /* queued output above which batch events are dropped; 256 KiB */
  size_t out_hard_bytes; /* queued output that disconnects at once; 8 MiB */
  size_t out_soft_bytes; /* queued output that disconnects after out_soft_seconds; 2 MiB */
  int out_soft_seconds;  /* 10 */
  size_t retain_events;  /* events kept in memory per run for replay; 200000 (and
                            retain_bytes for all runs together) */
  size_t queue_bytes;    /* the trainers' queue to the loop: past this many bytes waiting,
                            batch events are dropped (counted, and told to subscribers as
                            "dropped"); lifecycle events never are. Default 32 MiB (about
                            200,000 batch events with a few logs: seconds of the busiest
                            job; Redis's pubsub output limit is 32 MB too) */
  int max_queued_runs;   /* default 64 */
  int log_level;         /* 0 errors, 1 info (default), 2 debug */
  const char *http;      /* "HOST:PORT": serve the dashboard, and the protocol over WebSocket,
                            there (docs/DASHBOARD.md); NULL: no HTTP */
  /* TLS (docs/PROTOCOL.md, "TLS"): with a certificate and its key (PEM
   * files), every TCP listener and the HTTP front speak TLS only (OpenSSL;
   * the HTTP front through libwebsockets: HTTPS and WSS); Unix socket
   * listeners stay plaintext. With a client CA, clients must also present a
   * certificate that CA signed. NULL: no TLS. */
  const char *tls_cert, *tls_key, *tls_client_ca;
  /* A listener on a non-loopback address without TLS is refused (as
   * Redis's protected mode) unless this is set: the network is trusted, or
   * TLS ends in front of the daemon. */
  bool allow_plaintext;
  /* A run whose trainer (docs/PROTOCOL.md section 13) disconnected stays
   * `detached` this long for it to attach again, then is `lost`; 0 (the
   * default) means 60000. */
  int trainer_timeout_ms;
  /* Folders whose files jobs submitted over the network may read and write
   * (docs/JOB.md): each must exist; relative paths in those jobs resolve
   * against the first. None: such jobs may only use the built-in generators.
   * Jobs given through tb_server_submit() are the operator's and may use any
   * path. A folder that holds the state directory is refused. */
  const char *data_dirs[TB_SERVER_MAX_DATA_DIRS];
  int n_data_dirs;
  /* The most memory one job may need at its peak (tb_job_estimate), in
   * bytes; a job over it is refused at submit. 0 (default): half of the
   * machine's memory, or of the memory limit of the daemon's control group
   * when that is lower (tb_server_default_job_memory). */
  uint64_t max_job_memory;
  /* Jobs with "distributed": {"ranks": N} (docs/DISTRIBUTED.md): the
   * daemon launches, when the run's turn comes (one run at a time, as its
   * own), `MPIRUN MPIRUN_ARGS... -n N [--host H | --hostfile F] -x
   * TRAINBUS_TOKEN TRAINBUS train STATE_DIR/runs/ID/job.json --base-dir DIR
   * --connect ADDR --run ID --verbose 0`, with the trainer token in the
   * environment (never on a command line), and supervises it: rank 0
   * attaches the run it was launched for and publishes it (the run's source
   * is "trainer"), controls go to it, and when mpirun exits before the run
   * has ended the run fails with mpirun's reason (the rank that died). A
   * job submitted over the network also gets --data-dir for each data
   * directory (the ranks are held as the daemon would hold it) and may not
   * name hosts. Needs a state directory. mpirun NULL: "mpirun" on PATH;
   * trainbus NULL: "trainbus" beside this program, else on PATH;
   * mpirun_args: given to mpirun first (--oversubscribe, --mca ..., a
   * --hostfile of the operator's). max_ranks: the most ranks a job may ask
   * for; 0 (default): this machine's online processors; negative: no
   * distributed jobs. A job's memory estimate counts once per rank on this
   * machine (all of them unless the job names hosts). */
  const char *mpirun, *trainbus;
  const char *mpirun_args[TB_SERVER_MAX_MPIRUN_ARGS];
  int n_mpirun_args;
  int max_ranks;
  /* Past events kept in memory for replay and history, all runs together,
   * in bytes: each event's encoded line plus its 40-byte descriptor, and
   * the runs' ring tables (8 bytes a slot). Over it, the oldest events of
   * the runs that have ended are evicted first, the run that ended first
   * first; only if live runs alone exceed it, the oldest events of live
   * runs (each keeps at least its newest event). Evicted events are still
   * read from a run's log in the state directory; without one they are
   * gone, as past retain_events (docs/PROTOCOL.md, "Retention"). As Redis's
   * maxmemory, JetStream's max_bytes, Kafka's retention.bytes. 0 (default):
   * tb_server_default_retain_bytes(). */
  uint64_t retain_bytes;
} tb_server_opts_t;

void tb_server_opts_defaults(tb_server_opts_t *o);

/* Creates the server and binds its listeners (so addresses are known and bind
 * errors reported here). Refuses a non-loopback listener without a
 * user-given token, and one without TLS unless allow_plaintext; the message
 * says how to fix it. Reads the TLS files now (errors name the file). */
int tb_server_new(const tb_server_opts_t *o, tb_server_t **out, tb_err_t *err);
/* Runs the loop on the calling thread until tb_server_stop(). */
int tb_server_run(tb_server_t *s);
/* Runs the loop on a new thread. */
int tb_server_start(tb_server_t *s);
/* Any thread (and signal-safe through a uv_async): stops running jobs at a
 * batch boundary (checkpointing them when there is a state directory), flushes
 * logs, sends bye to every client and ends the loop. tb_server_run() returns;
 * after tb_server_start(), tb_server_free() joins the thread. */
void tb_server_stop(tb_server_t *s);
/* Frees the server (joining its loop thread after tb_server_start()). Returns
 * uv_loop_close()'s verdict: 0 when every handle was closed, UV_EBUSY if a
 * handle leaked (a bug). */
int tb_server_free(tb_server_t *s);

/* The bound address of listener i, as a client would connect to it:
 * "127.0.0.1:43125", "tls://127.0.0.1:43125" (a TLS listener) or "unix:/path". */
const char *tb_server_address(const tb_server_t *s, int i);
/* The HTTP front's address ("127.0.0.1:8080"), or NULL without one. */
const char *tb_server_http_address(const tb_server_t *s);
/* The token in force (given or generated). */
const char *tb_server_token(const tb_server_t *s);
/* The observer (read-only) and trainer tokens in force. */
const char *tb_server_observer_token(const tb_server_t *s);
const char *tb_server_trainer_token(const tb_server_t *s);

/* Queues a job of the operator (JSON text as a job file; relative paths
 * resolve against base_dir) to run; *run_id receives its id. The job may
 * read and write any path, and is held to the memory budget
 * (max_job_memory). Errors: the job's (TB_EINVAL and others, with the
 * field's path), TB_ERANGE for a job over the budget (the message names the
 * estimate and the limit), -EAGAIN when max_queued_runs are waiting.
 * Thread-safe. */
int tb_server_submit(tb_server_t *s, const char *json, size_t len, const char *origin,
                     const char *base_dir, char run_id[64], tb_err_t *err);
/* The default of max_job_memory: half of the physical memory, or of the
 * control group's memory limit (cgroup v2 memory.max, v1
 * memory.limit_in_bytes) when that is lower. */
uint64_t tb_server_default_job_memory(void);

/* The default of retain_bytes: 1 GiB, or an eighth of the memory
 * tb_server_default_job_memory() sees (a quarter of its half) when that is
 * less, so that a small machine keeps room for its jobs. An event of the
 * demo job costs about 250 bytes retained (a 200-byte line, its
 * descriptor, its ring slot): 1 GiB holds some 4 million events, about 20
 * runs at the retain_events cap. */
uint64_t tb_server_default_retain_bytes(void);

/* Embedding: a run whose training loop belongs to the caller. `epochs` is
 * reported in status (0 if unknown). Thread-safe. */
int tb_server_attach(tb_server_t *s, const char *name, int epochs, tb_run_t **out, tb_err_t *err);
/* The run's publisher callback: add it to the loop's callback list, last. */
tb_callback_t *tb_run_callback(tb_run_t *r);
/* The run's control block: pass it to fit (tb_fit_opts_t.control) or call
 * tb_control_apply() on it at every batch boundary of a hand-written loop. */
tb_control_t *tb_run_control(tb_run_t *r);
/* Ends an attached run: `failed` chooses the final state (finished, or
 * stopped when a stop was requested, or failed). The run stays listed. */
void tb_run_detach(tb_run_t *r, bool failed);

#endif
