/* NumPy .npy files (np.save), read without numpy.
 *
 * The format (numpy/lib/format.py, "NEP 1"): the magic "\x93NUMPY", a major
 * and a minor version byte, the header's length (2 bytes little-endian in
 * version 1, 4 in versions 2 and 3), then the header, a Python dict literal
 * such as
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }
 * padded with spaces to a multiple of 64 bytes and ended by '\n', then the
 * array's bytes. The header is parsed here by a small strict reader of
 * exactly that literal (the three keys, a string, a bool and a tuple of
 * integers), not by a general Python parser: anything else is refused.
 *
 * The data is streamed in chunks of at most CHUNK bytes, converted element
 * by element into the dataset's float32 arrays: a file is never held in
 * memory whole, so loading needs the dataset and one chunk (estimate.c
 * counts exactly that). Files are opened as the limits allow (confine.c)
 * and a ".gz" is read through zlib. tb__npy_parse() runs the same code over
 * arrays in memory, for the fuzz target. */
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

/* Bytes read and converted at once: a multiple of every element size. */
#define CHUNK ((size_t)1 << 20)

/* The longest header read. numpy itself refuses headers over 10000 bytes
 * unless told otherwise (np.load's max_header_size); the arrays we take
 * have short ones. */
#define HEADER_MAX ((size_t)1 << 16)

#define MAX_DIMS 32

/* The largest class index: 2^24 - 1, so that every index and the class
 * count (the largest plus one) are exact in float32. */
#define MAX_LABEL 16777215

typedef struct npy_hdr_s {
  size_t header_len; /* bytes before the data */
  char type;         /* 'f', 'i', 'u' or 'b' */
  int size;          /* bytes per element */
  bool big;          /* big-endian elements */
  int ndim;
  uint64_t shape[MAX_DIMS];
  uint64_t rows, per_row; /* shape[0], and the product of the rest */
  uint64_t data_bytes;
  char descr[24]; /* as written, for messages */
  char dims[128]; /* "(60000, 28, 28)", for messages */
  char dtype[16]; /* "float32", for messages */
} npy_hdr_t;

/* Where the bytes come from: a file (plain or gzip) or memory. */
typedef struct src_s {
  const char *path;
  int fd;
  gzFile gz;
  const unsigned char *mem;
  size_t mem_len;
  uint64_t pos;
  bool sized;    /* size is known: memory, or a plain regular file */
  uint64_t size; /* then, its length in bytes */
} src_t;

static int src_read(src_t *s, void *buf, size_t n, size_t *got, tb_err_t *err) {
  *got = 0;
  if (s->mem != NULL || (s->fd < 0 && s->gz == NULL)) {
    size_t left = s->mem_len - (size_t)s->pos;
    *got = n < left ? n : left;
    if (*got > 0)
      memcpy(buf, s->mem + s->pos, *got);
    s->pos += *got;
    return 0;
  }
  while (*got < n) {
    size_t want = n - *got;
    if (s->gz != NULL) {
      unsigned w = want > (1u << 30) ? 1u << 30 : (unsigned)want;
      errno = 0;
      int k = gzread(s->gz, (char *)buf + *got, w);
      if (k < 0) {
        int r = tb__gz_failure(s->path, s->gz, errno, err);
        return r != 0 ? r : tb_errf(err, TB_EIO, "%s: cannot read", s->path);
      }
      if (k == 0)
        break;
      *got += (size_t)k;
    } else {
      ssize_t k = read(s->fd, (char *)buf + *got, want);
      if (k < 0 && errno == EINTR)
        continue;
      if (k < 0) {
        int e = errno;
        return tb_errf(err, -e, "%s: cannot read: %s", s->path, strerror(e));
      }
      if (k == 0)
        break;
      *got += (size_t)k;
    }
  }
  s->pos += *got;
  /* zlib reports a stream cut short only through its state. */
  if (s->gz != NULL && *got < n) {
    int r = tb__gz_failure(s->path, s->gz, errno, err);
    if (r != 0)
      return r;
  }
  return 0;
}

