/* Invariants checked on arbitrary input; see fuzz_body.h. Written so a
 * finding names the broken property, not just "crash". */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_body.h"
#include "trainbus/proto_limits.h"
#include "trainbus/protocol.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct {
  int rc;
  size_t line_len;
} frame_res_t;

/* Frames everything in data with the given chunk size (0 = all at once),
 * recording up to cap results; returns how many. */
static int frame_all(const char *data, size_t size, size_t chunk, size_t max_line, frame_res_t *out,
                     int cap) {
  size_t start = 0, avail = chunk ? 0 : size, from = 0;
  int n = 0;
  for (;;) {
    if (chunk) {
      avail += chunk;
      if (avail > size)
        avail = size;
    }
    int rc;
    size_t line_len = 0;
    for (;;) {
      size_t from0 = from;
      rc = tb_frame_next(data + start, avail - start, &from, max_line, &line_len);
      if (rc == TB_PROTO_NEED_MORE) {
        CHECK(from >= from0 && from <= avail - start);
        break;
      }
      if (rc < 0)
        break;
      CHECK((size_t)rc <= avail - start && line_len < (size_t)rc && line_len <= max_line);
      CHECK(data[start + (size_t)rc - 1] == '\n');
      CHECK(memchr(data + start, '\n', line_len) == NULL);
      CHECK(from == 0);
      if (n < cap)
        out[n++] = (frame_res_t){rc, line_len};
      start += (size_t)rc;
    }
    if (rc != TB_PROTO_NEED_MORE) {
      if (n < cap)
        out[n++] = (frame_res_t){rc, 0};
      return n;
    }
    if (avail == size) {
      if (n < cap)
        out[n++] = (frame_res_t){TB_PROTO_NEED_MORE, 0};
      return n;
    }
  }
}

void tb_fuzz_frame(const uint8_t *data, size_t size) {
  if (size < 2)
    return;
  size_t max_line = 1 + (data[0] % 64) * 4; /* small limits reach the edge cases */
  size_t chunk = 1 + data[1] % 7;
  const char *s = (const char *)data + 2;
  size = size - 2;
  frame_res_t a[256], b[256];
  int na = frame_all(s, size, 0, max_line, a, 256);
  int nb = frame_all(s, size, chunk, max_line, b, 256);
  CHECK(na == nb);
  for (int i = 0; i < na; i++)
    CHECK(a[i].rc == b[i].rc && a[i].line_len == b[i].line_len);
}

/* The same double, NaN for NaN (a log value may be any). */
static bool same_num(double a, double b) {
  if (isnan(a) || isnan(b))
    return isnan(a) && isnan(b);
  return a == b && signbit(a) == signbit(b);
}

/* Two reads of a trainer's event say the same. */
static void check_same_event(const tb_pub_event_t *a, const tb_pub_event_t *b) {
  CHECK(a->seq == b->seq && a->kind == b->kind && a->epoch == b->epoch && a->batch == b->batch);
  CHECK(a->has_time == b->has_time && a->has_lr == b->has_lr && a->lockstep == b->lockstep);
  /* Times are written with 6 decimals: exact while a double holds the
   * microseconds (any time of this millennium). */
  if (a->has_time && a->time_us < 2000000000000000LL)
    CHECK(a->time_us == b->time_us);
  CHECK(!a->has_lr || a->lr == b->lr);
  CHECK(a->dropped == b->dropped && a->n_logs == b->n_logs && a->n_classes == b->n_classes);
  for (int i = 0; i < a->n_logs; i++) {
    CHECK(strcmp(a->log_names[i], b->log_names[i]) == 0);
    CHECK(same_num(a->log_values[i], b->log_values[i]));
  }
  const cJSON *x = a->classes ? a->classes->child : NULL,
              *y = b->classes ? b->classes->child : NULL;
  for (; x != NULL && y != NULL; x = x->next, y = y->next)
    CHECK(strcmp(x->valuestring, y->valuestring) == 0);
  CHECK(x == NULL && y == NULL);
}

/* A publish request's events, read as the server reads them (each one, up
 * to the first refused): every error names its place; an event read writes
 * back, through the client's encoder, into a publish line that decodes and
 * reads to the same event. */
