"""The band kernel: correlate one row band of an image and map it to the output dtype.

Plain functions of (input array, band, kernel, options) -> rows written into an output array.
They run the same in the parent (tests, the Dask backend) and in worker processes. What each
border mode means, and which OpenCV constant extrapolates it, is ``_options.BORDER_TABLE``.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ._bands import Band, halo
from ._kernels import Kernel
from ._options import BORDER, border_index

__all__ = [
    "PYTHON_MAX_PIXELS",
    "color_channels",
    "correlate_band",
    "map_output",
    "filter_band",
    "band_range",
    "resolved_range",
    "route",
    "routes",
]

PYTHON_MAX_PIXELS = 256 * 256
#: Above this many taps a 2-D OpenCV filter may switch to a DFT, whose rounding depends on the
#: band's size; such kernels run as a sum of 1-D row filters so every process count agrees.
_DFT_SAFE_TAPS = 49
_DEPTH_DTYPE = {5: np.float32, 6: np.float64}  # cv2.CV_32F, cv2.CV_64F


def _cv2():
    import cv2

    return cv2


def color_channels(c: int) -> int:
    """Channels that are filtered: all but a trailing alpha (C = 2 or 4)."""
    return c if c in (1, 3) else c - 1


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


def _scratch(shape, dtype, which=0) -> np.ndarray:
    """A reusable buffer, one per thread, dtype and ``which``: no fresh pages per band."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get((dtype, which))
    if buf is None or buf.size < n:
        buf = bufs[dtype, which] = np.empty(max(n, 1), dtype=dtype)
    return buf[:n].reshape(shape)


def _cv_filter(view, ddepth, weights, dst, mode, delta=0.0):
    """One OpenCV call on ``view`` into ``dst``: ``sepFilter2D`` with ``weights = (column, row)``,
    ``filter2D`` with ``weights = (2-D weights,)``; ``delta`` is added before rounding. Returns
    ``dst`` (or OpenCV's own array if it could not write into ``dst``)."""
    cv2 = _cv2()
    if len(weights) == 2:
        column, row = weights
        return cv2.sepFilter2D(view, ddepth, row, column, dst=dst, delta=delta, borderType=mode)
    return cv2.filter2D(view, ddepth, weights[0], dst=dst, delta=delta, borderType=mode)


def _opencv_band(src, band, kernel, border, ddepth, exact=False):
    """Correlate with OpenCV; returns the band's rows for all channels, dtype from ``ddepth``.
    ``exact``: the 2-D weights themselves in float64, never the rank-1 factors (which differ
    from them by up to ``SEPARABLE_RTOL``)."""
    cv2 = _cv2()
    kh, kw = kernel.shape
    top = halo(kh)[0]
    rows, width = band.rows, src.shape[1]
    w = kernel.weights
    weights = (w,) if exact else kernel.opencv_weights(src.dtype)
    two_d = len(weights) == 1 and w.size > _DFT_SAFE_TAPS
    built = BORDER[border].opencv is None  # OpenCV cannot extrapolate it: every halo is built here
    # with every halo built, OpenCV's own border only pads columns that are cropped away below
    mode = cv2.BORDER_CONSTANT if built else BORDER[border].opencv_code
    if built or two_d:
        # Big 2-D kernels need exact padded rows too: materialize the halo rows (and, when
        # OpenCV cannot extrapolate the border, the halo columns) by the border rule.
        left = halo(kw)[0] if built else 0
        rows_idx = np.arange(band.start - top, band.stop + kh - 1 - top)
        cols_idx = np.arange(-left, width + kw - 1 - left) if built else None
        view, off = _take(src, rows_idx, cols_idx, border), top
    else:
        view, off, left = src[band.read_start : band.read_stop], band.start - band.read_start, 0
    if view.shape[2] == 1:
        view = view[:, :, 0]
    if not two_d:
        res = _cv_filter(view, ddepth, weights, _scratch(view.shape, _DEPTH_DTYPE[ddepth]), mode)
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


def output_offset(dtype) -> float:
    """What output ``offset`` adds: half the range, so a zero response shows mid-gray (128, 32768)."""
    return (float(np.iinfo(dtype).max) + 1) / 2


