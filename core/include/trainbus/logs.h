/* tb_logs_t: the `logs` dict of a Keras hook, an insertion-ordered map from a
 * metric name to a double.
 *
 * One logs object is passed to every callback of a dispatch in order, so a later
 * callback sees what an earlier one added (`lr`, for example). The map has a
 * fixed capacity and never allocates, so filling it on every batch costs
 * nothing measurable. */
#ifndef TRAINBUS_LOGS_H
#define TRAINBUS_LOGS_H

#include <stdbool.h>

/* Keras logs hold a handful of scalars: loss, a few metrics, their val_
 * versions and lr. 32 leaves room for custom keys; names longer than 47 bytes
 * are refused (TB_ERANGE) rather than truncated. */
#define TB_LOGS_MAX 32
#define TB_LOGS_NAME_MAX 48

typedef struct tb_logs_s {
  int n;
  char names[TB_LOGS_MAX][TB_LOGS_NAME_MAX];
  double values[TB_LOGS_MAX];
} tb_logs_t;

void tb_logs_clear(tb_logs_t *l);
/* Sets name to v, appending it if new. TB_ERANGE if full or the name too long. */
int tb_logs_set(tb_logs_t *l, const char *name, double v);
/* True and *v set if name is present. v may be NULL. */
bool tb_logs_get(const tb_logs_t *l, const char *name, double *v);
/* Removes name if present (keeps the order of the others). */
void tb_logs_del(tb_logs_t *l, const char *name);
/* Copies every entry of src into dst (set semantics), prefixing names with
 * prefix (may be NULL or ""), as fit() does with "val_". */
int tb_logs_merge(tb_logs_t *dst, const tb_logs_t *src, const char *prefix);

#endif
