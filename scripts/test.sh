#!/usr/bin/env bash
# Set everything up (Python packages, Debian's chromium for the browser tests), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  fi
fi
# pytest exits 5 when it collects no test: that is a failure here, and so it stays.
exec .venv/bin/python -m pytest "$@"
