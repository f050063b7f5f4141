/* Client side: requests from tb_req_t to a line. The inverse of tb_req_decode
 * for every field it reads, so tests can round-trip each method; optional
 * fields are written only when they differ from the default the decoder
 * would apply. Not a hot path: clients send a handful of requests. */
#include <string.h>

#include "internal.h"

#define APP(s) tb_buf_append(b, (s), sizeof(s) - 1)

static int key(tb_buf_t *b, bool *first, const char *k) {
  int rc = (*first ? APP("{") : APP(",")) || tb_json_str(b, k) || APP(":");
  *first = false;
  return rc;
}

static int str_list(tb_buf_t *b, const char *items, size_t stride, int n) {
  int rc = APP("[");
  for (int i = 0; i < n && !rc; i++)
    rc = (i ? APP(",") : 0) || tb_json_str(b, items + (size_t)i * stride);
  return rc || APP("]");
}

static int params(tb_buf_t *b, const tb_req_t *r) {
  bool first = true;
  int rc = 0;
#define K(k) (rc = rc || key(b, &first, (k)))
  switch (r->method) {
  case TB_METHOD_AUTH:
    if (r->auth.token[0])
      K("token"), rc = rc || tb_json_str(b, r->auth.token);
    K("role"), rc = rc || tb_json_str(b, tb_role_name(r->auth.role));
    if (r->auth.client[0])
      K("client"), rc = rc || tb_json_str(b, r->auth.client);
    if (r->auth.protocol)
      K("protocol"), rc = rc || tb_json_int(b, r->auth.protocol);
    break;
  case TB_METHOD_SUBSCRIBE:
    if (r->subscribe.n_runs)
      K("runs"),
          rc = rc || str_list(b, &r->subscribe.runs[0][0], TB_PROTO_RUN_MAX, r->subscribe.n_runs);
    if (r->subscribe.n_events)
      K("events"), rc = rc || str_list(b, &r->subscribe.events[0][0], TB_PROTO_NAME_MAX,
                                       r->subscribe.n_events);
    if (r->subscribe.every > 1)
      K("every"), rc = rc || tb_json_int(b, r->subscribe.every);
    if (r->subscribe.has_since_seq)
      K("since_seq"), rc = rc || tb_json_int(b, r->subscribe.since_seq);
    if (r->subscribe.n_lockstep) {
      K("lockstep"), rc = rc || APP("[");
      for (int i = 0; i < r->subscribe.n_lockstep; i++)
        rc = rc || (i ? APP(",") : 0) || tb_json_str(b, tb_event_name(r->subscribe.lockstep[i]));
      rc = rc || APP("]");
    }
    if (r->subscribe.lockstep_timeout_ms &&
        r->subscribe.lockstep_timeout_ms != TB_PROTO_LOCKSTEP_DEFAULT_MS)
      K("lockstep_timeout_ms"), rc = rc || tb_json_int(b, r->subscribe.lockstep_timeout_ms);
    break;
  case TB_METHOD_UNSUBSCRIBE:
    if (r->unsubscribe.has_sub)
      K("sub"), rc = rc || tb_json_int(b, r->unsubscribe.sub);
    break;
  case TB_METHOD_STATUS:
    if (r->run[0])
      K("run"), rc = rc || tb_json_str(b, r->run);
    break;
  case TB_METHOD_HISTORY:
    K("run"), rc = rc || tb_json_str(b, r->run);
    if (r->history.since_seq)
      K("since_seq"), rc = rc || tb_json_int(b, r->history.since_seq);
    if (r->history.limit)
      K("limit"), rc = rc || tb_json_int(b, r->history.limit);
    break;
  case TB_METHOD_SET_LR:
    K("run"), rc = rc || tb_json_str(b, r->run);
    K("lr"), rc = rc || tb_json_num(b, r->set_lr.lr);
    break;
  case TB_METHOD_STOP:
  case TB_METHOD_CANCEL:
    K("run"), rc = rc || tb_json_str(b, r->run);
    if (r->stop.reason[0])
      K("reason"), rc = rc || tb_json_str(b, r->stop.reason);
    break;
  case TB_METHOD_PAUSE:
  case TB_METHOD_RESUME:
  case TB_METHOD_CHECKPOINT:
    K("run"), rc = rc || tb_json_str(b, r->run);
    break;
  case TB_METHOD_SUBMIT: {
    if (r->submit.job == NULL)
      return TB_PROTO_EINTERNAL;
    K("job"), rc = rc || tb_json_value(b, r->submit.job);
    break;
  }
  case TB_METHOD_CONTINUE: {
    K("run"), rc = rc || tb_json_str(b, r->run);
    K("seq"), rc = rc || tb_json_int(b, r->cont.seq);
    if (r->cont.has_lr || r->cont.stop || r->cont.pause || r->cont.checkpoint) {
      K("actions"), rc = rc || APP("{");
      const char *sep = "";
      if (r->cont.has_lr)
        rc = rc || APP("\"set_lr\":") || tb_json_num(b, r->cont.lr), sep = ",";
      if (r->cont.stop)
        rc = rc || tb_buf_append(b, sep, strlen(sep)) || APP("\"stop\":true"), sep = ",";
      if (r->cont.pause)
        rc = rc || tb_buf_append(b, sep, strlen(sep)) || APP("\"pause\":true"), sep = ",";
      if (r->cont.checkpoint)
        rc = rc || tb_buf_append(b, sep, strlen(sep)) || APP("\"checkpoint\":true");
      rc = rc || APP("}");
    }
    break;
  }
  case TB_METHOD_ATTACH:
    if (r->run[0])
      K("run"), rc = rc || tb_json_str(b, r->run);
    if (r->attach.name[0])
      K("name"), rc = rc || tb_json_str(b, r->attach.name);
    if (r->attach.epochs)
      K("epochs"), rc = rc || tb_json_int(b, r->attach.epochs);
    if (r->attach.steps)
      K("steps"), rc = rc || tb_json_int(b, r->attach.steps);
    if (r->attach.model)
      K("model"), rc = rc || tb_json_str(b, r->attach.model);
    if (r->attach.has_last_seq)
      K("last_seq"), rc = rc || tb_json_int(b, r->attach.last_seq);
    if (r->attach.has_lr)
      K("lr"), rc = rc || tb_json_num(b, r->attach.lr);
    if (r->attach.checkpoints)
      K("checkpoints"), rc = rc || APP("true");
    break;
  case TB_METHOD_PUBLISH: {
    char *text = r->publish.events ? cJSON_PrintUnformatted(r->publish.events) : NULL;
    if (text == NULL)
      return TB_PROTO_EINTERNAL;
    K("run"), rc = rc || tb_json_str(b, r->run);
    K("events"), rc = rc || tb_buf_append(b, text, strlen(text));
    cJSON_free(text);
    break;
  }
  case TB_METHOD_APPLIED:
    K("run"), rc = rc || tb_json_str(b, r->run);
    if (r->applied.id)
      K("id"), rc = rc || tb_json_int(b, r->applied.id);
    K("action"), rc = rc || tb_json_str(b, r->applied.action);
    if (r->applied.epoch >= 0)
      K("epoch"), rc = rc || tb_json_int(b, r->applied.epoch);
    if (r->applied.batch >= 0)
      K("batch"), rc = rc || tb_json_int(b, r->applied.batch);
    if (r->applied.has_value)
      K("value"), rc = rc || tb_json_num(b, r->applied.value);
    if (r->applied.has_old)
      K("old"), rc = rc || tb_json_num(b, r->applied.old);
    if (r->applied.path[0])
      K("path"), rc = rc || tb_json_str(b, r->applied.path);
    if (r->applied.by[0])
      K("by"), rc = rc || tb_json_str(b, r->applied.by);
    if (r->applied.error[0])
      K("error"), rc = rc || tb_json_str(b, r->applied.error);
    break;
  case TB_METHOD_FINISH:
    K("run"), rc = rc || tb_json_str(b, r->run);
    if (r->finish.state != TB_RUN_INVALID && r->finish.state != TB_RUN_FINISHED)
      K("state"), rc = rc || tb_json_str(b, tb_run_state_name(r->finish.state));
    if (r->finish.reason[0])
      K("reason"), rc = rc || tb_json_str(b, r->finish.reason);
    break;
  default:
    break;
  }
#undef K
  if (first)
    return rc || APP("{}");
  return rc || APP("}");
}

int tb_req_encode(tb_buf_t *b, const tb_req_t *r) {
  const char *m = tb_method_name(r->method);
  if (m[0] == '\0')
    return TB_PROTO_EINVALID_PARAMS;
  size_t len0 = b->len;
  int rc = APP("{\"jsonrpc\":\"2.0\"");
  /* publish and applied without an id are notifications. */
  if (r->id.kind != TB_ID_NONE ||
      (r->method != TB_METHOD_PUBLISH && r->method != TB_METHOD_APPLIED)) {
    rc = rc || APP(",\"id\":");
    if (!rc && tb_buf_reserve(b, TB__ID_MAX_ENC) == 0)
      b->len += tb__id_to(b->data + b->len, &r->id);
    else
      rc = 1;
  }
  rc = rc || APP(",\"method\":") || tb_json_str(b, m) || APP(",\"params\":") || params(b, r) ||
       APP("}\n");
  if (rc) {
    b->len = len0;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}
