/* Connections: reading and framing requests, queueing and writing output,
 * and the per-client output limits.
 *
 * Output is a queue of buffers per connection; shared events go in by
 * reference (a pointer and a length into the drain's chunk), never copied,
 * and consecutive lines of one chunk extend one buffer. Writes coalesce the
 * way Redis's do: a client with nothing in flight is written at once (at the
 * end of the drain or request that gave it output: one writev, straight from
 * the loop, uv_try_write); what the socket does not take goes to uv_write,
 * and while that is in flight new output gathers and goes out together when
 * it completes. So an idle client gets each event with no delay, and a busy
 * one gets big writes, as few as its socket allows.
 *
 * TLS (tls.c) is a per-client step at the very end: flush() turns the
 * queued buffers into the bytes handed to the socket, and for a TLS client
 * it encrypts them there, from the shared plaintext into the client's own
 * ciphertext buffer, only when the socket can take them; everything before
 * it (sharing, limits, drops) stays as it is. Reads go the other way: what
 * libuv read is decrypted into the client's input before framing.
 *
 * The bytes queued or in flight are the client's backlog, and its limits are
 * Redis's client-output-buffer-limit with one more step:
 *   above out_drop_bytes, batch events for it are dropped (and counted, and
 *     the client told what it lost before its next event of that run);
 *   above out_soft_bytes for out_soft_seconds, or above out_hard_bytes at
 *     once, it is disconnected (bye slow_consumer).
 * Lifecycle events, replies and errors are never dropped. A client whose
 * backlog passes out_drop_bytes is not read from until it drains, so a
 * request flood cannot outrun the replies. */
#include "internal.h"
#include "trainbus/version.h"

#include <stdlib.h>
#include <string.h>

size_t tb__conn_backlog(const conn_t *c) {
  return c->pend_bytes + (c->wsi == NULL ? c->h.stream.write_queue_size : 0) +
         (c->tls != NULL ? tb__tls_pending(c->tls) : 0);
}

void tb__outbuf_release(outbuf_t *o) {
  if (o->chunk != NULL)
    tb__chunk_unref(o->chunk);
  else
    free(o->mem);
}

void tb__conn_free(conn_t *c) {
  tb_server_t *s = c->srv;
  tb__trainer_conn_gone(c); /* the runs it published are detached */
  for (int i = 0; i < c->n_out; i++)
    tb__outbuf_release(&c->out[i]);
  free(c->out);
  free(c->in);
  for (int i = 0; i < c->n_subs; i++)
    if (c->subs[i].replay_file != NULL)
      fclose(c->subs[i].replay_file);
  free(c->subs);
  tb__tls_free(c->tls);
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  s->n_conns--;
  free(c);
}

static void check_limits(conn_t *c);
static bool greet(tb_server_t *s, conn_t *c);

static void on_close(uv_handle_t *h) {
  tb__conn_free(h->data);
}

conn_t *tb__conn_find(tb_server_t *s, uint64_t id) {
  for (conn_t *c = s->conns; c != NULL; c = c->next)
    if (c->id == id && !c->closing)
      return c;
  return NULL;
}

static void really_close(conn_t *c) {
  if (c->wsi != NULL) {
    tb__ws_kill(c); /* freed in its CLOSED callback */
    return;
  }
  if (uv_is_closing((uv_handle_t *)&c->h.stream))
    return;
  uv_close((uv_handle_t *)&c->h.stream, on_close);
}

/* Puts c on the list of clients written at the end of the current drain. */
static void touch(conn_t *c) {
  tb_server_t *s = c->srv;
  if (!s->draining || c->touched)
    return;
  if (s->n_touched == s->cap_touched) {
    int cap = s->cap_touched ? s->cap_touched * 2 : 64;
    conn_t **t = realloc(s->touched, (size_t)cap * sizeof(*t));
    if (t == NULL)
      return; /* written by the next flush of it instead */
    s->touched = t;
    s->cap_touched = cap;
  }
  s->touched[s->n_touched++] = c;
  c->touched = true;
}

void tb__flush_touched(tb_server_t *s) {
  /* Connections are freed only in close callbacks, never during a drain. */
  bool all_full = s->n_touched > 0;
  for (int i = 0; i < s->n_touched; i++) {
    conn_t *c = s->touched[i];
    c->touched = false;
    tb__conn_flush(c);
    all_full &=
        c->wsi == NULL && !c->closing && c->inflight > 0 && c->h.stream.write_queue_size > 0;
  }
  s->n_touched = 0;
  s->all_touched_full = all_full;
}

static int push_out(conn_t *c, uv_buf_t buf, tb_chunk_t *chunk, char *mem) {
  touch(c);
  /* The next line of the same chunk: extend the last buffer (a WebSocket
   * sends one line per message, so its lines stay apart). */
  if (chunk != NULL && c->n_out > 0 && c->wsi == NULL) {
    outbuf_t *last = &c->out[c->n_out - 1];
    if (last->chunk == chunk && last->buf.base + last->buf.len == buf.base) {
      last->buf.len += buf.len;
      c->pend_bytes += buf.len;
      return 1;
    }
  }
  if (c->n_out == c->cap_out) {
    /* Most clients hold a few replies, or one stretch of events. */
    int cap = c->cap_out ? c->cap_out * 2 : 4;
    outbuf_t *o = realloc(c->out, (size_t)cap * sizeof(*o));
    if (o == NULL)
      return -1;
    c->out = o;
    c->cap_out = cap;
  }
  c->out[c->n_out].buf = buf;
  c->out[c->n_out].chunk = chunk;
  c->out[c->n_out].mem = mem;
  c->n_out++;
  c->pend_bytes += buf.len;
  return 0;
}

