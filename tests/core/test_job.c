/* Job files: the demo parses and trains; every kind of bad job is refused
 * before training with a message naming the field's path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "trainbus/job.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_demo_parses_and_trains(void **state) {
  (void)state;
  tb_job_t *job;
  tb_err_t err = {{0}};
  const char *demo = tb_job_demo_spirals_json();
  assert_int_equal(tb_job_parse(demo, strlen(demo), "demo", NULL, &job, &err), 0);
  assert_string_equal(job->name, "demo-spirals");
  assert_int_equal(job->n_layers, 5);
  assert_int_equal(tb_job_prepare(job, &err), 0);
  assert_int_equal(job->train->n, 10000);
  assert_int_equal(tb_model_n_inputs(job->model), 2);
  job->fit.epochs = 3;
  job->fit.verbose = 0;
  tb_logs_t last;
  assert_int_equal(tb_model_fit(job->model, job->train, &job->fit, NULL, &last, &err), 0);
  double acc;
  assert_true(tb_logs_get(&last, "val_accuracy", &acc));
  assert_true(acc > 0.6);
  tb_job_free(job);
}

/* The demo is Fashion-MNIST where its files can be read, the spirals with
 * a notice where they cannot. */
static void test_demo_choice(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_demoXXXXXX", p[300], buf[4096], notice[1200];
  static const char *const files[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  tb_job_t *job;
  tb_err_t err = {{0}};
  assert_non_null(mkdtemp(dir));
  /* Three of the four files: not enough. */
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
  }
  assert_ptr_equal(tb_job_demo_json(dir, buf, sizeof(buf), notice, sizeof(notice)), buf);
  assert_string_equal(buf, tb_job_demo_spirals_json());
  assert_non_null(strstr(notice, "Fashion-MNIST cannot be read ("));
  assert_non_null(strstr(notice, "t10k-labels-idx1-ubyte.gz: No such file or directory; apt-get "
                                 "install dataset-fashion-mnist): the demo trains the spirals "
                                 "instead"));
  assert_null(strchr(notice, '\n'));
  snprintf(p, sizeof(p), "%s/%s", dir, files[3]);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fclose(f);
  assert_ptr_equal(tb_job_demo_json(dir, buf, sizeof(buf), notice, sizeof(notice)), buf);
  assert_string_equal(notice, "");
  assert_int_equal(tb_job_parse(buf, strlen(buf), "demo", NULL, &job, &err), 0);
  assert_string_equal(job->name, "demo-fashion-mnist");
  assert_int_equal(job->train_spec.source, TB_SRC_IDX);
  assert_int_equal(job->test_spec.source, TB_SRC_IDX);
  snprintf(p, sizeof(p), "%s/%s", dir, files[0]);
  assert_string_equal(job->train_spec.images, p);
  assert_int_equal(job->layers[job->n_layers - 1].units, 10);
  tb_job_free(job);
  assert_null(tb_job_demo_json(dir, buf, 100, NULL, 0)); /* too small a buffer */
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
    unlink(p);
  }
  rmdir(dir);
}

