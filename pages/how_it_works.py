"""How it works: the band plan for the lab's image and filters, the data flow, the notebook's filters."""

import streamlit as st
from streamlit.errors import StreamlitAPIException

import engine
from pages._ui import charts, explain, images, lab, page_guard, state
from pages._ui.fmt import md, nbytes
from pages._ui.state import PROCESS_MAX, get_engine

page_guard()
st.title("How it works")
st.caption(
    "The engine cuts the image into row bands. Each band goes to a worker process, which reads its rows "
    "plus a few halo rows above and below (the kernel reaches past the band) from one shared input, and "
    "writes its rows straight into a shared output."
)
lab.release_note()  # first: it settles which image the lab uses

# What to explain: the lab's current image and filters (defaults if the lab was never opened)
img = lab.current_image()
snap = st.session_state.get("lab_snapshot") or lab.run_of(engine.KERNELS["sobel"], engine.KERNELS["gaussian"], 1, 1,
                                                          "replicate", "clip", "opencv")
(ka, kb), (lab_pa, lab_pb), border = snap.kernels, snap.processes, snap.border
h, w, c = img.shape
info_col, pa_col, pb_col = st.columns([3, 1, 1], gap="medium", vertical_alignment="center")
info_col.info(
    f"The lab's image **{md(img.name)}** ({w}x{h}, {c} channel{'s' if c > 1 else ''}), filter A **{ka.name}**, "
    f"filter B **{kb.name}**, border **{border}**.",
    icon=":material/info:",
)
# the lab's process counts, which can be changed here to explore plans
pa = pa_col.slider("Processes for A", 1, PROCESS_MAX, lab_pa, key=f"how_pa_{lab_pa}")
pb = pb_col.slider("Processes for B", 1, PROCESS_MAX, lab_pb, key=f"how_pb_{lab_pb}")
try:
    st.page_link("pages/lab.py", label="Change the image and filters in the Filter lab", icon=":material/tune:")
except StreamlitAPIException:  # the page runs on its own (no navigation): nothing to link to
    st.caption("Change the image and filters in the Filter lab.")

# 1. the band plan, on the image and as shared segments
st.subheader("1 · The band plan", divider="gray")
eng = get_engine()
plans = {"A": explain.plan(eng, h, w, ka, pa, border), "B": explain.plan(eng, h, w, kb, pb, border)}
result = state.holdings().get(lab.RESULT)
same = result is not None and result.image.key == img.key and result.processes == (pa, pb) \
    and result.kernels == (ka, kb) and result.border == border
workers = {s: explain.workers_from_timeline(result.timeline, s) for s in "AB"} if same else {}
colors = explain.worker_colors(workers)
cols = st.columns(2, gap="large")
for col, letter, k, p in ((cols[0], "A", ka, pa), (cols[1], "B", kb, pb)):
    bands = plans[letter]
    with col:
        st.markdown(f"**Filter {letter}: {k.name}** ({k.shape[0]}x{k.shape[1]}) on {p} process{'es' if p > 1 else ''}: "
                    f"{len(bands)} band{'s' if len(bands) > 1 else ''}")
        pic = images.picture(explain.bands_on_image(img.array, bands, workers.get(letter, {}), colors))
        st.image(pic.data, width="stretch", output_format=pic.format)
        st.caption(
            f"Tint = the worker that ran the band (grey stripes before a run); red = halo rows: a "
            f"{k.shape[0]}-row kernel reads {k.shape[0] // 2} row(s) above and "
            f"{k.shape[0] - 1 - k.shape[0] // 2} below each output row"
            + (" (wrap: above the first band it reads the image's last rows, below the last band its first). "
               if border == "wrap" else ". ")
            + ("Workers are the ones the last run used." if same else
               "Which worker takes which band is decided at run time (the first free one); run the lab to see it.")
        )
if len(plans["A"]) <= pa and len(plans["B"]) <= pb:
    st.caption(f":material/lightbulb: This image has {h * w:,} pixels: the engine gives a small image one band per "
               "process (smaller bands are not worth a trip to a worker). Pick the 4 MP size in the lab to see two "
               "bands per process that idle workers take in turn.")
segments = {"input": f"{h}x{w}x{c} {img.array.dtype}, {nbytes(img.array.nbytes)}"}
df = charts.band_plan_frame(plans, {s: {b: f"worker {v}" for b, v in m.items()} for s, m in workers.items()})
chart_colors = {f"worker {name}": explain.hex_color(rgb) for name, rgb in colors.items()}
st.markdown("**The same plan as shared-memory segments.** One input segment holds the image and both filters "
            "read it; each filter writes into its own output segment. Grey bars are the rows a band writes, "
            "red its halo rows; the output lanes are coloured by worker.")
st.altair_chart(charts.band_plan_chart(df, h, segments, chart_colors), width="stretch")
with st.expander("The plan as a table", icon=":material/table:"):
    st.dataframe(df.drop(columns=["start", "stop"]), hide_index=True, width="stretch")

# 2. the data flow
st.subheader("2 · From upload to result", divider="gray")
numbers = explain.FlowNumbers(
    name=img.name, file_format=img.facts.format, file_bytes=img.facts.nbytes, shape=img.shape,
    dtype=str(img.array.dtype), array_bytes=img.array.nbytes, kernels=(ka.name, kb.name), processes=(pa, pb),
    bands=(len(plans["A"]), len(plans["B"])), implementation=snap.implementation,
)
flow_col, text_col = st.columns([2, 3], gap="large")  # on a phone: one above the other
flow_col.graphviz_chart(explain.data_flow_dot(numbers), width="content")  # its natural size: ~320 px
text_col.markdown(
    "Read it from the top. The file is decoded once and its pixels are **copied once** into a shared-memory "
    "segment that the server process creates. A run hands each worker process the names of the segments and "
    "the rows of its band (plus the halo rows above and below, dashed): **nothing is pickled**. Each worker "
    "writes its rows straight into the output segment of its filter, so a run copies nothing in or out and its "
    "time is the filtering itself."
)
text_col.caption(
    "Blue boxes are shared memory created by the server process, which also unlinks them: the image when the "
    "tab closes or sits idle, each output when its result is dropped (it joins the engine's pool of scratch "
    "segments for the next run)."
)

# 3. the notebook's five filters on this image
st.subheader("3 · The notebook's five filters on this image", divider="gray")
mapping = st.segmented_control("Output mapping", list(engine.OUTPUTS), default="abs", key="how_output",
                               persist_state="session", required=True)
st.caption(engine.OUTPUTS[mapping] + ". Computed by the engine on the centre of the image, at most 256x256.")
small, gallery = explain.notebook_gallery(eng, img.array, border, mapping)
cols = st.columns(len(gallery), gap="small")
for col, (name, out, stats) in zip(cols, gallery):
    with col:
        st.image(images.encode_png(images.to_display(out)), caption=name, width="stretch", output_format="PNG")
        st.caption(explain.NOTEBOOK_NOTES[name])
        changed = "identical to the original" if stats.max == 0 else \
            f"{stats.changed:.0%} of pixels changed, by {stats.mean:.1f} levels on average"
        st.caption(f"**Here:** {changed}.")
