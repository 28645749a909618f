"""The dashboard under Streamlit's AppTest: every page, driven like a person would.

The app's engine lives in ``st.cache_resource`` in this process. A module fixture creates it
and starts its warm workers *before* any test's leak check takes its snapshot, and closes it at
the end; each test drops its AppTest (and with it the session's shared arrays) before the leak
check looks for segments. Results are compared with the engine called directly (the ``eng``
fixture from conftest) with the same settings: the page must show exactly the engine's output.
"""

from __future__ import annotations

import gc
import io
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from PIL import Image
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

import engine
from pages._ui import charts, explain, images, jobs, kernels, lab, sweep
from pages._ui.fmt import md, nbytes

pytestmark = pytest.mark.usefixtures("app_engine")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard.py")
TIMEOUT = 60


def held(at):
    """The session's holdings (pages/_ui/holdings.py): its image, result, job and sweep."""
    return at.session_state["pfl_held"]


@pytest.fixture
def at():
    """A fresh session of the whole app, released (with its shared arrays) after the test."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    yield app
    pending = held(app).get("job") if "pfl_held" in app.session_state else None
    if pending is not None:
        pending.job.cancel()
    del app, pending
    gc.collect()


@pytest.fixture
def deferred(monkeypatch):
    """Downloads whose data Streamlit makes on click, as registered: file name -> (mime, callable)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    seen = {}
    real = MediaFileManager.add_deferred

    def spy(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        seen[file_name] = (mimetype, data_callable)
        return real(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    return seen


MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF-"}


def _valid_figure(data: bytes, fmt: str) -> None:
    assert data.startswith(MAGIC[fmt]), data[:20]
    if fmt == "png":
        w, h = Image.open(io.BytesIO(data)).size  # decodes
        assert w >= 1000 and h >= 300  # 200 dpi
        Image.open(io.BytesIO(data)).load()
    elif fmt == "svg":
        assert data.rstrip().endswith(b"</svg>")
    else:
        assert data.rstrip().endswith(b"%%EOF")


def _no_errors(app: AppTest) -> None:
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]


def _scaling_set(app: AppTest, *, side: int, nmax: int, repeats: int, impls=None) -> None:
    """Open the Scaling page (no error on it) and set the sweep's widgets; the sweep is not started."""
    app.switch_page("pages/scaling.py").run()
    _no_errors(app)
    app.select_slider(key="sc_side").set_value(side)
    if impls is not None:
        app.multiselect(key="sc_impls").set_value(impls)
    app.slider(key="sc_nmax").set_value(nmax)
    app.slider(key="sc_repeats").set_value(repeats)
    app.run()


def _chart_rows(app: AppTest, description: str):
    """The data behind the Vega-Lite chart with this top-level description."""
    for el in app.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        if spec.get("description") == description:
            return dataframe_util.convert_arrow_bytes_to_pandas_df(el.proto.datasets[0].data.data)
    raise AssertionError(f"no chart described {description!r}")


def _chart_text(app: AppTest) -> str:
    """Every chart's spec and data as one string (Streamlit moves an Altair chart's datasets out of
    its spec into Arrow tables)."""
    parts = []
    for el in list(app.get("arrow_vega_lite_chart")) + list(app.get("vega_lite_chart")):
        parts.append(el.proto.spec)
        for d in el.proto.datasets:
            parts.append(dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data).to_csv())
    return " ".join(parts)


def _decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# -- the Filter lab -----------------------------------------------------------------------------
def test_lab_pair_is_the_engines_output_and_the_timeline_has_one_bar_per_band(at, eng):
    at.button(key="sample_digits.png").click().run()
    at.selectbox(key="lab_kernel_A").set_value("edge_y")
    at.selectbox(key="lab_kernel_B").set_value("box_5x5")
    at.slider(key="lab_p_A").set_value(2)
    at.slider(key="lab_p_B").set_value(1)
    at.selectbox(key="lab_border").set_value("reflect")
    at.selectbox(key="lab_output").set_value("abs")
    at.run()
    at.button(key="lab_run").click().run()
    _no_errors(at)

    r = held(at).get("result")
    original = engine.load_image(images.SAMPLES_DIR / "digits.png")
    assert np.array_equal(r.image.array, original)
    for i, (name, p) in enumerate([("edge_y", 2), ("box_5x5", 1)]):
        expected = eng.filter_image(original, name, processes=p, border="reflect", output="abs")
        assert r.outputs[i].dtype == expected.dtype and np.array_equal(r.outputs[i], expected), name
        # what the page shows is that output, mapped for display (the preview is a JPEG of it)
        assert np.array_equal(r.screens[i].display, images.to_display(expected))
        shown = _decode_png(r.screens[i].preview.data)
        assert r.screens[i].preview.format == "JPEG" and shown.shape[:2] == images.to_display(expected, 512).shape[:2]
    captions = [c for im in at.image for c in im.captions]
    assert any(c.startswith("A · edge_y · 2 processes") for c in captions), captions
    assert any(c.startswith("B · box_5x5 · 1 process") for c in captions), captions

    bars = _chart_rows(at, "band timeline")
    h, w, _ = original.shape
    n_a = len(explain.plan(eng, h, w, engine.KERNELS["edge_y"], 2, "reflect"))
    n_b = len(explain.plan(eng, h, w, engine.KERNELS["box_5x5"], 1, "reflect"))
    assert len(bars) == len(r.result.timeline) == n_a + n_b
    assert sorted(bars[bars["filter"] == "A"]["band"]) == list(range(n_a))
    assert sorted(bars[bars["filter"] == "B"]["band"]) == list(range(n_b))
    assert bars[bars["filter"] == "A"]["pid"].nunique() <= 2
    # the downloads and the views are there
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["A as PNG", "B as PNG", "Timeline as CSV", "Results row as PNG", "Timing chart as PNG"]


def test_lab_figures_for_a_report_download_as_png_svg_and_pdf(at, deferred):
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at).get("result")
    stem = Path(r.image.name).stem
    for fmt in ("png", "svg", "pdf"):
        at.session_state["lab_fig_format"] = fmt
        at.run()
        _no_errors(at)
        labels = [b.label for b in at.get("download_button")]
        assert labels[-2:] == [f"Results row as {fmt.upper()}", f"Timing chart as {fmt.upper()}"]
        for what in ("results", "timing"):
            mime, make = deferred.pop(f"{stem}_{what}_run{r.run_id}.{fmt}")
            assert mime == engine.plot.FORMATS[fmt]
            _valid_figure(make(), fmt)
    # what the results figure shows: the page's captions over the page's images
    fig = engine.plot.results(r.image.array, r.result, titles=lab.results_titles(r))
    captions = [c for im in at.image for c in im.captions]
    assert [ax.get_title() for ax in fig.axes] == lab.results_titles(r)
    assert all(t in captions for t in lab.results_titles(r)), captions


