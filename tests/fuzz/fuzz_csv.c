/* libFuzzer entry for the CSV loader; see fuzz_loaders.h. */
#include "fuzz_loaders.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tb_fuzz_csv(data, size);
  return 0;
}
