#!/usr/bin/env bash
# Fashion-MNIST benchmark (issues 2 and 17): trainbus against PyTorch and
# against the sgemm bound, on 1 thread and on every core, in one run.
#
# Builds bench_fmnist and bench_sgemm through scripts/setup.sh (which
# installs python3-torch and dataset-fashion-mnist when missing and run as
# root). Then, twice: once with the environment as it is, and once with
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for the benchmark commands
# alone (the processor's own OpenBLAS kernels; tests and CI keep the
# environment as it is), naming the kernel each used:
#
#   1. bench_sgemm: one core's sgemm at the shapes of one training step
#      (784-256-128-10, batch 128), median of 31 timings of each product, in
#      wall and CPU time; the bound is batch / the step's summed product time,
#      i.e. FLOPs per sample x samples/s at one core's measured GFLOP/s;
#   2. RUNS rounds of: for threads = 1 and threads = $(nproc), bench_fmnist
#      and the PyTorch script, alternating them (and which goes first) so
#      that slow drift of a shared machine hits both, and both thread
#      counts, alike.
#
# It prints a table of medians per kernel: samples/s of pure training time
# for both, their ratio, trainbus's scaling (N threads / 1 thread), trainbus
# as a fraction of the one-core sgemm bound, test accuracies, and the CPU
# seconds per wall second each used; samples per CPU second and the bound in
# CPU time beside them (steadier when other work shares the machine). Load
# averages are printed at the start and end of each part: rerun when the
# machine is quiet (see `uptime`).
#
#   RUNS=3       runs per implementation and thread count
#   EPOCHS=10    epochs per run
#   SEED=42      weight init and shuffle seed (the same for every run)
#   BUILD_DIR    build folder (default: build-bench)
#   PYTHON       interpreter with torch (default /usr/bin/python3: Debian's
#                python3-torch; a python3 earlier on PATH may lack torch)
#   KERNELS      "env native" (default), or one of them
#   OUT          also keep every run's JSON line in this file
#
# Threads: trainbus takes them with tb_set_num_threads() (its own threads,
# each with single-threaded OpenBLAS). The torch script sets
# torch.set_num_threads() (its OpenMP pool) and, because Debian's torch
# multiplies matrices in the same pthread OpenBLAS, openblas_set_num_threads()
# too. Both report what they then had. With both of torch's pools at nproc,
# its OpenMP workers spin-wait (libgomp's default) on the same cores as
# OpenBLAS's threads, and on a machine with other work a 10-epoch run takes
# many minutes (measured: 1,200 samples/s at a load of 10). So the torch runs
# get OMP_WAIT_POLICY=passive unless the environment sets it (it affects only
# torch: trainbus has no OpenMP); the value used is reported.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
here="$top/tests/bench"
RUNS=${RUNS:-3}
EPOCHS=${EPOCHS:-10}
SEED=${SEED:-42}
PYTHON=${PYTHON:-/usr/bin/python3}
KERNELS=${KERNELS:-env native}
export BUILD_DIR=${BUILD_DIR:-$top/build-bench}

# setup.sh builds the whole tree; if some other part is broken mid-change, the
# benchmark only needs its own targets, so fall back to building just those.
log=$(mktemp)
results=$(mktemp)
trap 'rm -f "$log" "$results"' EXIT
if build=$(EXTRA_PKGS="python3-torch dataset-fashion-mnist" "$top/scripts/setup.sh" 2>"$log" |
  tail -n 1); then
  :
else
  tail -n 20 "$log" >&2
  echo "run_fmnist: full build failed (above); building the benchmarks alone" >&2
  build=$BUILD_DIR
  cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target bench_fmnist bench_sgemm >&2
fi
bench="$build/tests/bench/bench_fmnist"
sgemm="$build/tests/bench/bench_sgemm"
for b in "$bench" "$sgemm"; do
  [ -x "$b" ] || { echo "run_fmnist: $b was not built" >&2; exit 1; }
done

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
    l.openblas_get_config.restype = ctypes.c_char_p
    print("openblas:", l.openblas_get_config().decode())
except OSError as e:
    print("openblas: not loadable:", e)
import torch
print("torch:", torch.__version__)
EOF
echo "OMP_WAIT_POLICY for the torch runs: ${OMP_WAIT_POLICY:-passive}"
echo "command: RUNS=$RUNS EPOCHS=$EPOCHS SEED=$SEED tests/bench/run_fmnist.sh"
echo

# Runs "$@" with the kernel choice $1 (env: as it is; native: the two
# OPENBLAS_* variables unset for this command alone), tagging its JSON line.
run_tagged() {
  local kind=$1
  shift
  local line
  if [ "$kind" = native ]; then
    line=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@")
  else
    line=$("$@")
  fi
  echo "{\"env\":\"$kind\",${line#\{}" | tee -a "$results"
}
run_c() {
  run_tagged "$1" "$bench" --json --epochs "$EPOCHS" --threads "$2" --seed "$SEED"
}
OMP_WAIT_POLICY_TORCH=${OMP_WAIT_POLICY:-passive}
run_torch() {
  run_tagged "$1" env OMP_WAIT_POLICY="$OMP_WAIT_POLICY_TORCH" "$PYTHON" \
    "$here/bench_fmnist_torch.py" --json --epochs "$EPOCHS" --threads "$2" --seed "$SEED"
}

for kind in $KERNELS; do
  echo "== runs with $([ "$kind" = native ] && echo "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset" ||
    echo "the environment as it is") (JSON, one per line)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  for r in 1 2 3; do
    run_tagged "$kind" "$sgemm" --json
  done
  # Rounds of every thread count, so that a change of load between rounds
  # hits 1 thread and N threads alike (the scaling is their ratio).
  for r in $(seq 1 "$RUNS"); do
    for t in $threads_list; do
      if [ $((r % 2)) = 1 ]; then
        run_c "$kind" "$t"
        run_torch "$kind" "$t"
      else
        run_torch "$kind" "$t"
        run_c "$kind" "$t"
      fi
    done
  done
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
done
[ -n "${OUT:-}" ] && cp "$results" "$OUT"

"$PYTHON" "$here/summarize_fmnist.py" "$results"
