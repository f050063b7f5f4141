/* libFuzzer entry for the request and server-message decoders; see
 * fuzz_body.h. */
#include "fuzz_body.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tb_fuzz_decode(data, size);
  return 0;
}
