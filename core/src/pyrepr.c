/* Python's digits for a float (CPython 3.11's Python/pystrtod.c,
 * format_float_short, over _Py_dg_dtoa), shared by repr() and the
 * format-spec mini-language in pyfmt.c.
 *
 * Digits come from glibc's printf, which is exact and rounds ties to even as
 * dtoa does: "%.*e" gives dtoa's mode 2 (n significant digits), "%.*f" its
 * mode 3 (n digits after the point), and the shortest digits that strtod
 * reads back are its mode 0 (repr). The layout around them (where the point
 * goes, when an exponent is used, trailing zeros and points) follows CPython
 * line by line. */
#include "pyfmt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- digits (what CPython's _Py_dg_dtoa gives) -------------------------- */

/* Exact digits never run longer: a double has at most 767 significant
 * decimal digits and 1074 after the point, so printf is asked for no more and
 * the layout pads the rest with zeros, as dtoa's callers do. */
#define MAX_SIG 800
#define MAX_FRAC 1100
#define DIGBUF TB__PY_DIGBUF
/* the integer part of a double has at most 309 digits */
_Static_assert(DIGBUF >= MAX_FRAC + 330, "room for every digit printf gives");

/* Significant digits of a > 0 (finite) without leading or trailing zeros, and
 * the position of the decimal point: a = 0.d1d2d3... * 10^decpt. mode 0:
 * shortest that reads back; 2: nd significant digits; 3: nd digits after the
 * point (may leave no digit: "" with decpt -nd, as dtoa does). */
static void float_digits(double a, int mode, int nd, char *dig, int *decpt) {
  char buf[DIGBUF + 16];
  if (mode == 3) {
    snprintf(buf, sizeof(buf), "%.*f", nd < MAX_FRAC ? nd : MAX_FRAC, a);
    char *dot = strchr(buf, '.');
    int n_int = dot ? (int)(dot - buf) : (int)strlen(buf);
    int k = 0, lead = 0;
    bool seen = false;
    for (const char *p = buf; *p; p++) {
      if (*p == '.')
        continue;
      if (!seen && *p == '0') {
        lead++;
        continue;
      }
      seen = true;
      dig[k++] = *p;
    }
    while (k > 0 && dig[k - 1] == '0')
      k--;
    dig[k] = '\0';
    *decpt = k == 0 ? -nd : n_int - lead;
    return;
  }
  int n = mode == 2 ? (nd < MAX_SIG ? nd : MAX_SIG) : 1;
  for (;; n++) {
    snprintf(buf, sizeof(buf), "%.*e", n - 1, a);
    if (mode == 2 || n >= 17 || strtod(buf, NULL) == a)
      break;
    /* dtoa's shortest is the nearest of the shortest strings that read back.
     * printf's nearest n-digit string failing does not rule out the one on
     * the other side of a, where a power of two's wider upper half-gap may
     * reach it. */
    int mexp;
    if (frexp(a, &mexp) == 0.5) {
      char up[64];
      snprintf(up, sizeof(up), "%.40s", buf);
      char *e = strchr(up, 'e');
      char *q = e - 1;
      while (q >= up && (*q == '9' || *q == '.')) {
        if (*q == '9')
          *q = '0';
        q--;
      }
      if (q >= up && strtod(buf, NULL) < a) {
        (*q)++;
        if (strtod(up, NULL) == a) {
          snprintf(buf, sizeof(buf), "%s", up);
          break;
        }
      }
    }
  }
  /* "d.ddde+XX" */
  char *e = strchr(buf, 'e');
  int k = 0;
  for (const char *p = buf; p < e; p++)
    if (*p != '.')
      dig[k++] = *p;
  while (k > 1 && dig[k - 1] == '0')
    k--;
  dig[k] = '\0';
  *decpt = atoi(e + 1) + 1;
}

/* ---- PyOS_double_to_string / format_float_short ------------------------- */

