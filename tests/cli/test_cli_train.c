/* `trainbus train` and the manual-loop example, run as programs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Runs a shell command; returns its exit code and its output (stdout and
 * stderr together) in a malloc'ed string. */
static int run(const char *cmd, char **out) {
  char full[4096];
  snprintf(full, sizeof(full), "%s 2>&1", cmd);
  FILE *p = popen(full, "r");
  assert_non_null(p);
  size_t len = 0, cap = 1 << 16;
  char *buf = malloc(cap);
  size_t n;
  while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += n;
    if (cap - len < 4096)
      buf = realloc(buf, cap *= 2);
  }
  buf[len] = '\0';
  int status = pclose(p);
  *out = buf;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
    n++;
  return n;
}

#define TRAINBUS TB_BINARY_DIR "/trainbus"

static void test_manual_loop_example(void **state) {
  (void)state;
  char *out;
  assert_int_equal(run(TB_BINARY_DIR "/examples/manual_loop", &out), 0);
  /* 60 epochs of 2 batches, every metric printed after each batch and epoch */
  assert_int_equal(count(out, "train_batch_end "), 120);
  assert_int_equal(count(out, "epoch_end "), 60);
  assert_non_null(strstr(out, "epoch_end 59: loss="));
  assert_non_null(strstr(out, "train_end -1: loss="));
  /* the seed example is learnt: x = 1, 2 -> 0 and x = 3, 4 -> 1 */
  float p[4];
  const char *pr = strstr(out, "predictions:");
  assert_non_null(pr);
  assert_int_equal(sscanf(pr, "predictions: %f %f %f %f", &p[0], &p[1], &p[2], &p[3]), 4);
  assert_true(p[0] < 0.5f && p[1] < 0.5f && p[2] > 0.5f && p[3] > 0.5f);
  free(out);
}

static void test_train_json_events(void **state) {
  (void)state;
  char *out;
  assert_int_equal(run(TRAINBUS " train --demo spirals --epochs 2 --json", &out), 0);
  /* one JSON object per line, in Keras's order */
  assert_true(strncmp(out, "{\"event\":\"train_begin\"", 22) == 0);
  assert_int_equal(count(out, "\"event\":\"epoch_begin\""), 2);
  assert_int_equal(count(out, "\"event\":\"epoch_end\""), 2);
  assert_int_equal(count(out, "\"event\":\"train_batch_end\""), 2 * 250);
  assert_int_equal(count(out, "\"event\":\"test_end\""), 2);
  assert_int_equal(count(out, "\"event\":\"train_end\""), 1);
  assert_non_null(strstr(out, "\"val_accuracy\":"));
  const char *last = strstr(out, "{\"event\":\"train_end\"");
  assert_non_null(last);
  assert_int_equal(count(last, "\n"), 1); /* train_end is the last line */
  free(out);
}

static void test_train_plain_output(void **state) {
  (void)state;
  char *out;
  char dir[] = "/tmp/tb_cliXXXXXX", cmd[512], path[256];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/w.tbw", dir);
  snprintf(cmd, sizeof(cmd), TRAINBUS " train --demo spirals --epochs 2 --save-weights %s", path);
  assert_int_equal(run(cmd, &out), 0);
  /* the model summary, then one line per epoch when not on a terminal */
  assert_non_null(strstr(out, "Total params: 132,866"));
  assert_non_null(strstr(out, "Epoch 1/2\n250/250 - "));
  assert_non_null(strstr(out, "Epoch 2/2\n250/250 - "));
  assert_non_null(strstr(out, " - val_accuracy: "));
  assert_int_equal(access(path, F_OK), 0);
  remove(path);
  rmdir(dir);
  free(out);
}

/* Without a job: the Fashion-MNIST demo, its test accuracy printed at the
 * end; the spirals, with a one-line notice, where the dataset cannot be
 * read. */
