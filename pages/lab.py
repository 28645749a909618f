"""Filter lab: one image, two filters at the same time, each on its own worker processes."""

import streamlit as st

from pages._ui import jobs, lab, page_guard, state
from pages._ui.state import CPUS

page_guard()
st.title("Filter lab")
st.caption(
    "Pick an image and two filters, give each some worker processes, and run them side by side. "
    "The engine cuts the image into row bands and filters them in parallel."
)
lab.release_note()  # first: it settles which image the lab uses

# 1. the image: a sample or an upload, at a size for timing demos
st.subheader("1 · Image", divider="gray")
lab.gallery()
upload_col, facts_col, preview_col = st.columns([4, 5, 3], gap="medium")
with upload_col:
    lab.upload_box()
    lab.size_picker()
img = lab.current_image()
with facts_col:
    lab.image_facts(img)
with preview_col:
    lab.image_preview(img)

# 2. the filters and how they run
st.subheader("2 · Filters", divider="gray")
col_a, col_b = st.columns(2, gap="large")
with col_a, st.container(border=True):
    ka, pa, pictures_a = lab.filter_column("A", "sobel", 1)
with col_b, st.container(border=True):
    kb, pb, pictures_b = lab.filter_column("B", "gaussian", 1)
if pa + pb > CPUS:
    st.caption(f":material/info: A and B run at the same time: {pa + pb} processes on {CPUS} CPUs share cores.")
border, output, impl, clicked, estimate_box = lab.options_row()
run = lab.run_of(ka, kb, pa, pb, border, output, impl)  # None while a custom kernel is not valid
est = lab.estimate_of(img, run)
lab.estimate_note(estimate_box, est, img, run)
progress = st.empty()

# 3. run: a second click or any change cancels the stale job instead of queueing another
held = state.holdings()
settings = lab.settings_of(img, run)
if reason := jobs.cancel_if_stale(held, lab.JOB, settings, clicked):
    st.toast(f"The previous run was {reason}.", icon=":material/cancel:")
pending = held.get(lab.JOB)
if clicked:
    if run is None:
        st.error("Fix the custom kernel above first.", icon=":material/error:")
    else:
        pending = lab.submit(img, run, settings, est)
        if pending is not None:
            jobs.settle(pending)  # off the GIL while the job thread starts A and B
if run is not None:
    st.session_state["lab_snapshot"] = run  # what the How it works page explains
# the kernels' pictures: while a job runs, or after the results when it is done already (a small
# job is done by the end of settle: its results then reach the screen ~20-30 ms sooner)
pictures_later = pending is not None and pending.job.done()
if not pictures_later:
    lab.kernel_pictures(pictures_a, ka)
    lab.kernel_pictures(pictures_b, kb)
if pending is not None:
    lab.finish(pending, progress)

# 4. results and what they cost
st.subheader("3 · Results", divider="gray")
result = held.get(lab.RESULT)
references = {}
if result is None:
    st.info("Pick an image and two filters, then press **Run A and B**.", icon=":material/play_arrow:")
else:
    lab.results_row(result, stale=result.settings != settings)
if pictures_later:
    lab.kernel_pictures(pictures_a, ka)
    lab.kernel_pictures(pictures_b, kb)
if result is not None:
    lab.compare_view()
    st.subheader("4 · Timing", divider="gray")
    references = lab.timing(result)
    lab.speedup_lines(result)
    st.subheader("5 · Downloads", divider="gray")
    lab.downloads(result)
lab.engine_status()
if result is not None:
    lab.measure_references(result, references)  # last: the results are on screen already
