/* The worker pool: n - 1 threads created once and kept, each running the
 * task of every tb__pool_run on its lane.
 *
 * Three 32-bit words carry all the synchronisation: `start` (a generation
 * bumped once per run), `done` (workers finished in this run) and `bar_gen`
 * (a barrier generation, with `bar_count` lanes arrived). Waiting for a word
 * to change is a bounded spin, for the few microseconds a step's lanes
 * usually are apart (yielding the core after the first 5 us, in case the
 * lane waited for is off it), followed by a futex sleep: a worker between batches, or
 * during a long hook, a pause or a checkpoint, sleeps in the kernel and costs
 * nothing. Each word has a count of sleepers, so a writer makes the wake-up
 * system call only when someone sleeps. (Linux futexes: Debian is the only
 * platform trainbus builds on; a condition variable would do the same with
 * a mutex on every hand-over.)
 *
 * Memory ordering: every access is sequentially consistent, so a task's
 * writes before tb__pool_barrier (or before returning) are visible to every
 * lane after the barrier (or to the caller after tb__pool_run). */
#define _GNU_SOURCE /* syscall() */
#include "pool.h"
#include "trainbus/error.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a waiter polls before it sleeps. Lanes of one step finish within
 * a few microseconds of each other, and the next batch follows the last one
 * by the time fit() takes to fire its hooks; 50 us covers both (measured with
 * tests/bench/bench_fmnist: sleeping at once costs a futex wake-up, ~5-30 us,
 * at each of the three hand-overs of a step) and bounds what a waiter burns
 * on a machine where the other lane was descheduled. */
#define TB__POOL_SPIN_NS 50000
/* The first part of it polls without giving the core up. */
#define TB__POOL_PURE_SPIN_NS 5000

typedef struct word_s {
  _Atomic uint32_t v;
  _Atomic int sleepers;
} word_t;

typedef struct lane_s {
  struct tb__pool_s *pool;
  int lane;
} lane_t;

struct tb__pool_s {
  int n;
  uint64_t spin_ns; /* TB__POOL_SPIN_NS, or 0 with more lanes than cores */
  pthread_t *threads;
  lane_t *lanes;
  int n_started;
  tb__pool_fn fn;
  void *arg;
  _Atomic bool quit;
  word_t start, done, bar_gen;
  _Atomic uint32_t bar_count;
};

static long futex(_Atomic uint32_t *w, int op, uint32_t val) {
  return syscall(SYS_futex, (uint32_t *)w, op, val, NULL, NULL, 0);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Returns the word's value once it differs from old, polling for at most
 * spin_ns first. */
static uint32_t wait_change(word_t *w, uint32_t old, uint64_t spin_ns) {
  uint32_t v;
  uint64_t start = 0;
  for (unsigned i = 1; spin_ns > 0; i++) {
    if ((v = atomic_load(&w->v)) != old)
      return v;
    if (start == 0 || (i & 63) != 0) {
      cpu_relax();
      if (start == 0 && i >= 64)
        start = now_ns();
      continue;
    }
    /* Past the first few microseconds the lane we wait for may be off the
     * core (another process has it): yield between polls, so that it can
     * run here if it is waiting for a core. */
    uint64_t t = now_ns();
    if (t - start >= spin_ns)
      break;
    if (t - start >= TB__POOL_PURE_SPIN_NS)
      sched_yield();
  }
  for (;;) {
    atomic_fetch_add(&w->sleepers, 1);
    /* The kernel compares the word with old under its own lock: a change
     * made before this call makes it return at once (EAGAIN). */
    futex(&w->v, FUTEX_WAIT_PRIVATE, old);
    atomic_fetch_sub(&w->sleepers, 1);
    if ((v = atomic_load(&w->v)) != old)
      return v;
  }
}

static void wake_all(word_t *w) {
  if (atomic_load(&w->sleepers) > 0)
    futex(&w->v, FUTEX_WAKE_PRIVATE, INT_MAX);
}

static void *worker(void *arg) {
  lane_t *ln = arg;
  struct tb__pool_s *p = ln->pool;
  uint32_t seen = 0;
  for (;;) {
    seen = wait_change(&p->start, seen, p->spin_ns);
    if (atomic_load(&p->quit))
      return NULL;
    p->fn(p->arg, ln->lane);
    if (atomic_fetch_add(&p->done.v, 1) + 1 == (uint32_t)(p->n - 1))
      wake_all(&p->done);
  }
}

int tb__pool_new(int n_lanes, tb__pool_t **out) {
  *out = NULL;
  if (n_lanes < 1)
    return TB_EINVAL;
  tb__pool_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return TB_ENOMEM;
  p->n = n_lanes;
  /* More lanes than cores: a spinning lane would only keep the one it waits
   * for off a core, so waiters sleep at once. */
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  p->spin_ns = cores > 0 && n_lanes > cores ? 0 : TB__POOL_SPIN_NS;
  p->threads = calloc((size_t)n_lanes, sizeof(*p->threads));
  p->lanes = calloc((size_t)n_lanes, sizeof(*p->lanes));
  if (p->threads == NULL || p->lanes == NULL) {
    tb__pool_free(p);
    return TB_ENOMEM;
  }
  /* Workers block every signal, so that a process's handlers (the daemon's
   * SIGTERM, a CLI's SIGINT) keep running on the threads that expect them. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int r = 0;
  for (int i = 1; i < n_lanes && r == 0; i++) {
    p->lanes[i] = (lane_t){p, i};
    r = pthread_create(&p->threads[i], NULL, worker, &p->lanes[i]);
    if (r == 0)
      p->n_started = i;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r != 0) {
    tb__pool_free(p);
    return r == EAGAIN || r == ENOMEM ? TB_ENOMEM : -r;
  }
  *out = p;
  return 0;
}

void tb__pool_free(tb__pool_t *p) {
  if (p == NULL)
    return;
  if (p->n_started > 0) {
    atomic_store(&p->quit, true);
    atomic_fetch_add(&p->start.v, 1);
    futex(&p->start.v, FUTEX_WAKE_PRIVATE, INT_MAX);
    for (int i = 1; i <= p->n_started; i++)
      pthread_join(p->threads[i], NULL);
  }
  free(p->threads);
  free(p->lanes);
  free(p);
}

int tb__pool_lanes(const tb__pool_t *p) {
  return p->n;
}

void tb__pool_run(tb__pool_t *p, tb__pool_fn fn, void *arg) {
  if (p->n == 1) {
    fn(arg, 0);
    return;
  }
  p->fn = fn;
  p->arg = arg;
  atomic_store(&p->done.v, 0);
  atomic_fetch_add(&p->start.v, 1);
  wake_all(&p->start);
  fn(arg, 0);
  uint32_t d = atomic_load(&p->done.v);
  while (d != (uint32_t)(p->n - 1))
    d = wait_change(&p->done, d, p->spin_ns);
}

void tb__pool_barrier(tb__pool_t *p) {
  if (p->n == 1)
    return;
  uint32_t gen = atomic_load(&p->bar_gen.v);
  if (atomic_fetch_add(&p->bar_count, 1) + 1 == (uint32_t)p->n) {
    atomic_store(&p->bar_count, 0);
    atomic_fetch_add(&p->bar_gen.v, 1);
    wake_all(&p->bar_gen);
  } else {
    wait_change(&p->bar_gen, gen, p->spin_ns);
  }
}
