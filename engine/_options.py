"""The options of a filter, one table per concept: border modes, output mappings, implementations.

A border mode is one row of ``BORDER_TABLE``: its name, scipy.ndimage's name for it, the OpenCV
constant that extrapolates it (``None``: OpenCV cannot, and the band kernel builds the halo
itself), what lies past the left edge of ``a b c d``, the help text, and the index rule that the
numpy paths and halo-building use. Adding a border mode is adding a row here; every other module
asks this table instead of naming modes.

=========== ======== ===================== ===================
border      scipy    OpenCV                past the left edge
=========== ======== ===================== ===================
replicate   nearest  BORDER_REPLICATE      ``a a a | a b c d``
reflect     reflect  BORDER_REFLECT        ``c b a | a b c d``
mirror      mirror   BORDER_REFLECT_101    ``d c b | a b c d``
wrap        wrap     (the halo built here) ``b c d | a b c d``
constant    constant BORDER_CONSTANT, 0    ``0 0 0 | a b c d``
=========== ======== ===================== ===================
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Border", "BORDER_TABLE", "BORDER", "BORDERS", "OUTPUTS", "IMPLEMENTATIONS", "ROUTES", "border_index"]


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    m = np.mod(idx, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(idx)
    m = np.mod(idx, 2 * n - 2)
    return np.where(m >= n, 2 * n - 2 - m, m)


@dataclass(frozen=True)
class Border:
    """One border mode. ``index(idx, n)`` maps any row or column indices into ``[0, n)``, or to
    ``-1`` where the pixel is zero (``constant``)."""

    name: str
    scipy: str
    opencv: str | None  # cv2 constant's name; None: OpenCV has no such border for filters
    picture: str
    text: str
    index: Callable[[np.ndarray, int], np.ndarray]

    @property
    def opencv_code(self) -> int:
        import cv2

        return getattr(cv2, self.opencv)

    @property
    def wraps(self) -> bool:
        """Halo rows come from the opposite edge: a band's read range is not clamped to the image."""
        return self.opencv is None


BORDER_TABLE = (
    Border("replicate", "nearest", "BORDER_REPLICATE", "aaa|abcd",
           "repeat the edge pixel (aaa|abcd); scipy 'nearest', the notebook's choice",
           lambda idx, n: np.clip(idx, 0, n - 1)),
    Border("reflect", "reflect", "BORDER_REFLECT", "cba|abcd",
           "mirror including the edge pixel (cba|abcd); scipy 'reflect'", _reflect),
    Border("mirror", "mirror", "BORDER_REFLECT_101", "dcb|abcd",
           "mirror about the edge pixel (dcb|abcd); scipy 'mirror', OpenCV's default", _mirror),
    Border("wrap", "wrap", None, "bcd|abcd",
           "continue from the opposite edge (bcd|abcd), as if the image tiled the plane",
           lambda idx, n: np.mod(idx, n)),
    Border("constant", "constant", "BORDER_CONSTANT", "000|abcd",
           "pad with zeros (000|abcd); dark frames appear at the edges",
           lambda idx, n: np.where((idx >= 0) & (idx < n), idx, -1)),
)
#: Border name -> its row.
BORDER = types.MappingProxyType({b.name: b for b in BORDER_TABLE})
#: Border name -> one-line explanation, in the order the UI lists them.
BORDERS = {b.name: b.text for b in BORDER_TABLE}

#: Output mapping -> one-line explanation: how float responses become the image's dtype.
OUTPUTS = {
    "clip": "round to nearest and clip to the dtype's range: negative responses become black",
    "abs": "absolute value, then clip: edges of both signs show bright",
    "normalize": "stretch the whole result's min..max to the full range (a constant result gives 0, as does a "
                 "range within float64's rounding error)",
    "offset": "add half the range (128 or 32768), then clip: zero is mid-gray, signs show as dark/light",
}
#: Implementation -> one-line explanation: what computes each band.
IMPLEMENTATIONS = {
    "opencv": "OpenCV per band (cv2.sepFilter2D for rank-1 kernels, cv2.filter2D otherwise)",
    "numpy": "numpy only: one vectorized multiply-add per kernel weight",
    "python": "the notebook's per-pixel Python loops, for teaching (images up to 256x256 pixels)",
}
#: How ``implementation="opencv"`` computes a band (``_compute.route`` picks one from the request
#: alone, never from timing, so a request gives the same bits on every run, engine and process
#: count), and the other implementations under their own names.
ROUTES = {
    "direct": "OpenCV's own 8-bit call straight into the output rows (float32 weights, exactly "
              "symmetric factors); rows within a halo of an inner band edge redone from their real neighbours",
    "float32": "OpenCV into float32 a cache-sized chunk at a time (each with its real halo rows), "
               "then rounded into the output rows",
    "general": "OpenCV on the band with its halo rows built here by the border rule (wrap, normalize, "
               "2-D kernels over 49 taps, sums that need float64)",
    "numpy": IMPLEMENTATIONS["numpy"],
    "python": IMPLEMENTATIONS["python"],
}


def border_index(idx, n: int, name: str) -> np.ndarray:
    """Map indices (any integers) to ``[0, n)`` by the border rule; ``-1`` means zero (constant).

    >>> border_index(np.arange(-3, 7), 4, "reflect").tolist()
    [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]
    >>> border_index(np.arange(-3, 7), 4, "mirror").tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if name not in BORDER:
        raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {name!r}")
    return BORDER[name].index(np.asarray(idx, dtype=np.int64), n)
