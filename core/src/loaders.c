/* Dataset loaders: CSV and IDX, either optionally gzip-compressed.
 *
 * Both read the whole file into one buffer first (through stdio, or through
 * zlib's gzread when the path ends in ".gz") and then parse the buffer. The
 * files we expect are tens of megabytes, and a parser over a complete,
 * NUL-terminated buffer can check every bound against one length instead of
 * handling short reads in the middle of a field. The price is that a file
 * must fit in memory twice (text plus floats); the limits' max_bytes
 * (TB_DATA_MAX_FILE by default) caps it, before reading where the size is
 * known and while reading where it is not (gzip).
 *
 * Files are opened through tb__data_open() (confine.c), which applies the
 * limits' confinement, and read through that one descriptor.
 *
 * Every rejection names the file and where in it the problem is: line and
 * column (both 1-based) for CSV, and for IDX the header fields involved. Text
 * taken from the file is quoted through quote_field(), which clips it and
 * escapes what is not printable, so a binary file fed to the CSV loader
 * yields a readable message rather than terminal garbage; with the limits'
 * redact flag nothing read from the file is shown at all. */
#include "trainbus/data.h"

#include "confine.h"
#include "loaders.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Largest class index a float32 label holds exactly (2^24); above it
 * consecutive integers collapse into one another. */
#define TB_DATA_MAX_LABEL 16777216

/* The first read allocation; doubled as needed. */
#define READ_CHUNK ((size_t)1 << 16)

bool tb__ends_with_gz(const char *path) {
  size_t n = strlen(path);
  return n >= 3 && strcmp(path + n - 3, ".gz") == 0;
}

const tb_data_limits_t tb__default_limits;

size_t tb__max_bytes(const tb_data_limits_t *lim) {
  return lim->max_bytes > 0 && lim->max_bytes < TB_DATA_MAX_FILE ? lim->max_bytes
                                                                 : TB_DATA_MAX_FILE;
}

/* Grows *buf so that at least one more byte past *len fits, keeping one byte
 * spare for the terminating NUL; never beyond max + 2 bytes, so that reading
 * max + 1 bytes is how an over-long file is noticed. */
static int grow(char **buf, size_t *cap, size_t len, size_t max) {
  size_t ncap;
  char *nbuf;
  if (len + 1 < *cap)
    return 0;
  if (*cap >= max + 2)
    return TB_ERANGE;
  ncap = *cap == 0 ? READ_CHUNK : *cap * 2;
  if (ncap > max + 2)
    ncap = max + 2;
  nbuf = realloc(*buf, ncap);
  if (nbuf == NULL)
    return TB_ENOMEM;
  *buf = nbuf;
  *cap = ncap;
  return 0;
}

static int read_plain(const char *path, int fd, size_t max, char **buf, size_t *cap, size_t *len,
                      tb_err_t *err) {
  FILE *f;
  int r = 0;
  errno = 0;
  f = fdopen(fd, "rb");
  if (f == NULL) {
    int e = errno != 0 ? errno : EIO;
    close(fd);
    return tb_errf(err, -e, "%s: cannot open: %s", path, strerror(e));
  }
  for (;;) {
    size_t want, got;
    r = grow(buf, cap, *len, max);
    if (r != 0)
      goto fail;
    want = *cap - 1 - *len;
    errno = 0;
    got = fread(*buf + *len, 1, want, f);
    *len += got;
    if (got < want) {
      if (ferror(f)) {
        int e = errno != 0 ? errno : EIO;
        fclose(f);
        return tb_errf(err, -e, "%s: cannot read: %s", path, strerror(e));
      }
      break;
    }
  }
  fclose(f);
  return 0;

fail:
  fclose(f);
  return r;
}

/* zlib reports a truncated stream (Z_BUF_ERROR) not through gzread's return
 * value but only through gzerror(), so the state is checked after the last
 * read as well as after a failed one. */
int tb__gz_failure(const char *path, gzFile gz, int saved_errno, tb_err_t *err) {
  int zerr = Z_OK;
  const char *msg = gzerror(gz, &zerr);
  switch (zerr) {
  case Z_OK:
  case Z_STREAM_END:
    return 0;
  case Z_ERRNO: {
    int e = saved_errno != 0 ? saved_errno : EIO;
    return tb_errf(err, -e, "%s: cannot read: %s", path, strerror(e));
  }
  case Z_MEM_ERROR:
    return tb_errf(err, TB_ENOMEM, "%s: out of memory while decompressing", path);
  case Z_BUF_ERROR:
    return tb_errf(err, TB_ETRUNCATED, "%s: truncated gzip data (%s)", path, msg);
  default:
    return tb_errf(err, TB_EFORMAT, "%s: corrupt gzip data (%s)", path, msg);
  }
}

