#!/usr/bin/env bash
# Set everything up, then start the dashboard on http://localhost:8501 (extra args go to streamlit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run dashboard.py "$@"
