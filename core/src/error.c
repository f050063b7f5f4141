/* Error names and texts, generated from the one table in error.h, and the
 * messages of tb_err_t. */
#include "trainbus/error.h"

#include <stdarg.h>
#include <stdbool.h>
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

/* A message is one line: a control character that came in through an
 * argument (a job's key, a file name, a pattern, all of which a client may
 * write) is written \xNN, so that no document can break a message over
 * lines, forge a line of a log, or send a terminal an escape sequence. */
int tb_errf(tb_err_t *err, int code, const char *fmt, ...) {
  static const char hex[] = "0123456789abcdef";
  if (err != NULL) {
    char raw[sizeof(err->msg)];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    size_t o = 0;
    for (size_t i = 0; n > 0 && raw[i] != '\0'; i++) {
      unsigned char c = (unsigned char)raw[i];
      bool plain = c >= 0x20 && c != 0x7f;
      if (o + (plain ? 1 : 4) >= sizeof(err->msg))
        break;
      if (plain) {
        err->msg[o++] = (char)c;
      } else {
        err->msg[o++] = '\\';
        err->msg[o++] = 'x';
        err->msg[o++] = hex[c >> 4];
        err->msg[o++] = hex[c & 15];
      }
    }
    err->msg[o] = '\0';
  }
  return code;
}
