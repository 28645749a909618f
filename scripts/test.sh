#!/usr/bin/env bash
# Set everything up (the dev packages: runtime + tests, Debian's chromium for the browser tests),
# then run every test (pytest arguments pass through, e.g. tests/test_oracle.py -q).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ ! -x /usr/bin/chromium ]; then
  echo "test: installing Debian's chromium for the browser tests (apt-get)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  fi
fi
# pytest exits 5 when it collects no test: that is a failure here, and so it stays.
echo "test: running pytest $*"
exec .venv/bin/python -m pytest "$@"