static int read_gz(const char *path, int fd, size_t max, char **buf, size_t *cap, size_t *len,
                   tb_err_t *err) {
  gzFile gz;
  int r = 0;
  errno = 0;
  gz = gzdopen(fd, "rb");
  if (gz == NULL) {
    int e = errno;
    close(fd);
    /* gzdopen leaves errno at 0 when only its own allocation failed. */
    if (e == 0)
      return tb_errf(err, TB_ENOMEM, "%s: cannot open: out of memory", path);
    return tb_errf(err, -e, "%s: cannot open: %s", path, strerror(e));
  }
  gzbuffer(gz, 1 << 17);
  for (;;) {
    size_t want;
    int got;
    r = grow(buf, cap, *len, max);
    if (r != 0)
      goto fail;
    want = *cap - 1 - *len;
    if (want > (1u << 30))
      want = 1u << 30;
    errno = 0;
    got = gzread(gz, *buf + *len, (unsigned)want);
    if (got < 0) {
      r = tb__gz_failure(path, gz, errno, err);
      if (r == 0)
        r = tb_errf(err, TB_EIO, "%s: cannot read", path);
      goto fail;
    }
    if (got == 0)
      break;
    *len += (size_t)got;
  }
  r = tb__gz_failure(path, gz, errno, err);
  if (r != 0)
    goto fail;
  /* zlib passes a file without a gzip header through unchanged; a ".gz" that
   * is not gzip is a mistake worth reporting (a plain file renamed, or the
   * wrong file). An empty file counts as an empty stream. */
  if (*len > 0 && gzdirect(gz)) {
    r = tb_errf(err, TB_EFORMAT, "%s: not in gzip format (the name ends in .gz)", path);
    goto fail;
  }
  gzclose(gz);
  return 0;

fail:
  gzclose(gz);
  return r;
}

/* Reads all of path, as lim allows, into a new NUL-terminated buffer (*out,
 * *out_len bytes before the NUL). The caller frees *out. */
int tb__read_all(const char *path, const tb_data_limits_t *lim, char **out, size_t *out_len,
                 tb_err_t *err) {
  char *buf = NULL;
  size_t cap = 0, len = 0, max = tb__max_bytes(lim);
  uint64_t size;
  int r, fd;
  *out = NULL;
  *out_len = 0;
  if ((r = tb__data_open(path, path, lim, &fd, &size, err)) != 0)
    return r;
  if (!tb__ends_with_gz(path) && size > max) {
    close(fd);
    return tb_errf(err, TB_ERANGE, "%s: %llu bytes, more than the %zu a data file may have here",
                   path, (unsigned long long)size, max);
  }
  if (tb__ends_with_gz(path))
    r = read_gz(path, fd, max, &buf, &cap, &len, err);
  else
    r = read_plain(path, fd, max, &buf, &cap, &len, err);
  if (r == TB_ERANGE)
    tb_errf(err, r, "%s: larger than the %zu bytes a data file may have here%s", path, max,
            tb__ends_with_gz(path) ? " (after decompression)" : "");
  else if (r == TB_ENOMEM)
    tb_errf(err, r, "%s: out of memory while reading", path);
  if (r != 0)
    goto fail;
  if (buf == NULL) {
    r = grow(&buf, &cap, 0, max);
    if (r != 0) {
      tb_errf(err, r, "%s: out of memory while reading", path);
      goto fail;
    }
  }
  buf[len] = '\0';
  *out = buf;
  *out_len = len;
  return 0;

fail:
  free(buf);
  return r;
}

/* Writes `"text"` for a field into out (TB__QUOTE_LEN bytes): the field as it
 * is, clipped to 40 bytes, with `"` and `\` escaped by a backslash and every
 * byte that is not printable ASCII written \xNN, so a message stays one
 * readable line of ASCII whatever the file holds. */
const char *tb__quote_field(char *out, const char *s, size_t len) {
  enum { SHOW = 40 };
  static const char hex[] = "0123456789abcdef";
  size_t o = 0, n = len > SHOW ? SHOW : len;
  out[o++] = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c >= 0x20 && c < 0x7f) {
      out[o++] = (char)c;
    } else {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  if (n < len) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o++] = '"';
  out[o] = '\0';
  return out;
}

