/* tb_ctl: the benchmarks of trainbusd that need a real training job, driven
 * through the C client library (clients/include/trainbus/client.h).
 *
 *   tb_ctl setlr -a ADDR -t TOKEN [-n N] [-C CAFILE]
 *     Round trip of set_lr on the running run: N calls, each after a random
 *     0..2 ms pause so that they land at random points of a batch. The reply
 *     comes once the trainer has applied the rate at its next batch boundary,
 *     so it includes up to one batch time; an observer on a second connection
 *     measures the batch time from the train_batch_end events' times. N pings
 *     give the transport's floor.
 *
 *   tb_ctl train -a ADDR -t TOKEN -j JOB -k K [-R ROUNDS] [-b PID]
 *     Training slowdown: submits JOB 2*ROUNDS times, alternately with no
 *     subscriber and with K subscribers to every event of every run (raw
 *     sockets, one epoll thread reading as fast as it can and counting
 *     lines), and takes the wall time of each run from its train_begin and
 *     train_end events. Reports medians and the slowdown in percent. With
 *     -b (the daemon's PID) also the trainer thread's own CPU time (from
 *     /proc/PID/task/TID/schedstat, in ns, of the thread the run started):
 *     what the bus costs the trainer itself, which a shared machine's load
 *     hardly disturbs, unlike wall time.
 *
 *   tb_ctl stall -a ADDR -t TOKEN -j JOB -b PID
 *     Memory with a client that subscribes to every event and never reads:
 *     runs JOB once without it and once with it, sampling the daemon's VmRSS
 *     every 20 ms, then reads what the stalled client was sent (events,
 *     dropped notices, a bye).
 *
 * -C CAFILE: the CA to verify a TLS daemon with (ADDR tls://HOST:PORT).
 *
 * Output: key=value lines on stdout (run_brokers.sh parses them). */
#define _GNU_SOURCE
#include "trainbus/client.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *addr = "127.0.0.1:7787", *token = NULL, *job_path = NULL, *ca_file = NULL;
static int n_calls = 300, K = 8, rounds = 3, daemon_pid = 0;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, const tb_client_err_t *e) {
  fprintf(stderr, "tb_ctl: %s: %s\n", what, e ? e->msg : strerror(errno));
  exit(2);
}

static tb_client_t *open_client(tb_role_t role, const char *name) {
  tb_client_opts_t o = {
      .addr = addr, .token = token, .role = role, .name = name, .ca_file = ca_file};
  tb_client_t *c;
  tb_client_err_t e;
  if (tb_client_connect(&o, &c, &e) != 0)
    die("connect", &e);
  return c;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double q) {
  if (n == 0)
    return NAN;
  qsort(v, n, sizeof(*v), cmp_d);
  return v[(size_t)(q * (double)(n - 1) + 0.5)];
}

static long rss_kb(int pid) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long kb = -1;
  while (fgets(line, sizeof(line), f))
    if (!strncmp(line, "VmRSS:", 6))
      kb = atol(line + 6);
  fclose(f);
  return kb;
}

/* ---- raw subscribers ------------------------------------------------------ */

static int raw_connect(void) {
  char host[64];
  int port;
  if (sscanf(addr, "%63[^:]:%d", host, &port) != 2 || strcmp(host, "127.0.0.1") != 0) {
    fprintf(stderr, "tb_ctl: raw subscribers need a 127.0.0.1:PORT address\n");
    exit(2);
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
    die("connect", NULL);
  return fd;
}

/* Reads lines until `n` responses (lines with "result" or "error") came. */
static void raw_wait_replies(int fd, int n) {
  char buf[8192];
  size_t len = 0;
  while (n > 0) {
    ssize_t r = read(fd, buf + len, sizeof(buf) - len - 1);
    if (r <= 0)
      die("read", NULL);
    len += (size_t)r;
    char *p = buf, *e;
    while ((e = memchr(p, '\n', len - (size_t)(p - buf))) != NULL) {
      *e = '\0';
      if (strstr(p, "\"error\":")) {
        fprintf(stderr, "tb_ctl: %s\n", p);
        exit(2);
      }
      if (strstr(p, "\"result\":"))
        n--;
      p = e + 1;
    }
    memmove(buf, p, len - (size_t)(p - buf));
    len -= (size_t)(p - buf);
  }
}

/* An observer subscribed to every event of every run. */
static int raw_subscriber(void) {
  static const char req[] =
      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"auth\",\"params\":{\"role\":\"observer\","
      "\"client\":\"bench-sub\"}}\n"
      "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\",\"params\":{\"events\":[\"*\"]}}\n";
  int fd = raw_connect();
  if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1))
    die("write", NULL);
  raw_wait_replies(fd, 2);
  return fd;
}

