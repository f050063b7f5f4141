/* Job files: JSON -> a validated tb_job_t -> data and a compiled model.
 *
 * Validation is strict: every field is type- and range-checked, unknown
 * fields are refused (a typo such as "epoch" must not silently train with the
 * default), and every message names the field's path. Parsing never touches
 * the disk; tb_job_prepare() does the loading. */
#include "trainbus/job.h"

#include "jobint.h"
#include "jsonget.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Why 1 MiB: a job is a few hundred bytes of settings; anything larger is a
 * mistake (a dataset pasted in), and refusing it keeps memory bounded. */
#define TB_JOB_MAX_BYTES (1 << 20)

/* "classes": true (the default: labels are classes) or false (regression
 * targets), for csv and npy. */
static int parse_classes(parse_t *p, const cJSON *d, const char *path, long *out) {
  const cJSON *cl = cJSON_GetObjectItemCaseSensitive(d, "classes");
  char fp[256];
  *out = 1;
  if (cl == NULL)
    return 0;
  if (!cJSON_IsBool(cl)) {
    tb__jp_join(fp, sizeof(fp), path, "classes");
    return tb__jp_bad(p, fp, "true (labels are classes) or false (regression targets)", cl);
  }
  *out = cJSON_IsTrue(cl);
  return 0;
}

/* A CSV's "header", "label_column", "feature_columns" and "missing". */
static int parse_csv_columns(parse_t *p, const cJSON *d, const char *path, tb_data_spec_t *s) {
  char fp[256];
  const cJSON *h = cJSON_GetObjectItemCaseSensitive(d, "header");
  if (h != NULL) {
    if (!cJSON_IsBool(h)) {
      tb__jp_join(fp, sizeof(fp), path, "header");
      return tb__jp_bad(p, fp, "true or false (leave it out to detect the header)", h);
    }
    s->csv.header = cJSON_IsTrue(h) ? TB_CSV_HEADER_YES : TB_CSV_HEADER_NO;
  }
  const cJSON *lc = cJSON_GetObjectItemCaseSensitive(d, "label_column");
  s->csv.label_col = -1;
  if (cJSON_IsString(lc)) {
    size_t n = strlen(lc->valuestring);
    if (n == 0 || n >= sizeof(s->label_name)) {
      tb__jp_join(fp, sizeof(fp), path, "label_column");
      return tb__jp_bad(p, fp, "a column's index or its name (1 to 255 bytes)", lc);
    }
    memcpy(s->label_name, lc->valuestring, n + 1);
    s->csv.label_name = s->label_name;
  } else if (lc != NULL) {
    long v = -1;
    int r = tb__jp_get_int(p, d, path, "label_column", -(long)TB_DATA_MAX_COLS,
                           (long)TB_DATA_MAX_COLS - 1, false, &v);
    if (r != 0)
      return r;
    s->csv.label_col = (int)v;
  }
  const cJSON *fc = cJSON_GetObjectItemCaseSensitive(d, "feature_columns");
  if (fc != NULL) {
    int n = cJSON_GetArraySize(fc);
    size_t names = 0;
    tb__jp_join(fp, sizeof(fp), path, "feature_columns");
    if (!cJSON_IsArray(fc) || n == 0 || n > TB_DATA_MAX_COLS)
      return tb__jp_bad(p, fp, "a non-empty array of column indices or names", fc);
    int i = 0;
    for (const cJSON *c = fc->child; c != NULL; c = c->next, i++) {
      char ep[300];
      snprintf(ep, sizeof(ep), "%s[%d]", fp, i);
      if (cJSON_IsString(c) && c->valuestring[0] != '\0' && strlen(c->valuestring) < 1024)
        names += strlen(c->valuestring) + 1;
      else if (!(cJSON_IsNumber(c) && c->valuedouble == floor(c->valuedouble) &&
                 fabs(c->valuedouble) <= (double)TB_DATA_MAX_COLS))
        return tb__jp_bad(p, ep, "a column's index or its name (1 to 1023 bytes)", c);
    }
    s->columns = calloc((size_t)n, sizeof(tb_csv_col_t));
    s->column_names = malloc(names + 1);
    if (s->columns == NULL || s->column_names == NULL)
      return tb_errf(p->err, TB_ENOMEM, "out of memory");
    char *at = s->column_names;
    i = 0;
    for (const cJSON *c = fc->child; c != NULL; c = c->next, i++) {
      if (cJSON_IsString(c)) {
        size_t k = strlen(c->valuestring) + 1;
        memcpy(at, c->valuestring, k);
        s->columns[i].name = at;
        at += k;
      } else {
        s->columns[i].index = (int)c->valuedouble;
      }
    }
    s->csv.features = s->columns;
    s->csv.n_features = n;
  }
  /* A name is looked up in the header: without one, the loader would
   * refuse the job only once it ran. */
  if (s->csv.header == TB_CSV_HEADER_NO) {
    const char *named = s->csv.label_name != NULL ? "label_column" : NULL;
    for (int i = 0; named == NULL && i < s->csv.n_features; i++)
      if (s->columns[i].name != NULL)
        named = "feature_columns";
    if (named != NULL) {
      tb__jp_join(fp, sizeof(fp), path, named);
      return tb_errf(p->err, TB_EINVAL, "%s: %s: names a column, but header is false", p->origin,
                     fp);
    }
  }
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(d, "missing");
  if (m != NULL) {
    const cJSON *fill = cJSON_GetObjectItemCaseSensitive(m, "fill");
    if (cJSON_IsString(m) && strcmp(m->valuestring, "error") == 0) {
      s->csv.missing = TB_CSV_MISSING_ERROR;
    } else if (cJSON_IsString(m) && strcmp(m->valuestring, "drop") == 0) {
      s->csv.missing = TB_CSV_MISSING_DROP;
    } else if (cJSON_IsObject(m) && cJSON_GetArraySize(m) == 1 && cJSON_IsNumber(fill) &&
               fabs(fill->valuedouble) <= 3.4e38) {
      s->csv.missing = TB_CSV_MISSING_FILL;
      s->csv.fill = fill->valuedouble;
    } else {
      tb__jp_join(fp, sizeof(fp), path, "missing");
      return tb__jp_bad(p, fp, "\"error\", \"drop\" or {\"fill\": a number}", m);
    }
  }
  return 0;
}

