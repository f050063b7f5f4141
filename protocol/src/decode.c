/* Server-side decoding: one request line into a typed tb_req_t.
 *
 * The line goes through tb__json_parse (strict JSON, limits, duplicates), then
 * the envelope is checked in the order that lets the server answer best: the
 * id first (so even a bad request gets a reply with its own id), then
 * jsonrpc, method and the envelope's members, then params by a small table of
 * allowed keys per method and one reader per field. Every failure message
 * starts with the path of the offending value and ends with what was found,
 * because a remote user cannot look at our code to see what we expected.
 *
 * Unknown fields are refused rather than ignored: a misspelt "lr" that is
 * silently dropped is worse than an error. Servers, in turn, may add fields to
 * what they send, and clients ignore what they do not know. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Characters of run ids (and, with '*', run patterns): safe in file names,
 * log lines and shells. */
static bool run_char(char c, bool pattern) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == ':' || (pattern && c == '*');
}

static bool event_char(char c) {
  return (c >= 'a' && c <= 'z') || c == '_' || c == '*';
}

/* Reads a string member. Absent: 0 with dst "" unless required. */
static int get_str(const cJSON *obj, const char *key, bool required, char *dst, size_t cap,
                   const char *need, tb_proto_err_t *err) {
  char got[64];
  dst[0] = '\0';
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) {
    if (required)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.%s: missing (%s)", key, need);
    return 0;
  }
  if (!cJSON_IsString(v)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.%s: expected a string, got %s", key,
                    got);
  }
  size_t n = strlen(v->valuestring);
  if (n >= cap)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.%s: longer than %zu bytes (got %zu bytes)", key, cap - 1, n);
  memcpy(dst, v->valuestring, n + 1);
  return 0;
}

/* Checks a run id or pattern already copied into s; path names it. */
static int check_run(const char *s, bool pattern, const char *path, tb_proto_err_t *err) {
  if (s[0] == '\0')
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s: expected a non-empty run id", path);
  for (const char *p = s; *p; p++)
    if (!run_char(*p, pattern))
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "%s: character '%c' not allowed in a run id%s (use A-Z a-z 0-9 . _ - :%s)",
                      path, (*p >= 0x20 && *p < 0x7f) ? *p : '?', pattern ? " pattern" : "",
                      pattern ? " *" : "");
  return 0;
}

static int get_run(const cJSON *params, bool required, char *dst, const char *method,
                   tb_proto_err_t *err) {
  char need[64];
  snprintf(need, sizeof need, "%s needs a run id", method);
  int rc = get_str(params, "run", required, dst, TB_PROTO_RUN_MAX, need, err);
  if (rc == 0 && cJSON_GetObjectItemCaseSensitive(params, "run") != NULL)
    rc = check_run(dst, false, "params.run", err);
  return rc;
}

/* Reads an integer member in [lo, hi]. Absent: 0 with *has false (or an error
 * if required). */
static int get_int(const cJSON *obj, const char *path, const char *key, int64_t lo, int64_t hi,
                   bool required, int64_t *out, bool *has, tb_proto_err_t *err) {
  char got[64];
  if (has)
    *has = false;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) {
    if (required)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: missing", path, key);
    return 0;
  }
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!(d >= (double)lo && d <= (double)hi && d == floor(d))) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "%s.%s: expected an integer from %lld to %lld, got %s", path, key,
                    (long long)lo, (long long)hi, got);
  }
  *out = (int64_t)d;
  if (has)
    *has = true;
  return 0;
}

static int get_bool(const cJSON *obj, const char *path, const char *key, bool *out,
                    tb_proto_err_t *err) {
  char got[64];
  *out = false;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL)
    return 0;
  if (!cJSON_IsBool(v)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: expected true or false, got %s", path,
                    key, got);
  }
  *out = cJSON_IsTrue(v);
  return 0;
}

/* The trainer keeps the rate as a float32, as Keras's variable: a rate
 * beyond float32's range would become infinite. */
#define FLOAT32_RANGE "%s.%s: expected a rate within float32's range (at most 3.4e38), got %s"

static int get_lr(const cJSON *obj, const char *path, bool required, double *out, bool *has,
                  tb_proto_err_t *err) {
  char got[64];
  *has = false;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "lr");
  if (v == NULL) {
    if (required)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "%s.lr: missing (expected a finite positive number)", path);
    return 0;
  }
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !(v->valuedouble > 0)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "%s.lr: expected a finite positive number, got %s", path, got);
  }
  if (isinf((float)v->valuedouble)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, FLOAT32_RANGE, path, "lr", got);
  }
  *out = v->valuedouble;
  *has = true;
  return 0;
}

