/* Invariants of the bridge's parsers on arbitrary input; see
 * fuzz_bridge_body.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_bridge_body.h"
#include "internal.h"

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static bool proto_code(int rc) {
  return rc == TB_PROTO_EPARSE || rc == TB_PROTO_EINVALID_REQUEST ||
         rc == TB_PROTO_EMETHOD_NOT_FOUND || rc == TB_PROTO_EINVALID_PARAMS ||
         rc == TB_PROTO_EINTERNAL || rc == TB_PROTO_ETOO_LARGE;
}

static void check_reply(int rc, const tb_proto_err_t *err) {
  CHECK(proto_code(rc));
  CHECK(err->code == rc);
  CHECK(memchr(err->msg, '\0', sizeof err->msg) != NULL);
  tb_buf_t b;
  tb_buf_init(&b);
  CHECK(tb__reply_error(&b, rc, tb_proto_err_name(rc), err->msg) == 0);
  cJSON *doc = cJSON_ParseWithLength(b.data, b.len);
  CHECK(doc != NULL);
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");
  CHECK(cJSON_IsObject(e));
  CHECK(cJSON_GetObjectItemCaseSensitive(e, "code")->valueint == rc);
  cJSON_Delete(doc);
  tb_buf_free(&b);
}

static void fuzz_ctl(const char *p, size_t n) {
  const char *nul = memchr(p, '\0', n);
  size_t tlen = nul ? (size_t)(nul - p) : n;
  const char *payload = nul ? nul + 1 : "";
  size_t plen = nul ? n - tlen - 1 : 0;
  for (int k = 0; k < 2; k++) {
    char sep = k ? '/' : '.';
    char run[TB_PROTO_RUN_MAX], method[TB_PROTO_NAME_MAX];
    tb_proto_err_t err = {0};
    int rc = tb__ctl_topic_parse(p, tlen, sep, "ns", run, method, &err);
    if (rc != 0) {
      CHECK(rc == TB_PROTO_EINVALID_REQUEST);
      check_reply(rc, &err);
      continue;
    }
    CHECK(run[0] != '\0' && strlen(run) < TB_PROTO_RUN_MAX);
    /* The name the bridge would build for it parses back to the same. */
    char topic[TB__SUBJECT_MAX], run2[TB_PROTO_RUN_MAX], method2[TB_PROTO_NAME_MAX];
    size_t len = tb__topic(topic, sep, TB__TOPIC_CTL, "ns", run, method);
    CHECK(tb__ctl_topic_parse(topic, len, sep, "ns", run2, method2, &err) == 0);
    CHECK(strcmp(run, run2) == 0 && strcmp(method, method2) == 0);

    tb_req_t *r = calloc(1, sizeof *r), *r2 = calloc(1, sizeof *r2);
    CHECK(r && r2);
    rc = tb__ctl_request(method, run, payload, plen, r, &err);
    if (rc != 0) {
      check_reply(rc, &err);
    } else {
      CHECK(strcmp(r->run, run) == 0);
      CHECK(strcmp(tb_method_name(r->method), method) == 0);
      tb_buf_t b;
      tb_buf_init(&b);
      CHECK(tb_req_encode(&b, r) == 0);
      CHECK(b.len > 0 && b.data[b.len - 1] == '\n');
      CHECK(tb_req_decode(b.data, b.len - 1, r2, &err) == 0);
      CHECK(r2->method == r->method && strcmp(r2->run, r->run) == 0);
      if (r->method == TB_METHOD_SET_LR)
        CHECK(r2->set_lr.lr == r->set_lr.lr);
      tb_buf_free(&b);
    }
    tb_req_free(r);
    tb_req_free(r2);
    free(r);
    free(r2);
  }
}

static void fuzz_event(const char *p, size_t n) {
  tb_smsg_t *m = malloc(sizeof *m), *m2 = malloc(sizeof *m2);
  CHECK(m && m2);
  tb_proto_err_t err = {0};
  int rc = tb__event_payload_decode(p, n, m, &err);
  if (rc != 0) {
    check_reply(rc, &err);
  } else {
    CHECK(m->kind == TB_SMSG_EVENT && m->event.seq >= 1);
    tb_buf_t b;
    tb_buf_init(&b);
    CHECK(tb_msg_event_params(&b, &m->event) == 0);
    CHECK(tb__event_payload_decode(b.data, b.len, m2, &err) == 0);
    CHECK(m2->event.seq == m->event.seq && strcmp(m2->event.run, m->event.run) == 0 &&
          strcmp(m2->event.name, m->event.name) == 0 && m2->event.n_logs == m->event.n_logs);
    tb_smsg_free(m2);
    b.len = 0;
    CHECK(tb__event_stub(&b, &m->event, n) == 0);
    CHECK(tb__event_payload_decode(b.data, b.len, m2, &err) == 0);
    CHECK(m2->event.seq == m->event.seq && strcmp(m2->event.name, m->event.name) == 0);
    tb_smsg_free(m2);
    tb_buf_free(&b);
  }
  tb_smsg_free(m);
  free(m);
  free(m2);
}

static void fuzz_status(const char *p, size_t n) {
  tb_run_info_t info, *runs = NULL;
  int count = 0;
  tb_proto_err_t err = {0};
  if (tb__status_decode(p, n, &info, &err) == 0)
    CHECK(info.id[0] != '\0');
  if (tb__runs_decode(p, n, &runs, &count, &err) == 0)
    CHECK(count == 0 || runs != NULL);
  else
    CHECK(runs == NULL && count == 0);
  free(runs);
  int64_t seq;
  if (tb__seq_parse(p, n, &seq) == 0)
    CHECK(seq >= 0 && seq <= TB_PROTO_INT_MAX);
}

void tb_fuzz_bridge(const uint8_t *data, size_t size) {
  if (size == 0)
    return;
  /* An exact-size copy past the selector, so ASan sees any overread. */
  size_t n = size - 1;
  char *p = malloc(n ? n : 1);
  CHECK(p != NULL);
  memcpy(p, data + 1, n);
  switch (data[0] % 3) {
  case 0:
    fuzz_ctl(p, n);
    break;
  case 1:
    fuzz_event(p, n);
    break;
  default:
    fuzz_status(p, n);
  }
  free(p);
}
