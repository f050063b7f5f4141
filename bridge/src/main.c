/* trainbus-bridge: the program. Parses options (getopt_long, one table),
 * makes the bridge and runs it until SIGINT or SIGTERM. */
#include "trainbus/bridge.h"

#include <getopt.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: trainbus-bridge [options] BROKER_URL\n"
          "\n"
          "Publishes the runs of a trainbus daemon into a NATS (JetStream) or MQTT broker and\n"
          "takes control requests from it (docs/BRIDGE.md). BROKER_URL is nats://HOST:PORT,\n"
          "tls://HOST:PORT, mqtt://HOST:PORT or mqtts://HOST:PORT, with an optional\n"
          "USER:PASSWORD@ (or, for NATS, TOKEN@) before the host.\n"
          "\n"
          "the daemon:\n"
          "  --connect ADDR        HOST:PORT, tls://HOST:PORT or a Unix socket (default\n"
          "                        $TRAINBUS_ADDR, else STATE_DIR/address, read again at\n"
          "                        every reconnect)\n"
          "  --token TOKEN         the daemon's control token, for control requests (default\n"
          "                        $TRAINBUS_TOKEN, else STATE_DIR/token when the address\n"
          "                        came from there)\n"
          "  --observer-token TOKEN  the daemon's read-only token, for reading the events\n"
          "                        (default $TRAINBUS_OBSERVER_TOKEN, else\n"
          "                        STATE_DIR/observer_token likewise, else the control token)\n"
          "  --cacert FILE         trust the CA certificates in FILE (PEM) for a tls:// daemon\n"
          "                        (default $TRAINBUS_CACERT, else the system's CAs)\n"
          "  --insecure            do not check the daemon's certificate (warns)\n"
          "  --cert FILE, --key FILE  a client certificate for the daemon (default\n"
          "                        $TRAINBUS_CERT, $TRAINBUS_KEY)\n"
          "  --state-dir DIR       where trainbusd writes address and token (default\n"
          "                        $TRAINBUS_STATE_DIR, else ~/.trainbus)\n"
          "\n"
          "what goes to the broker:\n"
          "  --ns NAMESPACE        the name under tb. (default \"default\"; A-Z a-z 0-9 _ -)\n"
          "  --every N             batch events whose batch is a multiple of N only (default 1)\n"
          "  --batch-hz HZ         at most HZ batch events a second per run and event name,\n"
          "                        by the events' timestamps (default 10; 0: no cap)\n"
          "  --queue N             events waiting for the broker, at most (default 4096)\n"
          "  --max-age SECONDS     JetStream: how long stream TB_NS keeps events (default 7 days)\n"
          "  --max-bytes BYTES     JetStream: how many bytes it keeps (default 1 GiB)\n"
          "  --dup-window SECONDS  JetStream: the stream's deduplication window (default 120)\n"
          "  --memory              JetStream: keep the streams in memory instead of files\n"
          "  --ctl-workers N       control requests served at once (default 2)\n"
          "\n"
          "logging in to the broker:\n"
          "  --user USER           user name (both brokers)\n"
          "  --password PASSWORD   password (default $TRAINBUS_BROKER_PASSWORD)\n"
          "  --broker-token TOKEN  NATS token (default $TRAINBUS_BROKER_TOKEN)\n"
          "  --creds FILE          NATS credentials file (JWT and nkey seed)\n"
          "  --nkey-seed FILE      NATS nkey user seed file (SU...)\n"
          "  --tls-ca FILE         trust this CA (PEM); turns TLS on\n"
          "  --tls-cert FILE       client certificate (PEM), with --tls-key FILE\n"
          "  --name NAME           the connection's name on the broker (MQTT: client id)\n"
          "\n"
          "  --quiet, --verbose    errors only, or debug detail\n"
          "  -h, --help            this help\n"
          "\n"
          "SIGINT/SIGTERM: the queue is flushed for up to 2 s, the bridge's state becomes\n"
          "offline, exit 0. Exit 1: the broker refused the login or the stream configuration;\n"
          "2: bad options.\n");
}

static tb_bridge_t *running;

