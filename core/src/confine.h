/* Private to core: opening data files within a tb_data_limits_t, and
 * checking the paths a job will write to. Shared by loaders.c (which reads
 * through these descriptors) and job.c (which checks a job's paths when it
 * is budgeted). */
#ifndef TB_CORE_CONFINE_H
#define TB_CORE_CONFINE_H

#include "trainbus/data.h"

#include <stdint.h>

/* Opens path for reading as lim allows (NULL or not confined: any path the
 * process can open). On success *fd is a blocking, close-on-exec descriptor
 * that the caller closes, and *size the file's size from fstat() (0 when it
 * is not a regular file). With lim->confined the opened file is a regular
 * file whose real path (as /proc/self/fd reports it) lies beneath one of
 * lim->dirs. Errors, with a message "<what>: <problem>": TB_EINVAL when the
 * limits refuse the path, -errno when it cannot be opened. */
int tb__data_open(const char *path, const char *what, const tb_data_limits_t *lim, int *fd,
                  uint64_t *size, tb_err_t *err);

/* Checks a path that a job will create or write (a file or a folder, which
 * need not exist yet): with lim->confined it must be absolute, have no ".."
 * component, start with one of lim->dirs, and its nearest existing ancestor
 * (the path itself if it exists) must resolve beneath that folder. 0, or
 * TB_EINVAL with a message "<what>: <problem>". Checked when the job is
 * budgeted; the files are opened later, by the callbacks. */
int tb__data_check_out(const char *path, const char *what, const tb_data_limits_t *lim,
                       tb_err_t *err);

#endif
