/* The seed's plateau learning-rate callback (examples/plateau_lr.c) as a
 * remote client: halve the rate when val_loss has not improved for 2 epochs,
 * skipping epochs without validation data.
 *
 * Locally the callback runs inside fit() and changes the rate before the
 * next epoch starts. Here the same guarantee comes from a lockstep
 * subscription on epoch_end: the trainer waits at every epoch_end until this
 * program answers with `continue`, and the new rate travels in that answer,
 * so it takes effect before training goes on, exactly where the local
 * callback's would. The decision logic is the local one, line for line.
 *
 *   plateau_remote [--connect ADDR] [--token TOKEN] [--state-dir DIR] [--run ID]
 *                  [--reconnect SECONDS]
 *
 * ADDR and TOKEN default to TRAINBUS_ADDR and TRAINBUS_TOKEN, else to the
 * files of the daemon's state directory DIR (default TRAINBUS_STATE_DIR),
 * read again at every reconnect; RUN to the only run that has not ended. If
 * the daemon goes away (a restart with --resume), the callback reconnects for
 * up to SECONDS (default 60) and goes on where it was: the library resumes the
 * subscription after the last event seen, and answers again a lockstep event
 * the restarted daemon asks about again. Exits 0 when the run ends, 1 on an
 * error. */
#include "trainbus/client.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct plateau_s {
  double best;
  int wait;
} plateau_t;

/* The local on_epoch_end, with the model's rate read from the logs and the
 * change returned as an action instead of applied in place. */
static void on_epoch_end(plateau_t *p, int64_t epoch, const tb_event_t *ev,
                         tb_client_actions_t *act) {
  double val_loss = NAN, lr = NAN;
  for (int i = 0; i < ev->n_logs; i++) {
    if (strcmp(ev->log_names[i], "val_loss") == 0)
      val_loss = ev->log_values[i];
    else if (strcmp(ev->log_names[i], "lr") == 0)
      lr = ev->log_values[i];
  }
  if (isnan(val_loss)) {
    printf("epoch %lld: no validation data, skipped\n", (long long)epoch);
    return;
  }
  if (val_loss < p->best) {
    p->best = val_loss;
    p->wait = 0;
  } else if (++p->wait >= 2 && !isnan(lr)) {
    act->has_lr = true;
    act->lr = lr * 0.5;
    p->wait = 0;
    printf("epoch %lld: val_loss %.4f has not improved on %.4f for 2 epochs; lr -> %g\n",
           (long long)epoch, val_loss, p->best, act->lr);
    return;
  }
  printf("epoch %lld: val_loss %.4f (best %.4f, wait %d) lr %g\n", (long long)epoch, val_loss,
         p->best, p->wait, lr);
}

