/* Jobs: a training run described as JSON (schema and examples in
 * docs/JOB.md).
 *
 * tb_job_parse() validates the whole document without touching the disk, so a
 * bad job is refused before anything trains, with a message naming the field's
 * path and the problem (`model.layers[2].units: expected a positive integer,
 * got -3`). tb_job_prepare() then loads the data, fits the scaler on the
 * training part, and builds and compiles the model. */
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
    TB_SRC_IDX
  } source;
  int n_per_class;                 /* spirals */
  double noise;                    /* spirals */
  int n, classes, features;        /* blobs */
  double std;                      /* blobs */
  uint64_t seed;                   /* generators; defaults to the job's seed */
  char path[1024];                 /* csv; resolved against the job file's folder */
  char images[1024], labels[1024]; /* idx */
  tb_csv_opts_t csv;
} tb_data_spec_t;

typedef struct tb_job_s {
  char name[64];
  uint64_t seed;
  int threads; /* OpenBLAS threads; 0 leaves the process setting alone */

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

  /* Checkpoints: "checkpoint_dir" and "checkpoint_every" (batches, 0: epoch
   * ends only); fit.checkpoint_dir points here when set. */
  char checkpoint_dir[1024];
  /* A fingerprint of the job (FNV-1a of the document without "epochs",
   * "verbose" and "checkpoint_dir"): checkpoints of another job are refused. */
  char id[17];

  /* Filled by tb_job_prepare(); owned by the job. */
  tb_model_t *model;
  tb_dataset_t *train, *val, *test;
  tb_scaler_t scaler;
} tb_job_t;

/* Parses and validates a job. `origin` names the document in messages (a
 * file name) and `base_dir` resolves relative data paths (may be NULL). */
int tb_job_parse(const char *text, size_t len, const char *origin, const char *base_dir,
                 tb_job_t **out, tb_err_t *err);
/* Reads and parses a job file. */
int tb_job_load(const char *path, tb_job_t **out, tb_err_t *err);
/* Loads data and builds the compiled model. */
int tb_job_prepare(tb_job_t *job, tb_err_t *err);
/* Adds the job's callbacks to a list, in the job's order. */
int tb_job_add_callbacks(tb_job_t *job, tb_callbacks_t *list);
void tb_job_free(tb_job_t *job);

/* The built-in demo job (spirals, a small MLP, a few seconds), as JSON. */
const char *tb_job_demo_json(void);

#endif