static void check_publish(const tb_req_t *r) {
  int i = 0;
  for (const cJSON *it = r->publish.events->child; it != NULL; it = it->next, i++) {
    tb_pub_event_t *e = calloc(2, sizeof(*e));
    CHECK(e != NULL);
    tb_proto_err_t perr;
    int rc = tb_pub_event_read(it, i, e, &perr);
    CHECK(rc == 0 || (rc == TB_PROTO_EINVALID_PARAMS && perr.code == rc &&
                      strncmp(perr.msg, "params.events[", 14) == 0));
    if (rc != 0) {
      free(e);
      return;
    }
    const char **names = NULL;
    if (e->n_classes > 0) {
      names = calloc((size_t)e->n_classes, sizeof(*names));
      CHECK(names != NULL);
      int k = 0;
      for (const cJSON *c = e->classes->child; c != NULL; c = c->next)
        names[k++] = c->valuestring;
    }
    tb_buf_t b = {0};
    tb_id_t id = {0};
    CHECK(tb_msg_publish_begin(&b, &id, r->run) == 0);
    CHECK(tb_pub_event_append(&b, e, names, true) == 0);
    CHECK(tb_msg_publish_end(&b) == 0);
    size_t from = 0, line_len;
    CHECK(tb_frame_next(b.data, b.len, &from, 1 << 24, &line_len) == (int)b.len);
    tb_req_t again;
    tb_proto_err_t err2;
    rc = tb_req_decode(b.data, line_len, &again, &err2);
    if (rc != 0)
      fprintf(stderr, "publish re-decode failed: %s\n%.*s", err2.msg, (int)b.len, b.data);
    CHECK(rc == 0 && again.method == TB_METHOD_PUBLISH && again.id.kind == TB_ID_NONE);
    CHECK(again.publish.n_events == 1 && strcmp(again.run, r->run) == 0);
    rc = tb_pub_event_read(again.publish.events->child, 0, &e[1], &err2);
    if (rc != 0)
      fprintf(stderr, "publish re-read failed: %s\n%.*s", err2.msg, (int)b.len, b.data);
    CHECK(rc == 0);
    check_same_event(&e[0], &e[1]);
    tb_req_free(&again);
    tb_buf_free(&b);
    free(names);
    free(e);
  }
}

/* The trainer's other requests keep every field through encode and decode. */
static void check_trainer_fields(const tb_req_t *r, const tb_req_t *q) {
  switch (r->method) {
  case TB_METHOD_ATTACH:
    CHECK(strcmp(r->attach.name, q->attach.name) == 0 && r->attach.epochs == q->attach.epochs &&
          r->attach.steps == q->attach.steps && r->attach.checkpoints == q->attach.checkpoints);
    CHECK(r->attach.has_last_seq == q->attach.has_last_seq &&
          r->attach.last_seq == q->attach.last_seq);
    CHECK(r->attach.has_lr == q->attach.has_lr &&
          (!r->attach.has_lr || r->attach.lr == q->attach.lr));
    CHECK((r->attach.model == NULL) == (q->attach.model == NULL));
    CHECK(r->attach.model == NULL || strcmp(r->attach.model, q->attach.model) == 0);
    break;
  case TB_METHOD_APPLIED:
    CHECK(r->applied.id == q->applied.id && strcmp(r->applied.action, q->applied.action) == 0);
    CHECK(r->applied.epoch == q->applied.epoch && r->applied.batch == q->applied.batch);
    CHECK(r->applied.has_value == q->applied.has_value &&
          (!r->applied.has_value || r->applied.value == q->applied.value));
    CHECK(r->applied.has_old == q->applied.has_old &&
          (!r->applied.has_old || r->applied.old == q->applied.old));
    CHECK(strcmp(r->applied.path, q->applied.path) == 0 &&
          strcmp(r->applied.by, q->applied.by) == 0 &&
          strcmp(r->applied.error, q->applied.error) == 0);
    break;
  case TB_METHOD_FINISH:
    CHECK(r->finish.state == q->finish.state && strcmp(r->finish.reason, q->finish.reason) == 0);
    break;
  default:
    break;
  }
}

/* A notification to a trainer the client decoded re-encodes, with the
 * server's encoder, into one that decodes to the same message. */
