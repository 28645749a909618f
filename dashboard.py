"""Parallel Filter Lab: the Streamlit entry point.

    .venv/bin/streamlit run dashboard.py

Sets the page config and wires the pages (``pages/*.py``) with ``st.navigation``; see
``pages._ui.app``. Nothing here or in any page starts worker processes at import time: the
engine spawns workers that re-import the main module, so it is created on first use by
``pages._ui.state.get_engine`` (cached once per server process) and closed on shutdown.
"""

from pages._ui import app

if __name__ != "__mp_main__":  # a spawned worker process (the pool's, Dask's) re-runs this file: no app there
    app()