typedef struct {
  int n, *fds;
  _Atomic int stop;
  uint64_t lines, bytes, dropped;
} readers_t;

static void *reader_thread(void *arg) {
  readers_t *rd = arg;
  int ep = epoll_create1(0);
  for (int i = 0; i < rd->n; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    fcntl(rd->fds[i], F_SETFL, fcntl(rd->fds[i], F_GETFL) | O_NONBLOCK);
    epoll_ctl(ep, EPOLL_CTL_ADD, rd->fds[i], &ev);
  }
  static char buf[1 << 18];
  struct epoll_event evs[64];
  while (!atomic_load(&rd->stop)) {
    int ne = epoll_wait(ep, evs, 64, 50);
    for (int e = 0; e < ne; e++) {
      int fd = rd->fds[evs[e].data.u32];
      ssize_t r = read(fd, buf, sizeof(buf));
      if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
          epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        continue;
      }
      rd->bytes += (uint64_t)r;
      for (char *p = buf; (p = memchr(p, '\n', (size_t)(buf + r - p))) != NULL; p++)
        rd->lines++;
      if (memmem(buf, (size_t)r, "\"dropped\"", 9))
        rd->dropped++;
    }
  }
  close(ep);
  return NULL;
}

/* ---- one job, start to end --------------------------------------------------- */

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    die(path, NULL);
  char *b = NULL;
  size_t cap = 0;
  ssize_t n = getdelim(&b, &cap, '\0', f);
  fclose(f);
  if (n < 0)
    die(path, NULL);
  *len = (size_t)n;
  return b;
}

typedef struct {
  double wall_s;
  long rss_before, rss_max, rss_end;
  int64_t n_batches;
  double trainer_cpu_s; /* the run's trainer thread, -1 without -b */
} job_result_t;

/* On-CPU nanoseconds of each thread of pid but the main one. */
typedef struct {
  int tid;
  uint64_t ns;
} tcpu_t;

static int threads_cpu(int pid, tcpu_t *t, int cap) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/task", pid);
  DIR *d = opendir(path);
  if (d == NULL)
    return 0;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL && n < cap) {
    int tid = atoi(de->d_name);
    if (tid <= 0 || tid == pid)
      continue;
    char p2[96];
    snprintf(p2, sizeof(p2), "/proc/%d/task/%d/schedstat", pid, tid);
    FILE *f = fopen(p2, "r");
    unsigned long long ns;
    if (f != NULL && fscanf(f, "%llu", &ns) == 1)
      t[n++] = (tcpu_t){tid, (uint64_t)ns};
    if (f != NULL)
      fclose(f);
  }
  closedir(d);
  return n;
}

/* Submits the job and waits for its train_end; the observer `obs` is
 * subscribed to train_begin, train_batch_end (every 1000000, i.e. batch 0
 * only, to stay light) and train_end. */
