/* tb_pub: the trainbus side of the broker comparison (psbench -P trainbus).
 *
 * It is a "trainer" that embeds the server, the way a C program with its own
 * training loop would (server.h): tb_server_new on 127.0.0.1:0,
 * tb_server_start, tb_server_attach of run "r1", and the run's publisher
 * callback in a tb_callbacks_t. It then fires synthetic train_batch_end
 * hooks, each with logs sized so the encoded event line is about 200 bytes
 * (psbench's payload size), either as fast as it can (blast) or at a fixed
 * rate. Every event's logs carry "t_ns", CLOCK_MONOTONIC in nanoseconds taken
 * just before the hook fires (a double holds it exactly: below 2^53, so the
 * server writes it as an integer), and "i", the event's index from 0, which
 * psbench uses as its sequence number.
 *
 * Driven by psbench through stdin/stdout, so that subscribers are connected
 * before the first event:
 *   stdout: "port P"               once listening
 *   stdin:  "go"                   start publishing
 *   stdout: "done T0 T1"           first and last fire times (CLOCK_MONOTONIC ns)
 *   stdin:  EOF or "quit"          detach the run, stop the server, exit
 *
 * The process has two threads: main (the trainer, which also runs the
 * publisher callback: numbering, packing the record, the queue) and the
 * server's loop thread (encoding, fan-out, writes): psbench reports the
 * CPU of both and of the loop thread alone (the part a broker's server
 * process does).
 *
 * usage: tb_pub -n N [-r RATE] [-w W -f FD] [-c CERT -k KEY]
 *   -c/-k: the embedded server listens with TLS (its certificate and key,
 *   PEM): psbench -S measures what TLS costs per delivery.
 *   RATE 0 or absent: blast. With -w, FD is a memfd holding psbench's
 *   slowest-subscriber progress (a uint64_t): the trainer stays at most W
 *   events ahead of it, as psbench's own publisher does with -w (a closed
 *   loop that measures lossless fan-out capacity; a real trainer never waits). */
#define _GNU_SOURCE
#include "trainbus/callback.h"
#include "trainbus/server.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int fire(tb_callbacks_t *cbs, tb_ctx_t *ctx, tb_control_t *ctl, uint64_t i) {
  tb_logs_t logs;
  tb_logs_clear(&logs);
  /* A loss with 17 digits and an accuracy, as a real run sends, plus the two
   * values the benchmark needs. With the envelope (run, seq, event, epoch,
   * batch, time) the line comes to 207..213 bytes; psbench's is 200. */
  tb_logs_set(&logs, "loss", 0.3123456789 + (double)(i % 97) * 1e-9);
  tb_logs_set(&logs, "acc", 0.890625);
  tb_logs_set(&logs, "i", (double)i);
  tb_logs_set(&logs, "t_ns", (double)now_ns());
  int r = tb_callbacks_fire(cbs, ctx, TB_HOOK_TRAIN_BATCH_END, (int)i, &logs);
  if (r == 0)
    r = tb_control_apply(ctl, ctx, NULL); /* a batch boundary, as in a real loop */
  return r;
}

