/* Jobs on data files as people have them (issue 18): the iris CSV with a
 * quoted header and quoted class names trains, its class names carried by
 * the model; a test file with a class the training file lacks fails before
 * training, naming the line; columns by name and missing values filled from
 * the job; the class names survive a checkpoint and resume (and a
 * checkpoint for other names is refused); weights files carry them (version
 * 2) and version 1 files still load; an npy job trains. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "trainbus/job.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char dir[] = "/tmp/tb_test_job_data_XXXXXX";

static int group_setup(void **state) {
  return mkdtemp(dir) == NULL ? -1 : 0;
}

static int group_teardown(void **state) {
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char *in_dir(const char *name, char *p, size_t len) {
  snprintf(p, len, "%s/%s", dir, name);
  return p;
}

static void write_file(const char *name, const void *data, size_t len) {
  char p[600];
  FILE *f = fopen(in_dir(name, p, sizeof(p)), "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

static void check_msg(const char *msg, const char *want) {
  if (strstr(msg, want) == NULL) {
    print_error("message \"%s\"\n  does not contain \"%s\"\n", msg, want);
    fail();
  }
}

/* An iris-like file: a quoted header, four measurements, a quoted class;
 * three well separated classes named by names[0..2], row i of class
 * (i + shift) % 3. */
static void write_iris(const char *name, int rows, const char *const names[3], int shift) {
  size_t cap = 64 * (size_t)rows + 200, len = 0;
  char *t = malloc(cap);
  assert_non_null(t);
  len += (size_t)snprintf(t, cap,
                          "\"sepal length (cm)\",\"sepal width (cm)\",\"petal length (cm)\","
                          "\"petal width (cm)\",\"species\"\n");
  for (int i = 0; i < rows; i++) {
    int k = (i + shift) % 3;
    double w = (i * 7 % 10) / 10.0;
    len +=
        (size_t)snprintf(t + len, cap - len, "%.1f,%.1f,%.1f,%.1f,\"%s\"\n", 5.0 + k + w,
                         3.4 - 0.3 * k + w / 4, 1.4 + 2.2 * k + w, 0.2 + 0.9 * k + w / 3, names[k]);
  }
  write_file(name, t, len);
  free(t);
}

static const char *const IRIS_NAMES[3] = {"setosa", "versicolor", "virginica"};

static tb_job_t *job_in_dir(const char *json, tb_err_t *err) {
  tb_job_t *job = NULL;
  if (tb_job_parse(json, strlen(json), "job.json", dir, &job, err) != 0) {
    print_error("parse: %s\n", err->msg);
    fail();
  }
  return job;
}

#define IRIS_JOB(data, extra)                                                                      \
  "{\"seed\":5,\"data\":" data ",\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":16,"         \
  "\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":3,\"activation\":\"softmax\"}]},"        \
  "\"loss\":\"sparse_categorical_crossentropy\",\"metrics\":[\"accuracy\"],\"optimizer\":"         \
  "{\"name\":\"adam\",\"learning_rate\":0.02},\"batch_size\":16,\"verbose\":0" extra "}"

static void test_iris_job_trains_with_test_file(void **state) {
  write_iris("iris.csv", 150, IRIS_NAMES, 0);
  /* The test file's first class is another: the names decide the indices. */
  write_iris("iris-test.csv", 30, IRIS_NAMES, 2);
  tb_err_t err = {{0}};
  tb_job_t *job = job_in_dir(
      IRIS_JOB("{\"source\":\"csv\",\"path\":\"iris.csv\",\"scale\":\"standard\",\"test\":"
               "{\"source\":\"csv\",\"path\":\"iris-test.csv\"}}",
               ",\"epochs\":30"),
      &err);
  assert_int_equal(tb_job_prepare(job, &err), 0);
  const tb_classes_t *c = tb_model_classes(job->model);
  assert_non_null(c);
  assert_int_equal(c->n, 3);
  assert_string_equal(c->names[2], "virginica");
  assert_int_equal(job->test->n_classes, 3);
  /* Row 0 of the test file is "virginica": index 2 in the training order. */
  assert_true(job->test->y[0] == 2.0f);
  assert_true(job->test->y[1] == 0.0f);
  tb_logs_t last, test;
  assert_int_equal(tb_model_fit(job->model, job->train, &job->fit, NULL, &last, &err), 0);
  assert_int_equal(tb_model_evaluate(job->model, job->test, 16, 0, NULL, &test, &err), 0);
  double acc = 0;
  assert_true(tb_logs_get(&test, "accuracy", &acc));
  print_message("iris test accuracy %.3f\n", acc);
  assert_true(acc > 0.9);
  tb_job_free(job);
}

