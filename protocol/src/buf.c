/* Growable buffers and the JSON value writers every encoder is built from.
 *
 * Writers reserve their worst case first and then write raw bytes, so the
 * inner loops never check capacity. Strings are escaped by one byte loop with
 * a fast path for printable ASCII; invalid UTF-8 is replaced by U+FFFD so the
 * server can never emit a line a strict client would reject. Numbers are
 * written so that they parse back to the same double: integral values below
 * 2^53 as integers (the common case for counters, and much cheaper), other
 * finite values with %.17g, which is always enough digits for an exact round
 * trip (not always the shortest: 0.1 prints as 0.10000000000000001). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void *(*buf_realloc)(void *, size_t) = realloc;
static void (*buf_free)(void *) = free;

void tb_proto_set_allocator(void *(*realloc_fn)(void *, size_t), void (*free_fn)(void *)) {
  buf_realloc = realloc_fn ? realloc_fn : realloc;
  buf_free = free_fn ? free_fn : free;
}

void tb_buf_init(tb_buf_t *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void tb_buf_free(tb_buf_t *b) {
  if (b == NULL)
    return;
  buf_free(b->data);
  tb_buf_init(b);
}

int tb_buf_reserve(tb_buf_t *b, size_t extra) {
  if (extra <= b->cap - b->len)
    return 0;
  if (extra > SIZE_MAX / 2 - b->len)
    return TB_PROTO_EINTERNAL;
  size_t need = b->len + extra;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need)
    cap *= 2;
  char *p = buf_realloc(b->data, cap);
  if (p == NULL)
    return TB_PROTO_EINTERNAL;
  b->data = p;
  b->cap = cap;
  return 0;
}

int tb_buf_append(tb_buf_t *b, const void *p, size_t n) {
  if (n == 0)
    return 0;
  if (tb_buf_reserve(b, n) != 0)
    return TB_PROTO_EINTERNAL;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

int tb__utf8_seq(const unsigned char *s, size_t avail) {
  unsigned char c = s[0];
  int n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else {
    return 0;
  }
  for (int i = 1; i < n; i++) {
    if ((size_t)i >= avail)
      return -1;
    unsigned char b = s[i];
    if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
      return 0;
  }
  return n;
}

size_t tb__json_esc(char *dst, const char *src, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)src;
  char *d = dst;
  *d++ = '"';
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      *d++ = (char)c;
      i++;
      continue;
    }
    if (c >= 0x80) {
      int k = tb__utf8_seq(s + i, n - i);
      if (k > 0) {
        memcpy(d, s + i, (size_t)k);
        d += k;
        i += (size_t)k;
      } else {
        memcpy(d, "\xEF\xBF\xBD", 3);
        d += 3;
        i++;
      }
      continue;
    }
    *d++ = '\\';
    switch (c) {
    case '"':
      *d++ = '"';
      break;
    case '\\':
      *d++ = '\\';
      break;
    case '\n':
      *d++ = 'n';
      break;
    case '\r':
      *d++ = 'r';
      break;
    case '\t':
      *d++ = 't';
      break;
    case '\b':
      *d++ = 'b';
      break;
    case '\f':
      *d++ = 'f';
      break;
    default:
      memcpy(d, "u00", 3);
      d += 3;
      *d++ = hex[c >> 4];
      *d++ = hex[c & 15];
    }
    i++;
  }
  *d++ = '"';
  return (size_t)(d - dst);
}

/* "00" .. "99": two digits per division. */
const char tb__digits2[201] =
    "0001020304050607080910111213141516171819202122232425262728293031323334"
    "3536373839404142434445464748495051525354555657585960616263646566676869"
    "707172737475767778798081828384858687888990919293949596979899";

/* Writes v in decimal; returns the length. */
size_t tb__int_to(char *dst, int64_t v) {
  char tmp[24], *p = tmp + sizeof(tmp);
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  while (u >= 100) {
    unsigned r = (unsigned)(u % 100);
    u /= 100;
    p -= 2;
    memcpy(p, tb__digits2 + 2 * r, 2);
  }
  if (u >= 10) {
    p -= 2;
    memcpy(p, tb__digits2 + 2 * u, 2);
  } else {
    *--p = (char)('0' + u);
  }
  size_t k = 0, n = (size_t)(tmp + sizeof(tmp) - p);
  if (v < 0)
    dst[k++] = '-';
  memcpy(dst + k, p, n);
  return k + n;
}

