/* NumPy .npy files as np.save writes them (issue 18): every element type
 * loads to the values numpy itself converts them to (float32), in format
 * versions 1, 2 and 3, plain and gzip, little- and big-endian, with any
 * number of dimensions; Fortran order, object arrays, strings, float16,
 * records, 0-d arrays, truncated files, trailing bytes and an .npz given as
 * .npy are refused, each with its message; values that are not finite, out
 * of float32's range or bad class labels are named by their numpy index;
 * messages of a redacted load show nothing read from the file.
 *
 * The files are written by Debian's python3-numpy (TB_PYTHON3, found at
 * configure time; scripts/setup.sh installs it), together with what numpy
 * says each array is as float32 (x.astype(np.float32).tobytes()), so the
 * expected values come from numpy, not from this file. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "trainbus/data.h"

#include "loaders.h" /* tb__npy_parse */

static char tmpdir[] = "/tmp/tb_test_npy_XXXXXX";

/* Writes every file the tests read. argv[1] is the folder. */
static const char SCRIPT[] =
    "import gzip, sys, numpy as np\n"
    "d = sys.argv[1]\n"
    "rng = np.random.default_rng(7)\n"
    "base = rng.normal(0, 100, size=(6, 3))\n"
    "def save(name, a, **kw):\n"
    "    np.save(f'{d}/{name}.npy', a, **kw)\n"
    "    open(f'{d}/{name}.f32', 'wb').write(np.ascontiguousarray(a).astype('<f4').tobytes())\n"
    "save('f4', base.astype(np.float32))\n"
    "save('f8', base)\n"
    "for t in ['i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8']:\n"
    "    info = np.iinfo(t)\n"
    "    a = np.clip(base * 1e3, info.min, info.max).astype(t)\n"
    "    a[0, 0], a[0, 1] = info.min, info.max\n"
    "    save(t, a)\n"
    "save('b1', base > 0)\n"
    "save('be_f4', base.astype('>f4'))\n"
    "save('be_i8', (base * 1e6).astype('>i8'))\n"
    "save('one_d', np.arange(6, dtype=np.float64) / 4)\n"
    "save('images', rng.integers(0, 256, size=(6, 2, 5), dtype=np.uint8))\n"
    "save('labels', np.array([0, 2, 1, 2, 0, 1], dtype=np.int64))\n"
    "save('labels_col', np.array([[1], [0], [1], [1], [0], [0]], dtype=np.uint8))\n"
    "save('onehot', np.eye(3, dtype=np.float32)[[0, 2, 1, 2, 0, 1]])\n"
    "for v in [(2, 0), (3, 0)]:\n"
    "    with open(f'{d}/v{v[0]}.npy', 'wb') as f:\n"
    "        np.lib.format.write_array(f, base.astype(np.float32), version=v)\n"
    "with gzip.open(f'{d}/gz.npy.gz', 'wb') as f:\n"
    "    np.save(f, base)\n"
    "save('fortran', np.asfortranarray(base))\n"
    "np.save(f'{d}/object.npy', np.array([1, 'a', None], dtype=object), allow_pickle=True)\n"
    "np.save(f'{d}/strings.npy', np.array(['cat', 'dog']))\n"
    "np.save(f'{d}/half.npy', base.astype(np.float16))\n"
    "np.save(f'{d}/complex.npy', base.astype(np.complex64))\n"
    "np.save(f'{d}/records.npy', np.zeros(3, dtype=[('a', '<f4'), ('b', '<i4')]))\n"
    "np.save(f'{d}/scalar.npy', np.float32(3))\n"
    "np.save(f'{d}/empty.npy', np.zeros((0, 3), dtype=np.float32))\n"
    "np.save(f'{d}/nan.npy', np.array([[1, 2], [3, np.nan]], dtype=np.float32))\n"
    "np.save(f'{d}/huge.npy', np.array([[1.0], [1e300]]))\n"
    "np.save(f'{d}/badlabels.npy', np.array([0, 1, 3.5, 1, 0, 1]))\n"
    "np.save(f'{d}/five.npy', np.zeros(5, dtype=np.int32))\n"
    "np.savez(f'{d}/arrays.npz', x=base)\n"
    "raw = open(f'{d}/f8.npy', 'rb').read()\n"
    "open(f'{d}/truncated.npy', 'wb').write(raw[:-5])\n"
    "open(f'{d}/trailing.npy', 'wb').write(raw + b'extra')\n"
    "open(f'{d}/cut_header.npy', 'wb').write(raw[:40])\n"
    "# Headers that claim far more data than follows (1.8 GB, under the\n"
    "# 2 GiB file limit), plain and gzip.\n"
    "import io\n"
    "h = io.BytesIO()\n"
    "np.lib.format.write_array_header_1_0(h, {'descr': '|u1', 'fortran_order': False,\n"
    "                                         'shape': (600000000, 3)})\n"
    "liar = h.getvalue() + bytes(range(100))\n"
    "open(f'{d}/liar.npy', 'wb').write(liar)\n"
    "with gzip.open(f'{d}/liar.npy.gz', 'wb') as f:\n"
    "    f.write(liar)\n"
    "# Larger than the first allocation a .gz gets (2^20 floats): it grows.\n"
    "with gzip.open(f'{d}/long.npy.gz', 'wb', compresslevel=1) as f:\n"
    "    np.save(f, np.arange(1500000, dtype=np.float32).reshape(500000, 3))\n";

