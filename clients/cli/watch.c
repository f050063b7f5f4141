/* `trainbus watch`: follows one run of a daemon until it ends.
 *
 * Three displays of the same event stream: on a terminal, Keras's progress
 * bar (one "Epoch E/N" header and one bar per epoch, redrawn in place as
 * train_batch_end events arrive, finished with the epoch's logs); when stdout
 * is not a terminal, one plain line per epoch; with --json, each event's
 * params object on its own line, for jq. Durations come from the events' own
 * timestamps, so a replayed epoch shows the time it took, not the time it
 * took to replay; they leave out what was not training: the time the run was
 * paused, and the time the daemon was away (a restart: while watch was
 * reconnecting). An epoch joined in the middle (a watch started after a
 * resume) gets its "Epoch E/N" header at its first batch, and its time per
 * step counts only the batches watched.
 *
 * The watch starts from the run's last seq as status reports it (or
 * --from-seq), so it cannot miss the run's end between looking and
 * subscribing. When the connection breaks (the daemon restarted), it
 * reconnects with tb_client_reconnect, which resumes the subscription at the
 * last seq seen + 1: the output continues with no gap and no duplicate. */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum { SHOW_BAR, SHOW_LINES, SHOW_JSON } show_t;

typedef struct watch_s {
  show_t show;
  const char *run;
  int64_t epochs;       /* from status; 0 if unknown */
  int64_t steps;        /* batches per epoch, learnt from the last complete epoch */
  int64_t seen;         /* train batches done in the current epoch (the last batch + 1) */
  int64_t header_epoch; /* the epoch whose "Epoch E/N" header was printed, -1 if none */
  /* Time spent training in the current epoch: finished segments (acc_us over
   * acc_steps batches) plus the open one, from seg_t0_us when seg_done
   * batches were done. A segment ends where training did not go on: a pause,
   * a restart of the daemon. seg_t0_us 0: no segment open yet. */
  int64_t acc_us, acc_steps;
  int64_t seg_t0_us, seg_done;
  int64_t last_us;      /* time of the last event of the epoch shown */
  bool gap;             /* the next batch starts a new segment (reconnected, resumed) */
  double last_draw;     /* monotonic seconds of the last redraw */
  int width_last;       /* length of the bar line on screen, 0 if none */
  bool explicit_events; /* --events given: print every delivered event */
  char **patterns;      /* the user's event patterns, pointing into patterns_buf */
  char *patterns_buf;
  int n_patterns;
  bool trained; /* train_end seen: a test_end now is the test set's evaluation */
} watch_t;

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A call of the watch's start (status, subscribe) that failed because the
 * connection broke (a daemon restarting just then): reconnects within the
 * --reconnect window, as the watch does once it is following the run, and
 * says whether to try the call again. Errors from the daemon, and running
 * out of time, are the caller's to report. */
static bool start_again(tb_client_t *c, int rc, const tb_client_err_t *err, const char *cmd,
                        double until) {
  if (rc == 0 || tb_client_err_is_remote(rc) || rc == TB_CLIENT_ENOMEM || rc == TB_CLIENT_EINVALID)
    return false;
  fprintf(stderr, "%s: %s; reconnecting\n", cmd, err->msg);
  int delay_ms = 100;
  while (mono_s() < until) {
    struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    delay_ms = delay_ms < 1000 ? delay_ms * 2 : 1000;
    tb_client_err_t e2;
    int r2 = tb_client_reconnect(c, &e2);
    if (r2 == 0)
      return true;
    if (tb_client_err_is_remote(r2))
      return false;
  }
  return false;
}

static bool final_state(const char *s) {
  return s != NULL && tb_run_state_is_final(tb_run_state_from_name(s));
}

static bool user_wants(const watch_t *w, const char *name) {
  if (w->n_patterns == 0)
    return true;
  for (int i = 0; i < w->n_patterns; i++)
    if (tb_proto_match(w->patterns[i], name))
      return true;
  return false;
}

/* Ends a bar line that is still being redrawn, before printing anything else. */
static void end_bar(watch_t *w) {
  if (w->width_last > 0) {
    fputc('\n', stdout);
    w->width_last = 0;
  }
}

