"""Sections of the Filter lab page. Each reads its widgets and draws; the page calls them in order."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np
import pandas as pd
import streamlit as st

import engine

from . import charts, images, jobs, kernels, report
from .state import CPUS, PROCESS_MAX, WORKER_CAP, CurrentImage, get_engine, shared_image, shared_outputs

THEME_RGB = (11, 114, 133)  # .streamlit/config.toml primaryColor
IMAGE_SLOT = "lab_image"
JOB_SLOT = "lab_job"
RESULT_SLOT = "lab_result"
HISTORY_SLOT = "lab_history"


# -- 1. the image --------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_sample(name: str) -> tuple[np.ndarray, images.Facts]:
    data = (images.SAMPLES_DIR / name).read_bytes()
    a = engine.load_image(data)
    return a, images.facts_of(data, a)


@st.cache_data(show_spinner=False, max_entries=64)
def sample_thumbnail(name: str, chosen: bool, side: int = 80) -> bytes:
    """A square thumbnail; the chosen sample gets a frame in the theme's colour."""
    a, _ = load_sample(name)
    t = images.as_rgb(images.thumbnail(a, side)).copy()
    if chosen:
        t[:4], t[-4:], t[:, :4], t[:, -4:] = THEME_RGB, THEME_RGB, THEME_RGB, THEME_RGB
    return images.encode_png(t, compression=6)


def _pick_sample(name: str) -> None:
    st.session_state["lab_sample"] = name
    st.session_state["lab_source"] = "sample"


def gallery() -> None:
    """Thumbnails of the samples, each with a button; the chosen one is highlighted."""
    chosen = st.session_state.get("lab_sample", images.DEFAULT_SAMPLE)
    on_sample = st.session_state.get("lab_source", "sample") == "sample"
    with st.container(horizontal=True, gap="xsmall", wrap=True):
        for name in images.sample_names():
            selected = on_sample and name == chosen
            with st.container(width=80, gap="xsmall"):
                st.image(sample_thumbnail(name, selected), width=80, output_format="PNG")
                title = images.sample_title(name)
                st.button(
                    f"**{title}**" if selected else title,
                    key=f"sample_{name}",
                    on_click=_pick_sample,
                    args=(name,),
                    type="tertiary",
                    width="stretch",
                    help=f"Use {name}",
                )


def _read_upload() -> None:
    """Decode a new upload once; keep the last good one when a new one is bad."""
    up = st.session_state.get("lab_upload")
    if up is None:
        st.session_state.pop("lab_upload_error", None)
        return
    if st.session_state.get("lab_upload_seen") == up.file_id:
        return
    st.session_state["lab_upload_seen"] = up.file_id
    data = up.getvalue()
    try:
        a = engine.load_image(data)  # refuses more than engine.MAX_PIXELS, quoting it
    except (engine.ImageError, ValueError, TypeError) as e:
        st.session_state["lab_upload_error"] = f"{up.name}: {e}"
        return
    st.session_state.pop("lab_upload_error", None)
    st.session_state["lab_uploaded"] = {
        "name": up.name,
        "sha1": hashlib.sha1(data).hexdigest(),
        "array": a,
        "facts": images.facts_of(data, a),
    }
    st.session_state["lab_source"] = "upload"


def upload_box() -> None:
    st.file_uploader(
        "Or upload an image",
        type=images.UPLOAD_TYPES,
        key="lab_upload",
        help=f"PNG, JPEG, TIFF (16-bit too), BMP, GIF or WebP, up to {engine.MAX_PIXELS:,} pixels.",
    )
    _read_upload()
    if err := st.session_state.get("lab_upload_error"):
        st.error(f"This file cannot be used: {err}", icon=":material/broken_image:")
    kept = st.session_state.get("lab_uploaded")
    if kept and st.session_state.get("lab_source") == "sample":
        st.button(f"Use the uploaded {kept['name']} again", key="lab_use_upload",
                  on_click=lambda: st.session_state.update(lab_source="upload"), type="tertiary")


