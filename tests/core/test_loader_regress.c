/* Replays the loaders' fuzz seed corpus (tests/fuzz/corpus/csv, npy) and
 * every saved input (tests/fuzz/regressions) through the same checks the
 * libFuzzer targets fuzz_csv and fuzz_npy run, so what the fuzzers once
 * broke stays fixed in the ordinary suite and under ASan. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../fuzz/fuzz_loaders.h"

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
    tb_fuzz_csv(copy, len);
    tb_fuzz_npy(copy, len);
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
  /* The seeds alone are twenty files; fewer means a wrong path. */
  assert_true(total >= 20);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_replay)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
