/* In-memory datasets, the loaders that fill them (CSV, IDX, optional .gz),
 * built-in generators and feature scaling.
 *
 * A dataset is two dense row-major float32 matrices: x (n rows of n_features)
 * and y (n rows of n_outputs). Class labels are stored as their index in a
 * single column (n_outputs == 1, n_classes > 0), the form Keras's
 * sparse_categorical_crossentropy takes; tb_dataset_one_hot() widens them for
 * categorical_crossentropy.
 *
 * Nothing here keeps global state: any function may run on any thread, as
 * long as one dataset or scaler is not written by two threads at once. */
#ifndef TRAINBUS_DATA_H
#define TRAINBUS_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "trainbus/error.h"
#include "trainbus/rng.h"

/* The most bytes a data file may hold after decompression: 2 GiB - 1. A
 * dataset's element count must fit in an int anyway (see tb_dataset_new), and
 * IDX stores one byte per element, so no loadable IDX file is larger; for CSV
 * it is far more text than a float matrix of that size needs. It also bounds
 * what a gzip bomb can make a loader allocate. */
#define TB_DATA_MAX_FILE ((size_t)2147483647)

/* The most columns (CSV) or values per item (IDX) a data file may have by
 * default: 2^20, the widest Dense layer a job may declare. A wider row is a
 * mistake (a file whose line ends were lost reads as one endless row), and
 * would need a first layer of millions of weights per unit. */
#define TB_DATA_MAX_COLS (1L << 20)

/* How a loader may read its files. Zeroed (or a NULL pointer where one is
 * taken) is the operator's default: any path the process can open, files up
 * to TB_DATA_MAX_FILE bytes, TB_DATA_MAX_COLS columns, rows as an int allows,
 * and messages that quote the text they could not parse.
 *
 * With `confined`, a file is read only if it is a regular file beneath one of
 * `dirs`: a path with a ".." component, an absolute path elsewhere, or one
 * that leaves the folders through a symbolic link is refused (TB_EINVAL)
 * before anything is read. The file is opened once and the path of what was
 * opened (/proc/self/fd) is checked, so swapping a symbolic link in between
 * does not help. With no dirs, a confined loader reads nothing. `redact`
 * keeps file contents out of messages: they give positions (line, column,
 * byte counts) but never a field's text or a value read from the file. The
 * daemon sets both for jobs submitted over the network (docs/JOB.md).
 *
 * The struct and the strings it points to are only read, and must outlive
 * the calls (and the jobs) that use it. */
typedef struct tb_data_limits_s {
  bool confined;           /* read only beneath dirs[] */
  const char *const *dirs; /* n_dirs absolute folders in canonical form (realpath()'s) */
  int n_dirs;
  size_t max_bytes; /* largest file after decompression; 0: TB_DATA_MAX_FILE */
  long max_rows;    /* most data rows (CSV) or items (IDX); 0: INT_MAX */
  long max_cols;    /* most columns (CSV) or values per item (IDX); 0: TB_DATA_MAX_COLS */
  bool redact;      /* messages never quote file contents */
} tb_data_limits_t;

typedef struct tb_dataset_s {
  int n;          /* number of rows */
  int n_features; /* columns of x */
  int n_outputs;  /* columns of y */
  int n_classes;  /* > 0 when y holds class indices 0..n_classes-1 (or one-hot rows) */
  float *x;       /* n * n_features, owned */
  float *y;       /* n * n_outputs, owned */
} tb_dataset_t;

/* Allocates a zero-filled dataset with n_classes 0; free it with
 * tb_dataset_free(). Needs n >= 0, n_features >= 1, n_outputs >= 0 (0: no
 * labels, e.g. data to predict on), and n * n_features and n * n_outputs each
 * at most INT_MAX, so that callers may index with int arithmetic. NULL on bad
 * sizes or out of memory. */
tb_dataset_t *tb_dataset_new(int n, int n_features, int n_outputs);
/* Frees d and its arrays; NULL is a no-op. */
void tb_dataset_free(tb_dataset_t *d);

/* A new dataset (the caller frees it) holding a copy of rows
 * [start, start + count), with the same widths and n_classes; count may be 0.
 * *out is NULL on failure: TB_EINVAL for a range outside d, TB_ENOMEM. */
