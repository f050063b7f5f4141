/* Distributed jobs: a submitted job with "distributed": {"ranks": N} is
 * trained by mpirun, which the daemon launches and supervises
 * (docs/DISTRIBUTED.md, "Submitted to trainbusd").
 *
 * When the run's turn comes (tb__runs_schedule: one run at a time, the
 * daemon's own or launched), the daemon starts
 *
 *   MPIRUN [--mpirun-arg ...] -n N [--host H | --hostfile F] -x TRAINBUS_TOKEN
 *          TRAINBUS train RUN_DIR/job.json --base-dir DIR [--data-dir D ...]
 *          --connect ADDR --run ID --verbose 0 --checkpoint-dir RUN_DIR
 *
 * with the trainer token in its environment. The run becomes a trainer's run
 * (trainer.c) that no trainer has attached yet: rank 0 attaches it by its id,
 * publishes its events and applies its controls like any trainer, so clients
 * watch and steer it as any other run (its source is "trainer"). mpirun's
 * output goes to the daemon's log, line by line, and its last lines are kept:
 * when mpirun exits before the run has ended (a rank died, the job could not
 * be loaded, mpirun could not start), the run fails with the line that says
 * why (Open MPI's "mpirun noticed that process rank 2 ... exited on signal
 * 9", or the CLI's own message, which the ranks of a network job keep free
 * of file contents: --data-dir redacts them). A cancel, or the daemon
 * stopping, sends mpirun SIGTERM (Open MPI passes it to the ranks), then
 * SIGKILL five seconds later.
 *
 * Loop thread only. */
#include "internal.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define KILL_AFTER_MS 5000
#define TAIL_LINES 24
#define LINE_MAX_LEN 400

struct tb_launch_s {
  tb_run_t *run;
  uv_process_t proc;
  uv_pipe_t out;    /* mpirun's stdout and stderr */
  uv_timer_t timer; /* the SIGKILL deadline */
  int open;         /* handles not yet closed */
  bool running;     /* the process has not exited */
  bool killing;     /* SIGTERM sent */
  bool eof;         /* the pipe has ended */
  bool told;        /* the run has been told how mpirun ended */
  int64_t status;   /* mpirun's exit status and signal, once exited */
  int sig;
  bool network; /* submitted over the network */
  int ranks;
  char part[LINE_MAX_LEN]; /* the line being read */
  size_t part_len;
  char tail[TAIL_LINES][LINE_MAX_LEN]; /* the last lines, a ring */
  int n_tail;
  char rbuf[4096];
};

/* ---- command line ------------------------------------------------------------ */

void tb__beside_self(const char *name, char *out, size_t cap) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 64);
  if (n > 0 && strlen(name) < 64) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash != NULL) {
      strcpy(slash + 1, name);
      if (access(self, X_OK) == 0) {
        snprintf(out, cap, "%s", self);
        return;
      }
    }
  }
  snprintf(out, cap, "%s", name);
}

/* The CLI the ranks run: --trainbus, else `trainbus` beside this
 * executable (installed together), else the one on PATH. */
static void cli_path(const tb_server_t *s, char *out, size_t cap) {
  if (s->o.trainbus != NULL)
    snprintf(out, cap, "%s", s->o.trainbus);
  else
    tb__beside_self("trainbus", out, cap);
}

/* The folder the job's relative paths mean, as submit kept it. */
static void base_dir_of(const tb_run_t *r, char *out, size_t cap) {
  char path[1200];
  snprintf(path, sizeof(path), "%s/base_dir", r->dir);
  snprintf(out, cap, ".");
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return;
  if (fgets(out, (int)cap, f) == NULL || out[0] == '\n' || out[0] == '\0')
    snprintf(out, cap, ".");
  out[strcspn(out, "\n")] = '\0';
  fclose(f);
}

static void verdict(tb_launch_t *l);

/* ---- output ---------------------------------------------------------------- */

static void keep_line(tb_launch_t *l, const char *line) {
  if (line[0] == '\0')
    return;
  tb__log(l->run->srv, 1, "run %s: mpirun: %s", l->run->id, line);
  snprintf(l->tail[l->n_tail % TAIL_LINES], LINE_MAX_LEN, "%s", line);
  l->n_tail++;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  tb_launch_t *l = h->data;
  (void)suggested;
  buf->base = l->rbuf;
  buf->len = sizeof(l->rbuf);
}

/* The last handle closed: the next queued run may start. */
static void on_closed(uv_handle_t *h) {
  tb_launch_t *l = h->data;
  if (--l->open == 0 && !l->run->srv->stopping)
    tb__runs_schedule(l->run->srv);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  tb_launch_t *l = st->data;
  if (n < 0) {
    if (l->part_len > 0) {
      l->part[l->part_len] = '\0';
      keep_line(l, l->part);
      l->part_len = 0;
    }
    uv_close((uv_handle_t *)st, on_closed);
    l->eof = true;
    if (!l->running && l->proc.pid != 0)
      verdict(l);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    char c = buf->base[i];
    if (c == '\n' || l->part_len == LINE_MAX_LEN - 1) {
      l->part[l->part_len] = '\0';
      keep_line(l, l->part);
      l->part_len = 0;
      if (c == '\n')
        continue;
    }
    /* One readable line in the log whatever a rank prints. */
    l->part[l->part_len++] = (unsigned char)c < 0x20 && c != '\t' ? '?' : c;
  }
}

