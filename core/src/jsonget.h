/* Private to core: the JSON field readers shared by job.c and
 * job_callbacks.c. Each checks one field's type and range and, on a problem,
 * writes "<origin>: <path>: expected <what>, got <value>" and returns an
 * error code. Absent optional fields leave *out unchanged. */
#ifndef TB_CORE_JSONGET_H
#define TB_CORE_JSONGET_H

#include "trainbus/error.h"

#include <cjson/cJSON.h>
#include <stdbool.h>

struct tb_job_s;

typedef struct parse_s {
  const char *origin;   /* the document's name in messages */
  const char *base_dir; /* relative paths resolve against it (may be NULL) */
  tb_err_t *err;
  struct tb_job_s *job; /* paths read by tb__jp_get_out_path are noted here (may be NULL) */
} parse_t;

void tb__jp_show(const cJSON *v, char *buf, size_t len);
int tb__jp_bad(parse_t *p, const char *path, const char *expected, const cJSON *got);
int tb__jp_only_keys(parse_t *p, const cJSON *obj, const char *path, const char *const *allowed);
void tb__jp_join(char *out, size_t len, const char *path, const char *key);
int tb__jp_get_int(parse_t *p, const cJSON *obj, const char *path, const char *key, long lo,
                   long hi, bool required, long *out);
int tb__jp_get_num(parse_t *p, const cJSON *obj, const char *path, const char *key, double lo,
                   double hi, bool lo_open, const char *what, double *out);
int tb__jp_get_bool(parse_t *p, const cJSON *obj, const char *path, const char *key, bool *out);
int tb__jp_get_str(parse_t *p, const cJSON *obj, const char *path, const char *key, char *out,
                   size_t len, bool required);
int tb__jp_get_path(parse_t *p, const cJSON *obj, const char *path, const char *key, char *out,
                    size_t len, bool required);
/* tb__jp_get_path() for a path the job will write to: also noted in the
 * job's outputs, so that tb_job_check() can hold it to the job's policy. */
int tb__jp_get_out_path(parse_t *p, const cJSON *obj, const char *path, const char *key, char *out,
                        size_t len, bool required);

#endif