static void test_unseen_class_in_test_file(void **state) {
  static const char *const other[3] = {"setosa", "versicolor", "iris nova"};
  write_iris("iris.csv", 60, IRIS_NAMES, 0);
  write_iris("iris-unseen.csv", 6, other, 0);
  tb_err_t err = {{0}};
  tb_job_t *job = job_in_dir(
      IRIS_JOB("{\"source\":\"csv\",\"path\":\"iris.csv\",\"test\":{\"source\":\"csv\",\"path\":"
               "\"iris-unseen.csv\"}}",
               ""),
      &err);
  assert_int_equal(tb_job_prepare(job, &err), TB_EFORMAT);
  /* Line 4: the header, then rows of classes 0, 1 and 2 (the unseen one). */
  check_msg(err.msg, "iris-unseen.csv:4: column 5 (\"species\"): class \"iris nova\" is not one of "
                     "the 3 classes of the training data");
  tb_job_free(job);
}

static void test_columns_by_name_and_missing_filled(void **state) {
  static const char text[] = "id,\"x, first\",comment,x2,label\n"
                             "a,1.0,\"free text, with commas\",2.0,yes\n"
                             "b,NA,\"and a\nline break\",1.0,no\n"
                             "c,3.0,,?,yes\n"
                             "d,0.5,\"\",0.5,no\n";
  write_file("named.csv", text, sizeof(text) - 1);
  tb_err_t err = {{0}};
  tb_job_t *job = job_in_dir(
      "{\"data\":{\"source\":\"csv\",\"path\":\"named.csv\",\"label_column\":\"label\","
      "\"feature_columns\":[\"x2\",\"x, first\"],\"missing\":{\"fill\":-1}},"
      "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"
      "\"loss\":\"sparse_categorical_crossentropy\",\"epochs\":2,\"verbose\":0}",
      &err);
  assert_int_equal(tb_job_prepare(job, &err), 0);
  assert_int_equal(job->train->n, 4);
  assert_int_equal(job->train->n_features, 2);
  static const float x[] = {2.0f, 1.0f, 1.0f, -1.0f, -1.0f, 3.0f, 0.5f, 0.5f};
  assert_memory_equal(job->train->x, x, sizeof(x));
  assert_string_equal(tb_model_classes(job->model)->names[1], "yes");
  assert_int_equal(tb_model_fit(job->model, job->train, &job->fit, NULL, NULL, &err), 0);
  tb_job_free(job);

  /* Without "missing" the job fails at the first one, by line and column. */
  job = job_in_dir("{\"data\":{\"source\":\"csv\",\"path\":\"named.csv\",\"label_column\":"
                   "\"label\",\"feature_columns\":[\"x2\",\"x, first\"]},\"model\":{\"layers\":"
                   "[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
                   "\"sparse_categorical_crossentropy\"}",
                   &err);
  assert_int_equal(tb_job_prepare(job, &err), TB_EFORMAT);
  check_msg(err.msg, "named.csv:3: column 2 (\"x, first\"): a missing value (\"NA\")");
  tb_job_free(job);
}

