/* Python's str.format, ported from CPython 3.11: Objects/stringlib/
 * unicode_format.h for the fields, Python/formatter_unicode.c for the
 * format-spec mini-language; the digits and their layout are pyrepr.c's.
 * Padding, grouping and signs follow CPython line by line; the comments name
 * the functions ported.
 *
 * Text is UTF-8; widths and precisions count code points, as Python's do. */
#include "pyfmt.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- output ------------------------------------------------------------- */

typedef struct wbuf_s {
  char *b;
  size_t n, cap; /* cap includes room for the NUL */
  bool over;
} wbuf_t;

static void w_bytes(wbuf_t *w, const char *s, size_t n) {
  if (w->over || w->n + n + 1 > w->cap) {
    w->over = true;
    return;
  }
  memcpy(w->b + w->n, s, n);
  w->n += n;
  w->b[w->n] = '\0';
}

static size_t utf8_put(uint32_t cp, char out[4]) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

static void w_fill(wbuf_t *w, uint32_t cp, long long n) {
  char u[4];
  size_t k = utf8_put(cp, u);
  for (long long i = 0; i < n && !w->over; i++)
    w_bytes(w, u, k);
}

/* Decodes one code point; an invalid byte stands for itself. */
static uint32_t utf8_get(const unsigned char *s, size_t n, size_t *used) {
  uint32_t c = s[0];
  size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (k == 0 || k > n) {
    *used = 1;
    return c;
  }
  uint32_t cp = k == 1 ? c : k == 2 ? (c & 0x1f) : k == 3 ? (c & 0x0f) : (c & 0x07);
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xc0) != 0x80) {
      *used = 1;
      return c;
    }
    cp = cp << 6 | (s[i] & 0x3f);
  }
  *used = k;
  return cp;
}

/* ---- the format-spec mini-language (formatter_unicode.c) ---------------- */

enum { LT_NONE = 0, LT_COMMA = ',', LT_UNDER = '_', LT_UNDER4 = 4, LT_LOCALE = 5 };

typedef struct spec_s {
  uint32_t fill, align, sign, type;
  int alt, no_neg_0, thousands;
  long long width, precision;
} spec_t;

typedef struct fmt_s {
  tb__pyfmt_get get;
  void *user;
  char *missing;
  size_t missing_len;
  tb_err_t *err;
} fmt_t;

/* A Python ValueError (or IndexError, ...): the message Python gives. */
#define py_error(f, ...) tb_errf((f)->err, TB_EINVAL, __VA_ARGS__)

static int get_integer(fmt_t *f, const uint32_t *s, size_t *pos, size_t end, long long *out) {
  long long acc = 0;
  int n = 0;
  for (; *pos < end && s[*pos] >= '0' && s[*pos] <= '9'; (*pos)++, n++) {
    int d = (int)(s[*pos] - '0');
    if (acc > (LLONG_MAX - d) / 10) {
      py_error(f, "Too many decimal digits in format string");
      return -1;
    }
    acc = acc * 10 + d;
  }
  *out = acc;
  return n;
}

static bool is_align(uint32_t c) {
  return c == '<' || c == '>' || c == '=' || c == '^';
}

static int bad_sep_type(fmt_t *f, int sep, uint32_t type) {
  char sc = sep == LT_UNDER4 ? '_' : (char)sep;
  if (type > 32 && type < 128)
    return py_error(f, "Cannot specify '%c' with '%c'.", sc, (char)type);
  return py_error(f, "Cannot specify '%c' with '\\x%x'.", sc, (unsigned)type);
}

