/* A probe for tests/keras/test_pyformat.py: formats ModelCheckpoint file
 * paths with trainbus's own tb_format_filepath() so the test can compare them
 * with Python's str.format of the same values.
 *
 * One request per input line: "<pattern as hex bytes> <x as a C float
 * literal> <epoch>". x is the logs value "x" (a float; also "loss"), epoch
 * the int. One answer per line: "OK <result as hex bytes>" or
 * "ERR <code name> <message>". */
#include "trainbus/callbacks.h"
#include "trainbus/logs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unhex(const char *h, char *out, size_t cap) {
  size_t n = strlen(h);
  if (n % 2 != 0 || n / 2 >= cap)
    return -1;
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    if (sscanf(h + 2 * i, "%2x", &v) != 1)
      return -1;
    out[i] = (char)v;
  }
  out[n / 2] = '\0';
  return 0;
}

int main(void) {
  static char line[1 << 16], hex[1 << 15], pattern[1 << 14], out[1024];
  while (fgets(line, sizeof(line), stdin) != NULL) {
    char xs[128];
    int epoch;
    if (sscanf(line, "%32767s %127s %d", hex, xs, &epoch) != 3 ||
        unhex(strcmp(hex, "-") == 0 ? "" : hex, pattern, sizeof(pattern)) != 0) {
      printf("BAD %s", line);
      continue;
    }
    tb_logs_t logs;
    tb_logs_clear(&logs);
    double x = strtod(xs, NULL);
    tb_logs_set(&logs, "x", x);
    tb_logs_set(&logs, "loss", x);
    tb_err_t err = {{0}};
    int r = tb_format_filepath(pattern, epoch, 0, &logs, out, sizeof(out), &err);
    if (r == 0) {
      printf("OK ");
      for (const unsigned char *p = (const unsigned char *)out; *p; p++)
        printf("%02x", *p);
      printf("\n");
    } else {
      for (char *p = err.msg; *p; p++)
        if (*p == '\n')
          *p = ' ';
      printf("ERR %s %s\n", tb_err_name(r), err.msg);
    }
    fflush(stdout);
  }
  return 0;
}
