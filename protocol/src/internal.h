/* Helpers shared by the protocol's source files; not part of the public API. */
#ifndef TB_PROTOCOL_INTERNAL_H
#define TB_PROTOCOL_INTERNAL_H

#include "trainbus/protocol.h"

/* Length of a valid UTF-8 sequence at s (avail bytes readable): n > 0, 0 if
 * invalid, -1 if a valid prefix is cut short by avail. */
int tb__utf8_seq(const unsigned char *s, size_t avail);

/* Writes s[0, n) as a quoted JSON string at dst, which must have room for
 * 6 * n + 2 bytes; returns the bytes written. Invalid UTF-8 becomes U+FFFD. */
size_t tb__json_esc(char *dst, const char *s, size_t n);

/* Bytes an id takes once encoded (upper bound), and the writer. */
#define TB__ID_MAX_ENC (6 * TB_PROTO_ID_MAX + 2)
size_t tb__id_to(char *dst, const tb_id_t *id);
/* Writes v in decimal (at most 20 bytes), no NUL; returns the length. */
size_t tb__int_to(char *dst, int64_t v);
extern const char tb__digits2[201]; /* "00" .. "99" */

/* printf into err (if not NULL) and return code. */
int tb__errf(tb_proto_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checks a JSON text before cJSON sees it: nesting depth, U+0000 escapes and
 * over-long numbers, none of which cJSON reports usefully. Returns 0 or a code
 * with err filled. */
int tb__json_precheck(const char *s, size_t len, tb_proto_err_t *err);

/* Parses s[0, len) with cJSON after tb__json_precheck, refusing trailing bytes,
 * then walks the tree refusing duplicate keys and numbers that overflowed a
 * double. Returns the tree (caller frees) or NULL with err filled. */
cJSON *tb__json_parse(const char *s, size_t len, tb_proto_err_t *err);

/* Short description of a value for messages: `-1`, `"abc"`, `an object`. */
void tb__describe(const cJSON *v, char *dst, size_t cap);

#endif
