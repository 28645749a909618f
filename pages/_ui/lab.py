"""Sections of the Filter lab page. Each reads its widgets and draws; the page calls them in order."""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable

import numpy as np
import pandas as pd
import streamlit as st

import engine

from . import charts, estimate, images, jobs, kernels, report, state
from .fmt import duration, md, mpl, ms, nbytes, sig
from .holdings import weakly
from .state import CPUS, PROCESS_MAX, WORKER_CAP, CurrentImage, get_engine, holdings, shared_image

THEME_RGB = (11, 114, 133)  # .streamlit/config.toml primaryColor
#: Keys of the session's holdings (``state.holdings()``): its heavy objects.
IMAGE, UPLOAD, JOB, RESULT = "image", "upload", "job", "result"
#: Small things stay in st.session_state.
HISTORY_KEY = "lab_history"
AUTORUN = "lab_autorun"  # set by the "show it with ..." buttons: run once with the new mapping
#: Pixels per timing metric: "0.0423 ms" in the metric's font needs ~165 (150 cut it to "0.0423 …").
METRIC_WIDTH = 172


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


def sample_choice() -> str:
    """The gallery's chosen sample (the default when none was chosen, or it is gone)."""
    name = st.session_state.get("lab_sample", images.DEFAULT_SAMPLE)
    return name if name in images.sample_names() else images.DEFAULT_SAMPLE


def gallery() -> None:
    """Thumbnails of the samples, each with a button; the chosen one is highlighted while the lab
    uses it (not while it uses an upload)."""
    chosen = sample_choice()
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


@dataclass(eq=False)
class Upload:
    """The last good upload, decoded (its array is plain memory until it becomes the image)."""

    name: str
    file_id: str
    sha1: str
    array: np.ndarray
    facts: images.Facts

    def held_bytes(self) -> int:
        return self.array.nbytes


def _read_upload() -> None:
    """Decode a new upload once; keep the last good one when a new one is bad.

    Every run calls it (cheap) to decode the file anew if the session's holdings were released
    meanwhile. No file here is not a removal: Streamlit also forgets the uploader's value when the
    person goes to another page and back, and the lab then keeps its upload; only the uploader's
    ``on_change`` (``_upload_changed``) sees the person remove the file."""
    up = st.session_state.get("lab_upload")
    if up is None:
        st.session_state.pop("lab_upload_error", None)
        return
    h = holdings()
    kept = h.get(UPLOAD)
    if (kept is not None and kept.file_id == up.file_id) or st.session_state.get("lab_upload_bad") == up.file_id:
        return
    new = st.session_state.get("lab_upload_id") != up.file_id
    data = up.getvalue()
    try:
        a = engine.load_image(data)  # refuses more than engine.MAX_PIXELS, quoting it
    except (engine.ImageError, ValueError, TypeError) as e:
        st.session_state["lab_upload_error"] = f"{md(up.name)}: {e}"
        st.session_state["lab_upload_bad"] = up.file_id
        return
    st.session_state.pop("lab_upload_error", None)
    h[UPLOAD] = Upload(up.name, up.file_id, hashlib.sha1(data).hexdigest(), a, images.facts_of(data, a))
    st.session_state["lab_upload_id"] = up.file_id
    st.session_state["lab_upload_name"] = up.name  # to say which upload a release took
    if new:  # a new file replaces the sample; the same file decoded again (after a release) does not
        st.session_state["lab_source"] = "upload"


def _upload_changed() -> None:
    """The uploader's ``on_change``: the person added or removed a file (it runs before the page
    script, so the gallery drawn above the uploader already shows the outcome). A removed file
    hands the lab back to the gallery's sample; the decoded upload is kept, for "Use the uploaded
    ... again"."""
    if st.session_state.get("lab_upload") is None:
        st.session_state.pop("lab_upload_error", None)
        st.session_state["lab_source"] = "sample"
        return
    _read_upload()


