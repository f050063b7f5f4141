/* The loaders' fuzz checks (fuzz_loaders.h): the CSV and npy parsers run
 * over the input in memory (tb__csv_parse, tb__npy_parse: the loaders'
 * code after reading the file), and what they return is checked. */
#include "fuzz_loaders.h"

#include "trainbus/data.h"

#include "loaders.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: broken invariant: %s\n", __FILE__, __LINE__, #cond);                 \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

/* A dataset as the loaders promise it. */
static void check_dataset(const tb_dataset_t *d, bool classes) {
  CHECK(d != NULL);
  CHECK(d->n >= 1 && d->n_features >= 1 && d->n_outputs >= 0);
  for (long i = 0; i < (long)d->n * d->n_features; i++)
    CHECK(isfinite(d->x[i]));
  for (long i = 0; i < (long)d->n * d->n_outputs; i++)
    CHECK(isfinite(d->y[i]));
  if (classes && d->n_outputs == 1) {
    CHECK(d->n_classes >= 1);
    for (int i = 0; i < d->n; i++)
      CHECK(d->y[i] >= 0 && d->y[i] < (float)d->n_classes && d->y[i] == floorf(d->y[i]));
  }
  if (d->classes != NULL) {
    CHECK(d->classes->n == d->n_classes);
    for (int i = 1; i < d->classes->n; i++)
      CHECK(strcmp(d->classes->names[i - 1], d->classes->names[i]) < 0);
  }
}

static void check_failure(int r, const tb_dataset_t *d, const tb_err_t *err) {
  CHECK(r < 0);
  CHECK(d == NULL);
  CHECK(err->msg[0] != '\0');
  CHECK(memchr(err->msg, '\n', strlen(err->msg)) == NULL);
}

void tb_fuzz_csv(const uint8_t *data, size_t size) {
  static const char *const mapping[] = {"a", "b", "setosa", "1"};
  static const tb_csv_col_t by_name[] = {{.name = "a"}, {.index = 1}, {.name = "b"}};
  if (size < 2)
    return;
  uint8_t s0 = data[0], s1 = data[1];
  const char *text = (const char *)data + 2;
  size_t len = size - 2;
  tb_data_limits_t lim = {.max_cols = (s1 & 0x40) ? 8 : 0,
                          .max_rows = (s1 & 0x40) ? 16 : 0,
                          .redact = (s1 & 0x80) != 0};
  tb_classes_t *names = NULL;
  tb_csv_opts_t o = {.delimiter = (s0 & 1)   ? ';'
                                  : (s0 & 2) ? '\t'
                                             : 0,
                     .header = (s0 >> 2) % 3,
                     .label_col = (int)(s1 & 7) - 3,
                     .classes = (s0 >> 4) & 1,
                     .missing = (s0 >> 5) % 3,
                     .fill = -0.5,
                     .limits = &lim};
  if (s1 & 0x08)
    o.label_name = "label";
  if (s1 & 0x10) {
    o.features = by_name;
    o.n_features = 1 + (s1 >> 5 & 1) * 2;
  }
  if ((s1 & 0x20) && o.classes && tb_classes_new(mapping, NULL, 4, &names) == 0)
    o.class_names = names;
  tb_dataset_t *d = (tb_dataset_t *)1;
  tb_err_t err = {{0}};
  int r = tb__csv_parse("fuzz.csv", text, len, &o, &d, &err);
  if (r == 0) {
    check_dataset(d, o.classes != 0);
    if (o.class_names != NULL)
      CHECK(d->n_classes == 4 && d->classes == NULL);
    tb_dataset_free(d);
  } else {
    check_failure(r, d, &err);
    /* Redacted: none of the ways a message quotes the file (a field, a
     * missing-value marker, a column's name, a class name). */
    if (lim.redact) {
      CHECK(strstr(err.msg, "got \"") == NULL);
      CHECK(strstr(err.msg, "(\"") == NULL);
      CHECK(strstr(err.msg, "class \"") == NULL);
    }
  }
  tb_classes_free(names);
}

void tb_fuzz_npy(const uint8_t *data, size_t size) {
  if (size < 1)
    return;
  uint8_t s0 = data[0];
  const uint8_t *rest = data + 1;
  size_t n = size - 1, split = n;
  bool two = (s0 & 1) && n >= 2;
  if (two) {
    split = ((size_t)rest[0] | (size_t)rest[1] << 8) % (n - 1);
    rest += 2;
    n -= 2;
  }
  tb_data_limits_t lim = {.max_cols = (s0 & 4) ? 8 : 0,
                          .max_rows = (s0 & 4) ? 16 : 0,
                          .max_bytes = (s0 & 8) ? 256 : 0,
                          .redact = (s0 & 16) != 0};
  tb_npy_opts_t o = {.classes = (s0 >> 1) & 1, .limits = &lim};
  /* Exact-size copies, so ASan sees a read past either file. */
  size_t xl = two ? (split < n ? split : n) : n, yl = two ? n - xl : 0;
  uint8_t *x = malloc(xl ? xl : 1), *y = malloc(yl ? yl : 1);
  CHECK(x != NULL && y != NULL);
  memcpy(x, rest, xl);
  memcpy(y, rest + xl, yl);
  tb_dataset_t *d = (tb_dataset_t *)1;
  tb_err_t err = {{0}};
  int r = tb__npy_parse("x.npy", x, xl, "y.npy", two ? y : NULL, yl, &o, &d, &err);
  if (r == 0) {
    check_dataset(d, o.classes != 0);
    CHECK(two ? d->n_outputs >= 1 : d->n_outputs == 0);
    tb_dataset_free(d);
  } else {
    check_failure(r, d, &err);
  }
  free(x);
  free(y);
}