static int parse_spec(fmt_t *f, const char *text, const uint32_t *s, size_t end, spec_t *o,
                      uint32_t default_type, uint32_t default_align, const char *type_name) {
  size_t pos = 0;
  bool align_specified = false, fill_specified = false;
  memset(o, 0, sizeof(*o));
  o->fill = ' ';
  o->align = default_align;
  o->width = -1;
  o->precision = -1;
  o->type = default_type;
  if (end - pos >= 2 && is_align(s[pos + 1])) {
    o->align = s[pos + 1];
    o->fill = s[pos];
    fill_specified = align_specified = true;
    pos += 2;
  } else if (end - pos >= 1 && is_align(s[pos])) {
    o->align = s[pos];
    align_specified = true;
    pos++;
  }
  if (end - pos >= 1 && (s[pos] == ' ' || s[pos] == '+' || s[pos] == '-'))
    o->sign = s[pos++];
  if (end - pos >= 1 && s[pos] == 'z') {
    o->no_neg_0 = 1;
    pos++;
  }
  if (end - pos >= 1 && s[pos] == '#') {
    o->alt = 1;
    pos++;
  }
  if (!fill_specified && end - pos >= 1 && s[pos] == '0') {
    o->fill = '0';
    if (!align_specified && default_align == '>')
      o->align = '=';
    pos++;
  }
  int consumed = get_integer(f, s, &pos, end, &o->width);
  if (consumed < 0)
    return TB_EINVAL;
  if (consumed == 0)
    o->width = -1;
  if (end - pos && s[pos] == ',') {
    o->thousands = LT_COMMA;
    pos++;
  }
  if (end - pos && s[pos] == '_') {
    if (o->thousands != LT_NONE)
      return py_error(f, "Cannot specify both ',' and '_'.");
    o->thousands = LT_UNDER;
    pos++;
  }
  if (end - pos && s[pos] == ',' && o->thousands == LT_UNDER)
    return py_error(f, "Cannot specify both ',' and '_'.");
  if (end - pos && s[pos] == '.') {
    pos++;
    if ((consumed = get_integer(f, s, &pos, end, &o->precision)) < 0)
      return TB_EINVAL;
    if (consumed == 0)
      return py_error(f, "Format specifier missing precision");
  }
  if (end - pos > 1)
    return py_error(f, "Invalid format specifier '%s' for object of type '%s'", text, type_name);
  if (end - pos == 1)
    o->type = s[pos++];
  if (o->thousands) {
    switch (o->type) {
    case 'd':
    case 'e':
    case 'f':
    case 'g':
    case 'E':
    case 'G':
    case '%':
    case 'F':
    case 0:
      break;
    case 'b':
    case 'o':
    case 'x':
    case 'X':
      if (o->thousands == LT_UNDER) {
        o->thousands = LT_UNDER4;
        break;
      }
      /* fall through */
    default:
      return bad_sep_type(f, o->thousands, o->type);
    }
  }
  return 0;
}

static int unknown_type(fmt_t *f, uint32_t type, const char *type_name) {
  if (type > 32 && type < 128)
    return py_error(f, "Unknown format code '%c' for object of type '%s'", (char)type, type_name);
  return py_error(f, "Unknown format code '\\x%x' for object of type '%s'", (unsigned)type,
                  type_name);
}

/* _PyUnicode_InsertThousandsGrouping: the digits (n of them, ASCII) grouped
 * from the right by `group` (0: no grouping) with `sep`, zero-padded to
 * min_width. Writes into out (or only counts when out is NULL); returns the
 * length. */
static long long group_digits(const char *digits, long long n, long long min_width, int group,
                              char sep, char *out) {
  if (min_width < 0)
    min_width = 0;
  long long count = 0, remaining = n, pos = 0, l;
  bool use_sep = false, broken = false;
  /* Built right to left into a reversed scratch, then turned around. */
  char *rev = out;
  const char *d = digits + n;
#define EMIT(zeros, chars)                                                                         \
  do {                                                                                             \
    if (use_sep) {                                                                                 \
      if (rev)                                                                                     \
        rev[pos] = sep;                                                                            \
      pos++;                                                                                       \
    }                                                                                              \
    for (long long i_ = 0; i_ < (chars); i_++) {                                                   \
      d--;                                                                                         \
      if (rev)                                                                                     \
        rev[pos] = *d;                                                                             \
      pos++;                                                                                       \
    }                                                                                              \
    for (long long i_ = 0; i_ < (zeros); i_++) {                                                   \
      if (rev)                                                                                     \
        rev[pos] = '0';                                                                            \
      pos++;                                                                                       \
    }                                                                                              \
  } while (0)
  while (group > 0) {
    long long mx = remaining > min_width ? remaining : min_width;
    l = group < (mx > 1 ? mx : 1) ? group : (mx > 1 ? mx : 1);
    long long zeros = l - remaining > 0 ? l - remaining : 0;
    long long chars = remaining < l ? (remaining > 0 ? remaining : 0) : l;
    count += (use_sep ? 1 : 0) + zeros + chars;
    EMIT(zeros, chars);
    use_sep = true;
    remaining -= chars;
    min_width -= l;
    if (remaining <= 0 && min_width <= 0) {
      broken = true;
      break;
    }
    min_width -= 1;
  }
  if (!broken) {
    long long mx = remaining > min_width ? remaining : min_width;
    l = mx > 1 ? mx : 1;
    long long zeros = l - remaining > 0 ? l - remaining : 0;
    long long chars = remaining < l ? (remaining > 0 ? remaining : 0) : l;
    count += (use_sep ? 1 : 0) + zeros + chars;
    EMIT(zeros, chars);
  }
#undef EMIT
  if (rev)
    for (long long i = 0; i < pos / 2; i++) {
      char t = rev[i];
      rev[i] = rev[pos - 1 - i];
      rev[pos - 1 - i] = t;
    }
  return count;
}

