/* The CSV loader: RFC 4180 through libcsv (Debian's libcsv-dev), with a
 * header, columns chosen by index or name, string class labels and missing
 * values.
 *
 * The file is read whole (loaders.c's tb__read_all) and handed to libcsv
 * one line at a time, in pieces of at most 64 KiB, so that every message can
 * name the line where its record starts (a quoted field may span lines) and
 * so that libcsv's field buffer, which grows by a fixed block, is resized
 * between pieces to double instead. libcsv runs in strict mode: a quote
 * inside an unquoted field, text after a closing quote and a quoted field
 * left open at the end of the file are errors rather than guesses.
 *
 * Fields are never collected into records: each goes straight to where it
 * belongs, by a column map (feature position, label, or not read), so memory
 * is the text, the dataset, and a few bytes per column. The text is walked
 * up to three times:
 *   probe  the first two records: is the first a header, and which columns
 *          do the job's names refer to;
 *   scan   every record: the column count, the rows (after dropping rows with
 *          missing values if asked), and the labels (numbers, or class names
 *          to sort);
 *   fill   every record again, into the dataset.
 * Only what the scan counted is allocated, so a load needs no more than the
 * job's estimate says (estimate.c). */
#include "trainbus/data.h"

#include "loaders.h"

#include <csv.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest class index: 2^24 - 1, so that every index and the class
 * count (the largest plus one) are exact in float32. */
#define MAX_LABEL 16777215

/* The longest field, in bytes: far more than any number or class name; a
 * text column (a review, a description) may be long, but a field of more
 * than this is a file whose quotes went wrong. */
#define FIELD_MAX ((size_t)1 << 20)

/* Pieces handed to libcsv at once (see the top of the file). */
#define PIECE ((size_t)1 << 16)

/* Header names kept for messages: the first this many columns', clipped to
 * what a message shows. */
#define NAMED_COLS 4096
#define NAME_SHOWN 40

/* A column's role in the column map. */
enum { COL_SKIP = -1, COL_LABEL = -2 };

/* What a field looks like, for header detection. */
enum { KIND_NUMBER = 0, KIND_MISSING, KIND_TEXT };

/* A name the job refers to (the label's or a feature's), and where the
 * header has it. */
typedef struct ref_s {
  const char *name;
  int col;  /* -1 until found */
  int also; /* a second column of the same name, -1 if none */
} ref_t;

/* The distinct labels of the scan, while they may be class names. */
typedef struct labelset_s {
  uint32_t *slots; /* 0: empty; else 1 + index into off/len */
  size_t *off, *len;
  char *text;
  size_t text_len;
  int n;
  bool full; /* more than TB_DATA_MAX_CLASS_NAMES distinct */
} labelset_t;

typedef struct csv_s {
  const char *path;
  const tb_csv_opts_t *o;
  const tb_data_limits_t *lim;
  bool redact;
  char delim;
  long max_cols, max_rows;
  tb_err_t *err;
  int r; /* the pass's first error; it ends the pass */

  /* Where libcsv is. */
  struct csv_parser p;
  long line;     /* the line being fed, 1-based */
  long rec_line; /* the line where the current record starts */
  long field;    /* fields of the current record so far */
  long records;  /* records completed in this pass */
  bool stop;     /* the pass has seen enough */
  void (*on_field)(struct csv_s *c, char *s, size_t len);
  void (*on_record)(struct csv_s *c);

  /* The probe: the first two records. */
  unsigned char *kind[2]; /* per column */
  long kind_cap;          /* columns the kinds have room for */
  long n_kind[2];         /* fields of each */
  long line0, line1;      /* their lines */
  char (*names)[NAME_SHOWN + 1];
  ref_t *refs; /* sorted by name */
  int n_refs;

  /* After the probe. */
  bool header;
  long n_cols;
  int *map; /* per column: feature position, COL_LABEL or COL_SKIP */
  int label, n_feat;

  /* The scan. */
  long rows;
  bool row_missing, all_numeric;
  long long_label_line; /* a numeric label too long to be a class name, if any */
  labelset_t set;
  const tb_classes_t *classes; /* the names labels are looked up in, or NULL */

  /* The fill. */
  tb_dataset_t *d;
  long row;
  double max_label;
} csv_t;

/* ---- small pieces ------------------------------------------------------- */

static bool is_pad(char ch) {
  return ch == ' ' || ch == '\t';
}

/* The field without spaces and tabs around it (a quoted field keeps them
 * inside its quotes for libcsv; numbers and markers do not care). */
static void trim(char **s, size_t *len) {
  while (*len > 0 && is_pad(**s)) {
    (*s)++;
    (*len)--;
  }
  while (*len > 0 && is_pad((*s)[*len - 1]))
    (*len)--;
}

