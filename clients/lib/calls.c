/* The typed calls (set_lr, stop, status, ...) over tb_client_call, and the
 * error names and texts of the library.
 *
 * Each call fills a zeroed tb_req_t (heap-allocated: it holds the fixed
 * arrays of every method and is several kilobytes), makes the call, and reads
 * what it needs from the result leniently: fields a newer server adds are
 * ignored, fields an older one lacks are reported as absent. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- errors -- */

bool tb_client_err_is_remote(int code) {
  return code <= -32000 && code >= -32768;
}

const char *tb_client_strerror(int code) {
  if (code == 0)
    return "success";
  if (tb_client_err_is_remote(code))
    return tb_proto_strerror(code);
  switch (code) {
#define X(name, c, wire, text)                                                                     \
  case c:                                                                                          \
    return text;
    TB_CLIENT_ERR_MAP(X)
#undef X
  default:
    break;
  }
  if (code < 0 && code > -4096)
    return strerror(-code);
  return "unknown error";
}

const char *tb_client_err_name(int code) {
  if (code == 0)
    return "";
  if (tb_client_err_is_remote(code))
    return tb_proto_err_name(code);
  switch (code) {
#define X(name, c, wire, text)                                                                     \
  case c:                                                                                          \
    return wire;
    TB_CLIENT_ERR_MAP(X)
#undef X
  default:
    break;
  }
  return code < 0 && code > -4096 ? "system_error" : "unknown";
}

/* ---------------------------------------------------------------- helpers -- */

static tb_req_t *req_new(tb_method_t m, const char *run, tb_client_err_t *err, int *rc) {
  *rc = 0;
  if (run != NULL && (run[0] == '\0' || strlen(run) >= TB_PROTO_RUN_MAX)) {
    *rc = tb__cerr(err, TB_CLIENT_EINVALID, "%s: a run id of 1 to %d characters is required",
                   tb_method_name(m), TB_PROTO_RUN_MAX - 1);
    return NULL;
  }
  tb_req_t *r = calloc(1, sizeof *r);
  if (r == NULL) {
    *rc = tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
    return NULL;
  }
  r->method = m;
  if (run != NULL)
    memcpy(r->run, run, strlen(run) + 1);
  return r;
}

/* Makes a call for a method that needs a run and nothing else. */
static int simple(tb_client_t *c, tb_method_t m, const char *run, const char *reason,
                  cJSON **result, tb_client_err_t *err) {
  if (c == NULL || run == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "%s: NULL client or run", tb_method_name(m));
  int rc;
  tb_req_t *r = req_new(m, run, err, &rc);
  if (r == NULL)
    return rc;
  if (reason != NULL)
    snprintf(r->stop.reason, sizeof r->stop.reason, "%s", reason);
  rc = tb_client_call(c, r, result, err);
  free(r);
  return rc;
}

static bool get_num(const cJSON *o, const char *k, double *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!cJSON_IsNumber(v))
    return false;
  *out = v->valuedouble;
  return true;
}

static void read_applied(const cJSON *res, tb_client_applied_t *out) {
  memset(out, 0, sizeof *out);
  out->batch = -1;
  const cJSON *at = cJSON_GetObjectItemCaseSensitive(res, "applied_at");
  double d;
  if (cJSON_IsObject(at) && get_num(at, "epoch", &d)) {
    out->has_applied_at = true;
    out->epoch = (int64_t)d;
    if (get_num(at, "batch", &d))
      out->batch = (int64_t)d;
  }
  if (get_num(res, "lr", &out->lr)) {
    out->has_lr = true;
    if (!get_num(res, "old", &out->old_lr))
      out->old_lr = 0;
  }
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(res, "path");
  if (cJSON_IsString(p))
    snprintf(out->path, sizeof out->path, "%s", p->valuestring);
}

/* ------------------------------------------------------------------ calls -- */

int tb_client_set_lr(tb_client_t *c, const char *run, double lr, tb_client_applied_t *out,
                     tb_client_err_t *err) {
  if (out)
    memset(out, 0, sizeof *out);
  if (c == NULL || run == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "set_lr: NULL client or run");
  int rc;
  tb_req_t *r = req_new(TB_METHOD_SET_LR, run, err, &rc);
  if (r == NULL)
    return rc;
  r->set_lr.lr = lr;
  cJSON *res = NULL;
  rc = tb_client_call(c, r, &res, err);
  free(r);
  if (rc == 0 && out)
    read_applied(res, out);
  cJSON_Delete(res);
  return rc;
}

