#!/bin/sh
# Runs one browser test of the dashboard: tests/web/run.sh page.test.mjs|dashboard.test.mjs
# Installs the npm packages pinned in package-lock.json (npm ci), and Debian's
# Chromium if it is missing and we are root. Exit 77 (ctest: skipped) only when
# /usr/bin/chromium is absent and cannot be installed.
set -eu
cd "$(dirname "$0")"
test_file=${1:?usage: run.sh TEST.mjs}
chromium=${CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run.sh: installing chromium" >&2
    { apt-get install -y -q --no-install-recommends chromium ||
      { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; } >&2 || true
  fi
  if [ ! -x "$chromium" ]; then
    echo "skipped: $chromium is absent and could not be installed (apt-get install chromium)"
    exit 77
  fi
fi

# npm ci only when node_modules does not match the lock file already.
if ! cmp -s package-lock.json node_modules/.trainbus-lock 2>/dev/null; then
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json node_modules/.trainbus-lock
fi

export CHROMIUM="$chromium"
exec node "$test_file"
