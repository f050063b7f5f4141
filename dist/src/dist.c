/* reduce.h over MPI (see dist.h): an ordered reduce-scatter + allgather for
 * the sums, rank 0's control words riding on its allgather, and waits that
 * sleep instead of spinning.
 *
 * Chunks: the n_sum summed floats are cut into size chunks, chunk k being
 * [k n / size, (k + 1) n / size); chunk k belongs to rank (k + 1) % size, so
 * rank 0 owns the last chunk and its allgather contribution is that chunk
 * followed by the control words, contiguous in the buffer. */
#include "trainbus/dist.h"

#include <mpi.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct dist_s {
  tb_reduce_t r;
  MPI_Comm comm;
  int *counts, *displs, *rcounts, *rdispls; /* size each */
  float *scratch;                           /* size x the largest chunk */
  long scratch_len;
  tb_dist_stats_t stats;
} dist_t;

bool tb_dist_launched(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", NULL};
  for (int i = 0; vars[i] != NULL; i++)
    if (getenv(vars[i]) != NULL)
      return true;
  return false;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int mpi_fail(int rc, const char *what, tb_err_t *err) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
    snprintf(msg, sizeof(msg), "MPI error %d", rc);
  return tb_errf(err, TB_EIO, "MPI: %s: %s", what, msg);
}

/* Completes req polling MPI_Test: a few polls at once (the others are
 * usually there already), then between sleeps growing from 20 us to
 * max_us, so that a rank waiting for a slow or paused peer costs no core. */
static int sleepy_wait(MPI_Request *req, long max_us, const char *what, tb_err_t *err) {
  long us = 20;
  for (int polls = 0;; polls++) {
    int done = 0, rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS)
      return mpi_fail(rc, what, err);
    if (done)
      return 0;
    if (polls < 16)
      continue;
    struct timespec ts = {0, us * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
      ;
    us = us * 2 > max_us ? max_us : us * 2;
  }
}

static int arrive(dist_t *d, long max_us, tb_err_t *err) {
  MPI_Request req;
  double t0 = now_s();
  int rc = MPI_Ibarrier(d->comm, &req);
  if (rc != MPI_SUCCESS)
    return mpi_fail(rc, "barrier", err);
  rc = sleepy_wait(&req, max_us, "barrier", err);
  d->stats.wait_s += now_s() - t0;
  return rc;
}

static long chunk_lo(long n, int size, int k) {
  return (long)((long long)n * k / size);
}

/* The chunk rank `rank` owns. */
static int chunk_of(int rank, int size) {
  return (rank + size - 1) % size;
}

