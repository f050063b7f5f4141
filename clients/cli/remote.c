/* The network subcommands except watch: status, runs, history, submit and the
 * control commands, plus what every network subcommand shares (finding the
 * daemon and its token, picking the run, turning errors into exit codes).
 *
 * Each command is one connection and one or two calls through tb_client.
 * Output goes to stdout (a table, or JSON with --json where it makes sense);
 * a failure is one line on stderr, "trainbus CMD: what went wrong", and an
 * exit code that says whose fault it was: 1 the daemon refused, 2 the command
 * line was wrong, 3 the daemon could not be reached. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char tb_cli_conn_help[] =
    "  --connect ADDR       the daemon: HOST:PORT, tls://HOST:PORT, unix:PATH or a\n"
    "                       socket path (default: $TRAINBUS_ADDR, else STATE_DIR/address)\n"
    "  --tls                connect with TLS (as a tls:// address does); the server's\n"
    "                       certificate must name the host connected to\n"
    "  --cacert FILE        trust the CA certificates in FILE (PEM) for the server's\n"
    "                       (default: $TRAINBUS_CACERT, else the system's CAs)\n"
    "  --insecure           do not check the server's certificate (warns: the\n"
    "                       connection is then encrypted but not authenticated)\n"
    "  --cert FILE, --key FILE  a client certificate and its key (PEM), for a daemon\n"
    "                       started with --tls-client-ca (default: $TRAINBUS_CERT,\n"
    "                       $TRAINBUS_KEY)\n"
    "  --token TOKEN        the daemon's token (default: $TRAINBUS_TOKEN, else\n"
    "                       STATE_DIR/token, sent only to STATE_DIR/address)\n"
    "  --state-dir DIR      where trainbusd wrote address and token, read again at\n"
    "                       every reconnect (default: $TRAINBUS_STATE_DIR, else\n"
    "                       ~/.trainbus)\n"
    "  --timeout SECONDS    give up on an answer after this long (default 60)\n"
    "  -h, --help           this help\n";

int tb_cli_conn_opt(tb_cli_conn_t *o, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  if (strcmp(a, "--tls") == 0 || strcmp(a, "--insecure") == 0) {
    *(a[2] == 't' ? &o->tls : &o->insecure) = true;
    return 1;
  }
  const char **dst = strcmp(a, "--connect") == 0     ? &o->connect
                     : strcmp(a, "--token") == 0     ? &o->token
                     : strcmp(a, "--state-dir") == 0 ? &o->state_dir
                     : strcmp(a, "--run") == 0       ? &o->run
                     : strcmp(a, "--cacert") == 0    ? &o->cacert
                     : strcmp(a, "--cert") == 0      ? &o->cert
                     : strcmp(a, "--key") == 0       ? &o->key
                                                     : NULL;
  bool is_timeout = strcmp(a, "--timeout") == 0;
  if (dst == NULL && !is_timeout)
    return 0;
  if (*i + 1 >= argc) {
    fprintf(stderr, "%s: %s needs a value (see --help)\n", o->cmd, a);
    return -1;
  }
  const char *v = argv[++*i];
  if (is_timeout) {
    char *end;
    double s = strtod(v, &end);
    if (*end != '\0' || end == v || !(s > 0 && s <= 86400)) {
      fprintf(stderr, "%s: --timeout: expected seconds in (0, 86400], got '%s'\n", o->cmd, v);
      return -1;
    }
    o->timeout_ms = (int)ceil(s * 1000);
    return 1;
  }
  if (dst == &o->run && (v[0] == '\0' || strlen(v) >= TB_PROTO_RUN_MAX)) {
    fprintf(stderr, "%s: --run: expected a run id of 1 to %d characters\n", o->cmd,
            TB_PROTO_RUN_MAX - 1);
    return -1;
  }
  *dst = v;
  return 1;
}

static void state_dir(const tb_cli_conn_t *o, char *out, size_t cap) {
  const char *d = o->state_dir ? o->state_dir : getenv("TRAINBUS_STATE_DIR");
  if (d != NULL && d[0] != '\0') {
    snprintf(out, cap, "%s", d);
    return;
  }
  const char *home = getenv("HOME");
  snprintf(out, cap, "%s/.trainbus", home && home[0] ? home : ".");
}

/* The address and token given (options, then environment) go to the library
 * as they are; what is missing the library reads from the state directory's
 * files at every (re)connect, and it sends that directory's token only to
 * that directory's address. */
