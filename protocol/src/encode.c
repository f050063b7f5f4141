/* Encoders for everything the server sends: hello, events, dropped, bye,
 * responses and errors.
 *
 * The event encoder is the hot path (one call per training batch, the bytes
 * then shared by every subscriber), so it is written by hand into a flat
 * buffer: no tree, no allocation, each field's worst case checked once before
 * it is written and the bytes copied with memcpy. The other encoders run a few
 * times per connection and favour clarity: they go through tb_buf_t and the
 * tb_json_* writers, rolling the buffer back on failure so a caller never
 * sends half a message. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define LIT(d, s)                                                                                  \
  do {                                                                                             \
    memcpy((d), (s), sizeof(s) - 1);                                                               \
    (d) += sizeof(s) - 1;                                                                          \
  } while (0)

/* Worst-case bytes of an escaped string of n bytes, quotes included. */
#define ESC_MAX(n) (6 * (n) + 2)

/* Unix time in seconds with exactly six decimals, from microseconds: exact,
 * and cheaper than formatting a double. */
static size_t time_to(char *dst, int64_t us) {
  if (us < 0)
    return tb_json_num_to(dst, (double)us / 1e6);
  size_t n = tb__int_to(dst, us / 1000000);
  unsigned frac = (unsigned)(us % 1000000);
  dst[n++] = '.';
  memcpy(dst + n, tb__digits2 + 2 * (frac / 10000), 2);
  memcpy(dst + n + 2, tb__digits2 + 2 * (frac / 100 % 100), 2);
  memcpy(dst + n + 4, tb__digits2 + 2 * (frac % 100), 2);
  return n + 6;
}

static const char *log_name(const tb_event_t *ev, int i, size_t *len) {
  if (ev->log_names) {
    *len = strnlen(ev->log_names[i], TB_PROTO_LOG_NAME_MAX);
    return ev->log_names[i];
  }
  const char *s = ev->log_namev && ev->log_namev[i] ? ev->log_namev[i] : "";
  *len = strlen(s);
  return s;
}

static size_t slen(const char *s) {
  return s ? strlen(s) : 0;
}

size_t tb_msg_event_max(const tb_event_t *ev) {
  size_t n = 256; /* envelope, keys and integers */
  n += ESC_MAX(slen(ev->run)) + ESC_MAX(slen(ev->name)) + ESC_MAX(slen(ev->source)) + 12;
  for (int i = 0; i < ev->n_logs; i++) {
    size_t len;
    log_name(ev, i, &len);
    n += ESC_MAX(len) + 2 + TB_PROTO_NUM_MAX;
  }
  n += ESC_MAX(slen(ev->state)) + ESC_MAX(slen(ev->prev_state)) + ESC_MAX(slen(ev->action)) +
       ESC_MAX(slen(ev->by)) + ESC_MAX(slen(ev->reason)) + 2 * TB_PROTO_NUM_MAX + 96;
  for (int i = 0; ev->classes != NULL && i < ev->n_classes; i++)
    n += ESC_MAX(slen(ev->classes[i])) + 1;
  return n + 16;
}

/* Writes an optional string member ,"key":"value" if s is not NULL. */
#define OPT_STR(key, s)                                                                            \
  do {                                                                                             \
    if ((s) != NULL) {                                                                             \
      size_t l_ = strlen(s);                                                                       \
      if ((size_t)(end - d) < ESC_MAX(l_) + sizeof(key) + 4)                                       \
        return NULL;                                                                               \
      LIT(d, ",\"" key "\":");                                                                     \
      d += tb__json_esc(d, (s), l_);                                                               \
    }                                                                                              \
  } while (0)

/* The params object of an event into [d, end); returns the end of what was
 * written, or NULL if it did not fit. */
