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
#include "trainbus/callbacks.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Python's str.format for the few specs file names use: {key}, {key:d},
 * {key:02d}, {key:.3f}, {key:e}, {key:g}. */
int tb_format_filepath(const char *pattern, int epoch1, int batch1, const tb_logs_t *logs,
                       char *out, size_t len, tb_err_t *err) {
  size_t o = 0;
  for (const char *p = pattern; *p; p++) {
    if (*p != '{') {
      if (o + 1 >= len)
        return tb_errf(err, TB_ERANGE, "file path longer than %zu bytes", len - 1);
      out[o++] = *p;
      continue;
    }
    const char *close = strchr(p, '}');
    if (close == NULL)
      return tb_errf(err, TB_EINVAL, "filepath \"%s\": unclosed '{'", pattern);
    char field[96], key[96], spec[32] = "";
    size_t fl = (size_t)(close - p - 1);
    if (fl == 0 || fl >= sizeof(field))
      return tb_errf(err, TB_EINVAL, "filepath \"%s\": empty or overlong placeholder", pattern);
    memcpy(field, p + 1, fl);
    field[fl] = '\0';
    char *colon = strchr(field, ':');
    if (colon != NULL) {
      *colon = '\0';
      snprintf(spec, sizeof(spec), "%s", colon + 1);
    }
    snprintf(key, sizeof(key), "%s", field);
    double v;
    bool is_int = false;
    if (strcmp(key, "epoch") == 0) {
      v = epoch1;
      is_int = true;
    } else if (strcmp(key, "batch") == 0 && batch1 > 0) {
      v = batch1;
      is_int = true;
    } else if (!tb_logs_get(logs, key, &v)) {
      return tb_errf(err, TB_ENOTFOUND, "failed to format filepath \"%s\": no \"%s\" in the logs",
                     pattern, key);
    }
    /* Translate the spec to printf: [0][width][.prec][type] */
    char fmt[40];
    size_t sl = strlen(spec);
    bool spec_ok = sl < 16;
    for (size_t i = 0; spec_ok && i < sl; i++)
      spec_ok = isdigit((unsigned char)spec[i]) || spec[i] == '.' ||
                (i == sl - 1 && strchr("dfeg", spec[i]) != NULL);
    if (!spec_ok)
      return tb_errf(err, TB_EINVAL, "filepath \"%s\": unsupported format spec \"%s\"", pattern,
                     spec);
    char type = is_int ? 'd' : 'g';
    if (sl > 0 && isalpha((unsigned char)spec[sl - 1]))
      type = spec[--sl];
    snprintf(fmt, sizeof(fmt), "%%%.*s%s", (int)sl, spec,
             type == 'd' ? "ld" : (char[]){type, '\0'});
    int w =
        type == 'd' ? snprintf(out + o, len - o, fmt, (long)v) : snprintf(out + o, len - o, fmt, v);
    if (w < 0 || (size_t)w >= len - o)
      return tb_errf(err, TB_ERANGE, "file path longer than %zu bytes", len - 1);
    o += (size_t)w;
    p = close;
  }
  out[o] = '\0';
  return 0;
}

/* ---- ModelCheckpoint ---------------------------------------------------- */

typedef struct mcp_s {
  tb_callback_t cb;
  char name[96], filepath[1024], monitor[TB_LOGS_NAME_MAX];
  tb_model_checkpoint_opts_t o;
  bool less, op_set, has_best;
  double best;
  long batches_since_save;
} mcp_t;

void tb_model_checkpoint_defaults(tb_model_checkpoint_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->name = "ModelCheckpoint";
  o->monitor = "val_loss";
}

static int mcp_save(mcp_t *c, tb_ctx_t *ctx, int epoch, int batch1, const tb_logs_t *logs) {
  char path[1024];
  int r;
  if ((r = tb_format_filepath(c->filepath, epoch + 1, batch1, logs, path, sizeof(path),
                              &ctx->err)) != 0)
    return r;
  if (c->o.save_best_only) {
    double cur;
    if (!tb_logs_get(logs, c->monitor, &cur)) {
      fprintf(stderr, "warning: %s: can save best model only with %s available, saving anyway\n",
              c->name, c->monitor);
    } else {
      if (!c->op_set) {
        const char *n = strncmp(c->monitor, "val_", 4) == 0 ? c->monitor + 4 : c->monitor;
        c->less = c->o.mode == TB_MODE_MIN || (c->o.mode == TB_MODE_AUTO &&
                                               strcmp(n, "accuracy") != 0 && strcmp(n, "acc") != 0);
        c->op_set = true;
      }
      bool better = !c->has_best || (c->less ? cur < c->best : cur > c->best);
      if (!better) {
        if (c->o.verbose > 0)
          printf("\nEpoch %d: %s did not improve from %.5f\n", epoch + 1, c->monitor, c->best);
        return 0;
      }
      if (c->o.verbose > 0)
        printf("\nEpoch %d: %s improved to %.5f, saving model to %s\n", epoch + 1, c->monitor, cur,
               path);
      c->best = cur;
      c->has_best = true;
    }
  } else if (c->o.verbose > 0) {
    printf("\nEpoch %d: saving model to %s\n", epoch + 1, path);
  }
  if ((r = tb__make_parent(path)) != 0)
    return tb_errf(&ctx->err, r, "cannot create the folder of %s: %s", path, tb_strerror(r));
  if (c->o.save_weights_only) {
    if (ctx->model == NULL)
      return 0;
    return tb_model_save_weights(ctx->model, path, &ctx->err);
  }
  if ((r = tb_ctx_request_checkpoint(ctx, path)) != 0)
    return tb_errf(&ctx->err, r, "too many checkpoints requested at once");
  return 0;
}

