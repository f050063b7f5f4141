/* Private to the client library: the connection struct and the helpers its
 * files share. */
#ifndef TB_CLIENT_INTERNAL_H
#define TB_CLIENT_INTERNAL_H

#include "trainbus/client.h"

#include <sys/types.h>

/* A notification line that arrived while a call waited, kept verbatim and
 * decoded when tb_client_next hands it out (a decoded tb_smsg_t points into
 * itself, so it cannot be moved around a queue). */
typedef struct tb__line_s {
  struct tb__line_s *next;
  size_t len;
  char text[];
} tb__line_t;

/* The last seq delivered per run, for deduplication and resuming, and the
 * last lockstep answer sent for it, to repeat when a restarted daemon asks
 * again. */
typedef struct tb__seq_s {
  char run[TB_PROTO_RUN_MAX];
  int64_t last;
  int64_t answered; /* seq of the last continue sent, 0 if none */
  tb_client_actions_t answer;
} tb__seq_t;

/* A subscription to renew on reconnect. */
typedef struct tb__sub_s {
  tb_req_t req;     /* the subscribe request as first sent */
  int64_t id;       /* the server's id on the current connection */
  int64_t next_seq; /* first live seq the server announced, 0 if none */
} tb__sub_t;

struct tb_client_s {
  int fd; /* -1 while disconnected */
  char addr[1024];
  char token[TB_PROTO_TOKEN_MAX];
  char state_dir[1024]; /* "" if none: address and token are read there at every connect */
  bool addr_given, token_given;
  char name[TB_PROTO_TEXT_MAX];
  tb_role_t want_role, role;
  int connect_timeout_ms, call_timeout_ms;
  tb_hello_t hello;

  tb_buf_t rbuf;    /* bytes received, rpos.. not yet framed */
  size_t rpos;      /* start of the current line in rbuf */
  size_t scan_from; /* framer state for the current line */
  bool eof;         /* the peer closed its side */
  char bye_reason[TB_PROTO_NAME_MAX];

  tb__line_t *q_head, *q_tail;
  size_t n_queued;

  tb__seq_t *seqs;
  int n_seqs, cap_seqs;
  tb__sub_t *subs;
  int n_subs, cap_subs;

  int64_t next_id;
  tb_smsg_t scratch; /* decoding space for lines read during a call */
  bool keep_raw;     /* tb_client_keep_raw */
  tb_buf_t raw;      /* the line of the last notification tb_client_next returned */

  /* TLS (tls.c): the options, the context (made at the first TLS connect
   * and kept across reconnects), and the session of the current
   * connection (NULL for plaintext). */
  bool tls, insecure;
  char ca_file[1024], server_name[256], cert_file[1024], key_file[1024];
  struct ssl_ctx_st *tls_ctx;
  struct tb__tls_s *tls_conn;
};

/* Fills err (may be NULL) with code, its name and a printf-style message;
 * returns code. */
int tb__cerr(tb_client_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* sock.c: opens a connected stream socket to addr within timeout_ms. Returns
 * the descriptor (>= 0) or a negative code with err filled. */
int tb__sock_open(const char *addr, int timeout_ms, tb_client_err_t *err);
/* Writes all of buf, waiting for room up to deadline_ms (monotonic ms; < 0 no
 * limit). 0, TB_CLIENT_ETIMEOUT or -errno. Never raises SIGPIPE. */
int tb__sock_send(int fd, const char *buf, size_t len, int64_t deadline_ms);
/* The connection's transport: plaintext on the socket, or TLS over it.
 * tb__recv returns bytes read (> 0), 0 at the end of the stream, -EAGAIN
 * when nothing is there yet (poll the socket), or another negative code
 * with err filled. tb__send writes all of buf by the deadline (0 or a code,
 * err filled). */
ssize_t tb__recv(tb_client_t *c, char *buf, size_t cap, tb_client_err_t *err);
int tb__send(tb_client_t *c, const char *buf, size_t len, int64_t deadline, tb_client_err_t *err);

/* tls.c: TLS over the connected socket c->fd to host (the address's host,
 * for the certificate's name check). Handshake by the deadline; 0 or a code
 * (TB_CLIENT_ETLS, ETIMEOUT, ECLOSED, -errno) with err saying why. */
int tb__tls_connect(tb_client_t *c, const char *host, int64_t deadline, tb_client_err_t *err);
ssize_t tb__tls_recv(tb_client_t *c, char *buf, size_t cap, tb_client_err_t *err);
int tb__tls_send(tb_client_t *c, const char *buf, size_t len, int64_t deadline,
                 tb_client_err_t *err);
/* Ends the session (its memory; the socket is the caller's). */
void tb__tls_drop(tb_client_t *c);
/* Frees the context. */
void tb__tls_free(tb_client_t *c);

/* Monotonic clock in milliseconds. */
int64_t tb__now_ms(void);
/* A deadline timeout_ms from now; -1 (none) for a negative timeout. */
int64_t tb__deadline(int timeout_ms);

/* client.c, for the publisher (publisher.c), which writes lines of its own
 * (publish and applied notifications) and reads every message itself:
 * a fresh request id; all of buf sent by the deadline (0, or a code with
 * err filled; the connection is dropped unless it timed out); the next
 * message of any kind (results and errors too), queued ones first, within
 * timeout_ms (0: only what has arrived). */
int64_t tb__client_new_id(tb_client_t *c);
int tb__client_send_raw(tb_client_t *c, const char *buf, size_t len, int64_t deadline,
                        tb_client_err_t *err);
int tb__client_read(tb_client_t *c, int timeout_ms, tb_smsg_t *msg, tb_client_err_t *err);

/* Records the answer sent for lockstep event seq of run (calls.c). */
void tb__client_note_answer(tb_client_t *c, const char *run, int64_t seq,
                            const tb_client_actions_t *a);

#endif