/* Closes the open segment at the last event seen: what follows is not
 * training time until the next batch opens a new one. */
static void seg_close(watch_t *w) {
  if (w->seg_t0_us != 0 && w->last_us > w->seg_t0_us) {
    w->acc_us += w->last_us - w->seg_t0_us;
    w->acc_steps += w->seen - w->seg_done;
  }
  w->seg_t0_us = 0;
}

/* The epoch's training time and the batches it covers, up to event time t. */
static void epoch_time(const watch_t *w, int64_t t, double *el_s, int64_t *steps) {
  int64_t us = w->acc_us, n = w->acc_steps;
  if (w->seg_t0_us != 0 && t > w->seg_t0_us) {
    us += t - w->seg_t0_us;
    n += w->seen - w->seg_done;
  }
  *el_s = (double)us * 1e-6;
  *steps = n;
}

static int fmt_logs(char *line, int len, int cap, const tb_event_t *ev) {
  for (int i = 0; i < ev->n_logs && len < cap - 64; i++) {
    double v = ev->log_values[i];
    len += snprintf(line + len, (size_t)(cap - len),
                    (v != 0 && (fabs(v) > 1e4 || fabs(v) < 1e-3)) ? " - %s: %.4e" : " - %s: %.4f",
                    ev->log_names[i], v);
  }
  return len;
}

/* Keras's bar: "  17/100 [====>.....] - ETA: 3s - loss: 0.6931". */
static void draw(watch_t *w, const tb_event_t *ev, bool final) {
  char line[2048];
  int len = 0, bar = 30;
  int64_t seen = w->seen, target = w->steps, timed;
  double el;
  epoch_time(w, ev->time_us, &el, &timed);
  if (w->show == SHOW_LINES) {
    len += snprintf(line + len, sizeof line - (size_t)len, "Epoch %lld", (long long)ev->epoch + 1);
    if (w->epochs > 0)
      len += snprintf(line + len, sizeof line - (size_t)len, "/%lld", (long long)w->epochs);
    if (seen > 0)
      len += snprintf(line + len, sizeof line - (size_t)len, " - %lld steps", (long long)seen);
  } else if (target > 0) {
    int digits = snprintf(NULL, 0, "%lld", (long long)target);
    int64_t shown = seen < target ? seen : target;
    len += snprintf(line, sizeof line, "%*lld/%lld [", digits, (long long)shown, (long long)target);
    int done = (int)(bar * shown / target);
    for (int i = 0; i < bar; i++)
      line[len++] = i < done - (shown < target)         ? '='
                    : (i == done - 1 && shown < target) ? '>'
                                                        : '.';
    line[len++] = ']';
  } else {
    /* The first epoch watched: Keras shows an unknown target this way. */
    len += snprintf(line, sizeof line, "%7lld/Unknown", (long long)seen);
  }
  if (final || w->show == SHOW_LINES) {
    double per = timed > 0 ? el / (double)timed : 0;
    len += snprintf(line + len, sizeof line - (size_t)len, " - %.0fs", el);
    if (per >= 1)
      len += snprintf(line + len, sizeof line - (size_t)len, " %.0fs/step", per);
    else if (per >= 1e-3)
      len += snprintf(line + len, sizeof line - (size_t)len, " %.0fms/step", per * 1e3);
    else if (timed > 0)
      len += snprintf(line + len, sizeof line - (size_t)len, " %.0fus/step", per * 1e6);
  } else if (target > 0 && timed > 0) {
    double eta = el / (double)timed * (double)(target - seen);
    len += snprintf(line + len, sizeof line - (size_t)len, " - ETA: %.0fs", eta > 0 ? eta : 0);
  }
  len = fmt_logs(line, len, (int)sizeof line, ev);
  if (w->show == SHOW_BAR) {
    int pad = w->width_last > len ? w->width_last - len : 0;
    fprintf(stdout, "\r%s%*s", line, pad, "");
    w->width_last = len;
    if (final)
      end_bar(w);
  } else {
    fprintf(stdout, "%s\n", line);
  }
  fflush(stdout);
}

