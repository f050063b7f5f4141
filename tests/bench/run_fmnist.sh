#!/usr/bin/env bash
# Fashion-MNIST benchmark (issue 2): trainbus against PyTorch in one run.
#
# Builds bench_fmnist through scripts/setup.sh (which installs python3-torch
# and dataset-fashion-mnist when missing and run as root), then for threads = 1
# and threads = $(nproc) runs the C benchmark and the PyTorch script RUNS times
# each, alternating them (and swapping which goes first on every other run) so
# that slow drift of a shared, noisy machine hits both alike. It prints a table
# of medians: samples/s of pure training time, the ratio, test accuracy, the
# threads each side really had and the CPU seconds per wall second they used.
#
#   RUNS=3       runs per implementation and thread count
#   EPOCHS=10    epochs per run
#   SEED=42      weight init and shuffle seed (the same for every run)
#   BUILD_DIR    build folder (default: build-bench)
#   PYTHON       interpreter with torch (default /usr/bin/python3: Debian's
#                python3-torch; a python3 earlier on PATH may lack torch)
#   OUT          also keep every run's JSON line in this file
#
# Threads: trainbus sets OpenBLAS's pool with tb_set_num_threads(). The torch
# script sets torch.set_num_threads() (its OpenMP pool) and, because Debian's
# torch multiplies matrices in the same pthread OpenBLAS, openblas_set_num_threads()
# too. Both report what they then had (tb_get_num_threads(); torch.get_num_threads()
# and openblas_get_num_threads()). OPENBLAS_* variables in the environment are
# reported and passed through unchanged.
#
# With both pools at nproc, torch's OpenMP workers spin-wait (libgomp's default)
# on the same cores as OpenBLAS's threads, and torch's all-cores figure collapses,
# worst when anything else runs on the machine. OMP_WAIT_POLICY=passive in the
# environment (it affects only torch: trainbus has no OpenMP) shows torch without
# that; the script passes it through and reports it.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
here="$top/tests/bench"
RUNS=${RUNS:-3}
EPOCHS=${EPOCHS:-10}
SEED=${SEED:-42}
PYTHON=${PYTHON:-/usr/bin/python3}
export BUILD_DIR=${BUILD_DIR:-$top/build-bench}

# setup.sh builds the whole tree; if some other part is broken mid-change, the
# benchmark only needs its own target, so fall back to building just that.
log=$(mktemp)
results=$(mktemp)
trap 'rm -f "$log" "$results"' EXIT
if build=$(EXTRA_PKGS="python3-torch dataset-fashion-mnist" "$top/scripts/setup.sh" 2>"$log" |
  tail -n 1); then
  :
else
  tail -n 20 "$log" >&2
  echo "run_fmnist: full build failed (above); building bench_fmnist alone" >&2
  build=$BUILD_DIR
  if ! cmake --build "$build" -j"$(nproc)" --target bench_fmnist >&2; then
    [ -x "$build/tests/bench/bench_fmnist" ] || exit 1
    echo "run_fmnist: WARNING: build failed; using the existing bench_fmnist built" \
      "$(date -r "$build/tests/bench/bench_fmnist" '+%F %T')" >&2
  fi
fi
bench="$build/tests/bench/bench_fmnist"
[ -x "$bench" ] || { echo "run_fmnist: $bench was not built" >&2; exit 1; }

ncpu=$(nproc)
threads_list="1"
[ "$ncpu" -gt 1 ] && threads_list="1 $ncpu"

echo "== machine"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), nproc $ncpu"
for v in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS OMP_NUM_THREADS OMP_WAIT_POLICY \
  GOTO_NUM_THREADS; do
  echo "$v: ${!v-(not set)}"
done
"$PYTHON" - <<'EOF'
import ctypes
try:
    l = ctypes.CDLL("libopenblas.so.0")
    l.openblas_get_config.restype = l.openblas_get_corename.restype = ctypes.c_char_p
    print("openblas:", l.openblas_get_config().decode(), "| core", l.openblas_get_corename().decode())
except OSError as e:
    print("openblas: not loadable:", e)
import torch
print("torch:", torch.__version__)
EOF
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews timings)"
echo "command: RUNS=$RUNS EPOCHS=$EPOCHS SEED=$SEED tests/bench/run_fmnist.sh"
echo

run_c() {
  "$bench" --json --epochs "$EPOCHS" --threads "$1" --seed "$SEED" | tee -a "$results"
}
run_torch() {
  "$PYTHON" "$here/bench_fmnist_torch.py" --json --epochs "$EPOCHS" --threads "$1" \
    --seed "$SEED" | tee -a "$results"
}
echo "== runs (JSON, one per line)"
for t in $threads_list; do
  for r in $(seq 1 "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then
      run_c "$t"
      run_torch "$t"
    else
      run_torch "$t"
      run_c "$t"
    fi
  done
done
[ -n "${OUT:-}" ] && cp "$results" "$OUT"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

"$PYTHON" - "$results" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("== medians")
hdr = ("threads", "trainbus samples/s", "torch samples/s", "ratio", "trainbus acc",
       "torch acc", "threads used tb / torch (omp, blas)", "cpu/wall tb / torch")
print(" | ".join(hdr))
verdict = []
for t in sorted({r["threads_requested"] for r in rows}):
    tb = [r for r in rows if r["impl"] == "trainbus" and r["threads_requested"] == t]
    th = [r for r in rows if r["impl"] == "torch" and r["threads_requested"] == t]
    s_tb, s_th = med([r["samples_per_s"] for r in tb]), med([r["samples_per_s"] for r in th])
    a_tb, a_th = med([r["test_acc"] for r in tb]), med([r["test_acc"] for r in th])
    ratio = s_tb / s_th
    used = "%s / (%s, %s)" % (
        ",".join(sorted({str(r["threads_used"]) for r in tb})),
        ",".join(sorted({str(r["threads_used"]) for r in th})),
        ",".join(sorted({str(r["blas_threads"]) for r in th})))
    cpu = "%.2f / %.2f" % (med([r["cpu_per_wall"] for r in tb]), med([r["cpu_per_wall"] for r in th]))
    print(" | ".join([str(t), "%.0f" % s_tb, "%.0f" % s_th, "%.2fx" % ratio, "%.4f" % a_tb,
                      "%.4f" % a_th, used, cpu]))
    print("   runs: trainbus %s  torch %s" % (
        " ".join("%.0f" % r["samples_per_s"] for r in tb),
        " ".join("%.0f" % r["samples_per_s"] for r in th)))
    if t == 1:
        verdict.append("single-thread ratio %.2fx (target >= 1.3x): %s"
                       % (ratio, "met" if ratio >= 1.3 else "NOT met"))
    verdict.append("threads=%d trainbus test accuracy %.4f (target >= 0.88): %s"
                   % (t, a_tb, "met" if a_tb >= 0.88 else "NOT met"))
print()
print("\n".join(verdict))
EOF
