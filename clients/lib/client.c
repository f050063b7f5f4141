/* The connection: handshake, the read side, calls and notifications.
 *
 * Everything the server sends goes through read_line(), which frames the
 * receive buffer with the protocol's framer. A call sends its request and
 * reads lines until the response with its id arrives; notifications read
 * meanwhile are queued verbatim and tb_client_next hands them out first, so
 * the caller sees every notification exactly once and in order whatever the
 * interleaving of calls and waits. Responses with another id (left over from
 * a call that timed out) are discarded.
 *
 * Resuming: tb_client_next records the last seq it delivered per run and
 * skips anything at or below it; tb_client_reconnect resubscribes single-run
 * subscriptions from that seq + 1. Together they give no gap (the server
 * replays from since_seq) and no duplicate (the skip catches events that were
 * both queued before the break and replayed after it). */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Room asked of the receive buffer before each recv(). */
#define READ_CHUNK 65536

int tb__cerr(tb_client_err_t *err, int code, const char *fmt, ...) {
  if (err == NULL)
    return code;
  err->code = code;
  snprintf(err->name, sizeof err->name, "%s", tb_client_err_name(code));
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  return code;
}

static void err_clear(tb_client_err_t *err) {
  if (err != NULL)
    memset(err, 0, sizeof *err);
}

/* Forgets the socket and any partial input; the queue is kept. */
static void drop(tb_client_t *c) {
  tb__tls_drop(c);
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  c->rbuf.len = 0;
  c->rpos = 0;
  c->scan_from = 0;
  c->eof = false;
}

static int closed_err(tb_client_t *c, tb_client_err_t *err) {
  if (c->bye_reason[0])
    return tb__cerr(err, TB_CLIENT_ECLOSED, "connection closed by the server (bye: %s)",
                    c->bye_reason);
  return tb__cerr(err, TB_CLIENT_ECLOSED, "connection closed by the server");
}

/* The next non-empty line, as a pointer into the receive buffer valid until
 * the next call. 0, TB_CLIENT_ETIMEOUT, TB_CLIENT_ECLOSED (the connection is
 * then dropped), TB_CLIENT_EBAD_REPLY or -errno. */
static int read_line(tb_client_t *c, int64_t deadline, const char **line, size_t *len,
                     tb_client_err_t *err) {
  if (c->fd < 0)
    return closed_err(c, err);
  for (;;) {
    if (c->rpos < c->rbuf.len) {
      size_t ll = 0;
      int n = tb_frame_next(c->rbuf.data + c->rpos, c->rbuf.len - c->rpos, &c->scan_from,
                            TB_PROTO_MAX_LINE_CEIL, &ll);
      if (n > 0) {
        const char *l = c->rbuf.data + c->rpos;
        c->rpos += (size_t)n;
        if (ll == 0)
          continue;
        *line = l;
        *len = ll;
        return 0;
      }
      if (n != TB_PROTO_NEED_MORE) {
        drop(c);
        return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "the server sent an unreadable line (%s)",
                        tb_proto_strerror(n));
      }
    }
    if (c->eof) {
      drop(c);
      return closed_err(c, err);
    }
    if (c->rpos > 0) {
      memmove(c->rbuf.data, c->rbuf.data + c->rpos, c->rbuf.len - c->rpos);
      c->rbuf.len -= c->rpos;
      c->rpos = 0;
    }
    if (tb_buf_reserve(&c->rbuf, READ_CHUNK) != 0)
      return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory reading from the server");
    ssize_t n = tb__recv(c, c->rbuf.data + c->rbuf.len, c->rbuf.cap - c->rbuf.len, err);
    if (n > 0) {
      c->rbuf.len += (size_t)n;
      continue;
    }
    if (n == 0) {
      c->eof = true;
      continue;
    }
    if (n != -EAGAIN) {
      drop(c);
      return (int)n; /* err says why */
    }
    int64_t left = deadline < 0 ? -1 : deadline - tb__now_ms();
    if (deadline >= 0 && left <= 0)
      return tb__cerr(err, TB_CLIENT_ETIMEOUT, "no answer from the server in time");
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r = poll(&p, 1, left < 0 ? -1 : left > 1000000000 ? 1000000000 : (int)left);
    if (r < 0 && errno != EINTR) {
      int e = errno;
      return tb__cerr(err, -e, "poll: %s", strerror(e));
    }
  }
}

