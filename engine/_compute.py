"""The band kernel: correlate one row band of an image and map it to the output dtype.

Plain functions of (input array, band, kernel, options) -> rows written into an output array.
They run the same in the parent (tests, the Dask backend) and in worker processes.

Border modes, one table (scipy.ndimage name, OpenCV constant, what lies past the edge of ``a b c d``):

=========== ======== ===================== =====================
border      scipy    OpenCV                past the left edge
=========== ======== ===================== =====================
replicate   nearest  BORDER_REPLICATE      ``a a a | a b c d``
reflect     reflect  BORDER_REFLECT        ``c b a | a b c d``
mirror      mirror   BORDER_REFLECT_101    ``d c b | a b c d``
wrap        wrap     (built here: halo     ``b c d | a b c d``
                     from the other edge)
constant    constant BORDER_CONSTANT, 0    ``0 0 0 | a b c d``
=========== ======== ===================== =====================
"""

from __future__ import annotations

import threading

import numpy as np

from ._bands import Band, halo
from ._kernels import Kernel

__all__ = [
    "BORDERS",
    "OUTPUTS",
    "IMPLEMENTATIONS",
    "SCIPY_MODES",
    "PYTHON_MAX_PIXELS",
    "border_index",
    "color_channels",
    "correlate_band",
    "map_output",
    "filter_band",
    "band_range",
    "work_dtype",
]

BORDERS = {
    "replicate": "repeat the edge pixel (aaa|abcd); scipy 'nearest', the notebook's choice",
    "reflect": "mirror including the edge pixel (cba|abcd); scipy 'reflect'",
    "mirror": "mirror about the edge pixel (dcb|abcd); scipy 'mirror', OpenCV's default",
    "wrap": "continue from the opposite edge (bcd|abcd), as if the image tiled the plane",
    "constant": "pad with zeros (000|abcd); dark frames appear at the edges",
}
OUTPUTS = {
    "clip": "round to nearest and clip to the dtype's range: negative responses become black",
    "abs": "absolute value, then clip: edges of both signs show bright",
    "normalize": "stretch the whole result's min..max to the full range (a constant result gives 0)",
    "offset": "add half the range (128 or 32768), then clip: zero is mid-gray, signs show as dark/light",
}
IMPLEMENTATIONS = {
    "opencv": "OpenCV per band (cv2.sepFilter2D for rank-1 kernels, cv2.filter2D otherwise)",
    "numpy": "numpy only: one vectorized multiply-add per kernel weight",
    "python": "the notebook's per-pixel Python loops, for teaching (images up to 256x256 pixels)",
}
SCIPY_MODES = {"replicate": "nearest", "reflect": "reflect", "mirror": "mirror", "wrap": "wrap", "constant": "constant"}
PYTHON_MAX_PIXELS = 256 * 256
#: Above this many taps a 2-D OpenCV filter may switch to a DFT, whose rounding depends on the
#: band's size; such kernels run as a sum of 1-D row filters so every process count agrees.
_DFT_SAFE_TAPS = 49
_DEPTH_DTYPE = {5: np.float32, 6: np.float64}  # cv2.CV_32F, cv2.CV_64F


def _cv2():
    import cv2

    return cv2


def _cv_border(border: str) -> int:
    cv2 = _cv2()
    return {
        "replicate": cv2.BORDER_REPLICATE,
        "reflect": cv2.BORDER_REFLECT,
        "mirror": cv2.BORDER_REFLECT_101,
        "constant": cv2.BORDER_CONSTANT,
        "wrap": cv2.BORDER_CONSTANT,  # never used at a real edge: wrap halos are built explicitly
    }[border]


