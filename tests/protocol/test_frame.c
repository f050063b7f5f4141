/* tb_frame_next: prefixes, byte-at-a-time feeding, limits, UTF-8, bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "trainbus/protocol.h"

static const char *const valid[] = {
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n",
    "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\r\n",
    "{\"s\":\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9D\x84\x9E\",\"t\":\"\ttab\"}\n",
    "\n",
};

static int frame(const char *s, size_t len, size_t max, size_t *line_len) {
  size_t from = 0;
  return tb_frame_next(s, len, &from, max, line_len);
}

/* Every proper prefix of a valid frame is "need more", scanning afresh or
 * resuming; the whole frame is one line of the right length. */
static void test_prefixes(void **state) {
  (void)state;
  for (size_t k = 0; k < sizeof valid / sizeof valid[0]; k++) {
    const char *s = valid[k];
    size_t n = strlen(s), line_len = 99;
    size_t from = 0;
    for (size_t i = 0; i < n; i++) {
      assert_int_equal(frame(s, i, 1024, &line_len), TB_PROTO_NEED_MORE);
      assert_int_equal(tb_frame_next(s, i, &from, 1024, &line_len), TB_PROTO_NEED_MORE);
      assert_true(from <= i);
    }
    assert_int_equal(tb_frame_next(s, n, &from, 1024, &line_len), (int)n);
    assert_int_equal(from, 0);
    size_t want = n - 1 - (n >= 2 && s[n - 2] == '\r');
    assert_int_equal(line_len, want);
  }
}

/* A stream of several lines fed one byte at a time yields the same lines as
 * when it arrives at once. */
static void test_byte_at_a_time(void **state) {
  (void)state;
  char stream[512] = "";
  for (size_t k = 0; k < sizeof valid / sizeof valid[0]; k++)
    strcat(stream, valid[k]);
  size_t total = strlen(stream);
  size_t start = 0, avail = 0, from = 0, line_len;
  int lines = 0;
  while (avail < total) {
    avail++;
    for (;;) {
      int rc = tb_frame_next(stream + start, avail - start, &from, 1024, &line_len);
      if (rc == TB_PROTO_NEED_MORE)
        break;
      assert_true(rc > 0);
      assert_int_equal((size_t)rc, strlen(valid[lines]));
      assert_memory_equal(stream + start, valid[lines], line_len);
      start += (size_t)rc;
      lines++;
    }
  }
  assert_int_equal(lines, 4);
  assert_int_equal(start, total);
}

/* Lines up to max_line pass with either terminator; one byte more is refused
 * as soon as it arrives, before any newline. */
static void test_oversize(void **state) {
  (void)state;
  char buf[64];
  size_t line_len;
  memset(buf, 'x', 16);
  memcpy(buf + 16, "\r\n", 2);
  assert_int_equal(frame(buf, 18, 16, &line_len), 18);
  assert_int_equal(line_len, 16);
  buf[16] = '\n';
  assert_int_equal(frame(buf, 17, 16, &line_len), 17);
  assert_int_equal(frame(buf, 16, 16, &line_len), TB_PROTO_NEED_MORE);
  buf[16] = 'x';
  assert_int_equal(frame(buf, 17, 16, &line_len), TB_PROTO_ETOO_LARGE);
  /* Resuming scan: the limit is found on the byte that crosses it. */
  size_t from = 0;
  for (size_t i = 1; i <= 16; i++)
    assert_int_equal(tb_frame_next(buf, i, &from, 16, &line_len), TB_PROTO_NEED_MORE);
  assert_int_equal(tb_frame_next(buf, 17, &from, 16, &line_len), TB_PROTO_ETOO_LARGE);
  /* A multi-byte character straddling the limit: the verdict waits for the
   * character, so a broken one is reported as such whatever the read sizes. */
  memcpy(buf + 15, "\xE2\x82\xAC", 3);
  assert_int_equal(frame(buf, 17, 16, &line_len), TB_PROTO_NEED_MORE);
  assert_int_equal(frame(buf, 18, 16, &line_len), TB_PROTO_ETOO_LARGE);
  buf[17] = '"';
  assert_int_equal(frame(buf, 18, 16, &line_len), TB_PROTO_EPARSE);
  /* The default limit. */
  static char big[TB_PROTO_MAX_LINE_DEFAULT + 2];
  memset(big, ' ', sizeof big);
  assert_int_equal(frame(big, TB_PROTO_MAX_LINE_DEFAULT, TB_PROTO_MAX_LINE_DEFAULT, &line_len),
                   TB_PROTO_NEED_MORE);
  assert_int_equal(frame(big, sizeof big, TB_PROTO_MAX_LINE_DEFAULT, &line_len),
                   TB_PROTO_ETOO_LARGE);
  big[TB_PROTO_MAX_LINE_DEFAULT] = '\n';
  assert_int_equal(frame(big, sizeof big, TB_PROTO_MAX_LINE_DEFAULT, &line_len),
                   TB_PROTO_MAX_LINE_DEFAULT + 1);
}

static void test_bad_utf8(void **state) {
  (void)state;
  static const char *const bad[] = {
      "\"\xC0\x80\"\n",         /* overlong NUL */
      "\"\xC1\xBF\"\n",         /* overlong */
      "\"\xE0\x80\xAF\"\n",     /* overlong '/' */
      "\"\xED\xA0\x80\"\n",     /* surrogate U+D800 */
      "\"\xF4\x90\x80\x80\"\n", /* above U+10FFFF */
      "\"\xF5\x80\x80\x80\"\n", /* invalid lead */
      "\"\x80\"\n",             /* stray continuation */
      "\"\xE2\x82x\"\n",        /* truncated sequence */
      "\"\xFF\"\n",
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    size_t line_len;
    assert_int_equal(frame(bad[k], strlen(bad[k]), 1024, &line_len), TB_PROTO_EPARSE);
  }
  /* A valid sequence cut by the end of the buffer is need-more, then fine. */
  const char *ok = "\"\xE2\x82\xAC\"\n";
  size_t from = 0, line_len;
  assert_int_equal(tb_frame_next(ok, 3, &from, 1024, &line_len), TB_PROTO_NEED_MORE);
  assert_int_equal(from, 1); /* stopped at the lead byte */
  assert_int_equal(tb_frame_next(ok, 6, &from, 1024, &line_len), 6);
  assert_int_equal(line_len, 5);
}

static void test_bad_bytes(void **state) {
  (void)state;
  size_t line_len;
  assert_int_equal(frame("{}\rx\n", 5, 1024, &line_len), TB_PROTO_EPARSE); /* bare CR */
  assert_int_equal(frame("{\x01}\n", 4, 1024, &line_len), TB_PROTO_EPARSE);
  assert_int_equal(frame("{\0}\n", 4, 1024, &line_len), TB_PROTO_EPARSE);
  assert_int_equal(frame("{}\r", 3, 1024, &line_len), TB_PROTO_NEED_MORE);
  assert_int_equal(frame("\r\n", 2, 1024, &line_len), 2);
  assert_int_equal(line_len, 0);
  /* DEL is legal JSON text. */
  assert_int_equal(frame("\"\x7F\"\n", 4, 1024, &line_len), 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefixes),  cmocka_unit_test(test_byte_at_a_time),
      cmocka_unit_test(test_oversize),  cmocka_unit_test(test_bad_utf8),
      cmocka_unit_test(test_bad_bytes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