/* calc_number_widths + fill_number: sign, prefix, digits (grouped), decimal
 * point and remainder, padded as the spec says. `digits` is the ASCII number
 * without its sign; the remainder may hold one non-ASCII code point ('c'),
 * counted as rem_cps code points. */
static int write_number(fmt_t *f, wbuf_t *w, const spec_t *o, char sign_char, const char *prefix,
                        const char *digits, long long n_digits, bool has_decimal, const char *rem,
                        size_t rem_len, long long rem_cps, bool upper, bool locale_n) {
  long long n_prefix = prefix ? (long long)strlen(prefix) : 0, n_sign = 0;
  char sign = 0;
  switch (o->sign) {
  case '+':
    n_sign = 1;
    sign = sign_char == '-' ? '-' : '+';
    break;
  case ' ':
    n_sign = 1;
    sign = sign_char == '-' ? '-' : ' ';
    break;
  default:
    if (sign_char == '-') {
      n_sign = 1;
      sign = '-';
    }
  }
  int group = 0;
  char sep = 0;
  if (!locale_n) { /* 'n' uses the C locale: no grouping */
    if (o->thousands == LT_COMMA || o->thousands == LT_UNDER) {
      group = 3;
      sep = (char)o->thousands;
    } else if (o->thousands == LT_UNDER4) {
      group = 4;
      sep = '_';
    }
  }
  long long n_decimal = has_decimal ? 1 : 0;
  long long non_digit = n_sign + n_prefix + n_decimal + rem_cps;
  long long min_width = (o->fill == '0' && o->align == '=') ? o->width - non_digit : 0;
  if (min_width > (long long)w->cap || o->width > (long long)w->cap) {
    w->over = true;
    return 0;
  }
  long long n_grouped =
      n_digits == 0 ? 0 : group_digits(digits, n_digits, min_width, group, sep, NULL);
  long long lpad = 0, spad = 0, rpad = 0;
  long long padding = o->width - (non_digit + n_grouped);
  if (padding > 0) {
    switch (o->align) {
    case '<':
      rpad = padding;
      break;
    case '^':
      lpad = padding / 2;
      rpad = padding - lpad;
      break;
    case '=':
      spad = padding;
      break;
    default:
      lpad = padding;
      break;
    }
  }
  w_fill(w, o->fill, lpad);
  if (n_sign)
    w_bytes(w, &sign, 1);
  if (n_prefix) {
    char pre[8];
    snprintf(pre, sizeof(pre), "%s", prefix);
    for (char *q = pre; upper && *q; q++)
      *q = (char)(*q >= 'a' && *q <= 'z' ? *q - 32 : *q);
    w_bytes(w, pre, (size_t)n_prefix);
  }
  w_fill(w, o->fill, spad);
  if (n_grouped > 0) {
    char *g = malloc((size_t)n_grouped + 1);
    if (g == NULL)
      return py_error(f, "out of memory");
    group_digits(digits, n_digits, min_width, group, sep, g);
    for (long long i = 0; upper && i < n_grouped; i++)
      g[i] = (char)(g[i] >= 'a' && g[i] <= 'z' ? g[i] - 32 : g[i]);
    w_bytes(w, g, (size_t)n_grouped);
    free(g);
  }
  if (has_decimal)
    w_bytes(w, ".", 1);
  w_bytes(w, rem, rem_len);
  w_fill(w, o->fill, rpad);
  return 0;
}

