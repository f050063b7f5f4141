/* Private to server/: the loop's data structures.
 *
 * Ownership: the loop thread owns connections, subscriptions, retained
 * events and every run field marked "loop". The trainer of a run owns the
 * fields marked "trainer". The few fields both touch are behind the queue
 * mutex (the record queue) or the run's lockstep mutex. */
#ifndef TB_SERVER_INTERNAL_H
#define TB_SERVER_INTERNAL_H

#include "trainbus/protocol.h"
#include "trainbus/server.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

typedef struct conn_s conn_t;
typedef struct tb_tls_s tb_tls_t; /* tls.c: one connection's TLS state */

/* Appends a string literal (its length known at compile time). */
#define TB_LIT(b, s) tb_buf_append((b), (s), sizeof(s) - 1)

/* Encoded event lines, written back to back by one drain (or one line made
 * apart: a lockstep variant, a line read back from disk) and shared by
 * reference count: the run's ring holds one reference per event in it, a
 * connection's output queue one per stretch of consecutive lines it sends
 * from it. Laid out as the chunk, then n descriptors, then the bytes. */
typedef struct tb_chunk_s {
  int refs;
  int n;
  /* When a ring first took one of its events: the server's retention clock
   * (events.c), 0 before. What "oldest" means when the retention bound
   * evicts events of live runs. */
  uint64_t stamp;
} tb_chunk_t;

/* One event line inside a chunk. */
typedef struct tb_ev_s {
  tb_chunk_t *chunk;
  const char *data; /* the whole notification line, '\n' included */
  size_t len;
  int64_t seq;
  tb_event_kind_t kind;
  int batch;
} tb_ev_t;

/* A single line as its own chunk (refs 1: the caller's). */
tb_ev_t *tb__ev_new(const char *line, size_t len, int64_t seq, tb_event_kind_t kind, int batch);
void tb__ev_ref(tb_ev_t *e);
void tb__ev_unref(tb_ev_t *e);
void tb__chunk_ref(tb_chunk_t *ch);
void tb__chunk_unref(tb_chunk_t *ch);

/* What a trainer hands the loop: one event, not yet encoded, as it sits in
 * the trainer->loop queue. The queue is a byte buffer of such records, each
 * followed by its tail (8-aligned): n_logs doubles, then n_logs names, then,
 * for state and control events, action, by and reason, all NUL-terminated.
 * A batch event takes about 100 bytes plus its logs. */
typedef struct tb_rec_s {
  tb_run_t *run;
  uint32_t size; /* bytes of the record in the queue, its tail included */
  int n_logs;
  int64_t seq;
  tb_event_kind_t kind;
  int epoch, batch;
  int64_t time_us;
  double lr; /* the model's rate now, for status; NAN if unknown */
  int epochs;
  /* state / control events */
  tb_run_state_t state, prev_state;
  char *path;            /* checkpoint events: the file written (malloc'ed, freed by the loop); NULL
                            otherwise */
  tb_classes_t *classes; /* train_begin: the model's class names (a copy the loop takes
                            over), NULL otherwise */
  bool has_value, has_old;
  double value, old_value;
  uint64_t ticket; /* control events: the last request they apply (tb_control_note_t) */
  bool lockstep;   /* the trainer waits for "continue" on this seq */
  bool reask;      /* a logged lockstep event asked again after a restart (publish.c's redo):
                      delivered to lockstep subscribers only, not logged again */
  bool finished;   /* the trainer thread has ended (the last record of a job run) */
  /* A gap record (kind TB_EVENT_INVALID): the queue was full and the trainer
   * dropped drop_count batch events of the run, seqs drop_from..drop_to. */
  int64_t drop_count, drop_from, drop_to;
  /* Set by the loop while draining: where the encoded line sits. */
  size_t enc_off, enc_len;
} tb_rec_t;

/* The tail of a record, read by the loop. */
typedef struct tb_rec_tail_s {
  const double *values;
  const char *names[TB_LOGS_MAX];
  const char *action, *by, *reason; /* "" when absent */
} tb_rec_tail_t;
void tb__rec_tail(const tb_rec_t *rec, tb_rec_tail_t *t);

/* A control request waiting for the trainer to apply it (set_lr,
 * checkpoint): answered when the matching control event comes through. */
