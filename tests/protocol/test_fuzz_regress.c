/* Replays the fuzz seed corpus and every saved crasher (tests/fuzz/) through
 * the same invariant checks the libFuzzer targets run, so a bug the fuzzers
 * once found stays fixed in the ordinary test suite and under ASan. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../fuzz/fuzz_body.h"

static int replay_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL)
    return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    /* An exact-size heap copy, so ASan sees any read past the input. */
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, buf, len);
    tb_fuzz_frame(copy, len);
    tb_fuzz_decode(copy, len);
    free(copy);
    n++;
  }
  closedir(d);
  return n;
}

static void test_replay(void **state) {
  (void)state;
  char dirs[] = TB_FUZZ_DIRS;
  int total = 0;
  for (char *dir = strtok(dirs, ":"); dir; dir = strtok(NULL, ":"))
    total += replay_dir(dir);
  /* The seed corpus alone has dozens of files; zero means a wrong path. */
  assert_true(total >= 20);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_replay)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
