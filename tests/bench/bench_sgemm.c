/* The sgemm bound of the Fashion-MNIST benchmark (issue 17): how fast one
 * core multiplies the matrices of one training step of the MLP
 * 784-256-128-10 at batch 128, with nothing else.
 *
 * A step of trainbus makes these products (row-major, as core/src/layers.c
 * calls tb__sgemm), for each Dense layer of n_in -> n_out over B rows:
 *   forward   Z = X W          B x n_out x n_in    (NN, beta 1: Z holds b)
 *   backward  dW = X^T dZ      n_in x n_out x B    (TN, beta 0)
 *             dX = dZ W^T      B x n_in x n_out    (NT, beta 0; not the first layer)
 * FLOPs per sample = 2 * (sum of m n k) / B. Each product is timed alone,
 * repeated until it has run for at least `min_ms`, on buffers of the step's
 * sizes filled with values like the network's; the median over `reps`
 * repetitions of each is kept, in wall time and in the thread's CPU time
 * (the latter holds on a loaded machine, where wall time counts the time
 * other processes had the core). The bound is B samples over the step's
 * summed product times: no implementation of the step on one core can
 * train faster with this BLAS.
 *
 * Output: one JSON line (--json) or a table. OpenBLAS runs single-threaded
 * (openblas_set_num_threads(1)); its kernel is reported by name
 * (openblas_get_corename(): Haswell when OPENBLAS_CORETYPE forces it). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SHAPES 32

typedef struct shape_s {
  const char *what;
  int ta, tb, m, n, k;
  float beta;
  double wall_s, cpu_s; /* medians per call */
} shape_t;

static double now_s(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void run(shape_t *s, float *A, float *B, float *C, int reps, double min_s) {
  int lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
  double walls[101], cpus[101];
  int calls = 1;
  /* Calls per repetition: enough for min_s, so the clocks' resolution and the
   * call overhead of the timer do not count. */
  for (;;) {
    double t0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < calls; i++)
      cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                  s->tb ? CblasTrans : CblasNoTrans, s->m, s->n, s->k, 1.0f, A, lda, B, ldb,
                  s->beta, C, s->n);
    if (now_s(CLOCK_THREAD_CPUTIME_ID) - t0 >= min_s || calls >= 1 << 20)
      break;
    calls *= 2;
  }
  for (int r = 0; r < reps; r++) {
    double w0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < calls; i++)
      cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                  s->tb ? CblasTrans : CblasNoTrans, s->m, s->n, s->k, 1.0f, A, lda, B, ldb,
                  s->beta, C, s->n);
    cpus[r] = (now_s(CLOCK_THREAD_CPUTIME_ID) - c0) / calls;
    walls[r] = (now_s(CLOCK_MONOTONIC) - w0) / calls;
  }
  qsort(walls, (size_t)reps, sizeof(double), cmp);
  qsort(cpus, (size_t)reps, sizeof(double), cmp);
  s->wall_s = walls[reps / 2];
  s->cpu_s = cpus[reps / 2];
}

