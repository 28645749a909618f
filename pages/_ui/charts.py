"""Altair charts and the tables behind them: the band timeline, speedups, sweeps, band plans.

Each chart is built from a plain DataFrame that a function here also returns, so tests can
check the numbers (one bar per band, one point per run) without reading Vega specs.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

import engine

#: Filter A and filter B keep these colours everywhere (Streamlit's blue and orange).
FILTER_COLORS = {"A": "#1c83e1", "B": "#ff8700"}
IMPL_COLORS = {"opencv": "#1c83e1", "numpy": "#21a366", "python": "#9a5cf0"}
_SLOTS = "AB"
#: Streamlit counts a spec's height as the whole chart (axes, legend, title) unless it is told to
#: pad: with this, ``height`` is the plot area, as in plain Vega-Lite.
PAD = alt.AutoSizeParams(type="pad")
#: For charts stretched to the container's width: fit the width (legend and axes included),
#: keep ``height`` as the plot area.
FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")


def timeline_frame(result: engine.PairResult, kernel_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per band of the job: filter, kernel, band, rows, worker pid, start/end in ms."""
    rows = []
    for r in result.timeline:
        slot = _SLOTS[r.filter]
        rows.append(
            {
                "filter": slot,
                "kernel": kernel_names[r.filter],
                "band": r.band,
                "first_row": r.first_row,
                "last_row": r.last_row,
                "rows": r.last_row - r.first_row + 1,
                "pid": r.pid,
                "worker": f"{slot} · pid {r.pid}",
                "start_ms": r.start * 1e3,
                "end_ms": r.end * 1e3,
                "ms": (r.end - r.start) * 1e3,
            }
        )
    cols = ["filter", "kernel", "band", "first_row", "last_row", "rows", "pid", "worker", "start_ms", "end_ms", "ms"]
    return pd.DataFrame(rows, columns=cols)


def gantt_chart(df: pd.DataFrame, wall_ms: float | None = None) -> alt.Chart:
    """Bands per worker process over time, coloured by filter: one bar per band."""
    order = sorted(df["worker"].unique(), key=lambda w: (w[0], int(w.split()[-1])))
    present = [s for s in _SLOTS if s in set(df["filter"])]
    color = alt.Color(
        "filter:N",
        scale=alt.Scale(domain=present, range=[FILTER_COLORS[s] for s in present]),
        legend=alt.Legend(title=None, orient="top", labelExpr="'filter ' + datum.label"),
    )
    base = alt.Chart(df)
    bars = base.mark_bar(cornerRadius=2, height={"band": 0.72}).encode(
        x=alt.X("start_ms:Q", title="milliseconds since the job started"),
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
        fontSize=9, color="white"
    ).encode(x="mid:Q", y=alt.Y("worker:N", sort=order), text="band:Q")
    chart = bars + labels
    height = 30 * len(order) + 10
    return chart.properties(height=height, autosize=FIT_X, description="band timeline")


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


def speedup_line_chart(df: pd.DataFrame, color: str, cpus: int) -> alt.Chart:
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
            tooltip=[alt.Tooltip("processes:Q"), alt.Tooltip("ms:Q", format=".1f"), alt.Tooltip("speedup:Q", format=".2f")],
        )
    )
    rule = alt.Chart(pd.DataFrame({"cpus": [cpus]})).mark_rule(color="#c0c6cc", strokeDash=[2, 2]).encode(x="cpus:Q")
    return (rule + line).properties(height=200, autosize=FIT_X)


# -- scaling sweeps ---------------------------------------------------------------------------
def amdahl_fit(processes, seconds, cpus: int) -> tuple[float, float] | None:
    """Fit ``T(p) = T1 * (s + (1 - s) / min(p, cpus))`` by least squares; ``(T1, s)``.

    Amdahl's law with the number of cores that can actually work at once: beyond the CPUs,
    extra processes share cores and add no parallelism. None with fewer than two distinct
    effective process counts.
    """
    p = np.minimum(np.asarray(processes, dtype=float), cpus)
    t = np.asarray(seconds, dtype=float)
    if len(np.unique(p)) < 2:
        return None
    a_mat = np.column_stack([np.ones_like(p), 1.0 / p])
    (a, b), *_ = np.linalg.lstsq(a_mat, t, rcond=None)
    a, b = max(float(a), 0.0), max(float(b), 0.0)
    t1 = a + b
    if t1 <= 0:
        return None
    return t1, min(max(a / t1, 0.0), 1.0)


