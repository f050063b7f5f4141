/* Tests for data.h: datasets, Keras's tail split, one-hot, the CSV and IDX
 * loaders (plain and gzip, good and malformed), the generators and scaling.
 *
 * Every file a test reads is written by the test into a mkdtemp() directory
 * that the group teardown empties and removes. Malformed inputs are checked
 * for the error code and for the message naming the file and the place. */
/* realpath() and mkfifo() with symlink() are XSI. */
#define _XOPEN_SOURCE 700
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "trainbus/data.h"

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

static char tmpdir[] = "/tmp/tb_test_data_XXXXXX";

static int group_setup(void **state) {
  return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  DIR *dir = opendir(tmpdir);
  struct dirent *e;
  char p[512];
  if (dir == NULL)
    return -1;
  while ((e = readdir(dir)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
    unlink(p);
  }
  closedir(dir);
  return rmdir(tmpdir);
}

static const char *tmp_path(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s/%s", tmpdir, name);
  return buf;
}

static void write_bytes(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

static void write_gz(const char *path, const void *data, size_t len) {
  gzFile gz = gzopen(path, "wb");
  assert_non_null(gz);
  assert_int_equal(gzwrite(gz, data, (unsigned)len), (int)len);
  assert_int_equal(gzclose(gz), Z_OK);
}

static void *read_bytes(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long n;
  assert_non_null(f);
  assert_int_equal(fseek(f, 0, SEEK_END), 0);
  n = ftell(f);
  assert_true(n >= 0);
  rewind(f);
  buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* Fails, printing both, unless msg contains want. */
static void check_msg(const char *msg, const char *want) {
  if (strstr(msg, want) == NULL) {
    print_error("message \"%s\"\n  does not contain \"%s\"\n", msg, want);
    fail();
  }
}

static void assert_floats(const float *got, const float *want, int n) {
  for (int i = 0; i < n; i++) {
    if (fabsf(got[i] - want[i]) > 1e-6f * (1.0f + fabsf(want[i]))) {
      print_error("element %d: got %.9g, want %.9g\n", i, (double)got[i], (double)want[i]);
      fail();
    }
  }
}

static int csv_text(const char *name, const char *text, const tb_csv_opts_t *o, tb_dataset_t **d,
                    tb_err_t *err) {
  char p[512];
  write_bytes(tmp_path(p, sizeof(p), name), text, strlen(text));
  return tb_csv_load(p, o, d, err);
}

/* ---- datasets ---------------------------------------------------------- */

static void test_dataset_new(void **state) {
  tb_dataset_t *d = tb_dataset_new(3, 2, 1);
  assert_non_null(d);
  assert_int_equal(d->n, 3);
  assert_int_equal(d->n_features, 2);
  assert_int_equal(d->n_outputs, 1);
  assert_int_equal(d->n_classes, 0);
  for (int i = 0; i < 6; i++)
    assert_true(d->x[i] == 0.0f);
  for (int i = 0; i < 3; i++)
    assert_true(d->y[i] == 0.0f);
  tb_dataset_free(d);

  d = tb_dataset_new(0, 1, 0); /* empty, unlabelled: still valid pointers */
  assert_non_null(d);
  assert_non_null(d->x);
  assert_non_null(d->y);
  tb_dataset_free(d);

  assert_null(tb_dataset_new(-1, 2, 1));
  assert_null(tb_dataset_new(3, 0, 1));
  assert_null(tb_dataset_new(3, 2, -1));
  assert_null(tb_dataset_new(INT_MAX, 2, 1)); /* n * n_features overflows an int */
  assert_null(tb_dataset_new(65536, 32768, 1));
  assert_null(tb_dataset_new(2, 1, INT_MAX));
  tb_dataset_free(NULL);
}

static tb_dataset_t *counting(int n, int nf) {
  tb_dataset_t *d = tb_dataset_new(n, nf, 1);
  assert_non_null(d);
  for (int i = 0; i < n * nf; i++)
    d->x[i] = (float)i;
  for (int i = 0; i < n; i++)
    d->y[i] = (float)(i % 3);
  d->n_classes = 3;
  return d;
}

static void test_slice(void **state) {
  tb_dataset_t *d = counting(5, 2), *s = NULL;
  assert_int_equal(tb_dataset_slice(d, 1, 3, &s), 0);
  assert_int_equal(s->n, 3);
  assert_int_equal(s->n_features, 2);
  assert_int_equal(s->n_classes, 3);
  assert_floats(s->x, (const float[]){2, 3, 4, 5, 6, 7}, 6);
  assert_floats(s->y, (const float[]){1, 2, 0}, 3);
  s->x[0] = 99.0f; /* a copy: the source is untouched */
  assert_true(d->x[2] == 2.0f);
  tb_dataset_free(s);

  assert_int_equal(tb_dataset_slice(d, 5, 0, &s), 0);
  assert_int_equal(s->n, 0);
  tb_dataset_free(s);

  s = (tb_dataset_t *)1;
  assert_int_equal(tb_dataset_slice(d, 3, 3, &s), TB_EINVAL);
  assert_null(s);
  assert_int_equal(tb_dataset_slice(d, -1, 1, &s), TB_EINVAL);
  assert_int_equal(tb_dataset_slice(d, 6, 0, &s), TB_EINVAL);
  assert_int_equal(tb_dataset_slice(d, 0, -1, &s), TB_EINVAL);
  assert_int_equal(tb_dataset_slice(d, 1, INT_MAX, &s), TB_EINVAL);
  assert_int_equal(tb_dataset_slice(NULL, 0, 1, &s), TB_EINVAL);
  assert_int_equal(tb_dataset_slice(d, 0, 1, NULL), TB_EINVAL);
  tb_dataset_free(d);
}

static void check_split(int n, double fraction, int want_train) {
  tb_dataset_t *d = counting(n, 1), *t = NULL, *v = NULL;
  tb_err_t err = {{0}};
  assert_int_equal(tb_dataset_split_tail(d, fraction, &t, &v, &err), 0);
  assert_int_equal(t->n, want_train);
  assert_int_equal(v->n, n - want_train);
  assert_int_equal(t->n_classes, 3);
  assert_int_equal(v->n_classes, 3);
  for (int i = 0; i < t->n; i++)
    assert_true(t->x[i] == (float)i);
  for (int i = 0; i < v->n; i++) {
    assert_true(v->x[i] == (float)(want_train + i));
    assert_true(v->y[i] == (float)((want_train + i) % 3));
  }
  tb_dataset_free(t);
  tb_dataset_free(v);
  tb_dataset_free(d);
}

static void test_split_tail(void **state) {
  tb_dataset_t *d, *t, *v;
  tb_err_t err = {{0}};
  check_split(10, 0.2, 8);
  check_split(7, 0.5, 3); /* floor(3.5) */
  check_split(5, 0.5, 2); /* floor(2.5): validation gets the larger half */
  check_split(3, 0.4, 1); /* floor(1.8) */
  /* Keras computes floor(90 * (1.0 - 0.3)) in double, and 1.0 - 0.3 is just
   * below 0.7: 62 training rows, not 63. */
  check_split(90, 0.3, 62);
  check_split(100, 0.01, 99);

  d = counting(10, 1);
  t = v = (tb_dataset_t *)1;
  /* floor(10 * (1.0 - 0.9)) is 0 in double: Keras raises, so do we. */
  assert_int_equal(tb_dataset_split_tail(d, 0.9, &t, &v, &err), TB_ERANGE);
  assert_null(t);
  assert_null(v);
  check_msg(err.msg, "10 rows are not enough");
  tb_dataset_free(d);

  d = counting(1, 1);
  assert_int_equal(tb_dataset_split_tail(d, 0.5, &t, &v, &err), TB_ERANGE);
  tb_dataset_free(d);

  d = counting(4, 1);
  assert_int_equal(tb_dataset_split_tail(d, 0.0, &t, &v, &err), TB_EINVAL);
  check_msg(err.msg, "expected a fraction in (0, 1), got 0");
  assert_int_equal(tb_dataset_split_tail(d, 1.0, &t, &v, &err), TB_EINVAL);
  assert_int_equal(tb_dataset_split_tail(d, -0.5, &t, &v, &err), TB_EINVAL);
  assert_int_equal(tb_dataset_split_tail(d, NAN, &t, &v, &err), TB_EINVAL);
  assert_int_equal(tb_dataset_split_tail(d, 0.5, NULL, &v, &err), TB_EINVAL);
  assert_int_equal(tb_dataset_split_tail(NULL, 0.5, &t, &v, NULL), TB_EINVAL);
  tb_dataset_free(d);
}

static void test_one_hot(void **state) {
  tb_dataset_t *d = tb_dataset_new(4, 1, 1);
  tb_err_t err = {{0}};
  float *old;
  assert_non_null(d);
  d->n_classes = 3;
  memcpy(d->y, (const float[]){2, 0, 1, 2}, 4 * sizeof(float));
  assert_int_equal(tb_dataset_one_hot(d, &err), 0);
  assert_int_equal(d->n_outputs, 3);
  assert_int_equal(d->n_classes, 3);
  assert_floats(d->y, (const float[]){0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1}, 12);
  /* Already one-hot: refused, unchanged. */
  assert_int_equal(tb_dataset_one_hot(d, &err), TB_EINVAL);
  assert_int_equal(d->n_outputs, 3);
  tb_dataset_free(d);

  d = tb_dataset_new(3, 1, 1);
  d->n_classes = 2;
  memcpy(d->y, (const float[]){0, 2, 1}, 3 * sizeof(float));
  old = d->y;
  assert_int_equal(tb_dataset_one_hot(d, &err), TB_ERANGE);
  check_msg(err.msg, "row 1: label 2 is not a class index in 0..1");
  assert_ptr_equal(d->y, old);
  assert_int_equal(d->n_outputs, 1);
  d->y[1] = 0.5f;
  assert_int_equal(tb_dataset_one_hot(d, &err), TB_ERANGE);
  d->y[1] = -1.0f;
  assert_int_equal(tb_dataset_one_hot(d, &err), TB_ERANGE);
  d->n_classes = 0; /* regression targets */
  assert_int_equal(tb_dataset_one_hot(d, &err), TB_EINVAL);
  tb_dataset_free(d);
  assert_int_equal(tb_dataset_one_hot(NULL, NULL), TB_EINVAL);
}

/* ---- CSV --------------------------------------------------------------- */

static void test_csv_label_first(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  tb_csv_opts_t o = {.label_col = 0};
  assert_int_equal(csv_text("first.csv", "1,2,3\n0,4.5,-6e1\n", &o, &d, &err), 0);
  assert_int_equal(d->n, 2);
  assert_int_equal(d->n_features, 2);
  assert_int_equal(d->n_outputs, 1);
  assert_int_equal(d->n_classes, 0);
  assert_floats(d->x, (const float[]){2, 3, 4.5f, -60}, 4);
  assert_floats(d->y, (const float[]){1, 0}, 2);
  tb_dataset_free(d);
  /* NULL opts means all zero: ',' and the label in column 0. */
  assert_int_equal(csv_text("first.csv", "7,8\n", NULL, &d, &err), 0);
  assert_floats(d->x, (const float[]){8}, 1);
  assert_floats(d->y, (const float[]){7}, 1);
  tb_dataset_free(d);
}

static void test_csv_label_last_and_middle(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  tb_csv_opts_t o = {.label_col = -1, .classes = 1};
  const char *text = "1,2,3,0\n4,5,6,2\n7,8,9,1\n";
  assert_int_equal(csv_text("last.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n, 3);
  assert_int_equal(d->n_features, 3);
  assert_int_equal(d->n_classes, 3);
  assert_floats(d->x, (const float[]){1, 2, 3, 4, 5, 6, 7, 8, 9}, 9);
  assert_floats(d->y, (const float[]){0, 2, 1}, 3);
  tb_dataset_free(d);

  o.label_col = 2; /* features keep their order around the label */
  o.classes = 0;
  assert_int_equal(csv_text("mid.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n_features, 3);
  assert_floats(d->x, (const float[]){1, 2, 0, 4, 5, 2, 7, 8, 1}, 9);
  assert_floats(d->y, (const float[]){3, 6, 9}, 3);
  tb_dataset_free(d);

  o.label_col = -4; /* the first of 4 columns, counted from the end */
  assert_int_equal(csv_text("neg.csv", text, &o, &d, &err), 0);
  assert_floats(d->y, (const float[]){1, 4, 7}, 3);
  assert_floats(d->x, (const float[]){2, 3, 0}, 3);
  tb_dataset_free(d);
}

static void test_csv_semicolon_header_crlf(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  tb_csv_opts_t o = {.delimiter = ';', .skip_rows = 1, .label_col = -1, .classes = 1};
  /* BOM, a header, CRLF, padding, a blank line inside and trailing ones. */
  const char *text = "\xEF\xBB\xBF"
                     "width;height;class\r\n"
                     " 1.5 ;\t2;0\r\n"
                     "\r\n"
                     "3;4 ; 1\r\n"
                     "5;6;1\r\n"
                     "\r\n"
                     "   \n";
  assert_int_equal(csv_text("semi.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n, 3);
  assert_int_equal(d->n_features, 2);
  assert_int_equal(d->n_classes, 2);
  assert_floats(d->x, (const float[]){1.5f, 2, 3, 4, 5, 6}, 6);
  assert_floats(d->y, (const float[]){0, 1, 1}, 3);
  tb_dataset_free(d);

  /* No final newline, tab-separated. */
  o = (tb_csv_opts_t){.delimiter = '\t', .label_col = 1};
  assert_int_equal(csv_text("tab.tsv", "1\t2\n3\t4", &o, &d, &err), 0);
  assert_int_equal(d->n, 2);
  assert_floats(d->x, (const float[]){1, 3}, 2);
  assert_floats(d->y, (const float[]){2, 4}, 2);
  tb_dataset_free(d);
}

static void test_csv_gz(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  tb_csv_opts_t o = {.skip_rows = 1, .label_col = -1, .classes = 1};
  char p[512];
  /* Big enough to take several reads through zlib. */
  size_t cap = 1 << 20, len = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  len += (size_t)snprintf(text + len, cap - len, "a,b,label\n");
  for (int i = 0; i < 20000; i++)
    len += (size_t)snprintf(text + len, cap - len, "%d,%d.25,%d\r\n", i, -i, i % 4);
  write_gz(tmp_path(p, sizeof(p), "big.csv.gz"), text, len);
  free(text);
  assert_int_equal(tb_csv_load(p, &o, &d, &err), 0);
  assert_int_equal(d->n, 20000);
  assert_int_equal(d->n_features, 2);
  assert_int_equal(d->n_classes, 4);
  assert_true(d->x[2 * 19999] == 19999.0f);
  assert_true(d->x[2 * 19999 + 1] == -19999.25f);
  assert_true(d->y[19998] == 2.0f);
  tb_dataset_free(d);
}

typedef struct csv_case_s {
  const char *text;
  tb_csv_opts_t opts;
  int code;
  const char *want; /* after the file name */
} csv_case_t;

static void test_csv_malformed(void **state) {
  static const csv_case_t cases[] = {
      {"1,2\n3,4\n5,abc\n",
       {.label_col = 0},
       TB_EFORMAT,
       ":3: column 2: expected a number, got \"abc\""},
      {"1,2\n3,1.5x\n", {0}, TB_EFORMAT, ":2: column 2: expected a number, got \"1.5x\""},
      {"1,2\n3, 4 5\n", {0}, TB_EFORMAT, ":2: column 2: expected a number, got \"4 5\""},
      {"1,,2\n", {0}, TB_EFORMAT, ":1: column 2: a missing value (an empty field); fill or"},
      {"1,2,\n", {0}, TB_EFORMAT, ":1: column 3: a missing value (an empty field)"},
      {"1,2\n3,NA\n", {0}, TB_EFORMAT, ":2: column 2: a missing value (\"NA\")"},
      {"1,2\n3, ? \n", {0}, TB_EFORMAT, ":2: column 2: a missing value (\"?\")"},
      {"1,2\n,3\n", {.classes = 1}, TB_EFORMAT, ":2: column 1: the label is missing"},
      {"1,2,3,4,5\n1,2,3,4,5\n1,2,3,4,5\n1,2,3,4\n",
       {0},
       TB_EFORMAT,
       ":4: expected 5 columns, got 4"},
      {"1,2\n1,2,3\n", {0}, TB_EFORMAT, ":2: expected 2 columns, got 3"},
      {"h1,h2\n\n1,2\n\n1;2\n", {.skip_rows = 1}, TB_EFORMAT, ":5: expected 2 columns, got 1"},
      {"1,2\ninf,3\n", {0}, TB_ENONFINITE, ":2: column 1: expected a finite number, got \"inf\""},
      {"1,nan\n", {0}, TB_EFORMAT, ":1: column 2: a missing value (\"nan\")"},
      {"1,-Infinity\n", {0}, TB_ENONFINITE, ":1: column 2: expected a finite number"},
      {"1,1e999\n", {0}, TB_ENONFINITE, ":1: column 2: expected a finite number, got \"1e999\""},
      {"1,1e300\n", {0}, TB_ERANGE, ":1: column 2: \"1e300\" is out of the float32 range"},
      {"1,2,3\n", {.label_col = 3}, TB_ERANGE, ":1: label column 3 is out of range for 3 columns"},
      {"1,2,3\n",
       {.label_col = -4},
       TB_ERANGE,
       ":1: label column -4 is out of range for 3 columns"},
      {"", {0}, TB_EFORMAT, ": no data rows"},
      {"\n\r\n  \n", {0}, TB_EFORMAT, ": no data rows"},
      {"a,b\n", {.skip_rows = 1}, TB_EFORMAT, ": no data rows (the file is empty after the"},
      {"a,b\n1,2\n", {.skip_rows = 5}, TB_EFORMAT, ": no data rows"},
      {"1\n2\n", {0}, TB_EFORMAT, ":1: expected at least 2 columns (a label and a feature), got 1"},
      {"0,1\n1.5,2\n",
       {.classes = 1},
       TB_EFORMAT,
       ":2: column 1: expected a class label (an integer from 0 to 16777215), got \"1.5\""},
      {"1,2,0\n3,4,-1\n",
       {.label_col = -1, .classes = 1},
       TB_EFORMAT,
       ":2: column 3: expected a class label"},
      {"1,2,0\n3,4,1e9\n",
       {.label_col = -1, .classes = 1},
       TB_EFORMAT,
       ":2: column 3: expected a class label"},
      /* Binary junk is quoted readably (escaped), clipped, never printed raw. */
      {"1,\x01\xff\x7fzz\n",
       {0},
       TB_EFORMAT,
       ":1: column 2: expected a number, got \"\\x01\\xff\\x7fzz\""},
      /* A quoted field is its text, its quotes and doubled quotes undone. */
      {"5.1,\"setosa\"\n", {0}, TB_EFORMAT, ":1: column 2: expected a number, got \"setosa\""},
      {"5.1,\"say \"\"hi\"\"\"\n",
       {0},
       TB_EFORMAT,
       ":1: column 2: expected a number, got \"say \\\"hi\\\"\""},
      /* RFC 4180's quoting, strictly: a quote inside an unquoted field, text
       * after a closing quote, a quoted field never closed. */
      {"1,2\n3,4\"5\n", {0}, TB_EFORMAT, ":2: malformed quoting: a quote inside an unquoted field"},
      {"1,2\n3,\"4\"5\n", {0}, TB_EFORMAT, ":2: malformed quoting"},
      {"1,2\n3,\"4\n5,6\n",
       {0},
       TB_EFORMAT,
       ":2: a quoted field opened in this record is never closed"},
      {"1,a\\b\tc\n", {0}, TB_EFORMAT, ":1: column 2: expected a number, got \"a\\\\b\\x09c\""},
      {"1,0123456789012345678901234567890123456789012345678901234567890123456789x\n",
       {0},
       TB_EFORMAT,
       ":1: column 2: expected a number, got \"0123456789012345678901234567890123456789...\""},
  };
  char p[512];
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tb_dataset_t *d = (tb_dataset_t *)1;
    tb_err_t err = {{0}};
    char want[1100];
    int r = csv_text("bad.csv", cases[i].text, &cases[i].opts, &d, &err);
    if (r != cases[i].code) {
      print_error("case %zu: got %s (%s), want %s\n", i, tb_err_name(r), err.msg,
                  tb_err_name(cases[i].code));
      fail();
    }
    assert_null(d);
    snprintf(want, sizeof(want), "%s%s", tmp_path(p, sizeof(p), "bad.csv"), cases[i].want);
    check_msg(err.msg, want);
  }
}

static void test_csv_nul_byte(void **state) {
  /* A NUL inside a field ends strtod early; the field is still rejected. */
  static const char text[] = "1,2\n3,4\x00"
                             "5\n";
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  char p[512];
  write_bytes(tmp_path(p, sizeof(p), "nul.csv"), text, sizeof(text) - 1);
  assert_int_equal(tb_csv_load(p, NULL, &d, &err), TB_EFORMAT);
  check_msg(err.msg, ":2: column 2: expected a number, got \"4\\x005\"");
  assert_null(d);
}

static void test_csv_every_prefix(void **state) {
  /* Any cut of a valid file loads or fails cleanly (ASan checks the rest). */
  static const char text[] = "x;y;label\r\n1.5;-2e3;1\r\n\r\n3;4;0\r\n";
  tb_csv_opts_t o = {.delimiter = ';', .skip_rows = 1, .label_col = -1, .classes = 1};
  char p[512];
  tmp_path(p, sizeof(p), "prefix.csv");
  for (size_t n = 0; n <= sizeof(text) - 1; n++) {
    tb_dataset_t *d = NULL;
    tb_err_t err = {{0}};
    int r;
    write_bytes(p, text, n);
    r = tb_csv_load(p, &o, &d, &err);
    if (r == 0) {
      /* A cut in the middle of "-2e3" may leave "-", a class name. */
      assert_true(d->n >= 1);
      assert_true(d->n_features == 2 || (d->n_features == 1 && d->classes != NULL));
      tb_dataset_free(d);
    } else {
      assert_null(d);
      assert_true(err.msg[0] != '\0');
    }
  }
}

static void test_csv_files(void **state) {
  tb_dataset_t *d = (tb_dataset_t *)1;
  tb_err_t err = {{0}};
  char p[512], want[1100];
  tb_csv_opts_t o = {0};

  tmp_path(p, sizeof(p), "missing.csv");
  assert_int_equal(tb_csv_load(p, NULL, &d, &err), -ENOENT);
  assert_null(d);
  snprintf(want, sizeof(want), "%s: cannot open: %s", p, strerror(ENOENT));
  check_msg(err.msg, want);

  tmp_path(p, sizeof(p), "missing.csv.gz");
  assert_int_equal(tb_csv_load(p, NULL, &d, &err), -ENOENT);
  check_msg(err.msg, "missing.csv.gz: cannot open: ");

  /* A directory opens but cannot be read. */
  assert_int_equal(tb_csv_load(tmpdir, NULL, &d, &err), -EISDIR);
  snprintf(want, sizeof(want), "%s: cannot read: %s", tmpdir, strerror(EISDIR));
  check_msg(err.msg, want);

  /* Present but unreadable (root reads anything, so only as a user). */
  if (geteuid() != 0) {
    tmp_path(p, sizeof(p), "locked.csv");
    write_bytes(p, "1,2\n", 4);
    assert_int_equal(chmod(p, 0), 0);
    assert_int_equal(tb_csv_load(p, NULL, &d, &err), -EACCES);
    snprintf(want, sizeof(want), "%s: cannot open: %s", p, strerror(EACCES));
    check_msg(err.msg, want);
  }

  assert_int_equal(tb_csv_load(NULL, NULL, &d, &err), TB_EINVAL);
  assert_int_equal(tb_csv_load(p, NULL, NULL, &err), TB_EINVAL);
  o.delimiter = '\n';
  assert_int_equal(tb_csv_load(p, &o, &d, &err), TB_EINVAL);
  o.delimiter = 0;
  o.skip_rows = -1;
  assert_int_equal(tb_csv_load(p, &o, &d, &err), TB_EINVAL);
  check_msg(err.msg, "skip_rows must be >= 0, got -1");
}

static void test_csv_gz_corrupt(void **state) {
  tb_dataset_t *d = (tb_dataset_t *)1;
  tb_err_t err = {{0}};
  char p[512], q[512];
  char text[4096];
  unsigned char *gz;
  size_t len = 0, gz_len;
  for (int i = 0; i < 200; i++)
    len += (size_t)snprintf(text + len, sizeof(text) - len, "%d,%d\n", i % 2, i * 7);
  write_gz(tmp_path(p, sizeof(p), "good.csv.gz"), text, len);
  assert_int_equal(tb_csv_load(p, NULL, &d, &err), 0);
  assert_int_equal(d->n, 200);
  tb_dataset_free(d);
  gz = read_bytes(p, &gz_len);
  assert_true(gz_len > 40);

  /* Garbage in the middle of the deflate stream. */
  {
    unsigned char *bad = malloc(gz_len);
    assert_non_null(bad);
    memcpy(bad, gz, gz_len);
    for (size_t i = 12; i < gz_len - 8; i += 3)
      bad[i] ^= 0xA5;
    write_bytes(tmp_path(q, sizeof(q), "corrupt.csv.gz"), bad, gz_len);
    free(bad);
  }
  assert_int_equal(tb_csv_load(q, NULL, &d, &err), TB_EFORMAT);
  assert_null(d);
  check_msg(err.msg, "corrupt.csv.gz: corrupt gzip data (");

  /* A wrong CRC in the trailer. */
  gz[gz_len - 8] ^= 0xFF;
  write_bytes(tmp_path(q, sizeof(q), "crc.csv.gz"), gz, gz_len);
  gz[gz_len - 8] ^= 0xFF;
  assert_int_equal(tb_csv_load(q, NULL, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "crc.csv.gz: corrupt gzip data (");

  /* Cut in half. */
  write_bytes(tmp_path(q, sizeof(q), "half.csv.gz"), gz, gz_len / 2);
  assert_int_equal(tb_csv_load(q, NULL, &d, &err), TB_ETRUNCATED);
  check_msg(err.msg, "half.csv.gz: truncated gzip data");

  /* Plain text under a .gz name. */
  write_bytes(tmp_path(q, sizeof(q), "plain.csv.gz"), text, len);
  assert_int_equal(tb_csv_load(q, NULL, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "plain.csv.gz: not in gzip format");

  /* Every prefix fails or loads cleanly. */
  for (size_t n = 0; n < gz_len; n += 7) {
    int r;
    write_bytes(q, gz, n);
    r = tb_csv_load(q, NULL, &d, &err);
    assert_true(r != 0);
    assert_null(d);
  }
  free(gz);
}

/* ---- IDX --------------------------------------------------------------- */

/* Writes an IDX file of unsigned bytes: the dims, then `data` (n_data bytes,
 * which may disagree with the dims on purpose). */
static void write_idx(const char *path, int gz, unsigned ndims, const uint32_t *dims,
                      const unsigned char *data, size_t n_data) {
  size_t len = 4 + 4 * (size_t)ndims + n_data;
  unsigned char *b = malloc(len);
  assert_non_null(b);
  b[0] = 0;
  b[1] = 0;
  b[2] = 0x08;
  b[3] = (unsigned char)ndims;
  for (unsigned k = 0; k < ndims; k++) {
    b[4 + 4 * k] = (unsigned char)(dims[k] >> 24);
    b[5 + 4 * k] = (unsigned char)(dims[k] >> 16);
    b[6 + 4 * k] = (unsigned char)(dims[k] >> 8);
    b[7 + 4 * k] = (unsigned char)dims[k];
  }
  if (n_data > 0)
    memcpy(b + 4 + 4 * ndims, data, n_data);
  if (gz)
    write_gz(path, b, len);
  else
    write_bytes(path, b, len);
  free(b);
}

static const unsigned char pixels[12] = {0, 255, 1, 2, 3, 4, 5, 6, 128, 9, 10, 11};
static const unsigned char labels3[3] = {2, 0, 1};

static void write_small_idx(const char *images, const char *labels, int gz) {
  write_idx(images, gz, 3, (const uint32_t[]){3, 2, 2}, pixels, 12);
  write_idx(labels, gz, 1, (const uint32_t[]){3}, labels3, 3);
}

static void check_small(const tb_dataset_t *d) {
  assert_int_equal(d->n, 3);
  assert_int_equal(d->n_features, 4);
  assert_int_equal(d->n_outputs, 1);
  assert_int_equal(d->n_classes, 3);
  for (int i = 0; i < 12; i++)
    assert_true(d->x[i] == (float)pixels[i]);
  assert_floats(d->y, (const float[]){2, 0, 1}, 3);
}

static void test_idx_good(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  char im[512], lb[512], img[512], lbg[512];
  write_small_idx(tmp_path(im, sizeof(im), "img.idx"), tmp_path(lb, sizeof(lb), "lbl.idx"), 0);
  assert_int_equal(tb_idx_load(im, lb, &d, &err), 0);
  check_small(d);
  tb_dataset_free(d);

  write_small_idx(tmp_path(img, sizeof(img), "img.idx.gz"),
                  tmp_path(lbg, sizeof(lbg), "lbl.idx.gz"), 1);
  assert_int_equal(tb_idx_load(img, lbg, &d, &err), 0);
  check_small(d);
  tb_dataset_free(d);
  assert_int_equal(tb_idx_load(im, lbg, &d, &err), 0); /* mixed */
  check_small(d);
  tb_dataset_free(d);

  /* Without labels: no y. */
  assert_int_equal(tb_idx_load(img, NULL, &d, &err), 0);
  assert_int_equal(d->n, 3);
  assert_int_equal(d->n_outputs, 0);
  assert_int_equal(d->n_classes, 0);
  tb_dataset_free(d);

  /* Two dimensions (vectors) and four (e.g. colour images) flatten too. */
  write_idx(im, 0, 2, (const uint32_t[]){2, 6}, pixels, 12);
  assert_int_equal(tb_idx_load(im, NULL, &d, &err), 0);
  assert_int_equal(d->n, 2);
  assert_int_equal(d->n_features, 6);
  assert_true(d->x[11] == 11.0f);
  tb_dataset_free(d);
  write_idx(im, 0, 4, (const uint32_t[]){1, 2, 2, 3}, pixels, 12);
  assert_int_equal(tb_idx_load(im, NULL, &d, &err), 0);
  assert_int_equal(d->n_features, 12);
  tb_dataset_free(d);
}

static void idx_fails(const char *images, const char *labels, int code, const char *want) {
  tb_dataset_t *d = (tb_dataset_t *)1;
  tb_err_t err = {{0}};
  int r = tb_idx_load(images, labels, &d, &err);
  if (r != code) {
    print_error("got %s (%s), want %s\n", tb_err_name(r), err.msg, tb_err_name(code));
    fail();
  }
  assert_null(d);
  check_msg(err.msg, want);
}

static void test_idx_malformed(void **state) {
  char im[512], lb[512], p[512], want[1100];
  unsigned char raw[64] = {0};
  write_small_idx(tmp_path(im, sizeof(im), "ok-img.idx"), tmp_path(lb, sizeof(lb), "ok-lbl.idx"),
                  0);

  /* Magic written little-endian. */
  memcpy(raw, "\x03\x08\x00\x00", 4);
  write_bytes(tmp_path(p, sizeof(p), "le.idx"), raw, 20);
  snprintf(want, sizeof(want),
           "%s: bad magic 0x03080000: expected an IDX images file (0x00000803, unsigned bytes)", p);
  idx_fails(p, lb, TB_EFORMAT, want);
  /* Images and labels swapped. */
  idx_fails(lb, im, TB_EFORMAT, "ok-lbl.idx: bad magic 0x00000801: expected an IDX images");
  write_idx(p, 0, 3, (const uint32_t[]){3, 2, 2}, pixels, 12);
  idx_fails(p, p, TB_EFORMAT, "le.idx: bad magic 0x00000803: expected an IDX labels file");
  /* Floats (type 0x0D) are not supported. */
  memcpy(raw, "\x00\x00\x0D\x03", 4);
  write_bytes(p, raw, 16);
  idx_fails(p, lb, TB_EFORMAT, "bad magic 0x00000D03: element type 0x0D is not supported");

  /* Truncated pixels, the message from the issue. */
  write_idx(p, 0, 3, (const uint32_t[]){60000, 28, 28}, pixels, 12);
  snprintf(want, sizeof(want),
           "%s: truncated: header says 60000 images of 28x28 but the file holds 12 bytes of "
           "pixel data",
           p);
  idx_fails(p, lb, TB_ETRUNCATED, want);
  tmp_path(p, sizeof(p), "short.idx.gz");
  write_idx(p, 1, 3, (const uint32_t[]){4, 2, 2}, pixels, 12);
  idx_fails(p, lb, TB_ETRUNCATED, "short.idx.gz: truncated: header says 4 images of 2x2");
  /* Truncated header. */
  tmp_path(p, sizeof(p), "hdr.idx");
  write_bytes(p, "\x00\x00\x08\x03\x00\x00\x00\x03\x00", 9);
  idx_fails(p, lb, TB_ETRUNCATED, "hdr.idx: truncated: the header has 3 dimensions");
  write_bytes(p, "\x00\x00", 2);
  idx_fails(p, lb, TB_ETRUNCATED, "hdr.idx: truncated: 2 bytes");
  /* Extra bytes after the data. */
  write_idx(p, 0, 3, (const uint32_t[]){2, 2, 2}, pixels, 12);
  idx_fails(p, lb, TB_EFORMAT,
            "hdr.idx: trailing bytes: header says 2 images of 2x2 but the "
            "file holds 12 bytes");
  /* Nothing in it. */
  write_idx(p, 0, 3, (const uint32_t[]){0, 28, 28}, NULL, 0);
  idx_fails(p, lb, TB_EFORMAT, "hdr.idx: header says 0 images");
  write_idx(p, 0, 3, (const uint32_t[]){5, 28, 0}, NULL, 0);
  idx_fails(p, lb, TB_EFORMAT, "hdr.idx: header says each image is 28x0");
  /* Sizes whose product overflows: refused before any allocation. */
  write_idx(p, 0, 3, (const uint32_t[]){0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, pixels, 12);
  idx_fails(p, lb, TB_ERANGE, "header says 4294967295 images of 4294967295x4294967295");
  write_idx(p, 0, 3, (const uint32_t[]){70000, 200, 200}, pixels, 12);
  idx_fails(p, lb, TB_ERANGE, "header says 70000 images of 200x200: more than");

  /* Label problems. */
  write_idx(p, 0, 1, (const uint32_t[]){2}, labels3, 2);
  snprintf(want, sizeof(want), "%s holds 2 labels but %s holds 3 images", p, im);
  idx_fails(im, p, TB_ESHAPE, want);
  write_idx(p, 0, 1, (const uint32_t[]){3}, labels3, 2);
  idx_fails(im, p, TB_ETRUNCATED, "truncated: header says 3 labels but the file holds 2 bytes");
  tmp_path(p, sizeof(p), "nope.idx");
  snprintf(want, sizeof(want), "%s: cannot open: %s", p, strerror(ENOENT));
  idx_fails(im, p, -ENOENT, want);
  idx_fails(p, lb, -ENOENT, want);
  idx_fails(NULL, lb, TB_EINVAL, "required");
}

static void test_idx_every_prefix(void **state) {
  char p[512], q[512];
  unsigned char *b;
  size_t len;
  write_idx(tmp_path(p, sizeof(p), "full.idx"), 0, 3, (const uint32_t[]){3, 2, 2}, pixels, 12);
  b = read_bytes(p, &len);
  tmp_path(q, sizeof(q), "cut.idx");
  for (size_t n = 0; n < len; n++) {
    tb_dataset_t *d = (tb_dataset_t *)1;
    tb_err_t err = {{0}};
    write_bytes(q, b, n);
    assert_int_equal(tb_idx_load(q, NULL, &d, &err), TB_ETRUNCATED);
    assert_null(d);
  }
  free(b);
}

static void test_fashion_mnist(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  int counts[10] = {0};
  float lo = 255.0f, hi = 0.0f;
  if (access(FASHION_DIR "/train-images-idx3-ubyte.gz", R_OK) != 0)
    skip();
  assert_int_equal(tb_idx_load(FASHION_DIR "/train-images-idx3-ubyte.gz",
                               FASHION_DIR "/train-labels-idx1-ubyte.gz", &d, &err),
                   0);
  assert_int_equal(d->n, 60000);
  assert_int_equal(d->n_features, 784);
  assert_int_equal(d->n_outputs, 1);
  assert_int_equal(d->n_classes, 10);
  for (int i = 0; i < d->n; i++) {
    float c = d->y[i];
    assert_true(c >= 0.0f && c <= 9.0f && c == floorf(c));
    counts[(int)c]++;
  }
  for (int k = 0; k < 10; k++)
    assert_int_equal(counts[k], 6000); /* Fashion-MNIST's training set is balanced */
  for (long i = 0; i < 60000L * 784; i++) {
    lo = d->x[i] < lo ? d->x[i] : lo;
    hi = d->x[i] > hi ? d->x[i] : hi;
  }
  assert_true(lo == 0.0f);
  assert_true(hi == 255.0f);
  tb_dataset_free(d);

  if (access(FASHION_DIR "/t10k-images-idx3-ubyte.gz", R_OK) == 0) {
    assert_int_equal(tb_idx_load(FASHION_DIR "/t10k-images-idx3-ubyte.gz",
                                 FASHION_DIR "/t10k-labels-idx1-ubyte.gz", &d, &err),
                     0);
    assert_int_equal(d->n, 10000);
    assert_int_equal(d->n_features, 784);
    assert_int_equal(d->n_classes, 10);
    tb_dataset_free(d);
    /* Train images with test labels: the counts disagree. */
    idx_fails(FASHION_DIR "/train-images-idx3-ubyte.gz", FASHION_DIR "/t10k-labels-idx1-ubyte.gz",
              TB_ESHAPE, "holds 10000 labels but");
  }
}

/* Random inputs, drawn from a seeded tb_rng_t so a failure replays: each
 * load succeeds or fails with a message, and ASan watches every byte read.
 * Half the CSV files are rows of plausible tokens (so many load), half are
 * raw bytes; IDX files get small random dimensions and a body whose length
 * is usually right, sometimes off by a little. */
static size_t random_csv(tb_rng_t *rng, char *buf, size_t cap) {
  static const char *tokens[] = {"0", "1", "2", "-3.5", "1e3", " 4 ", "7", "abc", "", "inf", "1.5"};
  static const char bytes[] = "0123456789.,;-+eE \t\r\n\nxnaif\"\x00\xff";
  size_t len = 0;
  if (tb_rng_below(rng, 2) == 0) {
    len = tb_rng_below(rng, (uint32_t)cap);
    for (size_t i = 0; i < len; i++)
      buf[i] = bytes[tb_rng_below(rng, sizeof(bytes) - 1)];
    return len;
  }
  int rows = (int)tb_rng_below(rng, 6), cols = 1 + (int)tb_rng_below(rng, 4);
  for (int i = 0; i < rows; i++) {
    int n = tb_rng_below(rng, 8) == 0 ? cols + 1 : cols;
    for (int j = 0; j < n; j++) {
      /* Mostly the first, well-formed tokens. */
      uint32_t t = tb_rng_below(rng, 10) == 0 ? tb_rng_below(rng, 11) : tb_rng_below(rng, 7);
      len += (size_t)snprintf(buf + len, cap - len, "%s%s", j > 0 ? "," : "", tokens[t]);
    }
    len += (size_t)snprintf(buf + len, cap - len, tb_rng_below(rng, 2) ? "\r\n" : "\n");
  }
  return len;
}

static size_t random_idx(tb_rng_t *rng, unsigned char *buf, size_t cap) {
  unsigned nd = 1 + tb_rng_below(rng, 3);
  uint32_t dims[3];
  size_t body = 1, len;
  buf[0] = buf[1] = 0;
  buf[2] = tb_rng_below(rng, 10) == 0 ? 0x0D : 0x08;
  buf[3] = (unsigned char)nd;
  for (unsigned k = 0; k < nd; k++) {
    dims[k] = tb_rng_below(rng, 20) == 0 ? (uint32_t)tb_rng_u64(rng) : tb_rng_below(rng, 5);
    buf[4 + 4 * k] = (unsigned char)(dims[k] >> 24);
    buf[5 + 4 * k] = (unsigned char)(dims[k] >> 16);
    buf[6 + 4 * k] = (unsigned char)(dims[k] >> 8);
    buf[7 + 4 * k] = (unsigned char)dims[k];
    body = dims[k] < 64 && body < 64 ? body * dims[k] : 9999;
  }
  if (tb_rng_below(rng, 4) == 0)
    body += tb_rng_below(rng, 3) - 1u; /* one short, exact, or one over */
  len = 4 + 4 * nd + body;
  if (len > cap || tb_rng_below(rng, 16) == 0)
    len = tb_rng_below(rng, (uint32_t)cap);
  for (size_t i = 4 + 4 * nd; i < len; i++)
    buf[i] = (unsigned char)tb_rng_u64(rng);
  return len;
}

static void test_random_inputs(void **state) {
  char csv[600];
  unsigned char idx[300];
  char p[512], q[512];
  int csv_ok = 0, idx_ok = 0;
  tb_rng_t rng;
  tb_rng_seed(&rng, 2024);
  tmp_path(p, sizeof(p), "rand.csv");
  tmp_path(q, sizeof(q), "rand.idx");
  for (int it = 0; it < 2000; it++) {
    tb_csv_opts_t o = {.skip_rows = (int)tb_rng_below(&rng, 2),
                       .label_col = (int)tb_rng_below(&rng, 5) - 2,
                       .classes = (int)tb_rng_below(&rng, 2)};
    tb_dataset_t *d = (tb_dataset_t *)1;
    tb_err_t err = {{0}};
    size_t len = random_csv(&rng, csv, sizeof(csv));
    int r;
    write_bytes(p, csv, len);
    r = tb_csv_load(p, &o, &d, &err);
    if (r == 0) {
      assert_true(d->n >= 1 && d->n_features >= 1);
      csv_ok++;
      tb_dataset_free(d);
    } else {
      assert_null(d);
      assert_true(err.msg[0] != '\0');
    }

    len = random_idx(&rng, idx, sizeof(idx));
    write_bytes(q, idx, len);
    d = (tb_dataset_t *)1;
    r = tb_idx_load(q, NULL, &d, &err);
    if (r == 0) {
      assert_int_equal(4 + 4 * (size_t)idx[3] + (size_t)d->n * d->n_features, len);
      for (int i = 0; i < d->n * d->n_features; i++)
        assert_true(d->x[i] == (float)idx[4 + 4 * idx[3] + i]);
      idx_ok++;
      tb_dataset_free(d);
    } else {
      assert_null(d);
      assert_true(err.msg[0] != '\0');
    }
  }
  /* Both paths were taken often enough to mean something. */
  assert_true(csv_ok > 100 && csv_ok < 1900);
  assert_true(idx_ok > 100 && idx_ok < 1900);
}

/* ---- generators -------------------------------------------------------- */

static void test_gen_seed(void **state) {
  tb_dataset_t *d = NULL;
  assert_int_equal(tb_gen_seed(&d), 0);
  assert_int_equal(d->n, 4);
  assert_int_equal(d->n_features, 1);
  assert_int_equal(d->n_outputs, 1);
  assert_int_equal(d->n_classes, 2);
  assert_memory_equal(d->x, ((const float[]){1, 2, 3, 4}), 4 * sizeof(float));
  assert_memory_equal(d->y, ((const float[]){0, 0, 1, 1}), 4 * sizeof(float));
  tb_dataset_free(d);
  assert_int_equal(tb_gen_seed(NULL), TB_EINVAL);
}

static int same_data(const tb_dataset_t *a, const tb_dataset_t *b) {
  return a->n == b->n && a->n_features == b->n_features &&
         memcmp(a->x, b->x, (size_t)a->n * a->n_features * sizeof(float)) == 0 &&
         memcmp(a->y, b->y, (size_t)a->n * a->n_outputs * sizeof(float)) == 0;
}

static void test_gen_spirals(void **state) {
  tb_dataset_t *a = NULL, *b = NULL, *c = NULL, *z = NULL;
  int n1 = 0;
  assert_int_equal(tb_gen_spirals(100, 0.2, 42, &a), 0);
  assert_int_equal(a->n, 200);
  assert_int_equal(a->n_features, 2);
  assert_int_equal(a->n_outputs, 1);
  assert_int_equal(a->n_classes, 2);
  for (int i = 0; i < a->n; i++) {
    assert_true(a->y[i] == (float)(i % 2)); /* alternating */
    n1 += a->y[i] == 1.0f;
    assert_true(isfinite(a->x[2 * i]) && isfinite(a->x[2 * i + 1]));
  }
  assert_int_equal(n1, 100);
  /* A tail split (Keras's validation_split) gets both classes equally. */
  {
    tb_dataset_t *t, *v;
    int v1 = 0;
    assert_int_equal(tb_dataset_split_tail(a, 0.2, &t, &v, NULL), 0);
    for (int i = 0; i < v->n; i++)
      v1 += v->y[i] == 1.0f;
    assert_int_equal(v->n, 40);
    assert_int_equal(v1, 20);
    tb_dataset_free(t);
    tb_dataset_free(v);
  }
  assert_int_equal(tb_gen_spirals(100, 0.2, 42, &b), 0);
  assert_true(same_data(a, b)); /* bitwise, same seed */
  assert_int_equal(tb_gen_spirals(100, 0.2, 43, &c), 0);
  assert_false(same_data(a, c));

  /* Without noise: the radii are i / (N - 1) in a shuffled order (each once),
   * and class 1 is class 0 turned by pi. */
  assert_int_equal(tb_gen_spirals(50, 0.0, 7, &z), 0);
  int seen[50] = {0}, in_order = 0;
  for (int i = 0; i < 50; i++) {
    const float *p0 = z->x + 4 * i, *p1 = p0 + 2;
    double r = hypot(p0[0], p0[1]);
    int k = (int)lround(r * 49.0);
    assert_true(k >= 0 && k < 50 && fabs(r - k / 49.0) < 1e-6);
    seen[k]++;
    in_order += k == i;
    assert_true(fabs(p1[0] + p0[0]) < 1e-6 && fabs(p1[1] + p0[1]) < 1e-6);
    if (k > 0) /* angle 4 r: x = r sin t, y = r cos t */
      assert_true(fabs(atan2(p0[0], p0[1]) - atan2(sin(4 * r), cos(4 * r))) < 1e-5);
  }
  for (int k = 0; k < 50; k++)
    assert_int_equal(seen[k], 1);
  assert_true(in_order < 10); /* shuffled, so a tail split is not the outer end */
  tb_dataset_free(z);
  assert_int_equal(tb_gen_spirals(1, 0.0, 7, &z), 0);
  assert_int_equal(z->n, 2);
  tb_dataset_free(z);

  z = (tb_dataset_t *)1;
  assert_int_equal(tb_gen_spirals(0, 0.1, 1, &z), TB_EINVAL);
  assert_null(z);
  assert_int_equal(tb_gen_spirals(10, -1.0, 1, &z), TB_EINVAL);
  assert_int_equal(tb_gen_spirals(10, NAN, 1, &z), TB_EINVAL);
  assert_int_equal(tb_gen_spirals(INT_MAX, 0.1, 1, &z), TB_EINVAL);
  tb_dataset_free(a);
  tb_dataset_free(b);
  tb_dataset_free(c);
}

static void test_gen_blobs(void **state) {
  tb_dataset_t *a = NULL, *b = NULL, *c = NULL, *z = NULL;
  int counts[3] = {0};
  double sum[3][2] = {{0}};
  assert_int_equal(tb_gen_blobs(3001, 3, 2, 0.5, 9, &a), 0);
  assert_int_equal(a->n, 3001);
  assert_int_equal(a->n_features, 2);
  assert_int_equal(a->n_classes, 3);
  for (int i = 0; i < a->n; i++) {
    int k = (int)a->y[i];
    assert_int_equal(k, i % 3);
    counts[k]++;
    sum[k][0] += a->x[2 * i];
    sum[k][1] += a->x[2 * i + 1];
  }
  assert_int_equal(counts[0], 1001);
  assert_int_equal(counts[1], 1000);
  assert_int_equal(counts[2], 1000);
  /* Class means sit inside [-10, 10] and match the noiseless centers. */
  assert_int_equal(tb_gen_blobs(3, 3, 2, 0.0, 9, &z), 0);
  for (int k = 0; k < 3; k++)
    for (int j = 0; j < 2; j++) {
      double center = z->x[2 * k + j];
      assert_true(center >= -10.0 && center <= 10.0);
      assert_true(fabs(sum[k][j] / counts[k] - center) < 0.1);
    }
  tb_dataset_free(z);
  assert_int_equal(tb_gen_blobs(3001, 3, 2, 0.5, 9, &b), 0);
  assert_true(same_data(a, b));
  assert_int_equal(tb_gen_blobs(3001, 3, 2, 0.5, 10, &c), 0);
  assert_false(same_data(a, c));

  z = (tb_dataset_t *)1;
  assert_int_equal(tb_gen_blobs(0, 3, 2, 1.0, 1, &z), TB_EINVAL);
  assert_null(z);
  assert_int_equal(tb_gen_blobs(10, 0, 2, 1.0, 1, &z), TB_EINVAL);
  assert_int_equal(tb_gen_blobs(10, 3, 0, 1.0, 1, &z), TB_EINVAL);
  assert_int_equal(tb_gen_blobs(10, 3, 2, -1.0, 1, &z), TB_EINVAL);
  assert_int_equal(tb_gen_blobs(10, 3, 2, INFINITY, 1, &z), TB_EINVAL);
  assert_int_equal(tb_gen_blobs(INT_MAX, 3, 2, 1.0, 1, &z), TB_EINVAL); /* too large */
  tb_dataset_free(a);
  tb_dataset_free(b);
  tb_dataset_free(c);
}

/* ---- scaling ----------------------------------------------------------- */

static tb_dataset_t *matrix(int n, int nf, const float *x) {
  tb_dataset_t *d = tb_dataset_new(n, nf, 1);
  assert_non_null(d);
  memcpy(d->x, x, (size_t)n * nf * sizeof(float));
  return d;
}

static void test_scaler_minmax(void **state) {
  /* Feature 0 spans 0..10, feature 1 is constant 3. */
  tb_dataset_t *train = matrix(3, 2, (const float[]){0, 3, 5, 3, 10, 3});
  tb_dataset_t *test = matrix(2, 2, (const float[]){20, 4, -5, 3});
  tb_scaler_t s;
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_MINMAX, 0.0, train), 0);
  assert_int_equal(s.n_features, 2);
  assert_int_equal(tb_scaler_apply(&s, train), 0);
  assert_floats(train->x, (const float[]){0, 0, 0.5f, 0, 1, 0}, 6);
  /* Test data uses the training statistics, so it may leave [0, 1]. */
  assert_int_equal(tb_scaler_apply(&s, test), 0);
  assert_floats(test->x, (const float[]){2, 1, -0.5f, 0}, 4);
  assert_true(train->y[0] == 0.0f); /* y untouched */
  tb_scaler_free(&s);
  tb_scaler_free(&s);
  tb_dataset_free(train);
  tb_dataset_free(test);
}

static void test_scaler_standard(void **state) {
  tb_dataset_t *train = matrix(4, 2, (const float[]){1, 7, 2, 7, 3, 7, 4, 7});
  tb_dataset_t *test = matrix(3, 2, (const float[]){2.5f, 7, 100, 8, -100, 6});
  tb_dataset_t *big;
  tb_scaler_t s;
  double sd = sqrt(1.25); /* population std of 1..4 */
  double sum = 0, ss = 0;
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_STANDARD, 0.0, train), 0);
  assert_int_equal(tb_scaler_apply(&s, train), 0);
  assert_floats(train->x,
                (const float[]){(float)(-1.5 / sd), 0, (float)(-0.5 / sd), 0, (float)(0.5 / sd), 0,
                                (float)(1.5 / sd), 0},
                8);
  for (int i = 0; i < 4; i++) {
    sum += train->x[2 * i];
    ss += train->x[2 * i] * train->x[2 * i];
  }
  assert_true(fabs(sum) < 1e-6 && fabs(ss / 4 - 1.0) < 1e-6);
  /* The test rows do not move the statistics: 2.5 is the training mean. */
  assert_int_equal(tb_scaler_apply(&s, test), 0);
  assert_floats(test->x, (const float[]){0, 0, (float)(97.5 / sd), 1, (float)(-102.5 / sd), -1}, 6);
  tb_scaler_free(&s);

  /* A large offset keeps its precision: 1e6 + {1, 2, 3}. */
  big = matrix(3, 1, (const float[]){1000001, 1000002, 1000003});
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_STANDARD, 0.0, big), 0);
  assert_int_equal(tb_scaler_apply(&s, big), 0);
  assert_floats(big->x, (const float[]){(float)-sqrt(1.5), 0, (float)sqrt(1.5)}, 3);
  tb_scaler_free(&s);
  tb_dataset_free(big);
  tb_dataset_free(train);
  tb_dataset_free(test);
}

static void test_scaler_divide_and_errors(void **state) {
  tb_dataset_t *d = matrix(2, 2, (const float[]){0, 255, 51, 127.5f});
  tb_dataset_t *other = matrix(1, 3, (const float[]){1, 2, 3});
  tb_dataset_t *empty = tb_dataset_new(0, 2, 1);
  tb_scaler_t s;
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_DIVIDE, 255.0, d), 0);
  assert_int_equal(tb_scaler_apply(&s, d), 0);
  assert_floats(d->x, (const float[]){0, 1, 0.2f, 0.5f}, 4);
  /* A dataset of another width is refused and left alone. */
  assert_int_equal(tb_scaler_apply(&s, other), TB_ESHAPE);
  assert_floats(other->x, (const float[]){1, 2, 3}, 3);
  tb_scaler_free(&s);
  assert_int_equal(tb_scaler_apply(&s, d), TB_EINVAL); /* freed */

  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_NONE, 0.0, other), 0);
  assert_int_equal(tb_scaler_apply(&s, other), 0);
  assert_floats(other->x, (const float[]){1, 2, 3}, 3);
  tb_scaler_free(&s);

  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_DIVIDE, 0.0, d), TB_EINVAL);
  assert_null(s.shift);
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_DIVIDE, NAN, d), TB_EINVAL);
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_STANDARD, 0.0, empty), TB_EINVAL);
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_MINMAX, 0.0, empty), TB_EINVAL);
  assert_int_equal(tb_scaler_fit(&s, (tb_scale_t)99, 0.0, d), TB_EINVAL);
  assert_int_equal(tb_scaler_fit(&s, TB_SCALE_MINMAX, 0.0, NULL), TB_EINVAL);
  assert_int_equal(tb_scaler_fit(NULL, TB_SCALE_MINMAX, 0.0, d), TB_EINVAL);
  tb_scaler_free(NULL);
  tb_dataset_free(d);
  tb_dataset_free(other);
  tb_dataset_free(empty);
}