def test_second_run_with_other_process_counts_draws_a_speedup_line(at):
    at.button(key="lab_run").click().run()
    at.slider(key="lab_p_A").set_value(2).run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    history = at.session_state["lab_history"]
    assert {h["processes"] for h in history if h["kernel"] == "sobel"} == {1, 2}
    speed = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert any("speedup" in json.dumps(s) for s in speed)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.png", b"this is not an image at all", "not a recognized image"),
        ("half.png", None, "truncated or corrupt"),
        ("huge.png", (8000, 8000), "more than the limit of 40,000,000 pixels"),
        ("bomb.png", (20000, 20000), "is 400,000,000 pixels, more than the limit of 40,000,000 pixels"),
        ("empty.png", b"", "empty"),
        ("float.tif", "float32", "holds 32-bit floating-point samples (Pillow mode 'F')"),
    ],
)
def test_bad_upload_shows_the_error_and_the_app_keeps_working(at, eng, name, data, message):
    if data is None:  # a real PNG cut in half
        data = (images.SAMPLES_DIR / "fence.png").read_bytes()
        data = data[: len(data) // 2]
    elif isinstance(data, tuple):  # a 1x1 PNG whose header claims far more pixels
        data = _png_claiming(*data)
    elif data == "float32":  # a 32-bit float TIFF: a mode with no 8- or 16-bit form
        buf = io.BytesIO()
        Image.fromarray(np.zeros((4, 4), np.float32)).save(buf, format="TIFF")
        data = buf.getvalue()
    at.file_uploader(key="lab_upload").upload(name, data, "image/png").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and message in errors[0] and name in errors[0], errors
    # still on the sample, and a run still works
    at.button(key="lab_run").click().run()
    assert not at.exception
    r = held(at).get("result")
    assert r.image.name == images.DEFAULT_SAMPLE
    assert np.array_equal(r.outputs[1], eng.filter_image(r.image.array, "gaussian", processes=1))


def test_16_bit_tiff_upload_stays_16_bit(at, eng):
    ramp = (np.arange(96 * 80, dtype=np.uint32).reshape(96, 80) * 8).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")
    at.file_uploader(key="lab_upload").upload("ramp16.tif", buf.getvalue(), "image/tiff").run()
    at.selectbox(key="lab_kernel_A").set_value("laplacian")
    at.selectbox(key="lab_output").set_value("offset").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at).get("result")
    assert r.image.name == "ramp16.tif" and r.image.array.dtype == np.uint16
    expected = eng.filter_image(ramp[:, :, None], "laplacian", processes=1, output="offset")
    assert r.outputs[0].dtype == np.uint16 and np.array_equal(r.outputs[0], expected)
    assert any("16-bit shown as 8-bit" in c.value for c in at.caption)
    assert [b.label for b in at.get("download_button")][:2] == ["A as 16-bit PNG", "B as 16-bit PNG"]
    assert np.array_equal(engine.load_image(engine.save_image(r.outputs[0])), expected)