static int enqueue(tb_client_t *c, const char *line, size_t len, tb_client_err_t *err) {
  tb__line_t *q = malloc(sizeof *q + len + 1);
  if (q == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory queueing a notification");
  q->next = NULL;
  q->len = len;
  memcpy(q->text, line, len);
  q->text[len] = '\0';
  if (c->q_tail)
    c->q_tail->next = q;
  else
    c->q_head = q;
  c->q_tail = q;
  c->n_queued++;
  return 0;
}

static int server_err(const tb_smsg_t *m, tb_client_err_t *err) {
  int code = m->error.code;
  /* A code outside the table is still the server's refusal; keep it negative
   * so callers treat it as an error. */
  if (code >= 0)
    code = TB_PROTO_EINTERNAL;
  if (err != NULL) {
    err->code = code;
    snprintf(err->name, sizeof err->name, "%s",
             m->error.name[0] ? m->error.name : tb_proto_err_name(code));
    snprintf(err->msg, sizeof err->msg, "%s",
             m->error.message[0] ? m->error.message : tb_proto_strerror(code));
  }
  return code;
}

/* Sends r with a fresh id and waits for its response until deadline. */
static int call_until(tb_client_t *c, const tb_req_t *r, int64_t deadline, cJSON **result,
                      tb_client_err_t *err) {
  if (result)
    *result = NULL;
  if (c->fd < 0)
    return tb__cerr(err, TB_CLIENT_ECLOSED, "not connected");
  int64_t id = ++c->next_id;
  tb_req_t *req = malloc(sizeof *req);
  if (req == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  memcpy(req, r, sizeof *req);
  req->id.kind = TB_ID_INT;
  req->id.num = id;
  tb_buf_t out;
  tb_buf_init(&out);
  int rc = tb_req_encode(&out, req);
  free(req);
  if (rc != 0) {
    tb_buf_free(&out);
    return tb__cerr(err, rc == TB_PROTO_EINTERNAL ? TB_CLIENT_ENOMEM : TB_CLIENT_EINVALID,
                    "cannot encode the %s request", tb_method_name(r->method));
  }
  tb_client_err_t serr;
  rc = tb__send(c, out.data, out.len, deadline, &serr);
  tb_buf_free(&out);
  if (rc != 0) {
    if (rc != TB_CLIENT_ETIMEOUT)
      drop(c);
    return tb__cerr(err, rc, "sending %s: %s", tb_method_name(r->method), serr.msg);
  }
  for (;;) {
    const char *line;
    size_t len;
    if ((rc = read_line(c, deadline, &line, &len, err)) != 0)
      return rc;
    tb_smsg_t *m = &c->scratch;
    tb_proto_err_t perr;
    rc = tb_smsg_decode(line, len, m, &perr);
    if (rc != 0) {
      tb_smsg_free(m);
      drop(c);
      return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "the server sent an unreadable message: %s",
                      perr.msg);
    }
    switch (m->kind) {
    case TB_SMSG_RESULT:
    case TB_SMSG_ERROR:
      if (m->kind == TB_SMSG_ERROR && m->id.kind == TB_ID_NONE) {
        /* The server could not tell which request this answers: a protocol
         * error it closes the connection after. */
        rc = server_err(m, err);
        tb_smsg_free(m);
        return rc;
      }
      if (m->id.kind != TB_ID_INT || m->id.num != id) {
        tb_smsg_free(m); /* stale: the answer to a call that timed out */
        continue;
      }
      if (m->kind == TB_SMSG_ERROR) {
        rc = server_err(m, err);
      } else {
        if (result) {
          *result = m->result;
          m->result = NULL;
        }
        err_clear(err);
        rc = 0;
      }
      tb_smsg_free(m);
      return rc;
    case TB_SMSG_HELLO:
      tb_smsg_free(m);
      continue;
    default:
      /* Notifications wait in the queue for tb_client_next; a bye is noted
       * now so that the error this call is about to meet can name it. */
      if (m->kind == TB_SMSG_BYE)
        snprintf(c->bye_reason, sizeof c->bye_reason, "%s", m->bye.reason);
      tb_smsg_free(m);
      if ((rc = enqueue(c, line, len, err)) != 0)
        return rc;
      continue;
    }
  }
}

/* ---- for the publisher (publisher.c): lines of its own ---------------------- */

int64_t tb__client_new_id(tb_client_t *c) {
  return ++c->next_id;
}

int tb__client_send_raw(tb_client_t *c, const char *buf, size_t len, int64_t deadline,
                        tb_client_err_t *err) {
  if (c->fd < 0)
    return tb__cerr(err, TB_CLIENT_ECLOSED, "not connected");
  tb_client_err_t serr;
  int rc = tb__send(c, buf, len, deadline, &serr); /* plaintext or TLS */
  if (rc != 0) {
    if (rc != TB_CLIENT_ETIMEOUT)
      drop(c);
    return tb__cerr(err, rc, "sending to the server: %s", serr.msg);
  }
  return 0;
}

int tb__client_read(tb_client_t *c, int timeout_ms, tb_smsg_t *msg, tb_client_err_t *err) {
  memset(msg, 0, sizeof *msg);
  const char *line;
  size_t len;
  int rc;
  tb__line_t *q = c->q_head;
  if (q != NULL) {
    c->q_head = q->next;
    if (c->q_head == NULL)
      c->q_tail = NULL;
    c->n_queued--;
    line = q->text;
    len = q->len;
  } else if ((rc = read_line(c, tb__deadline(timeout_ms), &line, &len, err)) != 0) {
    return rc;
  }
  tb_proto_err_t perr;
  rc = tb_smsg_decode(line, len, msg, &perr);
  free(q);
  if (rc != 0) {
    tb_smsg_free(msg);
    drop(c);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "the server sent an unreadable message: %s",
                    perr.msg);
  }
  if (msg->kind == TB_SMSG_BYE)
    snprintf(c->bye_reason, sizeof c->bye_reason, "%s", msg->bye.reason);
  return 0;
}

