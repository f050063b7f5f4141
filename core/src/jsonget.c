/* JSON field readers for job files: strict types and ranges, and messages
 * that name the field's path. */
#include "jsonget.h"

#include "trainbus/job.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A short rendering of a JSON value for messages. */
void tb__jp_show(const cJSON *v, char *buf, size_t len) {
  if (v == NULL) {
    snprintf(buf, len, "nothing");
    return;
  }
  char *s = cJSON_PrintUnformatted(v);
  if (s == NULL) {
    snprintf(buf, len, "?");
    return;
  }
  if (strlen(s) > 40)
    snprintf(buf, len, "%.37s...", s);
  else
    snprintf(buf, len, "%s", s);
  cJSON_free(s);
}

int tb__jp_bad(parse_t *p, const char *path, const char *expected, const cJSON *got) {
  char g[64];
  tb__jp_show(got, g, sizeof(g));
  return tb_errf(p->err, TB_EINVAL, "%s: %s: expected %s, got %s", p->origin, path, expected, g);
}

/* Refuses any key of obj not in allowed (NULL-terminated). */
int tb__jp_only_keys(parse_t *p, const cJSON *obj, const char *path, const char *const *allowed) {
  for (const cJSON *it = obj->child; it != NULL; it = it->next) {
    bool ok = false;
    for (int i = 0; allowed[i] != NULL && !ok; i++)
      ok = strcmp(it->string, allowed[i]) == 0;
    if (!ok) {
      char list[512] = "";
      for (int i = 0; allowed[i] != NULL; i++) {
        strncat(list, i ? ", " : "", sizeof(list) - strlen(list) - 1);
        strncat(list, allowed[i], sizeof(list) - strlen(list) - 1);
      }
      return tb_errf(p->err, TB_EINVAL, "%s: %s%s%s: unknown field (known: %s)", p->origin, path,
                     path[0] ? "." : "", it->string, list);
    }
    /* cJSON keeps duplicate keys; the first would win silently. */
    for (const cJSON *o = obj->child; o != it; o = o->next)
      if (strcmp(o->string, it->string) == 0)
        return tb_errf(p->err, TB_EINVAL, "%s: %s%s%s: duplicate field", p->origin, path,
                       path[0] ? "." : "", it->string);
  }
  return 0;
}

void tb__jp_join(char *out, size_t len, const char *path, const char *key) {
  snprintf(out, len, "%s%s%s", path, path[0] ? "." : "", key);
}

/* Integer field in [lo, hi]; absent leaves *out unchanged unless required. */
int tb__jp_get_int(parse_t *p, const cJSON *obj, const char *path, const char *key, long lo,
                   long hi, bool required, long *out) {
  char fp[256];
  tb__jp_join(fp, sizeof(fp), path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) {
    if (required)
      return tb_errf(p->err, TB_EINVAL, "%s: %s: missing (required)", p->origin, fp);
    return 0;
  }
  char what[96];
  if (lo == 1 && hi == INT32_MAX)
    snprintf(what, sizeof(what), "a positive integer");
  else if (lo == 0 && hi == INT32_MAX)
    snprintf(what, sizeof(what), "a non-negative integer");
  else
    snprintf(what, sizeof(what), "an integer in [%ld, %ld]", lo, hi);
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
      v->valuedouble < (double)lo || v->valuedouble > (double)hi)
    return tb__jp_bad(p, fp, what, v);
  *out = (long)v->valuedouble;
  return 0;
}

int tb__jp_get_num(parse_t *p, const cJSON *obj, const char *path, const char *key, double lo,
                   double hi, bool lo_open, const char *what, double *out) {
  char fp[256];
  tb__jp_join(fp, sizeof(fp), path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL)
    return 0;
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble > hi ||
      (lo_open ? v->valuedouble <= lo : v->valuedouble < lo))
    return tb__jp_bad(p, fp, what, v);
  *out = v->valuedouble;
  return 0;
}

int tb__jp_get_bool(parse_t *p, const cJSON *obj, const char *path, const char *key, bool *out) {
  char fp[256];
  tb__jp_join(fp, sizeof(fp), path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL)
    return 0;
  if (!cJSON_IsBool(v))
    return tb__jp_bad(p, fp, "true or false", v);
  *out = cJSON_IsTrue(v);
  return 0;
}

int tb__jp_get_str(parse_t *p, const cJSON *obj, const char *path, const char *key, char *out,
                   size_t len, bool required) {
  char fp[256];
  tb__jp_join(fp, sizeof(fp), path, key);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (v == NULL) {
    if (required)
      return tb_errf(p->err, TB_EINVAL, "%s: %s: missing (required)", p->origin, fp);
    return 0;
  }
  if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
    return tb__jp_bad(p, fp, "a non-empty string", v);
  if (strlen(v->valuestring) >= len)
    return tb_errf(p->err, TB_EINVAL, "%s: %s: longer than %zu bytes", p->origin, fp, len - 1);
  snprintf(out, len, "%s", v->valuestring);
  return 0;
}

/* A path relative to the job file's folder. */
int tb__jp_get_path(parse_t *p, const cJSON *obj, const char *path, const char *key, char *out,
                    size_t len, bool required) {
  char raw[1024] = "";
  int r = tb__jp_get_str(p, obj, path, key, raw, sizeof(raw), required);
  if (r != 0 || raw[0] == '\0')
    return r;
  if (raw[0] == '/' || p->base_dir == NULL || p->base_dir[0] == '\0')
    snprintf(out, len, "%s", raw);
  else if ((size_t)snprintf(out, len, "%s/%s", p->base_dir, raw) >= len)
    return tb_errf(p->err, TB_EINVAL, "%s: %s.%s: path too long", p->origin, path, key);
  return 0;
}

int tb__jp_get_out_path(parse_t *p, const cJSON *obj, const char *path, const char *key, char *out,
                        size_t len, bool required) {
  int r = tb__jp_get_path(p, obj, path, key, out, len, required);
  if (r != 0 || out[0] == '\0' || p->job == NULL)
    return r;
  tb_job_t *job = p->job;
  if (job->n_outputs == (int)(sizeof(job->outputs) / sizeof(job->outputs[0])))
    return tb_errf(p->err, TB_EINVAL, "%s: too many output paths", p->origin);
  struct tb_job_output_s *o = &job->outputs[job->n_outputs++];
  tb__jp_join(o->field, sizeof(o->field), path, key);
  snprintf(o->path, sizeof(o->path), "%s", out);
  return 0;
}
