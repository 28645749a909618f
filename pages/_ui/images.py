"""Images for people: samples, facts, size presets, 8-bit display versions, compositions.

Pure numpy/OpenCV functions (no Streamlit calls), so tests can call them directly. Pixels that
reach the engine are never altered here; only copies made for the screen are mapped to 8 bits,
downscaled, or composed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "sample_images"
#: Gallery order and titles; other image files in the folder follow, titled by file name.
SAMPLE_TITLES = {
    "astronaut.png": "Astronaut",
    "fence.png": "Fence",
    "chessboard.png": "Chessboard",
    "digits.png": "Digits",
    "camera.png": "Camera",
    "coins.png": "Coins",
    "chelsea.png": "Cat",
    "coffee.png": "Coffee",
    "rocket.jpg": "Rocket",
    "brick.png": "Brick",
    "hubble_deep_field.jpg": "Deep field",
    "zone_plate_16bit.png": "Zone plate",
}
DEFAULT_SAMPLE = "astronaut.png"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp"]
#: Size presets for timing demos: target pixel counts (None keeps the original).
PRESETS = {"original": None, "1 MP": 1 << 20, "4 MP": 1 << 22, "16 MP": 1 << 24}
#: Longest side of the pictures sent to the browser (the engine always works at full size).
DISPLAY_MAX_SIDE = 1024


def sample_names() -> list[str]:
    """Image files in ``sample_images/``, in gallery order."""
    exts = {"." + e for e in UPLOAD_TYPES}
    present = {p.name for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in exts}
    known = [n for n in SAMPLE_TITLES if n in present]
    return known + sorted(present - set(known))


def sample_title(name: str) -> str:
    return SAMPLE_TITLES.get(name, Path(name).stem.replace("_", " ").capitalize())


@dataclass(frozen=True)
class Facts:
    """What the notebook printed about an image: Pillow's format, size and mode, numpy's dtype."""

    format: str
    width: int
    height: int
    mode: str
    dtype: str
    channels: int
    nbytes: int  # of the file

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("format", self.format),
            ("size", f"{self.width} x {self.height}"),
            ("mode", self.mode),
            ("dtype", f"{self.dtype}, {self.channels} channel{'s' if self.channels > 1 else ''}"),
            ("file", f"{self.nbytes / 1024:,.0f} KB"),
        ]


def facts_of(data: bytes, array: np.ndarray) -> Facts:
    """Facts for decoded ``array`` read from the file ``data`` (format and mode from its header)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode = im.format or "?", im.mode
    except Exception:  # noqa: BLE001 - facts are informative; load_image already vetted the data
        fmt, mode = "?", "?"
    h, w, c = array.shape
    return Facts(fmt, w, h, mode, str(array.dtype), c, len(data))


def preset_shape(height: int, width: int, target: int | None) -> tuple[int, int]:
    """``(h, w)`` with about ``target`` pixels and the same aspect ratio (the original if None)."""
    if target is None:
        return height, width
    s = math.sqrt(target / (height * width))
    return max(1, round(height * s)), max(1, round(width * s))


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``shape`` = (h, w): area averaging down, bicubic up (saturating)."""
    h, w = shape
    if (h, w) == image.shape[:2]:
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.ascontiguousarray(out.reshape(h, w, image.shape[2]))


def center_square(image: np.ndarray, side: int) -> np.ndarray:
    """A ``side`` x ``side`` version: the largest centred square, resampled."""
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return resample(np.ascontiguousarray(image[y : y + s, x : x + s]), (side, side))


def display_note(dtype) -> str:
    """What ``to_display`` did to values of this dtype, for captions ('' for uint8)."""
    if np.dtype(dtype) == np.uint16:
        return "16-bit shown as 8-bit (value / 257); downloads keep 16 bits"
    return ""


def to_display(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """An 8-bit copy for the screen: downscaled to ``max_side``, 16-bit mapped by ``/ 257``.

    Returns ``(H, W)`` for gray, ``(H, W, 4)`` for gray + alpha and RGBA, ``(H, W, 3)`` for RGB:
    the shapes ``st.image`` accepts (it rejects 16-bit and signed arrays).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w = a.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], a.shape[2])
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"image must be uint8 or uint16, got {a.dtype}")
    c = a.shape[2]
    if c == 1:
        return np.ascontiguousarray(a[:, :, 0])
    if c == 2:
        g, alpha = a[:, :, 0], a[:, :, 1]
        return np.dstack([g, g, g, alpha])
    return np.ascontiguousarray(a)


