#!/usr/bin/env bash
# run_retain_ab.sh - what the bound on retained events (--retain-bytes,
# docs/PROTOCOL.md "Retention") costs the bus: trainbus's fan-out (psbench
# -P trainbus, tb_pub: a trainer thread embedding the server) built from two
# trees, side by side in one run, rounds interleaved so that the machine's
# load hits every variant alike.
#
# Variants, each round:
#   before   BEFORE's build (the reference: no bound);
#   after    AFTER's build, default bound (1 GiB: nothing is evicted here);
#   evict    AFTER's build with TB_RETAIN_BYTES (default 4 MiB): the one live
#            run alone is over the bound, so the drain evicts its oldest
#            events all along (the live-run path, the costlier one).
# Modes: 1 subscriber, blast (N1 events; the trainer outruns the loop, whose
# queue drops batch events: deliveries/s is then a poor figure, the loop's
# CPU per delivery a good one); 1 and 8 subscribers, closed loop (the
# trainer at most WIN events ahead of the slowest: lossless capacity; N1,
# N8).
# Prints the medians of deliveries/s and of the loop thread's CPU per
# delivery, the after/before ratios, and the publisher's peak RSS; then a
# real daemon's RSS after RSS_RUNS (40) jobs, unbounded and with
# --retain-bytes RSS_BOUND (8M): retain_rss.py.
#
# tb_pub calls no BLAS, so OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE do not
# enter these figures.
#
#   BEFORE=/tmp/tb-main/build AFTER=build RUNS=5 bash tests/bench/brokers/run_retain_ab.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
RUNS=${RUNS:-5}
N1=${N1:-2000000}
N8=${N8:-500000}
WIN=${WIN:-1000}
EVICT_BYTES=${EVICT_BYTES:-4194304}
AFTER=${AFTER:-$ROOT/build}
BEFORE=${BEFORE:?BEFORE=the build directory of the reference tree}
OUT=${OUT:-$AFTER/retain-ab/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.txt
: > "$RAW"

for b in "$BEFORE" "$AFTER"; do
    cmake --build "$b" -j2 --target psbench tb_pub trainbusd >/dev/null
done
PSB=$AFTER/tests/bench/brokers/psbench

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(nproc) cpus, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "before: $BEFORE; after: $AFTER ($(git -C "$ROOT" rev-parse --short HEAD))"
    echo "params: RUNS=$RUNS N1=$N1 N8=$N8 WIN=$WIN EVICT_BYTES=$EVICT_BYTES"
} | tee "$OUT/env.txt"

one() {   # one VARIANT MODE psbench-args...
    local variant=$1 mode=$2; shift 2
    local build=$AFTER env=()
    [ "$variant" = before ] && build=$BEFORE
    [ "$variant" = evict ] && env=(TB_RETAIN_BYTES="$EVICT_BYTES")
    local line
    if line=$(env "${env[@]}" timeout 200 "$PSB" -t "$variant" -T 150 -P trainbus \
            -x "$build/tests/bench/brokers/tb_pub" "$@"); then
        echo "run=$r variant=$variant case=$mode $line" | tee -a "$RAW"
    else
        echo "run=$r variant=$variant case=$mode FAILED" | tee -a "$RAW" >&2
    fi
}

for r in $(seq 1 "$RUNS"); do
    for v in before after evict; do
        one "$v" k1-blast -k 1 -n "$N1"
        one "$v" k1-closed -k 1 -n "$N1" -w "$WIN"
        one "$v" k8-closed -k 8 -n "$N8" -w "$WIN"
    done
done

python3 - "$RAW" <<'EOF' | tee "$OUT/summary.md"
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    if "FAILED" in line:
        continue
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    key = (kv["case"], kv["variant"])
    rows.setdefault(key, []).append(kv)
def med(key, field):
    vals = [float(kv[field]) for kv in rows.get(key, [])]
    return statistics.median(vals) if vals else float("nan")
print("| mode | variant | deliveries/s | loop CPU µs/delivery | peak RSS MB | lost | runs |")
print("|---|---|---|---|---|---|---|")
for mode in ("k1-blast", "k1-closed", "k8-closed"):
    for v in ("before", "after", "evict"):
        k = (mode, v)
        lost = sum(int(kv["lost"]) for kv in rows.get(k, []))
        print(f"| {mode} | {v} | {med(k, 'deliv_per_s'):,.0f} | {med(k, 'loop_cpu_us_per_deliv'):.3f} "
              f"| {med(k, 'broker_rss_kb') / 1024:.0f} | {lost} | {len(rows.get(k, []))} |")
print()
print("| mode | after / before deliveries/s | evict / before | after / before loop CPU | evict / before |")
print("|---|---|---|---|---|")
for mode in ("k1-blast", "k1-closed", "k8-closed"):
    b, a, e = ((mode, v) for v in ("before", "after", "evict"))
    print(f"| {mode} | {med(a, 'deliv_per_s') / med(b, 'deliv_per_s'):.3f} "
          f"| {med(e, 'deliv_per_s') / med(b, 'deliv_per_s'):.3f} "
          f"| {med(a, 'loop_cpu_us_per_deliv') / med(b, 'loop_cpu_us_per_deliv'):.3f} "
          f"| {med(e, 'loop_cpu_us_per_deliv') / med(b, 'loop_cpu_us_per_deliv'):.3f} |")
EOF
# A long-lived daemon's memory against the runs it trained: the reference
# (no bound) and a bound of RSS_BOUND.
if [ "${RSS_RUNS:-40}" -gt 0 ]; then
    echo
    echo "daemon RSS after runs of 7,608 events each (retain_rss.py):"
    python3 "$HERE/retain_rss.py" "$BEFORE/trainbusd" "${RSS_RUNS:-40}" | sed 's/^/before /'
    python3 "$HERE/retain_rss.py" "$AFTER/trainbusd" "${RSS_RUNS:-40}" \
        --retain-bytes "${RSS_BOUND:-8M}" | sed "s/^/after(--retain-bytes ${RSS_BOUND:-8M}) /"
fi | tee -a "$OUT/summary.md"
{ echo; echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } | tee -a "$OUT/env.txt"
echo "results in $OUT"