def test_custom_kernel_from_the_table_is_used(at, eng):
    at.selectbox(key="lab_kernel_A").set_value(kernels.TABLE).run()
    _no_errors(at)
    assert at.data_editor(key="lab_table_A_3x3").value.shape == (3, 3)
    # a person types a horizontal difference into the table: -1 0 1 in the middle row
    at.session_state["lab_table_A_3x3"] = {
        "edited_rows": {1: {"0": -1.0, "1": 0.0, "2": 1.0}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    at.selectbox(key="lab_output").set_value("abs").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at).get("result")
    weights = np.array([[0, 0, 0], [-1, 0, 1], [0, 0, 0]], float)
    assert np.array_equal(r.kernels[0].weights, weights)
    expected = eng.filter_image(r.image.array, weights, processes=1, output="abs")
    assert np.array_equal(r.outputs[0], expected)
    assert not np.array_equal(r.outputs[0], r.image.array)


def test_bad_custom_kernel_text_shows_the_parser_message(at):
    at.selectbox(key="lab_kernel_B").set_value(kernels.TEXT).run()
    at.text_area(key="lab_text_B").input("1 2 1; 2 4").run()
    assert not at.exception
    assert any("every row needs the same number of weights" in e.value for e in at.error)
    at.button(key="lab_run").click().run()
    assert not at.exception
    assert held(at).get("result") is None
    # a quotient that overflows float64 was a bare OverflowError on the page
    at.text_area(key="lab_text_B").input("1 1e308/1e-10 1").run()
    assert not at.exception
    assert any("'1e308/1e-10' in row 1 is not finite" in e.value for e in at.error)
    at.text_area(key="lab_text_B").input("1/16 2/16 1/16; 2/16 4/16 2/16; 1/16 2/16 1/16").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    assert held(at).get("result").kernels[1].weights.sum() == pytest.approx(1.0)


def test_a_stale_job_is_cancelled_when_the_settings_change(at, app_engine):
    """A job made for other settings (as if a widget changed while it ran) is cancelled, not awaited."""
    slow = np.random.default_rng(1).integers(0, 256, (256, 256, 1), dtype=np.uint8)
    job = app_engine.submit(slow, engine.FilterRequest(["gaussian"], implementation="python"), processes=2)
    held(at)["job"] = jobs.Pending(job, settings=("other image",))
    at.run()
    _no_errors(at)
    assert any("cancelled" in t.value for t in at.toast)
    job.exception(timeout=30)
    assert job.state() == "cancelled"
    assert held(at).get("job") is None


def test_run_clicked_again_restarts_instead_of_queueing(at, app_engine):
    slow = np.random.default_rng(2).integers(0, 256, (256, 256, 1), dtype=np.uint8)
    job = app_engine.submit(slow, engine.FilterRequest(["gaussian"], implementation="python"), processes=2)
    held(at)["job"] = jobs.Pending(job, settings=("whatever",))
    at.button(key="lab_run").click().run()
    _no_errors(at)
    job.exception(timeout=30)
    assert job.state() == "cancelled"
    assert any("restarted" in t.value for t in at.toast)
    assert held(at).get("result").run_id == 1


def test_python_implementation_on_a_big_image_explains_itself(at):
    at.selectbox(key="lab_impl").set_value("python").run()
    at.button(key="lab_run").click().run()
    assert not at.exception
    assert any("256" in e.value for e in at.error), [e.value for e in at.error]


# -- Scaling ------------------------------------------------------------------------------------
def test_scaling_sweep_plots_time_speedup_and_efficiency(at, deferred):
    _scaling_set(at, side=128, nmax=2, repeats=2, impls=["opencv", "numpy", "python"])
    at.button(key="sc_run").click().run()
    _no_errors(at)
    sw = held(at)["sweep"]
    assert sw.status == "done"
    runs = sw.frame()
    assert len(runs) == 3 * 2 * 2
    assert set(runs["implementation"]) == {"opencv", "numpy", "python"}
    assert (runs["seconds"] > 0).all()
    text = " ".join(c.value for c in at.caption)
    assert "Amdahl" in text and "Efficiency" in text and "**numpy**" in text and " ms" in text
    assert len(at.get("vega_lite_chart")) == 3
    assert [b.label for b in at.get("download_button")] == ["Runs as CSV", "Scaling charts as PNG"]
    # the report figure: the same series as the page's charts, in their colours
    mime, make = deferred["scaling_gaussian.png"]
    assert mime == "image/png"
    _valid_figure(make(), "png")
    fig = sweep.figure(sw)
    assert [ax.get_title() for ax in fig.axes] == ["Time", "Speedup", "Efficiency"]
    measured = [ln for ln in fig.axes[1].lines if ln.get_marker() == "o"]
    summary = charts.sweep_summary(runs, sweep.CPUS)
    assert [ln.get_ydata().tolist() for ln in measured] == [
        g.sort_values("processes")["speedup"].tolist() for _, g in summary.groupby("series", sort=False)]
    assert [to_hex(ln.get_color()) for ln in measured] == [charts.IMPL_COLORS[i] for i in ("opencv", "numpy", "python")]


def test_scaling_leaves_python_out_of_big_sweeps_and_stops_a_stale_sweep(at):
    _scaling_set(at, side=512, nmax=1, repeats=1, impls=["opencv", "python"])
    assert any("python runs only on images up to 256x256" in w.value for w in at.warning)
    # the sweep that runs has no python in it: not planned, not measured
    at.button(key="sc_run").click().run()
    _no_errors(at)
    sw = held(at)["sweep"]
    assert sw.status == "done", sw.message
    assert sw.image.shape[:2] == (512, 512) and sw.config[2] == ("opencv",)
    assert set(sw.frame()["implementation"]) == {"opencv"} and len(sw.runs) == 1
    assert set(sw.outputs) == {(sweep.POOL, "opencv")}
    # a sweep made for other settings is stopped, and what it measured is kept
    other = ("laplacian",) + sw.config[1:]
    stale = sweep.Sweep(other, "laplacian", np.zeros((8, 8, 1), np.uint8), [(sweep.POOL, "opencv", 1, 1)], 1,
                        runs=list(sw.runs))
    held(at)["sweep"] = stale
    at.run()
    assert not at.exception
    assert stale.status == "stopped" and stale.runs == sw.runs and stale.todo == [(sweep.POOL, "opencv", 1, 1)]
    assert any("stopped" in w.value for w in at.warning)


def test_scaling_without_the_dask_extras_says_how_to_install_them(at, monkeypatch):
    monkeypatch.setattr(engine, "dask_available", lambda: False)
    at.switch_page("pages/scaling.py").run()
    _no_errors(at)
    assert not at.get("segmented_control")
    assert any('pip install "dask[array]" distributed' in c.value for c in at.caption)


def test_scaling_sentences_read_both_backends():
    from pages._ui import sweep

    rows = []
    for backend, t1 in [("process pool", 0.010), ("dask", 0.030)]:
        for p in (1, 2):
            rows.append({"backend": backend, "implementation": "opencv", "processes": p, "repeat": 1,
                         "seconds": t1 * (0.1 + 0.9 / p)})
    runs = sweep.Sweep(None, "gaussian", np.zeros((1, 1, 1), np.uint8), [], 0, runs=rows).frame()
    summary = charts.sweep_summary(runs, cpus=2)
    assert list(summary["series"]) == ["opencv · process pool"] * 2 + ["opencv · dask"] * 2
    assert summary["speedup"].round(3).tolist() == [1.0, 1.818, 1.0, 1.818]  # each against its own 1 process
    t = sweep.time_sentence(summary)
    assert "**opencv · process pool**: 1 process took 10.0 ms" in t
    assert "**opencv · dask**: 1 worker took 30.0 ms" in t
    assert "Dask took 3.0x the process pool's time for opencv at 2" in t
    s = sweep.speedup_sentence(summary)
    assert "on 2 processes" in s and "on 2 workers" in s and "serial fraction of 10.0%" in s
    assert "**opencv · dask** 100% at 1, 91% at 2" in sweep.efficiency_sentence(summary)
    pool_only = charts.sweep_summary(runs[runs["backend"] == "process pool"], cpus=2)
    assert "**opencv**: 1 process" in sweep.time_sentence(pool_only) and "Dask" not in sweep.time_sentence(pool_only)


# -- How it works -------------------------------------------------------------------------------
def test_how_it_works_shows_the_plan_the_flow_and_the_five_filters(at, eng):
    at.button(key="sample_chessboard.png").click().run()
    at.slider(key="lab_p_A").set_value(3).run()
    at.button(key="lab_run").click().run()
    at.switch_page("pages/how_it_works.py").run()
    _no_errors(at)
    r = held(at).get("result")
    h, w, _ = r.image.shape
    # the plan pictured is the plan the engine ran
    plan_a = explain.plan(eng, h, w, r.kernels[0], 3, "replicate")
    ran_a = sorted({rec.band for rec in r.result.timeline if rec.filter == 0})
    assert ran_a == list(range(len(plan_a)))
    table = at.dataframe[0].value
    assert len(table) == len(plan_a) + len(explain.plan(eng, h, w, r.kernels[1], 1, "replicate"))
    assert "worker pid" in " ".join(table["worker"])  # workers of the last run are named
    assert len(at.get("graphviz_chart")) == 1
    names = [c for im in at.image for c in im.captions]
    assert names[-5:] == list(kernels.NOTEBOOK_FILTERS)
    assert any("identical to the original" in c.value for c in at.caption)


def test_band_picture_draws_wrap_halos_where_the_rows_come_from():
    """With ``wrap`` the first band's halo above is the image's last rows, the last band's halo
    below its first rows: the picture tints those red (it tinted the top rows for both)."""
    img = np.zeros((100, 60), np.uint8)
    red = lambda pic, y: int(pic[y, 30, 0]) - int(pic[y, 30, 1]) > 60  # noqa: E731
    for border, bottom_red in (("wrap", True), ("replicate", False)):
        bands = engine.plan_bands(100, 5, 2, wrap=border == "wrap")
        assert [explain.halo_rows(b, 100) for b in bands] == (
            [[(98, 100), (50, 52)], [(48, 50), (0, 2)]] if bottom_red else [[(50, 52)], [(48, 50)]])
        pic = explain.bands_on_image(img, bands, {}, {})
        assert red(pic, pic.shape[0] - 1) is bottom_red and red(pic, 0) is bottom_red, border
        assert red(pic, pic.shape[0] // 2 - 3) and not red(pic, pic.shape[0] // 4), border  # halo 48-50
        chart = charts.band_plan_chart(charts.band_plan_frame({"A": bands}, {}), 100, {}).layer[0].data
        halos = chart[chart["part"] == "halo rows"]
        assert sorted(zip(halos["y"], halos["y2"])) == sorted(r for b in bands for r in explain.halo_rows(b, 100))
        assert ("wrap: the image's last rows" in " ".join(halos["tip"])) is bottom_red
    # one band over the whole image: under wrap it reads its own last rows above and first rows below
    (whole,) = engine.plan_bands(100, 5, 1, wrap=True)
    chart = charts.band_plan_chart(charts.band_plan_frame({"A": (whole,)}, {}), 100, {}).layer[0].data
    assert sorted(chart[chart["part"] == "halo rows"]["tip"]) == [
        "halo rows 0–1, read below band 0 (wrap: the image's first rows)",
        "halo rows 98–99, read above band 0 (wrap: the image's last rows)"]


@pytest.mark.parametrize(("page", "title"), [("lab.py", "Filter lab"), ("scaling.py", "Scaling"),
                                             ("how_it_works.py", "How it works")])
def test_each_page_also_runs_on_its_own(page, title):
    """A page needs nothing from the entry point: AppTest can run the file alone, and shows itself."""
    app = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=TIMEOUT).run()
    _no_errors(app)
    assert [t.value for t in app.title] == [title]
    del app
    gc.collect()


def test_pages_keep_their_settings_across_navigation(at):
    at.selectbox(key="lab_kernel_A").set_value("emboss").run()
    at.switch_page("pages/scaling.py").run()
    at.switch_page("pages/lab.py").run()
    _no_errors(at)
    assert at.selectbox(key="lab_kernel_A").value == "emboss"


# -- the helpers, without Streamlit ----------------------------------------------------------------
class _Bar:
    """Stands in for an ``st.empty()`` progress placeholder; remembers what it was told."""

    def __init__(self):
        self.texts = []

    def progress(self, value, text=""):
        assert 0.0 <= value <= 1.0
        self.texts.append(text)

    def empty(self):
        self.texts.append(None)


def test_a_job_behind_another_says_it_is_waiting_for_free_workers():
    slow = np.random.default_rng(3).integers(0, 256, (160, 160, 1), dtype=np.uint8)
    with engine.Engine(max_workers=1) as small:  # one worker: the second job must queue
        first = small.submit(slow, engine.FilterRequest(["gaussian"], implementation="python"), processes=1)
        second = small.submit(slow, engine.FilterRequest(["sobel"]), processes=1)
        assert second.state() == "waiting"
        bar = _Bar()
        threading.Timer(0.3, first.cancel).start()
        result = jobs.wait(jobs.Pending(second, settings=None), bar, "sobel", cap=1)
        assert result.outputs[0].shape == slow.shape
        assert any(t and t.startswith("⏳ Waiting for free workers") for t in bar.texts)
        assert bar.texts[-1] is None  # the bar is cleared at the end


def test_display_of_alpha_images_composites_over_a_checker():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent
    rgb = images.as_rgb(images.to_display(rgba))
    assert rgb.shape == (16, 16, 3)
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[12, 0, 0] == rgb[12, 0, 1] == rgb[12, 0, 2]  # the checker shows through


def test_display_mapping_is_explicit_for_16_bit_gray_and_alpha():
    a16 = np.array([[[0], [257], [65535]]], np.uint16)
    assert images.to_display(a16).tolist() == [[0, 1, 255]]
    la = np.dstack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 200, np.uint8)])
    assert images.to_display(la).shape == (2, 2, 4)
    big = np.zeros((3000, 1000, 3), np.uint8)
    assert images.to_display(big).shape == (1024, 341, 3)
    assert images.display_note(np.uint16) and not images.display_note(np.uint8)


