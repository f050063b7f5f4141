/* libFuzzer entry for ModelCheckpoint file-name patterns (core/src/pyfmt.c,
 * Python's str.format): the input is the pattern; "epoch" and "batch" are
 * ints, every other key a float taken from the input's first bytes, so
 * nested specs, conversions and attribute lookups all get exercised. The
 * invariants: no crash or leak, a NUL-terminated result that fits, and an
 * error message on every failure. */
#include "pyfmt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static double value;

static bool get(void *user, const char *name, size_t len, tb__pyval_t *v) {
  (void)user;
  if (len == 7 && memcmp(name, "missing", 7) == 0)
    return false;
  bool is_int = (len == 5 && (memcmp(name, "epoch", 5) == 0 || memcmp(name, "batch", 5) == 0));
  *v = (tb__pyval_t){.is_int = is_int, .i = (long long)len * 7 - 3, .f = value};
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096)
    return 0;
  char *pattern = malloc(size + 1), out[1024], missing[64];
  if (pattern == NULL)
    return 0;
  memcpy(pattern, data, size);
  pattern[size] = '\0';
  memcpy(&value, data, size >= sizeof(value) ? sizeof(value) : 0);
  tb_err_t err = {{0}};
  int r = tb__py_format(pattern, get, NULL, out, sizeof(out), missing, sizeof(missing), &err);
  if (r == 0 && strnlen(out, sizeof(out)) >= sizeof(out))
    abort();
  if (r != 0 && r != -1012 /* TB_ENOTFOUND */ && err.msg[0] == '\0')
    abort();
  char repr[32];
  tb__py_repr(value, repr);
  free(pattern);
  return 0;
}
