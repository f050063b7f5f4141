#!/usr/bin/env bash
# run_tls.sh - what TLS costs trainbus (issue 12, "Measure"): the same
# benchmarks over TLS and in plaintext, interleaved in one run, medians of
# RUNS rounds, TLS minus plaintext in microseconds and TLS / plaintext.
#
#   1. event fan-out (psbench -P trainbus, against tb_pub's embedded server;
#      with -S every subscriber reads through OpenSSL): closed loop (-w WIN,
#      lossless capacity) at K = 1, 8, 64 subscribers, the server's loop-thread
#      CPU per delivery (what a broker's server process does: encode once,
#      fan out, and for TLS encrypt per client) and the subscribers' CPU per
#      delivery (TLS: decryption); publish -> receive latency at RATE events/s,
#      K = 1, 8;
#   2. set_lr round trip against trainbusd training the demo model (tb_ctl
#      setlr: the reply comes once the rate is applied at a batch boundary,
#      so it includes up to a batch; ping gives the transport's floor), once
#      with this machine's OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and once with
#      both unset (the processor's own kernels); the fan-out's tb_pub does no
#      linear algebra.
#
# Certificates: a throwaway CA (tests/tls/make_certs.sh, EC P-256), so the
# handshake is ECDHE + ECDSA and records are AES-256-GCM (TLS 1.3's first
# choice with AES-NI). Processes are started here and stopped by PID.
#
#   bash tests/bench/brokers/run_tls.sh
#   RUNS=5 KS="1 8 64" LAT_KS="1 8" RATE=10000 DUR=3 BUILD=build-brokers bash ...
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
RUNS=${RUNS:-5}
RATE=${RATE:-10000}
DUR=${DUR:-3}
KS=${KS:-"1 8 64"}
LAT_KS=${LAT_KS:-"1 8"}
WIN=${WIN:-1000}
SETLR_N=${SETLR_N:-200}
BUILD=${BUILD:-$ROOT/build-brokers}
TB_PORT=${TB_PORT:-17797}
OUT=${OUT:-$BUILD/tls-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.txt
: > "$RAW"

n_for_k() { case $1 in 1) echo 400000 ;; 8) echo 200000 ;; *) echo 40000 ;; esac; }

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$BUILD" -j2 --target psbench tb_pub tb_ctl trainbusd trainbus >/dev/null
BIN=$BUILD/tests/bench/brokers
PSB=$BIN/psbench
TBD=$BUILD/trainbusd
PKI=$OUT/pki
sh "$ROOT/tests/tls/make_certs.sh" "$PKI"

if (exec 3<>/dev/tcp/127.0.0.1/$TB_PORT) 2>/dev/null; then
    echo "port $TB_PORT already in use on 127.0.0.1; set TB_PORT" >&2
    exit 1
fi
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "trainbusd on port $1 did not come up" >&2
    exit 1
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(nproc) cpus, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    echo "aes: $(grep -m1 -o -w aes /proc/cpuinfo || echo no) (AES-NI)"
    echo "openssl: $(openssl version)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "trainbus: $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "env: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}"
    echo "params: RUNS=$RUNS RATE=$RATE DUR=$DUR KS=$KS LAT_KS=$LAT_KS WIN=$WIN SETLR_N=$SETLR_N"
} | tee "$OUT/env.txt"

bench() {   # bench TAG psbench-args...
    local tag=$1; shift
    local line
    if line=$(timeout 200 "$PSB" -t "$tag" -T 150 -x "$BIN/tb_pub" "$@"); then
        echo "run=$r $line" | tee -a "$RAW"
    else
        echo "run=$r tag=$tag FAILED rc=$? args=$*" | tee -a "$RAW" >&2
    fi
}

# --- 1. fan-out and latency, plaintext and TLS alternately ------------------------
for r in $(seq 1 "$RUNS"); do
    for k in $KS; do
        n=$(n_for_k "$k")
        bench plain -P trainbus -k "$k" -n "$n" -w "$WIN"
        bench tls   -P trainbus -k "$k" -n "$n" -w "$WIN" -S "$PKI"
    done
    for k in $LAT_KS; do
        bench plain -P trainbus -m lat -k "$k" -r "$RATE" -d "$DUR"
        bench tls   -P trainbus -m lat -k "$k" -r "$RATE" -d "$DUR" -S "$PKI"
    done
done

# --- 2. set_lr round trip on a training daemon ------------------------------------
cat > "$OUT/job-setlr.json" <<EOF
{"name":"bench-setlr","seed":42,"threads":1,
 "data":{"source":"spirals","n_per_class":2000,"noise":0.15,"scale":"standard"},
 "model":{"layers":[{"type":"dense","units":128,"activation":"relu"},{"type":"dense","units":128,"activation":"relu"},{"type":"dropout","rate":0.1},{"type":"dense","units":2,"activation":"softmax"}]},
 "loss":"sparse_categorical_crossentropy","metrics":["accuracy"],
 "optimizer":{"name":"adam","learning_rate":0.003},"epochs":100000,"batch_size":32,"validation_split":0.2,"verbose":0}