/* Why mpirun ended, from its last lines: Open MPI's own account of a rank
 * (it names the rank and the signal or exit code), else the last line the
 * CLI wrote ("trainbus train: ..."), else none. */
static const char *why(const tb_launch_t *l) {
  static const char *const marks[] = {"mpirun noticed that process rank",
                                      "MPI_ABORT was invoked on rank",
                                      "trainbus train:", "mpirun was unable", "mpirun could not"};
  int first = l->n_tail > TAIL_LINES ? l->n_tail - TAIL_LINES : 0;
  for (size_t m = 0; m < sizeof(marks) / sizeof(marks[0]); m++)
    for (int i = l->n_tail - 1; i >= first; i--) {
      const char *line = l->tail[i % TAIL_LINES];
      const char *at = strstr(line, marks[m]);
      if (at != NULL)
        return at;
    }
  return NULL;
}

/* ---- the process -------------------------------------------------------------- */

/* mpirun has exited and its output has been read (or a second has passed):
 * the run learns how it ended. */
static void verdict(tb_launch_t *l) {
  tb_run_t *r = l->run;
  if (l->told)
    return;
  l->told = true;
  uv_timer_stop(&l->timer);
  uv_close((uv_handle_t *)&l->timer, on_closed);
  char reason[600];
  const char *w = l->status != 0 || l->sig != 0 ? why(l) : NULL;
  if (l->sig != 0)
    snprintf(reason, sizeof(reason), "mpirun (%d ranks) was killed by signal %d%s%s", l->ranks,
             l->sig, w ? ": " : "", w ? w : "");
  else
    snprintf(reason, sizeof(reason), "mpirun (%d ranks) exited with status %lld%s%s", l->ranks,
             (long long)l->status, w ? ": " : "", w ? w : "");
  tb__log(r->srv, l->status == 0 && l->sig == 0 ? 1 : 0, "run %s: %s", r->id, reason);
  tb__trainer_launch_ended(r, r->srv->stopping
                                  ? "trainbusd stopped while the run trained on its ranks "
                                    "(mpirun was ended); submit the job again to train it"
                                  : reason);
}

static void on_timer(uv_timer_t *t) {
  tb_launch_t *l = t->data;
  if (!l->running) {
    verdict(l); /* its output did not end a second after it exited */
    return;
  }
  tb__log(l->run->srv, 0, "run %s: mpirun still running %d s after SIGTERM: SIGKILL", l->run->id,
          KILL_AFTER_MS / 1000);
  uv_process_kill(&l->proc, SIGKILL);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig) {
  tb_launch_t *l = p->data;
  l->running = false;
  l->status = status;
  l->sig = sig;
  uv_close((uv_handle_t *)p, on_closed);
  /* Its last lines (the reason) may still be in the pipe. */
  if (l->eof)
    verdict(l);
  else
    uv_timer_start(&l->timer, on_timer, 1000, 0);
}

