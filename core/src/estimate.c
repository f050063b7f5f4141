/* Job budgets: a job's memory at its peak, estimated from the job alone
 * before anything is allocated, and held to a policy (tb_job_check).
 *
 * The estimate mirrors what core allocates for a run, buffer by buffer
 * (model.c compile, optim.c slots, layers.c tb__lane_reserve and
 * tb__draw_masks for every thread's lane, step.c's partial gradients, fit.c's row
 * order and validation split, data.c and loaders.c for the data, state.c
 * and checkpoint.c for a checkpoint write); the field list is in job.h.
 * Sizes are computed in double, which is exact far beyond any real job and
 * cannot overflow, then saturated into uint64_t.
 *
 * Data files are measured rather than read: a plain file's size, a gzip
 * file's recorded size, an IDX header, a CSV's first row (loaders.c's
 * peeks). tb_job_prepare() loads no more bytes of a file than were measured
 * (tb_job_check sets each set's limits), so the estimate made here holds for
 * the load, and it estimates again from the data as loaded before building
 * the model, when a CSV's exact shape is known. */
#include "jobint.h"

#include "internal.h"

#include "confine.h"
#include "loaders.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A data set's shape for the estimate. */
typedef struct shape_s {
  double rows, feats, ycols; /* as made (ycols before one-hot widening) */
  bool classes;              /* y holds class indices */
  double scratch;            /* what making it allocates besides the set itself */
} shape_t;

static uint64_t sat(double v) {
  return v <= 0.0 ? 0 : v >= 18446744073709549568.0 ? UINT64_MAX : (uint64_t)v;
}

/* The read buffer of a file of b bytes: loaders.c starts at 64 KiB and
 * doubles until the file and its NUL fit. */
static double read_buffer(double b) {
  double cap = 65536.0;
  while (cap < b + 2.0)
    cap *= 2.0;
  return cap;
}

int tb__job_n_outputs(const tb_job_t *job) {
  for (int i = job->n_layers - 1; i >= 0; i--)
    if (job->layers[i].type == TB_JOB_DENSE)
      return job->layers[i].units;
  return job->train != NULL ? job->train->n_features : 0;
}

static shape_t spec_shape(const tb_data_spec_t *s) {
  shape_t h = {0, 1, 1, true, 0};
  switch (s->source) {
  case TB_SRC_NONE:
    h.rows = 0;
    break;
  case TB_SRC_SEED:
    h.rows = 4;
    break;
  case TB_SRC_SPIRALS:
    h.rows = 2.0 * s->n_per_class;
    h.feats = 2;
    break;
  case TB_SRC_BLOBS:
    h.rows = s->n;
    h.feats = s->features;
    h.scratch = 8.0 * s->classes * s->features; /* the centers, in double */
    break;
  case TB_SRC_CSV: {
    /* Every value takes at least two bytes (a digit and a delimiter or line
     * end), so a file of b bytes holds at most (b + 1) / 2 values and
     * (b + 1) / (2 * cols) rows of cols columns. */
    double cols = s->file_cols > 0 ? (double)s->file_cols : 1.0, b = (double)s->file_bytes;
    long max_rows = s->limits.max_rows > 0 ? s->limits.max_rows : INT32_MAX;
    h.rows = floor((b + 1.0) / (2.0 * cols));
    if (h.rows > (double)max_rows)
      h.rows = (double)max_rows;
    h.feats = cols > 1.0 ? cols - 1.0 : 1.0;
    h.classes = s->csv.classes != 0;
    h.scratch = read_buffer(b) + (double)tb__csv_scratch(s->file_cols);
    break;
  }
  case TB_SRC_IDX:
    h.rows = (double)s->file_rows;
    h.feats = s->file_cols > 0 ? (double)s->file_cols : 1.0;
    h.scratch = read_buffer((double)s->file_bytes);
    break;
  case TB_SRC_NPY:
    /* Read in chunks straight into the dataset: no copy of the file. A
     * ".gz" (whose data length is not known before it is read) grows its
     * arrays by doubling: the last step briefly holds half of x again. */
    h.rows = (double)s->file_rows;
    h.feats = s->file_cols > 0 ? (double)s->file_cols : 1.0;
    h.ycols = s->file_ycols > 0 ? (double)s->file_ycols : 1.0;
    h.classes = s->npy.classes != 0 && s->file_ycols <= 1;
    h.scratch = (double)tb__npy_scratch();
    if (tb__ends_with_gz(s->x) || tb__ends_with_gz(s->y))
      h.scratch += 2.0 * h.rows * (h.feats > h.ycols ? h.feats : h.ycols);
    break;
  }
  return h;
}

