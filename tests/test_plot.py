"""``engine.plot`` and the scaling sweep it draws: figures with the expected axes, bars and labels,
rendered to PNG, SVG and PDF without a display; ``import engine`` leaves matplotlib alone."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

import engine
from engine import Scaling, ScalingRun, plot

ROOT = Path(__file__).resolve().parent.parent
STYLE = engine.TIMELINE_STYLE


def test_import_engine_does_not_import_matplotlib():
    code = ("import sys, engine; before = 'matplotlib' in sys.modules; p = engine.plot; import engine.plot as q; "
            "print(before, 'matplotlib' in sys.modules, p is q, 'matplotlib.pyplot' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True", "True", "False"]  # and never pyplot


def test_engine_has_no_other_lazy_attributes():
    with pytest.raises(AttributeError, match="has no attribute 'plott'"):
        engine.plott  # noqa: B018


# -- results -----------------------------------------------------------------------------------
def test_results_one_axes_per_image_with_titles(rng):
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    fig = plot.results(img, [img, img // 2], titles=["in", "same", "half"])
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["in", "same", "half"]
    assert all(len(ax.images) == 1 and not ax.axison for ax in fig.axes)
    shown = fig.axes[2].images[0].get_array()
    assert shown.shape == (30, 40, 3) and np.allclose(shown, (img // 2) / 255)


def test_results_of_a_pair_result_titles_each_filter(eng):
    img = np.zeros((24, 24, 1), np.uint8)
    res = eng.filter_pair(img, "sobel", "gaussian", processes=(2, 1))
    titles = [ax.get_title() for ax in plot.results(img, res).axes]
    assert titles[0] == "original"
    assert titles[1].startswith("A · sobel · 2 processes · ") and titles[1].endswith(" ms")
    assert titles[2].startswith("B · gaussian · 1 process · ")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_images_use_a_gray_colormap_over_the_whole_range(dtype):
    top = np.iinfo(dtype).max
    img = np.linspace(0, top // 2, 64, dtype=dtype).reshape(8, 8)  # only the lower half of the range
    for a in (img, img[:, :, None]):
        im = plot.results(a, [a]).axes[0].images[0]
        assert im.get_cmap().name == "gray"
        assert im.get_clim() == (0, top)  # never stretched to the image's own max
        assert np.array_equal(im.get_array(), img)


def test_16_bit_colour_and_alpha_are_scaled_by_the_full_range():
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[0, 0] = (65535, 32768, 257)
    shown = plot.results(rgb, [rgb]).axes[0].images[0].get_array()
    assert np.allclose(shown[0, 0], [1.0, 32768 / 65535, 1 / 255])
    la = np.dstack([np.full((4, 4), 1000, np.uint16), np.full((4, 4), 65535, np.uint16)])
    shown = plot.results(la, [la]).axes[0].images[0].get_array()
    assert shown.shape == (4, 4, 4) and np.allclose(shown[0, 0], [1000 / 65535] * 3 + [1.0])


def test_big_images_are_downscaled_for_the_figure():
    big = np.zeros((3000, 1200, 3), np.uint8)
    im = plot.results(big, [big]).axes[1].images[0]
    assert im.get_array().shape == (plot.MAX_SIDE, 640, 3)
    assert plot.results(big, [big], max_side=300).axes[0].images[0].get_array().shape == (300, 120, 3)


@pytest.mark.parametrize("outputs, titles, error, message", [
    ([np.zeros((8, 9), np.uint8)], None, ValueError, r"outputs\[0\] must have the image's shape \(8, 8\), got \(8, 9\)"),
    ([np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)], None, ValueError, r"outputs\[1\] must have"),
    ([np.zeros((8, 8), np.float32)], None, ValueError, r"outputs\[0\] dtype must be uint8 or uint16"),
    (["not an image"], None, TypeError, r"outputs\[0\] must be a numpy.ndarray"),
    ([], None, ValueError, "outputs must hold at least one array"),
    ([np.zeros((8, 8), np.uint8)], ["only one"], ValueError, r"titles must be 2 strings"),
])
def test_results_bad_input_names_the_parameter(outputs, titles, error, message):
    with pytest.raises(error, match=message):
        plot.results(np.zeros((8, 8), np.uint8), outputs, titles=titles)



@pytest.mark.parametrize("kwargs, error, message", [
    ({"outputs": None}, TypeError, r"^outputs must be an array, a sequence of arrays or a JobResult, got NoneType$"),
    ({"outputs": 5}, TypeError, r"^outputs must be an array, a sequence of arrays or a JobResult, got int$"),
    ({"titles": 5}, ValueError, r"^titles must be 2 strings \(the original's, then each output's\), got 5$"),
    ({"titles": (t for t in "ab")}, ValueError, r"^titles must be 2 strings .*got <generator"),
    ({"max_side": 0}, ValueError, r"^max_side must be an integer >= 1, got 0$"),
    ({"max_side": "big"}, TypeError, r"^max_side must be an integer >= 1, got 'big'$"),
])
def test_results_arguments_of_the_wrong_kind_name_the_parameter(kwargs, error, message):
    """They raised Python's own words ("'NoneType' object is not iterable", "object of type 'int'
    has no len()"), or drew a 1x1 picture for max_side=0."""
    args = {"outputs": [np.zeros((8, 8), np.uint8)], **kwargs}
    with pytest.raises(error, match=message):
        plot.results(np.zeros((8, 8), np.uint8), args.pop("outputs"), **args)