def amdahl_speedup(p, s: float, cpus: int):
    return 1.0 / (s + (1.0 - s) / np.minimum(np.asarray(p, dtype=float), cpus))


def sweep_summary(runs: pd.DataFrame, cpus: int) -> pd.DataFrame:
    """Median time per (implementation, processes), speedup vs 1 process, efficiency, fit."""
    cols = ["implementation", "processes", "ms", "speedup", "efficiency", "amdahl", "serial_fraction"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    med = runs.groupby(["implementation", "processes"], as_index=False)["seconds"].median()
    out = []
    for impl, g in med.groupby("implementation", sort=False):
        g = g.sort_values("processes")
        base = g.loc[g["processes"] == g["processes"].min(), "seconds"].iloc[0] * g["processes"].min()
        if 1 in set(g["processes"]):
            base = float(g.loc[g["processes"] == 1, "seconds"].iloc[0])
        fit = amdahl_fit(g["processes"], g["seconds"], cpus)
        for _, r in g.iterrows():
            sp = base / r["seconds"]
            out.append(
                {
                    "implementation": impl,
                    "processes": int(r["processes"]),
                    "ms": r["seconds"] * 1e3,
                    "speedup": sp,
                    "efficiency": sp / r["processes"],
                    "amdahl": float(amdahl_speedup(r["processes"], fit[1], cpus)) if fit else np.nan,
                    "serial_fraction": fit[1] if fit else np.nan,
                }
            )
    return pd.DataFrame(out, columns=cols)


def _impl_color(impls) -> alt.Color:
    impls = list(impls)
    return alt.Color(
        "implementation:N",
        scale=alt.Scale(domain=impls, range=[IMPL_COLORS.get(i, "#555") for i in impls]),
        legend=alt.Legend(title=None, orient="top"),
    )


def _cpu_rule(cpus: int) -> alt.Chart:
    df = pd.DataFrame({"cpus": [cpus], "label": [f"{cpus} CPUs"]})
    rule = alt.Chart(df).mark_rule(color="#9aa5b1", strokeDash=[2, 2]).encode(x="cpus:Q")
    text = alt.Chart(df).mark_text(align="left", dx=4, dy=-4, fontSize=10, color="#7b8794").encode(
        x="cpus:Q", y=alt.value(8), text="label:N"
    )
    return rule + text


def _p_axis(n_max: int) -> alt.X:
    return alt.X(
        "processes:Q",
        scale=alt.Scale(domain=[1, max(2, n_max)], nice=False),
        axis=alt.Axis(tickMinStep=1, format="d", values=list(range(1, n_max + 1))),
        title="processes",
    )


def time_chart(runs: pd.DataFrame, summary: pd.DataFrame, cpus: int, n_max: int) -> alt.Chart:
    """Every run as a dot, the median as a line, per implementation."""
    color = _impl_color(summary["implementation"].unique())
    dots = (
        alt.Chart(runs.assign(ms=runs["seconds"] * 1e3))
        .mark_circle(size=28, opacity=0.45)
        .encode(x=_p_axis(n_max), y=alt.Y("ms:Q", title="milliseconds"), color=color,
                tooltip=["implementation", "processes", "repeat", alt.Tooltip("ms:Q", format=".2f")])
    )
    line = alt.Chart(summary).mark_line(point=True).encode(x=_p_axis(n_max), y="ms:Q", color=color)
    return (_cpu_rule(cpus) + dots + line).properties(height=240, autosize=FIT_X)


def speedup_chart(summary: pd.DataFrame, cpus: int, n_max: int) -> alt.Chart:
    """Measured speedup, the ideal line ``y = p`` and the Amdahl fit (dashed), per implementation."""
    color = _impl_color(summary["implementation"].unique())
    ideal = pd.DataFrame({"processes": np.arange(1, n_max + 1), "ideal": np.arange(1, n_max + 1)})
    ideal_line = alt.Chart(ideal).mark_line(color="#9aa5b1", strokeDash=[5, 4]).encode(
        x=_p_axis(n_max), y=alt.Y("ideal:Q", title="speedup vs 1 process")
    )
    measured = alt.Chart(summary).mark_line(point=True).encode(
        x=_p_axis(n_max), y="speedup:Q", color=color,
        tooltip=["implementation", "processes", alt.Tooltip("speedup:Q", format=".2f")],
    )
    fit = summary.dropna(subset=["amdahl"])
    layers = [_cpu_rule(cpus), ideal_line, measured]
    if not fit.empty:
        grid = []
        for impl, g in fit.groupby("implementation", sort=False):
            s = float(g["serial_fraction"].iloc[0])
            ps = np.linspace(1, n_max, 60)
            grid.append(pd.DataFrame({"implementation": impl, "processes": ps, "amdahl": amdahl_speedup(ps, s, cpus)}))
        layers.append(
            alt.Chart(pd.concat(grid)).mark_line(strokeDash=[2, 3], strokeWidth=1.5, opacity=0.9).encode(
                x=_p_axis(n_max), y="amdahl:Q", color=color
            )
        )
    return alt.layer(*layers).properties(height=240, autosize=FIT_X)


def efficiency_chart(summary: pd.DataFrame, cpus: int, n_max: int) -> alt.Chart:
    """Speedup / processes, against the ideal 100 %."""
    color = _impl_color(summary["implementation"].unique())
    ideal = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(color="#9aa5b1", strokeDash=[5, 4]).encode(y="y:Q")
    line = alt.Chart(summary).mark_line(point=True).encode(
        x=_p_axis(n_max),
        y=alt.Y("efficiency:Q", title="efficiency (speedup / processes)", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, max(1.1, float(summary["efficiency"].max()) * 1.05)])),
        color=color,
        tooltip=["implementation", "processes", alt.Tooltip("efficiency:Q", format=".0%")],
    )
    return (_cpu_rule(cpus) + ideal + line).properties(height=240, autosize=FIT_X)


