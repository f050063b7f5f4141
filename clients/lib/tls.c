/* TLS for the client (docs/PROTOCOL.md, "TLS"), with OpenSSL 3.
 *
 * The socket stays ours, non-blocking, waited on with poll() against the
 * caller's deadline as in sock.c; OpenSSL works between two memory BIOs:
 * what recv() got goes in, what it produces is sent. That keeps every wait
 * bounded the same way, and lets the first bytes of a handshake be looked
 * at before OpenSSL sees them: a trainbus server without TLS speaks first,
 * in plaintext ("{" of its hello), and that is a clear error of its own
 * rather than OpenSSL's "wrong version number".
 *
 * Verification is on by default: the chain to a CA of ca_file (or the
 * system's), and the host name or IP address the client connected to (or
 * server_name), as curl and Python's ssl do. Failures say which check
 * failed and what to do about it. */
#include "internal.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>

static void cert_names(X509 *x, char *buf, size_t len);

struct tb__tls_s {
  SSL *ssl;
  BIO *rbio, *wbio;
  bool established;
  size_t raw_in; /* bytes received, all told */
  char host[256];
  char names[400]; /* the names the server's certificate is for, seen while verifying it */
};

/* Notes the server certificate's names for the messages (OpenSSL keeps no
 * peer certificate after a failed verification); the verdict is OpenSSL's. */
static int on_verify(int ok, X509_STORE_CTX *x) {
  SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
  struct tb__tls_s *t = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
  if (t != NULL && t->names[0] == '\0' && X509_STORE_CTX_get0_cert(x) != NULL)
    cert_names(X509_STORE_CTX_get0_cert(x), t->names, sizeof t->names);
  return ok;
}

/* OpenSSL's last reason ("certificate verify failed"), or fallback. */
static const char *reason(char *buf, size_t len, const char *fallback) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
  snprintf(buf, len, "%s", r != NULL ? r : fallback);
  ERR_clear_error();
  return buf;
}

/* The names a certificate is for: "DNS:other.example, IP:10.0.0.1". */
static void cert_names(X509 *x, char *buf, size_t len) {
  buf[0] = '\0';
  if (x == NULL)
    return;
  GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
    size_t n = strlen(buf);
    char ip[64] = "";
    if (g->type == GEN_DNS) {
      snprintf(buf + n, len - n, "%sDNS:%s", n ? ", " : "",
               (const char *)ASN1_STRING_get0_data(g->d.dNSName));
    } else if (g->type == GEN_IPADD) {
      int l = ASN1_STRING_length(g->d.iPAddress);
      inet_ntop(l == 16 ? AF_INET6 : AF_INET, ASN1_STRING_get0_data(g->d.iPAddress), ip, sizeof ip);
      snprintf(buf + n, len - n, "%sIP:%s", n ? ", " : "", ip);
    }
  }
  GENERAL_NAMES_free(sans);
  if (buf[0] == '\0')
    X509_NAME_oneline(X509_get_subject_name(x), buf, (int)len);
}

/* The context: verification policy, CAs and the client certificate. */
static int make_ctx(tb_client_t *c, tb_client_err_t *err) {
  char why[200];
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "TLS: cannot set up OpenSSL: %s",
                    reason(why, sizeof why, "out of memory"));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  if (!c->insecure) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, on_verify);
    int ok = c->ca_file[0] ? SSL_CTX_load_verify_locations(ctx, c->ca_file, NULL)
                           : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
      SSL_CTX_free(ctx);
      return tb__cerr(err, TB_CLIENT_ETLS, "CA file %s: cannot use it: %s",
                      c->ca_file[0] ? c->ca_file : "(the system's)",
                      reason(why, sizeof why, "no PEM certificate in it"));
    }
  }
  if (c->cert_file[0] || c->key_file[0]) {
    const char *cert = c->cert_file, *key = c->key_file[0] ? c->key_file : c->cert_file;
    if (cert[0] == '\0') {
      SSL_CTX_free(ctx);
      return tb__cerr(err, TB_CLIENT_EINVALID, "a client key needs its certificate too");
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
      SSL_CTX_free(ctx);
      return tb__cerr(err, TB_CLIENT_ETLS, "client certificate %s: cannot use it: %s", cert,
                      reason(why, sizeof why, "not a PEM certificate"));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      SSL_CTX_free(ctx);
      return tb__cerr(err, TB_CLIENT_ETLS, "client key %s: cannot use it with %s: %s", key, cert,
                      reason(why, sizeof why, "not the certificate's key"));
    }
  }
  c->tls_ctx = ctx;
  return 0;
}

