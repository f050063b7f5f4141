/* Strict JSON intake for both decoders: a byte pre-pass, cJSON, a tree walk.
 *
 * cJSON is a fine tree builder but a lenient parser: it takes "01" and "1." as
 * numbers, control bytes as whitespace, raw control characters inside strings,
 * turns "\u0000" into a string that silently ends early, recurses 1000 levels
 * deep, keeps every duplicate key (and returns the first) and parses 1e999 as
 * infinity. The pre-pass enforces RFC 8259 where cJSON does not (number
 * grammar, control bytes, UTF-8) plus our own limits (depth, number length,
 * no U+0000), with byte offsets in its messages. It runs once over the bytes
 * and costs little next to building the tree. The walk afterwards refuses
 * duplicate keys and non-finite numbers, naming the path of the offender. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Longest number token accepted: 17 significant digits, sign, point, exponent
 * and some leading zeros after the point fit comfortably; anything longer is
 * a mistake or an attack on strtod. */
#define NUM_TOKEN_MAX 40

/* Scans a number at s[i] per RFC 8259; returns its length, or 0 if invalid. */
static size_t number_len(const char *s, size_t len, size_t i) {
  size_t j = i;
#define DIGIT(k) ((k) < len && s[k] >= '0' && s[k] <= '9')
  if (j < len && s[j] == '-')
    j++;
  if (j < len && s[j] == '0') {
    j++;
  } else if (DIGIT(j)) {
    while (DIGIT(j))
      j++;
  } else {
    return 0;
  }
  if (j < len && s[j] == '.') {
    j++;
    if (!DIGIT(j))
      return 0;
    while (DIGIT(j))
      j++;
  }
  if (j < len && (s[j] == 'e' || s[j] == 'E')) {
    j++;
    if (j < len && (s[j] == '+' || s[j] == '-'))
      j++;
    if (!DIGIT(j))
      return 0;
    while (DIGIT(j))
      j++;
  }
  /* A digit right after a complete number ("01") is not JSON. */
  if (DIGIT(j))
    return 0;
#undef DIGIT
  return j - i;
}

