/* The retention bound from the inside (server/src/events.c), on an
 * in-process server whose loop the test holds still to read its rings:
 *
 * - what the server counts (retained_bytes, n_retained) is exactly what its
 *   rings hold: each event's line and descriptor and each ring's table;
 * - a chunk holds one run's events only, even when runs publish at once
 *   (their records interleave in one drain step), so a run's evicted events
 *   give their memory back;
 * - over the bound, the runs that ended go first, the one that ended first
 *   first even when another ended run started earlier, each from its oldest
 *   event, and a live run loses events only once no ended run holds any;
 *   what a ring keeps is always its newest events, and a live run keeps at
 *   least its newest one however small the bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "internal.h"
#include "srv_util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- holding the loop still (as test_server_unit.c) ---------------------------- */

static uv_async_t holder;
static uv_sem_t held, released;
static atomic_bool holder_closing;
/* The test's server and whether the test holds its loop: a failing test
 * leaves both to the teardown, which lets the loop go and stops it, so
 * the next test starts clean rather than hangs. */
static tb_server_t *current;
static bool holding;

static void on_hold(uv_async_t *a) {
  if (atomic_load(&holder_closing)) {
    uv_close((uv_handle_t *)a, NULL);
    return;
  }
  uv_sem_post(&held);
  uv_sem_wait(&released);
}

static void hold_loop(void) {
  uv_async_send(&holder);
  uv_sem_wait(&held);
  holding = true;
}

static void release_loop(void) {
  holding = false;
  uv_sem_post(&released);
}

static tb_server_t *start_held(tb_server_opts_t *o) {
  o->listen[0] = "127.0.0.1:0";
  o->n_listen = 1;
  o->token = SU_TOKEN;
  o->token_given = true;
  o->log_level = 0;
  tb_server_t *s = NULL;
  tb_err_t err = {{0}};
  if (tb_server_new(o, &s, &err) != 0)
    fail_msg("tb_server_new: %s", err.msg);
  atomic_store(&holder_closing, false);
  assert_int_equal(uv_sem_init(&held, 0), 0);
  assert_int_equal(uv_sem_init(&released, 0), 0);
  assert_int_equal(uv_async_init(&s->loop, &holder, on_hold), 0);
  assert_int_equal(tb_server_start(s), 0);
  current = s;
  return s;
}

static void finish(tb_server_t *s) {
  current = NULL;
  atomic_store(&holder_closing, true);
  uv_async_send(&holder);
  tb_server_stop(s);
  int closed = tb_server_free(s);
  uv_sem_destroy(&held);
  uv_sem_destroy(&released);
  assert_int_equal(closed, 0);
}

static int teardown(void **state) {
  (void)state;
  if (holding)
    release_loop();
  if (current != NULL)
    finish(current);
  return 0;
}

/* ---- runs the test trains by hand ----------------------------------------------- */

typedef struct trun_s {
  tb_run_t *r;
  tb_callbacks_t cbs;
  tb_ctx_t ctx;
  int batch;
} trun_t;

static void trun_attach(tb_server_t *s, trun_t *t, const char *name) {
  memset(t, 0, sizeof(*t));
  tb_err_t err = {{0}};
  assert_int_equal(tb_server_attach(s, name, 1, &t->r, &err), 0);
  tb_callbacks_init(&t->cbs);
  assert_int_equal(tb_callbacks_add(&t->cbs, tb_run_callback(t->r)), 0);
  tb_ctx_init(&t->ctx);
  t->ctx.epochs = 1;
  t->ctx.steps = 100000;
  tb_logs_t logs;
  tb_logs_clear(&logs);
  assert_int_equal(tb_callbacks_fire(&t->cbs, &t->ctx, TB_HOOK_TRAIN_BEGIN, -1, &logs), 0);
  assert_int_equal(tb_callbacks_fire(&t->cbs, &t->ctx, TB_HOOK_EPOCH_BEGIN, 0, &logs), 0);
}

/* n training batches: 2n events. */
static void trun_batches(trun_t *t, int n) {
  for (int i = 0; i < n; i++, t->batch++) {
    tb_logs_t logs;
    tb_logs_clear(&logs);
    assert_int_equal(
        tb_callbacks_fire(&t->cbs, &t->ctx, TB_HOOK_TRAIN_BATCH_BEGIN, t->batch, &logs), 0);
    tb_logs_set(&logs, "loss", 1.0 / (t->batch + 1));
    tb_logs_set(&logs, "accuracy", 0.5);
    assert_int_equal(tb_callbacks_fire(&t->cbs, &t->ctx, TB_HOOK_TRAIN_BATCH_END, t->batch, &logs),
                     0);
  }
}

