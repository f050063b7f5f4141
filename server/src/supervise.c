/* trainbusd --bridge URL: the daemon starts trainbus-bridge beside itself and
 * keeps it running.
 *
 * The bridge is a separate process and an ordinary client (the daemon links
 * no broker library): it gets the daemon's address, control token and
 * observer token in its environment (TRAINBUS_ADDR, TRAINBUS_TOKEN,
 * TRAINBUS_OBSERVER_TOKEN; never on its command line, where any user could
 * read a token), so that it reads the events with the read-only token and
 * only its control requests carry the control token. The rest of the
 * daemon's environment goes along (TRAINBUS_CACERT for a tls:// address, if
 * the daemon's certificate is not from a CA the system trusts). Its output
 * goes to the daemon's
 * stderr, and when it exits it is started again after a back-off that
 * doubles from half a second to 30 seconds (back to half a second once a
 * bridge has run for a minute). Exit status 2 (its options are wrong) is not
 * retried. When the daemon stops, the bridge gets SIGTERM (it flushes its
 * queue for up to two seconds), then SIGKILL five seconds later if it is
 * still there. Everything runs on the daemon's loop thread. */
#include "supervise.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define HEALTHY_MS 60000
#define KILL_AFTER_MS 5000

static void start(tb__supervise_t *sv);

static void on_timer(uv_timer_t *t) {
  tb__supervise_t *sv = t->data;
  if (sv->stopping) {
    if (sv->running)
      uv_process_kill(&sv->proc, SIGKILL);
    return;
  }
  start(sv);
}

static void on_proc_closed(uv_handle_t *h) {
  tb__supervise_t *sv = h->data;
  sv->running = false;
  if (sv->stopping)
    uv_close((uv_handle_t *)&sv->timer, NULL);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  tb__supervise_t *sv = p->data;
  uint64_t ran = uv_now(sv->loop) - sv->started_ms;
  uv_close((uv_handle_t *)p, on_proc_closed);
  if (sv->stopping)
    return;
  if (sig != 0)
    tb__log(sv->s, 0, "trainbus-bridge was killed by signal %d", sig);
  else
    tb__log(sv->s, status == 0 ? 1 : 0, "trainbus-bridge exited with status %lld",
            (long long)status);
  if (sig == 0 && status == 2) {
    tb__log(sv->s, 0, "trainbus-bridge refused its options; not starting it again");
    sv->stopping = true;
    return;
  }
  if (ran >= HEALTHY_MS)
    sv->backoff_ms = BACKOFF_MIN_MS;
  tb__log(sv->s, 1, "starting trainbus-bridge again in %d ms", sv->backoff_ms);
  uv_timer_start(&sv->timer, on_timer, (uint64_t)sv->backoff_ms, 0);
  sv->backoff_ms = sv->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sv->backoff_ms * 2;
}

static void start(tb__supervise_t *sv) {
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                   {.flags = UV_INHERIT_FD, .data.fd = 2},
                                   {.flags = UV_INHERIT_FD, .data.fd = 2}};
  o.file = sv->argv[0];
  o.args = sv->argv;
  o.env = sv->env;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.exit_cb = on_exit_cb;
  sv->proc.data = sv;
  int r = uv_spawn(sv->loop, &sv->proc, &o);
  sv->started_ms = uv_now(sv->loop);
  if (r != 0) {
    /* A failed spawn still needs its handle closed. */
    uv_close((uv_handle_t *)&sv->proc, NULL);
    tb__log(sv->s, 0, "cannot start %s: %s; trying again in %d ms", sv->argv[0], uv_strerror(r),
            sv->backoff_ms);
    uv_timer_start(&sv->timer, on_timer, (uint64_t)sv->backoff_ms, 0);
    sv->backoff_ms = sv->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sv->backoff_ms * 2;
    return;
  }
  sv->running = true;
  tb__log(sv->s, 1, "started trainbus-bridge (pid %d) for %s", sv->proc.pid,
          sv->argv[sv->argc - 1]);
}

static char *bridge_path(void) {
  char path[4096];
  tb__beside_self("trainbus-bridge", path, sizeof(path));
  return strdup(path);
}

int tb__supervise_start(tb__supervise_t *sv, tb_server_t *s, const char *url,
                        const char *const *args, int n_args) {
  memset(sv, 0, sizeof *sv);
  sv->s = s;
  sv->loop = &s->loop;
  sv->backoff_ms = BACKOFF_MIN_MS;
  sv->argc = n_args + 2;
  sv->argv = calloc((size_t)sv->argc + 1, sizeof *sv->argv);
  if (sv->argv == NULL || (sv->argv[0] = bridge_path()) == NULL)
    return UV_ENOMEM;
  for (int i = 0; i < n_args; i++)
    sv->argv[1 + i] = (char *)args[i];
  sv->argv[sv->argc - 1] = (char *)url;

  /* The environment, with the daemon's address and token in place of any. */
  size_t n = 0;
  while (environ[n] != NULL)
    n++;
  sv->env = calloc(n + 4, sizeof *sv->env);
  const char *addr = tb_server_address(s, 0), *token = tb_server_token(s);
  const char *obs = tb_server_observer_token(s) ? tb_server_observer_token(s) : "";
  size_t la = strlen(addr) + 16, lt = strlen(token) + 16, lo = strlen(obs) + 32;
  sv->env_addr = malloc(la);
  sv->env_token = malloc(lt);
  sv->env_obs = malloc(lo);
  if (sv->env == NULL || sv->env_addr == NULL || sv->env_token == NULL || sv->env_obs == NULL)
    return UV_ENOMEM;
  snprintf(sv->env_addr, la, "TRAINBUS_ADDR=%s", addr);
  snprintf(sv->env_token, lt, "TRAINBUS_TOKEN=%s", token);
  snprintf(sv->env_obs, lo, "TRAINBUS_OBSERVER_TOKEN=%s", obs);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "TRAINBUS_ADDR=", 14) != 0 &&
        strncmp(environ[i], "TRAINBUS_TOKEN=", 15) != 0 &&
        strncmp(environ[i], "TRAINBUS_OBSERVER_TOKEN=", 24) != 0)
      sv->env[k++] = environ[i];
  sv->env[k++] = sv->env_addr;
  sv->env[k++] = sv->env_token;
  if (obs[0] != '\0')
    sv->env[k++] = sv->env_obs;

  int r = uv_timer_init(sv->loop, &sv->timer);
  if (r != 0)
    return r;
  sv->timer.data = sv;
  sv->active = true;
  start(sv);
  return 0;
}

void tb__supervise_stop(tb__supervise_t *sv) {
  if (!sv->active || sv->stopping_done)
    return;
  sv->stopping_done = true;
  sv->stopping = true;
  uv_timer_stop(&sv->timer);
  if (sv->running) {
    uv_process_kill(&sv->proc, SIGTERM);
    uv_timer_start(&sv->timer, on_timer, KILL_AFTER_MS, 0);
    uv_unref((uv_handle_t *)&sv->timer);
  } else {
    uv_close((uv_handle_t *)&sv->timer, NULL);
  }
}

void tb__supervise_free(tb__supervise_t *sv) {
  if (sv->argv != NULL)
    free(sv->argv[0]);
  free(sv->argv);
  free(sv->env);
  free(sv->env_addr);
  free(sv->env_token);
  free(sv->env_obs);
  memset(sv, 0, sizeof *sv);
}