/* Each bad job and the exact message it must produce. */
static void test_bad_jobs(void **state) {
  (void)state;
#define BASE_MODEL                                                                                 \
  "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]}"
#define BASE_DATA "\"data\":{\"source\":\"spirals\"}"
  static const struct {
    const char *json;
    const char *message;
  } cases[] = {
      {"{" BASE_DATA ",\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":4},{\"type\":"
       "\"dense\",\"units\":4},{\"type\":\"dense\",\"units\":-3}]},\"loss\":\"mse\"}",
       "j: model.layers[2].units: expected a positive integer, got -3"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\",\"epoch\":3}",
       "j: epoch: unknown field (known: name, seed, threads, data, model, loss, metrics, "
       "optimizer, epochs, batch_size, validation_split, validation_freq, shuffle, verbose, "
       "callbacks, checkpoint_dir, checkpoint_every, distributed)"},
      {"{" BASE_DATA "," BASE_MODEL "}", "j: loss: missing (required)"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"hinge\"}",
       "j: loss: expected one of binary_crossentropy, categorical_crossentropy, "
       "sparse_categorical_crossentropy, mse, mae, got \"hinge\""},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\",\"epochs\":2.5}",
       "j: epochs: expected an integer in [1, 1000000], got 2.5"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\",\"optimizer\":{\"name\":\"adam\","
       "\"learning_rate\":-1}}",
       "j: optimizer.learning_rate: expected a finite positive number, got -1"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\",\"optimizer\":{\"name\":\"adam\","
       "\"momentum\":0.9}}",
       "j: optimizer.momentum: not a parameter of adam (only sgd rmsprop)"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\",\"validation_split\":1.5}",
       "j: validation_split: expected a number in [0, 1), got 1.5"},
      {"{\"data\":{\"source\":\"parquet\"}," BASE_MODEL ",\"loss\":\"mse\"}",
       "j: data.source: expected one of \"seed\", \"spirals\", \"blobs\", \"csv\", \"idx\", "
       "\"npy\", got \"parquet\""},
      {"{\"data\":{\"source\":\"csv\"}," BASE_MODEL ",\"loss\":\"mse\"}",
       "j: data.path: missing (required)"},
#define CSV_DATA(opts) "{\"data\":{\"source\":\"csv\",\"path\":\"a.csv\"," opts "}," BASE_MODEL
      {CSV_DATA("\"missing\":\"zero\"") ",\"loss\":\"mse\"}",
       "j: data.missing: expected \"error\", \"drop\" or {\"fill\": a number}, got \"zero\""},
      {CSV_DATA("\"missing\":{\"fill\":\"0\"}") ",\"loss\":\"mse\"}",
       "j: data.missing: expected \"error\", \"drop\" or {\"fill\": a number}, got "
       "{\"fill\":\"0\"}"},
      {CSV_DATA("\"feature_columns\":[]") ",\"loss\":\"mse\"}",
       "j: data.feature_columns: expected a non-empty array of column indices or names, got []"},
      {CSV_DATA("\"feature_columns\":[1,2.5]") ",\"loss\":\"mse\"}",
       "j: data.feature_columns[1]: expected a column's index or its name (1 to 1023 bytes), got "
       "2.5"},
      {CSV_DATA("\"feature_columns\":[\"\"]") ",\"loss\":\"mse\"}",
       "j: data.feature_columns[0]: expected a column's index or its name (1 to 1023 bytes), got "
       "\"\""},
      {CSV_DATA("\"header\":\"yes\"") ",\"loss\":\"mse\"}",
       "j: data.header: expected true or false (leave it out to detect the header), got \"yes\""},
      /* What the CSV loader refuses as an argument is refused here, before
       * the job is queued (an invariant of fuzz_job). */
      {CSV_DATA("\"delimiter\":\"\\n\"") ",\"loss\":\"mse\"}",
       "j: data.delimiter: expected a single character, not a line break or a quote, got "
       "\"\\n\""},
      {CSV_DATA("\"delimiter\":\"\\\"\"") ",\"loss\":\"mse\"}",
       "j: data.delimiter: expected a single character, not a line break or a quote, got "
       "\"\\\"\""},
      {CSV_DATA("\"header\":false,\"label_column\":\"species\"") ",\"loss\":\"mse\"}",
       "j: data.label_column: names a column, but header is false"},
      {CSV_DATA("\"header\":false,\"feature_columns\":[0,\"b\"]") ",\"loss\":\"mse\"}",
       "j: data.feature_columns: names a column, but header is false"},
      {CSV_DATA("\"label_column\":\"\"") ",\"loss\":\"mse\"}",
       "j: data.label_column: expected a column's index or its name (1 to 255 bytes), got \"\""},
      {CSV_DATA("\"label_column\":1.5") ",\"loss\":\"mse\"}",
       "j: data.label_column: expected an integer in [-1048576, 1048575], got 1.5"},
      {"{\"data\":{\"source\":\"spirals\",\"path\":\"a.csv\"}," BASE_MODEL ",\"loss\":\"mse\"}",
       "j: data.path: not an option of source \"spirals\""},
      {"{\"data\":{\"source\":\"npy\",\"x\":\"x.npy\"}," BASE_MODEL ",\"loss\":\"mse\"}",
       "j: data.y: missing (required)"},
      {"{\"data\":{\"source\":\"npy\",\"x\":\"x.npy\",\"y\":\"y.npy\",\"header\":true}," BASE_MODEL
       ",\"loss\":\"mse\"}",
       "j: data.header: not an option of source \"npy\""},
      {"{\"data\":{\"source\":\"idx\",\"images\":\"i\",\"labels\":\"l\",\"classes\":false}"
       "," BASE_MODEL ",\"loss\":\"mse\"}",
       "j: data.classes: not an option of source \"idx\""},
      {"{" BASE_DATA ",\"model\":{\"layers\":[{\"type\":\"conv2d\"}]},\"loss\":\"mse\"}",
       "j: model.layers[0].type: expected \"dense\", \"dropout\" or \"activation\", got "
       "\"conv2d\""},
      {"{" BASE_DATA ",\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":2,\"activation\":"
       "\"gelu\"}]},\"loss\":\"mse\"}",
       "j: model.layers[0].activation: expected one of linear, relu, leaky_relu, sigmoid, tanh, "
       "softmax, got \"gelu\""},
      {"{" BASE_DATA ",\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":2},{\"type\":"
       "\"dropout\",\"rate\":0.5}]},\"loss\":\"mse\"}",
       "j: model.layers[1]: the last layer cannot be dropout"},
      /* What tb_model_compile and the generators refuse for reasons the
       * document alone decides is refused here, before the job is queued. */
      {"{" BASE_DATA "," BASE_MODEL
       ",\"loss\":\"sparse_categorical_crossentropy\",\"metrics\":[\"acc\",\"MAE\"]}",
       "j: metrics[1]: mse and mae need dense targets, not the sparse labels of "
       "sparse_categorical_crossentropy"},
      {"{" BASE_DATA ",\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":1},{\"type\":"
       "\"activation\",\"activation\":\"softmax\"}]},\"loss\":\"categorical_crossentropy\"}",
       "j: loss: categorical_crossentropy needs at least 2 output units, the last dense layer has "
       "1"},
      {"{\"data\":{\"source\":\"blobs\",\"n\":100000000,\"features\":100}," BASE_MODEL
       ",\"loss\":\"mse\"}",
       "j: data: 100000000 rows of 100 features are more than the 2147483647 values a data set "
       "may hold"},
      {"{\"data\":{\"source\":\"blobs\",\"n\":10,\"classes\":100000,\"features\":100000}"
       "," BASE_MODEL ",\"loss\":\"mse\"}",
       "j: data: 100000 centers of 100000 features are more than the 2147483647 values a data set "
       "may hold"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\",\"loss\":\"mae\"}",
       "j: loss: duplicate field"},
      {"{" BASE_DATA ",\n  " BASE_MODEL ",\n  \"loss\": mse}", "j:3:11: not valid JSON"},
      {"[1,2]", "j: (top level): expected an object, got [1,2]"},
      {"{" BASE_DATA "," BASE_MODEL ",\"loss\":\"mse\"} x",
       "j: trailing characters after the JSON object"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tb_job_t *job = (tb_job_t *)1;
    tb_err_t err = {{0}};
    int r = tb_job_parse(cases[i].json, strlen(cases[i].json), "j", NULL, &job, &err);
    if (r == 0 || strcmp(err.msg, cases[i].message) != 0)
      fail_msg("case %zu: got %d \"%s\", want \"%s\"", i, r, err.msg, cases[i].message);
    assert_null(job);
  }
}

