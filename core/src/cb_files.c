/* The callbacks that write files: ModelCheckpoint, CSVLogger and
 * BackupAndRestore (keras/src/callbacks/{model_checkpoint,csv_logger,
 * backup_and_restore}.py).
 *
 * Full checkpoints are not written here: a callback asks for one with
 * tb_ctx_request_checkpoint() and fit() writes it once every callback has run,
 * so the file holds every callback's state after the hook (a checkpoint taken
 * halfway through a dispatch could not resume exactly). Weights-only files
 * need no such care and are written at once. */
#include "internal.h"
#include "pyfmt.h"
#include "trainbus/callbacks.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The keyword arguments of Keras's _get_file_path:
 * filepath.format(epoch=epoch + 1, batch=batch + 1, **logs), where batch is
 * given only for a batch-level save and only if the logs have no "batch". */
typedef struct fp_args_s {
  int epoch1, batch1;
  const tb_logs_t *logs;
} fp_args_t;

static bool fp_get(void *user, const char *name, size_t len, tb__pyval_t *v) {
  const fp_args_t *a = user;
  char key[TB_LOGS_NAME_MAX];
  double d;
  if (len >= sizeof(key))
    return false;
  memcpy(key, name, len);
  key[len] = '\0';
  if (strcmp(key, "epoch") == 0) {
    *v = (tb__pyval_t){.is_int = true, .i = a->epoch1};
    return true;
  }
  if (a->logs != NULL && tb_logs_get(a->logs, key, &d)) {
    *v = (tb__pyval_t){.is_int = false, .f = d};
    return true;
  }
  if (strcmp(key, "batch") == 0 && a->batch1 > 0) {
    *v = (tb__pyval_t){.is_int = true, .i = a->batch1};
    return true;
  }
  return false;
}

/* For checking a pattern: epoch and batch are ints, any other key a float. */
static bool any_key(void *user, const char *name, size_t len, tb__pyval_t *v) {
  (void)user;
  bool is_int =
      (len == 5 && memcmp(name, "epoch", 5) == 0) || (len == 5 && memcmp(name, "batch", 5) == 0);
  *v = (tb__pyval_t){.is_int = is_int, .i = 1, .f = 0.0};
  return true;
}

int tb_format_filepath(const char *pattern, int epoch1, int batch1, const tb_logs_t *logs,
                       char *out, size_t len, tb_err_t *err) {
  fp_args_t a = {epoch1, batch1, logs};
  char missing[TB_LOGS_NAME_MAX + 8];
  tb_err_t e = {{0}};
  int r = tb__py_format(pattern, fp_get, &a, out, len, missing, sizeof(missing), &e);
  if (r == TB_ENOTFOUND)
    return tb_errf(err, r,
                   "Failed to format this callback filepath: \"%s\". Reason: '%s' is not "
                   "in the logs",
                   pattern, missing);
  if (r == TB_ERANGE)
    return tb_errf(err, r, "filepath \"%s\": the file name is longer than %zu bytes", pattern,
                   len > 0 ? len - 1 : 0);
  if (r != 0)
    return tb_errf(err, r, "filepath \"%s\": %s", pattern, e.msg);
  return 0;
}

/* ---- ModelCheckpoint ---------------------------------------------------- */

typedef struct mcp_s {
  tb_callback_t cb;
  char name[96], filepath[1024];
  tb_model_checkpoint_opts_t o;
  tb__monitor_t mo; /* min_delta 0, as Keras's ModelCheckpoint */
  bool has_best;
  double best;
  long batches_since_save;
} mcp_t;

void tb_model_checkpoint_defaults(tb_model_checkpoint_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->name = "ModelCheckpoint";
  o->monitor = "val_loss";
}

