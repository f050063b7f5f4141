/* The server's life: options, listeners, the loop and its two handles (a
 * uv_async woken by trainers and by tb_server_stop, and a tick timer for
 * deadlines), submitting and attaching runs, and an orderly shutdown.
 *
 * Shutdown, in order: running jobs are asked to checkpoint and leave fit() at
 * their next batch boundary (tb__runs_shutdown); once every trainer has
 * returned and its last events are drained and logged, every client gets
 * "bye shutdown", listeners and handles close, and the loop ends. */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void tb_server_opts_defaults(tb_server_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->max_line = TB_PROTO_MAX_LINE_DEFAULT;
  o->max_clients = 16384;
  o->auth_timeout_ms = 5000;
  o->out_drop_bytes = 256 * 1024;
  o->out_soft_bytes = 2 * 1024 * 1024;
  o->out_soft_seconds = 10;
  o->out_hard_bytes = 8 * 1024 * 1024;
  o->retain_events = 200000;
  o->max_queued_runs = 64;
  o->log_level = 1;
  o->flush_interval_ms = 0;
  o->queue_bytes = 32 * 1024 * 1024;
  o->trainer_timeout_ms = 60000;
}

uint64_t tb__srv_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t tb__srv_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void tb__log(tb_server_t *s, int level, const char *fmt, ...) {
  if (level > s->o.log_level)
    return;
  static const char *names[] = {"error", "info", "debug"};
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fprintf(stderr, "trainbusd: %s: %s\n", names[level < 0 ? 0 : level > 2 ? 2 : level], msg);
}

/* ---- listeners ---------------------------------------------------------------- */

static void on_connection(uv_stream_t *st, int status) {
  listener_t *l = st->data;
  if (status == 0)
    tb__conn_accept(l);
}

static bool is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a);
  }
  return false;
}

static int listen_on(tb_server_t *s, const char *spec, tb_err_t *err) {
  listener_t *l = &s->listeners[s->n_listeners];
  memset(l, 0, sizeof(*l));
  l->srv = s;
  int r;
  if (strchr(spec, '/') != NULL) {
    /* A Unix socket path: only local users can reach it. */
    unlink(spec);
    if ((r = uv_pipe_init(&s->loop, &l->h.pipe, 0)) != 0)
      return tb_errf(err, r, "listen %s: %s", spec, uv_strerror(r));
    if ((r = uv_pipe_bind(&l->h.pipe, spec)) != 0) {
      uv_close((uv_handle_t *)&l->h.pipe, NULL);
      return tb_errf(err, r, "listen %s: %s", spec, uv_strerror(r));
    }
    chmod(spec, 0700);
    l->local = true;
    snprintf(l->address, sizeof(l->address), "unix:%s", spec);
  } else {
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof(host))
      return tb_errf(err, TB_EINVAL, "listen %s: expected HOST:PORT or a socket path", spec);
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || end == colon + 1 || port < 0 || port > 65535)
      return tb_errf(err, TB_EINVAL, "listen %s: the port must be 0..65535", spec);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
      memmove(host, host + 1, strlen(host));
      host[strlen(host) - 1] = '\0';
    }
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) != 0)
      return tb_errf(err, TB_EINVAL, "listen %s: \"%s\" is not an IP address", spec, host);
    l->local = is_loopback((struct sockaddr *)&ss);
    l->tls = s->tls_ctx != NULL;
    if (!l->local && !s->o.token_given)
      return tb_errf(err, TB_EINVAL,
                     "listen %s: refusing a non-loopback address without a token: give "
                     "--token or TRAINBUS_TOKEN",
                     spec);
    /* Protected mode, as Redis's: what crosses a network is encrypted
     * unless the operator says the network is trusted. */
    if (!l->local && !l->tls && !s->o.allow_plaintext)
      return tb_errf(err, TB_EINVAL,
                     "listen %s: refusing a non-loopback address without TLS (tokens and "
                     "training data would cross the network in clear): give --tls-cert FILE "
                     "--tls-key FILE, or --allow-plaintext if the network is trusted or TLS "
                     "ends in front of the daemon",
                     spec);
    if ((r = uv_tcp_init(&s->loop, &l->h.tcp)) != 0)
      return tb_errf(err, r, "listen %s: %s", spec, uv_strerror(r));
    if ((r = uv_tcp_bind(&l->h.tcp, (struct sockaddr *)&ss, 0)) != 0) {
      uv_close((uv_handle_t *)&l->h.tcp, NULL);
      return tb_errf(err, r, "listen %s: %s", spec, uv_strerror(r));
    }
  }
  l->h.stream.data = l;
  if ((r = uv_listen(&l->h.stream, 511, on_connection)) != 0) {
    uv_close((uv_handle_t *)&l->h.stream, NULL);
    return tb_errf(err, r, "listen %s: %s", spec, uv_strerror(r));
  }
  if (l->address[0] == '\0') {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[64];
    uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *)&ss, &len);
    const char *scheme = l->tls ? "tls://" : "";
    if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
      snprintf(l->address, sizeof(l->address), "%s[%s]:%d", scheme, ip,
               ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
      snprintf(l->address, sizeof(l->address), "%s%s:%d", scheme, ip,
               ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
  }
  s->n_listeners++;
  return 0;
}