def current_image() -> CurrentImage:
    """The chosen sample or upload at the chosen size, resident in engine shared memory."""
    kept = st.session_state.get("lab_uploaded")
    if st.session_state.get("lab_source") == "upload" and kept:
        name, ident, original, facts = kept["name"], kept["sha1"], kept["array"], kept["facts"]
        source = "upload"
    else:
        name = st.session_state.get("lab_sample", images.DEFAULT_SAMPLE)
        if name not in images.sample_names():
            name = images.DEFAULT_SAMPLE
        original, facts = load_sample(name)
        source, ident = "sample", name
    preset = st.session_state.get("lab_size", "original")
    shape = images.preset_shape(original.shape[0], original.shape[1], images.PRESETS.get(preset))
    key = (source, ident, shape)
    return shared_image(IMAGE_SLOT, key, name, facts, lambda: images.resample(original, shape))


def size_picker() -> None:
    st.segmented_control(
        "Size for timing demos",
        list(images.PRESETS),
        default="original",
        key="lab_size",
        persist_state="session",
        required=True,
        help="Resamples the image to about 1, 4 or 16 megapixels (same aspect ratio), so that "
        "a small photo can still show a speedup.",
    )


def image_facts(img: CurrentImage) -> None:
    """The file as the notebook printed it, and what the lab works on."""
    h, w, c = img.shape
    rows = img.facts.rows()
    table = f"| :material/image: | **{img.name}** |\n|---|---|\n" + "\n".join(f"| {k} | **{v}** |" for k, v in rows)
    mb = img.array.nbytes / 2**20
    table += f"\n| in the lab | **{w} x {h} x {c}**, {img.megapixels:.2f} MP, {mb:.1f} MB in shared memory |"
    st.markdown(table)


def image_preview(img: CurrentImage) -> None:
    st.image(img.small, caption=images.display_note(img.array.dtype) or None, output_format="PNG")


# -- 2. the filters ------------------------------------------------------------------------------
def filter_column(slot: str, default: str, default_p: int) -> tuple[engine.Kernel | None, int, object]:
    """Picker, process count and an empty container for the kernel's pictures (drawn later, while
    the job runs)."""
    color = "blue" if slot == "A" else "orange"
    st.markdown(f"#### :{color}[Filter {slot}]")
    k = kernels.picker(slot, default)
    if k is not None:
        st.caption(f"{k.description} · {kernels.describe(k)}" if k.description else kernels.describe(k))
    p = st.slider(f"Processes for {slot}", 1, PROCESS_MAX, default_p, key=f"lab_p_{slot}", persist_state="session")
    if p > CPUS:
        st.caption(f":material/warning: {p} processes on {CPUS} CPUs: they will share cores, "
                   "so expect no further speedup.")
    return k, p, st.container()


def kernel_pictures(box, k: engine.Kernel | None) -> None:
    if k is None:
        return
    with box:
        c1, c2 = st.columns(2, gap="small")
        c1.vega_lite_chart(kernels.chart_spec("weights", k.name, k.weights), width="content")
        c2.vega_lite_chart(kernels.chart_spec("frequency", k.name, k.weights), width="content")
        st.caption(kernels.frequency_sentence(k))


def options_row() -> tuple[str, str, str, bool]:
    c1, c2, c3, c4 = st.columns([1, 1, 1, 0.8], vertical_alignment="top")
    border = c1.selectbox("Border", list(engine.BORDERS), key="lab_border", persist_state="session")
    c1.caption(engine.BORDERS[border])
    output = c2.selectbox("Output mapping", list(engine.OUTPUTS), key="lab_output", persist_state="session")
    c2.caption(engine.OUTPUTS[output])
    impl = c3.selectbox("Implementation", list(engine.IMPLEMENTATIONS), key="lab_impl", persist_state="session")
    c3.caption(engine.IMPLEMENTATIONS[impl])
    with c4:
        st.space("small")
        run = st.button("Run A and B", type="primary", icon=":material/play_arrow:", key="lab_run", width="stretch")
    return border, output, impl, run