static void test_train_demo(void **state) {
  (void)state;
  char *out;
  if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) == 0) {
    assert_int_equal(run(TRAINBUS " train --epochs 1", &out), 0);
    assert_non_null(strstr(out, "Job: demo-fashion-mnist (60000 training rows, validation_split "
                                "applies)"));
    assert_non_null(strstr(out, "Total params: 235,146"));
    assert_non_null(strstr(out, "\n422/422 - ")); /* no "Epoch 1/1": Keras prints none for one */
    const char *t = strstr(out, "\ntest: loss ");
    assert_non_null(t);
    double loss, acc;
    assert_int_equal(sscanf(t, "\ntest: loss %lf accuracy %lf", &loss, &acc), 2);
    print_message("Fashion-MNIST after 1 epoch: test accuracy %.4f\n", acc);
    assert_true(acc > 0.75 && acc < 1.0);
    free(out);
  } else {
    print_message("Fashion-MNIST is not installed here: only the fallback is tested\n");
  }
  assert_int_equal(run("TRAINBUS_DEMO_DATA=/nonexistent " TRAINBUS " train --epochs 1", &out), 0);
  assert_non_null(strstr(out, "trainbus train: Fashion-MNIST cannot be read "
                              "(/nonexistent/train-images-idx3-ubyte.gz: No such file or "
                              "directory; apt-get install dataset-fashion-mnist): the demo trains "
                              "the spirals instead\n"));
  assert_int_equal(count(out, "Fashion-MNIST"), 1);
  assert_non_null(strstr(out, "Job: demo-spirals"));
  free(out);
  assert_int_equal(run(TRAINBUS " train --demo spirals --print-job", &out), 0);
  assert_non_null(strstr(out, "\"name\": \"demo-spirals\""));
  free(out);
  assert_int_equal(run(TRAINBUS " train --demo mnist", &out), 2);
  assert_non_null(strstr(out, "--demo: expected fashion-mnist or spirals, got 'mnist'"));
  free(out);
}

/* The job summary says which output is which class when the labels are
 * names (the iris file as the issue gives it). */
static void test_train_class_names_summary(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_cli_irisXXXXXX", cmd[512], *out;
  assert_non_null(mkdtemp(dir));
  snprintf(cmd, sizeof(cmd),
           "cd %s && printf '%%s\\n' '\"sepal length (cm)\",\"sepal width (cm)\",\"species\"' "
           "'5.1,3.5,\"setosa\"' '7.0,3.2,\"versicolor\"' '6.3,3.3,\"virginica\"' > iris.csv && "
           "echo '{\"data\":{\"source\":\"csv\",\"path\":\"iris.csv\"},\"model\":{\"layers\":"
           "[{\"type\":\"dense\",\"units\":3,\"activation\":\"softmax\"}]},\"loss\":"
           "\"sparse_categorical_crossentropy\",\"epochs\":1}' > iris.json && " TRAINBUS
           " train iris.json",
           dir);
  assert_int_equal(run(cmd, &out), 0);
  assert_non_null(strstr(out, "Classes (the labels' names, sorted; output i is class i): 0 "
                              "\"setosa\", 1 \"versicolor\", 2 \"virginica\"\n"));
  free(out);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_train_errors(void **state) {
  (void)state;
  char *out;
  char dir[] = "/tmp/tb_cliXXXXXX", cmd[512], path[256];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/bad.json", dir);
  FILE *f = fopen(path, "w");
  fputs("{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":-3}"
        "]},\"loss\":\"mse\"}",
        f);
  fclose(f);
  snprintf(cmd, sizeof(cmd), TRAINBUS " train %s", path);
  assert_int_equal(run(cmd, &out), 2);
  assert_non_null(strstr(out, "model.layers[0].units: expected a positive integer, got -3"));
  assert_null(strstr(out, "Epoch")); /* refused before anything trains */
  free(out);

  assert_int_equal(run(TRAINBUS " train /nonexistent/job.json", &out), 2);
  assert_non_null(strstr(out, "/nonexistent/job.json: cannot open: No such file"));
  free(out);
  assert_int_equal(run(TRAINBUS " train --epochs zero", &out), 2);
  assert_non_null(strstr(out, "--epochs: expected an integer"));
  free(out);
  assert_int_equal(run(TRAINBUS " train --bogus", &out), 2);
  free(out);
  assert_int_equal(run(TRAINBUS " frobnicate", &out), 2);
  assert_non_null(strstr(out, "unknown command 'frobnicate'"));
  free(out);
  assert_int_equal(run(TRAINBUS " train --help", &out), 0);
  assert_non_null(strstr(out, "--save-weights"));
  free(out);
  remove(path);
  rmdir(dir);
}

static void test_logging_callback_example(void **state) {
  (void)state;
  char *out;
  assert_int_equal(run(TB_BINARY_DIR "/examples/logging_callback", &out), 0);
  /* 5 epochs of 8 batches; every metric after each batch and epoch */
  assert_int_equal(count(out, " batch "), 40);
  assert_int_equal(count(out, " end: loss="), 5);
  assert_int_equal(count(out, "val_accuracy="), 5);
  assert_non_null(strstr(out, "epoch 4 batch 7: loss="));
  free(out);
}

/* The plateau example's decisions, replayed from its own printed val_loss
 * values with the rule it claims (halve after 2 epochs without improvement,
 * epochs without validation skipped). */