int tb_client_call(tb_client_t *c, const tb_req_t *r, cJSON **result, tb_client_err_t *err) {
  err_clear(err);
  if (result)
    *result = NULL;
  if (c == NULL || r == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_client_call: NULL argument");
  return call_until(c, r, tb__deadline(c->call_timeout_ms), result, err);
}

/* Reads the first line of dir/name into out; false if there is none. */
static bool state_file(const char *dir, const char *name, char *out, size_t cap) {
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return false;
  bool ok = fgets(out, (int)cap, f) != NULL;
  fclose(f);
  if (ok)
    out[strcspn(out, "\r\n")] = '\0';
  return ok && out[0] != '\0';
}

/* Address and token from the state directory, read now: a restarted daemon
 * may listen elsewhere. The directory's token goes to its own address only. */
static int resolve(tb_client_t *c, tb_client_err_t *err) {
  if (c->state_dir[0] == '\0')
    return 0;
  char addr[sizeof c->addr];
  bool has_addr = state_file(c->state_dir, "address", addr, sizeof addr);
  if (!c->addr_given) {
    if (!has_addr)
      return tb__cerr(err, TB_CLIENT_EADDRESS,
                      "no daemon address in %s/address (is trainbusd running with this state "
                      "directory?)",
                      c->state_dir);
    snprintf(c->addr, sizeof c->addr, "%s", addr);
  }
  if (!c->token_given && !(has_addr && strcmp(addr, c->addr) == 0 &&
                           state_file(c->state_dir, "token", c->token, sizeof c->token)))
    c->token[0] = '\0';
  return 0;
}

/* Opens the socket, reads hello, authenticates. */
static int open_and_auth(tb_client_t *c, tb_client_err_t *err) {
  drop(c);
  c->bye_reason[0] = '\0';
  int rc0 = resolve(c, err);
  if (rc0 != 0)
    return rc0;
  /* "tls://HOST:PORT", or tls set: TLS over TCP. */
  const char *addr = c->addr;
  bool tls = c->tls || strncmp(addr, "tls://", 6) == 0;
  if (strncmp(addr, "tls://", 6) == 0)
    addr += 6;
  if (tls && (strncmp(addr, "unix:", 5) == 0 || strchr(addr, '/') != NULL))
    return tb__cerr(err, TB_CLIENT_EADDRESS, "%s: TLS is for TCP addresses (HOST:PORT)", c->addr);
  int64_t deadline = tb__deadline(c->connect_timeout_ms);
  int fd = tb__sock_open(addr, c->connect_timeout_ms, err);
  if (fd < 0)
    return fd;
  c->fd = fd;
  int rc;
  if (tls) {
    char host[512];
    const char *end = addr[0] == '[' ? strchr(addr, ']') : strrchr(addr, ':');
    size_t hl = end != NULL ? (size_t)(end - addr) - (addr[0] == '[') : strlen(addr);
    snprintf(host, sizeof host, "%.*s", (int)hl, addr + (addr[0] == '['));
    if ((rc = tb__tls_connect(c, host, deadline, err)) != 0) {
      drop(c);
      return rc;
    }
  } else if ((rc = tb__send(c, "\n", 1, deadline, err)) != 0) {
    /* An empty line, ignored by a plaintext server; a TLS port answers it
     * with tls_required at once instead of waiting for a handshake. */
    drop(c);
    return rc;
  }
  const char *line;
  size_t len;
  rc = read_line(c, deadline, &line, &len, err);
  if (rc != 0) {
    drop(c);
    if (rc == TB_CLIENT_ETIMEOUT)
      return tb__cerr(err, rc, "%s: no hello from the server within %d ms", c->addr,
                      c->connect_timeout_ms);
    return rc;
  }
  tb_smsg_t *m = &c->scratch;
  tb_proto_err_t perr;
  rc = tb_smsg_decode(line, len, m, &perr);
  if (rc != 0 || m->kind != TB_SMSG_HELLO) {
    if (rc == 0 && m->kind == TB_SMSG_BYE)
      rc = tb__cerr(err, TB_CLIENT_ECLOSED, "%s: the server said bye (%s: %s)", c->addr,
                    m->bye.reason, m->bye.message);
    else if (rc == 0 && m->kind == TB_SMSG_ERROR)
      rc = server_err(m, err);
    else
      rc = tb__cerr(err, TB_CLIENT_EBAD_REPLY, "%s: not a trainbus server (no hello)", c->addr);
    tb_smsg_free(m);
    drop(c);
    return rc;
  }
  c->hello = m->hello;
  tb_smsg_free(m);
  if (c->hello.protocol != TB_PROTO_VERSION) {
    drop(c);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY,
                    "%s: the server speaks protocol %lld, this client speaks %d", c->addr,
                    (long long)c->hello.protocol, TB_PROTO_VERSION);
  }

  tb_req_t *req = calloc(1, sizeof *req);
  if (req == NULL) {
    drop(c);
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  }
  req->method = TB_METHOD_AUTH;
  req->auth.role = c->want_role;
  req->auth.protocol = TB_PROTO_VERSION;
  snprintf(req->auth.token, sizeof req->auth.token, "%s", c->token);
  snprintf(req->auth.client, sizeof req->auth.client, "%s", c->name);
  cJSON *res = NULL;
  rc = call_until(c, req, deadline, &res, err);
  free(req);
  if (rc != 0) {
    drop(c);
    return rc;
  }
  const cJSON *role = cJSON_GetObjectItemCaseSensitive(res, "role");
  const char *rn = cJSON_IsString(role) ? role->valuestring : "";
  c->role = strcmp(rn, "controller") == 0 ? TB_ROLE_CONTROLLER
            : strcmp(rn, "observer") == 0 ? TB_ROLE_OBSERVER
            : strcmp(rn, "trainer") == 0  ? TB_ROLE_TRAINER
                                          : TB_ROLE_NONE;
  cJSON_Delete(res);
  if (c->role == TB_ROLE_NONE) {
    drop(c);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "%s: auth granted no role I know ('%s')", c->addr,
                    rn);
  }
  return 0;
}

