/* TLS on the stream listeners (docs/PROTOCOL.md, "TLS"), with OpenSSL 3.
 *
 * OpenSSL never touches a socket: the loop reads and writes them as it does
 * for plaintext, and each TLS connection's SSL object sits between two
 * buffers. What libuv read goes into a memory BIO; what OpenSSL produces
 * (handshake messages, records, alerts) goes, through a small BIO of ours,
 * into the connection's own ciphertext buffer, which conn.c hands to libuv
 * as it is (uv_try_write from it, or the buffer itself to uv_write: no
 * copy). Every call is non-blocking: a handshake that needs more bytes
 * says so and goes on when they come.
 *
 * Where this sits in the write path: events are encoded once and shared by
 * every subscriber (events.c, conn.c); the per-client step here is only the
 * record encryption of the client's queued buffers, done when its socket can
 * take them (tb__conn_flush), so a slow TLS client's backlog stays in the
 * shared plaintext queue, where the output limits and the dropped notices
 * apply, exactly as for a plaintext one. Small buffers (replies, a few
 * events) are gathered into one record of up to 16 KiB rather than one
 * record each.
 *
 * Policy: TLS 1.2 and 1.3 only; no renegotiation (a client's attempt is
 * refused with an alert, RFC 5746's no_renegotiation); no session cache or
 * tickets (clients of a daemon connect once and stay); OpenSSL's buffers
 * released while a connection is idle, so 10,000 idle TLS subscribers cost
 * kilobytes each, not tens. With a client CA, a client without a certificate
 * that CA signed fails the handshake. */
#include "internal.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

struct tb_tls_s {
  SSL *ssl;
  BIO *rbio; /* ciphertext read from the socket, for OpenSSL */
  char *out; /* ciphertext OpenSSL wrote, for the socket */
  size_t out_len, out_cap;
  bool established, shut;
  uint64_t bytes_in; /* ciphertext received, all told */
};

/* ---- the output BIO: OpenSSL's writes go into tls->out ------------------------- */

static BIO_METHOD *out_method;

static int out_write(BIO *b, const char *data, int len) {
  tb_tls_t *t = BIO_get_data(b);
  if (len <= 0)
    return 0;
  if (t->out_len + (size_t)len > t->out_cap) {
    size_t cap = t->out_cap ? t->out_cap : 4096;
    while (cap < t->out_len + (size_t)len)
      cap *= 2;
    char *p = realloc(t->out, cap);
    if (p == NULL)
      return -1;
    t->out = p;
    t->out_cap = cap;
  }
  memcpy(t->out + t->out_len, data, (size_t)len);
  t->out_len += (size_t)len;
  return len;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int out_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

/* ---- the server's context --------------------------------------------------------- */

/* The reason of OpenSSL's last error, or `fallback`; clears the queue. */
static const char *ssl_reason(char *buf, size_t len, const char *fallback) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
  snprintf(buf, len, "%s", r != NULL ? r : fallback);
  ERR_clear_error();
  return buf;
}

/* The certificate's subject names, for the log: "CN=host, DNS:host, IP:127.0.0.1". */
static void describe_cert(X509 *x, char *buf, size_t len) {
  buf[0] = '\0';
  X509_NAME_oneline(X509_get_subject_name(x), buf, (int)len);
  GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
    size_t n = strlen(buf);
    if (g->type == GEN_DNS)
      snprintf(buf + n, len - n, ", DNS:%s", (const char *)ASN1_STRING_get0_data(g->d.dNSName));
    else if (g->type == GEN_IPADD && ASN1_STRING_length(g->d.iPAddress) == 4) {
      const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
      snprintf(buf + n, len - n, ", IP:%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
    }
  }
  GENERAL_NAMES_free(sans);
}

