/* `trainbus watch --nats URL` (and --mqtt URL): follows a run through a
 * broker that a trainbus-bridge publishes into, instead of the daemon.
 *
 * The events come from tb_follow (bridge/): on NATS, a JetStream ordered
 * consumer that replays the run's stored events from --from-seq and then
 * goes on live with no gap and no duplicate; on MQTT, live events only. They
 * are the same event objects the daemon sends, so the display is the same
 * kind as watch's: one line per epoch and per state or control change, or
 * --json, each event's params on its own line. */
#include "cli.h"

#include "trainbus/bridge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct bwatch_s {
  bool json;
  int64_t epochs;
  bool failed;
} bwatch_t;

static void print_logs(const tb_event_t *ev) {
  for (int i = 0; i < ev->n_logs; i++) {
    double v = ev->log_values[i];
    printf((v != 0 && (fabs(v) > 1e4 || fabs(v) < 1e-3)) ? " - %s: %.4e" : " - %s: %.4f",
           ev->log_names[i], v);
  }
}

static bool on_event(void *user, const tb_event_t *ev) {
  bwatch_t *w = user;
  if (strcmp(ev->name, "state") == 0 && ev->state != NULL && strcmp(ev->state, "failed") == 0)
    w->failed = true;
  if (w->json) {
    tb_buf_t b;
    tb_buf_init(&b);
    if (tb_msg_event_params(&b, ev) == 0)
      printf("%.*s\n", (int)b.len, b.data);
    tb_buf_free(&b);
  } else if (strcmp(ev->name, "epoch_end") == 0) {
    printf("Epoch %lld", (long long)ev->epoch + 1);
    if (w->epochs > 0)
      printf("/%lld", (long long)w->epochs);
    print_logs(ev);
    printf("\n");
  } else if (strcmp(ev->name, "state") == 0) {
    tb_cli_print_state(ev);
  } else if (strcmp(ev->name, "control") == 0) {
    tb_cli_print_control(ev);
  }
  fflush(stdout);
  return true;
}

static void usage(void) {
  printf("usage: trainbus watch --nats URL | --mqtt URL [--ns NS] [--run ID] [--json]\n"
         "                      [--from-seq N] [--events PATTERNS] [broker options]\n"
         "\n"
         "Follows a run through the broker a trainbus-bridge publishes into (docs/BRIDGE.md):\n"
         "on NATS, the run's stored events from --from-seq (default 1: all of them) and\n"
         "then live, with no gap and no duplicate; on MQTT, live events only. One line per\n"
         "epoch and per state or control change, or --json: each event's params object.\n"
         "Exits 0 when the run reaches a final state, 1 if it failed.\n"
         "\n"
         "options:\n"
         "  --nats URL           nats://HOST:PORT or tls://HOST:PORT (USER:PASSWORD@ or TOKEN@)\n"
         "  --mqtt URL           mqtt://HOST:PORT or mqtts://HOST:PORT (USER:PASSWORD@)\n"
         "  --ns NS              the bridge's namespace (default \"default\")\n"
         "  --run ID             the run (NATS default: the only run that has not ended, from\n"
         "                       the bridge's run list; required on MQTT)\n"
         "  --json               one JSON object per event on stdout\n"
         "  --from-seq N         NATS: start at the run's event seq N (0: only new events)\n"
         "  --events PATTERNS    comma-separated event patterns ('*' globs) to show\n"
         "  --user U, --password P, --broker-token T, --creds FILE, --nkey-seed FILE,\n"
         "  --tls-ca FILE, --tls-cert FILE, --tls-key FILE\n"
         "                       the broker login and TLS, as trainbus-bridge takes them\n"
         "  --timeout SECONDS    give up after this long without a message (default: never)\n");
}