static int format_float(fmt_t *f, wbuf_t *w, double val, const spec_t *o) {
  uint32_t type = o->type;
  int default_precision = 6;
  tb__pyflags_t fl = {.alt = o->alt != 0, .no_neg_0 = o->no_neg_0 != 0};
  if (o->precision > INT_MAX)
    return py_error(f, "precision too big");
  int precision = (int)o->precision;
  bool add_pct = false;
  char code;
  if (type == 0) {
    fl.add_dot_0 = true;
    type = 'r';
    default_precision = 0;
  }
  fl.upper = type == 'E' || type == 'F' || type == 'G';
  code = type == 'n' ? 'g' : (char)(type >= 'A' && type <= 'Z' ? type + 32 : type);
  if (type == '%') {
    code = 'f';
    val *= 100;
    add_pct = true;
  }
  if (precision < 0)
    precision = default_precision;
  else if (code == 'r')
    code = 'g';
  /* 'e', 'f' and '#g' write every digit of the precision; 'g' and 'r' at
   * most the exact digits. */
  bool pads = code == 'e' || code == 'f' || (code == 'g' && fl.alt);
  if (pads && precision > (long long)w->cap + TB__PY_DIGBUF) {
    w->over = true;
    return 0;
  }
  size_t cap = TB__PY_DIGBUF + 64 + (pads ? (size_t)precision : 0);
  char *buf = malloc(cap + 2);
  if (buf == NULL)
    return py_error(f, "out of memory");
  long n = tb__py_float_short(val, code, precision, fl, buf, cap);
  if (n < 0) {
    free(buf);
    w->over = true;
    return 0;
  }
  if (add_pct) {
    buf[n++] = '%';
    buf[n] = '\0';
  }
  const char *s = buf;
  char sign_char = 0;
  if (*s == '-') {
    sign_char = '-';
    s++;
  }
  long long n_digits = 0;
  while (s[n_digits] >= '0' && s[n_digits] <= '9')
    n_digits++;
  bool has_decimal = s[n_digits] == '.';
  const char *rem = s + n_digits + (has_decimal ? 1 : 0);
  char *digits = strndup(s, (size_t)n_digits);
  int r = digits == NULL
              ? py_error(f, "out of memory")
              : write_number(f, w, o, sign_char, NULL, digits, n_digits, has_decimal, rem,
                             strlen(rem), (long long)strlen(rem), false, type == 'n');
  free(digits);
  free(buf);
  return r;
}

static int format_int(fmt_t *f, wbuf_t *w, long long v, const spec_t *o) {
  if (o->precision != -1)
    return py_error(f, "Precision not allowed in integer format specifier");
  if (o->no_neg_0)
    return py_error(f, "Negative zero coercion (z) not allowed in integer format specifier");
  if (o->type == 'c') {
    if (o->sign != 0)
      return py_error(f, "Sign not allowed with integer format specifier 'c'");
    if (o->alt)
      return py_error(f, "Alternate form (#) not allowed with integer format specifier 'c'");
    if (v < 0 || v > 0x10ffff)
      return py_error(f, "%%c arg not in range(0x110000)");
    char u[4];
    size_t k = utf8_put((uint32_t)v, u);
    return write_number(f, w, o, 0, NULL, "", 0, false, u, k, 1, false, false);
  }
  int base = 10;
  const char *prefix = NULL;
  switch (o->type) {
  case 'b':
    base = 2;
    prefix = "0b";
    break;
  case 'o':
    base = 8;
    prefix = "0o";
    break;
  case 'x':
  case 'X':
    base = 16;
    prefix = "0x";
    break;
  default:
    break;
  }
  char digits[72];
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  int n = 0;
  char tmp[72];
  do {
    tmp[n++] = "0123456789abcdef"[u % (unsigned)base];
    u /= (unsigned)base;
  } while (u > 0);
  for (int i = 0; i < n; i++)
    digits[i] = tmp[n - 1 - i];
  digits[n] = '\0';
  return write_number(f, w, o, v < 0 ? '-' : 0, o->alt ? prefix : NULL, digits, n, false, "", 0, 0,
                      o->type == 'X', o->type == 'n');
}