void tb_cli_client_opts(const tb_cli_conn_t *o, char *dir, size_t cap, tb_client_opts_t *opts) {
  state_dir(o, dir, cap);
  const char *env_addr = getenv("TRAINBUS_ADDR"), *env_token = getenv("TRAINBUS_TOKEN");
  const char *env_ca = getenv("TRAINBUS_CACERT"), *env_cert = getenv("TRAINBUS_CERT"),
             *env_key = getenv("TRAINBUS_KEY");
  memset(opts, 0, sizeof(*opts));
  opts->addr = o->connect ? o->connect : env_addr && *env_addr ? env_addr : NULL;
  opts->token = o->token ? o->token : env_token && *env_token ? env_token : NULL;
  opts->state_dir = dir;
  opts->tls = o->tls;
  opts->insecure = o->insecure;
  opts->ca_file = o->cacert ? o->cacert : env_ca && *env_ca ? env_ca : NULL;
  opts->cert_file = o->cert ? o->cert : env_cert && *env_cert ? env_cert : NULL;
  opts->key_file = o->key ? o->key : env_key && *env_key ? env_key : NULL;
  if (o->insecure)
    fprintf(stderr,
            "%s: warning: --insecure: the server's certificate is not checked, so whoever is "
            "between you and it can read and change this connection\n",
            o->cmd);
}

int tb_cli_open(const tb_cli_conn_t *o, tb_role_t role, tb_client_t **c) {
  char dir[1024];
  tb_client_opts_t opts;
  tb_cli_client_opts(o, dir, sizeof dir, &opts);
  const char *addr = opts.addr;
  opts.role = role;
  opts.name = "trainbus-cli";
  opts.connect_timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 0;
  opts.call_timeout_ms = o->timeout_ms;
  tb_client_err_t err;
  if (tb_client_connect(&opts, c, &err) != 0) {
    if (addr == NULL && err.code == TB_CLIENT_EADDRESS) {
      fprintf(stderr,
              "%s: no daemon address: give --connect HOST:PORT, set TRAINBUS_ADDR, or start "
              "trainbusd (it writes %s/address)\n",
              o->cmd, dir);
      return TB_EXIT_CONNECT;
    }
    return tb_cli_fail(o->cmd, &err);
  }
  return TB_EXIT_OK;
}

int tb_cli_fail(const char *cmd, const tb_client_err_t *err) {
  fprintf(stderr, "%s: %s\n", cmd, err->msg[0] ? err->msg : tb_client_strerror(err->code));
  if (err->code == TB_PROTO_ETLS_REQUIRED)
    return TB_EXIT_CONNECT; /* reached a TLS port without TLS: not connected */
  if (tb_client_err_is_remote(err->code))
    return TB_EXIT_FAILED;
  if (err->code == TB_CLIENT_EINVALID)
    return TB_EXIT_USAGE;
  return TB_EXIT_CONNECT;
}

static bool state_final(tb_run_state_t s) {
  return tb_run_state_is_final(s);
}

int tb_cli_pick_run(const tb_cli_conn_t *o, tb_client_t *c, bool newest_ok,
                    char run[TB_PROTO_RUN_MAX]) {
  if (o->run) {
    snprintf(run, TB_PROTO_RUN_MAX, "%s", o->run);
    return TB_EXIT_OK;
  }
  tb_run_info_t *runs;
  int n;
  tb_client_err_t err;
  if (tb_client_runs(c, &runs, &n, &err) != 0)
    return tb_cli_fail(o->cmd, &err);
  int found = 0;
  char names[256] = "";
  for (int i = 0; i < n; i++) {
    if (state_final(runs[i].state))
      continue;
    if (found++ == 0)
      snprintf(run, TB_PROTO_RUN_MAX, "%s", runs[i].id);
    size_t l = strlen(names);
    snprintf(names + l, sizeof names - l, "%s%s", l ? ", " : "", runs[i].id);
  }
  if (found == 0 && newest_ok && n > 0) {
    snprintf(run, TB_PROTO_RUN_MAX, "%s", runs[n - 1].id);
    found = 1;
  }
  free(runs);
  if (found == 1)
    return TB_EXIT_OK;
  if (found == 0) {
    fprintf(stderr, "%s: no run is active; name one with --run ID (see trainbus runs)\n", o->cmd);
    return TB_EXIT_FAILED;
  }
  fprintf(stderr, "%s: %d runs are active (%s): pick one with --run ID\n", o->cmd, found, names);
  return TB_EXIT_USAGE;
}