static int src_open(src_t *s, const char *path, const tb_data_limits_t *lim, tb_err_t *err) {
  uint64_t size;
  memset(s, 0, sizeof(*s));
  s->path = path;
  s->fd = -1;
  int r = tb__data_open(path, path, lim, &s->fd, &size, err);
  if (r != 0)
    return r;
  /* A regular file's size (0 for a pipe, which is read as it comes). */
  s->sized = size > 0 && !tb__ends_with_gz(path);
  s->size = size;
  if (tb__ends_with_gz(path)) {
    errno = 0;
    s->gz = gzdopen(s->fd, "rb");
    if (s->gz == NULL) {
      close(s->fd);
      s->fd = -1;
      return tb_errf(err, TB_ENOMEM, "%s: cannot open: out of memory", path);
    }
    s->fd = -1; /* the gzFile owns it */
    gzbuffer(s->gz, 1 << 17);
  }
  return 0;
}

/* The end of a file: nothing may follow the data, and a ".gz" must have
 * been gzip. */
static int src_finish(src_t *s, tb_err_t *err) {
  unsigned char extra;
  size_t got;
  int r = src_read(s, &extra, 1, &got, err);
  if (r != 0)
    return r;
  if (got > 0)
    return tb_errf(err, TB_EFORMAT, "%s: trailing bytes after the data its header announces",
                   s->path);
  if (s->gz != NULL && s->pos > 0 && gzdirect(s->gz))
    return tb_errf(err, TB_EFORMAT, "%s: not in gzip format (the name ends in .gz)", s->path);
  return 0;
}

static void src_close(src_t *s) {
  if (s->gz != NULL)
    gzclose(s->gz);
  else if (s->fd >= 0)
    close(s->fd);
  s->gz = NULL;
  s->fd = -1;
}

/* ---- the header ---------------------------------------------------------- */

typedef struct cur_s {
  const char *p, *end;
} cur_t;

static void skip_ws(cur_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
    c->p++;
}

static bool eat(cur_t *c, char ch) {
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return true;
  }
  return false;
}

/* A Python string literal without escapes, as repr() writes these. */
static bool str_lit(cur_t *c, char *out, size_t cap) {
  skip_ws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
    return false;
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    /* No escapes, and only printable ASCII: messages quote the dtype. */
    if (*c->p == '\\' || *c->p < 0x20 || *c->p > 0x7e || n + 1 >= cap)
      return false;
    out[n++] = *c->p++;
  }
  if (c->p >= c->end)
    return false;
  c->p++;
  out[n] = '\0';
  return true;
}

static bool word(cur_t *c, const char *w) {
  size_t n = strlen(w);
  skip_ws(c);
  if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) {
    c->p += n;
    return true;
  }
  return false;
}

/* (), (3,), (3, 4) or (3L, 4L) as Python 2 wrote them. */
static bool tuple_lit(cur_t *c, npy_hdr_t *h) {
  if (!eat(c, '('))
    return false;
  h->ndim = 0;
  for (;;) {
    if (eat(c, ')'))
      return true;
    skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9' || h->ndim == MAX_DIMS)
      return false;
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      if (v > (UINT64_MAX - 9) / 10)
        return false;
      v = v * 10 + (uint64_t)(*c->p++ - '0');
    }
    if (c->p < c->end && *c->p == 'L')
      c->p++;
    h->shape[h->ndim++] = v;
    if (eat(c, ')'))
      return true;
    if (!eat(c, ','))
      return false;
  }
}

