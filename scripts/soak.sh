#!/usr/bin/env bash
# The hostile-conditions suite (tests/hostile) in its long mode, for local soak
# runs. CI runs the same suite once, bounded (ctest -L hostile, about 75 s on
# 2 cores, and again in the ASan build).
#
#   SOAK          1 (default here): 10,000 connect/disconnect cycles, 200
#                 clients killed mid-line, 10 mid-lockstep, a 30,000-request
#                 control flood, 8 daemon SIGKILLs, 3 clean runs for medians
#   REPEAT        times to run the suite (default 3); slowdowns are reported
#                 as medians over the repeats
#   ASAN          1: also run it against the ASan+UBSan daemon
#                 (build-hostile-asan); every SIGTERM'd daemon must exit 0
#                 with no sanitizer or LeakSanitizer report
#   VALGRIND      1: also run the catalogue with the daemon under valgrind
#                 (memcheck, full leak check; slow: several minutes)
#   FUZZ_SECONDS  seconds per protocol fuzz target for scripts/fuzz.sh
#                 (default 600 here; CI uses 30); 0 skips fuzzing
#   BUILD_DIR     build folder (default build-hostile)
#   TB_HOSTILE_SEED  replay the daemon kill points of a kill9 run
# Measurements go to $BUILD_DIR/hostile-report.ndjson, one JSON line per test.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build-hostile}
repeat=${REPEAT:-3}
export SOAK=${SOAK:-1}
report=$build/hostile-report.ndjson

configure() { # dir, extra cmake flags...
  local dir=$1
  shift
  cmake -S "$top" -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)" --target trainbusd >&2
}

configure "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
rm -f "$report"
status=0
for i in $(seq 1 "$repeat"); do
  echo "soak: hostile suite, round $i of $repeat (SOAK=$SOAK)" >&2
  (cd "$build" && TB_HOSTILE_REPORT=$report ctest -L hostile --output-on-failure) || status=1
done

if [ "${ASAN:-0}" = 1 ]; then
  asan=$top/build-hostile-asan
  configure "$asan" -DTB_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
  echo "soak: hostile suite against the ASan+UBSan daemon" >&2
  (cd "$asan" && TB_HOSTILE_REPORT=$report ctest -L hostile --output-on-failure) || status=1
fi

if [ "${VALGRIND:-0}" = 1 ]; then
  command -v valgrind >/dev/null || { echo "soak: valgrind not found" >&2; exit 1; }
  echo "soak: catalogue with the daemon under valgrind" >&2
  (cd "$top/tests/hostile" && TRAINBUSD=$build/trainbusd TB_HOSTILE_REPORT=$report \
    TB_HOSTILE_WRAP="valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99" \
    python3 -m unittest test_hostile_catalogue) || status=1
fi

if [ "${FUZZ_SECONDS:-600}" != 0 ]; then
  echo "soak: protocol fuzzing, ${FUZZ_SECONDS:-600}s per target" >&2
  FUZZ_SECONDS=${FUZZ_SECONDS:-600} "$top/scripts/fuzz.sh" || status=1
fi

# Medians of the trainer's slowdown per fault, over every round.
python3 - "$report" <<'EOF' >&2 || true
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    if "slowdown" in r:
        by.setdefault(r["test"], []).append(r["slowdown"])
print("soak: trainer slowdown (wall time train_begin..train_end vs a clean run), median of runs:")
for t, xs in sorted(by.items()):
    print("  %-22s %5.2fx  (n=%d, min %.2f, max %.2f)" % (t, statistics.median(xs), len(xs), min(xs), max(xs)))
EOF
exit $status
