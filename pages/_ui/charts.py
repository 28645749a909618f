"""Altair charts and the tables behind them: the band timeline, speedups, sweeps, band plans.

Each chart is built from a plain DataFrame that a function here also returns, so tests can
check the numbers (one bar per band, one point per run) without reading Vega specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

import engine

from . import explain

#: Filter A and filter B keep these colours everywhere (Streamlit's blue and orange): the engine's
#: timeline style, which ``engine.plot.timeline`` draws with too.
STYLE = engine.TIMELINE_STYLE
FILTER_COLORS = dict(STYLE.colors)
IMPL_COLORS = {"opencv": "#1c83e1", "numpy": "#21a366", "python": "#9a5cf0"}
#: The same implementations on the Dask backend: warm hues, so the two backends never share a colour.
DASK_COLORS = {"opencv": "#e8384f", "numpy": "#ff8700", "python": "#a16207"}
#: The Scaling page's backends, as they appear in the sweep's ``backend`` column.
POOL, DASK = "process pool", "dask"
_LETTERS = "".join(STYLE.letters)
#: Streamlit counts a spec's height as the whole chart (axes, legend, title) unless it is told to
#: pad: with this, ``height`` is the plot area, as in plain Vega-Lite.
PAD = alt.AutoSizeParams(type="pad")
#: For charts stretched to the container's width: fit the width (legend and axes included),
#: keep ``height`` as the plot area.
FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")


def timeline_frame(result: engine.JobResult, kernel_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per band of the job: filter, kernel, band, rows, worker pid, start/end in ms."""
    rows = []
    for r in result.timeline:
        letter = _LETTERS[r.filter]
        rows.append(
            {
                "filter": letter,
                "kernel": kernel_names[r.filter],
                "band": r.band,
                "first_row": r.first_row,
                "last_row": r.last_row,
                "rows": r.last_row - r.first_row + 1,
                "pid": r.pid,
                "worker": STYLE.worker(r.filter, r.pid),
                "start_ms": r.start * 1e3,
                "end_ms": r.end * 1e3,
                "ms": (r.end - r.start) * 1e3,
            }
        )
    cols = ["filter", "kernel", "band", "first_row", "last_row", "rows", "pid", "worker", "start_ms", "end_ms", "ms"]
    return pd.DataFrame(rows, columns=cols)


def gantt_chart(df: pd.DataFrame) -> alt.Chart:
    """Bands per worker process over time, coloured by filter: one bar per band."""
    order = sorted(df["worker"].unique(), key=lambda w: (w[0], int(w.split()[-1])))
    present = [s for s in _LETTERS if s in set(df["filter"])]
    color = alt.Color(
        "filter:N",
        scale=alt.Scale(domain=present, range=[FILTER_COLORS[s] for s in present]),
        legend=alt.Legend(title=None, orient="top", labelExpr=f"'{STYLE.legend_prefix}' + datum.label"),
    )
    base = alt.Chart(df)
    bars = base.mark_bar(cornerRadius=2, height={"band": STYLE.bar_height}).encode(
        x=alt.X("start_ms:Q", title=STYLE.x_title),
        x2="end_ms:Q",
        y=alt.Y("worker:N", sort=order, title=None),
        color=color,
        tooltip=[
            alt.Tooltip("filter:N"),
            alt.Tooltip("kernel:N"),
            alt.Tooltip("band:Q"),
            alt.Tooltip("first_row:Q", title="first row"),
            alt.Tooltip("last_row:Q", title="last row"),
            alt.Tooltip("pid:Q", title="worker pid"),
            alt.Tooltip("start_ms:Q", title="start (ms)", format=".2f"),
            alt.Tooltip("ms:Q", title="duration (ms)", format=".2f"),
        ],
    )
    labels = base.transform_calculate(mid="(datum.start_ms + datum.end_ms) / 2").mark_text(
        fontSize=9, color=STYLE.label_color
    ).encode(x="mid:Q", y=alt.Y("worker:N", sort=order), text="band:Q")
    chart = bars + labels
    height = 30 * len(order) + 10
    return chart.properties(height=height, autosize=FIT_X, description="band timeline")