static job_result_t run_job(tb_client_t *ctl, tb_client_t *obs, const char *json, size_t len) {
  job_result_t res = {0};
  res.rss_before = daemon_pid ? rss_kb(daemon_pid) : -1;
  res.rss_max = res.rss_before;
  res.trainer_cpu_s = -1;
  /* Threads before the run; the one the run starts is the trainer. */
  tcpu_t before[64], now[64], trainer = {0, 0};
  int n_before = daemon_pid ? threads_cpu(daemon_pid, before, 64) : 0;
  char run[TB_PROTO_RUN_MAX];
  tb_client_err_t e;
  if (tb_client_submit(ctl, json, len, run, &e) != 0)
    die("submit", &e);
  int64_t t_begin = 0, t_end = 0;
  uint64_t deadline = now_ns() + 900ull * 1000000000ull;
  while (t_end == 0 && now_ns() < deadline) {
    tb_smsg_t m;
    int r = tb_client_next(obs, daemon_pid ? 20 : 500, &m, &e);
    if (daemon_pid) {
      long kb = rss_kb(daemon_pid);
      if (kb > res.rss_max)
        res.rss_max = kb;
      int n_now = threads_cpu(daemon_pid, now, 64);
      for (int i = 0; i < n_now; i++) {
        bool old = false;
        for (int j = 0; j < n_before && !old; j++)
          old = before[j].tid == now[i].tid;
        if (!old && now[i].ns >= trainer.ns)
          trainer = now[i];
      }
    }
    if (r == TB_CLIENT_ETIMEOUT)
      continue;
    if (r != 0)
      die("next", &e);
    if (m.kind == TB_SMSG_EVENT && strcmp(m.event.run, run) == 0) {
      if (strcmp(m.event.name, "train_begin") == 0)
        t_begin = m.event.time_us;
      else if (strcmp(m.event.name, "train_end") == 0) {
        t_end = m.event.time_us;
        res.n_batches = m.event.seq; /* events in the run, for the report */
      }
    }
    tb_smsg_free(&m);
  }
  if (t_end == 0) {
    fprintf(stderr, "tb_ctl: run %s did not end in time\n", run);
    exit(2);
  }
  res.wall_s = (double)(t_end - t_begin) / 1e6;
  res.rss_end = daemon_pid ? rss_kb(daemon_pid) : -1;
  if (daemon_pid && trainer.tid != 0) {
    /* One last look: the thread may still be running its last hooks. */
    int n_now = threads_cpu(daemon_pid, now, 64);
    for (int i = 0; i < n_now; i++)
      if (now[i].tid == trainer.tid && now[i].ns > trainer.ns)
        trainer = now[i];
    res.trainer_cpu_s = (double)trainer.ns / 1e9;
  }
  return res;
}

static tb_client_t *lifecycle_observer(void) {
  tb_client_t *obs = open_client(TB_ROLE_OBSERVER, "bench-obs");
  const char *evs[] = {"train_begin", "train_end"};
  tb_client_sub_opts_t so = {.events = evs, .n_events = 2};
  tb_client_err_t e;
  if (tb_client_subscribe(obs, &so, NULL, NULL, &e) != 0)
    die("subscribe", &e);
  return obs;
}

/* ---- modes ------------------------------------------------------------------ */

static int mode_train(void) {
  size_t len;
  char *json = read_all(job_path, &len);
  tb_client_t *ctl = open_client(TB_ROLE_CONTROLLER, "bench-ctl");
  tb_client_t *obs = lifecycle_observer();
  double w0[64], w1[64], c0[64], c1[64];
  int n0 = 0, n1 = 0, nc0 = 0, nc1 = 0;
  for (int i = 0; i < 2 * rounds && i < 128; i++) {
    /* Alternate, starting with K on odd rounds, so drift hits both sides. */
    int k = ((i / 2) % 2 == 0) == (i % 2 == 0) ? 0 : K;
    readers_t rd = {.n = k, .fds = calloc((size_t)(k ? k : 1), sizeof(int))};
    for (int j = 0; j < k; j++)
      rd.fds[j] = raw_subscriber();
    pthread_t th;
    if (k > 0)
      pthread_create(&th, NULL, reader_thread, &rd);
    job_result_t r = run_job(ctl, obs, json, len);
    if (k > 0) {
      usleep(200000); /* the tail of the run's events */
      atomic_store(&rd.stop, 1);
      pthread_join(th, NULL);
    }
    for (int j = 0; j < k; j++)
      close(rd.fds[j]);
    printf("train round=%d k=%d wall_s=%.4f trainer_cpu_s=%.4f events_per_sub=%.0f "
           "dropped_notices=%" PRIu64 " last_seq=%" PRId64 "\n",
           i, k, r.wall_s, r.trainer_cpu_s, k ? (double)rd.lines / k : 0.0, rd.dropped,
           r.n_batches);
    if (r.trainer_cpu_s > 0) {
      if (k == 0)
        c0[nc0++] = r.trainer_cpu_s;
      else
        c1[nc1++] = r.trainer_cpu_s;
    }
    fflush(stdout);
    if (k == 0)
      w0[n0++] = r.wall_s;
    else
      w1[n1++] = r.wall_s;
    free(rd.fds);
  }
  double m0 = pct(w0, (size_t)n0, 0.5), m1 = pct(w1, (size_t)n1, 0.5);
  double cm0 = pct(c0, (size_t)nc0, 0.5), cm1 = pct(c1, (size_t)nc1, 0.5);
  printf("train_summary k=%d runs=%d wall0_s=%.4f wallK_s=%.4f slowdown_pct=%.2f min0_s=%.4f "
         "minK_s=%.4f cpu0_s=%.4f cpuK_s=%.4f cpu_slowdown_pct=%.2f\n",
         K, n0, m0, m1, 100.0 * (m1 - m0) / m0, w0[0], w1[0], cm0, cm1, 100.0 * (cm1 - cm0) / cm0);
  tb_client_free(obs);
  tb_client_free(ctl);
  free(json);
  return 0;
}

