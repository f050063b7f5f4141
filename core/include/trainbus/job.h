/* Jobs: a training run described as JSON (schema and examples in
 * docs/JOB.md).
 *
 * tb_job_parse() validates the whole document without touching the disk, so a
 * bad job is refused before anything trains, with a message naming the field's
 * path and the problem (`model.layers[2].units: expected a positive integer,
 * got -3`). tb_job_check() then holds it to a policy (where it may read and
 * write, how much memory it may use) by estimating its memory before anything
 * is allocated. tb_job_prepare() loads the data, fits the scaler on the
 * training part, and builds and compiles the model; tb_job_release() gives
 * that memory back when the run is over.
 *
 * A job is used by one thread at a time. */
#ifndef TRAINBUS_JOB_H
#define TRAINBUS_JOB_H

#include <stdint.h>
#include "trainbus/callback.h"
#include "trainbus/data.h"
#include "trainbus/error.h"
#include "trainbus/model.h"

/* Where a dataset comes from. */
typedef struct tb_data_spec_s {
  enum {
    TB_SRC_NONE = 0,
    TB_SRC_SEED,
    TB_SRC_SPIRALS,
    TB_SRC_BLOBS,
    TB_SRC_CSV,
    TB_SRC_IDX,
    TB_SRC_NPY
  } source;
  int n_per_class;                 /* spirals */
  double noise;                    /* spirals */
  int n, classes, features;        /* blobs */
  double std;                      /* blobs */
  uint64_t seed;                   /* generators; defaults to the job's seed */
  char path[1024];                 /* csv; resolved against the job file's folder */
  char images[1024], labels[1024]; /* idx */
  char x[1024], y[1024];           /* npy */
  /* csv: its options; label_name and features point into this spec (the
   * fields below), which never moves once parsed. */
  tb_csv_opts_t csv;
  char label_name[256];  /* csv: "label_column" given by name */
  tb_csv_col_t *columns; /* csv: "feature_columns", owned (names into column_names) */
  char *column_names;    /* their names, owned */
  tb_npy_opts_t npy;     /* npy: classes (limits are set when loading) */
  char where[24];        /* the object's path in the job: "data", "data.validation", "data.test" */

  /* Measured by tb_job_estimate() (files only; 0 until then): the bytes the
   * loader will read (after decompression) of the file, or of the larger of
   * an IDX pair; the rows (IDX) and columns (CSV: of the first data row; IDX:
   * values per item) the file announces. */
  uint64_t file_bytes;
  int64_t file_rows, file_cols;
  int64_t file_ycols; /* npy: values per row of y */
  bool measured;
  /* The job's policy's data limits with max_bytes lowered to file_bytes, so
   * that loading reads no more than was estimated (set by tb_job_check()). */
  tb_data_limits_t limits;
} tb_data_spec_t;

/* What a job may do: where it may read and write, and how much memory it may
 * use. The daemon has two: its operator's (any path, the memory budget) and
 * the one for jobs submitted over the network (confined to the data
 * directories, contents redacted from messages, the same budget). The policy
 * must outlive the jobs checked against it. */
typedef struct tb_job_policy_s {
  /* How the job's data files are read (confinement, size bounds, redaction);
   * with data.confined, the paths its callbacks and checkpoint_dir write to
   * must lie beneath data.dirs too. */
  tb_data_limits_t data;
  /* The most memory the job may need at its peak (tb_job_estimate_t.total),
   * in bytes; 0: no budget. */
  uint64_t max_bytes;
  /* How messages name the budget, e.g. "--max-job-memory"; NULL: none. */
  const char *limit_name;
  /* The runner writes checkpoints of the job (the daemon does with a state
   * directory): the estimate counts what a checkpoint write copies. Without
   * it, only jobs that checkpoint themselves (checkpoint_dir, a checkpoint
   * callback) are counted so. */
  bool checkpoints;
} tb_job_policy_t;

/* A job's memory at its peak, in bytes, estimated from the job alone (and
 * the sizes and headers of its files) before anything is allocated. It counts
 * what core allocates for the run: float32 parameters and their gradients;
 * the optimizer's slots (Adam 2, RMSprop 1 or 2, SGD 0 or 1 per parameter);
 * per-layer buffers (pre-activation, output, gradient, dropout mask) for
 * min(batch_size, rows) rows, and the batch copies; the data sets (x and y,
 * labels one-hot widened for categorical_crossentropy) and the epoch's row
 * order; the copies validation_split makes; EarlyStopping's best weights; the
 * copies a checkpoint write makes (every parameter and slot copied, then
 * serialised into a buffer that grows by doubling); and, while loading, the
 * loaders' read buffers (a file's bytes, grown by doubling) and the
 * generators' and scaler's scratch. A CSV file is bounded from its size and
 * the columns of its first row (each value takes at least two bytes); once
 * loaded, tb_job_prepare() checks again with the exact shape.
 *
 * total = max(loading peak, training peak), where the loading peak is the
 * data plus the largest loader scratch, and the training peak is the sum of
 * every other field. Not counted: the process's own memory (the daemon, its
 * clients' buffers, OpenBLAS's per-thread buffers). */
