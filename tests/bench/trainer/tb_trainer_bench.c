/* tb_trainer_bench: what publishing a training loop to a daemon as a trainer
 * costs (issue 14), each figure beside its reference in the same run. Run by
 * run_trainer.sh; one JSON line per measurement on stdout.
 *
 *   cost -a ADDR [-n N]   the loop thread's cost per event of the publisher
 *       (trainbus/publisher.h, to the daemon at ADDR) against an empty
 *       callback list, in the same process; tb_trainer_embed cost, the
 *       same for the daemon's own publisher (an embedded server's run
 *       callback: what a daemon run pays). Events are
 *       train_batch_end with a loss and an accuracy, fired in bursts of 32
 *       with a millisecond between bursts (about 30,000 events/s, faster
 *       than any real loop publishes, slower than the daemon takes them, so
 *       nothing is dropped: the drop path is cheaper and would flatter the
 *       figure); only the hook calls are timed. The two paths alternate in
 *       blocks of 3,200 events so drift hits them alike.
 *
 *   fit [-a ADDR] [-e EPOCHS]   trains the demo job (Fashion-MNIST MLP,
 *       one BLAS thread) and reports the training time (train_begin to
 *       train_end: wall time, and the training thread's CPU time); with -a,
 *       published to ADDR as `trainbus train --connect`
 *       does (the publisher in the callback list, the control block in fit).
 *
 *   lat -a ADDR [-k K] [-T SECONDS]   subscribes to every run's
 *       train_batch_end and state events and, for each batch event, takes
 *       the delay from its time (the trainer's clock at the hook, in the
 *       daemon's run and in a trainer's alike) to its arrival here; ends
 *       when K runs have ended; reports p50/p99 per source (daemon,
 *       trainer). The clocks are the same machine's CLOCK_REALTIME.
 *
 *   sub -a ADDR   a subscriber to every event of every run that reads and
 *       discards them until killed (the 8 subscribers of the fit figure). */