typedef struct pending_s {
  struct pending_s *next;
  uint64_t conn_id;
  tb_id_t id;
  tb_method_t method;
  uint64_t ticket; /* answered by the control event applying this ticket or a later one */
} pending_t;

/* Where a run's events come from (the "source" of its events). */
typedef enum {
  TB_SOURCE_DAEMON = 0, /* a job the daemon trains on its own thread */
  TB_SOURCE_EMBEDDED,   /* a program that embeds the server (tb_server_attach) */
  TB_SOURCE_TRAINER     /* a trainer publishing over the protocol (trainer.c) */
} tb_source_t;
const char *tb__source_name(tb_source_t s);

struct tb_run_s {
  tb_server_t *srv;
  tb_run_t *next; /* registry, oldest first */
  char id[TB_PROTO_RUN_MAX];
  bool attached; /* the caller's own loop (embedding) */
  tb_source_t source;
  char name[TB_PROTO_TEXT_MAX]; /* what is trained (run info's name), "" if unknown */
  /* A run a trainer publishes over the protocol: its trainer's state
   * (trainer.c, loop thread); NULL for every other run. */
  struct tb_trun_s *tr;
  int64_t n_hooks; /* hook events read back from its log (restore) */

  /* Set before the trainer starts, then read-only. */
  tb_callback_t cb; /* the publisher */
  tb_control_t control;
  tb_job_t *job;  /* job runs */
  char *job_json; /* the job as submitted */
  char dir[1024]; /* state_dir/runs/<id>, "" without a state dir */
  int epochs;

  /* trainer */
  int64_t seq; /* last seq handed out */
  /* Batch events dropped because the queue was full and not yet reported
   * to the loop by a gap record (under the server's q_mu). */
  int64_t qd_count, qd_from, qd_to;
  bool stop_requested;      /* a stop reached the trainer (set by its control note) */
  _Atomic bool cancel_flag; /* set by the loop: the stop is a cancel */
  char resume_path[1200];   /* a checkpoint to continue from, "" for a fresh start */
  uv_thread_t thread;
  char fail_msg[512];

  /* Lockstep: the loop publishes which hooks have lockstep subscribers; the
   * trainer waits at those until every such subscriber answered or the
   * timeout passed. */
  _Atomic uint32_t lockstep_mask;
  _Atomic int lockstep_timeout_ms;
  pthread_mutex_t ls_mu;
  pthread_cond_t ls_cv;
  int gate; /* a restored run waits for this many lockstep subscriptions of before
               the restart to be renewed (ghosts.c), at most gate_timeout_ms */
  int gate_timeout_ms;
  int64_t ls_seq; /* the seq being waited on, 0 if none */
  int ls_waiting; /* answers still expected */
  bool ls_armed;  /* the loop has counted the answers for ls_seq */

  /* A run rebuilt from the state directory by --resume (tb__runs_restore),
   * set before its trainer starts. It keeps the state its log ends in
   * (restored_state: running, paused or stopping) rather than going back to
   * queued, so that a restart does not show in status; logged_seq is the last
   * seq of its log, the events its trainer may regenerate (publish.c). */
  bool restored;
  tb_run_state_t restored_state;
  int64_t logged_seq;

  /* trainer: regenerating logged events after a restart (publish.c) */
  bool resuming;              /* fit loads a checkpoint: its train_begin is no event */
  bool redo;                  /* events up to logged_seq are replays, not news */
  struct tb_redo_s *redo_log; /* what the log says came after the checkpoint */
  size_t n_redo_log;
  int64_t redo_base;     /* redo_log[i] is seq redo_base + 1 + i */
  int64_t redo_injected; /* the last logged control requested again */

  /* The last seq the loop has written to the log (and flushed): a checkpoint
   * waits for it to reach the seq it records, so that no checkpoint is ahead
   * of the log (publish.c). */
  _Atomic int64_t flushed_seq;