/* Errors found only when preparing: data files and shapes. */
static void test_prepare_errors(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_jobXXXXXX", path[256];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/job.json", dir);
  FILE *f = fopen(path, "w");
  fputs("{\"data\":{\"source\":\"csv\",\"path\":\"missing.csv\"},\"model\":{\"layers\":"
        "[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"
        "\"loss\":\"sparse_categorical_crossentropy\"}",
        f);
  fclose(f);
  tb_job_t *job;
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_load(path, &job, &err), 0);
  assert_int_not_equal(tb_job_prepare(job, &err), 0);
  /* relative data paths resolve against the job file's folder */
  char want[512];
  snprintf(want, sizeof(want), "%s/missing.csv", dir);
  assert_non_null(strstr(err.msg, want));
  tb_job_free(job);

  /* a CSV with 3 classes and a 2-unit softmax */
  char csv[256];
  snprintf(csv, sizeof(csv), "%s/d.csv", dir);
  f = fopen(csv, "w");
  fputs("a,b,label\n1,2,0\n3,4,1\n5,6,2\n", f);
  fclose(f);
  f = fopen(path, "w");
  fputs("{\"data\":{\"source\":\"csv\",\"path\":\"d.csv\",\"skip_rows\":1},\"model\":"
        "{\"layers\":[{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"
        "\"loss\":\"sparse_categorical_crossentropy\"}",
        f);
  fclose(f);
  assert_int_equal(tb_job_load(path, &job, &err), 0);
  assert_int_equal(tb_job_prepare(job, &err), TB_ESHAPE);
  assert_non_null(strstr(err.msg, "3 classes but the last layer has 2 units"));
  tb_job_free(job);

  /* the same data with categorical_crossentropy and 3 units is one-hot encoded */
  f = fopen(path, "w");
  fputs("{\"data\":{\"source\":\"csv\",\"path\":\"d.csv\",\"skip_rows\":1,\"scale\":\"minmax\"},"
        "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":3,\"activation\":\"softmax\"}]},"
        "\"loss\":\"categorical_crossentropy\",\"epochs\":2,\"batch_size\":2}",
        f);
  fclose(f);
  assert_int_equal(tb_job_load(path, &job, &err), 0);
  assert_int_equal(tb_job_prepare(job, &err), 0);
  assert_int_equal(job->train->n_outputs, 3);
  assert_float_equal(job->train->x[0], 0.0, 0); /* min-max scaled */
  assert_float_equal(job->train->x[4], 1.0, 0);
  job->fit.verbose = 0;
  assert_int_equal(tb_model_fit(job->model, job->train, &job->fit, NULL, NULL, &err), 0);
  tb_job_free(job);
  remove(csv);
  remove(path);
  rmdir(dir);
}