def _settle_source() -> str | None:
    """Make ``lab_source`` name an image the lab has, before anything reads it.

    A release (``holdings``) drops the decoded upload: it is decoded again if the uploader still
    holds the file; if not (the person went to another page meanwhile), the lab goes back to the
    gallery's sample. Returns the name of the upload lost that way, else None."""
    if st.session_state.get("lab_source") != "upload" or holdings().get(UPLOAD) is not None:
        return None
    _read_upload()
    if holdings().get(UPLOAD) is not None:
        return None
    st.session_state["lab_source"] = "sample"
    return st.session_state.get("lab_upload_name", "file")


def release_note() -> None:
    """Every page's ``state.release_note``, with the lab's image settled first: when the release
    took an upload that cannot come back, it says so and which sample the lab uses instead."""
    lost = _settle_source()
    state.release_note(None if lost is None else
                       f"Your upload **{md(lost)}** went with them and the uploader no longer holds it, so the "
                       f"lab is back on the sample **{md(sample_choice())}** (upload the file again to use it)")


def upload_box() -> None:
    st.file_uploader(
        "Or upload an image",
        type=images.UPLOAD_TYPES,
        key="lab_upload",
        on_change=_upload_changed,
        help=f"PNG, JPEG, TIFF (16-bit too), BMP, GIF or WebP, up to {engine.MAX_PIXELS:,} pixels.",
    )
    _read_upload()
    if err := st.session_state.get("lab_upload_error"):
        st.error(f"This file cannot be used: {err}", icon=":material/broken_image:")
    kept = holdings().get(UPLOAD)
    if kept and st.session_state.get("lab_source") == "sample":
        st.button(f"Use the uploaded {md(kept.name)} again", key="lab_use_upload",
                  on_click=lambda: st.session_state.update(lab_source="upload"), type="tertiary")


def current_image() -> CurrentImage:
    """The chosen sample or upload at the chosen size, resident in engine shared memory: the
    image every page works on (the lab's, Scaling's source, How it works')."""
    kept = holdings().get(UPLOAD)
    if st.session_state.get("lab_source") == "upload" and kept:
        name, ident, original, facts = kept.name, kept.sha1, kept.array, kept.facts
        source = "upload"
    else:
        name = sample_choice()
        original, facts = load_sample(name)
        source, ident = "sample", name
    preset = st.session_state.get("lab_size", "original")
    shape = images.preset_shape(original.shape[0], original.shape[1], images.PRESETS.get(preset))
    key = (source, ident, shape)
    return shared_image(key, name, facts, lambda: images.resample(original, shape))


def size_picker() -> None:
    st.segmented_control(
        "Size for timing demos",
        list(images.PRESETS),
        default="original",
        key="lab_size",
        persist_state="session",
        required=True,
        help="Resamples the image to about 1, 4 or 16 megapixels (same aspect ratio), so that "
        "a small photo can still show a speedup. The presets count 2^20 pixels a step: 1.05, 4.19 and "
        "16.8 million pixels (MP).",
    )


def image_facts(img: CurrentImage) -> None:
    """The file as the notebook printed it, and what the lab works on."""
    h, w, c = img.shape
    rows = img.facts.rows()
    table = f"| :material/image: | **{md(img.name)}** |\n|---|---|\n"
    table += "\n".join(f"| {k} | **{v}** |" for k, v in rows)
    table += (f"\n| in the lab | **{w} x {h} x {c}**, {img.megapixels:.2f} MP, {nbytes(img.array.nbytes)} "
              "in shared memory |")
    st.markdown(table)


def image_preview(img: CurrentImage) -> None:
    notes = [n for n in (images.display_note(img.array.dtype), images.scale_note(img.shape, img.screen.factor)) if n]
    st.image(img.small.data, caption="; ".join(notes) or None, output_format=img.small.format)