static int parse_data(parse_t *p, const cJSON *d, const char *path, uint64_t seed,
                      tb_data_spec_t *s, bool main_set, tb_job_t *job) {
  int r;
  char src[32] = "";
  if (!cJSON_IsObject(d))
    return tb__jp_bad(p, path, "an object", d);
  static const char *const keys[] = {"source",
                                     "n_per_class",
                                     "noise",
                                     "n",
                                     "classes",
                                     "features",
                                     "std",
                                     "seed",
                                     "path",
                                     "delimiter",
                                     "skip_rows",
                                     "header",
                                     "label_column",
                                     "feature_columns",
                                     "missing",
                                     "images",
                                     "labels",
                                     "x",
                                     "y",
                                     "scale",
                                     "validation",
                                     "test",
                                     NULL};
  if ((r = tb__jp_only_keys(p, d, path, keys)) != 0)
    return r;
  if ((r = tb__jp_get_str(p, d, path, "source", src, sizeof(src), true)) != 0)
    return r;
  snprintf(s->where, sizeof(s->where), "%s", path);
  s->seed = seed;
  long v;
  char fp[256];
  if (strcmp(src, "seed") == 0) {
    s->source = TB_SRC_SEED;
  } else if (strcmp(src, "spirals") == 0) {
    s->source = TB_SRC_SPIRALS;
    v = 500;
    if ((r = tb__jp_get_int(p, d, path, "n_per_class", 1, 10000000, false, &v)) != 0)
      return r;
    s->n_per_class = (int)v;
    s->noise = 0.2;
    if ((r = tb__jp_get_num(p, d, path, "noise", 0, 100, false, "a number in [0, 100]",
                            &s->noise)) != 0)
      return r;
  } else if (strcmp(src, "blobs") == 0) {
    s->source = TB_SRC_BLOBS;
    long n = 600, k = 3, f = 2;
    if ((r = tb__jp_get_int(p, d, path, "n", 1, 100000000, false, &n)) != 0 ||
        (r = tb__jp_get_int(p, d, path, "classes", 2, 100000, false, &k)) != 0 ||
        (r = tb__jp_get_int(p, d, path, "features", 1, 100000, false, &f)) != 0)
      return r;
    /* tb_gen_blobs's bound: a data set (and the centers) indexable by int. */
    if ((double)n * (double)f > INT32_MAX || (double)k * (double)f > INT32_MAX)
      return tb_errf(p->err, TB_EINVAL,
                     "%s: %s: %ld %s of %ld features are more than the %d values a data set may "
                     "hold",
                     p->origin, path, n * f > k * f ? n : k, n * f > k * f ? "rows" : "centers", f,
                     INT32_MAX);
    s->n = (int)n;
    s->classes = (int)k;
    s->features = (int)f;
    s->std = 1.0;
    if ((r = tb__jp_get_num(p, d, path, "std", 0, 1e6, true, "a positive number", &s->std)) != 0)
      return r;
  } else if (strcmp(src, "csv") == 0) {
    s->source = TB_SRC_CSV;
    if ((r = tb__jp_get_path(p, d, path, "path", s->path, sizeof(s->path), true)) != 0)
      return r;
    char delim[8] = ",";
    if ((r = tb__jp_get_str(p, d, path, "delimiter", delim, sizeof(delim), false)) != 0)
      return r;
    /* The loader's rule (tb_csv_opts_t): a line break or a quote would end
     * or open a field, never separate one. */
    if (strlen(delim) != 1 || strchr("\n\r\"", delim[0]) != NULL) {
      tb__jp_join(fp, sizeof(fp), path, "delimiter");
      return tb__jp_bad(p, fp, "a single character, not a line break or a quote",
                        cJSON_GetObjectItemCaseSensitive(d, "delimiter"));
    }
    s->csv.delimiter = delim[0];
    v = 0;
    if ((r = tb__jp_get_int(p, d, path, "skip_rows", 0, INT32_MAX, false, &v)) != 0)
      return r;
    s->csv.skip_rows = (int)v;
    if ((r = parse_csv_columns(p, d, path, s)) != 0 || (r = parse_classes(p, d, path, &v)) != 0)
      return r;
    s->csv.classes = (int)v;
  } else if (strcmp(src, "npy") == 0) {
    s->source = TB_SRC_NPY;
    if ((r = tb__jp_get_path(p, d, path, "x", s->x, sizeof(s->x), true)) != 0 ||
        (r = tb__jp_get_path(p, d, path, "y", s->y, sizeof(s->y), true)) != 0 ||
        (r = parse_classes(p, d, path, &v)) != 0)
      return r;
    s->npy.classes = (int)v;
  } else if (strcmp(src, "idx") == 0) {
    s->source = TB_SRC_IDX;
    if ((r = tb__jp_get_path(p, d, path, "images", s->images, sizeof(s->images), true)) != 0 ||
        (r = tb__jp_get_path(p, d, path, "labels", s->labels, sizeof(s->labels), true)) != 0)
      return r;
  } else {
    tb__jp_join(fp, sizeof(fp), path, "source");
    return tb__jp_bad(p, fp, "one of \"seed\", \"spirals\", \"blobs\", \"csv\", \"idx\", \"npy\"",
                      cJSON_GetObjectItemCaseSensitive(d, "source"));
  }
  /* Options of one source given to another are mistakes, not defaults. */
  static const struct {
    const char *key;
    int source;
  } only[] = {{"n_per_class", TB_SRC_SPIRALS},
              {"noise", TB_SRC_SPIRALS},
              {"n", TB_SRC_BLOBS},
              {"features", TB_SRC_BLOBS},
              {"std", TB_SRC_BLOBS},
              {"path", TB_SRC_CSV},
              {"delimiter", TB_SRC_CSV},
              {"skip_rows", TB_SRC_CSV},
              {"header", TB_SRC_CSV},
              {"label_column", TB_SRC_CSV},
              {"feature_columns", TB_SRC_CSV},
              {"missing", TB_SRC_CSV},
              {"images", TB_SRC_IDX},
              {"labels", TB_SRC_IDX},
              {"x", TB_SRC_NPY},
              {"y", TB_SRC_NPY}};
  for (size_t i = 0; i < sizeof(only) / sizeof(only[0]); i++) {
    if (cJSON_GetObjectItemCaseSensitive(d, only[i].key) != NULL &&
        (int)s->source != only[i].source) {
      tb__jp_join(fp, sizeof(fp), path, only[i].key);
      return tb_errf(p->err, TB_EINVAL, "%s: %s: not an option of source \"%s\"", p->origin, fp,
                     src);
    }
  }
  if (cJSON_GetObjectItemCaseSensitive(d, "classes") != NULL && s->source != TB_SRC_BLOBS &&
      s->source != TB_SRC_CSV && s->source != TB_SRC_NPY) {
    tb__jp_join(fp, sizeof(fp), path, "classes");
    return tb_errf(p->err, TB_EINVAL, "%s: %s: not an option of source \"%s\"", p->origin, fp, src);
  }
  v = (long)s->seed;
  const cJSON *sd = cJSON_GetObjectItemCaseSensitive(d, "seed");
  if (sd != NULL) {
    if ((r = tb__jp_get_int(p, d, path, "seed", 0, INT32_MAX, false, &v)) != 0)
      return r;
    s->seed = (uint64_t)v;
  }
  /* Options only the main data object may carry. */
  const char *main_only[] = {"scale", "validation", "test"};
  for (int i = 0; i < 3; i++) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(d, main_only[i]);
    if (x == NULL)
      continue;
    tb__jp_join(fp, sizeof(fp), path, main_only[i]);
    if (!main_set)
      return tb_errf(p->err, TB_EINVAL, "%s: %s: only allowed in the top-level data object",
                     p->origin, fp);
    if (i == 0) {
      if (cJSON_IsString(x) && strcmp(x->valuestring, "none") == 0)
        job->scale = TB_SCALE_NONE;
      else if (cJSON_IsString(x) && strcmp(x->valuestring, "minmax") == 0)
        job->scale = TB_SCALE_MINMAX;
      else if (cJSON_IsString(x) && strcmp(x->valuestring, "standard") == 0)
        job->scale = TB_SCALE_STANDARD;
      else if (cJSON_IsObject(x) && cJSON_GetArraySize(x) == 1 &&
               cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(x, "divide")) &&
               isfinite(cJSON_GetObjectItemCaseSensitive(x, "divide")->valuedouble) &&
               cJSON_GetObjectItemCaseSensitive(x, "divide")->valuedouble != 0.0) {
        job->scale = TB_SCALE_DIVIDE;
        job->scale_divisor = cJSON_GetObjectItemCaseSensitive(x, "divide")->valuedouble;
      } else {
        return tb__jp_bad(
            p, fp, "\"none\", \"minmax\", \"standard\" or {\"divide\": a non-zero number}", x);
      }
    } else {
      tb_data_spec_t *sub = i == 1 ? &job->val_spec : &job->test_spec;
      if ((r = parse_data(p, x, fp, seed + (uint64_t)i, sub, false, job)) != 0)
        return r;
    }
  }
  return 0;
}

