/* The per-step reduction: how several participants (processes, hosts) train
 * one model as one run, without core knowing how they talk.
 *
 * fit() calls the reduction once per training step with one contiguous
 * float32 buffer, and once per validation batch with the statistics alone:
 *
 *   [ gradient sums (n_params) | statistics (TB_REDUCE_N_STATS) | control (TB_REDUCE_N_CTL) ]
 *     `------------------- summed over participants ---------'   `- the coordinator's -'
 *
 * plus a broadcast of the model's state before the first step and a
 * comparison of a checksum of the weights after every epoch. Inside one
 * process, fit() already splits each batch over its threads with this
 * layout (each thread's partial sums, added in thread order); a participant
 * contributes the sum over its threads, and the reduction adds participants
 * in rank order. The default (tb_reduce_single(), or NULL in
 * tb_fit_opts_t.reduce) is one participant, for which every operation is the
 * identity (fit() calls none with size 1). dist/ implements it with MPI
 * (issue 15); core links no MPI. Only fit() reduces: evaluate(), predict()
 * and the step functions of a hand-written loop are one participant's.
 *
 * What each participant does, so that N participants train as one model
 * (the rules fit() follows when size > 1):
 *   - The coordinator (rank 0) broadcasts weights, optimizer slots and
 *     iterations, learning rate, RNG state, position (epoch, batch, row
 *     order) and the running metric sums before the first step, as PyTorch's
 *     DistributedDataParallel broadcasts its state_dict from rank 0 in its
 *     constructor (torch/nn/parallel/distributed.py) and Horovod's
 *     BroadcastGlobalVariablesCallback(0) does (horovod/_keras/callbacks.py).
 *     Callbacks' own state is not broadcast: each participant restores its
 *     callbacks from the checkpoint it is given, or starts them afresh.
 *   - Every participant draws the same permutation from the same RNG and
 *     takes rows [rank * n / size, (rank + 1) * n / size) of every global
 *     batch of n rows (one global batch of the job's batch_size, so results
 *     depend on size only through summation order: the global batch is
 *     split, not multiplied, as a DistributedSampler shard of
 *     torch/utils/data/distributed.py is, contiguously rather than strided).
 *     Dropout masks are drawn for the whole global batch on every
 *     participant, so they do not depend on size either.
 *   - Gradient sums are of the global batch's mean loss: a participant's
 *     rows contribute their per-sample gradients divided by the global
 *     batch's row count, so the sum over participants is the gradient
 *     (not a mean of means, as Horovod's and DDP's averaging of per-rank
 *     means is when shards are unequal).
 *   - Statistics are float32 sums, so batch and epoch logs are exact global
 *     values, as Keras's metrics are under a distribution strategy (their
 *     variables are SUM-aggregated on read, tf_keras/metrics/base_metric.py
 *     Metric.add_weight): every participant updates its Mean trackers from
 *     the reduced sums exactly as one process does (the batch loss is the
 *     float32 loss sum over the float32 row count; see model.h).
 *   - The control words carry what the coordinator's control block decided
 *     for this step (tb_reduce_ctl_t), read just before the step's reduction
 *     (tb_control_take): the one point where all participants meet. Every
 *     participant updates with the words' rate, and applies their stop,
 *     checkpoint (written by the coordinator alone), shutdown or pause at the
 *     step's boundary. So a rate set in a batch's hooks takes effect at the
 *     next update, as in one process; a stop made in a batch's hooks ends
 *     the run one batch later than in one process (at the next step's
 *     boundary), at the same batch everywhere. During a pause the
 *     coordinator waits in its control block and the others in a
 *     control-only exchange (allreduce with n_sum 0), which then gives them
 *     what changed meanwhile. The boundaries after epoch_begin's and
 *     epoch_end's hooks are the coordinator's alone too (boundary() in
 *     fit.c), each followed by such an exchange (two per epoch), which gives
 *     all the coordinator's stop decision (Lightning reduces such decisions,
 *     src/lightning/pytorch/strategies/parallel.py reduce_boolean_decision; here
 *     the coordinator's wins, since remote control reaches it alone). A word
 *     is copied, never summed.
 *   - After every epoch each participant passes a checksum of its weights
 *     and optimizer state to check(); a mismatch fails the run everywhere
 *     (TB_EDIVERGED) rather than letting ranks drift apart silently.
 *
 * Thread: every operation is called on the thread that called
 * tb_model_fit(), never concurrently, in the same order on every
 * participant (a participant that skipped a call would hang the others:
 * fit() never does). An operation that fails returns a negative TB_E... code
 * (or -errno) with a sentence in *err; fit() then fails with it at once. An
 * implementation must make the other participants fail too rather than wait
 * forever (MPI aborts the job). */
