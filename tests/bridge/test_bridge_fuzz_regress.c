/* Replays fuzz_bridge's seed corpus and its saved findings
 * (tests/fuzz/regressions/bridge-*) through the same invariant checks, so a
 * bug the fuzzer once found stays fixed in the ordinary suite and under ASan. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fuzz_bridge_body.h"

static int replay_dir(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strncmp(e->d_name, prefix, strlen(prefix)) != 0)
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, buf, len);
    tb_fuzz_bridge(copy, len);
    free(copy);
    n++;
  }
  closedir(d);
  return n;
}

static void test_replay(void **state) {
  (void)state;
  assert_true(replay_dir(TB_SOURCE_DIR "/tests/fuzz/corpus/bridge", "") >= 5);
  assert_true(replay_dir(TB_SOURCE_DIR "/tests/fuzz/regressions", "bridge-") >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_replay)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
