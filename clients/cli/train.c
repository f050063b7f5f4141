/* `trainbus train`: runs a job in this process with a progress bar, plain
 * epoch lines, or every event as a JSON line; with --connect (or
 * --state-dir) it also publishes the run to a daemon as a trainer
 * (trainbus/publisher.h), so the daemon's clients watch and steer it. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "cli.h"

#include "trainbus/callbacks.h"
#include "trainbus/job.h"
#include "trainbus/model.h"
#include "trainbus/publisher.h"
#include "trainbus/reduce.h"
#ifdef TB_HAVE_DIST
#include "trainbus/dist.h"
#endif

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f) {
  fprintf(f, "usage: trainbus train [JOB.json] [options]\n"
             "\n"
             "Trains a job in this process. Without JOB.json, trains the built-in demo job:\n"
             "an MLP on Fashion-MNIST (from " TB_DEMO_DATA_DIR " or\n"
             "$TRAINBUS_DEMO_DATA; 5 epochs, 5 to 10 seconds, its test accuracy printed at the\n"
             "end), or, when that cannot be read, two interleaved spirals (a few seconds).\n"
             "\n"
             "options:\n"
             "  --json               print every event as one JSON line on stdout\n"
             "  --verbose N          0 quiet, 1 progress bar, 2 one line per epoch\n"
             "                       (default: 1 on a terminal, 2 otherwise)\n"
             "  --epochs N           override the job's epochs\n"
             "  --threads N          cores to train on (default: the job's, else 1)\n"
             "  --save-weights PATH  write the trained weights to PATH\n"
             "  --resume DIR         continue from DIR/latest.tbck (written by a run with\n"
             "                       checkpoint_dir DIR, or by BackupAndRestore); later\n"
             "                       checkpoints go to DIR too\n"
             "  --demo NAME          without JOB: fashion-mnist (the default) or spirals\n"
             "  --checkpoint-dir DIR write checkpoints to DIR (in place of the job's\n"
             "                       checkpoint_dir, and after --resume's)\n"
             "  --base-dir DIR       resolve the job's relative paths against DIR (default:\n"
             "                       the job file's folder)\n"
             "  --data-dir DIR       read and write only beneath DIR (repeatable, at most 8),\n"
             "                       and keep file contents out of messages, as trainbusd\n"
             "                       holds jobs submitted over the network\n"
             "  --rank-stats         under mpirun: each rank prints, on stderr at the end, its\n"
             "                       steps, bytes sent per step, seconds in the reduction\n"
             "                       and seconds waiting for the other ranks\n"
             "  --print-job          print the job (the demo's JSON without JOB) and exit\n"
             "  -h, --help           this help\n"
             "\n"
             "Under mpirun (`mpirun -n N trainbus train JOB.json`), the N processes train\n"
             "the job as one run, data-parallel (docs/DISTRIBUTED.md): each rank a share\n"
             "of every batch of batch_size rows, one ordered reduction per step, rank 0's\n"
             "control at the same step everywhere; rank 0 alone prints, writes files and\n"
             "checkpoints. Give each rank one thread (the default) and Open MPI\n"
             "--mca mpi_yield_when_idle 1 when ranks share cores.\n"
             "\n"
             "Publishing to a daemon (docs/PROTOCOL.md section 13): with --connect or\n"
             "--state-dir the run is also published to that daemon as a trainer, where\n"
             "`trainbus runs`, `watch`, the dashboard and `history` show it like a run the\n"
             "daemon trains, and `set-lr`, `stop`, `pause`, `resume` and `checkpoint` steer\n"
             "it (applied here at the next batch boundary). Training never waits for the\n"
             "network, except at the hooks a lockstep subscriber asked for.\n"
             "  --connect ADDR       the daemon: HOST:PORT, tls://HOST:PORT, unix:PATH or a\n"
             "                       socket path\n"
             "  --token TOKEN        its control or trainer token (default: $TRAINBUS_TOKEN,\n"
             "                       else STATE_DIR/token, sent only to STATE_DIR/address)\n"
             "  --state-dir DIR      where trainbusd wrote address and token, read again at\n"
             "                       every reconnect\n"
             "  --run ID             continue this run (after this process was killed: with\n"
             "                       --resume DIR, the events the run holds are not sent\n"
             "                       again)\n"
             "  --timeout SECONDS    connecting, and the daemon's answer to the run's end\n"
             "                       (default 60)\n"
             "  --tls, --cacert FILE, --insecure, --cert FILE, --key FILE\n"
             "                       TLS, as for the other subcommands (docs/CLI.md)\n"
             "\n"
             "exit codes: 0 trained, 1 training failed, 2 bad arguments or bad job,\n"
             "            3 cannot reach the daemon to publish\n");
}

/* A JSON number, or the protocol's strings for non-finite values. */
static void json_num(FILE *f, double v) {
  if (isnan(v))
    fputs("\"NaN\"", f);
  else if (isinf(v))
    fputs(v > 0 ? "\"Infinity\"" : "\"-Infinity\"", f);
  else
    fprintf(f, "%.17g", v);
}