static void print_generic(watch_t *w, const tb_event_t *ev) {
  char line[2048];
  int len = snprintf(line, sizeof line, "%s", ev->name);
  if (ev->epoch >= 0)
    len += snprintf(line + len, sizeof line - (size_t)len, " epoch %lld", (long long)ev->epoch + 1);
  if (ev->batch >= 0)
    len += snprintf(line + len, sizeof line - (size_t)len, " batch %lld", (long long)ev->batch);
  len = fmt_logs(line, len, (int)sizeof line, ev);
  end_bar(w);
  printf("%s\n", line);
  fflush(stdout);
}

static void print_json_event(const tb_event_t *ev) {
  tb_buf_t b;
  tb_buf_init(&b);
  /* Re-encoding gives back the numbers exactly (the encoder round-trips). */
  if (tb_msg_event_params(&b, ev) == 0)
    printf("%.*s\n", (int)b.len, b.data);
  tb_buf_free(&b);
  fflush(stdout);
}

/* Keras's "Epoch E/N" line, once per epoch. */
static void header(watch_t *w, int64_t epoch) {
  end_bar(w);
  if (w->epochs > 0)
    printf("Epoch %lld/%lld\n", (long long)epoch + 1, (long long)w->epochs);
  else
    printf("Epoch %lld\n", (long long)epoch + 1);
  fflush(stdout);
  w->header_epoch = epoch;
}

/* Shows one event; returns true once the run has reached a final state. */
void tb_cli_print_state(const tb_event_t *ev) {
  printf("run %s: %s -> %s", ev->run, ev->prev_state ? ev->prev_state : "?",
         ev->state ? ev->state : "?");
  if (ev->reason)
    printf(" (%s)", ev->reason);
  printf("\n");
  fflush(stdout);
}

void tb_cli_print_control(const tb_event_t *ev) {
  printf("run %s: %s", ev->run, ev->action ? ev->action : "control");
  if (ev->has_value) {
    if (ev->has_old)
      printf(" %.6g ->", ev->old_value);
    printf(" %.6g", ev->value);
  }
  if (ev->epoch >= 0)
    printf(" at epoch %lld", (long long)ev->epoch + 1);
  if (ev->batch >= 0)
    printf(", batch %lld", (long long)ev->batch);
  if (ev->by)
    printf(" by %s", ev->by);
  if (ev->reason)
    printf(" (%s)", ev->reason);
  printf("\n");
  fflush(stdout);
}

static bool show_event(watch_t *w, const tb_event_t *ev) {
  const char *n = ev->name;
  bool end = strcmp(n, "state") == 0 && final_state(ev->state);
  if (w->show == SHOW_JSON) {
    if (user_wants(w, n))
      print_json_event(ev);
    return end;
  }
  if (strcmp(n, "epoch_begin") == 0) {
    w->seen = 0;
    w->acc_us = w->acc_steps = 0;
    w->seg_t0_us = ev->time_us;
    w->seg_done = 0;
    w->last_us = ev->time_us;
    w->gap = false;
    if (w->show == SHOW_BAR)
      header(w, ev->epoch);
  } else if (strcmp(n, "train_batch_end") == 0) {
    if (w->gap || w->seg_t0_us == 0) {
      /* The first batch watched in this epoch, or the first after a pause
       * or a restart: its own duration is unknown, the segment starts at
       * its end. */
      seg_close(w);
      w->seg_t0_us = ev->time_us;
      w->seg_done = ev->batch + 1;
      w->gap = false;
    }
    w->seen = ev->batch + 1;
    w->last_us = ev->time_us;
    if (w->show == SHOW_BAR && w->header_epoch != ev->epoch)
      header(w, ev->epoch); /* joined mid-epoch: Keras's header all the same */
    if (w->show == SHOW_BAR && !w->explicit_events) {
      double now = mono_s();
      if (now - w->last_draw >= 0.05 || (w->steps > 0 && w->seen >= w->steps)) {
        w->last_draw = now;
        draw(w, ev, false);
      }
    } else if (w->explicit_events) {
      print_generic(w, ev);
    }
  } else if (strcmp(n, "epoch_end") == 0) {
    if (w->seen > 0)
      w->steps = w->seen;
    if (w->gap)
      seg_close(w); /* the gap came after the last batch: its time is not the epoch's */
    draw(w, ev, true);
    w->seg_t0_us = 0;
    w->acc_us = w->acc_steps = 0;
    w->seen = 0;
  } else if (strcmp(n, "state") == 0) {
    /* A pause is not training time: the segment ends with it, and the first
     * batch after the resume starts another. */
    if (ev->state != NULL && strcmp(ev->state, "paused") == 0) {
      seg_close(w);
      w->gap = true;
    }
    end_bar(w);
    tb_cli_print_state(ev);
  } else if (strcmp(n, "control") == 0) {
    end_bar(w);
    tb_cli_print_control(ev);
  } else if (strcmp(n, "train_end") == 0 && !w->explicit_events) {
    w->trained = true;
  } else if (strcmp(n, "test_end") == 0 && w->trained && !w->explicit_events) {
    /* The test set, evaluated after training (fit's validation is not
     * shown, as in Keras). */
    end_bar(w);
    printf("test:");
    for (int i = 0; i < ev->n_logs; i++)
      printf(" %s %.4f", ev->log_names[i], ev->log_values[i]);
    printf("\n");
    fflush(stdout);
  } else if (w->explicit_events) {
    print_generic(w, ev);
  }
  return end;
}

