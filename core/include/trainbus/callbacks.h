/* Built-in callbacks. Each constructor returns a tb_callback_t owned by the
 * caller and released with tb_callback_free(); add it to a list with
 * tb_callbacks_add(). */
#ifndef TRAINBUS_CALLBACKS_H
#define TRAINBUS_CALLBACKS_H

#include <stdio.h>
#include "trainbus/callback.h"

/* Keras's ProgbarLogger. verbose 1: a live progress bar redrawn in place (for
 * a terminal); verbose 2: one line per epoch (for logs and pipes). Validation
 * batches are not shown; the epoch line carries the val_ metrics. Writes to
 * `out` (stdout when NULL). */
tb_callback_t *tb_progbar_new(int verbose, FILE *out);

#endif
