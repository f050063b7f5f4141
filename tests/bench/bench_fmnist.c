/* Fashion-MNIST benchmark (issue 2): an MLP 784-256-128-10 (relu, relu,
 * softmax), sparse categorical crossentropy, Adam 1e-3, batch 128, shuffled
 * every epoch, trained with the public API exactly as a user would
 * (tb_idx_load, a divide-by-255 scaler, tb_model_fit, tb_model_evaluate).
 *
 * What is timed: only the training loop. A callback takes CLOCK_MONOTONIC at
 * epoch_begin and epoch_end and sums the spans, so loading, scaling, model
 * construction and the final evaluation are excluded, while each epoch's
 * shuffle, batch gathering, forward, backward, optimizer step and running
 * metrics (all of which fit() does per epoch) are included. samples/s is
 * training rows times epochs over that sum. The process CPU time over the
 * same spans is reported too: CPU seconds per wall second is how many cores
 * the run really kept busy, a check on what --threads achieved.
 *
 * The output is one human-readable line, or with --json one JSON object on one
 * line; tests/bench/bench_fmnist_torch.py prints the same keys so that
 * run_fmnist.sh can put both side by side.
 *
 * --smoke is the ctest: one epoch on the first 2,000 training rows, then the
 * full test set; it fails (exit 1) unless test accuracy exceeds 0.5. A missing
 * dataset exits 77, which ctest reports as skipped. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/model.h"

#define DEFAULT_DATA_DIR "/usr/share/datasets/fashion-mnist"
#define BATCH_SIZE 128
/* Smoke run: enough rows for 16 Adam steps, which takes this model well past
 * chance (0.1) on the test set, and a fraction of a second to train. */
#define SMOKE_ROWS 2000
#define SMOKE_MIN_ACC 0.5
#define EXIT_SKIP 77
#define MAX_EPOCHS 1000

typedef struct opts_s {
  int epochs;
  int threads; /* 0: leave OpenBLAS's default alone */
  unsigned long long seed;
  int smoke;
  int json;
  const char *data_dir;
} opts_t;

/* Per-epoch wall and CPU spans, filled by the timing callback. */
typedef struct timing_s {
  double epoch_begin_wall, epoch_begin_cpu;
  double train_wall_s, train_cpu_s;
  int n_epochs;
  double epoch_wall_s[MAX_EPOCHS];
} timing_t;

static double now_s(clockid_t clk) {
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int on_epoch_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  timing_t *t = cb->user;
  t->epoch_begin_wall = now_s(CLOCK_MONOTONIC);
  t->epoch_begin_cpu = now_s(CLOCK_PROCESS_CPUTIME_ID);
  return 0;
}

static int on_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  timing_t *t = cb->user;
  double wall = now_s(CLOCK_MONOTONIC) - t->epoch_begin_wall;
  t->train_cpu_s += now_s(CLOCK_PROCESS_CPUTIME_ID) - t->epoch_begin_cpu;
  t->train_wall_s += wall;
  if (t->n_epochs < MAX_EPOCHS)
    t->epoch_wall_s[t->n_epochs++] = wall;
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench_fmnist [--epochs N] [--threads N] [--seed S] [--smoke] [--json]\n"
          "                    [--data DIR]\n"
          "  --epochs N   training epochs (default 10; --smoke: 1)\n"
          "  --threads N  training threads, tb_set_num_threads (default: OpenBLAS's count)\n"
          "  --seed S     weight init and shuffle seed (default 42)\n"
          "  --smoke      1 epoch on the first %d rows; exit 1 unless accuracy > %.1f\n"
          "  --json       print one JSON line instead of text\n"
          "  --data DIR   folder of the four IDX .gz files (default " DEFAULT_DATA_DIR ")\n",
          SMOKE_ROWS, SMOKE_MIN_ACC);
}

