"""How a band timeline looks, wherever it is drawn.

One definition for the dashboard's Altair Gantt chart (``pages/_ui/charts.py``) and
``engine.plot.timeline`` (matplotlib), so a figure in a report matches the page: filter A in
blue, filter B in orange (Streamlit's), one row per worker process labelled ``"A · pid 4242"``,
time in milliseconds since the job started, the band number on each bar. Plain data: reading it
imports no plotting library.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

__all__ = ["TimelineStyle", "TIMELINE_STYLE"]


@dataclass(frozen=True)
class TimelineStyle:
    """Colours and labels of a band timeline (``BandRecord.filter`` 0 is letter ``"A"``).

    >>> TIMELINE_STYLE.worker(1, 4242), TIMELINE_STYLE.legend("A"), TIMELINE_STYLE.colors["B"]
    ('B · pid 4242', 'filter A', '#ff8700')
    """

    letters: tuple = ("A", "B")
    colors: types.MappingProxyType = field(
        default_factory=lambda: types.MappingProxyType({"A": "#1c83e1", "B": "#ff8700"}))
    x_title: str = "milliseconds since the job started"
    legend_prefix: str = "filter "
    bar_height: float = 0.72  # of a worker's row
    label_color: str = "white"  # the band number on each bar

    def letter(self, filter_index: int) -> str:
        return self.letters[filter_index]

    def worker(self, filter_index: int, pid: int) -> str:
        """The row label of a worker process of filter ``filter_index``."""
        return f"{self.letters[filter_index]} · pid {pid}"

    def legend(self, letter: str) -> str:
        return self.legend_prefix + letter


TIMELINE_STYLE = TimelineStyle()