static int split_patterns(const char *arg, char ***out, int *n, char **buf) {
  char *copy = strdup(arg);
  if (copy == NULL)
    return -1;
  int cap = 1;
  for (const char *p = arg; *p; p++)
    cap += *p == ',';
  char **v = calloc((size_t)cap + 1, sizeof *v);
  if (v == NULL) {
    free(copy);
    return -1;
  }
  int k = 0;
  for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
    if (*t)
      v[k++] = t;
  *out = v;
  *n = k;
  *buf = copy;
  return 0;
}

static void usage(void) {
  printf("usage: trainbus watch [--run ID] [--json | --plain] [--events PATTERNS] [--every N]\n"
         "                      [--from-seq N] [options]\n"
         "\n"
         "Follows a run until it ends: on a terminal, a Keras-style progress bar per epoch;\n"
         "piped, one line per epoch; with --json, every event's params object on its own\n"
         "line (for jq). State changes and applied control actions (set_lr, ...) are shown\n"
         "as they happen. If the daemon goes away (a restart), watch reconnects and\n"
         "resumes after the last event it showed, with no gap and no duplicate.\n"
         "Exits 0 when the run reaches a final state (finished, stopped, cancelled), 1 if\n"
         "it failed (or was lost: its trainer went away and did not come back).\n"
         "\n"
         "options:\n"
         "  --run ID             the run (default: the only run that has not ended)\n"
         "  --json               one JSON object per event on stdout\n"
         "  --plain              plain lines even on a terminal\n"
         "  --events PATTERNS    comma-separated event patterns ('*' globs), e.g.\n"
         "                       'epoch_end,state' or '*_end'; every matching event is shown\n"
         "  --every N            only every N-th batch event (batch 0, N, 2N, ...)\n"
         "  --from-seq N         start from event seq N of the run's retained history\n"
         "                       (default: the next event; 1 replays the whole run)\n"
         "  --reconnect SECONDS  how long to keep trying after the connection breaks\n"
         "                       (default 60; 0 gives up at once, exit 3)\n"
         "  --nats URL, --mqtt URL  through a broker a trainbus-bridge publishes into\n"
         "                       (trainbus watch --nats URL --help)\n"
         "%s",
         tb_cli_conn_help);
}