/* Parses a whole decimal integer in [lo, hi]; 0 on success. */
static int parse_int(const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

static int parse_args(int argc, char **argv, opts_t *o) {
  long long v;
  int epochs_set = 0;
  *o = (opts_t){.epochs = 10, .threads = 0, .seed = 42, .data_dir = DEFAULT_DATA_DIR};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--smoke") == 0) {
      o->smoke = 1;
    } else if (strcmp(a, "--json") == 0) {
      o->json = 1;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    } else if (val == NULL) {
      fprintf(stderr, "bench_fmnist: %s: unknown option or missing value\n", a);
      return -1;
    } else if (strcmp(a, "--epochs") == 0) {
      if (parse_int(val, 1, MAX_EPOCHS, &v) != 0) {
        fprintf(stderr, "bench_fmnist: --epochs: expected 1..%d, got \"%s\"\n", MAX_EPOCHS, val);
        return -1;
      }
      o->epochs = (int)v;
      epochs_set = 1;
      i++;
    } else if (strcmp(a, "--threads") == 0) {
      if (parse_int(val, 1, 1024, &v) != 0) {
        fprintf(stderr, "bench_fmnist: --threads: expected 1..1024, got \"%s\"\n", val);
        return -1;
      }
      o->threads = (int)v;
      i++;
    } else if (strcmp(a, "--seed") == 0) {
      if (parse_int(val, 0, (long long)(~0ULL >> 1), &v) != 0) {
        fprintf(stderr, "bench_fmnist: --seed: expected a non-negative integer, got \"%s\"\n", val);
        return -1;
      }
      o->seed = (unsigned long long)v;
      i++;
    } else if (strcmp(a, "--data") == 0) {
      o->data_dir = val;
      i++;
    } else {
      fprintf(stderr, "bench_fmnist: %s: unknown option\n", a);
      return -1;
    }
  }
  if (o->smoke && !epochs_set)
    o->epochs = 1;
  return 0;
}

/* Loads one split ("train" or "t10k"); the caller checks that the files exist. */
static int load_split(const char *dir, const char *split, tb_dataset_t **out) {
  char images[1024], labels[1024];
  tb_err_t err = {{0}};
  snprintf(images, sizeof images, "%s/%s-images-idx3-ubyte.gz", dir, split);
  snprintf(labels, sizeof labels, "%s/%s-labels-idx1-ubyte.gz", dir, split);
  int r = tb_idx_load(images, labels, out, &err);
  if (r != 0)
    fprintf(stderr, "bench_fmnist: %s\n", err.msg[0] ? err.msg : tb_strerror(r));
  return r;
}

static int files_present(const char *dir) {
  static const char *names[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  char path[1024];
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    if (access(path, R_OK) != 0) {
      fprintf(stderr, "bench_fmnist: %s: %s (apt-get install dataset-fashion-mnist)\n", path,
              strerror(errno));
      return 0;
    }
  }
  return 1;
}

static int build_model(const opts_t *o, tb_model_t **out) {
  tb_err_t err = {{0}};
  tb_model_t *m = tb_model_new(784, o->seed);
  *out = NULL;
  if (m == NULL)
    return TB_ENOMEM;
  int r;
  if ((r = tb_model_add_dense(m, 256, TB_ACT_RELU)) != 0 ||
      (r = tb_model_add_dense(m, 128, TB_ACT_RELU)) != 0 ||
      (r = tb_model_add_dense(m, 10, TB_ACT_SOFTMAX)) != 0)
    goto fail;
  tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY,
                         .metrics = TB_METRIC_ACCURACY};
  tb_optim_defaults(&c.optim, TB_OPT_ADAM); /* lr 1e-3, betas 0.9/0.999, eps 1e-7 */
  c.optim.lr = 1e-3;
  if ((r = tb_model_compile(m, &c, &err)) != 0)
    goto fail;
  *out = m;
  return 0;
fail:
  fprintf(stderr, "bench_fmnist: model: %s\n", err.msg[0] ? err.msg : tb_strerror(r));
  tb_model_free(m);
  return r;
}