void tb__conn_send(conn_t *c, const char *data, size_t len) {
  if (c->closing && !c->close_after_flush)
    return;
  char *copy = malloc(len);
  if (copy == NULL)
    return;
  memcpy(copy, data, len);
  if (push_out(c, uv_buf_init(copy, (unsigned)len), NULL, copy) != 0)
    free(copy);
}

void tb__conn_send_ev(conn_t *c, tb_ev_t *e) {
  if (c->closing)
    return;
  if (push_out(c, uv_buf_init((char *)e->data, (unsigned)e->len), e->chunk, NULL) == 0)
    tb__chunk_ref(e->chunk);
}

static void on_write(uv_write_t *req, int status) {
  wreq_t *w = (wreq_t *)req;
  conn_t *c = w->conn;
  for (int i = 0; i < w->n; i++)
    tb__outbuf_release(&w->bufs[i]);
  c->inflight--;
  free(w);
  if (status < 0) {
    c->closing = true;
    c->close_after_flush = false;
  }
  if (c->closing && (!c->close_after_flush || (c->inflight == 0 && c->n_out == 0 &&
                                               (c->tls == NULL || tb__tls_pending(c->tls) == 0)))) {
    if (c->inflight == 0)
      really_close(c);
    return;
  }
  if (tb__conn_backlog(c) < c->srv->o.out_soft_bytes)
    c->soft_since_ms = 0;
  tb__drain_resume(c->srv); /* a socket drained: the bus may go on */
  tb__replay_pump(c);
  if (c->in_len > 0 && tb__conn_backlog(c) <= c->srv->o.out_drop_bytes / 2)
    tb__conn_input(c, NULL, 0); /* requests held back by the backlog */
  tb__conn_flush(c);
}

/* Drops the first `n` bytes of c's queue (written by uv_try_write). */
static void consume(conn_t *c, size_t n) {
  int i = 0;
  while (i < c->n_out && n >= c->out[i].buf.len) {
    n -= c->out[i].buf.len;
    c->pend_bytes -= c->out[i].buf.len;
    tb__outbuf_release(&c->out[i]);
    i++;
  }
  if (i < c->n_out && n > 0) {
    c->out[i].buf.base += n;
    c->out[i].buf.len -= n;
    c->pend_bytes -= n;
  }
  if (i > 0) {
    memmove(c->out, c->out + i, (size_t)(c->n_out - i) * sizeof(outbuf_t));
    c->n_out -= i;
  }
}

static void write_failed(conn_t *c) {
  c->closing = true;
  c->close_after_flush = false;
  if (c->inflight == 0)
    really_close(c);
}

/* A TLS client's flush: its queue is encrypted, then the ciphertext (with
 * whatever the handshake or an alert added) goes to the socket, at once as
 * far as it takes it, the rest through uv_write in the buffer it is in. */
static void flush_tls(conn_t *c) {
  tb_tls_t *t = c->tls;
  if (tb__tls_established(t) && c->n_out > 0) {
    uv_buf_t stackv[64];
    uv_buf_t *bv = c->n_out <= 64 ? stackv : malloc((size_t)c->n_out * sizeof(uv_buf_t));
    if (bv == NULL)
      return; /* the next flush tries again */
    for (int i = 0; i < c->n_out; i++)
      bv[i] = c->out[i].buf;
    int r = tb__tls_write(t, bv, c->n_out);
    if (bv != stackv)
      free(bv);
    for (int i = 0; i < c->n_out; i++)
      tb__outbuf_release(&c->out[i]);
    c->n_out = 0;
    c->pend_bytes = 0;
    if (r != 0) {
      tb__log(c->srv, 1, "%s: cannot encrypt its output; closing", c->label);
      write_failed(c);
      return;
    }
  }
  if (c->closing && c->close_after_flush && c->n_out == 0)
    tb__tls_close_notify(t); /* the clean end of a TLS stream */
  size_t len = tb__tls_pending(t);
  if (len == 0)
    return;
  uv_buf_t b = uv_buf_init((char *)tb__tls_out(t), (unsigned)len);
  int n = uv_try_write(&c->h.stream, &b, 1);
  if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
    write_failed(c);
    return;
  }
  if (n > 0)
    tb__tls_consume(t, (size_t)n);
  if (tb__tls_pending(t) == 0)
    return;
  wreq_t *w = malloc(sizeof(*w) + sizeof(outbuf_t));
  if (w == NULL)
    return;
  size_t rest;
  char *mem = tb__tls_take(t, &rest);
  w->conn = c;
  w->n = 1;
  w->bufs[0].buf = uv_buf_init(mem, (unsigned)rest);
  w->bufs[0].chunk = NULL;
  w->bufs[0].mem = mem;
  c->inflight++;
  if (uv_write(&w->req, &c->h.stream, &w->bufs[0].buf, 1, on_write) != 0) {
    c->inflight--;
    free(mem);
    free(w);
    write_failed(c);
  }
}