def first_starts(df: pd.DataFrame) -> dict[str, float]:
    """Milliseconds from the job's start to each filter's first band starting."""
    return {letter: float(g["start_ms"].min()) for letter, g in df.groupby("filter")}


def start_gap_ms(df: pd.DataFrame) -> float | None:
    """How far apart (ms) the two filters' first bands started: about 0 when A and B run at the
    same time, a whole filter's time when one waits for the other. None for one filter."""
    starts = first_starts(df)
    if len(starts) < 2:
        return None
    return abs(starts["B"] - starts["A"])


def history_speedup_frame(history: list[dict], key: tuple) -> pd.DataFrame:
    """Best time per process count for one (image, kernel, options) key, with speedup vs the
    fewest processes measured. Empty unless at least two process counts were run."""
    rows = [h for h in history if h["key"] == key]
    if len({h["processes"] for h in rows}) < 2:
        return pd.DataFrame(columns=["processes", "ms", "speedup", "ideal"])
    best = pd.DataFrame(rows).groupby("processes", as_index=False)["ms"].min().sort_values("processes")
    p0, t0 = int(best["processes"].iloc[0]), float(best["ms"].iloc[0])
    best["speedup"] = t0 / best["ms"]
    best["ideal"] = best["processes"] / p0
    return best.reset_index(drop=True)


def speedup_line_chart(df: pd.DataFrame, color: str, cpus: int, reference: float | None = None,
                       serial_label: str = "") -> alt.Chart:
    """Measured speedup against the fewest processes run, the ideal line, the CPUs, and (when
    known) ``reference``: the speedup that the best serial code (``serial_label``, from
    ``SerialCode``) has over the fewest-process run, as a horizontal line: points above it beat
    serial code."""
    long = pd.concat(
        [
            df.assign(series="measured", value=df["speedup"]),
            df.assign(series="ideal (linear)", value=df["ideal"]),
        ]
    )
    scale = alt.Scale(domain=["measured", "ideal (linear)"], range=[color, "#9aa5b1"])
    line = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("processes:Q", axis=alt.Axis(tickMinStep=1, format="d"), title="processes"),
            y=alt.Y("value:Q", title="speedup"),
            color=alt.Color("series:N", scale=scale, legend=alt.Legend(title=None, orient="top")),
            strokeDash=alt.condition("datum.series == 'ideal (linear)'", alt.value([4, 3]), alt.value([1, 0])),
            tooltip=[alt.Tooltip("processes:Q"), alt.Tooltip("ms:Q", format=".1f"),
                     alt.Tooltip("speedup:Q", format=".2f")],
        )
    )
    rule = alt.Chart(pd.DataFrame({"cpus": [cpus]})).mark_rule(color="#c0c6cc", strokeDash=[2, 2]).encode(x="cpus:Q")
    layers = [rule, line]
    if reference is not None:
        layers += serial_rule(y=reference, label=serial_label)
    return alt.layer(*layers).properties(height=200, autosize=FIT_X, description="speedup line")


SERIAL_COLOR = "#3e4c59"
#: The best serial code (``Engine.serial_time``: the filter's band kernel on the whole image as
#: one band, one worker, one OpenCV thread) in words, by the route it takes (``engine.ROUTES``):
#: (in a sentence, as a chart's label).
SERIAL_WORDS = {
    "direct": ("one OpenCV call on one thread", "one OpenCV call, 1 thread"),
    "float32": ("OpenCV into float32 a chunk at a time, on one thread", "OpenCV via float32, 1 thread"),
    "general": ("OpenCV on the whole image with its border rows built first, on one thread",
                "OpenCV, general route, 1 thread"),
}


