#!/usr/bin/env bash
# Installs trainbus as a user would and uses what was installed (issue 18).
#
#   test_install.sh client   `cmake --install` into a temporary prefix; the
#                            files are there (programs, library, headers,
#                            pkg-config file, CMake package, man pages with
#                            their exit codes, unit); a C program built
#                            against the installed library with pkg-config
#                            and with find_package(trainbus) follows a run of
#                            a daemon started from the installed binary
#   test_install.sh systemd  the installed unit passes `systemd-analyze
#                            verify` without a word, and its command line
#                            starts the daemon (idle, --resume on an empty
#                            state) and stops it cleanly
#   test_install.sh python   `pip install` of clients/python, offline, into a
#                            new virtual environment, whose `import trainbus`
#                            then watches a run
#
# ctest gives: TB_BUILD_DIR, TB_SOURCE_DIR, TB_VERSION, TB_CC,
# TB_CONSUMER_CFLAGS (the sanitizer flags of an ASan build, which the
# installed library needs in its users too), TB_SYSTEM_PYTHON3, TRAINBUSD.
# Every daemon is started on 127.0.0.1 with port 0 and stopped by its PID.
set -euo pipefail
mode=${1:?usage: test_install.sh client|systemd|python}
tmp=$(mktemp -d /tmp/tb-install-XXXXXX)
prefix=$tmp/prefix
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "test_install $mode: $*" >&2
  exit 1
}

install_into() {
  cmake --install "$TB_BUILD_DIR" --prefix "$1" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }
}

# A quick job: 3 epochs of the spirals.
cat >"$tmp/job.json" <<'EOF'
{"name": "install-check", "data": {"source": "spirals", "n_per_class": 200},
 "model": {"layers": [{"type": "dense", "units": 16, "activation": "relu"},
                      {"type": "dense", "units": 2, "activation": "softmax"}]},
 "loss": "sparse_categorical_crossentropy", "epochs": 3}
EOF

