/* libFuzzer entry for what trainbus-bridge parses from a broker; see
 * fuzz_bridge_body.h. */
#include "fuzz_bridge_body.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tb_fuzz_bridge(data, size);
  return 0;
}
