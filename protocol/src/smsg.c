/* Client side: decoding what a server sends (hello, responses, notifications).
 *
 * Lenient where the server may grow and strict where a wrong value would
 * mislead: unknown fields and unknown notification methods are ignored, so a
 * newer server can add them without breaking older clients; known fields must
 * have the right type, and logs must be numbers or one of the three strings
 * that stand for non-finite values. Strings are copied into fixed storage in
 * the message so a decoded event needs no allocation beyond cJSON's tree,
 * which is released before returning (a result keeps its subtree). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static int copy_str(const cJSON *obj, const char *key, bool required, char *dst, size_t cap,
                    const char *path, tb_proto_err_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  dst[0] = '\0';
  if (v == NULL || cJSON_IsNull(v)) {
    if (required)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: missing", path, key);
    return 0;
  }
  if (!cJSON_IsString(v))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: expected a string", path, key);
  /* Truncation keeps a prefix (only free text, messages, is ever long), cut
   * before a character rather than inside one: the text stays UTF-8, and
   * encoding it again gives it back as it is. */
  const char *s = v->valuestring;
  size_t len = strlen(s), n = len < cap ? len : cap - 1;
  if (n < len)
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
      n--;
  memcpy(dst, s, n);
  dst[n] = '\0';
  return 0;
}

static int read_int(const cJSON *obj, const char *key, bool required, int64_t dflt, int64_t *out,
                    const char *path, tb_proto_err_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  *out = dflt;
  if (v == NULL) {
    if (required)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: missing", path, key);
    return 0;
  }
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!(d >= -(double)TB_PROTO_INT_MAX && d <= (double)TB_PROTO_INT_MAX && d == floor(d)))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: expected an integer", path, key);
  *out = (int64_t)d;
  return 0;
}

/* A number, or "NaN" / "Infinity" / "-Infinity". */
static int read_num(const cJSON *v, double *out) {
  if (cJSON_IsNumber(v)) {
    *out = v->valuedouble;
    return 0;
  }
  if (cJSON_IsString(v)) {
    if (strcmp(v->valuestring, "NaN") == 0)
      *out = NAN;
    else if (strcmp(v->valuestring, "Infinity") == 0)
      *out = INFINITY;
    else if (strcmp(v->valuestring, "-Infinity") == 0)
      *out = -INFINITY;
    else
      return -1;
    return 0;
  }
  return -1;
}