def map_output(f: np.ndarray, output: str, dtype, value_range=None) -> np.ndarray:
    """Map float responses to ``dtype`` (in place on ``f`` where possible).

    ``value_range`` is the whole image's ``(min, max)`` for ``normalize``.
    """
    maxval = float(np.iinfo(dtype).max)
    if output == "abs":
        f = np.abs(f, out=f)
    elif output == "offset":
        f = np.add(f, output_offset(dtype), out=f)
    elif output == "normalize":
        lo, hi = (float(v) for v in value_range)
        scale = maxval / (hi - lo) if hi > lo else 0.0
        if math.isinf(scale):  # a subnormal range: (f - lo) / (hi - lo) <= 1 stays finite
            f = np.multiply(np.divide(np.subtract(f, lo, out=f), hi - lo, out=f), maxval, out=f)
        elif scale:
            f = np.multiply(np.subtract(f, lo, out=f), scale, out=f)
        else:
            f[...] = 0
    np.rint(f, out=f)
    np.clip(f, 0, maxval, out=f)
    return f.astype(dtype)


def resolved_range(value_range, kernel: Kernel, dtype):
    """``normalize``'s ``(min, max)``, or ``(min, min)`` (every output 0) when the whole range
    lies within the float64 rounding error of the sums, ``taps * 2**-52 * maxval * sum |w|``:
    such a response (0.1 + 0.2 - 0.3 times a pixel) cannot be told from a constant one, and
    stretching it would show each implementation's rounding noise at full scale."""
    lo, hi = (float(v) for v in value_range)
    noise = kernel.weights.size * 2.0**-52 * float(np.iinfo(dtype).max) * float(np.abs(kernel.weights).sum())
    return (lo, lo) if hi - lo <= noise else (lo, hi)


def band_range(src, band, kernel, border, implementation):
    """``(min, max)`` of the band's float response over color channels (for ``normalize``)."""
    acc = np.float64  # as filter_band computes it for normalize (with the rescaled kernel)
    f = correlate_band(src, band, kernel.rescaled(), border, implementation, acc=acc, exact=True)
    f = f[:, :, : color_channels(src.shape[2])]
    return float(f.min()), float(f.max())


#: 2-D kernels up to this many taps take the ``direct`` route on 8-bit images: OpenCV's 8-bit
#: ``filter2D`` beats its float32 route for 3x3 (31 against 52 ms at 2048x4096 RGB, one thread)
#: and loses from 5x5 on (75 against 61 ms); ``benchmarks/routes.py`` measures every route.
DIRECT_2D_TAPS = 9


def routes(kernel: Kernel, dtype, border: str, output: str, implementation: str = "opencv") -> tuple[str, ...]:
    """Every ``ROUTES`` key that computes this request within the exactness rule, the one that
    ``route`` takes first. (``benchmarks/routes.py`` times them all; tests check them all.)

    ``direct``: 8-bit images, outputs ``clip``, ``offset`` (OpenCV adds it as ``delta``) and
    ``abs`` (through int16, then ``cv2.convertScaleAbs``), separable kernels and 2-D ones up to
    49 taps; first for kernels OpenCV's 8-bit code runs vectorized (``Kernel.mirrored_factors``,
    one-row kernels, 2-D kernels up to ``DIRECT_2D_TAPS``), after ``float32`` otherwise.
    ``float32``: float32 sums within ``F32_MAX_ERROR``, any border but ``wrap``, outputs but
    ``normalize``, separable kernels and 2-D ones up to 49 taps. ``general``: always. The order
    comes from ``benchmarks/routes.py`` on an Intel Xeon (AVX-512) and is checked there on any CPU.

    >>> from engine import KERNELS
    >>> routes(KERNELS["gaussian"], np.uint8, "replicate", "clip"), routes(KERNELS["gaussian"], np.uint16, "mirror", "abs")
    (('direct', 'float32', 'general'), ('float32', 'general'))
    """
    if implementation != "opencv":
        return (implementation,)
    if output == "normalize" or BORDER[border].opencv is None or kernel.precision(dtype) is np.float64:
        return ("general",)
    if not kernel.separable and kernel.weights.size > _DFT_SAFE_TAPS:  # never OpenCV's size-dependent DFT
        return ("general",)
    fast = ("float32", "general")
    if np.dtype(dtype) == np.uint8:
        if kernel.separable:
            direct_first = kernel.mirrored_factors or kernel.shape[0] == 1  # the latter runs as filter2D
        else:
            direct_first = kernel.weights.size <= DIRECT_2D_TAPS
        return ("direct",) + fast if direct_first else ("float32", "direct", "general")
    return fast


