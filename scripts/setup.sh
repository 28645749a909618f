#!/usr/bin/env bash
# Create .venv and install what is asked for; idempotent, safe to rerun, says what it does.
#   bash scripts/setup.sh runtime   the app: requirements.txt + the engine package (pip install -e .)
#   bash scripts/setup.sh dev       runtime + tests, benchmarks and the Dask extras (requirements-dev.txt)
# scripts/dashboard.sh runs the first, scripts/test.sh the second. PYTHON=python3.12 picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-dev}
case "$what" in
  runtime) reqs=requirements.txt; about="the dashboard's runtime packages" ;;
  dev) reqs=requirements-dev.txt; about="the runtime packages plus tests, benchmarks and the Dask extras" ;;
  *) echo "usage: bash scripts/setup.sh runtime|dev (got '$what')" >&2; exit 2 ;;
esac
say() { echo "setup: $*"; }
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
# One stamp per set, named after what it installed: a changed requirements file or pyproject.toml
# installs again. The dev set includes the runtime set.
digest() { cat requirements.txt "$@" pyproject.toml | sha1sum | cut -c1-12; }
stamp=.venv/.installed-$what-$(digest "$reqs")
if [ -f "$stamp" ] || { [ "$what" = runtime ] && [ -f ".venv/.installed-dev-$(digest requirements-dev.txt)" ]; }; then
  say "$about are installed (.venv is up to date)"
  exit 0
fi
say "installing $about into .venv from $reqs, and the engine package (pip install -e .);"
say "the first time this downloads them from PyPI (about a minute)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --progress-bar off --disable-pip-version-check -r "$reqs" -e .
rm -f .venv/.installed-"$what"-* && touch "$stamp"
say "done: .venv/bin/python imports engine from any folder"
