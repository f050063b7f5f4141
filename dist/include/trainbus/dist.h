/* Data-parallel training over MPI: reduce.h's per-step reduction between the
 * ranks of an MPI job (Open MPI, Debian's openmpi-bin / libopenmpi-dev).
 *
 * Every rank runs the same job through tb_model_fit() with the reduction
 * tb_dist_init() gives (tb_fit_opts_t.reduce); rank 0 is reduce.h's
 * coordinator. The implementation keeps reduce.h's promises:
 *
 *   - allreduce sums in rank order, ((b_0 + b_1) + b_2) + ..., whatever the
 *     number of ranks, so the same job, seed and N give bit-identical weights
 *     run after run (MPI leaves the order of its own MPI_Allreduce to the
 *     library: coll/tuned picks an algorithm by message and communicator
 *     size). It is a reduce-scatter then an allgather, as a ring allreduce
 *     is: the buffer is cut into N chunks; MPI_Alltoallv hands chunk k of
 *     every rank to its owner, which adds the N copies in rank order;
 *     MPI_Allgatherv hands every summed chunk to everyone. Each rank sends
 *     and receives 2 (N - 1) / N of the buffer, as a ring allreduce does.
 *     Rank 0 owns the last chunk, which the control words follow, so its
 *     allgather carries them: the control words cost no message of their own.
 *   - Waiting never spins a core. A step's reduction first waits for every
 *     rank to arrive (MPI_Ibarrier polled with MPI_Test between sleeps of
 *     20 us growing to 100 us), then moves the data with blocking collectives
 *     while everyone is there. A control-only exchange (the others' side of
 *     a pause or of the coordinator's epoch boundary, which may last
 *     minutes) is an MPI_Ibcast polled the same way with sleeps up to 10 ms.
 *     Open MPI's blocking calls still poll while data moves; run it with
 *     `--mca mpi_yield_when_idle 1` so that they yield too.
 *   - check compares every rank's value with MPI_Allgather and fails on
 *     every rank (TB_EDIVERGED) naming the ranks that differ from rank 0.
 *   - A failed MPI call returns TB_EIO with MPI's message; the caller then
 *     ends the job with tb_dist_abort() (MPI_Abort), so no rank waits
 *     forever. A rank that dies is Open MPI's to report: mpirun ends the job
 *     and says which rank ("mpirun noticed that process rank 2 ... exited on
 *     signal 9"); Open MPI 4.1 has no way to go on without it (ULFM is in
 *     5.0), so recovery is a restart from the last checkpoint.
 *
 * Threads: MPI is initialised with MPI_THREAD_FUNNELED; every operation
 * runs on the thread that called tb_dist_init(), which must be the one that
 * calls tb_model_fit() (fit() reduces on that thread). */
#ifndef TRAINBUS_DIST_H
#define TRAINBUS_DIST_H

#include <stdbool.h>
#include <stdint.h>

#include "trainbus/error.h"
#include "trainbus/reduce.h"

/* True when this process was started by an MPI launcher (mpirun / mpiexec
 * sets OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_RANK), so that a program can
 * initialise MPI only then (a plain run never touches MPI). Any thread. */
bool tb_dist_launched(void);

/* Initialises MPI (MPI_Init_thread, FUNNELED) and returns in *out a
 * reduction over MPI_COMM_WORLD (its own duplicate of it), rank and size
 * MPI's. Call once per process, before any other thread uses MPI. 0, or
 * TB_EIO with MPI's message in *err. */
int tb_dist_init(int *argc, char ***argv, tb_reduce_t **out, tb_err_t *err);

/* Frees the reduction and finalises MPI (MPI_Finalize, collective: every
 * rank must call it). r may be NULL (then MPI is finalised if it was
 * initialised). */
void tb_dist_finalize(tb_reduce_t *r);

/* Ends the whole MPI job with code (MPI_Abort): what a rank that failed on
 * its own does, so that the others do not wait for it. Does not return. */
void tb_dist_abort(tb_reduce_t *r, int code);

/* What the reduction did on this rank, for benchmarks and reports. */
typedef struct tb_dist_stats_s {
  uint64_t allreduces; /* allreduce calls (steps, validation batches, exchanges) */
  uint64_t sum_floats; /* floats summed over all allreduce calls (n_sum each) */
  uint64_t bytes_sent; /* bytes this rank sent in allreduce calls */
  double wait_s;       /* seconds spent waiting for the other ranks to arrive */
  double reduce_s;     /* seconds in allreduce calls, waits included */
} tb_dist_stats_t;

void tb_dist_stats(const tb_reduce_t *r, tb_dist_stats_t *out);

/* The bytes one rank sends in the allreduce of a step of n_sum summed floats
 * among size ranks: the chunks of the other ranks in the reduce-scatter, and
 * its own chunk to each of them in the allgather (plus the control words on
 * rank 0). For the benchmark's model and the docs. */
uint64_t tb_dist_step_bytes(long n_sum, int size, int rank);

#endif
