/* Full checkpoints: everything fit() needs to continue a run exactly.
 *
 * A checkpoint is a tb_state_t file (state.c: versioned, CRC-checked, written
 * to a temporary file, fsynced and renamed) holding:
 *   job.id                 the job's fingerprint, checked on resume
 *   data.classes           the class names of string labels, each followed by
 *                          a NUL, in class order; absent for numeric labels
 *                          (and in checkpoints older than class names, which
 *                          only numeric labels could write: they still load)
 *   model.shapes           kind, n_in, n_out, activation of every layer
 *   model.params           every weight, exactly
 *   optim.*                kind, slots, iterations and learning rate
 *   rng                    the model RNG (shuffles, dropout)
 *   fit.*                  epoch, next batch, row order, running metric sums,
 *                          the last epoch's logs, the stop flag
 *   cb.<name>.*            each stateful callback's own state (History too)
 * Restoring checks every shape and the job before changing anything. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int shapes(const tb_model_t *m, int32_t **out) {
  int32_t *s = malloc((size_t)(m->n_layers ? m->n_layers : 1) * 4 * sizeof(int32_t));
  if (s == NULL)
    return TB_ENOMEM;
  for (int i = 0; i < m->n_layers; i++) {
    s[4 * i] = m->layers[i].kind;
    s[4 * i + 1] = m->layers[i].n_in;
    s[4 * i + 2] = m->layers[i].n_out;
    s[4 * i + 3] = m->layers[i].act;
  }
  *out = s;
  return 0;
}

int tb__check_state_names(tb_callbacks_t *cbs, tb_err_t *err) {
  for (int i = 0; cbs != NULL && i < cbs->n; i++) {
    const tb_callback_t *a = cbs->items[i];
    if (a->save_state == NULL)
      continue;
    if (a->name == NULL || a->name[0] == '\0' || strlen(a->name) > 80)
      return tb_errf(err, TB_EINVAL, "a stateful callback needs a name of 1 to 80 bytes");
    for (int j = 0; j < i; j++) {
      const tb_callback_t *b = cbs->items[j];
      if (b->save_state != NULL && strcmp(a->name, b->name) == 0)
        return tb_errf(err, TB_EEXISTS,
                       "two callbacks named \"%s\" keep state; give them distinct names so "
                       "checkpoints can tell them apart",
                       a->name);
    }
  }
  return 0;
}

/* Class names as stored: each name and a NUL, in class order. */
static int classes_bytes(const tb_classes_t *c, char **out, size_t *len) {
  size_t n = 0;
  *out = NULL;
  *len = 0;
  if (c == NULL)
    return 0;
  for (int i = 0; i < c->n; i++)
    n += strlen(c->names[i]) + 1;
  char *b = malloc(n), *p = b;
  if (b == NULL)
    return TB_ENOMEM;
  for (int i = 0; i < c->n; i++) {
    size_t k = strlen(c->names[i]) + 1;
    memcpy(p, c->names[i], k);
    p += k;
  }
  *out = b;
  *len = n;
  return 0;
}

/* The checkpoint's class names against the model's: both absent, or the
 * same names in the same order. */
static int check_classes(const tb_model_t *m, const tb_state_t *s, const char *path,
                         tb_err_t *err) {
  const void *saved;
  size_t saved_len, mine_len;
  char *mine;
  bool has = tb_state_get_bytes(s, "data.classes", &saved, &saved_len) == 0;
  int r = classes_bytes(m->classes, &mine, &mine_len);
  if (r != 0)
    return tb_errf(err, r, "checkpoint %s: out of memory", path);
  bool same = has == (m->classes != NULL) &&
              (!has || (saved_len == mine_len && memcmp(saved, mine, mine_len) == 0));
  free(mine);
  if (same)
    return 0;
  char want[200];
  tb_classes_format(m->classes, want, sizeof(want));
  if (!has)
    return tb_errf(err, TB_ESTATE,
                   "checkpoint %s was written for numeric labels, but the data's labels are the "
                   "class names %s; refusing to resume",
                   path, want);
  if (m->classes == NULL)
    return tb_errf(err, TB_ESTATE,
                   "checkpoint %s was written for class names, but the data's labels are "
                   "numbers; refusing to resume",
                   path);
  return tb_errf(err, TB_ESTATE,
                 "checkpoint %s was written for other class names than the data's (%s): the "
                 "class indices would mean other classes; refusing to resume",
                 path, want);
}

