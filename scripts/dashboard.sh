#!/usr/bin/env bash
# Set up what the app needs (runtime packages only), then start the dashboard on
# http://localhost:8501 (extra arguments go to `streamlit run`, e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
# A server killed with SIGKILL cannot unlink its shared memory: sweep what dead runs left now,
# not only when the first page loads (the engine sweeps again then).
.venv/bin/python -m engine sweep
# glibc keeps freed large results in per-thread arenas; a fixed mmap threshold gives the memory
# of finished jobs back to the system (docs/reliability.md, "memory after the load").
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1048576}
echo "dashboard: streamlit run dashboard.py $* (it prints the address; Ctrl-C stops it)"
exec .venv/bin/streamlit run dashboard.py "$@"
