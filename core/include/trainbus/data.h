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

/* The most distinct string class labels a file may have: 4096. More is
 * almost always a wrong label column (an id or a free-text column), and the
 * names travel to every client in the run's status. */
#define TB_DATA_MAX_CLASS_NAMES 4096
/* The longest class name, in bytes. */
#define TB_DATA_MAX_CLASS_NAME 255

/* Class names: the string labels of a data file ("setosa", "versicolor",
 * "virginica"), distinct and sorted in ascending byte order (strcmp), as
 * numpy's np.unique and scikit-learn's LabelEncoder sort them; a label's
 * class index is its position. Names are NUL-terminated byte strings without
 * NUL bytes, at most TB_DATA_MAX_CLASS_NAME bytes, and need not be UTF-8 (the
 * protocol's encoder shows an invalid byte as U+FFFD). Immutable once made;
 * one allocation, released with tb_classes_free(). */
typedef struct tb_classes_s {
  int n;              /* 1..TB_DATA_MAX_CLASS_NAMES */
  const char **names; /* n names, sorted and distinct */
} tb_classes_t;

/* A sorted copy of n names (each lens[i] bytes; lens may be NULL for C
 * strings). *out is NULL on failure: TB_EINVAL for n outside
 * 1..TB_DATA_MAX_CLASS_NAMES, a name with a NUL byte or longer than
 * TB_DATA_MAX_CLASS_NAME, or a name given twice; TB_ENOMEM. */
int tb_classes_new(const char *const *names, const size_t *lens, int n, tb_classes_t **out);
/* A copy of c (NULL gives NULL and 0). */
int tb_classes_copy(const tb_classes_t *c, tb_classes_t **out);
/* NULL is a no-op. */
void tb_classes_free(tb_classes_t *c);
/* The index of the name s (len bytes), or -1 when c has no such class. */
int tb_classes_find(const tb_classes_t *c, const char *s, size_t len);
/* Whether a and b hold the same names (two NULLs are equal). */
bool tb_classes_equal(const tb_classes_t *a, const tb_classes_t *b);
/* Writes `0 "setosa", 1 "versicolor", ...` into buf (len bytes, always
 * NUL-terminated), each name escaped as loader messages quote fields (`"`
 * and `\` by a backslash, other bytes outside printable ASCII as \xNN),
 * clipped with "..." when buf is too short. Returns buf. */
const char *tb_classes_format(const tb_classes_t *c, char *buf, size_t len);

