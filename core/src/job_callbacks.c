/* The "callbacks" list of a job file: each entry names a built-in callback by
 * its Keras class name and gives its parameters with Keras's names. Entries
 * are validated and the callbacks built at parse time; nothing touches the
 * disk until training. */
#include "trainbus/callbacks.h"
#include "trainbus/job.h"
#include "jsonget.h"

#include <math.h>
#include <string.h>

int tb__job_parse_callbacks(parse_t *p, const cJSON *arr, tb_job_t *job);

static int get_mode(parse_t *p, const cJSON *o, const char *path, tb_mode_t *mode) {
  char s[16] = "auto", fp[96];
  int r = tb__jp_get_str(p, o, path, "mode", s, sizeof(s), false);
  if (r != 0)
    return r;
  int m = tb_mode_from_name(s);
  if (m < 0) {
    tb__jp_join(fp, sizeof(fp), path, "mode");
    return tb__jp_bad(p, fp, "\"auto\", \"min\" or \"max\"", cJSON_GetObjectItem(o, "mode"));
  }
  *mode = (tb_mode_t)m;
  return 0;
}

/* "save_freq": "epoch" or a positive number of batches. */
static int get_freq(parse_t *p, const cJSON *o, const char *path, int *freq) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "save_freq");
  char fp[96];
  if (v == NULL || (cJSON_IsString(v) && strcmp(v->valuestring, "epoch") == 0)) {
    *freq = 0;
    return 0;
  }
  if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble <= 1e9 &&
      v->valuedouble == floor(v->valuedouble)) {
    *freq = (int)v->valuedouble;
    return 0;
  }
  tb__jp_join(fp, sizeof(fp), path, "save_freq");
  return tb__jp_bad(p, fp, "\"epoch\" or a positive number of batches", v);
}

