/* trainbusd: the daemon. Parses flags, builds the server, queues the job it
 * was given (the built-in demo when none is), and runs the loop until SIGINT
 * or SIGTERM, which stop it cleanly (runs checkpoint, clients get bye). */
#include "internal.h"
#include "trainbus/version.h"
#include "supervise.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: trainbusd [options]\n"
          "\n"
          "Runs training jobs and publishes every event (Keras's hooks, with their logs) to\n"
          "remote clients over JSON-RPC (docs/PROTOCOL.md); clients steer the runs back.\n"
          "With no options: trains the built-in demo job on 127.0.0.1:7787 (an MLP on\n"
          "Fashion-MNIST from " TB_DEMO_DATA_DIR ", or $TRAINBUS_DEMO_DATA;\n"
          "the spirals when it cannot be read).\n"
          "\n"
          "options:\n"
          "  --listen ADDR        HOST:PORT (port 0: any free port) or a Unix socket path;\n"
          "                       repeatable (default 127.0.0.1:7787). A non-loopback address\n"
          "                       needs --token or TRAINBUS_TOKEN, and TLS (or\n"
          "                       --allow-plaintext)\n"
          "  --http HOST:PORT     serve the live dashboard (and the protocol over WebSocket)\n"
          "                       there, e.g. 127.0.0.1:8080 (docs/DASHBOARD.md); HTTPS and\n"
          "                       WSS with --tls-cert\n"
          "  --tls-cert FILE      TLS on every TCP listener and on --http: the certificate\n"
          "                       (PEM, with its chain); clients connect with tls://HOST:PORT.\n"
          "                       Unix socket listeners stay plaintext (docs/PROTOCOL.md, TLS)\n"
          "  --tls-key FILE       the certificate's private key (PEM)\n"
          "  --tls-client-ca FILE  also require a client certificate signed by a CA in FILE\n"
          "                       (PEM) on TLS listeners and the dashboard\n"
          "  --allow-plaintext    allow a non-loopback listener without TLS (a trusted\n"
          "                       network, or TLS ended in front of the daemon)\n"
          "  --job FILE           run this job (docs/JOB.md) instead of the demo; it may read\n"
          "                       and write any path\n"
          "  --no-job             start idle; runs come from `trainbus submit`\n"
          "  --data-dir DIR       jobs submitted over the network may read and write files\n"
          "                       under DIR only (repeatable; their relative paths resolve\n"
          "                       against the first). Without it they may only use the\n"
          "                       built-in generators (seed, spirals, blobs)\n"
          "  --max-job-memory SIZE  refuse a job (submitted or --job) whose estimated memory\n"
          "                       at its peak is over SIZE (bytes, or with K, M, G, T: powers\n"
          "                       of 1024; default: half of this machine's memory)\n"
          "  --retain-bytes SIZE  past events kept in memory for replay and history, all\n"
          "                       runs together (bytes, or with K, M, G, T; default: 1G, or\n"
          "                       an eighth of this machine's memory when less). Over it,\n"
          "                       the oldest events of ended runs go first; clients read\n"
          "                       them from the runs' logs in the state directory\n"
          "                       (docs/PROTOCOL.md, Retention)\n"
          "  --max-ranks N        a job with \"distributed\": {\"ranks\": N} is trained by\n"
          "                       mpirun, which the daemon launches and supervises; N at\n"
          "                       most this (default: this machine's processors; 0: no\n"
          "                       distributed jobs). docs/DISTRIBUTED.md\n"
          "  --mpirun PATH        the mpirun to launch (default: mpirun on PATH)\n"
          "  --mpirun-arg ARG     one more argument for mpirun, before -n (repeatable), e.g.\n"
          "                       --mpirun-arg --oversubscribe\n"
          "  --trainbus PATH      the trainbus CLI the ranks run (default: beside trainbusd,\n"
          "                       else on PATH)\n"
          "  --epochs N           override the first job's epochs\n"
          "  --state-dir DIR      keep event logs, checkpoints, the tokens and the address\n"
          "                       here (default $TRAINBUS_STATE_DIR, else $HOME/.trainbus)\n"
          "  --no-state           keep nothing on disk (no checkpoints, no replay after restart)\n"
          "  --resume             continue the runs found in the state directory that had not\n"
          "                       ended, from their latest checkpoints: clients see no gap, no\n"
          "                       repeated event, and the same status, history and tokens\n"
          "  --token TOKEN        the control token: every role, control included (default\n"
          "                       $TRAINBUS_TOKEN, else the one in STATE_DIR/token, generated\n"
          "                       there (mode 0600) on the first start and kept across\n"
          "                       restarts)\n"
          "  --observer-token TOKEN  the read-only token: watch, status, runs, history; every\n"
          "                       control method answers forbidden (default\n"
          "                       $TRAINBUS_OBSERVER_TOKEN, else STATE_DIR/observer_token, made\n"
          "                       and kept as the control token)\n"
          "  --trainer-token TOKEN  the token of the trainer role: training loops in other\n"
          "                       processes that publish their own runs (the control token\n"
          "                       serves too) (default $TRAINBUS_TRAINER_TOKEN, else\n"
          "                       STATE_DIR/trainer_token, made and kept as the others)\n"
          "  --max-clients N      connections at once (default 16384)\n"
          "  --max-line BYTES     longest request line (default 65536)\n"
          "  --auth-timeout-ms N  time a client has to authenticate (default 5000)\n"
          "  --flush-interval-ms N  delay draining the trainers' events to every N ms while\n"
          "                       they stream in (default 0: writes coalesce by themselves)\n"
          "  --idle-timeout-ms N  disconnect clients with no subscription that send nothing\n"
          "                       for N ms (default: never)\n"
          "  --trainer-timeout-ms N  a run published by a trainer (trainbus train --connect,\n"
          "                       a Python Publisher) whose trainer disconnected stays\n"
          "                       `detached` N ms for it to attach again, then is `lost`\n"
          "                       (default 60000)\n"
          "  --bridge URL         run trainbus-bridge URL beside the daemon and restart it when\n"
          "                       it exits: the runs on a NATS or MQTT broker (docs/BRIDGE.md)\n"
          "  --bridge-arg ARG     one more argument for trainbus-bridge (repeatable), e.g.\n"
          "                       --bridge-arg --ns=acme\n"
          "  --quiet, --verbose   log errors only, or debug detail (default: info)\n"
          "  -h, --help           this help\n"
          "  --version            the version\n"
          "\n"
          "Roles by token: observers may connect without a token on loopback and Unix\n"
          "listeners, elsewhere with the observer (or the control) token; controlling\n"
          "(set_lr, stop, pause, resume, checkpoint, submit, cancel, lockstep) always needs\n"
          "the control token. SIGINT/SIGTERM: runs stop at a batch boundary and checkpoint,\n"
          "logs are flushed, clients get bye, exit 0.\n"
          "\n"
          "exit codes: 0 stopped by SIGINT or SIGTERM (or --help, --version),\n"
          "            1 cannot start (an address in use, an unusable state directory) or the\n"
          "              event loop failed,\n"
          "            2 bad arguments, or a --job that cannot be read, is invalid or is over\n"
          "              the memory budget\n");
}