@dataclass(frozen=True)
class SerialCode:
    """What the best serial code for a filter is: the route it takes, and how the pages say it."""

    route: str
    sentence: str
    label: str

    @classmethod
    def of(cls, kernel, dtype, border: str, output: str) -> SerialCode:
        """The serial reference of ``kernel`` on images of ``dtype``: ``Engine.serial_time`` runs
        the opencv implementation, whose route the request alone decides (``FilterRequest.routes``),
        whatever route the measured run took (numpy, python, or opencv on other settings).

        >>> SerialCode.of("gaussian", np.uint8, "replicate", "clip").sentence
        'one OpenCV call on one thread'
        >>> SerialCode.of("gaussian", np.uint16, "replicate", "clip").route
        'float32'
        """
        request = engine.FilterRequest([kernel], border=border, output=output, implementation="opencv")
        route = request.routes(dtype)[0]
        sentence, label = SERIAL_WORDS.get(route, (f"the {route} route on one thread", f"{route}, 1 thread"))
        return cls(route, sentence, label)


def serial_rule(y: float, label: str, field: str = "y") -> list[alt.Chart]:
    """A horizontal reference line at ``y`` with its label: the best serial code."""
    df = pd.DataFrame({field: [y], "label": [label]})
    rule = alt.Chart(df).mark_rule(color=SERIAL_COLOR, strokeDash=[6, 3], strokeWidth=1.5).encode(
        y=f"{field}:Q", tooltip=[alt.Tooltip("label:N", title="reference"), alt.Tooltip(f"{field}:Q", format=".3~g")])
    text = alt.Chart(df).mark_text(align="left", baseline="bottom", dx=4, dy=-2, fontSize=10,
                                   color=SERIAL_COLOR).encode(x=alt.value(0), y=f"{field}:Q", text="label:N")
    return [rule, text]