/* The element type from descr: a byte order, a kind and a size. */
static int dtype(const char *path, bool rd, npy_hdr_t *h, tb_err_t *err) {
  const char *t = h->descr;
  char order = '=';
  if (t[0] != '\0' && strchr("<>|=", t[0]) != NULL)
    order = *t++;
  char kind = t[0];
  char *end = (char *)t;
  long size = kind != '\0' && t[1] >= '0' && t[1] <= '9' ? strtol(t + 1, &end, 10) : 0;
  bool plain = kind != '\0' && end != t + 1 && *end == '\0';
  const char *why = NULL;
  if (kind == 'O')
    why = "object arrays (pickled Python objects) are not loaded: save a numeric array "
          "(x.astype(np.float32))";
  else if (kind == 'U' || kind == 'S' || kind == 'a')
    why = "string arrays are not loaded: save numbers (class names as integer indices)";
  else if (kind == 'f' && size == 2)
    why = "float16 is not supported: save float32 (x.astype(np.float32))";
  else if (kind == 'c')
    why = "complex numbers are not supported";
  else if (!plain ||
           !((kind == 'f' && (size == 4 || size == 8)) ||
             ((kind == 'i' || kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
             (kind == 'b' && size == 1)))
    why = "not a supported element type (float32, float64, integers of 1, 2, 4 or 8 bytes, "
          "bool)";
  if (why != NULL) {
    if (rd)
      return tb_errf(err, TB_EFORMAT, "%s: its dtype: %s", path, why);
    return tb_errf(err, TB_EFORMAT, "%s: dtype '%s': %s", path, h->descr, why);
  }
  h->type = kind;
  h->size = (int)size;
  h->big = order == '>';
  static const char *const names[] = {"float", "int", "uint"};
  if (kind == 'b')
    snprintf(h->dtype, sizeof(h->dtype), "bool");
  else
    snprintf(h->dtype, sizeof(h->dtype), "%s%d",
             names[kind == 'f'   ? 0
                   : kind == 'i' ? 1
                                 : 2],
             8 * h->size);
  return 0;
}

/* The fixed part: magic, version, header length. *total is the header's
 * end (where the data starts). */
static int header_prefix(const char *path, const unsigned char *b, size_t len, size_t *start,
                         size_t *total, tb_err_t *err) {
  if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0) {
    if (len >= 4 && memcmp(b, "PK\x03\x04", 4) == 0)
      return tb_errf(err, TB_EFORMAT, "%s: a zip file (.npz?), not an npy file", path);
    if (len >= 6 && memcmp(b, "\x93NUMPY", 6) != 0)
      return tb_errf(err, TB_EFORMAT, "%s: not an npy file (it does not start with \\x93NUMPY)",
                     path);
    return tb_errf(err, TB_ETRUNCATED, "%s: truncated: %zu bytes, an npy header needs at least 10",
                   path, len);
  }
  unsigned major = b[6], minor = b[7];
  size_t hlen;
  if (major == 1) {
    *start = 10;
    hlen = (size_t)b[8] | (size_t)b[9] << 8;
  } else if (major == 2 || major == 3) {
    if (len < 12)
      return tb_errf(err, TB_ETRUNCATED, "%s: truncated in its header", path);
    *start = 12;
    hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
  } else {
    return tb_errf(err, TB_EFORMAT,
                   "%s: npy format version %u.%u; this build reads 1.0, 2.0 and 3.0", path, major,
                   minor);
  }
  if (hlen > HEADER_MAX)
    return tb_errf(err, TB_EFORMAT,
                   "%s: a header of %zu bytes, more than the %zu an npy file of "
                   "numbers needs",
                   path, hlen, HEADER_MAX);
  *total = *start + hlen;
  return 0;
}

/* Parses the header from b (at least its first `len` bytes; the whole
 * header must be there) against the limits. */
static int header_parse(const char *path, const unsigned char *b, size_t len,
                        const tb_data_limits_t *lim, npy_hdr_t *h, tb_err_t *err) {
  size_t start, total;
  bool rd = lim->redact;
  memset(h, 0, sizeof(*h));
  int r = header_prefix(path, b, len, &start, &total, err);
  if (r != 0)
    return r;
  if (len < total)
    return tb_errf(err, TB_ETRUNCATED, "%s: truncated in its header (%zu of %zu bytes)", path, len,
                   total);
  h->header_len = total;
  cur_t c = {(const char *)b + start, (const char *)b + total};
  bool have[3] = {false, false, false}, fortran = false;
  const char *bad = NULL;
  if (!eat(&c, '{'))
    bad = "it does not start with {";
  while (bad == NULL) {
    char key[32];
    if (eat(&c, '}'))
      break;
    if (!str_lit(&c, key, sizeof(key)) || !eat(&c, ':')) {
      bad = "a key is not a quoted name followed by ':'";
      break;
    }
    int k = strcmp(key, "descr") == 0           ? 0
            : strcmp(key, "fortran_order") == 0 ? 1
            : strcmp(key, "shape") == 0         ? 2
                                                : -1;
    if (k < 0 || have[k]) {
      bad = k < 0 ? "a key other than descr, fortran_order and shape" : "a key given twice";
      break;
    }
    have[k] = true;
    if (k == 0) {
      skip_ws(&c);
      if (c.p < c.end && *c.p == '[') {
        if (rd)
          return tb_errf(err, TB_EFORMAT,
                         "%s: its dtype: structured arrays (records) are not "
                         "loaded: save one numeric array per file",
                         path);
        return tb_errf(err, TB_EFORMAT,
                       "%s: a structured dtype (records): save one numeric array per file", path);
      }
      if (!str_lit(&c, h->descr, sizeof(h->descr)))
        bad = "descr is not a short quoted string";
    } else if (k == 1) {
      if (word(&c, "True"))
        fortran = true;
      else if (!word(&c, "False"))
        bad = "fortran_order is not True or False";
    } else if (!tuple_lit(&c, h)) {
      bad = "shape is not a tuple of integers";
    }
    if (bad == NULL && !eat(&c, ',')) {
      if (eat(&c, '}'))
        break;
      bad = "entries are not separated by commas";
    }
  }
  skip_ws(&c);
  if (bad == NULL && c.p != c.end)
    bad = "text after the closing }";
  if (bad == NULL && !(have[0] && have[1] && have[2]))
    bad = "it lacks descr, fortran_order or shape";
  if (bad != NULL)
    return tb_errf(err, TB_EFORMAT, "%s: not the header np.save writes (%s)", path, bad);
  if ((r = dtype(path, rd, h, err)) != 0)
    return r;

  /* The shape, for messages, and its sizes. */
  size_t o = 0;
  o += (size_t)snprintf(h->dims, sizeof(h->dims), "(");
  for (int i = 0; i < h->ndim && o < sizeof(h->dims); i++)
    o += (size_t)snprintf(h->dims + o, sizeof(h->dims) - o, "%s%llu", i ? ", " : "",
                          (unsigned long long)h->shape[i]);
  if (o < sizeof(h->dims))
    snprintf(h->dims + o, sizeof(h->dims) - o, h->ndim == 1 ? ",)" : ")");
  int big_dims = 0;
  for (int i = 0; i < h->ndim; i++)
    big_dims += h->shape[i] > 1;
  if (fortran && big_dims > 1)
    return tb_errf(err, TB_EFORMAT,
                   "%s: Fortran order (column-major) is not supported: save "
                   "np.ascontiguousarray(x) instead",
                   path);
  if (h->ndim == 0)
    return tb_errf(err, TB_EFORMAT, "%s: a 0-d array (one value) has no rows", path);
  h->rows = h->shape[0];
  h->per_row = 1;
  bool over = h->rows > INT_MAX;
  for (int i = 1; i < h->ndim; i++) {
    if (h->shape[i] != 0 && h->per_row > INT_MAX / h->shape[i])
      over = true;
    else
      h->per_row *= h->shape[i];
  }
  if (h->rows == 0 || h->per_row == 0) {
    if (rd)
      return tb_errf(err, TB_EFORMAT, "%s: an empty array (no rows or no values per row)", path);
    return tb_errf(err, TB_EFORMAT, "%s: shape %s: no %s", path, h->dims,
                   h->rows == 0 ? "rows" : "values per row");
  }
  if (over || h->rows * h->per_row > INT_MAX) {
    if (rd)
      return tb_errf(err, TB_ERANGE, "%s: more than the %d values a dataset may hold", path,
                     INT_MAX);
    return tb_errf(err, TB_ERANGE, "%s: shape %s: more than the %d values a dataset may hold", path,
                   h->dims, INT_MAX);
  }
  long max_rows = lim->max_rows > 0 && lim->max_rows < INT_MAX ? lim->max_rows : INT_MAX;
  long max_cols = lim->max_cols > 0 && lim->max_cols < INT_MAX ? lim->max_cols : TB_DATA_MAX_COLS;
  if ((long)h->rows > max_rows) {
    if (rd)
      return tb_errf(err, TB_ERANGE, "%s: more than the %ld rows a data file may have here", path,
                     max_rows);
    return tb_errf(err, TB_ERANGE,
                   "%s: shape %s: %llu rows, more than the %ld a data file may "
                   "have here",
                   path, h->dims, (unsigned long long)h->rows, max_rows);
  }
  if ((long)h->per_row > max_cols) {
    if (rd)
      return tb_errf(err, TB_ERANGE,
                     "%s: more than the %ld values per row a data file may have here", path,
                     max_cols);
    return tb_errf(err, TB_ERANGE,
                   "%s: shape %s: %llu values per row, more than the %ld a data file may have "
                   "here",
                   path, h->dims, (unsigned long long)h->per_row, max_cols);
  }
  h->data_bytes = h->rows * h->per_row * (uint64_t)h->size;
  size_t max = tb__max_bytes(lim);
  if (h->header_len + h->data_bytes > max) {
    if (rd)
      return tb_errf(err, TB_ERANGE,
                     "%s: its header announces more than the %zu bytes a data file may have here",
                     path, max);
    return tb_errf(err, TB_ERANGE,
                   "%s: %llu bytes (shape %s of %s), more than the %zu a data file may have here",
                   path, (unsigned long long)(h->header_len + h->data_bytes), h->dims, h->dtype,
                   max);
  }
  return 0;
}

/* Reads the header from s (the fixed part, then the dict), and nothing
 * after it. */
static int header_read(src_t *s, const tb_data_limits_t *lim, npy_hdr_t *h, tb_err_t *err) {
  unsigned char head[12];
  size_t got, more = 0, start, total;
  int r = src_read(s, head, 10, &got, err);
  if (r != 0)
    return r;
  /* Versions 2 and 3 have a 4-byte length. */
  if (got == 10 && memcmp(head, "\x93NUMPY", 6) == 0 && head[6] >= 2 &&
      (r = src_read(s, head + 10, 2, &more, err)) != 0)
    return r;
  got += more;
  if ((r = header_prefix(s->path, head, got, &start, &total, err)) != 0)
    return r;
  if (total < got)
    return tb_errf(err, TB_EFORMAT, "%s: not the header np.save writes (it is empty)", s->path);
  unsigned char *b = malloc(total);
  if (b == NULL)
    return tb_errf(err, TB_ENOMEM, "%s: out of memory", s->path);
  memcpy(b, head, got);
  more = 0;
  if (total > got && (r = src_read(s, b + got, total - got, &more, err)) != 0) {
    free(b);
    return r;
  }
  r = header_parse(s->path, b, got + more, lim, h, err);
  free(b);
  return r;
}

/* ---- the data ------------------------------------------------------------ */

static uint64_t load_uint(const unsigned char *p, int size, bool big) {
  uint64_t v = 0;
  for (int i = 0; i < size; i++)
    v |= (uint64_t)p[big ? size - 1 - i : i] << (8 * i);
  return v;
}

static double element(const npy_hdr_t *h, const unsigned char *p) {
  uint64_t u = load_uint(p, h->size, h->big);
  switch (h->type) {
  case 'f':
    if (h->size == 4) {
      uint32_t w = (uint32_t)u;
      float f;
      memcpy(&f, &w, 4);
      return f;
    } else {
      double d;
      memcpy(&d, &u, 8);
      return d;
    }
  case 'i': {
    /* Sign-extend from size bytes. */
    int bits = 8 * h->size;
    if (bits < 64 && (u >> (bits - 1)) & 1)
      u |= ~(uint64_t)0 << bits;
    return (double)(int64_t)u;
  }
  case 'b':
    return u != 0;
  default:
    return (double)u;
  }
}

/* "[5, 3]" for element k of the array, numpy's index of it. */
static const char *index_of(const npy_hdr_t *h, uint64_t k, char *buf, size_t len) {
  uint64_t idx[MAX_DIMS];
  for (int i = h->ndim - 1; i >= 0; i--) {
    idx[i] = h->shape[i] > 0 ? k % h->shape[i] : 0;
    k = h->shape[i] > 0 ? k / h->shape[i] : 0;
  }
  size_t o = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < h->ndim && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%llu", i ? ", " : "", (unsigned long long)idx[i]);
  if (o < len)
    snprintf(buf + o, len - o, "]");
  return buf;
}

/* The file holds `have` bytes of data, fewer than its header announces. */
static int truncated(const src_t *s, const npy_hdr_t *h, uint64_t have, bool redact,
                     tb_err_t *err) {
  if (redact)
    return tb_errf(err, TB_ETRUNCATED,
                   "%s: truncated: the file holds %llu bytes of data, less than its header "
                   "announces",
                   s->path, (unsigned long long)have);
  return tb_errf(err, TB_ETRUNCATED,
                 "%s: truncated: its header announces shape %s of %s (%llu bytes of data) "
                 "but the file holds %llu",
                 s->path, h->dims, h->dtype, (unsigned long long)h->data_bytes,
                 (unsigned long long)have);
}

/* Where the data is a file of known size (or memory), it must hold exactly
 * the bytes the header announces: checked before anything is allocated for
 * them, so a header claiming gigabytes costs nothing. */
static int check_size(const src_t *s, const npy_hdr_t *h, const tb_data_limits_t *lim,
                      tb_err_t *err) {
  if (!s->sized)
    return 0;
  uint64_t have = s->size - s->pos;
  if (have < h->data_bytes)
    return truncated(s, h, have, lim->redact, err);
  if (have > h->data_bytes)
    return tb_errf(err, TB_EFORMAT, "%s: trailing bytes after the data its header announces",
                   s->path);
  return 0;
}

/* The first floats given to data of unknown size (gzip, a pipe): 4 MiB,
 * doubled as the data arrives, so memory follows what the file holds rather
 * than what its header claims. */
#define FIRST_FLOATS ((uint64_t)1 << 20)

/* Streams the data of s into *dst (count floats, allocated here: all at
 * once when the size is known, else grown as data arrives), checking every
 * value. With `classes`, the values are class indices; *max_label gets the
 * largest. */
static int data_read(src_t *s, const npy_hdr_t *h, const tb_data_limits_t *lim, bool classes,
                     float **out, double *max_label, unsigned char *chunk, tb_err_t *err) {
  uint64_t count = h->rows * h->per_row, k = 0;
  uint64_t cap = s->sized || count < FIRST_FLOATS ? count : FIRST_FLOATS;
  float *dst = malloc((size_t)(cap > 0 ? cap : 1) * sizeof(float));
  size_t per = CHUNK / (size_t)h->size;
  char at[200];
  bool rd = lim->redact;
  if (dst == NULL)
    return tb_errf(err, TB_ENOMEM, "%s: out of memory for %llu values", s->path,
                   (unsigned long long)count);
  *out = dst;
  while (k < count) {
    size_t n = count - k < per ? (size_t)(count - k) : per, got;
    if (k + n > cap) {
      uint64_t want = cap * 2 < count ? cap * 2 : count;
      float *grown = realloc(dst, (size_t)want * sizeof(float));
      if (grown == NULL)
        return tb_errf(err, TB_ENOMEM, "%s: out of memory for %llu values", s->path,
                       (unsigned long long)count);
      *out = dst = grown;
      cap = want;
    }
    int r = src_read(s, chunk, n * (size_t)h->size, &got, err);
    if (r != 0)
      return r;
    if (got < n * (size_t)h->size)
      return truncated(s, h, k * (uint64_t)h->size + got, rd, err);
    for (size_t i = 0; i < n; i++, k++) {
      double v = element(h, chunk + i * (size_t)h->size);
      if (!isfinite(v)) {
        if (rd)
          return tb_errf(err, TB_ENONFINITE, "%s: at %s: not a finite number", s->path,
                         index_of(h, k, at, sizeof(at)));
        return tb_errf(err, TB_ENONFINITE, "%s: at %s: %g is not a finite number", s->path,
                       index_of(h, k, at, sizeof(at)), v);
      }
      if (fabs(v) > FLT_MAX) {
        if (rd)
          return tb_errf(err, TB_ERANGE, "%s: at %s: out of the float32 range", s->path,
                         index_of(h, k, at, sizeof(at)));
        return tb_errf(err, TB_ERANGE, "%s: at %s: %g is out of the float32 range", s->path,
                       index_of(h, k, at, sizeof(at)), v);
      }
      if (classes && !(v >= 0.0 && v <= MAX_LABEL && v == floor(v))) {
        if (rd)
          return tb_errf(err, TB_EFORMAT,
                         "%s: at %s: expected a class label (an integer from 0 to %d)", s->path,
                         index_of(h, k, at, sizeof(at)), MAX_LABEL);
        return tb_errf(err, TB_EFORMAT,
                       "%s: at %s: expected a class label (an integer from 0 to %d), got %g",
                       s->path, index_of(h, k, at, sizeof(at)), MAX_LABEL, v);
      }
      if (classes && v > *max_label)
        *max_label = v;
      dst[k] = (float)v;
    }
  }
  return src_finish(s, err);
}

/* Both files' headers, then both files' data, then the dataset that holds
 * them. */
static int load(src_t *xs, src_t *ys, const tb_npy_opts_t *o, tb_dataset_t **out, tb_err_t *err) {
  const tb_data_limits_t *lim = o->limits != NULL ? o->limits : &tb__default_limits;
  npy_hdr_t hx, hy;
  tb_dataset_t *d = NULL;
  unsigned char *chunk = NULL;
  float *x = NULL, *y = NULL;
  double max_label = 0.0;
  int r;
  if ((r = header_read(xs, lim, &hx, err)) != 0 || (r = check_size(xs, &hx, lim, err)) != 0)
    return r;
  if (ys != NULL) {
    if ((r = header_read(ys, lim, &hy, err)) != 0 || (r = check_size(ys, &hy, lim, err)) != 0)
      return r;
    if (hy.rows != hx.rows) {
      if (lim->redact)
        return tb_errf(err, TB_ESHAPE, "%s holds a different number of rows than %s", ys->path,
                       xs->path);
      return tb_errf(err, TB_ESHAPE, "%s holds %llu rows (shape %s) but %s holds %llu (shape %s)",
                     ys->path, (unsigned long long)hy.rows, hy.dims, xs->path,
                     (unsigned long long)hx.rows, hx.dims);
    }
  }
  if ((chunk = malloc(CHUNK)) == NULL) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory", xs->path);
    goto out;
  }
  if ((r = data_read(xs, &hx, lim, false, &x, &max_label, chunk, err)) != 0)
    goto out;
  if (ys != NULL) {
    bool sparse = o->classes && hy.per_row == 1;
    if ((r = data_read(ys, &hy, lim, sparse, &y, &max_label, chunk, err)) != 0)
      goto out;
  }
  d = tb__dataset_adopt((int)hx.rows, (int)hx.per_row, ys != NULL ? (int)hy.per_row : 0, x, y);
  if (d == NULL) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory for %llu rows", xs->path,
                (unsigned long long)hx.rows);
    goto out;
  }
  x = y = NULL;
  if (ys != NULL && o->classes)
    d->n_classes = hy.per_row == 1 ? (int)max_label + 1 : (int)hy.per_row;
  *out = d;