/* _save_model with _get_file_path and _should_save_model. */
static int mcp_save(mcp_t *c, tb_ctx_t *ctx, int epoch, int batch1, const tb_logs_t *logs) {
  char path[1024];
  int r;
  if ((r = tb_format_filepath(c->filepath, epoch + 1, batch1, logs, path, sizeof(path),
                              &ctx->err)) != 0)
    return r;
  if (c->o.save_best_only) {
    double cur;
    if (!tb_logs_get(logs, c->mo.monitor, &cur)) {
      if (!c->mo.warned)
        fprintf(stderr, "warning: Can save best model only with %s available.\n", c->mo.monitor);
      c->mo.warned = true;
    } else {
      /* A batch-level save may come before the first epoch end, where Keras
       * sets the op (and would fail comparing with a threshold). */
      if ((r = tb__monitor_op(&c->mo, ctx, c->name)) != 0)
        return r;
      char best[64] = "None", now[64];
      if (c->has_best)
        tb__py_format_float(c->best, ".5f", best, sizeof(best));
      tb__py_format_float(cur, ".5f", now, sizeof(now));
      if (!tb__monitor_improved(&c->mo, cur, c->has_best, c->best)) {
        if (c->o.verbose > 0)
          printf("\nEpoch %d: %s did not improve from %s\n", epoch + 1, c->mo.monitor, best);
        return 0;
      }
      if (c->o.verbose > 0)
        printf("\nEpoch %d: %s improved from %s to %s, saving model to %s\n", epoch + 1,
               c->mo.monitor, best, now, path);
      c->best = cur;
      c->has_best = true;
    }
  } else if (c->o.verbose > 0) {
    printf("\nEpoch %d: saving model to %s\n", epoch + 1, path);
  }
  if ((r = tb__make_parent(path)) != 0)
    return tb_errf(&ctx->err, r, "cannot create the folder of %s: %s", path, tb_strerror(r));
  if (c->o.save_weights_only) {
    if (ctx->model != NULL && (r = tb_model_save_weights(ctx->model, path, &ctx->err)) != 0)
      return r;
  } else if ((r = tb_ctx_request_checkpoint(ctx, path)) != 0) {
    return tb_errf(&ctx->err, r, "too many checkpoints requested at once");
  }
  if (c->o.verbose > 0)
    printf("\nEpoch %d: finished saving model to %s\n", epoch + 1, path);
  return 0;
}

static int mcp_train_batch_end(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  mcp_t *c = cb->user;
  if (c->o.save_freq <= 0 || ++c->batches_since_save < c->o.save_freq)
    return 0;
  c->batches_since_save = 0;
  return mcp_save(c, ctx, ctx->epoch, batch + 1, logs);
}

/* Keras sets the monitor op at every epoch end, saving or not: a monitor
 * whose direction cannot be inferred fails there. */
static int mcp_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  mcp_t *c = cb->user;
  int r = tb__monitor_op(&c->mo, ctx, c->name);
  if (r != 0)
    return r;
  return c->o.save_freq <= 0 ? mcp_save(c, ctx, epoch, 0, logs) : 0;
}

static int mcp_state_save(tb_callback_t *cb, tb_state_t *st) {
  mcp_t *c = cb->user;
  int r;
  if ((r = tb_state_put_i64(st, "has_best", c->has_best)) ||
      (r = tb_state_put_f64(st, "best", c->best)) || (r = tb__monitor_save(&c->mo, st)))
    return r;
  return tb_state_put_i64(st, "batches_since_save", c->batches_since_save);
}

static int mcp_state_load(tb_callback_t *cb, const tb_state_t *st) {
  mcp_t *c = cb->user;
  int64_t has_best, since;
  int r;
  if ((r = tb_state_get_i64(st, "has_best", &has_best)) ||
      (r = tb_state_get_f64(st, "best", &c->best)) || (r = tb__monitor_load(&c->mo, st)) ||
      (r = tb_state_get_i64(st, "batches_since_save", &since)))
    return r;
  c->has_best = has_best != 0;
  c->batches_since_save = since;
  return 0;
}

static void plain_destroy(tb_callback_t *cb) {
  free(cb->user);
}