int main(int argc, char **argv) {
  /* This trainer calls no BLAS, but linking core loads OpenBLAS, whose idle
   * worker threads spin (sched_yield) for a while after start: CPU that is
   * neither the trainer's nor the bus's. One thread means none start; the
   * variable must be set before the library loads, hence the re-exec. */
  if (getenv("OPENBLAS_NUM_THREADS") == NULL) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    execv("/proc/self/exe", argv);
  }
  uint64_t n = 200000, window = 0;
  double rate = 0;
  int c, shm_fd = -1;
  const char *cert = NULL, *key = NULL;
  while ((c = getopt(argc, argv, "n:r:w:f:c:k:")) != -1) {
    if (c == 'n')
      n = strtoull(optarg, NULL, 10);
    else if (c == 'r')
      rate = atof(optarg);
    else if (c == 'w')
      window = strtoull(optarg, NULL, 10);
    else if (c == 'f')
      shm_fd = atoi(optarg);
    else if (c == 'c')
      cert = optarg;
    else if (c == 'k')
      key = optarg;
    else {
      fprintf(stderr, "usage: tb_pub -n N [-r RATE]\n");
      return 2;
    }
  }
  _Atomic uint64_t *progress = NULL;
  if (window > 0) {
    progress = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, shm_fd, 0);
    if (progress == MAP_FAILED) {
      fprintf(stderr, "tb_pub: -w needs -f FD (a memfd from psbench)\n");
      return 2;
    }
  }
  prctl(PR_SET_NAME, "tb_pub"); /* not "exe", after the re-exec */
  signal(SIGPIPE, SIG_IGN);
  prctl(PR_SET_TIMERSLACK, 1UL); /* precise pacing, as psbench's lat mode */
  prctl(PR_SET_PDEATHSIG, SIGTERM);

  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.listen[0] = "127.0.0.1:0";
  o.n_listen = 1;
  o.tls_cert = cert;
  o.tls_key = key;
  o.log_level = getenv("TB_LOG_LEVEL") ? atoi(getenv("TB_LOG_LEVEL")) : 0;
  /* TB_FLUSH_INTERVAL_MS: the daemon's --flush-interval-ms (0: lowest
   * latency, every event written at once). */
  const char *fi = getenv("TB_FLUSH_INTERVAL_MS");
  if (fi != NULL)
    o.flush_interval_ms = atoi(fi);
  /* TB_RETAIN_BYTES: the daemon's --retain-bytes, in bytes (run_retain_ab.sh
   * sets it below what the run publishes, so that eviction runs all along). */
  const char *rb = getenv("TB_RETAIN_BYTES");
  if (rb != NULL)
    o.retain_bytes = strtoull(rb, NULL, 10);
  tb_server_t *s;
  tb_err_t err = {{0}};
  if (tb_server_new(&o, &s, &err) != 0) {
    fprintf(stderr, "tb_pub: %s\n", err.msg);
    return 1;
  }
  if (tb_server_start(s) != 0) {
    fprintf(stderr, "tb_pub: cannot start the loop thread\n");
    return 1;
  }
  tb_run_t *run;
  if (tb_server_attach(s, "r1", 1, &run, &err) != 0) {
    fprintf(stderr, "tb_pub: %s\n", err.msg);
    return 1;
  }
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_callbacks_add(&cbs, tb_run_callback(run));
  tb_control_t *ctl = tb_run_control(run);
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  ctx.steps = (int)n;
  ctx.control = ctl;

  const char *addr = tb_server_address(s, 0);
  const char *colon = strrchr(addr, ':');
  printf("port %s\n", colon ? colon + 1 : addr);
  fflush(stdout);

  char line[64];
  if (fgets(line, sizeof(line), stdin) == NULL || strncmp(line, "go", 2) != 0) {
    fprintf(stderr, "tb_pub: no go\n");
    return 1;
  }
  tb_callbacks_fire(&cbs, &ctx, TB_HOOK_TRAIN_BEGIN, -1, NULL);
  tb_callbacks_fire(&cbs, &ctx, TB_HOOK_EPOCH_BEGIN, 0, NULL);
  uint64_t t0 = now_ns();
  if (rate <= 0) {
    struct timespec ws = {0, 20000};
    for (uint64_t i = 0; i < n; i++) {
      /* Closed loop: wait for the slowest subscriber, giving the CPU to the
       * server and the readers (a yield, not a sleep: a timer's granularity
       * would idle the pipeline, which psbench's own publisher, blocked in
       * write() by a broker's TCP backpressure, is not). */
      for (int spins = 0; progress != NULL && i - atomic_load(progress) >= window; spins++) {
        if (spins < 1000)
          sched_yield();
        else
          nanosleep(&ws, NULL);
      }
      fire(&cbs, &ctx, ctl, i);
    }
  } else {
    uint64_t period = (uint64_t)(1e9 / rate);
    for (uint64_t i = 0; i < n; i++) {
      uint64_t tgt = t0 + i * period;
      struct timespec ts = {(time_t)(tgt / 1000000000ull), (long)(tgt % 1000000000ull)};
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
      }
      fire(&cbs, &ctx, ctl, i);
    }
  }
  uint64_t t1 = now_ns();
  printf("done %" PRIu64 " %" PRIu64 "\n", t0, t1);
  fflush(stdout);

  while (fgets(line, sizeof(line), stdin) != NULL && strncmp(line, "quit", 4) != 0) {
  }
  tb_callbacks_fire(&cbs, &ctx, TB_HOOK_EPOCH_END, 0, NULL);
  tb_callbacks_fire(&cbs, &ctx, TB_HOOK_TRAIN_END, -1, NULL);
  tb_run_detach(run, false);
  tb_server_stop(s);
  tb_server_free(s);
  tb_callbacks_release(&cbs);
  return 0;
}
