/* Private to core: Python's text for numbers, where trainbus stands in for a
 * Keras value that Python formats.
 *
 * Keras writes floats with Python: CSVLogger through the csv module (str of a
 * float, which is its repr), ModelCheckpoint file names through
 * str.format(epoch=epoch + 1, **logs), and its verbose messages through
 * f-strings. These functions give the same bytes as CPython 3.11 (Debian 12's
 * python3) for the two kinds of values those see: ints (epoch, batch) and
 * floats (every logs value). */
#ifndef TB_CORE_PYFMT_H
#define TB_CORE_PYFMT_H

#include "trainbus/error.h"

#include <stdbool.h>
#include <stddef.h>

/* repr(float(v)) (and str(), which is the same in Python 3): the shortest
 * digits that read back as v, in fixed notation from 1e-4 up to 1e16 with at
 * least one digit after the point ("100.0", "0.0001"), else exponential
 * ("1e-05", "1.5e+16"); "inf", "-inf", "nan" (a NaN has no sign). Writes at
 * most 32 bytes including the NUL; returns the length. */
int tb__py_repr(double v, char out[32]);

/* pyrepr.c: CPython's format_float_short. v in `code` ('e', 'f', 'g' or
 * 'r' for repr) with `precision` (digits after the point for e and f,
 * significant digits for g), written into out (cap bytes). Returns the
 * length, or -1 if it would not fit: TB__PY_DIGBUF + 64 bytes, plus the
 * precision for e, f and #g, always suffice. */
#define TB__PY_DIGBUF 1430
typedef struct tb__pyflags_s {
  bool alt;       /* '#' */
  bool add_dot_0; /* "1.0", not "1" (repr, and a spec without a type) */
  bool no_neg_0;  /* 'z' */
  bool upper;     /* E, F, G: "E", "INF", "NAN" */
} tb__pyflags_t;
long tb__py_float_short(double v, char code, int precision, tb__pyflags_t fl, char *out,
                        size_t cap);

/* A value str.format can be given: a Python int or float. */
typedef struct tb__pyval_s {
  bool is_int;
  long long i;
  double f;
} tb__pyval_t;

/* Looks up the keyword argument `name` (name_len bytes, not NUL-terminated):
 * true and *v set, or false (Python's KeyError). */
typedef bool (*tb__pyfmt_get)(void *user, const char *name, size_t name_len, tb__pyval_t *v);

/* pattern.format(**kwargs), kwargs given by get(): literal text, "{{" and
 * "}}", fields with attribute access (.real, .imag, .numerator,
 * .denominator), conversions (!r !s !a), format specs with nested fields, and
 * the whole format-spec mini-language for ints, floats and strings.
 *
 * Returns 0 with the text in out (NUL-terminated); TB_ENOTFOUND for a missing
 * key (its name in *missing, up to missing_len - 1 bytes), TB_EINVAL for
 * anything Python would raise on (the message Python gives, in err->msg),
 * TB_ERANGE if the result does not fit in len bytes. */
int tb__py_format(const char *pattern, tb__pyfmt_get get, void *user, char *out, size_t len,
                  char *missing, size_t missing_len, tb_err_t *err);

/* f"{v:spec}" for a float v (spec such as ".5f"), as Keras's verbose
 * messages write numbers; "?" if the spec is bad (a caller's mistake). */
void tb__py_format_float(double v, const char *spec, char *out, size_t len);

#endif