static shape_t loaded_shape(const tb_dataset_t *d) {
  shape_t h = {0, 1, 1, false, 0};
  if (d != NULL) {
    h.rows = d->n;
    h.feats = d->n_features;
    h.ycols = d->n_outputs;
    h.classes = d->n_classes > 0;
  }
  return h;
}

static int n_slots(const tb_optim_opts_t *o) {
  switch (o->kind) {
  case TB_OPT_ADAM:
    return 2;
  case TB_OPT_RMSPROP:
    return o->momentum != 0.0 ? 2 : 1;
  default:
    return o->momentum != 0.0 ? 1 : 0;
  }
}

/* The estimate for sets of the given shapes (train, validation, test). */
static void estimate(const tb_job_t *job, const shape_t sh[3], tb_job_estimate_t *est) {
  memset(est, 0, sizeof(*est));
  double F = sh[0].feats, n_in = F, P = 0.0, acts = 0.0;
  /* The output width, with the input width when there is no Dense layer. */
  double k = F;
  for (int i = 0; i < job->n_layers; i++)
    if (job->layers[i].type == TB_JOB_DENSE)
      k = job->layers[i].units;
  double masks = 0.0; /* dropout's, over the whole batch */
  for (int i = 0; i < job->n_layers; i++) {
    const struct tb_job_layer_s *l = &job->layers[i];
    double n_out = l->type == TB_JOB_DENSE ? l->units : n_in;
    if (l->type == TB_JOB_DENSE)
      P += n_in * n_out + n_out;
    /* z, a and g per layer and lane */
    acts += 3.0 * n_out;
    if (l->type == TB_JOB_DROPOUT)
      masks += n_out;
    n_in = n_out;
  }
  bool cce = job->compile.loss == TB_LOSS_CATEGORICAL_CROSSENTROPY;
  double y_width = job->compile.loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY ? 1.0 : k;
  /* dout, the lane's x and y (its gather buffers) */
  acts += k + F + (y_width > k ? y_width : k);

  double data = 0.0, made = 0.0, scratch = 0.0, yw[3];
  for (int i = 0; i < 3; i++) {
    yw[i] = cce && sh[i].classes ? k : sh[i].ycols;
    data += 4.0 * sh[i].rows * (sh[i].feats + yw[i]);
    made += 4.0 * sh[i].rows * (sh[i].feats + sh[i].ycols);
    if (sh[i].scratch > scratch)
      scratch = sh[i].scratch;
  }
  double vs = job->fit.validation_split;
  double n_train = sh[0].rows, n_fit = vs > 0.0 ? floor(n_train * (1.0 - vs)) : n_train;
  double n_val = vs > 0.0 ? n_train - n_fit : sh[1].rows;
  double train_bytes = 4.0 * n_train * (F + yw[0]);
  /* The scaler's statistics come from a copy of the head of the data. */
  if (job->scale != TB_SCALE_NONE && vs > 0.0 && 4.0 * n_fit * (F + yw[0]) > scratch)
    scratch = 4.0 * n_fit * (F + yw[0]);
  double rows = job->fit.batch_size;
  double most = n_fit > n_val ? n_fit : n_val;
  if (sh[2].rows > most)
    most = sh[2].rows;
  if (most < rows)
    rows = most;
  if (rows < 1.0)
    rows = 1.0;

  int slots = n_slots(&job->compile.optim);
  bool checkpoints = (job->policy != NULL && job->policy->checkpoints) ||
                     job->checkpoint_dir[0] != '\0' || job->n_outputs > 0;
  /* The lanes a step splits its rows over (step.c), each holding its
   * share rounded up, and a partial gradient for every lane but the first. */
  int threads = job->threads > 0 ? job->threads : tb_get_num_threads();
  double lanes = tb__lanes_for(threads, rows > 2e9 ? 2000000000 : (int)rows, P);
  double per = ceil(rows / lanes);
  est->threads = threads;
  est->params = sat(8.0 * P + 4.0 * (lanes - 1.0) * P);
  est->optimizer = sat(4.0 * P * slots);
  est->activations = sat(4.0 * (lanes * per * acts + rows * masks));
  est->data = sat(data + 4.0 * n_fit);
  est->validation = sat(vs > 0.0 ? train_bytes : 0.0);
  est->callbacks = sat(4.0 * P * job->n_weight_copies);
  /* state.c copies every parameter and slot, then serialises the copies into
   * a buffer that doubles as it grows: up to three times the state. */
  est->checkpoint = sat(checkpoints ? 3.0 * 4.0 * (P * (1 + slots) + n_fit) : 0.0);
  est->loading = sat(scratch);
  est->other = 1 << 20;
  est->n_params = (int64_t)(P < 9.2e18 ? P : 9.2e18);
  est->rows = (int64_t)rows;
  double loading_peak = (data > made ? data : made) + scratch + (double)est->other;
  double training_peak = data + 4.0 * n_fit + (double)est->validation + (double)est->params +
                         4.0 * P * slots + (double)est->activations + (double)est->callbacks +
                         (double)est->checkpoint + (double)est->other;
  est->total = sat(loading_peak > training_peak ? loading_peak : training_peak);
}