static int decode_event(const cJSON *p, tb_smsg_t *m, tb_proto_err_t *err) {
  const char *path = "params";
  tb_event_t *ev = &m->event;
  int rc;
  if ((rc = copy_str(p, "run", true, m->ev_store.run, sizeof m->ev_store.run, path, err)) ||
      (rc = copy_str(p, "event", true, m->ev_store.name, sizeof m->ev_store.name, path, err)) ||
      (rc = read_int(p, "seq", true, 0, &ev->seq, path, err)) ||
      (rc = read_int(p, "epoch", false, -1, &ev->epoch, path, err)) ||
      (rc = read_int(p, "batch", false, -1, &ev->batch, path, err)) ||
      (rc = copy_str(p, "state", false, m->ev_store.state, sizeof m->ev_store.state, path, err)) ||
      (rc = copy_str(p, "prev_state", false, m->ev_store.prev_state, sizeof m->ev_store.prev_state,
                     path, err)) ||
      (rc = copy_str(p, "action", false, m->ev_store.action, sizeof m->ev_store.action, path,
                     err)) ||
      (rc = copy_str(p, "by", false, m->ev_store.by, sizeof m->ev_store.by, path, err)) ||
      (rc = copy_str(p, "reason", false, m->ev_store.reason, sizeof m->ev_store.reason, path,
                     err)) ||
      (rc = copy_str(p, "source", false, m->ev_store.source, sizeof m->ev_store.source, path, err)))
    return rc;
  ev->run = m->ev_store.run;
  ev->name = m->ev_store.name;
  ev->state = m->ev_store.state[0] ? m->ev_store.state : NULL;
  ev->prev_state = m->ev_store.prev_state[0] ? m->ev_store.prev_state : NULL;
  ev->action = m->ev_store.action[0] ? m->ev_store.action : NULL;
  ev->by = m->ev_store.by[0] ? m->ev_store.by : NULL;
  ev->reason = m->ev_store.reason[0] ? m->ev_store.reason : NULL;
  ev->source = m->ev_store.source[0] ? m->ev_store.source : NULL;

  const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, "time");
  double secs = 0;
  if (v != NULL && (!cJSON_IsNumber(v) || read_num(v, &secs) != 0))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.time: expected a number");
  /* Seconds with six decimals: rounding recovers the exact microseconds. The
   * bound (about 292,000 years) keeps the conversion defined. */
  if (!(fabs(secs) < 9.2e12))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.time: out of range");
  ev->time_us = (int64_t)llround(secs * 1e6);

  v = cJSON_GetObjectItemCaseSensitive(p, "lockstep");
  ev->lockstep = cJSON_IsTrue(v);
  if ((v = cJSON_GetObjectItemCaseSensitive(p, "value")) != NULL) {
    if (read_num(v, &ev->value) != 0)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.value: expected a number");
    ev->has_value = true;
  }
  if ((v = cJSON_GetObjectItemCaseSensitive(p, "old")) != NULL) {
    if (read_num(v, &ev->old_value) != 0)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.old: expected a number");
    ev->has_old = true;
  }

  const cJSON *logs = cJSON_GetObjectItemCaseSensitive(p, "logs");
  ev->log_names = m->ev_store.names;
  ev->log_values = m->ev_store.values;
  ev->n_logs = 0;
  if (logs == NULL)
    return 0;
  if (!cJSON_IsObject(logs))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.logs: expected an object");
  int n = 0;
  for (const cJSON *c = logs->child; c; c = c->next, n++) {
    if (n >= TB_PROTO_LOGS_MAX)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.logs: more than %d entries",
                      TB_PROTO_LOGS_MAX);
    size_t len = strlen(c->string);
    if (len >= TB_PROTO_LOG_NAME_MAX)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.logs: a name is longer than %d bytes",
                      TB_PROTO_LOG_NAME_MAX - 1);
    memcpy(m->ev_store.names[n], c->string, len + 1);
    if (read_num(c, &m->ev_store.values[n]) != 0) {
      char got[64];
      tb__describe(c, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "params.logs.%s: expected a number, \"NaN\", \"Infinity\" or "
                      "\"-Infinity\", got %s",
                      m->ev_store.names[n], got);
    }
  }
  ev->n_logs = n;
  return 0;
}

/* The notifications a trainer receives (docs/PROTOCOL.md section 13). */
static int decode_to_trainer(const cJSON *p, const char *method, tb_smsg_t *m,
                             tb_proto_err_t *err) {
  int rc;
  __typeof__(m->trainer) *t = &m->trainer;
  bool run_required = method[0] != 'r'; /* a rejected notice may have none */
  if ((rc = copy_str(p, "run", run_required, t->run, sizeof t->run, "params", err)))
    return rc;
  if (strcmp(method, "control") == 0) {
    m->kind = TB_SMSG_CONTROL;
    if ((rc = read_int(p, "id", true, 0, &t->id, "params", err)) ||
        (rc = copy_str(p, "action", true, t->action, sizeof t->action, "params", err)) ||
        (rc = copy_str(p, "by", false, t->by, sizeof t->by, "params", err)))
      return rc;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, "value");
    if (v != NULL) {
      if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.value: expected a number");
      t->has_value = true;
      t->value = v->valuedouble;
    }
    return 0;
  }
  if (strcmp(method, "continue") == 0) {
    m->kind = TB_SMSG_CONTINUE;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, "timed_out");
    if (v != NULL && !cJSON_IsBool(v))
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.timed_out: expected a boolean");
    t->timed_out = cJSON_IsTrue(v);
    return read_int(p, "seq", true, 0, &t->seq, "params", err);
  }
  if (strcmp(method, "lockstep") == 0) {
    m->kind = TB_SMSG_LOCKSTEP;
    const cJSON *hooks = cJSON_GetObjectItemCaseSensitive(p, "hooks");
    if (!cJSON_IsArray(hooks))
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.hooks: expected an array of names");
    for (const cJSON *c = hooks->child; c; c = c->next) {
      /* Names this version does not know are ignored, as unknown fields. */
      tb_event_kind_t k = cJSON_IsString(c) ? tb_event_from_name(c->valuestring) : TB_EVENT_INVALID;
      if (!cJSON_IsString(c))
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.hooks: expected strings");
      if (k != TB_EVENT_INVALID && (unsigned)k < 32)
        t->hooks |= 1u << k;
    }
    return read_int(p, "timeout_ms", false, TB_PROTO_LOCKSTEP_DEFAULT_MS, &t->timeout_ms, "params",
                    err);
  }
  m->kind = TB_SMSG_REJECTED;
  int64_t code;
  if ((rc = copy_str(p, "method", false, t->method, sizeof t->method, "params", err)) ||
      (rc = read_int(p, "seq", false, 0, &t->seq, "params", err)) ||
      (rc = read_int(p, "index", false, -1, &t->index, "params", err)) ||
      (rc = read_int(p, "code", true, 0, &code, "params", err)) ||
      (rc = copy_str(p, "message", false, t->message, sizeof t->message, "params", err)))
    return rc;
  t->code = code >= -2147483648LL && code <= 2147483647LL ? (int)code : TB_PROTO_EINTERNAL;
  return 0;
}