static void test_job_callbacks(void **state) {
  (void)state;
  const char *good =
      "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":1,"
      "\"activation\":\"sigmoid\"}]},\"loss\":\"binary_crossentropy\",\"epochs\":3,"
      "\"checkpoint_dir\":\"ck\",\"checkpoint_every\":2,\"callbacks\":["
      "{\"type\":\"EarlyStopping\",\"monitor\":\"loss\",\"patience\":2,\"baseline\":0.5},"
      "{\"type\":\"ReduceLROnPlateau\",\"monitor\":\"loss\",\"factor\":0.5,\"cooldown\":1},"
      "{\"type\":\"LearningRateScheduler\",\"schedule\":\"piecewise\",\"boundaries\":[1],"
      "\"values\":[0.1,0.01]},"
      "{\"type\":\"ModelCheckpoint\",\"filepath\":\"w-{epoch}.tbw\",\"save_freq\":5},"
      "{\"type\":\"CSVLogger\",\"filename\":\"log.csv\",\"separator\":\";\"},"
      "{\"type\":\"TerminateOnNaN\"},"
      "{\"type\":\"BackupAndRestore\",\"backup_dir\":\"bk\",\"name\":\"bk1\"}]}";
  tb_job_t *job;
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_parse(good, strlen(good), "j", "/base", &job, &err), 0);
  assert_int_equal(job->n_callbacks, 7);
  assert_string_equal(job->callbacks[0]->name, "EarlyStopping");
  assert_string_equal(job->callbacks[6]->name, "bk1");
  /* a rank other than 0 of an MPI run keeps those that decide, not those
   * that write (ModelCheckpoint, CSVLogger, BackupAndRestore) */
  static const bool writes[7] = {false, false, false, true, true, false, true};
  assert_memory_equal(job->callback_writes, writes, sizeof(writes));
  tb_callbacks_t l0, l1;
  tb_callbacks_init(&l0);
  tb_callbacks_init(&l1);
  assert_int_equal(tb_job_add_callbacks_rank(job, &l0, 0), 0);
  assert_int_equal(tb_job_add_callbacks_rank(job, &l1, 1), 0);
  assert_int_equal(l0.n, 7);
  assert_int_equal(l1.n, 4);
  assert_string_equal(l1.items[3]->name, "TerminateOnNaN");
  tb_callbacks_release(&l0);
  tb_callbacks_release(&l1);
  assert_string_equal(job->checkpoint_dir, "/base/ck");
  assert_int_equal(job->fit.checkpoint_every, 2);
  assert_int_equal(strlen(job->id), 16);
  char id[17];
  memcpy(id, job->id, sizeof(id));
  tb_job_free(job);
  /* epochs is not part of the fingerprint; the model is */
  char *more = strdup(good);
  memcpy(strstr(more, "\"epochs\":3"), "\"epochs\":9", 10);
  assert_int_equal(tb_job_parse(more, strlen(more), "j", NULL, &job, &err), 0);
  assert_string_equal(job->id, id);
  tb_job_free(job);
  memcpy(strstr(more, "\"units\":1"), "\"units\":2", 9);
  assert_int_equal(tb_job_parse(more, strlen(more), "j", NULL, &job, &err), 0);
  assert_string_not_equal(job->id, id);
  tb_job_free(job);
  free(more);