static int json_hook(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  FILE *f = cb->user;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  fprintf(f, "{\"event\":\"%s\",\"epoch\":%d,\"batch\":%d,\"time\":%.6f,\"logs\":{",
          tb_hook_name(ctx->hook), ctx->epoch, tb_hook_is_batch(ctx->hook) ? index : -1,
          (double)ts.tv_sec + ts.tv_nsec * 1e-9);
  for (int i = 0; i < logs->n; i++) {
    fprintf(f, "%s\"%s\":", i ? "," : "", logs->names[i]);
    json_num(f, logs->values[i]);
  }
  fputs("}}\n", f);
  /* one event a line as it happens, for whoever reads a pipe */
  fflush(f);
  return 0;
}

/* The model's summary as text (what `trainbus train` prints), for status. */
static char *summary_text(const tb_model_t *m) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (f == NULL)
    return NULL;
  tb_model_summary(m, f);
  fclose(f);
  if (text != NULL && len >= TB_PROTO_MODEL_MAX)
    text[TB_PROTO_MODEL_MAX - 1] = '\0';
  return text;
}

/* Batches per epoch as fit will count them (after validation_split). */
static int steps_of(const tb_job_t *job) {
  int n = job->train->n;
  if (job->fit.validation_split > 0 && job->fit.validation_split < 1)
    n = (int)floor((double)n * (1.0 - job->fit.validation_split));
  int bs = job->fit.batch_size > 0 ? job->fit.batch_size : 32;
  return (n + bs - 1) / bs;
}

/* Messages every rank would print alike (bad arguments, a bad job) are
 * printed by rank 0 alone. */
static int g_rank;
static bool g_abort; /* this rank failed alone: end the MPI job */

