/* dist_probe: trains a job on the ranks of an MPI job (dist/) or, started
 * without mpirun, in one process, and writes what this rank saw to
 * PREFIX.rankR, one record a line, for test_dist.py to compare across ranks
 * and runs:
 *
 *   batch E B LR LOSS      after every training batch: the rate the next
 *                          update uses (the model's, %.9g) and the batch loss
 *   epoch E SUM            at every epoch end: FNV-1a of the weights
 *   lr E B OLD NEW BY      (rank 0) a control note: a rate applied
 *   stop E B BY            (rank 0) a control note: a stop applied
 *   final ITER SUM RC MSG  at the end: iterations, weights' FNV-1a, fit's result
 *
 * Options:
 *   --drive-lr K:LR   a driver thread on rank 0 asks rank 0's control block
 *                     for rate LR once rank 0 has finished K batches (a
 *                     request arriving at any moment, as a remote set_lr)
 *   --drive-stop K    the same for a stop
 *   --drive-pause K:S the same for a pause, resumed S seconds after rank 0
 *                     noted it ("pause E B" then, flushed, in rank 0's file)
 *   --drift-rank R    rank R nudges one weight at epoch 1's end (the checksum
 *                     must then fail the run on every rank)
 *   --plateau WHERE   a ReduceLROnPlateau(val_loss, factor 0.5, patience 1)
 *                     on every rank (all) or on rank 0 alone (rank0: the
 *                     decision made in one place, as a lockstep client attached
 *                     to rank 0 makes it), or on rank 0 as a lockstep client
 *                     acts (lockstep: its new rate goes through rank 0's control
 *                     block, applied in the hook as the daemon applies a
 *                     lockstep answer, server/src/publish.c); none by default
 *   --fail-rank R:K   rank R's batch hook fails after K batches (a rank's own
 *                     failure: the job must end, not hang) */
#include "trainbus/callbacks.h"
#include "trainbus/control.h"
#include "trainbus/dist.h"
#include "trainbus/job.h"
#include "trainbus/model.h"
#include "trainbus/reduce.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct probe_s {
  FILE *out;
  tb_model_t *m;
  int rank;
  int drift_rank;
  int fail_rank, fail_after;
  atomic_long batches;
  atomic_int paused; /* rank 0: the pause began */
} probe_t;

static uint64_t weights_sum(tb_model_t *m) {
  long n = tb_model_n_params(m);
  float *w = malloc((size_t)n * sizeof(float));
  if (w == NULL)
    return 0;
  tb_model_get_params(m, w, n);
  uint64_t h = tb_reduce_checksum(TB_REDUCE_CHECKSUM_INIT, w, n);
  free(w);
  return h;
}

static int on_batch_end(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  probe_t *p = cb->user;
  double loss = 0;
  tb_logs_get(logs, "loss", &loss);
  fprintf(p->out, "batch %d %d %.9g %.9g\n", ctx->epoch, batch, tb_model_lr(p->m), loss);
  long k = atomic_fetch_add(&p->batches, 1) + 1;
  if (p->rank == p->fail_rank && k == p->fail_after)
    return TB_EIO;
  return 0;
}

static int on_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  probe_t *p = cb->user;
  (void)ctx, (void)logs;
  if (epoch == 1 && p->rank == p->drift_rank) {
    long n = tb_model_n_params(p->m);
    float *w = malloc((size_t)n * sizeof(float));
    tb_model_get_params(p->m, w, n);
    w[n / 2] = w[n / 2] * 1.0001f + 1e-6f;
    tb_model_set_params(p->m, w, n);
    free(w);
  }
  fprintf(p->out, "epoch %d %016llx\n", epoch, (unsigned long long)weights_sum(p->m));
  fflush(p->out);
  return 0;
}

