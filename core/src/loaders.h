/* Private to core: what the loaders share (loaders.c reads files and
 * quotes their text; csv.c, npy.c and the IDX loader build on it), and what
 * they can say about a data file without loading it, for tb_job_check()'s
 * memory estimate (estimate.c). */
#ifndef TB_CORE_LOADERS_H
#define TB_CORE_LOADERS_H

#include "trainbus/data.h"

#include <stdbool.h>
#include <stdint.h>
#include <zlib.h>

/* How much of a file a peek reads: the header of an IDX or npy file, or the
 * first record of a CSV (a longer one is counted up to here). */
#define TB__PEEK_BYTES ((size_t)1 << 20)

/* Room for a quoted field (tb__quote_field): 40 bytes of up to 4 characters
 * each, the quotes, "...", and ", got ". */
#define TB__QUOTE_LEN 200

/* Zeroed limits: the operator's default. */
extern const tb_data_limits_t tb__default_limits;

bool tb__ends_with_gz(const char *path);
/* The most bytes a file may hold after decompression under lim. */
size_t tb__max_bytes(const tb_data_limits_t *lim);
/* zlib's state after a read, as a code and message (0 when all is well). */
int tb__gz_failure(const char *path, gzFile gz, int saved_errno, tb_err_t *err);
/* Reads all of path, as lim allows, into a new NUL-terminated buffer (*out,
 * *out_len bytes before the NUL; the caller frees *out). ".gz" is
 * decompressed. The buffer starts at 64 KiB and doubles. */
int tb__read_all(const char *path, const tb_data_limits_t *lim, char **out, size_t *out_len,
                 tb_err_t *err);
/* Writes `"text"` for a field into out (TB__QUOTE_LEN bytes): clipped to 40
 * bytes, `"` and `\` escaped by a backslash, other bytes outside printable
 * ASCII as \xNN. Returns out. */
const char *tb__quote_field(char *out, const char *s, size_t len);
/* `, got "text"`, or "" when redact is set. Returns out. */
const char *tb__got_field(char *out, bool redact, const char *s, size_t len);
/* Opens path as lim allows, reads its first cap bytes (decompressed for
 * ".gz") into buf and sets info->bytes (a plain file's size, or what a gzip
 * trailer records). */
typedef struct tb__file_info_s tb__file_info_t;
int tb__peek_start(const char *path, const tb_data_limits_t *lim, char *buf, size_t cap,
                   size_t *got, tb__file_info_t *info, tb_err_t *err);

struct tb__file_info_s {
  /* Bytes the loader will read, after decompression: a plain file's size;
   * for a CSV ".gz" the size its gzip trailer records; for an IDX or npy
   * file what its header announces. Loading the file later reads at most
   * this many (tb_job_prepare() caps it), so an estimate made from it holds. */
  uint64_t bytes;
  int64_t rows; /* IDX: items; npy: the first dimension; CSV: 0 (unknown without reading it) */
  int64_t cols; /* CSV: fields of the first record (counted within its first MiB);
                   IDX and npy: values per item */
};

/* Each opens the file as the limits allow (opts->limits for CSV) and reads
 * at most its first MiB: the header of an IDX or npy file, the first record
 * of a CSV. Errors as the loaders', for the part they read (a bad header, a
 * file over the limits, a path the limits refuse, a file that cannot be
 * opened). */
int tb__csv_peek(const char *path, const tb_csv_opts_t *opts, tb__file_info_t *info, tb_err_t *err);
int tb__idx_peek(const char *path, int labels, const tb_data_limits_t *limits,
                 tb__file_info_t *info, tb_err_t *err);
int tb__npy_peek(const char *path, const tb_data_limits_t *limits, tb__file_info_t *info,
                 tb_err_t *err);

/* What loading a CSV of `bytes` bytes and `cols` columns allocates besides
 * the read buffer and the dataset: libcsv's field buffer (a field is at most
 * TB__CSV_FIELD_MAX), the class names being collected, the column map. */
uint64_t tb__csv_scratch(int64_t cols);
/* What loading an npy pair allocates besides the dataset: the read chunk
 * (and, for a ".gz", the growth of its arrays: see estimate.c). */
uint64_t tb__npy_scratch(void);

/* The CSV parser over a buffer already in memory (what tb_csv_load() does
 * after reading the file; the fuzz target calls it directly). `name` names
 * the data in messages. */
int tb__csv_parse(const char *name, const char *buf, size_t len, const tb_csv_opts_t *opts,
                  tb_dataset_t **out, tb_err_t *err);
/* A dataset of n rows that takes ownership of x (n * n_features floats) and
 * y (n * n_outputs, or NULL when n_outputs is 0), as a loader that filled
 * its own arrays makes it. NULL when out of memory (x and y are then still
 * the caller's). */
tb_dataset_t *tb__dataset_adopt(int n, int n_features, int n_outputs, float *x, float *y);

/* The npy loader over arrays in memory (the fuzz target's way in); y may be
 * NULL. */
int tb__npy_parse(const char *x_name, const unsigned char *x, size_t x_len, const char *y_name,
                  const unsigned char *y, size_t y_len, const tb_npy_opts_t *opts,
                  tb_dataset_t **out, tb_err_t *err);

#endif