out:
  free(chunk);
  free(x);
  free(y);
  return r;
}

int tb_npy_load(const char *x_path, const char *y_path, const tb_npy_opts_t *opts,
                tb_dataset_t **out, tb_err_t *err) {
  static const tb_npy_opts_t zero_opts;
  src_t xs, ys;
  int r;
  if (out != NULL)
    *out = NULL;
  if (err != NULL)
    err->msg[0] = '\0';
  if (opts == NULL)
    opts = &zero_opts;
  if (x_path == NULL || out == NULL)
    return tb_errf(err, TB_EINVAL, "npy: an x path and an output are required");
  const tb_data_limits_t *lim = opts->limits != NULL ? opts->limits : &tb__default_limits;
  if ((r = src_open(&xs, x_path, lim, err)) != 0)
    return r;
  if (y_path != NULL && (r = src_open(&ys, y_path, lim, err)) != 0) {
    src_close(&xs);
    return r;
  }
  r = load(&xs, y_path != NULL ? &ys : NULL, opts, out, err);
  src_close(&xs);
  if (y_path != NULL)
    src_close(&ys);
  return r;
}

int tb__npy_parse(const char *x_name, const unsigned char *x, size_t x_len, const char *y_name,
                  const unsigned char *y, size_t y_len, const tb_npy_opts_t *opts,
                  tb_dataset_t **out, tb_err_t *err) {
  static const tb_npy_opts_t zero_opts;
  src_t xs = {.path = x_name, .fd = -1, .mem = x, .mem_len = x_len};
  src_t ys = {.path = y_name, .fd = -1, .mem = y, .mem_len = y_len};
  *out = NULL;
  return load(&xs, y != NULL ? &ys : NULL, opts != NULL ? opts : &zero_opts, out, err);
}

int tb__npy_peek(const char *path, const tb_data_limits_t *limits, tb__file_info_t *info,
                 tb_err_t *err) {
  const tb_data_limits_t *lim = limits != NULL ? limits : &tb__default_limits;
  size_t got;
  npy_hdr_t h;
  memset(info, 0, sizeof(*info));
  unsigned char *buf = malloc(HEADER_MAX + 12);
  if (buf == NULL)
    return tb_errf(err, TB_ENOMEM, "%s: out of memory", path);
  int r = tb__peek_start(path, lim, (char *)buf, HEADER_MAX + 12, &got, info, err);
  if (r == 0)
    r = header_parse(path, buf, got, lim, &h, err);
  free(buf);
  if (r != 0)
    return r;
  info->rows = (int64_t)h.rows;
  info->cols = (int64_t)h.per_row;
  /* What the header announces is what the load reads (and it refuses a
   * file that holds more). */
  info->bytes = h.header_len + h.data_bytes;
  return 0;
}

uint64_t tb__npy_scratch(void) {
  return CHUNK + HEADER_MAX + 12;
}