int tb_client_connect(const tb_client_opts_t *opts, tb_client_t **out, tb_client_err_t *err) {
  err_clear(err);
  if (out)
    *out = NULL;
  bool has_addr = opts != NULL && opts->addr != NULL && opts->addr[0] != '\0';
  bool has_dir = opts != NULL && opts->state_dir != NULL && opts->state_dir[0] != '\0';
  if (opts == NULL || out == NULL || (!has_addr && !has_dir))
    return tb__cerr(err, TB_CLIENT_EINVALID,
                    "tb_client_connect: an address or a state directory is required");
  if ((has_addr && strlen(opts->addr) >= sizeof((tb_client_t *)0)->addr) ||
      (has_dir && strlen(opts->state_dir) >= sizeof((tb_client_t *)0)->state_dir))
    return tb__cerr(err, TB_CLIENT_EADDRESS, "address or state directory path too long");
  if (opts->token != NULL && strlen(opts->token) >= TB_PROTO_TOKEN_MAX)
    return tb__cerr(err, TB_CLIENT_EINVALID, "token longer than %d bytes", TB_PROTO_TOKEN_MAX - 1);
  if (opts->role != TB_ROLE_NONE && opts->role != TB_ROLE_OBSERVER &&
      opts->role != TB_ROLE_CONTROLLER && opts->role != TB_ROLE_TRAINER)
    return tb__cerr(err, TB_CLIENT_EINVALID, "role must be observer, controller or trainer");
  tb_client_t *c = calloc(1, sizeof *c);
  if (c == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  c->fd = -1;
  snprintf(c->addr, sizeof c->addr, "%s", has_addr ? opts->addr : "");
  snprintf(c->token, sizeof c->token, "%s", opts->token ? opts->token : "");
  snprintf(c->state_dir, sizeof c->state_dir, "%s", has_dir ? opts->state_dir : "");
  c->addr_given = has_addr;
  c->token_given = opts->token != NULL && opts->token[0] != '\0';
  snprintf(c->name, sizeof c->name, "%s", opts->name ? opts->name : "libtrainbus");
  c->want_role = opts->role == TB_ROLE_NONE ? TB_ROLE_OBSERVER : opts->role;
  c->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
  c->tls = opts->tls;
  c->insecure = opts->insecure;
  const struct {
    char *dst;
    size_t cap;
    const char *src, *what;
  } paths[] = {{c->ca_file, sizeof c->ca_file, opts->ca_file, "CA file"},
               {c->server_name, sizeof c->server_name, opts->server_name, "server name"},
               {c->cert_file, sizeof c->cert_file, opts->cert_file, "certificate file"},
               {c->key_file, sizeof c->key_file, opts->key_file, "key file"}};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    if (paths[i].src != NULL && strlen(paths[i].src) >= paths[i].cap) {
      free(c);
      return tb__cerr(err, TB_CLIENT_EINVALID, "%s longer than %zu bytes", paths[i].what,
                      paths[i].cap - 1);
    }
    snprintf(paths[i].dst, paths[i].cap, "%s", paths[i].src ? paths[i].src : "");
  }
  c->call_timeout_ms = opts->call_timeout_ms == 0 ? 60000 : opts->call_timeout_ms;
  tb_buf_init(&c->rbuf);
  int rc = open_and_auth(c, err);
  if (rc != 0) {
    tb_client_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

void tb_client_free(tb_client_t *c) {
  if (c == NULL)
    return;
  drop(c);
  tb__tls_free(c);
  tb_buf_free(&c->rbuf);
  tb_buf_free(&c->raw);
  for (tb__line_t *q = c->q_head, *n; q; q = n) {
    n = q->next;
    free(q);
  }
  free(c->seqs);
  free(c->subs);
  free(c);
}

void tb_client_keep_raw(tb_client_t *c, bool on) {
  c->keep_raw = on;
  if (!on)
    c->raw.len = 0;
}

const char *tb_client_raw(const tb_client_t *c, size_t *len) {
  *len = c->keep_raw ? c->raw.len : 0;
  return *len > 0 ? c->raw.data : NULL;
}

tb_role_t tb_client_role(const tb_client_t *c) {
  return c->role;
}

const tb_hello_t *tb_client_hello(const tb_client_t *c) {
  return &c->hello;
}

int tb_client_fd(const tb_client_t *c) {
  return c->fd;
}

size_t tb_client_pending(const tb_client_t *c) {
  return c->n_queued;
}

/* ------------------------------------------------------------ seq table -- */

static tb__seq_t *seq_find(const tb_client_t *c, const char *run) {
  for (int i = 0; i < c->n_seqs; i++)
    if (strcmp(c->seqs[i].run, run) == 0)
      return &c->seqs[i];
  return NULL;
}

int64_t tb_client_last_seq(const tb_client_t *c, const char *run) {
  const tb__seq_t *s = c && run ? seq_find(c, run) : NULL;
  return s ? s->last : 0;
}

static tb__seq_t *seq_get(tb_client_t *c, const char *run) {
  tb__seq_t *s = seq_find(c, run);
  if (s == NULL) {
    if (c->n_seqs == c->cap_seqs) {
      int cap = c->cap_seqs ? c->cap_seqs * 2 : 8;
      tb__seq_t *p = realloc(c->seqs, (size_t)cap * sizeof *p);
      if (p == NULL)
        return NULL;
      c->seqs = p;
      c->cap_seqs = cap;
    }
    s = &c->seqs[c->n_seqs++];
    memset(s, 0, sizeof *s);
    snprintf(s->run, sizeof s->run, "%s", run);
  }
  return s;
}

void tb__client_note_answer(tb_client_t *c, const char *run, int64_t seq,
                            const tb_client_actions_t *a) {
  tb__seq_t *s = seq_get(c, run);
  if (s == NULL)
    return; /* out of memory: a repeated ask is then answered by the caller */
  s->answered = seq;
  if (a != NULL)
    s->answer = *a;
  else
    memset(&s->answer, 0, sizeof s->answer);
}

/* Records seq as delivered; returns false if it was delivered before. */
static int seq_advance(tb_client_t *c, const char *run, int64_t seq, bool *fresh) {
  tb__seq_t *s = seq_get(c, run);
  if (s == NULL)
    return TB_CLIENT_ENOMEM;
  *fresh = seq > s->last;
  if (*fresh)
    s->last = seq;
  return 0;
}

int tb_client_next(tb_client_t *c, int timeout_ms, tb_smsg_t *msg, tb_client_err_t *err) {
  err_clear(err);
  if (msg != NULL)
    memset(msg, 0, sizeof *msg);
  if (c == NULL || msg == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_client_next: NULL argument");
  int64_t deadline = tb__deadline(timeout_ms);
  for (;;) {
    const char *line;
    size_t len;
    tb__line_t *q = c->q_head;
    int rc;
    if (q != NULL) {
      c->q_head = q->next;
      if (c->q_head == NULL)
        c->q_tail = NULL;
      c->n_queued--;
      line = q->text;
      len = q->len;
    } else if ((rc = read_line(c, deadline, &line, &len, err)) != 0) {
      return rc;
    }
    tb_proto_err_t perr;
    rc = tb_smsg_decode(line, len, msg, &perr);
    if (rc == 0 && c->keep_raw) {
      c->raw.len = 0;
      if (tb_buf_append(&c->raw, line, len) != 0)
        c->raw.len = 0;
    }
    free(q);
    if (rc != 0) {
      tb_smsg_free(msg);
      drop(c);
      return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "the server sent an unreadable message: %s",
                      perr.msg);
    }
    bool fresh = true;
    switch (msg->kind) {
    case TB_SMSG_EVENT:
      if ((rc = seq_advance(c, msg->event.run, msg->event.seq, &fresh)) != 0) {
        tb_smsg_free(msg);
        return tb__cerr(err, rc, "out of memory");
      }
      if (fresh)
        return 0;
      if (msg->event.lockstep) {
        /* Asked again by a restarted daemon: repeat the answer given, or
         * hand the event out again if it was never answered. */
        const tb__seq_t *s = seq_find(c, msg->event.run);
        if (s == NULL || s->answered != msg->event.seq)
          return 0;
        char run[TB_PROTO_RUN_MAX];
        int64_t seq = msg->event.seq;
        tb_client_actions_t a = s->answer;
        snprintf(run, sizeof run, "%s", msg->event.run);
        tb_smsg_free(msg);
        tb_client_err_t cerr;
        rc = tb_client_continue(c, run, seq, &a, &cerr);
        if (rc != 0 && !tb_client_err_is_remote(rc)) {
          if (err != NULL)
            *err = cerr;
          return rc;
        }
        continue;
      }
      break;
    case TB_SMSG_BYE:
      snprintf(c->bye_reason, sizeof c->bye_reason, "%s", msg->bye.reason);
      return 0;
    case TB_SMSG_DROPPED:
      return 0;
    default:
      break;
    }
    tb_smsg_free(msg);
  }
}

/* -------------------------------------------------------- subscriptions -- */

static bool single_run(const tb_req_t *r) {
  return r->subscribe.n_runs == 1 && strchr(r->subscribe.runs[0], '*') == NULL;
}

static int subscribe_req(tb_client_t *c, const tb_req_t *req, int64_t *sub_id, int64_t *next_seq,
                         tb_client_err_t *err) {
  cJSON *res = NULL;
  int rc = tb_client_call(c, req, &res, err);
  if (rc != 0)
    return rc;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(res, "sub");
  const cJSON *n = cJSON_GetObjectItemCaseSensitive(res, "next_seq");
  if (!cJSON_IsNumber(s)) {
    cJSON_Delete(res);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "subscribe: the result has no sub id");
  }
  *sub_id = (int64_t)s->valuedouble;
  *next_seq = cJSON_IsNumber(n) ? (int64_t)n->valuedouble : 0;
  cJSON_Delete(res);
  return 0;
}

int tb_client_subscribe(tb_client_t *c, const tb_client_sub_opts_t *o, int64_t *sub_id,
                        int64_t *next_seq, tb_client_err_t *err) {
  err_clear(err);
  if (sub_id)
    *sub_id = 0;
  if (next_seq)
    *next_seq = 0;
  if (c == NULL || o == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_client_subscribe: NULL argument");
  if (o->n_runs < 0 || o->n_runs > TB_PROTO_SUB_RUNS_MAX || o->n_events < 0 ||
      o->n_events > TB_PROTO_SUB_EVENTS_MAX || o->n_lockstep < 0 ||
      o->n_lockstep > TB_PROTO_SUB_EVENTS_MAX)
    return tb__cerr(err, TB_CLIENT_EINVALID,
                    "subscribe: at most %d runs, events and lockstep hooks", TB_PROTO_SUB_RUNS_MAX);
  if (c->n_subs == c->cap_subs) {
    int cap = c->cap_subs ? c->cap_subs * 2 : 4;
    tb__sub_t *p = realloc(c->subs, (size_t)cap * sizeof *p);
    if (p == NULL)
      return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
    c->subs = p;
    c->cap_subs = cap;
  }
  tb__sub_t *s = &c->subs[c->n_subs];
  memset(s, 0, sizeof *s);
  tb_req_t *r = &s->req;
  r->method = TB_METHOD_SUBSCRIBE;
  for (int i = 0; i < o->n_runs; i++) {
    if (o->runs[i] == NULL || strlen(o->runs[i]) >= TB_PROTO_RUN_MAX)
      return tb__cerr(err, TB_CLIENT_EINVALID, "subscribe: runs[%d] missing or too long", i);
    memcpy(r->subscribe.runs[i], o->runs[i], strlen(o->runs[i]) + 1);
  }
  r->subscribe.n_runs = o->n_runs;
  for (int i = 0; i < o->n_events; i++) {
    if (o->events[i] == NULL || strlen(o->events[i]) >= TB_PROTO_NAME_MAX)
      return tb__cerr(err, TB_CLIENT_EINVALID, "subscribe: events[%d] missing or too long", i);
    memcpy(r->subscribe.events[i], o->events[i], strlen(o->events[i]) + 1);
  }
  r->subscribe.n_events = o->n_events;
  for (int i = 0; i < o->n_lockstep; i++) {
    tb_event_kind_t k = o->lockstep[i] ? tb_event_from_name(o->lockstep[i]) : TB_EVENT_INVALID;
    if (k == TB_EVENT_INVALID || k == TB_EVENT_STATE || k == TB_EVENT_CONTROL)
      return tb__cerr(err, TB_CLIENT_EINVALID, "subscribe: lockstep[%d] '%s' is not a hook name", i,
                      o->lockstep[i] ? o->lockstep[i] : "(null)");
    r->subscribe.lockstep[i] = k;
  }
  r->subscribe.n_lockstep = o->n_lockstep;
  r->subscribe.every = o->every > 1 ? o->every : 1;
  r->subscribe.has_since_seq = o->has_since_seq;
  r->subscribe.since_seq = o->since_seq;
  r->subscribe.lockstep_timeout_ms = o->lockstep_timeout_ms;
  int64_t id = 0, ns = 0;
  int rc = subscribe_req(c, r, &id, &ns, err);
  if (rc != 0)
    return rc;
  s->id = id;
  s->next_seq = ns;
  c->n_subs++;
  if (sub_id)
    *sub_id = id;
  if (next_seq)
    *next_seq = ns;
  return 0;
}

int tb_client_unsubscribe(tb_client_t *c, int64_t sub_id, tb_client_err_t *err) {
  err_clear(err);
  if (c == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_client_unsubscribe: NULL client");
  tb_req_t *r = calloc(1, sizeof *r);
  if (r == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  r->method = TB_METHOD_UNSUBSCRIBE;
  r->unsubscribe.has_sub = sub_id >= 0;
  r->unsubscribe.sub = sub_id;
  int rc = tb_client_call(c, r, NULL, err);
  free(r);
  if (rc != 0)
    return rc;
  for (int i = 0; i < c->n_subs; i++) {
    if (sub_id < 0 || c->subs[i].id == sub_id) {
      memmove(&c->subs[i], &c->subs[i + 1], (size_t)(c->n_subs - i - 1) * sizeof c->subs[0]);
      c->n_subs--;
      i--;
    }
  }
  return 0;
}

int tb_client_reconnect(tb_client_t *c, tb_client_err_t *err) {
  err_clear(err);
  if (c == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "tb_client_reconnect: NULL client");
  int rc = open_and_auth(c, err);
  if (rc != 0)
    return rc;
  tb_req_t *r = malloc(sizeof *r);
  if (r == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  for (int i = 0; i < c->n_subs && rc == 0; i++) {
    tb__sub_t *s = &c->subs[i];
    memcpy(r, &s->req, sizeof *r);
    if (single_run(r)) {
      int64_t last = tb_client_last_seq(c, r->subscribe.runs[0]);
      if (last > 0) {
        r->subscribe.has_since_seq = true;
        r->subscribe.since_seq = last + 1;
      } else if (!r->subscribe.has_since_seq && s->next_seq > 0) {
        r->subscribe.has_since_seq = true;
        r->subscribe.since_seq = s->next_seq;
      }
    } else {
      r->subscribe.has_since_seq = false;
    }
    int64_t ns;
    rc = subscribe_req(c, r, &s->id, &ns, err);
  }
  free(r);
  return rc;
}
