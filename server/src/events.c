/* The loop side of the bus: records in, encoded events out.
 *
 * tb__drain() takes every queued record at once (swapping the queue under its
 * mutex) and handles them in steps of up to TB_DRAIN_STEP records, one step
 * per loop iteration, each in two passes. First it encodes every event record, back
 * to back, into one chunk per run: one allocation and one reference count for
 * a run's whole batch of events, so per event there is only the encoding
 * itself. Then, for each record in order: it updates the run's status, keeps the
 * event in the run's ring (for replay and history), appends it to the run's
 * on-disk log, answers control requests waiting for it, and hands the same
 * bytes to every matching subscriber (a pointer and a length; consecutive
 * lines to one client extend one iovec). Clients are written at the end of
 * the drain, one writev each (conn.c). The disk log is written before any
 * client sees the event, so after a crash the log holds everything any
 * client was sent.
 *
 * Retention: each run's ring keeps up to retain_events of its events, and
 * all rings together up to retain_bytes (tb_server_opts_t). Past that bound
 * the oldest events of ended runs go first, the run that ended first
 * first; then the oldest of live runs. A ring holds a reference to the
 * event's chunk, so an evicted event a client is still being sent stays
 * until its write is done; a chunk holds one run's events only, so an
 * evicted run's memory is given back. Every eviction takes a ring's oldest
 * position: what memory holds of a run is always its newest events, and
 * replay and history read older ones from the run's log, as for events
 * past retain_events. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A chunk with room for n descriptors and `bytes` bytes; refs 1. */
static tb_chunk_t *chunk_new(int n, size_t bytes, tb_ev_t **evs, char **data) {
  tb_chunk_t *ch = malloc(sizeof(tb_chunk_t) + (size_t)n * sizeof(tb_ev_t) + bytes);
  if (ch == NULL)
    return NULL;
  ch->refs = 1;
  ch->n = n;
  ch->stamp = 0;
  *evs = (tb_ev_t *)(ch + 1);
  *data = (char *)(*evs + n);
  return ch;
}

tb_ev_t *tb__ev_new(const char *line, size_t len, int64_t seq, tb_event_kind_t kind, int batch) {
  tb_ev_t *e;
  char *data;
  if (chunk_new(1, len, &e, &data) == NULL)
    return NULL;
  memcpy(data, line, len);
  e->chunk = (tb_chunk_t *)e - 1;
  e->data = data;
  e->len = len;
  e->seq = seq;
  e->kind = kind;
  e->batch = batch;
  return e;
}

void tb__chunk_ref(tb_chunk_t *ch) {
  ch->refs++;
}

void tb__chunk_unref(tb_chunk_t *ch) {
  if (ch != NULL && --ch->refs == 0)
    free(ch);
}

void tb__ev_ref(tb_ev_t *e) {
  e->chunk->refs++;
}

void tb__ev_unref(tb_ev_t *e) {
  if (e != NULL)
    tb__chunk_unref(e->chunk);
}

/* ---- retention ------------------------------------------------------------ */

/* What one retained event costs: its line and its descriptor. */
static uint64_t ev_cost(const tb_ev_t *e) {
  return (uint64_t)e->len + sizeof(tb_ev_t);
}

static void ret_add(tb_run_t *r, uint64_t bytes) {
  r->ret_bytes += bytes;
  r->srv->retained_bytes += bytes;
}

static void ret_sub(tb_run_t *r, uint64_t bytes) {
  r->ret_bytes -= bytes;
  r->srv->retained_bytes -= bytes;
}

/* A ring position given up (NULL: a seq dropped at the queue). */
static void ring_release(tb_run_t *r, tb_ev_t *e) {
  if (e == NULL)
    return;
  ret_sub(r, ev_cost(e));
  r->srv->n_retained--;
  tb__ev_unref(e);
}

static void list_unlink(tb_run_t *r) {
  tb_server_t *s = r->srv;
  __typeof__(s->ret_live) *l = r->ret_list == TB__RET_ENDED ? &s->ret_ended : &s->ret_live;
  if (r->ret_list == TB__RET_NONE)
    return;
  if (r->ret_prev != NULL)
    r->ret_prev->ret_next = r->ret_next;
  else
    l->head = r->ret_next;
  if (r->ret_next != NULL)
    r->ret_next->ret_prev = r->ret_prev;
  else
    l->tail = r->ret_prev;
  r->ret_prev = r->ret_next = NULL;
  r->ret_list = TB__RET_NONE;
}