/* Refuses members of obj not listed in allowed (NULL-terminated). */
static int check_keys(const cJSON *obj, const char *path, const char *const *allowed,
                      const char *what, tb_proto_err_t *err) {
  for (const cJSON *c = obj->child; c; c = c->next) {
    bool ok = false;
    for (const char *const *a = allowed; *a && !ok; a++)
      ok = strcmp(*a, c->string) == 0;
    if (ok)
      continue;
    char list[160] = "";
    size_t n = 0;
    for (const char *const *a = allowed; *a && n < sizeof list; a++)
      n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", a == allowed ? "" : ", ", *a);
    char key[48];
    snprintf(key, sizeof key, "%s", c->string);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: unknown field (%s takes %s)", path, key,
                    what, allowed[0] ? list : "no parameters");
  }
  return 0;
}

/* Reads an array of short strings, each checked by kind: 'r' run pattern, 'e'
 * event pattern, 'l' exact lockstep hook name (stored as kinds in kinds[]). */
static int get_list(const cJSON *params, const char *key, int kind, int max, char *dst,
                    size_t item_cap, tb_event_kind_t *kinds, int *n_out, tb_proto_err_t *err) {
  char got[64], path[64];
  *n_out = 0;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(params, key);
  if (v == NULL)
    return 0;
  if (!cJSON_IsArray(v)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.%s: expected an array of strings, got %s", key, got);
  }
  int n = cJSON_GetArraySize(v);
  if (n > max)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.%s: %d entries, at most %d accepted (use a '*' pattern)", key, n, max);
  int i = 0;
  for (const cJSON *c = v->child; c; c = c->next, i++) {
    snprintf(path, sizeof path, "params.%s[%d]", key, i);
    if (!cJSON_IsString(c)) {
      tb__describe(c, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s: expected a string, got %s", path, got);
    }
    const char *s = c->valuestring;
    size_t len = strlen(s);
    if (len >= item_cap)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s: longer than %zu bytes", path,
                      item_cap - 1);
    if (kind == 'r') {
      int rc = check_run(s, true, path, err);
      if (rc)
        return rc;
    } else if (kind == 'e') {
      if (len == 0)
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s: expected a non-empty event pattern",
                        path);
      for (const char *p = s; *p; p++)
        if (!event_char(*p))
          return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                          "%s: character '%c' not allowed in an event pattern (use a-z _ *)", path,
                          (*p >= 0x20 && *p < 0x7f) ? *p : '?');
    } else {
      tb_event_kind_t k = tb_event_from_name(s);
      if (k == TB_EVENT_INVALID || k == TB_EVENT_STATE || k == TB_EVENT_CONTROL) {
        tb__describe(c, got, sizeof got);
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                        "%s: expected a hook event name such as \"epoch_end\", got %s", path, got);
      }
      kinds[i] = k;
    }
    if (dst)
      memcpy(dst + (size_t)i * item_cap, s, len + 1);
  }
  *n_out = n;
  return 0;
}

static int decode_subscribe(const cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  int rc;
  bool has;
  if ((rc = get_list(p, "runs", 'r', TB_PROTO_SUB_RUNS_MAX, &r->subscribe.runs[0][0],
                     TB_PROTO_RUN_MAX, NULL, &r->subscribe.n_runs, err)))
    return rc;
  if ((rc = get_list(p, "events", 'e', TB_PROTO_SUB_EVENTS_MAX, &r->subscribe.events[0][0],
                     TB_PROTO_NAME_MAX, NULL, &r->subscribe.n_events, err)))
    return rc;
  if ((rc = get_list(p, "lockstep", 'l', TB_PROTO_SUB_EVENTS_MAX, NULL, TB_PROTO_NAME_MAX,
                     r->subscribe.lockstep, &r->subscribe.n_lockstep, err)))
    return rc;
  r->subscribe.every = 1;
  if ((rc = get_int(p, "params", "every", 1, TB_PROTO_EVERY_MAX, false, &r->subscribe.every, &has,
                    err)))
    return rc;
  if (!has)
    r->subscribe.every = 1;
  if ((rc = get_int(p, "params", "since_seq", 0, TB_PROTO_INT_MAX, false, &r->subscribe.since_seq,
                    &r->subscribe.has_since_seq, err)))
    return rc;
  if (r->subscribe.has_since_seq &&
      (r->subscribe.n_runs != 1 || strchr(r->subscribe.runs[0], '*') != NULL))
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.since_seq: needs exactly one run without '*' in params.runs "
                    "(sequence numbers are per run)");
  if ((rc = get_int(p, "params", "lockstep_timeout_ms", TB_PROTO_LOCKSTEP_MIN_MS,
                    TB_PROTO_LOCKSTEP_MAX_MS, false, &r->subscribe.lockstep_timeout_ms, &has, err)))
    return rc;
  if (!has)
    r->subscribe.lockstep_timeout_ms = TB_PROTO_LOCKSTEP_DEFAULT_MS;
  return 0;
}