static int decode_notification(const cJSON *root, const char *method, tb_smsg_t *m,
                               tb_proto_err_t *err) {
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "params");
  if (!cJSON_IsObject(p))
    return tb__errf(err, TB_PROTO_EINVALID_REQUEST, "params: expected an object");
  int rc;
  if (strcmp(method, "event") == 0) {
    m->kind = TB_SMSG_EVENT;
    return decode_event(p, m, err);
  }
  if (strcmp(method, "hello") == 0) {
    m->kind = TB_SMSG_HELLO;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(p, "auth_required");
    if (a != NULL && !cJSON_IsBool(a))
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.auth_required: expected a boolean");
    m->hello.auth_required = cJSON_IsTrue(a);
    if ((rc = read_int(p, "protocol", true, 0, &m->hello.protocol, "params", err)) ||
        (rc = copy_str(p, "server", false, m->hello.server, sizeof m->hello.server, "params",
                       err)) ||
        (rc = read_int(p, "auth_timeout_ms", false, 0, &m->hello.auth_timeout_ms, "params", err)) ||
        (rc = read_int(p, "max_line", false, TB_PROTO_MAX_LINE_DEFAULT, &m->hello.max_line,
                       "params", err)))
      return rc;
    return 0;
  }
  if (strcmp(method, "dropped") == 0) {
    m->kind = TB_SMSG_DROPPED;
    if ((rc = copy_str(p, "run", true, m->dropped.run, sizeof m->dropped.run, "params", err)) ||
        (rc = read_int(p, "count", true, 0, &m->dropped.count, "params", err)) ||
        (rc = read_int(p, "from_seq", true, 0, &m->dropped.from_seq, "params", err)) ||
        (rc = read_int(p, "to_seq", true, 0, &m->dropped.to_seq, "params", err)))
      return rc;
    return 0;
  }
  if (strcmp(method, "bye") == 0) {
    m->kind = TB_SMSG_BYE;
    if ((rc = copy_str(p, "reason", true, m->bye.reason, sizeof m->bye.reason, "params", err)) ||
        (rc = copy_str(p, "message", false, m->bye.message, sizeof m->bye.message, "params", err)))
      return rc;
    return 0;
  }
  if (strcmp(method, "control") == 0 || strcmp(method, "continue") == 0 ||
      strcmp(method, "lockstep") == 0 || strcmp(method, "rejected") == 0)
    return decode_to_trainer(p, method, m, err);
  m->kind = TB_SMSG_UNKNOWN;
  snprintf(m->method, sizeof m->method, "%s", method);
  return 0;
}