# -- band plans ---------------------------------------------------------------------------------
def band_plan_frame(plans: dict[str, tuple], workers: dict[str, dict[int, str]]) -> pd.DataFrame:
    """One row per band per filter: output rows, halo rows, the rows it reads, its worker."""
    rows = []
    for slot, plan in plans.items():
        for b in plan:
            rows.append(
                {
                    "filter": slot,
                    "band": b.index,
                    "rows": f"{b.start}–{b.stop - 1}",
                    "start": b.start,
                    "stop": b.stop,
                    "halo_top": b.halo_top,
                    "halo_bottom": b.halo_bottom,
                    "read_start": b.read_start,
                    "read_stop": b.read_stop,
                    "worker": workers.get(slot, {}).get(b.index, "first free worker of " + slot),
                }
            )
    return pd.DataFrame(rows)


def band_plan_chart(df: pd.DataFrame, height: int, segments: dict[str, str],
                    colors: dict[str, str] | None = None) -> alt.Chart:
    """The plan as a picture: the shared input segment with each band's read range (halo rows in
    red), and each filter's output segment cut into bands coloured by worker.

    Lanes left to right: input (one segment, read by both filters), reads of A, output A, reads
    of B, output B. Rows run top to bottom as in the image. Halo rows are drawn at least 1 % of
    the height tall so that they stay visible on big images; the table has the exact numbers.
    """
    min_h = max(1.0, height * 0.01)
    lanes = []
    x = 0.0
    lane_w = {"input": 1.0, "reads": 0.9, "output": 1.6}
    pos = {}
    for name in ["input"] + [p for s in df["filter"].unique() for p in (f"reads {s}", f"output {s}")]:
        kind = name.split()[0]
        pos[name] = (x, x + lane_w[kind])
        x += lane_w[kind] + 0.35
    rects = []
    for lane, (x0, x1) in pos.items():
        if lane == "input":
            rects.append({"x": x0, "x2": x1, "y": 0, "y2": height, "part": "input image", "label": "", "tip": segments.get("input", "")})
    for _, b in df.iterrows():
        slot = b["filter"]
        rx0, rx1 = pos[f"reads {slot}"]
        sub = (rx1 - rx0) / 2
        bx0 = rx0 + (b["band"] % 2) * sub + 0.05
        bx1 = bx0 + sub - 0.1
        top_h = max(b["halo_top"], min_h) if b["halo_top"] else 0
        bot_h = max(b["halo_bottom"], min_h) if b["halo_bottom"] else 0
        tip = f"band {b['band']} of {slot} reads rows {b['read_start']}–{b['read_stop'] - 1}"
        rects.append({"x": bx0, "x2": bx1, "y": b["start"], "y2": b["stop"], "part": "rows it writes", "label": "", "tip": tip})
        if top_h:
            rects.append({"x": bx0, "x2": bx1, "y": b["start"] - top_h, "y2": b["start"], "part": "halo rows", "label": "",
                          "tip": f"{b['halo_top']} halo row(s) above band {b['band']}"})
        if bot_h:
            rects.append({"x": bx0, "x2": bx1, "y": b["stop"], "y2": b["stop"] + bot_h, "part": "halo rows", "label": "",
                          "tip": f"{b['halo_bottom']} halo row(s) below band {b['band']}"})
        ox0, ox1 = pos[f"output {slot}"]
        rects.append({"x": ox0, "x2": ox1, "y": b["start"], "y2": b["stop"], "part": b["worker"],
                      "label": f"band {b['band']}", "tip": f"band {b['band']}: rows {b['rows']} → {b['worker']}"})
    rdf = pd.DataFrame(rects)
    workers = [w for w in rdf["part"].unique() if w not in ("input image", "rows it writes", "halo rows")]
    palette = ["#1c83e1", "#ff8700", "#21a366", "#9a5cf0", "#e8384f", "#0fb5ae", "#a16207", "#db2777",
               "#4f46e5", "#65a30d", "#0891b2", "#c2410c", "#7c3aed", "#15803d", "#be123c", "#1d4ed8"]
    colors = colors or {}
    domain = ["input image", "rows it writes", "halo rows"] + workers
    rng = ["#d9dee3", "#8fa3b5", "#e8384f"] + [colors.get(w, palette[i % len(palette)]) for i, w in enumerate(workers)]
    y = alt.Y("y:Q", scale=alt.Scale(domain=[height, 0], nice=False), title="image row")
    rect = alt.Chart(rdf).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("x:Q", axis=None, scale=alt.Scale(domain=[0, x], nice=False)),
        x2="x2:Q",
        y=y,
        y2="y2:Q",
        color=alt.Color("part:N", scale=alt.Scale(domain=domain, range=rng), legend=alt.Legend(title=None, orient="bottom", columns=3)),
        tooltip=[alt.Tooltip("tip:N", title="what")],
    )
    labels_df = rdf[rdf["label"] != ""].assign(ym=lambda d: (d["y"] + d["y2"]) / 2, xm=lambda d: (d["x"] + d["x2"]) / 2)
    text = alt.Chart(labels_df).mark_text(fontSize=10, color="white").encode(x="xm:Q", y=alt.Y("ym:Q", scale=alt.Scale(domain=[height, 0], nice=False)), text="label:N")
    heads = pd.DataFrame(
        [{"xm": (a + b) / 2, "label": _lane_title(name, segments)} for name, (a, b) in pos.items()]
    )
    head = alt.Chart(heads).mark_text(fontSize=11, fontWeight="bold", color="#3e4c59", baseline="bottom").encode(
        x="xm:Q", y=alt.value(-6), text="label:N"
    )
    return alt.layer(rect, text, head).properties(height=420, autosize=FIT_X, padding={"top": 22, "left": 5, "right": 5, "bottom": 5})


def _lane_title(name: str, segments: dict[str, str]) -> str:
    if name == "input":
        return "input (shared)"
    return name