/* Writes c's queue now unless libuv still holds bytes of an earlier write
 * (then on_write does, with whatever gathered meanwhile). */
void tb__conn_flush(conn_t *c) {
  if (c->wsi != NULL) {
    if (c->n_out > 0 || c->closing)
      tb__ws_want_write(c); /* written one message at a time when writable */
    return;
  }
  if (c->tls != NULL) {
    if ((c->inflight > 0 && c->h.stream.write_queue_size > 0) ||
        uv_is_closing((uv_handle_t *)&c->h.stream))
      return;
    flush_tls(c);
    /* All said, the ending stream closes (a write in flight closes it from
     * its callback). */
    if (c->closing && c->close_after_flush && c->inflight == 0 && c->n_out == 0 &&
        tb__tls_pending(c->tls) == 0)
      really_close(c);
    return;
  }
  /* In flight means bytes libuv still holds for a full socket; a write whose
   * bytes all went out and whose callback is still to come holds none. */
  if (c->n_out == 0 || (c->inflight > 0 && c->h.stream.write_queue_size > 0) ||
      uv_is_closing((uv_handle_t *)&c->h.stream))
    return;
  uv_buf_t stackv[64];
  uv_buf_t *bv = c->n_out <= 64 ? stackv : malloc((size_t)c->n_out * sizeof(uv_buf_t));
  if (bv == NULL)
    return; /* the next flush tries again */
  for (int i = 0; i < c->n_out; i++)
    bv[i] = c->out[i].buf;
  /* First straight to the socket: no request, no callback. */
  int n = uv_try_write(&c->h.stream, bv, (unsigned)c->n_out);
  if (bv != stackv)
    free(bv);
  if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
    write_failed(c);
    return;
  }
  if (n > 0)
    consume(c, (size_t)n);
  if (c->n_out <= 0)
    return;
  /* The socket is full: the rest waits in libuv until it drains. */
  wreq_t *w = malloc(sizeof(*w) + (size_t)c->n_out * sizeof(outbuf_t));
  bv = c->n_out <= 64 ? stackv : malloc((size_t)c->n_out * sizeof(uv_buf_t));
  if (w == NULL || bv == NULL) {
    free(w);
    if (bv != stackv)
      free(bv);
    return;
  }
  w->conn = c;
  w->n = c->n_out;
  memcpy(w->bufs, c->out, (size_t)c->n_out * sizeof(outbuf_t));
  for (int i = 0; i < w->n; i++)
    bv[i] = w->bufs[i].buf;
  c->n_out = 0;
  c->pend_bytes = 0;
  c->inflight++;
  int r = uv_write(&w->req, &c->h.stream, bv, (unsigned)w->n, on_write);
  if (bv != stackv)
    free(bv);
  if (r != 0) {
    c->inflight--;
    for (int i = 0; i < w->n; i++)
      tb__outbuf_release(&w->bufs[i]);
    free(w);
    write_failed(c);
  }
}

void tb__conn_close(conn_t *c, const char *reason, const char *message) {
  if (c->closing)
    return;
  if (reason != NULL) {
    tb_buf_t b;
    tb_buf_init(&b);
    tb_msg_bye(&b, reason, message ? message : "");
    tb__conn_send(c, b.data, b.len);
    tb_buf_free(&b);
  }
  tb__lockstep_release_conn(c);
  c->closing = true;
  c->close_after_flush = true;
  if (c->wsi == NULL)
    uv_read_stop(&c->h.stream);
  /* Subscriptions end now: nothing more is queued for a closing client. */
  tb__conn_drop_subs(c);
  tb__conn_flush(c);
  /* A WebSocket closes from its writable callback once the bye is out. */
  if (c->inflight == 0 && c->wsi == NULL)
    really_close(c);
}

/* ---- reading --------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = h->data;
  if (c->tls != NULL) {
    /* Ciphertext is decrypted at once: one buffer serves every client (libuv
     * calls on_read right after this, on the same thread). */
    buf->base = c->srv->tls_rbuf;
    buf->len = TB_TLS_READ_CHUNK;
    return;
  }
  size_t want = c->in_len + 16384;
  if (want > c->in_cap) {
    char *in = realloc(c->in, want);
    if (in == NULL) {
      buf->base = NULL;
      buf->len = 0;
      return;
    }
    c->in = in;
    c->in_cap = want;
  }
  buf->base = c->in + c->in_len;
  buf->len = c->in_cap - c->in_len;
}

/* A first line that looks like HTTP gets an HTTP answer: a person pointing a
 * browser or curl at the port learns what it is. */
static bool looks_like_http(const char *p, size_t n) {
  static const char *const verbs[] = {"GET ",     "POST ",  "PUT ",     "HEAD ",  "DELETE ",
                                      "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ", "PRI * HTTP"};
  for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
    size_t l = strlen(verbs[i]);
    if (n >= l && memcmp(p, verbs[i], l) == 0)
      return true;
  }
  return false;
}

/* The first bytes of a TLS ClientHello: a handshake record (22) of TLS
 * 1.0..1.3 (RFC 8446 5.1: legacy_record_version 0x0301..0x0303). */