int tb_dataset_slice(const tb_dataset_t *d, int start, int count, tb_dataset_t **out);

/* Keras's validation_split: the last `fraction` of the rows (taken before any
 * shuffling) become *val, the first floor(n * (1 - fraction)) rows *train,
 * both new copies in their original order. The arithmetic is Keras 3's, in
 * double: 90 rows at 0.3 give 62 training rows. Both outputs are NULL on
 * failure: TB_EINVAL unless 0 < fraction < 1, TB_ERANGE when either side
 * would be empty (as Keras raises), TB_ENOMEM. */
int tb_dataset_split_tail(const tb_dataset_t *d, double fraction, tb_dataset_t **train,
                          tb_dataset_t **val, tb_err_t *err);

/* Replaces a class-index y (n_outputs == 1, n_classes == k > 0) by one-hot
 * rows (n_outputs becomes k; n_classes stays k). TB_EINVAL for any other y,
 * TB_ERANGE when a label is not an integer in 0..k-1 (the message names the
 * row), TB_ENOMEM; on failure d is unchanged. */
int tb_dataset_one_hot(tb_dataset_t *d, tb_err_t *err);

/* CSV: one row per line, numbers separated by `delimiter`; `skip_rows` lines
 * (a header) are skipped; the label is column `label_col` (negative counts from
 * the end: -1 is the last column). Every other column is a feature, in file
 * order. A path ending in ".gz" is decompressed with zlib. With `classes` set,
 * labels must be integers in 0..2^24 (exact in float32) and n_classes becomes
 * max label + 1; otherwise n_classes is 0 and labels are any numbers.
 *
 * Accepted: "\n" or "\r\n" line ends, a UTF-8 byte order mark, blank lines
 * anywhere (skipped, not counted as rows), spaces and tabs around fields.
 * Every field must be a whole number as strtod() reads it (C locale), finite
 * and within the float32 range; there is no quoting. The first data row sets
 * the column count (at least 2) and every row must match it.
 *
 * opts may be NULL (all zero: ',' separated, no header, label in column 0).
 * *out receives a new dataset (the caller frees it), NULL on failure. Errors,
 * each with a message in err naming the file and, for content, the 1-based
 * line and column (`data.csv:3: column 2: expected a number, got "abc"`; the
 * field is shown as it is, clipped to 40 bytes, with `"` and `\` escaped by a
 * backslash and any byte that is not printable ASCII as \xNN; with
 * opts->limits->redact the `got ...` part is left out):
 * -errno when the file cannot be opened or read; TB_EFORMAT for malformed
 * text, a wrong column count, a bad class label, no data rows, or a corrupt or
 * non-gzip ".gz"; TB_ETRUNCATED for a ".gz" that ends early; TB_ENONFINITE for
 * inf or nan; TB_ERANGE for a label column outside the row, a number beyond
 * float32, or a file over its limits (bytes, rows, columns); TB_EINVAL for bad
 * arguments or a path the limits do not allow; TB_ENOMEM. */
typedef struct tb_csv_opts_s {
  char delimiter;                 /* default ',' when 0; not '\n' or '\r' */
  int skip_rows;                  /* lines skipped before the data, blank or not; >= 0 */
  int label_col;                  /* 0-based; negative counts from the end */
  int classes;                    /* nonzero: labels are class indices */
  const tb_data_limits_t *limits; /* NULL: the operator's default (see above) */
} tb_csv_opts_t;
int tb_csv_load(const char *path, const tb_csv_opts_t *opts, tb_dataset_t **out, tb_err_t *err);

/* IDX (the MNIST / Fashion-MNIST format): an images file (ubyte, any number of
 * dimensions after the first, flattened into features; pixel values 0..255 kept
 * as floats) and a labels file (ubyte, one dimension). Either may be ".gz".
 * Counts must agree.
 *
 * The images magic is 0x0000 0x08 then the dimension count (2 or more;
 * MNIST's is 0x00000803), the labels magic exactly 0x00000801; dimensions are
 * big-endian uint32. The file must hold exactly the bytes its header
 * announces. labels_path may be NULL: the dataset then has no y (n_outputs 0).
 * With labels, n_classes is max label + 1. *out receives a new dataset (the
 * caller frees it), NULL on failure. Errors, each with a message naming the
 * file: -errno when a file cannot be opened or read; TB_EFORMAT for a bad
 * magic, an unsupported element type, zero items, extra bytes after the data,
 * or a corrupt or non-gzip ".gz"; TB_ETRUNCATED when the header or data is
 * cut short (`header says 60000 images of 28x28 but the file holds 1234 bytes
 * of pixel data`); TB_ESHAPE when label and image counts differ; TB_ERANGE
 * when the header's sizes exceed INT_MAX values or the limits; TB_EINVAL;
 * TB_ENOMEM. */