/* Measures the files of one set, as the job's policy allows. */
static int measure(tb_job_t *job, tb_data_spec_t *s, tb_err_t *err) {
  static const tb_data_limits_t none;
  const tb_data_limits_t *lim = job->policy != NULL ? &job->policy->data : &none;
  tb__file_info_t a, b;
  tb_err_t e = {{0}};
  const char *field = "path";
  int r = 0;
  if (s->source != TB_SRC_CSV && s->source != TB_SRC_IDX && s->source != TB_SRC_NPY)
    return 0;
  memset(&b, 0, sizeof(b));
  if (s->source == TB_SRC_CSV) {
    tb_csv_opts_t o = s->csv;
    o.limits = lim;
    r = tb__csv_peek(s->path, &o, &a, &e);
  } else if (s->source == TB_SRC_NPY) {
    field = "x";
    r = tb__npy_peek(s->x, lim, &a, &e);
    if (r == 0) {
      field = "y";
      r = tb__npy_peek(s->y, lim, &b, &e);
    }
  } else {
    field = "images";
    r = tb__idx_peek(s->images, 0, lim, &a, &e);
    if (r == 0) {
      field = "labels";
      r = tb__idx_peek(s->labels, 1, lim, &b, &e);
    }
  }
  if (r != 0)
    return tb_errf(err, r, "%s: %s.%s: %s", job->origin, s->where, field, e.msg);
  s->file_bytes = a.bytes > b.bytes ? a.bytes : b.bytes;
  s->file_rows = a.rows;
  s->file_cols = a.cols;
  s->file_ycols = b.cols;
  s->limits = *lim;
  /* At least one byte: 0 would mean "the default" to the loaders. */
  s->limits.max_bytes = s->file_bytes > 0 ? s->file_bytes : 1;
  s->measured = true;
  return 0;
}

int tb_job_estimate(tb_job_t *job, tb_job_estimate_t *est, tb_err_t *err) {
  tb_data_spec_t *specs[3] = {&job->train_spec, &job->val_spec, &job->test_spec};
  shape_t sh[3];
  int r;
  memset(est, 0, sizeof(*est));
  for (int i = 0; i < 3; i++) {
    if (!specs[i]->measured && (r = measure(job, specs[i], err)) != 0)
      return r;
    sh[i] = spec_shape(specs[i]);
  }
  estimate(job, sh, est);
  return 0;
}