/* ---- handles --------------------------------------------------------------------- */

static void close_all(tb_server_t *s);

static void on_drain_idle(uv_idle_t *h);
static void on_pause_timer(uv_timer_t *t);

/* How long the drain may wait for the socket of its only (or every) busy
 * reader before it goes on and that reader's batch events are dropped. A
 * reader that is momentarily descheduled (a 2-core machine running the
 * trainer, the loop and the reader) catches up in well under this; one that
 * never reads costs the bus this delay once per drain step, and only when no
 * other client wanted the step's events. */
enum { TB_DRAIN_PAUSE_MS = 10 };

/* Some control request waits for the trainer's answer: the drain must not
 * wait, the answer goes out at once. */
static bool answers_due(tb_server_t *s) {
  for (tb_run_t *r = s->runs; r != NULL; r = r->next)
    if (r->pending != NULL)
      return true;
  return false;
}

/* One step of the drain; if more records wait, the next step runs in the
 * next loop iteration (an idle handle keeps the poll from blocking), unless
 * every client the step wrote to has a full socket: then it waits for one
 * of them to drain (tb__drain_resume) or for TB_DRAIN_PAUSE_MS, the queue
 * absorbing what the trainers send meanwhile (it never blocks them). */
static void drain_now(tb_server_t *s) {
  if (s->drain_paused && !atomic_load(&s->stop_requested)) {
    tb__runs_schedule(s);
    return;
  }
  s->last_drain_ms = uv_now(&s->loop);
  bool more = tb__drain(s);
  tb__runs_schedule(s);
  if (more && s->all_touched_full && !atomic_load(&s->stop_requested) && !answers_due(s)) {
    s->drain_paused = true;
    uv_idle_stop(&s->drain_idle);
    uv_timer_start(&s->pause_timer, on_pause_timer, TB_DRAIN_PAUSE_MS, 0);
    return;
  }
  if (more && !uv_is_active((uv_handle_t *)&s->drain_idle))
    uv_idle_start(&s->drain_idle, on_drain_idle);
  else if (!more)
    uv_idle_stop(&s->drain_idle);
}

void tb__drain_nudge(tb_server_t *s) {
  if (s->drain_paused && answers_due(s))
    tb__drain_resume(s);
}

void tb__drain_resume(tb_server_t *s) {
  if (!s->drain_paused)
    return;
  s->drain_paused = false;
  uv_timer_stop(&s->pause_timer);
  uv_idle_start(&s->drain_idle, on_drain_idle);
}

static void on_pause_timer(uv_timer_t *t) {
  tb_server_t *s = t->data;
  s->drain_paused = false;
  s->all_touched_full = false;
  drain_now(s);
}

static void on_drain_idle(uv_idle_t *h) {
  drain_now(h->data);
}

static void on_drain_timer(uv_timer_t *t) {
  drain_now(t->data);
}