void tb__tls_drop(tb_client_t *c) {
  if (c->tls_conn == NULL)
    return;
  SSL_free(c->tls_conn->ssl); /* frees both BIOs */
  free(c->tls_conn);
  c->tls_conn = NULL;
}

void tb__tls_free(tb_client_t *c) {
  tb__tls_drop(c);
  SSL_CTX_free(c->tls_ctx);
  c->tls_ctx = NULL;
}

/* Sends what OpenSSL wrote into wbio. */
static int flush_out(tb_client_t *c, int64_t deadline, tb_client_err_t *err) {
  char buf[16384];
  int n;
  while ((n = BIO_read(c->tls_conn->wbio, buf, sizeof buf)) > 0) {
    int rc = tb__sock_send(c->fd, buf, (size_t)n, deadline);
    if (rc != 0)
      return tb__cerr(err, rc, "%s: %s", c->addr, tb_client_strerror(rc));
  }
  return 0;
}

/* Explains a failed handshake or read: the certificate check that failed,
 * the server's alert, or OpenSSL's reason. */
static int tls_failure(tb_client_t *c, tb_client_err_t *err) {
  struct tb__tls_s *t = c->tls_conn;
  char why[200];
  long v = SSL_get_verify_result(t->ssl);
  if (!c->insecure && v != X509_V_OK) {
    const char *names = t->names[0] ? t->names : "no name";
    ERR_clear_error();
    const char *vs = X509_verify_cert_error_string(v);
    switch (v) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return tb__cerr(err, TB_CLIENT_ETLS,
                      "%s: the server's certificate is not for %s (it is for %s): connect with a "
                      "name it was made for (or --insecure to skip the check)",
                      c->addr, t->host, names);
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return tb__cerr(err, TB_CLIENT_ETLS,
                      "%s: the server's certificate has expired (%s): the daemon needs a new one",
                      c->addr, names);
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return tb__cerr(err, TB_CLIENT_ETLS,
                      "%s: the server's certificate is not valid yet (%s): check the clocks",
                      c->addr, names);
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      return tb__cerr(err, TB_CLIENT_ETLS,
                      "%s: the server's certificate (%s) is not signed by a CA this client "
                      "trusts (%s): give the CA that signed it with --cacert FILE",
                      c->addr, names, vs);
    default:
      return tb__cerr(err, TB_CLIENT_ETLS, "%s: the server's certificate was refused: %s", c->addr,
                      vs);
    }
  }
  unsigned long e = ERR_peek_last_error();
  reason(why, sizeof why, "TLS protocol error");
  if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL &&
      (ERR_GET_REASON(e) == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
       ERR_GET_REASON(e) == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE ||
       ERR_GET_REASON(e) == SSL_R_TLSV1_ALERT_UNKNOWN_CA ||
       ERR_GET_REASON(e) == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE))
    return tb__cerr(
        err, TB_CLIENT_ETLS, "%s: the server refused the TLS connection (%s)%s", c->addr, why,
        c->cert_file[0] ? ": is the client certificate from the CA it trusts?"
                        : ": it may want a client certificate (--cert FILE --key FILE)");
  return tb__cerr(err, TB_CLIENT_ETLS, "%s: TLS failed: %s", c->addr, why);
}

/* Raw bytes from the socket into OpenSSL. 1: some arrived; 0: none yet;
 * negative: the end of the stream or an error (err filled). */