/* The missing-value markers: empty, "NA", "N/A", "NaN", "nan", "?". Run
 * on every field read, so by length first. */
static bool is_missing(const char *s, size_t len) {
  char *t = (char *)s;
  trim(&t, &len);
  switch (len) {
  case 0:
    return true;
  case 1:
    return t[0] == '?';
  case 2:
    return t[0] == 'N' && t[1] == 'A';
  case 3:
    return memcmp(t, "N/A", 3) == 0 || memcmp(t, "NaN", 3) == 0 || memcmp(t, "nan", 3) == 0;
  default:
    return false;
  }
}

/* Parses a whole field as a number; *ok false when it is not one. The field
 * is left as it was: strtod needs a NUL after the trimmed text, which is put
 * in the byte there (a trailing space, or the NUL libcsv ends every field
 * with: CSV_APPEND_NULL) and taken out again. */
static double to_number(char *s, size_t len, bool *ok) {
  char *end;
  trim(&s, &len);
  *ok = false;
  if (len == 0)
    return 0.0;
  char after = s[len];
  s[len] = '\0';
  /* strtod follows the C locale's decimal point, which is '.' unless the
   * program called setlocale(); the library never does. */
  double v = strtod(s, &end);
  s[len] = after;
  *ok = end == s + len;
  return v;
}

/* "path:LINE: column C" and, with a header and nothing redacted, ` ("name")`. */
static const char *where(csv_t *c, long col, char *buf, size_t len) {
  char q[TB__QUOTE_LEN];
  if (c->header && !c->redact && col < NAMED_COLS && c->names != NULL)
    snprintf(buf, len, "%s:%ld: column %ld (%s)", c->path, c->rec_line, col + 1,
             tb__quote_field(q, c->names[col], strlen(c->names[col])));
  else
    snprintf(buf, len, "%s:%ld: column %ld", c->path, c->rec_line, col + 1);
  return buf;
}

static void fail(csv_t *c, int code) {
  if (c->r == 0)
    c->r = code;
  c->stop = true;
}

/* ---- the driver: libcsv over the buffer, line by line ------------------- */

static void cb_field(void *s, size_t len, void *user) {
  csv_t *c = user;
  if (!c->stop && c->r == 0)
    c->on_field(c, s, len);
  c->field++;
}

static void cb_record(int ch, void *user) {
  csv_t *c = user;
  (void)ch;
  if (!c->stop && c->r == 0)
    c->on_record(c);
  c->records++;
  c->field = 0;
  /* The next record starts on this line or a later one. */
  c->rec_line = c->line;
}

/* Runs one pass over buf: on_field for every field, on_record at the end of
 * every record, until the end, an error (c->r) or c->stop. */
static int run(csv_t *c, const char *buf, size_t len) {
  const char *p = buf, *end = buf + len;
  long skipped = 0;
  c->line = 1;
  c->rec_line = 1;
  c->field = 0;
  c->records = 0;
  c->stop = false;
  c->r = 0;
  /* A UTF-8 byte order mark, as spreadsheet programs write. */
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
    p += 3;
  if (csv_init(&c->p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0)
    return tb_errf(c->err, TB_ENOMEM, "%s: out of memory", c->path);
  csv_set_delim(&c->p, (unsigned char)c->delim);
  while (p < end && !c->stop) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = nl != NULL ? nl + 1 : end;
    if (skipped < c->o->skip_rows) {
      skipped++;
      c->line++;
      p = line_end;
      continue;
    }
    /* A record that did not continue over the line break starts here at
     * the earliest. */
    if (c->field == 0 && !c->p.quoted)
      c->rec_line = c->line;
    while (p < line_end && !c->stop) {
      size_t n = (size_t)(line_end - p) < PIECE ? (size_t)(line_end - p) : PIECE;
      /* Grow the field buffer by what it has, not by libcsv's fixed block. */
      size_t have = csv_get_buffer_size(&c->p);
      csv_set_blk_size(&c->p, have > 128 ? have : 128);
      size_t done = csv_parse(&c->p, p, n, cb_field, cb_record, c);
      if (c->r != 0)
        break;
      if (done < n) {
        int e = csv_error(&c->p);
        if (e == CSV_EPARSE)
          c->r = tb_errf(c->err, TB_EFORMAT,
                         "%s:%ld: malformed quoting: a quote inside an unquoted field, or text "
                         "after a closing quote (RFC 4180: a field with quotes, the delimiter "
                         "or a line break is enclosed in quotes, and its quotes are doubled)",
                         c->path, c->line);
        else
          c->r = tb_errf(c->err, TB_ENOMEM, "%s:%ld: out of memory (%s)", c->path, c->line,
                         csv_strerror(e));
        break;
      }
      if (c->p.entry_pos > FIELD_MAX) {
        c->r = tb_errf(c->err, TB_ERANGE,
                       "%s:%ld: a field longer than %zu bytes (a quote that is never closed?)",
                       c->path, c->rec_line, FIELD_MAX);
        break;
      }
      p += n;
    }
    if (c->r != 0)
      break;
    if (nl != NULL)
      c->line++;
  }
  if (c->r == 0 && !c->stop) {
    /* The file ends: the last record without a line break, or a quoted
     * field that was never closed. */
    if (csv_fini(&c->p, cb_field, cb_record, c) != 0)
      c->r = tb_errf(c->err, TB_EFORMAT,
                     "%s:%ld: a quoted field opened in this record is never closed (the file "
                     "ends inside it)",
                     c->path, c->rec_line);
  }
  csv_free(&c->p);
  return c->r;
}

