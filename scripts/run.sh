#!/usr/bin/env bash
# Builds trainbus and runs the main job: the built-in demo job, trained live
# with a progress bar. Arguments are passed to `trainbus train`.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$("$top/scripts/setup.sh" | tail -n 1)
exec "$build/trainbus" train "$@"