typedef struct tb_dataset_s {
  int n;          /* number of rows */
  int n_features; /* columns of x */
  int n_outputs;  /* columns of y */
  int n_classes;  /* > 0 when y holds class indices 0..n_classes-1 (or one-hot rows) */
  float *x;       /* n * n_features, owned */
  float *y;       /* n * n_outputs, owned */
  /* The names of the classes when the file's labels were strings (y holds
   * their indices, n_classes == classes->n), owned; NULL for numeric labels.
   * Slices and splits do not copy it. */
  tb_classes_t *classes;
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

/* CSV, as RFC 4180 has it, parsed by libcsv: records of fields separated
 * by `delimiter`; a field in double quotes may hold the delimiter, line
 * breaks and quotes (doubled: "say ""hi"""). `skip_rows` lines are skipped
 * first, blank or not. Then the first record may be a header of column names:
 * with header TB_CSV_HEADER_AUTO it is one when some field of it is text
 * (not a number, not a missing value) where the next record has a number in
 * that column, or when a column is chosen by name. The label is column
 * `label_col` (0-based; negative counts from the end: -1 is the last), or the
 * column named `label_name`; the features are the columns `features` names,
 * in that order, or, when n_features is 0, every other column in file order.
 * Columns that are neither are not read at all (an id or a text column may
 * stay in the file). A path ending in ".gz" is decompressed with zlib.
 *
 * Accepted: "\n", "\r\n" or "\r" record ends, a UTF-8 byte order mark,
 * blank lines anywhere (skipped, not counted as rows), spaces and tabs
 * around unquoted fields and around a quoted field's quotes. A feature (and a
 * label without `classes`) is a number as strtod() reads it (C locale),
 * finite and within the float32 range, quoted or not; a field of at most 1 MiB.
 * Every record has as many fields as the first data record (the header too).
 *
 * Missing values are empty fields (quoted or not) and the markers "NA",
 * "N/A", "NaN", "nan" and "?": an error naming line and column unless
 * `missing` says to fill them with `fill` or to drop their rows. A missing
 * label is always an error (TB_CSV_MISSING_DROP drops its row too).
 *
 * Labels with `classes` set: when every label is a number, each must be an
 * integer in 0..2^24 - 1 (exact in float32, as is their count) and n_classes becomes the largest
 * plus one. When some label is not a number, the labels are class names:
 * their distinct values, sorted (tb_classes_t), become d->classes, and each
 * row's label its index there. With `class_names` given (the training set's
 * names, for a validation or test file), every label is looked up there
 * instead, as a string, and one that is not there is an error naming its
 * line. Without `classes`, labels are any numbers and n_classes is 0.
 *
 * opts may be NULL (all zero: ',' separated, the header detected, label in
 * column 0, every other column a feature, missing values refused). *out
 * receives a new dataset (the caller frees it), NULL on failure. Errors, each
 * with a message in err naming the file and, for content, the 1-based line
 * where the record starts and the 1-based column, with its name when the
 * file has a header (`data.csv:3: column 2 ("width"): expected a number, got
 * "abc"`). The field is shown as it is, clipped to 40 bytes, with `"` and
 * `\` escaped by a backslash and any byte that is not printable ASCII as
 * \xNN; with opts->limits->redact neither the field nor a column's name nor
 * a class name is shown. Codes: -errno when the file cannot be opened or
 * read; TB_EFORMAT for malformed quoting (a quote inside an unquoted field,
 * text after a closing quote, a quoted field never closed), a bad number, a
 * missing value, a wrong column count, a bad class label or one not among
 * class_names, no data rows, or a corrupt or non-gzip ".gz"; TB_ETRUNCATED
 * for a ".gz" that ends early; TB_ENONFINITE for inf; TB_ERANGE for a
 * column outside the row, a number beyond float32, more than
 * TB_DATA_MAX_CLASS_NAMES class names, a field over 1 MiB, or a file over
 * its limits (bytes, rows, columns); TB_EINVAL for bad arguments, a column
 * name the header lacks (or names twice), a name without a header, a feature
 * that is also the label or listed twice, or a path the limits do not allow;
 * TB_ENOMEM. */
enum { TB_CSV_HEADER_AUTO = 0, TB_CSV_HEADER_YES, TB_CSV_HEADER_NO };
enum { TB_CSV_MISSING_ERROR = 0, TB_CSV_MISSING_FILL, TB_CSV_MISSING_DROP };

/* A column, by its 0-based index (negative counts from the end) or, when
 * name is not NULL, by its name in the header. */
typedef struct tb_csv_col_s {
  int index;
  const char *name;
} tb_csv_col_t;

typedef struct tb_csv_opts_s {
  char delimiter;                  /* default ',' when 0; not '\n', '\r' or '"' */
  int skip_rows;                   /* lines skipped before anything else; >= 0 */
  int header;                      /* TB_CSV_HEADER_AUTO (0), _YES or _NO */
  int label_col;                   /* 0-based; negative counts from the end */
  const char *label_name;          /* instead of label_col: the label column's name */
  const tb_csv_col_t *features;    /* n_features feature columns, in order */
  int n_features;                  /* 0: every column but the label */
  int classes;                     /* nonzero: labels are classes (indices or names) */
  const tb_classes_t *class_names; /* with classes: look labels up here (validation, test) */
  int missing;                     /* TB_CSV_MISSING_ERROR (0), _FILL or _DROP */
  double fill;                     /* the value of a missing feature with _FILL */
  const tb_data_limits_t *limits;  /* NULL: the operator's default (see above) */
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

/* NumPy's .npy files, as np.save writes them (format versions 1, 2 and 3):
 * x_path the features, y_path (may be NULL: no y, n_outputs 0) the labels or
 * targets. The first dimension of each is the rows, and the two must agree;
 * the other dimensions are flattened in C order into a row's values (a 1-D
 * array is one value per row; images of shape (n, 28, 28) become 784
 * features). Element types: float32, float64, signed and unsigned integers
 * of 1, 2, 4 and 8 bytes, and bool, little- or big-endian; every value is
 * converted to float32 (integers beyond 2^24 lose their low bits; a float64
 * outside the float32 range is an error, not an infinity). Either file may
 * be ".gz". With opts->classes a y of one value per row holds class indices,
 * integers in 0..2^24 - 1, and n_classes becomes the largest plus one; a wider y
 * (one-hot rows) gets n_classes equal to its width. Without it y holds any
 * finite numbers and n_classes is 0.
 *
 * Refused with a message naming the file (and, for a value, its index as
 * numpy writes it, [row, column]): TB_EFORMAT for a file that is not npy, a
 * header that is not the dict np.save writes, Fortran order
 * (np.asfortranarray; save np.ascontiguousarray(a) instead), an element type
 * not listed above (object arrays, strings, float16, complex, structured
 * records), a 0-d array or one with no rows or no values per row, a class
 * label that is not an integer in range, bytes after the data, or a corrupt
 * or non-gzip ".gz"; TB_ETRUNCATED when the file ends before the data its
 * header announces; TB_ENONFINITE for NaN or infinity; TB_ERANGE for a value
 * beyond float32, more than INT_MAX values, or more than the limits allow
 * (bytes, rows, values per row); TB_ESHAPE when the row counts differ;
 * TB_EINVAL for bad arguments or a path the limits refuse; -errno when a file
 * cannot be opened or read; TB_ENOMEM. With opts->limits->redact no message
 * shows a value read from the files (shapes, element types, values). */
typedef struct tb_npy_opts_s {
  int classes;                    /* nonzero: y holds class indices (or one-hot rows) */
  const tb_data_limits_t *limits; /* NULL: the operator's default */
} tb_npy_opts_t;
int tb_npy_load(const char *x_path, const char *y_path, const tb_npy_opts_t *opts,
                tb_dataset_t **out, tb_err_t *err);

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
