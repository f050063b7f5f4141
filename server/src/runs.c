/* Runs: the registry, the job queue and the trainer threads.
 *
 * A job run is queued when submitted and started by tb__runs_schedule(), one
 * at a time: concurrent jobs would share the cores and OpenBLAS's threads and
 * make every run slower and irreproducible in time. Its trainer thread
 * prepares the job (loads data, builds the model), trains with the job's
 * callbacks plus the publisher, and ends by pushing a final state event and a
 * "finished" record, on which the loop joins it and starts the next run.
 *
 * With a state directory each run has runs/<id>/ holding job.json, its event
 * log events.ndjson and its checkpoints; tb__runs_restore() rebuilds the
 * registry from them after a restart, requeuing the runs that had not ended
 * so they continue from their latest checkpoint with sequence numbers going
 * on from the last logged event. */
#include "internal.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

tb_run_t *tb__run_new(tb_server_t *s, const char *id, bool attached) {
  tb_run_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return NULL;
  r->srv = s;
  snprintf(r->id, sizeof(r->id), "%s", id);
  r->attached = attached;
  r->state = TB_RUN_QUEUED;
  r->epoch = -1;
  r->batch = -1;
  if (tb_control_init(&r->control) != 0) {
    free(r);
    return NULL;
  }
  pthread_mutex_init(&r->ls_mu, NULL);
  pthread_cond_init(&r->ls_cv, NULL);
  tb__publisher_init(r);
  if (s->state_dir[0] != '\0') {
    snprintf(r->dir, sizeof(r->dir), "%.900s/runs/%.63s", s->state_dir, r->id);
    char runs[1100];
    snprintf(runs, sizeof(runs), "%.900s/runs", s->state_dir);
    mkdir(runs, 0700);
    mkdir(r->dir, 0700);
    char path[1200];
    snprintf(path, sizeof(path), "%s/events.ndjson", r->dir);
    r->log = fopen(path, "a");
    if (r->log == NULL)
      tb__log(s, 0, "run %s: cannot open %s: %s; events will not be kept on disk", r->id, path,
              strerror(errno));
  }
  /* Append to the registry (oldest first). */
  pthread_mutex_lock(&s->runs_mu);
  tb_run_t **pp = &s->runs;
  while (*pp != NULL)
    pp = &(*pp)->next;
  *pp = r;
  s->n_runs++;
  pthread_mutex_unlock(&s->runs_mu);
  return r;
}

void tb__run_free(tb_run_t *r) {
  for (size_t i = 0; i < r->n_ring; i++) {
    size_t slot = (size_t)((r->last_seq - (int64_t)i - 1) % (int64_t)r->ring_cap);
    tb__ev_unref(r->ring[slot]);
  }
  free(r->ring);
  free(r->redo_log);
  while (r->pending != NULL) {
    pending_t *p = r->pending;
    r->pending = p->next;
    free(p);
  }
  if (r->log != NULL)
    fclose(r->log);
  tb_classes_free(r->classes);
  tb__trainer_free(r);
  tb__launch_free(r);
  tb_job_free(r->job);
  free(r->job_json);
  tb_control_destroy(&r->control);
  pthread_mutex_destroy(&r->ls_mu);
  pthread_cond_destroy(&r->ls_cv);
  free(r);
}

tb_run_t *tb__run_find(tb_server_t *s, const char *id) {
  for (tb_run_t *r = s->runs; r != NULL; r = r->next)
    if (strcmp(r->id, id) == 0)
      return r;
  return NULL;
}

void tb__run_info(const tb_run_t *r, tb_run_info_t *out) {
  memset(out, 0, sizeof(*out));
  snprintf(out->id, sizeof(out->id), "%s", r->id);
  out->state = r->state;
  out->epoch = r->epoch;
  out->epochs = r->epochs;
  out->batch = r->batch;
  out->last_seq = r->last_seq;
  out->has_lr = r->has_lr;
  out->lr = r->lr;
  snprintf(out->source, sizeof(out->source), "%s", tb__source_name(r->source));
  snprintf(out->name, sizeof(out->name), "%s",
           r->name[0]       ? r->name
           : r->job != NULL ? r->job->name
                            : "");
}