# -- 3. running ---------------------------------------------------------------------------------
@dataclass(eq=False)
class LabResult:
    """A finished pair, with everything the page shows about it."""

    settings: Hashable
    run_id: int
    image: CurrentImage
    kernels: tuple[engine.Kernel, engine.Kernel]
    processes: tuple[int, int]
    border: str
    output: str
    implementation: str
    result: engine.PairResult
    display: tuple[np.ndarray, np.ndarray]
    png: tuple[bytes, bytes]
    timeline: pd.DataFrame
    gantt: dict  # Vega-Lite spec of the band timeline, built once

    @property
    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.result.outputs


def settings_of(img: CurrentImage, ka, kb, pa, pb, border, output, impl) -> Hashable:
    fa = kernels.fingerprint(ka) if ka is not None else None
    fb = kernels.fingerprint(kb) if kb is not None else None
    return (img.key, fa, fb, pa, pb, border, output, impl)


def submit(img: CurrentImage, ka, kb, pa, pb, border, output, impl, settings) -> jobs.Pending | None:
    """Start the pair on the engine; shows the engine's validation message on a bad setting."""
    try:
        outs = shared_outputs(img.array, 2)
        request = engine.FilterRequest([ka, kb], border=border, output=output, implementation=impl)
        job = get_engine().submit(img.array, request, processes=(pa, pb), out=outs)
    except (ValueError, TypeError, RuntimeError) as e:  # validation, or a closed engine
        st.error(str(e), icon=":material/error:")
        return None
    run_id = st.session_state.get("lab_runs", 0) + 1
    st.session_state["lab_runs"] = run_id
    meta = {"image": img, "kernels": (ka, kb), "processes": (pa, pb), "border": border, "output": output,
            "implementation": impl, "run_id": run_id}
    pending = jobs.Pending(job, settings, meta)
    st.session_state[JOB_SLOT] = pending
    return pending


def finish(pending: jobs.Pending, bar) -> LabResult | None:
    """Wait for the job with a progress bar; turn its result into a ``LabResult``."""
    m = pending.meta
    what = f"{m['kernels'][0].name} and {m['kernels'][1].name}"
    try:
        res = jobs.wait(pending, bar, what, WORKER_CAP)
    except engine.JobCancelled:
        st.session_state[JOB_SLOT] = None
        return None
    except engine.WorkerError as e:
        st.session_state[JOB_SLOT] = None
        st.error(f"{e}", icon=":material/error:")
        return None
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: the engine was closed meanwhile
        st.session_state[JOB_SLOT] = None
        st.error(str(e), icon=":material/error:")
        return None
    st.session_state[JOB_SLOT] = None
    names = tuple(k.name for k in m["kernels"])
    display = tuple(images.to_display(o) for o in res.outputs)
    out = LabResult(
        settings=pending.settings,
        run_id=m["run_id"],
        image=m["image"],
        kernels=m["kernels"],
        processes=m["processes"],
        border=m["border"],
        output=m["output"],
        implementation=m["implementation"],
        result=res,
        display=display,
        png=tuple(images.encode_png(d) for d in display),
        timeline=(timeline := charts.timeline_frame(res, names)),
        gantt=charts.gantt_chart(timeline).to_dict(),
    )
    st.session_state[RESULT_SLOT] = out
    history = st.session_state.setdefault(HISTORY_SLOT, [])
    for i, k in enumerate(out.kernels):
        history.append({"key": history_key(out, i), "processes": out.processes[i],
                        "ms": res.filter_walls[i] * 1e3, "kernel": k.name})
    return out


def history_key(r: LabResult, i: int) -> tuple:
    return (r.image.key, kernels.fingerprint(r.kernels[i]), r.border, r.output, r.implementation)


# -- 4. results ---------------------------------------------------------------------------------
def result_caption(r: LabResult, i: int) -> str:
    slot = "AB"[i]
    p = r.processes[i]
    wall = r.result.filter_walls[i] * 1e3
    return f"{slot} · {r.kernels[i].name} · {p} process{'es' if p > 1 else ''} · {wall:.1f} ms (run #{r.run_id})"