static void on_note(tb_control_t *c, const tb_control_note_t *n, void *user) {
  probe_t *p = user;
  (void)c;
  if (n->action == TB_CONTROL_SET_LR)
    fprintf(p->out, "lr %d %d %.9g %.9g %s\n", n->epoch, n->batch, n->old_value, n->new_value,
            n->by);
  else if (n->action == TB_CONTROL_STOP)
    fprintf(p->out, "stop %d %d %s\n", n->epoch, n->batch, n->by);
  else if (n->action == TB_CONTROL_PAUSE || n->action == TB_CONTROL_RESUME) {
    fprintf(p->out, "%s %d %d\n", n->action == TB_CONTROL_PAUSE ? "pause" : "resume", n->epoch,
            n->batch);
    fflush(p->out);
    if (n->action == TB_CONTROL_PAUSE)
      atomic_store(&p->paused, 1);
  }
}

/* --plateau lockstep: the real ReduceLROnPlateau decides, and its rate is
 * handed to rank 0's control block instead of set on the model. */
typedef struct lockstep_s {
  tb_callback_t cb;
  tb_callback_t *inner;
  tb_control_t *c;
} lockstep_t;

static int lockstep_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  lockstep_t *l = cb->user;
  double old = tb_model_lr(ctx->model);
  int r = l->inner->on_epoch_end(l->inner, ctx, epoch, logs);
  double now = tb_model_lr(ctx->model);
  if (now != old) {
    tb_model_set_lr(ctx->model, old);
    tb_control_set_lr(l->c, now, "lockstep");
    tb_control_apply_changes(l->c, ctx);
  }
  return r;
}

typedef struct driver_s {
  probe_t *p;
  tb_control_t *c;
  long lr_after, stop_after, pause_after;
  double lr, pause_s;
  atomic_int quit;
} driver_t;

/* Asks the control block for things from another thread, when rank 0 has
 * trained enough batches: the moment a remote request arrives is arbitrary. */