def test_results_bad_image_names_the_image():
    with pytest.raises(ValueError, match="image must be 2-D"):
        plot.results(np.zeros((2, 2, 2, 2), np.uint8), [np.zeros((2, 2, 2, 2), np.uint8)])


# -- timeline ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair_run(eng):
    img = np.random.default_rng(3).integers(0, 256, (1024, 1024), dtype=np.uint8)  # 4 bands a filter
    return img, eng.filter_pair(img, "sobel", "gaussian", processes=(2, 1))


def test_timeline_one_bar_per_band_with_the_dashboards_colours_and_labels(pair_run):
    img, res = pair_run
    assert len(res.timeline) > 3  # more bands than workers: rows hold several bars
    ax = plot.timeline(res).axes[0]
    bars = ax.patches
    assert len(bars) == len(res.timeline)
    # each bar spans its band, in milliseconds, on its worker's row, in its filter's colour
    workers = sorted({(r.filter, r.pid) for r in res.timeline})
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [STYLE.worker(f, pid) for f, pid in workers]
    got = sorted((round(b.get_x(), 6), round(b.get_width(), 6), round(b.get_y() + b.get_height() / 2), to_hex(b.get_facecolor()))
                 for b in bars)
    want = sorted((round(r.start * 1e3, 6), round((r.end - r.start) * 1e3, 6), workers.index((r.filter, r.pid)),
                   STYLE.colors[STYLE.letter(r.filter)]) for r in res.timeline)
    assert got == want
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(r.band for r in res.timeline)
    assert ax.get_xlabel() == STYLE.x_title == "milliseconds since the job started"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["filter A", "filter B"]
    assert ax.get_title(loc="left") == "Band timeline (A: sobel · B: gaussian)"


def test_timeline_labels_are_the_dashboards(pair_run):
    from pages._ui import charts

    _, res = pair_run
    frame = charts.timeline_frame(res, ("sobel", "gaussian"))
    ax = plot.timeline(res).axes[0]
    assert {t.get_text() for t in ax.get_yticklabels()} == set(frame["worker"])
    assert charts.FILTER_COLORS == dict(STYLE.colors) == {"A": "#1c83e1", "B": "#ff8700"}
    spec = charts.gantt_chart(frame).to_dict()
    assert STYLE.x_title in str(spec) and f"'{STYLE.legend_prefix}' + datum.label" in str(spec)


def test_timeline_of_one_filter_and_bad_input(eng):
    res = eng.submit(np.zeros((40, 8), np.uint8), engine.FilterRequest(["laplacian"]), processes=1).result()
    ax = plot.timeline(res, kernel_names=["mine"]).axes[0]
    assert len(ax.patches) == len(res.timeline) and ax.get_title(loc="left") == "Band timeline (A: mine)"
    with pytest.raises(TypeError, match="result must be a JobResult"):
        plot.timeline(np.zeros((4, 4), np.uint8))
    empty = engine.JobResult(outputs=(), timeline=(), phases=None, kernels=(), processes=())
    with pytest.raises(ValueError, match="timeline is empty"):
        plot.timeline(empty)


