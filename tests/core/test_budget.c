/* Job budgets and confinement (job.h): tb_job_estimate()'s figures, checked
 * by hand and against what the allocator actually hands out; tb_job_check()
 * refusing jobs over a budget (the two 60000-unit layers, a huge
 * batch, huge generated data, large files) and paths outside the data
 * folders; tb_job_prepare() reading no more than was measured and checking
 * again with the data as loaded; tb_job_release(). */
/* realpath(), symlink() and ftruncate() are XSI/POSIX extensions. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"
#include "trainbus/job.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
/* From the sanitizer runtime (sanitizer/allocator_interface.h, which GCC's
 * packages do not always ship): bytes its allocator has handed out. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define GiB (1024.0 * 1024.0 * 1024.0)

static char root[] = "/tmp/tb_test_budget_XXXXXX";
static char data_dir[PATH_MAX]; /* root/data, canonical */

static void path_in(char *buf, size_t len, const char *rel) {
  snprintf(buf, len, "%s/%s", root, rel);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fputs(text, f) >= 0, 1);
  assert_int_equal(fclose(f), 0);
}

/* A file of `size` bytes that starts with `head`: sparse, so a 3 GiB file
 * costs nothing on disk. */
static void write_sparse(const char *path, const char *head, off_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, head, strlen(head)), (ssize_t)strlen(head));
  assert_int_equal(ftruncate(fd, size), 0);
  close(fd);
}

static int group_setup(void **state) {
  char p[600], q[600];
  if (mkdtemp(root) == NULL)
    return -1;
  path_in(p, sizeof(p), "data");
  if (mkdir(p, 0700) != 0 || realpath(p, data_dir) == NULL)
    return -1;
  path_in(p, sizeof(p), "out");
  mkdir(p, 0700);
  path_in(p, sizeof(p), "out/secret.csv");
  write_text(p, "1,0\n2,1\n");
  path_in(p, sizeof(p), "data/ok.csv");
  write_text(p, "1,0\n2,1\n3,0\n4,1\n");
  path_in(p, sizeof(p), "data/link-out.csv");
  path_in(q, sizeof(q), "out/secret.csv");
  if (symlink(q, p) != 0)
    return -1;
  path_in(p, sizeof(p), "data/out-dir");
  path_in(q, sizeof(q), "out");
  if (symlink(q, p) != 0)
    return -1;
  return 0;
}

static int group_teardown(void **state) {
  static const char *const files[] = {"data/ok.csv",    "data/link-out.csv", "data/out-dir",
                                      "data/big.csv",   "data/huge.csv",     "data/grow.csv",
                                      "data/wide.csv",  "data/labels.csv",   "data/reg.csv",
                                      "out/secret.csv", "out/w.tbw"};
  char p[600];
  for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    path_in(p, sizeof(p), files[i]);
    unlink(p);
  }
  path_in(p, sizeof(p), "data");
  rmdir(p);
  path_in(p, sizeof(p), "out");
  rmdir(p);
  return rmdir(root);
}

static tb_job_t *parse(const char *json, const char *base) {
  tb_job_t *job = NULL;
  tb_err_t err = {{0}};
  if (tb_job_parse(json, strlen(json), "params.job", base, &job, &err) != 0) {
    print_error("parse: %s\n", err.msg);
    fail();
  }
  return job;
}

static void check_msg(const char *msg, const char *want) {
  if (strstr(msg, want) == NULL) {
    print_error("message \"%s\"\n  does not contain \"%s\"\n", msg, want);
    fail();
  }
}

/* ---- the estimate ------------------------------------------------------ */

#define SMALL_JOB                                                                                  \
  "{\"data\":{\"source\":\"spirals\",\"n_per_class\":100},"                                        \
  "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":16,\"activation\":\"relu\"},"              \
  "{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"                                 \
  "\"loss\":\"sparse_categorical_crossentropy\",\"optimizer\":\"adam\",\"batch_size\":32,"         \
  "\"validation_split\":0.2}"

