/* End to end: jobs that cannot take the daemon down (issue 12). The real
 * trainbusd on 127.0.0.1 and the real `trainbus submit`:
 *
 *   - budgets: the two 60000-unit layers, a huge batch, huge
 *     generated data and large files are refused at submit with the estimate
 *     and the limit (and an operator's --job over it stops the daemon at
 *     start); nothing is queued, the daemon goes on;
 *   - an allocation that fails midway (the daemon's address space cut with
 *     RLIMIT_AS, or under ASan every allocation over 128 MiB failing) fails
 *     that run alone, with its reason; the runs before and after it finish
 *     with the same weights as without it, and the daemon's memory comes
 *     back down;
 *   - finished runs give their memory back: RSS stays bounded;
 *   - confinement: "..", absolute paths, symbolic links out, no --data-dir,
 *     an allowed relative path, written paths;
 *   - loader messages: a submitted run's failure quotes nothing of the
 *     file; an operator's quotes the field, escaped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "srv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SU_CLI TB_BINARY_DIR "/trainbus"

/* A folder per test: state/, data/ (the --data-dir), out/ (outside it). */
typedef struct fx_s {
  char *dir;
  char state[600], data[600], out[600];
  su_proc_t d;
  tb_client_t *ctl;
} fx_t;

static void fx_dirs(fx_t *f) {
  memset(f, 0, sizeof(*f));
  f->dir = su_tmpdir();
  snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
  snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
  snprintf(f->out, sizeof(f->out), "%s/out", f->dir);
  mkdir(f->data, 0700);
  mkdir(f->out, 0700);
}

/* Starts the daemon with `asan` appended to ASAN_OPTIONS (ASan builds
 * only; NULL: none). */
static void fx_daemon_asan(fx_t *f, const char *const *extra, const char *asan) {
#ifdef __SANITIZE_ADDRESS__
  const char *was = getenv("ASAN_OPTIONS");
  char *saved = was != NULL ? strdup(was) : NULL, opts[600];
  if (asan != NULL) {
    snprintf(opts, sizeof(opts), "%s%s%s", was ? was : "", was ? ":" : "", asan);
    setenv("ASAN_OPTIONS", opts, 1);
  }
#else
  (void)asan;
#endif
  su_daemon(&f->d, f->state, extra);
#ifdef __SANITIZE_ADDRESS__
  if (saved != NULL)
    setenv("ASAN_OPTIONS", saved, 1);
  else
    unsetenv("ASAN_OPTIONS");
  free(saved);
#endif
  f->ctl = su_client(f->d.addr, TB_ROLE_CONTROLLER, "jobs");
}

static void fx_daemon(fx_t *f, const char *const *extra) {
  fx_daemon_asan(f, extra, NULL);
}

/* Under ASan, freed memory waits in a quarantine (256 MiB) before it goes
 * back: the daemons whose memory is measured skip it. */
#define NO_QUARANTINE "quarantine_size_mb=0"

static void fx_stop(fx_t *f) {
  if (f->ctl != NULL)
    tb_client_free(f->ctl);
  f->ctl = NULL;
  if (f->d.pid > 0 && !f->d.reaped) {
    kill(f->d.pid, SIGTERM);
    if (su_wait(&f->d, 20000) < 0) {
      su_dump(&f->d);
      su_kill(&f->d);
    }
  }
}

static void fx_end(fx_t *f) {
  fx_stop(f);
  su_rmdir(f->dir);
  free(f->dir);
}

/* Runs the CLI with args (NULL-terminated); its stdout and stderr go to
 * files, read back into out and err (malloc'ed). Returns its exit code. */