# Starts a daemon (binary, then its arguments) and sets $addr and $daemon.
start_daemon() {
  local log=$tmp/daemon-$RANDOM.log
  # The file exists before the daemon does: the background job's
  # redirection may happen after the first read below, and a sed that
  # cannot open it would end the script under set -e and pipefail.
  : >"$log"
  "$@" --listen 127.0.0.1:0 2>"$log" &
  daemon=$!
  pids+=("$daemon")
  addr=""
  for _ in $(seq 300); do
    addr=$(sed -n 's/^trainbusd: listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && return 0
    kill -0 "$daemon" 2>/dev/null || { cat "$log" >&2; fail "the daemon exited: $*"; }
    sleep 0.05
  done
  cat "$log" >&2
  fail "the daemon did not say where it listens: $*"
}

stop_daemon() {
  kill -TERM "$daemon"
  local rc=0
  wait "$daemon" || rc=$?
  [ "$rc" = 0 ] || fail "the daemon exited $rc on SIGTERM"
}

case $mode in
client)
  install_into "$prefix"
  for f in bin/trainbusd bin/trainbus lib/libtrainbus-client.so.0 include/trainbus/client.h \
      include/trainbus/protocol.h include/trainbus/proto_limits.h include/trainbus/version.h \
      lib/pkgconfig/trainbus-client.pc lib/cmake/trainbus/trainbusConfig.cmake \
      lib/cmake/trainbus/trainbusConfigVersion.cmake share/man/man1/trainbus.1 \
      share/man/man8/trainbusd.8 lib/systemd/system/trainbusd.service share/doc/trainbus/JOB.md; do
    [ -e "$prefix/$f" ] || fail "not installed: $f"
  done
  [ "$("$prefix/bin/trainbusd" --version)" = "trainbusd $TB_VERSION" ] || fail "trainbusd --version"
  [ "$("$prefix/bin/trainbus" --version)" = "trainbus $TB_VERSION" ] || fail "trainbus --version"
  # The man pages: every option and the exit codes, from --help.
  grep -q '^\.SH "EXIT STATUS"' "$prefix/share/man/man8/trainbusd.8" || fail "trainbusd.8: no EXIT STATUS"
  grep -q '^\.B \\-\\-data\\-dir DIR' "$prefix/share/man/man8/trainbusd.8" || fail "trainbusd.8: no --data-dir"
  grep -q '^cannot connect to the daemon' "$prefix/share/man/man1/trainbus.1" || fail "trainbus.1: no exit code 3"
  grep -q '^\.SS "trainbus set\\-lr"' "$prefix/share/man/man1/trainbus.1" || fail "trainbus.1: no set-lr"
  grep -q '^\.TH TRAINBUS 1 "" "trainbus '"$TB_VERSION"'"' "$prefix/share/man/man1/trainbus.1" ||
    fail "trainbus.1: not this version"
  if command -v man >/dev/null; then
    page=$(MANPATH=$prefix/share/man man -P cat trainbusd 2>/dev/null || true)
    grep -q "EXIT STATUS" <<<"$page" || fail "man trainbusd does not show the page"
  fi

  # A user's program, built with pkg-config...
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  [ "$(pkg-config --modversion trainbus-client)" = "$TB_VERSION" ] || fail "pkg-config version"
  # shellcheck disable=SC2046,SC2086
  "$TB_CC" $TB_CONSUMER_CFLAGS -o "$tmp/demo_pc" "$TB_SOURCE_DIR/tests/install/client_demo.c" \
    $(pkg-config --cflags --libs trainbus-client) || fail "cannot build against the pkg-config file"
  # ...and with find_package(trainbus).
  CC=$TB_CC cmake -S "$TB_SOURCE_DIR/tests/install/find_package" -B "$tmp/fp" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_FLAGS="$TB_CONSUMER_CFLAGS" >"$tmp/fp.log" 2>&1 &&
    cmake --build "$tmp/fp" >>"$tmp/fp.log" 2>&1 || { cat "$tmp/fp.log" >&2; fail "find_package build"; }
  # Both use the installed library, not the build tree's. (ldd's output is
  # taken whole first: `grep -q` leaving a pipe early fails it under
  # pipefail.)
  libs=$(LD_LIBRARY_PATH=$prefix/lib ldd "$tmp/demo_pc")
  grep -qF "$prefix/lib/libtrainbus-client.so.0" <<<"$libs" ||
    fail "demo_pc does not use the installed library: $libs"
  libs=$(ldd "$tmp/fp/client_demo")
  grep -qF "$prefix/lib/libtrainbus-client.so.0" <<<"$libs" ||
    fail "the find_package build does not use the installed library: $libs"

  # Against a daemon started from the installed binary.
  start_daemon "$prefix/bin/trainbusd" --state-dir "$tmp/state" --token install-check \
    --job "$tmp/job.json"
  out=$(LD_LIBRARY_PATH=$prefix/lib timeout 120 "$tmp/demo_pc" "$addr") || fail "demo_pc: $out"
  [ "$out" = "r1 finished after 3 epochs (trainbus/$TB_VERSION, client library $TB_VERSION)" ] ||
    fail "demo_pc said: $out"
  out=$(timeout 120 "$tmp/fp/client_demo" "$addr") || fail "client_demo (find_package): $out"
  [ "$out" = "r1 finished after 3 epochs (trainbus/$TB_VERSION, client library $TB_VERSION)" ] ||
    fail "client_demo (find_package) said: $out"
  stop_daemon
  echo "test_install client: installed, built with pkg-config and find_package, both followed a run: $out"
  ;;

systemd)
  if ! command -v systemd-analyze >/dev/null; then
    echo "skipped: systemd-analyze not found and systemd cannot be installed here (scripts/setup.sh installs Debian's systemd)"
    exit 77
  fi
  install_into "$prefix"
  unit=$prefix/lib/systemd/system/trainbusd.service
  for want in "DynamicUser=yes" "StateDirectory=trainbus" "Restart=on-failure" \
      "ExecStart=$prefix/bin/trainbusd --state-dir /var/lib/trainbus --resume \$TRAINBUSD_OPTS"; do
    grep -qxF "$want" "$unit" || fail "the unit lacks: $want"
  done
  # The man pages it names must be found too.
  out=$(MANPATH=$prefix/share/man systemd-analyze verify "$unit" 2>&1) || fail "verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify has something to say: $out"
  # Its command line, with a temporary state directory: an empty state
  # starts idle (--resume finds nothing to continue), SIGTERM exits 0.
  start_daemon "$prefix/bin/trainbusd" --state-dir "$tmp/state" --resume
  [ "$("$prefix/bin/trainbus" runs --connect "$addr" --json)" = "" ] || fail "not idle"
  stop_daemon
  echo "test_install systemd: the unit verifies and its command line starts and stops"
  ;;

