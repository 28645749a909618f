"""The dashboard's UI layer: everything the pages share, kept out of the page scripts.

Pages (``pages/*.py``) read widgets, call ``engine`` and draw; the helpers here hold the
engine (``state``) and the Scaling page's optional Dask LocalCluster (``cluster``) for the
server process, keep each session's shared arrays and let go of them (``holdings``), turn
arrays into pictures (``images``), pick and draw kernels (``kernels``), build the charts
(``charts``), run jobs without blocking or leaking work across reruns (``jobs``), estimate a
run's time (``estimate``), print numbers (``fmt``), and hold the sections of each page (``lab``,
``sweep``, ``explain``). They import
only ``engine``'s public names.

    dashboard.py -> app(): page config + st.navigation(top) -> pages/lab.py | scaling.py | how_it_works.py
"""


def app() -> None:
    """The entry point's body: page config and navigation; runs the page the URL asks for."""
    import streamlit as st

    st.set_page_config(
        page_title="Parallel Filter Lab",
        page_icon=":material/blur_on:",
        layout="wide",
        menu_items={"About": "Parallel Filter Lab: see what parallel image filtering does and what it costs."},
    )
    pages = [
        st.Page("pages/lab.py", title="Filter lab", icon=":material/tune:", default=True),
        st.Page("pages/scaling.py", title="Scaling", icon=":material/speed:"),
        st.Page("pages/how_it_works.py", title="How it works", icon=":material/account_tree:"),
    ]
    st.navigation(pages, position="top").run()


def page_guard() -> None:
    """Make sure a page runs under the app's navigation, even when Streamlit ran it alone.

    (Streamlit 1.67 has no setting that turns the legacy ``pages/`` folder convention off; its
    own advice is not to name the folder ``pages/``, which this project's layout requires.)

    Streamlit honours the old ``pages/`` folder convention until the first ``st.navigation``
    call: on the very first request after a server start that is a deep link (``/scaling``),
    and on every rerun under AppTest, it runs the page file by itself (no page config, a
    sidebar listing every file). Then this switches the convention off, runs the app's
    navigation (which runs this page again, properly), and stops the outer run. No rerun, so
    the click that started the run is not lost.
    """
    import streamlit as st
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        app()
        st.stop()
    from .state import page_start

    page_start()  # this session is in use; the registry's rules for the others (holdings.py)