/* ---- the probe ----------------------------------------------------------- */

static int ref_cmp(const void *a, const void *b) {
  return strcmp(((const ref_t *)a)->name, ((const ref_t *)b)->name);
}

static ref_t *ref_find(csv_t *c, const char *s, size_t len) {
  int lo = 0, hi = c->n_refs - 1;
  if (memchr(s, '\0', len) != NULL)
    return NULL;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    const char *name = c->refs[mid].name;
    int d = strncmp(name, s, len);
    if (d == 0)
      d = name[len] != '\0';
    if (d == 0)
      return &c->refs[mid];
    if (d < 0)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return NULL;
}

static void probe_field(csv_t *c, char *s, size_t len) {
  int k = c->records; /* 0 or 1 */
  long j = c->field;
  if (j >= c->max_cols)
    return; /* counted, refused at the record's end */
  if (j >= c->kind_cap) {
    long cap = c->kind_cap > 0 ? 2 * c->kind_cap : 64;
    if (cap > c->max_cols)
      cap = c->max_cols;
    for (int i = 0; i < 2; i++) {
      unsigned char *nk = realloc(c->kind[i], (size_t)cap);
      if (nk == NULL) {
        fail(c, tb_errf(c->err, TB_ENOMEM, "%s: out of memory", c->path));
        return;
      }
      c->kind[i] = nk;
    }
    c->kind_cap = cap;
  }
  if (k == 0 && j < NAMED_COLS) {
    size_t n = len < NAME_SHOWN ? len : NAME_SHOWN;
    memcpy(c->names[j], s, n);
    c->names[j][n] = '\0';
  }
  if (k == 0 && c->n_refs > 0) {
    ref_t *f = ref_find(c, s, len);
    if (f != NULL && f->col < 0)
      f->col = (int)j;
    else if (f != NULL && f->also < 0)
      f->also = (int)j;
  }
  bool ok;
  if (is_missing(s, len)) {
    c->kind[k][j] = KIND_MISSING;
  } else {
    to_number(s, len, &ok);
    c->kind[k][j] = ok ? KIND_NUMBER : KIND_TEXT;
  }
}

static void probe_record(csv_t *c) {
  int k = c->records;
  c->n_kind[k] = c->field;
  if (k == 0)
    c->line0 = c->rec_line;
  else
    c->line1 = c->rec_line;
  if (c->field > c->max_cols) {
    c->r = tb_errf(c->err, TB_ERANGE,
                   "%s:%ld: %ld columns, more than the %ld a data file may have here", c->path,
                   c->rec_line, c->field, c->max_cols);
    c->stop = true;
    return;
  }
  if (k == 1)
    c->stop = true;
}

/* Is the first record a header? One is when a column has text in it and a
 * number in the next record; the label column (whose class names may be
 * "cat" in one row and "10" in the next) and missing values prove nothing. */
static bool looks_like_header(const csv_t *c) {
  long n = c->n_kind[0] < c->n_kind[1] ? c->n_kind[0] : c->n_kind[1];
  long label = c->o->label_col < 0 ? c->n_kind[0] + c->o->label_col : c->o->label_col;
  if (c->records < 2)
    return false;
  for (long j = 0; j < n; j++)
    if (j != label && c->kind[0][j] == KIND_TEXT && c->kind[1][j] == KIND_NUMBER)
      return true;
  return false;
}

/* A column the job names by index or name, as a 0-based index; `what` says
 * which option in messages. */