def test_before_after_and_difference():
    a = np.zeros((10, 20), np.uint8)
    b = np.full((10, 20), 200, np.uint8)
    pic = images.before_after(a, b, 0.5)
    assert pic.shape == (10, 20, 3) and pic[0, 2, 0] == 0 and pic[0, 17, 0] == 200
    heat, stats = images.difference(a[:, :, None], b[:, :, None])
    assert stats.max == 200 and stats.changed == 1.0 and heat.shape == (10, 20, 3)
    _, same = images.difference(a[:, :, None], a[:, :, None])
    assert same.max == 0 and same.changed == 0.0


def test_presets_keep_the_aspect_ratio():
    assert images.preset_shape(300, 451, None) == (300, 451)
    h, w = images.preset_shape(300, 451, 1 << 22)
    assert abs(h * w - (1 << 22)) / (1 << 22) < 0.01 and abs(w / h - 451 / 300) < 0.01
    up = images.resample(np.zeros((30, 45, 1), np.uint16), (60, 90))
    assert up.shape == (60, 90, 1) and up.dtype == np.uint16


def test_frequency_response_reads_blur_edge_and_identity():
    assert np.allclose(kernels.frequency_response(engine.KERNELS["identity"].weights), 1.0)
    assert kernels.frequency_sentence(engine.KERNELS["gaussian"]).startswith("Low-pass")
    assert kernels.frequency_sentence(engine.KERNELS["laplacian"]).startswith("High-pass")
    assert "vertical edges" in kernels.frequency_sentence(engine.KERNELS["sobel"])


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR says ``width`` x ``height`` (with a correct CRC)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


# -- issue 13: what a first-time user trips over -------------------------------------------------------
def _png(a: np.ndarray) -> bytes:
    return engine.save_image(a[:, :, None] if a.ndim == 2 else a)


def test_helpers_doctests_pass():
    """The examples in the UI helpers' docstrings (pytest.ini leaves pages/ out of --doctest-modules)."""
    import doctest

    from pages._ui import estimate, fmt, holdings

    for module in (fmt, images, kernels, jobs, estimate, holdings, sweep):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__


@pytest.mark.parametrize("weights", [engine.KERNELS["identity"].weights, np.ones((1, 1))])
def test_an_all_pass_response_is_drawn_flat(weights):
    """Item 1: gains 0.9999999999999998..1.0 must not stretch over the whole colour scale."""
    spec = kernels.chart_spec("frequency", "k", np.asarray(weights, float))
    gains = pd.DataFrame(next(iter(spec["datasets"].values())))["gain"]
    lo, hi = spec["encoding"]["color"]["scale"]["domain"]
    assert hi - lo >= kernels.FLAT_SPAN * gains.max() * 0.999
    assert (gains.max() - gains.min()) / (hi - lo) < 1e-6  # one colour
    assert kernels.frequency_sentence(engine.Kernel("k", weights)).startswith("All-pass: every frequency keeps gain 1.00")
    # a real response still spans the whole scale
    g = kernels.chart_spec("frequency", "gaussian", engine.KERNELS["gaussian"].weights)
    lo, hi = g["encoding"]["color"]["scale"]["domain"]
    gg = pd.DataFrame(next(iter(g["datasets"].values())))["gain"]
    assert (lo, hi) == pytest.approx((gg.min(), gg.max()), rel=1e-3)


def test_huge_weights_print_as_significant_digits_and_equal_weights_are_separable(at):
    """Item 2: nine weights of 1e300 read 9.00e+300, not 300 digits, and are rank 1."""
    at.selectbox(key="lab_kernel_A").set_value(kernels.TEXT).run()
    at.text_area(key="lab_text_A").input("1e300 1e300 1e300; 1e300 1e300 1e300; 1e300 1e300 1e300").run()
    _no_errors(at)
    text = " ".join(c.value for c in at.caption)
    assert "9.00e+300" in text and "sum 9e+300" in text
    assert "separable: a row pass then a column pass" in text
    assert not re.search(r"\d{12,}", text), text
    assert kernels._cell_label(1e300) == "1e+300"