typedef struct {
  tb_client_t *c;
  _Atomic int stop;
  double *times_us;
  size_t n, cap;
} batch_obs_t;

static void *batch_thread(void *arg) {
  batch_obs_t *b = arg;
  while (!atomic_load(&b->stop)) {
    tb_smsg_t m;
    tb_client_err_t e;
    int r = tb_client_next(b->c, 100, &m, &e);
    if (r == TB_CLIENT_ETIMEOUT)
      continue;
    if (r != 0)
      break;
    if (m.kind == TB_SMSG_EVENT && b->n < b->cap)
      b->times_us[b->n++] = (double)m.event.time_us;
    tb_smsg_free(&m);
  }
  return NULL;
}

static int mode_setlr(void) {
  tb_client_t *ctl = open_client(TB_ROLE_CONTROLLER, "bench-setlr");
  tb_client_err_t e;
  tb_run_info_t *runs;
  int n_runs;
  if (tb_client_runs(ctl, &runs, &n_runs, &e) != 0)
    die("runs", &e);
  char run[TB_PROTO_RUN_MAX] = "";
  for (int i = 0; i < n_runs; i++)
    if (runs[i].state == TB_RUN_RUNNING)
      snprintf(run, sizeof(run), "%s", runs[i].id);
  free(runs);
  if (!run[0]) {
    fprintf(stderr, "tb_ctl: no running run\n");
    return 2;
  }
  batch_obs_t bo = {.c = open_client(TB_ROLE_OBSERVER, "bench-batches"), .cap = 1 << 20};
  bo.times_us = malloc(bo.cap * sizeof(double));
  const char *runv[] = {run}, *evs[] = {"train_batch_end"};
  tb_client_sub_opts_t so = {.runs = runv, .n_runs = 1, .events = evs, .n_events = 1};
  if (tb_client_subscribe(bo.c, &so, NULL, NULL, &e) != 0)
    die("subscribe", &e);
  pthread_t th;
  pthread_create(&th, NULL, batch_thread, &bo);

  double *ping = malloc((size_t)n_calls * sizeof(double));
  double *setlr = malloc((size_t)n_calls * sizeof(double));
  unsigned seed = 12345;
  for (int i = 0; i < n_calls; i++) {
    uint64_t t0 = now_ns();
    if (tb_client_ping(ctl, NULL, &e) != 0)
      die("ping", &e);
    ping[i] = (double)(now_ns() - t0) / 1e3;
  }
  int n_ok = 0;
  for (int i = 0; i < n_calls; i++) {
    usleep((useconds_t)(rand_r(&seed) % 2000));
    tb_client_applied_t ap;
    uint64_t t0 = now_ns();
    int r = tb_client_set_lr(ctl, run, i % 2 ? 0.0031 : 0.003, &ap, &e);
    double us = (double)(now_ns() - t0) / 1e3;
    if (r != 0) {
      fprintf(stderr, "tb_ctl: set_lr: %s\n", e.msg);
      break;
    }
    setlr[n_ok++] = us;
  }
  atomic_store(&bo.stop, 1);
  pthread_join(th, NULL);
  /* Batch time: intervals between consecutive train_batch_end events of one
   * epoch (the time field has microsecond resolution). */
  double *iv = malloc((bo.n ? bo.n : 1) * sizeof(double));
  size_t n_iv = 0;
  for (size_t i = 1; i < bo.n; i++) {
    double d = bo.times_us[i] - bo.times_us[i - 1];
    if (d >= 0)
      iv[n_iv++] = d;
  }
  double mean_iv = 0;
  for (size_t i = 0; i < n_iv; i++)
    mean_iv += iv[i];
  mean_iv = n_iv ? mean_iv / (double)n_iv : NAN;
  printf("setlr calls=%d setlr_p50_us=%.1f setlr_p90_us=%.1f setlr_p99_us=%.1f setlr_max_us=%.1f "
         "ping_p50_us=%.1f ping_p99_us=%.1f batch_p50_us=%.1f batch_mean_us=%.1f batches=%zu\n",
         n_ok, pct(setlr, (size_t)n_ok, 0.5), pct(setlr, (size_t)n_ok, 0.9),
         pct(setlr, (size_t)n_ok, 0.99), pct(setlr, (size_t)n_ok, 1.0),
         pct(ping, (size_t)n_calls, 0.5), pct(ping, (size_t)n_calls, 0.99), pct(iv, n_iv, 0.5),
         mean_iv, bo.n);
  tb_client_free(bo.c);
  tb_client_free(ctl);
  free(bo.times_us);
  free(iv);
  free(ping);
  free(setlr);
  return 0;
}

