#!/usr/bin/env bash
# Trainers on the bus (issue 14): what publishing a training loop to a daemon
# costs, each figure beside its reference in the same run, medians of RUNS.
#
#   1. publishing cost on the loop's thread, ns per event: the publisher
#      (trainbus/publisher.h, to a real trainbusd; tb_trainer_bench cost)
#      against the daemon's own publisher (an embedded server's run callback;
#      tb_trainer_embed cost), each against an empty callback list in its
#      own process, the two programs alternating;
#   2. training slowdown of the demo job (Fashion-MNIST MLP, one BLAS
#      thread, EPOCHS epochs) published with 8 subscribers attached
#      (each a process subscribed to every event of every run: tb_trainer_bench
#      sub) against the same job trained
#      alone, alternating which goes first (tb_trainer_bench fit);
#   3. end-to-end latency, from the hook on the trainer's side to a
#      subscriber, p50/p99 of every train_batch_end: the demo job published by
#      `trainbus train --connect` and the same job submitted to the daemon
#      (trained by it), concurrently in one daemon, one subscriber reading
#      both (tb_trainer_bench lat).
# 2 and 3 run twice: with the environment's OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE as set, and with both unset (the processor's own kernels),
# in the benchmark command alone.
#
#   RUNS=5      repetitions of each measurement
#   EPOCHS=5    epochs of the demo job (its default)
#   BUILD_DIR   build folder (default: build, as scripts/test.sh)
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
RUNS=${RUNS:-5}
EPOCHS=${EPOCHS:-5}
build=${BUILD_DIR:-$top/build}
cmake --build "$build" -j2 --target tb_trainer_bench tb_trainer_embed trainbusd trainbus >&2
bench="$build/tests/bench/trainer/tb_trainer_bench"
embed="$build/tests/bench/trainer/tb_trainer_embed"
cli="$build/trainbus"
daemon="$build/trainbusd"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export TRAINBUS_TOKEN=bench-token-0123456789