static int pull(tb_client_t *c, tb_client_err_t *err) {
  struct tb__tls_s *t = c->tls_conn;
  char buf[16384];
  ssize_t n = recv(c->fd, buf, sizeof buf, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return 0;
  if (n < 0) {
    int e = errno;
    return tb__cerr(err, -e, "%s: reading: %s", c->addr, strerror(e));
  }
  if (n == 0) {
    if (!t->established)
      return tb__cerr(err, TB_CLIENT_ETLS,
                      "%s: the server closed the connection during the TLS handshake%s", c->addr,
                      t->raw_in == 0 ? " without a word (is it a TLS port?)" : "");
    return TB_CLIENT_ECLOSED;
  }
  if (t->raw_in == 0 && buf[0] != 0x16)
    /* Not a TLS record: a server speaking first in plaintext. */
    return tb__cerr(
        err, TB_CLIENT_ETLS,
        buf[0] == '{'
            ? "%s answered in plaintext, not TLS: it is a trainbus port without TLS (connect "
              "without tls:// or --tls, or start trainbusd with --tls-cert and --tls-key)"
            : "%s does not speak TLS (its first bytes are not a TLS handshake)",
        c->addr);
  t->raw_in += (size_t)n;
  if (BIO_write(t->rbio, buf, (int)n) != (int)n)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  return 1;
}

static int wait_readable(tb_client_t *c, int64_t deadline, tb_client_err_t *err) {
  int64_t left = deadline < 0 ? -1 : deadline - tb__now_ms();
  if (deadline >= 0 && left <= 0)
    return tb__cerr(err, TB_CLIENT_ETIMEOUT, "%s: no TLS handshake from the server in time",
                    c->addr);
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  if (poll(&p, 1, left < 0 ? -1 : left > 1000000000 ? 1000000000 : (int)left) < 0 && errno != EINTR)
    return tb__cerr(err, -errno, "poll: %s", strerror(errno));
  return 0;
}

static bool is_ip(const char *host) {
  unsigned char a[16];
  return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int tb__tls_connect(tb_client_t *c, const char *host, int64_t deadline, tb_client_err_t *err) {
  int rc;
  if (c->tls_ctx == NULL && (rc = make_ctx(c, err)) != 0)
    return rc;
  struct tb__tls_s *t = calloc(1, sizeof *t);
  if (t == NULL)
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  t->ssl = SSL_new(c->tls_ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    free(t);
    ERR_clear_error();
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  }
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  SSL_set_connect_state(t->ssl);
  SSL_set_app_data(t->ssl, t);
  c->tls_conn = t;
  const char *name = c->server_name[0] ? c->server_name : host;
  snprintf(t->host, sizeof t->host, "%s", name);
  if (!is_ip(name))
    SSL_set_tlsext_host_name(t->ssl, name); /* SNI, for names only (RFC 6066 3) */
  if (!c->insecure) {
    X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
    int ok = is_ip(name) ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
                         : X509_VERIFY_PARAM_set1_host(vp, name, 0);
    if (ok != 1) {
      tb__tls_drop(c);
      return tb__cerr(err, TB_CLIENT_EADDRESS, "cannot check the certificate against '%s'", name);
    }
  }
  for (;;) {
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if ((rc = flush_out(c, deadline, err)) != 0)
      break;
    if (r == 1) {
      t->established = true;
      return 0;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e != SSL_ERROR_WANT_READ) {
      rc = tls_failure(c, err);
      break;
    }
    if ((rc = pull(c, err)) < 0)
      break;
    if (rc == 0 && (rc = wait_readable(c, deadline, err)) != 0)
      break;
  }
  tb__tls_drop(c);
  return rc;
}

ssize_t tb__tls_recv(tb_client_t *c, char *buf, size_t cap, tb_client_err_t *err) {
  struct tb__tls_s *t = c->tls_conn;
  for (;;) {
    ERR_clear_error();
    int n = SSL_read(t->ssl, buf, cap > 1 << 30 ? 1 << 30 : (int)cap);
    int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, n);
    /* Post-handshake messages (a key update) may want an answer. */
    int rc = flush_out(c, tb__deadline(c->connect_timeout_ms), err);
    if (rc != 0)
      return rc;
    if (n > 0)
      return n;
    if (e == SSL_ERROR_ZERO_RETURN)
      return 0; /* the server's close_notify */
    if (e != SSL_ERROR_WANT_READ)
      return tls_failure(c, err);
    rc = pull(c, err);
    if (rc == TB_CLIENT_ECLOSED)
      return 0; /* closed without close_notify: the end all the same */
    if (rc < 0)
      return rc;
    if (rc == 0)
      return -EAGAIN;
  }
}

int tb__tls_send(tb_client_t *c, const char *buf, size_t len, int64_t deadline,
                 tb_client_err_t *err) {
  struct tb__tls_s *t = c->tls_conn;
  while (len > 0) {
    ERR_clear_error();
    int n = SSL_write(t->ssl, buf, len > 1 << 30 ? 1 << 30 : (int)len);
    if (n <= 0)
      return tls_failure(c, err);
    buf += n;
    len -= (size_t)n;
    int rc = flush_out(c, deadline, err);
    if (rc != 0)
      return rc;
  }
  return 0;
}
