/* Class names: the sorted string labels of a data file (tb_classes_t).
 *
 * One allocation holds the pointer array and the names after it, so a copy
 * is one memcpy and a free one free(). Sorting is by strcmp (bytes), which
 * is the order numpy's np.unique gives Python strings (code points, and
 * UTF-8 preserves code point order), so an index here is the index
 * scikit-learn's LabelEncoder would give. */
#include "trainbus/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int tb_classes_new(const char *const *names, const size_t *lens, int n, tb_classes_t **out) {
  size_t bytes = 0;
  if (out == NULL)
    return TB_EINVAL;
  *out = NULL;
  if (names == NULL || n < 1 || n > TB_DATA_MAX_CLASS_NAMES)
    return TB_EINVAL;
  for (int i = 0; i < n; i++) {
    if (names[i] == NULL)
      return TB_EINVAL;
    size_t len = lens != NULL ? lens[i] : strlen(names[i]);
    if (len > TB_DATA_MAX_CLASS_NAME || memchr(names[i], '\0', len) != NULL)
      return TB_EINVAL;
    bytes += len + 1;
  }
  size_t head = sizeof(tb_classes_t) + (size_t)n * sizeof(char *);
  tb_classes_t *c = malloc(head + bytes);
  if (c == NULL)
    return TB_ENOMEM;
  c->n = n;
  c->names = (const char **)(c + 1);
  char *p = (char *)c + head;
  for (int i = 0; i < n; i++) {
    size_t len = lens != NULL ? lens[i] : strlen(names[i]);
    memcpy(p, names[i], len);
    p[len] = '\0';
    c->names[i] = p;
    p += len + 1;
  }
  qsort(c->names, (size_t)n, sizeof(char *), cmp_names);
  for (int i = 1; i < n; i++) {
    if (strcmp(c->names[i - 1], c->names[i]) == 0) {
      free(c);
      return TB_EINVAL;
    }
  }
  *out = c;
  return 0;
}

int tb_classes_copy(const tb_classes_t *c, tb_classes_t **out) {
  if (out == NULL)
    return TB_EINVAL;
  *out = NULL;
  if (c == NULL)
    return 0;
  return tb_classes_new(c->names, NULL, c->n, out);
}

void tb_classes_free(tb_classes_t *c) {
  free(c);
}

int tb_classes_find(const tb_classes_t *c, const char *s, size_t len) {
  if (c == NULL || s == NULL || len > TB_DATA_MAX_CLASS_NAME || memchr(s, '\0', len) != NULL)
    return -1;
  int lo = 0, hi = c->n - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    const char *name = c->names[mid];
    /* strcmp(name, s) for an s that is not NUL-terminated: s has no NUL,
     * so equal first len bytes mean name is at least that long. */
    int d = strncmp(name, s, len);
    if (d == 0)
      d = name[len] != '\0';
    if (d == 0)
      return mid;
    if (d < 0)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}

bool tb_classes_equal(const tb_classes_t *a, const tb_classes_t *b) {
  if (a == NULL || b == NULL)
    return a == b;
  if (a->n != b->n)
    return false;
  for (int i = 0; i < a->n; i++)
    if (strcmp(a->names[i], b->names[i]) != 0)
      return false;
  return true;
}

const char *tb_classes_format(const tb_classes_t *c, char *buf, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  if (buf == NULL || len == 0)
    return buf;
  buf[0] = '\0';
  if (c == NULL)
    return buf;
  /* Room kept for "..." and the NUL at every step. */
  for (int i = 0; i < c->n; i++) {
    char item[32 + 4 * TB_DATA_MAX_CLASS_NAME];
    size_t k = (size_t)snprintf(item, 32, "%s%d \"", i > 0 ? ", " : "", i);
    for (const unsigned char *s = (const unsigned char *)c->names[i]; *s; s++) {
      if (*s == '"' || *s == '\\') {
        item[k++] = '\\';
        item[k++] = (char)*s;
      } else if (*s >= 0x20 && *s < 0x7f) {
        item[k++] = (char)*s;
      } else {
        item[k++] = '\\';
        item[k++] = 'x';
        item[k++] = hex[*s >> 4];
        item[k++] = hex[*s & 15];
      }
    }
    item[k++] = '"';
    if (o + k + 4 > len) {
      if (o + 4 <= len)
        memcpy(buf + o, "...", 4);
      return buf;
    }
    memcpy(buf + o, item, k);
    o += k;
    buf[o] = '\0';
  }
  return buf;
}