# -- 2. the filters ------------------------------------------------------------------------------
def filter_column(letter: str, default: str, default_p: int) -> tuple[engine.Kernel | None, int, object]:
    """Picker, process count and an empty container for the kernel's pictures (drawn later, while
    the job runs)."""
    color = "blue" if letter == "A" else "orange"
    st.markdown(f"#### :{color}[Filter {letter}]")
    k = kernels.picker(letter, default, check=check_kernel)
    if k is not None:
        st.caption(f"{k.description} · {kernels.describe(k)}" if k.description else kernels.describe(k))
    p = st.slider(f"Processes for {letter}", 1, PROCESS_MAX, default_p, key=f"lab_p_{letter}", persist_state="session")
    if p > CPUS:
        st.caption(f":material/warning: {p} processes on {CPUS} CPUs: they will share cores, "
                   "so expect no further speedup.")
    return k, p, st.container()


def check_kernel(k: engine.Kernel) -> None:
    """Raise the engine's own ``ValueError`` for a kernel it would refuse (``Engine.plan``
    validates it as ``submit`` does), so that the page says so before Run."""
    get_engine().plan((1, 1), k, 1)


def kernel_pictures(box, k: engine.Kernel | None) -> None:
    if k is None:
        return
    with box:
        c1, c2 = st.columns(2, gap="small")
        c1.vega_lite_chart(kernels.chart_spec("weights", k.name, k.weights), width="content")
        c2.vega_lite_chart(kernels.chart_spec("frequency", k.name, k.weights), width="content")
        st.caption(kernels.frequency_sentence(k))


def options_row() -> tuple[str, str, str, bool, object]:
    """Border, output mapping, implementation, whether to run, and a placeholder under the Run
    button for ``estimate_note``."""
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
        note = st.empty()
    run = run or bool(st.session_state.pop(AUTORUN, False))
    return border, output, impl, run, note


# -- 3. running ---------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def throughput() -> estimate.Throughput:
    """Cost per unit of work, learned from every session's runs (``estimate``)."""
    return estimate.Throughput()


def refusal(img: CurrentImage, run: Run | None) -> str | None:
    """The engine's reason to refuse this run on this image before it starts (python takes only
    small images: ``FilterRequest.check_image``), or None."""
    if run is None:
        return None
    try:
        run.request.check_image(img.array)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def estimate_of(img: CurrentImage, run: Run | None) -> estimate.Estimate | None:
    """The run's expected time; None when it cannot run (no time to promise)."""
    if run is None or refusal(img, run) is not None:
        return None
    eng = get_engine()
    try:
        bands = [len(eng.plan(img.shape, k, p, border=run.border)) for k, p in zip(run.kernels, run.processes)]
    except (ValueError, TypeError):
        return None
    return throughput().estimate(img.shape, img.array.dtype, run.kernels, run.processes, bands, run.output,
                                 run.implementation, CPUS)


def estimate_note(box, est: estimate.Estimate | None, img: CurrentImage, run: Run | None) -> None:
    """Into ``box``, under the Run button: the expected time; above ``WARN_SECONDS`` a warning
    before the run, with what makes it long and what would be fast. A run the engine will refuse
    gets its reason instead of a time."""
    if (why := refusal(img, run)) is not None:
        box.warning(f"Run will be refused: {why}.", icon=":material/block:")
        return
    if est is None or run is None:
        return
    if not est.long:
        box.caption(f":material/timer: about {duration(est.pair)}")
        return
    (ka, kb), impl = run.kernels, run.implementation
    fast = ""
    if impl != "opencv":
        ref = throughput().estimate(img.shape, img.array.dtype, (ka, kb), (1, 1), (1, 1), "clip", "opencv", CPUS)
        fast = f" The opencv implementation does the same in about {duration(ref.pair)}."
    box.warning(f"This run will take about **{duration(est.pair)}** ({impl} on {img.megapixels:.1f} MP with "
                f"{ka.name} and {kb.name}).{fast} Changing any setting or clicking Run again stops it.",
                icon=":material/hourglass_top:")


