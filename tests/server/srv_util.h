/* Helpers of the server tests: temporary folders and files, raw line
 * connections (a socket and a line reader, for what a well-behaved client
 * never sends), child processes (the real trainbusd and examples/embed, whose
 * address is read from their log), and the C client for the rest.
 *
 * Every helper asserts with cmocka on failures that make the test pointless
 * (cannot connect, cannot start the daemon); the tests assert on behaviour. */
#ifndef TB_SRV_UTIL_H
#define TB_SRV_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "trainbus/client.h"
#include "trainbus/protocol.h"

#define SU_TRAINBUSD TB_BINARY_DIR "/trainbusd"
#define SU_TOKEN "srv-test-token"

/* ---- files ---- */
char *su_tmpdir(void); /* mkdtemp under $TMPDIR or /tmp; free() it */
void su_rmdir(const char *dir);
void su_write(const char *path, const char *text);
char *su_read(const char *path, size_t *len); /* NULL if it cannot be read */
bool su_same_bytes(const char *a, const char *b);
uint64_t su_now_ms(void);
void su_sleep_ms(int ms);

/* ---- raw connections ---- */
typedef struct su_conn_s {
  int fd;
  char *buf;
  size_t off, len, cap; /* unread bytes are buf[off, len) */
  bool eof;
} su_conn_t;

/* Connects to "HOST:PORT"; rcvbuf > 0 sets SO_RCVBUF before connecting. */
void su_connect(su_conn_t *c, const char *addr, int rcvbuf);
/* Writes all of s (a broken pipe is not an error: the server may have closed). */
void su_send(su_conn_t *c, const char *s, size_t len);
void su_sends(su_conn_t *c, const char *s);
/* The next line (without '\n') in a malloc'ed string: 1, 0 at EOF, -1 on timeout. */
int su_line(su_conn_t *c, int timeout_ms, char **line);
/* The next line decoded (asserts it decodes): 1, 0 at EOF, -1 on timeout. */
int su_msg(su_conn_t *c, int timeout_ms, tb_smsg_t *m);
/* Reads until EOF; true if EOF came in time. */
bool su_wait_eof(su_conn_t *c, int timeout_ms);
void su_close(su_conn_t *c);
/* Reads the hello and authenticates (request id 1); asserts success. */
void su_auth(su_conn_t *c, const char *role, const char *token);

/* ---- child processes ---- */
typedef struct su_proc_s {
  pid_t pid;
  char log[600];  /* stdout and stderr of the child */
  char addr[128]; /* from "listening on ADDR" */
  int status;     /* wait status once reaped */
  bool reaped;
} su_proc_t;

/* Starts argv[0] with output to log, and waits (up to 15 s) for a line
 * containing "listening on " followed by a TCP address. */
void su_spawn(su_proc_t *p, char *const argv[], const char *log);
/* The real daemon: --listen 127.0.0.1:0 --state-dir state --token SU_TOKEN
 * plus extra (NULL-terminated). */
void su_daemon(su_proc_t *p, const char *state, const char *const *extra);
/* Waits for the child to exit: its exit code, 128+signal if killed, or -1 if
 * it is still running after timeout_ms. */
int su_wait(su_proc_t *p, int timeout_ms);
/* SIGKILL (if still running) and reap. */
void su_kill(su_proc_t *p);
/* Prints the child's log to stderr (for failures). */
void su_dump(const su_proc_t *p);

/* ---- the C client ---- */
tb_client_t *su_client(const char *addr, tb_role_t role, const char *name);

/* One received event, flattened. */
typedef struct su_ev_s {
  int64_t seq;
  char run[64];
  char name[24];
  int64_t epoch, batch;
  int64_t time_us;
  bool lockstep;
  char state[16], prev_state[16], action[24], by[96], reason[160];
  bool has_value, has_old;
  double value, old;
  double lr;       /* logs["lr"], NAN if absent */
  double val_loss; /* logs["val_loss"], NAN if absent */
  int n_logs;
} su_ev_t;

void su_ev_from(su_ev_t *e, const tb_event_t *ev);
/* The whole retained history of run, from seq 1, through the history method
 * (paged). *n receives the count; free() the array. */
su_ev_t *su_history(tb_client_t *c, const char *run, int *n);
/* Waits (up to timeout_ms) for the run's final state event on a client that
 * is subscribed to it; returns the state name's first letter set in out. */
bool su_wait_final(tb_client_t *c, const char *run, int timeout_ms, char out[16]);
/* Polls status until the run is in a final state; returns true in time. */
bool su_poll_final(tb_client_t *c, const char *run, int timeout_ms, tb_run_info_t *info);

#endif
