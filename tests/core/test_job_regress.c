/* Replays the job fuzzer's seed corpus (tests/fuzz/corpus/job) and its saved
 * inputs (tests/fuzz/regressions/job-*) through the checks fuzz_job runs
 * (tests/fuzz/fuzz_job_body.c), so what it once broke stays fixed in the
 * ordinary suite, and under ASan, where the body also counts memory. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../fuzz/fuzz_job_body.h"

/* Replays every file of dir whose name starts with prefix; returns how many. */
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
    /* An exact-size heap copy, so ASan sees any read past the input. */
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, buf, len);
    tb_fuzz_job(copy, len);
    free(copy);
    n++;
  }
  closedir(d);
  return n;
}

static void test_replay(void **state) {
  (void)state;
  /* The seeds are 21 jobs; fewer means a wrong path. */
  assert_true(replay_dir(TB_FUZZ_DIR "/corpus/job", "") >= 21);
  assert_true(replay_dir(TB_FUZZ_DIR "/regressions", "job-") >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_replay)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