int tb_cli_watch_broker(int argc, char **argv) {
  const char *cmd = "trainbus watch";
  tb_follow_opts_t o = {.since_seq = 1};
  bwatch_t w = {0};
  const char *events_arg = NULL;
  double timeout_s = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage();
      return TB_EXIT_OK;
    }
    if (strcmp(a, "--json") == 0) {
      w.json = true;
      continue;
    }
    if (strcmp(a, "--plain") == 0)
      continue;
    if (i + 1 >= argc) {
      fprintf(stderr, "%s: unexpected argument '%s' or missing value (see --nats --help)\n", cmd,
              a);
      return TB_EXIT_USAGE;
    }
    const char *v = argv[++i];
    if (strcmp(a, "--nats") == 0 || strcmp(a, "--mqtt") == 0) {
      tb_broker_kind_t want = a[2] == 'n' ? TB_BROKER_NATS : TB_BROKER_MQTT;
      if (tb_broker_kind(v) != want) {
        fprintf(stderr, "%s: %s: expected a %s URL, got '%s'\n", cmd, a,
                want == TB_BROKER_NATS ? "nats:// or tls://" : "mqtt:// or mqtts://", v);
        return TB_EXIT_USAGE;
      }
      o.broker.url = v;
    } else if (strcmp(a, "--ns") == 0) {
      o.ns = v;
    } else if (strcmp(a, "--run") == 0) {
      o.run = v;
    } else if (strcmp(a, "--events") == 0) {
      events_arg = v;
    } else if (strcmp(a, "--from-seq") == 0) {
      char *end;
      long long n = strtoll(v, &end, 10);
      if (*end != '\0' || end == v || n < 0 || n > TB_PROTO_INT_MAX) {
        fprintf(stderr, "%s: --from-seq: expected an integer >= 0, got '%s'\n", cmd, v);
        return TB_EXIT_USAGE;
      }
      o.since_seq = n;
    } else if (strcmp(a, "--timeout") == 0) {
      char *end;
      timeout_s = strtod(v, &end);
      if (*end != '\0' || end == v || !(timeout_s > 0 && timeout_s <= 86400)) {
        fprintf(stderr, "%s: --timeout: expected seconds in (0, 86400], got '%s'\n", cmd, v);
        return TB_EXIT_USAGE;
      }
    } else if (strcmp(a, "--user") == 0) {
      o.broker.user = v;
    } else if (strcmp(a, "--password") == 0) {
      o.broker.password = v;
    } else if (strcmp(a, "--broker-token") == 0) {
      o.broker.token = v;
    } else if (strcmp(a, "--creds") == 0) {
      o.broker.creds_file = v;
    } else if (strcmp(a, "--nkey-seed") == 0) {
      o.broker.nkey_seed_file = v;
    } else if (strcmp(a, "--tls-ca") == 0) {
      o.broker.tls_ca = v;
    } else if (strcmp(a, "--tls-cert") == 0) {
      o.broker.tls_cert = v;
    } else if (strcmp(a, "--tls-key") == 0) {
      o.broker.tls_key = v;
    } else {
      fprintf(stderr, "%s: unexpected argument '%s' with a broker (see --nats --help)\n", cmd, a);
      return TB_EXIT_USAGE;
    }
  }
  if (o.broker.url == NULL) {
    usage();
    return TB_EXIT_USAGE;
  }

  /* Event patterns, split in place on commas. */
  char *patterns = events_arg ? strdup(events_arg) : NULL;
  const char *evs[TB_PROTO_SUB_EVENTS_MAX];
  if (patterns != NULL) {
    for (char *save = NULL, *t = strtok_r(patterns, ",", &save); t && o.n_events < 32;
         t = strtok_r(NULL, ",", &save))
      evs[o.n_events++] = t;
    o.events = evs;
  }

  tb_client_err_t err;
  char run[TB_PROTO_RUN_MAX] = "";
  int ex = TB_EXIT_OK;
  if (o.run == NULL && tb_broker_kind(o.broker.url) == TB_BROKER_MQTT) {
    fprintf(stderr, "%s: --mqtt needs --run (MQTT keeps no run list to pick from)\n", cmd);
    free(patterns);
    return TB_EXIT_USAGE;
  }
  if (tb_broker_kind(o.broker.url) == TB_BROKER_NATS) {
    /* The run list, for the default run and the number of epochs. */
    tb_run_info_t *runs = NULL;
    int n = 0;
    int rc = tb_follow_runs(&o.broker, o.ns, &runs, &n, &err);
    if (rc != 0 && o.run == NULL) {
      fprintf(stderr, "%s: %s\n", cmd, err.msg);
      free(patterns);
      return rc == TB_PROTO_ENO_SUCH_RUN || rc == TB_BRIDGE_ECONFIG ? TB_EXIT_FAILED
                                                                    : TB_EXIT_CONNECT;
    }
    int active = 0;
    for (int i = 0; i < n; i++) {
      bool final = runs[i].state == TB_RUN_FINISHED || runs[i].state == TB_RUN_STOPPED ||
                   runs[i].state == TB_RUN_CANCELLED || runs[i].state == TB_RUN_FAILED;
      if (o.run == NULL && !final && active++ == 0)
        snprintf(run, sizeof run, "%s", runs[i].id);
    }
    if (o.run == NULL && active != 1) {
      if (active == 0 && n > 0)
        snprintf(run, sizeof run, "%s", runs[n - 1].id);
      else if (active > 1) {
        fprintf(stderr, "%s: %d runs have not ended; pick one with --run\n", cmd, active);
        free(runs);
        free(patterns);
        return TB_EXIT_USAGE;
      }
    }
    for (int i = 0; i < n; i++)
      if (strcmp(runs[i].id, o.run ? o.run : run) == 0)
        w.epochs = runs[i].epochs;
    free(runs);
    if (o.run == NULL && run[0] == '\0') {
      fprintf(stderr, "%s: the broker's run list is empty; give --run\n", cmd);
      free(patterns);
      return TB_EXIT_FAILED;
    }
    if (o.run == NULL)
      o.run = run;
  }
  int rc = tb_follow(&o, on_event, &w, timeout_s > 0 ? (int)(timeout_s * 1000) : -1, &err);
  if (rc != 0) {
    fprintf(stderr, "%s: %s\n", cmd, err.msg);
    ex = rc == TB_CLIENT_ETIMEOUT || tb_client_err_is_remote(rc) ? TB_EXIT_FAILED : TB_EXIT_CONNECT;
  } else if (w.failed) {
    ex = TB_EXIT_FAILED;
  }
  free(patterns);
  return ex;
}