/* `, got "text"` for a message, or nothing when the file's contents must not
 * be shown. */
const char *tb__got_field(char *out, bool redact, const char *s, size_t len) {
  char q[TB__QUOTE_LEN];
  if (redact)
    out[0] = '\0';
  else
    snprintf(out, TB__QUOTE_LEN, ", got %s", tb__quote_field(q, s, len));
  return out;
}

static uint32_t be32(const unsigned char *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* An IDX header, checked against the file's length. */
typedef struct idx_s {
  uint32_t count;    /* the first dimension: images or labels */
  int item;          /* elements per item: the product of the other dimensions */
  char shape[96];    /* the other dimensions, "28x28", for messages */
  size_t header_len; /* 4 + 4 * dimensions */
  size_t data_len;   /* bytes after the header */
  const unsigned char *data;
} idx_t;

/* Parses the header of an IDX file of unsigned bytes from the first len
 * bytes of the file (the whole file, or only its start when peeking).
 * Images have two or more dimensions, labels exactly one. */
static int idx_parse_header(const char *path, const unsigned char *buf, size_t len, int labels,
                            const tb_data_limits_t *lim, idx_t *h, tb_err_t *err) {
  const char *what = labels ? "labels" : "images";
  uint32_t magic, want_magic = labels ? 0x801 : 0x803;
  unsigned nd;
  uint64_t item = 1;
  size_t o = 0;
  int empty = 0;
  bool rd = lim->redact;
  long max_rows = lim->max_rows > 0 && lim->max_rows < INT_MAX ? lim->max_rows : INT_MAX;
  long max_cols = lim->max_cols > 0 && lim->max_cols < INT_MAX ? lim->max_cols : TB_DATA_MAX_COLS;
  memset(h, 0, sizeof(*h));
  if (len < 4)
    return tb_errf(err, TB_ETRUNCATED, "%s: truncated: %zu bytes, an IDX header needs at least 4",
                   path, len);
  magic = be32(buf);
  nd = buf[3];
  if (buf[0] != 0 || buf[1] != 0 || (labels ? nd != 1 : nd < 2)) {
    if (rd)
      return tb_errf(err, TB_EFORMAT,
                     "%s: bad magic number: expected an IDX %s file (0x%08X, unsigned bytes)", path,
                     what, (unsigned)want_magic);
    return tb_errf(err, TB_EFORMAT,
                   "%s: bad magic 0x%08X: expected an IDX %s file (0x%08X, unsigned bytes)", path,
                   (unsigned)magic, what, (unsigned)want_magic);
  }
  if (buf[2] != 0x08) {
    if (rd)
      return tb_errf(err, TB_EFORMAT,
                     "%s: bad magic number: its element type is not supported (only 0x08, "
                     "unsigned byte)",
                     path);
    return tb_errf(err, TB_EFORMAT,
                   "%s: bad magic 0x%08X: element type 0x%02X is not supported (only 0x08, "
                   "unsigned byte)",
                   path, (unsigned)magic, buf[2]);
  }
  h->header_len = 4 + 4 * (size_t)nd;
  if (len < h->header_len) {
    if (rd)
      return tb_errf(err, TB_ETRUNCATED,
                     "%s: truncated: the file (%zu bytes) ends inside its header", path, len);
    return tb_errf(err, TB_ETRUNCATED,
                   "%s: truncated: the header has %u dimensions (%zu bytes) but the file holds "
                   "%zu bytes",
                   path, nd, h->header_len, len);
  }
  h->count = be32(buf + 4);
  for (unsigned k = 1; k < nd; k++) {
    uint32_t dim = be32(buf + 4 + 4 * k);
    int w = snprintf(h->shape + o, sizeof(h->shape) - o, "%s%u", k > 1 ? "x" : "", (unsigned)dim);
    o = w > 0 && o + (size_t)w < sizeof(h->shape) ? o + (size_t)w : sizeof(h->shape) - 1;
    /* item stays <= INT_MAX before each step, so item * dim < 2^63; past
     * that it is only reported, and a zero anywhere still means empty. */
    if (item <= INT_MAX)
      item *= dim;
    empty |= dim == 0;
  }
  if (h->count == 0)
    return tb_errf(err, TB_EFORMAT, "%s: header says 0 %s: no data", path, what);
  if (empty)
    return tb_errf(err, TB_EFORMAT, "%s: header says each image is %s: no pixels", path,
                   rd ? "empty" : h->shape);
  if (item > INT_MAX || h->count > INT_MAX || (uint64_t)h->count * item > INT_MAX) {
    if (rd)
      return tb_errf(err, TB_ERANGE,
                     "%s: header announces more than the %d values a dataset may hold", path,
                     INT_MAX);
    return tb_errf(err, TB_ERANGE,
                   "%s: header says %u %s of %s: more than the %d values a dataset may hold", path,
                   (unsigned)h->count, what, h->shape, INT_MAX);
  }
  if ((long)h->count > max_rows) {
    if (rd)
      return tb_errf(err, TB_ERANGE, "%s: more than the %ld %s a data file may have here", path,
                     max_rows, what);
    return tb_errf(err, TB_ERANGE,
                   "%s: header says %u %s, more than the %ld a data file may have "
                   "here",
                   path, (unsigned)h->count, what, max_rows);
  }
  if ((long)item > max_cols) {
    if (rd)
      return tb_errf(err, TB_ERANGE,
                     "%s: more than the %ld values per item a data file may have "
                     "here",
                     path, max_cols);
    return tb_errf(err, TB_ERANGE,
                   "%s: header says each item is %s (%llu values), more than the %ld a data file "
                   "may have here",
                   path, h->shape, (unsigned long long)item, max_cols);
  }
  h->item = (int)item;
  return 0;
}

/* The whole file: its header, and exactly the data the header announces. */
static int idx_header(const char *path, const unsigned char *buf, size_t len, int labels,
                      const tb_data_limits_t *lim, idx_t *h, tb_err_t *err) {
  int r = idx_parse_header(path, buf, len, labels, lim, h, err);
  if (r != 0)
    return r;
  uint64_t want = (uint64_t)h->count * (uint64_t)h->item;
  h->data = buf + h->header_len;
  h->data_len = len - h->header_len;
  if (h->data_len != want) {
    int code = h->data_len < want ? TB_ETRUNCATED : TB_EFORMAT;
    const char *problem = code == TB_ETRUNCATED ? "truncated" : "trailing bytes";
    if (lim->redact)
      return tb_errf(err, code,
                     "%s: %s: the file holds %zu bytes of data, not what its header announces",
                     path, problem, h->data_len);
    if (labels)
      return tb_errf(err, code,
                     "%s: %s: header says %u labels but the file holds %zu bytes of "
                     "label data",
                     path, problem, (unsigned)h->count, h->data_len);
    return tb_errf(err, code,
                   "%s: %s: header says %u images of %s but the file holds %zu bytes of pixel "
                   "data",
                   path, problem, (unsigned)h->count, h->shape, h->data_len);
  }
  return 0;
}

int tb_idx_load(const char *images_path, const char *labels_path, tb_dataset_t **out,
                tb_err_t *err) {
  return tb_idx_load_limited(images_path, labels_path, NULL, out, err);
}

int tb_idx_load_limited(const char *images_path, const char *labels_path,
                        const tb_data_limits_t *limits, tb_dataset_t **out, tb_err_t *err) {
  const tb_data_limits_t *lim = limits != NULL ? limits : &tb__default_limits;
  tb_dataset_t *d = NULL;
  char *buf = NULL;
  size_t len;
  idx_t h;
  int r, max_label = 0;
  if (out != NULL)
    *out = NULL;
  if (err != NULL)
    err->msg[0] = '\0';
  if (images_path == NULL || out == NULL)
    return tb_errf(err, TB_EINVAL, "idx: an images path and an output are required");

  r = tb__read_all(images_path, lim, &buf, &len, err);
  if (r != 0)
    goto fail;
  r = idx_header(images_path, (const unsigned char *)buf, len, 0, lim, &h, err);
  if (r != 0)
    goto fail;
  d = tb_dataset_new((int)h.count, h.item, labels_path != NULL ? 1 : 0);
  if (d == NULL) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory for the images", images_path);
    goto fail;
  }
  for (size_t i = 0; i < h.data_len; i++)
    d->x[i] = (float)h.data[i];
  free(buf);
  buf = NULL;

  if (labels_path != NULL) {
    uint32_t n_images = h.count;
    r = tb__read_all(labels_path, lim, &buf, &len, err);
    if (r != 0)
      goto fail;
    r = idx_header(labels_path, (const unsigned char *)buf, len, 1, lim, &h, err);
    if (r != 0)
      goto fail;
    if (h.count != n_images) {
      if (lim->redact)
        r = tb_errf(err, TB_ESHAPE, "%s holds a different number of labels than %s has images",
                    labels_path, images_path);
      else
        r = tb_errf(err, TB_ESHAPE, "%s holds %u labels but %s holds %u images", labels_path,
                    (unsigned)h.count, images_path, (unsigned)n_images);
      goto fail;
    }
    for (size_t i = 0; i < h.data_len; i++) {
      d->y[i] = (float)h.data[i];
      if (h.data[i] > max_label)
        max_label = h.data[i];
    }
    d->n_classes = max_label + 1;
  }
  free(buf);
  *out = d;
  return 0;

fail:
  free(buf);
  tb_dataset_free(d);
  return r;
}