#define RESUME_JOB(epochs)                                                                         \
  IRIS_JOB("{\"source\":\"csv\",\"path\":\"resume.csv\"}",                                         \
           ",\"epochs\":" #epochs ",\"checkpoint_dir\":\"ckpt\",\"shuffle\":true")

static void test_class_names_survive_checkpoint_and_resume(void **state) {
  char ckpt[600];
  tb_err_t err = {{0}};
  write_iris("resume.csv", 90, IRIS_NAMES, 0);
  in_dir("ckpt/" TB_CHECKPOINT_LATEST, ckpt, sizeof(ckpt));

  /* The uninterrupted run. */
  tb_job_t *whole = job_in_dir(RESUME_JOB(4), &err);
  assert_int_equal(tb_job_prepare(whole, &err), 0);
  whole->fit.checkpoint_dir = NULL;
  assert_int_equal(tb_model_fit(whole->model, whole->train, &whole->fit, NULL, NULL, &err), 0);

  /* Two epochs, then a new process (a new job) resumes for the other two. */
  tb_job_t *first = job_in_dir(RESUME_JOB(2), &err);
  assert_int_equal(tb_job_prepare(first, &err), 0);
  assert_int_equal(tb_model_fit(first->model, first->train, &first->fit, NULL, NULL, &err), 0);
  tb_job_free(first);
  tb_job_t *second = job_in_dir(RESUME_JOB(4), &err);
  assert_int_equal(tb_job_prepare(second, &err), 0);
  second->fit.resume_from = ckpt;
  assert_int_equal(tb_model_fit(second->model, second->train, &second->fit, NULL, NULL, &err), 0);
  assert_true(tb_classes_equal(tb_model_classes(second->model), tb_model_classes(whole->model)));
  long n = tb_model_n_params(whole->model);
  float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
  assert_non_null(a);
  assert_non_null(b);
  tb_model_get_params(whole->model, a, n);
  tb_model_get_params(second->model, b, n);
  assert_memory_equal(a, b, (size_t)n * sizeof(float)); /* exact resume */
  free(a);
  free(b);
  tb_job_free(second);
  tb_job_free(whole);

  /* The file now names its classes otherwise (same rows, same shapes): the
   * checkpoint's indices would mean other classes, so it is refused. */
  static const char *const renamed[3] = {"Setosa", "versicolor", "virginica"};
  write_iris("resume.csv", 90, renamed, 0);
  tb_job_t *third = job_in_dir(RESUME_JOB(4), &err);
  assert_int_equal(tb_job_prepare(third, &err), 0);
  third->fit.resume_from = ckpt;
  assert_int_equal(tb_model_fit(third->model, third->train, &third->fit, NULL, NULL, &err),
                   TB_ESTATE);
  check_msg(err.msg, "was written for other class names than the data's (0 \"Setosa\", 1 "
                     "\"versicolor\", 2 \"virginica\")");
  tb_job_free(third);
}

/* Rewrites a version 2 weights file without class names as version 1. */
static void downgrade_to_v1(const char *path) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  unsigned char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  assert_true(n > 16);
  assert_int_equal(buf[4], 2);
  /* The last 8 bytes: K = 0, then the CRC. */
  assert_int_equal(buf[n - 8] | buf[n - 7] | buf[n - 6] | buf[n - 5], 0);
  buf[4] = 1;
  n -= 8;
  uint32_t crc = (uint32_t)crc32(0L, buf, (uInt)n);
  for (int i = 0; i < 4; i++)
    buf[n + (size_t)i] = (unsigned char)(crc >> (8 * i));
  f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(buf, 1, n + 4, f), n + 4);
  fclose(f);
}

static tb_model_t *iris_model(void) {
  tb_model_t *m = tb_model_new(4, 1);
  tb_model_add_dense(m, 16, TB_ACT_RELU);
  tb_model_add_dense(m, 3, TB_ACT_SOFTMAX);
  tb_compile_opts_t o = {.loss = TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY};
  tb_optim_defaults(&o.optim, TB_OPT_ADAM);
  assert_int_equal(tb_model_compile(m, &o, NULL), 0);
  return m;
}

