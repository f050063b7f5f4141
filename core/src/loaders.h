/* Private to core: what the loaders can say about a data file without
 * loading it, for tb_job_check()'s memory estimate (estimate.c). */
#ifndef TB_CORE_LOADERS_H
#define TB_CORE_LOADERS_H

#include "trainbus/data.h"

#include <stdint.h>

typedef struct tb__file_info_s {
  /* Bytes the loader will read, after decompression: a plain file's size;
   * for a CSV ".gz" the size its gzip trailer records; for an IDX ".gz" what
   * its header announces. Loading the file later reads at most this many
   * (tb_job_prepare() caps it), so an estimate made from it holds. */
  uint64_t bytes;
  int64_t rows; /* IDX: items; CSV: 0 (unknown without reading it all) */
  int64_t cols; /* CSV: columns of the first data row (counted within its first MiB);
                   IDX: values per item */
} tb__file_info_t;

/* Both open the file as the limits allow (opts->limits for CSV) and read at
 * most its first MiB: the header of an IDX file, the first data row of a CSV.
 * Errors as the loaders', for the part they read (a bad IDX header, a file
 * over the limits, a path the limits refuse, a file that cannot be opened). */
int tb__csv_peek(const char *path, const tb_csv_opts_t *opts, tb__file_info_t *info, tb_err_t *err);
int tb__idx_peek(const char *path, int labels, const tb_data_limits_t *limits,
                 tb__file_info_t *info, tb_err_t *err);

#endif
