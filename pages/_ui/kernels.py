"""The kernel picker: a named kernel, a table you edit, or text you paste; and its two pictures.

The pictures are the weights as a heat map with the numbers on it, and the frequency response:
``|FFT2|`` of the kernel zero-padded to 64 x 64, centred (``fftshift``), so the middle is the
lowest frequency. A blur passes the middle and darkens the rim; an edge filter does the opposite.
Correlation and convolution have the same magnitude response, so the picture holds for both.
"""

from __future__ import annotations

import hashlib

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

import engine

from .fmt import sig

TABLE = "custom: edit a table"
TEXT = "custom: type or paste"
NOTEBOOK_FILTERS = ("identity", "edge_x", "edge_y", "sobel", "gaussian")
FFT_SIZE = 64
#: The frequency picture's grid: enough for kernels up to 31 wide, ~4 px a cell on the page.
CHART_FFT = 32
SIDE_MAX = 31
#: The frequency picture's colour scale spans at least this fraction of the largest gain: a flat
#: response (identity: gains 0.9999999999999998..1.0) is one colour, not stretched rounding noise.
#: The same fraction decides "all-pass" in ``frequency_sentence``.
FLAT_SPAN = 0.05


def options() -> list[str]:
    return list(engine.KERNELS) + [TABLE, TEXT]


def option_label(name: str) -> str:
    return f"{name}  ·  notebook" if name in NOTEBOOK_FILTERS else name


def fingerprint(k: engine.Kernel) -> str:
    """Identity of a kernel's weights (names of custom kernels say nothing)."""
    h = hashlib.sha1(np.ascontiguousarray(k.weights).tobytes() + str(k.shape).encode()).hexdigest()[:10]
    return f"{k.name}:{h}"


def describe(k: engine.Kernel) -> str:
    """Shape, sum and the pass the engine runs (``Kernel.separable``: rank 1 within
    ``engine``'s relative tolerance, so nine equal weights of any size are separable)."""
    kh, kw = k.shape
    path = "separable: a row pass then a column pass" if k.separable else "2-D pass (not separable)"
    with np.errstate(over="ignore"):
        total = float(k.weights.sum())
    return f"{kh}x{kw} · sum {sig(total, 4, trim=True)} · {path}"