static int parse_layers(parse_t *p, const cJSON *model, tb_job_t *job) {
  int r;
  static const char *const mkeys[] = {"layers", NULL};
  if (!cJSON_IsObject(model))
    return tb__jp_bad(p, "model", "an object with a \"layers\" array", model);
  if ((r = tb__jp_only_keys(p, model, "model", mkeys)) != 0)
    return r;
  const cJSON *layers = cJSON_GetObjectItemCaseSensitive(model, "layers");
  if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) == 0)
    return tb__jp_bad(p, "model.layers", "a non-empty array of layers", layers);
  int n = cJSON_GetArraySize(layers);
  if (n > (int)(sizeof(job->layers) / sizeof(job->layers[0])))
    return tb_errf(p->err, TB_EINVAL, "%s: model.layers: at most %zu layers, got %d", p->origin,
                   sizeof(job->layers) / sizeof(job->layers[0]), n);
  int i = 0;
  for (const cJSON *l = layers->child; l != NULL; l = l->next, i++) {
    char path[64], type[32] = "", act[32] = "linear";
    snprintf(path, sizeof(path), "model.layers[%d]", i);
    struct tb_job_layer_s *jl = &job->layers[i];
    if (!cJSON_IsObject(l))
      return tb__jp_bad(p, path, "a layer object", l);
    static const char *const lkeys[] = {"type", "units", "activation", "rate", NULL};
    if ((r = tb__jp_only_keys(p, l, path, lkeys)) != 0 ||
        (r = tb__jp_get_str(p, l, path, "type", type, sizeof(type), true)) != 0)
      return r;
    if ((r = tb__jp_get_str(p, l, path, "activation", act, sizeof(act), false)) != 0)
      return r;
    int a = tb_act_from_name(act);
    if (a < 0) {
      char fp[96];
      snprintf(fp, sizeof(fp), "%s.activation", path);
      return tb__jp_bad(p, fp, "one of linear, relu, leaky_relu, sigmoid, tanh, softmax",
                        cJSON_GetObjectItemCaseSensitive(l, "activation"));
    }
    jl->act = (tb_act_t)a;
    if (strcmp(type, "dense") == 0) {
      long units = 0;
      jl->type = TB_JOB_DENSE;
      if ((r = tb__jp_get_int(p, l, path, "units", 1, 1 << 20, true, &units)) != 0) {
        if (cJSON_GetObjectItemCaseSensitive(l, "units") != NULL) {
          char fp[96];
          snprintf(fp, sizeof(fp), "%s.units", path);
          return tb__jp_bad(p, fp, "a positive integer",
                            cJSON_GetObjectItemCaseSensitive(l, "units"));
        }
        return r;
      }
      jl->units = (int)units;
    } else if (strcmp(type, "dropout") == 0) {
      double rate = -1;
      jl->type = TB_JOB_DROPOUT;
      if (cJSON_GetObjectItemCaseSensitive(l, "rate") == NULL)
        return tb_errf(p->err, TB_EINVAL, "%s: %s.rate: missing (required)", p->origin, path);
      if ((r = tb__jp_get_num(p, l, path, "rate", 0, 0.999999, false, "a number in [0, 1)",
                              &rate)) != 0)
        return r;
      jl->rate = (float)rate;
    } else if (strcmp(type, "activation") == 0) {
      jl->type = TB_JOB_ACTIVATION;
      if (cJSON_GetObjectItemCaseSensitive(l, "activation") == NULL)
        return tb_errf(p->err, TB_EINVAL, "%s: %s.activation: missing (required)", p->origin, path);
    } else {
      char fp[96];
      snprintf(fp, sizeof(fp), "%s.type", path);
      return tb__jp_bad(p, fp, "\"dense\", \"dropout\" or \"activation\"",
                        cJSON_GetObjectItemCaseSensitive(l, "type"));
    }
    if (jl->type != TB_JOB_DENSE && cJSON_GetObjectItemCaseSensitive(l, "units") != NULL)
      return tb_errf(p->err, TB_EINVAL, "%s: %s.units: only dense layers have units", p->origin,
                     path);
    if (jl->type != TB_JOB_DROPOUT && cJSON_GetObjectItemCaseSensitive(l, "rate") != NULL)
      return tb_errf(p->err, TB_EINVAL, "%s: %s.rate: only dropout layers have a rate", p->origin,
                     path);
  }
  job->n_layers = n;
  if (job->layers[n - 1].type == TB_JOB_DROPOUT)
    return tb_errf(p->err, TB_EINVAL, "%s: model.layers[%d]: the last layer cannot be dropout",
                   p->origin, n - 1);
  return 0;
}

