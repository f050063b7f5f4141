#!/usr/bin/env bash
# Installs missing Debian packages (as root; otherwise prints the apt-get line),
# then configures and builds trainbus. The build needs libcsv-dev and
# libssl-dev (OpenSSL 3: TLS) besides the libraries; the tests need openssl
# (the command makes their throwaway CA and certificates), python3-numpy (test_npy writes its files with
# numpy), python3-venv, python3-setuptools and python3-wheel (the offline pip
# install into a virtual environment) and systemd (systemd-analyze verify of
# the unit; nothing is started); openmpi-bin and libopenmpi-dev build dist/
# (`mpirun -n N trainbus train`) and run its tests.
#   BUILD_DIR   build folder (default: build)
#   SANITIZE=1  ASan+UBSan build (default folder: build-asan)
#   WERROR=1    warnings are errors (CI sets this)
#   EXTRA_PKGS  more Debian packages to make sure of (benchmarks add theirs)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

pkgs="cmake make gcc clang pkg-config python3 libuv1-dev libcjson-dev libopenblas-dev
      libcmocka-dev zlib1g-dev libclang-rt-14-dev libwebsockets-dev libwebsockets-evlib-uv
      libcsv-dev libssl-dev openssl dataset-fashion-mnist
      openmpi-bin libopenmpi-dev
      python3-numpy python3-venv python3-setuptools python3-wheel python3-torch systemd
      libnats-dev libmosquitto-dev nats-server mosquitto mosquitto-clients
      ${EXTRA_PKGS:-}"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends $missing >&2
  else
    echo "setup: missing Debian packages; run as root:" >&2
    echo "  apt-get install -y$missing" >&2
    exit 1
  fi
fi

if [ "${SANITIZE:-0}" = 1 ]; then
  build=${BUILD_DIR:-$top/build-asan}
  flags="-DTB_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"
else
  build=${BUILD_DIR:-$top/build}
  flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo"
fi
[ "${WERROR:-0}" = 1 ] && flags="$flags -DTB_WERROR=ON"
cmake -S "$top" -B "$build" $flags ${CMAKE_FLAGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)" >&2
echo "$build"
