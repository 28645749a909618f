"""Parallel Filter Lab: the Streamlit entry point.

    .venv/bin/streamlit run dashboard.py

Sets the page config and wires the pages (``pages/*.py``) with ``st.navigation``; see
``pages._ui.app``. Nothing here or in any page starts worker processes at import time: the
engine spawns workers that re-import the main module, so it is created on first use by
``pages._ui.state.get_engine`` (cached once per server process) and closed on shutdown.
"""

import sys

from pages._ui import app

if __name__ != "__mp_main__":  # a spawned worker process (the pool's, Dask's) re-runs this file: no app there
    # The engine's job thread starts filter A's pass, then B's; between the two it may wait for
    # the GIL while a page thread or the server's event loop runs Python. Python's default 5 ms
    # switch interval made B start up to 12 ms after A (issue 13); 1 ms keeps both within about
    # a millisecond, at no measurable cost to a server that mostly waits.
    sys.setswitchinterval(0.001)
    app()