  /* loop */
  tb_run_state_t state;
  int64_t epoch, batch, last_seq;
  int64_t n_qdropped; /* batch events the queue dropped (counted by the loop) */
  bool has_lr;
  double lr;
  bool trained; /* train_end has been seen: what follows is evaluate or predict */
  bool thread_started, thread_joined;
  bool cancel_requested;
  bool network;               /* submitted over the network (held to network_policy) */
  struct tb_launch_s *launch; /* a distributed job's mpirun (launch.c); NULL otherwise */
  tb_ev_t **ring;          /* retained events: ring[(seq - 1) % cap] for seq > last_seq - n_ring */
  size_t ring_cap, n_ring; /* n_ring seq positions end at ring_end; a seq dropped at the
                              queue holds NULL */
  int64_t ring_end;
  FILE *log; /* state_dir/runs/<id>/events.ndjson, appended */
  /* Retention across runs (events.c): the run's place on the server's list
   * of live or ended runs holding events, and the bytes its ring holds (its
   * events' lines and descriptors, and the ring's table). */
  tb_run_t *ret_prev, *ret_next;
  int ret_list; /* TB__RET_NONE, TB__RET_LIVE, TB__RET_ENDED */
  uint64_t ret_bytes;
  /* loop, during one drain step: this run's events of the step, in a chunk
   * of their own (so that evicting a run frees its memory) */
  tb_run_t *d_next;
  tb_chunk_t *d_ch;
  tb_ev_t *d_evs;
  char *d_data;
  int d_n, d_i;
  size_t d_len, d_off;
  pending_t *pending;
  tb_classes_t *classes; /* the class names of its last train_begin (or its log's), or NULL */
};

typedef struct sub_s {
  int64_t id;
  int n_runs, n_events;
  char runs[TB_PROTO_SUB_RUNS_MAX][TB_PROTO_RUN_MAX];
  char events[TB_PROTO_SUB_EVENTS_MAX][TB_PROTO_NAME_MAX];
  int64_t every;
  uint32_t lockstep; /* bitmask over tb_event_kind_t */
  int64_t lockstep_timeout_ms;
  /* What this subscription matches, worked out on first use (the
   * patterns never change): a bitmask over tb_event_kind_t and the verdict
   * for the last run seen. */
  bool m_ready, m_run_ok;
  uint32_t m_kinds;
  const tb_run_t *m_run;
  /* Replay in progress: events of `replay_run` from replay_next are sent as
   * the connection drains; the subscription turns live when it catches up. */
  tb_run_t *replay_run;
  int64_t replay_next;
  FILE *replay_file;       /* reading the on-disk log for seqs older than memory */
  int64_t replay_lockstep; /* a lockstep event the trainer waits at, to send marked when the
                              replay reaches it; 0 if none */
} sub_t;

/* A slow client's losses for one run, told before its next event there. */
typedef struct drop_s {
  tb_run_t *run;
  int64_t count, from, to;
} drop_t;

/* Queued output: a stretch of lines of a shared chunk (one reference), or
 * a malloc'ed reply. Consecutive lines of one chunk sent to one client
 * extend one entry, so a drain of many events costs one iovec per client. */
typedef struct outbuf_s {
  uv_buf_t buf;      /* what is left to write */
  tb_chunk_t *chunk; /* the shared chunk buf points into, or NULL */
  char *mem;         /* or the malloc'ed reply it points into */
} outbuf_t;

typedef struct wreq_s {
  uv_write_t req;
  conn_t *conn;
  int n;
  outbuf_t bufs[];
} wreq_t;

struct conn_s {
  union {
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  tb_server_t *srv;
  conn_t *prev, *next;
  uint64_t id;
  struct lws *wsi; /* a WebSocket client (http.c); NULL for a stream */
  tb_tls_t *tls;   /* a client of a TLS listener (tls.c); NULL for plaintext */
  bool local;      /* accepted on a loopback or Unix listener */
  tb_role_t role;
  tb_role_t token_role; /* what the token it authenticated with grants (NONE: no token) */
  char client[TB_PROTO_TEXT_MAX];
  char label[200]; /* "client 7 (lr-tuner)" */
  uint64_t t_open_ms;
  uint64_t t_last_in_ms; /* when the client last sent a line */
  bool closing, close_after_flush, http_checked;

  char *in;
  size_t in_len, in_cap, scan;

  sub_t *subs;
  int n_subs, cap_subs;
  int64_t next_sub;

