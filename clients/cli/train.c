/* `trainbus train`: runs a job in this process with a progress bar, plain
 * epoch lines, or every event as a JSON line; with --connect (or
 * --state-dir) it also publishes the run to a daemon as a trainer
 * (trainbus/publisher.h), so the daemon's clients watch and steer it. */
#include "cli.h"

#include "trainbus/callbacks.h"
#include "trainbus/job.h"
#include "trainbus/model.h"
#include "trainbus/publisher.h"

#include <math.h>
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
             "  --print-job          print the job (the demo's JSON without JOB) and exit\n"
             "  -h, --help           this help\n"
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

int tb_cli_train(int argc, char **argv) {
  const char *job_path = NULL, *save = NULL, *resume = NULL, *demo_name = NULL;
  int verbose = isatty(STDOUT_FILENO) ? 1 : 2, epochs = 0, threads = 0;
  bool json = false, print_job = false;
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
    } else if ((strcmp(a, "--verbose") == 0 || strcmp(a, "--epochs") == 0 ||
                strcmp(a, "--threads") == 0) &&
               has_val) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      long lo = strcmp(a, "--verbose") == 0 ? 0 : 1, hi = strcmp(a, "--verbose") == 0 ? 2 : 1000000;
      if (*end != '\0' || end == argv[i] || v < lo || v > hi) {
        fprintf(stderr, "trainbus train: %s: expected an integer in [%ld, %ld], got '%s'\n", a, lo,
                hi, argv[i]);
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
        fprintf(stderr, "trainbus train: --demo: expected fashion-mnist or spirals, got '%s'\n",
                demo_name);
        return TB_EXIT_USAGE;
      }
    } else if (a[0] == '-') {
      fprintf(stderr, "trainbus train: unknown option or missing value: %s (see --help)\n", a);
      return TB_EXIT_USAGE;
    } else if (job_path == NULL) {
      job_path = a;
    } else {
      fprintf(stderr, "trainbus train: one job at a time (got '%s' and '%s')\n", job_path, a);
      return TB_EXIT_USAGE;
    }
  }

  tb_err_t err = {{0}};
  tb_job_t *job = NULL;
  int r;
  if (job_path != NULL && demo_name != NULL) {
    fprintf(stderr, "trainbus train: --demo is for training without a job file\n");
    return TB_EXIT_USAGE;
  }
  char demo_buf[4096], notice[1200] = "";
  if (job_path == NULL) {
    const char *demo = demo_name != NULL && strcmp(demo_name, "spirals") == 0
                           ? tb_job_demo_spirals_json()
                           : tb_job_demo_json(getenv("TRAINBUS_DEMO_DATA"), demo_buf,
                                              sizeof(demo_buf), notice, sizeof(notice));
    if (demo == NULL) {
      fprintf(stderr, "trainbus train: cannot make the demo job\n");
      return TB_EXIT_FAILED;
    }
    if (notice[0] != '\0')
      fprintf(stderr, "trainbus train: %s\n", notice);
    if (print_job) {
      fputs(demo, stdout);
      return TB_EXIT_OK;
    }
    r = tb_job_parse(demo, strlen(demo), "demo", NULL, &job, &err);
  } else {
    r = tb_job_load(job_path, &job, &err);
  }
  if (r != 0) {
    fprintf(stderr, "trainbus train: %s\n", err.msg);
    return TB_EXIT_USAGE;
  }
  if (print_job) {
    fprintf(stderr, "trainbus train: --print-job prints the demo job only\n");
    tb_job_free(job);
    return TB_EXIT_USAGE;
  }
  tb_set_num_threads(threads > 0 ? threads : job->threads > 0 ? job->threads : 1);
  if (threads > 0)
    job->threads = threads;
  if ((r = tb_job_prepare(job, &err)) != 0) {
    fprintf(stderr, "trainbus train: %s\n", err.msg);
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
  job->fit.verbose = json ? 0 : verbose;

  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_callback_t *bar = NULL, jsoncb = {.name = "json", .user = stdout};
  if (tb_job_add_callbacks(job, &cbs) != 0) {
    fprintf(stderr, "trainbus train: out of memory\n");
    r = TB_ENOMEM;
    goto out;
  }
  if (conn.connect != NULL || conn.state_dir != NULL || conn.run != NULL) {
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
  if (json) {
    for (int i = 0; i < TB_HOOK_COUNT; i++)
      jsoncb.hooks[i] = json_hook;
    tb_callbacks_add(&cbs, &jsoncb);
  } else {
    printf("Job: %s (%d training rows%s)\n", job->name, job->train->n,
           job->fit.validation_split > 0 ? ", validation_split applies" : "");
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
        r = TB_ENOMEM;
        goto out;
      }
    }
  }

  tb_logs_t last;
  if ((r = tb_model_fit(job->model, job->train, &job->fit, &cbs, &last, &err)) != 0) {
    fprintf(stderr, "trainbus train: %s\n", err.msg);
    goto out;
  }
  if (job->test != NULL) {
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
  if (save != NULL && (r = tb_model_save_weights(job->model, save, &err)) != 0)
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
