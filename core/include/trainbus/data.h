/* In-memory datasets, the loaders that fill them (CSV, IDX, optional .gz),
 * built-in generators and feature scaling.
 *
 * A dataset is two dense row-major float32 matrices: x (n rows of n_features)
 * and y (n rows of n_outputs). Class labels are stored as their index in a
 * single column (n_outputs == 1, n_classes > 0), the form Keras's
 * sparse_categorical_crossentropy takes; tb_dataset_one_hot() widens them for
 * categorical_crossentropy. */
#ifndef TRAINBUS_DATA_H
#define TRAINBUS_DATA_H

#include <stdint.h>
#include "trainbus/error.h"
#include "trainbus/rng.h"

typedef struct tb_dataset_s {
  int n;          /* number of rows */
  int n_features; /* columns of x */
  int n_outputs;  /* columns of y */
  int n_classes;  /* > 0 when y holds class indices 0..n_classes-1 (or one-hot rows) */
  float *x;       /* n * n_features, owned */
  float *y;       /* n * n_outputs, owned */
} tb_dataset_t;

/* Allocates a zero-filled dataset. NULL on bad sizes or out of memory. */
tb_dataset_t *tb_dataset_new(int n, int n_features, int n_outputs);
void tb_dataset_free(tb_dataset_t *d);

/* A copy of rows [start, start + count). */
int tb_dataset_slice(const tb_dataset_t *d, int start, int count, tb_dataset_t **out);

/* Keras's validation_split: the last `fraction` of the rows (taken before any
 * shuffling) become *val, the first floor(n * (1 - fraction)) rows *train.
 * fraction must be in (0, 1) and leave at least one row on each side. */
int tb_dataset_split_tail(const tb_dataset_t *d, double fraction, tb_dataset_t **train,
                          tb_dataset_t **val, tb_err_t *err);

/* Replaces a class-index y (n_outputs == 1, n_classes == k) by one-hot rows. */
int tb_dataset_one_hot(tb_dataset_t *d, tb_err_t *err);

/* CSV: one row per line, numbers separated by `delimiter`; `skip_rows` lines
 * (a header) are skipped; the label is column `label_col` (negative counts from
 * the end: -1 is the last column). Every other column is a feature. A path
 * ending in ".gz" is decompressed with zlib. With `classes` set, labels must be
 * non-negative integers and n_classes becomes max label + 1. Errors name the
 * file, line and column. */
typedef struct tb_csv_opts_s {
  char delimiter; /* default ',' when 0 */
  int skip_rows;
  int label_col;
  int classes; /* nonzero: labels are class indices */
} tb_csv_opts_t;
int tb_csv_load(const char *path, const tb_csv_opts_t *opts, tb_dataset_t **out, tb_err_t *err);

/* IDX (the MNIST / Fashion-MNIST format): an images file (ubyte, any number of
 * dimensions after the first, flattened into features; pixel values 0..255 kept
 * as floats) and a labels file (ubyte, one dimension). Either may be ".gz".
 * Counts must agree. */
int tb_idx_load(const char *images_path, const char *labels_path, tb_dataset_t **out,
                tb_err_t *err);

/* The seed example: x = [1, 2, 3, 4] (one feature), y = [0, 0, 1, 1]. */
int tb_gen_seed(tb_dataset_t **out);
/* Two interleaved spirals, n_per_class points each, 2 features, 2 classes,
 * gaussian noise of standard deviation `noise`. Rows alternate class 0 and 1. */
int tb_gen_spirals(int n_per_class, double noise, uint64_t seed, tb_dataset_t **out);
/* Gaussian blobs: n rows, k classes, n_features features; centers uniform in
 * [-10, 10], spread `std`. */
int tb_gen_blobs(int n, int k, int n_features, double std, uint64_t seed, tb_dataset_t **out);

/* Feature scaling. Statistics are fitted on the training part only and then
 * applied to train, validation and test alike. */
typedef enum {
  TB_SCALE_NONE = 0,
  TB_SCALE_MINMAX,   /* (x - min) / (max - min) per feature, constant features -> 0 */
  TB_SCALE_STANDARD, /* (x - mean) / std per feature (population std), std 0 -> 1 */
  TB_SCALE_DIVIDE    /* x / divisor, e.g. 255 for pixels */
} tb_scale_t;

typedef struct tb_scaler_s {
  tb_scale_t mode;
  int n_features;
  float *shift; /* x' = (x - shift[j]) * mult[j] */
  float *mult;
} tb_scaler_t;

int tb_scaler_fit(tb_scaler_t *s, tb_scale_t mode, double divisor, const tb_dataset_t *train);
void tb_scaler_apply(const tb_scaler_t *s, tb_dataset_t *d);
void tb_scaler_free(tb_scaler_t *s);

#endif
