/* End to end: the bound on retained events across runs (trainbusd
 * --retain-bytes, docs/PROTOCOL.md "Retention"), on the real daemon.
 *
 * A daemon with a small bound runs several short jobs one after another:
 * the daemon's status says how many bytes its runs hold, and that stays
 * under the bound while they train and after; the newest run is whole in
 * memory while the oldest ended runs lost their oldest events first (what
 * memory keeps of a run is always a suffix of it). Without a state
 * directory, history then starts past the evicted events and a replay from
 * seq 1 starts with a `dropped` notice for them; with one, both read them
 * back from the run's log, whole. A live run that alone is over the bound
 * loses its own oldest events, and a replay with since_seq taken meanwhile
 * still covers every seq exactly once, in order, and ends live. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "srv_util.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 3 epochs of 30 training and 10 validation batches: 256 events, some 65
 * KB retained. */
#define JOB_SMALL                                                                                  \
  "{\"name\":\"small\",\"seed\":3,\"threads\":1,"                                                  \
  "\"data\":{\"source\":\"blobs\",\"n\":400,\"classes\":2,\"features\":2,\"seed\":3},"             \
  "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":4,\"activation\":\"relu\"},"               \
  "{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"                                 \
  "\"loss\":\"sparse_categorical_crossentropy\",\"metrics\":[\"accuracy\"],"                       \
  "\"optimizer\":{\"name\":\"sgd\",\"learning_rate\":0.1},"                                        \
  "\"epochs\":3,\"batch_size\":10,\"validation_split\":0.25}"

/* 20 epochs of 150 training and 38 validation batches: about 7,600
 * events, 1.9 MB retained unbounded; trained in a second or less. */
#define JOB_LIVE                                                                                   \
  "{\"name\":\"live\",\"seed\":5,\"threads\":1,"                                                   \
  "\"data\":{\"source\":\"spirals\",\"n_per_class\":750,\"noise\":0.15,"                           \
  "\"scale\":\"standard\"},"                                                                       \
  "\"model\":{\"layers\":[{\"type\":\"dense\",\"units\":64,\"activation\":\"relu\"},"              \
  "{\"type\":\"dense\",\"units\":2,\"activation\":\"softmax\"}]},"                                 \
  "\"loss\":\"sparse_categorical_crossentropy\",\"metrics\":[\"accuracy\"],"                       \
  "\"optimizer\":{\"name\":\"adam\",\"learning_rate\":0.003},"                                     \
  "\"epochs\":20,\"batch_size\":8,\"validation_split\":0.2}"

#define BOUND 98304 /* --retain-bytes 96K: one and a half small runs */

typedef struct fx_s {
  char *dir;
  char state[600];
  su_proc_t d;
  tb_client_t *ctl;
} fx_t;

static void fx_start(fx_t *f, bool state_dir, const char *bound) {
  memset(f, 0, sizeof(*f));
  f->dir = su_tmpdir();
  snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
  const char *args[] = {"--no-job", "--retain-bytes", bound, state_dir ? NULL : "--no-state", NULL};
  su_daemon(&f->d, f->state, args);
  f->ctl = su_client(f->d.addr, TB_ROLE_CONTROLLER, "retain");
}

static void fx_end(fx_t *f) {
  tb_client_free(f->ctl);
  kill(f->d.pid, SIGTERM);
  if (su_wait(&f->d, 10000) < 0) {
    su_dump(&f->d);
    su_kill(&f->d);
  }
  su_rmdir(f->dir);
  free(f->dir);
}

/* The daemon's status (no run): what its runs hold. */
typedef struct dstat_s {
  int64_t retained_bytes, retain_bytes, retained_events, evicted_events, events;
} dstat_t;

static int64_t num(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  if (!cJSON_IsNumber(v))
    fail_msg("daemon status: no number \"%s\"", name);
  return (int64_t)v->valuedouble;
}