static void say(const char *fmt, ...) {
  if (g_rank != 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
}

/* A failure that may be this rank's alone (a file it cannot read): with
 * several ranks, every rank learns whether all agree (the reduction's
 * check); a rank that differs tells its own reason, naming itself. 0 when
 * every rank succeeded. */
static int agree(tb_reduce_t *red, int r, const char *msg) {
  if (red == NULL || red->size <= 1) {
    if (r != 0)
      fprintf(stderr, "trainbus train: %s\n", msg);
    return r;
  }
  tb_err_t e = {{0}};
  int c = red->check(red, r != 0, "loading the job", &e);
  if (c == 0) { /* all alike: rank 0 speaks for all */
    if (r != 0)
      say("trainbus train: %s\n", msg);
    return r;
  }
  if (r != 0)
    fprintf(stderr, "trainbus train: rank %d of %d: %s\n", red->rank, red->size, msg);
  return r != 0 ? r : c;
}

static int train(int argc, char **argv, tb_reduce_t *red) {
  int rank = red != NULL ? red->rank : 0, size = red != NULL ? red->size : 1;
  const char *job_path = NULL, *save = NULL, *resume = NULL, *demo_name = NULL, *base_dir = NULL;
  const char *checkpoint_dir = NULL;
  const char *data_dirs[8];
  char data_real[8][4096];
  int n_data_dirs = 0;
  int verbose = isatty(STDOUT_FILENO) ? 1 : 2, epochs = 0, threads = 0;
  bool json = false, print_job = false, rank_stats = false;
  tb_cli_conn_t conn = {.cmd = "trainbus train"};
  tb_publisher_t *pub = NULL;
  tb_control_t control;
  bool control_ok = false;
  int exit_code = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has_val = i + 1 < argc;
    int k = tb_cli_conn_opt(&conn, argc, argv, &i);
    if (k < 0)
      return TB_EXIT_USAGE;
    if (k > 0)
      continue;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return TB_EXIT_OK;
    } else if (strcmp(a, "--json") == 0) {
      json = true;
    } else if (strcmp(a, "--print-job") == 0) {
      print_job = true;
    } else if (strcmp(a, "--rank-stats") == 0) {
      rank_stats = true;
    } else if ((strcmp(a, "--verbose") == 0 || strcmp(a, "--epochs") == 0 ||
                strcmp(a, "--threads") == 0) &&
               has_val) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      long lo = strcmp(a, "--verbose") == 0 ? 0 : 1, hi = strcmp(a, "--verbose") == 0 ? 2 : 1000000;
      if (*end != '\0' || end == argv[i] || v < lo || v > hi) {
        say("trainbus train: %s: expected an integer in [%ld, %ld], got '%s'\n", a, lo, hi,
            argv[i]);
        return TB_EXIT_USAGE;
      }
      if (strcmp(a, "--verbose") == 0)
        verbose = (int)v;
      else if (strcmp(a, "--epochs") == 0)
        epochs = (int)v;
      else
        threads = (int)v;
    } else if (strcmp(a, "--save-weights") == 0 && has_val) {
      save = argv[++i];
    } else if (strcmp(a, "--resume") == 0 && has_val) {
      resume = argv[++i];
    } else if (strcmp(a, "--checkpoint-dir") == 0 && has_val) {
      checkpoint_dir = argv[++i];
    } else if (strcmp(a, "--base-dir") == 0 && has_val) {
      base_dir = argv[++i];
    } else if (strcmp(a, "--data-dir") == 0 && has_val) {
      if (n_data_dirs == 8) {
        say("trainbus train: --data-dir: at most 8\n");
        return TB_EXIT_USAGE;
      }
      /* Canonical, as the loaders compare them (realpath's). */
      if (realpath(argv[++i], data_real[n_data_dirs]) == NULL) {
        say("trainbus train: --data-dir %s: %s\n", argv[i], strerror(errno));
        return TB_EXIT_USAGE;
      }
      data_dirs[n_data_dirs] = data_real[n_data_dirs];
      n_data_dirs++;
    } else if (strcmp(a, "--demo") == 0 && has_val) {
      demo_name = argv[++i];
      if (strcmp(demo_name, "fashion-mnist") != 0 && strcmp(demo_name, "spirals") != 0) {
        say("trainbus train: --demo: expected fashion-mnist or spirals, got '%s'\n", demo_name);
        return TB_EXIT_USAGE;
      }
    } else if (a[0] == '-') {
      say("trainbus train: unknown option or missing value: %s (see --help)\n", a);
      return TB_EXIT_USAGE;
    } else if (job_path == NULL) {
      job_path = a;
    } else {
      say("trainbus train: one job at a time (got '%s' and '%s')\n", job_path, a);
      return TB_EXIT_USAGE;
    }
  }

  tb_err_t err = {{0}};
  tb_job_t *job = NULL;
  int r;
  if (job_path != NULL && demo_name != NULL) {
    say("trainbus train: --demo is for training without a job file\n");
    return TB_EXIT_USAGE;
  }
  char demo_buf[4096], notice[1200] = "";
  if (job_path == NULL) {
    const char *demo = demo_name != NULL && strcmp(demo_name, "spirals") == 0
                           ? tb_job_demo_spirals_json()
                           : tb_job_demo_json(getenv("TRAINBUS_DEMO_DATA"), demo_buf,
                                              sizeof(demo_buf), notice, sizeof(notice));
    if (demo == NULL) {
      say("trainbus train: cannot make the demo job\n");
      return TB_EXIT_FAILED;
    }
    if (notice[0] != '\0')
      say("trainbus train: %s\n", notice);
    if (print_job) {
      fputs(demo, stdout);
      return TB_EXIT_OK;
    }
    r = tb_job_parse(demo, strlen(demo), "demo", NULL, &job, &err);
  } else {
    r = tb_job_load_from(job_path, base_dir, &job, &err);
  }
  /* Held to the data directories as trainbusd holds a job submitted over the
   * network (confined, contents kept out of messages; docs/JOB.md): what
   * the daemon passes to the ranks it launches for such a job. */
  tb_job_policy_t policy = {
      .data = {.confined = true, .dirs = data_dirs, .n_dirs = n_data_dirs, .redact = true}};
  if (r == 0 && n_data_dirs > 0)
    r = tb_job_check(job, &policy, NULL, &err);
  if (agree(red, r, err.msg) != 0) {
    tb_job_free(job);
    return TB_EXIT_USAGE;
  }
  if (print_job) {
    say("trainbus train: --print-job prints the demo job only\n");
    tb_job_free(job);
    return TB_EXIT_USAGE;
  }
  tb_set_num_threads(threads > 0 ? threads : job->threads > 0 ? job->threads : 1);
  if (threads > 0)
    job->threads = threads;
  r = tb_job_prepare(job, &err);
  if (agree(red, r, err.msg) != 0) {
    tb_job_free(job);
    return TB_EXIT_USAGE;
  }
  if (epochs > 0)
    job->fit.epochs = epochs;
  char resume_path[1200];
  if (resume != NULL) {
    snprintf(resume_path, sizeof(resume_path), "%s/%s", resume, TB_CHECKPOINT_LATEST);
    job->fit.resume_from = resume_path;
    job->fit.checkpoint_dir = resume;
  }
  if (checkpoint_dir != NULL)
    job->fit.checkpoint_dir = checkpoint_dir;
  /* Rank 0 alone prints, writes and publishes (docs/DISTRIBUTED.md). */
  bool speak = rank == 0;
  job->fit.verbose = json || !speak ? 0 : verbose;
  job->fit.reduce = red;

  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_callback_t *bar = NULL, jsoncb = {.name = "json", .user = stdout};
  if (tb_job_add_callbacks_rank(job, &cbs, rank) != 0) {
    fprintf(stderr, "trainbus train: out of memory\n");
    g_abort = size > 1;
    r = TB_ENOMEM;
    goto out;
  }
  if (speak && (conn.connect != NULL || conn.state_dir != NULL || conn.run != NULL)) {
    /* Under mpirun rank 0 alone publishes; its control reaches every rank at
     * the same step through the reduction's control words (reduce.h). */
    /* Published: the daemon's clients see every event and steer the run
     * through its control block, applied by fit at batch boundaries. */
    char dir[1024];
    tb_client_opts_t co;
    tb_cli_client_opts(&conn, dir, sizeof(dir), &co);
    if ((r = tb_control_init(&control)) != 0) {
      fprintf(stderr, "trainbus train: out of memory\n");
      goto out;
    }
    control_ok = true;
    char *model = summary_text(job->model);
    tb_publisher_opts_t po = {.addr = co.addr,
                              .token = co.token,
                              .state_dir = co.state_dir,
                              .tls = co.tls,
                              .ca_file = co.ca_file,
                              .insecure = co.insecure,
                              .cert_file = co.cert_file,
                              .key_file = co.key_file,
                              .client_name = "trainbus-train",
                              .name = job->name,
                              .model = model,
                              .epochs = job->fit.epochs,
                              .steps = steps_of(job),
                              .lr = tb_model_lr(job->model),
                              .control = &control,
                              .checkpoints = job->fit.checkpoint_dir != NULL,
                              .run = conn.run,
                              .resuming = resume != NULL,
                              .connect_timeout_ms = conn.timeout_ms};
    tb_client_err_t cerr;
    int pr = tb_publisher_new(&po, &pub, &cerr);
    free(model);
    if (pr != 0) {
      exit_code = tb_cli_fail("trainbus train", &cerr);
      r = pr;
      goto out;
    }
    job->fit.control = &control;
    if (tb_callbacks_add(&cbs, tb_publisher_callback(pub)) != 0) {
      fprintf(stderr, "trainbus train: out of memory\n");
      r = TB_ENOMEM;
      goto out;
    }
    fprintf(stderr,
            "trainbus train: publishing as run %s (watch it with: trainbus watch --run %s)\n",
            tb_publisher_run(pub), tb_publisher_run(pub));
  }
  if (!speak) {
    /* a rank other than 0: silent */
  } else if (json) {
    for (int i = 0; i < TB_HOOK_COUNT; i++)
      jsoncb.hooks[i] = json_hook;
    tb_callbacks_add(&cbs, &jsoncb);
  } else {
    printf("Job: %s (%d training rows%s)", job->name, job->train->n,
           job->fit.validation_split > 0 ? ", validation_split applies" : "");
    if (size > 1)
      printf(" on %d ranks, each a share of every batch of %d rows", size, job->fit.batch_size);
    printf("\n");
    if (job->train->classes != NULL) {
      /* The labels were names: which output is which class. */
      size_t cap = (size_t)job->train->classes->n * (4 * TB_DATA_MAX_CLASS_NAME + 16) + 1;
      char *names = malloc(cap);
      if (names != NULL)
        printf("Classes (the labels' names, sorted; output i is class i): %s\n",
               tb_classes_format(job->train->classes, names, cap));
      free(names);
    }
    tb_model_summary(job->model, stdout);
    if (verbose > 0) {
      bar = tb_progbar_new(verbose, stdout);
      if (bar == NULL || tb_callbacks_add(&cbs, bar) != 0) {
        fprintf(stderr, "trainbus train: out of memory\n");
        g_abort = size > 1;
        r = TB_ENOMEM;
        goto out;
      }
    }
  }

  tb_logs_t last;
  if ((r = tb_model_fit(job->model, job->train, &job->fit, &cbs, &last, &err)) != 0) {
    /* Failures every rank shares (ranks that diverged, a shutdown asked of
     * rank 0) are told once; another is this rank's own, and the caller
     * ends the job (MPI_Abort) so that no rank waits for it. */
    bool shared = size > 1 && (r == TB_EDIVERGED || r == TB_EINTERRUPTED);
    if (size <= 1)
      fprintf(stderr, "trainbus train: %s\n", err.msg);
    else if (!shared || speak)
      fprintf(stderr, "trainbus train: rank %d of %d: %s\n", rank, size, err.msg);
    if (size > 1 && !shared)
      g_abort = true;
    goto out;
  }
