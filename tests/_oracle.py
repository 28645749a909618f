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


def correlate(image: np.ndarray, weights, border: str) -> np.ndarray:
    """Float64 correlation of every color channel of ``image`` ((H, W) or (H, W, C))."""
    img = image if image.ndim == 3 else image[:, :, None]
    w = np.asarray(weights, dtype=np.float64)
    nc = color_channels(img.shape[2])
    return np.stack([_correlate_channel(img[:, :, c].astype(np.float64), w, border) for c in range(nc)], axis=-1)


def map_output(f: np.ndarray, output: str, dtype) -> np.ndarray:
    """Float responses -> integers of ``dtype``: round half to even, clip (after the mapping)."""
    top = float(np.iinfo(dtype).max)
    f = np.array(f, dtype=np.float64)
    if output == "abs":
        f = np.abs(f)
    elif output == "offset":
        f = f + (top + 1) / 2
    elif output == "normalize":
        lo, hi = f.min(), f.max()
        f = (f - lo) * (top / (hi - lo)) if hi > lo else np.zeros_like(f)
    elif output != "clip":
        raise AssertionError(output)
    return np.clip(np.rint(f), 0, top).astype(dtype)


def expected(image: np.ndarray, weights, border: str, output: str) -> np.ndarray:
    """What the engine must return (within one gray level), same shape and dtype as ``image``."""
    img = image if image.ndim == 3 else image[:, :, None]
    res = img.copy()
    nc = color_channels(img.shape[2])
    res[:, :, :nc] = map_output(correlate(img, weights, border), output, img.dtype)
    return res if image.ndim == 3 else res[:, :, 0]


def assert_close(got: np.ndarray, image: np.ndarray, weights, border: str, output: str, what: str = "") -> None:
    """``got`` has the image's shape and dtype, is within 1 of the oracle, and alpha is unchanged."""
    want = expected(image, weights, border, output)
    assert got.shape == image.shape and got.dtype == image.dtype, (got.shape, got.dtype, image.shape, image.dtype)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    if diff.max() > 1:
        y, x = np.unravel_index(np.argmax(diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=2)), diff.shape[:2])
        raise AssertionError(
            f"{what}: {int((diff > 1).sum())} values differ from the oracle by more than 1 "
            f"(max {int(diff.max())} at row {y}, col {x}: got {got[y, x]}, want {want[y, x]})"
        )
    if image.ndim == 3 and image.shape[2] in (2, 4):
        assert np.array_equal(got[:, :, -1], image[:, :, -1]), f"{what}: alpha channel changed"