static dstat_t daemon_status(tb_client_t *c) {
  tb_req_t q;
  memset(&q, 0, sizeof(q));
  q.method = TB_METHOD_STATUS;
  cJSON *res = NULL;
  tb_client_err_t err;
  if (tb_client_call(c, &q, &res, &err) != 0)
    fail_msg("status: %s", err.msg);
  dstat_t d = {num(res, "retained_bytes"), num(res, "retain_bytes"), num(res, "retained_events"),
               num(res, "evicted_events"), num(res, "events")};
  cJSON_Delete(res);
  return d;
}

static void submit(tb_client_t *c, const char *job, char run[TB_PROTO_RUN_MAX]) {
  tb_client_err_t err;
  if (tb_client_submit(c, job, strlen(job), run, &err) != 0)
    fail_msg("submit: %s", err.msg);
}

/* Polls until the run has ended, checking the bound at every poll (and
 * that a live run never loses its newest event). Returns its last seq. */
static int64_t wait_final_bounded(fx_t *f, const char *run, int64_t bound, int *polls) {
  uint64_t deadline = su_now_ms() + 90000;
  while (su_now_ms() < deadline) {
    dstat_t d = daemon_status(f->ctl);
    assert_int_equal(d.retain_bytes, bound);
    if (d.retained_bytes > bound)
      fail_msg("%lld bytes retained, over the bound of %lld", (long long)d.retained_bytes,
               (long long)bound);
    (*polls)++;
    tb_run_info_t info;
    tb_client_err_t err;
    if (tb_client_status(f->ctl, run, &info, &err) != 0)
      fail_msg("status %s: %s", run, err.msg);
    if (info.state == TB_RUN_FINISHED)
      return info.last_seq;
    assert_true(info.state == TB_RUN_QUEUED || info.state == TB_RUN_RUNNING);
    su_sleep_ms(10);
  }
  su_dump(&f->d);
  fail_msg("run %s did not finish", run);
  return 0;
}

/* history from seq 1: what memory (and the log) still hold; *first gets
 * the first seq returned (0 if none). Checks it is one unbroken stretch
 * ending at last_seq. */
static int history_suffix(tb_client_t *c, const char *run, int64_t last_seq, int64_t *first) {
  int n;
  su_ev_t *h = su_history(c, run, &n);
  *first = n > 0 ? h[0].seq : 0;
  for (int i = 0; i < n; i++)
    if (h[i].seq != *first + i)
      fail_msg("history of %s: event %d has seq %lld after %lld", run, i, (long long)h[i].seq,
               (long long)*first);
  if (n > 0)
    assert_int_equal(h[n - 1].seq, last_seq);
  free(h);
  return n;
}

/* A replay with since_seq on a raw connection (the C client would hide a
 * duplicate: it skips seqs it has delivered), read until `until` (0: the
 * run's final state event): every seq from since_seq on exactly once, as an
 * event or inside a `dropped` range, in order. */
typedef struct replay_s {
  su_conn_t c;
  const char *run;
  int64_t since, next;   /* the seq expected next */
  int64_t next_seq;      /* subscribe's answer: the first live seq */
  int64_t dropped;       /* seqs told as dropped */
  int64_t first_drop_to; /* the end of a dropped range the replay began with, 0 if none */
} replay_t;