static int put_metrics(tb_state_t *s, const tb_model_t *m) {
  double v[4] = {m->m_loss_sum, m->m_acc_sum, m->m_mse_sum, m->m_mae_sum};
  int r = tb_state_put_bytes(s, "fit.metric_sums", v, sizeof(v));
  return r ? r : tb_state_put_i64(s, "fit.metric_count", (int64_t)m->m_count);
}

int tb__checkpoint_save(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const char *job_id,
                        const char *path, tb_err_t *err) {
  tb_state_t s;
  int32_t *sh = NULL;
  int r;
  tb_state_init(&s);
  if ((r = shapes(m, &sh)) != 0)
    goto fail;
  const char *id = job_id ? job_id : "";
  char *names = NULL;
  size_t names_len = 0;
  if ((r = classes_bytes(m->classes, &names, &names_len)) != 0)
    goto fail;
  if (names != NULL) {
    r = tb_state_put_bytes(&s, "data.classes", names, names_len);
    free(names);
    if (r != 0)
      goto fail;
  }
  if ((r = tb_state_put_bytes(&s, "job.id", id, strlen(id))) != 0 ||
      (r = tb_state_put_i32s(&s, "model.shapes", sh, (size_t)m->n_layers * 4)) != 0 ||
      (r = tb_state_put_f32s(&s, "model.params", m->params, (size_t)m->n_params)) != 0 ||
      (r = tb_state_put_i64(&s, "optim.kind", m->opts.optim.kind)) != 0 ||
      (r = tb_state_put_i64(&s, "optim.iterations", m->iterations)) != 0 ||
      (r = tb_state_put_f64(&s, "optim.lr", m->lr)) != 0 ||
      (m->slot1 && (r = tb_state_put_f32s(&s, "optim.slot1", m->slot1, (size_t)m->n_params))) ||
      (m->slot2 && (r = tb_state_put_f32s(&s, "optim.slot2", m->slot2, (size_t)m->n_params))) ||
      (r = tb_state_put_bytes(&s, "rng", &m->rng, sizeof(m->rng))) != 0 ||
      (r = tb_state_put_i64(&s, "fit.epoch", m->pos.epoch)) != 0 ||
      (r = tb_state_put_i64(&s, "fit.next_batch", m->pos.next_batch)) != 0 ||
      (r = tb_state_put_i64(&s, "fit.mid_epoch", m->pos.mid_epoch)) != 0 ||
      (r = tb_state_put_i64(&s, "fit.stop", ctx->stop_training)) != 0 ||
      (r = tb_state_put_i32s(&s, "fit.idx", m->pos.idx, (size_t)m->pos.n)) != 0 ||
      (r = tb_state_put_bytes(&s, "fit.train_logs", &m->pos.train_logs,
                              sizeof(m->pos.train_logs))) != 0 ||
      (r = put_metrics(&s, m)) != 0)
    goto fail;
  for (int i = 0; cbs != NULL && i < cbs->n; i++) {
    tb_callback_t *cb = cbs->items[i];
    if (cb->save_state == NULL)
      continue;
    snprintf(s.prefix, sizeof(s.prefix), "cb.%s.", cb->name);
    r = cb->save_state(cb, &s);
    s.prefix[0] = '\0';
    if (r != 0) {
      tb_errf(err, r, "checkpoint %s: callback %s cannot save its state: %s", path, cb->name,
              tb_strerror(r));
      goto out;
    }
  }
  if ((r = tb_state_write(&s, path)) != 0) {
    tb_errf(err, r, "checkpoint %s: cannot write: %s", path, tb_strerror(r));
    goto out;
  }
  snprintf(ctx->last_checkpoint, sizeof(ctx->last_checkpoint), "%s", path);
  goto out;
fail:
  tb_errf(err, r, "checkpoint %s: %s", path, tb_strerror(r));
out:
  free(sh);
  tb_state_release(&s);
  return r;
}