static void test_weights_files_carry_class_names(void **state) {
  char p[600];
  tb_err_t err = {{0}};
  tb_classes_t *names = NULL, *other = NULL;
  assert_int_equal(tb_classes_new(IRIS_NAMES, NULL, 3, &names), 0);
  static const char *const renamed[3] = {"a", "b", "c"};
  assert_int_equal(tb_classes_new(renamed, NULL, 3, &other), 0);

  tb_model_t *m = iris_model();
  assert_int_equal(tb_model_set_classes(m, names), 0);
  assert_int_equal(tb_model_save_weights(m, in_dir("w.tbw", p, sizeof(p)), &err), 0);
  /* A fresh model adopts the file's names; one with the same loads. */
  tb_model_t *fresh = iris_model();
  assert_int_equal(tb_model_load_weights(fresh, p, &err), 0);
  assert_true(tb_classes_equal(tb_model_classes(fresh), names));
  assert_int_equal(tb_model_load_weights(fresh, p, &err), 0);
  /* One with other names refuses it, unchanged. */
  tb_model_t *wrong = iris_model();
  assert_int_equal(tb_model_set_classes(wrong, other), 0);
  assert_int_equal(tb_model_load_weights(wrong, p, &err), TB_ESHAPE);
  check_msg(err.msg, "the file's class names are not the model's (0 \"a\", 1 \"b\", 2 \"c\")");
  assert_true(tb_classes_equal(tb_model_classes(wrong), other));

  /* Version 1 (no names) still loads, into a model with or without names. */
  tb_model_t *plain = iris_model();
  assert_int_equal(tb_model_save_weights(plain, in_dir("v1.tbw", p, sizeof(p)), &err), 0);
  downgrade_to_v1(p);
  assert_int_equal(tb_model_load_weights(wrong, p, &err), 0);
  assert_int_equal(tb_model_load_weights(plain, p, &err), 0);
  assert_null(tb_model_classes(plain));
  /* A newer version is refused by number. */
  FILE *f = fopen(p, "r+b");
  assert_non_null(f);
  fseek(f, 4, SEEK_SET);
  fputc(3, f);
  fclose(f);
  assert_int_equal(tb_model_load_weights(plain, p, &err), TB_EVERSION);
  check_msg(err.msg, "weights format version 3, this build reads versions 1 to 2");

  tb_model_free(m);
  tb_model_free(fresh);
  tb_model_free(wrong);
  tb_model_free(plain);
  tb_classes_free(names);
  tb_classes_free(other);
}

/* A version 1 .npy file of little-endian values, as np.save writes it. */
static void write_npy(const char *name, const char *descr, const char *shape, const void *data,
                      size_t len) {
  char head[128];
  int n = snprintf(head, sizeof(head), "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                   descr, shape);
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  size_t hlen = (size_t)n + pad + 1;
  unsigned char *buf = malloc(10 + hlen + len);
  assert_non_null(buf);
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  buf[8] = (unsigned char)hlen;
  buf[9] = (unsigned char)(hlen >> 8);
  memcpy(buf + 10, head, (size_t)n);
  memset(buf + 10 + n, ' ', pad);
  buf[10 + hlen - 1] = '\n';
  memcpy(buf + 10 + hlen, data, len);
  write_file(name, buf, 10 + hlen + len);
  free(buf);
}

static void test_npy_job_trains(void **state) {
  enum { N = 200 };
  float x[N * 2];
  int64_t y[N];
  for (int i = 0; i < N; i++) {
    y[i] = i % 2;
    x[2 * i] = (float)(y[i] ? 2.0 + (i % 7) * 0.1 : -2.0 - (i % 5) * 0.1);
    x[2 * i + 1] = (float)((i % 11) * 0.1);
  }
  write_npy("x.npy", "<f4", "(200, 2)", x, sizeof(x));
  write_npy("y.npy", "<i8", "(200,)", y, sizeof(y));
  tb_err_t err = {{0}};
  tb_job_t *job = job_in_dir(
      "{\"data\":{\"source\":\"npy\",\"x\":\"x.npy\",\"y\":\"y.npy\"},\"model\":{\"layers\":"
      "[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
      "\"sparse_categorical_crossentropy\",\"metrics\":[\"accuracy\"],\"optimizer\":{\"name\":"
      "\"adam\",\"learning_rate\":0.05},\"epochs\":10,\"verbose\":0}",
      &err);
  /* Budgeted from the headers: 200 rows of 2 values and of 1. */
  tb_job_estimate_t e;
  assert_int_equal(tb_job_estimate(job, &e, &err), 0);
  assert_int_equal(job->train_spec.file_rows, 200);
  assert_int_equal(job->train_spec.file_cols, 2);
  assert_int_equal(job->train_spec.file_ycols, 1);
  assert_int_equal(tb_job_prepare(job, &err), 0);
  assert_int_equal(job->train->n_classes, 2);
  tb_logs_t last;
  assert_int_equal(tb_model_fit(job->model, job->train, &job->fit, NULL, &last, &err), 0);
  double acc = 0;
  assert_true(tb_logs_get(&last, "accuracy", &acc));
  assert_true(acc > 0.95);
  tb_job_free(job);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_iris_job_trains_with_test_file),
      cmocka_unit_test(test_unseen_class_in_test_file),
      cmocka_unit_test(test_columns_by_name_and_missing_filled),
      cmocka_unit_test(test_class_names_survive_checkpoint_and_resume),
      cmocka_unit_test(test_weights_files_carry_class_names),
      cmocka_unit_test(test_npy_job_trains),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