static int cli(const fx_t *f, const char *const *args, char **out, char **err) {
  char po[700], pe[700];
  static int k;
  snprintf(po, sizeof(po), "%s/cli-%d.out", f->dir, ++k);
  snprintf(pe, sizeof(pe), "%s/cli-%d.err", f->dir, k);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    char *argv[32];
    int n = 0;
    argv[n++] = SU_CLI;
    for (int i = 0; args[i] != NULL && n < 26; i++)
      argv[n++] = (char *)args[i];
    argv[n++] = "--connect";
    argv[n++] = (char *)f->d.addr;
    argv[n++] = "--token";
    argv[n++] = SU_TOKEN;
    argv[n] = NULL;
    int fo = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int fe = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fo < 0 || fe < 0)
      _exit(126);
    dup2(fo, 1);
    dup2(fe, 2);
    unsetenv("TRAINBUS_TOKEN");
    unsetenv("TRAINBUS_ADDR");
    execv(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  uint64_t deadline = su_now_ms() + 60000;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (su_now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      fail_msg("trainbus %s did not end within 60 s", args[0]);
    }
    su_sleep_ms(10);
  }
  *out = su_read(po, NULL);
  *err = su_read(pe, NULL);
  assert_non_null(*out);
  assert_non_null(*err);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void has(const char *text, const char *want) {
  if (strstr(text, want) == NULL)
    fail_msg("\"%s\"\n  does not contain \"%s\"", text, want);
}

static void lacks(const char *text, const char *unwanted) {
  if (strstr(text, unwanted) != NULL)
    fail_msg("\"%s\"\n  contains \"%s\"", text, unwanted);
}

/* The daemon's log (stderr) has, or lacks, a text. */
static void log_has(const su_proc_t *d, const char *want, bool present) {
  char *text = su_read(d->log, NULL);
  assert_non_null(text);
  if (present)
    has(text, want);
  else
    lacks(text, want);
  free(text);
}

/* `trainbus submit` of json (written to a file): its exit code; *run gets
 * the new run's id on success, *err the message on failure (free it). */
static int submit_cli(fx_t *f, const char *json, char run[TB_PROTO_RUN_MAX], char **err) {
  char path[700], *out;
  static int k;
  snprintf(path, sizeof(path), "%s/job-%d.json", f->dir, ++k);
  su_write(path, json);
  int rc = cli(f, (const char *const[]){"submit", path, NULL}, &out, err);
  snprintf(run, TB_PROTO_RUN_MAX, "%.*s", (int)strcspn(out, "\n"), out);
  free(out);
  return rc;
}

/* Submits a job that must be refused (exit 1) and returns the message. A
 * job accepted by mistake is cancelled at once, so that a daemon without
 * budgets never starts allocating it. */
static char *refused(fx_t *f, const char *json) {
  char run[TB_PROTO_RUN_MAX], *err;
  int rc = submit_cli(f, json, run, &err);
  if (rc == 0) {
    tb_client_cancel(f->ctl, run, "accepted by mistake", NULL);
    fail_msg("the daemon accepted the job as run %s", run);
  }
  assert_int_equal(rc, 1);
  return err;
}

/* The last state event of a run, once it is final: its state and reason. */
static void final_state(fx_t *f, const char *run, char state[16], char reason[160]) {
  tb_run_info_t info;
  if (!su_poll_final(f->ctl, run, 120000, &info)) {
    su_dump(&f->d);
    fail_msg("run %s did not end", run);
  }
  int n;
  su_ev_t *h = su_history(f->ctl, run, &n);
  for (int i = n - 1; i >= 0; i--)
    if (strcmp(h[i].name, "state") == 0) {
      snprintf(state, 16, "%s", h[i].state);
      snprintf(reason, 160, "%s", h[i].reason);
      free(h);
      return;
    }
  free(h);
  fail_msg("run %s has no state event", run);
}

static bool trained(fx_t *f, const char *run) {
  int n;
  su_ev_t *h = su_history(f->ctl, run, &n);
  bool any = false;
  for (int i = 0; i < n; i++)
    any |= strcmp(h[i].name, "train_batch_end") == 0;
  free(h);
  return any;
}

/* A line of /proc/<pid>/status, in kB. */
static long proc_kb(pid_t pid, const char *key) {
  char path[64], *text;
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  text = su_read(path, NULL);
  assert_non_null(text);
  const char *at = strstr(text, key);
  long kb = at != NULL ? strtol(at + strlen(key), NULL, 10) : -1;
  free(text);
  return kb;
}