static void on_wake(uv_async_t *a) {
  tb_server_t *s = a->data;
  /* Coalesce: within flush_interval_ms of the last drain, drain when the
   * interval is over instead of now. */
  uint64_t now = uv_now(&s->loop);
  if (!atomic_load(&s->stop_requested) && s->o.flush_interval_ms > 0 &&
      now - s->last_drain_ms < (uint64_t)s->o.flush_interval_ms) {
    if (!uv_is_active((uv_handle_t *)&s->drain_timer))
      uv_timer_start(&s->drain_timer, on_drain_timer,
                     (uint64_t)s->o.flush_interval_ms - (now - s->last_drain_ms), 0);
    return;
  }
  uv_timer_stop(&s->drain_timer);
  drain_now(s);
  if (atomic_load(&s->stop_requested) && !s->stopping) {
    s->stopping = true;
    tb__log(s, 1, "stopping: runs checkpoint at their next batch boundary");
    tb__runs_shutdown(s);
  }
  if (s->stopping && !s->stopped && tb__runs_all_done(s)) {
    tb__drain_all(s);
    uv_idle_stop(&s->drain_idle);
    uv_timer_stop(&s->pause_timer);
    s->drain_paused = false;
    s->stopped = true;
    close_all(s);
  }
}

static void on_tick(uv_timer_t *t) {
  tb_server_t *s = t->data;
  uint64_t now = tb__srv_now_ms();
  for (conn_t *c = s->conns, *next; c != NULL; c = next) {
    next = c->next;
    tb__conn_tick(c, now);
  }
  if (s->stopping)
    on_wake(&s->wake);
}

static void on_handle_closed(uv_handle_t *h) {
  (void)h;
}

/* A stopped daemon's address must not send its clients elsewhere: a client
 * that finds no address file knows the daemon is gone (and retries), where a
 * stale one could lead it, with this directory's token, to whatever listens
 * on that port next. The file is removed only if it is still ours. */
static void remove_address_file(tb_server_t *s) {
  if (!s->address_file)
    return;
  char path[1200], text[320] = "";
  snprintf(path, sizeof(path), "%s/address", s->state_dir);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return;
  bool ours = fgets(text, sizeof(text), f) != NULL;
  fclose(f);
  text[strcspn(text, "\n")] = '\0';
  for (int i = 0; ours && i < s->n_listeners; i++)
    if (strcmp(text, s->listeners[i].address) == 0) {
      unlink(path);
      break;
    }
}

static void close_all(tb_server_t *s) {
  remove_address_file(s);
  for (conn_t *c = s->conns; c != NULL; c = c->next)
    tb__conn_close(c, "shutdown", "daemon stopping");
  for (int i = 0; i < s->n_listeners; i++)
    uv_close((uv_handle_t *)&s->listeners[i].h.stream, on_handle_closed);
  tb__http_stop(s);
  uv_close((uv_handle_t *)&s->tick, on_handle_closed);
  uv_close((uv_handle_t *)&s->drain_timer, on_handle_closed);
  uv_close((uv_handle_t *)&s->drain_idle, on_handle_closed);
  uv_close((uv_handle_t *)&s->pause_timer, on_handle_closed);
  uv_close((uv_handle_t *)&s->wake, on_handle_closed);
  uv_close((uv_handle_t *)&s->trainer_timer, on_handle_closed);
}

/* ---- token and state directory ---------------------------------------------------- */

static int make_token(char *out, size_t len) {
  unsigned char raw[24];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  ssize_t n = read(fd, raw, sizeof(raw));
  close(fd);
  if (n != (ssize_t)sizeof(raw))
    return TB_EIO;
  for (size_t i = 0; i < sizeof(raw) && 2 * i + 2 < len; i++)
    snprintf(out + 2 * i, 3, "%02x", raw[i]);
  return 0;
}