static void test_plateau_example(void **state) {
  (void)state;
  char *out;
  assert_int_equal(run(TB_BINARY_DIR "/examples/plateau_lr", &out), 0);
  double best = 1e300, lr = 0.5;
  int wait = 0, skipped = 0, halvings = 0;
  for (char *line = out; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    int epoch, off = 0;
    double v;
    if (sscanf(line, "epoch %d: %n", &epoch, &off) != 1 || off == 0)
      continue;
    if (strncmp(line + off, "no validation data", 18) == 0) {
      skipped++;
      continue;
    }
    if (sscanf(line + off, "val_loss %lf", &v) != 1)
      continue;
    const char *eol = strchr(line, '\n'), *arrow = strstr(line, "lr ->");
    bool says_halved = arrow != NULL && (eol == NULL || arrow < eol);
    bool halve = false;
    if (v < best) {
      best = v;
      wait = 0;
    } else if (++wait >= 2) {
      halve = true;
      wait = 0;
      lr *= 0.5;
      halvings++;
    }
    if (halve != says_halved)
      fail_msg("epoch %d: the rule says %s", epoch, halve ? "halve" : "keep");
  }
  assert_int_equal(skipped, 15);
  assert_true(halvings >= 2);
  double final;
  assert_int_equal(sscanf(strstr(out, "final lr"), "final lr %lf", &final), 1);
  assert_float_equal(final, lr, 1e-12);
  free(out);
}

/* kill -9 in the middle of `trainbus train`, then --resume: the same weights
 * file and CSV log as a run that was never interrupted. */
static void test_train_killed_and_resumed(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_killXXXXXX", cmd[4096], *out;
  assert_non_null(mkdtemp(dir));
  snprintf(cmd, sizeof(cmd),
           "cd %s && mkdir a b && cat > job.json <<'EOF'\n"
           "{\"data\":{\"source\":\"blobs\",\"n\":20000,\"classes\":4,\"features\":16,"
           "\"std\":3.0},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":64,"
           "\"activation\":\"relu\"},{\"type\":\"dropout\",\"rate\":0.2},{\"type\":\"dense\","
           "\"units\":4,\"activation\":\"softmax\"}]},\"loss\":\"sparse_categorical_crossentropy\","
           "\"metrics\":[\"accuracy\"],\"epochs\":20,\"validation_split\":0.1,"
           "\"checkpoint_dir\":\"ck\",\"checkpoint_every\":25,\"callbacks\":["
           "{\"type\":\"ReduceLROnPlateau\",\"patience\":1,\"min_delta\":0.01},"
           "{\"type\":\"CSVLogger\",\"filename\":\"log.csv\"}]}\n"
           "EOF\n"
           "cp job.json a/ && cp job.json b/ && "
           "(cd a && " TRAINBUS " train job.json --save-weights w.tbw >/dev/null) && "
           "cd b && (" TRAINBUS " train job.json >/dev/null & echo $! > pid; wait) & "
           /* kill as soon as the first checkpoint is there: the run is young */
           "for i in $(seq 2000); do [ -f b/ck/latest.tbck ] && break; sleep 0.005; done; "
           "kill -9 $(cat b/pid); wait; "
           "test -f b/ck/latest.tbck && ! grep -q '^19,' b/log.csv && echo KILLED_MID_RUN",
           dir);
  assert_int_equal(run(cmd, &out), 0);
  assert_non_null(strstr(out, "KILLED_MID_RUN"));
  free(out);
  snprintf(cmd, sizeof(cmd),
           "cd %s/b && " TRAINBUS " train job.json --resume ck --save-weights w.tbw && "
           "cmp w.tbw ../a/w.tbw && cmp log.csv ../a/log.csv && echo SAME",
           dir);
  assert_int_equal(run(cmd, &out), 0);
  assert_non_null(strstr(out, "SAME"));
  free(out);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Seconds in a progress line's "- 3s - 12ms/step" (verbose 2; Keras 2's
 * "- 3s 12ms/step" is read too): the elapsed time and the time per step. */
static void line_times(const char *line, double *el, double *per) {
  const char *p = strstr(line, " - ");
  int n = 0;
  char unit[8] = "";
  assert_non_null(p);
  assert_int_equal(sscanf(p, " - %lfs%n", el, &n), 1);
  p += n;
  if (strncmp(p, " -", 2) == 0)
    p += 2;
  assert_int_equal(sscanf(p, " %lf%7[mus]/step", per, unit), 2);
  *per *= strcmp(unit, "s") == 0 ? 1 : strcmp(unit, "ms") == 0 ? 1e-3 : 1e-6;
}