int tb__tls_setup(tb_server_t *s, tb_err_t *err) {
  const char *cert = s->o.tls_cert, *key = s->o.tls_key, *ca = s->o.tls_client_ca;
  char why[256];
  if (cert == NULL && key == NULL) {
    if (ca != NULL)
      return tb_errf(err, TB_EINVAL, "--tls-client-ca needs --tls-cert and --tls-key");
    return 0;
  }
  if (cert == NULL || key == NULL)
    return tb_errf(err, TB_EINVAL, "TLS needs both --tls-cert FILE and --tls-key FILE");
  if (out_method == NULL) {
    /* Made once per process and kept (a BIO_METHOD is a static table). */
    out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "trainbus output");
    if (out_method == NULL || !BIO_meth_set_write(out_method, out_write) ||
        !BIO_meth_set_ctrl(out_method, out_ctrl) || !BIO_meth_set_create(out_method, out_create))
      return tb_errf(err, TB_ENOMEM, "TLS: cannot set up OpenSSL");
  }
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL)
    return tb_errf(err, TB_ENOMEM, "TLS: cannot set up OpenSSL: %s",
                   ssl_reason(why, sizeof(why), "out of memory"));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  int r = 0;
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    r = tb_errf(err, TB_EINVAL, "--tls-cert %s: cannot use it: %s", cert,
                ssl_reason(why, sizeof(why), "not a PEM certificate"));
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    r = tb_errf(err, TB_EINVAL, "--tls-key %s: cannot use it with the certificate in %s: %s", key,
                cert, ssl_reason(why, sizeof(why), "not a PEM private key"));
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    r = tb_errf(err, TB_EINVAL,
                "--tls-key %s: cannot use it with the certificate in %s: not its key", key, cert);
    ERR_clear_error();
    goto fail;
  }
  if (ca != NULL) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 || names == NULL) {
      sk_X509_NAME_pop_free(names, X509_NAME_free);
      r = tb_errf(err, TB_EINVAL, "--tls-client-ca %s: cannot use it: %s", ca,
                  ssl_reason(why, sizeof(why), "no PEM certificate in it"));
      goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  X509 *x = SSL_CTX_get0_certificate(ctx);
  describe_cert(x, s->tls_subject, sizeof(s->tls_subject));
  s->tls_expired = X509_cmp_current_time(X509_get0_notAfter(x)) < 0;
  s->tls_ctx = ctx;
  if ((s->tls_rbuf = malloc(TB_TLS_READ_CHUNK)) == NULL) {
    r = tb_errf(err, TB_ENOMEM, "out of memory");
    s->tls_ctx = NULL;
    goto fail;
  }
  return 0;
fail:
  SSL_CTX_free(ctx);
  return r;
}

void tb__tls_server_free(tb_server_t *s) {
  SSL_CTX_free(s->tls_ctx);
  s->tls_ctx = NULL;
  free(s->tls_rbuf);
  s->tls_rbuf = NULL;
}

/* ---- one connection --------------------------------------------------------------- */

tb_tls_t *tb__tls_new(tb_server_t *s) {
  tb_tls_t *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return NULL;
  t->ssl = SSL_new(s->tls_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  BIO *wbio = BIO_new(out_method);
  if (t->ssl == NULL || t->rbio == NULL || wbio == NULL) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(wbio);
    free(t);
    ERR_clear_error();
    return NULL;
  }
  BIO_set_data(wbio, t);
  /* An empty memory BIO says "retry", not end of file. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, wbio); /* the SSL object owns both now */
  SSL_set_accept_state(t->ssl);
  return t;
}

void tb__tls_free(tb_tls_t *t) {
  if (t == NULL)
    return;
  SSL_free(t->ssl);
  free(t->out);
  free(t);
}

int tb__tls_input(tb_tls_t *t, const char *data, size_t len) {
  /* The first byte of a TLS connection is a handshake record's (22). */
  if (t->bytes_in == 0 && len > 0 && (unsigned char)data[0] != 0x16)
    return TB__TLS_PLAINTEXT;
  t->bytes_in += len;
  if (BIO_write(t->rbio, data, (int)len) != (int)len)
    return TB__TLS_FAILED;
  return 0;
}

/* What went wrong in a failed call, for the log. */
static void failure(tb_tls_t *t, int ret, char *why, size_t why_len) {
  int e = SSL_get_error(t->ssl, ret);
  long v = SSL_get_verify_result(t->ssl);
  char buf[200];
  if (!t->established && v != X509_V_OK)
    snprintf(why, why_len, "the client's certificate: %s", X509_verify_cert_error_string(v));
  else if (e == SSL_ERROR_SSL)
    snprintf(why, why_len, "%s", ssl_reason(buf, sizeof(buf), "protocol error"));
  else
    snprintf(why, why_len, "error %d", e);
  ERR_clear_error();
}