@dataclass(frozen=True)
class Run:
    """One run of the lab as its widgets set it: what to compute, validated once by the engine
    (an ``engine.FilterRequest``: the two kernels and their options), and each filter's process
    count. Hashable: with the image's key it is what a stale job is recognised by, and the How it
    works page explains the last one."""

    request: engine.FilterRequest
    processes: tuple[int, int]

    @property
    def kernels(self) -> tuple[engine.Kernel, engine.Kernel]:
        return self.request.kernels

    @property
    def border(self) -> str:
        return self.request.border

    @property
    def output(self) -> str:
        return self.request.output

    @property
    def implementation(self) -> str:
        return self.request.implementation


def run_of(ka, kb, pa: int, pb: int, border: str, output: str, impl: str) -> Run | None:
    """The widgets' settings as a ``Run``; None while a custom kernel is not valid.

    The pickers check custom kernels first; should a setting still fail the request's validation,
    the page shows its message instead of a traceback."""
    if ka is None or kb is None:
        return None
    try:
        request = engine.FilterRequest([ka, kb], border=border, output=output, implementation=impl)
    except (ValueError, TypeError) as e:
        st.error(f"These settings cannot run: {e}", icon=":material/error:")
        return None
    return Run(request, (pa, pb))


@dataclass(eq=False)
class LabResult:
    """A finished pair, with everything the page shows about it."""

    settings: Hashable
    run_id: int
    image: CurrentImage
    run: Run
    result: engine.JobResult
    screens: tuple[images.Screen, images.Screen]  # display versions and previews, made once
    spans: tuple[tuple[int, int], tuple[int, int]]  # lowest and highest value of each output
    timeline: pd.DataFrame
    _gantt: dict | None = None
    _memo: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    MEMO_ENTRIES = 8

    @property
    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.result.outputs

    @property
    def gantt(self) -> dict:
        """Vega-Lite spec of the band timeline, built once (after the pictures are on screen)."""
        if self._gantt is None:
            self._gantt = charts.gantt_chart(self.timeline).to_dict()
        return self._gantt

    def memo(self, key: Hashable, make):
        """``make()`` once per ``key`` (the last few kept): pictures that did not change are not
        composed and encoded again on every rerun."""
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        value = make()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > self.MEMO_ENTRIES:
                self._memo.popitem(last=False)
        return value

    def held_bytes(self) -> int:
        return sum(o.nbytes for o in self.outputs) + sum(s.held_bytes() for s in self.screens)

    @property
    def kernels(self) -> tuple[engine.Kernel, engine.Kernel]:
        return self.run.kernels

    @property
    def processes(self) -> tuple[int, int]:
        return self.run.processes

    @property
    def border(self) -> str:
        return self.run.border

    @property
    def output(self) -> str:
        return self.run.output

    @property
    def implementation(self) -> str:
        return self.run.implementation


def settings_of(img: CurrentImage, run: Run | None) -> Hashable:
    return (img.key, run)


def submit(img: CurrentImage, run: Run, settings, est: estimate.Estimate | None = None) -> jobs.Pending | None:
    """Start the pair on the engine; shows the engine's message if it refuses.

    No ``out=``: each result is the engine's own output segment (pooled again when dropped), so
    the workers write into pages they have already mapped."""
    try:
        job = get_engine().submit(img.array, run.request, processes=run.processes)
    except (ValueError, TypeError, RuntimeError) as e:  # validation, or a closed engine
        st.error(str(e), icon=":material/error:")
        return None
    run_id = st.session_state.get("lab_runs", 0) + 1
    st.session_state["lab_runs"] = run_id
    meta = {"image": img, "run": run, "run_id": run_id}
    pending = jobs.Pending(job, settings, meta, estimate=est.pair if est is not None and est.long else None)
    holdings()[JOB] = pending
    return pending