void tb__run_save_status(tb_run_t *r) {
  if (r->dir[0] == '\0')
    return;
  tb_run_info_t info;
  tb__run_info(r, &info);
  tb_buf_t b;
  tb_buf_init(&b);
  char path[1200];
  snprintf(path, sizeof(path), "%s/status", r->dir);
  if (tb_json_run_info(&b, &info) == 0 && TB_LIT(&b, "\n") == 0 && tb_buf_append(&b, "", 1) == 0)
    tb__write_private(path, b.data);
  tb_buf_free(&b);
}

/* ---- the trainer thread ---------------------------------------------------- */

static void trainer_main(void *arg) {
  tb_run_t *r = arg;
  tb_job_t *job = r->job;
  tb_err_t err = {{0}};
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  bool from_checkpoint = r->resume_path[0] && access(r->resume_path, F_OK) == 0;
  bool started = r->restored && r->restored_state != TB_RUN_QUEUED;
  tb__ghosts_wait(r);
  tb__publisher_begin(r, from_checkpoint);
  /* A restored run that had started is still in its state (running, paused,
   * stopping): nothing changed for its clients. Without a checkpoint it
   * trains again from the start, and this event is the redo of its first. */
  if (!started || !from_checkpoint)
    tb__push_state(r, TB_RUN_RUNNING, TB_RUN_QUEUED, r->resume_path[0] ? "resumed" : "started", -1,
                   -1);
  int rc = tb_job_prepare(job, &err);
  if (rc == 0 && job->train->classes != NULL) {
    char names[600];
    tb__log(r->srv, 1, "run %s: classes (the labels' names, sorted): %s", r->id,
            tb_classes_format(job->train->classes, names, sizeof(names)));
  }
  if (rc == 0 && (rc = tb_job_add_callbacks(job, &cbs)) == 0)
    rc = tb_callbacks_add(&cbs, &r->cb);
  if (rc == 0) {
    tb_fit_opts_t fo = job->fit;
    fo.verbose = 0;
    fo.control = &r->control;
    if (r->dir[0] != '\0')
      fo.checkpoint_dir = r->dir;
    fo.resume_from = from_checkpoint ? r->resume_path : NULL;
    r->epochs = fo.epochs;
    rc = tb_model_fit(job->model, job->train, &fo, &cbs, NULL, &err);
    if (rc == 0 && job->test != NULL) {
      tb_logs_t test;
      rc = tb_model_evaluate(job->model, job->test, fo.batch_size, 0, &cbs, &test, &err);
      char line[400] = "";
      for (int i = 0, o = 0; rc == 0 && i < test.n && o < (int)sizeof(line) - 64; i++)
        o +=
            snprintf(line + o, sizeof(line) - (size_t)o, " %s %.4f", test.names[i], test.values[i]);
      if (rc == 0)
        tb__log(r->srv, 1, "run %s: test:%s", r->id, line);
    }
  }
  /* The model and the data go back now, not when the daemon ends: a daemon
   * that has run a thousand jobs holds a thousand parsed jobs, not their
   * weights. */
  tb_job_release(job);
  if (rc == TB_EINTERRUPTED) {
    tb__log(r->srv, 1, "run %s: interrupted for shutdown; %s", r->id, err.msg);
  } else {
    tb_run_state_t final = rc != 0                        ? TB_RUN_FAILED
                           : atomic_load(&r->cancel_flag) ? TB_RUN_CANCELLED
                           : r->stop_requested            ? TB_RUN_STOPPED
                                                          : TB_RUN_FINISHED;
    if (rc != 0) {
      snprintf(r->fail_msg, sizeof(r->fail_msg), "%s", err.msg[0] ? err.msg : tb_strerror(rc));
      tb__log(r->srv, 0, "run %s failed: %s", r->id, r->fail_msg);
    }
    tb__push_state(r, final, r->stop_requested ? TB_RUN_STOPPING : TB_RUN_RUNNING,
                   rc != 0 ? r->fail_msg : NULL, -1, -1);
  }
  tb_callbacks_release(&cbs);
  tb__push_finished(r);
}

