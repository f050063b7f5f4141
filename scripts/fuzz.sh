#!/usr/bin/env bash
# Builds the libFuzzer targets (the protocol's framer and decoders, core's
# file-name patterns, the CSV and npy loaders, what the bridge parses from a
# broker, job documents) with clang in a separate folder and runs each for a
# bounded time.
#   FUZZ_SECONDS  seconds per target (default 30, what CI uses)
#   BUILD_DIR     build folder (default: build-fuzz)
#   FUZZ_JOBS     parallel fuzzing processes per target (default 1)
# Seeds come from tests/fuzz/corpus/<target> and are never modified; new
# interesting inputs go to $BUILD_DIR/corpus/<target>. A crash leaves its input
# in $BUILD_DIR/artifacts/ and makes this script fail: copy the file into
# tests/fuzz/regressions/ (test_fuzz_regress, test_loader_regress and
# test_job_regress then replay it), fix the bug, and commit both. A target
# with a dictionary (tests/fuzz/<target>.dict: the format's keywords) is
# given it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build-fuzz}
secs=${FUZZ_SECONDS:-30}
jobs=${FUZZ_JOBS:-1}

command -v clang >/dev/null || { echo "fuzz: clang not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
CC=clang cmake -S "$top/tests/fuzz" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" >&2

status=0
for t in frame decode pyformat csv npy bridge job; do
  work="$build/corpus/$t"
  mkdir -p "$work" "$build/artifacts"
  dict=()
  [ -f "$top/tests/fuzz/$t.dict" ] && dict=(-dict="$top/tests/fuzz/$t.dict")
  echo "fuzz: fuzz_$t for ${secs}s" >&2
  if ! "$build/fuzz_$t" "$work" "$top/tests/fuzz/corpus/$t" "${dict[@]}" \
      -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -jobs="$jobs" -workers="$jobs" -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/${t}-" 2>"$build/fuzz_$t.log"; then
    status=1
    echo "fuzz: fuzz_$t FAILED; last lines of $build/fuzz_$t.log:" >&2
    tail -n 40 "$build/fuzz_$t.log" >&2
    ls -1 "$build/artifacts" >&2
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$build/fuzz_$t.log" >&2 || true
  fi
done
exit $status
