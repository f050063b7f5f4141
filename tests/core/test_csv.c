/* CSV files as people have them (issue 18): RFC 4180 quoting (delimiters,
 * quotes and line breaks inside quoted fields), a header row detected or
 * forced, columns chosen by name or index, string class labels mapped to
 * sorted indices (and that mapping applied to a test file, where an unseen
 * class is an error naming its line), missing values refused by line and
 * column, filled or dropped; and tb_classes_t itself.
 *
 * Every file is written by the test into a mkdtemp() folder. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainbus/data.h"

static char tmpdir[] = "/tmp/tb_test_csv_XXXXXX";

static int group_setup(void **state) {
  return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  DIR *dir = opendir(tmpdir);
  struct dirent *e;
  char p[600];
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

static const char *file_with(const char *name, const char *text, char *p, size_t len) {
  snprintf(p, len, "%s/%s", tmpdir, name);
  FILE *f = fopen(p, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
  assert_int_equal(fclose(f), 0);
  return p;
}

static int load(const char *name, const char *text, const tb_csv_opts_t *o, tb_dataset_t **d,
                tb_err_t *err) {
  char p[600];
  err->msg[0] = '\0';
  return tb_csv_load(file_with(name, text, p, sizeof(p)), o, d, err);
}

static void check_msg(const char *msg, const char *want) {
  if (strstr(msg, want) == NULL) {
    print_error("message \"%s\"\n  does not contain \"%s\"\n", msg, want);
    fail();
  }
}

static void check_no(const char *msg, const char *unwanted) {
  if (strstr(msg, unwanted) != NULL) {
    print_error("message \"%s\"\n  contains \"%s\"\n", msg, unwanted);
    fail();
  }
}

static void assert_floats(const float *got, const float *want, int n) {
  for (int i = 0; i < n; i++) {
    if (got[i] != want[i]) {
      print_error("element %d: got %g, want %g\n", i, (double)got[i], (double)want[i]);
      fail();
    }
  }
}

/* The iris data as most copies of it are shared (the example). */
static const char IRIS[] =
    "\"sepal length (cm)\",\"sepal width (cm)\",\"petal length (cm)\",\"petal width (cm)\","
    "\"species\"\n"
    "5.1,3.5,1.4,0.2,\"setosa\"\n"
    "7.0,3.2,4.7,1.4,\"versicolor\"\n"
    "6.3,3.3,6.0,2.5,\"virginica\"\n"
    "4.9,3.0,1.4,0.2,\"setosa\"\n"
    "6.4,3.2,4.5,1.5,\"versicolor\"\n";

