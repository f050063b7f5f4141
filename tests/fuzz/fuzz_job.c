/* libFuzzer entry for job documents; see fuzz_job_body.h. */
#include "fuzz_job_body.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tb_fuzz_job(data, size);
  return 0;
}