int main(int argc, char **argv) {
  int batch = 128, reps = 31, json = 0;
  double min_ms = 2.0;
  int units[] = {784, 256, 128, 10}, n_layers = 3;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0)
      json = 1;
    else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
      batch = atoi(argv[++i]);
    else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
      reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--min-ms") == 0 && i + 1 < argc)
      min_ms = atof(argv[++i]);
    else {
      fprintf(stderr,
              "usage: bench_sgemm [--batch B] [--reps R] [--min-ms MS] [--json]\n"
              "  the one-core sgemm bound of the Fashion-MNIST MLP 784-256-128-10\n");
      return 2;
    }
  }
  if (batch < 1 || reps < 1 || reps > 101 || min_ms <= 0) {
    fprintf(stderr, "bench_sgemm: --batch >= 1, --reps 1..101, --min-ms > 0\n");
    return 2;
  }
  openblas_set_num_threads(1);

  shape_t sh[MAX_SHAPES];
  int n = 0;
  for (int l = 0; l < n_layers; l++)
    sh[n++] = (shape_t){"forward Z = X W", 0, 0, batch, units[l + 1], units[l], 1.0f, 0, 0};
  for (int l = n_layers - 1; l >= 0; l--) {
    sh[n++] = (shape_t){"backward dW = X^T dZ", 1, 0, units[l], units[l + 1], batch, 0.0f, 0, 0};
    if (l > 0)
      sh[n++] = (shape_t){"backward dX = dZ W^T", 0, 1, batch, units[l], units[l + 1], 0.0f, 0, 0};
  }
  size_t most = 0;
  for (int i = 0; i < n; i++) {
    size_t a = (size_t)sh[i].m * sh[i].k, b = (size_t)sh[i].k * sh[i].n,
           c = (size_t)sh[i].m * sh[i].n;
    most = a > most ? a : most;
    most = b > most ? b : most;
    most = c > most ? c : most;
  }
  float *A = malloc(most * sizeof(float)), *B = malloc(most * sizeof(float)),
        *C = malloc(most * sizeof(float));
  if (A == NULL || B == NULL || C == NULL) {
    fprintf(stderr, "bench_sgemm: out of memory\n");
    return 1;
  }
  /* Values of the size a network's activations and weights have. */
  for (size_t i = 0; i < most; i++) {
    A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    B[i] = (float)((i * 104729) % 1000) * 1e-4f - 0.05f;
    C[i] = 0.0f;
  }
  double flops = 0, wall = 0, cpu = 0;
  for (int i = 0; i < n; i++) {
    run(&sh[i], A, B, C, reps, min_ms * 1e-3);
    flops += 2.0 * sh[i].m * sh[i].n * sh[i].k;
    wall += sh[i].wall_s;
    cpu += sh[i].cpu_s;
  }
  const char *core = openblas_get_corename();
  if (json) {
    printf("{\"impl\":\"sgemm\",\"kernel\":\"%s\",\"batch\":%d,\"flops_per_sample\":%.0f,"
           "\"step_wall_us\":%.2f,\"step_cpu_us\":%.2f,\"gflops_wall\":%.2f,\"gflops_cpu\":%.2f,"
           "\"bound_samples_per_s\":%.1f,\"bound_samples_per_cpu_s\":%.1f,\"shapes\":[",
           core, batch, flops / batch, wall * 1e6, cpu * 1e6, flops / wall * 1e-9,
           flops / cpu * 1e-9, batch / wall, batch / cpu);
    for (int i = 0; i < n; i++)
      printf("%s{\"op\":\"%c%c\",\"m\":%d,\"n\":%d,\"k\":%d,\"gflops_cpu\":%.2f}", i ? "," : "",
             sh[i].ta ? 'T' : 'N', sh[i].tb ? 'T' : 'N', sh[i].m, sh[i].n, sh[i].k,
             2.0 * sh[i].m * sh[i].n * sh[i].k / sh[i].cpu_s * 1e-9);
    printf("]}\n");
  } else {
    printf("OpenBLAS kernel %s, one thread, batch %d\n", core, batch);
    for (int i = 0; i < n; i++)
      printf("  %-22s %c%c %5d x %4d x %4d  %8.2f us  %6.1f GFLOP/s (CPU time)\n", sh[i].what,
             sh[i].ta ? 'T' : 'N', sh[i].tb ? 'T' : 'N', sh[i].m, sh[i].n, sh[i].k,
             sh[i].cpu_s * 1e6, 2.0 * sh[i].m * sh[i].n * sh[i].k / sh[i].cpu_s * 1e-9);
    printf("step: %.0f FLOP per sample, %.1f us CPU (%.1f us wall), %.1f GFLOP/s: "
           "bound %.0f samples/s\n",
           flops / batch, cpu * 1e6, wall * 1e6, flops / cpu * 1e-9, batch / cpu);
  }
  free(A);
  free(B);
  free(C);
  return 0;
}
