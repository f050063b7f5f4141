/* Private to core: a persistent pool of worker threads that run one task on
 * every lane at once (lane 0 is the calling thread), with a barrier inside
 * the task. Used by step.c to split a batch's rows over the cores.
 *
 * Waiting never spins a core for long: a waiter polls for at most
 * TB__POOL_SPIN_NS (the time a step's stragglers usually need), not at all
 * when the pool has more lanes than the machine has cores, then sleeps on a
 * futex until woken. A pool is driven by one thread at a time. */
#ifndef TB_CORE_POOL_H
#define TB_CORE_POOL_H

typedef struct tb__pool_s tb__pool_t;

/* Called on every lane; lane 0 runs on the thread that called
 * tb__pool_run. */
typedef void (*tb__pool_fn)(void *arg, int lane);

/* A pool of n_lanes lanes (n_lanes - 1 new threads). 0, TB_ENOMEM, or a
 * -errno from pthread_create (then no thread is left running). */
int tb__pool_new(int n_lanes, tb__pool_t **out);
/* Stops and joins the threads. NULL is ignored. */
void tb__pool_free(tb__pool_t *p);
int tb__pool_lanes(const tb__pool_t *p);

/* Runs fn(arg, lane) on every lane and returns once all have returned. */
void tb__pool_run(tb__pool_t *p, tb__pool_fn fn, void *arg);
/* Inside a task: returns once every lane has called it (the same number of
 * times). Everything a lane wrote before it is visible to every lane after. */
void tb__pool_barrier(tb__pool_t *p);

#endif