static char *event_params_to(char *d, char *end, const tb_event_t *ev) {
  const char *run = ev->run ? ev->run : "";
  const char *name = ev->name ? ev->name : "";
  size_t run_len = strlen(run), name_len = strlen(name);

  /* Fixed part: keys, run, seq, event, epoch, batch, time, "logs":{ */
  if ((size_t)(end - d) < ESC_MAX(run_len) + ESC_MAX(name_len) + 200)
    return NULL;
  LIT(d, "{\"run\":");
  d += tb__json_esc(d, run, run_len);
  LIT(d, ",\"seq\":");
  d += tb__int_to(d, ev->seq);
  LIT(d, ",\"event\":");
  d += tb__json_esc(d, name, name_len);
  OPT_STR("source", ev->source);
  if ((size_t)(end - d) < 160)
    return NULL;
  if (ev->epoch >= 0) {
    LIT(d, ",\"epoch\":");
    d += tb__int_to(d, ev->epoch);
  }
  if (ev->batch >= 0) {
    LIT(d, ",\"batch\":");
    d += tb__int_to(d, ev->batch);
  }
  LIT(d, ",\"time\":");
  d += time_to(d, ev->time_us);
  LIT(d, ",\"logs\":{");
  for (int i = 0; i < ev->n_logs; i++) {
    size_t len;
    const char *ln = log_name(ev, i, &len);
    if ((size_t)(end - d) < ESC_MAX(len) + 2 + TB_PROTO_NUM_MAX)
      return NULL;
    if (i)
      *d++ = ',';
    d += tb__json_esc(d, ln, len);
    *d++ = ':';
    d += tb_json_num_to(d, ev->log_values[i]);
  }
  if ((size_t)(end - d) < 2 + 16 + 2 * (TB_PROTO_NUM_MAX + 10))
    return NULL;
  *d++ = '}';
  if (ev->lockstep)
    LIT(d, ",\"lockstep\":true");
  if (ev->has_value) {
    LIT(d, ",\"value\":");
    d += tb_json_num_to(d, ev->value);
  }
  if (ev->has_old) {
    LIT(d, ",\"old\":");
    d += tb_json_num_to(d, ev->old_value);
  }
  OPT_STR("state", ev->state);
  OPT_STR("prev_state", ev->prev_state);
  OPT_STR("action", ev->action);
  OPT_STR("by", ev->by);
  OPT_STR("reason", ev->reason);
  if (ev->classes != NULL && ev->n_classes > 0) {
    if (end - d < 16)
      return NULL;
    LIT(d, ",\"classes\":[");
    for (int i = 0; i < ev->n_classes; i++) {
      size_t l = slen(ev->classes[i]);
      if ((size_t)(end - d) < ESC_MAX(l) + 2)
        return NULL;
      if (i)
        *d++ = ',';
      d += tb__json_esc(d, ev->classes[i] ? ev->classes[i] : "", l);
    }
    *d++ = ']';
  }
  if (end - d < 1)
    return NULL;
  *d++ = '}';
  return d;
}

static const char event_head[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":";

int tb_msg_event_to(char *dst, size_t cap, const tb_event_t *ev) {
  if (cap < sizeof event_head + 2)
    return TB_PROTO_ETOO_LARGE;
  char *d = dst, *end = dst + cap;
  LIT(d, event_head);
  d = event_params_to(d, end - 2, ev);
  if (d == NULL)
    return TB_PROTO_ETOO_LARGE;
  *d++ = '}';
  *d++ = '\n';
  return (int)(d - dst);
}

int tb_msg_event(tb_buf_t *b, const tb_event_t *ev) {
  size_t max = tb_msg_event_max(ev);
  if (tb_buf_reserve(b, max) != 0)
    return TB_PROTO_EINTERNAL;
  int n = tb_msg_event_to(b->data + b->len, max, ev);
  if (n < 0)
    return TB_PROTO_EINTERNAL; /* the bound is wrong: a bug, not the caller's fault */
  b->len += (size_t)n;
  return 0;
}

int tb_msg_event_params(tb_buf_t *b, const tb_event_t *ev) {
  size_t max = tb_msg_event_max(ev);
  if (tb_buf_reserve(b, max) != 0)
    return TB_PROTO_EINTERNAL;
  char *d = event_params_to(b->data + b->len, b->data + b->len + max, ev);
  if (d == NULL)
    return TB_PROTO_EINTERNAL;
  b->len = (size_t)(d - b->data);
  return 0;
}

/* ---- everything else: through tb_buf_t, rolled back on failure ---- */

#define APP(s) tb_buf_append(b, (s), sizeof(s) - 1)

/* Runs body (a chain of calls OR-ed into rc) and restores b->len on failure. */
#define TRY(expr)                                                                                  \
  do {                                                                                             \
    size_t len0_ = b->len;                                                                         \
    if ((expr) != 0) {                                                                             \
      b->len = len0_;                                                                              \
      return TB_PROTO_EINTERNAL;                                                                   \
    }                                                                                              \
    return 0;                                                                                      \
  } while (0)

static int json_id(tb_buf_t *b, const tb_id_t *id) {
  if (tb_buf_reserve(b, TB__ID_MAX_ENC) != 0)
    return TB_PROTO_EINTERNAL;
  b->len += tb__id_to(b->data + b->len, id);
  return 0;
}

int tb_msg_hello(tb_buf_t *b, const tb_hello_t *h) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"method\":\"hello\",\"params\":{\"protocol\":") ||
      tb_json_int(b, h->protocol) || APP(",\"server\":") || tb_json_str(b, h->server) ||
      APP(",\"auth_required\":") || (h->auth_required ? APP("true") : APP("false")) ||
      APP(",\"auth_timeout_ms\":") || tb_json_int(b, h->auth_timeout_ms) || APP(",\"max_line\":") ||
      tb_json_int(b, h->max_line) || APP("}}\n"));
}

