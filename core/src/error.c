/* Error names and texts, generated from the one table in error.h. */
#include "trainbus/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *tb_strerror(int code) {
  switch (code) {
#define X(name, num, text)                                                                         \
  case num:                                                                                        \
    return text;
    TB_ERRNO_MAP(X)
#undef X
  case 0:
    return "success";
  default:
    return code < 0 ? strerror(-code) : "unknown error";
  }
}

const char *tb_err_name(int code) {
  switch (code) {
#define X(name, num, text)                                                                         \
  case num:                                                                                        \
    return "TB_E" #name;
    TB_ERRNO_MAP(X)
#undef X
  case 0:
    return "OK";
  default:
    return "ESYSTEM";
  }
}

int tb_errf(tb_err_t *err, int code, const char *fmt, ...) {
  if (err != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
  }
  return code;
}