static int d_allreduce(tb_reduce_t *r, float *buf, long n_sum, tb_err_t *err) {
  dist_t *d = r->user;
  int size = r->size, rank = r->rank, rc;
  double t0 = now_s();
  d->stats.allreduces++;
  d->stats.sum_floats += (uint64_t)n_sum;
  if (n_sum == 0) {
    /* A control-only exchange: the others may wait here through a pause. */
    MPI_Request req;
    if ((rc = MPI_Ibcast(buf, TB_REDUCE_N_CTL, MPI_FLOAT, 0, d->comm, &req)) != MPI_SUCCESS)
      return mpi_fail(rc, "control exchange", err);
    if ((rc = sleepy_wait(&req, 10000, "control exchange", err)) != 0)
      return rc;
    if (rank == 0)
      d->stats.bytes_sent += (uint64_t)(size - 1) * TB_REDUCE_N_CTL * sizeof(float);
    d->stats.wait_s += now_s() - t0;
    d->stats.reduce_s += now_s() - t0;
    return 0;
  }
  if (n_sum > (long)2147483647 - TB_REDUCE_N_CTL)
    return tb_errf(err, TB_ERANGE, "MPI: %ld floats to reduce, more than an int counts", n_sum);
  int mine = chunk_of(rank, size);
  long lo = chunk_lo(n_sum, size, mine), len = chunk_lo(n_sum, size, mine + 1) - lo;
  long need = (long)size * (len > 0 ? len : 1);
  if (d->scratch_len < need) {
    float *s = realloc(d->scratch, (size_t)need * sizeof(float));
    if (s == NULL)
      return tb_errf(err, TB_ENOMEM, "MPI: out of memory for a %ld-float reduction", n_sum);
    d->scratch = s;
    d->scratch_len = need;
  }
  for (int k = 0; k < size; k++) {
    int owner = (k + 1) % size;
    d->counts[owner] = (int)(chunk_lo(n_sum, size, k + 1) - chunk_lo(n_sum, size, k));
    d->displs[owner] = (int)chunk_lo(n_sum, size, k);
    d->rcounts[k] = (int)len;
    d->rdispls[k] = (int)(k * len);
  }
  /* Sleeps of at most 100 us: measured on 2 ranks of the Fashion-MNIST MLP,
   * 1 ms sleeps doubled the time waiting for the other rank (0.17-0.35 s
   * against 0.10-0.17 s per 422 steps), while 10,000 wake-ups a second
   * still cost a waiting rank a few percent of a core. */
  if ((rc = arrive(d, 100, err)) != 0)
    return rc;
  /* Reduce-scatter: chunk k of every rank to its owner, kept by rank. */
  if ((rc = MPI_Alltoallv(buf, d->counts, d->displs, MPI_FLOAT, d->scratch, d->rcounts, d->rdispls,
                          MPI_FLOAT, d->comm)) != MPI_SUCCESS)
    return mpi_fail(rc, "reduce-scatter (MPI_Alltoallv)", err);
  /* Added in rank order, as reduce.h promises. */
  for (long i = 0; i < len; i++) {
    float acc = d->scratch[i];
    for (int k = 1; k < size; k++)
      acc += d->scratch[k * len + i];
    buf[lo + i] = acc;
  }
  /* Allgather in place; rank 0's part carries the control words. */
  d->counts[0] += TB_REDUCE_N_CTL;
  rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, d->counts, d->displs, MPI_FLOAT,
                      d->comm);
  if (rc != MPI_SUCCESS)
    return mpi_fail(rc, "allgather (MPI_Allgatherv)", err);
  d->stats.bytes_sent += tb_dist_step_bytes(n_sum, size, rank);
  d->stats.reduce_s += now_s() - t0;
  return 0;
}

uint64_t tb_dist_step_bytes(long n_sum, int size, int rank) {
  if (size <= 1)
    return 0;
  int mine = chunk_of(rank, size);
  uint64_t own = (uint64_t)(chunk_lo(n_sum, size, mine + 1) - chunk_lo(n_sum, size, mine)) +
                 (rank == 0 ? TB_REDUCE_N_CTL : 0);
  uint64_t others = (uint64_t)n_sum - (own - (rank == 0 ? TB_REDUCE_N_CTL : 0));
  return (others + own * (uint64_t)(size - 1)) * sizeof(float);
}

static int d_broadcast(tb_reduce_t *r, void *buf, size_t len, tb_err_t *err) {
  dist_t *d = r->user;
  int rc;
  /* Rank 0 may be loading a checkpoint meanwhile: wait asleep. */
  if ((rc = arrive(d, 10000, err)) != 0)
    return rc;
  for (size_t off = 0; off < len;) {
    size_t n = len - off > (1u << 30) ? (1u << 30) : len - off;
    if ((rc = MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, 0, d->comm)) != MPI_SUCCESS)
      return mpi_fail(rc, "broadcast", err);
    off += n;
  }
  return 0;
}