static int one(parse_t *p, const cJSON *o, const char *path, tb_callback_t **out) {
  char type[32] = "", name[96] = "", fp[128];
  int r;
  long v;
  tb_err_t cerr = {{0}};
  *out = NULL;
  if (!cJSON_IsObject(o))
    return tb__jp_bad(p, path, "a callback object with a \"type\"", o);
  if ((r = tb__jp_get_str(p, o, path, "type", type, sizeof(type), true)) != 0 ||
      (r = tb__jp_get_str(p, o, path, "name", name, sizeof(name), false)) != 0)
    return r;
  long verbose = 0;
  if ((r = tb__jp_get_int(p, o, path, "verbose", 0, 2, false, &verbose)) != 0)
    return r;
  char monitor[48] = "val_loss";
  if ((r = tb__jp_get_str(p, o, path, "monitor", monitor, sizeof(monitor), false)) != 0)
    return r;

  if (strcmp(type, "EarlyStopping") == 0) {
    static const char *const keys[] = {"type",
                                       "name",
                                       "monitor",
                                       "min_delta",
                                       "patience",
                                       "verbose",
                                       "mode",
                                       "baseline",
                                       "restore_best_weights",
                                       "start_from_epoch",
                                       NULL};
    tb_early_stopping_opts_t e;
    tb_early_stopping_defaults(&e);
    v = 0;
    if ((r = tb__jp_only_keys(p, o, path, keys)) || (r = get_mode(p, o, path, &e.mode)) ||
        (r = tb__jp_get_num(p, o, path, "min_delta", -1e300, 1e300, false, "a number",
                            &e.min_delta)) ||
        (r = tb__jp_get_int(p, o, path, "patience", 0, INT32_MAX, false, &v)))
      return r;
    e.patience = (int)v;
    v = 0;
    if ((r = tb__jp_get_int(p, o, path, "start_from_epoch", 0, INT32_MAX, false, &v)) ||
        (r = tb__jp_get_bool(p, o, path, "restore_best_weights", &e.restore_best_weights)))
      return r;
    e.start_from_epoch = (int)v;
    if (cJSON_GetObjectItemCaseSensitive(o, "baseline") != NULL) {
      e.has_baseline = true;
      if ((r = tb__jp_get_num(p, o, path, "baseline", -1e300, 1e300, false, "a finite number",
                              &e.baseline)))
        return r;
    }
    if (e.restore_best_weights && p->job != NULL)
      p->job->n_weight_copies++;
    e.monitor = monitor;
    e.verbose = (int)verbose;
    if (name[0])
      e.name = name;
    *out = tb_early_stopping_new(&e, &cerr);
  } else if (strcmp(type, "ReduceLROnPlateau") == 0) {
    static const char *const keys[] = {"type",     "name",    "monitor", "factor",
                                       "patience", "verbose", "mode",    "min_delta",
                                       "cooldown", "min_lr",  NULL};
    tb_reduce_lr_opts_t o2;
    tb_reduce_lr_defaults(&o2);
    long patience = o2.patience, cooldown = 0;
    if ((r = tb__jp_only_keys(p, o, path, keys)) || (r = get_mode(p, o, path, &o2.mode)) ||
        (r = tb__jp_get_num(p, o, path, "factor", 0, 1, true, "a number in (0, 1)", &o2.factor)) ||
        (r = tb__jp_get_num(p, o, path, "min_delta", -1e300, 1e300, false, "a number",
                            &o2.min_delta)) ||
        (r = tb__jp_get_num(p, o, path, "min_lr", 0, 1e300, false, "a number >= 0", &o2.min_lr)) ||
        (r = tb__jp_get_int(p, o, path, "patience", 0, INT32_MAX, false, &patience)) ||
        (r = tb__jp_get_int(p, o, path, "cooldown", 0, INT32_MAX, false, &cooldown)))
      return r;
    o2.patience = (int)patience;
    o2.cooldown = (int)cooldown;
    o2.monitor = monitor;
    o2.verbose = (int)verbose;
    if (name[0])
      o2.name = name;
    *out = tb_reduce_lr_new(&o2, &cerr);
  } else if (strcmp(type, "LearningRateScheduler") == 0) {
    static const char *const keys[] = {"type",          "name",       "verbose", "schedule",
                                       "initial_lr",    "drop",       "every",   "decay_rate",
                                       "decay_epochs",  "staircase",  "alpha",   "warmup_target",
                                       "warmup_epochs", "boundaries", "values",  NULL};
    tb_schedule_t s = {.drop = 0.5, .every = 10};
    char kind[16] = "";
    long every = 10, warm = 0;
    if ((r = tb__jp_only_keys(p, o, path, keys)) ||
        (r = tb__jp_get_str(p, o, path, "schedule", kind, sizeof(kind), true)))
      return r;
    s.kind = strcmp(kind, "step") == 0          ? TB_SCHED_STEP
             : strcmp(kind, "exponential") == 0 ? TB_SCHED_EXPONENTIAL
             : strcmp(kind, "cosine") == 0      ? TB_SCHED_COSINE
             : strcmp(kind, "piecewise") == 0   ? TB_SCHED_PIECEWISE
                                                : 0;
    if (s.kind == 0) {
      tb__jp_join(fp, sizeof(fp), path, "schedule");
      return tb__jp_bad(p, fp, "\"step\", \"exponential\", \"cosine\" or \"piecewise\"",
                        cJSON_GetObjectItem(o, "schedule"));
    }
    /* The ranges Keras's schedule classes accept: decay_steps > 0, any
     * decay_rate, alpha and warmup_target; warmup_target absent is None. A
     * rate the schedule then gives below 0 fails at that epoch. */
    const char *pos = "a positive number", *num = "a finite number";
    if ((r = tb__jp_get_num(p, o, path, "initial_lr", 0, 1e6, false, "a number >= 0",
                            &s.initial_lr)) ||
        (r = tb__jp_get_num(p, o, path, "drop", 0, 1e6, true, pos, &s.drop)) ||
        (r = tb__jp_get_int(p, o, path, "every", 1, INT32_MAX, false, &every)) ||
        (r = tb__jp_get_num(p, o, path, "decay_rate", -1e6, 1e6, false, num, &s.decay_rate)) ||
        (r = tb__jp_get_num(p, o, path, "decay_epochs", 0, 1e9, true, pos, &s.decay_epochs)) ||
        (r = tb__jp_get_bool(p, o, path, "staircase", &s.staircase)) ||
        (r = tb__jp_get_num(p, o, path, "alpha", -1e6, 1e6, false, num, &s.alpha)) ||
        (r = tb__jp_get_num(p, o, path, "warmup_target", 0, 1e6, false, "a number >= 0",
                            &s.warmup_target)) ||
        (r = tb__jp_get_int(p, o, path, "warmup_epochs", 0, INT32_MAX, false, &warm)))
      return r;
    s.every = (int)every;
    s.warmup_epochs = (int)warm;
    s.has_initial_lr = cJSON_GetObjectItemCaseSensitive(o, "initial_lr") != NULL;
    s.has_warmup_target = cJSON_GetObjectItemCaseSensitive(o, "warmup_target") != NULL;
    static const char *const only[][2] = {{"drop", "step"},
                                          {"every", "step"},
                                          {"decay_rate", "exponential"},
                                          {"staircase", "exponential"},
                                          {"alpha", "cosine"},
                                          {"warmup_target", "cosine"},
                                          {"warmup_epochs", "cosine"},
                                          {"decay_epochs", "exponential cosine"}};
    for (size_t i = 0; i < sizeof(only) / sizeof(only[0]); i++)
      if (cJSON_GetObjectItemCaseSensitive(o, only[i][0]) != NULL &&
          strstr(only[i][1], kind) == NULL)
        return tb_errf(p->err, TB_EINVAL, "%s: %s.%s: not a parameter of schedule \"%s\" (only %s)",
                       p->origin, path, only[i][0], kind, only[i][1]);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "boundaries");
    const cJSON *vals = cJSON_GetObjectItemCaseSensitive(o, "values");
    if (s.kind == TB_SCHED_PIECEWISE) {
      int nb = cJSON_IsArray(b) ? cJSON_GetArraySize(b) : -1;
      if (nb < 1 || nb > 32) {
        tb__jp_join(fp, sizeof(fp), path, "boundaries");
        return tb__jp_bad(p, fp, "an array of 1 to 32 epoch numbers", b);
      }
      if (!cJSON_IsArray(vals) || cJSON_GetArraySize(vals) != nb + 1) {
        tb__jp_join(fp, sizeof(fp), path, "values");
        return tb__jp_bad(p, fp, "an array with one more rate than boundaries", vals);
      }
      s.n_boundaries = nb;
      for (int i = 0; i <= nb; i++) {
        const cJSON *x = cJSON_GetArrayItem(vals, i), *y = cJSON_GetArrayItem(b, i);
        if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble)) {
          snprintf(fp, sizeof(fp), "%s.values[%d]", path, i);
          return tb__jp_bad(p, fp, "a number", x);
        }
        s.values[i] = x->valuedouble;
        if (i < nb) {
          /* Keras casts a boundary to the step's integer type: 2.5 is 2. Any
           * order is accepted, as Keras's sum of indicator terms is. */
          if (!cJSON_IsNumber(y) || !(fabs(y->valuedouble) <= 1e9)) {
            snprintf(fp, sizeof(fp), "%s.boundaries[%d]", path, i);
            return tb__jp_bad(p, fp, "an epoch number", y);
          }
          s.boundaries[i] = (int)y->valuedouble;
        }
      }
    } else if (b != NULL || vals != NULL) {
      return tb_errf(p->err, TB_EINVAL, "%s: %s: boundaries and values belong to \"piecewise\"",
                     p->origin, path);
    }
    if ((s.kind == TB_SCHED_EXPONENTIAL &&
         cJSON_GetObjectItemCaseSensitive(o, "decay_rate") == NULL) ||
        (s.kind != TB_SCHED_STEP && s.kind != TB_SCHED_PIECEWISE && s.decay_epochs == 0))
      return tb_errf(p->err, TB_EINVAL, "%s: %s: schedule \"%s\" needs decay_epochs%s", p->origin,
                     path, kind, s.kind == TB_SCHED_EXPONENTIAL ? " and decay_rate" : "");
    *out = tb_lr_schedule_new(&s, (int)verbose, &cerr);
  } else if (strcmp(type, "ModelCheckpoint") == 0) {
    static const char *const keys[] = {"type",
                                       "name",
                                       "filepath",
                                       "monitor",
                                       "verbose",
                                       "save_best_only",
                                       "save_weights_only",
                                       "mode",
                                       "save_freq",
                                       "initial_value_threshold",
                                       NULL};
    tb_model_checkpoint_opts_t c;
    char filepath[1024];
    tb_model_checkpoint_defaults(&c);
    if ((r = tb__jp_only_keys(p, o, path, keys)) ||
        (r = tb__jp_get_out_path(p, o, path, "filepath", filepath, sizeof(filepath), true)) ||
        (r = tb__jp_get_bool(p, o, path, "save_best_only", &c.save_best_only)) ||
        (r = tb__jp_get_bool(p, o, path, "save_weights_only", &c.save_weights_only)) ||
        (r = get_mode(p, o, path, &c.mode)) || (r = get_freq(p, o, path, &c.save_freq)))
      return r;
    if (cJSON_GetObjectItemCaseSensitive(o, "initial_value_threshold") != NULL) {
      c.has_initial_value_threshold = true;
      if ((r = tb__jp_get_num(p, o, path, "initial_value_threshold", -1e300, 1e300, false,
                              "a finite number", &c.initial_value_threshold)))
        return r;
    }
    c.filepath = filepath;
    c.monitor = monitor;
    c.verbose = (int)verbose;
    if (name[0])
      c.name = name;
    *out = tb_model_checkpoint_new(&c, &cerr);
  } else if (strcmp(type, "CSVLogger") == 0) {
    static const char *const keys[] = {"type", "name", "filename", "separator", "append", NULL};
    tb_csv_logger_opts_t c;
    char filename[1024], sep[4] = ",";
    tb_csv_logger_defaults(&c);
    if ((r = tb__jp_only_keys(p, o, path, keys)) ||
        (r = tb__jp_get_out_path(p, o, path, "filename", filename, sizeof(filename), true)) ||
        (r = tb__jp_get_str(p, o, path, "separator", sep, sizeof(sep), false)) ||
        (r = tb__jp_get_bool(p, o, path, "append", &c.append)))
      return r;
    if (strlen(sep) != 1) {
      tb__jp_join(fp, sizeof(fp), path, "separator");
      return tb__jp_bad(p, fp, "a single character", cJSON_GetObjectItem(o, "separator"));
    }
    c.separator = sep[0];
    c.filename = filename;
    if (name[0])
      c.name = name;
    *out = tb_csv_logger_new(&c, &cerr);
  } else if (strcmp(type, "TerminateOnNaN") == 0) {
    static const char *const keys[] = {"type", "raise_error", NULL};
    bool raise = false;
    if ((r = tb__jp_only_keys(p, o, path, keys)) ||
        (r = tb__jp_get_bool(p, o, path, "raise_error", &raise)))
      return r;
    *out = tb_terminate_on_nan_new(raise);
  } else if (strcmp(type, "BackupAndRestore") == 0) {
    static const char *const keys[] = {
        "type", "name", "backup_dir", "save_freq", "delete_checkpoint", NULL};
    tb_backup_opts_t b;
    char dir[1024];
    tb_backup_defaults(&b);
    if ((r = tb__jp_only_keys(p, o, path, keys)) ||
        (r = tb__jp_get_out_path(p, o, path, "backup_dir", dir, sizeof(dir), true)) ||
        (r = get_freq(p, o, path, &b.save_freq)) ||
        (r = tb__jp_get_bool(p, o, path, "delete_checkpoint", &b.delete_checkpoint)))
      return r;
    b.backup_dir = dir;
    if (name[0])
      b.name = name;
    *out = tb_backup_new(&b, &cerr);
  } else {
    tb__jp_join(fp, sizeof(fp), path, "type");
    return tb__jp_bad(p, fp,
                      "one of EarlyStopping, ReduceLROnPlateau, LearningRateScheduler, "
                      "ModelCheckpoint, CSVLogger, TerminateOnNaN, BackupAndRestore",
                      cJSON_GetObjectItem(o, "type"));
  }
  if (*out == NULL)
    return tb_errf(p->err, TB_EINVAL, "%s: %s: %s", p->origin, path,
                   cerr.msg[0] ? cerr.msg : "out of memory");
  return 0;
}