static int decode_auth(const cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  char role[16], got[64];
  int rc;
  bool has;
  if ((rc = get_str(p, "token", false, r->auth.token, sizeof r->auth.token, "", err)))
    return rc;
  if ((rc = get_str(p, "client", false, r->auth.client, sizeof r->auth.client, "", err)))
    return rc;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(p, "role");
  if (v == NULL)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.role: missing (expected \"observer\", \"controller\" or \"trainer\")");
  if (!cJSON_IsString(v) || strlen(v->valuestring) >= sizeof role ||
      (strcmp(v->valuestring, "observer") != 0 && strcmp(v->valuestring, "controller") != 0 &&
       strcmp(v->valuestring, "trainer") != 0)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.role: expected \"observer\", \"controller\" or \"trainer\", got %s",
                    got);
  }
  r->auth.role = v->valuestring[0] == 'o'   ? TB_ROLE_OBSERVER
                 : v->valuestring[0] == 'c' ? TB_ROLE_CONTROLLER
                                            : TB_ROLE_TRAINER;
  if ((rc = get_int(p, "params", "protocol", 1, TB_PROTO_INT_MAX, false, &r->auth.protocol, &has,
                    err)))
    return rc;
  if (has && r->auth.protocol != TB_PROTO_VERSION)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.protocol: this server speaks protocol %d, got %lld", TB_PROTO_VERSION,
                    (long long)r->auth.protocol);
  return 0;
}

static int decode_continue(const cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  static const char *const akeys[] = {"set_lr", "stop", "pause", "checkpoint", NULL};
  char got[64];
  int rc;
  if ((rc = get_run(p, true, r->run, "continue", err)))
    return rc;
  if ((rc = get_int(p, "params", "seq", 1, TB_PROTO_INT_MAX, true, &r->cont.seq, NULL, err)))
    return rc;
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(p, "actions");
  if (a == NULL)
    return 0;
  if (!cJSON_IsObject(a)) {
    tb__describe(a, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.actions: expected an object, got %s",
                    got);
  }
  if ((rc = check_keys(a, "params.actions", akeys, "actions", err)))
    return rc;
  const cJSON *lr = cJSON_GetObjectItemCaseSensitive(a, "set_lr");
  if (lr != NULL) {
    if (!cJSON_IsNumber(lr) || !isfinite(lr->valuedouble) || !(lr->valuedouble > 0)) {
      tb__describe(lr, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "params.actions.set_lr: expected a finite positive number, got %s", got);
    }
    if (isinf((float)lr->valuedouble)) {
      tb__describe(lr, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, FLOAT32_RANGE, "params.actions", "set_lr",
                      got);
    }
    r->cont.has_lr = true;
    r->cont.lr = lr->valuedouble;
  }
  if ((rc = get_bool(a, "params.actions", "stop", &r->cont.stop, err)) ||
      (rc = get_bool(a, "params.actions", "pause", &r->cont.pause, err)) ||
      (rc = get_bool(a, "params.actions", "checkpoint", &r->cont.checkpoint, err)))
    return rc;
  return 0;
}

/* ---- trainers (docs/PROTOCOL.md section 13) ---- */

/* A string member at path.key of at most cap - 1 bytes into dst ("" when
 * absent and not required). */
static int get_text(const cJSON *obj, const char *path, const char *key, bool required, char *dst,
                    size_t cap, tb_proto_err_t *err) {
  char got[64];
  dst[0] = '\0';
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) {
    if (required)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: missing", path, key);
    return 0;
  }
  if (!cJSON_IsString(v)) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: expected a string, got %s", path, key,
                    got);
  }
  size_t n = strlen(v->valuestring);
  if (n >= cap)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: longer than %zu bytes (got %zu bytes)",
                    path, key, cap - 1, n);
  memcpy(dst, v->valuestring, n + 1);
  return 0;
}

/* A finite number member; *has false when absent. positive: > 0 too. */
static int get_finite(const cJSON *obj, const char *path, const char *key, bool positive,
                      double *out, bool *has, tb_proto_err_t *err) {
  char got[64];
  *has = false;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL)
    return 0;
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (positive && !(v->valuedouble > 0))) {
    tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.%s: expected a finite %snumber, got %s",
                    path, key, positive ? "positive " : "", got);
  }
  *out = v->valuedouble;
  *has = true;
  return 0;
}

