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
 * re-encode and decode to the same method and id (and a trainer's attach,
 * applied and finish to the same fields); any error must encode as a
 * response that frames and decodes back with the same code. A publish's
 * events are read as the server reads them (tb_pub_event_read: an error
 * names its event), and each one read must go through the client's encoder
 * (tb_pub_event_append) and read back the same; a notification to a trainer
 * (control, continue, lockstep, rejected) must re-encode with the server's
 * encoder and decode the same (docs/PROTOCOL.md section 13). */
void tb_fuzz_decode(const uint8_t *data, size_t size);

#endif