static bool busy(tb_server_t *s) {
  for (tb_run_t *r = s->runs; r != NULL; r = r->next)
    if ((r->thread_started && !r->thread_joined) || tb__launch_busy(r))
      return true;
  return false;
}

/* A distributed job's turn: mpirun trains it (launch.c), rank 0 publishes
 * it as the run's trainer. */
static void launch(tb_server_t *s, tb_run_t *r) {
  tb_err_t err = {{0}};
  if (tb__trainer_adopt(r, r->job->dist_ranks) != 0) {
    tb__log(s, 0, "run %s: out of memory", r->id);
    return;
  }
  if (tb__launch(r, r->network, &err) != 0) {
    tb__log(s, 0, "run %s: %s", r->id, err.msg);
    tb__trainer_launch_ended(r, err.msg);
  }
}

void tb__runs_schedule(tb_server_t *s) {
  if (s->stopping || busy(s))
    return;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (r->attached || (r->state != TB_RUN_QUEUED && !r->restored) || r->cancel_requested ||
        r->thread_started || r->job == NULL)
      continue;
    if (r->job->dist_ranks > 1) {
      if (r->launch == NULL && r->tr == NULL) {
        launch(s, r);
        return;
      }
      continue;
    }
    if (r->state == TB_RUN_QUEUED)
      r->state = TB_RUN_RUNNING; /* the loop's view until the trainer's state event */
    tb__lockstep_recount(r);     /* subscriptions made before the run existed */
    if (uv_thread_create(&r->thread, trainer_main, r) != 0) {
      tb__log(s, 0, "run %s: cannot start a thread", r->id);
      r->state = TB_RUN_QUEUED;
      return;
    }
    r->thread_started = true;
    tb__log(s, 1, "run %s started (%s)", r->id, r->job->name);
    return;
  }
}

bool tb__runs_all_done(tb_server_t *s) {
  return !busy(s);
}

/* Shutdown: running jobs checkpoint at their next batch boundary and leave
 * fit(). */
void tb__runs_shutdown(tb_server_t *s) {
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    tb__launch_kill(r);
    if (!r->thread_started || r->thread_joined)
      continue;
    /* A lockstep wait in progress is not cut short: its subscribers stay
     * connected until the trainers are done, and their answer takes effect
     * before the checkpoint, as it would have without the restart. */
    tb_control_shutdown(&r->control);
    tb__ghosts_open(r);
  }
}

/* ---- restore after a restart ------------------------------------------------- */

/* Rebuilds the loop's view of a run from its log: every complete event line
 * goes back into the ring (so status, history and replays answer as before
 * the restart), and through the same tracking as a live event (state, epoch,
 * batch, last seq), and its class names (its last train_begin's) come back
 * too. The learning rate is not in every event: it comes from
 * the status file the loop kept (tb__run_save_status) and from the set_lr
 * control events after it. A torn last line (a crash in the middle of a
 * write) is cut off. */