int main(int argc, char **argv) {
  opts_t o;
  tb_dataset_t *train = NULL, *test = NULL, *full = NULL;
  tb_model_t *m = NULL;
  tb_scaler_t sc = {0};
  tb_err_t err = {{0}};
  tb_logs_t last, eval;
  static timing_t timing; /* large array: keep it off the stack */
  int r, status = 1;

  if (parse_args(argc, argv, &o) != 0) {
    usage(stderr);
    return 2;
  }
  if (!files_present(o.data_dir))
    return EXIT_SKIP;
  if (o.threads > 0)
    tb_set_num_threads(o.threads);

  double t0 = now_s(CLOCK_MONOTONIC);
  if (load_split(o.data_dir, "train", &full) != 0 || load_split(o.data_dir, "t10k", &test) != 0)
    goto done;
  if (o.smoke) {
    int rows = full->n < SMOKE_ROWS ? full->n : SMOKE_ROWS;
    if ((r = tb_dataset_slice(full, 0, rows, &train)) != 0) {
      fprintf(stderr, "bench_fmnist: slice: %s\n", tb_strerror(r));
      goto done;
    }
  } else {
    train = full;
    full = NULL;
  }
  /* Pixels 0..255 to 0..1, fitted on train and applied to both. */
  if ((r = tb_scaler_fit(&sc, TB_SCALE_DIVIDE, 255.0, train)) != 0 ||
      (r = tb_scaler_apply(&sc, train)) != 0 || (r = tb_scaler_apply(&sc, test)) != 0) {
    fprintf(stderr, "bench_fmnist: scaling: %s\n", tb_strerror(r));
    goto done;
  }
  double load_s = now_s(CLOCK_MONOTONIC) - t0;

  if (build_model(&o, &m) != 0)
    goto done;

  tb_callback_t timer = {.name = "bench_timer",
                         .on_epoch_begin = on_epoch_begin,
                         .on_epoch_end = on_epoch_end,
                         .user = &timing};
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  if ((r = tb_callbacks_add(&cbs, &timer)) != 0) {
    fprintf(stderr, "bench_fmnist: callbacks: %s\n", tb_strerror(r));
    goto done;
  }
  tb_fit_opts_t fo;
  tb_fit_opts_defaults(&fo);
  fo.epochs = o.epochs;
  fo.batch_size = BATCH_SIZE;
  fo.shuffle = true;
  fo.verbose = 0;
  r = tb_model_fit(m, train, &fo, &cbs, &last, &err);
  tb_callbacks_release(&cbs);
  if (r != 0) {
    fprintf(stderr, "bench_fmnist: fit: %s\n", err.msg[0] ? err.msg : tb_strerror(r));
    goto done;
  }

  double t1 = now_s(CLOCK_MONOTONIC);
  if ((r = tb_model_evaluate(m, test, BATCH_SIZE, 0, NULL, &eval, &err)) != 0) {
    fprintf(stderr, "bench_fmnist: evaluate: %s\n", err.msg[0] ? err.msg : tb_strerror(r));
    goto done;
  }
  double eval_s = now_s(CLOCK_MONOTONIC) - t1;

  double acc = 0, loss = 0, train_loss = 0, train_acc = 0;
  tb_logs_get(&eval, "accuracy", &acc);
  tb_logs_get(&eval, "loss", &loss);
  tb_logs_get(&last, "loss", &train_loss);
  tb_logs_get(&last, "accuracy", &train_acc);
  double samples = (double)train->n * o.epochs;
  double sps = timing.train_wall_s > 0 ? samples / timing.train_wall_s : 0;
  double cores = timing.train_wall_s > 0 ? timing.train_cpu_s / timing.train_wall_s : 0;

  if (o.json) {
    printf("{\"impl\":\"trainbus\",\"kernel\":\"%s\",\"threads_requested\":%d,\"threads_used\":%d,"
           "\"epochs\":%d,\"batch_size\":%d,\"n_train\":%d,\"n_test\":%d,"
           "\"train_s\":%.4f,\"samples_per_s\":%.1f,\"cpu_per_wall\":%.3f,"
           "\"test_acc\":%.4f,\"test_loss\":%.4f,\"train_loss\":%.4f,\"train_acc\":%.4f,"
           "\"load_s\":%.3f,\"eval_s\":%.3f,\"epoch_s\":[",
           openblas_get_corename(), o.threads, tb_get_num_threads(), o.epochs, BATCH_SIZE, train->n,
           test->n, timing.train_wall_s, sps, cores, acc, loss, train_loss, train_acc, load_s,
           eval_s);
    for (int i = 0; i < timing.n_epochs; i++)
      printf("%s%.4f", i ? "," : "", timing.epoch_wall_s[i]);
    printf("]}\n");
  } else {
    printf("trainbus  threads=%d (requested %d)  epochs=%d  rows=%d  train_s=%.2f  "
           "samples/s=%.0f  cpu/wall=%.2f  test_acc=%.4f  test_loss=%.4f  "
           "(load %.2f s, eval %.2f s)\n",
           tb_get_num_threads(), o.threads, o.epochs, train->n, timing.train_wall_s, sps, cores,
           acc, loss, load_s, eval_s);
  }
  status = 0;
  if (o.smoke && !(acc > SMOKE_MIN_ACC)) {
    fprintf(stderr, "bench_fmnist: smoke: test accuracy %.4f is not above %.2f\n", acc,
            SMOKE_MIN_ACC);
    status = 1;
  }

done:
  tb_model_free(m);
  tb_scaler_free(&sc);
  tb_dataset_free(train);
  tb_dataset_free(test);
  tb_dataset_free(full);
  return status;
}
