/* The control workers: requests from the broker, answered by the daemon.
 *
 * Each worker holds its own controller connection (made at its first
 * request, checked with a ping before each later one, so a request is never
 * sent into a connection the daemon has closed and then left in doubt). A
 * request is validated by the protocol's decoder (wire.c) before anything
 * is sent, and the daemon's answer goes back unchanged: its result (with
 * applied_at for set_lr and checkpoint) or its error. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static void answer(tb_bridge_t *b, const tb__ctl_t *c, tb_buf_t *out, bool error) {
  if (error)
    tb__stat_add(b, &b->st.ctl_errors, 1);
  if (c->reply_to == NULL) {
    tb__blog(b, 2, "control %s on %s: no reply subject; answer was %.*s", c->method, c->run,
             (int)out->len, out->data);
    return;
  }
  b->be->reply(b, c, out->data, out->len);
}

static void answer_error(tb_bridge_t *b, const tb__ctl_t *c, tb_buf_t *out, int code,
                         const char *name, const char *msg) {
  out->len = 0;
  tb__reply_error(out, code, name, msg);
  tb__blog(b, 1, "control %s on %s: %s (%s)", c->method[0] ? c->method : "?",
           c->run[0] ? c->run : "?", name, msg);
  answer(b, c, out, true);
}

static int open_controller(tb_bridge_t *b, tb_client_t **c, tb_client_err_t *err) {
  return tb__daemon_connect(b, TB_ROLE_CONTROLLER, 60000, c, err);
}

static void handle(tb_bridge_t *b, tb_client_t **c, const tb__ctl_t *ctl, tb_buf_t *out) {
  if (ctl->topic_error) {
    answer_error(b, ctl, out, ctl->topic_error, tb_proto_err_name(ctl->topic_error),
                 ctl->topic_msg);
    return;
  }
  tb_req_t *req = calloc(1, sizeof *req);
  if (req == NULL) {
    answer_error(b, ctl, out, TB_PROTO_EINTERNAL, "internal_error", "the bridge is out of memory");
    return;
  }
  tb_proto_err_t perr = {0};
  int rc = tb__ctl_request(ctl->method, ctl->run, ctl->payload, ctl->len, req, &perr);
  if (rc != 0) {
    answer_error(b, ctl, out, rc, tb_proto_err_name(rc), perr.msg);
    tb_req_free(req);
    free(req);
    return;
  }
  tb_client_err_t err = {0};
  if (*c != NULL && tb_client_ping(*c, NULL, &err) != 0) {
    tb_client_free(*c);
    *c = NULL;
  }
  if (*c == NULL && (rc = open_controller(b, c, &err)) != 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "the bridge cannot reach the daemon as a controller: %s", err.msg);
    answer_error(b, ctl, out, rc, err.name[0] ? err.name : tb_bridge_err_name(rc), msg);
    *c = NULL;
    tb_req_free(req);
    free(req);
    return;
  }
  cJSON *result = NULL;
  rc = tb_client_call(*c, req, &result, &err);
  tb_req_free(req);
  free(req);
  if (rc == 0) {
    out->len = 0;
    if (tb__reply_result(out, result) != 0) {
      answer_error(b, ctl, out, TB_PROTO_EINTERNAL, "internal_error",
                   "the bridge is out of memory");
    } else {
      tb__blog(b, 1, "control %s on %s: %.*s", ctl->method, ctl->run, (int)out->len, out->data);
      answer(b, ctl, out, false);
    }
    cJSON_Delete(result);
    return;
  }
  if (!tb_client_err_is_remote(rc) || rc == TB_PROTO_EUNAUTHORIZED) {
    tb_client_free(*c);
    *c = NULL;
  }
  answer_error(b, ctl, out, rc, err.name[0] ? err.name : tb_bridge_err_name(rc), err.msg);
}

void *tb__ctl_main(void *arg) {
  tb_bridge_t *b = arg;
  tb_client_t *c = NULL;
  tb_buf_t out;
  tb_buf_init(&out);
  for (;;) {
    pthread_mutex_lock(&b->ctl_mu);
    while (b->ctl_head == NULL && !atomic_load(&b->stopping))
      pthread_cond_wait(&b->ctl_cv, &b->ctl_mu);
    tb__ctl_t *ctl = b->ctl_head;
    if (ctl != NULL) {
      b->ctl_head = ctl->next;
      if (b->ctl_head == NULL)
        b->ctl_tail = NULL;
      b->n_ctl--;
    }
    pthread_mutex_unlock(&b->ctl_mu);
    if (ctl == NULL)
      break;
    handle(b, &c, ctl, &out);
    tb__ctl_free(ctl);
  }
  tb_client_free(c);
  tb_buf_free(&out);
  return NULL;
}