/* ---- limits: redaction, bounds, confinement ----------------------------- */

/* Loads text as CSV within lim; returns the code, the message in err. */
static int csv_limited(const char *name, const char *text, const tb_data_limits_t *lim, int classes,
                       tb_err_t *err) {
  tb_csv_opts_t o = {.classes = classes, .label_col = -1, .limits = lim};
  tb_dataset_t *d = NULL;
  err->msg[0] = '\0';
  int r = csv_text(name, text, &o, &d, err);
  tb_dataset_free(d);
  return r;
}

static void check_no(const char *msg, const char *unwanted) {
  if (strstr(msg, unwanted) != NULL) {
    print_error("message \"%s\"\n  contains \"%s\"\n", msg, unwanted);
    fail();
  }
}

static void test_csv_redacted(void **state) {
  /* A job from the network: messages give the place, never the text. The
   * same inputs quote the field for the operator. */
  static const struct {
    const char *text, *want, *secret;
    int classes, code;
  } cases[] = {
      {"0,1\nhunter2,1\n", ":2: column 1: expected a number", "hunter2", 1, TB_EFORMAT},
      {"root:$6$x:19000,1\n", ":1: column 1: expected a number", "root", 1, TB_EFORMAT},
      {"1,inf\n", ":1: column 2: expected a finite number (inf is not accepted)", "\"inf\"", 0,
       TB_ENONFINITE},
      {"1,1\nN/A,2\n", ":2: column 1: a missing value (a missing-value marker)", "N/A", 0,
       TB_EFORMAT},
      {"1,2\n2,secret\n", ":2: column 2: expected a number", "secret", 0, TB_EFORMAT},

      {"1,3e39\n", ":1: column 2: the number is out of the float32 range", "3e39", 0, TB_ERANGE},
      {"1,1.5\n", ":1: column 2: expected a class label (an integer from 0 to 16777215)", "1.5", 1,
       TB_EFORMAT},
  };
  tb_data_limits_t red = {.redact = true};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tb_err_t err;
    assert_int_equal(csv_limited("red.csv", cases[i].text, &red, cases[i].classes, &err),
                     cases[i].code);
    check_msg(err.msg, cases[i].want);
    check_no(err.msg, cases[i].secret);
    check_no(err.msg, "got");
    assert_int_equal(csv_limited("red.csv", cases[i].text, NULL, cases[i].classes, &err),
                     cases[i].code);
    check_msg(err.msg, cases[i].secret[0] == '"' ? "inf" : cases[i].secret);
  }

  /* IDX: no magic number, count or dimension read from the file. */
  char im[512], lb[512], p[512];
  tb_dataset_t *d = NULL;
  tb_err_t err;
  write_small_idx(tmp_path(im, sizeof(im), "r-img.idx"), tmp_path(lb, sizeof(lb), "r-lbl.idx"), 0);
  write_bytes(tmp_path(p, sizeof(p), "r-bad.idx"), "\x03\x08\x00\x00\x00\x00\x00\x01", 8);
  assert_int_equal(tb_idx_load_limited(p, lb, &red, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "r-bad.idx: bad magic number: expected an IDX images file (0x00000803");
  check_no(err.msg, "03080000");
  write_idx(p, 0, 3, (const uint32_t[]){60000, 28, 28}, pixels, 12);
  assert_int_equal(tb_idx_load_limited(p, lb, &red, &d, &err), TB_ETRUNCATED);
  check_msg(err.msg, "r-bad.idx: truncated: the file holds 12 bytes of data");
  check_no(err.msg, "60000");
  check_no(err.msg, "28x28");
  write_idx(p, 0, 1, (const uint32_t[]){2}, labels3, 2);
  assert_int_equal(tb_idx_load_limited(im, p, &red, &d, &err), TB_ESHAPE);
  check_msg(err.msg, "holds a different number of labels than");
  check_no(err.msg, "2 labels");
  write_idx(p, 0, 3, (const uint32_t[]){0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, pixels, 12);
  assert_int_equal(tb_idx_load_limited(p, NULL, &red, &d, &err), TB_ERANGE);
  check_no(err.msg, "4294967295 images");
  assert_null(d);
}

static void test_data_bounds(void **state) {
  tb_err_t err;
  char p[512];
  /* Bytes: 39 bytes of text against a 30-byte bound, plain and gzip. */
  static const char text[] = "1,2\n3,4\n5,6\n7,8\n9,10\n11,12\n13,14\n15,16\n";
  tb_data_limits_t bytes = {.max_bytes = 30};
  assert_int_equal(csv_limited("b.csv", text, &bytes, 1, &err), TB_ERANGE);
  check_msg(err.msg, "b.csv: 39 bytes, more than the 30 a data file may have here");
  tb_csv_opts_t o = {.label_col = -1, .limits = &bytes};
  tb_dataset_t *d = NULL;
  write_gz(tmp_path(p, sizeof(p), "b.csv.gz"), text, strlen(text));
  assert_int_equal(tb_csv_load(p, &o, &d, &err), TB_ERANGE);
  check_msg(err.msg, "b.csv.gz: larger than the 30 bytes a data file may have here (after "
                     "decompression)");
  assert_null(d);
  bytes.max_bytes = 39; /* exactly the file: loads */
  assert_int_equal(csv_limited("b.csv", text, &bytes, 1, &err), 0);
  assert_int_equal(tb_csv_load(p, &o, &d, &err), 0);
  assert_int_equal(d->n, 8);
  tb_dataset_free(d);

  /* Rows and columns. */
  tb_data_limits_t rows = {.max_rows = 7}, cols = {.max_cols = 2};
  assert_int_equal(csv_limited("r.csv", text, &rows, 1, &err), TB_ERANGE);
  check_msg(err.msg, "r.csv: 8 data rows, more than the 7 a data file may have here");
  assert_int_equal(csv_limited("c.csv", "\n1,2,3\n4,5,6\n", &cols, 1, &err), TB_ERANGE);
  check_msg(err.msg, "c.csv:2: 3 columns, more than the 2 a data file may have here");
  /* By default at most TB_DATA_MAX_COLS columns: a file whose line ends
   * were lost is one endless row. */
  size_t n = 2 * ((size_t)TB_DATA_MAX_COLS + 1);
  char *wide = malloc(n + 1);
  assert_non_null(wide);
  for (size_t i = 0; i < n; i += 2)
    memcpy(wide + i, "0,", 2);
  wide[n - 1] = '\n';
  wide[n] = '\0';
  assert_int_equal(csv_limited("wide.csv", wide, NULL, 1, &err), TB_ERANGE);
  check_msg(err.msg, "wide.csv:1: 1048577 columns, more than the 1048576");
  free(wide);

  /* IDX: items and values per item. */
  char im[512], lb[512];
  write_small_idx(tmp_path(im, sizeof(im), "bd-img.idx"), tmp_path(lb, sizeof(lb), "bd-lbl.idx"),
                  0);
  tb_data_limits_t two_rows = {.max_rows = 2}, three_cols = {.max_cols = 3};
  assert_int_equal(tb_idx_load_limited(im, lb, &two_rows, &d, &err), TB_ERANGE);
  check_msg(err.msg, "bd-img.idx: header says 3 images, more than the 2");
  assert_int_equal(tb_idx_load_limited(im, lb, &three_cols, &d, &err), TB_ERANGE);
  check_msg(err.msg, "bd-img.idx: header says each item is 2x2 (4 values), more than the 3");
  tb_data_limits_t small = {.max_bytes = 20};
  assert_int_equal(tb_idx_load_limited(im, lb, &small, &d, &err), TB_ERANGE);
  check_msg(err.msg, "bd-img.idx: 28 bytes, more than the 20");
  assert_null(d);
}

/* A folder tree for the confinement tests: root/data (the data directory)
 * with ok.csv, a symbolic link to it, a link out to root/out/secret.csv, a
 * folder and a FIFO. */
static char conf_root[] = "/tmp/tb_test_confine_XXXXXX";

static void conf_path(char *buf, size_t len, const char *rel) {
  snprintf(buf, len, "%s/%s", conf_root, rel);
}

static void conf_setup(char data_real[PATH_MAX]) {
  char p[600], q[600];
  assert_non_null(mkdtemp(conf_root));
  conf_path(p, sizeof(p), "data");
  assert_int_equal(mkdir(p, 0700), 0);
  assert_non_null(realpath(p, data_real));
  conf_path(p, sizeof(p), "data/sub");
  assert_int_equal(mkdir(p, 0700), 0);
  conf_path(p, sizeof(p), "out");
  assert_int_equal(mkdir(p, 0700), 0);
  conf_path(p, sizeof(p), "out/secret.csv");
  write_bytes(p, "1,2\n", 4);
  conf_path(p, sizeof(p), "data/ok.csv");
  write_bytes(p, "0,1\n1,2\n", 8);
  conf_path(p, sizeof(p), "data/link-in.csv");
  assert_int_equal(symlink("ok.csv", p), 0);
  conf_path(p, sizeof(p), "data/link-out.csv");
  conf_path(q, sizeof(q), "out/secret.csv");
  assert_int_equal(symlink(q, p), 0);
  conf_path(p, sizeof(p), "data/sub/up.csv");
  assert_int_equal(symlink("../../out/secret.csv", p), 0);
  conf_path(p, sizeof(p), "data/fifo.csv");
  assert_int_equal(mkfifo(p, 0600), 0);
}

static void conf_teardown(void) {
  static const char *const files[] = {"data/ok.csv",     "data/link-in.csv", "data/link-out.csv",
                                      "data/sub/up.csv", "data/fifo.csv",    "out/secret.csv"};
  static const char *const dirs[] = {"data/sub", "data", "out"};
  char p[600];
  for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    conf_path(p, sizeof(p), files[i]);
    unlink(p);
  }
  for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
    conf_path(p, sizeof(p), dirs[i]);
    rmdir(p);
  }
  rmdir(conf_root);
}

