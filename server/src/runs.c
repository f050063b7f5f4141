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

#include <dirent.h>
#include <errno.h>
#include <math.h>
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
  while (r->pending != NULL) {
    pending_t *p = r->pending;
    r->pending = p->next;
    free(p);
  }
  if (r->log != NULL)
    fclose(r->log);
  tb_classes_free(r->classes);
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
}

/* ---- the trainer thread ---------------------------------------------------- */

static void trainer_main(void *arg) {
  tb_run_t *r = arg;
  tb_job_t *job = r->job;
  tb_err_t err = {{0}};
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
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
    fo.resume_from = r->resume_path[0] && access(r->resume_path, F_OK) == 0 ? r->resume_path : NULL;
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
    if (r->thread_started && !r->thread_joined)
      return true;
  return false;
}

void tb__runs_schedule(tb_server_t *s) {
  if (s->stopping || busy(s))
    return;
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (r->attached || r->state != TB_RUN_QUEUED || r->cancel_requested || r->thread_started ||
        r->job == NULL)
      continue;
    r->state = TB_RUN_RUNNING; /* the loop's view until the trainer's state event */
    tb__lockstep_recount(r);   /* subscriptions made before the run existed */
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
 * fit(); trainers blocked in a lockstep wait are released first. */
void tb__runs_shutdown(tb_server_t *s) {
  for (tb_run_t *r = s->runs; r != NULL; r = r->next) {
    if (!r->thread_started || r->thread_joined)
      continue;
    tb_control_shutdown(&r->control);
    atomic_store(&r->lockstep_mask, 0);
    pthread_mutex_lock(&r->ls_mu);
    r->ls_armed = true;
    r->ls_waiting = 0;
    pthread_cond_broadcast(&r->ls_cv);
    pthread_mutex_unlock(&r->ls_mu);
  }
}

/* ---- restore after a restart ------------------------------------------------- */

/* The last seq and the last state of a run's log, and its class names. A
 * torn last line (a crash in the middle of a write) is cut off. */
static void scan_log(const char *path, int64_t *last_seq, tb_run_state_t *state, int *epochs,
                     tb_classes_t **classes) {
  *last_seq = 0;
  *state = TB_RUN_QUEUED;
  FILE *f = fopen(path, "r+");
  if (f == NULL)
    return;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  long good = 0;
  while ((n = getline(&line, &cap, f)) > 0) {
    if (line[n - 1] != '\n')
      break;
    good = ftell(f);
    const char *p = strstr(line, "\"seq\":");
    if (p != NULL)
      *last_seq = strtoll(p + 6, NULL, 10);
    if (strstr(line, "\"event\":\"train_begin\"") != NULL &&
        strstr(line, "\"classes\":[") != NULL) {
      tb_classes_free(*classes);
      *classes = tb__event_classes(line, (size_t)n);
    }
    if (strstr(line, "\"event\":\"state\"") != NULL) {
      const char *st = strstr(line, "\"state\":\"");
      char name[32] = "";
      if (st != NULL && sscanf(st + 9, "%31[a-z]", name) == 1)
        *state = tb_run_state_from_name(name);
    }
    (void)epochs;
  }
  free(line);
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
    int64_t last_seq;
    tb_run_state_t state;
    int epochs = 0;
    tb_classes_t *classes = NULL;
    snprintf(path, sizeof(path), "%s/%s/events.ndjson", runs, id);
    scan_log(path, &last_seq, &state, &epochs, &classes);
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
      tb_classes_free(classes);
      continue;
    }
    tb_run_t *r = tb__run_new(s, id, false);
    if (r == NULL) {
      tb_job_free(job);
      tb_classes_free(classes);
      return tb_errf(err, TB_ENOMEM, "restore: out of memory");
    }
    r->job = job;
    r->classes = classes;
    r->epochs = job->fit.epochs;
    r->seq = last_seq;
    r->last_seq = last_seq;
    bool final = state == TB_RUN_FINISHED || state == TB_RUN_STOPPED || state == TB_RUN_CANCELLED ||
                 state == TB_RUN_FAILED;
    r->state = final ? state : TB_RUN_QUEUED;
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
      snprintf(r->resume_path, sizeof(r->resume_path), "%s/%s", r->dir, TB_CHECKPOINT_LATEST);
      tb__log(s, 1, "restore: run %s continues from %s (last event %lld)", id,
              access(r->resume_path, F_OK) == 0 ? r->resume_path : "the start",
              (long long)last_seq);
    }
  }
  return 0;
}