static bool want_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
      return true;
  return false;
}

static int bad_arg(const char *cmd, const char *a) {
  fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", cmd, a);
  return TB_EXIT_USAGE;
}

static void print_num(double v) {
  printf("%.6g", v);
}

static void print_run(const tb_run_info_t *r) {
  printf("run %s: %s, epoch %lld/%lld", r->id, tb_run_state_name(r->state),
         (long long)(r->epoch < 0 ? 0 : r->epoch + 1), (long long)r->epochs);
  if (r->batch >= 0)
    printf(", batch %lld", (long long)r->batch);
  if (r->has_lr) {
    printf(", lr ");
    print_num(r->lr);
  }
  printf(", last seq %lld\n", (long long)r->last_seq);
}

/* Prints a cJSON value as one compact line. */
static void print_json(const cJSON *v) {
  tb_buf_t b;
  tb_buf_init(&b);
  if (tb_json_value(&b, v) == 0)
    printf("%.*s\n", (int)b.len, b.data);
  tb_buf_free(&b);
}

/* ----------------------------------------------------------------- status -- */

int tb_cli_status(int argc, char **argv) {
  tb_cli_conn_t o = {.cmd = "trainbus status"};
  bool json = false;
  if (want_help(argc, argv)) {
    printf("usage: trainbus status [--run ID] [--json] [options]\n"
           "\n"
           "Prints a run's state, position (epoch is 1-based here, as in the progress\n"
           "bar), learning rate and last event seq. Without --run: the only run that has\n"
           "not ended, else the newest run; with no runs at all, the daemon's status.\n"
           "\n"
           "options:\n"
           "  --run ID             the run\n"
           "  --json               print the daemon's answer as JSON\n"
           "%s",
           tb_cli_conn_help);
    return TB_EXIT_OK;
  }
  for (int i = 1; i < argc; i++) {
    int k = tb_cli_conn_opt(&o, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k == 0 && strcmp(argv[i], "--json") == 0)
      json = true;
    else if (k == 0)
      return bad_arg(o.cmd, argv[i]);
  }
  tb_client_t *c;
  int ex = tb_cli_open(&o, TB_ROLE_OBSERVER, &c);
  if (ex != TB_EXIT_OK)
    return ex;
  tb_client_err_t err;
  tb_req_t *r = calloc(1, sizeof *r);
  cJSON *res = NULL;
  if (r == NULL) {
    tb_client_free(c);
    fprintf(stderr, "%s: out of memory\n", o.cmd);
    return TB_EXIT_FAILED;
  }
  r->method = TB_METHOD_STATUS;
  if (o.run == NULL) {
    /* No run named: the active one if there is exactly one, else the daemon. */
    tb_run_info_t *runs;
    int n, active = 0;
    if (tb_client_runs(c, &runs, &n, &err) != 0) {
      ex = tb_cli_fail(o.cmd, &err);
      goto out;
    }
    for (int i = 0; i < n; i++)
      if (!state_final(runs[i].state) && active++ == 0)
        snprintf(r->run, sizeof r->run, "%s", runs[i].id);
    /* None active: the newest run, which is what a user just watched end. */
    if (active == 0 && n > 0)
      snprintf(r->run, sizeof r->run, "%s", runs[n - 1].id);
    free(runs);
    if (active > 1 && (ex = tb_cli_pick_run(&o, c, false, r->run)) != TB_EXIT_OK)
      goto out;
  } else {
    snprintf(r->run, sizeof r->run, "%s", o.run);
  }
  if (tb_client_call(c, r, &res, &err) != 0) {
    ex = tb_cli_fail(o.cmd, &err);
    goto out;
  }
  if (json) {
    print_json(res);
  } else if (r->run[0]) {
    tb_run_info_t info;
    tb_proto_err_t perr;
    if (tb_run_info_decode(res, &info, &perr) != 0) {
      fprintf(stderr, "%s: unexpected answer: %s\n", o.cmd, perr.msg);
      ex = TB_EXIT_FAILED;
      goto out;
    }
    print_run(&info);
  } else {
    const cJSON *srv = cJSON_GetObjectItemCaseSensitive(res, "server");
    const cJSON *nr = cJSON_GetObjectItemCaseSensitive(res, "runs");
    printf("daemon %s at %s: %d runs\n", cJSON_IsString(srv) ? srv->valuestring : "?",
           o.connect ? o.connect : "(default address)",
           cJSON_IsNumber(nr) ? (int)nr->valuedouble : 0);
  }
out:
  cJSON_Delete(res);
  free(r);
  tb_client_free(c);
  return ex;
}