long tb__py_float_short(double v, char code, int precision, tb__pyflags_t fl, char *out,
                        size_t cap) {
  char e_ch = fl.upper ? 'E' : 'e';
  if (isnan(v)) /* CPython writes no sign for a NaN */
    return snprintf(out, cap, "%s", fl.upper ? "NAN" : "nan");
  if (isinf(v))
    return snprintf(out, cap, "%s%s", v < 0 ? "-" : "", fl.upper ? "INF" : "inf");
  int mode, nd = precision;
  switch (code) {
  case 'e':
    mode = 2;
    nd = ++precision;
    break;
  case 'f':
    mode = 3;
    break;
  case 'g':
    mode = 2;
    if (precision == 0)
      nd = precision = 1;
    break;
  default: /* 'r' */
    mode = 0;
    break;
  }
  char *digits = malloc(DIGBUF + 16);
  if (digits == NULL)
    return -1;
  int decpt;
  bool sign = signbit(v) != 0;
  if (v == 0.0) {
    strcpy(digits, "0");
    decpt = 1;
  } else {
    float_digits(fabs(v), mode, nd, digits, &decpt);
  }
  long digits_len = (long)strlen(digits);
  if (fl.no_neg_0 && sign && (digits_len == 0 || (digits_len == 1 && digits[0] == '0')))
    sign = false;

  bool use_exp = false;
  long vdigits_end = digits_len, dp = decpt;
  int exp = 0;
  switch (code) {
  case 'e':
    use_exp = true;
    vdigits_end = precision;
    break;
  case 'f':
    vdigits_end = dp + precision;
    break;
  case 'g':
    if (dp <= -4 || dp > (fl.add_dot_0 ? precision - 1 : precision))
      use_exp = true;
    if (fl.alt)
      vdigits_end = precision;
    break;
  default:
    if (dp <= -4 || dp > 16)
      use_exp = true;
    break;
  }
  if (use_exp) {
    exp = (int)dp - 1;
    dp = 1;
  }
  long vdigits_start = dp <= 0 ? dp - 1 : 0;
  if (!use_exp && fl.add_dot_0)
    vdigits_end = vdigits_end > dp ? vdigits_end : dp + 1;
  else
    vdigits_end = vdigits_end > dp ? vdigits_end : dp;

  size_t need = (size_t)(vdigits_end - vdigits_start) + 16;
  if (need > cap) {
    free(digits);
    return -1;
  }
  char *p = out;
  if (sign)
    *p++ = '-';
  if (dp <= 0) {
    memset(p, '0', (size_t)(dp - vdigits_start));
    p += dp - vdigits_start;
    *p++ = '.';
    memset(p, '0', (size_t)(0 - dp));
    p += 0 - dp;
  } else {
    memset(p, '0', (size_t)(0 - vdigits_start));
    p += 0 - vdigits_start;
  }
  if (0 < dp && dp <= digits_len) {
    memcpy(p, digits, (size_t)dp);
    p += dp;
    *p++ = '.';
    memcpy(p, digits + dp, (size_t)(digits_len - dp));
    p += digits_len - dp;
  } else {
    memcpy(p, digits, (size_t)digits_len);
    p += digits_len;
  }
  if (digits_len < dp) {
    memset(p, '0', (size_t)(dp - digits_len));
    p += dp - digits_len;
    *p++ = '.';
    memset(p, '0', (size_t)(vdigits_end - dp));
    p += vdigits_end - dp;
  } else {
    memset(p, '0', (size_t)(vdigits_end - digits_len));
    p += vdigits_end - digits_len;
  }
  if (p[-1] == '.' && !fl.alt)
    p--;
  if (use_exp) {
    *p++ = e_ch;
    p += sprintf(p, "%+.02d", exp);
  }
  *p = '\0';
  free(digits);
  return (long)(p - out);
}

int tb__py_repr(double v, char out[32]) {
  tb__pyflags_t fl = {.add_dot_0 = true};
  char buf[64]; /* float_short's bound is loose; the text is at most 24 bytes */
  long n = tb__py_float_short(v, 'r', 0, fl, buf, sizeof(buf));
  if (n < 0 || n > 31)
    n = 0;
  memcpy(out, buf, (size_t)n);
  out[n] = '\0';
  return (int)n;
}
