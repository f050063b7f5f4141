/* The bounded queue between the daemon reader and the publisher.
 *
 * The bound is what keeps a stalled broker from costing anything but batch
 * events: past three quarters full, batch events are refused (and counted),
 * so the last quarter is kept for lifecycle events; when even that is full, a
 * lifecycle event waits. Waiting here stops the reader from reading the
 * daemon's socket, which the daemon handles as it handles any slow client
 * (it drops batch events for it and, past its limit, disconnects it; the
 * reader then catches up from `history`). The trainer never waits. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int tb__queue_init(tb__queue_t *q, size_t max) {
  memset(q, 0, sizeof *q);
  q->max = max ? max : 4096;
  if (q->max < 4)
    q->max = 4;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int rc = pthread_mutex_init(&q->mu, NULL);
  if (rc == 0)
    rc = pthread_cond_init(&q->not_empty, &ca);
  if (rc == 0)
    rc = pthread_cond_init(&q->not_full, &ca);
  pthread_condattr_destroy(&ca);
  return rc ? -rc : 0;
}

void tb__queue_destroy(tb__queue_t *q) {
  while (q->head != NULL) {
    tb__item_t *it = q->head;
    q->head = it->next;
    free(it);
  }
  q->tail = NULL;
  q->n = 0;
  pthread_mutex_destroy(&q->mu);
  pthread_cond_destroy(&q->not_empty);
  pthread_cond_destroy(&q->not_full);
}

static void deadline_in(struct timespec *ts, int ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

tb__push_t tb__queue_push(tb__queue_t *q, tb__item_t *it, const atomic_bool *stop) {
  it->next = NULL;
  pthread_mutex_lock(&q->mu);
  if (it->batch && q->n >= q->max - q->max / 4) {
    q->dropped++;
    pthread_mutex_unlock(&q->mu);
    free(it);
    return TB__DROPPED;
  }
  while (q->n >= q->max) {
    if (stop != NULL && atomic_load(stop)) {
      pthread_mutex_unlock(&q->mu);
      free(it);
      return TB__STOPPED;
    }
    struct timespec ts;
    deadline_in(&ts, 100);
    pthread_cond_timedwait(&q->not_full, &q->mu, &ts);
  }
  if (q->tail != NULL)
    q->tail->next = it;
  else
    q->head = it;
  q->tail = it;
  q->n++;
  pthread_cond_signal(&q->not_empty);
  pthread_mutex_unlock(&q->mu);
  return TB__PUSHED;
}

tb__item_t *tb__queue_pop(tb__queue_t *q, int timeout_ms) {
  pthread_mutex_lock(&q->mu);
  if (q->head == NULL && timeout_ms > 0) {
    struct timespec ts;
    deadline_in(&ts, timeout_ms);
    while (q->head == NULL) {
      if (pthread_cond_timedwait(&q->not_empty, &q->mu, &ts) == ETIMEDOUT)
        break;
    }
  }
  tb__item_t *it = q->head;
  if (it != NULL) {
    q->head = it->next;
    if (q->head == NULL)
      q->tail = NULL;
    q->n--;
    it->next = NULL;
    pthread_cond_signal(&q->not_full);
  }
  pthread_mutex_unlock(&q->mu);
  return it;
}

size_t tb__queue_len(tb__queue_t *q) {
  pthread_mutex_lock(&q->mu);
  size_t n = q->n;
  pthread_mutex_unlock(&q->mu);
  return n;
}
