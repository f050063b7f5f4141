/* The checks behind fuzz_job, shared with tests/core/test_job_regress, which
 * replays the seed corpus (tests/fuzz/corpus/job) and the saved job-* inputs
 * under plain ctest and ASan. Aborts on a broken invariant. */
#ifndef TB_FUZZ_JOB_BODY_H
#define TB_FUZZ_JOB_BODY_H

#include <stddef.h>
#include <stdint.h>

/* The input is a job document as `submit` hands it to core: parsed by
 * tb_job_parse() against a base folder that does not exist, then held by
 * tb_job_check() to the daemon's network policy (confined to that folder,
 * redacted, a 1 GiB budget, checkpoints counted), estimated again by
 * tb_job_estimate(), and, when it passes a 16 MiB budget (so its data can
 * only come from the generators), prepared by tb_job_prepare(), which makes
 * its data and compiles its model but trains nothing.
 *
 * A failure returns a known negative code, a one-line message that names
 * the document, and no job; a parsed job has every field in the range
 * job.h and docs/JOB.md promise, and nothing a later step refuses for a
 * reason the document alone decides (the CSV loader's options, compile's
 * rules); an estimate's total covers each of its parts and the same job
 * estimates the same twice. Under AddressSanitizer
 * (the fuzzer, and the SANITIZE=1 suite) the allocations are counted too:
 * parsing may use memory in proportion to the input's length only, and
 * preparing no more than the estimate it passed. Nothing reads a file: the
 * only folder the policy allows does not exist. */
void tb_fuzz_job(const uint8_t *data, size_t size);

#endif