def test_pair_is_results_above_the_timeline(pair_run):
    img, res = pair_run
    fig = plot.pair(img, res)
    top, bottom = fig.subfigs
    assert len(top.axes) == 3 and len(bottom.axes) == 1
    assert len(bottom.axes[0].patches) == len(res.timeline)


# -- scaling -----------------------------------------------------------------------------------
def _sweep(s=0.2, cpus=4, counts=(1, 2, 3, 4, 6), repeats=3, impl="opencv"):
    runs = [ScalingRun(p, rep, (s + (1 - s) / min(p, cpus)) * (1 + 0.01 * rep)) for rep in range(1, repeats + 1)
            for p in counts]
    return Scaling(tuple(runs), cpus, kernel="gaussian", implementation=impl, shape=(64, 32, 3))


def test_scaling_figure_time_speedup_efficiency_with_ideal_and_amdahl():
    sc = _sweep()
    fig = plot.scaling(sc)
    ax_t, ax_s, ax_e = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["Time", "Speedup", "Efficiency"]
    assert len(ax_t.collections[0].get_offsets()) == len(sc.runs)  # every run a dot
    lines = {tuple(np.round(line.get_ydata(), 6)) for line in ax_s.lines}
    assert tuple(np.round(sc.speedup, 6)) in lines  # measured
    assert tuple(float(p) for p in range(1, 7)) in lines  # ideal y = p
    amdahl = [line for line in ax_s.lines if line.get_linestyle() == ":" and len(line.get_xdata()) == 60]
    assert len(amdahl) == 1 and np.allclose(amdahl[0].get_ydata(), engine.amdahl_speedup(amdahl[0].get_xdata(), 0.2, 4),
                                            rtol=1e-2)
    assert [line.get_ydata().tolist() for line in ax_e.lines if line.get_marker() == "o"] == [sc.efficiency.tolist()]
    assert any(t.get_text() == "4 CPUs" for t in ax_s.texts)  # 6 processes > 4 CPUs: the rule is drawn
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0].startswith("opencv, Amdahl s = 20.") and "ideal" in legend
    assert fig.get_suptitle().startswith("gaussian on 32x64x3, median of 3 runs per point, 4 CPUs")


def test_scaling_figure_of_several_series_in_given_colours():
    fig = plot.scaling({"opencv": _sweep(), "numpy": _sweep(0.5, impl="numpy")}, colors={"numpy": "#21a366"})
    measured = [line for line in fig.axes[2].lines if line.get_marker() == "o"]
    assert [to_hex(line.get_color()) for line in measured] == [plot.SERIES_COLORS[0], "#21a366"]
    assert [t.get_text().split(",")[0] for t in fig.legends[0].get_texts()][:2] == ["opencv", "numpy"]
    with pytest.raises(TypeError, match="sweep must be a Scaling"):
        plot.scaling([_sweep()])
    with pytest.raises(TypeError, match="sweep must be a Scaling"):
        plot.scaling({})


# -- render ------------------------------------------------------------------------------------
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_render_without_a_display(pair_run, fmt):
    img, res = pair_run
    for fig in (plot.pair(img, res), plot.scaling(_sweep())):
        data = plot.render(fig, fmt)
        assert data.startswith(MAGIC[fmt])
        if fmt == "png":  # decodes, at 200 dpi
            w, h = Image.open(io.BytesIO(data)).size
            assert (w, h) == tuple(round(x * plot.DPI) for x in fig.get_size_inches())
        if fmt == "svg":
            assert b"<svg" in data[:1000] and data.rstrip().endswith(b"</svg>")
        if fmt == "pdf":
            assert data.rstrip().endswith(b"%%EOF")


def test_render_refuses_other_formats():
    with pytest.raises(ValueError, match="format must be one of png, svg, pdf, got 'jpg'"):
        plot.render(Figure(), "jpg")