static int parse_optimizer(parse_t *p, const cJSON *o, tb_optim_opts_t *opt) {
  int r;
  if (o == NULL) {
    tb_optim_defaults(opt, TB_OPT_ADAM);
    return 0;
  }
  const char *name = cJSON_IsString(o) ? o->valuestring
                     : cJSON_IsObject(o) && cJSON_IsString(cJSON_GetObjectItem(o, "name"))
                         ? cJSON_GetObjectItem(o, "name")->valuestring
                         : NULL;
  int kind = tb_optim_from_name(name);
  if (kind < 0)
    return tb__jp_bad(p, cJSON_IsObject(o) ? "optimizer.name" : "optimizer",
                      "one of \"sgd\", \"adam\", \"rmsprop\"",
                      cJSON_IsObject(o) ? cJSON_GetObjectItem(o, "name") : o);
  tb_optim_defaults(opt, (tb_optim_kind_t)kind);
  if (cJSON_IsString(o))
    return 0;
  static const char *const keys[] = {"name",   "learning_rate", "momentum", "nesterov", "beta_1",
                                     "beta_2", "epsilon",       "rho",      NULL};
  if ((r = tb__jp_only_keys(p, o, "optimizer", keys)) != 0)
    return r;
  const char *pos = "a finite positive number";
  if ((r = tb__jp_get_num(p, o, "optimizer", "learning_rate", 0, 1e6, true, pos, &opt->lr)) != 0 ||
      (r = tb__jp_get_num(p, o, "optimizer", "momentum", 0, 1, false, "a number in [0, 1]",
                          &opt->momentum)) != 0 ||
      (r = tb__jp_get_bool(p, o, "optimizer", "nesterov", &opt->nesterov)) != 0 ||
      (r = tb__jp_get_num(p, o, "optimizer", "beta_1", 0, 0.999999999, false, "a number in [0, 1)",
                          &opt->beta_1)) != 0 ||
      (r = tb__jp_get_num(p, o, "optimizer", "beta_2", 0, 0.999999999, false, "a number in [0, 1)",
                          &opt->beta_2)) != 0 ||
      (r = tb__jp_get_num(p, o, "optimizer", "epsilon", 0, 1, true, "a number in (0, 1]",
                          &opt->epsilon)) != 0 ||
      (r = tb__jp_get_num(p, o, "optimizer", "rho", 0, 0.999999999, false, "a number in [0, 1)",
                          &opt->rho)) != 0)
    return r;
  static const char *const only[][2] = {{"momentum", "sgd rmsprop"}, {"nesterov", "sgd"},
                                        {"beta_1", "adam"},          {"beta_2", "adam"},
                                        {"epsilon", "adam rmsprop"}, {"rho", "rmsprop"}};
  for (size_t i = 0; i < sizeof(only) / sizeof(only[0]); i++)
    if (cJSON_GetObjectItemCaseSensitive(o, only[i][0]) != NULL && strstr(only[i][1], name) == NULL)
      return tb_errf(p->err, TB_EINVAL, "%s: optimizer.%s: not a parameter of %s (only %s)",
                     p->origin, only[i][0], name, only[i][1]);
  return 0;
}

static int parse_loss(parse_t *p, const cJSON *root, tb_compile_opts_t *c) {
  const cJSON *l = cJSON_GetObjectItemCaseSensitive(root, "loss");
  int r;
  if (l == NULL)
    return tb_errf(p->err, TB_EINVAL, "%s: loss: missing (required)", p->origin);
  const cJSON *name = cJSON_IsObject(l) ? cJSON_GetObjectItemCaseSensitive(l, "name") : l;
  int kind = cJSON_IsString(name) ? tb_loss_from_name(name->valuestring) : -1;
  if (kind < 0)
    return tb__jp_bad(p, cJSON_IsObject(l) ? "loss.name" : "loss",
                      "one of binary_crossentropy, categorical_crossentropy, "
                      "sparse_categorical_crossentropy, mse, mae",
                      name);
  c->loss = (tb_loss_kind_t)kind;
  if (cJSON_IsObject(l)) {
    static const char *const keys[] = {"name", "from_logits", NULL};
    if ((r = tb__jp_only_keys(p, l, "loss", keys)) != 0 ||
        (r = tb__jp_get_bool(p, l, "loss", "from_logits", &c->from_logits)) != 0)
      return r;
    if (c->from_logits && kind >= TB_LOSS_MSE)
      return tb_errf(p->err, TB_EINVAL, "%s: loss.from_logits: only crossentropies take logits",
                     p->origin);
  }
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "metrics");
  if (m != NULL) {
    if (!cJSON_IsArray(m))
      return tb__jp_bad(p, "metrics", "an array of metric names", m);
    /* Keras names each metric after the string written ("acc" -> acc and
     * val_acc in the logs). */
    int i = 0;
    for (const cJSON *it = m->child; it != NULL; it = it->next, i++) {
      char path[32];
      snprintf(path, sizeof(path), "metrics[%d]", i);
      unsigned bit = cJSON_IsString(it) ? tb_metric_from_name(it->valuestring) : 0;
      if (bit == 0 || strlen(it->valuestring) > TB_LOGS_NAME_MAX - 5)
        return tb__jp_bad(p, path,
                          "\"accuracy\" or \"acc\" (any case), \"mse\" (\"MSE\", "
                          "\"mean_squared_error\", \"MeanSquaredError\") or \"mae\" (likewise)",
                          it);
      if (i >= TB_METRICS_MAX)
        return tb_errf(p->err, TB_EINVAL, "%s: metrics: at most %d", p->origin, TB_METRICS_MAX);
      /* tb_model_compile's rule, decided here so that such a job is refused
       * before it is queued rather than when it starts. */
      if (c->loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY && (bit & ~TB_METRIC_ACCURACY))
        return tb_errf(p->err, TB_EINVAL,
                       "%s: %s: mse and mae need dense targets, not the sparse labels of "
                       "sparse_categorical_crossentropy",
                       p->origin, path);
      c->metrics |= bit;
      snprintf(c->metric_names[i], sizeof(c->metric_names[i]), "%s", it->valuestring);
      c->n_metric_names = i + 1;
    }
  }
  /* As tb_model_compile: a crossentropy over classes needs two output units
   * at least. The last Dense layer decides them (without one, the data's
   * width does, known only once loaded). */
  int k = p->job != NULL ? tb__job_n_outputs(p->job) : 0;
  if ((c->loss == TB_LOSS_CATEGORICAL_CROSSENTROPY ||
       c->loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY) &&
      k == 1)
    return tb_errf(p->err, TB_EINVAL,
                   "%s: loss: %s needs at least 2 output units, the last dense layer has 1",
                   p->origin, tb_loss_name(c->loss));
  return 0;
}