/* ------------------------------------------------------------------- runs -- */

int tb_cli_runs(int argc, char **argv) {
  tb_cli_conn_t o = {.cmd = "trainbus runs"};
  bool json = false;
  if (want_help(argc, argv)) {
    printf("usage: trainbus runs [--json] [options]\n"
           "\n"
           "Lists every run the daemon knows, oldest first: id, state, epoch (1-based),\n"
           "batch, learning rate and last event seq.\n"
           "\n"
           "options:\n"
           "  --json               one run object per line\n"
           "%s",
           tb_cli_conn_help);
    return TB_EXIT_OK;
  }
  for (int i = 1; i < argc; i++) {
    int k = tb_cli_conn_opt(&o, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k == 0 && strcmp(argv[i], "--json") == 0)
      json = true;
    else if (k == 0 || o.run)
      return bad_arg(o.cmd, argv[i]);
  }
  tb_client_t *c;
  int ex = tb_cli_open(&o, TB_ROLE_OBSERVER, &c);
  if (ex != TB_EXIT_OK)
    return ex;
  tb_run_info_t *runs;
  int n;
  tb_client_err_t err;
  if (tb_client_runs(c, &runs, &n, &err) != 0) {
    ex = tb_cli_fail(o.cmd, &err);
    tb_client_free(c);
    return ex;
  }
  if (!json)
    printf("%-12s %-10s %9s %7s %12s %10s\n", "RUN", "STATE", "EPOCH", "BATCH", "LR", "LAST_SEQ");
  for (int i = 0; i < n; i++) {
    const tb_run_info_t *r = &runs[i];
    if (json) {
      tb_buf_t b;
      tb_buf_init(&b);
      if (tb_json_run_info(&b, r) == 0)
        printf("%.*s\n", (int)b.len, b.data);
      tb_buf_free(&b);
      continue;
    }
    char ep[32], lr[32] = "-", batch[24] = "-";
    snprintf(ep, sizeof ep, "%lld/%lld", (long long)(r->epoch < 0 ? 0 : r->epoch + 1),
             (long long)r->epochs);
    if (r->batch >= 0)
      snprintf(batch, sizeof batch, "%lld", (long long)r->batch);
    if (r->has_lr)
      snprintf(lr, sizeof lr, "%.6g", r->lr);
    printf("%-12s %-10s %9s %7s %12s %10lld\n", r->id, tb_run_state_name(r->state), ep, batch, lr,
           (long long)r->last_seq);
  }
  free(runs);
  tb_client_free(c);
  return TB_EXIT_OK;
}

/* ---------------------------------------------------------------- history -- */

/* The column names of a history table: every log name met, in order of first
 * appearance. */
typedef struct cols_s {
  int n;
  char names[64][TB_PROTO_LOG_NAME_MAX];
} cols_t;

static int col_index(cols_t *cols, const char *name) {
  for (int i = 0; i < cols->n; i++)
    if (strcmp(cols->names[i], name) == 0)
      return i;
  if (cols->n == 64)
    return -1;
  snprintf(cols->names[cols->n], sizeof cols->names[0], "%s", name);
  return cols->n++;
}