static void on_signal(int sig) {
  (void)sig;
  if (running != NULL)
    tb_bridge_stop(running);
}

static bool num(const char *opt, const char *v, double lo, double hi, double *out) {
  char *end;
  double d = strtod(v, &end);
  if (*end != '\0' || end == v || !(d >= lo && d <= hi)) {
    fprintf(stderr, "trainbus-bridge: %s: expected a number in [%g, %g], got '%s'\n", opt, lo, hi,
            v);
    return false;
  }
  *out = d;
  return true;
}

int main(int argc, char **argv) {
  enum {
    O_CONNECT = 256,
    O_TOKEN,
    O_OBS_TOKEN,
    O_CACERT,
    O_INSECURE,
    O_DCERT,
    O_DKEY,
    O_STATE_DIR,
    O_NS,
    O_EVERY,
    O_BATCH_HZ,
    O_QUEUE,
    O_MAX_AGE,
    O_MAX_BYTES,
    O_DUP,
    O_MEMORY,
    O_CTL,
    O_USER,
    O_PASSWORD,
    O_BTOKEN,
    O_CREDS,
    O_NKEY,
    O_CA,
    O_CERT,
    O_KEY,
    O_NAME,
    O_QUIET,
    O_VERBOSE
  };
  static const struct option table[] = {{"connect", required_argument, NULL, O_CONNECT},
                                        {"token", required_argument, NULL, O_TOKEN},
                                        {"observer-token", required_argument, NULL, O_OBS_TOKEN},
                                        {"cacert", required_argument, NULL, O_CACERT},
                                        {"insecure", no_argument, NULL, O_INSECURE},
                                        {"cert", required_argument, NULL, O_DCERT},
                                        {"key", required_argument, NULL, O_DKEY},
                                        {"state-dir", required_argument, NULL, O_STATE_DIR},
                                        {"ns", required_argument, NULL, O_NS},
                                        {"every", required_argument, NULL, O_EVERY},
                                        {"batch-hz", required_argument, NULL, O_BATCH_HZ},
                                        {"queue", required_argument, NULL, O_QUEUE},
                                        {"max-age", required_argument, NULL, O_MAX_AGE},
                                        {"max-bytes", required_argument, NULL, O_MAX_BYTES},
                                        {"dup-window", required_argument, NULL, O_DUP},
                                        {"memory", no_argument, NULL, O_MEMORY},
                                        {"ctl-workers", required_argument, NULL, O_CTL},
                                        {"user", required_argument, NULL, O_USER},
                                        {"password", required_argument, NULL, O_PASSWORD},
                                        {"broker-token", required_argument, NULL, O_BTOKEN},
                                        {"creds", required_argument, NULL, O_CREDS},
                                        {"nkey-seed", required_argument, NULL, O_NKEY},
                                        {"tls-ca", required_argument, NULL, O_CA},
                                        {"tls-cert", required_argument, NULL, O_CERT},
                                        {"tls-key", required_argument, NULL, O_KEY},
                                        {"name", required_argument, NULL, O_NAME},
                                        {"quiet", no_argument, NULL, O_QUIET},
                                        {"verbose", no_argument, NULL, O_VERBOSE},
                                        {"help", no_argument, NULL, 'h'},
                                        {NULL, 0, NULL, 0}};
  tb_bridge_opts_t o = {.batch_hz = 10, .log_level = 1};
  o.broker.password = getenv("TRAINBUS_BROKER_PASSWORD");
  o.broker.token = getenv("TRAINBUS_BROKER_TOKEN");
  if (o.broker.password != NULL && o.broker.password[0] == '\0')
    o.broker.password = NULL;
  if (o.broker.token != NULL && o.broker.token[0] == '\0')
    o.broker.token = NULL;
  double d;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "h", table, NULL)) != -1) {
    switch (c) {
    case 'h':
      usage(stdout);
      return 0;
    case O_CONNECT:
      o.daemon_addr = optarg;
      break;
    case O_TOKEN:
      o.daemon_token = optarg;
      break;
    case O_OBS_TOKEN:
      o.daemon_observer_token = optarg;
      break;
    case O_CACERT:
      o.daemon_ca_file = optarg;
      break;
    case O_INSECURE:
      o.daemon_insecure = true;
      break;
    case O_DCERT:
      o.daemon_cert_file = optarg;
      break;
    case O_DKEY:
      o.daemon_key_file = optarg;
      break;
    case O_STATE_DIR:
      o.state_dir = optarg;
      break;
    case O_NS:
      o.ns = optarg;
      break;
    case O_EVERY:
      if (!num("--every", optarg, 1, 1000000, &d))
        return 2;
      o.every = (int64_t)d;
      break;
    case O_BATCH_HZ:
      if (!num("--batch-hz", optarg, 0, 1e6, &d))
        return 2;
      o.batch_hz = d;
      break;
    case O_QUEUE:
      if (!num("--queue", optarg, 4, 1e7, &d))
        return 2;
      o.queue_max = (size_t)d;
      break;
    case O_MAX_AGE:
      if (!num("--max-age", optarg, 1, 1e10, &d))
        return 2;
      o.js_max_age_s = (int64_t)d;
      break;
    case O_MAX_BYTES:
      if (!num("--max-bytes", optarg, 4096, 1e15, &d))
        return 2;
      o.js_max_bytes = (int64_t)d;
      break;
    case O_DUP:
      if (!num("--dup-window", optarg, 1, 1e7, &d))
        return 2;
      o.js_dup_window_s = (int64_t)d;
      break;
    case O_MEMORY:
      o.js_memory = true;
      break;
    case O_CTL:
      if (!num("--ctl-workers", optarg, 1, 16, &d))
        return 2;
      o.ctl_workers = (int)d;
      break;
    case O_USER:
      o.broker.user = optarg;
      break;
    case O_PASSWORD:
      o.broker.password = optarg;
      break;
    case O_BTOKEN:
      o.broker.token = optarg;
      break;
    case O_CREDS:
      o.broker.creds_file = optarg;
      break;
    case O_NKEY:
      o.broker.nkey_seed_file = optarg;
      break;
    case O_CA:
      o.broker.tls_ca = optarg;
      break;
    case O_CERT:
      o.broker.tls_cert = optarg;
      break;
    case O_KEY:
      o.broker.tls_key = optarg;
      break;
    case O_NAME:
      o.broker.client_name = optarg;
      break;
    case O_QUIET:
      o.log_level = 0;
      break;
    case O_VERBOSE:
      o.log_level = 2;
      break;
    default:
      fprintf(stderr, "trainbus-bridge: unknown option or missing value: %s (see --help)\n",
              argv[optind - 1]);
      return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "trainbus-bridge: expected one BROKER_URL (see --help)\n");
    return 2;
  }
  o.broker.url = argv[optind];
  if (o.daemon_insecure)
    fprintf(stderr, "trainbus-bridge: warning: --insecure: the daemon's certificate is not "
                    "checked; anyone between the bridge and the daemon can read and steer\n");

  tb_bridge_t *b;
  tb_client_err_t err;
  if (tb_bridge_new(&o, &b, &err) != 0) {
    fprintf(stderr, "trainbus-bridge: %s\n", err.msg);
    return 2;
  }
  running = b;
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  int rc = tb_bridge_run(b, &err);
  tb_bridge_stats_t s;
  tb_bridge_stats(b, &s);
  fprintf(stderr,
          "trainbus-bridge: stopped: received %lld, published %lld, caught up %lld, batch "
          "events sampled out %lld and dropped %lld, truncated %lld, control requests %lld "
          "(%lld errors)\n",
          (long long)s.received, (long long)s.published, (long long)s.caught_up,
          (long long)s.sampled_out, (long long)s.dropped_batch, (long long)s.truncated,
          (long long)s.ctl_requests, (long long)s.ctl_errors);
  running = NULL;
  tb_bridge_free(b);
  /* libnats keeps process-wide threads and state until this. */
  nats_Close();
  if (rc != 0) {
    fprintf(stderr, "trainbus-bridge: %s\n", err.msg);
    return 1;
  }
  return 0;
}
