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
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

import engine
from pages._ui import charts, explain, images, jobs, kernels, lab, sweep

pytestmark = pytest.mark.usefixtures("app_engine")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard.py")
TIMEOUT = 60


@pytest.fixture
def at():
    """A fresh session of the whole app, released (with its shared arrays) after the test."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    yield app
    pending = app.session_state["lab_job"] if "lab_job" in app.session_state else None
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


def _chart_rows(app: AppTest, description: str):
    """The data behind the Vega-Lite chart with this top-level description."""
    for el in app.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        if spec.get("description") == description:
            return dataframe_util.convert_arrow_bytes_to_pandas_df(el.proto.datasets[0].data.data)
    raise AssertionError(f"no chart described {description!r}")


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

    r = at.session_state["lab_result"]
    original = engine.load_image(images.SAMPLES_DIR / "digits.png")
    assert np.array_equal(r.image.array, original)
    for i, (name, p) in enumerate([("edge_y", 2), ("box_5x5", 1)]):
        expected = eng.filter_image(original, name, processes=p, border="reflect", output="abs")
        assert r.outputs[i].dtype == expected.dtype and np.array_equal(r.outputs[i], expected), name
        # what the page shows is that output, mapped for display
        assert np.array_equal(_decode_png(r.png[i]), images.to_display(expected))
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
    r = at.session_state["lab_result"]
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
    r = at.session_state["lab_result"]
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
    r = at.session_state["lab_result"]
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
    r = at.session_state["lab_result"]
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
    assert "lab_result" not in at.session_state or at.session_state["lab_result"] is None
    at.text_area(key="lab_text_B").input("1/16 2/16 1/16; 2/16 4/16 2/16; 1/16 2/16 1/16").run()
    at.button(key="lab_run").click().run()
    _no_errors(at)
    assert at.session_state["lab_result"].kernels[1].weights.sum() == pytest.approx(1.0)


def test_a_stale_job_is_cancelled_when_the_settings_change(at, app_engine):
    """A job made for other settings (as if a widget changed while it ran) is cancelled, not awaited."""
    slow = np.random.default_rng(1).integers(0, 256, (256, 256, 1), dtype=np.uint8)
    job = app_engine.submit(slow, engine.FilterRequest(["gaussian"], implementation="python"), processes=2)
    at.session_state["lab_job"] = jobs.Pending(job, settings=("other image",))
    at.run()
    _no_errors(at)
    assert any("cancelled" in t.value for t in at.toast)
    job.exception(timeout=30)
    assert job.state() == "cancelled"
    assert at.session_state["lab_job"] is None


def test_run_clicked_again_restarts_instead_of_queueing(at, app_engine):
    slow = np.random.default_rng(2).integers(0, 256, (256, 256, 1), dtype=np.uint8)
    job = app_engine.submit(slow, engine.FilterRequest(["gaussian"], implementation="python"), processes=2)
    at.session_state["lab_job"] = jobs.Pending(job, settings=("whatever",))
    at.button(key="lab_run").click().run()
    _no_errors(at)
    job.exception(timeout=30)
    assert job.state() == "cancelled"
    assert any("restarted" in t.value for t in at.toast)
    assert at.session_state["lab_result"].run_id == 1


def test_python_implementation_on_a_big_image_explains_itself(at):
    at.selectbox(key="lab_impl").set_value("python").run()
    at.button(key="lab_run").click().run()
    assert not at.exception
    assert any("256" in e.value for e in at.error), [e.value for e in at.error]


# -- Scaling ------------------------------------------------------------------------------------
def test_scaling_sweep_plots_time_speedup_and_efficiency(at, deferred):
    at.switch_page("pages/scaling.py").run()
    _no_errors(at)
    at.select_slider(key="sc_side").set_value(128)
    at.multiselect(key="sc_impls").set_value(["opencv", "numpy", "python"])
    at.slider(key="sc_nmax").set_value(2)
    at.slider(key="sc_repeats").set_value(2)
    at.run()
    at.button(key="sc_run").click().run()
    _no_errors(at)
    sw = at.session_state["sweep"]
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
    at.switch_page("pages/scaling.py").run()
    at.select_slider(key="sc_side").set_value(512)
    at.multiselect(key="sc_impls").set_value(["opencv", "python"]).run()
    assert any("python runs only on images up to 256x256" in w.value for w in at.warning)
    # a sweep made for other settings is stopped, and what it measured is kept
    from pages._ui import sweep

    sw = sweep.Sweep(("other",), "gaussian", np.zeros((8, 8, 1), np.uint8), [("opencv", 1, 1)], 1)
    at.session_state["sweep"] = sw
    at.run()
    assert not at.exception
    assert sw.status == "stopped"
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
    r = at.session_state["lab_result"]
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


@pytest.mark.parametrize("page", ["lab.py", "scaling.py", "how_it_works.py"])
def test_each_page_also_runs_on_its_own(page):
    """A page needs nothing from the entry point: AppTest can run the file alone."""
    app = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=TIMEOUT).run()
    _no_errors(app)
    assert app.title[0].value in ("Filter lab", "Scaling", "How it works")
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


def test_min_band_pixels_mirror_matches_the_engine():
    from engine import _bands  # the page's caption quotes the engine's rule

    assert explain.MIN_BAND_PIXELS == _bands.MIN_BAND_PIXELS


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