def original_caption(r: LabResult) -> str:
    h, w, c = r.image.shape
    return f"Original · {r.image.name} · {w}x{h}, {c} channel{'s' if c > 1 else ''}"


def results_titles(r: LabResult) -> list[str]:
    """The results row's captions, for the report figure."""
    return [original_caption(r)] + [result_caption(r, i) for i in range(2)]


def results_row(r: LabResult, stale: bool) -> None:
    note = images.display_note(r.image.array.dtype)
    if stale:
        st.info("These results are from earlier settings: press **Run A and B** to update them.",
                icon=":material/history:")
    cols = st.columns(3, gap="small")
    cols[0].image(r.image.preview, caption=original_caption(r), width="stretch", output_format="PNG")
    for i in range(2):
        cols[i + 1].image(r.png[i], caption=result_caption(r, i), width="stretch", output_format="PNG")
    if note:
        st.caption(f":material/info: {note}.")


@st.fragment
def compare_view(r: LabResult) -> None:
    """Before/after with a movable split, or a difference heat map; reruns only this fragment."""
    views = ["Before / after", "Difference"]
    left_col, right_col = st.columns([3, 2], gap="medium")
    with right_col:
        view = st.segmented_control("View", views, default=views[0], key="lab_view", persist_state="session",
                                    required=True)
        names = {"Original": None, "A": 0, "B": 1}
        label = {"Original": "original", "A": f"A ({r.kernels[0].name})", "B": f"B ({r.kernels[1].name})"}
        if view == "Before / after":
            a = st.selectbox("Left of the split", list(names), index=0, key="lab_ba_left", persist_state="session")
            b = st.selectbox("Right of the split", list(names), index=1, key="lab_ba_right", persist_state="session")
            split = st.slider("Split", 0, 100, 50, format="%d%%", key="lab_ba_split", persist_state="session")
            pic = images.before_after(_disp(r, names[a]), _disp(r, names[b]), split / 100)
            caption = f"{label[a]} left of the line, {label[b]} right of it"
            st.caption("Move the split to wipe between the two images.")
        else:
            pair = st.selectbox("Compare", ["A vs original", "B vs original", "A vs B"], key="lab_diff",
                                persist_state="session")
            x, y = {"A vs original": (0, None), "B vs original": (1, None), "A vs B": (0, 1)}[pair]
            pic, stats = images.difference(_full(r, x), _full(r, y))
            caption = f"|{pair.replace(' vs ', ' − ')}|, largest over colour channels"
            if stats.max == 0:
                st.success("Identical: every pixel is the same.", icon=":material/check_circle:")
            else:
                st.markdown(
                    f"- largest difference **{stats.max}** of {stats.levels} gray levels\n"
                    f"- mean difference **{stats.mean:.2f}**\n"
                    f"- **{stats.changed:.1%}** of pixels differ"
                )
            st.caption("Black means equal; the brightest colour is the largest difference (stretched).")
    with left_col:
        st.image(images.encode_png(pic), caption=caption, width="stretch", output_format="PNG")


def _disp(r: LabResult, i: int | None) -> np.ndarray:
    return r.image.display if i is None else r.display[i]


def _full(r: LabResult, i: int | None) -> np.ndarray:
    return r.image.array if i is None else r.outputs[i]


def timing(r: LabResult) -> None:
    ph = r.result.phases
    walls = r.result.filter_walls
    metrics = [
        ("A: wall", walls[0] * 1e3, 1, "First band start to last band end of filter A."),
        ("B: wall", walls[1] * 1e3, 1, "First band start to last band end of filter B."),
        ("Pair: wall", ph.wall * 1e3, 1, "The whole job, both filters at the same time."),
        ("Copy in", ph.copy_in * 1e3, 2, "Copying the image into shared memory. About zero: it already lives there."),
        ("Compute", ph.compute * 1e3, 1, "From the first band sent to the last band done."),
        ("Copy out", ph.copy_out * 1e3, 2,
         "Copying results out of shared memory. About zero: the workers wrote into the page's arrays."),
    ]
    with st.container(horizontal=True, wrap=True, gap="medium"):  # six in a row, or two on a phone
        for label, ms, digits, why in metrics:
            st.metric(label, f"{ms:.{digits}f} ms", help=why, width=150)
    st.vega_lite_chart(copy.deepcopy(r.gantt), width="stretch")  # Streamlit takes the spec apart
    st.caption(gantt_sentence(r))