static int resolve(csv_t *c, int index, const char *name, const char *what, int *col) {
  if (name != NULL) {
    ref_t key = {.name = name},
          *f = bsearch(&key, c->refs, (size_t)c->n_refs, sizeof(ref_t), ref_cmp);
    if (!c->header)
      return tb_errf(c->err, TB_EINVAL,
                     "%s: %s \"%s\" names a column, but the file has no header row (say header: "
                     "true if its first row is one)",
                     c->path, what, name);
    if (f == NULL || f->col < 0)
      return tb_errf(c->err, TB_EINVAL, "%s:%ld: %s: no column named \"%s\" in the header", c->path,
                     c->line0, what, name);
    if (f->also >= 0)
      return tb_errf(c->err, TB_EINVAL,
                     "%s:%ld: %s: the header names two columns \"%s\" (columns %d and %d)", c->path,
                     c->line0, what, name, f->col + 1, f->also + 1);
    *col = f->col;
    return 0;
  }
  if (index < -c->n_cols || index >= c->n_cols)
    return tb_errf(c->err, TB_ERANGE, "%s:%ld: %s %d is out of range for %ld columns", c->path,
                   c->header ? c->line0 : c->line0, what, index, c->n_cols);
  *col = index < 0 ? (int)(c->n_cols + index) : index;
  return 0;
}

static int make_map(csv_t *c) {
  const tb_csv_opts_t *o = c->o;
  long first = c->header ? c->line1 : c->line0;
  int r;
  if (c->n_cols < 2 && o->n_features == 0)
    return tb_errf(c->err, TB_EFORMAT,
                   "%s:%ld: expected at least 2 columns (a label and a feature), got %ld", c->path,
                   first, c->n_cols);
  if ((c->map = malloc((size_t)c->n_cols * sizeof(int))) == NULL)
    return tb_errf(c->err, TB_ENOMEM, "%s: out of memory", c->path);
  for (long j = 0; j < c->n_cols; j++)
    c->map[j] = COL_SKIP;
  if ((r = resolve(c, o->label_col, o->label_name, "label column", &c->label)) != 0)
    return r;
  c->map[c->label] = COL_LABEL;
  if (o->n_features == 0) {
    c->n_feat = 0;
    for (long j = 0; j < c->n_cols; j++)
      if (j != c->label)
        c->map[j] = c->n_feat++;
    return 0;
  }
  for (int i = 0; i < o->n_features; i++) {
    int col;
    char what[48];
    snprintf(what, sizeof(what), "feature column %d", i);
    if ((r = resolve(c, o->features[i].index, o->features[i].name, what, &col)) != 0)
      return r;
    if (c->map[col] == COL_LABEL)
      return tb_errf(c->err, TB_EINVAL, "%s: %s is column %d, the label column", c->path, what,
                     col + 1);
    if (c->map[col] >= 0)
      return tb_errf(c->err, TB_EINVAL, "%s: %s is column %d, already feature column %d", c->path,
                     what, col + 1, c->map[col]);
    c->map[col] = i;
  }
  c->n_feat = o->n_features;
  return 0;
}

/* ---- the scan ------------------------------------------------------------ */

