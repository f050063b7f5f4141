/* `trainbus train`: runs a job in this process with a progress bar, plain
 * epoch lines, or every event as a JSON line. */
#include "cli.h"

#include "trainbus/callbacks.h"
#include "trainbus/job.h"
#include "trainbus/model.h"

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
  return 0;
}

int tb_cli_train(int argc, char **argv) {
  const char *job_path = NULL, *save = NULL, *resume = NULL, *demo_name = NULL;
  int verbose = isatty(STDOUT_FILENO) ? 1 : 2, epochs = 0, threads = 0;
  bool json = false, print_job = false;
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
  tb_callbacks_release(&cbs);
  tb_callback_free(bar);
  tb_job_free(job);
  return r == 0 ? TB_EXIT_OK : TB_EXIT_FAILED;
}
