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

from .fmt import nbytes

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
#: Size presets for timing demos: target pixel counts (None keeps the original). Named for powers
#: of two (2**20 pixels, 1.05 MP); the pages print megapixels and bytes in decimal (``fmt``).
PRESETS = {"original": None, "1 MP": 1 << 20, "4 MP": 1 << 22, "16 MP": 1 << 24}
#: Longest side of the before/after and difference pictures (the engine always works at full size).
DISPLAY_MAX_SIDE = 1024
#: Longest side of the results row's previews: three side by side on a 1280 px page are ~400 px
#: wide each; half of DISPLAY_MAX_SIDE, so a preview is one fast 2x2 area step from the display
#: version. The before/after view gets DISPLAY_MAX_SIDE.
PREVIEW_SIDE = 512
#: Pictures smaller than this (longest side) are enlarged by whole pixels (nearest neighbour) for
#: the screen: a 1x1 image would otherwise be one dot, and a before/after split would cover it.
SCREEN_MIN_SIDE = 256
#: JPEG quality of the previews (lossy, but 10-20x faster to encode than PNG and 8x smaller;
#: downloads are exact PNG, and statistics use the full arrays).
JPEG_QUALITY = 90


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
            ("file", nbytes(self.nbytes)),
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
    a = shrink(a, max_side)
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


def shrink(a: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, C)`` area-averaged down so that its longest side is ``max_side`` (as is if smaller).

    In two steps, because OpenCV's area resize is 2-3x faster for a whole-number factor: first by
    ``k = floor(side / max_side)`` on the largest block of whole k x k cells (dropping at most k - 1
    edge rows and columns, invisible at screen size), then by the remaining factor under 2.
    """
    h, w, c = a.shape
    if max(h, w) <= max_side:
        return a
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    k = max(h, w) // max_side
    if k > 1 and h >= k and w >= k:
        hh, ww = h // k * k, w // k * k
        a = cv2.resize(a[:hh, :ww], (ww // k, hh // k), interpolation=cv2.INTER_AREA).reshape(hh // k, ww // k, c)
    if (a.shape[1], a.shape[0]) != size:
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], c)
    return a


def enlarge(display: np.ndarray, min_side: int = SCREEN_MIN_SIDE) -> tuple[np.ndarray, int]:
    """``display`` repeated ``f`` times along both axes (nearest neighbour: every pixel a block)
    so that its longest side is at least ``min_side``; returns ``(picture, f)``, ``f = 1`` when it
    is big enough already. Keeps 2-D and 3-D shapes.

    >>> pic, f = enlarge(np.array([[7]], np.uint8)); pic.shape, f, int(pic.min()), int(pic.max())
    ((256, 256), 256, 7, 7)
    """
    h, w = display.shape[:2]
    f = -(-min_side // max(h, w)) if max(h, w) < min_side else 1
    if f == 1:
        return display, 1
    return np.ascontiguousarray(np.repeat(np.repeat(display, f, axis=0), f, axis=1)), f


def for_screen(image: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """The display version at most ``max_side`` (``to_display``), enlarged when tiny (``enlarge``)."""
    return enlarge(to_display(image, max_side))


@dataclass(frozen=True)
class Screen:
    """What the page shows of one image: the display version (before/after, difference), how
    much it was enlarged, and the results-row preview, encoded once."""

    display: np.ndarray
    factor: int
    preview: "Picture"

    def held_bytes(self) -> int:
        return self.display.nbytes + len(self.preview.data)


def screen(image: np.ndarray) -> Screen:
    """``image`` (any engine array) made ready for the page: ``for_screen`` at DISPLAY_MAX_SIDE,
    then the preview at PREVIEW_SIDE from that (not from the full image again)."""
    display, factor = for_screen(image, DISPLAY_MAX_SIDE)
    small = to_display(display, PREVIEW_SIDE) if factor == 1 else display
    return Screen(display, factor, picture(small, enlarged=factor > 1))


def scale_note(shape: tuple[int, ...], factor: int) -> str:
    """What the screen shows of an image of ``shape`` enlarged ``factor`` times ('' if not)."""
    if factor <= 1:
        return ""
    h, w = shape[:2]
    return f"{w}x{h} pixels, shown {factor}x larger (each pixel a block)"


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


def encode_jpeg(display: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an 8-bit display array for the screen (alpha composited over a checker;
    full colour resolution, 4:4:4, so thin coloured edges keep their colour)."""
    a = as_rgb(display) if display.ndim == 3 else display
    if a.ndim == 3:
        a = a[:, :, ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(a), [cv2.IMWRITE_JPEG_QUALITY, quality,
                                                               cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                               cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array of these shapes
        raise ValueError(f"could not encode a {display.shape} image")
    return buf.tobytes()


@dataclass(frozen=True)
class Picture:
    """Encoded bytes for ``st.image``, with the format to pass as ``output_format`` (then
    Streamlit sends the bytes as they are)."""

    data: bytes
    format: str  # "JPEG" or "PNG"


def picture(display: np.ndarray, enlarged: bool = False) -> Picture:
    """A display array encoded for the screen: JPEG, or PNG for enlarged tiny images (JPEG would
    smear their pixel blocks; they are small anyway)."""
    if enlarged:
        return Picture(encode_png(display), "PNG")
    return Picture(encode_jpeg(display), "JPEG")


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


#: A result whose values span less than this fraction of the dtype's range looks flat or black.
SLIVER = 0.1
#: What each output mapping does for such a result, for the advice beside it.
MAPPING_HELP = {
    "abs": "edges of both signs bright",
    "normalize": "its lowest value black, its highest white",
    "offset": "zero at mid-gray, negatives darker",
}


def value_span(a: np.ndarray) -> tuple[int, int]:
    """Lowest and highest value over the colour channels (alpha, C = 2 or 4, left out)."""
    c = a.shape[2] if a.ndim == 3 else 1
    color = a if c in (1, 3) else a[:, :, : c - 1]
    return int(color.min()), int(color.max())


@dataclass(frozen=True)
class Sliver:
    """A result that uses a sliver of its range, and the output mappings that would show it."""

    text: str
    offers: tuple[str, ...]


def sliver(lo: int, hi: int, maxval: int, output: str) -> Sliver | None:
    """Advice for a result whose values span ``lo..hi`` of ``0..maxval`` under ``output``, or None
    when it uses at least ``SLIVER`` of the range.

    >>> sliver(0, 7, 255, "clip").text
    'uses only levels 0 to 7 of 255 (3% of the range), so it looks black; negative responses were clipped to 0'
    >>> sliver(0, 7, 255, "clip").offers
    ('abs', 'normalize', 'offset')
    >>> sliver(0, 200, 255, "clip") is None, sliver(128, 128, 255, "offset").offers
    (True, ('abs', 'normalize'))
    """
    span = hi - lo
    if span >= SLIVER * maxval:
        return None
    if span == 0:
        text = f"is flat: every pixel is {lo}"
    else:
        look = "black" if hi < 0.25 * maxval else "white" if lo > 0.75 * maxval else "flat gray"
        text = f"uses only levels {lo} to {hi} of {maxval} ({span / maxval:.0%} of the range), so it looks {look}"
    if output == "clip" and lo == 0:
        text += "; negative responses were clipped to 0"
    return Sliver(text, tuple(o for o in ("abs", "normalize", "offset") if o != output))