EOF
TOKEN=bench-$$
setlr() {   # setlr TAG BLAS ENV-PREFIX...: one daemon, one tb_ctl setlr
    local tag=$1 blas=$2; shift 2
    local tls_args=() addr=127.0.0.1:$TB_PORT ca=()
    if [ "$tag" = tls ]; then
        tls_args=(--tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key")
        addr=tls://127.0.0.1:$TB_PORT
        ca=(-C "$PKI/ca.pem")
    fi
    "$@" "$TBD" --no-state --listen "127.0.0.1:$TB_PORT" --token "$TOKEN" --quiet \
        --job "$OUT/job-setlr.json" "${tls_args[@]}" 2>>"$OUT/trainbusd.log" &
    PIDS+=("$!")
    wait_port "$TB_PORT"
    sleep 1
    "$@" "$BIN/tb_ctl" setlr -a "$addr" -t "$TOKEN" -n "$SETLR_N" "${ca[@]}" |
        sed "s/^setlr/run=$r tag=$tag blas=$blas setlr/" | tee -a "$RAW"
    cleanup
}
for r in $(seq 1 "$RUNS"); do
    setlr plain env env
    setlr tls env env
    setlr plain own env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
    setlr tls own env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
done

# --- summary ----------------------------------------------------------------------
python3 - "$RAW" "$OUT/env.txt" > "$OUT/summary.md" <<'EOF'
import re, statistics, sys
rows = []
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    if "FAILED" not in line and kv:
        rows.append(kv)
med = lambda xs: statistics.median(xs) if xs else float("nan")

def pick(tag, mode, k, key, f=float):
    return [f(r[key]) for r in rows if r.get("tag") == tag and r.get("mode") == mode
            and r.get("k") == str(k) and key in r and "setlr" not in r]

def sub_cpu(tag, mode, k):
    return [float(r["bench_cpu_s"]) * 1e6 / float(r["delivered"]) for r in rows
            if r.get("tag") == tag and r.get("mode") == mode and r.get("k") == str(k)
            and "bench_cpu_s" in r and float(r.get("delivered", 0)) > 0]

ks = sorted({int(r["k"]) for r in rows if r.get("mode") == "tput"})
lks = sorted({int(r["k"]) for r in rows if r.get("mode") == "lat"})
print("## trainbus over TLS against plaintext\n")
print("Medians of %d rounds, plaintext and TLS alternately (`%s`).\n" % (
    len({r["run"] for r in rows}), "bash tests/bench/brokers/run_tls.sh"))
print("### Fan-out, closed loop (lossless), 200-byte events\n")
print("| K | plain: deliveries/s | TLS: deliveries/s | server loop CPU µs/delivery: plain | TLS | TLS − plain | TLS / plain | subscribers' CPU µs/delivery: plain | TLS |")
print("|---|---|---|---|---|---|---|---|---|")
for k in ks:
    dp, dt = med(pick("plain", "tput", k, "deliv_per_s")), med(pick("tls", "tput", k, "deliv_per_s"))
    lp, lt = med(pick("plain", "tput", k, "loop_cpu_us_per_deliv")), med(pick("tls", "tput", k, "loop_cpu_us_per_deliv"))
    sp, st = med(sub_cpu("plain", "tput", k)), med(sub_cpu("tls", "tput", k))
    print("| %d | %.0f | %.0f | %.3f | %.3f | %+.3f | %.2f | %.3f | %.3f |" % (
        k, dp, dt, lp, lt, lt - lp, lt / lp if lp else float("nan"), sp, st))
print("\n### Publish → receive latency at %s events/s\n" % next(
    (r["rate"] for r in rows if r.get("mode") == "lat"), "?"))
print("| K | p50 µs: plain | TLS | p99 µs: plain | TLS | server loop CPU µs/delivery: plain | TLS | TLS − plain | TLS / plain |")
print("|---|---|---|---|---|---|---|---|---|")
for k in lks:
    p5 = [med(pick(t, "lat", k, "p50_us")) for t in ("plain", "tls")]
    p9 = [med(pick(t, "lat", k, "p99_us")) for t in ("plain", "tls")]
    lc = [med(pick(t, "lat", k, "loop_cpu_us_per_deliv")) for t in ("plain", "tls")]
    print("| %d | %.1f | %.1f | %.1f | %.1f | %.3f | %.3f | %+.3f | %.2f |" % (
        k, p5[0], p5[1], p9[0], p9[1], lc[0], lc[1], lc[1] - lc[0], lc[1] / lc[0] if lc[0] else float("nan")))
print("\n### set_lr round trip (trainbusd training the demo model)\n")
print("| BLAS kernels | set_lr p50 µs: plain | TLS | TLS − plain | set_lr p99 µs: plain | TLS | ping p50 µs: plain | TLS | TLS − plain | batch p50 µs |")
print("|---|---|---|---|---|---|---|---|---|---|")
for blas, name in (("env", "OPENBLAS_* as set here"), ("own", "the processor's own (unset)")):
    def s(tag, key):
        return med([float(r[key]) for r in rows if r.get("tag") == tag and r.get("blas") == blas and key in r])
    sp, st = s("plain", "setlr_p50_us"), s("tls", "setlr_p50_us")
    pp, pt = s("plain", "ping_p50_us"), s("tls", "ping_p50_us")
    print("| %s | %.1f | %.1f | %+.1f | %.1f | %.1f | %.1f | %.1f | %+.1f | %.1f |" % (
        name, sp, st, st - sp, s("plain", "setlr_p99_us"), s("tls", "setlr_p99_us"), pp, pt, pt - pp,
        s("plain", "batch_p50_us")))
print("\n```")
print(open(sys.argv[2]).read().rstrip())
print("```")
EOF
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT"