static bool looks_like_tls(const char *p, size_t n) {
  return n >= 3 && (unsigned char)p[0] == 0x16 && p[1] == 0x03 && (unsigned char)p[2] <= 0x04;
}

static void protocol_error(conn_t *c, int code, const char *msg) {
  tb_buf_t b;
  tb_buf_init(&b);
  tb_id_t none = {0};
  tb_msg_error(&b, &none, code, "%s", msg);
  tb__conn_send(c, b.data, b.len);
  tb_buf_free(&b);
  tb__log(c->srv, 1, "%s: %s; closing", c->label, msg);
  tb__conn_close(c, "protocol_error", msg);
}

/* The client went away (end of file, a reset, a TLS close_notify or a TLS
 * failure): nothing more is said to it. */
static void gone(conn_t *c) {
  c->closing = true;
  c->close_after_flush = false;
  tb__lockstep_release_conn(c);
  tb__conn_drop_subs(c);
  uv_read_stop(&c->h.stream);
  if (c->inflight == 0)
    really_close(c);
}

/* A plaintext client on a TLS listener (its first byte is not a TLS
 * handshake's): it is told so in plaintext, as HTTP gets an HTTP answer,
 * and closed. Our clients send an empty line first on a plaintext
 * connection, so they learn this at once rather than at the auth timeout. */
static void plaintext_on_tls(conn_t *c, const char *data, size_t len) {
  tb__tls_free(c->tls);
  c->tls = NULL;
  c->http_checked = true;
  tb__log(c->srv, 1, "%s: a plaintext client on a TLS listener; closing", c->label);
  if (looks_like_http(data, len)) {
    static const char resp[] =
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        "This is a trainbus port with TLS: it speaks JSON-RPC 2.0 over TLS, one JSON object "
        "per line, not HTTP.\nSee docs/PROTOCOL.md; for a browser use trainbusd --http.\n";
    tb__conn_send(c, resp, sizeof(resp) - 1);
    tb__conn_close(c, NULL, NULL);
    return;
  }
  tb_buf_t b;
  tb_buf_init(&b);
  tb_id_t none = {0};
  tb_msg_error(&b, &none, TB_PROTO_ETLS_REQUIRED,
               "this port speaks TLS: connect with tls://HOST:PORT (trainbus --tls, Python "
               "Client(tls=True)); see docs/PROTOCOL.md, TLS");
  tb__conn_send(c, b.data, b.len);
  tb_buf_free(&b);
  tb__conn_close(c, "tls_required", "this port speaks TLS");
}

/* Ciphertext from a TLS client: on with the handshake, then decrypt into
 * the input and handle it as a plaintext client's bytes. */
static void tls_in(conn_t *c, const char *data, size_t len) {
  tb_server_t *s = c->srv;
  if (tb__tls_input(c->tls, data, len) == TB__TLS_PLAINTEXT) {
    plaintext_on_tls(c, data, len);
    return;
  }
  bool was = tb__tls_established(c->tls);
  for (;;) {
    if (c->in_cap - c->in_len < 16384) {
      char *in = realloc(c->in, c->in_len + 16384);
      if (in == NULL) {
        protocol_error(c, TB_PROTO_EINTERNAL, "out of memory");
        return;
      }
      c->in = in;
      c->in_cap = c->in_len + 16384;
    }
    size_t got;
    char why[240];
    int r = tb__tls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len, &got, why, sizeof(why));
    if (r == TB__TLS_EOF) {
      gone(c);
      return;
    }
    if (r != 0) {
      tb__log(s, 1, "%s: TLS %s: %s; closing", c->label,
              tb__tls_established(c->tls) ? "error" : "handshake failed", why);
      tb__conn_flush(c); /* the alert that tells the client why */
      gone(c);
      return;
    }
    if (got == 0)
      break;
    c->in_len += got;
  }
  if (!was && tb__tls_established(c->tls)) {
    char desc[400];
    tb__tls_describe(c->tls, desc, sizeof(desc));
    tb__log(s, 2, "%s: TLS established (%s)", c->label, desc);
    greet(s, c);
  }
  if (c->in_len > 0 && !c->closing)
    tb__conn_input(c, NULL, 0);
  else
    tb__conn_flush(c); /* handshake messages */
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = st->data;
  tb_server_t *s = c->srv;
  if (nread < 0) {
    gone(c);
    return;
  }
  if (nread == 0 || c->closing)
    return;
  if (c->tls != NULL)
    tls_in(c, buf->base, (size_t)nread);
  else {
    c->in_len += (size_t)nread;
    tb__conn_input(c, NULL, 0);
  }
  /* Back-pressure: stop reading a client that does not read its answers. */
  if (!c->closing && tb__conn_backlog(c) > s->o.out_drop_bytes)
    uv_read_stop(st);
}

