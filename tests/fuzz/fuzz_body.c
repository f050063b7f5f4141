/* Invariants checked on arbitrary input; see fuzz_body.h. Written so a
 * finding names the broken property, not just "crash". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_body.h"
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

void tb_fuzz_decode(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  tb_req_t r;
  tb_proto_err_t err;
  tb_buf_t b = {0};
  int rc = tb_req_decode(s, size, &r, &err);
  CHECK(rc == 0 || (rc == err.code && err.msg[0] != '\0'));
  if (rc == 0) {
    CHECK(r.method != TB_METHOD_INVALID && r.id.kind != TB_ID_NONE);
    CHECK(tb_req_encode(&b, &r) == 0);
    tb_req_t again;
    tb_proto_err_t err2;
    int rc2 = tb_req_decode(b.data, b.len - 1, &again, &err2);
    if (rc2 != 0)
      fprintf(stderr, "re-decode failed: %s\n%.*s", err2.msg, (int)b.len, b.data);
    CHECK(rc2 == 0);
    CHECK(again.method == r.method && again.id.kind == r.id.kind && again.id.num == r.id.num &&
          strcmp(again.id.str, r.id.str) == 0 && strcmp(again.run, r.run) == 0);
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
  tb_smsg_free(&m);
}