# -- scaling sweeps ---------------------------------------------------------------------------
def with_series(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``backend`` column (the process pool when missing) and a ``series``
    label per (backend, implementation): the implementation alone when only the process pool
    ran, ``"opencv · dask"`` otherwise."""
    runs = runs if "backend" in runs else runs.assign(backend=POOL)
    pool_only = set(runs["backend"]) <= {POOL}
    series = runs["implementation"] if pool_only else runs["implementation"] + " · " + runs["backend"]
    return runs.assign(series=series)


def scalings(runs: pd.DataFrame, cpus: int, **labels) -> dict[tuple[str, str, str], engine.Scaling]:
    """One ``engine.Scaling`` per (backend, implementation) of a sweep's runs, keyed by
    (backend, implementation, series); ``labels`` (kernel, shape) go into each."""
    out = {}
    for (backend, impl, series), g in with_series(runs).groupby(["backend", "implementation", "series"], sort=False):
        recs = [engine.ScalingRun(int(p), int(rep), float(t))
                for p, rep, t in zip(g["processes"], g["repeat"], g["seconds"])]
        out[(backend, impl, series)] = engine.Scaling(tuple(recs), cpus, implementation=impl, **labels)
    return out


def sweep_summary(runs: pd.DataFrame, cpus: int) -> pd.DataFrame:
    """Median time per (backend, implementation, processes), speedup vs the same backend's 1
    process, efficiency, and an Amdahl fit per backend and implementation (``engine.Scaling``)."""
    cols = ["backend", "implementation", "series", "processes", "ms", "speedup", "efficiency", "amdahl",
            "serial_fraction"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (backend, impl, series), sc in scalings(runs, cpus).items():
        s = sc.serial_fraction
        out += [{"backend": backend, "implementation": impl, "series": series, **row, "serial_fraction": s}
                for row in sc.table()]
    return pd.DataFrame(out, columns=cols)


def series_colors(keys) -> dict[str, str]:
    """Colour per series from ``(backend, implementation, series)`` keys: the implementation's,
    warmer on Dask."""
    return {series: (DASK_COLORS if b == DASK else IMPL_COLORS).get(i, "#555") for b, i, series in keys}


def _series_color(summary: pd.DataFrame) -> alt.Color:
    """One colour per (backend, implementation): the implementation's, warmer on Dask."""
    keys = summary[["backend", "implementation", "series"]].drop_duplicates("series")
    colors = series_colors(keys.itertuples(index=False))
    return alt.Color(
        "series:N",
        scale=alt.Scale(domain=list(colors), range=list(colors.values())),
        legend=alt.Legend(title=None, orient="top"),
    )


def _cpu_rule(cpus: int) -> alt.Chart:
    df = pd.DataFrame({"cpus": [cpus], "label": [f"{cpus} CPUs"]})
    rule = alt.Chart(df).mark_rule(color="#9aa5b1", strokeDash=[2, 2]).encode(x="cpus:Q")
    text = alt.Chart(df).mark_text(align="left", dx=4, dy=-4, fontSize=10, color="#7b8794").encode(
        x="cpus:Q", y=alt.value(8), text="label:N"
    )
    return rule + text


def _p_axis(n_max: int, title: str = "processes") -> alt.X:
    return alt.X(
        "processes:Q",
        scale=alt.Scale(domain=[1, max(2, n_max)], nice=False),
        axis=alt.Axis(tickMinStep=1, format="d", values=list(range(1, n_max + 1))),
        title=title,
    )


def _p_title(summary: pd.DataFrame) -> str:
    return "processes / Dask workers" if DASK in set(summary["backend"]) else "processes"


def time_chart(runs: pd.DataFrame, summary: pd.DataFrame, cpus: int, n_max: int,
               serial_ms: float | None = None, serial_label: str = "") -> alt.Chart:
    """Every run as a dot, the median as a line, per backend and implementation; ``serial_ms``:
    the best serial code (labelled ``serial_label``) as a horizontal line."""
    color = _series_color(summary)
    x = _p_axis(n_max, _p_title(summary))
    dots = (
        alt.Chart(with_series(runs).assign(ms=runs["seconds"] * 1e3)[["series", "backend", "implementation",
                                                                      "processes", "repeat", "ms"]])
        .mark_circle(size=28, opacity=0.45)
        .encode(x=x, y=alt.Y("ms:Q", title="milliseconds"), color=color,
                tooltip=["backend", "implementation", "processes", "repeat", alt.Tooltip("ms:Q", format=".2f")])
    )
    line = alt.Chart(summary).mark_line(point=True).encode(x=x, y="ms:Q", color=color)
    layers = [_cpu_rule(cpus), dots, line]
    if serial_ms is not None:
        layers += serial_rule(serial_ms, serial_label, field="ms")
    return alt.layer(*layers).properties(height=240, autosize=FIT_X)


def serial_speedups(summary: pd.DataFrame, serial_ms: float) -> pd.DataFrame:
    """Per series, the speedup the best serial code has over that series' 1 process: where its
    line crosses, the processes beat the serial code."""
    rows = []
    for series, g in summary.groupby("series", sort=False):
        one = g[g["processes"] == 1]
        if not one.empty and serial_ms > 0:
            rows.append({"series": series, "backend": one["backend"].iloc[0],
                         "implementation": one["implementation"].iloc[0],
                         "serial_speedup": float(one["ms"].iloc[0]) / serial_ms})
    return pd.DataFrame(rows, columns=["series", "backend", "implementation", "serial_speedup"])


def speedup_chart(summary: pd.DataFrame, cpus: int, n_max: int, serial_ms: float | None = None,
                  serial_label: str = "") -> alt.Chart:
    """Measured speedup, the ideal line ``y = p`` (dashed) and the Amdahl fit (dotted), per backend and
    implementation (each against its own backend's 1 process); ``serial_ms``: the best serial
    code (labelled ``serial_label``), drawn per series as the speedup it has over that series'
    1 process (dash-dot)."""
    color = _series_color(summary)
    x = _p_axis(n_max, _p_title(summary))
    ideal = pd.DataFrame({"processes": np.arange(1, n_max + 1), "ideal": np.arange(1, n_max + 1)})
    ideal_line = alt.Chart(ideal).mark_line(color="#9aa5b1", strokeDash=[5, 4]).encode(
        x=x, y=alt.Y("ideal:Q", title="speedup vs 1 process")
    )
    measured = alt.Chart(summary).mark_line(point=True).encode(
        x=x, y="speedup:Q", color=color,
        tooltip=["backend", "implementation", "processes", alt.Tooltip("speedup:Q", format=".2f")],
    )
    fit = summary.dropna(subset=["amdahl"])
    layers = [_cpu_rule(cpus), ideal_line, measured]
    if not fit.empty:
        grid = []
        for series, g in fit.groupby("series", sort=False):
            s = float(g["serial_fraction"].iloc[0])
            ps = np.linspace(1, n_max, 60)
            grid.append(pd.DataFrame({"series": series, "processes": ps, "amdahl": engine.amdahl_speedup(ps, s, cpus)}))
        layers.append(
            alt.Chart(pd.concat(grid)).mark_line(strokeDash=[2, 3], strokeWidth=1.5, opacity=0.9).encode(
                x=x, y="amdahl:Q", color=color
            )
        )
    if serial_ms is not None:
        refs = serial_speedups(summary, serial_ms)
        if not refs.empty:
            layers.append(alt.Chart(refs).mark_rule(strokeDash=[6, 3, 1, 3], strokeWidth=1.5).encode(
                y="serial_speedup:Q", color=color,
                tooltip=["series", alt.Tooltip("serial_speedup:Q", title=f"{serial_label} (x)", format=".2f")]))
            layers.append(alt.Chart(refs.head(1).assign(label=serial_label)).mark_text(
                align="left", baseline="bottom", dx=4, dy=-2, fontSize=10, color=SERIAL_COLOR).encode(
                x=alt.value(0), y="serial_speedup:Q", text="label:N"))
    return alt.layer(*layers).properties(height=240, autosize=FIT_X)


def efficiency_chart(summary: pd.DataFrame, cpus: int, n_max: int) -> alt.Chart:
    """Speedup / processes, against the ideal 100 %."""
    color = _series_color(summary)
    ideal = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="#9aa5b1", strokeDash=[5, 4]).encode(y="y:Q")
    line = alt.Chart(summary).mark_line(point=True).encode(
        x=_p_axis(n_max, _p_title(summary)),
        y=alt.Y("efficiency:Q", title="efficiency (speedup / processes)", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, max(1.1, float(summary["efficiency"].max()) * 1.05)])),
        color=color,
        tooltip=["backend", "implementation", "processes", alt.Tooltip("efficiency:Q", format=".0%")],
    )
    return (_cpu_rule(cpus) + ideal + line).properties(height=240, autosize=FIT_X)