  outbuf_t *out; /* queued, not yet handed to uv_write */
  int n_out, cap_out;
  size_t pend_bytes; /* queued here, not yet handed to uv_write (or, for a WebSocket, to lws) */
  int inflight;      /* uv_write requests not yet called back: output gathers meanwhile */
  bool touched;      /* on the server's list of clients to write at the end of a drain */
  uint64_t soft_since_ms; /* when out_bytes first exceeded the soft limit, 0 if below */

  drop_t drops[8];
  int n_drops;

  /* Lockstep events this connection has been sent and not yet answered. */
  struct {
    tb_run_t *run;
    int64_t seq;
  } owed[8];
  int n_owed;
};

typedef struct listener_s {
  union {
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  tb_server_t *srv;
  bool local;
  bool tls;          /* a TCP listener of a daemon given a certificate */
  char address[300]; /* "127.0.0.1:7787", "tls://0.0.0.0:7787" or "unix:/path" */
} listener_t;

struct tb_server_s {
  tb_server_opts_t o;
  char token[256];
  char observer_token[256], trainer_token[256]; /* roles by token (methods.c, do_auth) */
  char state_dir[1024];
  bool address_file; /* this daemon wrote state_dir/address */
  uv_loop_t loop;
  listener_t listeners[TB_SERVER_MAX_LISTEN];
  int n_listeners;
  uv_async_t wake;        /* records queued, or stop requested */
  uv_timer_t tick;        /* deadlines: auth, slow consumers, lockstep */
  uv_timer_t drain_timer; /* a deferred drain (flush_interval_ms > 0 only) */
  uv_idle_t drain_idle;   /* more records taken than one step handles: go on next iteration */
  uint64_t last_drain_ms;
  uv_thread_t loop_thread;
  bool loop_thread_started;

  /* trainer -> loop queue: records (tb_rec_t) back to back; batch events
   * beyond o.queue_bytes are dropped, lifecycle events never */
  pthread_mutex_t q_mu;
  char *q;
  size_t q_len, q_cap;
  /* loop: the records taken from the queue, handled from cur_off on */
  char *cur;
  size_t cur_len, cur_cap, cur_off;
  int64_t n_qdropped; /* batch events dropped at the queue, all runs */
  _Atomic bool stop_requested;
  bool stopping, stopped;

  tb_run_t *runs; /* oldest first */
  int n_runs, next_run;
  pthread_mutex_t runs_mu; /* guards the registry list against attach/submit from other threads */

  /* TLS (tls.c): the context every TLS connection is made from (NULL
   * without --tls-cert), the loop's one read buffer for ciphertext, and
   * what the certificate says, for the log. */
  struct ssl_ctx_st *tls_ctx;
  char *tls_rbuf;
  char tls_subject[512];
  bool tls_expired;

  struct lws_context *lws; /* the HTTP/WebSocket front (http.c), or NULL */
  bool lws_stopping;
  bool http_local; /* the HTTP front listens on loopback */
  char http_address[300];

  tb_buf_t enc; /* the drain's encoding scratch */
  /* Clients given output during the current drain, written at its end. */
  conn_t **touched;
  int n_touched, cap_touched;
  bool draining;
  /* Every client the last drain step wrote to has a full socket: the next
   * step waits (at most TB_DRAIN_PAUSE_MS, the queue absorbing what the
   * trainers send) for one of them to drain, rather than drop its events
   * at once. */
  bool all_touched_full, drain_paused;
  uv_timer_t pause_timer;
  struct tb_ghost_s *ghosts; /* lockstep subscriptions of before a restart, not yet renewed */
  uv_timer_t trainer_timer;  /* trainers' deadlines: lockstep waits, detached runs (trainer.c) */
  int n_ghosts;

  conn_t *conns;
  int n_conns;
  uint64_t next_conn;
  int64_t n_events;

  /* Retained events across runs (events.c): at most retain_bound bytes
   * (o.retain_bytes, or its default), counted as tb_run_t.ret_bytes. Over
   * it, the oldest events of the runs that ended go first, oldest-ended run
   * first (the `ended` list, in the order they ended); only then those of
   * live runs (the `live` list), by their chunks' stamps. */
  uint64_t retain_bound, retained_bytes, ret_clock;
  int64_t n_retained, n_evicted;
  struct {
    tb_run_t *head, *tail;
  } ret_live, ret_ended;
  tb_run_t *d_runs; /* the runs with events in the current drain step */

  /* Jobs' policies (docs/JOB.md): the operator's (--job, tb_server_submit:
   * any path) and the network's (submit: confined to the data directories,
   * file contents kept out of messages); both hold the memory budget. */
  char data_dirs[TB_SERVER_MAX_DATA_DIRS][1024]; /* canonical */
  const char *data_dir_ptrs[TB_SERVER_MAX_DATA_DIRS];
  tb_job_policy_t operator_policy, network_policy;
};

/* server.c: writes text to path through a temporary file and a rename, mode
 * 0600; 0 or a negative error. */
int tb__write_private(const char *path, const char *text);

/* log.c */
void tb__log(tb_server_t *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t tb__srv_now_ms(void);
int64_t tb__srv_now_us(void);

/* publish.c: the trainer side */
void tb__publisher_init(tb_run_t *r);
/* Trainer thread, before fit: sets up the redo of a restored run (publish.c). */
void tb__publisher_begin(tb_run_t *r, bool from_checkpoint);
/* Queues rec (its header filled) with the logs (NULL: none) and, for state and
 * control events, its texts (NULL: absent). Trainer threads (and the loop). */
void tb__push(tb_run_t *r, tb_rec_t *rec, const tb_logs_t *logs, const char *action, const char *by,
              const char *reason);
void tb__push_finished(tb_run_t *r);
void tb__push_state(tb_run_t *r, tb_run_state_t state, tb_run_state_t prev, const char *reason,
                    int epoch, int batch);

/* server.c: queues a job; `network` chooses the network's policy. */
int tb__server_submit(tb_server_t *s, const char *json, size_t len, const char *origin,
                      const char *base_dir, bool network, char run_id[64], tb_err_t *err);

/* runs.c */
tb_run_t *tb__run_new(tb_server_t *s, const char *id, bool attached);
tb_run_t *tb__run_find(tb_server_t *s, const char *id);
void tb__run_free(tb_run_t *r);
void tb__runs_schedule(tb_server_t *s);
void tb__run_info(const tb_run_t *r, tb_run_info_t *out);
/* Writes the run object to <run dir>/status, where a restart finds what the
 * log alone does not say (the learning rate). Loop thread. */
void tb__run_save_status(tb_run_t *r);
int tb__runs_restore(tb_server_t *s, tb_err_t *err);
void tb__runs_number_after_existing(tb_server_t *s);
void tb__runs_shutdown(tb_server_t *s);
bool tb__runs_all_done(tb_server_t *s);
/* events.c: the loop side */
/* Handles up to TB_DRAIN_STEP queued records; true if more are waiting. */
bool tb__drain(tb_server_t *s);
/* Handles every queued record. */
void tb__drain_all(tb_server_t *s);
/* server.c: a client's socket drained; a paused drain goes on. */
void tb__drain_resume(tb_server_t *s);
/* server.c: a paused drain goes on if a control request awaits its answer. */
void tb__drain_nudge(tb_server_t *s);
/* The class names a train_begin event line carries ("classes"), or NULL. */
tb_classes_t *tb__event_classes(const char *line, size_t len);
/* Keeps e (one more reference) in r's ring at e->seq, then evicts what the
 * server's retention bound asks (events.c). Loop thread. */
void tb__run_retain(tb_run_t *r, tb_ev_t *e);
enum { TB__RET_NONE = 0, TB__RET_LIVE, TB__RET_ENDED };
/* The bound in force: o.retain_bytes, or its default. */
uint64_t tb__retain_bound(tb_server_t *s);
void tb__run_track(tb_run_t *r, const tb_rec_t *rec);
tb_ev_t *tb__run_event(tb_run_t *r, int64_t seq);
void tb__lockstep_recount(tb_run_t *r);
void tb__lockstep_answer(tb_run_t *r, conn_t *c, int64_t seq, bool *ok);
void tb__lockstep_release_conn(conn_t *c);
void tb__pending_fail(tb_run_t *r, const char *why);
/* ghosts.c: lockstep subscriptions across a restart */
void tb__ghosts_save(tb_server_t *s);
void tb__ghosts_load(tb_server_t *s);
void tb__ghosts_renewed(tb_server_t *s, const sub_t *sb);
void tb__ghosts_wait(tb_run_t *r); /* trainer thread, before training */
void tb__ghosts_open(tb_run_t *r); /* ends the wait (shutdown) */
/* conn.c */
void tb__conn_accept(listener_t *l);
/* A new connection (stream or WebSocket) joins the server and gets hello. */
void tb__conn_register(tb_server_t *s, conn_t *c, bool local);
void tb__conn_free(conn_t *c);
/* The client's backlog: bytes queued here plus those libuv has not yet
 * written to the socket. What the output limits are measured against. */
size_t tb__conn_backlog(const conn_t *c);
void tb__outbuf_release(outbuf_t *o);
void tb__conn_greet(conn_t *c);
void tb__conn_input(conn_t *c, const char *data, size_t len);
void tb__conn_send(conn_t *c, const char *data, size_t len);
void tb__conn_send_ev(conn_t *c, tb_ev_t *e);
void tb__conn_flush(conn_t *c);
void tb__conn_close(conn_t *c, const char *reason, const char *message);
void tb__conn_tick(conn_t *c, uint64_t now);
conn_t *tb__conn_find(tb_server_t *s, uint64_t id);
/* Hands e to every matching subscriber; lockstep: the trainer waits for it;
 * reask: a logged lockstep event asked again after a restart, for lockstep
 * subscribers only. */
void tb__deliver(tb_server_t *s, tb_run_t *r, tb_ev_t *e, bool lockstep, bool reask);
/* Every subscriber of run r loses seqs from..to (count of them): told before
 * its next event of r. */
void tb__deliver_gap(tb_server_t *s, tb_run_t *r, int64_t count, int64_t from, int64_t to);
/* Writes the clients given output during a drain (those not waiting for a
 * write already). */
void tb__flush_touched(tb_server_t *s);
void tb__replay_pump(conn_t *c);
/* http.c */
int tb__http_start(tb_server_t *s, const char *spec, tb_err_t *err);
void tb__http_stop(tb_server_t *s);
void tb__http_free(tb_server_t *s);
void tb__ws_want_write(conn_t *c);
void tb__ws_kill(conn_t *c);

/* tls.c: TLS for stream connections, OpenSSL kept inside. */
enum { TB_TLS_READ_CHUNK = 65536 };
enum { TB__TLS_PLAINTEXT = -2, TB__TLS_FAILED = -3, TB__TLS_EOF = -4 };
/* Makes the server's TLS context from o.tls_cert, o.tls_key and
 * o.tls_client_ca (nothing without a certificate); errors name the file. */
int tb__tls_setup(tb_server_t *s, tb_err_t *err);
void tb__tls_server_free(tb_server_t *s);
tb_tls_t *tb__tls_new(tb_server_t *s); /* NULL: out of memory */
void tb__tls_free(tb_tls_t *t);
/* Ciphertext read from the socket. TB__TLS_PLAINTEXT if it is the start of
 * the connection and not a TLS handshake (a plaintext client): then nothing
 * was taken. */
int tb__tls_input(tb_tls_t *t, const char *data, size_t len);
/* Goes on with the handshake, then decrypts into buf: 0 with *got bytes (0
 * when more ciphertext is needed), TB__TLS_EOF at the client's close_notify,
 * TB__TLS_FAILED with the reason in why. May produce ciphertext to send
 * (handshake messages, alerts): tb__tls_pending. */
int tb__tls_read(tb_tls_t *t, char *buf, size_t cap, size_t *got, char *why, size_t why_len);
bool tb__tls_established(const tb_tls_t *t);
uint64_t tb__tls_bytes_in(const tb_tls_t *t);
/* "TLSv1.3, TLS_AES_256_GCM_SHA384[, client certificate /CN=...]". */
void tb__tls_describe(const tb_tls_t *t, char *buf, size_t len);
/* Encrypts the buffers (the handshake must be done): 0 or TB__TLS_FAILED. */
int tb__tls_write(tb_tls_t *t, const uv_buf_t *bufs, int n);
/* Queues the close_notify alert (once, after the handshake). */
void tb__tls_close_notify(tb_tls_t *t);
/* Ciphertext waiting for the socket: its length, where it is, dropping its
 * first n bytes, and taking the whole buffer (malloc'ed; the caller frees
 * it). */
size_t tb__tls_pending(const tb_tls_t *t);
const char *tb__tls_out(const tb_tls_t *t);
void tb__tls_consume(tb_tls_t *t, size_t n);
char *tb__tls_take(tb_tls_t *t, size_t *len);

/* methods.c */
void tb__handle_line(conn_t *c, const char *line, size_t len);
void tb__conn_drop_subs(conn_t *c);
/* An error answer to q: a response, or for a notification (a trainer's
 * publish or applied, no id) a "rejected" notification naming the event
 * (seq > 0, index >= 0) when there is one. */
void tb__reply_error(conn_t *c, const tb_req_t *q, int64_t seq, int64_t index, int code,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* trainer.c: runs that trainers publish over the protocol (PROTOCOL.md 13) */
void tb__trainer_attach(conn_t *c, const tb_req_t *q);
void tb__trainer_publish(conn_t *c, const tb_req_t *q);
void tb__trainer_applied(conn_t *c, const tb_req_t *q);
void tb__trainer_finish(conn_t *c, const tb_req_t *q);
/* The run cannot take a control request now (its trainer is not connected):
 * answers q with invalid_state and returns false. */
bool tb__trainer_ready(conn_t *c, const tb_req_t *q, tb_run_t *r);
/* Sends a control request to r's trainer; *ticket (may be NULL) receives
 * the id its applied will carry. */
void tb__trainer_forward(tb_run_t *r, const char *action, bool has_value, double value,
                         const char *by, uint64_t *ticket);
/* A pause forwarded and not resumed. */
bool tb__trainer_paused(const tb_run_t *r);
/* The run can write checkpoints (its trainer said so at attach). */
bool tb__trainer_checkpoints(const tb_run_t *r);
/* The lockstep wait of r may be over (every answer in): tell its trainer. */
void tb__trainer_ls_check(tb_run_t *r);
/* The lockstep hooks of r changed: tell its trainer. */
void tb__trainer_lockstep_changed(tb_run_t *r);
/* A connection is gone: the runs it published are detached. */
void tb__trainer_conn_gone(conn_t *c);
/* runs.c's restore: r (made from STATE_DIR/runs/<id>, its log read) is a
 * trainer's run described by the trainer.json at path. 0 or -1. */
int tb__trainer_restore(tb_run_t *r, const char *path);
/* ... and once its log is read: its trainer's seq, its state, the wait. */
void tb__trainer_restored(tb_run_t *r);
/* cancel: the trainer applies a stop and finishes cancelled, or, with none
 * connected, the run is cancelled now. */
void tb__trainer_cancel(tb_run_t *r, const char *by);
/* status: the fields attach gave beyond the run object (,"steps",...). */
void tb__trainer_status(const tb_run_t *r, tb_buf_t *b);
/* server.c: the trainers' timer, started with the loop's other handles. */
void tb__trainer_start(tb_server_t *s);
void tb__trainer_free(tb_run_t *r);
/* launch.c's run (its job distributed): a trainer's run that rank 0 will
 * attach by its id; until then control requests are refused as starting. */
int tb__trainer_adopt(tb_run_t *r, int ranks);
/* mpirun has exited: a run not ended yet fails with reason. */
void tb__trainer_launch_ended(tb_run_t *r, const char *reason);

/* The program `name` beside this executable (installed together), else
 * `name` for a PATH lookup, into out. (launch.c; supervise.c uses it too.) */
void tb__beside_self(const char *name, char *out, size_t cap);

/* launch.c: a submitted distributed job, trained by mpirun */
typedef struct tb_launch_s tb_launch_t;
/* Starts mpirun for r (r->job->dist_ranks > 1, r->dir set). 0, or an error
 * with its message (mpirun not found). */
int tb__launch(tb_run_t *r, bool network, tb_err_t *err);
/* mpirun is running, or its handles are not closed yet. */
bool tb__launch_busy(const tb_run_t *r);
int tb__launch_ranks(const tb_run_t *r);
int tb__launch_pid(const tb_run_t *r); /* 0 once exited */
/* SIGTERM to mpirun (it passes it to the ranks), SIGKILL 5 s later. */
void tb__launch_kill(tb_run_t *r);
void tb__launch_free(tb_run_t *r);

#endif
