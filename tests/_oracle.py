"""The oracle: scipy.ndimage.correlate in float64, then the output mapping the issue specifies.

Written from the issue's text, not from the engine's code, so that the two can disagree.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

#: The engine's border names -> scipy.ndimage modes (constant pads with cval=0).
SCIPY_MODE = {"replicate": "nearest", "reflect": "reflect", "mirror": "mirror", "wrap": "wrap", "constant": "constant"}


def color_channels(c: int) -> int:
    """Channels that are filtered: alpha (the last of 2 or 4) is copied unchanged."""
    return {1: 1, 2: 1, 3: 3, 4: 3}[c]


#: The same rules as numpy.pad modes, to extend an image by hand.
NUMPY_PAD = {"replicate": "edge", "reflect": "symmetric", "mirror": "reflect", "wrap": "wrap", "constant": "constant"}


def _correlate_channel(x: np.ndarray, w: np.ndarray, border: str) -> np.ndarray:
    (kh, kw), (h, wd) = w.shape, x.shape
    if border == "reflect" and (kh // 2 >= h or kw // 2 >= wd):
        # scipy 1.17's N-D correlate reads garbage in 'reflect' mode when the halo is several
        # times the line (e.g. 2 rows, 16-tap column): extend with numpy.pad, then correlate.
        pad = ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2))
        full = ndi.correlate(np.pad(x, pad, mode=NUMPY_PAD[border]), w, mode="constant")
        return full[pad[0][0] : pad[0][0] + h, pad[1][0] : pad[1][0] + wd]
    return ndi.correlate(x, w, mode=SCIPY_MODE[border], cval=0.0)


def scale_free(weights) -> tuple[np.ndarray, int]:
    """``(weights * 2**p, p)`` with the largest ``|weight|`` in [1, 2) (p = 0 for all zeros):
    exact in float64."""
    w = np.asarray(weights, dtype=np.float64)
    top = float(np.abs(w).max(initial=0.0))
    p = 1 - int(np.frexp(top)[1]) if top else 0
    return np.ldexp(w, p), p


def correlate(image: np.ndarray, weights, border: str) -> np.ndarray:
    """Float64 correlation of every color channel of ``image`` ((H, W) or (H, W, C)).

    scipy.ndimage.correlate skips every weight with ``|w| <= DBL_EPSILON``: it gets the weights
    times the power of two that makes the largest one 1 to 2 (exact), and the response is
    scaled back."""
    img = image if image.ndim == 3 else image[:, :, None]
    w, p = scale_free(weights)
    nc = color_channels(img.shape[2])
    f = np.stack([_correlate_channel(img[:, :, c].astype(np.float64), w, border) for c in range(nc)], axis=-1)
    return np.ldexp(f, -p)


def map_output(f: np.ndarray, output: str, dtype, weights) -> np.ndarray:
    """Float responses -> integers of ``dtype``: round half to even, clip (after the mapping)."""
    return np.clip(np.rint(mapped(f, output, dtype, weights)), 0, float(np.iinfo(dtype).max)).astype(dtype)


def expected(image: np.ndarray, weights, border: str, output: str) -> np.ndarray:
    """The oracle rounded to nearest, same shape and dtype as ``image`` (``assert_close`` also
    accepts the other neighbour within the tie band)."""
    img = image if image.ndim == 3 else image[:, :, None]
    if output == "normalize":  # stretched to full scale: the kernel's scale cancels
        weights = scale_free(weights)[0]
    res = img.copy()
    nc = color_channels(img.shape[2])
    res[:, :, :nc] = map_output(correlate(img, weights, border), output, img.dtype, weights)
    return res if image.ndim == 3 else res[:, :, 0]


#: Exactness rule (issue 11). The engine may compute in float32 only where the float32 rounding
#: error provably stays within a quarter gray level (``maxval * sum|w| * taps * 2**-24 <= 1/4``), in
#: float64 elsewhere, and may run a kernel within ``RANK1_RTOL`` of rank 1 as its two factors.
#: Every output must then equal the float64 oracle rounded to nearest, except where the mapped
#: response lies within that error bound of a .5 tie: there either neighbour is right.
F32_MAX_ERROR = 0.25
RANK1_RTOL = 1e-7


def rank1_error(weights) -> float:
    """``sum |w - best rank-1 approximation|`` when that is within ``RANK1_RTOL * sum |w|``, else 0
    (the kernel then runs as a 2-D filter with its own weights)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[0] == 1 or w.shape[1] == 1 or not np.abs(w).sum():
        return 0.0
    u, s, vt = np.linalg.svd(w)
    err = float(np.abs(s[0] * np.outer(u[:, 0], vt[0]) - w).sum())
    return err if err <= RANK1_RTOL * np.abs(w).sum() else 0.0