#ifndef TRAINBUS_REDUCE_H
#define TRAINBUS_REDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "trainbus/error.h"

/* The statistics slots, after the gradient sums. Each is a float32 sum over
 * the rows the participant trained (or evaluated) in this step, added in row
 * order; the reduction adds participants in rank order. */
enum {
  TB_REDUCE_LOSS = 0, /* per-sample losses (model.h: the loss before the batch mean) */
  TB_REDUCE_ACCURACY, /* per-row accuracy values (1 or 0; a row's mean for multi-output binary) */
  TB_REDUCE_MSE,      /* per-row mean squared errors (the mse metric) */
  TB_REDUCE_MAE,      /* per-row mean absolute errors (the mae metric) */
  TB_REDUCE_ROWS,     /* rows (an integer, exact in float32 up to 2^24) */
  TB_REDUCE_N_STATS
};

/* The control words, after the statistics: four 32-bit words stored bit for
 * bit in the buffer's last four float slots (memcpy, never arithmetic), so
 * an implementation must copy them, not add them. */
#define TB_REDUCE_N_CTL 4

enum {
  TB_REDUCE_STOP = 1u << 0,       /* stop training after this step (stop_training) */
  TB_REDUCE_PAUSE = 1u << 1,      /* the coordinator pauses at this step's boundary; the
                                     others wait in a control-only exchange */
  TB_REDUCE_CHECKPOINT = 1u << 2, /* the coordinator writes a checkpoint after this step */
  TB_REDUCE_SHUTDOWN = 1u << 3    /* checkpoint and leave fit() with TB_EINTERRUPTED */
};

typedef struct tb_reduce_ctl_s {
  uint32_t flags;    /* TB_REDUCE_STOP | ... */
  float lr;          /* the learning rate of this step's update (float32, as the model keeps it) */
  uint32_t version;  /* control changes the coordinator has applied in this fit: a change of lr
                        or of a flag increments it, so a participant can tell a new word */
  uint32_t reserved; /* 0 */
} tb_reduce_ctl_t;

/* The buffer's length in floats for a step with n_sum summed slots. */
#define TB_REDUCE_LEN(n_sum) ((n_sum) + TB_REDUCE_N_CTL)

/* Writes / reads the control words at buf[n_sum .. n_sum + TB_REDUCE_N_CTL). */
void tb_reduce_ctl_put(float *buf, long n_sum, const tb_reduce_ctl_t *ctl);
void tb_reduce_ctl_get(const float *buf, long n_sum, tb_reduce_ctl_t *ctl);

typedef struct tb_reduce_s tb_reduce_t;

struct tb_reduce_s {
  int rank; /* this participant, 0 .. size - 1; rank 0 is the coordinator */
  int size; /* participants, >= 1 */

  /* buf holds TB_REDUCE_LEN(n_sum) floats. On return, on every
   * participant, buf[i] for i < n_sum is the float32 sum of the
   * participants' buf[i] added in rank order, ((b_0 + b_1) + b_2) + ...
   * (one fixed order, so that the same job, seed, size and thread count give
   * bitwise the same weights run after run: MPI leaves the order of its
   * predefined reductions to the implementation, MPI 4.1 report,
   * mpi-forum.org/docs/mpi-4.1/mpi41-report/node130.htm), and
   * buf[n_sum ..] holds the coordinator's control words. n_sum
   * is the same on every participant: n_params + TB_REDUCE_N_STATS for a
   * training step, TB_REDUCE_N_STATS for a validation batch, 0 for a
   * control-only exchange. */
  int (*allreduce)(tb_reduce_t *r, float *buf, long n_sum, tb_err_t *err);

  /* Copies len bytes at buf from the coordinator to every participant. */
  int (*broadcast)(tb_reduce_t *r, void *buf, size_t len, tb_err_t *err);

  /* Every participant passes its value; 0 on every participant when all
   * are equal, else TB_EDIVERGED on every participant with the ranks that
   * differ in *err. `what` names the value for that message. */
  int (*check)(tb_reduce_t *r, uint64_t value, const char *what, tb_err_t *err);

  void *user; /* the implementation's */
};

/* One participant: rank 0 of 1, every operation the identity. Static, never
 * freed; any thread. */
tb_reduce_t *tb_reduce_single(void);

/* FNV-1a 64 of n floats' bytes: the checksum fit() compares after every
 * epoch (weights, then optimizer slots). Any thread. */
uint64_t tb_reduce_checksum(uint64_t h, const float *v, long n);
#define TB_REDUCE_CHECKSUM_INIT 1469598103934665603ULL

#endif