int tb__job_parse_callbacks(parse_t *p, const cJSON *arr, tb_job_t *job);

/* A host as mpirun's --host takes it: a name or address, optionally
 * ":slots". Letters, digits and . - _ : only, so that it can never be read
 * as an option or by a shell. */
static bool host_ok(const char *h) {
  if (h[0] == '\0' || h[0] == '-')
    return false;
  for (const char *c = h; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '.' || *c == '-' || *c == '_' || *c == ':'))
      return false;
  return true;
}

/* "distributed": {"ranks": N, "hosts": ["a", "b:2"], "hostfile": PATH}:
 * how trainbusd launches the job under mpirun (docs/JOB.md). */
static int parse_distributed(parse_t *p, const cJSON *d, tb_job_t *job) {
  static const char *const keys[] = {"ranks", "hosts", "hostfile", NULL};
  long v = 0;
  int r;
  if (!cJSON_IsObject(d))
    return tb__jp_bad(p, "distributed", "an object such as {\"ranks\": 2}", d);
  if ((r = tb__jp_only_keys(p, d, "distributed", keys)) != 0 ||
      (r = tb__jp_get_int(p, d, "distributed", "ranks", 1, TB_JOB_MAX_RANKS, true, &v)) != 0)
    return r;
  job->dist_ranks = (int)v;
  const cJSON *hosts = cJSON_GetObjectItemCaseSensitive(d, "hosts");
  if (hosts != NULL) {
    if (!cJSON_IsArray(hosts) || cJSON_GetArraySize(hosts) < 1 || cJSON_GetArraySize(hosts) > 64)
      return tb__jp_bad(p, "distributed.hosts", "an array of 1 to 64 host names", hosts);
    size_t used = 0;
    int i = 0;
    for (const cJSON *h = hosts->child; h != NULL; h = h->next, i++) {
      char at[48];
      snprintf(at, sizeof(at), "distributed.hosts[%d]", i);
      if (!cJSON_IsString(h) || !host_ok(h->valuestring) || strlen(h->valuestring) > 255)
        return tb__jp_bad(p, at,
                          "a host name, optionally with \":slots\" (letters, digits, . - _ :)", h);
      size_t n = strlen(h->valuestring);
      if (used + n + 2 > sizeof(job->dist_hosts))
        return tb_errf(p->err, TB_ERANGE, "%s: distributed.hosts: longer than %zu characters",
                       p->origin, sizeof(job->dist_hosts) - 1);
      used += (size_t)snprintf(job->dist_hosts + used, sizeof(job->dist_hosts) - used, "%s%s",
                               used ? "," : "", h->valuestring);
    }
  }
  if ((r = tb__jp_get_path(p, d, "distributed", "hostfile", job->dist_hostfile,
                           sizeof(job->dist_hostfile), false)) != 0)
    return r;
  if (job->dist_hosts[0] != '\0' && job->dist_hostfile[0] != '\0')
    return tb_errf(p->err, TB_EINVAL, "%s: distributed: give hosts or hostfile, not both",
                   p->origin);
  return 0;
}

/* FNV-1a 64 of the compact document without the fields that may change
 * between a run and its resumption. */
