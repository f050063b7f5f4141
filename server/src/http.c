/* The HTTP/WebSocket front: serves the dashboard page and the protocol over
 * WebSockets, with libwebsockets running on the server's own libuv loop (a
 * "foreign loop", so one thread still owns every socket).
 *
 * A WebSocket client is an ordinary connection (conn.c) whose bytes travel
 * as WebSocket text messages: each message in is one protocol line (framed
 * and validated exactly like a TCP line), each line out is one message. The
 * output queue, its limits and the fan-out are shared with TCP clients.
 *
 * TLS: with a certificate (trainbusd --tls-cert) the front is HTTPS and
 * WSS through libwebsockets' own OpenSSL binding: the same files, TLS 1.2 or
 * later, the same client CA; a plain http:// request on the port is
 * redirected to https://.
 *
 * Limits and checks: the page is served only at "/"; a WebSocket is accepted
 * only at "/ws" and only from a page of the same origin (or from a client
 * that sends no Origin, which no browser does), so another site open in the
 * user's browser cannot reach the daemon; messages are bounded by max_line;
 * header data by 4 KiB. */
#include "internal.h"

#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

extern const unsigned char tb_dashboard_html[];
extern const size_t tb_dashboard_html_len;

typedef struct sess_s {
  conn_t *conn;  /* WebSocket sessions */
  size_t served; /* HTTP: bytes of the page sent */
} sess_t;

void tb__ws_want_write(conn_t *c) {
  if (c->wsi != NULL)
    lws_callback_on_writable(c->wsi);
}

void tb__ws_kill(conn_t *c) {
  if (c->wsi != NULL)
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}

/* Same origin: the Origin header names the host the page came from. */
static bool origin_ok(struct lws *wsi) {
  char origin[300] = "", host[256] = "";
  if (lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) <= 0)
    return true; /* not a browser */
  lws_hdr_copy(wsi, host, sizeof(host), WSI_TOKEN_HOST);
  const char *o = strstr(origin, "://");
  return o != NULL && host[0] != '\0' && strcmp(o + 3, host) == 0;
}

/* The page may run its own inline script and talk to this origin only. */
static const char csp[] = "default-src 'none'; script-src 'unsafe-inline'; style-src "
                          "'unsafe-inline'; img-src data:; connect-src 'self'";

static int serve_page(struct lws *wsi, sess_t *ss) {
  unsigned char buf[LWS_PRE + 2048], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof(buf);
  if (lws_add_http_common_headers(wsi, HTTP_STATUS_OK, "text/html; charset=utf-8",
                                  (lws_filepos_t)tb_dashboard_html_len, &p, end) ||
      lws_add_http_header_by_name(wsi, (const unsigned char *)"content-security-policy:",
                                  (const unsigned char *)csp, (int)strlen(csp), &p, end) ||
      lws_add_http_header_by_name(wsi, (const unsigned char *)"x-content-type-options:",
                                  (const unsigned char *)"nosniff", 7, &p, end) ||
      lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                  (const unsigned char *)"no-store", 8, &p, end) ||
      lws_finalize_write_http_header(wsi, start, &p, end))
    return 1;
  ss->served = 0;
  lws_callback_on_writable(wsi);
  return 0;
}