static const char *pick_run(tb_client_t *c, char *buf) {
  tb_run_info_t *runs;
  int n, found = 0;
  if (tb_client_runs(c, &runs, &n, NULL) != 0)
    return NULL;
  for (int i = 0; i < n; i++) {
    tb_run_state_t s = runs[i].state;
    if (s == TB_RUN_QUEUED || s == TB_RUN_RUNNING || s == TB_RUN_PAUSED) {
      if (found++ == 0)
        snprintf(buf, TB_PROTO_RUN_MAX, "%s", runs[i].id);
    }
  }
  free(runs);
  return found == 1 ? buf : NULL;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Connects again until the daemon is back or `seconds` have passed. */
static int reconnect(tb_client_t *c, double seconds, tb_client_err_t *err) {
  double give_up = now_s() + seconds;
  int delay_ms = 50;
  for (;;) {
    int rc = tb_client_reconnect(c, err);
    if (rc == 0 || tb_client_err_is_remote(rc) || now_s() >= give_up)
      return rc;
    struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    delay_ms = delay_ms < 500 ? delay_ms * 2 : 500;
  }
}

int main(int argc, char **argv) {
  const char *addr = getenv("TRAINBUS_ADDR"), *token = getenv("TRAINBUS_TOKEN"), *run = NULL;
  const char *dir = getenv("TRAINBUS_STATE_DIR");
  double reconnect_s = 60;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--connect") == 0)
      addr = argv[i + 1];
    else if (strcmp(argv[i], "--token") == 0)
      token = argv[i + 1];
    else if (strcmp(argv[i], "--state-dir") == 0)
      dir = argv[i + 1];
    else if (strcmp(argv[i], "--run") == 0)
      run = argv[i + 1];
    else if (strcmp(argv[i], "--reconnect") == 0)
      reconnect_s = atof(argv[i + 1]);
  }
  if ((addr == NULL || addr[0] == '\0') && (dir == NULL || dir[0] == '\0')) {
    fprintf(stderr, "usage: plateau_remote [--connect HOST:PORT] [--token TOKEN] "
                    "[--state-dir DIR] [--run ID] [--reconnect SECONDS]\n");
    return 2;
  }
  tb_client_opts_t o = {.addr = addr && addr[0] ? addr : NULL,
                        .token = token && token[0] ? token : NULL,
                        .state_dir = dir,
                        .role = TB_ROLE_CONTROLLER,
                        .name = "plateau_remote"};
  tb_client_t *c = NULL;
  tb_client_err_t err;
  char buf[TB_PROTO_RUN_MAX];
  if (tb_client_connect(&o, &c, &err) != 0) {
    fprintf(stderr, "plateau_remote: %s\n", err.msg);
    return 1;
  }
  if (run == NULL && (run = pick_run(c, buf)) == NULL) {
    fprintf(stderr, "plateau_remote: name the run with --run (none or several are active)\n");
    tb_client_free(c);
    return 1;
  }
  const char *runs[] = {run}, *events[] = {"epoch_end", "state"}, *lock[] = {"epoch_end"};
  tb_client_sub_opts_t so = {.runs = runs,
                             .n_runs = 1,
                             .events = events,
                             .n_events = 2,
                             .lockstep = lock,
                             .n_lockstep = 1,
                             .lockstep_timeout_ms = 30000};
  if (tb_client_subscribe(c, &so, NULL, NULL, &err) != 0) {
    fprintf(stderr, "plateau_remote: %s\n", err.msg);
    tb_client_free(c);
    return 1;
  }
  plateau_t state = {.best = INFINITY};
  tb_smsg_t *m = malloc(sizeof *m);
  int ex = 1;
  for (;;) {
    int rc = m != NULL ? tb_client_next(c, -1, m, &err) : TB_CLIENT_ENOMEM;
    if (rc != 0) {
      /* The daemon went away (a restart): come back where we were. */
      if (rc == TB_CLIENT_ENOMEM || tb_client_err_is_remote(rc) ||
          reconnect(c, reconnect_s, &err) != 0)
        break;
      continue;
    }
    const tb_event_t *ev = &m->event;
    bool end = false;
    if (m->kind == TB_SMSG_EVENT && strcmp(ev->name, "epoch_end") == 0) {
      tb_client_actions_t act = {0};
      on_epoch_end(&state, ev->epoch, ev, &act);
      fflush(stdout);
      /* A continue lost with the connection is asked for again after the
       * restart, and the library sends this same answer then. */
      if (ev->lockstep && tb_client_continue(c, ev->run, ev->seq, &act, &err) != 0 &&
          tb_client_err_is_remote(err.code))
        fprintf(stderr, "plateau_remote: continue: %s\n", err.msg);
    } else if (m->kind == TB_SMSG_EVENT && strcmp(ev->name, "state") == 0 && ev->state &&
               (strcmp(ev->state, "finished") == 0 || strcmp(ev->state, "stopped") == 0 ||
                strcmp(ev->state, "cancelled") == 0 || strcmp(ev->state, "failed") == 0)) {
      printf("run %s %s\n", ev->run, ev->state);
      end = true;
      ex = strcmp(ev->state, "failed") == 0;
    }
    tb_smsg_free(m);
    if (end)
      break;
  }
  if (ex && err.code)
    fprintf(stderr, "plateau_remote: %s\n", err.msg);
  free(m);
  tb_client_free(c);
  return ex;
}