tb_callback_t *tb_model_checkpoint_new(const tb_model_checkpoint_opts_t *o, tb_err_t *err) {
  const char *name = o && o->name ? o->name : "ModelCheckpoint";
  const char *monitor = o && o->monitor ? o->monitor : "val_loss";
  if (o == NULL || o->filepath == NULL || o->filepath[0] == '\0' || strlen(o->filepath) >= 1024) {
    tb_errf(err, TB_EINVAL, "%s: filepath is required (under 1024 bytes)", name);
    return NULL;
  }
  if (o->save_freq < 0 ||
      (o->has_initial_value_threshold && !isfinite(o->initial_value_threshold))) {
    tb_errf(err, TB_EINVAL, "%s: save_freq must be >= 0 (0: every epoch), the threshold finite",
            name);
    return NULL;
  }
  tb__monitor_t mo;
  if (tb__monitor_init(&mo, monitor, o->mode, 0.0, name, err) != 0)
    return NULL;
  /* Check the pattern now, every key standing for a float, so a mistake in
   * it fails before training rather than at the first save (where Keras
   * raises). */
  char probe[1024], missing[8];
  tb_err_t perr = {{0}};
  int pr = tb__py_format(o->filepath, any_key, NULL, probe, sizeof(probe), missing, sizeof(missing),
                         &perr);
  if (pr != 0) {
    tb_errf(err, pr, "%s: filepath \"%s\": %s", name, o->filepath, perr.msg);
    return NULL;
  }
  mcp_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    tb_errf(err, TB_ENOMEM, "%s: out of memory", name);
    return NULL;
  }
  c->o = *o;
  snprintf(c->name, sizeof(c->name), "%s", name);
  snprintf(c->filepath, sizeof(c->filepath), "%s", o->filepath);
  c->mo = mo;
  c->o.name = c->name;
  c->o.filepath = c->filepath;
  c->o.monitor = c->mo.monitor;
  if (o->has_initial_value_threshold) {
    c->has_best = true;
    c->best = o->initial_value_threshold;
  }
  c->cb.name = c->name;
  c->cb.on_train_batch_end = mcp_train_batch_end;
  c->cb.on_epoch_end = mcp_epoch_end;
  c->cb.save_state = mcp_state_save;
  c->cb.load_state = mcp_state_load;
  c->cb.destroy = plain_destroy;
  c->cb.user = c;
  return &c->cb;
}

/* ---- CSVLogger ---------------------------------------------------------- */

typedef struct csv_s {
  tb_callback_t cb;
  char name[96], filename[1024];
  tb_csv_logger_opts_t o;
  FILE *f;
  int n_keys;
  char keys[2 * TB_LOGS_MAX][TB_LOGS_NAME_MAX + 4];
  bool resume_pending; /* a checkpoint restored us: reopen at the saved length */
  long length;         /* bytes written so far (saved in checkpoints) */
} csv_t;

void tb_csv_logger_defaults(tb_csv_logger_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->name = "CSVLogger";
  o->separator = ',';
}

static int csv_train_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  csv_t *c = cb->user;
  if (c->f != NULL)
    fclose(c->f);
  c->f = NULL;
  c->n_keys = 0;
  c->resume_pending = false;
  c->length = 0;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(a, b);
}

/* One cell as Python's csv module writes it with Keras's dialect (csv.excel
 * with the separator as delimiter, QUOTE_MINIMAL): quoted when it holds the
 * separator, a quote or a line break, a quote doubled inside. */
static void write_cell(FILE *f, const char *text, char sep) {
  bool quote = strchr(text, sep) != NULL || strpbrk(text, "\"\r\n") != NULL;
  if (!quote) {
    fputs(text, f);
    return;
  }
  fputc('"', f);
  for (const char *p = text; *p; p++) {
    if (*p == '"')
      fputc('"', f);
    fputc(*p, f);
  }
  fputc('"', f);
}