/* A log value: a number, or one of the strings standing for non-finite values. */
static bool log_value(const cJSON *v, double *out) {
  if (cJSON_IsNumber(v)) {
    *out = v->valuedouble;
    return true;
  }
  if (!cJSON_IsString(v))
    return false;
  if (strcmp(v->valuestring, "NaN") == 0)
    *out = NAN;
  else if (strcmp(v->valuestring, "Infinity") == 0)
    *out = INFINITY;
  else if (strcmp(v->valuestring, "-Infinity") == 0)
    *out = -INFINITY;
  else
    return false;
  return true;
}

/* Positions are ints on the trainer's side (core's ctx). */
#define POS_MAX 2147483647LL

int tb_pub_event_read(const cJSON *item, int index, tb_pub_event_t *out, tb_proto_err_t *err) {
  static const char *const keys[] = {"seq", "event",    "epoch",   "batch",   "time", "logs",
                                     "lr",  "lockstep", "dropped", "classes", NULL};
  char path[48], got[64];
  int rc;
  bool has;
  out->seq = 0;
  out->kind = TB_EVENT_INVALID;
  out->epoch = out->batch = -1;
  out->has_time = out->has_lr = out->lockstep = false;
  out->time_us = 0;
  out->n_logs = 0;
  out->lr = 0;
  out->dropped = 0;
  out->n_classes = 0;
  out->classes = NULL;
  snprintf(path, sizeof path, "params.events[%d]", index);
  if (!cJSON_IsObject(item)) {
    tb__describe(item, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s: expected an event object, got %s", path,
                    got);
  }
  if ((rc = check_keys(item, path, keys, "an event", err)))
    return rc;
  if ((rc = get_int(item, path, "seq", 1, TB_PROTO_INT_MAX, true, &out->seq, NULL, err)))
    return rc;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, "event");
  tb_event_kind_t k = cJSON_IsString(v) ? tb_event_from_name(v->valuestring) : TB_EVENT_INVALID;
  if (k == TB_EVENT_INVALID || k == TB_EVENT_STATE || k == TB_EVENT_CONTROL) {
    if (v != NULL)
      tb__describe(v, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "%s.event: expected a hook event name such as \"train_batch_end\" (state and "
                    "control events are the daemon's), got %s",
                    path, v != NULL ? got : "nothing");
  }
  out->kind = k;
  if ((rc = get_int(item, path, "epoch", -1, POS_MAX, false, &out->epoch, &has, err)))
    return rc;
  if (!has)
    out->epoch = -1;
  if ((rc = get_int(item, path, "batch", -1, POS_MAX, false, &out->batch, &has, err)))
    return rc;
  if (!has)
    out->batch = -1;
  double t;
  if ((rc = get_finite(item, path, "time", false, &t, &out->has_time, err)))
    return rc;
  if (out->has_time) {
    /* The same bound as a client's decoder: about 292,000 years. */
    if (!(t >= 0 && t < 9.2e12))
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "%s.time: expected Unix seconds (0 to 9.2e12), got %.17g", path, t);
    out->time_us = (int64_t)llround(t * 1e6);
  }
  if ((rc = get_finite(item, path, "lr", true, &out->lr, &out->has_lr, err)))
    return rc;
  if ((rc = get_bool(item, path, "lockstep", &out->lockstep, err)))
    return rc;
  if ((rc = get_int(item, path, "dropped", 0, TB_PROTO_INT_MAX, false, &out->dropped, NULL, err)))
    return rc;
  const cJSON *logs = cJSON_GetObjectItemCaseSensitive(item, "logs");
  if (logs != NULL) {
    if (!cJSON_IsObject(logs)) {
      tb__describe(logs, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "%s.logs: expected an object, got %s", path,
                      got);
    }
    int n = cJSON_GetArraySize(logs);
    if (n > TB_PROTO_LOGS_MAX)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "%s.logs: %d entries, at most %d (the trainer's logs table)", path, n,
                      TB_PROTO_LOGS_MAX);
    int i = 0;
    for (const cJSON *c = logs->child; c; c = c->next, i++) {
      size_t len = strlen(c->string);
      if (len == 0 || len >= TB_PROTO_LOG_NAME_MAX)
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                        "%s.logs: a name of %zu bytes (names have 1 to %d bytes)", path, len,
                        TB_PROTO_LOG_NAME_MAX - 1);
      memcpy(out->log_names[i], c->string, len + 1);
      if (!log_value(c, &out->log_values[i])) {
        tb__describe(c, got, sizeof got);
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                        "%s.logs.%s: expected a number, \"NaN\", \"Infinity\" or \"-Infinity\", "
                        "got %s",
                        path, out->log_names[i], got);
      }
    }
    out->n_logs = i;
  }
  const cJSON *cl = cJSON_GetObjectItemCaseSensitive(item, "classes");
  if (cl != NULL) {
    if (k != TB_EVENT_TRAIN_BEGIN)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "%s.classes: only train_begin carries the class names", path);
    int n = cJSON_IsArray(cl) ? cJSON_GetArraySize(cl) : -1;
    if (n < 1 || n > TB_PROTO_CLASSES_MAX) {
      tb__describe(cl, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "%s.classes: expected an array of 1 to %d class names, got %s", path,
                      TB_PROTO_CLASSES_MAX, got);
    }
    int i = 0;
    for (const cJSON *c = cl->child; c; c = c->next, i++) {
      size_t len = cJSON_IsString(c) ? strlen(c->valuestring) : 0;
      if (len == 0 || len >= TB_PROTO_CLASS_NAME_MAX) {
        tb__describe(c, got, sizeof got);
        return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                        "%s.classes[%d]: expected a name of 1 to %d bytes, got %s", path, i,
                        TB_PROTO_CLASS_NAME_MAX - 1, got);
      }
    }
    out->n_classes = n;
    out->classes = cl;
  }
  return 0;
}