#define HEAD                                                                                       \
  "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":1}]},"     \
  "\"loss\":\"mse\",\"callbacks\":["
  static const struct {
    const char *json, *message;
  } bad[] = {
      {HEAD "{\"type\":\"Tensorboard\"}]}",
       "j: callbacks[0].type: expected one of EarlyStopping, ReduceLROnPlateau, "
       "LearningRateScheduler, ModelCheckpoint, CSVLogger, TerminateOnNaN, BackupAndRestore, got "
       "\"Tensorboard\""},
      {HEAD "{\"type\":\"EarlyStopping\",\"patience\":-1}]}",
       "j: callbacks[0].patience: expected a non-negative integer, got -1"},
      {HEAD "{\"type\":\"EarlyStopping\",\"patiense\":1}]}",
       "j: callbacks[0].patiense: unknown field (known: type, name, monitor, min_delta, patience, "
       "verbose, mode, baseline, restore_best_weights, start_from_epoch)"},
      {HEAD "{\"type\":\"ReduceLROnPlateau\",\"factor\":1.5}]}",
       "j: callbacks[0].factor: expected a number in (0, 1), got 1.5"},
      {HEAD "{\"type\":\"ReduceLROnPlateau\",\"mode\":\"up\"}]}",
       "j: callbacks[0].mode: expected \"auto\", \"min\" or \"max\", got \"up\""},
      {HEAD "{\"type\":\"LearningRateScheduler\",\"schedule\":\"piecewise\",\"boundaries\":[2],"
            "\"values\":[1]}]}",
       "j: callbacks[0].values: expected an array with one more rate than boundaries, got [1]"},
      {HEAD "{\"type\":\"ModelCheckpoint\"}]}", "j: callbacks[0].filepath: missing (required)"},
      {HEAD "{\"type\":\"ModelCheckpoint\",\"filepath\":\"x\",\"save_freq\":\"batch\"}]}",
       "j: callbacks[0].save_freq: expected \"epoch\" or a positive number of batches, got "
       "\"batch\""},
      /* a pattern Python's str.format refuses, with Python's reason */
      {HEAD "{\"type\":\"ModelCheckpoint\",\"filepath\":\"w-{epoch:>3q}\"}]}",
       "j: callbacks[0]: ModelCheckpoint: filepath \"w-{epoch:>3q}\": Unknown format code 'q' "
       "for object of type 'int'"},
      {HEAD "{\"type\":\"ModelCheckpoint\",\"filepath\":\"w-{val_loss:02d}\"}]}",
       "j: callbacks[0]: ModelCheckpoint: filepath \"w-{val_loss:02d}\": Unknown format code 'd' "
       "for object of type 'float'"},
      /* the schedule parameters belong to their schedule */
      {HEAD "{\"type\":\"LearningRateScheduler\",\"schedule\":\"cosine\",\"decay_epochs\":3,"
            "\"drop\":0.5}]}",
       "j: callbacks[0].drop: not a parameter of schedule \"cosine\" (only step)"},
      {HEAD "{\"type\":\"LearningRateScheduler\",\"schedule\":\"exponential\","
            "\"decay_epochs\":3}]}",
       "j: callbacks[0]: schedule \"exponential\" needs decay_epochs and decay_rate"},
      {HEAD "{\"type\":\"CSVLogger\",\"filename\":\"a\",\"separator\":\";;\"}]}",
       "j: callbacks[0].separator: expected a single character, got \";;\""},
      {HEAD "]"
            ",\"checkpoint_every\":3}",
       "j: checkpoint_every: needs checkpoint_dir"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    job = NULL;
    err.msg[0] = '\0';
    int r = tb_job_parse(bad[i].json, strlen(bad[i].json), "j", NULL, &job, &err);
    if (r == 0 || strcmp(err.msg, bad[i].message) != 0)
      fail_msg("case %zu: got %d \"%s\", want \"%s\"", i, r, err.msg, bad[i].message);
    assert_null(job);
  }
}