/* Puts r at the tail of the list its state says (ended: the run that ended
 * last), unless it is there already. */
static void list_place(tb_run_t *r) {
  int want = tb_run_state_is_final(r->state) ? TB__RET_ENDED : TB__RET_LIVE;
  if (r->ret_list == want)
    return;
  list_unlink(r);
  tb_server_t *s = r->srv;
  __typeof__(s->ret_live) *l = want == TB__RET_ENDED ? &s->ret_ended : &s->ret_live;
  r->ret_prev = l->tail;
  if (l->tail != NULL)
    l->tail->ret_next = r;
  else
    l->head = r;
  l->tail = r;
  r->ret_list = want;
}

/* The ring grows by doubling up to retain_events, so a short run does not
 * hold a large table; events sit at (seq - 1) % cap. */
static bool ring_grow(tb_run_t *r) {
  size_t max = r->srv->o.retain_events, cap = r->ring_cap ? r->ring_cap * 2 : 1024;
  if (cap > max)
    cap = max;
  if (cap <= r->ring_cap)
    return false;
  tb_ev_t **ring = calloc(cap, sizeof(*ring));
  if (ring == NULL)
    return false;
  /* The old ring holds at most old-cap consecutive seqs: no collisions. */
  for (size_t i = 0; i < r->ring_cap; i++) {
    tb_ev_t *e = r->ring[i];
    if (e != NULL)
      ring[(size_t)((e->seq - 1) % (int64_t)cap)] = e;
  }
  free(r->ring);
  ret_add(r, (uint64_t)(cap - r->ring_cap) * sizeof(*ring));
  r->ring = ring;
  r->ring_cap = cap;
  return true;
}

/* Puts e (NULL: a seq that was dropped) at seq's position. */
static void ring_place(tb_run_t *r, int64_t seq, tb_ev_t *e) {
  if (r->n_ring == r->ring_cap && !ring_grow(r) && r->ring_cap == 0)
    return;
  size_t slot = (size_t)((seq - 1) % (int64_t)r->ring_cap);
  if (r->n_ring == r->ring_cap)
    ring_release(r, r->ring[slot]); /* past retain_events: the oldest goes */
  else
    r->n_ring++;
  r->ring[slot] = e;
  if (e != NULL) {
    tb__ev_ref(e);
    ret_add(r, ev_cost(e));
    r->srv->n_retained++;
    if (e->chunk->stamp == 0)
      e->chunk->stamp = ++r->srv->ret_clock;
  }
  r->ring_end = seq;
}

/* The oldest position of r's ring (n_ring > 0). */
static tb_ev_t *ring_oldest(const tb_run_t *r) {
  return r->ring[(size_t)((r->ring_end - (int64_t)r->n_ring) % (int64_t)r->ring_cap)];
}

/* Evicts r's oldest position; an emptied ring gives its table back and
 * leaves the lists. */
static void evict_oldest(tb_run_t *r) {
  size_t slot = (size_t)((r->ring_end - (int64_t)r->n_ring) % (int64_t)r->ring_cap);
  tb_ev_t *e = r->ring[slot];
  r->ring[slot] = NULL;
  r->n_ring--;
  if (e != NULL)
    r->srv->n_evicted++;
  ring_release(r, e);
  if (r->n_ring == 0) {
    ret_sub(r, (uint64_t)r->ring_cap * sizeof(*r->ring));
    free(r->ring);
    r->ring = NULL;
    r->ring_cap = 0;
    list_unlink(r);
  }
}

uint64_t tb_server_default_retain_bytes(void) {
  uint64_t gib = (uint64_t)1 << 30, eighth = tb_server_default_job_memory() / 4;
  return eighth < gib ? eighth : gib;
}

/* Evicts ended runs' events, the run that ended first first, each from its
 * oldest, while over `limit`: O(1) an event. */