int tb__job_estimate_loaded(const tb_job_t *job, tb_job_estimate_t *est) {
  shape_t sh[3] = {loaded_shape(job->train), loaded_shape(job->val), loaded_shape(job->test)};
  memset(est, 0, sizeof(*est));
  if (job->train == NULL)
    return TB_EINVAL;
  estimate(job, sh, est);
  return 0;
}

const char *tb_job_format_bytes(uint64_t bytes, char *buf, size_t len) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 6) {
    v /= 1024.0;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%llu B", (unsigned long long)bytes);
  else
    snprintf(buf, len, v < 10.0 ? "%.2f %s" : v < 100.0 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

int tb__job_over_budget(const tb_job_t *job, const tb_job_estimate_t *est, const char *prefix,
                        tb_err_t *err) {
  struct part_s {
    const char *name;
    uint64_t v;
  } parts[] = {{"weights and gradients", est->params},
               {"optimizer slots", est->optimizer},
               {"layer buffers", est->activations},
               {"data", est->data},
               {"validation_split copies", est->validation},
               {"EarlyStopping's best weights", est->callbacks},
               {"checkpoint copies", est->checkpoint},
               {"loading", est->loading}};
  enum { N = sizeof(parts) / sizeof(parts[0]) };
  /* The largest parts first. */
  for (int i = 1; i < N; i++)
    for (int j = i; j > 0 && parts[j - 1].v < parts[j].v; j--) {
      struct part_s t = parts[j];
      parts[j] = parts[j - 1];
      parts[j - 1] = t;
    }
  char list[300] = "", total[32], limit[32], b[32];
  size_t o = 0;
  for (int i = 0; i < 4 && parts[i].v > 0 && parts[i].v >= est->total / 100; i++) {
    int w = snprintf(list + o, sizeof(list) - o, "%s%s %s", i > 0 ? ", " : "", parts[i].name,
                     tb_job_format_bytes(parts[i].v, b, sizeof(b)));
    if (strcmp(parts[i].name, "layer buffers") == 0 && w > 0 && o + (size_t)w < sizeof(list))
      w += snprintf(list + o + w, sizeof(list) - o - (size_t)w, " (%lld rows)",
                    (long long)est->rows);
    if (w < 0 || o + (size_t)w >= sizeof(list))
      break;
    o += (size_t)w;
  }
  const tb_job_policy_t *pol = job->policy;
  const char *name = pol != NULL && pol->limit_name != NULL ? pol->limit_name : NULL;
  return tb_errf(err, TB_ERANGE,
                 "%sneeds an estimated %s of memory at its peak (%s), more than the %s a job "
                 "may use%s%s%s",
                 prefix, tb_job_format_bytes(est->total, total, sizeof(total)), list,
                 tb_job_format_bytes(pol != NULL ? pol->max_bytes : 0, limit, sizeof(limit)),
                 name != NULL ? " (" : "", name != NULL ? name : "", name != NULL ? ")" : "");
}

int tb_job_check(tb_job_t *job, const tb_job_policy_t *policy, tb_job_estimate_t *est,
                 tb_err_t *err) {
  tb_job_estimate_t e;
  char what[1200], prefix[300];
  int r;
  if (est != NULL)
    memset(est, 0, sizeof(*est));
  if (job == NULL || policy == NULL)
    return tb_errf(err, TB_EINVAL, "job check: a job and a policy are required");
  job->policy = policy;
  /* Measurements made under another policy do not count. */
  job->train_spec.measured = job->val_spec.measured = job->test_spec.measured = false;
  for (int i = 0; i < job->n_outputs; i++) {
    snprintf(what, sizeof(what), "%s: %s: %s", job->origin, job->outputs[i].field,
             job->outputs[i].path);
    if ((r = tb__data_check_out(job->outputs[i].path, what, &policy->data, err)) != 0)
      return r;
  }
  if ((r = tb_job_estimate(job, &e, err)) != 0)
    return r;
  if (est != NULL)
    *est = e;
  if (policy->max_bytes > 0 && e.total > policy->max_bytes) {
    snprintf(prefix, sizeof(prefix), "%s: ", job->origin);
    return tb__job_over_budget(job, &e, prefix, err);
  }
  return 0;
}