def border_index(idx: np.ndarray, n: int, border: str) -> np.ndarray:
    """Map indices (any integers) to ``[0, n)`` by the border rule; ``-1`` means zero (constant).

    >>> border_index(np.arange(-3, 7), 4, "reflect").tolist()
    [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]
    >>> border_index(np.arange(-3, 7), 4, "mirror").tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    idx = np.asarray(idx, dtype=np.int64)
    if border == "replicate":
        return np.clip(idx, 0, n - 1)
    if border == "wrap":
        return np.mod(idx, n)
    if border == "constant":
        return np.where((idx >= 0) & (idx < n), idx, -1)
    if border == "reflect":
        m = np.mod(idx, 2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    if border == "mirror":
        if n == 1:
            return np.zeros_like(idx)
        m = np.mod(idx, 2 * n - 2)
        return np.where(m >= n, 2 * n - 2 - m, m)
    raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")


def color_channels(c: int) -> int:
    """Channels that are filtered: all but a trailing alpha (C = 2 or 4)."""
    return c if c in (1, 3) else c - 1


def work_dtype(kernel: Kernel, dtype: np.dtype) -> type:
    """float32 when its rounding error provably stays under 1/4 gray level, else float64."""
    maxval = float(np.iinfo(dtype).max)
    w = kernel.weights
    bound = maxval * float(np.abs(w).sum()) * w.size * 2.0**-24
    return np.float32 if bound <= 0.25 else np.float64


def _take(src: np.ndarray, rows: np.ndarray, cols: np.ndarray | None, border: str) -> np.ndarray:
    """Rows (and columns) of ``src`` by mapped index; ``-1`` gives zeros."""
    r = border_index(rows, src.shape[0], border)
    block = src[np.maximum(r, 0)]
    if border == "constant":
        block[r < 0] = 0
    if cols is not None:
        c = border_index(cols, src.shape[1], border)
        block = block[:, np.maximum(c, 0)]
        if border == "constant":
            block[:, c < 0] = 0
    return block


def _padded(src: np.ndarray, band: Band, shape: tuple[int, int], border: str) -> np.ndarray:
    """The band's input with every halo row and column materialized by the border rule."""
    (top, bottom), (left, right) = halo(shape[0]), halo(shape[1])
    rows = np.arange(band.start - top, band.stop + bottom)
    cols = np.arange(-left, src.shape[1] + right)
    return _take(src, rows, cols, border)


_local = threading.local()


def _scratch(shape, dtype, slot=0) -> np.ndarray:
    """A reusable buffer, one per thread, dtype and ``slot``: no fresh pages per band."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get((dtype, slot))
    if buf is None or buf.size < n:
        buf = bufs[dtype, slot] = np.empty(max(n, 1), dtype=dtype)
    return buf[:n].reshape(shape)


def _cv_filter(view, ddepth, kernel, dst, mode, separable):
    """One OpenCV call on ``view`` into ``dst``: ``sepFilter2D`` with the rank-1 factors when
    ``separable``, else ``filter2D`` with the 2-D weights."""
    cv2 = _cv2()
    if separable:
        column, row = kernel.factors
        return cv2.sepFilter2D(view, ddepth, row, column, dst=dst, borderType=mode)
    return cv2.filter2D(view, ddepth, kernel.weights, dst=dst, borderType=mode)


def _opencv_band(src, band, kernel, border, ddepth, exact=False):
    """Correlate with OpenCV; returns the band's rows for all channels, dtype from ``ddepth``.
    ``exact``: the 2-D weights themselves, never the rank-1 factors (which differ from them by
    up to ``SEPARABLE_ATOL``)."""
    cv2 = _cv2()
    kh, kw = kernel.shape
    top = halo(kh)[0]
    rows, width = band.rows, src.shape[1]
    mode = _cv_border(border)
    w = kernel.weights
    separable = kernel.separable and not exact
    two_d = not separable and w.size > _DFT_SAFE_TAPS
    if border == "wrap" or two_d:
        # OpenCV has no wrap border for filters, and big 2-D kernels need exact padded rows:
        # materialize the halo rows (and, for wrap, the halo columns) by the border rule.
        left = halo(kw)[0] if border == "wrap" else 0
        rows_idx = np.arange(band.start - top, band.stop + kh - 1 - top)
        cols_idx = np.arange(-left, width + kw - 1 - left) if border == "wrap" else None
        view, off = _take(src, rows_idx, cols_idx, border), top
    else:
        view, off, left = src[band.read_start : band.read_stop], band.start - band.read_start, 0
    if view.shape[2] == 1:
        view = view[:, :, 0]
    if not two_d:
        res = _cv_filter(view, ddepth, kernel, _scratch(view.shape, _DEPTH_DTYPE[ddepth]), mode, separable)
    else:
        # A sum of 1-D row filters: a fixed order of taps, never OpenCV's size-dependent DFT.
        res = None
        for i in range(kh):
            if w[i].any():
                r = cv2.filter2D(view[i : i + rows], ddepth, w[i : i + 1], anchor=(kw // 2, 0), borderType=mode)
                res = r if res is None else np.add(res, r, out=res)
        if res is None:
            res = np.zeros((rows,) + view.shape[1:], dtype=np.float32 if ddepth == cv2.CV_32F else np.float64)
        off = 0
    res = res[off : off + rows, left : left + width]
    return res if res.ndim == 3 else res[:, :, None]


def _weighted_sum(block, kernel, rows, width, acc_dtype=np.float64):
    """numpy: one vectorized multiply-add per nonzero weight over the padded block."""
    acc = np.zeros((rows, width, block.shape[2]), dtype=acc_dtype)
    for (i, j), w in np.ndenumerate(kernel.weights):
        if w:
            acc += w * block[i : i + rows, j : j + width]
    return acc


def _python_loops(block, kernel, rows, width):
    """The notebook's algorithm: a loop over every pixel, channel and weight."""
    w = kernel.weights.tolist()
    px = block.tolist()
    nc = block.shape[2]
    out = np.zeros((rows, width, nc), dtype=np.float64)
    for y in range(rows):
        for x in range(width):
            for c in range(nc):
                s = 0.0
                for i, wi in enumerate(w):
                    line = px[y + i]
                    for j, wij in enumerate(wi):
                        s += wij * line[x + j][c]
                out[y, x, c] = s
    return out