static void test_iris_quoted_header_and_classes(void **state) {
  tb_dataset_t *d = NULL;
  tb_err_t err;
  tb_csv_opts_t o = {.label_col = -1, .classes = 1};
  assert_int_equal(load("iris.csv", IRIS, &o, &d, &err), 0);
  assert_int_equal(d->n, 5);
  assert_int_equal(d->n_features, 4);
  assert_int_equal(d->n_classes, 3);
  assert_non_null(d->classes);
  assert_int_equal(d->classes->n, 3);
  assert_string_equal(d->classes->names[0], "setosa");
  assert_string_equal(d->classes->names[1], "versicolor");
  assert_string_equal(d->classes->names[2], "virginica");
  assert_floats(d->y, (const float[]){0, 1, 2, 0, 1}, 5);
  assert_floats(d->x, (const float[]){5.1f, 3.5f, 1.4f, 0.2f, 7.0f}, 5);
  char buf[200];
  assert_string_equal(tb_classes_format(d->classes, buf, sizeof(buf)),
                      "0 \"setosa\", 1 \"versicolor\", 2 \"virginica\"");
  tb_dataset_free(d);

  /* The same file by the label's name; the header is implied. */
  o = (tb_csv_opts_t){.label_name = "species", .classes = 1};
  assert_int_equal(load("iris.csv", IRIS, &o, &d, &err), 0);
  assert_int_equal(d->n_features, 4);
  assert_floats(d->y, (const float[]){0, 1, 2, 0, 1}, 5);
  tb_dataset_free(d);

  /* Told there is no header, the header is a row and fails as one. */
  o = (tb_csv_opts_t){.label_col = -1, .classes = 1, .header = TB_CSV_HEADER_NO};
  assert_int_equal(load("iris.csv", IRIS, &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "iris.csv:1: column 1: expected a number, got \"sepal length (cm)\"");
  assert_null(d);
}

static void test_quoted_commas_and_line_breaks(void **state) {
  /* A text column full of delimiters, quotes and line breaks (CRLF inside
   * one of them), skipped; class names with a comma and a quote in them. */
  static const char text[] = "id,comment,x1,x2,label\r\n"
                             "1,\"plain\",1.5,2,\"a, b\"\r\n"
                             "2,\"two\r\nlines, and \"\"quotes\"\"\",3,4,\"say \"\"c\"\"\"\r\n"
                             "\r\n"
                             "3,\"three\n\nlines\",5,6,\"a, b\"\r\n"
                             "4,,7,8,plain\r\n";
  tb_csv_col_t feats[] = {{.name = "x1"}, {.name = "x2"}};
  tb_csv_opts_t o = {.label_name = "label", .features = feats, .n_features = 2, .classes = 1};
  tb_dataset_t *d = NULL;
  tb_err_t err;
  assert_int_equal(load("quoted.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n, 4);
  assert_int_equal(d->n_features, 2);
  assert_floats(d->x, (const float[]){1.5f, 2, 3, 4, 5, 6, 7, 8}, 8);
  assert_int_equal(d->classes->n, 3);
  assert_string_equal(d->classes->names[0], "a, b");
  assert_string_equal(d->classes->names[1], "plain");
  assert_string_equal(d->classes->names[2], "say \"c\"");
  assert_floats(d->y, (const float[]){0, 2, 0, 1}, 4);
  tb_dataset_free(d);

  /* Messages name the line where a record starts, counting the line
   * breaks inside quoted fields before it. */
  static const char bad[] = "id,comment,x1,x2,label\n"
                            "1,\"one\ntwo\nthree\",1,2,a\n"
                            "2,\"x\",3,oops,b\n";
  assert_int_equal(load("lines.csv", bad, &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "lines.csv:5: column 4 (\"x2\"): expected a number, got \"oops\"");
  static const char bad2[] = "id,comment,x1,x2,label\n"
                             "1,\"one\nt,wo\",1,2,a\n"
                             "2,\"x\",3,4\n";
  assert_int_equal(load("lines.csv", bad2, &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "lines.csv:4: expected 5 columns (as the header has), got 4");
}

static void test_header_and_columns_by_name(void **state) {
  static const char text[] = "age,name,height,weight,class\n"
                             "31,\"Ann\",1.70,60,1\n"
                             "45,\"Bob\",1.80,80,0\n"
                             "27,\"Cy\",1.65,55,1\n";
  tb_dataset_t *d = NULL;
  tb_err_t err;
  /* Features in the order given, by name and by index (negative from the
   * end); the text column is never read. */
  tb_csv_col_t feats[] = {{.name = "weight"}, {.index = 0}, {.index = -3}};
  tb_csv_opts_t o = {.label_name = "class", .features = feats, .n_features = 3, .classes = 1};
  assert_int_equal(load("people.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n, 3);
  assert_int_equal(d->n_features, 3);
  assert_floats(d->x, (const float[]){60, 31, 1.70f, 80, 45, 1.80f, 55, 27, 1.65f}, 9);
  assert_floats(d->y, (const float[]){1, 0, 1}, 3);
  assert_null(d->classes); /* numeric labels */
  assert_int_equal(d->n_classes, 2);
  tb_dataset_free(d);

  /* Without a feature list every other column is a feature: "name" is text. */
  o = (tb_csv_opts_t){.label_name = "class", .classes = 1};
  assert_int_equal(load("people.csv", text, &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "people.csv:2: column 2 (\"name\"): expected a number, got \"Ann\"");

  /* Names that are not there, twice there, or without a header. */
  o = (tb_csv_opts_t){.label_name = "klass", .classes = 1};
  assert_int_equal(load("people.csv", text, &o, &d, &err), TB_EINVAL);
  check_msg(err.msg, "people.csv:1: label column: no column named \"klass\" in the header");
  assert_int_equal(load("twice.csv", "a,b,a\n1,2,3\n", &o, &d, &err), TB_EINVAL);
  tb_csv_col_t fa[] = {{.name = "a"}};
  o = (tb_csv_opts_t){.label_col = 1, .features = fa, .n_features = 1};
  assert_int_equal(load("twice.csv", "a,b,a\n1,2,3\n", &o, &d, &err), TB_EINVAL);
  check_msg(err.msg, "the header names two columns \"a\" (columns 1 and 3)");
  o = (tb_csv_opts_t){.label_name = "class", .header = TB_CSV_HEADER_NO};
  assert_int_equal(load("people.csv", text, &o, &d, &err), TB_EINVAL);
  check_msg(err.msg, "label column \"class\" names a column, but header is false");
  /* A feature that is the label, or listed twice. */
  tb_csv_col_t dup[] = {{.name = "age"}, {.index = 0}};
  o = (tb_csv_opts_t){.label_name = "class", .features = dup, .n_features = 2};
  assert_int_equal(load("people.csv", text, &o, &d, &err), TB_EINVAL);
  check_msg(err.msg, "feature column 1 is column 1, already feature column 0");
  tb_csv_col_t lab[] = {{.index = -1}};
  o = (tb_csv_opts_t){.label_name = "class", .features = lab, .n_features = 1};
  assert_int_equal(load("people.csv", text, &o, &d, &err), TB_EINVAL);
  check_msg(err.msg, "feature column 0 is column 5, the label column");
  tb_csv_col_t far[] = {{.index = 9}};
  o = (tb_csv_opts_t){.label_name = "class", .features = far, .n_features = 1};
  assert_int_equal(load("people.csv", text, &o, &d, &err), TB_ERANGE);
  check_msg(err.msg, "feature column 0 9 is out of range for 5 columns");
  assert_null(d);

  /* header: true on a file whose header is all numbers (pandas' default
   * column names), which detection cannot tell from data. */
  o = (tb_csv_opts_t){.label_col = 0, .header = TB_CSV_HEADER_YES};
  assert_int_equal(load("numhead.csv", "0,1,2\n5,6,7\n8,9,10\n", &o, &d, &err), 0);
  assert_int_equal(d->n, 2);
  assert_floats(d->y, (const float[]){5, 8}, 2);
  tb_dataset_free(d);
  o.header = TB_CSV_HEADER_AUTO;
  assert_int_equal(load("numhead.csv", "0,1,2\n5,6,7\n8,9,10\n", &o, &d, &err), 0);
  assert_int_equal(d->n, 3);
  tb_dataset_free(d);
  /* A header and nothing else. */
  o.header = TB_CSV_HEADER_YES;
  assert_int_equal(load("onlyhead.csv", "a,b\n", &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "no data rows (only the header)");
}

static void test_missing_values(void **state) {
  static const char text[] = "\"a\",\"b\",\"label\"\n"
                             "1,2,0\n"
                             "3,NA,1\n"
                             "5,6,1\n"
                             "?,8,0\n"
                             "9,\"\",0\n";
  tb_dataset_t *d = NULL;
  tb_err_t err;
  tb_csv_opts_t o = {.label_col = -1, .classes = 1};
  assert_int_equal(load("missing.csv", text, &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "missing.csv:3: column 2 (\"b\"): a missing value (\"NA\"); fill or drop "
                     "missing values with the job's \"missing\" option");
  assert_null(d);

  o.missing = TB_CSV_MISSING_FILL;
  o.fill = -1.5;
  assert_int_equal(load("missing.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n, 5);
  assert_floats(d->x, (const float[]){1, 2, 3, -1.5f, 5, 6, -1.5f, 8, 9, -1.5f}, 10);
  assert_floats(d->y, (const float[]){0, 1, 1, 0, 0}, 5);
  tb_dataset_free(d);

  o.missing = TB_CSV_MISSING_DROP;
  assert_int_equal(load("missing.csv", text, &o, &d, &err), 0);
  assert_int_equal(d->n, 2);
  assert_floats(d->x, (const float[]){1, 2, 5, 6}, 4);
  assert_floats(d->y, (const float[]){0, 1}, 2);
  tb_dataset_free(d);

  /* A missing label is never filled: there is no class to fill it with. */
  o.missing = TB_CSV_MISSING_FILL;
  assert_int_equal(load("nolabel.csv", "a,label\n1,0\n2,\n", &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "nolabel.csv:3: column 2 (\"label\"): the label is missing (an empty field)");
  /* Dropped, it goes with its row; a file of nothing but such rows is empty. */
  o.missing = TB_CSV_MISSING_DROP;
  assert_int_equal(load("nolabel.csv", "a,label\n1,0\n2,\n", &o, &d, &err), 0);
  assert_int_equal(d->n, 1);
  tb_dataset_free(d);
  assert_int_equal(load("allgone.csv", "a,label\n1,NA\n,1\n", &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "no data rows (every row has a missing value)");

  /* Redacted: the column's name and the marker are file contents. */
  tb_data_limits_t red = {.redact = true};
  o = (tb_csv_opts_t){.label_col = -1, .classes = 1, .limits = &red};
  assert_int_equal(load("missing.csv", text, &o, &d, &err), TB_EFORMAT);
  check_msg(err.msg, "missing.csv:3: column 2: a missing value (a missing-value marker)");
  check_no(err.msg, "\"b\"");
  check_no(err.msg, "NA");
}

static void test_class_names_applied_to_test_file(void **state) {
  tb_dataset_t *train = NULL, *test = NULL;
  tb_err_t err;
  tb_csv_opts_t o = {.label_col = -1, .classes = 1};
  assert_int_equal(load("iris.csv", IRIS, &o, &train, &err), 0);
  /* The test file lacks a class and orders them differently: the training
   * set's indices apply all the same. */
  o.class_names = train->classes;
  static const char test_text[] = "sl,sw,pl,pw,species\n"
                                  "6.3,3.3,6.0,2.5,virginica\n"
                                  "5.0,3.4,1.5,0.2,setosa\n";
  assert_int_equal(load("iris-test.csv", test_text, &o, &test, &err), 0);
  assert_int_equal(test->n_classes, 3);
  assert_null(test->classes);
  assert_floats(test->y, (const float[]){2, 0}, 2);
  tb_dataset_free(test);

  /* An unseen class is an error naming the line (and the class, unless
   * redacted). */
  static const char unseen[] = "sl,sw,pl,pw,species\n"
                               "6.3,3.3,6.0,2.5,virginica\n"
                               "\n"
                               "5.0,3.4,1.5,0.2,\"iris nova\"\n";
  assert_int_equal(load("iris-test.csv", unseen, &o, &test, &err), TB_EFORMAT);
  check_msg(err.msg, "iris-test.csv:4: column 5 (\"species\"): class \"iris nova\" is not one of "
                     "the 3 classes of the training data");
  assert_null(test);
  tb_data_limits_t red = {.redact = true};
  o.limits = &red;
  assert_int_equal(load("iris-test.csv", unseen, &o, &test, &err), TB_EFORMAT);
  check_msg(err.msg, "iris-test.csv:4: column 5: the class label is not one of the 3 classes");
  check_no(err.msg, "nova");
  check_no(err.msg, "species");

  /* Numbers are names too once the training labels are names. */
  tb_dataset_free(train);
  o = (tb_csv_opts_t){.label_col = -1, .classes = 1};
  assert_int_equal(load("mixed.csv", "1,cat\n2,10\n3,9\n", &o, &train, &err), 0);
  assert_int_equal(train->classes->n, 3);
  assert_string_equal(train->classes->names[0], "10"); /* bytes: "10" < "9" < "cat" */
  assert_string_equal(train->classes->names[1], "9");
  assert_floats(train->y, (const float[]){2, 0, 1}, 3);
  o.class_names = train->classes;
  assert_int_equal(load("mixed-test.csv", "4,9\n5,7\n", &o, &test, &err), TB_EFORMAT);
  check_msg(err.msg, "mixed-test.csv:2: column 2: class \"7\" is not one of the 3 classes");
  tb_dataset_free(train);
}

static void test_too_many_classes(void **state) {
  /* An id column given as the label: every row its own class. */
  size_t cap = 16 * (TB_DATA_MAX_CLASS_NAMES + 2), len = 0;
  char *text = malloc(cap);
  assert_non_null(text);
  for (int i = 0; i <= TB_DATA_MAX_CLASS_NAMES; i++)
    len += (size_t)snprintf(text + len, cap - len, "1,id%d\n", i);
  tb_csv_opts_t o = {.label_col = -1, .classes = 1};
  tb_dataset_t *d = NULL;
  tb_err_t err;
  assert_int_equal(load("ids.csv", text, &o, &d, &err), TB_ERANGE);
  check_msg(err.msg, "more than 4096 distinct class labels in column 2: is it the label column?");
  /* As regression targets they would be numbers: "id..." is not. */
  free(text);
}

static void test_classes_helpers(void **state) {
  tb_classes_t *c = NULL, *k = NULL;
  const char *names[] = {"b", "a\"q", "c\n"};
  assert_int_equal(tb_classes_new(names, NULL, 3, &c), 0);
  assert_string_equal(c->names[0], "a\"q");
  assert_string_equal(c->names[2], "c\n");
  assert_int_equal(tb_classes_find(c, "b", 1), 1);
  assert_int_equal(tb_classes_find(c, "bb", 1), 1); /* only len bytes count */
  assert_int_equal(tb_classes_find(c, "bb", 2), -1);
  assert_int_equal(tb_classes_find(c, "c\n", 2), 2);
  assert_int_equal(tb_classes_find(c, "c\0", 2), -1);
  assert_int_equal(tb_classes_find(c, "", 0), -1);
  char buf[64];
  assert_string_equal(tb_classes_format(c, buf, sizeof(buf)),
                      "0 \"a\\\"q\", 1 \"b\", 2 \"c\\x0a\"");
  assert_string_equal(tb_classes_format(c, buf, 16), "0 \"a\\\"q\"...");
  assert_int_equal(tb_classes_copy(c, &k), 0);
  assert_true(tb_classes_equal(c, k));
  assert_false(tb_classes_equal(c, NULL));
  assert_true(tb_classes_equal(NULL, NULL));
  tb_classes_free(k);
  const char *dup[] = {"x", "y", "x"};
  assert_int_equal(tb_classes_new(dup, NULL, 3, &k), TB_EINVAL);
  assert_null(k);
  size_t lens[] = {1, 2};
  const char *nul[] = {"a", "b\0c"};
  assert_int_equal(tb_classes_new(nul, lens, 2, &k), TB_EINVAL);
  assert_int_equal(tb_classes_new(names, NULL, 0, &k), TB_EINVAL);
  tb_classes_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_iris_quoted_header_and_classes),
      cmocka_unit_test(test_quoted_commas_and_line_breaks),
      cmocka_unit_test(test_header_and_columns_by_name),
      cmocka_unit_test(test_missing_values),
      cmocka_unit_test(test_class_names_applied_to_test_file),
      cmocka_unit_test(test_too_many_classes),
      cmocka_unit_test(test_classes_helpers),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