/* "4G", "512M", "1048576": bytes, with an optional binary suffix. 0 when it
 * is not a positive size. */
static uint64_t parse_size(const char *s) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno != 0 || !(v > 0))
    return 0;
  static const char units[] = "KMGT";
  const char *u = *end != '\0' ? strchr(units, end[0] & ~0x20) : NULL;
  if (*end != '\0' &&
      (u == NULL || (end[1] != '\0' && strcmp(end + 1, "iB") != 0 && strcmp(end + 1, "B") != 0)))
    return 0;
  for (const char *k = units; u != NULL && k <= u; k++)
    v *= 1024.0;
  return v >= 1.8e19 ? 0 : (uint64_t)v;
}

static uv_signal_t sigint_h, sigterm_h;
static volatile sig_atomic_t early_signal;

static void on_early_signal(int signum) {
  early_signal = signum;
}
static tb__supervise_t bridge;

static void on_signal(uv_signal_t *h, int signum) {
  tb_server_t *s = h->data;
  tb__log(s, 1, "%s received", signum == SIGINT ? "SIGINT" : "SIGTERM");
  uv_close((uv_handle_t *)&sigint_h, NULL);
  uv_close((uv_handle_t *)&sigterm_h, NULL);
  tb__supervise_stop(&bridge);
  tb_server_stop(s);
}