def error_bound(dtype, weights, output: str, response: np.ndarray) -> float:
    """How far (in output levels) the engine's mapped response may lie from the float64 truth."""
    top = float(np.iinfo(dtype).max)
    w = np.asarray(weights, dtype=np.float64)
    scale = top * float(np.abs(w).sum())
    f32 = scale * w.size * 2.0**-24  # the rule that allows float32 sums: this at most F32_MAX_ERROR
    if f32 <= F32_MAX_ERROR:
        bound = f32 + ((top + 1) * 2.0**-24 if output == "offset" else 0.0)  # and adding the offset in float32
    else:
        bound = scale * w.size * 2.0**-52
    bound += top * rank1_error(w)
    if output == "normalize":  # float64 from the exact weights, stretched by top / (hi - lo)
        span = float(response.max() - response.min())
        bound = 4 * (scale * w.size * 2.0**-52 + 1e-12) * (top / span if span > 0 else 1.0)
    return bound + 1e-9  # the oracle's own float64 rounding


def mapped(f: np.ndarray, output: str, dtype, weights) -> np.ndarray:
    """Float responses after the output mapping, before rounding and clipping. ``normalize``
    counts a range within the float64 rounding error of the sums (``taps * 2**-52 * top * sum
    |w|``) as a constant response: no float64 computation resolves it."""
    top = float(np.iinfo(dtype).max)
    f = np.array(f, dtype=np.float64)
    if output == "abs":
        return np.abs(f)
    if output == "offset":
        return f + (top + 1) / 2
    if output == "normalize":
        w = np.asarray(weights, dtype=np.float64)
        lo, hi = f.min(), f.max()
        flat = hi - lo <= w.size * 2.0**-52 * top * np.abs(w).sum()
        return np.zeros_like(f) if flat else (f - lo) / (hi - lo) * top
    assert output == "clip", output
    return f


def assert_close(got: np.ndarray, image: np.ndarray, weights, border: str, output: str, what: str = "") -> None:
    """``got`` has the image's shape and dtype, equals the oracle rounded to nearest wherever the
    exact value is not within ``error_bound`` of a .5 tie (there it may round either way), and
    alpha is unchanged."""
    img = image if image.ndim == 3 else image[:, :, None]
    g = got if got.ndim == 3 else got[:, :, None]
    assert got.shape == image.shape and got.dtype == image.dtype, (got.shape, got.dtype, image.shape, image.dtype)
    nc = color_channels(img.shape[2])
    if output == "normalize":  # stretched to full scale: the kernel's scale cancels
        weights = scale_free(weights)[0]
    response = correlate(img, weights, border)
    m = mapped(response, output, img.dtype, weights)
    top = float(np.iinfo(img.dtype).max)
    eps = error_bound(img.dtype, weights, output, response)
    lo = np.clip(np.floor(m - eps + 0.5), 0, top)  # every rounding of a value within eps of m
    hi = np.clip(np.floor(m + eps + 0.5), 0, top)
    v = g[:, :, :nc].astype(np.float64)
    bad = (v < lo) | (v > hi)
    if bad.any():
        y, x, c = (int(i[0]) for i in np.nonzero(bad))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values differ from the oracle rounded to nearest "
            f"(first at row {y}, col {x}, channel {c}: got {int(v[y, x, c])}, want {int(lo[y, x, c])}"
            f"{'' if lo[y, x, c] == hi[y, x, c] else f' or {int(hi[y, x, c])}'}; exact {m[y, x, c]!r}, "
            f"tie band +-{eps:.3g})"
        )
    if img.shape[2] in (2, 4):
        assert np.array_equal(g[:, :, -1], img[:, :, -1]), f"{what}: alpha channel changed"
