#!/usr/bin/env bash
# Data-parallel benchmark (issue 15): the Fashion-MNIST MLP of the demo job
# (784-256-128-10, Adam, batch 128, validation_split 0.1) trained by
#   1 rank      trainbus train (one process, one thread): the reference
#   2 ranks     mpirun -n 2 trainbus train (one thread each, dist/)
#   2 threads   trainbus train --threads 2 (one process; what the same two
#               cores give without MPI)
# in one run, RUNS rounds, the order rotated every round so that a shared
# machine's drift hits all alike; then again with OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE unset for the benchmark commands alone (the processor's
# own kernels). Prints medians of training samples/s (the time between each
# epoch's first batch and its last, validation excluded), the scaling
# efficiency of 2 ranks (samples/s over twice the 1-rank samples/s), the
# bytes each rank sends per step and the seconds per step in the reduction
# and waiting for the other rank (trainbus train --rank-stats), and the
# final test accuracy of each. Load averages are printed at the start and the
# end: rerun when the machine is quiet.
#
#   RUNS=3       rounds
#   EPOCHS=2     epochs per run
#   BUILD_DIR    build folder with trainbus (default: build; built by
#                scripts/setup.sh if trainbus is missing)
#   KERNELS      "env native" (default), or one of them
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
export BUILD_DIR=${BUILD_DIR:-$top/build}
if [ ! -x "$BUILD_DIR/trainbus" ]; then
  "$top/scripts/setup.sh" >/dev/null
fi
exec "${PYTHON:-python3}" "$top/tests/bench/run_dist.py" "$BUILD_DIR/trainbus"