static void test_estimate_by_hand(void **state) {
  tb_job_t *job = parse(SMALL_JOB, NULL);
  tb_job_estimate_t e;
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_estimate(job, &e, &err), 0);
  /* P = 2*16+16 + 16*2+2 = 82; weights and gradients 8 bytes each, Adam's
   * two slots 8 more. */
  assert_int_equal(e.n_params, 82);
  assert_int_equal(e.params, 656);
  assert_int_equal(e.optimizer, 656);
  /* 200 rows, 160 trained on: buffers for min(32, 160) rows of
   * 3*16 + 3*2 (z, a, g) + 2 (dout) + 2 (x) + 2 (y) floats. */
  assert_int_equal(e.rows, 32);
  assert_int_equal(e.activations, 4 * 32 * 60);
  /* x and y of 200 rows (2 features, 1 label), and the row order. */
  assert_int_equal(e.data, 4 * 200 * 3 + 4 * 160);
  assert_int_equal(e.validation, 4 * 200 * 3);
  assert_int_equal(e.checkpoint, 0);
  assert_int_equal(e.other, 1 << 20);
  assert_int_equal(e.total, 3040 + 2400 + 656 + 656 + 7680 + (1 << 20));
  /* A runner that checkpoints: three copies of weights, slots, row order. */
  tb_job_policy_t pol = {.checkpoints = true};
  assert_int_equal(tb_job_check(job, &pol, &e, &err), 0);
  assert_int_equal(e.checkpoint, 3 * 4 * (82 * 3 + 160));
  tb_job_free(job);

  /* SGD without momentum keeps no slots; RMSprop with momentum two; one-hot
   * labels for categorical_crossentropy widen y to the output's units. */
  job = parse("{\"data\":{\"source\":\"blobs\",\"n\":100,\"classes\":3,\"features\":4},"
              "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":3,\"activation\":"
              "\"softmax\"}]},\"loss\":\"categorical_crossentropy\",\"optimizer\":\"sgd\","
              "\"batch_size\":1000}",
              NULL);
  assert_int_equal(tb_job_estimate(job, &e, &err), 0);
  assert_int_equal(e.optimizer, 0);
  assert_int_equal(e.rows, 100);
  assert_int_equal(e.data, 4 * 100 * (4 + 3) + 4 * 100);
  tb_job_free(job);
}

/* With threads, every lane holds its share of the rows rounded up, and
 * every lane but the first a partial gradient; a model this small stays on
 * one lane unless forced (step.c: too little work to share). */
static void test_estimate_threads(void **state) {
  tb__threading_force = 0;
  char named[1024];
  snprintf(named, sizeof(named), "{\"threads\":3,%s", SMALL_JOB + 1);
  /* the job's count, then the process's when the job names none */
  const char *jobs[] = {named, SMALL_JOB};
  for (int i = 0; i < 2; i++) {
    if (i == 1)
      tb_set_num_threads(3);
    tb_job_t *job = parse(jobs[i], NULL);
    tb_job_estimate_t e;
    tb_err_t err = {{0}};
    assert_int_equal(tb_job_estimate(job, &e, &err), 0);
    assert_int_equal(e.threads, 3);
    /* 32 rows over 3 lanes of 11 rows; 82 weights, their gradients, and 2
     * lanes' partial gradients. */
    assert_int_equal(e.rows, 32);
    assert_int_equal(e.activations, 4 * 3 * 11 * 60);
    assert_int_equal(e.params, 4 * 82 * 4);
    tb_job_free(job);
  }
  tb__threading_force = -1;
  tb_job_t *job = parse(named, NULL);
  tb_job_estimate_t e;
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_estimate(job, &e, &err), 0);
  assert_int_equal(e.threads, 3);
  assert_int_equal(e.activations, 4 * 32 * 60);
  assert_int_equal(e.params, 656);
  tb_job_free(job);
  tb_set_num_threads(1);
}