static int on_event(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len) {
  sess_t *ss = user;
  struct lws_vhost *vh = lws_get_vhost(wsi);
  tb_server_t *s = vh != NULL ? lws_get_vhost_user(vh) : NULL;
  switch (reason) {
  case LWS_CALLBACK_HTTP: {
    const char *uri = in;
    if (strcmp(uri, "/") != 0 && strcmp(uri, "/index.html") != 0) {
      lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, "not found: the dashboard is at /");
      return -1;
    }
    return serve_page(wsi, ss);
  }
  case LWS_CALLBACK_HTTP_WRITEABLE: {
    unsigned char buf[LWS_PRE + 16384];
    size_t n = tb_dashboard_html_len - ss->served;
    if (n > sizeof(buf) - LWS_PRE)
      n = sizeof(buf) - LWS_PRE;
    memcpy(buf + LWS_PRE, tb_dashboard_html + ss->served, n);
    ss->served += n;
    bool last = ss->served == tb_dashboard_html_len;
    if (lws_write(wsi, buf + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) != (int)n)
      return -1;
    if (!last) {
      lws_callback_on_writable(wsi);
      return 0;
    }
    return lws_http_transaction_completed(wsi) ? -1 : 0;
  }
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
    char uri[64] = "";
    lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI);
    if (strcmp(uri, "/ws") != 0 || !origin_ok(wsi)) {
      if (s != NULL)
        tb__log(s, 1, "websocket refused (path %s, or another origin)", uri);
      return 1;
    }
    return 0;
  }
  case LWS_CALLBACK_ESTABLISHED: {
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL || s == NULL)
      return -1;
    c->wsi = wsi;
    /* Local (observers need no token) only when the front listens on
     * loopback, as for a TCP listener. */
    tb__conn_register(s, c, s->http_local);
    snprintf(c->label, sizeof(c->label), "web client %llu", (unsigned long long)c->id);
    ss->conn = c;
    tb__conn_greet(c);
    return 0;
  }
  case LWS_CALLBACK_RECEIVE: {
    conn_t *c = ss->conn;
    if (c == NULL || c->closing)
      return 0;
    /* The framer bounds the message: past max_line without a newline it
     * answers too_large and closes, before the rest is buffered. */
    tb__conn_input(c, in, len);
    if (lws_is_final_fragment(wsi) && !c->closing)
      tb__conn_input(c, "\n", 1); /* one message, one line */
    return 0;
  }
  case LWS_CALLBACK_SERVER_WRITEABLE: {
    conn_t *c = ss->conn;
    if (c == NULL)
      return -1;
    if (c->n_out > 0) {
      outbuf_t ob = c->out[0];
      memmove(c->out, c->out + 1, (size_t)(c->n_out - 1) * sizeof(outbuf_t));
      c->n_out--;
      size_t n = ob.buf.len;
      unsigned char *m = malloc(LWS_PRE + n);
      int w = -1;
      if (m != NULL) {
        /* One line, without its newline, as one text message. */
        size_t body = n > 0 && ob.buf.base[n - 1] == '\n' ? n - 1 : n;
        memcpy(m + LWS_PRE, ob.buf.base, body);
        w = lws_write(wsi, m + LWS_PRE, body, LWS_WRITE_TEXT);
        free(m);
      }
      c->pend_bytes -= n;
      tb__outbuf_release(&ob);
      if (w < 0)
        return -1;
      if (tb__conn_backlog(c) < s->o.out_soft_bytes)
        c->soft_since_ms = 0;
      tb__replay_pump(c);
      if (c->in_len > 0 && tb__conn_backlog(c) <= s->o.out_drop_bytes / 2)
        tb__conn_input(c, NULL, 0); /* requests held back by the backlog */
    }
    if (c->n_out > 0)
      lws_callback_on_writable(wsi);
    else if (c->closing && c->close_after_flush) {
      /* Everything said: close with a proper close frame. */
      lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
      return -1;
    }
    return 0;
  }
  case LWS_CALLBACK_CLOSED: {
    conn_t *c = ss->conn;
    if (c != NULL) {
      ss->conn = NULL;
      tb__lockstep_release_conn(c);
      tb__conn_drop_subs(c);
      tb__conn_free(c);
    }
    return 0;
  }
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"trainbus", on_event, sizeof(sess_t), 4096, 0, NULL, 0}, {NULL, NULL, 0, 0, 0, NULL, 0}};