static void evict_ended(tb_server_t *s, uint64_t limit) {
  while (s->retained_bytes > limit && s->ret_ended.head != NULL)
    evict_oldest(s->ret_ended.head);
}

/* Brings the retained bytes back under the bound: the events of ended runs
 * first; then, if live runs alone are over it, the oldest events of live
 * runs by stamp (when a ring took them), each run keeping its newest event
 * (the one a lockstep wait may still ask for). Finding the oldest live run
 * walks the live runs (a few), so this goes down to a thirty-second below
 * the bound and evicts in one go as many of that run's events as are older
 * than every other live run's: the walk is paid once for many events. */
uint64_t tb__retain_bound(tb_server_t *s) {
  if (s->retain_bound == 0)
    s->retain_bound = s->o.retain_bytes > 0 ? s->o.retain_bytes : tb_server_default_retain_bytes();
  return s->retain_bound;
}

static void retain_enforce(tb_server_t *s) {
  tb__retain_bound(s);
  evict_ended(s, s->retain_bound);
  if (s->retained_bytes <= s->retain_bound)
    return;
  uint64_t target = s->retain_bound - s->retain_bound / 32;
  while (s->retained_bytes > target) {
    tb_run_t *best = NULL;
    uint64_t best_stamp = UINT64_MAX, next_stamp = UINT64_MAX;
    for (tb_run_t *r = s->ret_live.head, *after; r != NULL; r = after) {
      after = r->ret_next;
      if (tb_run_state_is_final(r->state)) {
        /* Ended with no event saying so (a restored run its checks
         * failed): it goes as the others that ended. */
        list_place(r);
        continue;
      }
      while (r->n_ring > 1 && ring_oldest(r) == NULL)
        evict_oldest(r); /* seqs dropped at the queue: nothing to keep */
      if (r->n_ring <= 1)
        continue;
      uint64_t st = ring_oldest(r)->chunk->stamp;
      if (st < best_stamp) {
        next_stamp = best_stamp;
        best_stamp = st;
        best = r;
      } else if (st < next_stamp) {
        next_stamp = st;
      }
    }
    if (s->ret_ended.head != NULL) {
      evict_ended(s, target);
      continue;
    }
    if (best == NULL)
      return; /* every live run is down to its newest event */
    do {
      evict_oldest(best);
    } while (s->retained_bytes > target && best->n_ring > 1 &&
             (ring_oldest(best) == NULL || ring_oldest(best)->chunk->stamp <= next_stamp));
  }
}

/* Called after r->last_seq has moved to e->seq. The ring holds every seq
 * position from ring_end - n_ring + 1 to ring_end, so seqs the queue dropped
 * take a NULL position each (a gap as long as the ring empties it). */
void tb__run_retain(tb_run_t *r, tb_ev_t *e) {
  if (r->n_ring > 0 && e->seq - r->ring_end > 1) {
    if ((uint64_t)(e->seq - r->ring_end - 1) >= r->ring_cap) {
      for (size_t i = 0; i < r->ring_cap; i++) {
        ring_release(r, r->ring[i]);
        r->ring[i] = NULL;
      }
      r->n_ring = 0;
    } else {
      for (int64_t q = r->ring_end + 1; q < e->seq; q++)
        ring_place(r, q, NULL);
    }
  }
  ring_place(r, e->seq, e);
  if (r->n_ring > 0)
    list_place(r);
  /* The bound is 0 until retain_enforce first resolves it. */
  if (r->srv->retained_bytes > r->srv->retain_bound)
    retain_enforce(r->srv);
}

/* The retained event with this seq, or NULL if it is older than memory or
 * was dropped at the queue. */
tb_ev_t *tb__run_event(tb_run_t *r, int64_t seq) {
  if (seq < 1 || seq > r->last_seq || seq <= r->last_seq - (int64_t)r->n_ring)
    return NULL;
  return r->ring[(size_t)((seq - 1) % (int64_t)r->ring_cap)];
}