def as_rgb(display: np.ndarray) -> np.ndarray:
    """A display array as 3-channel RGB (alpha composited over a light checker)."""
    if display.ndim == 2:
        return np.dstack([display] * 3)
    if display.shape[2] == 4:
        h, w = display.shape[:2]
        yy, xx = np.indices((h, w))
        checker = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 235, 205).astype(np.float32)
        alpha = display[:, :, 3:4].astype(np.float32) / 255
        return np.rint(display[:, :, :3] * alpha + checker * (1 - alpha)).astype(np.uint8)
    return display


def encode_png(display: np.ndarray, compression: int = 1) -> bytes:
    """PNG bytes of an 8-bit display array (fast compression: these go to the browser once)."""
    a = display
    if a.ndim == 3:
        a = a[:, :, ::-1] if a.shape[2] == 3 else a[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array of these shapes
        raise ValueError(f"could not encode a {display.shape} image")
    return buf.tobytes()


def before_after(left: np.ndarray, right: np.ndarray, split: float) -> np.ndarray:
    """``left`` up to ``split`` (0..1 of the width), ``right`` after it, and a divider line.

    Both are display arrays of the same height and width (gray, RGB or RGBA).
    """
    a, b = as_rgb(left), as_rgb(right)
    if a.shape != b.shape:
        raise ValueError(f"before and after must have the same shape, got {a.shape} and {b.shape}")
    w = a.shape[1]
    x = int(round(min(max(split, 0.0), 1.0) * w))
    out = b.copy()
    out[:, :x] = a[:, :x]
    line = max(1, w // 400)
    lo, hi = max(0, x - line), min(w, x + line)
    out[:, max(0, lo - 1) : min(w, hi + 1)] = (20, 20, 20)
    out[:, lo:hi] = (255, 255, 255)
    return out


@dataclass(frozen=True)
class DiffStats:
    max: int  # largest absolute difference, in gray levels of the dtype
    mean: float
    changed: float  # fraction of pixels where any colour channel differs
    levels: int  # 255 or 65535


def difference(a: np.ndarray, b: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> tuple[np.ndarray, DiffStats]:
    """Heat map of ``|a - b|`` (largest over colour channels, alpha ignored) and its statistics.

    The map is stretched so that the largest difference is the brightest colour (inferno);
    statistics are exact, on the full-size arrays.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"images to compare must match, got {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    c = a.shape[2]
    color = c if c in (1, 3) else c - 1
    d = cv2.absdiff(a[:, :, :color], b[:, :, :color]).reshape(a.shape[0], a.shape[1], color).max(axis=2)
    peak = int(d.max())
    stats = DiffStats(peak, float(d.mean()), float(np.count_nonzero(d)) / d.size, int(np.iinfo(a.dtype).max))
    h, w = d.shape
    if max(h, w) > max_side:  # area-average the map itself: a thin edge stays visible
        s = max_side / max(h, w)
        d = cv2.resize(d, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    scaled = d.astype(np.float32) * (255.0 / peak if peak else 0.0)
    heat = cv2.applyColorMap(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(heat[:, :, ::-1]), stats


def thumbnail(image: np.ndarray, side: int = 160) -> np.ndarray:
    """A square-cropped display thumbnail, at most ``side`` pixels."""
    return to_display(center_square(image, min(side, *image.shape[:2])), side)