static int decode_attach(const cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  int rc;
  if ((rc = get_run(p, false, r->run, "attach", err)) ||
      (rc = get_text(p, "params", "name", false, r->attach.name, sizeof r->attach.name, err)) ||
      (rc = get_int(p, "params", "epochs", 0, POS_MAX, false, &r->attach.epochs, NULL, err)) ||
      (rc = get_int(p, "params", "steps", 0, POS_MAX, false, &r->attach.steps, NULL, err)) ||
      (rc = get_int(p, "params", "last_seq", 0, TB_PROTO_INT_MAX, false, &r->attach.last_seq,
                    &r->attach.has_last_seq, err)) ||
      (rc = get_lr(p, "params", false, &r->attach.lr, &r->attach.has_lr, err)) ||
      (rc = get_bool(p, "params", "checkpoints", &r->attach.checkpoints, err)))
    return rc;
  if (r->attach.has_last_seq && r->run[0] == '\0')
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.last_seq: needs params.run (the run to continue)");
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(p, "model");
  if (m != NULL) {
    char got[64];
    if (!cJSON_IsString(m)) {
      tb__describe(m, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.model: expected a string, got %s",
                      got);
    }
    size_t n = strlen(m->valuestring);
    if (n >= TB_PROTO_MODEL_MAX)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "params.model: longer than %d bytes (got %zu bytes)", TB_PROTO_MODEL_MAX - 1,
                      n);
    if ((r->attach.model = malloc(n + 1)) == NULL)
      return tb__errf(err, TB_PROTO_EINTERNAL, "params.model: out of memory");
    memcpy(r->attach.model, m->valuestring, n + 1);
  }
  return 0;
}

/* The events themselves are read one by one by the server
 * (tb_pub_event_read), which takes those before a bad one and says which it
 * refused: a trainer's stream has no answer per event to put an error in. */
static int decode_publish(cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  char got[64];
  int rc;
  if ((rc = get_run(p, true, r->run, "publish", err)))
    return rc;
  cJSON *evs = cJSON_GetObjectItemCaseSensitive(p, "events");
  int n = cJSON_IsArray(evs) ? cJSON_GetArraySize(evs) : -1;
  if (evs == NULL)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.events: missing (an array of events)");
  if (n < 1 || n > TB_PROTO_PUBLISH_MAX) {
    if (n > TB_PROTO_PUBLISH_MAX)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "params.events: %d events, at most %d in one message", n,
                      TB_PROTO_PUBLISH_MAX);
    tb__describe(evs, got, sizeof got);
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.events: expected an array of 1 to %d events, got %s",
                    TB_PROTO_PUBLISH_MAX, got);
  }
  r->publish.events = cJSON_DetachItemViaPointer(p, evs);
  r->publish.n_events = n;
  return 0;
}

static int decode_finish(const cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  int rc;
  char state[16];
  if ((rc = get_run(p, true, r->run, "finish", err)) ||
      (rc = get_text(p, "params", "state", false, state, sizeof state, err)) ||
      (rc = get_text(p, "params", "reason", false, r->finish.reason, sizeof r->finish.reason, err)))
    return rc;
  r->finish.state = state[0] ? tb_run_state_from_name(state) : TB_RUN_FINISHED;
  if (r->finish.state != TB_RUN_FINISHED && r->finish.state != TB_RUN_STOPPED &&
      r->finish.state != TB_RUN_FAILED)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.state: expected \"finished\", \"stopped\" or \"failed\", got \"%s\"",
                    state);
  return 0;
}