static int mcp_train_batch_end(tb_callback_t *cb, tb_ctx_t *ctx, int batch, tb_logs_t *logs) {
  mcp_t *c = cb->user;
  if (c->o.save_freq <= 0 || ++c->batches_since_save < c->o.save_freq)
    return 0;
  c->batches_since_save = 0;
  return mcp_save(c, ctx, ctx->epoch, batch + 1, logs);
}

static int mcp_epoch_end(tb_callback_t *cb, tb_ctx_t *ctx, int epoch, tb_logs_t *logs) {
  mcp_t *c = cb->user;
  return c->o.save_freq <= 0 ? mcp_save(c, ctx, epoch, 0, logs) : 0;
}

static int mcp_state_save(tb_callback_t *cb, tb_state_t *st) {
  mcp_t *c = cb->user;
  int r;
  if ((r = tb_state_put_i64(st, "has_best", c->has_best)) ||
      (r = tb_state_put_f64(st, "best", c->best)) ||
      (r = tb_state_put_i64(st, "op", c->op_set ? (c->less ? -1 : 1) : 0)))
    return r;
  return tb_state_put_i64(st, "batches_since_save", c->batches_since_save);
}

static int mcp_state_load(tb_callback_t *cb, const tb_state_t *st) {
  mcp_t *c = cb->user;
  int64_t has_best, op, since;
  int r;
  if ((r = tb_state_get_i64(st, "has_best", &has_best)) ||
      (r = tb_state_get_f64(st, "best", &c->best)) || (r = tb_state_get_i64(st, "op", &op)) ||
      (r = tb_state_get_i64(st, "batches_since_save", &since)))
    return r;
  c->has_best = has_best != 0;
  c->op_set = op != 0;
  c->less = op < 0;
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
  if (o->save_freq < 0 || (unsigned)o->mode > TB_MODE_MAX || strlen(monitor) >= TB_LOGS_NAME_MAX ||
      (o->has_initial_value_threshold && !isfinite(o->initial_value_threshold))) {
    tb_errf(err, TB_EINVAL, "%s: save_freq must be >= 0 (0: every epoch), mode auto/min/max", name);
    return NULL;
  }
  /* Check the placeholders now, with every key present, so a typo in the
   * pattern fails before training rather than at the first save. */
  char probe[1024];
  tb_logs_t none = {0};
  tb_err_t perr;
  int pr = tb_format_filepath(o->filepath, 1, 1, &none, probe, sizeof(probe), &perr);
  if (pr != 0 && pr != TB_ENOTFOUND) {
    tb_errf(err, pr, "%s: %s", name, perr.msg);
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
  snprintf(c->monitor, sizeof(c->monitor), "%s", monitor);
  c->o.name = c->name;
  c->o.filepath = c->filepath;
  c->o.monitor = c->monitor;
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

/* Python's repr(float): the shortest text that reads back as the same value. */
static int write_num(FILE *f, double v) {
  if (isnan(v))
    return fprintf(f, "nan");
  if (isinf(v))
    return fprintf(f, v > 0 ? "inf" : "-inf");
  char buf[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (strtod(buf, NULL) == v)
      break;
  }
  if (strchr(buf, '.') == NULL && strchr(buf, 'e') == NULL && strchr(buf, 'n') == NULL)
    strncat(buf, ".0", sizeof(buf) - strlen(buf) - 1);
  return fprintf(f, "%s", buf);
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
     * yet, every key's val_ twin is added so later validation fits ("lr" gets
     * none: it is not a metric). */
    for (int i = 0; i < logs->n; i++)
      snprintf(c->keys[c->n_keys++], sizeof(c->keys[0]), "%s", logs->names[i]);
    qsort(c->keys, (size_t)c->n_keys, sizeof(c->keys[0]), cmp_names);
    bool has_val = false;
    for (int i = 0; i < c->n_keys; i++)
      has_val |= strncmp(c->keys[i], "val_", 4) == 0;
    int n = c->n_keys;
    for (int i = 0; !has_val && i < n; i++)
      if (strcmp(c->keys[i], "lr") != 0) {
        char base[TB_LOGS_NAME_MAX];
        snprintf(base, sizeof(base), "%.47s", c->keys[i]);
        snprintf(c->keys[c->n_keys++], sizeof(c->keys[0]), "val_%.47s", base);
      }
  }
  if (c->f == NULL) {
    if ((r = csv_open(c, ctx, &header)) != 0)
      return r;
  }
  long before = ftell(c->f);
  if (header) {
    fprintf(c->f, "epoch");
    for (int i = 0; i < c->n_keys; i++)
      fprintf(c->f, "%c%s", c->o.separator, c->keys[i]);
    fputc('\n', c->f);
  }
  fprintf(c->f, "%d", epoch);
  for (int i = 0; i < c->n_keys; i++) {
    double v;
    fputc(c->o.separator, c->f);
    if (tb_logs_get(logs, c->keys[i], &v))
      write_num(c->f, v);
    else
      fputs("NA", c->f);
  }
  fputc('\n', c->f);
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
  printf("Batch %d: Invalid loss, terminating training\n", batch);
  if (cb->user != NULL)
    return tb_errf(&ctx->err, TB_ENONFINITE, "loss is %g at epoch %d batch %d", loss, ctx->epoch,
                   batch);
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