typedef struct tb_job_estimate_s {
  uint64_t total;       /* the peak */
  uint64_t params;      /* weights and their gradients (one partial gradient per thread
                           but the first) */
  uint64_t optimizer;   /* optimizer slots */
  uint64_t activations; /* layer buffers and batch copies at `rows` rows (split over the
                           threads, each holding its share rounded up) */
  uint64_t data;        /* the data sets as trained on, and the row order */
  uint64_t validation;  /* validation_split's copies of the training data */
  uint64_t callbacks;   /* EarlyStopping(restore_best_weights)'s copies */
  uint64_t checkpoint;  /* what writing a checkpoint copies */
  uint64_t loading;     /* the largest loader or scaler scratch (loading only) */
  uint64_t other;       /* 1 MiB for the run's small allocations (layers, callbacks,
                           history, logs), counted in both peaks */
  int64_t n_params;     /* trainable parameters */
  int64_t rows;         /* rows of the layer buffers: min(batch_size, largest set) */
  int threads;          /* the thread count assumed: the job's, else the process's
                           (tb_get_num_threads()) */
} tb_job_estimate_t;

/* The most ranks a job's "distributed" may ask for. */
#define TB_JOB_MAX_RANKS 1024

typedef struct tb_job_s {
  char name[64];
  char origin[256]; /* how messages name the document (tb_job_parse's origin) */
  uint64_t seed;
  int threads; /* cores training uses (tb_set_num_threads); 0 leaves the process setting */

  tb_data_spec_t train_spec, val_spec, test_spec; /* val/test: source NONE if absent */
  tb_scale_t scale;
  double scale_divisor;

  /* the model: layer kinds with their parameters, in order */
  int n_layers;
  struct tb_job_layer_s {
    enum { TB_JOB_DENSE, TB_JOB_DROPOUT, TB_JOB_ACTIVATION } type;
    int units;
    tb_act_t act;
    float rate;
  } layers[64];
  tb_compile_opts_t compile;
  tb_fit_opts_t fit; /* validation_data points at val below after prepare */

  /* The job's "callbacks", built at parse time (they do no I/O until
   * training), in order; owned by the job. */
  int n_callbacks;
  tb_callback_t *callbacks[32];
  /* Whether each callback writes files (ModelCheckpoint, CSVLogger,
   * BackupAndRestore: those that name a path): a data-parallel run keeps
   * them on rank 0 alone (tb_job_add_callbacks_rank). */
  bool callback_writes[32];

  /* Checkpoints: "checkpoint_dir" and "checkpoint_every" (batches, 0: epoch
   * ends only); fit.checkpoint_dir points here when set. */
  char checkpoint_dir[1024];
  /* A fingerprint of the job (FNV-1a of the document without "epochs",
   * "verbose" and "checkpoint_dir"): checkpoints of another job are refused. */
  char id[17];

  /* The paths the job writes to (its callbacks' files and folders, and
   * checkpoint_dir), resolved as the data paths are, with the field each
   * came from ("callbacks[0].filepath"). */
  int n_outputs;
  struct tb_job_output_s {
    char field[48];
    char path[1024];
  } outputs[34];
  /* Copies of the weights its callbacks keep (EarlyStopping with
   * restore_best_weights). */
  int n_weight_copies;

  /* "distributed" (docs/JOB.md): the ranks trainbusd launches the job on
   * with mpirun, 0 when absent; the hosts as mpirun's --host list
   * ("a,b:2"), or an mpirun hostfile (resolved as data paths are), "" when
   * not given. `mpirun -n N trainbus train` ignores them: N is mpirun's. */
  int dist_ranks;
  char dist_hosts[1024];
  char dist_hostfile[1024];

  /* Set by tb_job_check(); NULL: no policy (any path, no budget). */
  const tb_job_policy_t *policy;

  /* Filled by tb_job_prepare(); owned by the job. */
  tb_model_t *model;
  tb_dataset_t *train, *val, *test;
  tb_scaler_t scaler;
} tb_job_t;