static int csv_open(csv_t *c, tb_ctx_t *ctx, bool *header) {
  const char *mode = "w";
  *header = true;
  if (c->resume_pending && c->length == 0) {
    /* The checkpoint predates the first row: start the file afresh. */
  } else if (c->resume_pending) {
    /* Drop any rows written after the checkpoint, so resuming never
     * duplicates an epoch. */
    if (truncate(c->filename, c->length) != 0)
      return tb_errf(&ctx->err, -errno, "cannot truncate %s for resuming: %s", c->filename,
                     strerror(errno));
    mode = "a";
    *header = c->length == 0;
  } else if (c->o.append) {
    struct stat st;
    if (stat(c->filename, &st) == 0 && st.st_size > 0) {
      mode = "a";
      *header = false;
      c->length = (long)st.st_size;
    }
  }
  int r = tb__make_parent(c->filename);
  if (r != 0 || (c->f = fopen(c->filename, mode)) == NULL)
    return tb_errf(&ctx->err, r ? r : -errno, "cannot open %s: %s", c->filename,
                   strerror(r ? -r : errno));
  c->resume_pending = false;
  return 0;
}

static int csv_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  csv_t *c = cb->user;
  bool header = false;
  int r;
  if (c->n_keys == 0) {
    /* Keras: keys fixed at the first epoch, sorted; if no val_ key is there
     * yet, every key's val_ twin is appended (the rate's too: Keras does not
     * tell metrics from other keys) so later validation fits. */
    for (int i = 0; i < logs->n; i++)
      snprintf(c->keys[c->n_keys++], sizeof(c->keys[0]), "%s", logs->names[i]);
    qsort(c->keys, (size_t)c->n_keys, sizeof(c->keys[0]), cmp_names);
    bool has_val = false;
    for (int i = 0; i < c->n_keys; i++)
      has_val |= strncmp(c->keys[i], "val_", 4) == 0;
    int n = c->n_keys;
    for (int i = 0; !has_val && i < n; i++) {
      char base[TB_LOGS_NAME_MAX];
      snprintf(base, sizeof(base), "%.47s", c->keys[i]);
      snprintf(c->keys[c->n_keys++], sizeof(c->keys[0]), "val_%.47s", base);
    }
  }
  if (c->f == NULL) {
    if ((r = csv_open(c, ctx, &header)) != 0)
      return r;
  }
  /* csv.DictWriter: the header once, then one row per epoch, each line
   * ended by the excel dialect's "\r\n"; numbers as str(float), Python's
   * repr; a missing value as "NA". */
  long before = ftell(c->f);
  char sep = c->o.separator, cell[40];
  if (header) {
    write_cell(c->f, "epoch", sep);
    for (int i = 0; i < c->n_keys; i++) {
      fputc(sep, c->f);
      write_cell(c->f, c->keys[i], sep);
    }
    fputs("\r\n", c->f);
  }
  snprintf(cell, sizeof(cell), "%d", epoch);
  write_cell(c->f, cell, sep);
  for (int i = 0; i < c->n_keys; i++) {
    double v;
    fputc(sep, c->f);
    if (tb_logs_get(logs, c->keys[i], &v))
      tb__py_repr(v, cell);
    else
      snprintf(cell, sizeof(cell), "NA");
    write_cell(c->f, cell, sep);
  }
  fputs("\r\n", c->f);
  if (fflush(c->f) != 0 || ferror(c->f))
    return tb_errf(&ctx->err, TB_EIO, "cannot write %s: %s", c->filename, strerror(errno));
  long after = ftell(c->f);
  c->length += after >= 0 && before >= 0 ? after - before : 0;
  return 0;
}

static int csv_train_end(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  csv_t *c = cb->user;
  if (c->f != NULL)
    fclose(c->f);
  c->f = NULL;
  return 0;
}

