/* Error codes shared by every trainbus C library.
 *
 * Functions return int: 0 is success, a negative TB_E... code is failure, and a
 * system error passes through as -errno. One X-macro table generates the enum,
 * tb_strerror() and tb_err_name(), so name, code and text never drift apart.
 * Where a user needs to know *what* was wrong and *where*, functions also take
 * a tb_err_t that receives a full sentence (`data.csv:12: column 3: expected a
 * number, got "abc"`). */
#ifndef TRAINBUS_ERROR_H
#define TRAINBUS_ERROR_H

#include <stddef.h>

#define TB_ERRNO_MAP(X)                                                                            \
  X(INVAL, -1001, "invalid argument")                                                              \
  X(NOMEM, -1002, "out of memory")                                                                 \
  X(IO, -1003, "input/output error")                                                               \
  X(FORMAT, -1004, "malformed input")                                                              \
  X(CHECKSUM, -1005, "checksum mismatch")                                                          \
  X(SHAPE, -1006, "shape mismatch")                                                                \
  X(VERSION, -1007, "unsupported format version")                                                  \
  X(RANGE, -1008, "value out of range")                                                            \
  X(STATE, -1009, "operation not valid in this state")                                             \
  X(TRUNCATED, -1010, "input ends early")                                                          \
  X(EXISTS, -1011, "already exists")                                                               \
  X(NOTFOUND, -1012, "not found")                                                                  \
  X(CALLBACK, -1013, "a callback failed")                                                          \
  X(NONFINITE, -1014, "non-finite value")                                                          \
  X(INTERRUPTED, -1015, "interrupted for shutdown")                                                \
  X(DIVERGED, -1016, "participants diverged")

typedef enum {
#define X(name, code, text) TB_E##name = code,
  TB_ERRNO_MAP(X)
#undef X
} tb_errno_t;

/* A human-readable explanation of a failure, filled by functions that take one.
 * Always NUL-terminated; empty when nothing was written. */
typedef struct tb_err_s {
  char msg[512];
} tb_err_t;

/* Short text for a code ("malformed input"); strerror() for -errno values. */
const char *tb_strerror(int code);
/* The code's name ("TB_EFORMAT", "ENOENT"). */
const char *tb_err_name(int code);

/* Writes a printf-style message into err (if err is not NULL) and returns code,
 * so callers can write `return tb_errf(err, TB_EFORMAT, "...", ...);`. The
 * message is one line: any control character (below 0x20, and 0x7f) the
 * formatted text holds, such as a line break in a name an argument brings
 * in, is written as the four characters \xNN. An argument may point into
 * err->msg itself. */
int tb_errf(tb_err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