/* Bytes the allocator has handed out and not taken back. */
static size_t in_use(void) {
#ifdef __SANITIZE_ADDRESS__
  return __sanitizer_get_current_allocated_bytes();
#else
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
#endif
}

/* A job of some 20 MB: what prepare and fit leave allocated (everything but
 * the validation copies, which fit frees) is the estimate's training peak
 * without those copies, to within 5 %, on one thread and on three. */
static void against_allocator(int threads) {
  char json[1024];
  snprintf(json, sizeof(json), "{\"threads\":%d,%s", threads,
           "\"seed\":3,\"data\":{\"source\":\"blobs\",\"n\":20000,\"classes\":4,"
           "\"features\":64},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":"
           "512,\"activation\":\"relu\"},{\"type\":\"dropout\",\"rate\":0.1},"
           "{\"type\":\"dense\",\"units\":512,\"activation\":\"relu\"},{\"type\":"
           "\"dense\",\"units\":4,\"activation\":\"softmax\"}]},"
           "\"loss\":\"categorical_crossentropy\",\"optimizer\":\"adam\","
           "\"batch_size\":256,\"epochs\":1,\"verbose\":0}");
  tb_job_t *job = parse(json, NULL);
  tb_job_estimate_t e;
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_estimate(job, &e, &err), 0);
  size_t before = in_use();
  assert_int_equal(tb_job_prepare(job, &err), 0);
  assert_int_equal(tb_model_fit(job->model, job->train, &job->fit, NULL, NULL, &err), 0);
  double used = (double)(in_use() - before);
  double want = (double)(e.params + e.optimizer + e.activations + e.data);
  print_message("estimate %.0f, allocated %.0f (%.2f)\n", want, used, used / want);
  assert_true(used <= 1.05 * want);
  assert_true(used >= 0.95 * want);
  assert_true(e.total >= (uint64_t)used);
  tb_job_release(job);
  assert_null(job->model);
  assert_null(job->train);
  /* What release gave back is what prepare took (the callbacks stay). */
  assert_true(in_use() - before < 64 * 1024);
  /* A released job prepares and trains again. */
  assert_int_equal(tb_job_prepare(job, &err), 0);
  tb_job_free(job);
  tb_set_num_threads(1);
}

static void test_estimate_against_allocator(void **state) {
  against_allocator(1);
  against_allocator(3);
}

/* ---- budgets ----------------------------------------------------------- */

static tb_job_policy_t budget(double gib) {
  tb_job_policy_t p = {.max_bytes = (uint64_t)(gib * GiB), .limit_name = "--max-job-memory"};
  return p;
}

static void refused(const char *json, double gib, const char *const *want) {
  tb_job_t *job = parse(json, NULL);
  tb_job_policy_t pol = budget(gib);
  tb_job_estimate_t e;
  tb_err_t err = {{0}};
  int r = tb_job_check(job, &pol, &e, &err);
  if (r != TB_ERANGE) {
    print_error("got %s: %s\n", tb_err_name(r), err.msg);
    fail();
  }
  assert_true(e.total > pol.max_bytes);
  check_msg(err.msg, "params.job: needs an estimated ");
  check_msg(err.msg, " of memory at its peak (");
  for (int i = 0; want[i] != NULL; i++)
    check_msg(err.msg, want[i]);
  /* Nothing was allocated for it: parsing and checking only. */
  assert_null(job->model);
  assert_null(job->train);
  tb_job_free(job);
}

