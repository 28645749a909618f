"""Scaling: one filter at 1..N processes, repeated; time, speedup and efficiency with Amdahl's law.

On the engine's process pool and, when the Dask extras are installed, on a Dask LocalCluster of
as many worker processes, side by side.
"""

import streamlit as st

import engine
from pages._ui import cluster, images, lab, page_guard, state, sweep
from pages._ui.fmt import md
from pages._ui.state import CPUS, PROCESS_MAX

page_guard()
st.title("Scaling")
st.caption(
    "How much faster does one filter get with more worker processes? Sweep the process count, "
    "repeat each run, and compare with the ideal line and Amdahl's law."
)
lab.release_note()  # first: it settles which image the lab uses

held = state.holdings()
current = lab.current_image()  # the lab's choice, made again if a release took it

with st.container(border=True):
    c1, c2, c3 = st.columns([1.2, 1.4, 1.4], gap="medium")
    kernel = c1.selectbox("Filter", list(engine.KERNELS), index=list(engine.KERNELS).index("gaussian"),
                          key="sc_kernel", persist_state="session")
    c1.caption(engine.KERNELS[kernel].description)
    side = c2.select_slider("Image size", sweep.SIDES, value=2048, format_func=sweep.side_label,
                            key="sc_side", persist_state="session")
    c2.caption(f"The lab's image ({md(current.name)}): its centre square resampled to {sweep.side_label(side)}.")
    impls = c3.multiselect("Implementations", list(engine.IMPLEMENTATIONS), default=["opencv"],
                           key="sc_impls", persist_state="session")
    if "python" in impls and side > sweep.PYTHON_MAX_SIDE:
        c3.warning(f"python runs only on images up to {sweep.PYTHON_MAX_SIDE}x{sweep.PYTHON_MAX_SIDE}: "
                   "pick a smaller size to include it. Left out of this sweep.", icon=":material/warning:")
        impls = [i for i in impls if i != "python"]
    else:
        c3.caption("python is the notebook's per-pixel loop: only for 256x256 and smaller.")
    c4, c5, c6, b1, b2 = st.columns([1.2, 0.9, 1.2, 0.65, 0.65], gap="medium", vertical_alignment="bottom")
    n_max = c4.slider("Processes 1..N", 1, PROCESS_MAX, PROCESS_MAX, key="sc_nmax", persist_state="session")
    repeats = c5.slider("Repeats", 1, 9, 3, key="sc_repeats", persist_state="session",
                        help="Each point is the median of this many runs.")
    if engine.dask_available():
        backends = c6.segmented_control(
            "Backends", list(sweep.BACKENDS), selection_mode="multi", default=[sweep.POOL],
            format_func=sweep.BACKENDS.get, key="sc_backends", persist_state="session",
            help="Dask LocalCluster: as many single-threaded Dask worker processes, running the same bands "
                 "through engine.filter_image(..., scheduler=client); timed by wall clock. See docs/scale-out.md.")
    else:
        backends = [sweep.POOL]
        c6.caption(f":material/info: For a Dask backend beside the process pool: `{cluster.INSTALL}`.")
    run = b1.button("Run sweep", type="primary", icon=":material/play_arrow:", key="sc_run", width="stretch",
                    disabled=not impls or not backends)
    sw = held.get(sweep.KEY)
    running = run or (sw is not None and sw.status == "running")  # this run may start one
    cancel = b2.button("Cancel", icon=":material/stop:", key="sc_cancel", width="stretch", disabled=not running)
    if n_max > CPUS:
        st.caption(f":material/info: Beyond {CPUS} processes they share this machine's {CPUS} CPUs.")

progress = st.empty()
backends = [b for b in sweep.BACKENDS if b in backends]  # pool first, whatever the click order
config = (kernel, side, tuple(impls), n_max, repeats, tuple(backends), current.key)
sw = held.get(sweep.KEY)
if cancel and sw is not None and sw.status == "running":
    sw.stop("cancelled", "cancelled: the runs measured so far are kept")
elif run:
    sw = sweep.start(config, kernel, images.center_square(current.array, side), impls, n_max, repeats, backends)
elif sw is not None and sw.status == "running" and sw.config != config:
    sw.stop("stopped", "stopped: a setting changed while it ran (the runs measured so far are kept)")

if sw is not None and sw.status == "running":
    sweep.advance(sw, progress)

if sw is None:
    st.info("Choose a filter, a size and the implementations, then press **Run sweep**.", icon=":material/speed:")
else:
    if sw.status == "done":
        st.success(f"Sweep finished: {sw.message}.", icon=":material/check_circle:")
    elif sw.status in ("cancelled", "stopped"):
        st.warning(f"Sweep {sw.message}.", icon=":material/cancel:")
    elif sw.status == "failed":
        st.error(f"Sweep failed: {sw.message}", icon=":material/error:")
    if sw.config != config and sw.runs:
        st.caption(":material/history: These results are from earlier settings.")
    serial_pending = sw.status != "running" and sw.runs and sweep.serial_seconds(sw) is None
    sweep.charts_row(sw)
    if serial_pending and sweep.measure_serial(sw) is not None:
        st.rerun()  # draw the reference line, now that the best serial code is measured