def test_weights_whose_sum_overflows_are_refused_with_one_clear_line(at):
    """Item 2: the table path shows the engine's overflow message before Run, and nothing runs."""
    at.selectbox(key="lab_kernel_A").set_value(kernels.TABLE).run()
    at.session_state["lab_table_A_3x3"] = {"edited_rows": {i: {str(j): 1e308 for j in range(3)} for i in range(3)},
                                           "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "overflows float64" in errors[0] and "scale them down" in errors[0], errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    at.button(key="lab_run").click().run()
    assert held(at).get("result") is None


def test_dividing_by_a_tiny_sum_is_refused_with_what_to_do(at):
    """Weights 1e300 -1e300 1e-11 sum to 1e-11: divided by it they overflow to inf. The divided
    kernel is checked like the typed one: one clear line, no traceback, nothing runs."""
    at.selectbox(key="lab_kernel_B").set_value(kernels.TEXT).run()
    at.text_area(key="lab_text_B").input("1e300 -1e300 1e-11").run()
    _no_errors(at)
    at.toggle(key="lab_norm_B").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert "Divided by their sum (1e-11)" in errors[0] and "must be finite numbers, got inf" in errors[0]
    assert 'turn off "Divide by the sum"' in errors[0]
    at.button(key="lab_run").click().run()
    assert not at.exception
    assert held(at).get("result") is None
    at.toggle(key="lab_norm_B").set_value(False).run()
    _no_errors(at)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the kernel's pictures of inf weights
def test_a_kernel_the_picker_let_through_is_refused_by_the_request_not_a_traceback(at, monkeypatch):
    """The page's last guard: should a picker's check miss something, building the request
    raises ``ValueError`` and the page shows its message (here the check is switched off)."""
    monkeypatch.setattr(lab, "check_kernel", lambda k: None)
    at.selectbox(key="lab_kernel_B").set_value(kernels.TEXT).run()
    at.text_area(key="lab_text_B").input("1e300 -1e300 1e-11").run()
    at.toggle(key="lab_norm_B").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert errors == ["These settings cannot run: kernels[1] weights must be finite numbers, got inf"], errors
    at.button(key="lab_run").click().run()
    assert not at.exception
    assert held(at).get("result") is None


def test_the_table_editor_says_its_limits(at):
    """Item 9: the box ignores 99 with no more than a red outline, so the label says 1-31."""
    at.selectbox(key="lab_kernel_B").set_value(kernels.TABLE).run()
    labels = [n.label for n in at.number_input]
    assert labels == [f"Rows (1–{kernels.SIDE_MAX})", f"Columns (1–{kernels.SIDE_MAX})"]


def test_a_result_in_a_sliver_of_the_range_says_so_and_offers_a_mapping(at):
    """Item 3: a Laplacian of a smooth blob is a few gray levels: looks black under clip. The page
    says so beside it, and 'normalize' runs again with the whole range."""
    yy, xx = np.mgrid[0:120, 0:160]
    blob = (200 * np.exp(-((yy - 60) ** 2 + (xx - 80) ** 2) / (2 * 30.0**2))).astype(np.uint8)
    at.file_uploader(key="lab_upload").upload("blob.png", _png(blob), "image/png").run()
    at.selectbox(key="lab_kernel_A").set_value("laplacian").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at)["result"]
    lo, hi = r.spans[0]
    assert hi < 0.1 * 255
    notes = [c.value for c in at.caption if c.value.startswith(":material/contrast: A")]
    assert len(notes) == 1 and f"uses only levels {lo} to {hi} of 255" in notes[0] and "looks black" in notes[0]
    assert not any(c.value.startswith(":material/contrast: B") for c in at.caption)  # the blur uses its range
    at.button(key="lab_show_A_normalize").click().run()
    _no_errors(at)
    r = held(at)["result"]
    assert r.output == "normalize" and r.run_id == 2 and at.selectbox(key="lab_output").value == "normalize"
    assert r.spans[0][1] - r.spans[0][0] > 200
    assert not any(c.value.startswith(":material/contrast: A") for c in at.caption)


def test_after_an_upload_the_gallery_no_longer_highlights_the_sample(at):
    """Item 6: in the very run that reads the upload (the uploader's on_change), not one later."""
    assert at.button(key=f"sample_{images.DEFAULT_SAMPLE}").label.startswith("**")
    at.file_uploader(key="lab_upload").upload("ramp.png", _png(np.tile(np.arange(64, dtype=np.uint8), (48, 1))),
                                              "image/png").run()
    _no_errors(at)
    assert held(at)["image"].name == "ramp.png"
    assert not any(b.label.startswith("**") for b in at.button if b.key and b.key.startswith("sample_"))


def test_a_one_pixel_image_is_shown_enlarged(at):
    """Item 7: a 1x1 upload fills the preview and the before/after with its colour, enlarged."""
    at.file_uploader(key="lab_upload").upload("dot.png", _png(np.full((1, 1, 3), (200, 30, 90), np.uint8)),
                                              "image/png").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at)["result"]
    small = _decode_png(r.image.small.data)
    assert min(small.shape[:2]) >= 200 and (small == (200, 30, 90)).all()
    compare = [im for im in at.image if any("left of the line" in c for c in im.captions)]
    assert len(compare) == 1
    pic = _decode_png(r.memo(("ba", "Original", "A", 50), lambda: None).data)
    assert pic.shape[:2] == (images.SCREEN_MIN_SIDE, images.SCREEN_MIN_SIDE)
    left = pic[:, : images.SCREEN_MIN_SIDE // 2 - 3]
    assert (left == (200, 30, 90)).all()  # the original's colour, not a divider over the only pixel
    assert any("1x1 pixels, shown 256x larger" in c.value for c in at.caption)


def test_a_long_run_is_estimated_and_warned_about_before_it_starts(at):
    """Item 5: numpy at 16 MP with an 11x11 kernel: the page says the time before Run."""
    at.segmented_control(key="lab_size").set_value("16 MP")
    at.selectbox(key="lab_kernel_A").set_value("gaussian_11x11")
    at.selectbox(key="lab_impl").set_value("numpy").run()
    _no_errors(at)
    warnings = [w.value for w in at.warning if "This run will take about" in w.value]
    assert len(warnings) == 1 and "numpy on 16.8 MP" in warnings[0] and "opencv implementation" in warnings[0]
    assert re.search(r"about \*\*\d+ min", warnings[0]), warnings[0]
    assert held(at).get("job") is None  # nothing started
    at.selectbox(key="lab_impl").set_value("opencv").run()
    assert not [w for w in at.warning if "This run will take" in w.value]
    assert any(c.value.startswith(":material/timer: about") for c in at.caption)


def test_the_estimate_grows_with_the_work_and_learns_from_runs():
    from pages._ui import estimate

    tp = estimate.Throughput()
    k5, k11 = engine.KERNELS["gaussian"], engine.KERNELS["gaussian_11x11"]
    shape = (4096, 4096, 3)
    one = tp.estimate(shape, np.uint8, (k11, k5), (1, 1), (1, 1), "clip", "numpy", cpus=2)
    four = tp.estimate(shape, np.uint8, (k11, k5), (4, 4), (8, 8), "clip", "numpy", cpus=2)
    assert one.long and one.pair > four.pair >= sum(one.serial) / 2  # two CPUs at most
    assert estimate.units(shape, k11, "opencv") == 4096 * 4096 * 3 * 22  # separable: 11 + 11 taps
    assert estimate.units(shape, k11, "numpy") == 4096 * 4096 * 3 * 121
    assert estimate.units((10, 10, 4), k5, "python", "normalize") == 100 * 3 * 25 * 2  # alpha is copied
    tp.learn("numpy", 8, seconds=1.0, work=1e9)  # measured: 1 ns a unit
    assert tp.cost("numpy", 8) == pytest.approx(1e-9)
    tp.learn("numpy", 8, seconds=3.0, work=1e9)
    assert tp.cost("numpy", 8) == pytest.approx(2e-9)  # moving average


class _StuckJob:
    """A job whose one long band reports no progress for ``seconds``."""

    def __init__(self, seconds: float):
        self.until = time.perf_counter() + seconds

    def done(self):
        return time.perf_counter() >= self.until

    def state(self):
        return "running"

    def progress(self):
        return 0, 2

    def exception(self, timeout=None):
        time.sleep(min(timeout or 0, max(0.0, self.until - time.perf_counter())))
        if not self.done():
            raise TimeoutError
        return None

    def result(self):
        return "the result"


def test_progress_moves_every_second_while_a_long_band_runs():
    """Item 5: 57 s of a frozen progress text was the complaint; the text now counts seconds."""
    bar = _Bar()
    pending = jobs.Pending(_StuckJob(2.6), settings=None, estimate=137.0)
    times = []
    real_progress = bar.progress

    def progress(value, text=""):
        times.append(time.perf_counter())
        real_progress(value, text)

    bar.progress = progress
    assert jobs.wait(pending, bar, "gaussian_11x11 and sobel", cap=8) == "the result"
    texts = [t for t in bar.texts if t]
    assert texts[0] == "gaussian_11x11 and sobel: 0 of 2 bands done · 0 s of about 2 min 17 s"
    assert texts[-1].endswith("2 s of about 2 min 17 s") and len(texts) == 3  # once per second, not per poll
    assert max(b - a for a, b in zip(times, times[1:])) < 1.2


def test_released_holdings_free_the_arrays_even_though_streamlit_keeps_the_downloads(at, app_engine):
    """Memory for closed tabs: a release (session end, idle, cap) leaves nothing that keeps the
    session's shared arrays alive: not the fragments, not the deferred downloads Streamlit holds."""
    import weakref

    at.button(key="lab_run").click().run()
    _no_errors(at)
    h = held(at)
    r = h["result"]
    refs = [weakref.ref(r.outputs[0]), weakref.ref(r.outputs[1]), weakref.ref(h["image"].array)]
    shared_before = len(app_engine._shared)  # noqa: SLF001
    del r
    freed = h.release("released when the session ended")
    assert freed > 3 * 512 * 512 * 3 * 0.99
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    assert len(app_engine._shared) <= shared_before - 3  # noqa: SLF001 - the image and both outputs
    # the next run says why, and makes the image again
    at.run()
    _no_errors(at)
    assert any("were released when the session ended" in i.value for i in at.info), [i.value for i in at.info]
    assert held(at)["image"].array.shape == (512, 512, 3) and held(at).get("result") is None


def test_serial_reference_is_measured_after_the_pair_and_shown_with_the_route(at):
    """Issue 11, item 6: beside each wall time, the best serial code on the same image and kernel,
    once per image and kernel; which route ran; the speedup line draws it."""
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at)["result"]
    metrics = {m.label: m.value for m in at.metric}
    cache = lab.serial_times()
    t_a = cache[lab.serial_key(r, 0)]
    assert metrics["A: serial"] == lab.ms(t_a) and metrics["B: serial"] == lab.ms(cache[lab.serial_key(r, 1)])
    text = " ".join(c.value for c in at.caption)
    assert r.result.routes == ("direct", "direct")
    assert "one OpenCV call on one thread" in text and engine.ROUTES["direct"][:40] in text
    # once per image and kernel: a second run with other process counts measures nothing new
    n = len(cache)
    at.slider(key="lab_p_A").set_value(2).run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    assert len(cache) == n
    assert "one OpenCV call, 1 thread" in _chart_text(at)


