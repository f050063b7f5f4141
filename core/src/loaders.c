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

static int ends_with_gz(const char *path) {
  size_t n = strlen(path);
  return n >= 3 && strcmp(path + n - 3, ".gz") == 0;
}

static const tb_data_limits_t default_limits;

static size_t max_bytes(const tb_data_limits_t *lim) {
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
static int gz_failure(const char *path, gzFile gz, int saved_errno, tb_err_t *err) {
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
      r = gz_failure(path, gz, errno, err);
      if (r == 0)
        r = tb_errf(err, TB_EIO, "%s: cannot read", path);
      goto fail;
    }
    if (got == 0)
      break;
    *len += (size_t)got;
  }
  r = gz_failure(path, gz, errno, err);
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
static int read_all(const char *path, const tb_data_limits_t *lim, char **out, size_t *out_len,
                    tb_err_t *err) {
  char *buf = NULL;
  size_t cap = 0, len = 0, max = max_bytes(lim);
  uint64_t size;
  int r, fd;
  *out = NULL;
  *out_len = 0;
  if ((r = tb__data_open(path, path, lim, &fd, &size, err)) != 0)
    return r;
  if (!ends_with_gz(path) && size > max) {
    close(fd);
    return tb_errf(err, TB_ERANGE, "%s: %llu bytes, more than the %zu a data file may have here",
                   path, (unsigned long long)size, max);
  }
  if (ends_with_gz(path))
    r = read_gz(path, fd, max, &buf, &cap, &len, err);
  else
    r = read_plain(path, fd, max, &buf, &cap, &len, err);
  if (r == TB_ERANGE)
    tb_errf(err, r, "%s: larger than the %zu bytes a data file may have here%s", path, max,
            ends_with_gz(path) ? " (after decompression)" : "");
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

/* Room for a quoted field: 40 bytes of up to 4 characters each, the quotes,
 * "...", and ", got ". */
#define QUOTE_LEN 200

/* Writes `"text"` for a field into out (QUOTE_LEN bytes): the field as it
 * is, clipped to 40 bytes, with `"` and `\` escaped by a backslash and every
 * byte that is not printable ASCII written \xNN, so a message stays one
 * readable line of ASCII whatever the file holds. */
static const char *quote_field(char *out, const char *s, size_t len) {
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
static const char *got_field(char *out, bool redact, const char *s, size_t len) {
  char q[QUOTE_LEN];
  if (redact)
    out[0] = '\0';
  else
    snprintf(out, QUOTE_LEN, ", got %s", quote_field(q, s, len));
  return out;
}

/* A line of the file: [s, e) without its '\n' or "\r\n". */
typedef struct line_s {
  char *s, *e;
} line_t;

/* Steps to the next line; returns 0 at the end of the buffer. */
static int next_line(char **p, char *end, line_t *l) {
  char *nl;
  if (*p >= end)
    return 0;
  l->s = *p;
  nl = memchr(*p, '\n', (size_t)(end - *p));
  l->e = nl != NULL ? nl : end;
  *p = nl != NULL ? nl + 1 : end;
  if (l->e > l->s && l->e[-1] == '\r')
    l->e--;
  return 1;
}

/* Spaces and tabs around a field are ignored, except the delimiter itself
 * (a tab- or space-separated file). */
static int is_pad(char c, char delim) {
  return (c == ' ' || c == '\t') && c != delim;
}

static int is_blank(const line_t *l, char delim) {
  for (const char *c = l->s; c < l->e; c++)
    if (!is_pad(*c, delim))
      return 0;
  return 1;
}

static long count_fields(const line_t *l, char delim) {
  long n = 1;
  for (const char *c = l->s; c < l->e; c++)
    n += *c == delim;
  return n;
}

/* The parse state of one CSV load, so helpers can report where they are. */
typedef struct csv_s {
  const char *path;
  char delim;
  bool redact; /* no field text in messages */
  long line;   /* 1-based number of the current line */
  tb_err_t *err;
} csv_t;

/* Parses the field [s, e) of column col (1-based) into *v. Writes a NUL at e,
 * which is safe: e points at the delimiter, the line end or the buffer's NUL,
 * and the field's line is not read again. */
static int parse_number(csv_t *c, int col, char *s, char *e, double *v) {
  char q[QUOTE_LEN], *end;
  *v = 0.0;
  while (s < e && is_pad(*s, c->delim))
    s++;
  while (e > s && is_pad(e[-1], c->delim))
    e--;
  if (s == e)
    return tb_errf(c->err, TB_EFORMAT, "%s:%ld: column %d: expected a number, got an empty field",
                   c->path, c->line, col);
  *e = '\0';
  /* strtod follows the C locale's decimal point, which is '.' unless the
   * program called setlocale(); the library never does. */
  *v = strtod(s, &end);
  if (end != e)
    return tb_errf(c->err, TB_EFORMAT, "%s:%ld: column %d: expected a number%s", c->path, c->line,
                   col, got_field(q, c->redact, s, (size_t)(e - s)));
  if (!isfinite(*v))
    return tb_errf(c->err, TB_ENONFINITE,
                   "%s:%ld: column %d: expected a finite number%s (inf and nan are not "
                   "accepted)",
                   c->path, c->line, col, got_field(q, c->redact, s, (size_t)(e - s)));
  if (fabs(*v) > FLT_MAX)
    return tb_errf(c->err, TB_ERANGE, "%s:%ld: column %d: %s is out of the float32 range", c->path,
                   c->line, col, c->redact ? "the number" : quote_field(q, s, (size_t)(e - s)));
  return 0;
}

/* Fills row `row` of d from line l, which must have n_cols fields. */
static int parse_row(csv_t *c, const line_t *l, int n_cols, int label, int classes, tb_dataset_t *d,
                     int row, double *max_label) {
  char *s = l->s, q[QUOTE_LEN];
  long got = count_fields(l, c->delim);
  if (got != n_cols)
    return tb_errf(c->err, TB_EFORMAT, "%s:%ld: expected %d columns, got %ld", c->path, c->line,
                   n_cols, got);
  for (int col = 0; col < n_cols; col++) {
    char *e = s;
    double v;
    int r;
    while (e < l->e && *e != c->delim)
      e++;
    if (col == label && classes) {
      /* Quote the raw text now: parse_number trims and terminates it. */
      got_field(q, c->redact, s, (size_t)(e - s));
    }
    r = parse_number(c, col + 1, s, e, &v);
    if (r != 0)
      return r;
    if (col == label) {
      if (classes && !(v >= 0.0 && v <= TB_DATA_MAX_LABEL && v == floor(v)))
        return tb_errf(c->err, TB_EFORMAT,
                       "%s:%ld: column %d: expected a class label (an integer from 0 to %d)%s",
                       c->path, c->line, col + 1, TB_DATA_MAX_LABEL, q);
      d->y[row] = (float)v;
      if (v > *max_label)
        *max_label = v;
    } else {
      int j = col < label ? col : col - 1;
      d->x[(size_t)row * d->n_features + j] = (float)v;
    }
    s = e + 1;
  }
  return 0;
}

int tb_csv_load(const char *path, const tb_csv_opts_t *opts, tb_dataset_t **out, tb_err_t *err) {
  static const tb_csv_opts_t zero_opts;
  tb_dataset_t *d = NULL;
  char *buf = NULL, *p, *end, *data_start;
  size_t len;
  long n_rows = 0, n_cols = 0, first_line = 0, skipped = 0;
  int label, row = 0, r;
  double max_label = 0.0;
  line_t l;
  csv_t c;
  if (out != NULL)
    *out = NULL;
  if (err != NULL)
    err->msg[0] = '\0';
  if (opts == NULL)
    opts = &zero_opts;
  if (path == NULL || out == NULL)
    return tb_errf(err, TB_EINVAL, "csv: a path and an output are required");
  const tb_data_limits_t *lim = opts->limits != NULL ? opts->limits : &default_limits;
  long max_rows = lim->max_rows > 0 && lim->max_rows < INT_MAX ? lim->max_rows : INT_MAX;
  long max_cols = lim->max_cols > 0 && lim->max_cols < INT_MAX ? lim->max_cols : TB_DATA_MAX_COLS;
  c.path = path;
  c.delim = opts->delimiter != 0 ? opts->delimiter : ',';
  c.redact = lim->redact;
  c.line = 0;
  c.err = err;
  if (c.delim == '\n' || c.delim == '\r')
    return tb_errf(err, TB_EINVAL, "%s: the delimiter cannot be a line break", path);
  if (opts->skip_rows < 0)
    return tb_errf(err, TB_EINVAL, "%s: skip_rows must be >= 0, got %d", path, opts->skip_rows);

  r = read_all(path, lim, &buf, &len, err);
  if (r != 0)
    goto fail;
  end = buf + len;
  p = buf;
  /* A UTF-8 byte order mark, as spreadsheet programs write. */
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
    p += 3;
  data_start = p;

  /* Pass 1: count the data rows and take the column count from the first. */
  for (long ln = 1; next_line(&p, end, &l); ln++) {
    if (skipped < opts->skip_rows) {
      skipped++;
      continue;
    }
    if (is_blank(&l, c.delim))
      continue;
    if (n_rows == 0) {
      first_line = ln;
      n_cols = count_fields(&l, c.delim);
    }
    n_rows++;
  }
  if (n_rows == 0) {
    r = tb_errf(err, TB_EFORMAT, "%s: no data rows (the file is empty%s)", path,
                opts->skip_rows > 0 ? " after the skipped rows" : "");
    goto fail;
  }
  if (n_rows > max_rows) {
    r = tb_errf(err, TB_ERANGE, "%s: %ld data rows, more than the %ld a data file may have here",
                path, n_rows, max_rows);
    goto fail;
  }
  if (n_cols > max_cols) {
    r = tb_errf(err, TB_ERANGE, "%s:%ld: %ld columns, more than the %ld a data file may have here",
                path, first_line, n_cols, max_cols);
    goto fail;
  }
  if (n_cols < 2) {
    r = tb_errf(err, TB_EFORMAT,
                "%s:%ld: expected at least 2 columns (a label and a feature), got %ld", path,
                first_line, n_cols);
    goto fail;
  }
  label = opts->label_col < 0 ? (int)n_cols + opts->label_col : opts->label_col;
  if (opts->label_col < -n_cols || opts->label_col >= n_cols) {
    r = tb_errf(err, TB_ERANGE, "%s:%ld: label column %d is out of range for %ld columns", path,
                first_line, opts->label_col, n_cols);
    goto fail;
  }
  if ((long long)n_rows * (n_cols - 1) > INT_MAX) {
    r = tb_errf(err, TB_ERANGE, "%s: %ld rows of %ld features is too large", path, n_rows,
                n_cols - 1);
    goto fail;
  }
  d = tb_dataset_new((int)n_rows, (int)n_cols - 1, 1);
  if (d == NULL) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory for %ld rows", path, n_rows);
    goto fail;
  }

  /* Pass 2: parse, in place. */
  p = data_start;
  skipped = 0;
  for (c.line = 1; next_line(&p, end, &l); c.line++) {
    if (skipped < opts->skip_rows) {
      skipped++;
      continue;
    }
    if (is_blank(&l, c.delim))
      continue;
    r = parse_row(&c, &l, (int)n_cols, label, opts->classes, d, row, &max_label);
    if (r != 0)
      goto fail;
    row++;
  }
  if (opts->classes)
    d->n_classes = (int)max_label + 1;
  free(buf);
  *out = d;
  return 0;

fail:
  free(buf);
  tb_dataset_free(d);
  return r;
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
  const tb_data_limits_t *lim = limits != NULL ? limits : &default_limits;
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

  r = read_all(images_path, lim, &buf, &len, err);
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
    r = read_all(labels_path, lim, &buf, &len, err);
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
#define PEEK_BYTES ((size_t)1 << 20)

/* Opens path as lim allows, reads its first bytes (decompressed for ".gz")
 * into buf, and sets info->bytes to its size: the file's own for a plain
 * file, the size its gzip trailer records (ISIZE, RFC 1952) for ".gz". */
static int peek_start(const char *path, const tb_data_limits_t *lim, char *buf, size_t cap,
                      size_t *got, tb__file_info_t *info, tb_err_t *err) {
  uint64_t size;
  size_t max = max_bytes(lim);
  int fd, r;
  *got = 0;
  if ((r = tb__data_open(path, path, lim, &fd, &size, err)) != 0)
    return r;
  if (!ends_with_gz(path)) {
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
  r = n < 0 ? gz_failure(path, gz, errno, err) : 0;
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

int tb__csv_peek(const char *path, const tb_csv_opts_t *opts, tb__file_info_t *info,
                 tb_err_t *err) {
  static const tb_csv_opts_t zero_opts;
  memset(info, 0, sizeof(*info));
  if (opts == NULL)
    opts = &zero_opts;
  const tb_data_limits_t *lim = opts->limits != NULL ? opts->limits : &default_limits;
  char delim = opts->delimiter != 0 ? opts->delimiter : ',';
  long max_cols = lim->max_cols > 0 && lim->max_cols < INT_MAX ? lim->max_cols : TB_DATA_MAX_COLS;
  char *buf = malloc(PEEK_BYTES + 1);
  size_t got;
  if (buf == NULL)
    return tb_errf(err, TB_ENOMEM, "%s: out of memory", path);
  int r = peek_start(path, lim, buf, PEEK_BYTES, &got, info, err);
  if (r != 0) {
    free(buf);
    return r;
  }
  char *p = buf, *end = buf + got;
  line_t l;
  long skipped = 0, ln = 0;
  if (got >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
    p += 3;
  while (next_line(&p, end, &l)) {
    ln++;
    if (skipped < opts->skip_rows) {
      skipped++;
      continue;
    }
    if (is_blank(&l, delim))
      continue;
    info->cols = count_fields(&l, delim);
    break;
  }
  free(buf);
  if (info->cols > max_cols)
    return tb_errf(err, TB_ERANGE,
                   "%s:%ld: %lld columns, more than the %ld a data file may have here", path, ln,
                   (long long)info->cols, max_cols);
  return 0;
}

int tb__idx_peek(const char *path, int labels, const tb_data_limits_t *limits,
                 tb__file_info_t *info, tb_err_t *err) {
  const tb_data_limits_t *lim = limits != NULL ? limits : &default_limits;
  unsigned char buf[4 + 4 * 256];
  size_t got;
  idx_t h;
  memset(info, 0, sizeof(*info));
  int r = peek_start(path, lim, (char *)buf, sizeof(buf), &got, info, err);
  if (r != 0)
    return r;
  if ((r = idx_parse_header(path, buf, got, labels, lim, &h, err)) != 0)
    return r;
  info->rows = h.count;
  info->cols = h.item;
  if (ends_with_gz(path))
    info->bytes = h.header_len + (uint64_t)h.count * (uint64_t)h.item;
  return 0;
}