int tb_cli_history(int argc, char **argv) {
  tb_cli_conn_t o = {.cmd = "trainbus history"};
  bool csv = false, json = false;
  const char *event = "epoch_end";
  if (want_help(argc, argv)) {
    printf("usage: trainbus history [--run ID] [--csv | --json] [--event NAME] [options]\n"
           "\n"
           "Prints a run's epoch_end logs (loss, metrics, val_*, lr) as a table, one row\n"
           "per epoch (1-based), from the daemon's retained history.\n"
           "\n"
           "options:\n"
           "  --run ID             the run\n"
           "  --csv                comma-separated values with a header (epoch 0-based, as\n"
           "                       Keras's CSVLogger writes it)\n"
           "  --json               every retained event, one params object per line\n"
           "  --event NAME         the event whose logs make the rows (default epoch_end;\n"
           "                       '*' globs, e.g. test_end)\n"
           "%s",
           tb_cli_conn_help);
    return TB_EXIT_OK;
  }
  for (int i = 1; i < argc; i++) {
    int k = tb_cli_conn_opt(&o, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k)
      continue;
    if (strcmp(argv[i], "--csv") == 0)
      csv = true;
    else if (strcmp(argv[i], "--json") == 0)
      json = true;
    else if (strcmp(argv[i], "--event") == 0 && i + 1 < argc)
      event = argv[++i];
    else
      return bad_arg(o.cmd, argv[i]);
  }
  if (csv && json) {
    fprintf(stderr, "%s: --csv and --json exclude each other\n", o.cmd);
    return TB_EXIT_USAGE;
  }
  tb_client_t *c;
  int ex = tb_cli_open(&o, TB_ROLE_OBSERVER, &c);
  if (ex != TB_EXIT_OK)
    return ex;
  char run[TB_PROTO_RUN_MAX];
  if ((ex = tb_cli_pick_run(&o, c, true, run)) != TB_EXIT_OK) {
    tb_client_free(c);
    return ex;
  }
  /* Collect the rows first: the table's columns are known only at the end. */
  cJSON *rows = cJSON_CreateArray();
  cols_t cols = {0};
  int64_t since = 0;
  tb_client_err_t err;
  tb_smsg_t *m = malloc(sizeof *m);
  if (rows == NULL || m == NULL) {
    fprintf(stderr, "%s: out of memory\n", o.cmd);
    ex = TB_EXIT_FAILED;
    goto out;
  }
  for (;;) {
    cJSON *events;
    int64_t next;
    if (tb_client_history(c, run, since, TB_PROTO_HISTORY_MAX, &events, &next, &err) != 0) {
      ex = tb_cli_fail(o.cmd, &err);
      goto out;
    }
    int n = cJSON_GetArraySize(events);
    for (cJSON *e = events->child; e; e = e->next) {
      if (json) {
        print_json(e);
        continue;
      }
      if (tb_client_event_decode(e, m, &err) != 0) {
        cJSON_Delete(events);
        ex = tb_cli_fail(o.cmd, &err);
        goto out;
      }
      if (tb_proto_match(event, m->event.name)) {
        cJSON *row = cJSON_CreateArray();
        cJSON_AddItemToArray(row, cJSON_CreateNumber((double)m->event.epoch));
        for (int k = 0; k < m->event.n_logs; k++) {
          int ci = col_index(&cols, m->event.log_names[k]);
          if (ci < 0)
            continue;
          while (cJSON_GetArraySize(row) < ci + 2)
            cJSON_AddItemToArray(row, cJSON_CreateNull());
          cJSON_ReplaceItemInArray(row, ci + 1, cJSON_CreateNumber(m->event.log_values[k]));
        }
        cJSON_AddItemToArray(rows, row);
      }
      tb_smsg_free(m);
    }
    cJSON_Delete(events);
    if (n == 0 || next <= since)
      break;
    since = next;
  }
  if (json)
    goto out;
  if (csv) {
    printf("epoch");
    for (int k = 0; k < cols.n; k++)
      printf(",%s", cols.names[k]);
    printf("\n");
  } else {
    printf("%6s", "epoch");
    for (int k = 0; k < cols.n; k++)
      printf(" %12s", cols.names[k]);
    printf("\n");
  }
  for (cJSON *row = rows->child; row; row = row->next) {
    cJSON *v = row->child;
    long long ep = (long long)v->valuedouble;
    if (csv)
      printf("%lld", ep);
    else
      printf("%6lld", ep + 1);
    v = v->next;
    for (int k = 0; k < cols.n; k++) {
      bool has = v != NULL && cJSON_IsNumber(v);
      if (csv) {
        if (has)
          printf(",%.17g", v->valuedouble);
        else
          printf(",");
      } else if (has) {
        printf(" %12.6g", v->valuedouble);
      } else {
        printf(" %12s", "");
      }
      if (v)
        v = v->next;
    }
    printf("\n");
  }
out:
  free(m);
  cJSON_Delete(rows);
  tb_client_free(c);
  return ex;
}