/* Frames and handles what c->in holds (after appending data, if any). */
void tb__conn_input(conn_t *c, const char *data, size_t len) {
  tb_server_t *s = c->srv;
  if (len > 0) {
    if (c->in_len + len > c->in_cap) {
      char *in = realloc(c->in, c->in_len + len);
      if (in == NULL) {
        protocol_error(c, TB_PROTO_EINTERNAL, "out of memory");
        return;
      }
      c->in = in;
      c->in_cap = c->in_len + len;
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
  }
  if (!c->http_checked && c->in_len >= 3 && c->wsi == NULL && c->tls == NULL &&
      looks_like_tls(c->in, c->in_len)) {
    /* A TLS client on a plaintext listener: it has our plaintext hello
     * already and fails on it at once; the log says what happened. */
    c->http_checked = true;
    protocol_error(c, TB_PROTO_EPARSE,
                   "a TLS ClientHello on a plaintext port: this listener has no TLS (connect "
                   "without TLS, or start trainbusd with --tls-cert and --tls-key)");
    return;
  }
  if (!c->http_checked && c->in_len >= 4 && c->wsi == NULL) {
    c->http_checked = true;
    if (looks_like_http(c->in, c->in_len)) {
      static const char resp[] =
          "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
          "This is a trainbus port: it speaks JSON-RPC 2.0, one JSON object per line, not "
          "HTTP.\nSee docs/PROTOCOL.md; for a browser use trainbusd --http.\n";
      tb__conn_send(c, resp, sizeof(resp) - 1);
      tb__log(s, 1, "%s: sent an HTTP request; closing", c->label);
      tb__conn_close(c, NULL, NULL);
      return;
    }
  }
  for (;;) {
    size_t off = 0;
    bool held = false;
    while (!c->closing) {
      /* Replies count against the output limits too: a client that pipelines
       * requests and does not read their answers waits, unread, until its
       * backlog drains. */
      if (tb__conn_backlog(c) > s->o.out_drop_bytes) {
        check_limits(c);
        held = true;
        break;
      }
      size_t line_len;
      int r = tb_frame_next(c->in + off, c->in_len - off, &c->scan, s->o.max_line, &line_len);
      if (r == TB_PROTO_NEED_MORE)
        break;
      if (r < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s",
                 r == TB_PROTO_ETOO_LARGE
                     ? "line longer than the server's max_line without a newline"
                     : "the line is not valid UTF-8 text (or holds a control byte)");
        protocol_error(c, r, msg);
        return;
      }
      if (line_len > 0) {
        c->t_last_in_ms = tb__srv_now_ms();
        tb__handle_line(c, c->in + off, line_len);
      }
      off += (size_t)r;
    }
    if (off > 0 && !c->closing) {
      memmove(c->in, c->in + off, c->in_len - off);
      c->in_len -= off;
    }
    tb__conn_flush(c);
    /* The answers went out at once (nothing in flight, so no write callback
     * will come to resume): go on with the requests held back. */
    if (!held || c->closing || c->inflight > 0 || c->in_len == 0 ||
        tb__conn_backlog(c) > s->o.out_drop_bytes / 2)
      break;
  }
  /* A control request just made waits for the trainer's answer, which
   * must not wait for a paused drain. */
  tb__drain_nudge(s);
  /* An idle client holds no input buffer: most of 10,000 subscribers never
   * send a byte after subscribing. */
  if (c->in_len == 0 && c->in_cap > 0 && c->wsi == NULL) {
    free(c->in);
    c->in = NULL;
    c->in_cap = 0;
  }
}

static void resume_reading(conn_t *c) {
  if (!c->closing && c->wsi == NULL && tb__conn_backlog(c) <= c->srv->o.out_drop_bytes / 2)
    uv_read_start(&c->h.stream, on_alloc, on_read);
}

void tb__conn_register(tb_server_t *s, conn_t *c, bool local) {
  c->srv = s;
  c->id = ++s->next_conn;
  c->local = local;
  c->t_open_ms = c->t_last_in_ms = tb__srv_now_ms();
  c->next = s->conns;
  if (s->conns != NULL)
    s->conns->prev = c;
  s->conns = c;
  s->n_conns++;
  snprintf(c->label, sizeof(c->label), "client %llu", (unsigned long long)c->id);
}

/* The first words: hello, or "overloaded" past the connection limit. */
static bool greet(tb_server_t *s, conn_t *c) {
  tb_buf_t b;
  tb_buf_init(&b);
  if (s->n_conns > s->o.max_clients) {
    tb_id_t none = {0};
    tb_msg_error(&b, &none, TB_PROTO_EOVERLOADED, "too many connections (the limit is %d)",
                 s->o.max_clients);
    tb__conn_send(c, b.data, b.len);
    tb_buf_free(&b);
    tb__conn_close(c, "overloaded", "too many connections");
    return false;
  }
  tb_hello_t h = {.protocol = TB_PROTO_VERSION,
                  .auth_required = !(c->local),
                  .auth_timeout_ms = s->o.auth_timeout_ms,
                  .max_line = (int64_t)s->o.max_line};
  snprintf(h.server, sizeof(h.server), "%s", TB_SERVER_SOFTWARE);
  tb_msg_hello(&b, &h);
  tb__conn_send(c, b.data, b.len);
  tb_buf_free(&b);
  tb__conn_flush(c);
  return true;
}

void tb__conn_greet(conn_t *c) {
  greet(c->srv, c);
}