/* ---- jobs ------------------------------------------------------------------- */

/* The job, word for word. */
static const char BIG_UNITS[] =
    "{\"data\":{\"source\":\"spirals\"},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":"
    "60000,\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":60000,\"activation\":\"relu\"},"
    "{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
    "\"sparse_categorical_crossentropy\",\"epochs\":1}";

static const char HUGE_BATCH[] =
    "{\"data\":{\"source\":\"spirals\",\"n_per_class\":1000000},\"model\":{\"layers\":[{\"type\":"
    "\"dense\",\"units\":4096,\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":2,"
    "\"activation\":\"softmax\"}]},\"loss\":\"sparse_categorical_crossentropy\",\"batch_size\":"
    "1048576}";

static const char HUGE_DATA[] =
    "{\"data\":{\"source\":\"blobs\",\"n\":20000000,\"features\":100},\"model\":{\"layers\":[{"
    "\"type\":\"dense\",\"units\":3,\"activation\":\"softmax\"}]},\"loss\":"
    "\"sparse_categorical_crossentropy\"}";

/* A small job whose final weights a ModelCheckpoint writes to `weights`. */
static void job_small(char *out, size_t cap, const char *weights) {
  snprintf(out, cap,
           "{\"name\":\"small\",\"seed\":11,\"threads\":1,\"data\":{\"source\":\"spirals\","
           "\"n_per_class\":300},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":32,"
           "\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"
           "\"loss\":\"sparse_categorical_crossentropy\",\"optimizer\":{\"name\":\"adam\","
           "\"learning_rate\":0.01},\"epochs\":4,\"batch_size\":32,\"callbacks\":[{\"type\":"
           "\"ModelCheckpoint\",\"filepath\":\"%s\",\"save_weights_only\":true}]}",
           weights);
}

/* A run that trains for a long time (a --job that holds the queue). */
static const char LONG_JOB[] =
    "{\"name\":\"long\",\"seed\":5,\"threads\":1,\"data\":{\"source\":\"spirals\","
    "\"n_per_class\":1000},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":64,"
    "\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"
    "\"loss\":\"sparse_categorical_crossentropy\",\"epochs\":100000}";

/* ---- 1. budgets -------------------------------------------------------------- */