def correlate_band(src, band, kernel, border, implementation, *, acc=np.float64, exact=False):
    """Correlation of the band's output rows as float, shape ``(rows, W, C')``.

    C' is C for ``opencv`` (alpha is filtered too and overwritten later: cheaper than a copy)
    and the color channels for ``numpy``/``python``.
    """
    if implementation == "opencv":
        cv2 = _cv2()
        ddepth = cv2.CV_32F if acc == np.float32 else cv2.CV_64F
        return _opencv_band(src, band, kernel, border, ddepth, exact)
    nc = color_channels(src.shape[2])
    block = _padded(src[:, :, :nc], band, kernel.shape, border)
    if implementation == "numpy":
        return _weighted_sum(block.astype(np.float64), kernel, band.rows, src.shape[1])
    return _python_loops(block, kernel, band.rows, src.shape[1])


def map_output(f: np.ndarray, output: str, dtype, value_range=None) -> np.ndarray:
    """Map float responses to ``dtype`` (in place on ``f`` where possible).

    ``value_range`` is the whole image's ``(min, max)`` for ``normalize``.
    """
    maxval = float(np.iinfo(dtype).max)
    if output == "abs":
        f = np.abs(f, out=f)
    elif output == "offset":
        f = np.add(f, (maxval + 1) / 2, out=f)
    elif output == "normalize":
        lo, hi = value_range
        if hi > lo:
            f = np.multiply(np.subtract(f, lo, out=f), maxval / (hi - lo), out=f)
        else:
            f[...] = 0
    np.rint(f, out=f)
    np.clip(f, 0, maxval, out=f)
    return f.astype(dtype)


def band_range(src, band, kernel, border, implementation):
    """``(min, max)`` of the band's float response over color channels (for ``normalize``)."""
    acc = np.float64  # as filter_band computes it for normalize
    f = correlate_band(src, band, kernel, border, implementation, acc=acc, exact=True)
    f = f[:, :, : color_channels(src.shape[2])]
    return float(f.min()), float(f.max())


#: Rows of float32 per chunk of ``_cv_float_rows``: about this many bytes each for the input
#: and the response, so that both stay in the CPU's cache between the three passes; and at
#: least ``CHUNK_HALOS`` times the kernel's halo rows, which every chunk filters again.
FLOAT_CHUNK_BYTES = 3 << 20
CHUNK_HALOS = 8