static uint32_t hash(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

#define SET_SLOTS (2 * TB_DATA_MAX_CLASS_NAMES)

static int set_add(csv_t *c, const char *s, size_t len) {
  labelset_t *st = &c->set;
  if (st->slots == NULL) {
    st->slots = calloc(SET_SLOTS, sizeof(uint32_t));
    st->off = malloc(TB_DATA_MAX_CLASS_NAMES * sizeof(size_t));
    st->len = malloc(TB_DATA_MAX_CLASS_NAMES * sizeof(size_t));
    st->text = malloc((size_t)TB_DATA_MAX_CLASS_NAMES * TB_DATA_MAX_CLASS_NAME);
    if (st->slots == NULL || st->off == NULL || st->len == NULL || st->text == NULL)
      return TB_ENOMEM;
  }
  for (uint32_t i = hash(s, len) % SET_SLOTS;; i = (i + 1) % SET_SLOTS) {
    uint32_t v = st->slots[i];
    if (v == 0) {
      if (st->n == TB_DATA_MAX_CLASS_NAMES) {
        st->full = true;
        return 0;
      }
      memcpy(st->text + st->text_len, s, len);
      st->off[st->n] = st->text_len;
      st->len[st->n] = len;
      st->text_len += len;
      st->slots[i] = (uint32_t)++st->n;
      return 0;
    }
    if (st->len[v - 1] == len && memcmp(st->text + st->off[v - 1], s, len) == 0)
      return 0;
  }
}

static void set_free(labelset_t *st) {
  free(st->slots);
  free(st->off);
  free(st->len);
  free(st->text);
  memset(st, 0, sizeof(*st));
}

static void scan_field(csv_t *c, char *s, size_t len) {
  long j = c->field;
  char w[400];
  if (j >= c->n_cols || (c->header && c->records == 0))
    return; /* refused at the record's end; or the header */
  int role = c->map[j];
  /* The scan reads features only to drop their rows. */
  if (role == COL_SKIP || (role != COL_LABEL && c->o->missing != TB_CSV_MISSING_DROP))
    return;
  if (is_missing(s, len)) {
    if (role == COL_LABEL && c->o->missing != TB_CSV_MISSING_DROP) {
      char q[TB__QUOTE_LEN];
      tb__got_field(q, c->redact, s, len);
      c->r = tb_errf(c->err, TB_EFORMAT, "%s: the label is missing (%s)", where(c, j, w, sizeof(w)),
                     len == 0    ? "an empty field"
                     : c->redact ? "a missing-value marker"
                                 : q + 6);
      fail(c, c->r);
    }
    c->row_missing = true;
    return;
  }
  if (role != COL_LABEL || !c->o->classes || c->classes != NULL)
    return;
  /* A class label: a number, or a name to collect. */
  bool ok;
  bool fits = len <= TB_DATA_MAX_CLASS_NAME && memchr(s, '\0', len) == NULL;
  to_number(s, len, &ok);
  if (!ok)
    c->all_numeric = false;
  if (!fits) {
    /* Not a class name; an error once the labels turn out to be names. */
    if (!ok)
      fail(c, tb_errf(c->err, TB_EFORMAT,
                      "%s: a class label %s (class names are at most %d bytes, without NUL)",
                      where(c, j, w, sizeof(w)),
                      len > TB_DATA_MAX_CLASS_NAME ? "longer than allowed" : "with a NUL byte",
                      TB_DATA_MAX_CLASS_NAME));
    else if (c->long_label_line == 0)
      c->long_label_line = c->rec_line;
    return;
  }
  if (!c->set.full && set_add(c, s, len) != 0)
    fail(c, tb_errf(c->err, TB_ENOMEM, "%s: out of memory", c->path));
}

static void scan_record(csv_t *c) {
  if (c->header && c->records == 0)
    return; /* the header: its width was checked by the probe's caller */
  if (c->field != c->n_cols) {
    if (c->field > c->max_cols)
      fail(c, tb_errf(c->err, TB_ERANGE,
                      "%s:%ld: %ld columns, more than the %ld a data file may have here", c->path,
                      c->rec_line, c->field, c->max_cols));
    else
      fail(c, tb_errf(c->err, TB_EFORMAT, "%s:%ld: expected %ld columns%s, got %ld", c->path,
                      c->rec_line, c->n_cols, c->header ? " (as the header has)" : "", c->field));
    return;
  }
  if (!(c->row_missing && c->o->missing == TB_CSV_MISSING_DROP))
    c->rows++;
  c->row_missing = false;
}

/* ---- the fill ------------------------------------------------------------ */

/* A number to store: 0, or the error (named by where it is, and quoting
 * the field unless redacted) for one that is not a finite float32, or not a
 * class index when class_index. Only a failure formats anything. */
static int check_number(csv_t *c, long j, const char *s, size_t len, double v, bool ok,
                        bool class_index) {
  char w[400], q[TB__QUOTE_LEN];
  if (ok && isfinite(v) && fabs(v) <= FLT_MAX &&
      (!class_index || (v >= 0.0 && v <= MAX_LABEL && v == floor(v))))
    return 0;
  tb__got_field(q, c->redact, s, len);
  where(c, j, w, sizeof(w));
  if (!ok)
    return tb_errf(c->err, TB_EFORMAT, "%s: expected a number%s", w, q);
  if (class_index && !(v >= 0.0 && v <= MAX_LABEL && v == floor(v)))
    return tb_errf(c->err, TB_EFORMAT, "%s: expected a class label (an integer from 0 to %d)%s", w,
                   MAX_LABEL, q);
  if (!isfinite(v))
    return tb_errf(c->err, TB_ENONFINITE, "%s: expected a finite number%s (inf is not accepted)", w,
                   q);
  return tb_errf(c->err, TB_ERANGE, "%s: %s is out of the float32 range", w,
                 c->redact ? "the number" : q + 6);
}

static void fill_label(csv_t *c, long j, char *s, size_t len) {
  char w[400], q[TB__QUOTE_LEN];
  float *y = &c->d->y[c->row];
  if (c->classes != NULL) {
    int k = tb_classes_find(c->classes, s, len);
    if (k < 0) {
      if (c->redact)
        fail(c, tb_errf(c->err, TB_EFORMAT,
                        "%s: the class label is not one of the %d classes of the training data",
                        where(c, j, w, sizeof(w)), c->classes->n));
      else
        fail(c, tb_errf(c->err, TB_EFORMAT,
                        "%s: class %s is not one of the %d classes of the training data",
                        where(c, j, w, sizeof(w)), tb__quote_field(q, s, len), c->classes->n));
      return;
    }
    *y = (float)k;
    return;
  }
  bool ok;
  double v = to_number(s, len, &ok);
  int r = check_number(c, j, s, len, v, ok, c->o->classes != 0);
  if (r != 0) {
    fail(c, r);
    return;
  }
  *y = (float)v;
  if (v > c->max_label)
    c->max_label = v;
}

static void fill_field(csv_t *c, char *s, size_t len) {
  long j = c->field;
  char w[400], q[TB__QUOTE_LEN];
  if (j >= c->n_cols || (c->header && c->records == 0))
    return;
  int role = c->map[j];
  if (role == COL_SKIP)
    return;
  if (c->row >= c->d->n) {
    /* A row past the count is one the scan saw dropped (checked at its
     * end): nothing to write. */
    if (is_missing(s, len))
      c->row_missing = true;
    return;
  }
  if (is_missing(s, len)) {
    if (c->o->missing == TB_CSV_MISSING_DROP) {
      c->row_missing = true;
      return;
    }
    if (role == COL_LABEL || c->o->missing != TB_CSV_MISSING_FILL) {
      tb__got_field(q, c->redact, s, len);
      fail(c, tb_errf(c->err, TB_EFORMAT,
                      "%s: a missing value (%s); fill or drop missing values with the job's "
                      "\"missing\" option (docs/JOB.md)",
                      where(c, j, w, sizeof(w)),
                      len == 0    ? "an empty field"
                      : c->redact ? "a missing-value marker"
                                  : q + 6));
      return;
    }
    c->d->x[(size_t)c->row * c->n_feat + role] = (float)c->o->fill;
    return;
  }
  if (role == COL_LABEL) {
    fill_label(c, j, s, len);
    return;
  }
  bool ok;
  double v = to_number(s, len, &ok);
  int r = check_number(c, j, s, len, v, ok, false);
  if (r != 0) {
    fail(c, r);
    return;
  }
  c->d->x[(size_t)c->row * c->n_feat + role] = (float)v;
}

static void fill_record(csv_t *c) {
  if (c->header && c->records == 0)
    return;
  if (!c->row_missing && c->row >= c->d->n) {
    /* The scan counted the rows of this very text. */
    fail(c, tb_errf(c->err, TB_EFORMAT, "%s:%ld: more rows than counted", c->path, c->rec_line));
    return;
  }
  if (!c->row_missing)
    c->row++;
  c->row_missing = false;
}

/* ---- the load ------------------------------------------------------------ */

static int prepare_refs(csv_t *c) {
  const tb_csv_opts_t *o = c->o;
  int n = (o->label_name != NULL) + 0;
  for (int i = 0; i < o->n_features; i++)
    n += o->features[i].name != NULL;
  if (n == 0)
    return 0;
  if ((c->refs = malloc((size_t)n * sizeof(ref_t))) == NULL)
    return TB_ENOMEM;
  if (o->label_name != NULL)
    c->refs[c->n_refs++] = (ref_t){o->label_name, -1, -1};
  for (int i = 0; i < o->n_features; i++)
    if (o->features[i].name != NULL)
      c->refs[c->n_refs++] = (ref_t){o->features[i].name, -1, -1};
  qsort(c->refs, (size_t)c->n_refs, sizeof(ref_t), ref_cmp);
  return 0;
}

static int check_opts(const char *name, const tb_csv_opts_t *o, tb_err_t *err) {
  if (o->delimiter == '\n' || o->delimiter == '\r' || o->delimiter == '"')
    return tb_errf(err, TB_EINVAL, "%s: the delimiter cannot be a line break or a quote", name);
  if (o->skip_rows < 0)
    return tb_errf(err, TB_EINVAL, "%s: skip_rows must be >= 0, got %d", name, o->skip_rows);
  if (o->header < TB_CSV_HEADER_AUTO || o->header > TB_CSV_HEADER_NO)
    return tb_errf(err, TB_EINVAL, "%s: header must be TB_CSV_HEADER_AUTO, _YES or _NO", name);
  if (o->missing < TB_CSV_MISSING_ERROR || o->missing > TB_CSV_MISSING_DROP ||
      (o->missing == TB_CSV_MISSING_FILL && !(fabs(o->fill) <= FLT_MAX)))
    return tb_errf(err, TB_EINVAL, "%s: missing must be ERROR, DROP or FILL with a finite value",
                   name);
  if (o->n_features < 0 || (o->n_features > 0 && o->features == NULL))
    return tb_errf(err, TB_EINVAL, "%s: %d feature columns without a list", name, o->n_features);
  if (o->n_features > 0 && o->header == TB_CSV_HEADER_NO) {
    for (int i = 0; i < o->n_features; i++)
      if (o->features[i].name != NULL)
        return tb_errf(err, TB_EINVAL,
                       "%s: feature column \"%s\" names a column, but header is false", name,
                       o->features[i].name);
  }
  if (o->label_name != NULL && o->header == TB_CSV_HEADER_NO)
    return tb_errf(err, TB_EINVAL, "%s: label column \"%s\" names a column, but header is false",
                   name, o->label_name);
  return 0;
}

static void csv_release(csv_t *c) {
  free(c->kind[0]);
  free(c->kind[1]);
  free(c->names);
  free(c->refs);
  free(c->map);
  set_free(&c->set);
}

/* The names collected by the scan, sorted. */
static int make_classes(csv_t *c, tb_classes_t **out) {
  labelset_t *st = &c->set;
  *out = NULL;
  const char **names = malloc((size_t)st->n * sizeof(char *));
  if (names == NULL)
    return tb_errf(c->err, TB_ENOMEM, "%s: out of memory", c->path);
  for (int i = 0; i < st->n; i++)
    names[i] = st->text + st->off[i];
  int r = tb_classes_new(names, st->len, st->n, out);
  free(names);
  if (r != 0)
    return tb_errf(c->err, r, "%s: out of memory for the class names", c->path);
  return 0;
}

int tb__csv_parse(const char *name, const char *buf, size_t len, const tb_csv_opts_t *opts,
                  tb_dataset_t **out, tb_err_t *err) {
  static const tb_csv_opts_t zero_opts;
  csv_t c;
  tb_classes_t *own = NULL;
  int r;
  memset(&c, 0, sizeof(c));
  *out = NULL;
  if (opts == NULL)
    opts = &zero_opts;
  if ((r = check_opts(name, opts, err)) != 0)
    return r;
  c.path = name;
  c.o = opts;
  c.lim = opts->limits != NULL ? opts->limits : &tb__default_limits;
  c.redact = c.lim->redact;
  c.delim = opts->delimiter != 0 ? opts->delimiter : ',';
  c.max_rows = c.lim->max_rows > 0 && c.lim->max_rows < INT_MAX ? c.lim->max_rows : INT_MAX;
  c.max_cols =
      c.lim->max_cols > 0 && c.lim->max_cols < INT_MAX ? c.lim->max_cols : TB_DATA_MAX_COLS;
  c.err = err;

  /* The probe. */
  c.names = calloc(NAMED_COLS, sizeof(*c.names));
  if (c.names == NULL || prepare_refs(&c) != 0) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory", name);
    goto out;
  }
  c.on_field = probe_field;
  c.on_record = probe_record;
  if ((r = run(&c, buf, len)) != 0)
    goto out;
  if (c.records == 0) {
    r = tb_errf(err, TB_EFORMAT, "%s: no data rows (the file is empty%s)", name,
                opts->skip_rows > 0 ? " after the skipped rows" : "");
    goto out;
  }
  c.header = opts->header == TB_CSV_HEADER_YES ||
             (opts->header == TB_CSV_HEADER_AUTO && (c.n_refs > 0 || looks_like_header(&c)));
  if (c.header && c.records < 2) {
    r = tb_errf(err, TB_EFORMAT, "%s: no data rows (only the header)", name);
    goto out;
  }
  c.n_cols = c.n_kind[0];
  if ((r = make_map(&c)) != 0)
    goto out;

  /* The scan. */
  c.all_numeric = true;
  c.classes = opts->classes ? opts->class_names : NULL;
  c.on_field = scan_field;
  c.on_record = scan_record;
  if ((r = run(&c, buf, len)) != 0)
    goto out;
  if (c.rows == 0) {
    r = tb_errf(err, TB_EFORMAT, "%s: no data rows (every row has a missing value)", name);
    goto out;
  }
  if (c.rows > c.max_rows) {
    r = tb_errf(err, TB_ERANGE, "%s: %ld data rows, more than the %ld a data file may have here",
                name, c.rows, c.max_rows);
    goto out;
  }
  if ((long long)c.rows * c.n_feat > INT_MAX) {
    r = tb_errf(err, TB_ERANGE, "%s: %ld rows of %d features is too large", name, c.rows, c.n_feat);
    goto out;
  }
  if (opts->classes && c.classes == NULL && !c.all_numeric) {
    if (c.long_label_line > 0) {
      r = tb_errf(err, TB_EFORMAT,
                  "%s:%ld: column %d: a class label longer than %d bytes (the labels are class "
                  "names, not numbers)",
                  name, c.long_label_line, c.label + 1, TB_DATA_MAX_CLASS_NAME);
      goto out;
    }
    if (c.set.full) {
      r = tb_errf(err, TB_ERANGE,
                  "%s: more than %d distinct class labels in column %d: is it the label column? "
                  "(for regression targets, classes: false)",
                  name, TB_DATA_MAX_CLASS_NAMES, c.label + 1);
      goto out;
    }
    if ((r = make_classes(&c, &own)) != 0)
      goto out;
    c.classes = own;
  }

  /* The fill. */
  c.d = tb_dataset_new((int)c.rows, c.n_feat, 1);
  if (c.d == NULL) {
    r = tb_errf(err, TB_ENOMEM, "%s: out of memory for %ld rows", name, c.rows);
    goto out;
  }
  c.on_field = fill_field;
  c.on_record = fill_record;
  if ((r = run(&c, buf, len)) != 0)
    goto out;
  if (opts->classes) {
    if (c.classes != NULL) {
      c.d->n_classes = c.classes->n;
      c.d->classes = own;
      own = NULL;
    } else {
      c.d->n_classes = (int)c.max_label + 1;
    }
  }
  *out = c.d;
  c.d = NULL;
out:
  tb_classes_free(own);
  tb_dataset_free(c.d);
  csv_release(&c);
  return r;
}