static void load_log(tb_run_t *r, const char *path) {
  FILE *f = fopen(path, "r+");
  if (f == NULL)
    return;
  int64_t lr_seq = -1;
  double lr = 0;
  char spath[1200];
  snprintf(spath, sizeof(spath), "%s/status", r->dir);
  FILE *sf = fopen(spath, "r");
  if (sf != NULL) {
    char line[1024];
    if (fgets(line, sizeof(line), sf) != NULL) {
      cJSON *st = cJSON_Parse(line);
      tb_run_info_t info;
      tb_proto_err_t perr;
      if (st != NULL && tb_run_info_decode(st, &info, &perr) == 0 && info.has_lr) {
        lr_seq = info.last_seq;
        lr = info.lr;
      }
      cJSON_Delete(st);
    }
    fclose(sf);
  }
  tb_smsg_t *m = malloc(sizeof(*m));
  tb_rec_t *rec = malloc(sizeof(*rec));
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  long good = 0;
  while (m != NULL && rec != NULL && (n = getline(&line, &cap, f)) > 0) {
    if (line[n - 1] != '\n')
      break;
    good = ftell(f);
    tb_proto_err_t perr;
    if (tb_smsg_decode(line, (size_t)n - 1, m, &perr) != 0 || m->kind != TB_SMSG_EVENT ||
        m->event.seq <= r->last_seq) {
      tb_smsg_free(m);
      continue;
    }
    const tb_event_t *ev = &m->event;
    memset(rec, 0, sizeof(*rec));
    rec->run = r;
    rec->seq = ev->seq;
    rec->kind = tb_event_from_name(ev->name);
    rec->epoch = (int)ev->epoch;
    rec->batch = (int)ev->batch;
    rec->lr = NAN;
    if (rec->kind == TB_EVENT_CONTROL && ev->action != NULL && strcmp(ev->action, "set_lr") == 0 &&
        ev->has_value)
      rec->lr = ev->value;
    if (rec->kind == TB_EVENT_STATE) {
      rec->state = ev->state ? tb_run_state_from_name(ev->state) : TB_RUN_INVALID;
      rec->prev_state = ev->prev_state ? tb_run_state_from_name(ev->prev_state) : TB_RUN_INVALID;
    }
    if (rec->kind == TB_EVENT_TRAIN_BEGIN && strstr(line, "\"classes\":[") != NULL) {
      tb_classes_free(r->classes);
      r->classes = tb__event_classes(line, (size_t)n);
    }
    if (rec->kind >= TB_EVENT_TRAIN_BEGIN && rec->kind <= TB_EVENT_PREDICT_BATCH_END)
      r->n_hooks++; /* a trainer's run: its trainer numbers these */
    tb_ev_t *e = tb__ev_new(line, (size_t)n, ev->seq, rec->kind, rec->batch);
    tb_smsg_free(m);
    if (e == NULL)
      break;
    tb__run_track(r, rec);
    if (rec->seq == lr_seq) {
      r->has_lr = true;
      r->lr = lr;
    }
    tb__run_retain(r, e);
    tb__ev_unref(e);
  }
  free(line);
  free(m);
  free(rec);
  if (ftruncate(fileno(f), good) != 0) {
    /* Nothing better to do: the next line is appended after the tear. */
  }
  fclose(f);
}

/* The run numbers already used in the state directory, sorted. */
static int existing_ids(const char *runs, int *ids, int cap) {
  DIR *d = opendir(runs);
  if (d == NULL)
    return 0;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL && n < cap) {
    int k;
    char tail;
    if (sscanf(de->d_name, "r%d%c", &k, &tail) == 1 && k > 0)
      ids[n++] = k;
  }
  closedir(d);
  return n;
}

/* New runs never reuse an id (and so a folder) of an earlier daemon. */
void tb__runs_number_after_existing(tb_server_t *s) {
  char runs[1100];
  int ids[4096];
  snprintf(runs, sizeof(runs), "%.900s/runs", s->state_dir);
  int n = existing_ids(runs, ids, 4096);
  for (int i = 0; i < n; i++)
    if (ids[i] > s->next_run)
      s->next_run = ids[i];
}