static int group_setup(void **state) {
  char cmd[1024], script[600];
  if (mkdtemp(tmpdir) == NULL)
    return -1;
  snprintf(script, sizeof(script), "%s/write.py", tmpdir);
  FILE *f = fopen(script, "w");
  if (f == NULL || fputs(SCRIPT, f) < 0 || fclose(f) != 0)
    return -1;
  snprintf(cmd, sizeof(cmd), "%s %s %s", TB_PYTHON3, script, tmpdir);
  if (system(cmd) != 0) {
    fprintf(stderr,
            "test_npy: `%s` failed: numpy (Debian python3-numpy, installed by "
            "scripts/setup.sh) writes the test files\n",
            cmd);
    return -1;
  }
  return 0;
}

static int group_teardown(void **state) {
  DIR *dir = opendir(tmpdir);
  struct dirent *e;
  char p[600];
  if (dir == NULL)
    return -1;
  while ((e = readdir(dir)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
    unlink(p);
  }
  closedir(dir);
  return rmdir(tmpdir);
}

static const char *path_of(const char *name, char *p, size_t len) {
  snprintf(p, len, "%s/%s", tmpdir, name);
  return p;
}

static void check_msg(const char *msg, const char *want) {
  if (strstr(msg, want) == NULL) {
    print_error("message \"%s\"\n  does not contain \"%s\"\n", msg, want);
    fail();
  }
}

static void check_no(const char *msg, const char *unwanted) {
  if (strstr(msg, unwanted) != NULL) {
    print_error("message \"%s\"\n  contains \"%s\"\n", msg, unwanted);
    fail();
  }
}

/* numpy's own float32 values of an array: name.f32. */
static float *expected(const char *name, size_t *n) {
  char p[600], file[80];
  snprintf(file, sizeof(file), "%s.f32", name);
  FILE *f = fopen(path_of(file, p, sizeof(p)), "rb");
  assert_non_null(f);
  float *v = malloc(4096);
  assert_non_null(v);
  *n = fread(v, sizeof(float), 1024, f);
  fclose(f);
  return v;
}

static void check_same(const char *name, int rows, int cols) {
  char p[600], file[80];
  size_t n;
  float *want = expected(name, &n);
  snprintf(file, sizeof(file), "%s.npy", name);
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  if (tb_npy_load(path_of(file, p, sizeof(p)), NULL, NULL, &d, &err) != 0) {
    print_error("%s: %s\n", name, err.msg);
    fail();
  }
  assert_int_equal(d->n, rows);
  assert_int_equal(d->n_features, cols);
  assert_int_equal(d->n_outputs, 0);
  assert_int_equal((size_t)rows * cols, n);
  if (memcmp(d->x, want, n * sizeof(float)) != 0) {
    for (size_t i = 0; i < n; i++)
      if (d->x[i] != want[i])
        print_error("%s: element %zu: got %.9g, numpy says %.9g\n", name, i, (double)d->x[i],
                    (double)want[i]);
    fail();
  }
  tb_dataset_free(d);
  free(want);
}

static void test_every_dtype_as_numpy_converts_it(void **state) {
  static const char *const types[] = {"f4", "f8", "i1", "i2", "i4",    "i8",   "u1",
                                      "u2", "u4", "u8", "b1", "be_f4", "be_i8"};
  for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
    check_same(types[i], 6, 3);
  check_same("one_d", 6, 1);   /* one value per row */
  check_same("images", 6, 10); /* (6, 2, 5) flattened in C order */
}

static void test_versions_gzip_and_labels(void **state) {
  char p[600], q[600];
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  size_t n;
  float *want = expected("f4", &n);
  static const char *const files[] = {"v2.npy", "v3.npy"};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(tb_npy_load(path_of(files[i], p, sizeof(p)), NULL, NULL, &d, &err), 0);
    assert_memory_equal(d->x, want, n * sizeof(float));
    tb_dataset_free(d);
  }
  free(want);
  want = expected("f8", &n);
  assert_int_equal(tb_npy_load(path_of("gz.npy.gz", p, sizeof(p)), NULL, NULL, &d, &err), 0);
  assert_memory_equal(d->x, want, n * sizeof(float));
  tb_dataset_free(d);
  free(want);

  /* Class indices: n_classes from the largest; a column vector too. */
  tb_npy_opts_t o = {.classes = 1};
  assert_int_equal(tb_npy_load(path_of("f4.npy", p, sizeof(p)), path_of("labels.npy", q, sizeof(q)),
                               &o, &d, &err),
                   0);
  assert_int_equal(d->n_outputs, 1);
  assert_int_equal(d->n_classes, 3);
  assert_true(d->y[1] == 2.0f && d->y[5] == 1.0f);
  tb_dataset_free(d);
  assert_int_equal(tb_npy_load(path_of("f4.npy", p, sizeof(p)),
                               path_of("labels_col.npy", q, sizeof(q)), &o, &d, &err),
                   0);
  assert_int_equal(d->n_classes, 2);
  tb_dataset_free(d);
  /* One-hot rows: as wide as they are. */
  assert_int_equal(tb_npy_load(path_of("f4.npy", p, sizeof(p)), path_of("onehot.npy", q, sizeof(q)),
                               &o, &d, &err),
                   0);
  assert_int_equal(d->n_outputs, 3);
  assert_int_equal(d->n_classes, 3);
  tb_dataset_free(d);
  /* Regression targets: any numbers, no classes. */
  o.classes = 0;
  assert_int_equal(tb_npy_load(path_of("f4.npy", p, sizeof(p)),
                               path_of("badlabels.npy", q, sizeof(q)), &o, &d, &err),
                   0);
  assert_int_equal(d->n_classes, 0);
  assert_true(d->y[2] == 3.5f);
  tb_dataset_free(d);
}