/* ---------------------------------------------------------------- control -- */

int tb_cli_control(int argc, char **argv) {
  const char *name = argv[0];
  char cmd[64];
  snprintf(cmd, sizeof cmd, "trainbus %s", name);
  tb_cli_conn_t o = {.cmd = cmd};
  bool set_lr = strcmp(name, "set-lr") == 0,
       has_reason = strcmp(name, "stop") == 0 || strcmp(name, "cancel") == 0;
  const char *value = NULL, *reason = NULL;
  if (want_help(argc, argv)) {
    static const struct {
      const char *name, *args, *text;
    } help[] = {
        {"set-lr", " VALUE",
         "Sets the run's learning rate. The daemon applies it at the next batch boundary\n"
         "(at once while paused) and answers then; this prints the old and new rate and\n"
         "where the change took effect. VALUE must be a number; the daemon refuses\n"
         "values that are not finite and positive (exit 1, with its message).\n"},
        {"stop", " [--reason TEXT]",
         "Stops the run: it finishes its current batch, runs train_end and ends in\n"
         "state stopped.\n"},
        {"pause", "", "Holds the run at the next batch boundary (state paused).\n"},
        {"resume", "", "Lets a paused run go on.\n"},
        {"checkpoint", "",
         "Writes a checkpoint at the next batch boundary and prints its path (needs a\n"
         "daemon with a state directory).\n"},
        {"cancel", " [--reason TEXT]",
         "Removes a queued run, or ends a running one in state cancelled.\n"},
    };
    for (size_t k = 0; k < sizeof help / sizeof help[0]; k++) {
      if (strcmp(help[k].name, name) != 0)
        continue;
      printf("usage: trainbus %s%s [--run ID] [options]\n\n%s\noptions:\n"
             "  --run ID             the run (default: the only run that has not ended)\n"
             "%s%s",
             name, help[k].args, help[k].text,
             has_reason ? "  --reason TEXT        why, shown in the daemon's state event\n" : "",
             tb_cli_conn_help);
    }
    return TB_EXIT_OK;
  }
  for (int i = 1; i < argc; i++) {
    int k = tb_cli_conn_opt(&o, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k)
      continue;
    const char *a = argv[i];
    char *end;
    if (has_reason && strcmp(a, "--reason") == 0 && i + 1 < argc) {
      reason = argv[++i];
    } else if (set_lr && value == NULL && (a[0] != '-' || (strtod(a, &end), *end == '\0'))) {
      /* A negative number is a value, not an option: the daemon judges it. */
      value = a;
    } else {
      return bad_arg(cmd, a);
    }
  }
  double lr = 0;
  if (set_lr) {
    char *end;
    if (value == NULL) {
      fprintf(stderr, "%s: missing VALUE (e.g. trainbus set-lr 0.0005)\n", cmd);
      return TB_EXIT_USAGE;
    }
    errno = 0;
    lr = strtod(value, &end);
    if (*end != '\0' || end == value || errno == ERANGE) {
      fprintf(stderr, "%s: VALUE: expected a number, got '%s'\n", cmd, value);
      return TB_EXIT_USAGE;
    }
  }
  tb_client_t *c;
  int ex = tb_cli_open(&o, TB_ROLE_CONTROLLER, &c);
  if (ex != TB_EXIT_OK)
    return ex;
  char run[TB_PROTO_RUN_MAX];
  if ((ex = tb_cli_pick_run(&o, c, false, run)) != TB_EXIT_OK) {
    tb_client_free(c);
    return ex;
  }
  tb_client_err_t err;
  tb_client_applied_t ap;
  int rc;
  if (set_lr)
    rc = tb_client_set_lr(c, run, lr, &ap, &err);
  else if (strcmp(name, "stop") == 0)
    rc = tb_client_stop(c, run, reason, &err);
  else if (strcmp(name, "pause") == 0)
    rc = tb_client_pause(c, run, &err);
  else if (strcmp(name, "resume") == 0)
    rc = tb_client_resume(c, run, &err);
  else if (strcmp(name, "checkpoint") == 0)
    rc = tb_client_checkpoint(c, run, &ap, &err);
  else
    rc = tb_client_cancel(c, run, reason, &err);
  if (rc != 0) {
    ex = tb_cli_fail(cmd, &err);
    tb_client_free(c);
    return ex;
  }
  char where[96] = "";
  if ((set_lr || strcmp(name, "checkpoint") == 0) && ap.has_applied_at) {
    if (ap.batch >= 0)
      snprintf(where, sizeof where, " at epoch %lld, batch %lld", (long long)ap.epoch + 1,
               (long long)ap.batch);
    else
      snprintf(where, sizeof where, " at epoch %lld", (long long)ap.epoch + 1);
  }
  if (set_lr && ap.has_lr)
    printf("%s: lr %.6g -> %.6g%s\n", run, ap.old_lr, ap.lr, where);
  else if (set_lr)
    printf("%s: lr -> %.6g\n", run, lr);
  else if (strcmp(name, "checkpoint") == 0)
    printf("%s: checkpoint %s%s\n", run, ap.path[0] ? ap.path : "requested", where);
  else
    printf("%s: %s\n", run,
           strcmp(name, "stop") == 0     ? "stop requested"
           : strcmp(name, "pause") == 0  ? "pause requested"
           : strcmp(name, "resume") == 0 ? "resumed"
                                         : "cancelled");
  tb_client_free(c);
  return TB_EXIT_OK;
}