int tb_idx_load(const char *images_path, const char *labels_path, tb_dataset_t **out,
                tb_err_t *err);
/* tb_idx_load() within limits (NULL: the operator's default, as
 * tb_idx_load()). With limits->redact no message shows a value read from the
 * files (magic numbers, counts, dimensions). */
int tb_idx_load_limited(const char *images_path, const char *labels_path,
                        const tb_data_limits_t *limits, tb_dataset_t **out, tb_err_t *err);

/* Generators. Each writes a new dataset to *out (the caller frees it; NULL on
 * failure) with class indices in y (n_outputs 1, n_classes set), and returns
 * 0, TB_EINVAL for bad arguments or TB_ENOMEM. Randomness comes only from a
 * tb_rng_t seeded with `seed`: the same seed gives bitwise the same data. */

/* The seed example: x = [1, 2, 3, 4] (one feature), y = [0, 0, 1, 1],
 * n_classes 2. */
int tb_gen_seed(tb_dataset_t **out);
/* Two interleaved spirals, n_per_class points each, 2 features, 2 classes,
 * gaussian noise of standard deviation `noise`. Rows alternate class 0 and 1.
 * As in CS231n's example: point i has radius r = i / (n_per_class - 1) and
 * angle 4 r radians plus noise (the noise is on the angle); class 1 is class 0
 * turned by pi. n_per_class >= 1, noise finite and >= 0. */
int tb_gen_spirals(int n_per_class, double noise, uint64_t seed, tb_dataset_t **out);
/* Gaussian blobs: n rows, k classes, n_features features; centers uniform in
 * [-10, 10], spread `std` (>= 0) around them. Row i is of class i % k, so the
 * classes are balanced (counts differ by at most one) and a tail split holds
 * all of them. */
int tb_gen_blobs(int n, int k, int n_features, double std, uint64_t seed, tb_dataset_t **out);

/* Feature scaling. Statistics are fitted on the training part only and then
 * applied to train, validation and test alike. */
typedef enum {
  TB_SCALE_NONE = 0, /* identity */
  TB_SCALE_MINMAX,   /* (x - min) / (max - min) per feature; a constant feature keeps a
                        unit scale: it becomes 0 on train, x - min elsewhere */
  TB_SCALE_STANDARD, /* (x - mean) / std per feature (population std), std 0 -> 1 */
  TB_SCALE_DIVIDE    /* x * (1 / divisor), e.g. 255 for pixels */
} tb_scale_t;

typedef struct tb_scaler_s {
  tb_scale_t mode;
  int n_features;
  float *shift; /* x' = (x - shift[j]) * mult[j] */
  float *mult;
} tb_scaler_t;

/* Fits s (a caller-owned struct, overwritten at entry: free a fitted one
 * first) to train's features; `divisor` is read only by TB_SCALE_DIVIDE,
 * where it must be finite and nonzero. MINMAX and STANDARD need train->n >= 1.
 * Statistics are computed in double. Returns 0, TB_EINVAL or TB_ENOMEM; on
 * failure s holds no memory. Release with tb_scaler_free(). */
int tb_scaler_fit(tb_scaler_t *s, tb_scale_t mode, double divisor, const tb_dataset_t *train);
/* Scales d's x in place (y is untouched). TB_ESHAPE, leaving d unchanged,
 * when d has a different feature count from the data s was fitted on;
 * TB_EINVAL for a NULL or unfitted scaler. */
int tb_scaler_apply(const tb_scaler_t *s, tb_dataset_t *d);
/* Frees s's arrays and zeroes it; safe on a zeroed or already freed scaler. */
void tb_scaler_free(tb_scaler_t *s);

#endif