#define _GNU_SOURCE
#include "trainbus/callback.h"
#ifdef TB_BENCH_EMBEDDED
#include "trainbus/server.h"
#else
#include "trainbus/client.h"
#include "trainbus/job.h"
#include "trainbus/model.h"
#include "trainbus/publisher.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* This thread's CPU time: what publishing costs the loop itself, which a
 * shared machine's load hardly disturbs (waiting for a core is not
 * counted), unlike wall time (tests/bench/brokers/tb_ctl.c does the same
 * with the trainer thread's schedstat). */
static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void usage(void) {
  fprintf(stderr, "usage: tb_trainer_bench cost -a ADDR [-n N] [-t TOKEN]\n"
                  "       tb_trainer_bench fit [-a ADDR] [-t TOKEN] [-e EPOCHS]\n"
                  "       tb_trainer_bench lat -a ADDR [-k RUNS] [-T SECONDS]\n"
                  "       tb_trainer_bench sub -a ADDR\n");
}

/* ---- cost -------------------------------------------------------------------- */

/* Fires n train_batch_end hooks through cbs in bursts; returns the ns spent
 * in the hook calls, and adds the thread's CPU time of the block to *cpu. */
static uint64_t fire_block(tb_callbacks_t *cbs, tb_ctx_t *ctx, int64_t *index, int n,
                           uint64_t *cpu) {
  uint64_t spent = 0, c0 = cpu_ns();
  tb_logs_t logs;
  for (int i = 0; i < n; i++) {
    tb_logs_clear(&logs);
    tb_logs_set(&logs, "loss", 0.3123456789 + (double)(*index % 97) * 1e-9);
    tb_logs_set(&logs, "accuracy", 0.890625);
    ctx->batch = (int)(*index % 1000);
    uint64_t t0 = now_ns();
    tb_callbacks_fire(cbs, ctx, TB_HOOK_TRAIN_BATCH_END, ctx->batch, &logs);
    spent += now_ns() - t0;
    (*index)++;
    if (i % 32 == 31)
      usleep(1000);
  }
  *cpu += cpu_ns() - c0;
  return spent;
}

/* The path measured: the publisher to a daemon, or (tb_trainer_embed, built
 * from this file with TB_BENCH_EMBEDDED) an embedded server's run callback:
 * the client and server libraries cannot be linked into one program (both
 * have a TLS room of their own), so the two are two programs that
 * run_trainer.sh runs one after the other, alternating. */
#ifdef TB_BENCH_EMBEDDED
#define PATH_NAME "embedded"
#else
#define PATH_NAME "publisher"
#endif

static int cost(const char *addr, const char *token, int n) {
  tb_callbacks_t lists[2];
  for (int i = 0; i < 2; i++)
    tb_callbacks_init(&lists[i]);
    /* lists[1]: empty, the loop's own cost */
#ifdef TB_BENCH_EMBEDDED
  (void)addr, (void)token;
  tb_server_opts_t so;
  tb_server_opts_defaults(&so);
  so.listen[0] = "127.0.0.1:0";
  so.n_listen = 1;
  so.log_level = 0;
  tb_server_t *s;
  tb_run_t *run;
  tb_err_t err = {{0}};
  if (tb_server_new(&so, &s, &err) != 0 || tb_server_start(s) != 0 ||
      tb_server_attach(s, "bench", 1, &run, &err) != 0) {
    fprintf(stderr, "tb_trainer_embed: embedded server: %s\n", err.msg);
    return 1;
  }
  tb_callbacks_add(&lists[0], tb_run_callback(run));
#else
  tb_client_err_t cerr;
  tb_publisher_opts_t po = {.addr = addr, .token = token, .name = "bench-cost", .epochs = 1};
  tb_publisher_t *pub;
  if (tb_publisher_new(&po, &pub, &cerr) != 0) {
    fprintf(stderr, "tb_trainer_bench: %s\n", cerr.msg);
    return 1;
  }
  tb_callbacks_add(&lists[0], tb_publisher_callback(pub));
#endif
  tb_ctx_t ctx;
  tb_ctx_init(&ctx);
  ctx.epochs = 1;
  ctx.steps = 1000;
  ctx.epoch = 0;
  uint64_t spent[2] = {0}, cpu[2] = {0};
  int64_t index[2] = {0};
  int64_t done = 0;
  const int block = 3200;
  while (done < n) {
    for (int k = 0; k < 2; k++)
      spent[k] += fire_block(&lists[k], &ctx, &index[k], block, &cpu[k]);
    done += block;
  }
  int64_t dropped = 0;
#ifdef TB_BENCH_EMBEDDED
  tb_server_stop(s);
  tb_server_free(s);
#else
  if (tb_publisher_finish(pub, TB_RUN_FINISHED, NULL, 60000, &cerr) != 0)
    fprintf(stderr, "tb_trainer_bench: finish: %s\n", cerr.msg);
  tb_publisher_stats_t st;
  tb_publisher_stats(pub, &st);
  dropped = st.dropped;
  tb_publisher_free(pub);
#endif
  /* CPU per event beyond the empty list's (the loop's own work, logs). */
  printf("{\"mode\":\"cost\",\"path\":\"%s\",\"events\":%lld,\"hook_ns\":%.1f,\"cpu_ns\":%.1f,"
         "\"empty_ns\":%.1f,\"dropped\":%lld}\n",
         PATH_NAME, (long long)done, (double)spent[0] / (double)done,
         (double)(cpu[0] - cpu[1]) / (double)done, (double)spent[1] / (double)done,
         (long long)dropped);
  for (int i = 0; i < 2; i++)
    tb_callbacks_release(&lists[i]);
  return dropped == 0 ? 0 : 1;
}

#ifndef TB_BENCH_EMBEDDED
/* ---- fit ------------------------------------------------------------------------ */

static uint64_t t_begin, t_end, c_begin, c_end;

static int timing_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  (void)cb, (void)index, (void)logs;
  if (ctx->hook == TB_HOOK_TRAIN_BEGIN) {
    t_begin = now_ns();
    c_begin = cpu_ns();
  } else if (ctx->hook == TB_HOOK_TRAIN_END) {
    t_end = now_ns();
    c_end = cpu_ns();
  }
  return 0;
}