int tb__runs_restore(tb_server_t *s, tb_err_t *err) {
  char runs[1100];
  snprintf(runs, sizeof(runs), "%.900s/runs", s->state_dir);
  /* Run ids are r<N>: restore in numeric order so the registry stays oldest
   * first. */
  int ids[4096];
  int n = existing_ids(runs, ids, 4096);
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
      int t = ids[j];
      ids[j] = ids[j - 1];
      ids[j - 1] = t;
    }
  for (int i = 0; i < n; i++) {
    char id[64], path[1300];
    snprintf(id, sizeof(id), "r%d", ids[i]);
    if (ids[i] > s->next_run)
      s->next_run = ids[i];
    /* The job as submitted, with the folder its relative paths meant. */
    char base[1100] = "";
    snprintf(path, sizeof(path), "%s/%s/base_dir", runs, id);
    FILE *bf = fopen(path, "r");
    if (bf != NULL) {
      if (fgets(base, sizeof(base), bf) != NULL)
        base[strcspn(base, "\n")] = '\0';
      fclose(bf);
    }
    /* Whose job it was: runs submitted over the network are held to the
     * network's policy again (data directories, budget). */
    char by[32] = "";
    snprintf(path, sizeof(path), "%s/%s/submitted_by", runs, id);
    FILE *byf = fopen(path, "r");
    if (byf != NULL) {
      if (fgets(by, sizeof(by), byf) == NULL)
        by[0] = '\0';
      fclose(byf);
    }
    bool network = strncmp(by, "network", 7) == 0;
    /* A run a trainer published: no job to train, it waits for its trainer
     * to attach again. */
    snprintf(path, sizeof(path), "%s/%s/trainer.json", runs, id);
    if (access(path, F_OK) == 0) {
      tb_run_t *r = tb__run_new(s, id, false);
      if (r == NULL)
        return tb_errf(err, TB_ENOMEM, "restore: out of memory");
      if (tb__trainer_restore(r, path) != 0) {
        tb__log(s, 0, "restore: run %s: %s is unreadable; its events are kept, it takes no trainer",
                id, path);
        r->source = TB_SOURCE_TRAINER;
      }
      snprintf(path, sizeof(path), "%s/%s/events.ndjson", runs, id);
      load_log(r, path);
      s->n_events += r->last_seq;
      r->seq = r->last_seq;
      r->logged_seq = r->last_seq;
      if (r->tr != NULL)
        tb__trainer_restored(r);
      continue;
    }
    snprintf(path, sizeof(path), "%s/%s/job.json", runs, id);
    tb_job_t *job = NULL;
    tb_err_t jerr = {{0}};
    char *text = NULL;
    size_t text_len = 0;
    FILE *jf = fopen(path, "r");
    if (jf != NULL) {
      text_len = (size_t)getdelim(&text, &text_len, '\0', jf);
      fclose(jf);
    }
    int jr = text != NULL
                 ? tb_job_parse(text, strlen(text), path, base[0] ? base : NULL, &job, &jerr)
                 : tb_errf(&jerr, TB_ENOTFOUND, "%s: missing", path);
    free(text);
    if (jr != 0) {
      tb__log(s, 0, "restore: run %s: %s; skipped", id, jerr.msg);
      continue;
    }
    tb_run_t *r = tb__run_new(s, id, false);
    if (r == NULL) {
      tb_job_free(job);
      return tb_errf(err, TB_ENOMEM, "restore: out of memory");
    }
    r->job = job;
    r->network = network;
    r->epochs = job->fit.epochs;
    snprintf(path, sizeof(path), "%s/%s/events.ndjson", runs, id);
    load_log(r, path);
    s->n_events += r->last_seq;
    r->seq = r->last_seq;
    r->logged_seq = r->last_seq;
    tb_run_state_t state = r->state;
    bool final = state == TB_RUN_FINISHED || state == TB_RUN_STOPPED || state == TB_RUN_CANCELLED ||
                 state == TB_RUN_FAILED;
    /* A run that will train again is checked again: the data directories or
     * the budget may have changed since it was submitted. */
    if (!final &&
        tb_job_check(job, network ? &s->network_policy : &s->operator_policy, NULL, &jerr) != 0) {
      snprintf(r->fail_msg, sizeof(r->fail_msg), "%s", jerr.msg);
      tb__log(s, 0, "restore: run %s: %s; it will not run", id, jerr.msg);
      r->state = TB_RUN_FAILED;
      continue;
    }
    if (!final) {
      /* It keeps the state it had (running, paused, stopping; queued if it
       * never started) and gets a trainer at the next schedule. */
      r->restored = true;
      r->restored_state = state;
      r->stop_requested = state == TB_RUN_STOPPING;
      snprintf(r->resume_path, sizeof(r->resume_path), "%s/%s", r->dir, TB_CHECKPOINT_LATEST);
      tb__log(s, 1, "restore: run %s (%s) continues from %s (last event %lld)", id,
              tb_run_state_name(state),
              access(r->resume_path, F_OK) == 0 ? r->resume_path : "the start",
              (long long)r->last_seq);
    }
  }
  return 0;
}
