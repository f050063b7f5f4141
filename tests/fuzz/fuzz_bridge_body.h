/* The checks behind fuzz_bridge, shared with the regression test that replays
 * its corpus under plain ctest (tests/bridge). Aborts on a broken invariant. */
#ifndef TB_FUZZ_BRIDGE_BODY_H
#define TB_FUZZ_BRIDGE_BODY_H

#include <stddef.h>
#include <stdint.h>

/* What trainbus-bridge and its followers parse from a broker. The first byte
 * picks the parser: 0 a control request (subject or topic, a NUL, the
 * payload), 1 an event payload, 2 a status or run-list payload. A control
 * request that decodes must name the subject's run and re-encode to the same
 * request; an error must be one of the protocol's and make a reply that is
 * valid JSON; an event that decodes must give back the same event through
 * the stub and through re-encoding. */
void tb_fuzz_bridge(const uint8_t *data, size_t size);

#endif