int tb_client_stop(tb_client_t *c, const char *run, const char *reason, tb_client_err_t *err) {
  return simple(c, TB_METHOD_STOP, run, reason, NULL, err);
}

int tb_client_pause(tb_client_t *c, const char *run, tb_client_err_t *err) {
  return simple(c, TB_METHOD_PAUSE, run, NULL, NULL, err);
}

int tb_client_resume(tb_client_t *c, const char *run, tb_client_err_t *err) {
  return simple(c, TB_METHOD_RESUME, run, NULL, NULL, err);
}

int tb_client_cancel(tb_client_t *c, const char *run, const char *reason, tb_client_err_t *err) {
  return simple(c, TB_METHOD_CANCEL, run, reason, NULL, err);
}

int tb_client_checkpoint(tb_client_t *c, const char *run, tb_client_applied_t *out,
                         tb_client_err_t *err) {
  if (out)
    memset(out, 0, sizeof *out);
  cJSON *res = NULL;
  int rc = simple(c, TB_METHOD_CHECKPOINT, run, NULL, &res, err);
  if (rc == 0 && out)
    read_applied(res, out);
  cJSON_Delete(res);
  return rc;
}

int tb_client_submit(tb_client_t *c, const char *job_json, size_t job_len,
                     char run_out[TB_PROTO_RUN_MAX], tb_client_err_t *err) {
  if (run_out)
    run_out[0] = '\0';
  if (c == NULL || job_json == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "submit: NULL client or job");
  const char *end = NULL;
  cJSON *job = cJSON_ParseWithLengthOpts(job_json, job_len, &end, false);
  if (job == NULL || !cJSON_IsObject(job)) {
    long at = end ? (long)(end - job_json) : 0;
    cJSON_Delete(job);
    if (job == NULL)
      return tb__cerr(err, TB_CLIENT_EINVALID, "submit: the job is not valid JSON (near byte %ld)",
                      at);
    return tb__cerr(err, TB_CLIENT_EINVALID, "submit: the job must be a JSON object");
  }
  int rc;
  tb_req_t *r = req_new(TB_METHOD_SUBMIT, NULL, err, &rc);
  if (r == NULL) {
    cJSON_Delete(job);
    return rc;
  }
  r->submit.job = job;
  cJSON *res = NULL;
  rc = tb_client_call(c, r, &res, err);
  free(r);
  cJSON_Delete(job);
  if (rc == 0) {
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(res, "run");
    if (!cJSON_IsString(run))
      rc = tb__cerr(err, TB_CLIENT_EBAD_REPLY, "submit: the result has no run id");
    else if (run_out)
      snprintf(run_out, TB_PROTO_RUN_MAX, "%s", run->valuestring);
  }
  cJSON_Delete(res);
  return rc;
}

int tb_client_continue(tb_client_t *c, const char *run, int64_t seq,
                       const tb_client_actions_t *actions, tb_client_err_t *err) {
  if (c == NULL || run == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "continue: NULL client or run");
  int rc;
  tb_req_t *r = req_new(TB_METHOD_CONTINUE, run, err, &rc);
  if (r == NULL)
    return rc;
  r->cont.seq = seq;
  tb__client_note_answer(c, run, seq, actions);
  if (actions != NULL) {
    r->cont.has_lr = actions->has_lr;
    r->cont.lr = actions->lr;
    r->cont.stop = actions->stop;
    r->cont.pause = actions->pause;
    r->cont.checkpoint = actions->checkpoint;
  }
  rc = tb_client_call(c, r, NULL, err);
  free(r);
  return rc;
}

int tb_client_status(tb_client_t *c, const char *run, tb_run_info_t *out, tb_client_err_t *err) {
  if (out)
    memset(out, 0, sizeof *out);
  if (c == NULL || run == NULL || out == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "status: NULL argument");
  cJSON *res = NULL;
  int rc = simple(c, TB_METHOD_STATUS, run, NULL, &res, err);
  if (rc == 0) {
    tb_proto_err_t perr;
    if (tb_run_info_decode(res, out, &perr) != 0)
      rc = tb__cerr(err, TB_CLIENT_EBAD_REPLY, "status: %s", perr.msg);
  }
  cJSON_Delete(res);
  return rc;
}

