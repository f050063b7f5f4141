/* The checks behind the libFuzzer targets, shared with the regression test
 * that replays every saved input under plain ctest. Each function aborts on a
 * broken invariant, which libFuzzer and cmocka both report. */
#ifndef TB_FUZZ_BODY_H
#define TB_FUZZ_BODY_H

#include <stddef.h>
#include <stdint.h>

/* Frames data fed in one piece and in chunks (sizes derived from the data)
 * and checks both give the same lines, lengths and final result. */
void tb_fuzz_frame(const uint8_t *data, size_t size);

/* Decodes data as a request and as a server message; a decoded request must
 * re-encode and decode to the same method and id; any error must encode as a
 * response that frames and decodes back with the same code. */
void tb_fuzz_decode(const uint8_t *data, size_t size);

#endif