/* format_string_internal: a string (ASCII here: the result of !r/!s/!a). */
static int format_string(fmt_t *f, wbuf_t *w, const char *s, const spec_t *o) {
  if (o->sign == ' ')
    return py_error(f, "Space not allowed in string format specifier");
  if (o->sign != 0)
    return py_error(f, "Sign not allowed in string format specifier");
  if (o->no_neg_0)
    return py_error(f, "Negative zero coercion (z) not allowed in string format specifier");
  if (o->alt)
    return py_error(f, "Alternate form (#) not allowed in string format specifier");
  if (o->align == '=')
    return py_error(f, "'=' alignment not allowed in string format specifier");
  long long len = (long long)strlen(s);
  if (o->precision >= 0 && len >= o->precision)
    len = o->precision;
  long long total = o->width >= 0 && o->width > len ? o->width : len, lpad;
  if (total > (long long)w->cap) {
    w->over = true;
    return 0;
  }
  lpad = o->align == '>' ? total - len : o->align == '^' ? (total - len) / 2 : 0;
  w_fill(w, o->fill, lpad);
  w_bytes(w, s, (size_t)len);
  w_fill(w, o->fill, total - len - lpad);
  return 0;
}

/* The spec's text as code points. */
static int decode_spec(fmt_t *f, const char *text, uint32_t **cps, size_t *n) {
  size_t len = strlen(text), k = 0;
  *cps = malloc((len + 1) * sizeof(uint32_t));
  if (*cps == NULL)
    return py_error(f, "out of memory");
  for (size_t i = 0; i < len;) {
    size_t used;
    (*cps)[k++] = utf8_get((const unsigned char *)text + i, len - i, &used);
    i += used;
  }
  *n = k;
  return 0;
}

/* A field's value: an int, a float, or (after a conversion) a string. */
typedef struct value_s {
  enum { V_INT, V_FLOAT, V_STR } kind;
  long long i;
  double d;
  char s[40];
} value_t;

static void to_str(value_t *v) {
  if (v->kind == V_INT)
    snprintf(v->s, sizeof(v->s), "%lld", v->i);
  else if (v->kind == V_FLOAT)
    tb__py_repr(v->d, v->s);
  v->kind = V_STR;
}

/* render_field: value.__format__(spec). */
static int render(fmt_t *f, wbuf_t *w, value_t *v, const char *spec_text) {
  if (spec_text[0] == '\0') {
    value_t c = *v;
    to_str(&c);
    w_bytes(w, c.s, strlen(c.s));
    return 0;
  }
  uint32_t *cps = NULL;
  size_t n = 0;
  spec_t o;
  int r = decode_spec(f, spec_text, &cps, &n);
  if (r != 0)
    return r;
  if (v->kind == V_STR) {
    if ((r = parse_spec(f, spec_text, cps, n, &o, 's', '<', "str")) == 0)
      r = o.type == 's' ? format_string(f, w, v->s, &o) : unknown_type(f, o.type, "str");
  } else if (v->kind == V_INT) {
    if ((r = parse_spec(f, spec_text, cps, n, &o, 'd', '>', "int")) == 0) {
      switch (o.type) {
      case 'b':
      case 'c':
      case 'd':
      case 'o':
      case 'x':
      case 'X':
      case 'n':
        r = format_int(f, w, v->i, &o);
        break;
      case 'e':
      case 'E':
      case 'f':
      case 'F':
      case 'g':
      case 'G':
      case '%':
        r = format_float(f, w, (double)v->i, &o);
        break;
      default:
        r = unknown_type(f, o.type, "int");
      }
    }
  } else {
    if ((r = parse_spec(f, spec_text, cps, n, &o, 0, '>', "float")) == 0) {
      switch (o.type) {
      case 0:
      case 'e':
      case 'E':
      case 'f':
      case 'F':
      case 'g':
      case 'G':
      case 'n':
      case '%':
        r = format_float(f, w, v->d, &o);
        break;
      default:
        r = unknown_type(f, o.type, "float");
      }
    }
  }
  free(cps);
  return r;
}