/* Parses and validates a job. `origin` names the document in messages (a
 * file name) and `base_dir` resolves relative data paths (may be NULL). */
int tb_job_parse(const char *text, size_t len, const char *origin, const char *base_dir,
                 tb_job_t **out, tb_err_t *err);
/* Reads and parses a job file; its relative paths resolve against the
 * file's folder. */
int tb_job_load(const char *path, tb_job_t **out, tb_err_t *err);
/* The same with relative paths resolved against base_dir (NULL: the file's
 * folder): a job kept away from where it was written (trainbusd keeps a
 * submitted job in its run's folder, and launches mpirun on it with the
 * folder the job came with). */
int tb_job_load_from(const char *path, const char *base_dir, tb_job_t **out, tb_err_t *err);
/* Estimates the job's memory at its peak into *est (see tb_job_estimate_t),
 * reading the sizes and headers of its data files (at most their first MiB)
 * as the job's policy allows. 0, or the error of a file that cannot be read
 * or is refused (the loaders' codes), with a message naming the field
 * ("job.json: data.path: ..."). *est is zeroed on failure. */
int tb_job_estimate(tb_job_t *job, tb_job_estimate_t *est, tb_err_t *err);
/* Holds the job to policy (which must outlive the job): with
 * policy->data.confined every path it writes must lie beneath the data
 * directories (its data files are checked as they are measured), then its
 * memory is estimated (tb_job_estimate) and compared with the budget. 0;
 * TB_EINVAL for a path the policy refuses; TB_ERANGE for a job over the
 * budget, whose message names the estimate, its largest parts, and the limit
 * (`job.json: needs an estimated 40.2 GiB of memory at its peak (weights and
 * gradients 26.8 GiB, ...), more than the 11.6 GiB a job may use
 * (--max-job-memory)`); a file's error otherwise. *est (may be NULL) receives
 * the estimate when it was made. Later, tb_job_prepare() reads the files
 * within the policy, no more bytes of each than were measured here, and
 * checks the estimate again with the data as loaded before building the
 * model. */
int tb_job_check(tb_job_t *job, const tb_job_policy_t *policy, tb_job_estimate_t *est,
                 tb_err_t *err);
/* Writes a size for people ("11.6 GiB", "512 KiB", "100 B") into buf. */
const char *tb_job_format_bytes(uint64_t bytes, char *buf, size_t len);
/* Loads data and builds the compiled model (within the job's policy, see
 * tb_job_check). TB_ERANGE when the data as loaded would take the job over
 * its policy's budget. */
int tb_job_prepare(tb_job_t *job, tb_err_t *err);
/* Frees what tb_job_prepare() built (model, data sets, scaler), keeping the
 * parsed job and its callbacks: a finished run's job costs a few KiB. */
void tb_job_release(tb_job_t *job);
/* Adds the job's callbacks to a list, in the job's order. */
int tb_job_add_callbacks(tb_job_t *job, tb_callbacks_t *list);
/* The same for one rank of a data-parallel run (reduce.h): rank 0 gets them
 * all; another rank only those that decide (EarlyStopping,
 * ReduceLROnPlateau, LearningRateScheduler, TerminateOnNaN), not those that
 * write (callback_writes), as Horovod's docs have ModelCheckpoint on rank 0
 * only (horovod docs/keras.rst). Every rank sees the same global logs, so
 * the deciding ones decide alike. */
int tb_job_add_callbacks_rank(tb_job_t *job, tb_callbacks_t *list, int rank);
void tb_job_free(tb_job_t *job);

/* Where the demo finds Fashion-MNIST: Debian's dataset-fashion-mnist. */
#define TB_DEMO_DATA_DIR "/usr/share/datasets/fashion-mnist"

/* The spirals demo (two interleaved spirals, a small MLP, about five
 * seconds on one core), as JSON: the demo when Fashion-MNIST cannot be had,
 * and a quick job for tests. */
const char *tb_job_demo_spirals_json(void);

/* The built-in demo job, as JSON written into buf (len bytes; 2 KiB is
 * enough): an MLP on Fashion-MNIST (784-256-128-10, Adam, 5 epochs, about
 * 5-10 seconds; its test set evaluated at the end) when the four IDX files
 * can be read in data_dir (NULL: TB_DEMO_DATA_DIR), else the spirals. In
 * the second case notice (nlen bytes, may be NULL) receives a one-line
 * explanation, else "". Returns buf, or NULL when len is too small. Reads
 * nothing but the files' permissions; thread-safe. */
const char *tb_job_demo_json(const char *data_dir, char *buf, size_t len, char *notice,
                             size_t nlen);

#endif