# -- the sweep ---------------------------------------------------------------------------------
def test_scaling_numbers():
    sc = _sweep(repeats=1)
    assert sc.processes.tolist() == [1, 2, 3, 4, 6]
    assert np.allclose(sc.speedup, [1 / (0.2 + 0.8 / min(p, 4)) for p in (1, 2, 3, 4, 6)])
    assert np.allclose(sc.efficiency, sc.speedup / sc.processes)
    t1, s = sc.amdahl
    assert t1 == pytest.approx(1.01) and s == pytest.approx(0.2)
    rows = sc.table()
    assert [r["processes"] for r in rows] == [1, 2, 3, 4, 6] and rows[3]["amdahl"] == pytest.approx(2.5)
    text = str(sc)
    assert "Amdahl serial fraction 20.0% on 4 CPUs: at most 5.0x on any number of cores" in text
    # medians over repeats; no 1-process run: the fewest processes scaled linearly
    sc = Scaling((ScalingRun(2, 1, 1.0), ScalingRun(2, 2, 3.0), ScalingRun(2, 3, 1.2), ScalingRun(4, 1, 0.6)), cpus=4)
    assert sc.medians.tolist() == [1.2, 0.6] and sc.speedup.tolist() == [2.0, 4.0]
    one = Scaling((ScalingRun(1, 1, 1.0),), cpus=4)
    assert one.amdahl is None and math.isnan(one.serial_fraction) and "needs at least two" in str(one)
    with pytest.raises(ValueError, match="runs must be a non-empty sequence of ScalingRun"):
        Scaling((), cpus=1)


def test_amdahl_fit_recovers_the_serial_fraction():
    p = np.array([1, 2, 3, 4])
    t = 10 * (0.2 + 0.8 / np.minimum(p, 4))
    t1, s = engine.amdahl_fit(p, t, cpus=4)
    assert t1 == pytest.approx(10) and s == pytest.approx(0.2)
    assert engine.amdahl_fit([1, 1], [1.0, 1.1], cpus=2) is None
    assert engine.amdahl_fit([2, 4], [1.0, 1.0], cpus=2) is None  # both past the CPUs: one effective count


def test_measure_scaling_runs_every_count_repeats_times(eng):
    img = np.random.default_rng(1).integers(0, 256, (200, 64), dtype=np.uint8)
    sc = engine.measure_scaling(img, "sobel", processes=[3, 1, 2], repeats=2, output="abs", engine=eng)
    assert [(r.processes, r.repeat) for r in sc.runs] == [(3, 1), (1, 1), (2, 1), (3, 2), (1, 2), (2, 2)]
    assert all(r.seconds > 0 and r.compute > 0 and r.bands >= r.processes for r in sc.runs)
    assert sc.kernel == "sobel" and sc.shape == (200, 64) and sc.cpus == eng.cpus
    assert sc.processes.tolist() == [1, 2, 3] and len(sc.table()) == 3


@pytest.mark.parametrize("kwargs, error, message", [
    ({"processes": [0, 1]}, ValueError, r"processes must be distinct integers from 1 to 4 .*got \[0, 1\]"),
    ({"processes": [1, 1]}, ValueError, "processes must be distinct"),
    ({"processes": [1, 5]}, ValueError, r"from 1 to 4 \(the engine's max_workers\), got \[1, 5\]"),
    ({"processes": []}, ValueError, r"got \[\]"),
    ({"processes": 2}, TypeError, "processes must be distinct integers"),
    ({"processes": [1.5]}, ValueError, "processes must be distinct integers"),
    ({"repeats": 0}, ValueError, "repeats must be an integer >= 1, got 0"),
    ({"border": "nearest"}, ValueError, "border"),
    ({"kernel": "blurry"}, ValueError, "'blurry' is not a known kernel"),
    ({"engine": "local"}, TypeError, r"^engine must be an engine\.Engine or None, got str$"),
])
def test_measure_scaling_validates_before_any_run(eng, kwargs, error, message):
    args = {"kernel": "sobel", "engine": eng, **kwargs}
    with pytest.raises(error, match=message):
        engine.measure_scaling(np.zeros((8, 8), np.uint8), args.pop("kernel"), **args)