/* "distributed": parsed, every fault named, and not in the fingerprint (a
 * checkpoint resumes on another number of ranks). */
static void test_distributed(void **state) {
  (void)state;
#define DJOB(d)                                                                                    \
  "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":1,"        \
  "\"activation\":\"sigmoid\"}]},\"loss\":\"binary_crossentropy\"" d "}"
  tb_job_t *job, *plain;
  tb_err_t err = {{0}};
  const char *good = DJOB(",\"distributed\":{\"ranks\":4,\"hosts\":[\"node1:2\",\"10.0.0.7\"]}");
  assert_int_equal(tb_job_parse(good, strlen(good), "j", NULL, &job, &err), 0);
  assert_int_equal(job->dist_ranks, 4);
  assert_string_equal(job->dist_hosts, "node1:2,10.0.0.7");
  assert_string_equal(job->dist_hostfile, "");
  assert_int_equal(tb_job_parse(DJOB(""), strlen(DJOB("")), "j", NULL, &plain, &err), 0);
  assert_int_equal(plain->dist_ranks, 0);
  assert_string_equal(job->id, plain->id);
  tb_job_free(job);
  tb_job_free(plain);
  const char *hf = DJOB(",\"distributed\":{\"ranks\":2,\"hostfile\":\"hosts\"}");
  assert_int_equal(tb_job_parse(hf, strlen(hf), "j", "/base", &job, &err), 0);
  assert_string_equal(job->dist_hostfile, "/base/hosts");
  tb_job_free(job);
  static const struct {
    const char *json, *message;
  } bad[] = {
      {DJOB(",\"distributed\":4"),
       "j: distributed: expected an object such as {\"ranks\": 2}, got 4"},
      {DJOB(",\"distributed\":{}"), "j: distributed.ranks: missing (required)"},
      {DJOB(",\"distributed\":{\"ranks\":0}"),
       "j: distributed.ranks: expected an integer in [1, 1024], got 0"},
      {DJOB(",\"distributed\":{\"ranks\":2,\"hosts\":[\"-oops\"]}"),
       "j: distributed.hosts[0]: expected a host name, optionally with \":slots\" (letters, "
       "digits, . - _ :), got \"-oops\""},
      {DJOB(",\"distributed\":{\"ranks\":2,\"hosts\":[\"a;rm\"]}"),
       "j: distributed.hosts[0]: expected a host name, optionally with \":slots\" (letters, "
       "digits, . - _ :), got \"a;rm\""},
      {DJOB(",\"distributed\":{\"ranks\":2,\"hosts\":[]}"),
       "j: distributed.hosts: expected an array of 1 to 64 host names, got []"},
      {DJOB(",\"distributed\":{\"ranks\":2,\"hosts\":[\"a\"],\"hostfile\":\"h\"}"),
       "j: distributed: give hosts or hostfile, not both"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    job = NULL;
    err.msg[0] = '\0';
    int r = tb_job_parse(bad[i].json, strlen(bad[i].json), "j", NULL, &job, &err);
    if (r == 0 || strcmp(err.msg, bad[i].message) != 0)
      fail_msg("case %zu: got %d \"%s\", want \"%s\"", i, r, err.msg, bad[i].message);
    assert_null(job);
  }
  /* an unknown key inside it */
  const char *unk = DJOB(",\"distributed\":{\"ranks\":2,\"rank\":1}");
  assert_int_not_equal(tb_job_parse(unk, strlen(unk), "j", NULL, &job, &err), 0);
  assert_non_null(strstr(err.msg, "distributed"));
#undef DJOB
}

/* A message is one line whatever the document holds (error.h): a key, a
 * filepath pattern or a path with a control character in it is shown with
 * that character as \xNN. fuzz_job's first finding: an unknown key with a
 * carriage return in it came back in the message as it was. */
static void test_messages_one_line(void **state) {
  (void)state;
  tb_job_t *job = NULL;
  tb_err_t err = {{0}};
  const char *key = "{\"na\\rme\":\"x\"}";
  assert_int_equal(tb_job_parse(key, strlen(key), "j", NULL, &job, &err), TB_EINVAL);
  assert_null(job);
  assert_string_equal(err.msg, "j: na\\x0dme: unknown field (known: name, seed, threads, data, "
                               "model, loss, metrics, optimizer, epochs, batch_size, "
                               "validation_split, validation_freq, shuffle, verbose, callbacks, "
                               "checkpoint_dir, checkpoint_every, distributed)");
  /* Python's message for the pattern quotes its spec, escape and all. */
  const char *pattern = "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":"
                        "\"dense\",\"units\":1}]},\"loss\":\"mse\",\"callbacks\":[{\"type\":"
                        "\"ModelCheckpoint\",\"filepath\":\"w-{epoch:\\u001b[2J}\"}]}";
  assert_int_equal(tb_job_parse(pattern, strlen(pattern), "j", NULL, &job, &err), TB_EINVAL);
  assert_null(strchr(err.msg, 0x1b));
  assert_non_null(strstr(err.msg, "filepath \"w-{epoch:\\x1b[2J}\""));
  /* A path that a confined policy refuses is named in its message. */
  const char *path = "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\","
                     "\"units\":1}]},\"loss\":\"mse\",\"checkpoint_dir\":\"/elsewhere/a\\nb\"}";
  assert_int_equal(tb_job_parse(path, strlen(path), "j", "/data", &job, &err), 0);
  static const char *const dirs[] = {"/data"};
  tb_job_policy_t net = {.data = {.confined = true, .dirs = dirs, .n_dirs = 1, .redact = true}};
  assert_int_equal(tb_job_check(job, &net, NULL, &err), TB_EINVAL);
  assert_string_equal(err.msg,
                      "j: checkpoint_dir: /elsewhere/a\\x0ab: outside the data directories");
  tb_job_free(job);

  /* tb_errf itself: every control character, DEL too; the message may be
   * an argument; an escape that does not fit is left out whole. */
  assert_int_equal(tb_errf(&err, TB_EINVAL, "a%sb", "\t\x1b\x7f"), TB_EINVAL);
  assert_string_equal(err.msg, "a\\x09\\x1b\\x7fb");
  tb_errf(&err, TB_EINVAL, "again: %s", err.msg);
  assert_string_equal(err.msg, "again: a\\x09\\x1b\\x7fb");
  char longer[sizeof(err.msg)];
  memset(longer, 'a', sizeof(longer) - 3);
  longer[sizeof(longer) - 3] = '\n';
  longer[sizeof(longer) - 2] = '\0';
  tb_errf(&err, TB_EINVAL, "%s", longer);
  assert_int_equal(strlen(err.msg), sizeof(longer) - 3);
  assert_null(strchr(err.msg, '\\'));
}

int main(void) {
  tb_set_num_threads(1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_demo_parses_and_trains),
      cmocka_unit_test(test_demo_choice),
      cmocka_unit_test(test_bad_jobs),
      cmocka_unit_test(test_prepare_errors),
      cmocka_unit_test(test_job_callbacks),
      cmocka_unit_test(test_distributed),
      cmocka_unit_test(test_messages_one_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
