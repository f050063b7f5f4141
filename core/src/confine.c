/* Data confinement: a job that came over the network may read and write only
 * beneath the operator's data folders (tb_data_limits_t).
 *
 * Three checks, cheapest first, so that a path outside is refused before the
 * file system is asked anything about it: no ".." component; the path, as
 * written, starts with one of the folders; and its real path (realpath(),
 * which resolves every symbolic link) still does. Reading then opens the real
 * path once and checks what was actually opened: the kernel's name for the
 * descriptor (/proc/self/fd/N) must lie beneath a folder too, so a symbolic
 * link swapped in between the check and the open gains nothing; the data is
 * then read through that descriptor, never through the name again.
 *
 * Paths a job writes (ModelCheckpoint files, CSVLogger, BackupAndRestore,
 * checkpoint_dir) may not exist yet: their nearest existing ancestor is
 * resolved instead. The callbacks open them later by name, so a symbolic link
 * planted inside a data folder after the check could redirect a write; only
 * someone who can already write to the operator's folder can do that. */
/* realpath() is an XSI function. */
#define _XOPEN_SOURCE 700

#include "confine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

static const char NO_DIRS[] = "no data directory is configured, so a job from the network may only "
                              "use the built-in generators (seed, spirals, blobs)";

/* Whether p is dir itself or lies beneath it; both are canonical. */
static bool beneath(const char *p, const char *dir) {
  size_t n = strlen(dir);
  if (n == 1 && dir[0] == '/')
    return p[0] == '/';
  return strncmp(p, dir, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

static bool beneath_any(const char *p, const tb_data_limits_t *lim) {
  for (int i = 0; i < lim->n_dirs; i++)
    if (lim->dirs[i] != NULL && beneath(p, lim->dirs[i]))
      return true;
  return false;
}

static bool has_dotdot(const char *p) {
  for (const char *c = p; *c != '\0';) {
    const char *e = strchr(c, '/');
    size_t n = e != NULL ? (size_t)(e - c) : strlen(c);
    if (n == 2 && c[0] == '.' && c[1] == '.')
      return true;
    if (e == NULL)
      break;
    c = e + 1;
  }
  return false;
}

/* The checks that need no file system: 0 or TB_EINVAL with a message. */
static int lexical(const char *path, const char *what, const tb_data_limits_t *lim, tb_err_t *err) {
  if (lim->n_dirs == 0)
    return tb_errf(err, TB_EINVAL, "%s: %s", what, NO_DIRS);
  if (has_dotdot(path))
    return tb_errf(err, TB_EINVAL, "%s: \"..\" is not allowed in the path", what);
  if (path[0] != '/' || !beneath_any(path, lim))
    return tb_errf(err, TB_EINVAL, "%s: outside the data directories", what);
  return 0;
}

int tb__data_open(const char *path, const char *what, const tb_data_limits_t *lim, int *fd,
                  uint64_t *size, tb_err_t *err) {
  char real[PATH_MAX], link[64], opened[PATH_MAX];
  struct stat st;
  int f, r;
  *fd = -1;
  *size = 0;
  if (lim == NULL || !lim->confined) {
    f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) {
      int e = errno;
      return tb_errf(err, -e, "%s: cannot open: %s", what, strerror(e));
    }
    if (fstat(f, &st) == 0 && S_ISREG(st.st_mode))
      *size = (uint64_t)st.st_size;
    *fd = f;
    return 0;
  }
  if ((r = lexical(path, what, lim, err)) != 0)
    return r;
  if (realpath(path, real) == NULL) {
    int e = errno;
    return tb_errf(err, -e, "%s: cannot open: %s", what, strerror(e));
  }
  if (!beneath_any(real, lim))
    return tb_errf(err, TB_EINVAL,
                   "%s: leads outside the data directories (through a symbolic link)", what);
  /* O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOCTTY: a
   * terminal never becomes ours. */
  f = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (f < 0) {
    int e = errno;
    return tb_errf(err, -e, "%s: cannot open: %s", what, strerror(e));
  }
  if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(f);
    return tb_errf(err, TB_EINVAL, "%s: not a regular file", what);
  }
  snprintf(link, sizeof(link), "/proc/self/fd/%d", f);
  ssize_t n = readlink(link, opened, sizeof(opened) - 1);
  if (n <= 0 || (size_t)n >= sizeof(opened) - 1) {
    close(f);
    return tb_errf(err, TB_EINVAL,
                   "%s: cannot check which file was opened (is /proc mounted?); refused", what);
  }
  opened[n] = '\0';
  if (!beneath_any(opened, lim)) {
    close(f);
    return tb_errf(err, TB_EINVAL,
                   "%s: leads outside the data directories (it changed while "
                   "being opened)",
                   what);
  }
  int fl = fcntl(f, F_GETFL);
  if (fl < 0 || fcntl(f, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    int e = errno;
    close(f);
    return tb_errf(err, -e, "%s: cannot read: %s", what, strerror(e));
  }
  *fd = f;
  *size = (uint64_t)st.st_size;
  return 0;
}

int tb__data_check_out(const char *path, const char *what, const tb_data_limits_t *lim,
                       tb_err_t *err) {
  char probe[PATH_MAX], real[PATH_MAX];
  struct stat st;
  int r;
  if (lim == NULL || !lim->confined)
    return 0;
  if ((r = lexical(path, what, lim, err)) != 0)
    return r;
  if (strlen(path) >= sizeof(probe))
    return tb_errf(err, TB_EINVAL, "%s: path too long", what);
  snprintf(probe, sizeof(probe), "%s", path);
  /* Climb to the nearest ancestor that exists (lstat: a dangling symbolic
   * link exists, and realpath() below then refuses it). */
  while (lstat(probe, &st) != 0) {
    char *slash = strrchr(probe, '/');
    if (slash == NULL || slash == probe) {
      snprintf(probe, sizeof(probe), "/");
      break;
    }
    *slash = '\0';
  }
  if (realpath(probe, real) == NULL)
    return tb_errf(err, TB_EINVAL,
                   "%s: leads outside the data directories (through a symbolic "
                   "link that goes nowhere)",
                   what);
  if (!beneath_any(real, lim))
    return tb_errf(err, TB_EINVAL,
                   "%s: leads outside the data directories (through a symbolic link)", what);
  return 0;
}
