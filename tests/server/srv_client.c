/* Helpers of the server tests that use the C client library; see srv_util.h.
 * Kept apart from srv_util.c so that the in-process test, which links the
 * server, does not link the client too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "srv_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the C client ------------------------------------------------------------- */

tb_client_t *su_client(const char *addr, tb_role_t role, const char *name) {
  tb_client_opts_t o = {.addr = addr,
                        .token = role == TB_ROLE_CONTROLLER ? SU_TOKEN : NULL,
                        .role = role,
                        .name = name,
                        .call_timeout_ms = 20000};
  tb_client_t *c = NULL;
  tb_client_err_t err;
  int r = tb_client_connect(&o, &c, &err);
  if (r != 0)
    fail_msg("connect %s: %s", addr, err.msg);
  return c;
}

static double log_get(const tb_event_t *ev, const char *name) {
  for (int i = 0; i < ev->n_logs; i++) {
    const char *n = ev->log_names ? ev->log_names[i] : ev->log_namev[i];
    if (strcmp(n, name) == 0)
      return ev->log_values[i];
  }
  return NAN;
}

void su_ev_from(su_ev_t *e, const tb_event_t *ev) {
  memset(e, 0, sizeof(*e));
  e->seq = ev->seq;
  snprintf(e->run, sizeof(e->run), "%s", ev->run ? ev->run : "");
  snprintf(e->name, sizeof(e->name), "%s", ev->name ? ev->name : "");
  e->epoch = ev->epoch;
  e->batch = ev->batch;
  e->time_us = ev->time_us;
  e->lockstep = ev->lockstep;
  snprintf(e->state, sizeof(e->state), "%s", ev->state ? ev->state : "");
  snprintf(e->prev_state, sizeof(e->prev_state), "%s", ev->prev_state ? ev->prev_state : "");
  snprintf(e->action, sizeof(e->action), "%s", ev->action ? ev->action : "");
  snprintf(e->by, sizeof(e->by), "%s", ev->by ? ev->by : "");
  snprintf(e->reason, sizeof(e->reason), "%s", ev->reason ? ev->reason : "");
  e->has_value = ev->has_value;
  e->has_old = ev->has_old;
  e->value = ev->value;
  e->old = ev->old_value;
  e->n_logs = ev->n_logs;
  e->lr = log_get(ev, "lr");
  e->val_loss = log_get(ev, "val_loss");
}

su_ev_t *su_history(tb_client_t *c, const char *run, int *n) {
  int cap = 1024;
  su_ev_t *evs = malloc((size_t)cap * sizeof(*evs));
  *n = 0;
  int64_t since = 1;
  for (;;) {
    cJSON *arr = NULL;
    int64_t next = 0;
    tb_client_err_t err;
    int r = tb_client_history(c, run, since, 10000, &arr, &next, &err);
    if (r != 0)
      fail_msg("history %s: %s", run, err.msg);
    int k = cJSON_GetArraySize(arr);
    for (int i = 0; i < k; i++) {
      tb_smsg_t m;
      assert_int_equal(tb_client_event_decode(cJSON_GetArrayItem(arr, i), &m, &err), 0);
      if (*n == cap)
        evs = realloc(evs, (size_t)(cap *= 2) * sizeof(*evs));
      su_ev_from(&evs[(*n)++], &m.event);
      tb_smsg_free(&m);
    }
    cJSON_Delete(arr);
    if (k == 0 || next <= since)
      break;
    since = next;
  }
  return evs;
}

static bool is_final(const char *st) {
  return strcmp(st, "finished") == 0 || strcmp(st, "stopped") == 0 ||
         strcmp(st, "cancelled") == 0 || strcmp(st, "failed") == 0;
}

bool su_wait_final(tb_client_t *c, const char *run, int timeout_ms, char out[16]) {
  uint64_t deadline = su_now_ms() + (uint64_t)timeout_ms;
  while (su_now_ms() < deadline) {
    tb_smsg_t m;
    int r = tb_client_next(c, (int)(deadline - su_now_ms()), &m, NULL);
    if (r != 0)
      return false;
    bool done = m.kind == TB_SMSG_EVENT && strcmp(m.event.run, run) == 0 &&
                strcmp(m.event.name, "state") == 0 && is_final(m.event.state);
    if (done)
      snprintf(out, 16, "%s", m.event.state);
    tb_smsg_free(&m);
    if (done)
      return true;
  }
  return false;
}

bool su_poll_final(tb_client_t *c, const char *run, int timeout_ms, tb_run_info_t *info) {
  uint64_t deadline = su_now_ms() + (uint64_t)timeout_ms;
  while (su_now_ms() < deadline) {
    tb_client_err_t err;
    if (tb_client_status(c, run, info, &err) == 0 && is_final(tb_run_state_name(info->state)))
      return true;
    su_sleep_ms(20);
  }
  return false;
}