static void replay_open(replay_t *rp, const char *addr, const char *run, int64_t since) {
  memset(rp, 0, sizeof(*rp));
  rp->run = run;
  rp->since = rp->next = since;
  su_connect(&rp->c, addr, 0);
  su_auth(&rp->c, "observer", NULL);
  char req[300];
  snprintf(req, sizeof(req),
           "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\",\"params\":{\"runs\":[\"%s\"],"
           "\"since_seq\":%lld}}\n",
           run, (long long)since);
  su_sends(&rp->c, req);
  tb_smsg_t m;
  assert_int_equal(su_msg(&rp->c, 10000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  rp->next_seq = num(m.result, "next_seq");
  tb_smsg_free(&m);
}

static void replay_read(replay_t *rp, int64_t until) {
  uint64_t deadline = su_now_ms() + 90000;
  for (bool done = until > 0 && rp->next > until; !done;) {
    tb_smsg_t m;
    int k = su_msg(&rp->c, 1000, &m);
    if (k == 0 || su_now_ms() > deadline)
      fail_msg("replay of %s: %s at seq %lld", rp->run, k == 0 ? "closed" : "nothing more",
               (long long)rp->next);
    if (k < 0)
      continue;
    if (m.kind == TB_SMSG_DROPPED) {
      assert_string_equal(m.dropped.run, rp->run);
      if (m.dropped.from_seq != rp->next || m.dropped.to_seq < m.dropped.from_seq)
        fail_msg("replay of %s: dropped %lld..%lld where seq %lld was next", rp->run,
                 (long long)m.dropped.from_seq, (long long)m.dropped.to_seq, (long long)rp->next);
      if (rp->next == rp->since)
        rp->first_drop_to = m.dropped.to_seq;
      rp->dropped += m.dropped.to_seq - m.dropped.from_seq + 1;
      rp->next = m.dropped.to_seq + 1;
    } else if (m.kind == TB_SMSG_EVENT) {
      if (m.event.seq != rp->next)
        fail_msg("replay of %s: seq %lld where %lld was next (a gap or a duplicate)", rp->run,
                 (long long)m.event.seq, (long long)rp->next);
      rp->next++;
      done = until == 0 && strcmp(m.event.name, "state") == 0 &&
             strcmp(m.event.state, "finished") == 0;
    }
    tb_smsg_free(&m);
    done |= until > 0 && rp->next > until;
  }
}

static void replay_close(replay_t *rp) {
  su_close(&rp->c);
}

/* A replay of an ended run from since_seq to its last seq; returns the seqs
 * told as dropped. */
static int64_t replay_ended(const char *addr, const char *run, int64_t since, int64_t last,
                            int64_t *first_drop_to) {
  replay_t rp;
  replay_open(&rp, addr, run, since);
  assert_int_equal(rp.next_seq, last + 1);
  replay_read(&rp, last);
  /* and nothing after it */
  tb_smsg_t m;
  assert_int_equal(su_msg(&rp.c, 200, &m), -1);
  replay_close(&rp);
  *first_drop_to = rp.first_drop_to;
  return rp.dropped;
}

/* ---- finished runs ------------------------------------------------------------ */

static void finished_runs(bool state_dir) {
  fx_t f;
  fx_start(&f, state_dir, "96K");
  enum { N = 4 };
  char runs[N][TB_PROTO_RUN_MAX];
  int64_t last[N];
  int polls = 0;
  for (int i = 0; i < N; i++) {
    submit(f.ctl, JOB_SMALL, runs[i]);
    last[i] = wait_final_bounded(&f, runs[i], BOUND, &polls);
  }
  dstat_t d = daemon_status(f.ctl);
  fprintf(stderr, "# %s: %d polls; %lld events, %lld retained in %lld bytes, %lld evicted\n",
          state_dir ? "state dir" : "no state", polls, (long long)d.events,
          (long long)d.retained_events, (long long)d.retained_bytes, (long long)d.evicted_events);
  assert_true(d.retained_bytes <= BOUND);
  assert_true(d.retained_bytes >= BOUND / 2); /* evicted only what it had to */
  int64_t total = 0;
  for (int i = 0; i < N; i++)
    total += last[i];
  assert_int_equal(d.events, total);
  assert_int_equal(d.retained_events + d.evicted_events, total);
  assert_true(d.evicted_events > last[0]); /* the first run at least */

  /* The newest run is whole: its history and a replay from seq 1 give
   * every event, no dropped notice. */
  int64_t first, drop_to;
  assert_int_equal(history_suffix(f.ctl, runs[N - 1], last[N - 1], &first), last[N - 1]);
  assert_int_equal(first, 1);
  assert_int_equal(replay_ended(f.d.addr, runs[N - 1], 1, last[N - 1], &drop_to), 0);

  if (!state_dir) {
    /* Memory holds a suffix of each run, older runs losing first: the
     * retained counts grow with the run's age, the first run's oldest
     * events are gone, and they add up to what the daemon says it holds. */
    int64_t held = 0, prev = -1;
    for (int i = 0; i < N; i++) {
      int n = history_suffix(f.ctl, runs[i], last[i], &first);
      fprintf(stderr, "# %s: %d of %lld events in memory\n", runs[i], n, (long long)last[i]);
      assert_true(n >= prev);
      assert_true(n == 0 || n == last[i] - first + 1);
      prev = n;
      held += n;
    }
    assert_int_equal(held, d.retained_events);
    assert_true(history_suffix(f.ctl, runs[0], last[0], &first) < last[0]);
    /* A replay of the first run from seq 1 starts with one dropped notice
     * for what memory lost, then the rest, with no other gap. */
    int64_t lost = replay_ended(f.d.addr, runs[0], 1, last[0], &drop_to);
    assert_true(lost > 0);
    assert_int_equal(drop_to, lost);
  } else {
    /* With a state directory what memory lost is read back from the run's
     * log: the first run's history and replay are whole. */
    for (int i = 0; i < N; i++) {
      assert_int_equal(history_suffix(f.ctl, runs[i], last[i], &first), last[i]);
      assert_int_equal(first, 1);
    }
    assert_int_equal(replay_ended(f.d.addr, runs[0], 1, last[0], &drop_to), 0);
  }
  /* A new run's events still go into memory (the ended runs give way). */
  char extra[TB_PROTO_RUN_MAX];
  submit(f.ctl, JOB_SMALL, extra);
  int64_t last_extra = wait_final_bounded(&f, extra, BOUND, &polls);
  assert_int_equal(history_suffix(f.ctl, extra, last_extra, &first), last_extra);
  assert_int_equal(first, 1);
  fx_end(&f);
}

static void test_finished_runs_no_state(void **state) {
  (void)state;
  finished_runs(false);
}

static void test_finished_runs_state_dir(void **state) {
  (void)state;
  finished_runs(true);
}

/* ---- a live run over the bound -------------------------------------------------- */

static void live_run(bool state_dir) {
  fx_t f;
  fx_start(&f, state_dir, "128K");
  int64_t bound = 128 * 1024;
  /* A finished run first: it gives way before the live run loses anything. */
  char old[TB_PROTO_RUN_MAX], run[TB_PROTO_RUN_MAX];
  int polls = 0;
  submit(f.ctl, JOB_SMALL, old);
  int64_t last_old = wait_final_bounded(&f, old, bound, &polls);
  /* Once the live run alone is well over the bound (after its fourth
   * epoch, some 1,500 events), it pauses (a paused run is live): a lockstep
   * answer holds the trainer at each epoch_end, so where it pauses does not
   * depend on how fast the machine trains. */
  tb_client_t *ls = su_client(f.d.addr, TB_ROLE_CONTROLLER, "lockstep");
  static const char *const end_ev[] = {"epoch_end"};
  tb_client_sub_opts_t so = {.events = end_ev,
                             .n_events = 1,
                             .lockstep = end_ev,
                             .n_lockstep = 1,
                             .lockstep_timeout_ms = 60000};
  tb_client_err_t err;
  int64_t ls_sub;
  if (tb_client_subscribe(ls, &so, &ls_sub, NULL, &err) != 0)
    fail_msg("subscribe lockstep: %s", err.msg);
  submit(f.ctl, JOB_LIVE, run);
  uint64_t deadline = su_now_ms() + 60000;
  for (bool paused = false; !paused;) {
    tb_smsg_t m;
    if (su_now_ms() > deadline)
      fail_msg("run %s: no fourth epoch_end", run);
    if (tb_client_next(ls, 1000, &m, &err) != 0)
      continue;
    if (m.kind == TB_SMSG_EVENT && m.event.lockstep && strcmp(m.event.run, run) == 0) {
      tb_client_actions_t pause = {.pause = m.event.epoch == 3};
      if (tb_client_continue(ls, run, m.event.seq, &pause, &err) != 0)
        fail_msg("continue: %s", err.msg);
      paused = pause.pause;
    }
    tb_smsg_free(&m);
  }
  if (tb_client_unsubscribe(ls, ls_sub, &err) != 0)
    fail_msg("unsubscribe: %s", err.msg);
  tb_client_free(ls);
  tb_run_info_t info;
  do {
    assert_int_equal(tb_client_status(f.ctl, run, &info, &err), 0);
    if (su_now_ms() > deadline)
      fail_msg("run %s did not pause", run);
    su_sleep_ms(5);
  } while (info.state != TB_RUN_PAUSED);
  dstat_t d = daemon_status(f.ctl);
  assert_true(d.retained_bytes <= bound);
  assert_true(d.evicted_events > last_old); /* the ended run went first, all of it */
  replay_t rp;
  replay_open(&rp, f.d.addr, run, 1);
  int64_t paused_at = rp.next_seq - 1;
  replay_read(&rp, paused_at);
  int64_t lost = rp.dropped, drop_to = rp.first_drop_to;
  /* Resumed, the replay goes on live to the end with no gap. */
  if (tb_client_resume(f.ctl, run, &err) != 0)
    fail_msg("resume: %s", err.msg);
  replay_read(&rp, 0);
  replay_close(&rp);
  int64_t last = wait_final_bounded(&f, run, bound, &polls);
  assert_int_equal(rp.next, last + 1);
  assert_int_equal(rp.dropped, lost); /* nothing lost once live */
  d = daemon_status(f.ctl);
  fprintf(stderr,
          "# live run, %s: paused at seq %lld of %lld, replay told %lld dropped; %lld retained "
          "(%lld B)\n",
          state_dir ? "state dir" : "no state", (long long)paused_at, (long long)last,
          (long long)lost, (long long)d.retained_events, (long long)d.retained_bytes);
  int64_t first;
  int n_old = history_suffix(f.ctl, old, last_old, &first);
  int n = history_suffix(f.ctl, run, last, &first);
  if (state_dir) {
    /* the log fills in what memory lost */
    assert_int_equal(n_old, last_old);
    assert_int_equal(n, last);
    assert_int_equal(lost, 0);
  } else {
    assert_int_equal(n_old, 0);
    assert_true(n > 0 && n < last);
    /* what memory lost, told at the start of the replay in one notice */
    assert_true(lost > 0 && lost < paused_at);
    assert_int_equal(drop_to, lost);
  }
  fx_end(&f);
}

static void test_live_run_no_state(void **state) {
  (void)state;
  live_run(false);
}

static void test_live_run_state_dir(void **state) {
  (void)state;
  live_run(true);
}

/* ---- the flag ------------------------------------------------------------------- */

static void test_flag_refuses_bad_sizes(void **state) {
  (void)state;
  static const char *const bad[] = {"0", "-5", "12X", "lots", "1.5Q"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char *dir = su_tmpdir(), log[700];
    snprintf(log, sizeof(log), "%s/log", dir);
    su_proc_t p;
    char *const argv[] = {SU_TRAINBUSD,  "--no-state",     "--no-job",     "--listen",
                          "127.0.0.1:0", "--retain-bytes", (char *)bad[i], NULL};
    memset(&p, 0, sizeof(p));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd < 0)
        _exit(126);
      dup2(fd, 2);
      close(fd);
      execv(argv[0], argv);
      _exit(127);
    }
    p.pid = pid;
    assert_int_equal(su_wait(&p, 10000), 2);
    char *text = su_read(log, NULL);
    assert_non_null(text);
    if (strstr(text, "--retain-bytes: expected a size") == NULL)
      fail_msg("no clear error for --retain-bytes %s: %s", bad[i], text);
    free(text);
    su_rmdir(dir);
    free(dir);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_finished_runs_no_state), cmocka_unit_test(test_finished_runs_state_dir),
      cmocka_unit_test(test_live_run_no_state),      cmocka_unit_test(test_live_run_state_dir),
      cmocka_unit_test(test_flag_refuses_bad_sizes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