static int decode_applied(const cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  static const char *const actions[] = {"set_lr", "stop", "pause", "resume", "checkpoint", NULL};
  int rc;
  bool has;
  if ((rc = get_run(p, true, r->run, "applied", err)) ||
      (rc = get_int(p, "params", "id", 0, TB_PROTO_INT_MAX, false, &r->applied.id, NULL, err)) ||
      (rc =
           get_text(p, "params", "action", true, r->applied.action, sizeof r->applied.action, err)))
    return rc;
  bool known = false;
  for (const char *const *a = actions; *a && !known; a++)
    known = strcmp(*a, r->applied.action) == 0;
  if (!known)
    return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                    "params.action: expected set_lr, stop, pause, resume or checkpoint, got \"%s\"",
                    r->applied.action);
  if ((rc = get_int(p, "params", "epoch", -1, POS_MAX, false, &r->applied.epoch, &has, err)))
    return rc;
  if (!has)
    r->applied.epoch = -1;
  if ((rc = get_int(p, "params", "batch", -1, POS_MAX, false, &r->applied.batch, &has, err)))
    return rc;
  if (!has)
    r->applied.batch = -1;
  if ((rc = get_finite(p, "params", "value", false, &r->applied.value, &r->applied.has_value,
                       err)) ||
      (rc = get_finite(p, "params", "old", false, &r->applied.old, &r->applied.has_old, err)) ||
      (rc = get_text(p, "params", "path", false, r->applied.path, sizeof r->applied.path, err)) ||
      (rc = get_text(p, "params", "by", false, r->applied.by, sizeof r->applied.by, err)) ||
      (rc = get_text(p, "params", "error", false, r->applied.error, sizeof r->applied.error, err)))
    return rc;
  return 0;
}

/* Allowed params keys per method, indexed by tb_method_t. */
static const char *const *allowed_keys(tb_method_t m) {
  static const char *const none[] = {NULL};
  static const char *const auth[] = {"token", "role", "client", "protocol", NULL};
  static const char *const sub[] = {
      "runs", "events", "every", "since_seq", "lockstep", "lockstep_timeout_ms", NULL};
  static const char *const unsub[] = {"sub", NULL};
  static const char *const run[] = {"run", NULL};
  static const char *const hist[] = {"run", "since_seq", "limit", NULL};
  static const char *const lr[] = {"run", "lr", NULL};
  static const char *const stop[] = {"run", "reason", NULL};
  static const char *const submit[] = {"job", NULL};
  static const char *const cont[] = {"run", "seq", "actions", NULL};
  static const char *const attach[] = {"run",      "name", "epochs",      "steps", "model",
                                       "last_seq", "lr",   "checkpoints", NULL};
  static const char *const publish[] = {"run", "events", NULL};
  static const char *const finish[] = {"run", "state", "reason", NULL};
  static const char *const applied[] = {"run", "id",   "action", "epoch", "batch", "value",
                                        "old", "path", "by",     "error", NULL};
  switch (m) {
  case TB_METHOD_AUTH:
    return auth;
  case TB_METHOD_SUBSCRIBE:
    return sub;
  case TB_METHOD_UNSUBSCRIBE:
    return unsub;
  case TB_METHOD_STATUS:
  case TB_METHOD_PAUSE:
  case TB_METHOD_RESUME:
  case TB_METHOD_CHECKPOINT:
    return run;
  case TB_METHOD_HISTORY:
    return hist;
  case TB_METHOD_SET_LR:
    return lr;
  case TB_METHOD_STOP:
  case TB_METHOD_CANCEL:
    return stop;
  case TB_METHOD_SUBMIT:
    return submit;
  case TB_METHOD_CONTINUE:
    return cont;
  case TB_METHOD_ATTACH:
    return attach;
  case TB_METHOD_PUBLISH:
    return publish;
  case TB_METHOD_APPLIED:
    return applied;
  case TB_METHOD_FINISH:
    return finish;
  default:
    return none;
  }
}

