"""Figures for reports and notebooks, with matplotlib: results side by side, the band timeline,
the scaling sweep.

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot``: no global state
and no GUI backend, so it is safe in the Streamlit server's threads and in scripts without a
display. In Jupyter a Figure shows itself as a cell's value; save one with ``fig.savefig(path)``,
or get bytes with ``render(fig, "svg")``. ``import engine`` does not import matplotlib: this
module does, when it is first used (``engine.plot`` or ``import engine.plot``).

Examples
--------
>>> import numpy as np, engine
>>> img = np.zeros((8, 8), np.uint8); img[2:6, 2:6] = 200
>>> pair = engine.filter_pair(img, "sobel", "gaussian", processes=(1, 1))
>>> fig = engine.plot.pair(img, pair)
>>> render(fig, "png")[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from ._scaling import Scaling, amdahl_speedup
from ._timeline import TIMELINE_STYLE
from ._validate import check_image

__all__ = ["results", "timeline", "pair", "scaling", "render", "FORMATS", "DPI", "MAX_SIDE"]

#: Formats ``render`` writes, with their MIME types.
FORMATS = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
#: Resolution of PNGs (and of the images embedded in SVG and PDF).
DPI = 200
#: ``results`` shows images downscaled to at most this many pixels a side: plenty for print,
#: and an SVG or PDF of a 16-megapixel photo stays small.
MAX_SIDE = 1600
#: Colours of scaling series with no colour given (the dashboard's opencv, numpy, python first).
SERIES_COLORS = ("#1c83e1", "#21a366", "#9a5cf0", "#e8384f", "#ff8700", "#a16207", "#0fb5ae", "#db2777")
_IDEAL = "#9aa5b1"
_PANEL = 3.2  # inches per image or chart
_render_lock = threading.Lock()  # matplotlib's text and font caches are shared by every figure


def results(image: np.ndarray, outputs, *, titles=None, max_side: int = MAX_SIDE) -> Figure:
    """The original and the filtered images side by side, as the Filter lab shows them.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, uint8 or uint16, C in 1..4.
    outputs : numpy.ndarray, sequence of numpy.ndarray or JobResult
        Results with the image's shape; a ``JobResult`` gives its two outputs and titles.
    titles : sequence of str, optional
        One per panel: the original's, then each output's. Default ``"original"`` and
        ``"result 1"``, ... (for a ``JobResult``: letter, kernel, processes and wall time).
    max_side : int
        Larger images are downscaled (area averaging) to this many pixels a side first.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per image, without ticks.

    Raises
    ------
    TypeError, ValueError
        An image or output that is not a valid image, an output whose shape differs from the
        image's, or the wrong number of titles; the message names the parameter.

    Notes
    -----
    Gray images are drawn with the ``gray`` colormap over the dtype's whole range (0..255 or
    0..65535: never stretched to the image's own minimum and maximum), colour ones scaled to
    0..1 by that range, so 16-bit images look as their values say. Alpha is kept.

    Examples
    --------
    >>> img = np.zeros((8, 8), np.uint16); img[2:6, 2:6] = 60000
    >>> fig = results(img, [img // 2], titles=["original", "halved"])
    >>> [ax.get_title() for ax in fig.axes], fig.axes[0].images[0].get_clim()
    (['original', 'halved'], (0.0, 65535.0))
    """
    _check_max_side(max_side)
    panels, default = _outputs(image, outputs)
    names = _titles(titles, default, len(panels))
    fig = Figure(figsize=_results_size(panels[0], len(panels)), layout="constrained")
    _draw_results(fig, panels, names, max_side)
    return fig


def timeline(result, *, kernel_names=None) -> Figure:
    """The band timeline of a run: one row per worker process, one bar per band.

    The same chart as the Filter lab's, with its colours and labels (``engine.TIMELINE_STYLE``):
    rows ``"A · pid 4242"`` (filter A's workers first, then B's, by pid), bars from each band's
    start to its end in milliseconds since the job started, coloured by filter, each with its
    band number.

    Parameters
    ----------
    result : JobResult
        From ``filter_pair`` or ``Engine.submit(...).result()`` (one or two filters).
    kernel_names : sequence of str, optional
        Names for the title; default the result's kernels' names.

    Returns
    -------
    matplotlib.figure.Figure
        One axes; its ``patches`` are the bars, one per ``BandRecord`` of ``result.timeline``.

    Raises
    ------
    TypeError
        ``result`` has no ``timeline``, or ``kernel_names`` is not a sequence.
    ValueError
        The timeline is empty.

    Examples
    --------
    >>> import engine
    >>> pair = engine.filter_pair(np.zeros((8, 8), np.uint8), "sobel", "gaussian", processes=(1, 1))
    >>> ax = timeline(pair).axes[0]
    >>> len(ax.patches) == len(pair.timeline), ax.get_xlabel()
    (True, 'milliseconds since the job started')
    """
    records, names = _records(result, kernel_names)
    fig = Figure(figsize=(2.5 * _PANEL, _timeline_height(records)), layout="constrained")
    _draw_timeline(fig, records, names)
    return fig


def pair(image: np.ndarray, result, *, titles=None, max_side: int = MAX_SIDE) -> Figure:
    """``results`` above ``timeline`` in one figure: a whole ``filter_pair`` run for a report.

    Parameters as in ``results`` (``result`` is the ``JobResult``) and ``timeline``.

    Examples
    --------
    >>> import engine
    >>> img = np.zeros((8, 8, 3), np.uint8)
    >>> fig = pair(img, engine.filter_pair(img, "sobel", "gaussian", processes=(1, 1)))
    >>> len(fig.subfigs), len(fig.axes)
    (2, 4)
    """
    _check_max_side(max_side)
    panels, default = _outputs(image, result)
    names = _titles(titles, default, len(panels))
    records, kernel_names = _records(result, None)
    w, h_top = _results_size(panels[0], len(panels))
    h_bottom = _timeline_height(records)
    fig = Figure(figsize=(w, h_top + h_bottom), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(h_top, h_bottom))
    _draw_results(top, panels, names, max_side)
    _draw_timeline(bottom, records, kernel_names)
    return fig


def scaling(sweep, *, colors=None) -> Figure:
    """Time, speedup and efficiency of a scaling sweep, against the ideal, with Amdahl's law.

    The Scaling page's three charts: every run as a dot and the medians as a line; measured
    speedup with the ideal line ``y = p`` (dashed) and the Amdahl fit (dotted); efficiency
    (speedup / processes) against 100 %. A dotted vertical line marks the CPU count.

    Parameters
    ----------
    sweep : Scaling or mapping of str to Scaling
        One sweep (``measure_scaling``), or several labelled series (say one per implementation)
        drawn together with a legend.
    colors : mapping of str to colour, optional
        Colour per series label; default a fixed palette.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes titled ``"Time"``, ``"Speedup"`` and ``"Efficiency"``.

    Raises
    ------
    TypeError
        ``sweep`` is not a ``Scaling`` or a non-empty mapping of them, or ``colors`` is not a mapping.

    Examples
    --------
    >>> from engine import Scaling, ScalingRun
    >>> sc = Scaling(tuple(ScalingRun(p, 1, 0.1 + 0.9 / p) for p in (1, 2, 3, 4)), cpus=4)
    >>> [ax.get_title() for ax in scaling(sc).axes]
    ['Time', 'Speedup', 'Efficiency']
    """
    series = _series(sweep)
    if colors is not None and not isinstance(colors, Mapping):
        raise TypeError(f"colors must be a mapping of series label to colour, got {type(colors).__name__}")
    colors = dict(colors or {})
    for i, label in enumerate(series):
        colors.setdefault(label, SERIES_COLORS[i % len(SERIES_COLORS)])
    fig = Figure(figsize=(3 * _PANEL, _PANEL + 0.4), layout="constrained")
    ax_t, ax_s, ax_e = fig.subplots(1, 3)
    n_max = max(int(sc.processes.max()) for sc in series.values())
    cpus = max(sc.cpus for sc in series.values())
    p_ideal = np.arange(1, n_max + 1)
    ax_s.plot(p_ideal, p_ideal, ls="--", color=_IDEAL, lw=1, label="ideal")
    ax_e.axhline(1.0, ls="--", color=_IDEAL, lw=1)
    for label, sc in series.items():
        c, p = colors[label], sc.processes
        ax_t.scatter([r.processes for r in sc.runs], [r.seconds * 1e3 for r in sc.runs], s=12, alpha=0.45, color=c,
                     lw=0)
        fit = f", Amdahl s = {sc.serial_fraction:.1%}" if sc.amdahl is not None else ""
        ax_t.plot(p, sc.medians * 1e3, marker="o", ms=4, color=c, label=label + fit)
        ax_s.plot(p, sc.speedup, marker="o", ms=4, color=c)
        if sc.amdahl is not None:
            grid = np.linspace(1, n_max, 60)
            ax_s.plot(grid, amdahl_speedup(grid, sc.serial_fraction, sc.cpus), ls=":", lw=1.5, color=c)
        ax_e.plot(p, sc.efficiency, marker="o", ms=4, color=c)
    for ax, title, ylabel in [(ax_t, "Time", "milliseconds (dots: runs, line: median)"),
                              (ax_s, "Speedup", "speedup vs 1 process"),
                              (ax_e, "Efficiency", "speedup / processes")]:
        ax.set_title(title)
        ax.set_xlabel("processes")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.8, n_max + 0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if cpus < n_max:
            ax.axvline(cpus, color=_IDEAL, ls=":", lw=1)
            ax.annotate(f"{cpus} CPUs", (cpus, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                        textcoords="offset points", fontsize=8, color="#7b8794")
    ax_t.set_ylim(bottom=0)
    ax_s.set_ylim(bottom=0)
    ax_e.set_ylim(0, max(1.1, 1.05 * max(float(sc.efficiency.max()) for sc in series.values())))
    ax_e.yaxis.set_major_formatter(PercentFormatter(1.0))
    handles, labels = ax_t.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="--", color=_IDEAL))
    labels.append("ideal")
    if any(sc.amdahl is not None for sc in series.values()):  # no entry for a curve that is not drawn
        handles.append(Line2D([], [], ls=":", lw=1.5, color=_IDEAL))
        labels.append("Amdahl's law fitted to the medians")
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(_sweep_title(series.values()), fontsize=10)
    return fig


def render(fig: Figure, format: str = "png") -> bytes:
    """The figure as PNG (at ``DPI``), SVG or PDF bytes.

    Safe to call from several threads (renders one at a time).

    Raises
    ------
    ValueError
        ``format`` is not one of ``FORMATS``.

    Examples
    --------
    >>> fig = Figure(figsize=(1, 1))
    >>> render(fig, "pdf")[:5], render(fig, "svg").lstrip()[:5]
    (b'%PDF-', b'<?xml')
    """
    fmt = str(format).lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    import io

    buf = io.BytesIO()
    with _render_lock:
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
    return buf.getvalue()


# Leave out dates and the version banner where a format allows it: the same figure renders to the same bytes.
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


# -- helpers -----------------------------------------------------------------------------------
def _outputs(image, outputs) -> tuple[list[np.ndarray], list[str]]:
    """``[image, *outputs]`` as validated 3-D arrays, and their default titles."""
    img = check_image(image, "image")
    if hasattr(outputs, "outputs") and hasattr(outputs, "timeline"):  # a JobResult
        arrays = list(outputs.outputs)
        default = ["original"] + [_pair_title(outputs, i) for i in range(len(arrays))]
    elif isinstance(outputs, np.ndarray) or (hasattr(outputs, "__iter__") and not isinstance(outputs, (str, bytes))):
        arrays = [outputs] if isinstance(outputs, np.ndarray) else list(outputs)
        default = ["original"] + [f"result {i + 1}" for i in range(len(arrays))]
    else:
        raise TypeError(f"outputs must be an array, a sequence of arrays or a JobResult, got {type(outputs).__name__}")
    if not arrays:
        raise ValueError("outputs must hold at least one array, got none")
    panels = [img]
    for i, o in enumerate(arrays):
        name = f"outputs[{i}]"
        o3 = check_image(o, name)
        if o3.shape != img.shape:
            raise ValueError(f"{name} must have the image's shape {image.shape}, got {o.shape}")
        panels.append(o3)
    return panels, default


def _pair_title(result, i: int) -> str:
    p = result.processes[i]
    t = f"{TIMELINE_STYLE.letter(i)} · {result.kernels[i].name} · {p} process{'es' if p > 1 else ''}"
    walls = getattr(result, "filter_walls", ())
    return t + (f" · {walls[i] * 1e3:.1f} ms" if len(walls) > i else "")


def _titles(titles, default: list[str], n: int) -> list[str]:
    if titles is None:
        return default
    if isinstance(titles, str) or not hasattr(titles, "__len__") or len(titles) != n:
        raise ValueError(f"titles must be {n} strings (the original's, then each output's), got {titles!r}")
    return [str(t) for t in titles]


def _check_max_side(max_side) -> None:
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)):
        raise TypeError(f"max_side must be an integer >= 1, got {max_side!r}")
    if max_side < 1:
        raise ValueError(f"max_side must be an integer >= 1, got {max_side!r}")


def _results_size(image: np.ndarray, n: int) -> tuple[float, float]:
    h, w = image.shape[:2]
    return _PANEL * n, min(_PANEL * h / w, 2 * _PANEL) + 0.3


def _display(a: np.ndarray, max_side: int) -> tuple[np.ndarray, dict]:
    """What ``imshow`` gets for a 3-D uint8/uint16 image, and its keyword arguments."""
    h, w, c = a.shape
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], c)
    top = np.iinfo(a.dtype).max
    if c == 1:
        return a[:, :, 0], {"cmap": "gray", "vmin": 0, "vmax": top}
    f = a.astype(np.float32) / top
    if c == 2:  # gray + alpha
        f = np.dstack([f[:, :, 0]] * 3 + [f[:, :, 1]])
    return f, {}


def _draw_results(fig, panels, titles, max_side: int) -> None:
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, a, title in zip(axes, panels, titles):
        data, kwargs = _display(a, max_side)
        ax.imshow(data, **kwargs)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()


def _records(result, kernel_names):
    records = getattr(result, "timeline", None)
    if records is None:
        raise TypeError(f"result must be a JobResult (with a timeline), got {type(result).__name__}")
    if not records:
        raise ValueError("result.timeline is empty: there are no bands to draw")
    if kernel_names is None:
        kernel_names = [k.name for k in getattr(result, "kernels", ())]
    elif isinstance(kernel_names, str) or not hasattr(kernel_names, "__iter__"):
        raise TypeError(f"kernel_names must be a sequence of str, got {type(kernel_names).__name__}")
    return list(records), [str(n) for n in kernel_names]


def _timeline_height(records) -> float:
    return 0.32 * len({(r.filter, r.pid) for r in records}) + 1.3


def _draw_timeline(fig, records, kernel_names) -> None:
    style = TIMELINE_STYLE
    ax = fig.subplots()
    workers = sorted({(r.filter, r.pid) for r in records})
    row = {w: i for i, w in enumerate(workers)}
    for f in sorted({r.filter for r in records}):
        mine = [r for r in records if r.filter == f]
        letter = style.letter(f)
        ys = [row[(r.filter, r.pid)] for r in mine]
        starts = np.array([r.start for r in mine]) * 1e3
        widths = np.array([r.end - r.start for r in mine]) * 1e3
        ax.barh(ys, widths, left=starts, height=style.bar_height, color=style.colors[letter],
                label=style.legend(letter))
        for y, x0, dx, r in zip(ys, starts, widths, mine):
            ax.text(x0 + dx / 2, y, str(r.band), ha="center", va="center", fontsize=7, color=style.label_color,
                    clip_on=True)
    ax.set_yticks(range(len(workers)), [style.worker(f, pid) for f, pid in workers], fontsize=8)
    ax.set_ylim(len(workers) - 0.5, -0.5)  # the first worker on top, as in the dashboard
    ax.set_xlim(left=0)
    ax.set_xlabel(style.x_title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=8, ncols=2, frameon=False)
    names = " · ".join(f"{style.letter(i)}: {n}" for i, n in enumerate(kernel_names))
    ax.set_title("Band timeline" + (f" ({names})" if names else ""), fontsize=10, loc="left")


def _series(sweep) -> dict:
    if isinstance(sweep, Scaling):
        return {sweep.implementation or "measured": sweep}
    if isinstance(sweep, Mapping) and sweep and all(isinstance(s, Scaling) for s in sweep.values()):
        return {str(k): v for k, v in sweep.items()}
    raise TypeError(f"sweep must be a Scaling (engine.measure_scaling) or a non-empty mapping of label to "
                    f"Scaling, got {type(sweep).__name__}")


def _sweep_title(sweeps) -> str:
    sweeps = list(sweeps)
    kernels = {s.kernel for s in sweeps}
    shapes = {s.shape for s in sweeps}
    parts = []
    if len(kernels) == 1 and "" not in kernels:
        parts.append(kernels.pop())
    if len(shapes) == 1 and (shape := shapes.pop()):
        parts.append(f"on {shape[1]}x{shape[0]}" + (f"x{shape[2]}" if len(shape) > 2 else ""))
    reps = max(r.repeat for s in sweeps for r in s.runs)
    parts.append(f"median of {reps} run{'s' if reps > 1 else ''} per point, {sweeps[0].cpus} CPUs")
    return " ".join(parts[:-1]) + (", " if len(parts) > 1 else "") + parts[-1]