int tb__job_parse_callbacks(parse_t *p, const cJSON *arr, tb_job_t *job) {
  int i = 0, r;
  if (!cJSON_IsArray(arr))
    return tb__jp_bad(p, "callbacks", "an array of callback objects", arr);
  if (cJSON_GetArraySize(arr) > (int)(sizeof(job->callbacks) / sizeof(job->callbacks[0])))
    return tb_errf(p->err, TB_EINVAL, "%s: callbacks: at most %zu", p->origin,
                   sizeof(job->callbacks) / sizeof(job->callbacks[0]));
  for (const cJSON *it = arr->child; it != NULL; it = it->next, i++) {
    char path[32];
    snprintf(path, sizeof(path), "callbacks[%d]", i);
    int outputs = job->n_outputs;
    if ((r = one(p, it, path, &job->callbacks[job->n_callbacks])) != 0)
      return r;
    /* A callback that named a path to write (its file or folder) writes. */
    job->callback_writes[job->n_callbacks] = job->n_outputs > outputs;
    job->n_callbacks++;
  }
  return 0;
}

int tb_job_add_callbacks(tb_job_t *job, tb_callbacks_t *list) {
  return tb_job_add_callbacks_rank(job, list, 0);
}

int tb_job_add_callbacks_rank(tb_job_t *job, tb_callbacks_t *list, int rank) {
  for (int i = 0; i < job->n_callbacks; i++) {
    if (rank != 0 && job->callback_writes[i])
      continue;
    int r = tb_callbacks_add(list, job->callbacks[i]);
    if (r != 0)
      return r;
  }
  return 0;
}