static void fingerprint(cJSON *root, char out[17]) {
  /* "distributed": a run resumes on another number of ranks (reduce.h:
   * results depend on it only through summation order). */
  static const char *const skip[] = {"epochs", "verbose", "checkpoint_dir", "distributed"};
  cJSON *copy = cJSON_Duplicate(root, true);
  uint64_t h = 1469598103934665603ULL;
  if (copy != NULL) {
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
      cJSON_DeleteItemFromObjectCaseSensitive(copy, skip[i]);
    char *text = cJSON_PrintUnformatted(copy);
    for (const char *c = text; c != NULL && *c; c++) {
      h ^= (unsigned char)*c;
      h *= 1099511628211ULL;
    }
    cJSON_free(text);
    cJSON_Delete(copy);
  }
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

int tb_job_parse(const char *text, size_t len, const char *origin, const char *base_dir,
                 tb_job_t **out, tb_err_t *err) {
  parse_t p = {origin ? origin : "job", base_dir, err, NULL};
  tb_job_t *job = NULL;
  cJSON *root = NULL;
  int r = 0;
  long v;
  *out = NULL;
  if (len > TB_JOB_MAX_BYTES)
    return tb_errf(err, TB_ERANGE, "%s: %zu bytes; a job is at most %d bytes", p.origin, len,
                   TB_JOB_MAX_BYTES);
  const char *end = NULL;
  root = cJSON_ParseWithLengthOpts(text, len, &end, false);
  if (root == NULL) {
    size_t at = end != NULL && end >= text ? (size_t)(end - text) : 0;
    int line = 1, col = 1;
    for (size_t i = 0; i < at && i < len; i++) {
      if (text[i] == '\n') {
        line++;
        col = 1;
      } else {
        col++;
      }
    }
    return tb_errf(err, TB_EFORMAT, "%s:%d:%d: not valid JSON", p.origin, line, col);
  }
  for (const char *q = end; q != NULL && q < text + len; q++) {
    if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
      r = tb_errf(err, TB_EFORMAT, "%s: trailing characters after the JSON object", p.origin);
      goto fail;
    }
  }
  if (!cJSON_IsObject(root)) {
    r = tb__jp_bad(&p, "(top level)", "an object", root);
    goto fail;
  }
  if ((job = calloc(1, sizeof(*job))) == NULL) {
    r = tb_errf(err, TB_ENOMEM, "out of memory");
    goto fail;
  }
  p.job = job;
  snprintf(job->origin, sizeof(job->origin), "%s", p.origin);
  static const char *const keys[] = {"name",
                                     "seed",
                                     "threads",
                                     "data",
                                     "model",
                                     "loss",
                                     "metrics",
                                     "optimizer",
                                     "epochs",
                                     "batch_size",
                                     "validation_split",
                                     "validation_freq",
                                     "shuffle",
                                     "verbose",
                                     "callbacks",
                                     "checkpoint_dir",
                                     "checkpoint_every",
                                     "distributed",
                                     NULL};
  if ((r = tb__jp_only_keys(&p, root, "", keys)) != 0)
    goto fail;
  snprintf(job->name, sizeof(job->name), "job");
  if ((r = tb__jp_get_str(&p, root, "", "name", job->name, sizeof(job->name), false)) != 0)
    goto fail;
  v = 42;
  if ((r = tb__jp_get_int(&p, root, "", "seed", 0, INT32_MAX, false, &v)) != 0)
    goto fail;
  job->seed = (uint64_t)v;
  v = 0;
  if ((r = tb__jp_get_int(&p, root, "", "threads", 0, 256, false, &v)) != 0)
    goto fail;
  job->threads = (int)v;

  const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
  if (data == NULL) {
    r = tb_errf(err, TB_EINVAL, "%s: data: missing (required)", p.origin);
    goto fail;
  }
  if ((r = parse_data(&p, data, "data", job->seed, &job->train_spec, true, job)) != 0)
    goto fail;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (model == NULL) {
    r = tb_errf(err, TB_EINVAL, "%s: model: missing (required)", p.origin);
    goto fail;
  }
  if ((r = parse_layers(&p, model, job)) != 0 || (r = parse_loss(&p, root, &job->compile)) != 0 ||
      (r = parse_optimizer(&p, cJSON_GetObjectItemCaseSensitive(root, "optimizer"),
                           &job->compile.optim)) != 0)
    goto fail;

  tb_fit_opts_defaults(&job->fit);
  v = 1;
  if ((r = tb__jp_get_int(&p, root, "", "epochs", 1, 1000000, false, &v)) != 0)
    goto fail;
  job->fit.epochs = (int)v;
  v = 32;
  if ((r = tb__jp_get_int(&p, root, "", "batch_size", 1, 1 << 20, false, &v)) != 0)
    goto fail;
  job->fit.batch_size = (int)v;
  v = 1;
  if ((r = tb__jp_get_int(&p, root, "", "validation_freq", 1, 1000000, false, &v)) != 0)
    goto fail;
  job->fit.validation_freq = (int)v;
  v = 1;
  if ((r = tb__jp_get_int(&p, root, "", "verbose", 0, 2, false, &v)) != 0)
    goto fail;
  job->fit.verbose = (int)v;
  if ((r = tb__jp_get_bool(&p, root, "", "shuffle", &job->fit.shuffle)) != 0)
    goto fail;
  const cJSON *vs = cJSON_GetObjectItemCaseSensitive(root, "validation_split");
  if (vs != NULL && (!cJSON_IsNumber(vs) || !(vs->valuedouble >= 0.0 && vs->valuedouble < 1.0))) {
    r = tb__jp_bad(&p, "validation_split", "a number in [0, 1)", vs);
    goto fail;
  }
  if (vs != NULL)
    job->fit.validation_split = vs->valuedouble;
  if (job->fit.validation_split > 0.0 && job->val_spec.source != TB_SRC_NONE) {
    r = tb_errf(err, TB_EINVAL, "%s: validation_split: give it or data.validation, not both",
                p.origin);
    goto fail;
  }
  const cJSON *cbs = cJSON_GetObjectItemCaseSensitive(root, "callbacks");
  if (cbs != NULL && (r = tb__job_parse_callbacks(&p, cbs, job)) != 0)
    goto fail;
  if ((r = tb__jp_get_out_path(&p, root, "", "checkpoint_dir", job->checkpoint_dir,
                               sizeof(job->checkpoint_dir), false)) != 0)
    goto fail;
  v = 0;
  if ((r = tb__jp_get_int(&p, root, "", "checkpoint_every", 0, INT32_MAX, false, &v)) != 0)
    goto fail;
  job->fit.checkpoint_every = (int)v;
  if (v > 0 && job->checkpoint_dir[0] == '\0') {
    r = tb_errf(err, TB_EINVAL, "%s: checkpoint_every: needs checkpoint_dir", p.origin);
    goto fail;
  }
  if (job->checkpoint_dir[0] != '\0')
    job->fit.checkpoint_dir = job->checkpoint_dir;
  const cJSON *dist = cJSON_GetObjectItemCaseSensitive(root, "distributed");
  if (dist != NULL && (r = parse_distributed(&p, dist, job)) != 0)
    goto fail;
  fingerprint(root, job->id);
  job->fit.job_id = job->id;
  cJSON_Delete(root);
  *out = job;
  return 0;
fail:
  cJSON_Delete(root);
  tb_job_free(job);
  return r ? r : TB_EINVAL;
}

int tb_job_load(const char *path, tb_job_t **out, tb_err_t *err) {
  return tb_job_load_from(path, NULL, out, err);
}

int tb_job_load_from(const char *path, const char *base_dir, tb_job_t **out, tb_err_t *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return tb_errf(err, -errno, "%s: cannot open: %s", path, strerror(errno));
  char *buf = malloc(TB_JOB_MAX_BYTES + 1);
  if (buf == NULL) {
    fclose(f);
    return tb_errf(err, TB_ENOMEM, "out of memory");
  }
  size_t n = fread(buf, 1, TB_JOB_MAX_BYTES + 1, f);
  int bad_read = ferror(f);
  fclose(f);
  if (bad_read) {
    free(buf);
    return tb_errf(err, TB_EIO, "%s: read error", path);
  }
  char dir[1024];
  snprintf(dir, sizeof(dir), "%s", base_dir != NULL ? base_dir : path);
  char *slash = base_dir != NULL ? NULL : strrchr(dir, '/');
  if (slash != NULL)
    *slash = '\0';
  else if (base_dir == NULL)
    snprintf(dir, sizeof(dir), ".");
  int r = tb_job_parse(buf, n, path, dir, out, err);
  free(buf);
  return r;
}

/* The limits a set's files are read with: none without a policy; else the
 * policy's, capped at the bytes measured when the job was checked. */
static const tb_data_limits_t *set_limits(const tb_job_t *job, const tb_data_spec_t *s) {
  return job->policy != NULL && s->measured ? &s->limits
         : job->policy != NULL              ? &job->policy->data
                                            : NULL;
}

static int load_set(const tb_job_t *job, const tb_data_spec_t *s, tb_dataset_t **out,
                    tb_err_t *err) {
  tb_csv_opts_t csv = s->csv;
  tb_npy_opts_t npy = s->npy;
  csv.limits = npy.limits = set_limits(job, s);
  /* Validation and test files name their classes as the training file
   * does: its names map theirs to the same indices. */
  if (s != &job->train_spec && job->train != NULL)
    csv.class_names = job->train->classes;
  switch (s->source) {
  case TB_SRC_SEED:
    return tb_gen_seed(out);
  case TB_SRC_SPIRALS:
    return tb_gen_spirals(s->n_per_class, s->noise, s->seed, out);
  case TB_SRC_BLOBS:
    return tb_gen_blobs(s->n, s->classes, s->features, s->std, s->seed, out);
  case TB_SRC_CSV:
    return tb_csv_load(s->path, &csv, out, err);
  case TB_SRC_IDX:
    return tb_idx_load_limited(s->images, s->labels, csv.limits, out, err);
  case TB_SRC_NPY:
    return tb_npy_load(s->x, s->y, &npy, out, err);
  default:
    *out = NULL;
    return 0;
  }
}