static int csv_save(tb_callback_t *cb, tb_state_t *st) {
  csv_t *c = cb->user;
  int r = tb_state_put_i64(st, "length", c->length);
  if (r == 0)
    r = tb_state_put_bytes(st, "keys", c->keys, (size_t)c->n_keys * sizeof(c->keys[0]));
  return r;
}

static int csv_load(tb_callback_t *cb, const tb_state_t *st) {
  csv_t *c = cb->user;
  int64_t length;
  const void *keys;
  size_t len;
  int r;
  if ((r = tb_state_get_i64(st, "length", &length)) != 0 ||
      (r = tb_state_get_bytes(st, "keys", &keys, &len)) != 0)
    return r;
  if (len % sizeof(c->keys[0]) != 0 || len / sizeof(c->keys[0]) > 2 * TB_LOGS_MAX || length < 0)
    return TB_EFORMAT;
  if (c->f != NULL)
    fclose(c->f);
  c->f = NULL;
  c->n_keys = (int)(len / sizeof(c->keys[0]));
  memcpy(c->keys, keys, len);
  for (int i = 0; i < c->n_keys; i++)
    c->keys[i][sizeof(c->keys[0]) - 1] = '\0';
  c->length = (long)length;
  c->resume_pending = true;
  return 0;
}

static void csv_destroy(tb_callback_t *cb) {
  csv_t *c = cb->user;
  if (c->f != NULL)
    fclose(c->f);
  free(c);
}

tb_callback_t *tb_csv_logger_new(const tb_csv_logger_opts_t *o, tb_err_t *err) {
  const char *name = o && o->name ? o->name : "CSVLogger";
  if (o == NULL || o->filename == NULL || o->filename[0] == '\0' || strlen(o->filename) >= 1024) {
    tb_errf(err, TB_EINVAL, "%s: filename is required (under 1024 bytes)", name);
    return NULL;
  }
  csv_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    tb_errf(err, TB_ENOMEM, "%s: out of memory", name);
    return NULL;
  }
  c->o = *o;
  if (c->o.separator == 0)
    c->o.separator = ',';
  snprintf(c->name, sizeof(c->name), "%s", name);
  snprintf(c->filename, sizeof(c->filename), "%s", o->filename);
  c->o.name = c->name;
  c->o.filename = c->filename;
  c->cb.name = c->name;
  c->cb.on_train_begin = csv_train_begin;
  c->cb.on_epoch_end = csv_epoch_end;
  c->cb.on_train_end = csv_train_end;
  c->cb.save_state = csv_save;
  c->cb.load_state = csv_load;
  c->cb.destroy = csv_destroy;
  c->cb.user = c;
  return &c->cb;
}

/* ---- BackupAndRestore --------------------------------------------------- */

typedef struct backup_s {
  tb_callback_t cb;
  char name[96], dir[1024], path[1100];
  tb_backup_opts_t o;
  long batches;
} backup_t;

void tb_backup_defaults(tb_backup_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->name = "BackupAndRestore";
  o->delete_checkpoint = true;
}

/* Restores in train_begin, as Keras does; unlike Keras, the position inside
 * the epoch is restored too, so a mid-epoch backup resumes exactly. */
static int bk_train_begin(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  backup_t *b = cb->user;
  b->batches = 0;
  if (access(b->path, F_OK) == 0 && ctx->resume_path[0] == '\0')
    snprintf(ctx->resume_path, sizeof(ctx->resume_path), "%s", b->path);
  return 0;
}

static int bk_request(backup_t *b, tb_ctx_t *ctx) {
  int r = tb__make_parent(b->path);
  if (r != 0)
    return tb_errf(&ctx->err, r, "cannot create %s: %s", b->dir, tb_strerror(r));
  return tb_ctx_request_checkpoint(ctx, b->path);
}

static int bk_batch_end(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  backup_t *b = cb->user;
  if (b->o.save_freq <= 0 || ++b->batches < b->o.save_freq)
    return 0;
  b->batches = 0;
  return bk_request(b, ctx);
}