def test_scaling_draws_the_best_serial_code_as_a_reference(at):
    _scaling_set(at, side=256, nmax=2, repeats=1)
    at.button(key="sc_run").click().run()
    _no_errors(at)
    sw = held(at)["sweep"]
    assert sw.status == "done" and sweep.serial_seconds(sw) is not None
    assert _chart_text(at).count("one OpenCV call, 1 thread") >= 2  # the time chart and the speedup chart
    assert any("best serial code, one OpenCV call on one thread" in c.value for c in at.caption)


# -- review of the dashboard: which image, which words, which units ------------------------------------
def _highlighted(app: AppTest) -> list[str]:
    """The gallery's highlighted samples (their labels are bold)."""
    return [b.key for b in app.button if b.key and b.key.startswith("sample_") and b.label.startswith("**")]


_RAMP = np.tile(np.arange(64, dtype=np.uint8), (48, 1))


def test_scaling_sweeps_the_labs_image_after_a_release(at):
    """Review 3: with the session's image released (idle), Scaling named and swept the default
    sample; it makes the lab's choice again: the chessboard, in its caption and in its sweep."""
    at.button(key="sample_chessboard.png").click().run()
    held(at).release("released after 10 minutes without use")
    _scaling_set(at, side=128, nmax=1, repeats=1)
    captions = [c.value for c in at.caption if "The lab's image" in c.value]
    assert len(captions) == 1 and "(chessboard.png)" in captions[0], captions
    at.button(key="sc_run").click().run()
    _no_errors(at)
    sw = held(at)["sweep"]
    original, _ = lab.load_sample("chessboard.png")
    assert sw.config[-1] == held(at)["image"].key and held(at)["image"].name == "chessboard.png"
    assert np.array_equal(sw.image, images.center_square(original, 128))


def test_removing_the_upload_hands_the_lab_back_to_the_chosen_sample(at):
    """Review 4: the uploader's x is a removal (the lab goes back to the gallery's sample, and
    offers the upload again); leaving the page and coming back (the uploader is empty then) is not."""
    at.button(key="sample_chessboard.png").click().run()
    at.file_uploader(key="lab_upload").upload("ramp.png", _png(_RAMP), "image/png").run()
    assert held(at)["image"].name == "ramp.png" and _highlighted(at) == []
    at.file_uploader(key="lab_upload").clear().run()
    _no_errors(at)
    assert held(at)["image"].name == "chessboard.png" and _highlighted(at) == ["sample_chessboard.png"]
    assert at.button(key="lab_use_upload").label == "Use the uploaded ramp.png again"
    at.button(key="lab_use_upload").click().run()
    assert held(at)["image"].name == "ramp.png" and _highlighted(at) == []
    # another page and back: the uploader shows no file, and the lab keeps the upload
    at.switch_page("pages/scaling.py").run()
    at.switch_page("pages/lab.py").run()
    _no_errors(at)
    assert at.file_uploader(key="lab_upload").value is None
    assert held(at)["image"].name == "ramp.png" and _highlighted(at) == []


def test_a_release_that_takes_the_upload_for_good_says_so_and_the_gallery_follows(at):
    """Review 4: a release drops the decoded upload. With the file still in the uploader it is
    decoded again; once the uploader no longer holds it, the lab says which sample it is back on,
    and the gallery highlights that sample."""
    at.button(key="sample_chessboard.png").click().run()
    at.file_uploader(key="lab_upload").upload("ramp.png", _png(_RAMP), "image/png").run()
    held(at).release("released after 10 minutes without use")
    at.run()
    _no_errors(at)
    assert held(at)["image"].name == "ramp.png" and _highlighted(at) == []
    assert any("The image is back" in i.value for i in at.info)
    at.switch_page("pages/scaling.py").run()
    at.switch_page("pages/lab.py").run()  # the uploader is empty now
    held(at).release("released after 10 minutes without use")
    at.run()
    _no_errors(at)
    assert held(at)["image"].name == "chessboard.png" and _highlighted(at) == ["sample_chessboard.png"]
    notes = [i.value for i in at.info if "released after 10 minutes" in i.value]
    assert len(notes) == 1 and "upload **ramp.png** went with them" in notes[0], notes
    assert "back on the sample **chessboard.png**" in notes[0] and "The image is back" not in notes[0]


def test_an_all_zero_kernel_is_said_to_block_everything(at):
    """Review 5: its response is 0 everywhere; it was read as "All-pass ... gain 1.00"."""
    sentence = kernels.frequency_sentence(engine.Kernel("zero", np.zeros((3, 3))))
    assert sentence.startswith("Blocks everything: every frequency has gain 0") and "1.00" not in sentence
    at.selectbox(key="lab_kernel_A").set_value(kernels.TEXT).run()
    at.text_area(key="lab_text_A").input("0 0 0; 0 0 0; 0 0 0").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    assert not held(at)["result"].outputs[0].any()
    text = [c.value for c in at.caption]
    assert sentence in text and not any(t.startswith("All-pass") for t in text), text


