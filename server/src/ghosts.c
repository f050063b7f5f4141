/* Lockstep subscriptions across a restart.
 *
 * A lockstep subscriber makes the trainer wait for it; a restart must not
 * let a resumed run train past the hooks it waits at before that subscriber
 * has reconnected (its reconnect takes a fraction of a second; the resumed
 * trainer would pass several hooks meanwhile, and the remote callback would
 * no longer act where a local one does). So the loop keeps the lockstep
 * subscriptions in STATE_DIR/lockstep, one JSON object per line, rewritten
 * whenever they change. A daemon started with --resume reads them back as
 * "ghosts": a restored run that matches a ghost does not start training until
 * a subscription with the same runs and lockstep hooks has been made again
 * (the client's reconnect renews it as it was), or the ghost's lockstep
 * timeout has passed. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct tb_ghost_s {
  int n_runs;
  char runs[TB_PROTO_SUB_RUNS_MAX][TB_PROTO_RUN_MAX];
  uint32_t lockstep;
  int64_t timeout_ms;
} ghost_t;

static bool ghost_matches_run(const ghost_t *g, const char *run) {
  bool ok = g->n_runs == 0;
  for (int i = 0; i < g->n_runs && !ok; i++)
    ok = tb_proto_match(g->runs[i], run);
  return ok;
}

static bool same_sub(const ghost_t *g, const sub_t *sb) {
  if (g->lockstep != sb->lockstep || g->n_runs != sb->n_runs)
    return false;
  for (int i = 0; i < g->n_runs; i++)
    if (strcmp(g->runs[i], sb->runs[i]) != 0)
      return false;
  return true;
}

void tb__ghosts_save(tb_server_t *s) {
  if (s->state_dir[0] == '\0' || s->stopping)
    return; /* a stopping daemon's clients leave because of it: keep the file as it was */
  tb_buf_t b;
  tb_buf_init(&b);
  for (conn_t *c = s->conns; c != NULL; c = c->next) {
    for (int i = 0; i < c->n_subs; i++) {
      const sub_t *sb = &c->subs[i];
      if (sb->lockstep == 0)
        continue;
      cJSON *o = cJSON_CreateObject(), *runs = cJSON_AddArrayToObject(o, "runs"),
            *hooks = cJSON_AddArrayToObject(o, "lockstep");
      for (int k = 0; k < sb->n_runs; k++)
        cJSON_AddItemToArray(runs, cJSON_CreateString(sb->runs[k]));
      for (int k = 0; k < 32; k++)
        if (sb->lockstep & (1u << k))
          cJSON_AddItemToArray(hooks, cJSON_CreateString(tb_event_name((tb_event_kind_t)k)));
      cJSON_AddNumberToObject(o, "lockstep_timeout_ms", (double)sb->lockstep_timeout_ms);
      char *text = cJSON_PrintUnformatted(o);
      if (text != NULL) {
        tb_buf_append(&b, text, strlen(text));
        TB_LIT(&b, "\n");
        cJSON_free(text);
      }
      cJSON_Delete(o);
    }
  }
  tb_buf_append(&b, "", 1);
  char path[1200];
  snprintf(path, sizeof(path), "%s/lockstep", s->state_dir);
  tb__write_private(path, b.data != NULL ? b.data : "");
  tb_buf_free(&b);
}

void tb__ghosts_load(tb_server_t *s) {
  char path[1200];
  snprintf(path, sizeof(path), "%s/lockstep", s->state_dir);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return;
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    cJSON *o = cJSON_Parse(line);
    const cJSON *runs = cJSON_GetObjectItemCaseSensitive(o, "runs");
    const cJSON *hooks = cJSON_GetObjectItemCaseSensitive(o, "lockstep");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "lockstep_timeout_ms");
    ghost_t g = {0};
    bool ok = cJSON_IsArray(runs) && cJSON_IsArray(hooks) && cJSON_IsNumber(t) &&
              cJSON_GetArraySize(runs) <= TB_PROTO_SUB_RUNS_MAX;
    const cJSON *it;
    for (it = ok ? runs->child : NULL; it != NULL; it = it->next) {
      if (!cJSON_IsString(it) || strlen(it->valuestring) >= TB_PROTO_RUN_MAX)
        ok = false;
      else
        snprintf(g.runs[g.n_runs++], TB_PROTO_RUN_MAX, "%s", it->valuestring);
    }
    for (it = ok ? hooks->child : NULL; it != NULL; it = it->next) {
      tb_event_kind_t k =
          cJSON_IsString(it) ? tb_event_from_name(it->valuestring) : TB_EVENT_INVALID;
      if (k == TB_EVENT_INVALID)
        ok = false;
      else
        g.lockstep |= 1u << k;
    }
    if (ok && g.lockstep != 0) {
      g.timeout_ms = (int64_t)t->valuedouble;
      if (g.timeout_ms <= 0)
        g.timeout_ms = 5000;
      ghost_t *gs = realloc(s->ghosts, (size_t)(s->n_ghosts + 1) * sizeof(*gs));
      if (gs != NULL) {
        s->ghosts = gs;
        s->ghosts[s->n_ghosts++] = g;
      }
    }
    cJSON_Delete(o);
  }
  free(line);
  fclose(f);
  /* Each restored run waits for the ghosts that match it. */
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (!r->restored)
      continue;
    for (int i = 0; i < s->n_ghosts; i++) {
      if (!ghost_matches_run(&s->ghosts[i], r->id))
        continue;
      r->gate++;
      if (s->ghosts[i].timeout_ms > r->gate_timeout_ms)
        r->gate_timeout_ms = (int)s->ghosts[i].timeout_ms;
    }
  }
  if (s->n_ghosts > 0)
    tb__log(s, 1,
            "restore: %d lockstep subscription(s) held the runs before the restart; their "
            "runs wait for them to come back",
            s->n_ghosts);
}

void tb__ghosts_renewed(tb_server_t *s, const sub_t *sb) {
  for (int i = 0; i < s->n_ghosts; i++) {
    if (!same_sub(&s->ghosts[i], sb))
      continue;
    for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
      if (!ghost_matches_run(&s->ghosts[i], r->id))
        continue;
      pthread_mutex_lock(&r->ls_mu);
      if (r->gate > 0 && --r->gate == 0)
        pthread_cond_broadcast(&r->ls_cv);
      pthread_mutex_unlock(&r->ls_mu);
    }
    s->ghosts[i] = s->ghosts[--s->n_ghosts];
    return;
  }
}

void tb__ghosts_open(tb_run_t *r) {
  pthread_mutex_lock(&r->ls_mu);
  r->gate = 0;
  pthread_cond_broadcast(&r->ls_cv);
  pthread_mutex_unlock(&r->ls_mu);
}

void tb__ghosts_wait(tb_run_t *r) {
  pthread_mutex_lock(&r->ls_mu);
  if (r->gate > 0) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += r->gate_timeout_ms / 1000;
    deadline.tv_nsec += (long)(r->gate_timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000L;
    }
    while (r->gate > 0)
      if (pthread_cond_timedwait(&r->ls_cv, &r->ls_mu, &deadline) != 0)
        break;
    if (r->gate > 0)
      tb__log(r->srv, 1,
              "run %s: %d lockstep subscriber(s) of before the restart did not come back within "
              "%d ms; training goes on without them",
              r->id, r->gate, r->gate_timeout_ms);
    r->gate = 0;
  }
  pthread_mutex_unlock(&r->ls_mu);
}