int tb_cli_watch(int argc, char **argv) {
  tb_cli_conn_t o = {.cmd = "trainbus watch"};
  watch_t w = {.show = isatty(STDOUT_FILENO) ? SHOW_BAR : SHOW_LINES, .header_epoch = -1};
  int64_t every = 1, from_seq = -1;
  double reconnect_s = 60;
  char *events_arg = NULL;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--nats") == 0 || strcmp(argv[i], "--mqtt") == 0)
      return tb_cli_watch_broker(argc, argv);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage();
      return TB_EXIT_OK;
    }
  }
  for (int i = 1; i < argc; i++) {
    int k = tb_cli_conn_opt(&o, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k)
      continue;
    const char *a = argv[i];
    bool has_val = i + 1 < argc;
    if (strcmp(a, "--json") == 0) {
      w.show = SHOW_JSON;
    } else if (strcmp(a, "--plain") == 0) {
      if (w.show != SHOW_JSON)
        w.show = SHOW_LINES;
    } else if (strcmp(a, "--events") == 0 && has_val) {
      events_arg = argv[++i];
    } else if ((strcmp(a, "--every") == 0 || strcmp(a, "--from-seq") == 0) && has_val) {
      char *end;
      long long v = strtoll(argv[++i], &end, 10);
      long long lo = strcmp(a, "--every") == 0 ? 1 : 0;
      long long hi = strcmp(a, "--every") == 0 ? TB_PROTO_EVERY_MAX : TB_PROTO_INT_MAX;
      if (*end != '\0' || end == argv[i] || v < lo || v > hi) {
        fprintf(stderr, "%s: %s: expected an integer in [%lld, %lld], got '%s'\n", o.cmd, a, lo, hi,
                argv[i]);
        return TB_EXIT_USAGE;
      }
      if (strcmp(a, "--every") == 0)
        every = v;
      else
        from_seq = v;
    } else if (strcmp(a, "--reconnect") == 0 && has_val) {
      char *end;
      reconnect_s = strtod(argv[++i], &end);
      if (*end != '\0' || end == argv[i] || !(reconnect_s >= 0 && reconnect_s <= 86400)) {
        fprintf(stderr, "%s: --reconnect: expected seconds in [0, 86400], got '%s'\n", o.cmd,
                argv[i]);
        return TB_EXIT_USAGE;
      }
    } else {
      fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", o.cmd, a);
      return TB_EXIT_USAGE;
    }
  }
  if (events_arg != NULL) {
    if (split_patterns(events_arg, &w.patterns, &w.n_patterns, &w.patterns_buf) != 0 ||
        w.n_patterns == 0 || w.n_patterns >= TB_PROTO_SUB_EVENTS_MAX) {
      fprintf(stderr, "%s: --events: expected 1 to %d comma-separated patterns\n", o.cmd,
              TB_PROTO_SUB_EVENTS_MAX - 1);
      return TB_EXIT_USAGE;
    }
    w.explicit_events = true;
  }

  tb_client_t *c = NULL;
  int ex = tb_cli_open(&o, TB_ROLE_OBSERVER, &c);
  if (ex != TB_EXIT_OK)
    goto out;
  char run[TB_PROTO_RUN_MAX];
  if ((ex = tb_cli_pick_run(&o, c, true, run)) != TB_EXIT_OK)
    goto out;
  w.run = run;
  tb_run_info_t info;
  tb_client_err_t err;
  double start_until = mono_s() + reconnect_s;
  int src;
  while ((src = tb_client_status(c, run, &info, &err)) != 0 &&
         start_again(c, src, &err, o.cmd, start_until))
    ;
  if (src != 0) {
    ex = tb_cli_fail(o.cmd, &err);
    goto out;
  }
  w.epochs = info.epochs;
  if (from_seq < 0 && final_state(tb_run_state_name(info.state))) {
    if (w.show != SHOW_JSON)
      printf("run %s: %s\n", run, tb_run_state_name(info.state));
    ex = info.state == TB_RUN_FAILED || info.state == TB_RUN_LOST ? TB_EXIT_FAILED : TB_EXIT_OK;
    goto out;
  }

  /* Subscribe to what the display needs, plus state events so the watch
   * knows when the run ends; --events narrows what is printed, not that. */
  const char *evs[TB_PROTO_SUB_EVENTS_MAX];
  int n_evs = 0;
  /* Validation's test_end inside fit() is not shown, as in Keras; the test
   * set's after train_end is. */
  static const char *const lines_default[] = {"epoch_begin", "epoch_end", "state",
                                              "control",     "train_end", "test_end"};
  if (w.explicit_events) {
    bool has_state = false;
    for (int i = 0; i < w.n_patterns; i++) {
      evs[n_evs++] = w.patterns[i];
      has_state = has_state || tb_proto_match(w.patterns[i], "state");
    }
    if (!has_state)
      evs[n_evs++] = "state";
  } else if (w.show != SHOW_JSON) {
    for (size_t i = 0; i < sizeof lines_default / sizeof lines_default[0]; i++)
      evs[n_evs++] = lines_default[i];
    if (w.show == SHOW_BAR)
      evs[n_evs++] = "train_batch_end";
  }
  const char *runs[1] = {run};
  tb_client_sub_opts_t so = {.runs = runs,
                             .n_runs = 1,
                             .events = evs,
                             .n_events = n_evs,
                             .every = every,
                             .has_since_seq = true,
                             .since_seq = from_seq >= 0 ? from_seq : info.last_seq + 1};
  while ((src = tb_client_subscribe(c, &so, NULL, NULL, &err)) != 0 &&
         start_again(c, src, &err, o.cmd, start_until))
    ;
  if (src != 0) {
    ex = tb_cli_fail(o.cmd, &err);
    goto out;
  }

  tb_smsg_t *m = malloc(sizeof *m);
  if (m == NULL) {
    fprintf(stderr, "%s: out of memory\n", o.cmd);
    ex = TB_EXIT_FAILED;
    goto out;
  }
  for (;;) {
    int rc = tb_client_next(c, -1, m, &err);
    if (rc == 0) {
      bool end = false, failed = false;
      if (m->kind == TB_SMSG_EVENT) {
        end = show_event(&w, &m->event);
        failed =
            end && (strcmp(m->event.state, "failed") == 0 || strcmp(m->event.state, "lost") == 0);
      } else if (m->kind == TB_SMSG_DROPPED) {
        end_bar(&w);
        fprintf(stderr, "%s: the daemon dropped %lld batch events of %s (seq %lld..%lld)\n", o.cmd,
                (long long)m->dropped.count, m->dropped.run, (long long)m->dropped.from_seq,
                (long long)m->dropped.to_seq);
      }
      tb_smsg_free(m);
      if (end) {
        ex = failed ? TB_EXIT_FAILED : TB_EXIT_OK;
        break;
      }
      continue;
    }
    if (tb_client_err_is_remote(rc) || rc == TB_CLIENT_ENOMEM) {
      ex = tb_cli_fail(o.cmd, &err);
      break;
    }
    /* The connection broke: keep trying to get back in, resuming after the
     * last event shown. */
    end_bar(&w);
    double give_up = mono_s() + reconnect_s;
    fprintf(stderr, "%s: %s; reconnecting\n", o.cmd, err.msg);
    int delay_ms = 100;
    for (;;) {
      if (mono_s() >= give_up) {
        fprintf(stderr, "%s: gave up reconnecting after %.0fs: %s\n", o.cmd, reconnect_s, err.msg);
        ex = TB_EXIT_CONNECT;
        break;
      }
      rc = tb_client_reconnect(c, &err);
      if (rc == 0) {
        /* The daemon was away: that time is not the epoch's. */
        seg_close(&w);
        w.gap = true;
        fprintf(stderr, "%s: reconnected; resuming %s at seq %lld\n", o.cmd, run,
                (long long)tb_client_last_seq(c, run) + 1);
        ex = TB_EXIT_OK;
        break;
      }
      if (tb_client_err_is_remote(rc)) {
        ex = tb_cli_fail(o.cmd, &err);
        break;
      }
      struct timespec ts = {.tv_sec = delay_ms / 1000, .tv_nsec = (delay_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
      delay_ms = delay_ms < 1000 ? delay_ms * 2 : 1000;
    }
    if (ex != TB_EXIT_OK)
      break;
  }
  free(m);
out:
  free(w.patterns);
  free(w.patterns_buf);
  tb_client_free(c);
  return ex;
}
