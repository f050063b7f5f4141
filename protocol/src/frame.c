/* Line framing: a pure, resumable scanner in the style of picohttpparser.
 *
 * The caller owns the buffer and the reads; tb_frame_next only looks at bytes.
 * It validates UTF-8 and rejects raw control bytes as it scans, so a line that
 * reaches the decoder is already well-formed text. *scan_from remembers how far
 * the current line has been checked: feeding a 64 KiB line byte by byte costs
 * 64 Ki byte checks in total, not 64 Ki squared. When a multi-byte UTF-8
 * sequence is cut by the end of the buffer, scanning stops at its lead byte and
 * the next call validates the whole sequence again.
 *
 * The line length limit is checked per byte, so an oversize line is refused as
 * soon as byte max_line + 1 arrives, not when its newline (which may never
 * come) does. The one exception: when that byte is inside a multi-byte
 * character, the framer waits for the character's last byte (at most three
 * more) and then reports either the length or the broken UTF-8, so that the
 * result never depends on how the stream was cut into reads (the framer fuzz
 * target checks exactly this). */
#include "internal.h"

int tb_frame_next(const char *buf, size_t len, size_t *scan_from, size_t max_line,
                  size_t *line_len) {
  const unsigned char *s = (const unsigned char *)buf;
  size_t i = *scan_from;

  if (max_line > TB_PROTO_MAX_LINE_CEIL)
    max_line = TB_PROTO_MAX_LINE_CEIL;
  while (i < len) {
    unsigned char c = s[i];
    if (c == '\n') {
      *line_len = i;
      *scan_from = 0;
      return (int)(i + 1);
    }
    if (c == '\r') {
      if (i + 1 == len)
        break; /* need the next byte to know */
      if (s[i + 1] != '\n')
        return TB_PROTO_EPARSE;
      *line_len = i;
      *scan_from = 0;
      return (int)(i + 2);
    }
    /* i content bytes precede c, so c would be byte i + 1 of the text. */
    if (i >= max_line)
      return TB_PROTO_ETOO_LARGE;
    if (c < 0x80) {
      if (c < 0x20 && c != '\t')
        return TB_PROTO_EPARSE;
      i++;
      continue;
    }
    int n = tb__utf8_seq(s + i, len - i);
    if (n == 0)
      return TB_PROTO_EPARSE;
    if (n < 0)
      break; /* cut short: resume at the lead byte */
    if (i + (size_t)n > max_line)
      return TB_PROTO_ETOO_LARGE;
    i += (size_t)n;
  }
  *scan_from = i;
  /* A text of exactly max_line bytes may still be waiting for its "\r\n" or
   * "\n"; anything longer has been refused above. */
  return TB_PROTO_NEED_MORE;
}