static int encode(const tb_rec_t *rec, tb_buf_t *b) {
  const tb_run_t *r = rec->run;
  tb_rec_tail_t t;
  tb__rec_tail(rec, &t);
  tb_event_t ev = {.run = r->id,
                   .seq = rec->seq,
                   .name = tb_event_name(rec->kind),
                   .source = tb__source_name(r->source),
                   .epoch = rec->epoch,
                   .batch = rec->batch,
                   .time_us = rec->time_us,
                   .n_logs = rec->n_logs,
                   .log_namev = t.names,
                   .log_values = t.values};
  if (rec->classes != NULL) {
    ev.n_classes = rec->classes->n;
    ev.classes = rec->classes->names;
  }
  char reason[1216];
  if (rec->kind == TB_EVENT_STATE) {
    ev.state = tb_run_state_name(rec->state);
    ev.prev_state = tb_run_state_name(rec->prev_state);
    ev.reason = t.reason[0] ? t.reason : NULL;
  } else if (rec->kind == TB_EVENT_CONTROL) {
    ev.action = t.action;
    ev.by = t.by[0] ? t.by : NULL;
    ev.has_value = rec->has_value;
    ev.value = rec->value;
    ev.has_old = rec->has_old;
    ev.old_value = rec->old_value;
    if (rec->path != NULL) {
      snprintf(reason, sizeof(reason), "wrote %.1200s", rec->path);
      ev.reason = reason;
    } else if (t.reason[0]) {
      ev.reason = t.reason;
    }
  }
  return tb_msg_event(b, &ev);
}

/* Answers the control requests that waited for this applied action. */
static void resolve_pending(tb_run_t *r, const tb_rec_t *rec) {
  tb_rec_tail_t t;
  tb__rec_tail(rec, &t);
  tb_method_t m = strcmp(t.action, "set_lr") == 0       ? TB_METHOD_SET_LR
                  : strcmp(t.action, "checkpoint") == 0 ? TB_METHOD_CHECKPOINT
                                                        : TB_METHOD_INVALID;
  if (m == TB_METHOD_INVALID)
    return;
  pending_t **pp = &r->pending;
  while (*pp != NULL) {
    pending_t *p = *pp;
    if (p->method != m || p->ticket > rec->ticket) {
      pp = &p->next;
      continue;
    }
    *pp = p->next;
    conn_t *c = tb__conn_find(r->srv, p->conn_id);
    if (c != NULL) {
      tb_buf_t b;
      tb_buf_init(&b);
      tb_msg_result_begin(&b, &p->id);
      TB_LIT(&b, "{\"run\":");
      tb_json_str(&b, r->id);
      if (m == TB_METHOD_SET_LR) {
        TB_LIT(&b, ",\"old\":");
        tb_json_num(&b, rec->old_value);
        TB_LIT(&b, ",\"lr\":");
        tb_json_num(&b, rec->value);
      } else {
        TB_LIT(&b, ",\"path\":");
        tb_json_str(&b, rec->path != NULL ? rec->path : "");
      }
      TB_LIT(&b, ",\"applied_at\":{\"epoch\":");
      tb_json_int(&b, rec->epoch);
      TB_LIT(&b, ",\"batch\":");
      tb_json_int(&b, rec->batch);
      TB_LIT(&b, ",\"seq\":");
      tb_json_int(&b, rec->seq);
      TB_LIT(&b, "}}");
      tb_msg_result_end(&b);
      tb__conn_send(c, b.data, b.len);
      tb_buf_free(&b);
      /* In a drain, written at its end with the events before it, once the
       * disk log has them. */
      if (!r->srv->draining)
        tb__conn_flush(c);
    }
    free(p);
  }
}

void tb__pending_fail(tb_run_t *r, const char *why) {
  while (r->pending != NULL) {
    pending_t *p = r->pending;
    r->pending = p->next;
    conn_t *c = tb__conn_find(r->srv, p->conn_id);
    if (c != NULL) {
      tb_buf_t b;
      tb_buf_init(&b);
      tb_msg_error(&b, &p->id, TB_PROTO_EINVALID_STATE, "%s: run %s %s", tb_method_name(p->method),
                   r->id, why);
      tb__conn_send(c, b.data, b.len);
      tb_buf_free(&b);
      /* In a drain, written at its end with the events before it, once the
       * disk log has them. */
      if (!r->srv->draining)
        tb__conn_flush(c);
    }
    free(p);
  }
}