def gantt_sentence(r: LabResult) -> str:
    parts = []
    for i, slot in enumerate("AB"):
        t = r.timeline[r.timeline["filter"] == slot]
        parts.append(
            f"{slot} ({r.kernels[i].name}) cut {r.image.shape[0]} rows into {_n(len(t), 'band')} on "
            f"{_n(t['pid'].nunique(), 'process', 'processes')} and took "
            f"{r.result.filter_walls[i] * 1e3:.1f} ms"
        )
    total = sum(r.processes)
    share = (f" {total} processes on {CPUS} CPUs: A and B shared the cores, so bars may stretch."
             if total > CPUS else "")
    return "; ".join(parts) + ". Each bar is one band; a process runs one band at a time." + share


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def speedup_lines(r: LabResult) -> None:
    history = st.session_state.get(HISTORY_SLOT, [])
    shown = 0
    cols = st.columns(2, gap="medium")
    for i, slot in enumerate("AB"):
        df = charts.history_speedup_frame(history, history_key(r, i))
        if df.empty:
            continue
        with cols[shown]:
            st.markdown(f"**Speedup of {r.kernels[i].name} on this image** (best run per process count)")
            st.altair_chart(charts.speedup_line_chart(df, charts.FILTER_COLORS[slot], CPUS), width="stretch",
                            key=f"lab_speedup_{slot}")
            best = df.iloc[df["speedup"].idxmax()]
            st.caption(f"Fastest: {int(best['processes'])} processes, {best['speedup']:.2f}x against "
                       f"{int(df['processes'].iloc[0])}. The two filters ran at the same time, so each "
                       "time includes sharing the CPUs with the other.")
        shown += 1
    if not shown:
        st.caption(":material/trending_up: Run the same image and filter again with other process counts: "
                   "a speedup line appears here.")


def engine_status() -> None:
    """One line about the shared engine, for demos with several tabs open."""
    eng = get_engine()
    idle = getattr(eng, "workers", None)
    warm = f"{len(idle())} idle worker processes, " if idle is not None else ""
    st.caption(f":material/memory: Engine: {warm}at most {eng.max_workers} for all sessions together "
               f"(each filter up to {PROCESS_MAX}), on {CPUS} CPUs. Jobs that need more wait their turn.")


def downloads(r: LabResult) -> None:
    stem = Path(r.image.name).stem
    sixteen = r.image.array.dtype == np.uint16
    cols = st.columns(3, gap="small")
    for i, slot in enumerate("AB"):
        out = r.outputs[i]
        k = r.kernels[i].name
        cols[i].download_button(
            f"{slot} as {'16-bit ' if sixteen else ''}PNG",
            data=lambda out=out: engine.save_image(out),
            file_name=f"{stem}_{slot}_{k}_{r.processes[i]}p.png",
            mime="image/png",
            icon=":material/download:",
            on_click="ignore",
            key=f"lab_dl_{slot}",
            width="stretch",
        )
    cols[2].download_button(
        "Timeline as CSV",
        data=r.timeline.to_csv(index=False),
        file_name=f"{stem}_timeline_run{r.run_id}.csv",
        mime="text/csv",
        icon=":material/table_view:",
        on_click="ignore",
        key="lab_dl_csv",
        width="stretch",
    )
    report.downloads("lab_fig_format", [
        report.ReportFigure("lab_fig_results", "Results row", f"{stem}_results_run{r.run_id}",
                            lambda: engine.plot.results(r.image.array, r.result, titles=results_titles(r))),
        report.ReportFigure("lab_fig_timing", "Timing chart", f"{stem}_timing_run{r.run_id}",
                            lambda: engine.plot.timeline(r.result)),
    ])