static void test_budget_refusals(void **state) {
  (void)state;
  fx_t f;
  fx_dirs(&f);
  /* r1 holds the queue (paused), so that nothing submitted ever starts. */
  char path[700], json[2048], *err;
  snprintf(path, sizeof(path), "%s/long.json", f.dir);
  su_write(path, LONG_JOB);
  fx_daemon(&f, (const char *const[]){"--job", path, "--data-dir", f.data, "--max-job-memory",
                                      "256M", NULL});
  log_has(&f.d, "a job may use up to 256 MiB of memory (--max-job-memory)", true);
  tb_client_pause(f.ctl, "r1", NULL);

  err = refused(&f, BIG_UNITS);
  has(err, "trainbus submit: params.job: needs an estimated ");
  has(err, " of memory at its peak (");
  has(err, "weights and gradients 26.8 GiB");
  has(err, "optimizer slots 26.8 GiB");
  has(err, "more than the 256 MiB a job may use (--max-job-memory)");
  free(err);
  err = refused(&f, HUGE_BATCH);
  has(err, "needs an estimated ");
  has(err, "layer buffers 48.");
  has(err, "(1048576 rows)");
  free(err);
  err = refused(&f, HUGE_DATA);
  has(err, "needs an estimated ");
  has(err, "data 7.60 GiB");
  free(err);
  /* A job for more MPI ranks than the daemon launches (by default, one per
   * processor) is refused (issue 15; tests/dist/test_submitted.py trains the
   * ones it takes). */
  err = refused(&f, "{\"data\":{\"source\":\"spirals\"},\"model\":{\"layers\":[{\"type\":"
                    "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
                    "\"sparse_categorical_crossentropy\",\"distributed\":{\"ranks\":1024}}");
  char want[160];
  snprintf(want, sizeof(want),
           "distributed.ranks: 1024 ranks, more than the %ld this daemon launches a job on "
           "(--max-ranks)",
           sysconf(_SC_NPROCESSORS_ONLN));
  has(err, want);
  free(err);

  /* A large file (sparse: it costs no disk), and one over any bound. */
  snprintf(path, sizeof(path), "%s/big.csv", f.data);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "1,0\n", 4), 4);
  assert_int_equal(ftruncate(fd, (off_t)1 << 30), 0);
  close(fd);
  snprintf(json, sizeof(json),
           "{\"data\":{\"source\":\"csv\",\"path\":\"big.csv\"},\"model\":{\"layers\":[{\"type\":"
           "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
           "\"sparse_categorical_crossentropy\"}");
  err = refused(&f, json);
  has(err, "params.job: needs an estimated ");
  has(err, "data 3.00 GiB");
  free(err);
  snprintf(path, sizeof(path), "%s/huge.csv", f.data);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "1,0\n", 4), 4);
  assert_int_equal(ftruncate(fd, (off_t)3 << 30), 0);
  close(fd);
  snprintf(json, sizeof(json),
           "{\"data\":{\"source\":\"csv\",\"path\":\"huge.csv\"},\"model\":{\"layers\":[{\"type\":"
           "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
           "\"sparse_categorical_crossentropy\"}");
  err = refused(&f, json);
  has(err, "params.job.data.path: ");
  has(err, "huge.csv: 3221225472 bytes, more than the 2147483647 a data file may have here");
  free(err);

  /* Nothing was queued, and the daemon goes on. */
  char *out;
  assert_int_equal(cli(&f, (const char *const[]){"runs", NULL}, &out, &err), 0);
  lacks(out, "r2");
  free(out);
  free(err);
  assert_int_equal(tb_client_cancel(f.ctl, "r1", "done", NULL), 0);
  fx_stop(&f);

  /* The operator's own job is held to the budget too: refused at start. */
  snprintf(path, sizeof(path), "%s/big.json", f.dir);
  su_write(path, BIG_UNITS);
  char log[700];
  snprintf(log, sizeof(log), "%s/big.log", f.dir);
  su_proc_t p;
  memset(&p, 0, sizeof(p));
  p.pid = fork();
  assert_true(p.pid >= 0);
  if (p.pid == 0) {
    int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(lf, 2);
    execl(SU_TRAINBUSD, SU_TRAINBUSD, "--listen", "127.0.0.1:0", "--state-dir", f.state, "--token",
          SU_TOKEN, "--job", path, "--max-job-memory", "1G", (char *)NULL);
    _exit(127);
  }
  assert_int_equal(su_wait(&p, 20000), 2);
  char *text = su_read(log, NULL);
  has(text, "big.json: needs an estimated ");
  has(text, "more than the 1.00 GiB a job may use (--max-job-memory)");
  free(text);
  fx_end(&f);
}

/* ---- 2. an allocation that fails midway -------------------------------------- */

/* Weights of about 67 MB (2 -> 4096 -> 4096 -> 2): training needs some
 * 270 MB (weights, gradients, Adam's two slots); the first checkpoint, at
 * the end of epoch 1, copies all of it again and serialises the copies into
 * a buffer that doubles to 256 MiB. */
static const char FAT_JOB[] =
    "{\"name\":\"fat\",\"seed\":2,\"threads\":1,\"data\":{\"source\":\"spirals\",\"n_per_class\":"
    "64},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":4096,\"activation\":\"relu\"},"
    "{\"type\":\"dense\",\"units\":4096,\"activation\":\"relu\"},{\"type\":\"dense\",\"units\":2,"
    "\"activation\":\"softmax\"}]},\"loss\":\"sparse_categorical_crossentropy\",\"epochs\":3,"
    "\"batch_size\":64}";