# -- band plans ---------------------------------------------------------------------------------
def band_plan_frame(plans: dict[str, tuple], workers: dict[str, dict[int, str]]) -> pd.DataFrame:
    """One row per band per filter: output rows, halo rows, the rows it reads, its worker."""
    rows = []
    for letter, plan in plans.items():
        for b in plan:
            rows.append(
                {
                    "filter": letter,
                    "band": b.index,
                    "rows": f"{b.start}–{b.stop - 1}",
                    "start": b.start,
                    "stop": b.stop,
                    "halo_top": b.halo_top,
                    "halo_bottom": b.halo_bottom,
                    "read_start": b.read_start,
                    "read_stop": b.read_stop,
                    "worker": workers.get(letter, {}).get(b.index, "first free worker of " + letter),
                }
            )
    return pd.DataFrame(rows)


#: Legend columns of the band plan by the chart's width (a Vega expression): 3 side by side need
#: about 480 px; a 390 px phone gets one column instead of entries cut off at the edge.
LEGEND_COLUMNS = "width < 480 ? 1 : 3"
_PLAN_FIXED = {"input image": "#d9dee3", "rows it writes": "#8fa3b5", "halo rows": "#e8384f"}
_PALETTE = ["#1c83e1", "#ff8700", "#21a366", "#9a5cf0", "#e8384f", "#0fb5ae", "#a16207", "#db2777"]
_LANE_WIDTH = {"input": 1.0, "reads": 0.9, "output": 1.6}


def _rect(x0, x1, y0, y1, part, tip, label=""):
    return {"x": x0, "x2": x1, "y": y0, "y2": y1, "part": part, "tip": tip, "label": label}