@pytest.mark.parametrize("seconds, want", [
    ([10.0, 4.0], (9.6, 0.0)),  # faster than linear: s = 0, T1 = sum(t/p) / sum(1/p^2) = 12 / 1.25
    ([1.0, 2.0], (1.5, 1.0)),  # slower with more processes: s = 1, T1 = the mean time
])
def test_amdahl_fit_at_a_bound_is_the_least_squares_fit_there(seconds, want):
    """With s held at 0 or 1 the fitted T1 is the best one for that s, not the unconstrained
    fit's leftover term (which gave T1 = 12 and 3, above every measured time)."""
    t1, s = engine.amdahl_fit([1, 2], seconds, cpus=2)
    assert (t1, s) == (pytest.approx(want[0], rel=1e-12), want[1])


@pytest.mark.parametrize("make, error, message", [
    (lambda: ScalingRun(1, 1, 0.0), ValueError, r"^seconds must be a finite number > 0 \(a run's wall time\), got 0\.0$"),
    (lambda: ScalingRun(1, 1, -1.0), ValueError, r"^seconds must be a finite number > 0 .*got -1\.0$"),
    (lambda: ScalingRun(1, 1, math.nan), ValueError, r"^seconds must be a finite number > 0 .*got nan$"),
    (lambda: ScalingRun(1, 1, "1"), TypeError, r"^seconds must be a finite number > 0 .*got '1'$"),
    (lambda: ScalingRun(0, 1, 1.0), ValueError, r"^processes must be an integer >= 1, got 0$"),
    (lambda: ScalingRun(1.5, 1, 1.0), TypeError, r"^processes must be an integer >= 1, got 1\.5$"),
    (lambda: ScalingRun(1, 0, 1.0), ValueError, r"^repeat must be an integer >= 1, got 0$"),
    (lambda: Scaling((ScalingRun(1, 1, 1.0),), cpus=0), ValueError, r"^cpus must be an integer >= 1, got 0$"),
    (lambda: Scaling((ScalingRun(1, 1, 1.0),), cpus=True), TypeError, r"^cpus must be an integer >= 1, got True$"),
])
def test_a_run_or_sweep_that_is_no_measurement_is_refused(make, error, message):
    """A zero time gave speedups of inf and nan (and a figure that could not set its limits);
    0 processes or 0 CPUs divided by zero in the fit."""
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("args, error, message", [
    (([1, 2], [1.0], 2), ValueError, r"^processes and seconds must be 1-D and of one length, got 2 and 1$"),
    (([0, 1], [1.0, 1.0], 2), ValueError, r"^processes must be integers >= 1, got \[0, 1\]$"),
    (([1, 2], [1.0, math.nan], 2), ValueError, r"^seconds must be finite and >= 0, got \[1\.0, nan\]$"),
    (([1, 2], [1.0, -1.0], 2), ValueError, r"^seconds must be finite and >= 0, got \[1\.0, -1\.0\]$"),
    (([1, 2], [1.0, 0.5], 0), ValueError, r"^cpus must be an integer >= 1, got 0$"),
])
def test_amdahl_fit_bad_input_names_the_parameter(args, error, message):
    with pytest.raises(error, match=message):
        engine.amdahl_fit(*args[:2], cpus=args[2])


@pytest.mark.parametrize("runs", [
    (ScalingRun(1, 1, 1.0),),  # one point
    (ScalingRun(2, 1, 1.0), ScalingRun(4, 1, 0.9)),  # both at or past the 2 CPUs: one effective count
])
def test_scaling_figure_without_a_fit_has_no_amdahl_in_its_legend(runs):
    sc = Scaling(runs, cpus=2)
    assert sc.amdahl is None
    fig = plot.scaling(sc)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["opencv", "ideal"]
    assert not [line for line in fig.axes[1].lines if len(line.get_xdata()) == 60]  # no Amdahl curve drawn



def test_scaling_colors_and_timeline_names_of_the_wrong_kind_name_the_parameter(pair_run):
    """They raised "dictionary update sequence element #0 has length 3" and "'int' object is not
    iterable"."""
    with pytest.raises(TypeError, match=r"^colors must be a mapping of series label to colour, got list$"):
        plot.scaling(_sweep(), colors=["red"])
    with pytest.raises(TypeError, match=r"^kernel_names must be a sequence of str, got int$"):
        plot.timeline(pair_run[1], kernel_names=5)