def route(kernel: Kernel, dtype, border: str, output: str, implementation: str = "opencv") -> str:
    """The ``ROUTES`` key that computes this request: a function of the request alone.

    ``direct`` for 8-bit images and kernels that OpenCV's 8-bit code runs vectorized, ``float32``
    for 16-bit images and other kernels up to 49 taps, ``general`` for
    ``normalize`` (float64 from the exact weights), ``wrap``, bigger 2-D kernels and kernels
    whose float32 sums could err by more than ``F32_MAX_ERROR`` (see ``routes``). Every route
    meets the same exactness rule, but two routes may round a value within float32's error of a
    .5 tie differently: that is why timing never picks the route.

    >>> from engine import KERNELS
    >>> [route(KERNELS[k], np.uint8, "replicate", "clip") for k in ("gaussian", "laplacian", "motion_blur")]
    ['direct', 'direct', 'general']
    >>> route(KERNELS["gaussian"], np.uint16, "replicate", "clip"), route(KERNELS["gaussian"], np.uint8, "wrap", "clip")
    ('float32', 'general')
    """
    return routes(kernel, dtype, border, output, implementation)[0]


def _squeeze(a: np.ndarray) -> np.ndarray:
    """OpenCV reads a trailing axis of 1 as width: give it (H, W) for one channel."""
    return a[:, :, 0] if a.shape[2] == 1 else a


def _into(res, out) -> None:
    """OpenCV writes into ``dst`` when it can; if it made its own array, copy that in."""
    if res.__array_interface__["data"][0] != out.__array_interface__["data"][0]:
        out[...] = res.reshape(out.shape)


def _direct_rows(src, dst, start, stop, kernel, border, output):
    """Output rows ``[start, stop)`` by the ``direct`` route (8-bit ``src``, outputs ``clip`` and
    ``offset``; ``abs`` goes through ``_chunked_rows`` in int16).

    One OpenCV call from ``src[start:stop]`` straight into ``dst[start:stop]``, with the float32
    weights of ``Kernel.opencv_weights`` (exactly symmetric factors: OpenCV's vectorized 8-bit
    code) and the offset as ``delta``. OpenCV takes that view's first and last rows for the
    image's edges, so the rows whose window crosses an inner band edge (``top`` rows after
    ``start``, ``bottom`` rows before ``stop``) are computed again from a slab that holds their
    real neighbour rows: each output row then depends only on its own window, never on where a
    band starts, and every process count gives the same bits.
    """
    h = src.shape[0]
    top, bottom = halo(kernel.shape[0])
    weights = kernel.opencv_weights(src.dtype)
    mode = BORDER[border].opencv_code
    delta = output_offset(src.dtype) if output == "offset" else 0.0
    out = _squeeze(dst[start:stop])
    _into(_cv_filter(_squeeze(src[start:stop]), -1, weights, out, mode, delta), out)
    redo = []
    if start > 0 and top:
        redo.append([start, min(start + top, stop)])
    if stop < h and bottom:
        a = max(stop - bottom, start)
        if redo and a <= redo[-1][1]:
            redo[-1][1] = stop
        else:
            redo.append([a, stop])
    for a, b in redo:
        lo, hi = max(a - top, 0), min(b + bottom, h)
        slab = _squeeze(_scratch((hi - lo,) + src.shape[1:], src.dtype, 3))
        slab = _cv_filter(_squeeze(src[lo:hi]), -1, weights, slab, mode, delta)
        dst[a:b] = slab[a - lo : b - lo].reshape(dst[a:b].shape)


#: Bytes of scratch per chunk of ``_chunked_rows``: the chunk's response (and, for 2-D kernels
#: on the float32 route, its float32 input) stays in the CPU's cache until it is rounded; and a
#: chunk holds at least ``CHUNK_HALOS`` times the kernel's halo rows, which it filters again.
CHUNK_BYTES = 3 << 20
CHUNK_HALOS = 8


