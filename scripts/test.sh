#!/usr/bin/env bash
# Builds trainbus (see setup.sh) and runs every test with ctest.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$("$top/scripts/setup.sh" | tail -n 1)
cd "$build"
ctest --output-on-failure -j"$(nproc)" "$@"
