/* What the bridge reads and writes on the broker, without the broker: names
 * of subjects and topics, control requests turned into protocol requests,
 * replies, and event, status and runs payloads read back.
 *
 * Everything a peer on the broker sends is validated by the protocol's own
 * decoders: a control payload is spliced into a JSON-RPC request and read by
 * tb_req_decode, an event payload into an event notification and read by
 * tb_smsg_decode. So a request through the broker gets exactly the errors it
 * would get from the daemon, and a follower reads events exactly as a direct
 * client does. cJSON is used first only to learn the payload's shape (an
 * object? does it name its run?), so that the splice is safe: a payload that
 * is not one complete object never reaches the splice. */
#include "internal.h"

#include <cjson/cJSON.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int perr(tb_proto_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

int tb__berr(tb_client_err_t *err, int code, const char *fmt, ...) {
  if (err != NULL) {
    err->code = code;
    const char *name = tb__bridge_code_name(code, false);
    if (name == NULL)
      name = code == 0 ? "" : code <= -32000 && code >= -32768 ? tb_proto_err_name(code) : "error";
    snprintf(err->name, sizeof err->name, "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* Names of the bridge's own codes; the client library's and the protocol's
 * are named by tb_client_err_name, which the bridge's entry points add. */
const char *tb__bridge_code_name(int code, bool text) {
  switch (code) {
#define X(name, c, wire, txt)                                                                      \
  case c:                                                                                          \
    return text ? txt : wire;
    TB_BRIDGE_ERR_MAP(X)
#undef X
  default:
    break;
  }
  switch (code) { /* the client library's, from its header's table */
#define X(name, c, wire, txt)                                                                      \
  case c:                                                                                          \
    return text ? txt : wire;
    TB_CLIENT_ERR_MAP(X)
#undef X
  default:
    return NULL;
  }
}

static int perr(tb_proto_err_t *err, int code, const char *fmt, ...) {
  if (err != NULL) {
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* ----------------------------------------------------------------- names -- */

int tb__ns_check(const char *ns, tb_client_err_t *err) {
  size_t n = ns ? strlen(ns) : 0;
  if (n == 0 || n > TB__NS_MAX)
    return tb__berr(err, TB_BRIDGE_ECONFIG, "namespace: expected 1 to %d characters, got %zu",
                    TB__NS_MAX, n);
  for (size_t i = 0; i < n; i++) {
    char c = ns[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-'))
      return tb__berr(err, TB_BRIDGE_ECONFIG,
                      "namespace \"%s\": character %zu ('%c') is not one of A-Z a-z 0-9 _ -", ns,
                      i + 1, c >= 0x20 && c < 0x7f ? c : '?');
  }
  return 0;
}

/* Appends s to dst at *len (bounded), escaping '.' in a NATS token. */
static void put(char *dst, size_t *len, const char *s, bool escape_dot) {
  for (; *s && *len + 4 < TB__SUBJECT_MAX; s++) {
    if (escape_dot && *s == '.') {
      memcpy(dst + *len, "%2E", 3);
      *len += 3;
    } else {
      dst[(*len)++] = *s;
    }
  }
  dst[*len] = '\0';
}

size_t tb__topic(char *dst, char sep, tb__topic_t kind, const char *ns, const char *run,
                 const char *name) {
  char s[2] = {sep, '\0'};
  size_t len = 0;
  bool esc = sep == '.';
  dst[0] = '\0';
  put(dst, &len, "tb", false);
  put(dst, &len, s, false);
  put(dst, &len, ns, false);
  put(dst, &len, s, false);
  switch (kind) {
  case TB__TOPIC_RUNS:
    put(dst, &len, "runs", false);
    return len;
  case TB__TOPIC_BRIDGE:
    put(dst, &len, "bridge", false);
    return len;
  default:
    break;
  }
  put(dst, &len, "run", false);
  put(dst, &len, s, false);
  put(dst, &len, run ? run : "", esc && run && strcmp(run, "*") != 0);
  put(dst, &len, s, false);
  if (kind == TB__TOPIC_STATUS) {
    put(dst, &len, "status", false);
    return len;
  }
  put(dst, &len, kind == TB__TOPIC_EVENT ? "evt" : "ctl", false);
  put(dst, &len, s, false);
  put(dst, &len, name ? name : "", false);
  return len;
}

static bool run_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == ':';
}

/* What the framer checks of every line from a daemon (valid UTF-8, no raw
 * control bytes but TAB), checked of a broker payload: the decoders after it
 * rely on it as they do on a framed line. */
static int check_text(const char *p, size_t len, const char *what, tb_proto_err_t *err) {
  tb_buf_t b;
  tb_buf_init(&b);
  if (tb_buf_append(&b, p, len) || tb_buf_append(&b, "\n", 1)) {
    tb_buf_free(&b);
    return perr(err, TB_PROTO_EINTERNAL, "out of memory");
  }
  size_t scan = 0, line_len = 0;
  int rc = tb_frame_next(b.data, b.len, &scan, len, &line_len);
  tb_buf_free(&b);
  if (rc == (int)len + 1 && line_len == len)
    return 0;
  if (rc > 0) /* a line ended early: a raw newline in the payload */
    return perr(err, TB_PROTO_EPARSE, "%s: a raw newline at byte %zu", what, line_len);
  return perr(err, TB_PROTO_EPARSE, "%s: not valid UTF-8 text without control bytes", what);
}

static bool valid_run(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n >= TB_PROTO_RUN_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!run_char(id[i]))
      return false;
  return true;
}

/* Matches literal word then sep at *p; advances. */
static bool eat(const char **p, const char *end, const char *word, char sep) {
  size_t n = strlen(word);
  if ((size_t)(end - *p) < n + 1 || memcmp(*p, word, n) != 0 || (*p)[n] != sep)
    return false;
  *p += n + 1;
  return true;
}

int tb__ctl_topic_parse(const char *topic, size_t len, char sep, const char *ns,
                        char run[TB_PROTO_RUN_MAX], char method[TB_PROTO_NAME_MAX],
                        tb_proto_err_t *err) {
  run[0] = method[0] = '\0';
  const char *p = topic, *end = topic + len;
  if (!eat(&p, end, "tb", sep) || !eat(&p, end, ns, sep) || !eat(&p, end, "run", sep))
    return perr(err, TB_PROTO_EINVALID_REQUEST, "subject: not under tb%c%s%crun%c", sep, ns, sep,
                sep);
  /* The run token, unescaping "%2E" on NATS. */
  size_t n = 0;
  while (p < end && *p != sep) {
    char c = *p;
    if (sep == '.' && c == '%' && end - p >= 3 && p[1] == '2' && (p[2] == 'E' || p[2] == 'e')) {
      c = '.';
      p += 3;
    } else {
      p++;
    }
    if (!run_char(c))
      return perr(err, TB_PROTO_EINVALID_REQUEST,
                  "subject: the run id may only hold A-Z a-z 0-9 . _ - : (got byte 0x%02x)",
                  (unsigned char)c);
    if (n + 1 >= TB_PROTO_RUN_MAX)
      return perr(err, TB_PROTO_EINVALID_REQUEST, "subject: the run id is longer than %d bytes",
                  TB_PROTO_RUN_MAX - 1);
    run[n++] = c;
  }
  run[n] = '\0';
  if (n == 0)
    return perr(err, TB_PROTO_EINVALID_REQUEST, "subject: no run id");
  if (p == end || !eat(&p, end, "", sep) || !eat(&p, end, "ctl", sep))
    return perr(err, TB_PROTO_EINVALID_REQUEST, "subject: expected ...%crun%c%s%cctl%cMETHOD", sep,
                sep, run, sep, sep);
  size_t m = (size_t)(end - p);
  if (m == 0 || m >= TB_PROTO_NAME_MAX)
    return perr(err, TB_PROTO_EINVALID_REQUEST, "subject: expected a method name after ctl%c", sep);
  for (size_t i = 0; i < m; i++)
    if (!((p[i] >= 'a' && p[i] <= 'z') || p[i] == '_'))
      return perr(err, TB_PROTO_EINVALID_REQUEST,
                  "subject: a method name is a-z and _ only (got byte 0x%02x)",
                  (unsigned char)p[i]);
  memcpy(method, p, m);
  method[m] = '\0';
  return 0;
}

/* ------------------------------------------------------------- control -- */

static bool ctl_method(tb_method_t m) {
  return m == TB_METHOD_SET_LR || m == TB_METHOD_STOP || m == TB_METHOD_PAUSE ||
         m == TB_METHOD_RESUME || m == TB_METHOD_CHECKPOINT || m == TB_METHOD_CANCEL;
}

static const char *json_type(const cJSON *v) {
  return cJSON_IsArray(v)    ? "an array"
         : cJSON_IsString(v) ? "a string"
         : cJSON_IsNumber(v) ? "a number"
         : cJSON_IsBool(v)   ? "a boolean"
         : cJSON_IsNull(v)   ? "null"
                             : "a value";
}

int tb__ctl_request(const char *method, const char *run, const char *payload, size_t len,
                    tb_req_t *out, tb_proto_err_t *err) {
  memset(out, 0, sizeof *out);
  tb_method_t m = tb_method_from_name(method);
  if (!ctl_method(m))
    return perr(err, TB_PROTO_EMETHOD_NOT_FOUND,
                "method \"%.47s\" cannot be called through the broker (set_lr, stop, pause, "
                "resume, checkpoint, cancel can)",
                method);
  if (len > TB__CTL_PAYLOAD_MAX)
    return perr(err, TB_PROTO_ETOO_LARGE, "payload: %zu bytes, at most %d", len,
                TB__CTL_PAYLOAD_MAX);
  /* Trim the whitespace JSON allows around a value. */
  while (len > 0 && (*payload == ' ' || *payload == '\t' || *payload == '\r' || *payload == '\n')) {
    payload++;
    len--;
  }
  while (len > 0 && (payload[len - 1] == ' ' || payload[len - 1] == '\t' ||
                     payload[len - 1] == '\r' || payload[len - 1] == '\n'))
    len--;
  bool names_run = false;
  bool empty = len == 0;
  int trc = empty ? 0 : check_text(payload, len, "payload", err);
  if (trc != 0)
    return trc;
  if (!empty) {
    const char *stop = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(payload, len, &stop, false);
    if (doc == NULL || stop != payload + len) {
      /* cJSON points stop at the error, or after a value followed by more. */
      size_t at =
          stop != NULL && stop >= payload && stop <= payload + len ? (size_t)(stop - payload) : 0;
      cJSON_Delete(doc);
      return perr(err, TB_PROTO_EPARSE,
                  "payload: invalid JSON at byte %zu (expected the params of %s as one object)", at,
                  method);
    }
    if (!cJSON_IsObject(doc)) {
      int rc =
          perr(err, TB_PROTO_EINVALID_PARAMS,
               "payload: expected an object (the params of %s), got %s", method, json_type(doc));
      cJSON_Delete(doc);
      return rc;
    }
    empty = doc->child == NULL;
    for (const cJSON *it = doc->child; it != NULL; it = it->next) {
      if (it->string == NULL || strcmp(it->string, "run") != 0)
        continue;
      names_run = true;
      if (cJSON_IsString(it) && strcmp(it->valuestring, run) != 0) {
        int rc =
            perr(err, TB_PROTO_EINVALID_PARAMS,
                 "params.run: \"%.63s\" is not the run of the subject (%s)", it->valuestring, run);
        cJSON_Delete(doc);
        return rc;
      }
    }
    cJSON_Delete(doc);
  }

  tb_buf_t line;
  tb_buf_init(&line);
  int rc = tb_buf_append(&line, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":", 33) ||
           tb_json_str(&line, method) || tb_buf_append(&line, ",\"params\":", 10);
  if (rc == 0 && names_run) {
    rc = tb_buf_append(&line, payload, len);
  } else if (rc == 0) {
    rc = tb_buf_append(&line, "{\"run\":", 7) || tb_json_str(&line, run);
    if (rc == 0 && !empty) {
      /* payload is one object: '{' then its members and '}'. */
      rc = tb_buf_append(&line, ",", 1) || tb_buf_append(&line, payload + 1, len - 1);
    } else if (rc == 0) {
      rc = tb_buf_append(&line, "}", 1);
    }
  }
  if (rc == 0)
    rc = tb_buf_append(&line, "}", 1);
  if (rc != 0) {
    tb_buf_free(&line);
    return perr(err, TB_PROTO_EINTERNAL, "out of memory");
  }
  rc = tb_req_decode(line.data, line.len, out, err);
  tb_buf_free(&line);
  if (rc == 0 && strcmp(out->run, run) != 0) /* cannot happen: checked above */
    rc = perr(err, TB_PROTO_EINVALID_PARAMS, "params.run: not the run of the subject (%s)", run);
  return rc;
}

int tb__reply_result(tb_buf_t *b, const cJSON *result) {
  size_t start = b->len;
  int rc =
      tb_buf_append(b, "{\"result\":", 10) || tb_json_value(b, result) || tb_buf_append(b, "}", 1);
  if (rc) {
    b->len = start;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

int tb__reply_error(tb_buf_t *b, int code, const char *name, const char *msg) {
  size_t start = b->len;
  int rc = tb_buf_append(b, "{\"error\":{\"code\":", 17) || tb_json_int(b, code) ||
           tb_buf_append(b, ",\"message\":", 11) || tb_json_str(b, msg ? msg : "") ||
           tb_buf_append(b, ",\"data\":{\"name\":", 16) || tb_json_str(b, name ? name : "") ||
           tb_buf_append(b, "}}}", 3);
  if (rc) {
    b->len = start;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

/* ------------------------------------------------------------ payloads -- */

/* Parses p as one JSON object (nothing before or after but whitespace). */
static cJSON *parse_object(const char *p, size_t len, const char *what, tb_proto_err_t *err) {
  if (len > TB_PROTO_MAX_LINE_CEIL) {
    perr(err, TB_PROTO_ETOO_LARGE, "%s: %zu bytes, at most %d", what, len, TB_PROTO_MAX_LINE_CEIL);
    return NULL;
  }
  if (check_text(p, len, what, err) != 0)
    return NULL;
  const char *stop = NULL;
  cJSON *doc = cJSON_ParseWithLengthOpts(p, len, &stop, false);
  if (doc != NULL && stop != NULL) {
    while (stop < p + len && (*stop == ' ' || *stop == '\t' || *stop == '\r' || *stop == '\n'))
      stop++;
  }
  if (doc == NULL || stop != p + len) {
    cJSON_Delete(doc);
    perr(err, TB_PROTO_EPARSE, "%s: not one JSON value", what);
    return NULL;
  }
  if (!cJSON_IsObject(doc)) {
    perr(err, TB_PROTO_EINVALID_PARAMS, "%s: expected an object, got %s", what, json_type(doc));
    cJSON_Delete(doc);
    return NULL;
  }
  return doc;
}

int tb__event_payload_decode(const char *p, size_t len, tb_smsg_t *m, tb_proto_err_t *err) {
  memset(m, 0, sizeof *m);
  if (len > TB_PROTO_MAX_LINE_DEFAULT)
    return perr(err, TB_PROTO_ETOO_LARGE, "event: %zu bytes, at most %d", len,
                TB_PROTO_MAX_LINE_DEFAULT);
  cJSON *doc = parse_object(p, len, "event", err);
  if (doc == NULL)
    return err ? err->code : TB_PROTO_EPARSE;
  /* The client decoder truncates long strings into its fixed fields; what a
   * follower keys on must be whole: the run id and the event name. */
  const cJSON *run = cJSON_GetObjectItemCaseSensitive(doc, "run");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(doc, "event");
  bool ok_run = cJSON_IsString(run) && valid_run(run->valuestring);
  bool ok_name = cJSON_IsString(name) && name->valuestring[0] != '\0' &&
                 strlen(name->valuestring) < TB_PROTO_NAME_MAX;
  for (const char *c = ok_name ? name->valuestring : ""; *c; c++)
    ok_name = ok_name && ((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_');
  cJSON_Delete(doc);
  if (!ok_run)
    return perr(err, TB_PROTO_EINVALID_PARAMS, "event.run: expected a run id");
  if (!ok_name)
    return perr(err, TB_PROTO_EINVALID_PARAMS,
                "event.event: expected a name of 1 to %d characters from a-z 0-9 _",
                TB_PROTO_NAME_MAX - 1);
  static const char pre[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":";
  tb_buf_t b;
  tb_buf_init(&b);
  if (tb_buf_append(&b, pre, sizeof pre - 1) || tb_buf_append(&b, p, len) ||
      tb_buf_append(&b, "}", 1)) {
    tb_buf_free(&b);
    return perr(err, TB_PROTO_EINTERNAL, "out of memory");
  }
  int rc = tb_smsg_decode(b.data, b.len, m, err);
  tb_buf_free(&b);
  if (rc == 0 && m->kind != TB_SMSG_EVENT) {
    tb_smsg_free(m);
    rc = perr(err, TB_PROTO_EINVALID_PARAMS, "event: not an event's params");
  } else if (rc == 0 && (m->event.seq < 1 || m->event.seq > TB_PROTO_INT_MAX)) {
    /* The client decoder is lenient here; seqs order everything a follower does. */
    int64_t seq = m->event.seq;
    tb_smsg_free(m);
    rc = perr(err, TB_PROTO_EINVALID_PARAMS, "event.seq: expected 1..2^53-1, got %lld",
              (long long)seq);
  }
  return rc;
}

int tb__event_stub(tb_buf_t *b, const tb_event_t *ev, size_t size) {
  size_t start = b->len;
  int rc = tb_buf_append(b, "{\"run\":", 7) || tb_json_str(b, ev->run) ||
           tb_buf_append(b, ",\"seq\":", 7) || tb_json_int(b, ev->seq) ||
           tb_buf_append(b, ",\"event\":", 9) || tb_json_str(b, ev->name);
  if (rc == 0 && ev->epoch >= 0)
    rc = tb_buf_append(b, ",\"epoch\":", 9) || tb_json_int(b, ev->epoch);
  if (rc == 0 && ev->batch >= 0)
    rc = tb_buf_append(b, ",\"batch\":", 9) || tb_json_int(b, ev->batch);
  if (rc == 0)
    rc = tb_buf_append(b, ",\"time\":", 8) || tb_json_num(b, (double)ev->time_us / 1e6) ||
         tb_buf_append(b, ",\"logs\":{},\"truncated\":true,\"size\":", 35) ||
         tb_json_int(b, (int64_t)size) || tb_buf_append(b, "}", 1);
  if (rc) {
    b->len = start;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

int tb__status_decode(const char *p, size_t len, tb_run_info_t *out, tb_proto_err_t *err) {
  memset(out, 0, sizeof *out);
  cJSON *doc = parse_object(p, len, "status", err);
  if (doc == NULL)
    return err ? err->code : TB_PROTO_EPARSE;
  int rc = tb_run_info_decode(doc, out, err);
  cJSON_Delete(doc);
  if (rc == 0 && !valid_run(out->id))
    rc = perr(err, TB_PROTO_EINVALID_PARAMS, "status.run: not a run id");
  return rc;
}

int tb__runs_decode(const char *p, size_t len, tb_run_info_t **runs, int *n, tb_proto_err_t *err) {
  *runs = NULL;
  *n = 0;
  cJSON *doc = parse_object(p, len, "runs", err);
  if (doc == NULL)
    return err ? err->code : TB_PROTO_EPARSE;
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(doc, "runs");
  int rc = 0;
  if (!cJSON_IsArray(arr)) {
    rc = perr(err, TB_PROTO_EINVALID_PARAMS, "runs: expected an array \"runs\"");
    goto out;
  }
  int count = cJSON_GetArraySize(arr);
  if (count > 0) {
    *runs = calloc((size_t)count, sizeof **runs);
    if (*runs == NULL) {
      rc = perr(err, TB_PROTO_EINTERNAL, "out of memory");
      goto out;
    }
  }
  const cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    if ((rc = tb_run_info_decode(it, &(*runs)[*n], err)) != 0 ||
        (!valid_run((*runs)[*n].id) &&
         (rc = perr(err, TB_PROTO_EINVALID_PARAMS, "runs[%d].run: not a run id", *n)) != 0)) {
      free(*runs);
      *runs = NULL;
      *n = 0;
      goto out;
    }
    (*n)++;
  }
out:
  cJSON_Delete(doc);
  return rc;
}

int tb__seq_parse(const char *s, size_t len, int64_t *out) {
  if (s == NULL || len == 0 || len > 16)
    return -1;
  int64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -1;
    v = v * 10 + (s[i] - '0');
  }
  if (v > TB_PROTO_INT_MAX)
    return -1;
  *out = v;
  return 0;
}