/* ---- str.format's fields (unicode_format.h) ------------------------------ */

static const char *type_name(const value_t *v) {
  return v->kind == V_INT ? "int" : v->kind == V_FLOAT ? "float" : "str";
}

/* get_field_object: the keyword, then .attr and [index] lookups. */
static int field_object(fmt_t *f, const char *s, size_t n, value_t *v) {
  size_t i = 0;
  while (i < n && s[i] != '.' && s[i] != '[')
    i++;
  /* A field named by a number (or by nothing) is positional, and
   * format(**logs) has no positional arguments. */
  bool numeric = i > 0;
  for (size_t k = 0; k < i; k++)
    numeric &= s[k] >= '0' && s[k] <= '9';
  if (i == 0 || numeric) {
    long long idx = 0;
    for (size_t k = 0; k < i; k++) {
      if (idx > (LLONG_MAX - (s[k] - '0')) / 10)
        return py_error(f, "Too many decimal digits in format string");
      idx = idx * 10 + (s[k] - '0');
    }
    return py_error(f, "Replacement index %lld out of range for positional args tuple", idx);
  }
  tb__pyval_t pv;
  if (!f->get(f->user, s, i, &pv)) {
    snprintf(f->missing, f->missing_len, "%.*s", (int)i, s);
    return TB_ENOTFOUND;
  }
  memset(v, 0, sizeof(*v));
  v->kind = pv.is_int ? V_INT : V_FLOAT;
  v->i = pv.i;
  v->d = pv.f;
  while (i < n) {
    char c = s[i++];
    size_t start = i;
    bool attr = c == '.';
    if (c == '.') {
      while (i < n && s[i] != '.' && s[i] != '[')
        i++;
    } else if (c == '[') {
      while (i < n && s[i] != ']')
        i++;
      if (i >= n)
        return py_error(f, "Missing ']' in format string");
      i++;
    } else {
      return py_error(f, "Only '.' or '[' may follow ']' in format field specifier");
    }
    size_t len = (attr ? i : i - 1) - start;
    if (len == 0)
      return py_error(f, "Empty attribute in format string");
    if (!attr)
      return py_error(f, "'%s' object is not subscriptable", type_name(v));
    const char *a = s + start;
#define ATTR(name) (len == strlen(name) && memcmp(a, name, len) == 0)
    if (ATTR("real")) {
      /* itself */
    } else if (ATTR("imag")) {
      v->i = 0;
      v->d = 0.0;
    } else if (v->kind == V_INT && ATTR("numerator")) {
      /* itself */
    } else if (v->kind == V_INT && ATTR("denominator")) {
      v->i = 1;
    } else {
      return py_error(f, "'%s' object has no attribute '%.*s'", type_name(v), (int)len, a);
    }
#undef ATTR
  }
  return 0;
}

static int build(fmt_t *f, const char *s, size_t n, int depth, wbuf_t *w);

/* parse_field + output_markup for the field that starts after the '{' at
 * *pos; *pos ends after its closing '}'. */