static int d_check(tb_reduce_t *r, uint64_t value, const char *what, tb_err_t *err) {
  dist_t *d = r->user;
  uint64_t *all = malloc((size_t)r->size * sizeof(uint64_t));
  MPI_Request req;
  int rc;
  if (all == NULL)
    return tb_errf(err, TB_ENOMEM, "MPI: out of memory");
  if ((rc = MPI_Iallgather(&value, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, d->comm, &req)) !=
      MPI_SUCCESS) {
    free(all);
    return mpi_fail(rc, "checksum exchange", err);
  }
  if ((rc = sleepy_wait(&req, 10000, "checksum exchange", err)) != 0) {
    free(all);
    return rc;
  }
  char ranks[256] = "";
  size_t used = 0;
  int n_diff = 0;
  for (int k = 1; k < r->size; k++) {
    if (all[k] == all[0])
      continue;
    if (n_diff++ < 16 && used < sizeof(ranks))
      used +=
          (size_t)snprintf(ranks + used, sizeof(ranks) - used, "%s%d", n_diff > 1 ? ", " : "", k);
  }
  free(all);
  if (n_diff == 0)
    return 0;
  return tb_errf(err, TB_EDIVERGED, "%s: rank%s %s%s differ%s from rank 0 (checksums compared)",
                 what, n_diff > 1 ? "s" : "", ranks, n_diff > 16 ? ", ..." : "",
                 n_diff > 1 ? "" : "s");
}

int tb_dist_init(int *argc, char ***argv, tb_reduce_t **out, tb_err_t *err) {
  int provided = 0, rc, inited = 0;
  *out = NULL;
  MPI_Initialized(&inited);
  if (!inited && (rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
    return mpi_fail(rc, "MPI_Init_thread", err);
  if (inited)
    MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_FUNNELED) {
    MPI_Finalize();
    return tb_errf(err, TB_ESTATE,
                   "MPI: this MPI library gives thread level %d, below MPI_THREAD_FUNNELED "
                   "(trainbus's threads call no MPI, but its main thread must be able to)",
                   provided);
  }
  dist_t *d = calloc(1, sizeof(*d));
  if (d == NULL)
    return tb_errf(err, TB_ENOMEM, "MPI: out of memory");
  if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &d->comm)) != MPI_SUCCESS) {
    free(d);
    return mpi_fail(rc, "MPI_Comm_dup", err);
  }
  /* Errors come back to us, to be told with their context. */
  MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(d->comm, &d->r.rank);
  MPI_Comm_size(d->comm, &d->r.size);
  size_t n = (size_t)d->r.size;
  d->counts = calloc(n, sizeof(int));
  d->displs = calloc(n, sizeof(int));
  d->rcounts = calloc(n, sizeof(int));
  d->rdispls = calloc(n, sizeof(int));
  if (d->counts == NULL || d->displs == NULL || d->rcounts == NULL || d->rdispls == NULL) {
    tb_dist_finalize(&d->r);
    return tb_errf(err, TB_ENOMEM, "MPI: out of memory");
  }
  d->r.allreduce = d_allreduce;
  d->r.broadcast = d_broadcast;
  d->r.check = d_check;
  d->r.user = d;
  *out = &d->r;
  return 0;
}

static void dist_free(dist_t *d) {
  if (d->comm != MPI_COMM_NULL)
    MPI_Comm_free(&d->comm);
  free(d->counts);
  free(d->displs);
  free(d->rcounts);
  free(d->rdispls);
  free(d->scratch);
  free(d);
}

void tb_dist_finalize(tb_reduce_t *r) {
  int inited = 0, finalized = 0;
  if (r != NULL)
    dist_free(r->user);
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized)
    MPI_Finalize();
}

void tb_dist_abort(tb_reduce_t *r, int code) {
  (void)r;
  MPI_Abort(MPI_COMM_WORLD, code);
  exit(code); /* MPI_Abort does not return; should it, leave anyway */
}

void tb_dist_stats(const tb_reduce_t *r, tb_dist_stats_t *out) {
  const dist_t *d = r != NULL ? r->user : NULL;
  if (d == NULL) {
    memset(out, 0, sizeof(*out));
    return;
  }
  *out = d->stats;
}