python)
  py=$TB_SYSTEM_PYTHON3
  "$py" -c 'import venv, ensurepip' 2>/dev/null || fail "$py has no venv (apt-get install python3-venv)"
  # --system-site-packages: the build backend (Debian's python3-setuptools
  # and python3-wheel) comes from the system, so nothing is downloaded.
  "$py" -m venv --system-site-packages "$tmp/venv" || fail "python3 -m venv"
  # From a copy: pip builds in the source folder and would leave files there.
  cp -r "$TB_SOURCE_DIR/clients/python" "$tmp/src"
  env -u PYTHONPATH PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$tmp/venv/bin/pip" install --no-build-isolation --no-index "$tmp/src" >"$tmp/pip.log" 2>&1 ||
    { cat "$tmp/pip.log" >&2; fail "pip install"; }
  [ -x "$tmp/venv/bin/trainbus-callback" ] || fail "no trainbus-callback entry point"
  page=$("$tmp/venv/bin/trainbus-callback" --help) || fail "trainbus-callback --help"
  grep -q "^usage: trainbus-callback" <<<"$page" || fail "trainbus-callback --help: $page"
  start_daemon "$TRAINBUSD" --state-dir "$tmp/state" --token install-check --job "$tmp/job.json"
  rm -rf "$tmp/src"
  cd "$tmp"
  out=$(env -u PYTHONPATH TB_ADDR="$addr" TB_VERSION="$TB_VERSION" TB_VENV="$tmp/venv" \
    timeout 120 "$tmp/venv/bin/python" - <<'EOF'
import importlib.metadata, os, trainbus
assert trainbus.__file__.startswith(os.environ["TB_VENV"]), trainbus.__file__
assert trainbus.__version__ == os.environ["TB_VERSION"], trainbus.__version__
assert importlib.metadata.version("trainbus") == os.environ["TB_VERSION"]
epochs = []
with trainbus.Client(os.environ["TB_ADDR"]) as c:
    for ev in c.subscribe(runs=["r1"], events=["epoch_end", "state"], since_seq=1, timeout=60):
        if ev.event == "epoch_end":
            epochs.append(ev.epoch)
        elif ev.event == "state" and ev.state != "running":
            print("r1 %s, epochs %s" % (ev.state, epochs))
            break
EOF
  ) || fail "the installed package: $out"
  [ "$out" = "r1 finished, epochs [0, 1, 2]" ] || fail "the installed package said: $out"
  # The entry point runs a callback class of the user's.
  printf 'import trainbus\n\n\nclass Quiet(trainbus.RemoteCallback):\n    def on_epoch_end(self, epoch, logs=None):\n        pass\n' >"$tmp/mycb.py"
  out=$(env -u PYTHONPATH timeout 60 "$tmp/venv/bin/trainbus-callback" mycb:Quiet --path "$tmp" \
    --connect "$addr" --token install-check --run r1 --no-lockstep) ||
    fail "trainbus-callback: $out"
  [ "$out" = "trainbus-callback: the run ended: finished" ] || fail "trainbus-callback said: $out"
  rc=0
  "$tmp/venv/bin/trainbus-callback" nosuch:Thing 2>/dev/null || rc=$?
  [ "$rc" = 2 ] || fail "trainbus-callback nosuch:Thing exited $rc, not 2"
  stop_daemon
  echo "test_install python: pip installed offline into a venv; import trainbus watched: $out"
  ;;
*)
  fail "unknown mode"
  ;;
esac