static int decode_params(cJSON *p, tb_req_t *r, tb_proto_err_t *err) {
  const char *name = tb_method_name(r->method);
  int rc;
  bool has;
  if ((rc = check_keys(p, "params", allowed_keys(r->method), name, err)))
    return rc;
  switch (r->method) {
  case TB_METHOD_AUTH:
    return decode_auth(p, r, err);
  case TB_METHOD_PING:
  case TB_METHOD_RUNS:
    return 0;
  case TB_METHOD_SUBSCRIBE:
    return decode_subscribe(p, r, err);
  case TB_METHOD_UNSUBSCRIBE:
    return get_int(p, "params", "sub", 1, TB_PROTO_INT_MAX, false, &r->unsubscribe.sub,
                   &r->unsubscribe.has_sub, err);
  case TB_METHOD_STATUS:
    return get_run(p, false, r->run, name, err);
  case TB_METHOD_HISTORY:
    if ((rc = get_run(p, true, r->run, name, err)))
      return rc;
    if ((rc = get_int(p, "params", "since_seq", 0, TB_PROTO_INT_MAX, false, &r->history.since_seq,
                      NULL, err)))
      return rc;
    r->history.limit = 1000;
    if ((rc = get_int(p, "params", "limit", 1, TB_PROTO_HISTORY_MAX, false, &r->history.limit, &has,
                      err)))
      return rc;
    if (!has)
      r->history.limit = 1000;
    return 0;
  case TB_METHOD_SET_LR:
    if ((rc = get_run(p, true, r->run, name, err)))
      return rc;
    return get_lr(p, "params", true, &r->set_lr.lr, &has, err);
  case TB_METHOD_STOP:
  case TB_METHOD_CANCEL:
    if ((rc = get_run(p, true, r->run, name, err)))
      return rc;
    return get_str(p, "reason", false, r->stop.reason, sizeof r->stop.reason, "", err);
  case TB_METHOD_PAUSE:
  case TB_METHOD_RESUME:
  case TB_METHOD_CHECKPOINT:
    return get_run(p, true, r->run, name, err);
  case TB_METHOD_SUBMIT: {
    char got[64];
    cJSON *job = cJSON_GetObjectItemCaseSensitive(p, "job");
    if (job == NULL)
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                      "params.job: missing (expected the job description as an object)");
    if (!cJSON_IsObject(job)) {
      tb__describe(job, got, sizeof got);
      return tb__errf(err, TB_PROTO_EINVALID_PARAMS, "params.job: expected an object, got %s", got);
    }
    r->submit.job = cJSON_DetachItemViaPointer(p, job);
    return 0;
  }
  case TB_METHOD_CONTINUE:
    return decode_continue(p, r, err);
  case TB_METHOD_ATTACH:
    return decode_attach(p, r, err);
  case TB_METHOD_PUBLISH:
    return decode_publish(p, r, err);
  case TB_METHOD_APPLIED:
    return decode_applied(p, r, err);
  case TB_METHOD_FINISH:
    return decode_finish(p, r, err);
  default:
    return tb__errf(err, TB_PROTO_EINTERNAL, "method without a decoder");
  }
}

/* Reads the id; 0 with kind NONE when absent. */
static int decode_id(const cJSON *v, tb_id_t *id, tb_proto_err_t *err) {
  char got[64];
  if (v == NULL)
    return 0;
  if (cJSON_IsNull(v))
    return tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                    "id: null is not accepted; use an integer or a string");
  if (cJSON_IsString(v)) {
    size_t n = strlen(v->valuestring);
    if (n >= TB_PROTO_ID_MAX)
      return tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                      "id: string ids may have at most %d bytes, got %zu", TB_PROTO_ID_MAX - 1, n);
    memcpy(id->str, v->valuestring, n + 1);
    id->kind = TB_ID_STR;
    return 0;
  }
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (d >= -(double)TB_PROTO_INT_MAX && d <= (double)TB_PROTO_INT_MAX && d == floor(d)) {
    id->num = (int64_t)d;
    id->kind = TB_ID_INT;
    return 0;
  }
  tb__describe(v, got, sizeof got);
  return tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                  "id: expected an integer (|id| <= 2^53 - 1) or a string, got %s", got);
}