start_daemon() { # $1: name, then trainbusd's options; sets addr
  local sd="$work/$1"
  shift
  mkdir -p "$sd"
  "$daemon" --no-job --listen 127.0.0.1:0 --state-dir "$sd" --token "$TRAINBUS_TOKEN" \
    --quiet "$@" >/dev/null 2>"$sd/log" &
  pids+=($!)
  for _ in $(seq 200); do
    [ -s "$sd/address" ] && break
    sleep 0.05
  done
  addr=$(cat "$sd/address")
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p"; }

blas_label() { [ "$1" = own ] && echo "processor's own kernels (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset)" ||
  echo "environment's (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset})"; }
with_blas() { # $1: env|own, then the command
  if [ "$1" = own ]; then shift; env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"; else shift; "$@"; fi
}

echo "# trainer benchmark: RUNS=$RUNS EPOCHS=$EPOCHS, $(nproc) cores, $(date -u +%FT%TZ)"

# 1. cost: the publisher and the embedded server's publisher, alternating
start_daemon cost
for i in $(seq "$RUNS"); do
  if [ $((i % 2)) = 1 ]; then
    "$bench" cost -a "$addr" -n 96000
    "$embed" cost -n 96000
  else
    "$embed" cost -n 96000
    "$bench" cost -a "$addr" -n 96000
  fi
done >"$work/out-cost"
pub=$(grep '"path":"publisher"' "$work/out-cost" | field hook_ns | median)
emb=$(grep '"path":"embedded"' "$work/out-cost" | field hook_ns | median)
pcpu=$(grep '"path":"publisher"' "$work/out-cost" | field cpu_ns | median)
ecpu=$(grep '"path":"embedded"' "$work/out-cost" | field cpu_ns | median)
empty=$(field empty_ns <"$work/out-cost" | median)
echo "publishing cost per event (loop thread, median of $RUNS x 96000 train_batch_end):"
printf '  publisher to trainbusd  %8.0f ns in the hook, %6.0f ns of the thread'"'"'s CPU\n' "$pub" "$pcpu"
printf '  daemon run (embedded)   %8.0f ns in the hook, %6.0f ns of the thread'"'"'s CPU\n' "$emb" "$ecpu"
printf '  no callback             %8.0f ns\n' "$empty"
awk -v a="$pub" -v b="$emb" -v c="$pcpu" -v d="$ecpu" \
  'BEGIN { printf "  ratio publisher/daemon  %8.2f (hook), %.2f (CPU)\n", a / b, c / d }'

for blas in env own; do
  echo
  echo "BLAS: $(blas_label $blas)"
  # 2. slowdown with 8 subscribers
  start_daemon "fit-$blas"
  watchers=()
  for _ in $(seq 8); do
    "$bench" sub -a "$addr" >/dev/null &
    watchers+=($!)
    pids+=($!)
  done
  : >"$work/out-fit-$blas"
  for i in $(seq "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then order="alone published"; else order="published alone"; fi
    for what in $order; do
      if [ "$what" = alone ]; then
        with_blas $blas "$bench" fit -e "$EPOCHS" >>"$work/out-fit-$blas"
      else
        with_blas $blas "$bench" fit -e "$EPOCHS" -a "$addr" >>"$work/out-fit-$blas"
      fi
    done
  done
  for w in "${watchers[@]}"; do kill "$w" 2>/dev/null || true; done
  alone=$(grep '"published":false' "$work/out-fit-$blas" | field train_s | median)
  published=$(grep '"published":true' "$work/out-fit-$blas" | field train_s | median)
  calone=$(grep '"published":false' "$work/out-fit-$blas" | field cpu_s | median)
  cpublished=$(grep '"published":true' "$work/out-fit-$blas" | field cpu_s | median)
  dropped=$(grep '"published":true' "$work/out-fit-$blas" | field dropped | sort -n | tail -1)
  echo "training time of the demo job ($EPOCHS epochs, median of $RUNS):"
  awk -v a="$alone" -v p="$published" -v d="$dropped" -v ca="$calone" -v cp="$cpublished" 'BEGIN {
    printf "                             wall       training thread CPU\n"
    printf "  alone                      %7.3f s  %7.3f s\n", a, ca
    printf "  published, 8 subscribers   %7.3f s  %7.3f s  (%s batch events dropped at most)\n", p, cp, d
    printf "  ratio published/alone      %7.4f    %7.4f\n", p / a, cp / ca
    printf "  slowdown                   %+6.2f %%   %+6.2f %%\n", (p / a - 1) * 100, (cp / ca - 1) * 100 }'

  # 3. latency: a trainer's run and a daemon-trained run, concurrently
  data=${TRAINBUS_DEMO_DATA:-/usr/share/datasets/fashion-mnist}
  start_daemon "lat-$blas" --data-dir "$data"
  "$cli" train --print-job 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin); j["epochs"] = int(sys.argv[1]); j["threads"] = 1
print(json.dumps(j))' "$EPOCHS" >"$work/demo.json"
  : >"$work/out-lat-$blas"
  for i in $(seq "$RUNS"); do
    "$bench" lat -a "$addr" -k 2 >"$work/lat-run" &
    lp=$!
    for _ in $(seq 100); do grep -q subscribed "$work/lat-run" 2>/dev/null && break; sleep 0.05; done
    with_blas $blas "$cli" submit "$work/demo.json" --connect "$addr" >/dev/null
    with_blas $blas "$cli" train "$work/demo.json" --connect "$addr" --verbose 0 >/dev/null 2>&1
    wait "$lp"
    grep '"source"' "$work/lat-run" >>"$work/out-lat-$blas"
  done
  echo "latency hook -> subscriber, every train_batch_end (median over $RUNS runs of each run's p50/p99):"
  for src in daemon trainer; do
    p50=$(grep "\"source\":\"$src\"" "$work/out-lat-$blas" | field p50_us | median)
    p99=$(grep "\"source\":\"$src\"" "$work/out-lat-$blas" | field p99_us | median)
    n=$(grep "\"source\":\"$src\"" "$work/out-lat-$blas" | field events | median)
    printf '  %-8s p50 %6.0f us  p99 %6.0f us  (%s events a run)\n' "$src" "$p50" "$p99" "$n"
    eval "lat_$src=$p50 lat99_$src=$p99"
  done
  awk -v a="$lat_daemon" -v b="$lat_trainer" -v c="$lat99_daemon" -v d="$lat99_trainer" \
    'BEGIN { printf "  ratio trainer/daemon      p50 %.2f  p99 %.2f\n", b / a, d / c }'
done