int tb__launch(tb_run_t *r, bool network, tb_err_t *err) {
  tb_server_t *s = r->srv;
  tb_job_t *job = r->job;
  tb_launch_t *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return tb_errf(err, TB_ENOMEM, "out of memory");
  l->run = r;
  l->ranks = job->dist_ranks;
  l->network = network;

  char cli[4096], base[1100], jobfile[1200], ranks[16];
  cli_path(s, cli, sizeof(cli));
  base_dir_of(r, base, sizeof(base));
  snprintf(jobfile, sizeof(jobfile), "%s/job.json", r->dir);
  snprintf(ranks, sizeof(ranks), "%d", job->dist_ranks);
  const char *argv[TB_SERVER_MAX_MPIRUN_ARGS + TB_SERVER_MAX_DATA_DIRS * 2 + 40];
  int n = 0;
  argv[n++] = s->o.mpirun != NULL ? s->o.mpirun : "mpirun";
  for (int i = 0; i < s->o.n_mpirun_args; i++)
    argv[n++] = s->o.mpirun_args[i];
  argv[n++] = "-n";
  argv[n++] = ranks;
  if (job->dist_hosts[0] != '\0') {
    argv[n++] = "--host";
    argv[n++] = job->dist_hosts;
  } else if (job->dist_hostfile[0] != '\0') {
    argv[n++] = "--hostfile";
    argv[n++] = job->dist_hostfile;
  }
  /* Open MPI gives ranks on other hosts only the variables named. */
  argv[n++] = "-x";
  argv[n++] = "TRAINBUS_TOKEN";
  if (getenv("TRAINBUS_CACERT") != NULL) { /* a tls:// address's CA */
    argv[n++] = "-x";
    argv[n++] = "TRAINBUS_CACERT";
  }
  argv[n++] = cli;
  argv[n++] = "train";
  argv[n++] = jobfile;
  argv[n++] = "--base-dir";
  argv[n++] = base;
  if (network)
    for (int i = 0; i < s->o.n_data_dirs; i++) {
      argv[n++] = "--data-dir";
      argv[n++] = s->data_dirs[i];
    }
  argv[n++] = "--connect";
  argv[n++] = tb_server_address(s, 0);
  argv[n++] = "--run";
  argv[n++] = r->id;
  argv[n++] = "--verbose";
  argv[n++] = "0";
  /* Checkpoints go to the run's folder, as the daemon's own runs' do. */
  argv[n++] = "--checkpoint-dir";
  argv[n++] = r->dir;
  argv[n] = NULL;

  size_t ne = 0;
  while (environ[ne] != NULL)
    ne++;
  char **env = calloc(ne + 2, sizeof(*env));
  char tok[TB_PROTO_TOKEN_MAX + 32];
  if (env == NULL) {
    free(l);
    return tb_errf(err, TB_ENOMEM, "out of memory");
  }
  size_t k = 0;
  for (size_t i = 0; i < ne; i++)
    if (strncmp(environ[i], "TRAINBUS_TOKEN=", 15) != 0)
      env[k++] = environ[i];
  snprintf(tok, sizeof(tok), "TRAINBUS_TOKEN=%s", tb_server_trainer_token(s));
  env[k++] = tok;

  /* One pipe for mpirun's stdout and stderr, in the order it writes them. */
  uv_file fds[2];
  int rc = uv_pipe(fds, UV_NONBLOCK_PIPE, 0);
  if (rc != 0) {
    free(env);
    free(l);
    return tb_errf(err, TB_EIO, "cannot make a pipe for mpirun: %s", uv_strerror(rc));
  }
  uv_pipe_init(&s->loop, &l->out, 0);
  uv_pipe_open(&l->out, fds[0]);
  uv_timer_init(&s->loop, &l->timer);
  l->out.data = l->timer.data = l->proc.data = l;
  l->open = 2;
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                   {.flags = UV_INHERIT_FD, .data.fd = fds[1]},
                                   {.flags = UV_INHERIT_FD, .data.fd = fds[1]}};
  uv_process_options_t o;
  memset(&o, 0, sizeof(o));
  o.file = argv[0];
  o.args = (char **)argv;
  o.env = env;
  o.stdio = stdio;
  o.stdio_count = 3;
  o.exit_cb = on_exit_cb;
  /* Its own process group: a terminal's ^C to the daemon is the daemon's
   * to pass on (SIGTERM at shutdown), not mpirun's. */
  o.flags = UV_PROCESS_DETACHED;
  rc = uv_spawn(&s->loop, &l->proc, &o);
  free(env);
  close(fds[1]); /* the child's; EOF comes when the last of its holders exits */
  l->open++;
  if (rc != 0) {
    uv_close((uv_handle_t *)&l->proc, on_closed);
    uv_close((uv_handle_t *)&l->out, on_closed);
    uv_close((uv_handle_t *)&l->timer, on_closed);
    r->launch = l; /* freed with the run, once its handles are closed */
    return tb_errf(err, rc == UV_ENOENT ? TB_EINVAL : TB_EIO, "cannot start %s: %s%s", argv[0],
                   uv_strerror(rc),
                   rc == UV_ENOENT ? " (install openmpi-bin, or give trainbusd --mpirun PATH)"
                                   : "");
  }
  l->running = true;
  uv_read_start((uv_stream_t *)&l->out, on_alloc, on_read);
  r->launch = l;
  tb__log(s, 1, "run %s: launched mpirun (pid %d) on %d ranks: %s train %s", r->id, l->proc.pid,
          l->ranks, cli, jobfile);
  return 0;
}

bool tb__launch_busy(const tb_run_t *r) {
  return r->launch != NULL && (r->launch->running || r->launch->open > 0);
}

int tb__launch_ranks(const tb_run_t *r) {
  return r->launch != NULL ? r->launch->ranks : 0;
}

int tb__launch_pid(const tb_run_t *r) {
  return r->launch != NULL && r->launch->running ? r->launch->proc.pid : 0;
}

void tb__launch_kill(tb_run_t *r) {
  tb_launch_t *l = r->launch;
  if (l == NULL || !l->running || l->killing)
    return;
  l->killing = true;
  uv_process_kill(&l->proc, SIGTERM);
  uv_timer_start(&l->timer, on_timer, KILL_AFTER_MS, 0);
}

void tb__launch_free(tb_run_t *r) {
  free(r->launch);
  r->launch = NULL;
}