static void refused(const char *x, const char *y, int classes, int code, const char *want) {
  char p[600], q[600];
  tb_dataset_t *d = (tb_dataset_t *)1;
  tb_err_t err = {{0}};
  tb_npy_opts_t o = {.classes = classes};
  int r = tb_npy_load(path_of(x, p, sizeof(p)), y != NULL ? path_of(y, q, sizeof(q)) : NULL, &o, &d,
                      &err);
  if (r != code) {
    print_error("%s: got %s (%s), want %s\n", x, tb_err_name(r), err.msg, tb_err_name(code));
    fail();
  }
  assert_null(d);
  check_msg(err.msg, want);
}

static void test_refused_clearly(void **state) {
  refused("fortran.npy", NULL, 0, TB_EFORMAT,
          "fortran.npy: Fortran order (column-major) is not supported: save "
          "np.ascontiguousarray(x) instead");
  refused("object.npy", NULL, 0, TB_EFORMAT,
          "object.npy: dtype '|O': object arrays (pickled Python objects) are not loaded");
  refused("strings.npy", NULL, 0, TB_EFORMAT, "strings.npy: dtype '<U3': string arrays");
  refused("half.npy", NULL, 0, TB_EFORMAT, "half.npy: dtype '<f2': float16 is not supported");
  refused("complex.npy", NULL, 0, TB_EFORMAT, "dtype '<c8': complex numbers are not supported");
  refused("records.npy", NULL, 0, TB_EFORMAT, "records.npy: a structured dtype (records)");
  refused("scalar.npy", NULL, 0, TB_EFORMAT, "scalar.npy: a 0-d array (one value) has no rows");
  refused("empty.npy", NULL, 0, TB_EFORMAT, "empty.npy: shape (0, 3): no rows");
  refused("truncated.npy", NULL, 0, TB_ETRUNCATED,
          "truncated.npy: truncated: its header announces shape (6, 3) of float64 (144 bytes of "
          "data) but the file holds 139");
  refused("cut_header.npy", NULL, 0, TB_ETRUNCATED, "cut_header.npy: truncated in its header");
  refused("trailing.npy", NULL, 0, TB_EFORMAT,
          "trailing.npy: trailing bytes after the data its header announces");
  refused("arrays.npz", NULL, 0, TB_EFORMAT, "arrays.npz: a zip file (.npz?), not an npy file");
  refused("f4.f32", NULL, 0, TB_EFORMAT, "f4.f32: not an npy file");
  refused("nan.npy", NULL, 0, TB_ENONFINITE, "nan.npy: at [1, 1]: nan is not a finite number");
  refused("huge.npy", NULL, 0, TB_ERANGE, "huge.npy: at [1, 0]: 1e+300 is out of the float32");
  refused("f4.npy", "badlabels.npy", 1, TB_EFORMAT,
          "badlabels.npy: at [2]: expected a class label (an integer from 0 to 16777215), got 3.5");
  refused("f4.npy", "five.npy", 1, TB_ESHAPE, "five.npy holds 5 rows (shape (5,)) but ");
  refused("missing.npy", NULL, 0, -2, "missing.npy: cannot open");
}