void tb__conn_accept(listener_t *l) {
  tb_server_t *s = l->srv;
  conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return;
  int r = l->local && l->address[0] == 'u' ? uv_pipe_init(&s->loop, &c->h.pipe, 0)
                                           : uv_tcp_init(&s->loop, &c->h.tcp);
  if (r != 0) {
    free(c);
    return;
  }
  c->h.stream.data = c;
  tb__conn_register(s, c, l->local);
  if (uv_accept(&l->h.stream, &c->h.stream) != 0) {
    c->closing = true;
    really_close(c);
    return;
  }
  if (l->address[0] != 'u') {
    uv_tcp_nodelay(&c->h.tcp, 1);
    uv_tcp_keepalive(&c->h.tcp, 1, 60);
    /* Cap the kernel's send buffer (autotuned up to megabytes), so that a
     * slow client's backlog shows in our queue, where the output limits and
     * dropped notices apply, soon rather than after megabytes. */
    int sndbuf = (int)s->o.out_drop_bytes;
    uv_send_buffer_size((uv_handle_t *)&c->h.tcp, &sndbuf);
  }
  if (l->tls) {
    /* The hello goes out once the handshake is done (tls_in). */
    if ((c->tls = tb__tls_new(s)) == NULL) {
      c->closing = true;
      really_close(c);
      return;
    }
    uv_read_start(&c->h.stream, on_alloc, on_read);
    return;
  }
  if (greet(s, c))
    uv_read_start(&c->h.stream, on_alloc, on_read);
}

/* Deadlines, checked by the server's tick. */
void tb__conn_tick(conn_t *c, uint64_t now) {
  tb_server_t *s = c->srv;
  if (c->closing)
    return;
  if (c->role == TB_ROLE_NONE && now - c->t_open_ms > (uint64_t)s->o.auth_timeout_ms &&
      c->tls != NULL && !tb__tls_established(c->tls)) {
    /* The handshake is bounded by the auth timeout too. A client that sent
     * nothing at all may be a plaintext one waiting for our hello (nc): it
     * is told in plaintext what this port speaks. */
    tb__log(s, 1, "%s: no TLS handshake within %d ms; closing", c->label, s->o.auth_timeout_ms);
    if (tb__tls_bytes_in(c->tls) == 0) {
      plaintext_on_tls(c, "", 0);
      return;
    }
    gone(c);
    return;
  }
  if (c->role == TB_ROLE_NONE && now - c->t_open_ms > (uint64_t)s->o.auth_timeout_ms) {
    tb_buf_t b;
    tb_buf_init(&b);
    tb_id_t none = {0};
    tb_msg_error(&b, &none, TB_PROTO_ETIMEOUT, "auth did not arrive within %d ms",
                 s->o.auth_timeout_ms);
    tb__conn_send(c, b.data, b.len);
    tb_buf_free(&b);
    tb__conn_close(c, "auth_timeout", "no auth in time");
    return;
  }
  if (s->o.idle_timeout_ms > 0 && c->n_subs == 0 &&
      now - c->t_last_in_ms > (uint64_t)s->o.idle_timeout_ms) {
    tb__conn_close(c, "idle", "no request and no subscription for too long");
    return;
  }
  if (c->soft_since_ms != 0 && now - c->soft_since_ms > (uint64_t)s->o.out_soft_seconds * 1000) {
    tb__log(s, 1, "%s: more than %zu bytes queued for %d s; disconnecting", c->label,
            s->o.out_soft_bytes, s->o.out_soft_seconds);
    tb__conn_close(c, "slow_consumer", "output queue over the soft limit for too long");
    return;
  }
  resume_reading(c);
}

/* ---- fan-out ---------------------------------------------------------------- */

/* The subscription's filters, replay or not. */
static bool sub_filters(sub_t *sb, const tb_run_t *r, tb_event_kind_t kind, int batch) {
  if (!sb->m_ready) {
    /* The patterns are fixed: which kinds they match is worked out once. */
    sb->m_kinds = 0;
    for (unsigned k = 0; k < 32; k++) {
      const char *name = tb_event_name((tb_event_kind_t)k);
      if (k > 0 && name[0] == '\0')
        break;
      bool ok = sb->n_events == 0;
      for (int i = 0; i < sb->n_events && !ok; i++)
        ok = tb_proto_match(sb->events[i], name);
      if (ok)
        sb->m_kinds |= 1u << k;
    }
    sb->m_ready = true;
  }
  if ((unsigned)kind >= 32 || !(sb->m_kinds & (1u << kind)))
    return false;
  if (sb->m_run != r) {
    /* Runs live as long as the server: the last one seen is remembered. */
    bool ok = sb->n_runs == 0;
    for (int i = 0; i < sb->n_runs && !ok; i++)
      ok = tb_proto_match(sb->runs[i], r->id);
    sb->m_run = r;
    sb->m_run_ok = ok;
  }
  if (!sb->m_run_ok)
    return false;
  return !(tb_event_is_batch(kind) && sb->every > 1 && batch % sb->every != 0);
}

static bool sub_matches(sub_t *sb, const tb_run_t *r, tb_event_kind_t kind, int batch) {
  if (sb->replay_run != NULL)
    return false; /* still replaying: live events come after the replay */
  return sub_filters(sb, r, kind, batch);
}

