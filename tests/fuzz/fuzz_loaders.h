/* The checks behind the loaders' libFuzzer targets (fuzz_csv, fuzz_npy),
 * shared with tests/core/test_loader_regress, which replays the seed corpus
 * and every saved input under plain ctest and ASan. Each aborts on a broken
 * invariant. */
#ifndef TB_FUZZ_LOADERS_H
#define TB_FUZZ_LOADERS_H

#include <stddef.h>
#include <stdint.h>

/* The first two bytes choose the options (delimiter, header, label by index
 * or name, features by name, classes, a class-name mapping to apply,
 * missing values refused, filled or dropped, limits, redaction); the rest is
 * the CSV text. A load succeeds with a well-formed dataset (every value
 * finite, every class label an index below n_classes, classes sorted and
 * distinct) or fails with a message and no dataset; a redacted load's
 * message never quotes the text. */
void tb_fuzz_csv(const uint8_t *data, size_t size);

/* The first byte chooses classes and limits; the next two bytes, when
 * present, where the input splits into an x file and a y file (none: x
 * only). Each succeeds with a well-formed dataset or fails with a message
 * and no dataset. */
void tb_fuzz_npy(const uint8_t *data, size_t size);

#endif