static int decode_response(cJSON *root, tb_smsg_t *m, tb_proto_err_t *err) {
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
  if (cJSON_IsString(id)) {
    m->id.kind = TB_ID_STR;
    snprintf(m->id.str, sizeof m->id.str, "%s", id->valuestring);
  } else if (cJSON_IsNumber(id)) {
    /* Range-checked before the conversion, which is undefined out of range. */
    double d = id->valuedouble;
    if (!(d >= -(double)TB_PROTO_INT_MAX && d <= (double)TB_PROTO_INT_MAX && d == floor(d)))
      return tb__errf(err, TB_PROTO_EINVALID_REQUEST, "id: expected an integer within 2^53");
    m->id.kind = TB_ID_INT;
    m->id.num = (int64_t)d;
  } else if (id != NULL && !cJSON_IsNull(id)) {
    return tb__errf(err, TB_PROTO_EINVALID_REQUEST, "id: expected an integer, a string or null");
  }
  cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
  if (e != NULL) {
    m->kind = TB_SMSG_ERROR;
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
    if (!cJSON_IsObject(e) || !cJSON_IsNumber(code) || !cJSON_IsString(msg))
      return tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                      "error: expected an object with an integer code and a string message");
    double c = code->valuedouble;
    m->error.code = c >= -2147483648.0 && c <= 2147483647.0 ? (int)c : TB_PROTO_EINTERNAL;
    snprintf(m->error.message, sizeof m->error.message, "%s", msg->valuestring);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(e, "data");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(data, "name");
    if (cJSON_IsString(name))
      snprintf(m->error.name, sizeof m->error.name, "%s", name->valuestring);
    return 0;
  }
  cJSON *res = cJSON_GetObjectItemCaseSensitive(root, "result");
  if (res == NULL)
    return tb__errf(err, TB_PROTO_EINVALID_REQUEST, "a response needs a result or an error");
  m->kind = TB_SMSG_RESULT;
  m->result = cJSON_DetachItemViaPointer(root, res);
  return 0;
}

int tb_smsg_decode(const char *line, size_t len, tb_smsg_t *out, tb_proto_err_t *err) {
  tb_proto_err_t local;
  if (err == NULL)
    err = &local;
  memset(out, 0, sizeof *out);
  err->code = 0;
  err->msg[0] = '\0';
  cJSON *root = tb__json_parse(line, len, err);
  if (root == NULL)
    return err->code;
  int rc;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "jsonrpc");
  if (!cJSON_IsObject(root) || !cJSON_IsString(v) || strcmp(v->valuestring, "2.0") != 0) {
    rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST, "expected a JSON-RPC 2.0 object");
    goto done;
  }
  v = cJSON_GetObjectItemCaseSensitive(root, "method");
  if (v != NULL) {
    if (!cJSON_IsString(v)) {
      rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST, "method: expected a string");
      goto done;
    }
    rc = decode_notification(root, v->valuestring, out, err);
  } else {
    rc = decode_response(root, out, err);
  }
done:
  cJSON_Delete(root);
  if (rc) {
    cJSON_Delete(out->result);
    out->result = NULL;
  }
  return rc;
}

void tb_smsg_free(tb_smsg_t *m) {
  if (m == NULL)
    return;
  cJSON_Delete(m->result);
  memset(m, 0, sizeof *m);
}

int tb_run_info_decode(const cJSON *obj, tb_run_info_t *out, tb_proto_err_t *err) {
  char state[TB_PROTO_NAME_MAX];
  int rc;
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(obj))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "run: expected an object");
  if ((rc = copy_str(obj, "run", true, out->id, sizeof out->id, "run", err)) ||
      (rc = copy_str(obj, "state", true, state, sizeof state, "run", err)) ||
      (rc = read_int(obj, "epoch", false, -1, &out->epoch, "run", err)) ||
      (rc = read_int(obj, "epochs", false, 0, &out->epochs, "run", err)) ||
      (rc = read_int(obj, "batch", false, -1, &out->batch, "run", err)) ||
      (rc = read_int(obj, "last_seq", false, 0, &out->last_seq, "run", err)))
    return rc;
  if ((rc = copy_str(obj, "source", false, out->source, sizeof out->source, "run", err)) ||
      (rc = copy_str(obj, "name", false, out->name, sizeof out->name, "run", err)))
    return rc;
  out->state = tb_run_state_from_name(state);
  const cJSON *lr = cJSON_GetObjectItemCaseSensitive(obj, "lr");
  if (lr != NULL) {
    if (read_num(lr, &out->lr) != 0)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "run.lr: expected a number");
    out->has_lr = true;
  }
  return 0;
}
