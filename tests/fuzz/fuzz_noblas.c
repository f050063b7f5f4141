/* core's blas.c for the job fuzzer, which is built without OpenBLAS: the
 * thread count as blas.c keeps it, and no matrix product. Nothing the job
 * fuzzer runs (parsing, checking, estimating, preparing) multiplies
 * matrices or steps a model, so reaching either is a finding. */
#include "internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic int train_threads = 1;

void tb__sgemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, const float *B,
               float beta, float *C) {
  (void)ta, (void)tb, (void)m, (void)n, (void)k, (void)alpha, (void)A, (void)B, (void)beta, (void)C;
  fprintf(stderr, "fuzz: a matrix product while parsing or preparing a job\n");
  abort();
}

void tb_set_num_threads(int n) {
  atomic_store(&train_threads, n < 1 ? 1 : n);
}

int tb_get_num_threads(void) {
  return atomic_load(&train_threads);
}

void tb__blas_threads(int n) {
  (void)n;
  fprintf(stderr, "fuzz: a training step while parsing or preparing a job\n");
  abort();
}