def finish(pending: jobs.Pending, bar) -> LabResult | None:
    """Wait for the job with a progress bar; turn its result into a ``LabResult``."""
    m = pending.meta
    h = holdings()
    what = f"{m['run'].kernels[0].name} and {m['run'].kernels[1].name}"
    try:
        res = jobs.wait(pending, bar, what, WORKER_CAP)
    except engine.JobCancelled:
        h[JOB] = None
        return None
    except engine.WorkerError as e:
        h[JOB] = None
        st.error(f"{e}", icon=":material/error:")
        return None
    except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: the engine was closed meanwhile
        h[JOB] = None
        st.error(str(e), icon=":material/error:")
        return None
    h[JOB] = None
    names = tuple(k.name for k in m["run"].kernels)
    out = LabResult(
        settings=pending.settings,
        run_id=m["run_id"],
        image=m["image"],
        run=m["run"],
        result=res,
        screens=tuple(images.screen(o) for o in res.outputs),
        spans=tuple(images.value_span(o) for o in res.outputs),
        timeline=charts.timeline_frame(res, names),
    )
    h[RESULT] = out
    history = st.session_state.setdefault(HISTORY_KEY, [])
    for i, k in enumerate(out.kernels):
        history.append({"key": history_key(out, i), "processes": out.processes[i],
                        "ms": res.filter_walls[i] * 1e3, "kernel": k.name})
    throughput().learn_from(res, out.image.shape, out.image.array.dtype, out.output, out.implementation)
    return out


def history_key(r: LabResult, i: int) -> tuple:
    return (r.image.key, kernels.fingerprint(r.kernels[i]), r.border, r.output, r.implementation)


# -- 4. results ---------------------------------------------------------------------------------
def result_caption(r: LabResult, i: int) -> str:
    letter = "AB"[i]
    p = r.processes[i]
    wall = ms(r.result.filter_walls[i])
    return f"{letter} · {r.kernels[i].name} · {p} process{'es' if p > 1 else ''} · {wall} (run #{r.run_id})"


def original_caption(r: LabResult, escape=md) -> str:
    """The original's caption; the file name ``escape``d for where it goes (markdown on the page)."""
    h, w, c = r.image.shape
    return f"Original · {escape(r.image.name)} · {w}x{h}, {c} channel{'s' if c > 1 else ''}"


def results_titles(r: LabResult) -> list[str]:
    """The results row's captions, for the report figure (the file name escaped for matplotlib)."""
    return [original_caption(r, escape=mpl)] + [result_caption(r, i) for i in range(2)]


def _show_with(output: str) -> None:
    st.session_state["lab_output"] = output
    st.session_state[AUTORUN] = True


def sliver_advice(r: LabResult, i: int) -> images.Sliver | None:
    """Advice for a result that uses a sliver of its range (``images.sliver``)."""
    lo, hi = r.spans[i]
    return images.sliver(lo, hi, int(np.iinfo(r.image.array.dtype).max), r.output)


def results_row(r: LabResult, stale: bool) -> None:
    notes = [n for n in (images.display_note(r.image.array.dtype), images.scale_note(r.image.shape, r.screens[0].factor))
             if n]
    if stale:
        st.info("These results are from earlier settings: press **Run A and B** to update them.",
                icon=":material/history:")
    cols = st.columns(3, gap="small")
    pre = r.image.screen.preview
    cols[0].image(pre.data, caption=original_caption(r), width="stretch", output_format=pre.format)
    for i in range(2):
        pic = r.screens[i].preview
        cols[i + 1].image(pic.data, caption=result_caption(r, i), width="stretch", output_format=pic.format)
        if (adv := sliver_advice(r, i)) is not None:
            with cols[i + 1]:
                st.caption(f":material/contrast: {'AB'[i]} {adv.text}. Show it with:")
                with st.container(horizontal=True, gap="xsmall", wrap=True):
                    for o in adv.offers:
                        st.button(f"**{o}**", key=f"lab_show_{'AB'[i]}_{o}", on_click=_show_with, args=(o,),
                                  help=f"Output mapping {o}: {images.MAPPING_HELP[o]}. Runs A and B again.",
                                  type="secondary", icon=":material/visibility:")
    if notes:
        st.caption(f":material/info: {'; '.join(notes)}. Previews are JPEG; downloads are exact PNG.")