int tb__checkpoint_load(tb_model_t *m, tb_ctx_t *ctx, tb_callbacks_t *cbs, const char *job_id,
                        const char *path, tb_err_t *err) {
  tb_state_t s;
  char why[256];
  int32_t *sh = NULL, *want = NULL, *idx = NULL;
  float *params = NULL, *slot1 = NULL, *slot2 = NULL;
  int r = tb_state_read(&s, path, why, sizeof(why));
  if (r != 0)
    return tb_errf(err, r, "checkpoint %s: %s", path, why);

  /* Check everything before changing anything. */
  const void *id;
  size_t id_len;
  const char *mine = job_id ? job_id : "";
  if (tb_state_get_bytes(&s, "job.id", &id, &id_len) != 0) {
    r = tb_errf(err, TB_EFORMAT, "checkpoint %s: no job fingerprint", path);
    goto out;
  }
  if (id_len != strlen(mine) || memcmp(id, mine, id_len) != 0) {
    r = tb_errf(err, TB_ESTATE,
                "checkpoint %s was written by another job (fingerprint %.*s, this job is %s); "
                "refusing to resume",
                path, (int)(id_len > 32 ? 32 : id_len), (const char *)id, mine[0] ? mine : "none");
    goto out;
  }
  if ((r = check_classes(m, &s, path, err)) != 0)
    goto out;
  long nl = tb_state_count(&s, "model.shapes");
  if ((r = shapes(m, &want)) != 0)
    goto out;
  if (nl != (long)m->n_layers * 4) {
    r = tb_errf(err, TB_ESHAPE, "checkpoint %s: %ld layers in the checkpoint, the model has %d",
                path, nl / 4, m->n_layers);
    goto out;
  }
  if ((sh = malloc((size_t)(nl ? nl : 1) * sizeof(int32_t))) == NULL ||
      (r = tb_state_get_i32s(&s, "model.shapes", sh, (size_t)nl)) != 0) {
    r = tb_errf(err, r ? r : TB_ENOMEM, "checkpoint %s: unreadable layer shapes", path);
    goto out;
  }
  for (int i = 0; i < m->n_layers; i++) {
    if (memcmp(sh + 4 * i, want + 4 * i, 4 * sizeof(int32_t)) != 0) {
      r = tb_errf(err, TB_ESHAPE,
                  "checkpoint %s: layer %d is %d -> %d in the checkpoint but the model's %s is "
                  "%d -> %d",
                  path, i, sh[4 * i + 1], sh[4 * i + 2], m->layers[i].name, m->layers[i].n_in,
                  m->layers[i].n_out);
      goto out;
    }
  }
  int64_t kind, iterations, epoch, next_batch, mid, stop, count;
  double lr;
  size_t np = (size_t)m->n_params;
  const void *rng, *tl, *sums;
  size_t rng_len, tl_len, sums_len;
  params = malloc(np * sizeof(float) + 1);
  slot1 = malloc(np * sizeof(float) + 1);
  slot2 = malloc(np * sizeof(float) + 1);
  long n_idx = tb_state_count(&s, "fit.idx");
  idx = malloc((size_t)(n_idx > 0 ? n_idx : 1) * sizeof(int32_t));
  if (params == NULL || slot1 == NULL || slot2 == NULL || idx == NULL) {
    r = tb_errf(err, TB_ENOMEM, "checkpoint %s: out of memory", path);
    goto out;
  }
  if ((r = tb_state_get_f32s(&s, "model.params", params, np)) != 0 ||
      (r = tb_state_get_i64(&s, "optim.kind", &kind)) != 0 ||
      (r = tb_state_get_i64(&s, "optim.iterations", &iterations)) != 0 ||
      (r = tb_state_get_f64(&s, "optim.lr", &lr)) != 0 ||
      (m->slot1 && (r = tb_state_get_f32s(&s, "optim.slot1", slot1, np)) != 0) ||
      (m->slot2 && (r = tb_state_get_f32s(&s, "optim.slot2", slot2, np)) != 0) ||
      (r = tb_state_get_bytes(&s, "rng", &rng, &rng_len)) != 0 ||
      (r = tb_state_get_i64(&s, "fit.epoch", &epoch)) != 0 ||
      (r = tb_state_get_i64(&s, "fit.next_batch", &next_batch)) != 0 ||
      (r = tb_state_get_i64(&s, "fit.mid_epoch", &mid)) != 0 ||
      (r = tb_state_get_i64(&s, "fit.stop", &stop)) != 0 ||
      (r = tb_state_get_i32s(&s, "fit.idx", idx, (size_t)(n_idx > 0 ? n_idx : 0))) != 0 ||
      (r = tb_state_get_bytes(&s, "fit.train_logs", &tl, &tl_len)) != 0 ||
      (r = tb_state_get_bytes(&s, "fit.metric_sums", &sums, &sums_len)) != 0 ||
      (r = tb_state_get_i64(&s, "fit.metric_count", &count)) != 0) {
    r = tb_errf(err, r,
                "checkpoint %s: an entry is missing or has the wrong size "
                "(another model or optimizer?)",
                path);
    goto out;
  }
  if (kind != m->opts.optim.kind || rng_len != sizeof(m->rng) || tl_len != sizeof(tb_logs_t) ||
      sums_len != 4 * sizeof(double) || n_idx != m->pos.n || epoch < 0 || next_batch < 0 ||
      next_batch > m->pos.steps || !(lr >= 0 && isfinite((float)lr))) {
    r = tb_errf(err, TB_ESTATE,
                "checkpoint %s does not fit this run (optimizer %s, %ld training rows in the "
                "checkpoint, %d here)",
                path, tb_optim_name((tb_optim_kind_t)kind), n_idx, m->pos.n);
    goto out;
  }
  for (long i = 0; i < n_idx; i++) {
    if (idx[i] < 0 || idx[i] >= m->pos.n) {
      r = tb_errf(err, TB_EFORMAT, "checkpoint %s: row order out of range", path);
      goto out;
    }
  }
  const tb_logs_t *tlogs = tl;
  if (tlogs->n < 0 || tlogs->n > TB_LOGS_MAX) {
    r = tb_errf(err, TB_EFORMAT, "checkpoint %s: malformed logs", path);
    goto out;
  }

  /* Callbacks first: their states are read into the callbacks, and a failure
   * there still leaves the model untouched. */
  for (int i = 0; cbs != NULL && i < cbs->n; i++) {
    tb_callback_t *cb = cbs->items[i];
    if (cb->load_state == NULL)
      continue;
    snprintf(s.prefix, sizeof(s.prefix), "cb.%s.", cb->name);
    r = cb->load_state(cb, &s);
    s.prefix[0] = '\0';
    if (r != 0) {
      r = tb_errf(err, r,
                  "checkpoint %s: no usable state for callback %s (%s); was it written by "
                  "this job?",
                  path, cb->name, tb_strerror(r));
      goto out;
    }
  }

  memcpy(m->params, params, np * sizeof(float));
  if (m->slot1)
    memcpy(m->slot1, slot1, np * sizeof(float));
  if (m->slot2)
    memcpy(m->slot2, slot2, np * sizeof(float));
  m->iterations = (long)iterations;
  m->lr = (float)lr; /* exact for files of this version; older ones held doubles */
  memcpy(&m->rng, rng, sizeof(m->rng));
  m->pos.epoch = (int)epoch;
  m->pos.next_batch = (int)next_batch;
  m->pos.mid_epoch = mid != 0;
  m->pos.stop = stop != 0;
  memcpy(m->pos.idx, idx, (size_t)n_idx * sizeof(int32_t));
  m->pos.train_logs = *tlogs;
  const double *sm = sums;
  /* float32 values, kept exactly in the file's doubles */
  m->m_loss_sum = (float)sm[0];
  m->m_acc_sum = (float)sm[1];
  m->m_mse_sum = (float)sm[2];
  m->m_mae_sum = (float)sm[3];
  m->m_count = (float)count;
  ctx->resumed = true;
out:
  free(sh);
  free(want);
  free(idx);
  free(params);
  free(slot1);
  free(slot2);
  tb_state_release(&s);
  return r;
}