static void trun_end(trun_t *t) {
  tb_logs_t logs;
  tb_logs_clear(&logs);
  assert_int_equal(tb_callbacks_fire(&t->cbs, &t->ctx, TB_HOOK_EPOCH_END, 0, &logs), 0);
  assert_int_equal(tb_callbacks_fire(&t->cbs, &t->ctx, TB_HOOK_TRAIN_END, -1, &logs), 0);
  tb_run_detach(t->r, false);
  tb_callbacks_release(&t->cbs);
}

/* Holds the loop once it has drained every event the runs were given (the
 * trainer side's seq is this thread's: the test is their trainer). */
static void hold_drained(trun_t *const *ts, int n) {
  uint64_t deadline = su_now_ms() + 20000;
  for (;;) {
    hold_loop();
    bool all = true;
    for (int i = 0; i < n; i++)
      all &= ts[i]->r->last_seq == ts[i]->r->seq;
    if (all)
      return;
    release_loop();
    if (su_now_ms() > deadline)
      fail_msg("the loop did not drain the events");
    su_sleep_ms(2);
  }
}

/* ---- white-box checks (loop held) ----------------------------------------------- */

/* The first seq r's ring holds (last_seq + 1 if none). */
static int64_t first_held(const tb_run_t *r) {
  return r->last_seq - (int64_t)r->n_ring + 1;
}

/* What the rings hold, counted from the rings themselves, against the
 * server's counts; and every descriptor of every chunk a ring refers to is
 * an event of that same run, in that ring. */
static void check_rings(tb_server_t *s) {
  uint64_t bytes = 0;
  int64_t events = 0;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    uint64_t run_bytes = (uint64_t)r->ring_cap * sizeof(tb_ev_t *);
    for (int64_t q = first_held(r); q <= r->last_seq; q++) {
      tb_ev_t *e = tb__run_event(r, q);
      if (e == NULL)
        continue;
      assert_int_equal(e->seq, q);
      run_bytes += e->len + sizeof(tb_ev_t);
      events++;
      tb_ev_t *evs = (tb_ev_t *)(e->chunk + 1);
      for (int i = 0; i < e->chunk->n; i++) {
        /* A descriptor of this chunk is one of r's events (in r's ring if
         * it is not evicted yet), never another run's. */
        if (evs[i].chunk != e->chunk)
          fail_msg("run %s: seq %lld's chunk has a descriptor of another chunk", r->id,
                   (long long)q);
        tb_ev_t *mine = tb__run_event(r, evs[i].seq);
        bool in_ring = evs[i].seq >= first_held(r) && evs[i].seq <= r->last_seq;
        if (in_ring && mine != &evs[i])
          fail_msg("run %s: seq %lld shares its chunk with seq %lld of another run", r->id,
                   (long long)q, (long long)evs[i].seq);
      }
    }
    assert_int_equal(r->ret_bytes, run_bytes);
    bytes += run_bytes;
  }
  assert_int_equal(s->retained_bytes, bytes);
  assert_int_equal(s->n_retained, events);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_counts_and_one_chunk_per_run(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  tb_server_t *s = start_held(&o);
  trun_t a, b;
  trun_attach(s, &a, "a");
  trun_attach(s, &b, "b");
  trun_t *all[] = {&a, &b};
  hold_drained(all, 2);
  release_loop();
  /* The loop held, both runs publish in turns: their records interleave in
   * the queue, and one drain step takes them all. */
  hold_loop();
  for (int i = 0; i < 100; i++) {
    trun_batches(&a, 1);
    trun_batches(&b, 1);
  }
  release_loop();
  hold_drained(all, 2);
  check_rings(s);
  assert_int_equal(a.r->n_ring, (size_t)a.r->last_seq);
  assert_int_equal(b.r->n_ring, (size_t)b.r->last_seq);
  assert_int_equal(s->n_evicted, 0);
  release_loop();
  trun_end(&a);
  trun_end(&b);
  hold_drained(all, 2);
  check_rings(s);
  assert_int_equal(s->ret_ended.head, a.r); /* it ended first */
  assert_int_equal(s->ret_ended.tail, b.r);
  assert_null(s->ret_live.head);
  release_loop();
  finish(s);
}