def band_plan_chart(df: pd.DataFrame, height: int, segments: dict[str, str],
                    colors: dict[str, str] | None = None) -> alt.Chart:
    """The plan as a picture: the shared input segment, each band's read range (halo rows in
    red), and each filter's output segment cut into bands coloured by worker.

    Lanes left to right: the input (one segment, read by both filters), the reads of A, the
    output segment of A, then the same for B. Rows run top to bottom as in the image. Halo rows
    are drawn at least 1 % of the height tall so that they stay visible on big images; the plan
    table has the exact numbers. Neighbouring bands' reads sit side by side, so their overlap
    (the halo) shows.
    """
    min_h = max(1.0, height * 0.01)
    lanes, x = {}, 0.0
    for name in ["input"] + [f"{kind} {s}" for s in df["filter"].unique() for kind in ("reads", "output")]:
        width = _LANE_WIDTH[name.split()[0]]
        lanes[name] = (x, x + width)
        x += width + 0.35
    rects = [_rect(*lanes["input"], 0, height, "input image", segments.get("input", ""))]
    for b in df.itertuples():
        rx0, rx1 = lanes[f"reads {b.filter}"]
        half = (rx1 - rx0) / 2
        bx0 = rx0 + (b.band % 2) * half + 0.05
        bx1 = bx0 + half - 0.1
        reads = f"band {b.band} of {b.filter} reads rows {b.read_start}–{b.read_stop - 1}"
        rects.append(_rect(bx0, bx1, b.start, b.stop, "rows it writes", reads))
        for side, lo0, hi0 in explain.halo_sides(b):
            for lo, hi in explain.image_rows(lo0, hi0, height):  # wrap: the other edge's rows
                tip = f"halo rows {lo}–{hi - 1}, read {side} band {b.band}"
                if (lo, hi) != (lo0, hi0):
                    tip += f" (wrap: the image's {'last' if side == 'above' else 'first'} rows)"
                if hi - lo < min_h:  # grown away from the band's own rows (or into the image)
                    lo, hi = (lo, lo + min_h) if lo in (0, b.stop) else (hi - min_h, hi)
                rects.append(_rect(bx0, bx1, lo, hi, "halo rows", tip))
        rects.append(_rect(*lanes[f"output {b.filter}"], b.start, b.stop, b.worker,
                           f"band {b.band}: rows {b.rows} → {b.worker}", label=f"band {b.band}"))
    rdf = pd.DataFrame(rects)
    workers = [w for w in rdf["part"].unique() if w not in _PLAN_FIXED]
    colors = colors or {}
    domain = list(_PLAN_FIXED) + workers
    palette = list(_PLAN_FIXED.values()) + [colors.get(w, _PALETTE[i % len(_PALETTE)]) for i, w in enumerate(workers)]
    rows = alt.Scale(domain=[height, 0], nice=False)
    rect = alt.Chart(rdf).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("x:Q", axis=None, scale=alt.Scale(domain=[0, x], nice=False)),
        x2="x2:Q",
        y=alt.Y("y:Q", scale=rows, title="image row"),
        y2="y2:Q",
        color=alt.Color("part:N", scale=alt.Scale(domain=domain, range=palette),
                        # one column when the chart is narrow (a phone): every entry stays in view
                        legend=alt.Legend(title=None, orient="bottom", columns=alt.ExprRef(LEGEND_COLUMNS),
                                          labelLimit=180)),
        tooltip=[alt.Tooltip("tip:N", title="what")],
    )
    labelled = rdf[rdf["label"] != ""].assign(ym=lambda d: (d["y"] + d["y2"]) / 2, xm=lambda d: (d["x"] + d["x2"]) / 2)
    text = alt.Chart(labelled).mark_text(fontSize=10, color="white").encode(
        x="xm:Q", y=alt.Y("ym:Q", scale=rows), text="label:N"
    )
    titles = pd.DataFrame([{"xm": (a + b) / 2, "label": name}
                           for name, (a, b) in lanes.items()])
    head = alt.Chart(titles).mark_text(fontSize=11, fontWeight="bold", color="#3e4c59", baseline="bottom").encode(
        x="xm:Q", y=alt.value(-6), text="label:N"
    )
    return alt.layer(rect, text, head).properties(
        height=420, autosize=FIT_X, padding={"top": 22, "left": 5, "right": 5, "bottom": 5}
    )