static int markup(fmt_t *f, const char *s, size_t n, size_t *pos, int depth, wbuf_t *w) {
  size_t p = *pos, name_start = p;
  char c = 0;
  while (p < n) {
    c = s[p++];
    if (c == '{')
      return py_error(f, "unexpected '{' in field name");
    if (c == '[') {
      while (p < n && s[p] != ']')
        p++;
      continue;
    }
    if (c == '}' || c == ':' || c == '!')
      break;
  }
  size_t name_end = p - 1;
  uint32_t conversion = 0;
  size_t spec_start = 0, spec_end = 0;
  bool expand = false;
  if (c == '!' || c == ':') {
    if (c == '!') {
      if (p >= n)
        return py_error(f, "end of string while looking for conversion specifier");
      size_t used;
      conversion = utf8_get((const unsigned char *)s + p, n - p, &used);
      p += used;
      if (p < n) {
        c = s[p++];
        if (c == '}') {
          spec_start = spec_end = p;
          goto have_field;
        }
        if (c != ':')
          return py_error(f, "expected ':' after conversion specifier");
      }
    }
    spec_start = p;
    int count = 1;
    for (;;) {
      if (p >= n)
        return py_error(f, "unmatched '{' in format spec");
      c = s[p++];
      if (c == '{') {
        expand = true;
        count++;
      } else if (c == '}' && --count == 0) {
        spec_end = p - 1;
        break;
      }
    }
  } else if (c != '}') {
    return py_error(f, "expected '}' before end of string");
  } else {
    spec_start = spec_end = p;
  }
have_field:
  *pos = p;
  value_t v;
  int r = field_object(f, s + name_start, name_end - name_start, &v);
  if (r != 0)
    return r;
  if (conversion != 0) {
    if (conversion != 'r' && conversion != 's' && conversion != 'a') {
      if (conversion > 32 && conversion < 127)
        return py_error(f, "Unknown conversion specifier %c", (char)conversion);
      return py_error(f, "Unknown conversion specifier \\x%x", (unsigned)conversion);
    }
    to_str(&v);
  }
  size_t spec_len = spec_end - spec_start;
  char *spec = malloc(spec_len + 1 + (expand ? 1024 : 0));
  if (spec == NULL)
    return py_error(f, "out of memory");
  if (expand) {
    wbuf_t sw = {spec, 0, spec_len + 1 + 1024, false};
    spec[0] = '\0';
    r = build(f, s + spec_start, spec_len, depth - 1, &sw);
    if (r == 0 && sw.over)
      r = tb_errf(f->err, TB_ERANGE, "a nested format spec is too long");
  } else {
    memcpy(spec, s + spec_start, spec_len);
    spec[spec_len] = '\0';
  }
  if (r == 0)
    r = render(f, w, &v, spec);
  free(spec);
  return r;
}

/* build_string / do_markup / MarkupIterator_next. */
static int build(fmt_t *f, const char *s, size_t n, int depth, wbuf_t *w) {
  if (depth <= 0)
    return py_error(f, "Max string recursion exceeded");
  size_t p = 0;
  while (p < n) {
    size_t start = p;
    char c = 0;
    bool markup_follows = false;
    while (p < n) {
      c = s[p++];
      if (c == '{' || c == '}') {
        markup_follows = true;
        break;
      }
    }
    bool at_end = p >= n;
    size_t len = p - start;
    if (markup_follows && c == '}' && (at_end || s[p] != '}'))
      return py_error(f, "Single '}' encountered in format string");
    if (markup_follows && at_end && c == '{')
      return py_error(f, "Single '{' encountered in format string");
    if (markup_follows) {
      if (s[p] == c) { /* "{{" or "}}" */
        p++;
        markup_follows = false;
      } else {
        len--;
      }
    }
    w_bytes(w, s + start, len);
    if (markup_follows) {
      int r = markup(f, s, n, &p, depth, w);
      if (r != 0)
        return r;
    }
  }
  return 0;
}

int tb__py_format(const char *pattern, tb__pyfmt_get get, void *user, char *out, size_t len,
                  char *missing, size_t missing_len, tb_err_t *err) {
  fmt_t f = {get, user, missing, missing_len, err};
  wbuf_t w = {out, 0, len, false};
  if (len > 0)
    out[0] = '\0';
  if (missing_len > 0)
    missing[0] = '\0';
  int r = build(&f, pattern, strlen(pattern), 2, &w);
  /* {epoch:c} of 0 gives "\x00", which no file name can hold: Python's
   * open() then raises this. */
  if (r == 0 && !w.over && memchr(out, '\0', w.n) != NULL)
    r = tb_errf(err, TB_EINVAL, "embedded null byte");
  if (r == 0 && w.over)
    r = tb_errf(err, TB_ERANGE, "the formatted text is longer than %zu bytes",
                len > 0 ? len - 1 : 0);
  return r;
}

static bool one_value(void *user, const char *name, size_t len, tb__pyval_t *v) {
  (void)name;
  (void)len;
  *v = (tb__pyval_t){.is_int = false, .f = *(const double *)user};
  return true;
}

void tb__py_format_float(double v, const char *spec, char *out, size_t len) {
  char pattern[64], missing[8];
  snprintf(pattern, sizeof(pattern), "{v:%s}", spec);
  if (tb__py_format(pattern, one_value, &v, out, len, missing, sizeof(missing), NULL) != 0)
    snprintf(out, len, "?");
}