/* Issue 11, kind 4: BackupAndRestore (save_freq 7 batches) killed mid-epoch
 * with SIGKILL and run again resumes exactly, and what a person sees of the
 * resumed epoch is right: its "Epoch k/N" line, then its figures counted from
 * the resume (the elapsed time no longer than the resumed process ran, not
 * the time since boot; the time per step likewise), every later epoch with
 * its own line, and the same weights and CSV as a run never interrupted. */
static void test_backup_killed_resume_display(void **state) {
  (void)state;
  char dir[] = "/tmp/tb_bkXXXXXX", cmd[4096], *out;
  assert_non_null(mkdtemp(dir));
  snprintf(cmd, sizeof(cmd),
           "cd %s && mkdir a b && cat > job.json <<'EOF'\n"
           "{\"data\":{\"source\":\"blobs\",\"n\":24000,\"classes\":4,\"features\":16,"
           "\"std\":3.0},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":64,"
           "\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":4,\"activation\":"
           "\"softmax\"}]},\"loss\":\"sparse_categorical_crossentropy\",\"metrics\":[\"acc\"],"
           "\"epochs\":6,\"batch_size\":32,\"callbacks\":["
           "{\"type\":\"BackupAndRestore\",\"backup_dir\":\"bk\",\"save_freq\":7},"
           "{\"type\":\"CSVLogger\",\"filename\":\"log.csv\"}]}\n"
           "EOF\n"
           "cp job.json a/ && cp job.json b/ && "
           "(cd a && " TRAINBUS " train job.json --save-weights w.tbw >/dev/null) && "
           "cd b && (" TRAINBUS " train job.json >/dev/null & echo $! > pid; wait) & "
           /* kill once an epoch is logged and a later backup is there */
           "for i in $(seq 4000); do [ -f b/log.csv ] && [ $(wc -l < b/log.csv) -ge 2 ] && "
           "[ b/bk/latest.tbck -nt b/log.csv ] && break; sleep 0.005; done; "
           "kill -9 $(cat b/pid); wait; "
           "test -f b/bk/latest.tbck && ! grep -q '^5,' b/log.csv && echo KILLED_MID_RUN",
           dir);
  assert_int_equal(run(cmd, &out), 0);
  assert_non_null(strstr(out, "KILLED_MID_RUN"));
  free(out);
  snprintf(cmd, sizeof(cmd),
           "cd %s/b && " TRAINBUS " train job.json --verbose 2 --save-weights w.tbw && "
           "cmp w.tbw ../a/w.tbw && cmp log.csv ../a/log.csv && echo SAME",
           dir);
  double t0 = wall_s();
  assert_int_equal(run(cmd, &out), 0);
  double wall = wall_s() - t0;
  assert_non_null(strstr(out, "SAME"));
  /* Every progress line right after its epoch's header, epochs k..6. */
  int k = 0, first = 0, lines = 0;
  for (char *l = out; l != NULL && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    int epoch, of, seen, steps;
    if (sscanf(l, "%d/%d - ", &seen, &steps) == 2 && strstr(l, "/step") != NULL &&
        strncmp(strchr(l, ' '), " - ", 3) == 0) {
      assert_int_equal(seen, 750);
      assert_int_equal(steps, 750);
      double el, per;
      line_times(l, &el, &per);
      if (el > wall + 1 || per > wall + 0.5)
        fail_msg("epoch %d: %.0fs, %g s/step, but the resumed run took %.1fs:\n%s", k, el, per,
                 wall, out);
      lines++;
      continue;
    }
    if (sscanf(l, "Epoch %d/%d", &epoch, &of) == 2) {
      assert_int_equal(of, 6);
      if (k != 0 && epoch != k + 1)
        fail_msg("epoch %d after %d:\n%s", epoch, k, out);
      if (k == 0)
        first = epoch;
      k = epoch;
      char *next = strchr(l, '\n');
      assert_non_null(next);
      if (!(sscanf(next + 1, "%d/%d - ", &seen, &steps) == 2))
        fail_msg("no progress line after \"Epoch %d/6\":\n%s", epoch, out);
    }
  }
  /* resumed in epoch 2 or later (one was logged before the kill), each
   * epoch from there shown once */
  assert_int_equal(k, 6);
  assert_true(first >= 2);
  assert_int_equal(lines, 6 - first + 1);
  free(out);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_manual_loop_example),
      cmocka_unit_test(test_train_json_events),
      cmocka_unit_test(test_train_plain_output),
      cmocka_unit_test(test_train_errors),
      cmocka_unit_test(test_logging_callback_example),
      cmocka_unit_test(test_plateau_example),
      cmocka_unit_test(test_train_killed_and_resumed),
      cmocka_unit_test(test_backup_killed_resume_display),
      cmocka_unit_test(test_train_demo),
      cmocka_unit_test(test_train_class_names_summary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