/* Class labels against the model, before anything is widened or trained:
 * under a crossentropy over classes every label must be a class index of the
 * last layer (categorical_crossentropy would otherwise widen the labels to
 * as many columns as the largest label asks, up to 2^24). The value is shown
 * only when the job's files may be quoted. */
static int check_labels(const tb_job_t *job, tb_dataset_t *const *sets, const char *const *names,
                        tb_err_t *err) {
  tb_loss_kind_t loss = job->compile.loss;
  if (loss != TB_LOSS_CATEGORICAL_CROSSENTROPY && loss != TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY)
    return 0;
  int k = tb__job_n_outputs(job);
  bool redact = job->policy != NULL && job->policy->data.redact;
  for (int i = 0; i < 3; i++) {
    const tb_dataset_t *d = sets[i];
    /* Regression targets under categorical_crossentropy fail later, on
     * their width. */
    if (d == NULL || d->n_outputs != 1 ||
        (loss == TB_LOSS_CATEGORICAL_CROSSENTROPY && d->n_classes == 0))
      continue;
    if (d->n_classes > k)
      return tb_errf(err, TB_ESHAPE, "job %s: %s has %d classes but the last layer has %d units",
                     job->name, names[i], d->n_classes, k);
    for (int row = 0; row < d->n; row++) {
      float v = d->y[row];
      if (v >= 0.0f && v < (float)k && v == floorf(v))
        continue;
      if (redact)
        return tb_errf(err, TB_ERANGE,
                       "job %s: %s: row %d: the label is not a class index in [0, %d)", job->name,
                       names[i], row, k);
      return tb_errf(err, TB_ERANGE, "job %s: %s: row %d: label %g is not a class index in [0, %d)",
                     job->name, names[i], row, (double)v, k);
    }
  }
  return 0;
}

int tb_job_prepare(tb_job_t *job, tb_err_t *err) {
  int r;
  if (job->model != NULL)
    return tb_errf(err, TB_ESTATE, "job %s: already prepared", job->name);
  if (job->threads > 0)
    tb_set_num_threads(job->threads);
  if ((r = load_set(job, &job->train_spec, &job->train, err)) != 0 ||
      (r = load_set(job, &job->val_spec, &job->val, err)) != 0 ||
      (r = load_set(job, &job->test_spec, &job->test, err)) != 0) {
    if (err != NULL && err->msg[0] == '\0')
      tb_errf(err, r, "job %s: cannot make its data: %s", job->name, tb_strerror(r));
    return r;
  }
  tb_dataset_t *sets[3] = {job->train, job->val, job->test};
  const char *names[3] = {"data", "data.validation", "data.test"};
  for (int i = 1; i < 3; i++)
    if (sets[i] != NULL && sets[i]->n_features != job->train->n_features)
      return tb_errf(err, TB_ESHAPE, "job %s: %s has %d features but data has %d", job->name,
                     names[i], sets[i]->n_features, job->train->n_features);
  if ((r = check_labels(job, sets, names, err)) != 0)
    return r;
  /* The estimate again, now with the data's exact shape, before the one-hot
   * labels, the scaler's copy and the model are allocated. */
  if (job->policy != NULL && job->policy->max_bytes > 0) {
    tb_job_estimate_t est;
    if ((r = tb__job_estimate_loaded(job, &est)) != 0)
      return tb_errf(err, r, "job %s: out of memory", job->name);
    if (est.total > job->policy->max_bytes)
      return tb__job_over_budget(job, &est, "with its data as loaded, ", err);
  }

  /* Every set counts the classes of the training set (or more): a test file
   * that lacks the highest class must still be one-hot encoded as wide. */
  int n_classes = 0;
  for (int i = 0; i < 3; i++)
    if (sets[i] != NULL && sets[i]->n_classes > n_classes)
      n_classes = sets[i]->n_classes;
  for (int i = 0; i < 3; i++)
    if (sets[i] != NULL && sets[i]->n_classes > 0)
      sets[i]->n_classes = n_classes;
  /* Categorical crossentropy wants one-hot rows; class labels are widened. */
  if (job->compile.loss == TB_LOSS_CATEGORICAL_CROSSENTROPY)
    for (int i = 0; i < 3; i++)
      if (sets[i] != NULL && sets[i]->n_classes > 0 && sets[i]->n_outputs == 1 &&
          (r = tb_dataset_one_hot(sets[i], err)) != 0)
        return r;

  /* Scaling statistics come from the training part only: with a
   * validation_split that is the head of the data, not all of it. */
  if (job->scale != TB_SCALE_NONE) {
    tb_dataset_t *head = job->train;
    bool sliced = false;
    if (job->fit.validation_split > 0.0) {
      int n_train = (int)floor(job->train->n * (1.0 - job->fit.validation_split));
      if (n_train < 1)
        n_train = 1;
      if ((r = tb_dataset_slice(job->train, 0, n_train, &head)) != 0)
        return tb_errf(err, r, "job %s: out of memory", job->name);
      sliced = true;
    }
    r = tb_scaler_fit(&job->scaler, job->scale, job->scale_divisor, head);
    if (sliced)
      tb_dataset_free(head);
    if (r != 0)
      return tb_errf(err, r, "job %s: cannot fit the scaler: %s", job->name, tb_strerror(r));
    for (int i = 0; i < 3; i++)
      if (sets[i] != NULL)
        tb_scaler_apply(&job->scaler, sets[i]);
  }

  job->model = tb_model_new(job->train->n_features, job->seed);
  if (job->model == NULL || tb_model_set_classes(job->model, job->train->classes) != 0)
    return tb_errf(err, TB_ENOMEM, "job %s: out of memory", job->name);
  for (int i = 0; i < job->n_layers; i++) {
    const struct tb_job_layer_s *l = &job->layers[i];
    r = l->type == TB_JOB_DENSE     ? tb_model_add_dense(job->model, l->units, l->act)
        : l->type == TB_JOB_DROPOUT ? tb_model_add_dropout(job->model, l->rate)
                                    : tb_model_add_activation(job->model, l->act);
    if (r != 0)
      return tb_errf(err, r, "job %s: model.layers[%d]: %s", job->name, i, tb_strerror(r));
  }
  char why[sizeof(err->msg)];
  tb_err_t e2;
  if ((r = tb_model_compile(job->model, &job->compile, &e2)) != 0) {
    snprintf(why, sizeof(why), "%s", e2.msg);
    return tb_errf(err, r, "job %s: %s", job->name, why);
  }
  /* Check targets against the model now rather than at the first batch. */
  int want = job->compile.loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY
                 ? 1
                 : tb_model_n_outputs(job->model);
  for (int i = 0; i < 3; i++) {
    if (sets[i] == NULL)
      continue;
    if (sets[i]->n_outputs != want)
      return tb_errf(err, TB_ESHAPE,
                     "job %s: %s: targets have %d column(s) but %s with a %d-unit output needs %d",
                     job->name, names[i], sets[i]->n_outputs, tb_loss_name(job->compile.loss),
                     tb_model_n_outputs(job->model), want);
    if (sets[i]->n_classes > tb_model_n_outputs(job->model) &&
        job->compile.loss == TB_LOSS_SPARSE_CATEGORICAL_CROSSENTROPY)
      return tb_errf(err, TB_ESHAPE, "job %s: %s has %d classes but the last layer has %d units",
                     job->name, names[i], sets[i]->n_classes, tb_model_n_outputs(job->model));
  }
  job->fit.validation_data = job->val;
  return 0;
}

