#!/usr/bin/env bash
# Builds trainbus and runs the main job: the daemon trainbusd training the
# built-in demo job, with `trainbus watch` attached to show it live. When the
# run has finished the daemon keeps serving (try `build/trainbus status`,
# `build/trainbus history`) until Ctrl-C.
#   Arguments are passed to trainbusd (e.g. --job my.json, --listen 127.0.0.1:0).
#   TRAINBUS_STATE_DIR  state directory (default ~/.trainbus)
#   TRAINBUS_HTTP       where the dashboard is served (default 127.0.0.1:8787; "" for none)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$("$top/scripts/setup.sh" | tail -n 1)
export TRAINBUS_STATE_DIR=${TRAINBUS_STATE_DIR:-$HOME/.trainbus}
mkdir -p "$TRAINBUS_STATE_DIR"
rm -f "$TRAINBUS_STATE_DIR/address"

log=$(mktemp)
http=${TRAINBUS_HTTP-127.0.0.1:8787}
"$build/trainbusd" ${http:+--http "$http"} "$@" 2> >(tee "$log" >&2) &
daemon=$!
trap 'kill -INT $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -f "$log"' EXIT
trap 'exit 130' INT TERM

# The daemon writes its address once it listens.
for _ in $(seq 100); do
  [ -s "$TRAINBUS_STATE_DIR/address" ] && break
  kill -0 $daemon 2>/dev/null || { echo "run: trainbusd did not start" >&2; exit 1; }
  sleep 0.05
done
[ -n "$http" ] && echo "run: the dashboard is at http://$http/" >&2
echo "run: attached a monitor (trainbus watch); in another shell try:" >&2
echo "       $build/trainbus set-lr 0.0005      # steer the learning rate" >&2
echo "       $build/trainbus stop               # stop the run (Keras semantics)" >&2
"$build/trainbus" watch || true
echo "run: the run is over; trainbusd keeps serving (trainbus status, trainbus history)." >&2
echo "run: Ctrl-C stops it." >&2
wait $daemon