static void test_budget_refusals(void **state) {
  /* The job: two Dense layers of 60000 units. */
  refused("{\"data\":{\"source\":\"spirals\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":"
          "60000,\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":60000,\"activation\":"
          "\"relu\"},{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
          "\"sparse_categorical_crossentropy\",\"epochs\":1}",
          1.0,
          (const char *const[]){"needs an estimated 53.", "weights and gradients 26.8 GiB",
                                "optimizer slots 26.8 GiB",
                                "more than the 1.00 GiB a job may use (--max-job-memory)", NULL});
  /* A huge batch over two million rows. */
  refused("{\"data\":{\"source\":\"spirals\",\"n_per_class\":1000000},\"model\":{\"layers\":["
          "{\"type\":\"dense\",\"units\":4096,\"activation\":\"relu\"},{\"type\":\"dense\","
          "\"units\":2,\"activation\":\"softmax\"}]},\"loss\":\"sparse_categorical_crossentropy\","
          "\"batch_size\":1048576}",
          1.0, (const char *const[]){"layer buffers 48.", "(1048576 rows)", NULL});
  /* Huge generated data: 2 * 10^7 rows of 100 features (more values than
   * that, past 2^31 - 1, are refused when the job is parsed). */
  refused("{\"data\":{\"source\":\"blobs\",\"n\":20000000,\"features\":100},\"model\":"
          "{\"layers\":[{\"type\":\"dense\",\"units\":3,\"activation\":\"softmax\"}]},\"loss\":"
          "\"sparse_categorical_crossentropy\"}",
          1.0, (const char *const[]){"data 7.60 GiB", NULL});

  /* The spirals demo fits in 64 MiB, and its estimate says how little it
   * needs. */
  tb_job_t *job = parse(tb_job_demo_spirals_json(), NULL);
  tb_job_policy_t pol = budget(1.0 / 16);
  tb_job_estimate_t e;
  tb_err_t err = {{0}};
  assert_int_equal(tb_job_check(job, &pol, &e, &err), 0);
  assert_true(e.total > 1000000 && e.total < 8000000);
  tb_job_free(job);
  /* The Fashion-MNIST demo (where the dataset is installed) within 1 GiB:
   * 70000 images of 784 floats, and the file read whole while loading. */
  char demo[4096], notice[1200];
  assert_non_null(tb_job_demo_json(NULL, demo, sizeof(demo), notice, sizeof(notice)));
  if (notice[0] == '\0') {
    job = parse(demo, NULL);
    pol = budget(1.0);
    assert_int_equal(tb_job_check(job, &pol, &e, &err), 0);
    assert_true(e.data > 70000.0 * 784 * 4 && e.total < 1.0 * GiB);
    tb_job_free(job);
  }
}

static void test_budget_files(void **state) {
  char p[600], json[2048];
  tb_err_t err = {{0}};
  tb_job_estimate_t e;
  const char *dirs[1] = {data_dir};
  tb_job_policy_t pol = budget(1.0);
  pol.data = (tb_data_limits_t){.confined = true, .dirs = dirs, .n_dirs = 1, .redact = true};

  /* A large file: 1.5 GiB of CSV is up to 0.75 G values, refused by its
   * size before a byte of it is read past the first row. */
  path_in(p, sizeof(p), "data/big.csv");
  write_sparse(p, "1,0\n", (off_t)(1.5 * GiB));
  snprintf(json, sizeof(json),
           "{\"data\":{\"source\":\"csv\",\"path\":\"big.csv\"},\"model\":{\"layers\":[{\"type\":"
           "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
           "\"sparse_categorical_crossentropy\"}");
  tb_job_t *job = parse(json, data_dir);
  assert_int_equal(tb_job_check(job, &pol, &e, &err), TB_ERANGE);
  check_msg(err.msg, "params.job: needs an estimated ");
  check_msg(err.msg, "data 4.50 GiB"); /* x, y and the row order of 0.4 G rows */
  check_msg(err.msg, "loading 2.00 GiB");
  assert_true(e.loading >= (uint64_t)(1.5 * GiB));
  tb_job_free(job);

  /* Larger than any data file may be: refused by name. */
  path_in(p, sizeof(p), "data/huge.csv");
  write_sparse(p, "1,0\n", (off_t)3 * 1024 * 1024 * 1024);
  job = parse("{\"data\":{\"source\":\"csv\",\"path\":\"huge.csv\"},\"model\":{\"layers\":[{"
              "\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
              "\"sparse_categorical_crossentropy\"}",
              data_dir);
  assert_int_equal(tb_job_check(job, &pol, &e, &err), TB_ERANGE);
  check_msg(err.msg, "params.job: data.path: ");
  check_msg(err.msg, "huge.csv: 3221225472 bytes, more than the 2147483647 a data file may have");
  tb_job_free(job);
}