@st.fragment
def compare_view() -> None:
    """Before/after with a movable split, or a difference heat map; reruns only this fragment.

    Takes no argument: Streamlit keeps a fragment's arguments for as long as the session lives,
    so it looks the result up in the session's holdings instead."""
    r = holdings().get(RESULT)
    if r is None:
        return
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
            pic = r.memo(("ba", a, b, split), lambda: images.picture(
                images.before_after(_disp(r, names[a]), _disp(r, names[b]), split / 100), r.screens[0].factor > 1))
            caption = f"{label[a]} left of the line, {label[b]} right of it"
            st.caption("Move the split to wipe between the two images.")
        else:
            pair = st.selectbox("Compare", ["A vs original", "B vs original", "A vs B"], key="lab_diff",
                                persist_state="session")
            x, y = {"A vs original": (0, None), "B vs original": (1, None), "A vs B": (0, 1)}[pair]

            def diff():
                heat, stats = images.difference(_full(r, x), _full(r, y))
                heat, factor = images.enlarge(heat)
                return images.picture(heat, factor > 1), stats

            pic, stats = r.memo(("diff", pair), diff)
            caption = f"|{pair.replace(' vs ', ' − ')}|, largest over colour channels"
            if stats.max == 0:
                st.success("Identical: every pixel is the same.", icon=":material/check_circle:")
            else:
                st.markdown(
                    f"- largest difference **{stats.max}** of {stats.levels} gray levels\n"
                    f"- mean difference **{sig(stats.mean)}**\n"
                    f"- **{stats.changed:.1%}** of pixels differ"
                )
            st.caption("Black means equal; the brightest colour is the largest difference (stretched).")
    with left_col:
        st.image(pic.data, caption=caption, width="stretch", output_format=pic.format)


def _disp(r: LabResult, i: int | None) -> np.ndarray:
    return r.image.display if i is None else r.screens[i].display


def _full(r: LabResult, i: int | None) -> np.ndarray:
    return r.image.array if i is None else r.outputs[i]


# -- the serial reference (issue 11): the best serial code on the same image and kernel ------------
@st.cache_resource(show_spinner=False)
def serial_times() -> dict:
    """Seconds of ``Engine.serial_time`` by (image, kernel, border, output): measured once for the
    server, whatever session asked first. Small floats; the oldest go past 1024 entries."""
    return OrderedDict()


def serial_key(r: LabResult, i: int) -> tuple:
    return (r.image.key, kernels.fingerprint(r.kernels[i]), r.border, r.output)


def serial_time(r: LabResult, i: int) -> float | None:
    return serial_times().get(serial_key(r, i))


def route_text(r: LabResult, i: int) -> str:
    """Which route computed filter ``i`` (``JobResult.routes``), in ``engine.ROUTES``' words."""
    how = r.result.routes[i]
    return f"**{how}**: {engine.ROUTES[how]}"


def serial_code(r: LabResult, i: int) -> charts.SerialCode:
    """The best serial code for filter ``i``: the route ``Engine.serial_time`` takes, which may not
    be the route the run took (a numpy run, or a kernel whose 8-bit route differs)."""
    return charts.SerialCode.of(r.kernels[i], r.image.array.dtype, r.border, r.output)


def serial_sentence(r: LabResult, i: int, t: float) -> str:
    """What the processes bought over the best serial code, for filter ``i``."""
    letter, wall, p = "AB"[i], r.result.filter_walls[i], r.processes[i]
    ref = serial_code(r, i)
    ratio = t / wall if wall > 0 else float("inf")
    verdict = (f"the processes bought **{ratio:.2f}x**" if ratio >= 1 else
               f"the run took **{1 / ratio:.2f}x as long** as the serial code")
    return (f"{letter} on {_n(p, 'process', 'processes')}: {ms(wall)}; the best serial code, {ref.sentence} "
            f"(route **{ref.route}**), takes {ms(t)}: {verdict}.")