static int bk_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  backup_t *b = cb->user;
  return b->o.save_freq <= 0 ? bk_request(b, ctx) : 0;
}

static int bk_train_end(tb_callback_t *cb, tb_ctx_t *ctx, int index, tb_logs_t *logs) {
  backup_t *b = cb->user;
  if (b->o.delete_checkpoint) {
    unlink(b->path);
    rmdir(b->dir); /* only if empty */
  }
  return 0;
}

static int bk_save(tb_callback_t *cb, tb_state_t *st) {
  return tb_state_put_i64(st, "batches", ((backup_t *)cb->user)->batches);
}

static int bk_load(tb_callback_t *cb, const tb_state_t *st) {
  int64_t v;
  int r = tb_state_get_i64(st, "batches", &v);
  if (r == 0)
    ((backup_t *)cb->user)->batches = v;
  return r;
}

tb_callback_t *tb_backup_new(const tb_backup_opts_t *o, tb_err_t *err) {
  const char *name = o && o->name ? o->name : "BackupAndRestore";
  if (o == NULL || o->backup_dir == NULL || o->backup_dir[0] == '\0' ||
      strlen(o->backup_dir) >= 1024 || o->save_freq < 0) {
    tb_errf(err, TB_EINVAL, "%s: backup_dir is required, save_freq >= 0", name);
    return NULL;
  }
  backup_t *b = calloc(1, sizeof(*b));
  if (b == NULL) {
    tb_errf(err, TB_ENOMEM, "%s: out of memory", name);
    return NULL;
  }
  b->o = *o;
  snprintf(b->name, sizeof(b->name), "%s", name);
  snprintf(b->dir, sizeof(b->dir), "%s", o->backup_dir);
  snprintf(b->path, sizeof(b->path), "%s/%s", o->backup_dir, TB_CHECKPOINT_LATEST);
  b->o.name = b->name;
  b->o.backup_dir = b->dir;
  b->cb.name = b->name;
  b->cb.on_train_begin = bk_train_begin;
  b->cb.on_train_batch_end = bk_batch_end;
  b->cb.on_epoch_end = bk_epoch_end;
  b->cb.on_train_end = bk_train_end;
  b->cb.save_state = bk_save;
  b->cb.load_state = bk_load;
  b->cb.destroy = plain_destroy;
  b->cb.user = b;
  return &b->cb;
}

/* ---- TerminateOnNaN and Lambda ------------------------------------------ */

static int nan_batch_end(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  double loss;
  if (!tb_logs_get(logs, "loss", &loss) || isfinite(loss))
    return 0;
  /* Keras's words: the RuntimeError's with raise_error, else the print. */
  if (cb->user != NULL) {
    char v[32];
    tb__py_repr(loss, v);
    return tb_errf(&ctx->err, TB_ENONFINITE,
                   "NaN or Inf loss encountered at batch %d. Loss value: %s. Terminating "
                   "training immediately.",
                   batch, v);
  }
  printf("Batch %d: Invalid loss, terminating training\n", batch);
  ctx->stop_training = true;
  return 0;
}

static void free_self(tb_callback_t *cb) {
  free(cb);
}

tb_callback_t *tb_terminate_on_nan_new(bool raise_error) {
  tb_callback_t *cb = calloc(1, sizeof(*cb));
  if (cb == NULL)
    return NULL;
  cb->name = "TerminateOnNaN";
  cb->on_train_batch_end = nan_batch_end;
  cb->user = raise_error ? cb : NULL; /* non-NULL marks raise_error */
  cb->destroy = free_self;
  return cb;
}

tb_callback_t *tb_lambda_new(const tb_callback_t *hooks) {
  tb_callback_t *cb = malloc(sizeof(*cb));
  if (cb == NULL || hooks == NULL) {
    free(cb);
    return NULL;
  }
  *cb = *hooks;
  if (cb->name == NULL)
    cb->name = "LambdaCallback";
  cb->destroy = free_self;
  return cb;
}