int tb_msg_dropped(tb_buf_t *b, const char *run, int64_t count, int64_t from_seq, int64_t to_seq) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"method\":\"dropped\",\"params\":{\"run\":") ||
      tb_json_str(b, run) || APP(",\"count\":") || tb_json_int(b, count) || APP(",\"from_seq\":") ||
      tb_json_int(b, from_seq) || APP(",\"to_seq\":") || tb_json_int(b, to_seq) || APP("}}\n"));
}

int tb_msg_bye(tb_buf_t *b, const char *reason, const char *message) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"method\":\"bye\",\"params\":{\"reason\":") ||
      tb_json_str(b, reason) || APP(",\"message\":") || tb_json_str(b, message) || APP("}}\n"));
}

static int error_body(tb_buf_t *b, const tb_id_t *id, int code, const char *msg) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"id\":") || json_id(b, id) || APP(",\"error\":{\"code\":") ||
      tb_json_int(b, code) || APP(",\"message\":") || tb_json_str(b, msg) ||
      APP(",\"data\":{\"name\":") || tb_json_str(b, tb_proto_err_name(code)) || APP("}}}\n"));
}

int tb_msg_error(tb_buf_t *b, const tb_id_t *id, int code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return error_body(b, id, code, msg);
}

int tb_msg_error_from(tb_buf_t *b, const tb_id_t *id, const tb_proto_err_t *err) {
  int code = err && err->code ? err->code : TB_PROTO_EINTERNAL;
  const char *msg = err && err->msg[0] ? err->msg : tb_proto_strerror(code);
  return error_body(b, id, code, msg);
}

int tb_msg_result_begin(tb_buf_t *b, const tb_id_t *id) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"id\":") || json_id(b, id) || APP(",\"result\":"));
}

int tb_msg_result_end(tb_buf_t *b) {
  return APP("}\n");
}