#ifdef TB_HAVE_DIST
  if (rank_stats && size > 1) {
    tb_dist_stats_t st;
    tb_dist_stats(red, &st);
    long steps = tb_model_iterations(job->model);
    fprintf(stderr,
            "trainbus train: rank %d of %d: %ld steps, %llu bytes sent per step (%llu "
            "floats summed), %llu reductions, %.3f s in them, %.3f s waiting for the others\n",
            rank, size, steps,
            (unsigned long long)tb_dist_step_bytes(
                tb_model_n_params(job->model) + TB_REDUCE_N_STATS, size, rank),
            (unsigned long long)(tb_model_n_params(job->model) + TB_REDUCE_N_STATS),
            (unsigned long long)st.allreduces, st.reduce_s, st.wait_s);
  }
#else
  (void)rank_stats;
#endif
  if (job->test != NULL && speak) {
    tb_logs_t test;
    if ((r = tb_model_evaluate(job->model, job->test, job->fit.batch_size, json ? 0 : verbose, &cbs,
                               &test, &err)) != 0) {
      fprintf(stderr, "trainbus train: %s\n", err.msg);
      goto out;
    }
    if (!json) {
      printf("test:");
      for (int i = 0; i < test.n; i++)
        printf(" %s %.4f", test.names[i], test.values[i]);
      printf("\n");
    }
  }
  if (save != NULL && speak && (r = tb_model_save_weights(job->model, save, &err)) != 0)
    fprintf(stderr, "trainbus train: %s\n", err.msg);