/* ----------------------------------------------------------------- submit -- */

int tb_cli_submit(int argc, char **argv) {
  tb_cli_conn_t o = {.cmd = "trainbus submit"};
  const char *path = NULL;
  if (want_help(argc, argv)) {
    printf("usage: trainbus submit JOB.json [options]\n"
           "\n"
           "Queues a job (the same JSON as a job file, see docs/JOB.md; '-' reads it from\n"
           "stdin) and prints the new run's id. The daemon validates it and explains what\n"
           "is wrong (exit 1).\n"
           "\n"
           "options:\n"
           "%s",
           tb_cli_conn_help);
    return TB_EXIT_OK;
  }
  for (int i = 1; i < argc; i++) {
    int k = tb_cli_conn_opt(&o, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k == 0 && path == NULL && (argv[i][0] != '-' || strcmp(argv[i], "-") == 0))
      path = argv[i];
    else if (k == 0 || o.run)
      return bad_arg(o.cmd, argv[i]);
  }
  if (path == NULL) {
    fprintf(stderr, "%s: missing JOB.json (see --help)\n", o.cmd);
    return TB_EXIT_USAGE;
  }
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "%s: %s: %s\n", o.cmd, path, strerror(errno));
    return TB_EXIT_USAGE;
  }
  tb_buf_t job;
  tb_buf_init(&job);
  char chunk[8192];
  size_t n;
  bool oom = false;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    oom = oom || tb_buf_append(&job, chunk, n) != 0;
  bool rerr = ferror(f);
  if (f != stdin)
    fclose(f);
  if (oom || rerr) {
    fprintf(stderr, "%s: %s: %s\n", o.cmd, path, oom ? "out of memory" : "read error");
    tb_buf_free(&job);
    return TB_EXIT_USAGE;
  }
  tb_client_t *c;
  int ex = tb_cli_open(&o, TB_ROLE_CONTROLLER, &c);
  if (ex != TB_EXIT_OK) {
    tb_buf_free(&job);
    return ex;
  }
  char run[TB_PROTO_RUN_MAX];
  tb_client_err_t err;
  if (tb_client_submit(c, job.data ? job.data : "", job.len, run, &err) != 0) {
    if (err.code == TB_CLIENT_EINVALID)
      fprintf(stderr, "%s: %s: %s\n", o.cmd, path, err.msg);
    ex = err.code == TB_CLIENT_EINVALID ? TB_EXIT_USAGE : tb_cli_fail(o.cmd, &err);
  } else {
    printf("%s\n", run);
  }
  tb_buf_free(&job);
  tb_client_free(c);
  return ex;
}