/* ---- peeking: what a file will need, without loading it ----------------- */

/* How much of a file a peek reads: the header of an IDX file, or the first
 * data row of a CSV (a row longer than this is counted up to here). */
#define PEEK_BYTES TB__PEEK_BYTES

/* Opens path as lim allows, reads its first bytes (decompressed for ".gz")
 * into buf, and sets info->bytes to its size: the file's own for a plain
 * file, the size its gzip trailer records (ISIZE, RFC 1952) for ".gz". */
int tb__peek_start(const char *path, const tb_data_limits_t *lim, char *buf, size_t cap,
                   size_t *got, tb__file_info_t *info, tb_err_t *err) {
  uint64_t size;
  size_t max = tb__max_bytes(lim);
  int fd, r;
  *got = 0;
  if ((r = tb__data_open(path, path, lim, &fd, &size, err)) != 0)
    return r;
  if (!tb__ends_with_gz(path)) {
    info->bytes = size;
    if (size > max) {
      close(fd);
      return tb_errf(err, TB_ERANGE, "%s: %llu bytes, more than the %zu a data file may have here",
                     path, (unsigned long long)size, max);
    }
    while (*got < cap) {
      ssize_t n = pread(fd, buf + *got, cap - *got, (off_t)*got);
      if (n < 0) {
        int e = errno;
        close(fd);
        return tb_errf(err, -e, "%s: cannot read: %s", path, strerror(e));
      }
      if (n == 0)
        break;
      *got += (size_t)n;
    }
    close(fd);
    return 0;
  }
  unsigned char t[4];
  info->bytes = 0;
  if (size >= 18 && pread(fd, t, 4, (off_t)(size - 4)) == 4)
    info->bytes =
        (uint64_t)t[0] | (uint64_t)t[1] << 8 | (uint64_t)t[2] << 16 | (uint64_t)t[3] << 24;
  gzFile gz = gzdopen(fd, "rb");
  if (gz == NULL) {
    close(fd);
    return tb_errf(err, TB_ENOMEM, "%s: cannot open: out of memory", path);
  }
  int n = gzread(gz, buf, (unsigned)cap);
  r = n < 0 ? tb__gz_failure(path, gz, errno, err) : 0;
  if (n < 0 && r == 0)
    r = tb_errf(err, TB_EIO, "%s: cannot read", path);
  if (r == 0 && n > 0 && gzdirect(gz))
    r = tb_errf(err, TB_EFORMAT, "%s: not in gzip format (the name ends in .gz)", path);
  gzclose(gz);
  if (r != 0)
    return r;
  *got = (size_t)n;
  if (info->bytes > max)
    return tb_errf(err, TB_ERANGE,
                   "%s: %llu bytes after decompression (as its gzip trailer records), more than "
                   "the %zu a data file may have here",
                   path, (unsigned long long)info->bytes, max);
  return 0;
}

int tb__idx_peek(const char *path, int labels, const tb_data_limits_t *limits,
                 tb__file_info_t *info, tb_err_t *err) {
  const tb_data_limits_t *lim = limits != NULL ? limits : &tb__default_limits;
  unsigned char buf[4 + 4 * 256];
  size_t got;
  idx_t h;
  memset(info, 0, sizeof(*info));
  int r = tb__peek_start(path, lim, (char *)buf, sizeof(buf), &got, info, err);
  if (r != 0)
    return r;
  if ((r = idx_parse_header(path, buf, got, labels, lim, &h, err)) != 0)
    return r;
  info->rows = h.count;
  info->cols = h.item;
  if (tb__ends_with_gz(path))
    info->bytes = h.header_len + (uint64_t)h.count * (uint64_t)h.item;
  return 0;
}
