/* The one place core calls BLAS. Row-major cblas_sgemm, with the transposes
 * named so each call site can state its algebra; and the thread count.
 *
 * Threads: tb_set_num_threads() sets the cores training uses (step.c's
 * lanes). OpenBLAS's own pool is a separate setting, which step.c keeps at 1
 * while its lanes each multiply their own rows, and raises only for the
 * steps where one lane with BLAS's threads is faster.
 *
 * Debian 12's OpenBLAS (0.3.21, the pthread build, libopenblas0-pthread) is
 * safe for concurrent cblas_sgemm calls from several threads while its own
 * thread count is 1: interface/gemm.c then runs the product on the calling
 * thread (args.nthreads = 1 from num_cpu_avail(), its blas_cpu_number), the
 * small-matrix kernels (SkylakeX/Cooperlake, M*N*K <= 100^3) use no buffer at
 * all, and the packing buffer of the others comes from blas_memory_alloc(),
 * which in this build (SMP, no USE_TLS: the library has no
 * pthread_getspecific) takes a slot of a shared table under alloc_lock, one
 * slot per concurrent call (NUM_BUFFERS = 2 * MAX_THREADS = 128). What is not
 * per thread is openblas_set_num_threads(): it sets the process-wide
 * blas_cpu_number, so it is called here only from the thread that runs a
 * step, never while lanes multiply, and only when the value changes. */
#include "internal.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>

void tb__sgemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, const float *B,
               float beta, float *C) {
  int lda = ta ? m : k; /* A is stored m x k, or k x m when transposed */
  int ldb = tb ? k : n; /* B is stored k x n, or n x k when transposed */
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, A, lda, B, ldb, beta, C, n);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static _Atomic int train_threads; /* tb_set_num_threads(), or OpenBLAS's default */
static _Atomic int blas_threads;  /* what OpenBLAS was last told */

/* Before anything changes it, OpenBLAS's own count is the process's default
 * (OPENBLAS_NUM_THREADS, else the cores it may run on). */
static void init(void) {
  int n = openblas_get_num_threads();
  atomic_store(&blas_threads, n);
  int expected = 0;
  atomic_compare_exchange_strong(&train_threads, &expected, n < 1 ? 1 : n);
}

void tb_set_num_threads(int n) {
  pthread_once(&once, init);
  atomic_store(&train_threads, n < 1 ? 1 : n);
}

int tb_get_num_threads(void) {
  pthread_once(&once, init);
  return atomic_load(&train_threads);
}

void tb__blas_threads(int n) {
  pthread_once(&once, init);
  if (atomic_exchange(&blas_threads, n) != n)
    openblas_set_num_threads(n);
}