static void *drive(void *arg) {
  driver_t *d = arg;
  bool lr_done = d->lr_after <= 0, stop_done = d->stop_after <= 0, pause_done = d->pause_after <= 0;
  while (!atomic_load(&d->quit) && !(lr_done && stop_done && pause_done)) {
    long k = atomic_load(&d->p->batches);
    if (!lr_done && k >= d->lr_after) {
      tb_control_set_lr(d->c, d->lr, "driver");
      lr_done = true;
    }
    if (!stop_done && k >= d->stop_after) {
      tb_control_stop(d->c, "driver");
      stop_done = true;
    }
    if (!pause_done && k >= d->pause_after) {
      tb_control_pause(d->c, "driver");
      while (!atomic_load(&d->p->paused) && !atomic_load(&d->quit)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
      struct timespec ts = {(time_t)d->pause_s,
                            (long)((d->pause_s - (double)(time_t)d->pause_s) * 1e9)};
      nanosleep(&ts, NULL);
      tb_control_resume(d->c, "driver");
      pause_done = true;
    }
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

int main(int argc, char **argv) {
  const char *job_path = NULL, *prefix = NULL, *plateau = "none";
  driver_t drv = {.lr_after = 0};
  probe_t p = {.drift_rank = -1, .fail_rank = -1};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--drive-lr") == 0 && i + 1 < argc) {
      if (sscanf(argv[++i], "%ld:%lf", &drv.lr_after, &drv.lr) != 2)
        return 2;
    } else if (strcmp(argv[i], "--drive-pause") == 0 && i + 1 < argc) {
      if (sscanf(argv[++i], "%ld:%lf", &drv.pause_after, &drv.pause_s) != 2)
        return 2;
    } else if (strcmp(argv[i], "--drive-stop") == 0 && i + 1 < argc) {
      drv.stop_after = atol(argv[++i]);
    } else if (strcmp(argv[i], "--drift-rank") == 0 && i + 1 < argc) {
      p.drift_rank = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--fail-rank") == 0 && i + 1 < argc) {
      if (sscanf(argv[++i], "%d:%d", &p.fail_rank, &p.fail_after) != 2)
        return 2;
    } else if (strcmp(argv[i], "--plateau") == 0 && i + 1 < argc) {
      plateau = argv[++i];
    } else if (job_path == NULL) {
      job_path = argv[i];
    } else if (prefix == NULL) {
      prefix = argv[i];
    } else {
      fprintf(stderr, "dist_probe: unexpected %s\n", argv[i]);
      return 2;
    }
  }
  if (job_path == NULL || prefix == NULL) {
    fprintf(stderr, "usage: dist_probe JOB.json PREFIX [options]\n");
    return 2;
  }
  tb_err_t err = {{0}};
  tb_reduce_t *red = NULL;
  if (tb_dist_launched() && tb_dist_init(&argc, &argv, &red, &err) != 0) {
    fprintf(stderr, "dist_probe: %s\n", err.msg);
    return 1;
  }
  p.rank = red != NULL ? red->rank : 0;
  char path[1024];
  snprintf(path, sizeof(path), "%s.rank%d", prefix, p.rank);
  p.out = fopen(path, "w");
  if (p.out == NULL) {
    perror(path);
    return 1;
  }
  tb_job_t *job = NULL;
  tb_set_num_threads(1);
  if (tb_job_load(job_path, &job, &err) != 0 || tb_job_prepare(job, &err) != 0) {
    fprintf(stderr, "dist_probe: %s\n", err.msg);
    return 1;
  }
  p.m = job->model;
  job->fit.verbose = 0;
  job->fit.reduce = red;
  tb_control_t ctl;
  tb_control_init(&ctl);
  tb_control_set_notify(&ctl, on_note, &p);
  if (p.rank == 0)
    job->fit.control = &ctl;
  tb_callbacks_t cbs;
  tb_callbacks_init(&cbs);
  tb_job_add_callbacks_rank(job, &cbs, p.rank);
  tb_callback_t *plat = NULL;
  lockstep_t ls;
  bool lockstep = strcmp(plateau, "lockstep") == 0;
  if (strcmp(plateau, "all") == 0 || ((strcmp(plateau, "rank0") == 0 || lockstep) && p.rank == 0)) {
    tb_reduce_lr_opts_t o;
    tb_reduce_lr_defaults(&o);
    o.factor = 0.5;
    o.patience = 1;
    o.min_delta = 0.0;
    plat = tb_reduce_lr_new(&o, &err);
    if (lockstep) {
      ls.cb = *plat;
      ls.cb.name = "lockstep";
      ls.cb.user = &ls;
      ls.cb.on_epoch_end = lockstep_epoch_end;
      ls.cb.destroy = NULL;
      ls.inner = plat;
      ls.c = &ctl;
      tb_callbacks_add(&cbs, &ls.cb);
    } else {
      tb_callbacks_add(&cbs, plat);
    }
  }
  tb_callback_t probe = {.name = "probe",
                         .on_train_batch_end = on_batch_end,
                         .on_epoch_end = on_epoch_end,
                         .user = &p};
  tb_callbacks_add(&cbs, &probe);
  pthread_t th;
  drv.p = &p;
  drv.c = &ctl;
  bool driving = p.rank == 0 && (drv.lr_after > 0 || drv.stop_after > 0 || drv.pause_after > 0);
  if (driving)
    pthread_create(&th, NULL, drive, &drv);
  int rc = tb_model_fit(job->model, job->train, &job->fit, &cbs, NULL, &err);
  if (driving) {
    atomic_store(&drv.quit, 1);
    pthread_join(th, NULL);
  }
  fprintf(p.out, "final %ld %016llx %d %s\n", tb_model_iterations(job->model),
          (unsigned long long)weights_sum(job->model), rc, rc != 0 ? err.msg : "");
  fclose(p.out);
  if (rc != 0)
    fprintf(stderr, "dist_probe: rank %d: %s\n", p.rank, err.msg);
  tb_callbacks_release(&cbs);
  tb_callback_free(plat);
  tb_control_destroy(&ctl);
  tb_job_free(job);
  /* A rank's own failure ends the job, as trainbus train does. */
  if (red != NULL && rc != 0 && rc != TB_EDIVERGED && rc != TB_EINTERRUPTED)
    tb_dist_abort(red, 1);
  if (red != NULL)
    tb_dist_finalize(red);
  return rc == 0 ? 0 : 1;
}