def timing(r: LabResult) -> dict:
    """The timing metrics, the band timeline and what they mean. Returns the placeholders of
    the serial references still to be measured (``measure_references`` fills them after the
    rest of the page is drawn)."""
    ph = r.result.phases
    walls = r.result.filter_walls
    boxes = {}
    metrics = [
        ("A: wall", walls[0], "First band start to last band end of filter A."),
        ("A: serial", 0, "The best serial code on the same image and kernel: Engine.serial_time, the band kernel "
                         "on the whole image as one band, on one worker with one OpenCV thread (one OpenCV call "
                         "on the direct route), best of 3."),
        ("B: wall", walls[1], "First band start to last band end of filter B."),
        ("B: serial", 1, "The same for filter B."),
        ("Pair: wall", ph.wall, "The whole job, both filters at the same time."),
        ("Copy in", ph.copy_in, "Copying the image into shared memory. About zero: it already lives there."),
        ("Compute", ph.compute, "From the first band sent to the last band done."),
        ("Copy out", ph.copy_out,
         "Copying results out of shared memory. About zero: the workers wrote the results in place."),
    ]
    with st.container(horizontal=True, wrap=True, gap="medium"):  # a row, or two a line on a phone
        for label, value, why in metrics:
            if label.endswith("serial"):
                t = serial_time(r, value)
                box = st.empty()
                box.metric(label, ms(t) if t is not None else "…", help=why, width=METRIC_WIDTH)
                if t is None:
                    boxes[value] = (box, label, why)
            else:
                st.metric(label, ms(value), help=why, width=METRIC_WIDTH)
    sentences = st.empty()
    boxes["sentences"] = sentences
    _reference_sentences(r, sentences)
    st.vega_lite_chart(copy.deepcopy(r.gantt), width="stretch")  # Streamlit takes the spec apart
    st.caption(gantt_sentence(r))
    return boxes


def _reference_sentences(r: LabResult, box) -> None:
    lines = []
    for i in range(2):
        t = serial_time(r, i)
        if t is not None:
            lines.append(serial_sentence(r, i, t))
        if rt := route_text(r, i):
            lines.append(f"{'AB'[i]} ran on the route {rt}.")
    if any(serial_time(r, i) is None for i in range(2)):
        lines.append("Measuring the best serial code on this image now (after the results: it needs the workers)…")
    box.caption("  \n".join(lines))


def measure_references(r: LabResult, boxes: dict) -> None:
    """Measure the serial references the page is missing, after everything else is drawn, and
    fill their placeholders. Runs on the engine's workers like any job (it waits for free ones),
    once per image, kernel, border and output for the whole server."""
    missing = [i for i in range(2) if i in boxes]
    if not missing:
        return
    cache = serial_times()
    eng = get_engine()
    for i in missing:
        key = serial_key(r, i)
        if key not in cache:
            try:
                cache[key] = eng.serial_time(r.image.array, r.kernels[i], border=r.border, output=r.output,
                                             implementation="opencv")
            except (ValueError, TypeError, RuntimeError, engine.WorkerError, engine.JobCancelled):
                return  # the engine closed or a worker died: the next run measures again
            while len(cache) > 1024:
                cache.popitem(last=False)
        box, label, why = boxes[i]
        box.metric(label, ms(cache[key]), help=why, width=METRIC_WIDTH)
    _reference_sentences(r, boxes["sentences"])