int tb__json_precheck(const char *s, size_t len, tb_proto_err_t *err) {
  const unsigned char *u = (const unsigned char *)s;
  int depth = 0;
  size_t i = 0;
  while (i < len) {
    unsigned char c = u[i];
    if (c == '"') {
      /* String body: no raw control bytes, valid UTF-8, no \u0000. */
      i++;
      for (;;) {
        if (i >= len)
          return tb__errf(err, TB_PROTO_EPARSE, "invalid JSON: unterminated string");
        c = u[i];
        if (c == '"')
          break;
        if (c < 0x20)
          return tb__errf(err, TB_PROTO_EPARSE,
                          "invalid JSON: raw control character 0x%02x in a string at byte %zu", c,
                          i);
        if (c == '\\') {
          if (i + 5 < len && u[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
            return tb__errf(err, TB_PROTO_EINVALID_REQUEST,
                            "strings must not contain U+0000 (\\u0000 at byte %zu)", i);
          i += 2; /* cJSON checks the escape itself */
          continue;
        }
        if (c >= 0x80) {
          int n = tb__utf8_seq(u + i, len - i);
          if (n <= 0)
            return tb__errf(err, TB_PROTO_EPARSE, "invalid UTF-8 at byte %zu", i);
          i += (size_t)n;
          continue;
        }
        i++;
      }
      i++;
      continue;
    }
    if (c == '{' || c == '[') {
      if (++depth > TB_PROTO_MAX_DEPTH)
        return tb__errf(err, TB_PROTO_EINVALID_REQUEST, "nesting deeper than %d levels at byte %zu",
                        TB_PROTO_MAX_DEPTH, i);
    } else if (c == '}' || c == ']') {
      depth--;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t n = number_len(s, len, i);
      if (n == 0)
        return tb__errf(err, TB_PROTO_EPARSE, "invalid JSON: malformed number at byte %zu", i);
      if (n > NUM_TOKEN_MAX)
        return tb__errf(err, TB_PROTO_EPARSE,
                        "number at byte %zu has %zu characters (at most %d accepted)", i, n,
                        NUM_TOKEN_MAX);
      i += n;
      continue;
    } else if (c < 0x20 && c != ' ' && c != '\t' && c != '\r' && c != '\n') {
      return tb__errf(err, TB_PROTO_EPARSE, "invalid JSON: control byte 0x%02x at byte %zu", c, i);
    } else if (c >= 0x80) {
      return tb__errf(err, TB_PROTO_EPARSE, "invalid JSON: unexpected byte 0x%02x at byte %zu", c,
                      i);
    }
    i++;
  }
  return 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Appends ".key" or "[i]" to path (truncating quietly; only messages use it). */
static void path_push(char *path, size_t cap, const cJSON *parent, const cJSON *child, int idx) {
  size_t n = strlen(path);
  if (n >= cap - 1)
    return;
  if (cJSON_IsObject(parent))
    snprintf(path + n, cap - n, "%s%s", n ? "." : "", child->string);
  else
    snprintf(path + n, cap - n, "[%d]", idx);
}

static int walk(const cJSON *v, char *path, size_t cap, tb_proto_err_t *err) {
  int code = strncmp(path, "params", 6) == 0 ? TB_PROTO_EINVALID_PARAMS : TB_PROTO_EINVALID_REQUEST;
  if (cJSON_IsNumber(v) && !isfinite(v->valuedouble))
    return tb__errf(err, code, "%s: number out of range (beyond the largest double)",
                    path[0] ? path : "value");
  if (!cJSON_IsObject(v) && !cJSON_IsArray(v))
    return 0;

  if (cJSON_IsObject(v)) {
    /* Duplicate keys: quadratic for small objects, sort for large ones so a
     * 64 KiB object of tiny keys cannot cost 10^8 comparisons. */
    int n = cJSON_GetArraySize(v);
    if (n > 1) {
      const char *small[16];
      const char **keys = n <= 16 ? small : malloc((size_t)n * sizeof *keys);
      if (keys == NULL)
        return tb__errf(err, TB_PROTO_EINTERNAL, "out of memory");
      int k = 0;
      for (const cJSON *c = v->child; c; c = c->next)
        keys[k++] = c->string;
      qsort(keys, (size_t)n, sizeof *keys, cmp_str);
      const char *dup = NULL;
      for (int j = 1; j < n && !dup; j++)
        if (strcmp(keys[j - 1], keys[j]) == 0)
          dup = keys[j];
      if (dup) {
        char d[80];
        snprintf(d, sizeof d, "%s", dup);
        if (keys != small)
          free(keys);
        return tb__errf(err, code, "%s: duplicate key \"%s\"", path[0] ? path : "message", d);
      }
      if (keys != small)
        free(keys);
    }
  }
  size_t n0 = strlen(path);
  int idx = 0;
  for (const cJSON *c = v->child; c; c = c->next, idx++) {
    path_push(path, cap, v, c, idx);
    int rc = walk(c, path, cap, err);
    path[n0] = '\0';
    if (rc != 0)
      return rc;
  }
  return 0;
}

cJSON *tb__json_parse(const char *s, size_t len, tb_proto_err_t *err) {
  if (len == 0) {
    tb__errf(err, TB_PROTO_EPARSE, "invalid JSON: empty line");
    return NULL;
  }
  if (tb__json_precheck(s, len, err) != 0)
    return NULL;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(s, len, &end, 0);
  if (root == NULL) {
    size_t at = end && end >= s && end <= s + len ? (size_t)(end - s) : 0;
    tb__errf(err, TB_PROTO_EPARSE, "invalid JSON at byte %zu", at);
    return NULL;
  }
  size_t at = (size_t)(end - s);
  while (at < len && (s[at] == ' ' || s[at] == '\t' || s[at] == '\r' || s[at] == '\n'))
    at++;
  if (at < len) {
    tb__errf(err, TB_PROTO_EPARSE, "invalid JSON: unexpected data after the value at byte %zu", at);
    cJSON_Delete(root);
    return NULL;
  }
  char path[160] = "";
  if (walk(root, path, sizeof path, err) != 0) {
    cJSON_Delete(root);
    return NULL;
  }
  return root;
}

void tb__describe(const cJSON *v, char *dst, size_t cap) {
  if (cJSON_IsNumber(v)) {
    char num[TB_PROTO_NUM_MAX + 1];
    size_t n = tb_json_num_to(num, v->valuedouble);
    num[n] = '\0';
    snprintf(dst, cap, "%s", num);
  } else if (cJSON_IsString(v)) {
    size_t n = strlen(v->valuestring);
    snprintf(dst, cap, "\"%.32s%s\"", v->valuestring, n > 32 ? "..." : "");
  } else if (cJSON_IsBool(v)) {
    snprintf(dst, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
  } else if (cJSON_IsNull(v)) {
    snprintf(dst, cap, "null");
  } else if (cJSON_IsArray(v)) {
    snprintf(dst, cap, "an array");
  } else if (cJSON_IsObject(v)) {
    snprintf(dst, cap, "an object");
  } else {
    snprintf(dst, cap, "nothing");
  }
}