static void test_redacted_and_limits(void **state) {
  char p[600], q[600];
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  tb_data_limits_t red = {.redact = true};
  tb_npy_opts_t o = {.classes = 1, .limits = &red};
  static const char *const xs[] = {"truncated.npy", "nan.npy", "object.npy", "empty.npy",
                                   "huge.npy"};
  for (size_t i = 0; i < sizeof(xs) / sizeof(xs[0]); i++) {
    assert_true(tb_npy_load(path_of(xs[i], p, sizeof(p)), NULL, &o, &d, &err) != 0);
    check_no(err.msg, "(6, 3)");
    check_no(err.msg, "(0, 3)");
    check_no(err.msg, "nan ");
    check_no(err.msg, "1e+300");
    check_no(err.msg, "|O");
  }
  assert_int_equal(tb_npy_load(path_of("f4.npy", p, sizeof(p)),
                               path_of("badlabels.npy", q, sizeof(q)), &o, &d, &err),
                   TB_EFORMAT);
  check_msg(err.msg, "at [2]: expected a class label");
  check_no(err.msg, "3.5");
  /* Rows, values per row and bytes, from the header, before reading data. */
  tb_data_limits_t rows = {.max_rows = 5}, cols = {.max_cols = 9}, bytes = {.max_bytes = 100};
  o = (tb_npy_opts_t){.limits = &rows};
  assert_int_equal(tb_npy_load(path_of("images.npy", p, sizeof(p)), NULL, &o, &d, &err), TB_ERANGE);
  check_msg(err.msg, "images.npy: shape (6, 2, 5): 6 rows, more than the 5");
  o.limits = &cols;
  assert_int_equal(tb_npy_load(path_of("images.npy", p, sizeof(p)), NULL, &o, &d, &err), TB_ERANGE);
  check_msg(err.msg, "10 values per row, more than the 9");
  o.limits = &bytes;
  assert_int_equal(tb_npy_load(path_of("f8.npy", p, sizeof(p)), NULL, &o, &d, &err), TB_ERANGE);
  check_msg(err.msg, "f8.npy: 272 bytes (shape (6, 3) of float64), more than the 100");
}