/* printf's "%.17g" for 1e-4 <= |v| < 1e17 (fixed notation), exactly, with
 * integer arithmetic: about ten times faster than snprintf, whose
 * arbitrary-precision path dominated the event encoder's time. Returns 0 for
 * a value outside that range (the caller uses snprintf). The digits are
 * D = round-half-even(|v| * 10^q) with q = 16 - X and X the decimal exponent,
 * and |v| * 10^q = m * 10^q / 2^s computed exactly in 128 bits (m < 2^53,
 * 10^q <= 10^20 < 2^67, s <= 66): no approximation anywhere. Tested against
 * snprintf on millions of values (tests/protocol/test_encode.c). */
__extension__ typedef unsigned __int128 tb_u128;

static size_t g17_fixed(char *dst, double v) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  int be = (int)((bits >> 52) & 0x7ff);
  if (be == 0 || be == 0x7ff)
    return 0;
  uint64_t m = (bits & ((UINT64_C(1) << 52) - 1)) | (UINT64_C(1) << 52);
  int s = 1075 - be; /* |v| = m / 2^s */
  if (s <= 0 || s > 66)
    return 0; /* integers (the caller's fast path) and |v| < ~1.4e-4 */
  static const uint64_t p10[20] = {1ull,
                                   10ull,
                                   100ull,
                                   1000ull,
                                   10000ull,
                                   100000ull,
                                   1000000ull,
                                   10000000ull,
                                   100000000ull,
                                   1000000000ull,
                                   10000000000ull,
                                   100000000000ull,
                                   1000000000000ull,
                                   10000000000000ull,
                                   100000000000000ull,
                                   1000000000000000ull,
                                   10000000000000000ull,
                                   100000000000000000ull,
                                   1000000000000000000ull,
                                   10000000000000000000ull};
  /* X estimated from the binary exponent (52 - s = floor(log2|v|)), then
   * corrected so that floor(|v| * 10^(16-X)) has 17 digits. */
  int x = (int)((52 - s) * 30103L / 100000L) - ((52 - s) < 0);
  tb_u128 n, fl;
  for (int tries = 0;; tries++) {
    int q = 16 - x;
    if (q < 0 || q > 20 || tries > 3)
      return 0;
    n = q < 20 ? (tb_u128)m * p10[q] : (tb_u128)m * p10[19] * 10u;
    fl = n >> s;
    if (fl >= p10[17])
      x++;
    else if (fl < p10[16])
      x--;
    else
      break;
  }
  uint64_t d = (uint64_t)fl;
  tb_u128 rem = n - (fl << s), half = (tb_u128)1 << (s - 1);
  if (rem > half || (rem == half && (d & 1)))
    d++;
  if (d == p10[17]) {
    d = p10[16];
    x++;
  }
  if (x < -4 || x > 16)
    return 0;
  char dig[17];
  for (int i = 16; i >= 0; i--) {
    dig[i] = (char)('0' + d % 10);
    d /= 10;
  }
  int last = 16; /* the last significant digit after trailing zeros go */
  while (last > 0 && dig[last] == '0')
    last--;
  size_t k = 0;
  if (v < 0)
    dst[k++] = '-';
  if (x >= 0) {
    memcpy(dst + k, dig, (size_t)x + 1);
    k += (size_t)x + 1;
    if (last > x) {
      dst[k++] = '.';
      memcpy(dst + k, dig + x + 1, (size_t)(last - x));
      k += (size_t)(last - x);
    }
  } else {
    dst[k++] = '0';
    dst[k++] = '.';
    for (int i = 0; i < -x - 1; i++)
      dst[k++] = '0';
    memcpy(dst + k, dig, (size_t)last + 1);
    k += (size_t)last + 1;
  }
  return k;
}

