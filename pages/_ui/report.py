""""Figure for a report": a format picker and download buttons whose files ``engine.plot`` makes.

Each button gets a callable, not bytes: Streamlit calls it when the button is clicked (a
deferred download), so matplotlib draws a figure only when someone wants it, in the format
picked then. The picker lives in a fragment: changing it reruns these buttons, not the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

import engine

HELP = ("Made with matplotlib (engine.plot) when you click: PNG at 200 dpi, or SVG and PDF as vector "
        "graphics (images inside at most 1600 px a side). The same figures come from the command line "
        "(--figure) and from the notebook.")


@dataclass(frozen=True)
class ReportFigure:
    """One download: its widget key, button label, file name without extension, and the figure."""

    key: str
    label: str
    stem: str
    make: Callable  # () -> matplotlib.figure.Figure (or b"" once the data it drew is released)


def _render(fig, fmt: str) -> bytes:
    # a figure held weakly (holdings.weakly) whose data was released since the page ran: b""
    return fig if isinstance(fig, (bytes, str)) else engine.plot.render(fig, fmt)


@st.fragment
def downloads(key: str, figures: list[ReportFigure]) -> None:
    """The picker, then one button per figure, in a row."""
    cols = st.columns([1.1] + [1] * len(figures), gap="small", vertical_alignment="bottom")
    fmt = cols[0].segmented_control("Figure for a report", list(engine.plot.FORMATS), format_func=str.upper,
                                    default="png", required=True, key=key, persist_state="session", help=HELP)
    for col, f in zip(cols[1:], figures):
        col.download_button(
            f"{f.label} as {fmt.upper()}",
            data=lambda make=f.make: _render(make(), fmt),
            file_name=f"{f.stem}.{fmt}",
            mime=engine.plot.FORMATS[fmt],
            icon=":material/insert_chart:",
            on_click="ignore",
            key=f.key,
            width="stretch",
        )
