/* The one place core calls BLAS. Row-major cblas_sgemm, with the transposes
 * named so each call site can state its algebra. */
#include "internal.h"

#include <cblas.h>

void tb__sgemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, const float *B,
               float beta, float *C) {
  int lda = ta ? m : k; /* A is stored m x k, or k x m when transposed */
  int ldb = tb ? k : n; /* B is stored k x n, or n x k when transposed */
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, A, lda, B, ldb, beta, C, n);
}

void tb_set_num_threads(int n) {
  openblas_set_num_threads(n < 1 ? 1 : n);
}

int tb_get_num_threads(void) {
  return openblas_get_num_threads();
}