out:
  if (pub != NULL && exit_code < 0) {
    /* The run ends on the daemon as it ended here; a failure says why. */
    tb_client_err_t cerr;
    if (tb_publisher_finish(pub, r == 0 ? TB_RUN_FINISHED : TB_RUN_FAILED, r == 0 ? NULL : err.msg,
                            conn.timeout_ms > 0 ? conn.timeout_ms : 60000, &cerr) != 0) {
      fprintf(stderr, "trainbus train: run %s: %s\n", tb_publisher_run(pub), cerr.msg);
      if (r == 0)
        exit_code = TB_EXIT_CONNECT;
    }
    tb_publisher_stats_t st;
    tb_publisher_stats(pub, &st);
    if (st.dropped > 0)
      fprintf(stderr,
              "trainbus train: run %s: %lld batch events were not published (the daemon "
              "could not keep up, or could not be reached)\n",
              tb_publisher_run(pub), (long long)st.dropped);
  }
  tb_publisher_free(pub);
  tb_callbacks_release(&cbs);
  tb_callback_free(bar);
  if (control_ok)
    tb_control_destroy(&control);
  tb_job_free(job);
  if (exit_code >= 0)
    return exit_code;
  return r == 0 ? TB_EXIT_OK : TB_EXIT_FAILED;
}

int tb_cli_train(int argc, char **argv) {
  tb_reduce_t *red = NULL;
#ifdef TB_HAVE_DIST
  if (tb_dist_launched()) {
    tb_err_t err = {{0}};
    if (tb_dist_init(NULL, NULL, &red, &err) != 0) {
      fprintf(stderr, "trainbus train: %s\n", err.msg);
      return TB_EXIT_FAILED;
    }
    g_rank = red->rank;
  }
#else
  const char *ws = getenv("OMPI_COMM_WORLD_SIZE");
  if (ws != NULL && atoi(ws) > 1) {
    fprintf(stderr,
            "trainbus train: started by mpirun on %s ranks, but this trainbus was built "
            "without MPI (dist/: install libopenmpi-dev and rebuild)\n",
            ws);
    return TB_EXIT_FAILED;
  }
#endif
  int rc = train(argc, argv, red);
#ifdef TB_HAVE_DIST
  if (red != NULL) {
    fflush(stdout);
    fflush(stderr);
    if (g_abort)
      tb_dist_abort(red, rc);
    tb_dist_finalize(red);
  }
#endif
  return rc;
}
