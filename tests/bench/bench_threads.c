/* Where BLAS's own threads beat trainbus's lanes (issue 17): for MLPs of
 * several widths and batch sizes, training steps on N threads either split
 * over N lanes (each multiplying its rows with single-threaded BLAS, then
 * adding partial gradients) or run on one lane with BLAS's N threads.
 * Alternating the two, it prints the median samples/s of each and their
 * ratio, per shape; core/src/step.c's blas_wins() is drawn from this table.
 *
 *   bench_threads [--threads N] [--steps S] [--reps R] [--shape IN:W1,W2,..:B]...
 *
 * Default shapes: the Fashion-MNIST MLP and wider and thinner ones. White-box:
 * it forces the choice through step.c's tb__threading_force. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "trainbus/model.h"

typedef struct shape_s {
  int in, units[8], n_units, batch;
} shape_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int parse_shape(const char *s, shape_t *sh) {
  memset(sh, 0, sizeof(*sh));
  char *end;
  sh->in = (int)strtol(s, &end, 10);
  if (*end != ':')
    return -1;
  s = end + 1;
  for (;;) {
    if (sh->n_units == 8)
      return -1;
    sh->units[sh->n_units++] = (int)strtol(s, &end, 10);
    if (*end == ',') {
      s = end + 1;
      continue;
    }
    if (*end != ':')
      return -1;
    break;
  }
  sh->batch = (int)strtol(end + 1, &end, 10);
  return *end == '\0' && sh->in > 0 && sh->batch > 0 ? 0 : -1;
}

/* samples/s of `steps` training steps in the given mode. */
static double run(const shape_t *sh, const float *x, const float *y, int steps, int mode) {
  tb_model_t *m = tb_model_new(sh->in, 1);
  for (int i = 0; i < sh->n_units; i++)
    tb_model_add_dense(m, sh->units[i], TB_ACT_RELU);
  tb_model_add_dense(m, 10, TB_ACT_SOFTMAX);
  tb_compile_opts_t c = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
  tb_optim_defaults(&c.optim, TB_OPT_ADAM);
  if (tb_model_compile(m, &c, NULL) != 0)
    exit(1);
  tb__threading_force = mode;
  tb_model_train_step(m, x, y, sh->batch, NULL); /* warm: buffers, pool */
  double t0 = now_s();
  for (int s = 0; s < steps; s++)
    tb_model_train_step(m, x + (size_t)(s % 4) * sh->batch * sh->in, y + (s % 4) * sh->batch,
                        sh->batch, NULL);
  double t = now_s() - t0;
  tb__threading_force = -1;
  tb_model_free(m);
  return (double)steps * sh->batch / t;
}

int main(int argc, char **argv) {
  int threads = 2, steps = 20, reps = 5, n = 0;
  shape_t shapes[32];
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
      steps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
      reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--shape") == 0 && i + 1 < argc && n < 32 &&
             parse_shape(argv[++i], &shapes[n]) == 0)
      n++;
    else {
      fprintf(stderr, "usage: bench_threads [--threads N] [--steps S] [--reps R] "
                      "[--shape IN:W1,W2,..:BATCH]...\n");
      return 2;
    }
  }
  if (n == 0) {
    static const char *def[] = {"784:256,128:128",   "784:256,128:32",     "784:256,128:1024",
                                "1024:1024,1024:32", "1024:1024,1024:256", "4096:4096:16",
                                "4096:4096:64",      "4096:4096:512",      "256:64:32"};
    for (size_t i = 0; i < sizeof(def) / sizeof(def[0]); i++)
      parse_shape(def[i], &shapes[n++]);
  }
  if (reps > 63)
    reps = 63;
  tb_set_num_threads(threads);
  printf("threads %d, %d steps x %d repetitions, medians; lanes: the batch split over %d "
         "threads; blas: one lane, BLAS's %d threads\n",
         threads, steps, reps, threads, threads);
  printf("%-28s %12s %12s %8s\n", "in:widths:batch", "lanes/s", "blas/s", "blas/lanes");
  for (int k = 0; k < n; k++) {
    const shape_t *sh = &shapes[k];
    size_t rows = (size_t)sh->batch * 4;
    float *x = malloc(rows * sh->in * sizeof(float)), *y = malloc(rows * sizeof(float));
    for (size_t i = 0; i < rows * sh->in; i++)
      x[i] = (float)((i * 7919) % 1000) * 1e-3f;
    for (size_t i = 0; i < rows; i++)
      y[i] = (float)(i % 10);
    double a[63], b[63];
    for (int r = 0; r < reps; r++) {
      if (r % 2 == 0) {
        a[r] = run(sh, x, y, steps, 0);
        b[r] = run(sh, x, y, steps, 1);
      } else {
        b[r] = run(sh, x, y, steps, 1);
        a[r] = run(sh, x, y, steps, 0);
      }
    }
    qsort(a, (size_t)reps, sizeof(double), cmp);
    qsort(b, (size_t)reps, sizeof(double), cmp);
    char name[64];
    int len = snprintf(name, sizeof(name), "%d:", sh->in);
    for (int i = 0; i < sh->n_units; i++)
      len += snprintf(name + len, sizeof(name) - (size_t)len, "%s%d", i ? "," : "", sh->units[i]);
    snprintf(name + len, sizeof(name) - (size_t)len, ":%d", sh->batch);
    printf("%-28s %12.0f %12.0f %8.2f\n", name, a[reps / 2], b[reps / 2],
           b[reps / 2] / a[reps / 2]);
    fflush(stdout);
    free(x);
    free(y);
  }
  return 0;
}