int tb__tls_read(tb_tls_t *t, char *buf, size_t cap, size_t *got, char *why, size_t why_len) {
  *got = 0;
  ERR_clear_error();
  if (!t->established) {
    int r = SSL_do_handshake(t->ssl);
    if (r != 1) {
      int e = SSL_get_error(t->ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
      failure(t, r, why, why_len);
      return TB__TLS_FAILED;
    }
    t->established = true;
  }
  if (cap == 0)
    return 0;
  int n = SSL_read(t->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
  if (n > 0) {
    *got = (size_t)n;
    return 0;
  }
  int e = SSL_get_error(t->ssl, n);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
    return 0;
  if (e == SSL_ERROR_ZERO_RETURN)
    return TB__TLS_EOF; /* the client's close_notify */
  failure(t, n, why, why_len);
  return TB__TLS_FAILED;
}

bool tb__tls_established(const tb_tls_t *t) {
  return t->established;
}

uint64_t tb__tls_bytes_in(const tb_tls_t *t) {
  return t->bytes_in;
}

void tb__tls_describe(const tb_tls_t *t, char *buf, size_t len) {
  snprintf(buf, len, "%s, %s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
  X509 *peer = SSL_get0_peer_certificate(t->ssl);
  if (peer != NULL) {
    size_t n = strlen(buf);
    char subject[256];
    X509_NAME_oneline(X509_get_subject_name(peer), subject, sizeof(subject));
    snprintf(buf + n, len - n, ", client certificate %s", subject);
  }
}

/* Records of at most this many bytes are what TLS allows (RFC 8446 5.1). */
enum { RECORD = 16384 };

static int write_record(tb_tls_t *t, const char *p, size_t n) {
  while (n > 0) {
    int k = n > INT32_MAX ? INT32_MAX : (int)n;
    int w = SSL_write(t->ssl, p, k);
    if (w <= 0) {
      ERR_clear_error();
      return TB__TLS_FAILED; /* out of memory in our BIO, or a fatal error before */
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int tb__tls_write(tb_tls_t *t, const uv_buf_t *bufs, int n) {
  if (!t->established || t->shut)
    return TB__TLS_FAILED;
  /* Small buffers gather into one record; a large one goes as it is
   * (OpenSSL cuts it into full records). */
  char stage[RECORD];
  size_t staged = 0;
  ERR_clear_error();
  for (int i = 0; i < n; i++) {
    const char *p = bufs[i].base;
    size_t len = bufs[i].len;
    if (staged + len <= sizeof(stage)) {
      memcpy(stage + staged, p, len);
      staged += len;
      continue;
    }
    if (staged > 0) {
      /* Top the record up to its full size first. */
      size_t fill = sizeof(stage) - staged;
      memcpy(stage + staged, p, fill);
      p += fill;
      len -= fill;
      if (write_record(t, stage, sizeof(stage)) != 0)
        return TB__TLS_FAILED;
      staged = 0;
    }
    size_t whole = len - len % RECORD;
    if (whole > 0 && write_record(t, p, whole) != 0)
      return TB__TLS_FAILED;
    memcpy(stage, p + whole, len - whole);
    staged = len - whole;
  }
  if (staged > 0 && write_record(t, stage, staged) != 0)
    return TB__TLS_FAILED;
  return 0;
}

void tb__tls_close_notify(tb_tls_t *t) {
  if (!t->established || t->shut)
    return;
  t->shut = true;
  SSL_shutdown(t->ssl);
  ERR_clear_error();
}

size_t tb__tls_pending(const tb_tls_t *t) {
  return t->out_len;
}

const char *tb__tls_out(const tb_tls_t *t) {
  return t->out;
}

void tb__tls_consume(tb_tls_t *t, size_t n) {
  if (n >= t->out_len) {
    /* Drained: an idle connection keeps no ciphertext buffer. */
    free(t->out);
    t->out = NULL;
    t->out_len = t->out_cap = 0;
    return;
  }
  memmove(t->out, t->out + n, t->out_len - n);
  t->out_len -= n;
}

char *tb__tls_take(tb_tls_t *t, size_t *len) {
  char *p = t->out;
  *len = t->out_len;
  t->out = NULL;
  t->out_len = t->out_cap = 0;
  return p;
}