size_t tb_json_num_to(char *dst, double v) {
  if (isnan(v)) {
    memcpy(dst, "\"NaN\"", 5);
    return 5;
  }
  if (isinf(v)) {
    if (v > 0) {
      memcpy(dst, "\"Infinity\"", 10);
      return 10;
    }
    memcpy(dst, "\"-Infinity\"", 11);
    return 11;
  }
  if (v == 0.0) {
    if (signbit(v)) {
      memcpy(dst, "-0", 2);
      return 2;
    }
    dst[0] = '0';
    return 1;
  }
  if (v > -9007199254740992.0 && v < 9007199254740992.0 && v == (double)(int64_t)v)
    return tb__int_to(dst, (int64_t)v);
  size_t fast = g17_fixed(dst, v);
  if (fast > 0)
    return fast;
  int n = snprintf(dst, TB_PROTO_NUM_MAX, "%.17g", v);
  if (n < 0 || n >= TB_PROTO_NUM_MAX)
    n = 0; /* cannot happen for a finite double; keep the output valid */
  /* A locale with a decimal comma would corrupt the JSON; the daemon keeps
   * LC_NUMERIC "C", but an embedding program may not. */
  for (int i = 0; i < n; i++)
    if (dst[i] == ',')
      dst[i] = '.';
  if (n == 0) {
    dst[0] = '0';
    n = 1;
  }
  return (size_t)n;
}

int tb_json_num(tb_buf_t *b, double v) {
  if (tb_buf_reserve(b, TB_PROTO_NUM_MAX) != 0)
    return TB_PROTO_EINTERNAL;
  b->len += tb_json_num_to(b->data + b->len, v);
  return 0;
}

int tb_json_int(tb_buf_t *b, int64_t v) {
  if (tb_buf_reserve(b, 24) != 0)
    return TB_PROTO_EINTERNAL;
  b->len += tb__int_to(b->data + b->len, v);
  return 0;
}

int tb_json_strn(tb_buf_t *b, const char *s, size_t n) {
  if (n > (SIZE_MAX - 2) / 6 || tb_buf_reserve(b, 6 * n + 2) != 0)
    return TB_PROTO_EINTERNAL;
  b->len += tb__json_esc(b->data + b->len, s, n);
  return 0;
}

int tb_json_str(tb_buf_t *b, const char *s) {
  return tb_json_strn(b, s ? s : "", s ? strlen(s) : 0);
}

/* cJSON's own printer writes a double with 15 significant digits whenever
 * that parses back to within an ulp of it (print_number's compare_double),
 * so 0.30000000000000004 comes out "0.3": not the same number. Every value
 * trainbus sends from a cJSON tree goes through this writer instead. */
int tb_json_value(tb_buf_t *b, const cJSON *v) {
  if (v == NULL)
    return TB_PROTO_EINTERNAL;
  size_t start = b->len;
  int rc = 0;
  switch (v->type & 0xff) {
  case cJSON_NULL:
    rc = tb_buf_append(b, "null", 4);
    break;
  case cJSON_False:
    rc = tb_buf_append(b, "false", 5);
    break;
  case cJSON_True:
    rc = tb_buf_append(b, "true", 4);
    break;
  case cJSON_Number:
    rc = tb_json_num(b, v->valuedouble);
    break;
  case cJSON_String:
    rc = tb_json_str(b, v->valuestring);
    break;
  case cJSON_Array:
  case cJSON_Object: {
    bool obj = cJSON_IsObject(v);
    rc = tb_buf_append(b, obj ? "{" : "[", 1);
    for (const cJSON *it = v->child; rc == 0 && it != NULL; it = it->next) {
      if (it != v->child)
        rc = tb_buf_append(b, ",", 1);
      if (rc == 0 && obj)
        rc = tb_json_str(b, it->string) || tb_buf_append(b, ":", 1);
      if (rc == 0)
        rc = tb_json_value(b, it);
    }
    rc = rc || tb_buf_append(b, obj ? "}" : "]", 1);
    break;
  }
  default: /* cJSON_Raw and invalid items have no place in a message */
    rc = TB_PROTO_EINTERNAL;
  }
  if (rc != 0) {
    b->len = start;
    return TB_PROTO_EINTERNAL;
  }
  return 0;
}

size_t tb__id_to(char *dst, const tb_id_t *id) {
  if (id == NULL || id->kind == TB_ID_NONE) {
    memcpy(dst, "null", 4);
    return 4;
  }
  if (id->kind == TB_ID_INT)
    return tb__int_to(dst, id->num);
  return tb__json_esc(dst, id->str, strnlen(id->str, TB_PROTO_ID_MAX - 1));
}

int tb__errf(tb_proto_err_t *err, int code, const char *fmt, ...) {
  if (err != NULL) {
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}