/* The loop's view of the run, from its own event stream (and, after a
 * restart, from its log: tb__runs_restore). */
void tb__run_track(tb_run_t *r, const tb_rec_t *rec) {
  r->last_seq = rec->seq;
  if (rec->epochs > 0)
    r->epochs = rec->epochs;
  if (!isnan(rec->lr)) {
    r->has_lr = true;
    r->lr = rec->lr;
  }
  switch (rec->kind) {
  case TB_EVENT_EPOCH_BEGIN:
    r->epoch = rec->epoch;
    r->batch = -1;
    break;
  case TB_EVENT_TRAIN_BATCH_BEGIN:
  case TB_EVENT_TRAIN_BATCH_END:
    r->epoch = rec->epoch;
    r->batch = rec->batch;
    break;
  case TB_EVENT_EPOCH_END:
    r->batch = -1;
    break;
  case TB_EVENT_TRAIN_END:
    r->trained = true;
    break;
  case TB_EVENT_STATE:
    /* A stop wins over a later resume note. */
    if (!(r->state == TB_RUN_STOPPING && rec->state == TB_RUN_RUNNING))
      r->state = rec->state;
    break;
  default:
    break;
  }
}

/* Records handled per step. Between steps the loop goes round once, so
 * sockets are written (libuv's queued writes, their callbacks) and
 * requests read while a long backlog drains; 1024 events of ~200 bytes
 * stay below a client's drop threshold (256 KiB) within one step. */
enum { TB_DRAIN_STEP = 1024 };

