/* `trainbus train`: runs a job in this process with a progress bar, plain
 * epoch lines, or every event as a JSON line. */
#include "cli.h"

#include "trainbus/callbacks.h"
#include "trainbus/job.h"
#include "trainbus/model.h"
#include "trainbus/reduce.h"
#ifdef TB_HAVE_DIST
#include "trainbus/dist.h"
#endif

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
             "exit codes: 0 trained, 1 training failed, 2 bad arguments or bad job\n");
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
  const char *job_path = NULL, *save = NULL, *resume = NULL, *demo_name = NULL;
  int verbose = isatty(STDOUT_FILENO) ? 1 : 2, epochs = 0, threads = 0;
  bool json = false, print_job = false, rank_stats = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has_val = i + 1 < argc;
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
    r = tb_job_load(job_path, &job, &err);
  }
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
  tb_callbacks_release(&cbs);
  tb_callback_free(bar);
  tb_job_free(job);
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