void tb_job_release(tb_job_t *job) {
  if (job == NULL)
    return;
  tb_model_free(job->model);
  tb_dataset_free(job->train);
  tb_dataset_free(job->val);
  tb_dataset_free(job->test);
  tb_scaler_free(&job->scaler);
  job->model = NULL;
  job->train = job->val = job->test = NULL;
  job->fit.validation_data = NULL;
}

void tb_job_free(tb_job_t *job) {
  if (job == NULL)
    return;
  tb_data_spec_t *specs[3] = {&job->train_spec, &job->val_spec, &job->test_spec};
  for (int i = 0; i < 3; i++) {
    free(specs[i]->columns);
    free(specs[i]->column_names);
  }
  for (int i = 0; i < job->n_callbacks; i++)
    tb_callback_free(job->callbacks[i]);
  tb_job_release(job);
  free(job);
}

const char *tb_job_demo_spirals_json(void) {
  /* About 5 seconds on one core: long enough to watch and to steer. */
  return "{\n"
         "  \"name\": \"demo-spirals\",\n"
         "  \"seed\": 42,\n"
         "  \"data\": {\"source\": \"spirals\", \"n_per_class\": 5000, \"noise\": 0.15,\n"
         "           \"scale\": \"standard\"},\n"
         "  \"model\": {\"layers\": [\n"
         "    {\"type\": \"dense\", \"units\": 256, \"activation\": \"relu\"},\n"
         "    {\"type\": \"dense\", \"units\": 256, \"activation\": \"relu\"},\n"
         "    {\"type\": \"dense\", \"units\": 256, \"activation\": \"relu\"},\n"
         "    {\"type\": \"dropout\", \"rate\": 0.1},\n"
         "    {\"type\": \"dense\", \"units\": 2, \"activation\": \"softmax\"}]},\n"
         "  \"loss\": \"sparse_categorical_crossentropy\",\n"
         "  \"metrics\": [\"accuracy\"],\n"
         "  \"optimizer\": {\"name\": \"adam\", \"learning_rate\": 0.001},\n"
         "  \"epochs\": 30,\n"
         "  \"batch_size\": 32,\n"
         "  \"validation_split\": 0.2\n"
         "}\n";
}

const char *tb_job_demo_json(const char *data_dir, char *buf, size_t len, char *notice,
                             size_t nlen) {
  static const char *const files[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  const char *dir = data_dir != NULL && data_dir[0] != '\0' ? data_dir : TB_DEMO_DATA_DIR;
  char p[4][1100];
  int missing = -1;
  if (notice != NULL && nlen > 0)
    notice[0] = '\0';
  if (buf == NULL)
    return NULL;
  for (int i = 0; i < 4; i++) {
    snprintf(p[i], sizeof(p[i]), "%s/%s", dir, files[i]);
    if (missing < 0 &&
        (strchr(p[i], '"') != NULL || strchr(p[i], '\\') != NULL || access(p[i], R_OK) != 0))
      missing = i;
  }
  if (missing >= 0) {
    if (notice != NULL && nlen > 0)
      snprintf(notice, nlen,
               "Fashion-MNIST cannot be read (%s: %s; apt-get install dataset-fashion-mnist): "
               "the demo trains the spirals instead",
               p[missing],
               strchr(p[missing], '"') != NULL ? "a quote in the path" : strerror(errno));
    const char *sp = tb_job_demo_spirals_json();
    if (strlen(sp) >= len)
      return NULL;
    memcpy(buf, sp, strlen(sp) + 1);
    return buf;
  }
  /* About 1 s an epoch on one core of the machine this was written on
   * (tests/bench/run_fmnist.sh measures the same model); the test set is
   * evaluated once training ends. */
  int n = snprintf(buf, len,
                   "{\n"
                   "  \"name\": \"demo-fashion-mnist\",\n"
                   "  \"seed\": 42,\n"
                   "  \"threads\": 1,\n"
                   "  \"data\": {\n"
                   "    \"source\": \"idx\",\n"
                   "    \"images\": \"%s\",\n"
                   "    \"labels\": \"%s\",\n"
                   "    \"scale\": {\"divide\": 255},\n"
                   "    \"test\": {\"source\": \"idx\",\n"
                   "             \"images\": \"%s\",\n"
                   "             \"labels\": \"%s\"}\n"
                   "  },\n"
                   "  \"model\": {\"layers\": [\n"
                   "    {\"type\": \"dense\", \"units\": 256, \"activation\": \"relu\"},\n"
                   "    {\"type\": \"dense\", \"units\": 128, \"activation\": \"relu\"},\n"
                   "    {\"type\": \"dense\", \"units\": 10, \"activation\": \"softmax\"}]},\n"
                   "  \"loss\": \"sparse_categorical_crossentropy\",\n"
                   "  \"metrics\": [\"accuracy\"],\n"
                   "  \"optimizer\": {\"name\": \"adam\", \"learning_rate\": 0.001},\n"
                   "  \"epochs\": 5,\n"
                   "  \"batch_size\": 128,\n"
                   "  \"validation_split\": 0.1\n"
                   "}\n",
                   p[0], p[1], p[2], p[3]);
  return n > 0 && (size_t)n < len ? buf : NULL;
}