static void test_allocation_fails_alone(void **state) {
  (void)state;
  fx_t f, ref;
  char job[2048], run_a[TB_PROTO_RUN_MAX], run_b[TB_PROTO_RUN_MAX], run_c[TB_PROTO_RUN_MAX];
  char wa[700], wc[700], wref[700], st[16], reason[160], *err;

  /* The reference: the small job alone, in a daemon of its own. */
  fx_dirs(&ref);
  fx_daemon(&ref, (const char *const[]){"--no-job", "--data-dir", ref.data, NULL});
  snprintf(wref, sizeof(wref), "%s/ref.tbw", ref.data);
  job_small(job, sizeof(job), wref);
  assert_int_equal(submit_cli(&ref, job, run_a, &err), 0);
  free(err);
  final_state(&ref, run_a, st, reason);
  assert_string_equal(st, "finished");
  fx_stop(&ref);

  fx_dirs(&f);
  /* A budget that lets the fat job in: the failure must come from memory
   * actually running out. ASan reserves terabytes of address space, so
   * RLIMIT_AS cannot be used with it: its allocator fails every allocation
   * over 128 MiB instead. */
  fx_daemon_asan(
      &f, (const char *const[]){"--no-job", "--data-dir", f.data, "--max-job-memory", "64G", NULL},
      NO_QUARANTINE ":allocator_may_return_null=1:max_allocation_size_mb=128");
  snprintf(wa, sizeof(wa), "%s/a.tbw", f.data);
  snprintf(wc, sizeof(wc), "%s/c.tbw", f.data);
  job_small(job, sizeof(job), wa);
  assert_int_equal(submit_cli(&f, job, run_a, &err), 0);
  free(err);
  final_state(&f, run_a, st, reason);
  assert_string_equal(st, "finished");
  long rss_before = proc_kb(f.d.pid, "VmRSS:");
#ifndef __SANITIZE_ADDRESS__
  /* The address space the daemon has now (its threads, arenas and
   * OpenBLAS's buffers exist: a run has trained), plus room for the fat
   * job's training (270 MB) but not for its checkpoint (another 470 MB). */
  struct rlimit rl;
  long vm_kb = proc_kb(f.d.pid, "VmSize:");
  assert_true(vm_kb > 0);
  rl.rlim_cur = rl.rlim_max = (rlim_t)vm_kb * 1024 + (rlim_t)450 * 1024 * 1024;
  assert_int_equal(prlimit(f.d.pid, RLIMIT_AS, &rl, NULL), 0);
#endif
  assert_int_equal(submit_cli(&f, FAT_JOB, run_b, &err), 0);
  free(err);
  job_small(job, sizeof(job), wc);
  assert_int_equal(submit_cli(&f, job, run_c, &err), 0);
  free(err);

  /* The fat run failed, after it had trained, and says why. */
  final_state(&f, run_b, st, reason);
  print_message("# %s %s: %s\n", run_b, st, reason);
  assert_string_equal(st, "failed");
  has(reason, "out of memory");
  assert_true(trained(&f, run_b));
  log_has(&f.d, "failed: ", true);
  /* The run after it, and the one before, have the weights they would have
   * had without it. */
  final_state(&f, run_c, st, reason);
  assert_string_equal(st, "finished");
  assert_true(su_same_bytes(wa, wref));
  assert_true(su_same_bytes(wc, wref));
  /* The daemon is alive, answers, and gave the fat run's memory back. */
  assert_int_equal(su_wait(&f.d, 0), -1);
  tb_client_err_t cerr;
  tb_run_info_t info;
  assert_int_equal(tb_client_status(f.ctl, run_b, &info, &cerr), 0);
  long rss_after = proc_kb(f.d.pid, "VmRSS:");
  print_message("# RSS %ld kB after the first run, %ld kB after the failed and the last\n",
                rss_before, rss_after);
  assert_true(rss_after < rss_before + 64 * 1024);
  fx_end(&f);
  su_rmdir(ref.dir);
  free(ref.dir);
}