int tb_msg_result(tb_buf_t *b, const tb_id_t *id, const cJSON *result) {
  size_t len0 = b->len;
  int rc = tb_msg_result_begin(b, id) || tb_json_value(b, result) || tb_msg_result_end(b);
  if (rc) {
    b->len = len0;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

int tb_msg_result_ok(tb_buf_t *b, const tb_id_t *id) {
  TRY(tb_msg_result_begin(b, id) || APP("{\"ok\":true}") || tb_msg_result_end(b));
}

int tb_msg_result_pong(tb_buf_t *b, const tb_id_t *id, int64_t time_us) {
  char t[TB_PROTO_NUM_MAX];
  size_t n = time_to(t, time_us);
  TRY(tb_msg_result_begin(b, id) || APP("{\"pong\":true,\"time\":") || tb_buf_append(b, t, n) ||
      APP("}") || tb_msg_result_end(b));
}

int tb_msg_result_auth(tb_buf_t *b, const tb_id_t *id, tb_role_t role) {
  TRY(tb_msg_result_begin(b, id) || APP("{\"role\":") || tb_json_str(b, tb_role_name(role)) ||
      APP(",\"protocol\":") || tb_json_int(b, TB_PROTO_VERSION) || APP("}") ||
      tb_msg_result_end(b));
}

int tb_msg_result_subscribe(tb_buf_t *b, const tb_id_t *id, int64_t sub, int64_t next_seq) {
  TRY(tb_msg_result_begin(b, id) || APP("{\"sub\":") || tb_json_int(b, sub) ||
      APP(",\"next_seq\":") || tb_json_int(b, next_seq) || APP("}") || tb_msg_result_end(b));
}

int tb_msg_result_submit(tb_buf_t *b, const tb_id_t *id, const char *run) {
  TRY(tb_msg_result_begin(b, id) || APP("{\"run\":") || tb_json_str(b, run) || APP("}") ||
      tb_msg_result_end(b));
}

int tb_json_run_info(tb_buf_t *b, const tb_run_info_t *r) {
  TRY(APP("{\"run\":") || tb_json_str(b, r->id) || APP(",\"state\":") ||
      tb_json_str(b, tb_run_state_name(r->state)) || APP(",\"epoch\":") ||
      tb_json_int(b, r->epoch) || APP(",\"epochs\":") || tb_json_int(b, r->epochs) ||
      APP(",\"batch\":") || tb_json_int(b, r->batch) || APP(",\"last_seq\":") ||
      tb_json_int(b, r->last_seq) || (r->has_lr ? APP(",\"lr\":") || tb_json_num(b, r->lr) : 0) ||
      (r->source[0] ? APP(",\"source\":") || tb_json_str(b, r->source) : 0) ||
      (r->name[0] ? APP(",\"name\":") || tb_json_str(b, r->name) : 0) || APP("}"));
}

int tb_msg_result_status(tb_buf_t *b, const tb_id_t *id, const tb_run_info_t *run) {
  TRY(tb_msg_result_begin(b, id) || tb_json_run_info(b, run) || tb_msg_result_end(b));
}

int tb_msg_result_runs(tb_buf_t *b, const tb_id_t *id, const tb_run_info_t *runs, int n_runs) {
  size_t len0 = b->len;
  int rc = tb_msg_result_begin(b, id) || APP("{\"runs\":[");
  for (int i = 0; i < n_runs && !rc; i++)
    rc = (i ? APP(",") : 0) || tb_json_run_info(b, &runs[i]);
  rc = rc || APP("]}") || tb_msg_result_end(b);
  if (rc) {
    b->len = len0;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

int tb_msg_result_history(tb_buf_t *b, const tb_id_t *id, const char *run, const tb_event_t *events,
                          int n_events, int64_t next_seq) {
  size_t len0 = b->len;
  int rc =
      tb_msg_result_begin(b, id) || APP("{\"run\":") || tb_json_str(b, run) || APP(",\"events\":[");
  for (int i = 0; i < n_events && !rc; i++)
    rc = (i ? APP(",") : 0) || tb_msg_event_params(b, &events[i]);
  rc = rc || APP("],\"next_seq\":") || tb_json_int(b, next_seq) || APP("}") || tb_msg_result_end(b);
  if (rc) {
    b->len = len0;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

/* ---- trainers (docs/PROTOCOL.md section 13) ---- */

int tb_msg_control(tb_buf_t *b, const char *run, int64_t id, const char *action, bool has_value,
                   double value, const char *by) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"method\":\"control\",\"params\":{\"run\":") ||
      tb_json_str(b, run) || APP(",\"id\":") || tb_json_int(b, id) || APP(",\"action\":") ||
      tb_json_str(b, action) || (has_value ? APP(",\"value\":") || tb_json_num(b, value) : 0) ||
      (by != NULL && by[0] ? APP(",\"by\":") || tb_json_str(b, by) : 0) || APP("}}\n"));
}

int tb_msg_continue(tb_buf_t *b, const char *run, int64_t seq, bool timed_out) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"method\":\"continue\",\"params\":{\"run\":") ||
      tb_json_str(b, run) || APP(",\"seq\":") || tb_json_int(b, seq) ||
      (timed_out ? APP(",\"timed_out\":true") : 0) || APP("}}\n"));
}