/* The event line with "lockstep":true before its closing braces. */
static tb_ev_t *lockstep_variant(const tb_ev_t *e) {
  tb_buf_t b;
  tb_buf_init(&b);
  tb_buf_append(&b, e->data, e->len - 3);
  tb_buf_append(&b, ",\"lockstep\":true}}\n", 19);
  tb_ev_t *v = tb__ev_new(b.data, b.len, e->seq, e->kind, e->batch);
  tb_buf_free(&b);
  return v;
}

static drop_t *drop_for(conn_t *c, tb_run_t *r, bool create) {
  for (int i = 0; i < c->n_drops; i++)
    if (c->drops[i].run == r)
      return &c->drops[i];
  if (!create || c->n_drops == (int)(sizeof(c->drops) / sizeof(c->drops[0])))
    return NULL;
  drop_t *d = &c->drops[c->n_drops++];
  memset(d, 0, sizeof(*d));
  d->run = r;
  return d;
}

/* Tells the client what it lost in run r, before its next event there. */
static void flush_drops(conn_t *c, tb_run_t *r) {
  drop_t *d = drop_for(c, r, false);
  if (d == NULL || d->count == 0)
    return;
  tb_buf_t b;
  tb_buf_init(&b);
  tb_msg_dropped(&b, r->id, d->count, d->from, d->to);
  tb__conn_send(c, b.data, b.len);
  tb_buf_free(&b);
  *d = c->drops[--c->n_drops];
}

static void check_limits(conn_t *c) {
  tb_server_t *s = c->srv;
  if (tb__conn_backlog(c) > s->o.out_hard_bytes) {
    tb__log(s, 1, "%s: %zu bytes queued, over the hard limit; disconnecting", c->label,
            tb__conn_backlog(c));
    tb__conn_close(c, "slow_consumer", "output queue over the hard limit");
  } else if (tb__conn_backlog(c) > s->o.out_soft_bytes && c->soft_since_ms == 0) {
    c->soft_since_ms = tb__srv_now_ms();
  }
}

static void deliver_one(conn_t *c, tb_run_t *r, tb_ev_t *e) {
  if (tb_event_is_batch(e->kind) && tb__conn_backlog(c) > c->srv->o.out_drop_bytes) {
    drop_t *d = drop_for(c, r, true);
    if (d != NULL) {
      if (d->count == 0)
        d->from = e->seq;
      d->to = e->seq;
      d->count++;
    }
    return;
  }
  flush_drops(c, r);
  tb__conn_send_ev(c, e);
  check_limits(c);
}

/* Every subscriber of run r lost seqs from..to at the queue: merged into its
 * drop record for r, told before its next event there. */
void tb__deliver_gap(tb_server_t *s, tb_run_t *r, int64_t count, int64_t from, int64_t to) {
  for (conn_t *c = s->conns; c != NULL; c = c->next) {
    if (c->closing || c->role == TB_ROLE_NONE)
      continue;
    bool sub = false;
    for (int i = 0; i < c->n_subs && !sub; i++)
      sub = sub_matches(&c->subs[i], r, TB_EVENT_TRAIN_BATCH_END, 0) ||
            sub_matches(&c->subs[i], r, TB_EVENT_TEST_BATCH_END, 0) ||
            sub_matches(&c->subs[i], r, TB_EVENT_PREDICT_BATCH_END, 0) ||
            sub_matches(&c->subs[i], r, TB_EVENT_TRAIN_BATCH_BEGIN, 0) ||
            sub_matches(&c->subs[i], r, TB_EVENT_TEST_BATCH_BEGIN, 0) ||
            sub_matches(&c->subs[i], r, TB_EVENT_PREDICT_BATCH_BEGIN, 0);
    if (!sub)
      continue;
    drop_t *d = drop_for(c, r, true);
    if (d == NULL)
      continue;
    if (d->count == 0)
      d->from = from;
    if (to > d->to)
      d->to = to;
    d->count += count;
  }
}

void tb__deliver(tb_server_t *s, tb_run_t *r, tb_ev_t *e, bool lockstep, bool reask) {
  tb_ev_t *lock_ev = NULL;
  int waiting = 0;
  for (conn_t *c = s->conns; c != NULL; c = c->next) {
    if (c->closing || c->role == TB_ROLE_NONE)
      continue;
    bool normal = false, ls = false, later = false;
    for (int i = 0; i < c->n_subs; i++) {
      sub_t *sb = &c->subs[i];
      bool wants_ls = lockstep && (sb->lockstep & (1u << e->kind)) != 0;
      if (sb->replay_run == r && wants_ls && c->role == TB_ROLE_CONTROLLER &&
          sub_filters(sb, r, e->kind, e->batch)) {
        /* A lockstep subscriber still catching up (it reconnected): it owes
         * the answer all the same. Its replay sends this event marked when
         * it gets there; one it has passed already (asked again after a
         * restart) goes now. */
        if (e->seq < sb->replay_next) {
          ls = true;
        } else {
          sb->replay_lockstep = e->seq;
          later = true;
        }
        continue;
      }
      if (!sub_matches(sb, r, e->kind, e->batch))
        continue;
      normal = true;
      ls |= wants_ls;
    }
    if (!ls && later && c->n_owed < (int)(sizeof(c->owed) / sizeof(c->owed[0]))) {
      c->owed[c->n_owed].run = r;
      c->owed[c->n_owed].seq = e->seq;
      c->n_owed++;
      waiting++;
    } else if (ls && c->role == TB_ROLE_CONTROLLER &&
               c->n_owed < (int)(sizeof(c->owed) / sizeof(c->owed[0]))) {
      if (lock_ev == NULL)
        lock_ev = lockstep_variant(e);
      if (lock_ev != NULL) {
        flush_drops(c, r);
        tb__conn_send_ev(c, lock_ev);
        c->owed[c->n_owed].run = r;
        c->owed[c->n_owed].seq = e->seq;
        c->n_owed++;
        waiting++;
        check_limits(c);
      }
    } else if (normal && !reask) {
      deliver_one(c, r, e);
    }
  }
  tb__ev_unref(lock_ev);
  if (lockstep) {
    pthread_mutex_lock(&r->ls_mu);
    if (r->ls_seq == e->seq) {
      r->ls_waiting = waiting;
      r->ls_armed = true;
      if (waiting == 0)
        pthread_cond_broadcast(&r->ls_cv);
    }
    pthread_mutex_unlock(&r->ls_mu);
  }
}