static int fit(const char *addr, const char *token, int epochs) {
  char buf[4096], notice[1200] = "";
  const char *demo =
      tb_job_demo_json(getenv("TRAINBUS_DEMO_DATA"), buf, sizeof(buf), notice, sizeof(notice));
  tb_job_t *job = NULL;
  tb_err_t err = {{0}};
  if (notice[0]) {
    fprintf(stderr, "tb_trainer_bench: %s\n", notice);
    return 77;
  }
  if (demo == NULL || tb_job_parse(demo, strlen(demo), "demo", NULL, &job, &err) != 0) {
    fprintf(stderr, "tb_trainer_bench: demo job: %s\n", err.msg);
    return 1;
  }
  tb_set_num_threads(1);
  job->threads = 1;
  if (tb_job_prepare(job, &err) != 0) {
    fprintf(stderr, "tb_trainer_bench: %s\n", err.msg);
    return 1;
  }
  if (epochs > 0)
    job->fit.epochs = epochs;
  job->fit.verbose = 0;
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_job_add_callbacks(job, &cbs);
  tb_callback_t timing = {.name = "timing"};
  timing.hooks[TB_HOOK_TRAIN_BEGIN] = timing_hook;
  timing.hooks[TB_HOOK_TRAIN_END] = timing_hook;
  tb_control_t control;
  tb_control_init(&control);
  tb_publisher_t *pub = NULL;
  if (addr != NULL) {
    tb_client_err_t cerr;
    tb_publisher_opts_t po = {.addr = addr,
                              .token = token,
                              .name = job->name,
                              .epochs = job->fit.epochs,
                              .lr = tb_model_lr(job->model),
                              .control = &control};
    if (tb_publisher_new(&po, &pub, &cerr) != 0) {
      fprintf(stderr, "tb_trainer_bench: %s\n", cerr.msg);
      return 1;
    }
    job->fit.control = &control;
    tb_callbacks_add(&cbs, tb_publisher_callback(pub));
  }
  tb_callbacks_add(&cbs, &timing);
  tb_logs_t last;
  int r = tb_model_fit(job->model, job->train, &job->fit, &cbs, &last, &err);
  if (r != 0)
    fprintf(stderr, "tb_trainer_bench: %s\n", err.msg);
  tb_publisher_stats_t st = {0};
  if (pub != NULL) {
    tb_client_err_t cerr;
    if (tb_publisher_finish(pub, TB_RUN_FINISHED, NULL, 60000, &cerr) != 0)
      fprintf(stderr, "tb_trainer_bench: finish: %s\n", cerr.msg);
    tb_publisher_stats(pub, &st);
    tb_publisher_free(pub);
  }
  printf("{\"mode\":\"fit\",\"published\":%s,\"epochs\":%d,\"train_s\":%.4f,\"cpu_s\":%.4f,"
         "\"events\":%lld,\"dropped\":%lld,\"loss\":%.6f}\n",
         addr ? "true" : "false", job->fit.epochs, (double)(t_end - t_begin) / 1e9,
         (double)(c_end - c_begin) / 1e9, (long long)st.events, (long long)st.dropped,
         last.n > 0 ? last.values[0] : NAN);
  tb_callbacks_release(&cbs);
  tb_control_destroy(&control);
  tb_job_free(job);
  return r == 0 ? 0 : 1;
}

static int64_t wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- lat -------------------------------------------------------------------------- */

typedef struct {
  char name[16];
  double *us;
  size_t n, cap;
} series_t;

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(series_t *s, double p) {
  if (s->n == 0)
    return NAN;
  size_t i = (size_t)ceil(p * (double)s->n) - 1;
  return s->us[i < s->n ? i : s->n - 1];
}