bool tb__drain(tb_server_t *s) {
  if (s->cur_off >= s->cur_len) {
    /* Take the whole queue, and give the trainers the drained buffer in
     * its place, so the steady state allocates nothing (one grown past
     * twice the bound by a burst is given back). */
    if (s->cur_cap > 2 * s->o.queue_bytes) {
      free(s->cur);
      s->cur = NULL;
      s->cur_cap = 0;
    }
    pthread_mutex_lock(&s->q_mu);
    char *q = s->q;
    size_t len = s->q_len, cap = s->q_cap;
    s->q = s->cur;
    s->q_cap = s->cur_cap;
    s->q_len = 0;
    pthread_mutex_unlock(&s->q_mu);
    s->cur = q;
    s->cur_len = len;
    s->cur_cap = cap;
    s->cur_off = 0;
  }
  char *q = s->cur;
  size_t from = s->cur_off, n = from;
  for (int k = 0; k < TB_DRAIN_STEP && n < s->cur_len; k++)
    n += ((tb_rec_t *)(q + n))->size;
  s->cur_off = n;

  /* Pass 1: encode every event, back to back, and count each run's. */
  tb_buf_t *b = &s->enc;
  b->len = 0;
  for (size_t off = from; off < n;) {
    tb_rec_t *rec = (tb_rec_t *)(q + off);
    off += rec->size;
    rec->enc_len = 0;
    if (rec->finished || rec->kind == TB_EVENT_INVALID || rec->reask)
      continue;
    rec->enc_off = b->len;
    if (encode(rec, b) == 0) {
      tb_run_t *r = rec->run;
      rec->enc_len = b->len - rec->enc_off;
      if (r->d_n++ == 0) {
        r->d_next = s->d_runs;
        s->d_runs = r;
      }
      r->d_len += rec->enc_len;
    }
  }
  /* One chunk per run, so that the ring of a run that is evicted (or ends)
   * does not keep other runs' lines alive. Most steps hold one run's
   * events: one copy, as they were encoded. */
  for (tb_run_t *r = s->d_runs; r != NULL; r = r->d_next)
    r->d_ch = chunk_new(r->d_n, r->d_len, &r->d_evs, &r->d_data);
  if (s->d_runs != NULL && s->d_runs->d_next == NULL) {
    if (s->d_runs->d_ch != NULL)
      memcpy(s->d_runs->d_data, b->data, b->len);
  } else {
    for (size_t off = from; off < n;) {
      tb_rec_t *rec = (tb_rec_t *)(q + off);
      off += rec->size;
      tb_run_t *r = rec->run;
      if (rec->enc_len == 0 || r->d_ch == NULL)
        continue;
      memcpy(r->d_data + r->d_off, b->data + rec->enc_off, rec->enc_len);
      rec->enc_off = r->d_off;
      r->d_off += rec->enc_len;
    }
  }
  /* A drain of a long burst leaves a big scratch buffer: give it back. */
  if (b->cap > 1024 * 1024)
    tb_buf_free(b);

  /* Pass 2: route each record, in order. */
  s->draining = true;
  for (size_t off = from; off < n;) {
    tb_rec_t *rec = (tb_rec_t *)(q + off);
    off += rec->size;
    tb_run_t *r = rec->run;
    if (rec->finished) {
      /* The trainer thread has returned: join it and start the next run. */
      if (r->thread_started && !r->thread_joined) {
        uv_thread_join(&r->thread);
        r->thread_joined = true;
      }
      tb__pending_fail(r, "ended before the change could be applied");
      tb__runs_schedule(s);
      continue;
    }
    if (rec->kind == TB_EVENT_INVALID) {
      if (rec->drop_count > 0) {
        r->n_qdropped += rec->drop_count;
        tb__log(
            s, 1,
            "run %s: the bus fell behind the trainer; %lld batch events dropped (seq %lld..%lld)",
            r->id, (long long)rec->drop_count, (long long)rec->drop_from, (long long)rec->drop_to);
        tb__deliver_gap(s, r, rec->drop_count, rec->drop_from, rec->drop_to);
      }
      continue;
    }
    if (rec->reask) {
      /* Asked again after a restart: the logged event, to lockstep
       * subscribers only (everyone else has it). */
      tb_ev_t *e = tb__run_event(r, rec->seq);
      if (e != NULL) {
        tb__ev_ref(e);
      } else {
        tb_buf_t one;
        tb_buf_init(&one);
        if (encode(rec, &one) == 0)
          e = tb__ev_new(one.data, one.len, rec->seq, rec->kind, rec->batch);
        tb_buf_free(&one);
      }
      if (e != NULL)
        tb__deliver(s, r, e, true, true);
      tb__ev_unref(e);
      tb_classes_free(rec->classes);
      continue;
    }
    if (rec->enc_len == 0 || r->d_ch == NULL) {
      free(rec->path); /* out of memory: the event is lost (its seq is a gap) */
      tb_classes_free(rec->classes);
      continue;
    }
    tb_ev_t *e = &r->d_evs[r->d_i++];
    e->chunk = r->d_ch;
    e->data = r->d_data + rec->enc_off;
    e->len = rec->enc_len;
    e->seq = rec->seq;
    e->kind = rec->kind;
    e->batch = rec->batch;
    tb__run_track(r, rec);
    s->n_events++;
    if (r->attached && rec->kind == TB_EVENT_STATE && rec->state == TB_RUN_RUNNING &&
        rec->prev_state == TB_RUN_QUEUED)
      tb__lockstep_recount(r); /* an embedded run: subscriptions made before it existed */
    if (r->log != NULL)
      fwrite(e->data, 1, e->len, r->log);
    tb__run_retain(r, e);
    if (rec->kind == TB_EVENT_CONTROL)
      resolve_pending(r, rec);
    tb__deliver(s, r, e, rec->lockstep, false);
    if (rec->lockstep)
      tb__trainer_ls_check(r); /* a trainer's run: no answer is owed, it goes on */
    free(rec->path);
    if (rec->classes != NULL) {
      /* For status: the run's classes are its last train_begin's. */
      tb_classes_free(r->classes);
      r->classes = rec->classes;
    }
    /* Lifecycle, state and control events change what status says; batch
     * events only move the position, which the log restores by itself. */
    if (!tb_event_is_batch(rec->kind))
      tb__run_save_status(r);
  }
  s->draining = false;
  /* The rings and the clients hold their own references. */
  for (tb_run_t *r = s->d_runs; r != NULL; r = r->d_next) {
    tb__chunk_unref(r->d_ch);
    r->d_ch = NULL;
    r->d_n = r->d_i = 0;
    r->d_len = r->d_off = 0;
  }
  s->d_runs = NULL;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (r->log != NULL)
      fflush(r->log);
    atomic_store(&r->flushed_seq, r->last_seq);
  }
  tb__flush_touched(s);

  if (s->cur_off < s->cur_len)
    return true;
  pthread_mutex_lock(&s->q_mu);
  bool more = s->q_len > 0;
  pthread_mutex_unlock(&s->q_mu);
  return more;
}