int tb_csv_load(const char *path, const tb_csv_opts_t *opts, tb_dataset_t **out, tb_err_t *err) {
  static const tb_csv_opts_t zero_opts;
  char *buf = NULL;
  size_t len;
  int r;
  if (out != NULL)
    *out = NULL;
  if (err != NULL)
    err->msg[0] = '\0';
  if (opts == NULL)
    opts = &zero_opts;
  if (path == NULL || out == NULL)
    return tb_errf(err, TB_EINVAL, "csv: a path and an output are required");
  if ((r = check_opts(path, opts, err)) != 0)
    return r;
  const tb_data_limits_t *lim = opts->limits != NULL ? opts->limits : &tb__default_limits;
  if ((r = tb__read_all(path, lim, &buf, &len, err)) != 0)
    return r;
  r = tb__csv_parse(path, buf, len, opts, out, err);
  free(buf);
  return r;
}

/* ---- peeking ------------------------------------------------------------- */

static void count_field(csv_t *c, char *s, size_t len) {
  (void)c;
  (void)s;
  (void)len;
}

static void count_record(csv_t *c) {
  c->n_cols = c->field;
  c->stop = true;
}

int tb__csv_peek(const char *path, const tb_csv_opts_t *opts, tb__file_info_t *info,
                 tb_err_t *err) {
  static const tb_csv_opts_t zero_opts;
  memset(info, 0, sizeof(*info));
  if (opts == NULL)
    opts = &zero_opts;
  const tb_data_limits_t *lim = opts->limits != NULL ? opts->limits : &tb__default_limits;
  char *buf = malloc(TB__PEEK_BYTES + 1);
  size_t got;
  csv_t c;
  int r;
  if (buf == NULL)
    return tb_errf(err, TB_ENOMEM, "%s: out of memory", path);
  if ((r = check_opts(path, opts, err)) != 0 ||
      (r = tb__peek_start(path, lim, buf, TB__PEEK_BYTES, &got, info, err)) != 0) {
    free(buf);
    return r;
  }
  memset(&c, 0, sizeof(c));
  c.path = path;
  c.o = opts;
  c.lim = lim;
  c.delim = opts->delimiter != 0 ? opts->delimiter : ',';
  c.max_cols = lim->max_cols > 0 && lim->max_cols < INT_MAX ? lim->max_cols : TB_DATA_MAX_COLS;
  c.err = err;
  c.on_field = count_field;
  c.on_record = count_record;
  /* A first record cut off by the peek's end, or badly quoted, still gives
   * a count of what was read; the load reports the problem itself. */
  tb_err_t ignored;
  c.err = &ignored;
  run(&c, buf, got);
  free(buf);
  info->cols = c.n_cols > 0 ? c.n_cols : c.field;
  if (info->cols > c.max_cols)
    return tb_errf(err, TB_ERANGE,
                   "%s:%ld: %lld columns, more than the %ld a data file may have here", path,
                   c.rec_line, (long long)info->cols, c.max_cols);
  return 0;
}

uint64_t tb__csv_scratch(int64_t cols) {
  /* libcsv's field buffer (at most FIELD_MAX plus the piece that crossed
   * it, grown by doubling), the label set (slots, offsets, lengths, text),
   * the probe's kinds and names, and the column map. */
  uint64_t field = 2 * (FIELD_MAX + PIECE);
  uint64_t set = SET_SLOTS * sizeof(uint32_t) + 2 * TB_DATA_MAX_CLASS_NAMES * sizeof(size_t) +
                 (uint64_t)TB_DATA_MAX_CLASS_NAMES * TB_DATA_MAX_CLASS_NAME;
  uint64_t names = NAMED_COLS * (NAME_SHOWN + 1);
  uint64_t c = cols > 0 ? (uint64_t)cols : 1;
  return field + set + names + c * (4 + sizeof(int));
}