static int lat(const char *addr, int want_final, int limit_s) {
  tb_client_opts_t co = {.addr = addr, .name = "bench-lat"};
  tb_client_t *c;
  tb_client_err_t cerr;
  if (tb_client_connect(&co, &c, &cerr) != 0) {
    fprintf(stderr, "tb_trainer_bench: %s\n", cerr.msg);
    return 1;
  }
  const char *events[] = {"train_batch_end", "state"};
  tb_client_sub_opts_t so = {.events = events, .n_events = 2};
  if (tb_client_subscribe(c, &so, NULL, NULL, &cerr) != 0) {
    fprintf(stderr, "tb_trainer_bench: %s\n", cerr.msg);
    return 1;
  }
  printf("{\"mode\":\"lat\",\"subscribed\":true}\n");
  fflush(stdout);
  series_t series[2] = {{"daemon", NULL, 0, 0}, {"trainer", NULL, 0, 0}};
  int finals = 0;
  uint64_t deadline = now_ns() + (uint64_t)limit_s * 1000000000ull;
  tb_smsg_t m;
  while (finals < want_final && now_ns() < deadline) {
    int rc = tb_client_next(c, 1000, &m, &cerr);
    if (rc == TB_CLIENT_ETIMEOUT)
      continue;
    if (rc != 0) {
      fprintf(stderr, "tb_trainer_bench: %s\n", cerr.msg);
      break;
    }
    int64_t arrived = wall_us();
    if (m.kind == TB_SMSG_EVENT) {
      const tb_event_t *e = &m.event;
      if (strcmp(e->name, "state") == 0) {
        finals += tb_run_state_is_final(tb_run_state_from_name(e->state));
      } else if (e->source != NULL) {
        series_t *s = strcmp(e->source, "trainer") == 0 ? &series[1] : &series[0];
        if (s->n == s->cap) {
          s->cap = s->cap ? 2 * s->cap : 4096;
          s->us = realloc(s->us, s->cap * sizeof(double));
          if (s->us == NULL)
            return 1;
        }
        s->us[s->n++] = (double)(arrived - e->time_us);
      }
    }
    tb_smsg_free(&m);
  }
  for (int i = 0; i < 2; i++) {
    series_t *s = &series[i];
    qsort(s->us, s->n, sizeof(double), cmp_double);
    printf("{\"mode\":\"lat\",\"source\":\"%s\",\"events\":%zu,\"p50_us\":%.0f,\"p99_us\":%.0f}\n",
           s->name, s->n, pct(s, 0.50), pct(s, 0.99));
    free(s->us);
  }
  tb_client_free(c);
  return finals >= want_final ? 0 : 1;
}

static int sub(const char *addr) {
  tb_client_opts_t co = {.addr = addr, .name = "bench-sub"};
  tb_client_t *c;
  tb_client_err_t cerr;
  tb_client_sub_opts_t so = {0};
  if (tb_client_connect(&co, &c, &cerr) != 0 || tb_client_subscribe(c, &so, NULL, NULL, &cerr)) {
    fprintf(stderr, "tb_trainer_bench: %s\n", cerr.msg);
    return 1;
  }
  tb_smsg_t m;
  for (;;) {
    int rc = tb_client_next(c, 1000, &m, &cerr);
    if (rc == TB_CLIENT_ETIMEOUT)
      continue;
    if (rc != 0)
      break;
    tb_smsg_free(&m);
  }
  tb_client_free(c);
  return 0;
}

#endif /* TB_BENCH_EMBEDDED */

int main(int argc, char **argv) {
  if (argc < 2) {
    usage();
    return 2;
  }
  const char *mode = argv[1], *addr = NULL, *token = getenv("TRAINBUS_TOKEN");
  int n = 96000, epochs = 0, k = 2, limit = 600, opt;
  optind = 2;
  while ((opt = getopt(argc, argv, "a:t:n:e:k:T:")) != -1) {
    switch (opt) {
    case 'a':
      addr = optarg;
      break;
    case 't':
      token = optarg;
      break;
    case 'n':
      n = atoi(optarg);
      break;
    case 'e':
      epochs = atoi(optarg);
      break;
    case 'k':
      k = atoi(optarg);
      break;
    case 'T':
      limit = atoi(optarg);
      break;
    default:
      usage();
      return 2;
    }
  }
#ifdef TB_BENCH_EMBEDDED
  (void)epochs, (void)k, (void)limit;
  if (strcmp(mode, "cost") == 0)
    return cost(addr, token, n);
#else
  if (strcmp(mode, "cost") == 0 && addr != NULL)
    return cost(addr, token, n);
  if (strcmp(mode, "fit") == 0)
    return fit(addr, token, epochs);
  if (strcmp(mode, "lat") == 0 && addr != NULL)
    return lat(addr, k, limit);
  if (strcmp(mode, "sub") == 0 && addr != NULL)
    return sub(addr);
#endif
  usage();
  return 2;
}