/* ---- replay -------------------------------------------------------------- */

/* Reads the next event line with seq >= want from the run's on-disk log. */
static tb_ev_t *from_disk(sub_t *sb, tb_run_t *r, int64_t want) {
  if (r->dir[0] == '\0')
    return NULL;
  if (sb->replay_file == NULL) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/events.ndjson", r->dir);
    if ((sb->replay_file = fopen(path, "r")) == NULL)
      return NULL;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  tb_ev_t *e = NULL;
  while ((n = getline(&line, &cap, sb->replay_file)) > 0) {
    const char *p = strstr(line, "\"seq\":");
    if (p == NULL)
      continue;
    int64_t seq = strtoll(p + 6, NULL, 10);
    if (seq < want)
      continue;
    const char *ev = strstr(line, "\"event\":\"");
    char name[TB_PROTO_NAME_MAX] = "";
    if (ev != NULL)
      sscanf(ev + 9, "%47[a-z_]", name);
    const char *bt = strstr(line, "\"batch\":");
    int batch = bt ? (int)strtol(bt + 8, NULL, 10) : -1;
    e = tb__ev_new(line, (size_t)n, seq, tb_event_from_name(name), batch);
    break;
  }
  free(line);
  return e;
}

/* Queues replayed events until the backlog reaches half the drop
 * threshold; true if some subscription is still replaying. */
static bool replay_step(conn_t *c) {
  tb_server_t *s = c->srv;
  bool more = false;
  for (int i = 0; i < c->n_subs && !c->closing; i++) {
    sub_t *sb = &c->subs[i];
    tb_run_t *r = sb->replay_run;
    if (r == NULL)
      continue;
    while (sb->replay_next <= r->last_seq && tb__conn_backlog(c) < s->o.out_drop_bytes / 2) {
      tb_ev_t *e = tb__run_event(r, sb->replay_next);
      bool owned = false;
      if (e == NULL) {
        e = from_disk(sb, r, sb->replay_next);
        owned = e != NULL;
      }
      if (e == NULL || e->seq > sb->replay_next) {
        /* Gone from memory and disk: say so, then go on from what exists
         * (in memory, the next retained seq: the queue may have dropped
         * some). */
        int64_t next = e != NULL ? e->seq : r->last_seq - (int64_t)r->n_ring + 1;
        if (e == NULL && next <= sb->replay_next) {
          next = sb->replay_next + 1;
          while (next <= r->last_seq && tb__run_event(r, next) == NULL)
            next++;
        }
        if (next <= sb->replay_next)
          next = r->last_seq + 1;
        tb_buf_t b;
        tb_buf_init(&b);
        tb_msg_dropped(&b, r->id, next - sb->replay_next, sb->replay_next, next - 1);
        tb__conn_send(c, b.data, b.len);
        tb_buf_free(&b);
        sb->replay_next = next;
        if (owned)
          tb__ev_unref(e);
        continue;
      }
      sb->replay_run = NULL; /* to test the filters as a live event would be */
      bool match = sub_matches(sb, r, e->kind, e->batch);
      sb->replay_run = r;
      if (match && e->seq == sb->replay_lockstep) {
        tb_ev_t *v = lockstep_variant(e);
        if (v != NULL)
          tb__conn_send_ev(c, v);
        tb__ev_unref(v);
        sb->replay_lockstep = 0;
      } else if (match) {
        tb__conn_send_ev(c, e);
      }
      sb->replay_next = e->seq + 1;
      if (owned)
        tb__ev_unref(e);
    }
    more |= sb->replay_next <= r->last_seq;
    if (sb->replay_next > r->last_seq) {
      sb->replay_run = NULL; /* caught up: live from the next event */
      if (sb->replay_file != NULL) {
        fclose(sb->replay_file);
        sb->replay_file = NULL;
      }
    }
  }
  return more && !c->closing;
}

void tb__replay_pump(conn_t *c) {
  for (;;) {
    bool more = replay_step(c);
    tb__conn_flush(c);
    /* Written at once, no write callback will come to go on: go on here. */
    if (!more || c->closing || c->inflight > 0 || c->wsi != NULL ||
        tb__conn_backlog(c) >= c->srv->o.out_drop_bytes / 2)
      return;
  }
}