/* ---- confinement --------------------------------------------------------- */

static int check_confined(const char *json, int n_dirs, tb_err_t *err) {
  const char *dirs[1] = {data_dir};
  tb_job_policy_t pol = {
      .data = {.confined = true, .dirs = dirs, .n_dirs = n_dirs, .redact = true}};
  tb_job_t *job = parse(json, n_dirs > 0 ? data_dir : NULL);
  err->msg[0] = '\0';
  int r = tb_job_check(job, &pol, NULL, err);
  tb_job_free(job);
  return r;
}

#define CSV_JOB(path, extra)                                                                       \
  "{\"data\":{\"source\":\"csv\",\"path\":\"" path "\"" extra                                      \
  "},\"model\":{\"layers\":[{\"type\":"                                                            \
  "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"                                  \
  "\"sparse_categorical_crossentropy\""
#define SEED_JOB(extra)                                                                            \
  "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":1,"        \
  "\"activation\":\"sigmoid\"}]},\"loss\":\"binary_crossentropy\"" extra "}"

static void test_confinement(void **state) {
  tb_err_t err;
  char json[PATH_MAX + 1024], p[600];
  /* Allowed: a relative path (against the first data folder), and the same
   * file by its absolute path. */
  assert_int_equal(check_confined(CSV_JOB("ok.csv", "") "}", 1, &err), 0);
  snprintf(json, sizeof(json), CSV_JOB("%s/ok.csv", "") "}", data_dir);
  assert_int_equal(check_confined(json, 1, &err), 0);
  /* "..", absolute paths elsewhere, a symbolic link out. */
  assert_int_equal(check_confined(CSV_JOB("../out/secret.csv", "") "}", 1, &err), TB_EINVAL);
  check_msg(err.msg, "params.job: data.path: ");
  check_msg(err.msg, "\"..\" is not allowed in the path");
  assert_int_equal(check_confined(CSV_JOB("/etc/shadow", "") "}", 1, &err), TB_EINVAL);
  check_msg(err.msg, "params.job: data.path: /etc/shadow: outside the data directories");
  assert_int_equal(check_confined(CSV_JOB("link-out.csv", "") "}", 1, &err), TB_EINVAL);
  check_msg(err.msg, "link-out.csv: leads outside the data directories (through a symbolic link)");
  /* Validation and test sets, and IDX files, are held to the same. */
  assert_int_equal(
      check_confined(
          CSV_JOB("ok.csv", ",\"test\":{\"source\":\"csv\",\"path\":\"/etc/passwd\"}") "}", 1,
          &err),
      TB_EINVAL);
  check_msg(err.msg, "params.job: data.test.path: /etc/passwd: outside");
  assert_int_equal(check_confined("{\"data\":{\"source\":\"idx\",\"images\":\"ok.csv\",\"labels\":"
                                  "\"/etc/passwd\"},\"model\":{\"layers\":[{\"type\":\"dense\","
                                  "\"units\":2,\"activation\":\"softmax\"}]},\"loss\":\"mse\"}",
                                  1, &err),
                   TB_EFORMAT); /* ok.csv is not IDX: read (inside), refused as a format */
  assert_int_equal(check_confined("{\"data\":{\"source\":\"idx\",\"images\":\"/etc/passwd\","
                                  "\"labels\":\"ok.csv\"},\"model\":{\"layers\":[{\"type\":"
                                  "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
                                  "\"mse\"}",
                                  1, &err),
                   TB_EINVAL);
  check_msg(err.msg, "params.job: data.images: /etc/passwd: outside");
  /* Without a data folder: generators only. */
  assert_int_equal(check_confined(SEED_JOB(""), 0, &err), 0);
  assert_int_equal(check_confined(CSV_JOB("ok.csv", "") "}", 0, &err), TB_EINVAL);
  check_msg(err.msg, "only use the built-in generators");
  /* Paths it writes: inside (also in a folder still to be made), or refused. */
  assert_int_equal(check_confined(SEED_JOB(",\"callbacks\":[{\"type\":\"ModelCheckpoint\","
                                           "\"filepath\":\"ckpt/w-{epoch}.tbw\"},{\"type\":"
                                           "\"CSVLogger\",\"filename\":\"log.csv\"}],"
                                           "\"checkpoint_dir\":\"ck\""),
                                  1, &err),
                   0);
  assert_int_equal(check_confined(SEED_JOB(",\"callbacks\":[{\"type\":\"ModelCheckpoint\","
                                           "\"filepath\":\"/tmp/w.tbw\"}]"),
                                  1, &err),
                   TB_EINVAL);
  check_msg(err.msg, "params.job: callbacks[0].filepath: /tmp/w.tbw: outside the data");
  assert_int_equal(check_confined(SEED_JOB(",\"callbacks\":[{\"type\":\"CSVLogger\","
                                           "\"filename\":\"out-dir/log.csv\"}]"),
                                  1, &err),
                   TB_EINVAL);
  check_msg(err.msg, "params.job: callbacks[0].filename: ");
  check_msg(err.msg, "leads outside the data directories (through a symbolic link)");
  assert_int_equal(check_confined(SEED_JOB(",\"callbacks\":[{\"type\":\"BackupAndRestore\","
                                           "\"backup_dir\":\"../bk\"}]"),
                                  1, &err),
                   TB_EINVAL);
  check_msg(err.msg, "callbacks[0].backup_dir: ");
  assert_int_equal(check_confined(SEED_JOB(",\"checkpoint_dir\":\"/var/tmp/ck\""), 1, &err),
                   TB_EINVAL);
  check_msg(err.msg, "params.job: checkpoint_dir: /var/tmp/ck: outside");
  assert_int_equal(check_confined(SEED_JOB(",\"checkpoint_dir\":\"ck\""), 0, &err), TB_EINVAL);
  /* The operator's policy (not confined) reads and writes anywhere. */
  path_in(p, sizeof(p), "out/secret.csv");
  snprintf(json, sizeof(json), CSV_JOB("%s", "") "}", p);
  tb_job_t *job = parse(json, NULL);
  tb_job_policy_t op = budget(1.0);
  assert_int_equal(tb_job_check(job, &op, NULL, &err), 0);
  assert_int_equal(tb_job_prepare(job, &err), 0);
  tb_job_free(job);
}