def _cv_float_rows(src, dst, start, stop, kernel, border, output="clip"):
    """Output rows ``[start, stop)`` of ``dst`` by OpenCV through float32 (the fast path, for
    the outputs ``clip``, ``abs`` and ``offset``).

    OpenCV's own uint8-to-uint8 filters are the slow way to call it: ``cv2.sepFilter2D`` into
    float32 takes about half the time of the same filter into uint8, and ``cv2.filter2D`` on
    float32 about 40% of it on uint8 (which converts every pixel for every tap;
    docs/benchmarks.md). So the rows go through float32 a chunk at a time, small enough to stay
    in the CPU's cache: the chunk and its halo rows are filtered into float32 (separable
    kernels read the input dtype; 2-D kernels read an exact float32 copy). Then the chunk's own
    rows are mapped as ``map_output`` maps them: ``abs`` in place, and ``cv2.addWeighted`` adds
    the ``offset`` (or 0), rounds to nearest and saturates into ``dst``. Each chunk reads its
    real halo rows, or the image's edge where OpenCV's border rule applies: no row depends on
    where a band or a chunk starts, so every process count gives the same bits, and a band edge
    costs only its halo rows.
    """
    cv2 = _cv2()
    h, w, c = src.shape
    top, bottom = halo(kernel.shape[0])
    step = max(8, CHUNK_HALOS * (top + bottom), FLOAT_CHUNK_BYTES // (w * c * 4))
    mode = _cv_border(border)
    depth = cv2.CV_8U if src.dtype == np.uint8 else cv2.CV_16U
    shift = (float(np.iinfo(src.dtype).max) + 1) / 2 if output == "offset" else 0.0
    squeeze = (lambda a: a[:, :, 0]) if c == 1 else (lambda a: a)
    for r in range(start, stop, step):
        e = min(r + step, stop)
        lo, hi = max(r - top, 0), min(e + bottom, h)
        response = squeeze(_scratch((hi - lo, w, c), np.float32, 1))
        view = src[lo:hi]
        if not kernel.separable:
            view = _scratch((hi - lo, w, c), np.float32, 2)
            np.copyto(view, src[lo:hi])
        _cv_filter(squeeze(view), cv2.CV_32F, kernel, response, mode, kernel.separable)
        rows, out = response[r - lo : e - lo], squeeze(dst[r:e])
        if output == "abs":
            np.abs(rows, out=rows)
        res = cv2.addWeighted(rows, 1.0, rows, 0.0, shift, dst=out, dtype=depth)
        if res.__array_interface__["data"][0] != out.__array_interface__["data"][0]:
            out[...] = res.reshape(out.shape)


def filter_band(src, dst, band, kernel, border, output, implementation, *, value_range=None):
    """Filter one band of ``src`` (H, W, C) into rows ``[band.start, band.stop)`` of ``dst``.

    This is the whole computation; backends only decide where it runs.
    """
    nc = color_channels(src.shape[2])
    # normalize stretches the response's range to the full scale, and float32 rounding with it
    acc = np.float64 if output == "normalize" else work_dtype(kernel, src.dtype)
    rows = slice(band.start, band.stop)
    if implementation == "opencv" and output != "normalize" and acc == np.float32 and border != "wrap" and (
        kernel.separable or kernel.weights.size <= _DFT_SAFE_TAPS
    ):
        _cv_float_rows(src, dst, band.start, band.stop, kernel, border, output)
    else:
        # normalize stretches the range to full scale, and any error with it: no rank-1 factors
        # (a response that is exactly constant must stay constant, see tests/test_fuzz.py)
        f = correlate_band(src, band, kernel, border, implementation, acc=acc, exact=output == "normalize")
        dst[rows, :, :nc] = map_output(np.ascontiguousarray(f[:, :, :nc]), output, src.dtype, value_range)
    if nc < src.shape[2]:
        dst[rows, :, nc:] = src[rows, :, nc:]