/* Enough descriptors for the connection limit, within the hard limit. */
static void raise_nofile(int want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  rlim_t need = (rlim_t)want + 64;
  if (rl.rlim_cur < need) {
    rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return NULL;
  char *buf = NULL;
  size_t cap = 0;
  ssize_t n = getdelim(&buf, &cap, '\0', f);
  fclose(f);
  if (n < 0) {
    free(buf);
    return NULL;
  }
  *len = (size_t)n;
  return buf;
}

int main(int argc, char **argv) {
  /* A SIGINT or SIGTERM while the daemon is starting is noted here and
   * acted on once the loop's handlers are in place: a clean stop too, not the
   * default action's death. (A handler, not a blocked mask: the signal may
   * land on a thread a library started before main.) */
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_early_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  const char *job_path = NULL, *state_dir = getenv("TRAINBUS_STATE_DIR");
  const char *token = getenv("TRAINBUS_TOKEN");
  o.observer_token = getenv("TRAINBUS_OBSERVER_TOKEN");
  o.trainer_token = getenv("TRAINBUS_TRAINER_TOKEN");
  bool no_job = false, no_state = false;
  long epochs = 0;
  const char *bridge_url = NULL, *bridge_args[32];
  int n_bridge_args = 0;
  char default_state[1024];
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool v = i + 1 < argc;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--version") == 0) {
      printf("trainbusd %s\n", TB_VERSION);
      return 0;
    } else if (strcmp(a, "--listen") == 0 && v) {
      if (o.n_listen == TB_SERVER_MAX_LISTEN) {
        fprintf(stderr, "trainbusd: at most %d --listen\n", TB_SERVER_MAX_LISTEN);
        return 2;
      }
      o.listen[o.n_listen++] = argv[++i];
    } else if (strcmp(a, "--flush-interval-ms") == 0 && v) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end != '\0' || end == argv[i] || n < 0 || n > 1000) {
        fprintf(stderr, "trainbusd: %s: expected milliseconds in [0, 1000], got '%s'\n", a,
                argv[i]);
        return 2;
      }
      o.flush_interval_ms = (int)n;
    } else if (strcmp(a, "--data-dir") == 0 && v) {
      if (o.n_data_dirs == TB_SERVER_MAX_DATA_DIRS) {
        fprintf(stderr, "trainbusd: at most %d --data-dir\n", TB_SERVER_MAX_DATA_DIRS);
        return 2;
      }
      o.data_dirs[o.n_data_dirs++] = argv[++i];
    } else if (strcmp(a, "--max-job-memory") == 0 && v) {
      if ((o.max_job_memory = parse_size(argv[++i])) == 0) {
        fprintf(stderr, "trainbusd: %s: expected a size such as 4G, 512M or 1048576, got '%s'\n", a,
                argv[i]);
        return 2;
      }
    } else if (strcmp(a, "--retain-bytes") == 0 && v) {
      if ((o.retain_bytes = parse_size(argv[++i])) == 0) {
        fprintf(stderr, "trainbusd: %s: expected a size such as 1G, 256M or 1048576, got '%s'\n", a,
                argv[i]);
        return 2;
      }
    } else if (strcmp(a, "--max-ranks") == 0 && v) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end != '\0' || end == argv[i] || n < 0 || n > 4096) {
        fprintf(stderr, "trainbusd: %s: expected ranks in [0, 4096], got '%s'\n", a, argv[i]);
        return 2;
      }
      o.max_ranks = n == 0 ? -1 : (int)n;
    } else if (strcmp(a, "--mpirun") == 0 && v) {
      o.mpirun = argv[++i];
    } else if (strcmp(a, "--mpirun-arg") == 0 && v) {
      if (o.n_mpirun_args == TB_SERVER_MAX_MPIRUN_ARGS) {
        fprintf(stderr, "trainbusd: at most %d --mpirun-arg\n", TB_SERVER_MAX_MPIRUN_ARGS);
        return 2;
      }
      o.mpirun_args[o.n_mpirun_args++] = argv[++i];
    } else if (strcmp(a, "--trainbus") == 0 && v) {
      o.trainbus = argv[++i];
    } else if (strcmp(a, "--bridge") == 0 && v) {
      bridge_url = argv[++i];
    } else if (strcmp(a, "--bridge-arg") == 0 && v && n_bridge_args < 32) {
      bridge_args[n_bridge_args++] = argv[++i];
    } else if (strcmp(a, "--http") == 0 && v) {
      o.http = argv[++i];
    } else if (strcmp(a, "--tls-cert") == 0 && v) {
      o.tls_cert = argv[++i];
    } else if (strcmp(a, "--tls-key") == 0 && v) {
      o.tls_key = argv[++i];
    } else if (strcmp(a, "--tls-client-ca") == 0 && v) {
      o.tls_client_ca = argv[++i];
    } else if (strcmp(a, "--allow-plaintext") == 0) {
      o.allow_plaintext = true;
    } else if (strcmp(a, "--job") == 0 && v) {
      job_path = argv[++i];
    } else if (strcmp(a, "--no-job") == 0) {
      no_job = true;
    } else if (strcmp(a, "--state-dir") == 0 && v) {
      state_dir = argv[++i];
    } else if (strcmp(a, "--no-state") == 0) {
      no_state = true;
    } else if (strcmp(a, "--resume") == 0) {
      o.resume = true;
    } else if (strcmp(a, "--token") == 0 && v) {
      token = argv[++i];
    } else if (strcmp(a, "--observer-token") == 0 && v) {
      o.observer_token = argv[++i];
    } else if (strcmp(a, "--trainer-token") == 0 && v) {
      o.trainer_token = argv[++i];
    } else if (strcmp(a, "--quiet") == 0) {
      o.log_level = 0;
    } else if (strcmp(a, "--verbose") == 0) {
      o.log_level = 2;
    } else if ((strcmp(a, "--max-clients") == 0 || strcmp(a, "--max-line") == 0 ||
                strcmp(a, "--auth-timeout-ms") == 0 || strcmp(a, "--epochs") == 0 ||
                strcmp(a, "--idle-timeout-ms") == 0 || strcmp(a, "--trainer-timeout-ms") == 0) &&
               v) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end != '\0' || n < 1 || n > 1000000000) {
        fprintf(stderr, "trainbusd: %s: expected a positive integer, got '%s'\n", a, argv[i]);
        return 2;
      }
      if (strcmp(a, "--max-clients") == 0)
        o.max_clients = (int)n;
      else if (strcmp(a, "--max-line") == 0)
        o.max_line = (size_t)n;
      else if (strcmp(a, "--auth-timeout-ms") == 0)
        o.auth_timeout_ms = (int)n;
      else if (strcmp(a, "--idle-timeout-ms") == 0)
        o.idle_timeout_ms = (int)n;
      else if (strcmp(a, "--trainer-timeout-ms") == 0)
        o.trainer_timeout_ms = (int)n;

      else
        epochs = n;
    } else {
      fprintf(stderr, "trainbusd: unknown option or missing value: %s (see --help)\n", a);
      return 2;
    }
  }
  if (job_path != NULL && no_job) {
    fprintf(stderr, "trainbusd: --job and --no-job exclude each other\n");
    return 2;
  }
  if (!no_state) {
    if (state_dir == NULL) {
      const char *home = getenv("HOME");
      snprintf(default_state, sizeof(default_state), "%s/.trainbus", home ? home : ".");
      state_dir = default_state;
    }
    o.state_dir = state_dir;
  } else if (o.resume) {
    fprintf(stderr, "trainbusd: --resume needs a state directory\n");
    return 2;
  }
  o.token = token;
  o.token_given = token != NULL && token[0] != '\0';
  raise_nofile(o.max_clients);

  tb_server_t *s;
  tb_err_t err = {{0}};
  if (tb_server_new(&o, &s, &err) != 0) {
    fprintf(stderr, "trainbusd: %s\n", err.msg);
    return 1;
  }
  for (int i = 0; tb_server_address(s, i) != NULL; i++)
    fprintf(stderr, "trainbusd: listening on %s\n", tb_server_address(s, i));
  bool tls = s->tls_ctx != NULL;
  if (tb_server_http_address(s) != NULL)
    fprintf(stderr, "trainbusd: http on %s (dashboard: %s://%s/)\n", tb_server_http_address(s),
            tls ? "https" : "http", tb_server_http_address(s));
  if (tls) {
    fprintf(stderr, "trainbusd: TLS with the certificate of %s%s\n", s->tls_subject,
            o.tls_client_ca ? "; clients need a certificate from --tls-client-ca" : "");
    if (s->tls_expired)
      fprintf(stderr,
              "trainbusd: warning: the certificate in %s has expired: clients will "
              "refuse it\n",
              o.tls_cert);
  }
  char budget[32];
  tb_job_format_bytes(s->operator_policy.max_bytes, budget, sizeof(budget));
  fprintf(stderr, "trainbusd: a job may use up to %s of memory (--max-job-memory)\n", budget);
  tb_job_format_bytes(tb__retain_bound(s), budget, sizeof(budget));
  fprintf(stderr, "trainbusd: past events kept in memory: up to %s (--retain-bytes)\n", budget);
  if (s->o.n_data_dirs == 0)
    fprintf(stderr, "trainbusd: submitted jobs may use the built-in generators only (no "
                    "--data-dir)\n");
  for (int i = 0; i < s->o.n_data_dirs; i++)
    fprintf(stderr, "trainbusd: submitted jobs may read and write under %s\n", s->data_dirs[i]);

  /* The first job: the one given, the demo, or none. A restart with --resume
   * and no --job continues what was there. */
  if (!no_job && !(o.resume && job_path == NULL)) {
    char id[64], dir[1024] = ".";
    size_t len = 0;
    char *text;
    const char *origin = "demo";
    if (job_path != NULL) {
      if ((text = read_file(job_path, &len)) == NULL) {
        fprintf(stderr, "trainbusd: %s: cannot read\n", job_path);
        tb_server_stop(s);
        tb_server_run(s);
        tb_server_free(s);
        return 2;
      }
      origin = job_path;
      snprintf(dir, sizeof(dir), "%s", job_path);
      char *slash = strrchr(dir, '/');
      if (slash != NULL)
        *slash = '\0';
      else
        snprintf(dir, sizeof(dir), ".");
      char abs[1024];
      if (realpath(dir, abs) != NULL)
        snprintf(dir, sizeof(dir), "%s", abs);
    } else {
      char demo[4096], notice[1200];
      if (tb_job_demo_json(getenv("TRAINBUS_DEMO_DATA"), demo, sizeof(demo), notice,
                           sizeof(notice)) == NULL ||
          (text = strdup(demo)) == NULL) {
        fprintf(stderr, "trainbusd: cannot make the demo job\n");
        tb_server_stop(s);
        tb_server_run(s);
        tb_server_free(s);
        return 1;
      }
      if (notice[0] != '\0')
        fprintf(stderr, "trainbusd: %s\n", notice);
      len = strlen(text);
    }
    if (epochs > 0) {
      /* The override goes into the job itself, so a --resume after a restart
       * keeps it. */
      cJSON *doc = cJSON_ParseWithLength(text, len);
      if (doc != NULL && cJSON_IsObject(doc)) {
        cJSON_DeleteItemFromObjectCaseSensitive(doc, "epochs");
        cJSON_AddNumberToObject(doc, "epochs", (double)epochs);
        tb_buf_t patched;
        tb_buf_init(&patched);
        if (tb_json_value(&patched, doc) == 0 && tb_buf_append(&patched, "", 1) == 0) {
          free(text);
          text = strdup(patched.data);
          len = strlen(text);
        }
        tb_buf_free(&patched);
      }
      cJSON_Delete(doc);
    }
    int r = tb_server_submit(s, text, len, origin, dir, id, &err);
    free(text);
    if (r != 0) {
      fprintf(stderr, "trainbusd: %s\n", err.msg);
      tb_server_stop(s);
      tb_server_run(s);
      tb_server_free(s);
      return 2;
    }
    fprintf(stderr, "trainbusd: run %s queued (%s)\n", id, origin);
  }
  if (o.state_dir != NULL)
    fprintf(stderr,
            "trainbusd: tokens in %s: token (control), observer_token (read-only), "
            "trainer_token; watch with: trainbus watch\n",
            o.state_dir);
  else
    fprintf(stderr, "trainbusd: watch with: trainbus watch --connect %s --token %s\n",
            tb_server_address(s, 0), o.token_given ? "<your token>" : tb_server_token(s));

  uv_signal_init(&s->loop, &sigint_h);
  uv_signal_init(&s->loop, &sigterm_h);
  sigint_h.data = sigterm_h.data = s;
  uv_signal_start(&sigint_h, on_signal, SIGINT);
  uv_signal_start(&sigterm_h, on_signal, SIGTERM);
  int r;
  if (bridge_url != NULL &&
      (r = tb__supervise_start(&bridge, s, bridge_url, bridge_args, n_bridge_args)) != 0)
    fprintf(stderr, "trainbusd: --bridge: %s\n", uv_strerror(r));
  if (early_signal != 0)
    on_signal(early_signal == SIGINT ? &sigint_h : &sigterm_h, early_signal);
  signal(SIGPIPE, SIG_IGN);
  r = tb_server_run(s);
  tb_server_free(s);
  tb__supervise_free(&bridge);
  fprintf(stderr, "trainbusd: stopped\n");
  return r == 0 ? 0 : 1;
}
