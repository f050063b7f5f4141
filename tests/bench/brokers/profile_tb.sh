#!/usr/bin/env bash
# profile_tb.sh - where the trainbus publisher's time goes (issue 13).
#
# Runs psbench -P trainbus with tb_pub (a trainer thread embedding the
# server: the whole bus in one process) under `perf record` (software
# cpu-clock sampling with frame-pointer call graphs: this machine's VM exposes
# no hardware counters) and `perf stat --per-thread` (syscall tracepoints,
# context switches, CPU time), for each case:
#   blast1   K=1, blast (the trainer as fast as it can)
#   closed1  K=1, closed loop (-w WIN: the trainer stays WIN events ahead)
#   closed8  K=8, closed loop
#   lat1     K=1, 10,000 events/s
# and prints, per case: the top functions by self time, the split by thread
# (tb_pub = the trainer, tb_pub's other thread = the server loop), and
# syscalls, context switches and CPU per event and per delivery.
#
#   bash tests/bench/brokers/profile_tb.sh            # builds build-prof
#   CASES="blast1 closed8" N=200000 bash tests/bench/brokers/profile_tb.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BUILD=${BUILD:-$ROOT/build-prof}
CASES=${CASES:-"blast1 closed1 closed8 lat1"}
N=${N:-200000}
WIN=${WIN:-1000}
TOP=${TOP:-25}
OUT=${OUT:-$BUILD/profile/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf is missing (Debian linux-perf)" >&2; exit 77; }
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_C_FLAGS="-fno-omit-frame-pointer" >/dev/null
fi
cmake --build "$BUILD" -j2 --target psbench tb_pub >/dev/null
BIN=$BUILD/tests/bench/brokers

args_for() {
    case $1 in
    blast1) echo "-k 1 -n $N" ;;
    closed1) echo "-k 1 -n $N -w $WIN" ;;
    closed8) echo "-k 8 -n $((N / 2)) -w $WIN" ;;
    lat1) echo "-m lat -k 1 -r 10000 -d 3" ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
    esac
}

EVS='raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_writev,'
EVS+='syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read,syscalls:sys_enter_futex,'
EVS+='context-switches,task-clock'
for c in $CASES; do
    a=$(args_for "$c")
    echo "== $c: psbench -P trainbus $a"
    # Only tb_pub is measured: psbench starts it through these wrappers.
    printf '#!/bin/sh\nexec perf record -q -F 4999 -e cpu-clock -g -o "%s" -- "%s" "$@"\n' \
        "$OUT/$c.data" "$BIN/tb_pub" > "$OUT/rec-$c.sh"
    printf '#!/bin/sh\nexec perf stat -x, -e "%s" -o "%s" -- "%s" "$@"\n' \
        "$EVS" "$OUT/$c.stat.csv" "$BIN/tb_pub" > "$OUT/stat-$c.sh"
    chmod +x "$OUT/rec-$c.sh" "$OUT/stat-$c.sh"
    # shellcheck disable=SC2086
    "$BIN/psbench" -P trainbus -x "$OUT/rec-$c.sh" $a -t "$c" | tee "$OUT/$c.psbench.txt"
    # shellcheck disable=SC2086
    "$BIN/psbench" -P trainbus -x "$OUT/stat-$c.sh" $a -t "$c-stat" > "$OUT/$c.stat.psbench.txt"
    sleep 0.5
    perf report -i "$OUT/$c.data" --no-children --sort sym --stdio -q \
        --percent-limit 0.7 -g none 2>/dev/null | grep -v '^$' | head -n "$TOP" \
        | tee "$OUT/$c.top.txt"
    echo "-- samples by thread:"
    perf report -i "$OUT/$c.data" --no-children --sort pid --stdio -q \
        -g none 2>/dev/null | grep -v '^$' | head -n 4
    python3 "$HERE/perstat.py" "$OUT/$c.stat.csv" "$OUT/$c.stat.psbench.txt"
done
echo "perf data in $OUT (perf report -i FILE)"