def problem(k: engine.Kernel, check) -> str | None:
    """What the engine will refuse about ``k`` (its own one-line message), or None.

    ``check`` is the engine's validation of a kernel (``Engine.plan`` runs it): the page shows
    the message before Run, e.g. weights whose sum overflows float64."""
    try:
        check(k)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _default_table(rows: int, cols: int) -> pd.DataFrame:
    w = np.zeros((rows, cols))
    w[rows // 2, cols // 2] = 1.0
    return pd.DataFrame(w, columns=[str(j) for j in range(cols)])


def _table_kernel(letter: str) -> engine.Kernel | None:
    c1, c2 = st.columns(2)
    # the limit is in the label: the box refuses 99 with no more than a red outline
    rows = c1.number_input(f"Rows (1–{SIDE_MAX})", 1, SIDE_MAX, 3, key=f"lab_rows_{letter}", persist_state="session",
                           help=f"Kernels have 1 to {SIDE_MAX} rows.")
    cols = c2.number_input(f"Columns (1–{SIDE_MAX})", 1, SIDE_MAX, 3, key=f"lab_cols_{letter}",
                           persist_state="session", help=f"Kernels have 1 to {SIDE_MAX} columns.")
    ekey = f"lab_table_{letter}_{rows}x{cols}"
    base_key, saved_key = f"{ekey}_base", f"{ekey}_saved"
    if ekey not in st.session_state or base_key not in st.session_state:
        # a new editor (first visit, new size, or back from another page): start from the last edit
        st.session_state[base_key] = st.session_state.get(saved_key, _default_table(rows, cols))
    edited = st.data_editor(
        st.session_state[base_key],
        key=ekey,
        hide_index=True,
        num_rows="fixed",
        column_config={c: st.column_config.NumberColumn(c, format="%.4g") for c in st.session_state[base_key].columns},
        width="stretch",
    )
    st.session_state[saved_key] = edited
    w = edited.to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(w).all():
        st.error("Every cell of the table needs a finite number (an empty cell is not one).")
        return None
    with np.errstate(over="ignore"):  # weights whose sum overflows: the engine's check says so next
        return engine.Kernel(f"custom_{letter.lower()}", w, f"custom {rows}x{cols} table", "user")


def _text_kernel(letter: str) -> engine.Kernel | None:
    text = st.text_area(
        "Weights",
        "1 2 1\n2 4 2\n1 2 1",
        key=f"lab_text_{letter}",
        persist_state="session",
        help="Rows on lines or separated by ';', numbers by spaces or commas; fractions like 1/16 work.",
        height=110,
    )
    try:
        k = engine.parse_kernel(text, name=f"custom_{letter.lower()}")
    except (ValueError, TypeError) as e:
        st.error(str(e))
        return None
    return k


def picker(letter: str, default: str, check=None) -> engine.Kernel | None:
    """Widgets for filter ``letter`` ('A' or 'B'); the chosen kernel, or None after showing an error.

    ``check(kernel)`` raises the engine's ``ValueError`` for a kernel it would refuse (see
    ``problem``); custom kernels are checked with it before anything else uses them, and again
    after "Divide by the sum" (a sum tiny next to the weights overflows them to inf)."""
    choice = st.selectbox(
        "Kernel",
        options(),
        index=options().index(default),
        format_func=option_label,
        key=f"lab_kernel_{letter}",
        persist_state="session",
    )
    if choice == TABLE:
        k = _table_kernel(letter)
    elif choice == TEXT:
        k = _text_kernel(letter)
    else:
        k = engine.KERNELS[choice]
    if k is None:
        return None
    if choice in (TABLE, TEXT):
        if check is not None and (msg := problem(k, check)):
            st.error(msg, icon=":material/error:")
            return None
        total = float(k.weights.sum())
        usable = abs(total) > 1e-12
        norm = st.toggle(
            "Divide by the sum",
            value=False,
            key=f"lab_norm_{letter}",
            persist_state="session",
            disabled=not usable,
            help="Makes the weights add up to 1, so flat areas keep their brightness. "
            + ("" if usable else "Not possible here: the weights add up to 0 (an edge filter)."),
        )
        if norm and usable:
            with np.errstate(over="ignore"):  # a sum tiny next to the weights: checked just below
                k = engine.Kernel(k.name, k.weights / total, k.description + ", divided by its sum", "user")
            if check is not None and (msg := problem(k, check)):
                st.error(f"Divided by their sum ({sig(total, 3, trim=True)}), the weights are no longer usable: "
                         f"{msg}. The sum is tiny next to the largest weight; turn off \"Divide by the sum\" "
                         "or change the weights.", icon=":material/error:")
                return None
    return k


def _cell_label(v: float) -> str:
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1000:
        return str(int(v))
    return sig(v, 2, trim=True)


def weights_chart(k: engine.Kernel, size: int = 190) -> alt.Chart:
    """The weights as a diverging heat map (negative blue, positive red), numbers on the cells."""
    w = k.weights
    kh, kw = w.shape
    rr, cc = np.indices(w.shape)
    df = pd.DataFrame({"row": rr.ravel(), "col": cc.ravel(), "weight": w.ravel()})
    df["label"] = [_cell_label(v) for v in df["weight"]]
    vmax = float(np.abs(w).max()) or 1.0
    df["dark"] = np.abs(df["weight"]) > 0.55 * vmax
    cell = max(6, min(44, size // max(kh, kw)))
    base = alt.Chart(df).encode(
        x=alt.X("col:O", axis=None),
        y=alt.Y("row:O", axis=None),
    )
    rect = base.mark_rect(stroke="white", strokeWidth=1 if max(kh, kw) <= 15 else 0).encode(
        color=alt.Color(
            "weight:Q",
            scale=alt.Scale(scheme="redblue", domain=[-vmax, vmax], reverse=True),
            legend=None,
        ),
        tooltip=[alt.Tooltip("row:O"), alt.Tooltip("col:O"), alt.Tooltip("weight:Q", format=".6g")],
    )
    chart = rect
    if max(kh, kw) <= 9:
        text = base.mark_text(fontSize=10 if cell >= 30 else 8).encode(
            text="label:N",
            color=alt.condition("datum.dark", alt.value("white"), alt.value("#1f2933")),
        )
        chart = rect + text
    return chart.properties(width=cell * kw, height=cell * kh, autosize=alt.AutoSizeParams(type="pad"),
                            title=alt.TitleParams("weights", fontSize=12, anchor="start"))


def frequency_response(weights: np.ndarray, n: int = FFT_SIZE) -> np.ndarray:
    """``|FFT2|`` of ``weights`` zero-padded to ``n`` x ``n``, shifted so DC is in the middle."""
    w = np.asarray(weights, dtype=np.float64)
    pad = np.zeros((n, n))
    pad[: w.shape[0], : w.shape[1]] = w
    return np.abs(np.fft.fftshift(np.fft.fft2(pad)))


def frequency_chart(k: engine.Kernel, size: int = 190) -> alt.Chart:
    """The frequency response as a heat map over (fx, fy) in cycles per pixel.

    Drawn on a ``CHART_FFT`` grid (each cell ~4 px on the page) with only each cell's indices
    and gain in the data (the browser computes the frequencies): 20 KB of spec instead of 390 KB,
    which Streamlit serializes on every rerun.
    """
    mag = frequency_response(k.weights, CHART_FFT)
    n = mag.shape[0]
    lo, hi = color_domain(mag)
    jj, ii = np.indices(mag.shape)
    gains = [float(sig(g, 4)) for g in mag.ravel()]
    df = pd.DataFrame({"i": ii.ravel(), "j": jj.ravel(), "gain": gains})
    axis = alt.Axis(values=[-0.5, 0, 0.5], labelFontSize=9, titleFontSize=10, grid=False)
    # cell (row j, column i) spans fx in [(i - n/2)/n, (i + 1 - n/2)/n]; fy points up
    return (
        alt.Chart(df)
        .transform_calculate(fx=f"(datum.i - {n // 2}) / {n}", fx2=f"(datum.i + 1 - {n // 2}) / {n}",
                             fy=f"({n // 2} - datum.j) / {n}", fy2=f"({n // 2} - datum.j - 1) / {n}")
        .mark_rect()
        .encode(
            x=alt.X("fx:Q", scale=alt.Scale(domain=[-0.5, 0.5], nice=False), axis=axis, title="fx (cycles/px)"),
            x2="fx2:Q",
            y=alt.Y("fy:Q", scale=alt.Scale(domain=[-0.5, 0.5], nice=False), axis=axis, title="fy"),
            y2="fy2:Q",
            color=alt.Color("gain:Q", scale=alt.Scale(scheme="viridis", domain=[lo, hi], clamp=True), legend=None),
            tooltip=[alt.Tooltip("fx:Q", format=".3f"), alt.Tooltip("fy:Q", format=".3f"),
                     alt.Tooltip("gain:Q", format=".4~g")],
        )
        .properties(width=size - 50, height=size - 50, autosize=alt.AutoSizeParams(type="pad"),
                    title=alt.TitleParams("frequency response |H|", fontSize=12, anchor="start"),
                    description="frequency response")
    )


def color_domain(mag: np.ndarray) -> tuple[float, float]:
    """The colour scale's ``(low, high)`` for a frequency response: its range, widened to at
    least ``FLAT_SPAN`` of the largest gain (below it, from the top), so that a flat response is
    one colour.

    >>> color_domain(np.array([0.9999999999999998, 1.0]))
    (0.95, 1.0)
    >>> color_domain(np.array([0.0, 2.0])), color_domain(np.zeros(3))
    ((0.0, 2.0), (0.0, 1.0))
    """
    lo, hi = float(mag.min()), float(mag.max())
    span = FLAT_SPAN * abs(hi)
    if not span:
        return 0.0, 1.0
    if hi - lo < span:
        return hi - span, hi
    return lo, hi


@st.cache_data(show_spinner=False, max_entries=256)
def chart_spec(kind: str, name: str, weights: np.ndarray) -> dict:
    """The Vega-Lite spec of a kernel's ``weights`` or ``frequency`` chart, made once per kernel.

    Building and validating an Altair chart costs tens of milliseconds; the lab shows four on
    every rerun, so the finished specs are cached (``st.cache_data`` hands out copies).
    """
    k = engine.Kernel(name, weights)
    chart = weights_chart(k) if kind == "weights" else frequency_chart(k)
    return chart.to_dict()


def frequency_sentence(k: engine.Kernel) -> str:
    """One line reading the response: all-pass, low-pass, band-pass, high-pass or sharpening
    (or nothing passes: an all-zero kernel), and the direction when the kernel only sees changes
    along x or y."""
    mag = frequency_response(k.weights)
    if not mag.any():  # every weight 0: nothing passes (and no peak to compare with below)
        return ("Blocks everything: every frequency has gain 0, so the output is 0 everywhere "
                "(before the output mapping) and the image's content is gone.")
    n = mag.shape[0]
    c = n // 2
    yy, xx = np.indices(mag.shape)
    r = np.hypot(yy - c, xx - c) / n  # cycles per pixel from the centre
    peak = float(mag.max())
    dc = float(mag[c, c])
    rim = float(mag[r > 0.42].mean())
    r_peak = float(r.ravel()[np.argmax(mag)])
    along_x, along_y = float(mag[c, :].mean()), float(mag[:, c].mean())
    direction = ""
    if along_x > 3 * along_y + 1e-9:
        direction = " It responds to changes along x: vertical edges."
    elif along_y > 3 * along_x + 1e-9:
        direction = " It responds to changes along y: horizontal edges."
    if float(mag.max() - mag.min()) < FLAT_SPAN * peak:
        return f"All-pass: every frequency keeps gain {sig(peak)}, so the image keeps all its detail."
    if dc >= 0.95 * peak and rim < 0.5 * dc:
        return (f"Low-pass (a blur): smooth areas keep gain {sig(dc)}; fine detail is damped to "
                f"{sig(rim)}.{direction}")
    if dc < 0.05 * peak:
        if r_peak < 0.35 and rim < 0.6 * peak:
            return (f"Band-pass: flat areas go to zero, edges a few pixels wide pass (up to {sig(peak)}) and the "
                    f"finest pixel-to-pixel changes are damped.{direction}")
        return f"High-pass: flat areas go to zero; edges and fine detail pass (up to {sig(peak)}).{direction}"
    return f"Sharpening: smooth areas keep gain {sig(dc)} and detail is boosted up to {sig(peak)}.{direction}"