def gantt_sentence(r: LabResult) -> str:
    parts = []
    for i, letter in enumerate("AB"):
        t = r.timeline[r.timeline["filter"] == letter]
        parts.append(
            f"{letter} ({r.kernels[i].name}) cut {r.image.shape[0]} rows into {_n(len(t), 'band')} on "
            f"{_n(t['pid'].nunique(), 'process', 'processes')} and took {ms(r.result.filter_walls[i])}"
        )
    total = sum(r.processes)
    share = (f" {total} processes on {CPUS} CPUs: A and B shared the cores, so bars may stretch."
             if total > CPUS else "")
    gap = charts.start_gap_ms(r.timeline)
    together = (f" The first bands of A and B started {sig(gap, 2)} ms apart: both filters ran at the same time."
                if gap is not None and gap < 1.0 else
                f" The first bands of A and B started {sig(gap, 2)} ms apart." if gap is not None else "")
    return "; ".join(parts) + ". Each bar is one band; a process runs one band at a time." + together + share


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def speedup_caption(df: pd.DataFrame, t: float | None, code: charts.SerialCode) -> str:
    """What a speedup line (``charts.history_speedup_frame``) shows; ``t``: the best serial code's
    seconds, drawn as the dashed line when known.

    >>> df = pd.DataFrame({"processes": [1, 2], "ms": [10.0, 12.5], "speedup": [1.0, 0.8]})
    >>> speedup_caption(df, None, charts.SerialCode("direct", "one OpenCV call on one thread", ""))[:35]
    'Fastest: 1 process, 1.00x against 1'
    """
    best = df.iloc[df["speedup"].idxmax()]
    ref = (f" Dashed dark line: the best serial code, {code.sentence} ({ms(t)}); above it the processes "
           "beat it." if t else "")
    return (f"Fastest: {_n(int(best['processes']), 'process', 'processes')}, {best['speedup']:.2f}x against "
            f"{int(df['processes'].iloc[0])}. The two filters ran at the same time, so each time includes "
            "sharing the CPUs with the other." + ref)


def speedup_lines(r: LabResult) -> None:
    history = st.session_state.get(HISTORY_KEY, [])
    shown = 0
    cols = st.columns(2, gap="medium")
    for i, letter in enumerate("AB"):
        df = charts.history_speedup_frame(history, history_key(r, i))
        if df.empty:
            continue
        t = serial_time(r, i)
        reference = float(df["ms"].iloc[0]) / (t * 1e3) if t else None
        code = serial_code(r, i)
        with cols[shown]:
            st.markdown(f"**Speedup of {r.kernels[i].name} on this image** (best run per process count)")
            st.altair_chart(charts.speedup_line_chart(df, charts.FILTER_COLORS[letter], CPUS, reference, code.label),
                            width="stretch", key=f"lab_speedup_{letter}")
            st.caption(speedup_caption(df, t, code))
        shown += 1
    if not shown:
        st.caption(":material/trending_up: Run the same image and filter again with other process counts: "
                   "a speedup line appears here.")


def engine_status() -> None:
    """One line about the shared engine, for demos with several tabs open."""
    eng = get_engine()
    st.caption(f":material/memory: Engine: {len(eng.idle_workers())} idle worker processes, at most {eng.max_workers} for all sessions together "
               f"(each filter up to {PROCESS_MAX}), on {CPUS} CPUs. Jobs that need more wait their turn.")


def downloads(r: LabResult) -> None:
    """Deferred downloads: the files are made when clicked, from the result held weakly (the
    callables outlive the run inside Streamlit; see ``holdings``)."""
    stem = Path(r.image.name).stem
    sixteen = r.image.array.dtype == np.uint16
    cols = st.columns(3, gap="small")
    for i, letter in enumerate("AB"):
        k = r.kernels[i].name
        cols[i].download_button(
            f"{letter} as {'16-bit ' if sixteen else ''}PNG",
            data=weakly(r, lambda r, i=i: engine.save_image(r.outputs[i])),
            file_name=f"{stem}_{letter}_{k}_{r.processes[i]}p.png",
            mime="image/png",
            icon=":material/download:",
            on_click="ignore",
            key=f"lab_dl_{letter}",
            width="stretch",
        )
    cols[2].download_button(
        "Timeline as CSV",
        data=weakly(r, lambda r: r.timeline.to_csv(index=False)),
        file_name=f"{stem}_timeline_run{r.run_id}.csv",
        mime="text/csv",
        icon=":material/table_view:",
        on_click="ignore",
        key="lab_dl_csv",
        width="stretch",
    )
    titles = results_titles(r)
    report.downloads("lab_fig_format", [
        report.ReportFigure("lab_fig_results", "Results row", f"{stem}_results_run{r.run_id}",
                            weakly(r, lambda r: engine.plot.results(r.image.array, r.result, titles=titles))),
        report.ReportFigure("lab_fig_timing", "Timing chart", f"{stem}_timing_run{r.run_id}",
                            weakly(r, lambda r: engine.plot.timeline(r.result))),
    ])