int tb__http_start(tb_server_t *s, const char *spec, tb_err_t *err) {
  char host[256];
  const char *colon = strrchr(spec, ':');
  if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof(host))
    return tb_errf(err, TB_EINVAL, "--http %s: expected HOST:PORT", spec);
  memcpy(host, spec, (size_t)(colon - spec));
  host[colon - spec] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || port < 0 || port > 65535)
    return tb_errf(err, TB_EINVAL, "--http %s: the port must be 0..65535", spec);
  bool loopback =
      strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 || strcmp(host, "localhost") == 0;
  bool tls = s->tls_ctx != NULL;
  s->http_local = loopback;
  if (!loopback && !s->o.token_given)
    return tb_errf(err, TB_EINVAL,
                   "--http %s: refusing a non-loopback address without a token: give --token "
                   "or TRAINBUS_TOKEN",
                   spec);
  if (!loopback && !tls && !s->o.allow_plaintext)
    return tb_errf(err, TB_EINVAL,
                   "--http %s: refusing a non-loopback address without TLS (tokens and training "
                   "data would cross the network in clear): give --tls-cert FILE --tls-key FILE "
                   "(the dashboard is then served over HTTPS), or --allow-plaintext if the "
                   "network is trusted or TLS ends in front of the daemon",
                   spec);
  lws_set_log_level(LLL_ERR, NULL);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof(info));
  void *loops[1] = {&s->loop};
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                 LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_UV_NO_SIGSEGV_SIGFPE_SPIN;
  if (tls)
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.foreign_loops = loops;
  info.max_http_header_data = 4096;
  info.timeout_secs = 30;
  info.fd_limit_per_thread = (unsigned)s->o.max_clients + 64;
  if ((s->lws = lws_create_context(&info)) == NULL)
    return tb_errf(err, TB_EIO,
                   "--http %s: libwebsockets could not start (is "
                   "libwebsockets-evlib-uv installed?)",
                   spec);
  memset(&info, 0, sizeof(info));
  info.port = (int)port;
  info.iface = host;
  info.protocols = protocols;
  info.user = s;
  info.vhost_name = "trainbus";
  if (tls) {
    info.ssl_cert_filepath = s->o.tls_cert;
    info.ssl_private_key_filepath = s->o.tls_key;
    /* TLS 1.2 or later, no renegotiation, as on the TCP listeners. */
    info.ssl_options_set = SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 | SSL_OP_NO_RENEGOTIATION;
    /* HTTP/1.1 only: the page is one file, and WebSockets over HTTP/2
     * (RFC 8441) would be one more path to get right for nothing. */
    info.alpn = "http/1.1";
    info.options |=
        LWS_SERVER_OPTION_ALLOW_NON_SSL_ON_SSL_PORT | LWS_SERVER_OPTION_REDIRECT_HTTP_TO_HTTPS;
    if (s->o.tls_client_ca != NULL) {
      info.ssl_ca_filepath = s->o.tls_client_ca;
      info.options |= LWS_SERVER_OPTION_REQUIRE_VALID_OPENSSL_CLIENT_CERT;
    }
  }
  struct lws_vhost *vh = lws_create_vhost(s->lws, &info);
  if (vh == NULL) {
    lws_context_destroy(s->lws);
    s->lws = NULL;
    return tb_errf(err, TB_EIO, "--http %s: cannot listen there", spec);
  }
  snprintf(s->http_address, sizeof(s->http_address), "%s:%d", host, lws_get_vhost_listen_port(vh));
  return 0;
}

/* With a foreign loop, destroying the context is two steps: the first
 * closes lws's handles on our loop; once the loop has run them closed, the
 * second frees what is left (tb__http_free, from tb_server_free). */
void tb__http_stop(tb_server_t *s) {
  if (s->lws != NULL && !s->lws_stopping) {
    s->lws_stopping = true;
    lws_context_destroy(s->lws);
  }
}

void tb__http_free(tb_server_t *s) {
  if (s->lws != NULL) {
    lws_context_destroy(s->lws);
    s->lws = NULL;
  }
}