/* The process's address space now, in bytes (/proc/self/status VmSize). */
static unsigned long long vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long long kb = 0;
  assert_non_null(f);
  while (fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, "VmSize: %llu kB", &kb) == 1)
      break;
  fclose(f);
  assert_true(kb > 0);
  return kb * 1024ULL;
}

/* A header is a claim: memory for the data follows the bytes the file
 * actually holds, never the shape it announces. liar.npy announces 1.8 GB of
 * uint8 (7.2 GB as float32) and holds 100 bytes; with 512 MiB of address
 * space to spare, loading it (plain: the size is checked before anything is
 * allocated; gzip: the arrays grow as data arrives) must say it is truncated,
 * not run out of memory. The fuzzer found the plain case (an out-of-memory
 * from tb_dataset_new with the header's shape). */
static void test_header_claims_cost_nothing(void **state) {
  static const char *const files[] = {"liar.npy", "liar.npy.gz"};
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    unsigned long long room = vm_size() + (512ULL << 20);
    struct rlimit rl = {.rlim_cur = room, .rlim_max = room};
    int bad = setrlimit(RLIMIT_AS, &rl) != 0;
    for (int i = 0; i < 2 && !bad; i++) {
      char p[600];
      tb_dataset_t *d = (tb_dataset_t *)1;
      tb_err_t err = {{0}};
      int r = tb_npy_load(path_of(files[i], p, sizeof(p)), NULL, NULL, &d, &err);
      if (r != TB_ETRUNCATED || d != NULL ||
          strstr(err.msg, "truncated: its header announces shape (600000000, 3) of uint8 "
                          "(1800000000 bytes of data) but the file holds 100") == NULL) {
        fprintf(stderr, "%s: got %s: %s\n", files[i], tb_err_name(r), err.msg);
        bad = 1;
      }
    }
    _exit(bad);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

/* A .gz longer than the first allocation grows to hold it, every value in
 * its place. */
static void test_gzip_grows(void **state) {
  char p[600];
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  assert_int_equal(tb_npy_load(path_of("long.npy.gz", p, sizeof(p)), NULL, NULL, &d, &err), 0);
  assert_int_equal(d->n, 500000);
  assert_int_equal(d->n_features, 3);
  for (int i = 0; i < 1500000; i++)
    if (d->x[i] != (float)i) {
      print_error("element %d: got %g\n", i, (double)d->x[i]);
      fail();
    }
  tb_dataset_free(d);
}

static void test_every_prefix_in_memory(void **state) {
  /* Any cut of a valid file fails cleanly (ASan checks every read). */
  char p[600];
  FILE *f = fopen(path_of("images.npy", p, sizeof(p)), "rb");
  assert_non_null(f);
  unsigned char buf[512];
  size_t len = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  for (size_t n = 0; n < len; n++) {
    tb_dataset_t *d = (tb_dataset_t *)1;
    tb_err_t err = {{0}};
    unsigned char *copy = malloc(n + 1);
    assert_non_null(copy);
    memcpy(copy, buf, n);
    int r = tb__npy_parse("cut.npy", copy, n, NULL, NULL, 0, NULL, &d, &err);
    assert_true(r == TB_ETRUNCATED || r == TB_EFORMAT);
    assert_null(d);
    assert_true(err.msg[0] != '\0');
    free(copy);
  }
  tb_dataset_t *d = NULL;
  tb_err_t err = {{0}};
  assert_int_equal(tb__npy_parse("whole.npy", buf, len, NULL, NULL, 0, NULL, &d, &err), 0);
  assert_int_equal(d->n_features, 10);
  tb_dataset_free(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_dtype_as_numpy_converts_it),
      cmocka_unit_test(test_versions_gzip_and_labels),
      cmocka_unit_test(test_refused_clearly),
      cmocka_unit_test(test_redacted_and_limits),
      cmocka_unit_test(test_every_prefix_in_memory),
      cmocka_unit_test(test_header_claims_cost_nothing),
      cmocka_unit_test(test_gzip_grows),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