static void check_to_trainer(const tb_smsg_t *m) {
  const __typeof__(m->trainer) *t = &m->trainer;
  tb_buf_t b = {0};
  switch (m->kind) {
  case TB_SMSG_CONTROL:
    CHECK(tb_msg_control(&b, t->run, t->id, t->action, t->has_value, t->value, t->by) == 0);
    break;
  case TB_SMSG_CONTINUE:
    CHECK(tb_msg_continue(&b, t->run, t->seq, t->timed_out) == 0);
    break;
  case TB_SMSG_LOCKSTEP:
    CHECK(tb_msg_lockstep(&b, t->run, t->hooks, t->timeout_ms) == 0);
    break;
  case TB_SMSG_REJECTED:
    CHECK(tb_msg_rejected(&b, t->method, t->run, t->seq, t->index, t->code, t->message) == 0);
    break;
  default:
    return;
  }
  size_t from = 0, line_len;
  CHECK(tb_frame_next(b.data, b.len, &from, 1 << 24, &line_len) == (int)b.len);
  tb_smsg_t *n = calloc(1, sizeof(*n));
  CHECK(n != NULL);
  tb_proto_err_t err;
  int rc = tb_smsg_decode(b.data, line_len, n, &err);
  if (rc != 0)
    fprintf(stderr, "to-trainer re-decode failed: %s\n%.*s", err.msg, (int)b.len, b.data);
  CHECK(rc == 0 && n->kind == m->kind);
  const __typeof__(n->trainer) *u = &n->trainer;
  CHECK(strcmp(t->run, u->run) == 0);
  switch (m->kind) {
  case TB_SMSG_CONTROL:
    CHECK(t->id == u->id && strcmp(t->action, u->action) == 0 && strcmp(t->by, u->by) == 0);
    CHECK(t->has_value == u->has_value && (!t->has_value || t->value == u->value));
    break;
  case TB_SMSG_CONTINUE:
    CHECK(t->seq == u->seq && t->timed_out == u->timed_out);
    break;
  case TB_SMSG_LOCKSTEP:
    CHECK(t->hooks == u->hooks && t->timeout_ms == u->timeout_ms);
    break;
  default: /* rejected: seq 0 and a negative index are omitted */
    CHECK((t->seq > 0 ? t->seq : 0) == u->seq && (t->index >= 0 ? t->index : -1) == u->index);
    CHECK(t->code == u->code && strcmp(t->method, u->method) == 0 &&
          strcmp(t->message, u->message) == 0);
    break;
  }
  tb_smsg_free(n);
  free(n);
  tb_buf_free(&b);
}

void tb_fuzz_decode(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  tb_req_t r;
  tb_proto_err_t err;
  tb_buf_t b = {0};
  int rc = tb_req_decode(s, size, &r, &err);
  CHECK(rc == 0 || (rc == err.code && err.msg[0] != '\0'));
  if (rc == 0) {
    /* Only a trainer's publish and applied may come without an id. */
    CHECK(r.method != TB_METHOD_INVALID &&
          (r.id.kind != TB_ID_NONE || r.method == TB_METHOD_PUBLISH ||
           r.method == TB_METHOD_APPLIED));
    if (r.method == TB_METHOD_PUBLISH)
      check_publish(&r);
    CHECK(tb_req_encode(&b, &r) == 0);
    tb_req_t again;
    tb_proto_err_t err2;
    int rc2 = tb_req_decode(b.data, b.len - 1, &again, &err2);
    if (rc2 != 0)
      fprintf(stderr, "re-decode failed: %s\n%.*s", err2.msg, (int)b.len, b.data);
    CHECK(rc2 == 0);
    CHECK(again.method == r.method && again.id.kind == r.id.kind && again.id.num == r.id.num &&
          strcmp(again.id.str, r.id.str) == 0 && strcmp(again.run, r.run) == 0);
    check_trainer_fields(&r, &again);
    tb_req_free(&again);
  } else {
    CHECK(tb_msg_error_from(&b, &r.id, &err) == 0);
    size_t from = 0, line_len;
    CHECK(tb_frame_next(b.data, b.len, &from, 1 << 20, &line_len) == (int)b.len);
    tb_smsg_t m;
    CHECK(tb_smsg_decode(b.data, line_len, &m, NULL) == 0);
    CHECK(m.kind == TB_SMSG_ERROR && m.error.code == rc);
    tb_smsg_free(&m);
  }
  tb_req_free(&r);
  tb_buf_free(&b);

  tb_smsg_t m;
  rc = tb_smsg_decode(s, size, &m, &err);
  CHECK(rc == 0 || rc == err.code);
  if (rc == 0 && m.kind == TB_SMSG_EVENT) {
    /* A decoded event re-encodes into a line the framer accepts. */
    tb_buf_t e = {0};
    CHECK(tb_msg_event(&e, &m.event) == 0);
    size_t from = 0, line_len;
    CHECK(tb_frame_next(e.data, e.len, &from, 1 << 20, &line_len) == (int)e.len);
    tb_buf_free(&e);
  }
  if (rc == 0)
    check_to_trainer(&m);
  tb_smsg_free(&m);
}