static int mode_stall(void) {
  if (daemon_pid <= 0) {
    fprintf(stderr, "tb_ctl: stall needs -b PID\n");
    return 2;
  }
  size_t len;
  char *json = read_all(job_path, &len);
  tb_client_t *ctl = open_client(TB_ROLE_CONTROLLER, "bench-ctl");
  tb_client_t *obs = lifecycle_observer();
  job_result_t a = run_job(ctl, obs, json, len);
  printf("stall client=none wall_s=%.3f rss_before_kb=%ld rss_max_kb=%ld rss_end_kb=%ld "
         "growth_kb=%ld\n",
         a.wall_s, a.rss_before, a.rss_max, a.rss_end, a.rss_max - a.rss_before);
  int fd = raw_subscriber();
  int small = 4096; /* a small receive window, so the server's queue fills sooner */
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  job_result_t b = run_job(ctl, obs, json, len);
  /* Now read what it was sent. */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  static char buf[1 << 16];
  uint64_t bytes = 0, lines = 0, dropped = 0, events = 0;
  bool bye = false;
  char tail[256] = "";
  uint64_t quiet_since = now_ns();
  while (now_ns() - quiet_since < 500000000ull) {
    ssize_t r = read(fd, buf, sizeof(buf));
    if (r == 0)
      break;
    if (r < 0) {
      if (errno != EAGAIN)
        break;
      usleep(1000);
      continue;
    }
    quiet_since = now_ns();
    bytes += (uint64_t)r;
    for (char *p = buf; (p = memchr(p, '\n', (size_t)(buf + r - p))) != NULL; p++)
      lines++;
    for (char *p = buf; (p = memmem(p, (size_t)(buf + r - p), "\"method\":\"dropped\"", 18)); p++)
      dropped++;
    for (char *p = buf; (p = memmem(p, (size_t)(buf + r - p), "\"method\":\"event\"", 16)); p++)
      events++;
    if (memmem(buf, (size_t)r, "slow_consumer", 13))
      bye = true;
    snprintf(tail, sizeof(tail), "%.*s", (int)(r < 200 ? r : 200), buf + (r < 200 ? 0 : r - 200));
  }
  printf("stall client=stalled wall_s=%.3f rss_before_kb=%ld rss_max_kb=%ld rss_end_kb=%ld "
         "growth_kb=%ld received_bytes=%" PRIu64 " events=%" PRIu64 " dropped_notices=%" PRIu64
         " slow_consumer_bye=%d\n",
         b.wall_s, b.rss_before, b.rss_max, b.rss_end, b.rss_max - b.rss_before, bytes, events,
         dropped, bye);
  close(fd);
  tb_client_free(obs);
  tb_client_free(ctl);
  free(json);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: tb_ctl setlr|train|stall -a ADDR -t TOKEN [-j JOB] [-k K] [-R ROUNDS] "
                    "[-n N] [-b PID]\n");
    return 2;
  }
  const char *mode = argv[1];
  int c;
  optind = 2;
  while ((c = getopt(argc, argv, "a:t:j:k:R:n:b:C:")) != -1) {
    switch (c) {
    case 'C':
      ca_file = optarg;
      break;
    case 'a':
      addr = optarg;
      break;
    case 't':
      token = optarg;
      break;
    case 'j':
      job_path = optarg;
      break;
    case 'k':
      K = atoi(optarg);
      break;
    case 'R':
      rounds = atoi(optarg);
      break;
    case 'n':
      n_calls = atoi(optarg);
      break;
    case 'b':
      daemon_pid = atoi(optarg);
      break;
    default:
      return 2;
    }
  }
  if (!strcmp(mode, "setlr"))
    return mode_setlr();
  if (!strcmp(mode, "train") && job_path)
    return mode_train();
  if (!strcmp(mode, "stall") && job_path)
    return mode_stall();
  fprintf(stderr, "tb_ctl: unknown mode or missing -j\n");
  return 2;
}