def test_python_on_an_image_it_refuses_says_so_instead_of_an_estimate(at):
    """Review 6: python on the 512x512 sample was estimated ("about 43 s" with an 11x11 kernel);
    the engine refuses it. The page now says so before Run, with the size python takes."""
    at.selectbox(key="lab_kernel_A").set_value("gaussian_11x11")
    at.selectbox(key="lab_impl").set_value("python").run()
    _no_errors(at)
    warnings = [w.value for w in at.warning]
    assert not any("will take about" in w for w in warnings), warnings
    refused = [w for w in warnings if w.startswith("Run will be refused")]
    assert len(refused) == 1 and "at most 65,536 pixels (256x256), got 512x512" in refused[0], warnings
    assert not any(c.value.startswith(":material/timer:") for c in at.caption)
    # an image python takes gets its estimate
    at.file_uploader(key="lab_upload").upload("ramp.png", _png(_RAMP), "image/png").run()
    _no_errors(at)
    assert not any(w.value.startswith("Run will be refused") for w in at.warning)
    assert any(c.value.startswith(":material/timer: about") for c in at.caption)


def test_a_file_name_is_escaped_for_markdown_graphviz_and_the_figure(at):
    """Review 7: a quote ended the DOT label; ``$...$`` became math; the report figure failed to
    draw the name as mathtext."""
    name = 'cost $5 and "$10" *x*_[y].png'
    at.file_uploader(key="lab_upload").upload(name, _png(np.full((20, 30, 3), 90, np.uint8)), "image/png").run()
    _no_errors(at)
    shown = md(name)
    assert shown == 'cost \\$5 and "\\$10" \\*x\\*\\_\\[y\\].png'
    assert f"| :material/image: | **{shown}** |" in " ".join(m.value for m in at.markdown)
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at)["result"]
    assert any(c.startswith(f"Original · {shown} · 30x20") for im in at.image for c in im.captions)
    fig = engine.plot.results(r.image.array, r.result, titles=lab.results_titles(r))
    fig.savefig(io.BytesIO(), format="png")  # mathtext would raise here
    at.switch_page("pages/how_it_works.py").run()
    _no_errors(at)
    assert f"The lab's image **{shown}** (30x20" in at.info[0].value
    dot = at.get("graphviz_chart")[0].proto.spec
    m = re.search(r'\n  file \[label="((?:[^"\\]|\\.)*)"\];\n', dot)  # one DOT string, closed where it should be
    assert m, dot[:300]
    assert re.sub(r"\\(.)", r"\1", m.group(1)).splitlines()[0] == name


def test_a_bad_file_with_markdown_in_its_name_is_named_literally(at):
    """Review 7: the error names the file as uploaded, not as markdown would read it."""
    at.file_uploader(key="lab_upload").upload("a_$b$_.png", b"not an image", "image/png").run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "This file cannot be used: a\\_\\$b\\$\\_.png: " in errors[0], errors


def test_the_serial_reference_is_named_by_the_route_it_takes(at):
    """Review 8: on a 16-bit image the reference takes the general and float32 routes, not "one
    OpenCV call"; after a numpy run it is still OpenCV's route, not numpy's. And "1 process"."""
    at.button(key="sample_zone_plate_16bit.png").click().run()
    at.button(key="lab_run").click().run()
    at.slider(key="lab_p_A").set_value(2)
    at.slider(key="lab_p_B").set_value(2).run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    r = held(at)["result"]
    codes = [charts.SerialCode.of(k, np.uint16, r.border, r.output) for k in r.kernels]
    assert [c.route for c in codes] == list(r.result.routes) == ["general", "float32"]
    text = " ".join(c.value for c in at.caption)
    for c in codes:
        assert f"the best serial code, {c.sentence} (route **{c.route}**)" in text
        assert c.label in _chart_text(at)
    assert "one OpenCV call" not in text and "one OpenCV call" not in _chart_text(at)
    assert text.count("Fastest: ") == 2 and "Dashed dark line: the best serial code, OpenCV into float32" in text
    one = pd.DataFrame({"processes": [1, 2], "ms": [10.0, 12.5], "speedup": [1.0, 0.8]})
    assert lab.speedup_caption(one, 0.004, codes[0]).startswith("Fastest: 1 process, 1.00x against 1.")
    # numpy runs; the reference is OpenCV's direct route on this 8-bit image
    at.button(key="sample_astronaut.png").click()
    at.selectbox(key="lab_impl").set_value("numpy").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    assert held(at)["result"].result.routes == ("numpy", "numpy")
    text = " ".join(c.value for c in at.caption)
    assert text.count("the best serial code, one OpenCV call on one thread (route **direct**)") == 2


def test_scaling_names_the_serial_code_by_its_route(at):
    at.button(key="sample_zone_plate_16bit.png").click().run()
    _scaling_set(at, side=128, nmax=1, repeats=1)
    at.button(key="sc_run").click().run()
    _no_errors(at)
    code = charts.SerialCode.of("gaussian", np.uint16, sweep.BORDER, sweep.OUTPUT)
    assert code.route == "float32"
    text = " ".join(c.value for c in at.caption)
    assert f"the best serial code, {code.sentence} (route **float32**)" in text
    assert "one OpenCV call" not in text and "one OpenCV call" not in _chart_text(at)
    assert _chart_text(at).count(code.label) >= 2


def test_sizes_are_shown_in_the_units_they_name(at):
    """Review 9: megapixels and bytes are both decimal (a 1 MP preset of 2**20 pixels reads 1.05 MP
    and 3.15 MB, not "3.00 MB" of MiB), and a 70-byte file is not "0 KB"."""
    at.segmented_control(key="lab_size").set_value("1 MP").run()
    _no_errors(at)
    table = next(m.value for m in at.markdown if "in the lab" in m.value)
    assert "| in the lab | **1024 x 1024 x 3**, 1.05 MP, 3.15 MB in shared memory |" in table, table
    data = _png(np.zeros((1, 1), np.uint8))
    assert len(data) < 1000
    at.segmented_control(key="lab_size").set_value("original")
    at.file_uploader(key="lab_upload").upload("dot.png", data, "image/png").run()
    table = next(m.value for m in at.markdown if "in the lab" in m.value)
    assert f"| file | **{len(data)} B** |" in table and "| in the lab | **1 x 1 x 1**, 0.00 MP, 1 B in shared" in table
    assert sweep.side_label(1024) == "1024x1024 (1.0 MP)" and sweep.side_label(4096) == "4096x4096 (16.8 MP)"
    assert [nbytes(n) for n in (70, 1500, 3 << 20)] == ["70 B", "1.50 kB", "3.15 MB"]