int tb__write_private(const char *path, const char *text) {
  char tmp[1200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  size_t len = strlen(text);
  int r = write(fd, text, len) == (ssize_t)len ? 0 : TB_EIO;
  if (close(fd) != 0 && r == 0)
    r = -errno;
  if (r == 0 && rename(tmp, path) != 0)
    r = -errno;
  if (r != 0)
    unlink(tmp);
  return r;
}

/* ---- jobs' policies ------------------------------------------------------------- */

/* A number from a one-line file; 0 if absent or unreadable. */
static uint64_t read_u64(const char *path) {
  FILE *f = fopen(path, "r");
  unsigned long long v = 0;
  if (f == NULL)
    return 0;
  if (fscanf(f, "%llu", &v) != 1)
    v = 0;
  fclose(f);
  return v;
}

uint64_t tb_server_default_job_memory(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t mem = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : (uint64_t)1 << 32;
  /* A container's limit, cgroup v2 then v1 (each reads as the group the
   * process is in when the container mounts its own hierarchy; "max" or a
   * huge number means none). */
  uint64_t cg[2] = {read_u64("/sys/fs/cgroup/memory.max"),
                    read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes")};
  for (int i = 0; i < 2; i++)
    if (cg[i] > 0 && cg[i] < mem)
      mem = cg[i];
  /* Half: the daemon, the page cache and the rest of the machine keep the
   * other half, so that a job at its budget cannot wake the OOM killer. */
  return mem / 2;
}

/* Resolves the data directories and sets up the two policies. */
static int setup_policies(tb_server_t *s, tb_err_t *err) {
  char real[4096], state[4096] = "";
  if (s->o.n_data_dirs < 0 || s->o.n_data_dirs > TB_SERVER_MAX_DATA_DIRS)
    return tb_errf(err, TB_EINVAL, "at most %d data directories", TB_SERVER_MAX_DATA_DIRS);
  if (s->state_dir[0] != '\0' && realpath(s->state_dir, state) == NULL)
    state[0] = '\0';
  for (int i = 0; i < s->o.n_data_dirs; i++) {
    const char *d = s->o.data_dirs[i];
    struct stat st;
    if (d == NULL || realpath(d, real) == NULL)
      return tb_errf(err, d == NULL ? TB_EINVAL : -errno, "data directory %s: %s", d ? d : "(null)",
                     d ? strerror(errno) : "missing");
    if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
      return tb_errf(err, TB_EINVAL, "data directory %s: not a directory", d);
    if (strlen(real) >= sizeof(s->data_dirs[i]))
      return tb_errf(err, TB_EINVAL, "data directory %s: path too long", d);
    size_t n = strlen(real);
    bool holds_state = state[0] != '\0' &&
                       (strcmp(real, "/") == 0 ||
                        (strncmp(state, real, n) == 0 && (state[n] == '\0' || state[n] == '/')));
    if (holds_state)
      return tb_errf(err, TB_EINVAL,
                     "data directory %s holds the state directory %s (its token and every run's "
                     "checkpoints): give a folder of data only",
                     d, s->state_dir);
    memcpy(s->data_dirs[i], real, n + 1); /* n < sizeof, checked above */
    s->data_dir_ptrs[i] = s->data_dirs[i];
  }
  uint64_t budget = s->o.max_job_memory > 0 ? s->o.max_job_memory : tb_server_default_job_memory();
  tb_job_policy_t *op = &s->operator_policy, *net = &s->network_policy;
  op->max_bytes = budget;
  op->limit_name = "--max-job-memory";
  op->checkpoints = s->state_dir[0] != '\0';
  *net = *op;
  net->data.confined = true;
  net->data.redact = true;
  net->data.dirs = s->data_dir_ptrs;
  net->data.n_dirs = s->o.n_data_dirs;
  return 0;
}

/* The token an earlier start kept in dir/name (token, observer_token,
 * trainer_token), if the file holds one (1 to
 * TB_PROTO_TOKEN_MAX - 1 printable characters without blanks, then a newline);
 * anything else is ignored and a new token is generated. */
static bool read_token(const char *dir, const char *name, char *out, size_t cap) {
  char path[1200], line[TB_PROTO_TOKEN_MAX + 2];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return false;
  bool ok = fgets(line, sizeof(line), f) != NULL;
  fclose(f);
  if (!ok)
    return false;
  size_t n = strcspn(line, "\n");
  if (n == 0 || n >= TB_PROTO_TOKEN_MAX || n >= cap)
    return false;
  for (size_t i = 0; i < n; i++)
    if (line[i] <= ' ' || line[i] > '~')
      return false;
  memcpy(out, line, n);
  out[n] = '\0';
  return true;
}

/* A role's token (observer_token, trainer_token), kept as the control token
 * is: the one given, else the one an earlier start kept in state_dir/NAME,
 * else a new one; written there (0600) so that it stays valid across
 * restarts. */
static int role_token(tb_server_t *s, const char *given, const char *name, char *out, size_t cap,
                      tb_err_t *err) {
  int r;
  if (given != NULL && given[0] != '\0') {
    if (strlen(given) >= TB_PROTO_TOKEN_MAX)
      return tb_errf(err, TB_EINVAL, "the %s is longer than %d bytes", name,
                     TB_PROTO_TOKEN_MAX - 1);
    snprintf(out, cap, "%s", given);
  } else if (s->state_dir[0] == '\0' || !read_token(s->state_dir, name, out, cap)) {
    if ((r = make_token(out, cap)) != 0)
      return tb_errf(err, r, "cannot generate the %s: %s", name, tb_strerror(r));
  }
  if (s->state_dir[0] != '\0') {
    char path[1200], text[300];
    snprintf(path, sizeof(path), "%s/%s", s->state_dir, name);
    snprintf(text, sizeof(text), "%s\n", out);
    if ((r = tb__write_private(path, text)) != 0)
      return tb_errf(err, r, "cannot write %s: %s", path, tb_strerror(r));
  }
  return 0;
}

int tb_server_new(const tb_server_opts_t *o, tb_server_t **out, tb_err_t *err) {
  *out = NULL;
  tb_server_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return tb_errf(err, TB_ENOMEM, "out of memory");
  if (o != NULL)
    s->o = *o;
  else
    tb_server_opts_defaults(&s->o);
  int r;
  if (s->o.max_line < 1024 || s->o.max_line > TB_PROTO_MAX_LINE_CEIL || s->o.max_clients < 1 ||
      s->o.auth_timeout_ms < 10 || s->o.out_hard_bytes < s->o.out_drop_bytes) {
    free(s);
    return tb_errf(err, TB_EINVAL, "server options out of range");
  }
  tb_buf_init(&s->enc);
  if (s->o.queue_bytes == 0)
    s->o.queue_bytes = 32 * 1024 * 1024;
  pthread_mutex_init(&s->q_mu, NULL);
  pthread_mutex_init(&s->runs_mu, NULL);
  if ((r = uv_loop_init(&s->loop)) != 0) {
    free(s);
    return tb_errf(err, r, "cannot start the event loop: %s", uv_strerror(r));
  }
  if (s->o.state_dir != NULL && strlen(s->o.state_dir) > 900) {
    r = tb_errf(err, TB_EINVAL, "state directory path longer than 900 bytes");
    goto fail;
  }
  if (s->o.state_dir != NULL) {
    snprintf(s->state_dir, sizeof(s->state_dir), "%s", s->o.state_dir);
    if (mkdir(s->state_dir, 0700) != 0 && errno != EEXIST) {
      r = tb_errf(err, -errno, "state directory %s: %s", s->state_dir, strerror(errno));
      goto fail;
    }
  }
  if ((r = setup_policies(s, err)) != 0)
    goto fail;
  if ((r = tb__tls_setup(s, err)) != 0)
    goto fail;
  if (s->o.token != NULL && s->o.token[0] != '\0') {
    if (strlen(s->o.token) >= TB_PROTO_TOKEN_MAX) {
      r = tb_errf(err, TB_EINVAL, "the token is longer than %d bytes", TB_PROTO_TOKEN_MAX - 1);
      goto fail;
    }
    snprintf(s->token, sizeof(s->token), "%s", s->o.token);
  } else if (s->state_dir[0] != '\0' &&
             read_token(s->state_dir, "token", s->token, sizeof(s->token))) {
    /* Generated once and kept: a restarted daemon is the same daemon to its
     * clients, whose token stays valid. */
  } else if ((r = make_token(s->token, sizeof(s->token))) != 0) {
    tb_errf(err, r, "cannot generate a token: %s", tb_strerror(r));
    goto fail;
  }
  if (s->state_dir[0] != '\0') {
    char path[1200], text[300];
    snprintf(path, sizeof(path), "%s/token", s->state_dir);
    snprintf(text, sizeof(text), "%s\n", s->token);
    if ((r = tb__write_private(path, text)) != 0) {
      tb_errf(err, r, "cannot write %s: %s", path, tb_strerror(r));
      goto fail;
    }
  }
  if ((r = role_token(s, s->o.observer_token, "observer_token", s->observer_token,
                      sizeof(s->observer_token), err)) != 0 ||
      (r = role_token(s, s->o.trainer_token, "trainer_token", s->trainer_token,
                      sizeof(s->trainer_token), err)) != 0)
    goto fail;
  if (strcmp(s->token, s->observer_token) == 0 || strcmp(s->token, s->trainer_token) == 0 ||
      strcmp(s->observer_token, s->trainer_token) == 0) {
    /* One token for two roles would grant the larger one to both. */
    r = tb_errf(err, TB_EINVAL,
                "the control, observer and trainer tokens must differ (each decides a role)");
    goto fail;
  }
  const char *def = "127.0.0.1:7787";
  int n = s->o.n_listen > 0 ? s->o.n_listen : 1;
  for (int i = 0; i < n && i < TB_SERVER_MAX_LISTEN; i++)
    if ((r = listen_on(s, s->o.n_listen > 0 ? s->o.listen[i] : def, err)) != 0)
      goto fail;
  for (int i = 0; i < s->n_listeners; i++) {
    if (s->listeners[i].address[0] != 'u' && s->state_dir[0] != '\0') {
      char path[1200], text[320];
      snprintf(path, sizeof(path), "%s/address", s->state_dir);
      snprintf(text, sizeof(text), "%s\n", s->listeners[i].address);
      if (tb__write_private(path, text) == 0)
        s->address_file = true;
      break;
    }
  }
  if (s->o.http != NULL && (r = tb__http_start(s, s->o.http, err)) != 0)
    goto fail;
  uv_async_init(&s->loop, &s->wake, on_wake);
  s->wake.data = s;
  uv_timer_init(&s->loop, &s->tick);
  s->tick.data = s;
  uv_timer_init(&s->loop, &s->drain_timer);
  s->drain_timer.data = s;
  uv_idle_init(&s->loop, &s->drain_idle);
  s->drain_idle.data = s;
  uv_timer_init(&s->loop, &s->pause_timer);
  s->pause_timer.data = s;
  uv_timer_start(&s->tick, on_tick, 200, 200);
  if (s->o.trainer_timeout_ms <= 0)
    s->o.trainer_timeout_ms = 60000;
  if (s->o.resume && s->state_dir[0] != '\0') {
    if ((r = tb__runs_restore(s, err)) != 0)
      goto fail;
    tb__ghosts_load(s);
  }
  tb__trainer_start(s);
  if (s->state_dir[0] != '\0')
    tb__runs_number_after_existing(s);
  *out = s;
  return 0;
fail:
  for (int i = 0; i < s->n_listeners; i++)
    uv_close((uv_handle_t *)&s->listeners[i].h.stream, NULL);
  uv_run(&s->loop, UV_RUN_NOWAIT);
  uv_loop_close(&s->loop);
  tb__tls_server_free(s);
  free(s);
  return r ? r : TB_EINVAL;
}

int tb_server_run(tb_server_t *s) {
  tb__runs_schedule(s);
  int r = uv_run(&s->loop, UV_RUN_DEFAULT);
  return r < 0 ? r : 0;
}

static void loop_thread(void *arg) {
  tb_server_run(arg);
}

int tb_server_start(tb_server_t *s) {
  int r = uv_thread_create(&s->loop_thread, loop_thread, s);
  if (r == 0)
    s->loop_thread_started = true;
  return r;
}

void tb_server_stop(tb_server_t *s) {
  atomic_store(&s->stop_requested, true);
  uv_async_send(&s->wake);
}

int tb_server_free(tb_server_t *s) {
  if (s == NULL)
    return 0;
  if (s->loop_thread_started)
    uv_thread_join(&s->loop_thread);
  /* Runs whose trainer never reported back (attached runs) are freed too. */
  while (s->runs != NULL) {
    tb_run_t *r = s->runs;
    s->runs = r->next;
    if (r->thread_started && !r->thread_joined)
      uv_thread_join(&r->thread);
    tb__run_free(r);
  }
  tb__http_free(s);
  free(s->ghosts);
  int closed = uv_loop_close(&s->loop);
  tb__tls_server_free(s);
  free(s->q);
  free(s->cur);
  tb_buf_free(&s->enc);
  free(s->touched);
  pthread_mutex_destroy(&s->q_mu);
  pthread_mutex_destroy(&s->runs_mu);
  free(s);
  return closed;
}

const char *tb_server_address(const tb_server_t *s, int i) {
  return i >= 0 && i < s->n_listeners ? s->listeners[i].address : NULL;
}

const char *tb_server_http_address(const tb_server_t *s) {
  return s->http_address[0] ? s->http_address : NULL;
}

const char *tb_server_token(const tb_server_t *s) {
  return s->token;
}

const char *tb_server_observer_token(const tb_server_t *s) {
  return s->observer_token;
}

const char *tb_server_trainer_token(const tb_server_t *s) {
  return s->trainer_token;
}

/* ---- runs from outside the loop ----------------------------------------------------- */

int tb_server_submit(tb_server_t *s, const char *json, size_t len, const char *origin,
                     const char *base_dir, char run_id[64], tb_err_t *err) {
  return tb__server_submit(s, json, len, origin, base_dir, false, run_id, err);
}

/* The most ranks a distributed job may ask for (tb_server_opts_t.max_ranks). */
static int max_ranks(const tb_server_t *s) {
  if (s->o.max_ranks != 0)
    return s->o.max_ranks;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* What a job meant for several ranks needs of this daemon before it is
 * queued: launching allowed and within --max-ranks, a state directory (its
 * job file and checkpoints live there), hosts only from the operator, and
 * the memory of every rank on this machine within the budget. */
static int distributed_check(const tb_server_t *s, const tb_job_t *job, bool network,
                             const tb_job_policy_t *policy, const tb_job_estimate_t *est,
                             tb_err_t *err) {
  int max = max_ranks(s), n = job->dist_ranks;
  if (max < 0)
    return tb_errf(err, TB_EINVAL,
                   "%s: distributed: this daemon launches no MPI jobs (--max-ranks 0); train it "
                   "with `mpirun -n %d trainbus train JOB.json --connect ...` "
                   "(docs/DISTRIBUTED.md)",
                   job->origin, n);
  if (n > max)
    return tb_errf(err, TB_ERANGE,
                   "%s: distributed.ranks: %d ranks, more than the %d this daemon launches a job "
                   "on (--max-ranks)",
                   job->origin, n, max);
  if (s->state_dir[0] == '\0')
    return tb_errf(err, TB_EINVAL,
                   "%s: distributed: launching mpirun needs a state directory (the ranks read "
                   "the job and write checkpoints there); start trainbusd with --state-dir",
                   job->origin);
  bool hosts = job->dist_hosts[0] != '\0' || job->dist_hostfile[0] != '\0';
  if (network && hosts)
    return tb_errf(err, TB_EINVAL,
                   "%s: distributed.%s: a job submitted over the network runs on this machine "
                   "only; other hosts are the operator's to name (trainbusd --mpirun-arg "
                   "--hostfile --mpirun-arg FILE)",
                   job->origin, job->dist_hosts[0] != '\0' ? "hosts" : "hostfile");
  /* Every rank holds the whole job (its data, its model): on one machine
   * they need n times one process's peak. */
  if (!hosts && policy->max_bytes > 0 && (double)est->total * n > (double)policy->max_bytes) {
    char one[32], all[32], lim[32];
    tb_job_format_bytes(est->total, one, sizeof(one));
    tb_job_format_bytes((uint64_t)((double)est->total * n), all, sizeof(all));
    tb_job_format_bytes(policy->max_bytes, lim, sizeof(lim));
    return tb_errf(err, TB_ERANGE,
                   "%s: needs an estimated %s of memory per rank, %s for its %d ranks on this "
                   "machine, more than the %s a job may use (%s)",
                   job->origin, one, all, n, lim,
                   policy->limit_name != NULL ? policy->limit_name : "the budget");
  }
  return 0;
}

int tb__server_submit(tb_server_t *s, const char *json, size_t len, const char *origin,
                      const char *base_dir, bool network, char run_id[64], tb_err_t *err) {
  tb_job_t *job = NULL;
  int r = tb_job_parse(json, len, origin, base_dir, &job, err);
  if (r != 0)
    return r;
  /* Budgeted, and its paths checked, before anything is allocated for it. */
  const tb_job_policy_t *policy = network ? &s->network_policy : &s->operator_policy;
  tb_job_estimate_t est;
  if ((r = tb_job_check(job, policy, &est, err)) != 0 ||
      (job->dist_ranks > 1 && (r = distributed_check(s, job, network, policy, &est, err)) != 0)) {
    tb_job_free(job);
    return r;
  }
  int queued = 0;
  pthread_mutex_lock(&s->runs_mu);
  for (tb_run_t *q = s->runs; q != NULL; q = q->next)
    queued += q->state == TB_RUN_QUEUED;
  char id[64];
  snprintf(id, sizeof(id), "r%d", ++s->next_run);
  pthread_mutex_unlock(&s->runs_mu);
  if (queued >= s->o.max_queued_runs) {
    tb_job_free(job);
    return tb_errf(err, -EAGAIN, "%d runs are queued already (the limit)", queued);
  }
  tb_run_t *run = tb__run_new(s, id, false);
  if (run == NULL) {
    tb_job_free(job);
    return tb_errf(err, TB_ENOMEM, "out of memory");
  }
  run->job = job;
  run->network = network;
  run->epochs = job->fit.epochs;
  if (run->dir[0] != '\0') {
    /* Keep the job as given, and the folder its relative paths mean. */
    char path[1200], *text = malloc(len + 1), base[1100];
    if (text != NULL) {
      memcpy(text, json, len);
      text[len] = '\0';
      snprintf(path, sizeof(path), "%s/job.json", run->dir);
      tb__write_private(path, text);
      free(text);
    }
    snprintf(path, sizeof(path), "%s/base_dir", run->dir);
    snprintf(base, sizeof(base), "%s\n", base_dir ? base_dir : "");
    tb__write_private(path, base);
    /* Whose job it is: a restart holds it to the same policy. */
    snprintf(path, sizeof(path), "%s/submitted_by", run->dir);
    tb__write_private(path, network ? "network\n" : "operator\n");
  }
  snprintf(run_id, 64, "%s", id);
  uv_async_send(&s->wake);
  return 0;
}

/* Queued runs start when the loop notices; a submit from another thread wakes
 * it, and the drain calls the scheduler. */

int tb_server_attach(tb_server_t *s, const char *name, int epochs, tb_run_t **out, tb_err_t *err) {
  char id[64];
  pthread_mutex_lock(&s->runs_mu);
  if (name != NULL && name[0] != '\0')
    snprintf(id, sizeof(id), "%s", name);
  else
    snprintf(id, sizeof(id), "r%d", ++s->next_run);
  bool taken = false;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next)
    taken |= strcmp(r->id, id) == 0;
  pthread_mutex_unlock(&s->runs_mu);
  if (taken)
    return tb_errf(err, TB_EEXISTS, "a run named %s exists already", id);
  tb_run_t *r = tb__run_new(s, id, true);
  if (r == NULL)
    return tb_errf(err, TB_ENOMEM, "out of memory");
  r->source = TB_SOURCE_EMBEDDED;
  r->epochs = epochs;
  tb__push_state(r, TB_RUN_RUNNING, TB_RUN_QUEUED, "attached", -1, -1);
  *out = r;
  return 0;
}

tb_callback_t *tb_run_callback(tb_run_t *r) {
  return &r->cb;
}

tb_control_t *tb_run_control(tb_run_t *r) {
  return &r->control;
}

void tb_run_detach(tb_run_t *r, bool failed) {
  tb_run_state_t final = failed              ? TB_RUN_FAILED
                         : r->stop_requested ? TB_RUN_STOPPED
                                             : TB_RUN_FINISHED;
  tb__push_state(r, final, r->stop_requested ? TB_RUN_STOPPING : TB_RUN_RUNNING, NULL, -1, -1);
}