int tb_req_decode(const char *line, size_t len, tb_req_t *out, tb_proto_err_t *err) {
  static const char *const envelope[] = {"jsonrpc", "id", "method", "params", NULL};
  char got[64];
  tb_proto_err_t local;
  int rc;
  if (err == NULL)
    err = &local;
  memset(out, 0, sizeof *out);
  err->code = 0;
  err->msg[0] = '\0';

  cJSON *root = tb__json_parse(line, len, err);
  if (root == NULL) {
    /* Valid JSON that breaks a rule (a duplicate key, a number beyond a
     * double): the answer still carries the request's id, read leniently. */
    if (err->code != TB_PROTO_EPARSE) {
      tb_proto_err_t ignored;
      cJSON *loose = cJSON_ParseWithLength(line, len);
      int n_ids = 0;
      for (const cJSON *it = cJSON_IsObject(loose) ? loose->child : NULL; it; it = it->next)
        n_ids += it->string != NULL && strcmp(it->string, "id") == 0;
      if (n_ids == 1) /* two ids: no telling which the client meant */
        decode_id(cJSON_GetObjectItemCaseSensitive(loose, "id"), &out->id, &ignored);
      cJSON_Delete(loose);
    }
    return err->code;
  }
  if (cJSON_IsArray(root)) {
    rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                  "batch requests are not supported: send one request object per line");
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    tb__describe(root, got, sizeof got);
    rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST, "expected a request object, got %s", got);
    goto fail;
  }
  if ((rc = decode_id(cJSON_GetObjectItemCaseSensitive(root, "id"), &out->id, err)))
    goto fail;

  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "jsonrpc");
  if (!cJSON_IsString(v) || strcmp(v->valuestring, "2.0") != 0) {
    if (v)
      tb__describe(v, got, sizeof got);
    rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST, "jsonrpc: expected \"2.0\", got %s",
                  v ? got : "nothing");
    goto fail;
  }
  v = cJSON_GetObjectItemCaseSensitive(root, "method");
  if (!cJSON_IsString(v)) {
    if (v)
      tb__describe(v, got, sizeof got);
    rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST, "method: expected a method name, got %s",
                  v ? got : "nothing");
    goto fail;
  }
  out->method = tb_method_from_name(v->valuestring);
  if (out->method == TB_METHOD_INVALID) {
    tb__describe(v, got, sizeof got);
    rc = tb__errf(err, TB_PROTO_EMETHOD_NOT_FOUND, "method %s not found", got);
    goto fail;
  }
  /* A trainer's stream (publish, applied) may be notifications: no answer
   * per message. Every other request needs an id. */
  if (out->id.kind == TB_ID_NONE && out->method != TB_METHOD_PUBLISH &&
      out->method != TB_METHOD_APPLIED) {
    rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                  "id: missing; every request needs an id (only a trainer's publish and applied "
                  "may be notifications)");
    goto fail;
  }
  for (const cJSON *c = root->child; c; c = c->next) {
    bool ok = false;
    for (const char *const *a = envelope; *a && !ok; a++)
      ok = strcmp(*a, c->string) == 0;
    if (!ok) {
      snprintf(got, sizeof got, "%s", c->string);
      rc = tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                    "%s: unknown member (a request has jsonrpc, id, method, params)", got);
      goto fail;
    }
  }
  cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "params");
  cJSON empty;
  memset(&empty, 0, sizeof empty);
  empty.type = cJSON_Object;
  if (params == NULL) {
    params = &empty;
  } else if (!cJSON_IsObject(params)) {
    tb__describe(params, got, sizeof got);
    rc = tb__errf(err, TB_PROTO_EINVALID_PARAMS,
                  "params: expected an object (parameters are passed by name), got %s", got);
    goto fail;
  }
  if ((rc = decode_params(params, out, err)))
    goto fail;
  cJSON_Delete(root);
  return 0;

fail:
  cJSON_Delete(root);
  /* Keep the id and method for the reply; drop anything half-decoded. */
  cJSON_Delete(out->submit.job);
  out->submit.job = NULL;
  cJSON_Delete(out->publish.events);
  out->publish.events = NULL;
  out->publish.n_events = 0;
  free(out->attach.model);
  out->attach.model = NULL;
  return rc;
}

void tb_req_free(tb_req_t *r) {
  if (r == NULL)
    return;
  cJSON_Delete(r->submit.job);
  cJSON_Delete(r->publish.events);
  free(r->attach.model);
  memset(r, 0, sizeof *r);
}

int tb_req_authorize(const tb_req_t *r, tb_role_t role, tb_proto_err_t *err) {
  tb_role_t need = tb_method_role(r->method);
  if (r->method == TB_METHOD_SUBSCRIBE && r->subscribe.n_lockstep > 0)
    need = TB_ROLE_CONTROLLER;
  if (tb_role_may(role, need))
    return 0;
  if (role == TB_ROLE_NONE)
    return tb__errf(err, TB_PROTO_EUNAUTHORIZED,
                    "%s: authenticate first (send auth with a token and a role)",
                    tb_method_name(r->method));
  return tb__errf(err, TB_PROTO_EFORBIDDEN, "%s%s: needs the %s role, this connection is %s",
                  tb_method_name(r->method),
                  r->method == TB_METHOD_SUBSCRIBE ? " with lockstep" : "", tb_role_name(need),
                  tb_role_name(role));
}