# -- the holdings registry, with a clock of the test's own ------------------------------------------------
class _Held:
    def __init__(self, nbytes, busy=False):
        self.nbytes, self.busy, self.cancelled = nbytes, busy, False

    def held_bytes(self):
        return self.nbytes

    def in_flight(self):
        return self.busy

    def cancel(self):
        self.cancelled = True


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_registry_releases_ended_idle_and_least_recently_used_sessions():
    from pages._ui.holdings import Holdings, Registry

    clock = _Clock()
    idle_calls = []
    reg = Registry(idle_seconds=600, cap_bytes=100, on_idle=lambda: idle_calls.append(clock()), clock=clock)
    a, b, c = (Holdings(clock) for _ in range(3))
    tokens = [reg.start(h) for h in (a, b, c)]
    a["image"], b["image"], c["image"] = _Held(40), _Held(40), _Held(10)
    job = _Held(0, busy=True)
    c["job"] = job
    assert reg.total_bytes() == 90 and reg.sweep() == []
    # a tab closes: its session's holdings go at once
    reg.end(tokens[0])
    assert a.nbytes() == 0 and a.take_note() == "released when the session ended" and reg.total_bytes() == 50
    # over the cap: the least recently used session goes first, never the one whose page runs
    clock.t += 10
    b.touch()
    a["image"] = _Held(70)  # a came back (a reconnect) with a bigger image
    a.touch()
    done = reg.sweep(keep=a)
    assert b.nbytes() == 0 and a.nbytes() == 70 and c.nbytes() == 10 and len(done) == 1 and "under" in done[0]
    # idle: everything not touched for idle_seconds goes, except a session with work in flight
    clock.t += 601
    reg.sweep()
    assert a.nbytes() == 0 and c.nbytes() == 10 and not job.cancelled
    job.busy = False
    reg.sweep()
    assert c.nbytes() == 0 and "without use" in c.take_note() and not idle_calls
    # no session connected and nothing held for idle_seconds: the engine may close
    for t in tokens[1:]:
        reg.end(t)
    reg.sweep()
    clock.t += 601
    assert reg.sweep() == ["idle: nothing held and no session for a while"] and idle_calls == [clock.t]


class _Job:
    """A job of a sweep as ``sweep.advance`` and the holdings see it: done when the test says."""

    def __init__(self, done=False):
        self.finished, self.cancelled = done, False

    def done(self):
        return self.finished or self.cancelled

    def cancel(self):
        self.cancelled = True

    def state(self):
        return "done" if self.done() else "running"

    def progress(self):
        return 0, 1

    def result(self):
        if self.cancelled:
            raise engine.JobCancelled("cancelled")
        return object()


def test_a_sweep_nothing_advances_is_paused_and_released_when_idle(monkeypatch):
    """Only the Scaling page advances a sweep. Left on another page it stays "running", but once
    its job is done it is not in flight: idle and over-cap releases take it (and cancel it)."""
    from pages._ui.holdings import Holdings, Registry

    clock = _Clock()
    reg = Registry(idle_seconds=600, cap_bytes=1 << 30, clock=clock)
    h = Holdings(clock)
    reg.start(h)
    image = np.zeros((64, 64, 1), np.uint8)
    sw = sweep.Sweep(("cfg",), "gaussian", image, [(sweep.POOL, "opencv", 1, 1)], 1)
    job = _Job()
    sw.pending = jobs.Pending(job, sw.config)
    h[sweep.KEY] = sw
    # its job still runs: never released, however long ago the page ran
    clock.t += 601
    assert sw.in_flight() and h.busy() and reg.sweep() == [] and h.nbytes() == image.nbytes
    # the job ends and nothing submits the next one: paused, so idle releases it
    job.finished = True
    assert sw.status == "running" and not sw.in_flight() and not h.busy()
    assert reg.sweep() == ["released after 10 minutes without use"]
    assert h.nbytes() == 0 and sweep.KEY not in h and sw.status == "cancelled" and sw.pending is None
    # the memory cap too: a paused sweep of a recently used session goes when others need memory
    tight = Registry(idle_seconds=600, cap_bytes=image.nbytes - 1, clock=clock)
    h2 = Holdings(clock)
    tight.start(h2)
    h2[sweep.KEY] = sweep.Sweep(("cfg",), "gaussian", image, [(sweep.POOL, "opencv", 1, 1)], 1)
    assert not h2.busy() and len(tight.sweep()) == 1 and h2.nbytes() == 0


def test_a_sweep_the_page_advances_is_in_flight_between_its_jobs(monkeypatch):
    """While ``advance`` runs it (the Scaling page), the sweep is in flight even when no job is,
    e.g. while a finished job is recorded; once advance returns or is interrupted, it is not."""
    submitted, seen = [], []

    def submit(sw, backend, impl, p):
        submitted.append(_Job(done=True))
        return submitted[-1]

    monkeypatch.setattr(sweep, "_submit", submit)
    monkeypatch.setattr(sweep, "_record", lambda sw, *args: seen.append(sw.in_flight()))
    todo = [(sweep.POOL, "opencv", p, rep) for rep in (0, 1) for p in (1, 2)]
    sw = sweep.Sweep(("cfg",), "gaussian", np.zeros((8, 8, 1), np.uint8), list(todo), len(todo))

    class Bar:
        def empty(self):
            pass

    sweep.advance(sw, Bar())
    assert seen == [True] * 4 and len(submitted) == 4 and sw.status == "done" and not sw.in_flight()

    class Rerun(Exception):
        pass

    def interrupted(*args):
        raise Rerun  # Streamlit stops a script run by raising in it

    sw = sweep.Sweep(("cfg",), "gaussian", np.zeros((8, 8, 1), np.uint8), list(todo), len(todo))
    monkeypatch.setattr(sweep, "_record", interrupted)
    with pytest.raises(Rerun):
        sweep.advance(sw, Bar())
    assert sw.status == "running" and not sw.advancing and not sw.in_flight()


def test_holdings_release_cancels_work_and_forgets_the_session():
    import weakref

    from pages._ui.holdings import Holdings, Registry

    reg = Registry(idle_seconds=600, cap_bytes=1 << 30)
    h = Holdings()
    reg.adopt(h)
    job = _Held(5, busy=True)
    h["job"] = job
    assert h.busy() and h.release("released when the session ended") == 5 and job.cancelled
    with pytest.raises(KeyError, match="unknown holdings key"):
        h["lab_result"] = 1
    ref = weakref.ref(h)
    del h
    gc.collect()
    assert ref() is None and reg.sessions() == []  # the registry holds sessions weakly


_UI_MODULES = sorted(p.stem for p in (ROOT / "pages" / "_ui").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", _UI_MODULES)
def test_the_ui_modules_doctests_hold(name):
    """pytest collects doctests in engine/ only (pages/ holds Streamlit scripts): run the UI
    helpers' examples here, so that none of them rots."""
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(f"pages._ui.{name}"), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in pages/_ui/{name}.py"


def test_the_speedup_caption_names_the_amdahl_curve_by_its_dots_and_only_when_drawn():
    """The speedup chart draws the ideal line dashed and Amdahl's fit dotted (as engine.plot does);
    the caption called the fit "Dashed", and named it on a one-point sweep that has no fit."""
    def summary(counts):
        rows = [{"backend": sweep.POOL, "implementation": "opencv", "processes": p, "repeat": 1,
                 "seconds": 0.01 * (0.1 + 0.9 / p)} for p in counts]
        return charts.sweep_summary(sweep.Sweep(None, "gaussian", np.zeros((1, 1, 1), np.uint8), [], 0,
                                                runs=rows).frame(), cpus=2)

    two = summary([1, 2])
    layers = charts.speedup_chart(two, 2, 2).to_dict()["layer"]
    dashes = {json.dumps(ly["mark"].get("strokeDash")) for ly in layers if isinstance(ly.get("mark"), dict)}
    assert {"[5, 4]", "[2, 3]"} <= dashes  # ideal dashed, Amdahl dotted
    text = sweep.speedup_sentence(two)
    assert text.endswith(" Dashed grey: the ideal, speedup = processes. Dotted: Amdahl's law fitted to the "
                         "medians, counting at most the CPUs as parallel."), text
    one = sweep.speedup_sentence(summary([1]))
    assert one == "**opencv** reached 1.00x on 1 process (ideal 1x). Dashed grey: the ideal, speedup = processes.", one