void tb__drain_all(tb_server_t *s) {
  while (tb__drain(s)) {
  }
}

tb_classes_t *tb__event_classes(const char *line, size_t len) {
  tb_classes_t *c = NULL;
  cJSON *doc = cJSON_ParseWithLength(line, len);
  const cJSON *arr =
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "params"), "classes");
  int n = cJSON_GetArraySize(arr);
  const char **names = n > 0 ? calloc((size_t)n, sizeof(char *)) : NULL;
  if (cJSON_IsArray(arr) && names != NULL) {
    int i = 0;
    for (const cJSON *it = arr->child; it != NULL; it = it->next)
      names[i++] = cJSON_IsString(it) ? it->valuestring : NULL;
    if (i == n && tb_classes_new(names, NULL, n, &c) != 0)
      c = NULL;
  }
  free(names);
  cJSON_Delete(doc);
  return c;
}

/* ---- lockstep ------------------------------------------------------------ */

/* Recomputes which hooks of r have lockstep subscribers and the shortest
 * timeout among them. */
void tb__lockstep_recount(tb_run_t *r) {
  uint32_t mask = 0;
  int64_t timeout = 0;
  for (conn_t *c = r->srv->conns; c != NULL; c = c->next) {
    for (int i = 0; i < c->n_subs; i++) {
      const sub_t *sb = &c->subs[i];
      if (sb->lockstep == 0)
        continue;
      bool match = sb->n_runs == 0;
      for (int k = 0; k < sb->n_runs && !match; k++)
        match = tb_proto_match(sb->runs[k], r->id);
      if (!match)
        continue;
      mask |= sb->lockstep;
      if (timeout == 0 || sb->lockstep_timeout_ms < timeout)
        timeout = sb->lockstep_timeout_ms;
    }
  }
  atomic_store(&r->lockstep_timeout_ms, (int)timeout);
  atomic_store(&r->lockstep_mask, mask);
  /* A waiting trainer whose last lockstep subscriber left goes on. */
  pthread_mutex_lock(&r->ls_mu);
  if (r->ls_seq != 0 && mask == 0) {
    r->ls_armed = true;
    r->ls_waiting = 0;
    pthread_cond_broadcast(&r->ls_cv);
  }
  pthread_mutex_unlock(&r->ls_mu);
  if (r->tr != NULL) {
    tb__trainer_ls_check(r);
    tb__trainer_lockstep_changed(r);
  }
}

/* A "continue" for seq from connection c. *ok is false if c owes no answer
 * for it (too late, another seq, or answered already). */
void tb__lockstep_answer(tb_run_t *r, conn_t *c, int64_t seq, bool *ok) {
  *ok = false;
  for (int i = 0; i < c->n_owed; i++) {
    if (c->owed[i].run == r && c->owed[i].seq == seq) {
      c->owed[i] = c->owed[--c->n_owed];
      *ok = true;
      break;
    }
  }
  if (!*ok)
    return;
  pthread_mutex_lock(&r->ls_mu);
  *ok = r->ls_seq == seq && r->ls_waiting > 0;
  if (*ok && --r->ls_waiting == 0)
    pthread_cond_broadcast(&r->ls_cv);
  pthread_mutex_unlock(&r->ls_mu);
  tb__trainer_ls_check(r);
}

/* A closing connection answers nothing: the trainer stops waiting for it. */
void tb__lockstep_release_conn(conn_t *c) {
  while (c->n_owed > 0) {
    tb_run_t *r = c->owed[--c->n_owed].run;
    int64_t seq = c->owed[c->n_owed].seq;
    pthread_mutex_lock(&r->ls_mu);
    if (r->ls_seq == seq && r->ls_waiting > 0 && --r->ls_waiting == 0)
      pthread_cond_broadcast(&r->ls_cv);
    pthread_mutex_unlock(&r->ls_mu);
    tb__trainer_ls_check(r);
  }
}