static void test_ended_runs_go_first_in_the_order_they_ended(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.retain_events = 512; /* ring tables of 4 KiB at most */
  o.retain_bytes = 96 * 1024;
  tb_server_t *s = start_held(&o);
  /* c starts first and ends last; a starts after it and ends first. */
  trun_t c, a, b;
  trun_attach(s, &c, "c");
  trun_batches(&c, 5);
  trun_attach(s, &a, "a");
  trun_batches(&a, 60);
  trun_end(&a);
  trun_batches(&c, 55);
  trun_end(&c);
  trun_attach(s, &b, "b");
  trun_t *all[] = {&a, &b, &c};
  hold_drained(all, 3);
  check_rings(s);
  int64_t a_last = a.r->last_seq, c_last = c.r->last_seq;
  assert_int_equal(s->n_evicted, 0);
  assert_true(s->retained_bytes < o.retain_bytes);
  release_loop();
  /* The live run b grows in small steps, the bound taking what it must. */
  bool c_gone = false;
  for (int step = 0; step < 60; step++) {
    trun_batches(&b, 10);
    hold_drained(all, 3);
    check_rings(s);
    assert_true(s->retained_bytes <= o.retain_bytes);
    int64_t a_first = first_held(a.r), c_first = first_held(c.r), b_first = first_held(b.r);
    /* Evicted: each ring keeps a suffix, so the first held seq says it all. */
    if (c_first > 1 && a_first <= a_last)
      fail_msg("step %d: c (ended second) lost seqs 1..%lld while a (ended first) holds %lld..",
               step, (long long)c_first - 1, (long long)a_first);
    if (b_first > 1 && (a_first <= a_last || c_first <= c_last))
      fail_msg("step %d: the live run lost events while an ended run holds some", step);
    c_gone |= c_first > c_last;
    assert_true(b.r->n_ring >= 1);
    bool b_lost = b_first > 1;
    release_loop();
    if (b_lost && step > 40)
      break;
  }
  assert_true(c_gone);
  hold_loop();
  /* The emptied rings gave their tables back and left the lists. */
  assert_null(a.r->ring);
  assert_null(c.r->ring);
  assert_int_equal(a.r->ret_bytes, 0);
  assert_null(s->ret_ended.head);
  assert_int_equal(s->ret_live.head, b.r);
  assert_true(first_held(b.r) > 1); /* b is over the bound by itself now */
  assert_true(s->n_evicted >= a_last + c_last);
  release_loop();
  trun_end(&b);
  hold_drained(all, 3);
  check_rings(s);
  release_loop();
  finish(s);
}

static void test_a_live_run_keeps_its_newest_event(void **state) {
  (void)state;
  tb_server_opts_t o;
  tb_server_opts_defaults(&o);
  o.retain_bytes = 1; /* nothing fits */
  tb_server_t *s = start_held(&o);
  trun_t a, b;
  trun_attach(s, &a, "a");
  trun_attach(s, &b, "b");
  trun_t *all[] = {&a, &b};
  for (int i = 0; i < 5; i++) {
    trun_batches(&a, 20);
    trun_batches(&b, 3);
    hold_drained(all, 2);
    check_rings(s);
    /* Each live run holds its newest event and nothing else. */
    assert_int_equal(a.r->n_ring, 1);
    assert_int_equal(b.r->n_ring, 1);
    assert_non_null(tb__run_event(a.r, a.r->last_seq));
    assert_non_null(tb__run_event(b.r, b.r->last_seq));
    release_loop();
  }
  trun_end(&a);
  hold_drained(all, 2);
  /* Ended, a holds nothing. */
  assert_int_equal(a.r->n_ring, 0);
  assert_null(a.r->ring);
  assert_int_equal(b.r->n_ring, 1);
  check_rings(s);
  release_loop();
  trun_end(&b);
  hold_drained(all, 2);
  check_rings(s);
  assert_int_equal(s->retained_bytes, 0);
  release_loop();
  finish(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_counts_and_one_chunk_per_run, teardown),
      cmocka_unit_test_teardown(test_ended_runs_go_first_in_the_order_they_ended, teardown),
      cmocka_unit_test_teardown(test_a_live_run_keeps_its_newest_event, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