def _chunked_rows(src, dst, start, stop, kernel, border, output, scratch=np.float32):
    """Output rows ``[start, stop)`` of ``dst``, a chunk of rows at a time through ``scratch``:
    the ``float32`` route (outputs ``clip``, ``abs``, ``offset``), or int16 for the ``direct``
    route's ``abs`` on 8-bit images.

    Each chunk and its real halo rows (or the image's edge, where OpenCV's border rule applies)
    is filtered into the scratch dtype: separable kernels read the input dtype, 2-D kernels on
    float32 an exact float32 copy (OpenCV's 8-bit ``filter2D`` converts every pixel for every
    tap). Then the chunk's own rows are mapped as ``map_output`` maps them: int16 by
    ``cv2.convertScaleAbs`` (|x|, saturated); float32 by ``abs`` in place and ``cv2.addWeighted``,
    which adds the offset (or 0), rounds to nearest and saturates into ``dst``. No row depends
    on where a band or a chunk starts, so every process count gives the same bits.
    """
    cv2 = _cv2()
    h, w, c = src.shape
    top, bottom = halo(kernel.shape[0])
    scratch = np.dtype(scratch)
    step = max(8, CHUNK_HALOS * (top + bottom), CHUNK_BYTES // (w * c * scratch.itemsize))
    weights = kernel.opencv_weights(src.dtype)
    mode = BORDER[border].opencv_code
    depth = cv2.CV_8U if src.dtype == np.uint8 else cv2.CV_16U
    ddepth = cv2.CV_16S if scratch == np.int16 else cv2.CV_32F
    copy = len(weights) == 1 and scratch == np.float32
    shift = output_offset(src.dtype) if output == "offset" else 0.0
    for r in range(start, stop, step):
        e = min(r + step, stop)
        lo, hi = max(r - top, 0), min(e + bottom, h)
        response = _squeeze(_scratch((hi - lo, w, c), scratch, 1))
        view = src[lo:hi]
        if copy:
            view = _scratch((hi - lo, w, c), np.float32, 2)
            np.copyto(view, src[lo:hi])
        _into(_cv_filter(_squeeze(view), ddepth, weights, response, mode), response)
        rows, out = response[r - lo : e - lo], _squeeze(dst[r:e])
        if scratch == np.int16:
            _into(cv2.convertScaleAbs(rows, dst=out), out)
            continue
        if output == "abs":
            np.abs(rows, out=rows)
        _into(cv2.addWeighted(rows, 1.0, rows, 0.0, shift, dst=out, dtype=depth), out)


def filter_band(src, dst, band, kernel, border, output, implementation, *, value_range=None, how=None) -> str:
    """Filter one band of ``src`` (H, W, C) into rows ``[band.start, band.stop)`` of ``dst``;
    returns the route that computed it: ``route(...)``, or ``how`` when given (one of
    ``routes(...)``: benchmarks and tests run each).

    This is the whole computation; backends only decide where it runs.
    """
    nc = color_channels(src.shape[2])
    rows = slice(band.start, band.stop)
    eligible = routes(kernel, src.dtype, border, output, implementation)
    if how is None:
        how = eligible[0]
    elif how not in eligible:
        raise ValueError(f"route {how!r} does not compute this request; it may take {', '.join(eligible)}")
    if how == "direct" and output == "abs":
        _chunked_rows(src, dst, band.start, band.stop, kernel, border, output, np.int16)
    elif how == "direct":
        _direct_rows(src, dst, band.start, band.stop, kernel, border, output)
    elif how == "float32":
        _chunked_rows(src, dst, band.start, band.stop, kernel, border, output)
    else:
        # normalize stretches the range to full scale, and any error with it: float64 from the
        # exact weights (a response that is exactly constant must stay constant, tests/test_fuzz.py),
        # scaled by a power of two (``Kernel.rescaled``, as ``band_range`` does)
        if output == "normalize":
            kernel, acc = kernel.rescaled(), np.float64
            value_range = resolved_range(value_range, kernel, src.dtype)
        else:
            acc = kernel.precision(src.dtype)
        f = correlate_band(src, band, kernel, border, implementation, acc=acc, exact=output == "normalize")
        dst[rows, :, :nc] = map_output(np.ascontiguousarray(f[:, :, :nc]), output, src.dtype, value_range)
    if nc < src.shape[2]:
        dst[rows, :, nc:] = src[rows, :, nc:]
    return how