int tb_client_runs(tb_client_t *c, tb_run_info_t **runs, int *n_runs, tb_client_err_t *err) {
  if (runs)
    *runs = NULL;
  if (n_runs)
    *n_runs = 0;
  if (c == NULL || runs == NULL || n_runs == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "runs: NULL argument");
  int rc;
  tb_req_t *r = req_new(TB_METHOD_RUNS, NULL, err, &rc);
  if (r == NULL)
    return rc;
  cJSON *res = NULL;
  rc = tb_client_call(c, r, &res, err);
  free(r);
  if (rc != 0)
    return rc;
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(res, "runs");
  int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
  tb_run_info_t *v = n > 0 ? calloc((size_t)n, sizeof *v) : NULL;
  if (n < 0)
    rc = tb__cerr(err, TB_CLIENT_EBAD_REPLY, "runs: the result has no runs array");
  else if (n > 0 && v == NULL)
    rc = tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  int i = 0;
  for (const cJSON *e = rc == 0 ? arr->child : NULL; e; e = e->next, i++) {
    tb_proto_err_t perr;
    if (tb_run_info_decode(e, &v[i], &perr) != 0) {
      rc = tb__cerr(err, TB_CLIENT_EBAD_REPLY, "runs[%d]: %s", i, perr.msg);
      break;
    }
  }
  cJSON_Delete(res);
  if (rc != 0) {
    free(v);
    return rc;
  }
  *runs = v;
  *n_runs = n;
  return 0;
}

int tb_client_history(tb_client_t *c, const char *run, int64_t since_seq, int64_t limit,
                      cJSON **events, int64_t *next_seq, tb_client_err_t *err) {
  if (events)
    *events = NULL;
  if (next_seq)
    *next_seq = 0;
  if (c == NULL || run == NULL || events == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "history: NULL argument");
  int rc;
  tb_req_t *r = req_new(TB_METHOD_HISTORY, run, err, &rc);
  if (r == NULL)
    return rc;
  r->history.since_seq = since_seq;
  r->history.limit = limit;
  cJSON *res = NULL;
  rc = tb_client_call(c, r, &res, err);
  free(r);
  if (rc != 0)
    return rc;
  cJSON *arr = cJSON_DetachItemFromObjectCaseSensitive(res, "events");
  const cJSON *ns = cJSON_GetObjectItemCaseSensitive(res, "next_seq");
  if (!cJSON_IsArray(arr)) {
    cJSON_Delete(arr);
    cJSON_Delete(res);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "history: the result has no events array");
  }
  if (next_seq && cJSON_IsNumber(ns))
    *next_seq = (int64_t)ns->valuedouble;
  cJSON_Delete(res);
  *events = arr;
  return 0;
}

int tb_client_event_decode(const cJSON *params, tb_smsg_t *msg, tb_client_err_t *err) {
  if (msg)
    memset(msg, 0, sizeof *msg);
  if (params == NULL || msg == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "event_decode: NULL argument");
  /* Wrapping the object as a notification reuses the decoder's validation,
   * so a history element and a live event are read by the same code (and
   * tb_json_value writes its numbers back exactly, as cJSON_Print would not). */
  tb_buf_t b;
  tb_buf_init(&b);
  static const char pre[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":";
  int rc = tb_buf_append(&b, pre, sizeof pre - 1) || tb_json_value(&b, params) ||
           tb_buf_append(&b, "}", 1);
  if (rc) {
    tb_buf_free(&b);
    return tb__cerr(err, TB_CLIENT_ENOMEM, "out of memory");
  }
  tb_proto_err_t perr;
  rc = tb_smsg_decode(b.data, b.len, msg, &perr);
  tb_buf_free(&b);
  if (rc != 0 || msg->kind != TB_SMSG_EVENT) {
    tb_smsg_free(msg);
    return tb__cerr(err, TB_CLIENT_EBAD_REPLY, "history event: %s", rc ? perr.msg : "not an event");
  }
  return 0;
}

int tb_client_ping(tb_client_t *c, double *server_time, tb_client_err_t *err) {
  if (server_time)
    *server_time = 0;
  if (c == NULL)
    return tb__cerr(err, TB_CLIENT_EINVALID, "ping: NULL client");
  int rc;
  tb_req_t *r = req_new(TB_METHOD_PING, NULL, err, &rc);
  if (r == NULL)
    return rc;
  cJSON *res = NULL;
  rc = tb_client_call(c, r, &res, err);
  free(r);
  if (rc == 0 && server_time)
    get_num(res, "time", server_time);
  cJSON_Delete(res);
  return rc;
}