static int confined_csv(const char *path, const tb_data_limits_t *lim, tb_err_t *err) {
  tb_csv_opts_t o = {.label_col = -1, .classes = 1, .limits = lim};
  tb_dataset_t *d = NULL;
  err->msg[0] = '\0';
  int r = tb_csv_load(path, &o, &d, err);
  if (r == 0) {
    assert_int_equal(d->n, 2);
    tb_dataset_free(d);
  }
  return r;
}

static void test_data_confined(void **state) {
  char data[PATH_MAX], p[PATH_MAX + 64];
  tb_err_t err;
  conf_setup(data);
  const char *dirs[1] = {data};
  tb_data_limits_t lim = {.confined = true, .dirs = dirs, .n_dirs = 1};

  snprintf(p, sizeof(p), "%s/ok.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), 0);
  snprintf(p, sizeof(p), "%s/link-in.csv", data); /* a link that stays inside */
  assert_int_equal(confined_csv(p, &lim, &err), 0);
  snprintf(p, sizeof(p), "%s/sub/../ok.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "\"..\" is not allowed in the path");
  snprintf(p, sizeof(p), "%s/../out/secret.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "\"..\" is not allowed");
  conf_path(p, sizeof(p), "out/secret.csv");
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "secret.csv: outside the data directories");
  assert_int_equal(confined_csv("/etc/passwd", &lim, &err), TB_EINVAL);
  check_msg(err.msg, "/etc/passwd: outside the data directories");
  /* A folder whose name starts like the data folder's is not inside it. */
  snprintf(p, sizeof(p), "%s-other/x.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "outside the data directories");
  assert_int_equal(confined_csv("ok.csv", &lim, &err), TB_EINVAL); /* relative: nowhere */
  /* Links out, direct or through "..": refused, and where they lead is not told. */
  snprintf(p, sizeof(p), "%s/link-out.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "link-out.csv: leads outside the data directories (through a symbolic link)");
  check_no(err.msg, "secret");
  snprintf(p, sizeof(p), "%s/sub/up.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "leads outside");
  /* Not a regular file: refused at once (a FIFO must not block the open). */
  snprintf(p, sizeof(p), "%s/fifo.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "fifo.csv: not a regular file");
  snprintf(p, sizeof(p), "%s/sub", data);
  assert_int_equal(confined_csv(p, &lim, &err), TB_EINVAL);
  check_msg(err.msg, "not a regular file");
  snprintf(p, sizeof(p), "%s/missing.csv", data);
  assert_int_equal(confined_csv(p, &lim, &err), -ENOENT);
  /* IDX goes through the same door. */
  tb_dataset_t *d = NULL;
  conf_path(p, sizeof(p), "out/secret.csv");
  assert_int_equal(tb_idx_load_limited(p, NULL, &lim, &d, &err), TB_EINVAL);
  check_msg(err.msg, "outside the data directories");
  /* No data directory: no file at all. */
  tb_data_limits_t none = {.confined = true};
  snprintf(p, sizeof(p), "%s/ok.csv", data);
  assert_int_equal(confined_csv(p, &none, &err), TB_EINVAL);
  check_msg(err.msg, "only use the built-in generators");
  /* Not confined: the operator reads anywhere. */
  conf_path(p, sizeof(p), "out/secret.csv");
  assert_int_equal(tb_csv_load(p, NULL, &d, &err), 0);
  tb_dataset_free(d);
  conf_teardown();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dataset_new),
      cmocka_unit_test(test_slice),
      cmocka_unit_test(test_split_tail),
      cmocka_unit_test(test_one_hot),
      cmocka_unit_test(test_csv_label_first),
      cmocka_unit_test(test_csv_label_last_and_middle),
      cmocka_unit_test(test_csv_semicolon_header_crlf),
      cmocka_unit_test(test_csv_gz),
      cmocka_unit_test(test_csv_malformed),
      cmocka_unit_test(test_csv_nul_byte),
      cmocka_unit_test(test_csv_every_prefix),
      cmocka_unit_test(test_csv_files),
      cmocka_unit_test(test_csv_gz_corrupt),
      cmocka_unit_test(test_idx_good),
      cmocka_unit_test(test_idx_malformed),
      cmocka_unit_test(test_idx_every_prefix),
      cmocka_unit_test(test_csv_redacted),
      cmocka_unit_test(test_data_bounds),
      cmocka_unit_test(test_data_confined),
      cmocka_unit_test(test_random_inputs),
      cmocka_unit_test(test_fashion_mnist),
      cmocka_unit_test(test_gen_seed),
      cmocka_unit_test(test_gen_spirals),
      cmocka_unit_test(test_gen_blobs),
      cmocka_unit_test(test_scaler_minmax),
      cmocka_unit_test(test_scaler_standard),
      cmocka_unit_test(test_scaler_divide_and_errors),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