int tb_msg_lockstep(tb_buf_t *b, const char *run, uint32_t hooks, int64_t timeout_ms) {
  size_t len0 = b->len;
  int rc = APP("{\"jsonrpc\":\"2.0\",\"method\":\"lockstep\",\"params\":{\"run\":") ||
           tb_json_str(b, run) || APP(",\"hooks\":[");
  bool first = true;
  for (unsigned k = 1; k < 32 && !rc; k++) {
    if (!(hooks & (1u << k)) || tb_event_name((tb_event_kind_t)k)[0] == '\0')
      continue;
    rc = (first ? 0 : APP(",")) || tb_json_str(b, tb_event_name((tb_event_kind_t)k));
    first = false;
  }
  rc = rc || APP("],\"timeout_ms\":") || tb_json_int(b, timeout_ms) || APP("}}\n");
  if (rc) {
    b->len = len0;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

int tb_msg_rejected(tb_buf_t *b, const char *method, const char *run, int64_t seq, int64_t index,
                    int code, const char *message) {
  TRY(APP("{\"jsonrpc\":\"2.0\",\"method\":\"rejected\",\"params\":{\"method\":") ||
      tb_json_str(b, method) ||
      (run != NULL && run[0] ? APP(",\"run\":") || tb_json_str(b, run) : 0) ||
      (seq > 0 ? APP(",\"seq\":") || tb_json_int(b, seq) : 0) ||
      (index >= 0 ? APP(",\"index\":") || tb_json_int(b, index) : 0) || APP(",\"code\":") ||
      tb_json_int(b, code) || APP(",\"name\":") || tb_json_str(b, tb_proto_err_name(code)) ||
      APP(",\"message\":") || tb_json_str(b, message) || APP("}}\n"));
}

int tb_msg_publish_begin(tb_buf_t *b, const tb_id_t *id, const char *run) {
  bool has_id = id != NULL && id->kind != TB_ID_NONE;
  TRY(APP("{\"jsonrpc\":\"2.0\",") || (has_id ? APP("\"id\":") || json_id(b, id) || APP(",") : 0) ||
      APP("\"method\":\"publish\",\"params\":{\"run\":") || tb_json_str(b, run) ||
      APP(",\"events\":["));
}

int tb_msg_publish_end(tb_buf_t *b) {
  return APP("]}}\n");
}

/* One event object, written into a reserved flat buffer as the event encoder
 * does (a trainer publishes one per batch). */
int tb_pub_event_append(tb_buf_t *b, const tb_pub_event_t *e, const char *const *class_names,
                        bool first) {
  size_t max = 256 + (size_t)e->n_logs * (ESC_MAX(TB_PROTO_LOG_NAME_MAX) + 2 + TB_PROTO_NUM_MAX);
  for (int i = 0; class_names != NULL && i < e->n_classes; i++)
    max += ESC_MAX(slen(class_names[i])) + 1;
  if (tb_buf_reserve(b, max) != 0)
    return TB_PROTO_EINTERNAL;
  char *d = b->data + b->len;
  if (!first)
    *d++ = ',';
  const char *name = tb_event_name(e->kind);
  LIT(d, "{\"seq\":");
  d += tb__int_to(d, e->seq);
  LIT(d, ",\"event\":");
  d += tb__json_esc(d, name, strlen(name));
  if (e->epoch >= 0) {
    LIT(d, ",\"epoch\":");
    d += tb__int_to(d, e->epoch);
  }
  if (e->batch >= 0) {
    LIT(d, ",\"batch\":");
    d += tb__int_to(d, e->batch);
  }
  if (e->has_time) {
    LIT(d, ",\"time\":");
    d += time_to(d, e->time_us);
  }
  if (e->has_lr) {
    LIT(d, ",\"lr\":");
    d += tb_json_num_to(d, e->lr);
  }
  if (e->lockstep)
    LIT(d, ",\"lockstep\":true");
  if (e->dropped > 0) {
    LIT(d, ",\"dropped\":");
    d += tb__int_to(d, e->dropped);
  }
  LIT(d, ",\"logs\":{");
  for (int i = 0; i < e->n_logs; i++) {
    if (i)
      *d++ = ',';
    d += tb__json_esc(d, e->log_names[i], strnlen(e->log_names[i], TB_PROTO_LOG_NAME_MAX - 1));
    *d++ = ':';
    d += tb_json_num_to(d, e->log_values[i]);
  }
  *d++ = '}';
  if (class_names != NULL && e->n_classes > 0) {
    LIT(d, ",\"classes\":[");
    for (int i = 0; i < e->n_classes; i++) {
      if (i)
        *d++ = ',';
      d += tb__json_esc(d, class_names[i] ? class_names[i] : "", slen(class_names[i]));
    }
    *d++ = ']';
  }
  *d++ = '}';
  b->len = (size_t)(d - b->data);
  return 0;
}