/* ---- prepare within the check --------------------------------------------- */

static void test_prepare_within_check(void **state) {
  char p[600];
  tb_err_t err = {{0}};
  const char *dirs[1] = {data_dir};
  tb_job_policy_t pol = budget(0.05);
  pol.data = (tb_data_limits_t){.confined = true, .dirs = dirs, .n_dirs = 1, .redact = true};

  /* A file that grew after the check is not read past what was measured. */
  path_in(p, sizeof(p), "data/grow.csv");
  write_text(p, "1,0\n2,1\n");
  tb_job_t *job = parse(CSV_JOB("grow.csv", "") "}", data_dir);
  assert_int_equal(tb_job_check(job, &pol, NULL, &err), 0);
  write_text(p, "1,0\n2,1\n3,0\n");
  assert_int_equal(tb_job_prepare(job, &err), TB_ERANGE);
  check_msg(err.msg, "grow.csv: 12 bytes, more than the 8 a data file may have here");
  tb_job_free(job);

  /* Checked as two columns; by the time it trains the same bytes are one
   * row of 20000 columns: the second estimate, from the data as loaded,
   * refuses the 1000-unit layer (80 MB of weights) before building it. */
  path_in(p, sizeof(p), "data/wide.csv");
  char *text = malloc(40001);
  assert_non_null(text);
  for (int i = 0; i < 10000; i++)
    memcpy(text + 4 * i, "0,1\n", 4);
  text[40000] = '\0';
  write_text(p, text);
  job = parse("{\"data\":{\"source\":\"csv\",\"path\":\"wide.csv\"},\"model\":{\"layers\":[{"
              "\"type\":\"dense\",\"units\":1000,\"activation\":\"relu\"},{\"type\":\"dense\","
              "\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
              "\"sparse_categorical_crossentropy\"}",
              data_dir);
  assert_int_equal(tb_job_check(job, &pol, NULL, &err), 0);
  for (int i = 0; i < 10000; i++)
    memcpy(text + 4 * i, i < 9999 ? "0,0," : "0,1\n", 4);
  write_text(p, text);
  free(text);
  assert_int_equal(tb_job_prepare(job, &err), TB_ERANGE);
  check_msg(err.msg, "with its data as loaded, needs an estimated ");
  check_msg(err.msg, "a job may use (--max-job-memory)");
  assert_null(job->model);
  tb_job_free(job);

  /* Labels beyond the last layer are refused before categorical
   * crossentropy widens them (label 999999 would make a million columns). */
  path_in(p, sizeof(p), "data/labels.csv");
  write_text(p, "1,0\n2,999999\n");
  job = parse("{\"data\":{\"source\":\"csv\",\"path\":\"labels.csv\"},\"model\":{\"layers\":[{"
              "\"type\":\"dense\",\"units\":3,\"activation\":\"softmax\"}]},\"loss\":"
              "\"categorical_crossentropy\"}",
              data_dir);
  assert_int_equal(tb_job_check(job, &pol, NULL, &err), 0);
  assert_int_equal(tb_job_prepare(job, &err), TB_ESHAPE);
  check_msg(err.msg, "data has 1000000 classes but the last layer has 3 units");
  tb_job_free(job);

  /* Regression targets under a sparse crossentropy: the row, not the value. */
  path_in(p, sizeof(p), "data/reg.csv");
  write_text(p, "1,0\n2,0.123456\n");
  job = parse(CSV_JOB("reg.csv", ",\"classes\":false") "}", data_dir);
  assert_int_equal(tb_job_check(job, &pol, NULL, &err), 0);
  assert_int_equal(tb_job_prepare(job, &err), TB_ERANGE);
  check_msg(err.msg, "data: row 1: the label is not a class index in [0, 2)");
  assert_null(strstr(err.msg, "0.123"));
  tb_job_free(job);
  /* For the operator, the value too. */
  job = parse(CSV_JOB("reg.csv", ",\"classes\":false") "}", data_dir);
  assert_int_equal(tb_job_prepare(job, &err), TB_ERANGE);
  check_msg(err.msg, "data: row 1: label 0.123456 is not a class index in [0, 2)");
  tb_job_free(job);
}

int main(void) {
  /* The estimates below are for one thread unless a job names more. */
  tb_set_num_threads(1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_estimate_by_hand),
      cmocka_unit_test(test_estimate_threads),
      cmocka_unit_test(test_estimate_against_allocator),
      cmocka_unit_test(test_budget_refusals),
      cmocka_unit_test(test_budget_files),
      cmocka_unit_test(test_confinement),
      cmocka_unit_test(test_prepare_within_check),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