/* ---- 3. bounded memory over many runs --------------------------------------------- */

static void test_rss_bounded(void **state) {
  (void)state;
  fx_t f;
  fx_dirs(&f);
  fx_daemon_asan(&f, (const char *const[]){"--no-job", NULL}, NO_QUARANTINE);
  /* 48 MB of data each (200000 rows of 60 features): a daemon that kept
   * finished runs' data would grow by that much per run. */
  static const char job[] =
      "{\"name\":\"data\",\"seed\":3,\"threads\":1,\"data\":{\"source\":\"blobs\",\"n\":200000,"
      "\"features\":60,\"classes\":2},\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":2,"
      "\"activation\":\"softmax\"}]},\"loss\":\"sparse_categorical_crossentropy\",\"epochs\":1,"
      "\"batch_size\":4096}";
  long rss[5];
  for (int i = 0; i < 5; i++) {
    char run[TB_PROTO_RUN_MAX], st[16], reason[160], *err;
    assert_int_equal(submit_cli(&f, job, run, &err), 0);
    free(err);
    final_state(&f, run, st, reason);
    assert_string_equal(st, "finished");
    rss[i] = proc_kb(f.d.pid, "VmRSS:");
  }
  print_message("# RSS after each run (kB): %ld %ld %ld %ld %ld\n", rss[0], rss[1], rss[2], rss[3],
                rss[4]);
  assert_true(rss[4] < rss[0] + 24 * 1024);
  fx_end(&f);
}

/* ---- 4. confinement ------------------------------------------------------------- */

#define CSV_JOB(path)                                                                              \
  "{\"data\":{\"source\":\"csv\",\"path\":\"" path "\"},\"model\":{\"layers\":[{\"type\":"         \
  "\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"                                  \
  "\"sparse_categorical_crossentropy\",\"epochs\":2}"

static void test_confinement(void **state) {
  (void)state;
  fx_t f;
  char p[700], q[700], json[2048], run[TB_PROTO_RUN_MAX], st[16], reason[160], *err;
  fx_dirs(&f);
  snprintf(p, sizeof(p), "%s/ok.csv", f.data);
  su_write(p, "0.1,0\n0.9,1\n0.2,0\n0.8,1\n");
  snprintf(p, sizeof(p), "%s/secret.csv", f.out);
  su_write(p, "0.5,1\n0.4,0\n");
  snprintf(q, sizeof(q), "%s/link-out.csv", f.data);
  assert_int_equal(symlink(p, q), 0);
  fx_daemon(&f, (const char *const[]){"--no-job", "--data-dir", f.data, NULL});

  /* Allowed: a path relative to the data directory. */
  assert_int_equal(submit_cli(&f, CSV_JOB("ok.csv"), run, &err), 0);
  free(err);
  final_state(&f, run, st, reason);
  assert_string_equal(st, "finished");

  err = refused(&f, CSV_JOB("../out/secret.csv"));
  has(err, "trainbus submit: params.job.data.path: ");
  has(err, "\"..\" is not allowed in the path");
  free(err);
  snprintf(json, sizeof(json), CSV_JOB("%s"), p);
  err = refused(&f, json);
  has(err, "params.job.data.path: ");
  has(err, "secret.csv: outside the data directories");
  free(err);
  err = refused(&f, CSV_JOB("/etc/shadow"));
  has(err, "params.job.data.path: /etc/shadow: outside the data directories");
  free(err);
  err = refused(&f, CSV_JOB("link-out.csv"));
  has(err, "link-out.csv: leads outside the data directories (through a symbolic link)");
  lacks(err, "secret");
  free(err);
  /* What a job writes is held to the same folders. */
  snprintf(json, sizeof(json),
           "{\"data\":{\"source\":\"seed\"},\"model\":{\"layers\":[{\"type\":\"dense\","
           "\"units\":1,\"activation\":\"sigmoid\"}]},\"loss\":\"binary_crossentropy\","
           "\"callbacks\":[{\"type\":\"CSVLogger\",\"filename\":\"%s/log.csv\"}]}",
           f.out);
  err = refused(&f, json);
  has(err, "params.job.callbacks[0].filename: ");
  has(err, "outside the data directories");
  free(err);
  fx_stop(&f);

  /* No --data-dir: the built-in generators only. */
  fx_daemon(&f, (const char *const[]){"--no-job", NULL});
  log_has(&f.d, "submitted jobs may use the built-in generators only", true);
  err = refused(&f, CSV_JOB("ok.csv"));
  has(err, "params.job.data.path: ");
  has(err, "only use the built-in generators (seed, spirals, blobs)");
  free(err);
  assert_int_equal(
      submit_cli(&f,
                 "{\"data\":{\"source\":\"spirals\",\"n_per_class\":50},\"model\":{\"layers\":[{"
                 "\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},\"loss\":"
                 "\"sparse_categorical_crossentropy\"}",
                 run, &err),
      0);
  free(err);
  final_state(&f, run, st, reason);
  assert_string_equal(st, "finished");
  fx_stop(&f);

  /* A data directory that holds the state directory is refused at start. */
  su_proc_t d;
  char log[700];
  snprintf(log, sizeof(log), "%s/dd.log", f.dir);
  d.pid = fork();
  d.reaped = false;
  assert_true(d.pid >= 0);
  if (d.pid == 0) {
    int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(lf, 2);
    execl(SU_TRAINBUSD, SU_TRAINBUSD, "--listen", "127.0.0.1:0", "--state-dir", f.state, "--no-job",
          "--data-dir", f.dir, (char *)NULL);
    _exit(127);
  }
  assert_int_equal(su_wait(&d, 20000), 1);
  char *text = su_read(log, NULL);
  has(text, "holds the state directory");
  free(text);
  fx_end(&f);
}

/* ---- 5. loader messages ------------------------------------------------------------ */

static void test_loader_messages(void **state) {
  (void)state;
  fx_t f;
  char p[700], run[TB_PROTO_RUN_MAX], st[16], reason[160], *err;
  fx_dirs(&f);
  /* A submitted job's run fails on a field of its file: where, not what. */
  snprintf(p, sizeof(p), "%s/bad.csv", f.data);
  su_write(p, "0.5,0\nhunter2,1\n");
  fx_daemon(&f, (const char *const[]){"--no-job", "--data-dir", f.data, NULL});
  assert_int_equal(submit_cli(&f, CSV_JOB("bad.csv"), run, &err), 0);
  free(err);
  final_state(&f, run, st, reason);
  assert_string_equal(st, "failed");
  has(reason, "bad.csv:2: column 1: expected a number");
  lacks(reason, "hunter2");
  lacks(reason, "got");
  fx_stop(&f);
  log_has(&f.d, "bad.csv:2: column 1: expected a number", true);
  log_has(&f.d, "hunter2", false);

  /* The operator's job: the field as it is (RFC 4180's quotes undone), a
   * quote in it escaped (not "?"). */
  snprintf(p, sizeof(p), "%s/iris.csv", f.out);
  su_write(p, "5.1,3.5,\"set\"\"osa\",0\n");
  char job[2048], path[700];
  snprintf(job, sizeof(job), CSV_JOB("%s"), p);
  snprintf(path, sizeof(path), "%s/iris.json", f.dir);
  su_write(path, job);
  snprintf(f.state, sizeof(f.state), "%s/state2", f.dir); /* runs numbered from r1 again */
  fx_daemon(&f, (const char *const[]){"--job", path, NULL});
  final_state(&f, "r1", st, reason);
  assert_string_equal(st, "failed");
  has(reason, "iris.csv:1: column 3: expected a number, got \"set\\\"osa\"");
  fx_end(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_budget_refusals), cmocka_unit_test(test_allocation_fails_alone),
      cmocka_unit_test(test_rss_bounded),     cmocka_unit_test(test_confinement),
      cmocka_unit_test(test_loader_messages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
